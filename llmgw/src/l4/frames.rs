//! Crafted Ethernet frames (VLAN tags, IPv4 with options and fragments,
//! IPv6 with extension headers, TCP/UDP/ICMP) for `BPF_PROG_TEST_RUN` tests
//! and the benchmark. Checksums are left zero: the program never reads them.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;
pub const HOPOPTS: u8 = 0;
pub const ROUTING: u8 = 43;
pub const FRAGMENT: u8 = 44;
pub const AH: u8 = 51;
pub const DSTOPTS: u8 = 60;
pub const ESP: u8 = 50;

/// An L4 header: TCP (20 bytes) or UDP (8 bytes) with ports, or raw bytes.
pub fn tcp(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = 0x02; // SYN
    h
}

pub fn udp(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    h[..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..6].copy_from_slice(&8u16.to_be_bytes());
    h
}

/// An Ethernet frame: `tags` are the TPIDs of the VLAN tags, outermost first.
pub fn eth(ethertype: u16, tags: &[u16], payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    for (i, tpid) in tags.iter().enumerate() {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(100 + i as u16).to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// IPv4 options and fragment fields.
#[derive(Clone, Copy, Debug, Default)]
pub struct V4Opts {
    /// Bytes of options (a multiple of 4, at most 40).
    pub options: usize,
    /// Fragment offset in 8-byte units.
    pub frag_offset: u16,
    pub more_fragments: bool,
}

pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, opts: V4Opts, payload: &[u8]) -> Vec<u8> {
    let hlen = 20 + opts.options;
    let mut h = vec![0u8; hlen];
    h[0] = 0x40 | (hlen / 4) as u8;
    h[2..4].copy_from_slice(&((hlen + payload.len()) as u16).to_be_bytes());
    let frag = (opts.frag_offset & 0x1fff) | if opts.more_fragments { 0x2000 } else { 0 };
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    for b in &mut h[20..] {
        *b = 1; // NOP options
    }
    h.extend_from_slice(payload);
    h
}

/// One IPv6 extension header of `kind` with `len_units` in its length byte.
pub fn ext(kind: u8, next: u8, len_units: u8) -> Vec<u8> {
    let bytes = match kind {
        AH => (len_units as usize + 2) * 4,
        FRAGMENT => 8,
        _ => (len_units as usize + 1) * 8,
    };
    let mut h = vec![0u8; bytes];
    h[0] = next;
    h[1] = if kind == FRAGMENT { 0 } else { len_units };
    h
}

/// An IPv6 fragment header.
pub fn frag6(next: u8, offset_units: u16, more: bool) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    h[0] = next;
    let v = (offset_units << 3) | u16::from(more);
    h[2..4].copy_from_slice(&v.to_be_bytes());
    h[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    h
}

/// IPv6 packet whose header chain is `exts` (each `(kind, bytes)` built with
/// [`ext`] / [`frag6`]; their next-header fields are rewritten to chain),
/// ending in `proto` with `payload`.
pub fn ipv6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    exts: &[(u8, Vec<u8>)],
    proto: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, (_, bytes)) in exts.iter().enumerate() {
        let mut b = bytes.clone();
        b[0] = exts.get(i + 1).map_or(proto, |(k, _)| *k);
        body.extend_from_slice(&b);
    }
    body.extend_from_slice(payload);
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(body.len() as u16).to_be_bytes());
    h[6] = exts.first().map_or(proto, |(k, _)| *k);
    h[7] = 64;
    h[8..24].copy_from_slice(&src.octets());
    h[24..40].copy_from_slice(&dst.octets());
    h.extend_from_slice(&body);
    h
}

/// A TCP SYN from `src` to `dst:dport` over IPv4 in Ethernet, padded to 64
/// bytes like a minimum-size frame on the wire.
pub fn tcp4(src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut f = eth(
        ETH_P_IP,
        &[],
        &ipv4(src, dst, TCP, V4Opts::default(), &tcp(40000, dport)),
    );
    f.resize(f.len().max(64), 0);
    f
}

/// A UDP datagram over IPv4 in Ethernet.
pub fn udp4(src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    eth(
        ETH_P_IP,
        &[],
        &ipv4(src, dst, UDP, V4Opts::default(), &udp(40000, dport)),
    )
}

/// A TCP SYN over IPv6 in Ethernet.
pub fn tcp6(src: Ipv6Addr, dst: Ipv6Addr, dport: u16) -> Vec<u8> {
    eth(
        ETH_P_IPV6,
        &[],
        &ipv6(src, dst, &[], TCP, &tcp(40000, dport)),
    )
}
