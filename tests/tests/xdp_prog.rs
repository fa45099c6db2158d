//! Packet-level tests of the XDP program through `BPF_PROG_TEST_RUN`:
//! crafted frames (VLAN, QinQ, IPv4 options and fragments, IPv6 extension
//! headers, truncations, garbage) against rules with overlapping prefixes
//! and port sets, checking verdicts and counters. Needs root.

use std::net::{Ipv4Addr, Ipv6Addr};

use llmgw::l4::{
    DenyEntry, Destinations, L4Rules, XdpProgram,
    frames::{self, V4Opts},
};
use llmgw_tests::privileged;

const DROP: u32 = 1;
const PASS: u32 = 2;

fn entry(net: &str, rule: &str, ports: Option<&[u16]>) -> DenyEntry {
    DenyEntry {
        net: net.parse().unwrap(),
        rule: rule.into(),
        ports: ports.map(<[u16]>::to_vec),
    }
}

fn rules() -> L4Rules {
    L4Rules {
        entries: vec![
            entry("10.0.0.0/24", "ns/net[0]", None),
            entry("10.0.0.7/32", "ns/host[0]", Some(&[443])),
            entry("10.9.0.0/16", "ns/scoped[0]", Some(&[80])),
            entry("2001:db8:bad::/48", "ns/v6net[0]", None),
            entry("2001:db8:bad:1::/64", "ns/v6host[0]", Some(&[443])),
            entry("2001:db8:5c0::/48", "ns/v6scoped[0]", Some(&[80])),
        ],
        listener_ports: vec![80, 443, 8080],
        destinations: Default::default(),
    }
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

const GW4: &str = "192.0.2.1";
const GW6: &str = "2001:db8::1";

fn loaded(test: &str) -> Option<XdpProgram> {
    if !privileged(test) {
        return None;
    }
    let mut p = XdpProgram::load().expect("load the XDP program (verifier)");
    p.sync(&rules()).expect("sync");
    Some(p)
}

fn run(p: &mut XdpProgram, frame: &[u8]) -> u32 {
    p.run(frame).expect("test run")
}

#[test]
fn ipv4_tcp_and_udp_to_listener_ports_only() {
    let Some(mut p) = loaded("ipv4_tcp_and_udp_to_listener_ports_only") else {
        return;
    };
    let denied = v4("10.0.0.1");
    for port in [80, 443, 8080] {
        assert_eq!(
            run(&mut p, &frames::tcp4(denied, v4(GW4), port)),
            DROP,
            "tcp {port}"
        );
        assert_eq!(
            run(&mut p, &frames::udp4(denied, v4(GW4), port)),
            DROP,
            "udp {port}"
        );
    }
    for port in [22, 10250, 53, 0, 65535] {
        assert_eq!(
            run(&mut p, &frames::tcp4(denied, v4(GW4), port)),
            PASS,
            "tcp {port}"
        );
        assert_eq!(
            run(&mut p, &frames::udp4(denied, v4(GW4), port)),
            PASS,
            "udp {port}"
        );
    }
    for src in ["10.0.1.1", "9.255.255.255", "192.0.2.2", "0.0.0.0"] {
        assert_eq!(
            run(&mut p, &frames::tcp4(v4(src), v4(GW4), 80)),
            PASS,
            "{src}"
        );
    }
    let icmp = frames::eth(
        frames::ETH_P_IP,
        &[],
        &frames::ipv4(
            denied,
            v4(GW4),
            frames::ICMP,
            V4Opts::default(),
            &[8, 0, 0, 0, 0, 80, 0, 80],
        ),
    );
    assert_eq!(run(&mut p, &icmp), PASS);
    let arp = frames::eth(frames::ETH_P_ARP, &[], &[0u8; 28]);
    assert_eq!(run(&mut p, &arp), PASS);
}

#[test]
fn overlapping_prefixes_with_port_sets() {
    let Some(mut p) = loaded("overlapping_prefixes_with_port_sets") else {
        return;
    };
    // /32 with {443} inside a /24 denying every port: port 80 still drops,
    // charged to the /24's rule; 443 is charged to the more specific rule.
    let host = v4("10.0.0.7");
    assert_eq!(run(&mut p, &frames::tcp4(host, v4(GW4), 80)), DROP);
    let s = p.stats().unwrap();
    assert_eq!(s.rule("ns/net[0]").unwrap().packets, 1);
    assert_eq!(s.rule("ns/host[0]").unwrap().packets, 0);
    assert_eq!(run(&mut p, &frames::tcp4(host, v4(GW4), 443)), DROP);
    let s = p.stats().unwrap();
    assert_eq!(s.rule("ns/host[0]").unwrap().packets, 1);
    assert_eq!(run(&mut p, &frames::tcp4(host, v4(GW4), 22)), PASS);
    // Port-scoped /16: only port 80.
    let scoped = v4("10.9.200.3");
    assert_eq!(run(&mut p, &frames::tcp4(scoped, v4(GW4), 80)), DROP);
    assert_eq!(run(&mut p, &frames::tcp4(scoped, v4(GW4), 443)), PASS);
    assert_eq!(p.stats().unwrap().counter("pass_port_allowed"), 1);
    // IPv6, same shape.
    let host6 = v6("2001:db8:bad:1::99");
    assert_eq!(run(&mut p, &frames::tcp6(host6, v6(GW6), 80)), DROP);
    assert_eq!(run(&mut p, &frames::tcp6(host6, v6(GW6), 443)), DROP);
    assert_eq!(run(&mut p, &frames::tcp6(host6, v6(GW6), 22)), PASS);
    let s = p.stats().unwrap();
    assert_eq!(s.rule("ns/v6net[0]").unwrap().packets, 1);
    assert_eq!(s.rule("ns/v6host[0]").unwrap().packets, 1);
    let scoped6 = v6("2001:db8:5c0:ffff::1");
    assert_eq!(run(&mut p, &frames::tcp6(scoped6, v6(GW6), 80)), DROP);
    assert_eq!(run(&mut p, &frames::tcp6(scoped6, v6(GW6), 8080)), PASS);
    assert_eq!(
        run(&mut p, &frames::tcp6(v6("2001:db8:bae::1"), v6(GW6), 80)),
        PASS
    );
}

#[test]
fn vlan_and_qinq() {
    let Some(mut p) = loaded("vlan_and_qinq") else {
        return;
    };
    let ip = frames::ipv4(
        v4("10.0.0.5"),
        v4(GW4),
        frames::TCP,
        V4Opts::default(),
        &frames::tcp(1, 80),
    );
    let ip6 = frames::ipv6(
        v6("2001:db8:bad::5"),
        v6(GW6),
        &[],
        frames::UDP,
        &frames::udp(1, 443),
    );
    for tags in [
        &[][..],
        &[frames::ETH_P_8021Q][..],
        &[frames::ETH_P_8021AD, frames::ETH_P_8021Q][..],
        &[frames::ETH_P_8021Q, frames::ETH_P_8021Q][..],
    ] {
        assert_eq!(
            run(&mut p, &frames::eth(frames::ETH_P_IP, tags, &ip)),
            DROP,
            "{tags:x?}"
        );
        assert_eq!(
            run(&mut p, &frames::eth(frames::ETH_P_IPV6, tags, &ip6)),
            DROP,
            "{tags:x?}"
        );
    }
    // A third tag is beyond what we parse: passes as "not IP".
    let three = [
        frames::ETH_P_8021AD,
        frames::ETH_P_8021Q,
        frames::ETH_P_8021Q,
    ];
    let before = p.stats().unwrap().counter("pass_not_ip");
    assert_eq!(
        run(&mut p, &frames::eth(frames::ETH_P_IP, &three, &ip)),
        PASS
    );
    assert_eq!(p.stats().unwrap().counter("pass_not_ip"), before + 1);
}

#[test]
fn ipv4_header_length_and_version() {
    let Some(mut p) = loaded("ipv4_header_length_and_version") else {
        return;
    };
    let src = v4("10.0.0.5");
    for words in 0..=10 {
        let opts = V4Opts {
            options: words * 4,
            ..V4Opts::default()
        };
        let f = frames::eth(
            frames::ETH_P_IP,
            &[],
            &frames::ipv4(src, v4(GW4), frames::TCP, opts, &frames::tcp(1, 80)),
        );
        assert_eq!(run(&mut p, &f), DROP, "IHL {}", 5 + words);
        // The port must be read after the options: shift a listener port
        // into where a wrong parser would look.
        let mut g = frames::eth(
            frames::ETH_P_IP,
            &[],
            &frames::ipv4(src, v4(GW4), frames::TCP, opts, &frames::tcp(1, 22)),
        );
        if words > 0 {
            let o = 14 + 20;
            g[o + 2..o + 4].copy_from_slice(&80u16.to_be_bytes());
        }
        assert_eq!(run(&mut p, &g), PASS, "IHL {} port 22", 5 + words);
    }
    // IHL < 5 is malformed: pass.
    for ihl in 0..5u8 {
        let mut f = frames::tcp4(src, v4(GW4), 80);
        f[14] = 0x40 | ihl;
        assert_eq!(run(&mut p, &f), PASS, "IHL {ihl}");
    }
    // Version 6 in an IPv4 ethertype: pass.
    let mut f = frames::tcp4(src, v4(GW4), 80);
    f[14] = 0x65;
    assert_eq!(run(&mut p, &f), PASS);
}

#[test]
fn ipv4_fragments() {
    let Some(mut p) = loaded("ipv4_fragments") else {
        return;
    };
    let frag = |src: &str, offset: u16, more: bool, payload: &[u8]| {
        let opts = V4Opts {
            frag_offset: offset,
            more_fragments: more,
            ..V4Opts::default()
        };
        frames::eth(
            frames::ETH_P_IP,
            &[],
            &frames::ipv4(v4(src), v4(GW4), frames::UDP, opts, payload),
        )
    };
    // First fragment carries the port.
    assert_eq!(
        run(&mut p, &frag("10.0.0.5", 0, true, &frames::udp(1, 80))),
        DROP
    );
    assert_eq!(
        run(&mut p, &frag("10.0.0.5", 0, true, &frames::udp(1, 22))),
        PASS
    );
    // Non-first fragments: dropped from sources denied on every port.
    let junk = [0u8; 32];
    assert_eq!(run(&mut p, &frag("10.0.0.5", 185, true, &junk)), DROP);
    assert_eq!(run(&mut p, &frag("10.0.0.5", 185, false, &junk)), DROP);
    // ... and from sources denied on some ports (a fragment hides its
    // port), charged to that source's rule; not from clean sources.
    assert_eq!(run(&mut p, &frag("10.9.0.5", 185, false, &junk)), DROP);
    assert_eq!(p.stats().unwrap().counter("drop_unknown_port"), 3);
    assert_eq!(run(&mut p, &frag("172.16.0.1", 185, false, &junk)), PASS);
    assert_eq!(p.stats().unwrap().counter("pass_unknown_port"), 1);
}

#[test]
fn ipv6_extension_headers() {
    let Some(mut p) = loaded("ipv6_extension_headers") else {
        return;
    };
    use frames::{AH, DSTOPTS, FRAGMENT, HOPOPTS, ROUTING, ext, frag6};
    let denied = v6("2001:db8:bad::77");
    let scoped = v6("2001:db8:5c0::77");
    let pkt = |src: Ipv6Addr, exts: &[(u8, Vec<u8>)], port: u16| {
        frames::eth(
            frames::ETH_P_IPV6,
            &[],
            &frames::ipv6(src, v6(GW6), exts, frames::TCP, &frames::tcp(1, port)),
        )
    };
    let one = |kind: u8, len: u8| match kind {
        FRAGMENT => (kind, frag6(0, 0, true)),
        _ => (kind, ext(kind, 0, len)),
    };
    for kind in [HOPOPTS, ROUTING, DSTOPTS, AH, FRAGMENT] {
        for len in [0u8, 1, 3] {
            assert_eq!(
                run(&mut p, &pkt(denied, &[one(kind, len)], 80)),
                DROP,
                "{kind} len {len}"
            );
            assert_eq!(
                run(&mut p, &pkt(denied, &[one(kind, len)], 22)),
                PASS,
                "{kind} len {len}"
            );
        }
    }
    // A 255-unit hop-by-hop header (2 KiB) is walked too.
    assert_eq!(run(&mut p, &pkt(denied, &[one(HOPOPTS, 255)], 80)), DROP);
    // Six headers: the bound; the port is found.
    let six = vec![
        one(HOPOPTS, 0),
        one(DSTOPTS, 1),
        one(ROUTING, 0),
        one(FRAGMENT, 0),
        one(AH, 1),
        one(DSTOPTS, 0),
    ];
    assert_eq!(run(&mut p, &pkt(denied, &six, 80)), DROP);
    assert_eq!(run(&mut p, &pkt(denied, &six, 22)), PASS);
    assert_eq!(run(&mut p, &pkt(scoped, &six, 80)), DROP);
    assert_eq!(run(&mut p, &pkt(scoped, &six, 443)), PASS);
    // Seven: beyond the bound, the port is unknown: dropped from any
    // denied source (whatever the real port), so a port-scoped rule cannot
    // be slipped past with more headers; a clean source passes.
    let mut seven = six.clone();
    seven.push(one(DSTOPTS, 0));
    assert_eq!(run(&mut p, &pkt(denied, &seven, 22)), DROP);
    assert_eq!(run(&mut p, &pkt(scoped, &seven, 80)), DROP);
    assert_eq!(run(&mut p, &pkt(scoped, &seven, 22)), DROP);
    assert_eq!(run(&mut p, &pkt(v6("2001:db8::2"), &seven, 80)), PASS);
    // Non-first fragments.
    let nonfirst = |src| {
        frames::eth(
            frames::ETH_P_IPV6,
            &[],
            &frames::ipv6(
                src,
                v6(GW6),
                &[(FRAGMENT, frag6(0, 100, false))],
                frames::TCP,
                &[0u8; 24],
            ),
        )
    };
    assert_eq!(run(&mut p, &nonfirst(denied)), DROP);
    assert_eq!(run(&mut p, &nonfirst(scoped)), DROP);
    assert_eq!(run(&mut p, &nonfirst(v6("2001:db8::2"))), PASS);
    // ESP, ICMPv6, "no next header": not TCP/UDP.
    for proto in [frames::ESP, frames::ICMPV6, 59] {
        let f = frames::eth(
            frames::ETH_P_IPV6,
            &[],
            &frames::ipv6(denied, v6(GW6), &[], proto, &frames::tcp(1, 80)),
        );
        assert_eq!(run(&mut p, &f), PASS, "proto {proto}");
    }
    // Version 4 in an IPv6 ethertype.
    let mut f = pkt(denied, &[], 80);
    f[14] = 0x45;
    assert_eq!(run(&mut p, &f), PASS);
}

/// Every truncation of a dropping frame passes until the frame holds the
/// destination port, and drops from there on.
#[test]
fn truncated_frames_pass() {
    let Some(mut p) = loaded("truncated_frames_pass") else {
        return;
    };
    use frames::{AH, FRAGMENT, HOPOPTS, ext, frag6};
    let src4 = v4("10.0.0.9");
    let src6 = v6("2001:db8:bad::9");
    let opts = V4Opts {
        options: 12,
        ..V4Opts::default()
    };
    let cases: Vec<(&str, Vec<u8>, usize)> = vec![
        ("v4", frames::tcp4(src4, v4(GW4), 80), 14 + 20 + 4),
        (
            "v4 options qinq",
            frames::eth(
                frames::ETH_P_IP,
                &[frames::ETH_P_8021AD, frames::ETH_P_8021Q],
                &frames::ipv4(src4, v4(GW4), frames::UDP, opts, &frames::udp(1, 443)),
            ),
            22 + 32 + 4,
        ),
        ("v6", frames::tcp6(src6, v6(GW6), 443), 14 + 40 + 4),
        (
            "v6 ext",
            frames::eth(
                frames::ETH_P_IPV6,
                &[frames::ETH_P_8021Q],
                &frames::ipv6(
                    src6,
                    v6(GW6),
                    &[
                        (HOPOPTS, ext(HOPOPTS, 0, 1)),
                        (FRAGMENT, frag6(0, 0, true)),
                        (AH, ext(AH, 0, 2)),
                    ],
                    frames::TCP,
                    &frames::tcp(1, 80),
                ),
            ),
            18 + 40 + 16 + 8 + 16 + 4,
        ),
    ];
    for (name, frame, needed) in cases {
        assert_eq!(run(&mut p, &frame), DROP, "{name} whole");
        for len in 0..frame.len() {
            match p.run(&frame[..len]) {
                Ok(v) => {
                    let want = if len >= needed { DROP } else { PASS };
                    assert_eq!(v, want, "{name} truncated to {len}");
                }
                // The kernel refuses test frames shorter than an Ethernet
                // header.
                Err(_) => assert!(len < 14, "{name} truncated to {len}"),
            }
        }
    }
    assert!(p.stats().unwrap().counter("pass_malformed") > 100);
}

#[test]
fn garbage_passes() {
    let Some(mut p) = loaded("garbage_passes") else {
        return;
    };
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..3000 {
        let len = 14 + (next() % 200) as usize;
        let mut f: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Make most of them claim to be IP, with or without VLAN tags.
        let et = [
            frames::ETH_P_IP,
            frames::ETH_P_IPV6,
            frames::ETH_P_8021Q,
            0x1234,
        ][i % 4];
        f[12..14].copy_from_slice(&et.to_be_bytes());
        // Keep sources out of the denied ranges.
        if f.len() > 14 + 16 && et == frames::ETH_P_IP {
            f[14 + 12] = 11;
        }
        if f.len() > 14 + 24 && et == frames::ETH_P_IPV6 {
            f[14 + 8] = 0x30;
        }
        assert_eq!(run(&mut p, &f), PASS, "frame {i}: {f:02x?}");
    }
}

#[test]
fn counters_move() {
    let Some(mut p) = loaded("counters_move") else {
        return;
    };
    let drop = frames::tcp4(v4("10.0.0.3"), v4(GW4), 443);
    let other_port = frames::tcp4(v4("10.0.0.3"), v4(GW4), 22);
    let miss = frames::tcp4(v4("10.200.0.3"), v4(GW4), 443);
    let filtered = frames::tcp4(v4("203.0.113.3"), v4(GW4), 443);
    for _ in 0..3 {
        assert_eq!(run(&mut p, &drop), DROP);
    }
    assert_eq!(run(&mut p, &other_port), PASS);
    assert_eq!(run(&mut p, &miss), PASS);
    assert_eq!(run(&mut p, &filtered), PASS);
    let s = p.stats().unwrap();
    assert_eq!((s.seen, s.passed, s.dropped), (6, 3, 3));
    let r = s.rule("ns/net[0]").unwrap();
    assert_eq!((r.packets, r.bytes), (3, 3 * drop.len() as u64));
    assert_eq!(s.counter("pass_not_listener"), 1);
    // 10.200.0.0/24 shares no /24 with a deny prefix either: the front
    // filter answers both misses.
    assert_eq!(s.counter("pass_filter"), 2);
    // Repeat counts each run.
    p.run_repeat(&drop, 100).unwrap();
    let s = p.stats().unwrap();
    assert_eq!(s.rule("ns/net[0]").unwrap().packets, 103);
}

#[test]
fn sync_changes_verdicts_and_keeps_ids() {
    let Some(mut p) = loaded("sync_changes_verdicts_and_keeps_ids") else {
        return;
    };
    let f = frames::tcp4(v4("10.0.0.3"), v4(GW4), 80);
    assert_eq!(run(&mut p, &f), DROP);
    let id = p.rule_id("ns/net[0]").unwrap();
    // Drop the /24 rule: the host's port set still applies to 443 only.
    let mut r = rules();
    r.entries.remove(0);
    let report = p.sync(&r).unwrap();
    assert_eq!(report.removed, 1);
    assert!(p.maps_match_last_sync().unwrap());
    assert_eq!(run(&mut p, &f), PASS);
    assert_eq!(
        run(&mut p, &frames::tcp4(v4("10.0.0.7"), v4(GW4), 80)),
        PASS
    );
    assert_eq!(
        run(&mut p, &frames::tcp4(v4("10.0.0.7"), v4(GW4), 443)),
        DROP
    );
    // Back again: a fresh id (the old one was freed), counters from zero.
    p.sync(&rules()).unwrap();
    assert_eq!(run(&mut p, &f), DROP);
    let s = p.stats().unwrap();
    assert_eq!(s.rule("ns/net[0]").unwrap().packets, 1);
    // Without the /32 (host hash), its source falls back to the /24 (trie).
    let mut r = rules();
    r.entries.remove(1);
    p.sync(&r).unwrap();
    assert!(p.maps_match_last_sync().unwrap());
    assert_eq!(
        run(&mut p, &frames::tcp4(v4("10.0.0.7"), v4(GW4), 443)),
        DROP
    );
    assert_eq!(p.stats().unwrap().rule("ns/net[0]").unwrap().packets, 2);
    p.sync(&rules()).unwrap();
    // Unchanged rules keep their ids.
    let host = p.rule_id("ns/host[0]").unwrap();
    p.sync(&rules()).unwrap();
    assert_eq!(p.rule_id("ns/host[0]"), Some(host));
    let _ = id;
    // Listener ports follow the rules too.
    let mut r = rules();
    r.listener_ports = vec![8080];
    p.sync(&r).unwrap();
    assert_eq!(run(&mut p, &f), PASS);
    assert_eq!(
        run(&mut p, &frames::tcp4(v4("10.0.0.3"), v4(GW4), 8080)),
        DROP
    );
    assert!(p.maps_match_last_sync().unwrap());
    // Everything off.
    p.sync(&L4Rules::default()).unwrap();
    assert!(p.maps_match_last_sync().unwrap());
    assert_eq!(
        run(&mut p, &frames::tcp4(v4("10.0.0.3"), v4(GW4), 8080)),
        PASS
    );
}

#[test]
fn front_filter_does_not_change_verdicts() {
    if !privileged("front_filter_does_not_change_verdicts") {
        return;
    }
    let mut rules = rules();
    rules
        .entries
        .push(entry("172.16.0.0/12", "ns/wide[0]", None));
    rules
        .entries
        .push(entry("198.51.100.77/32", "ns/one[0]", None));
    let mut with = XdpProgram::load_with(true).unwrap();
    let mut without = XdpProgram::load_with(false).unwrap();
    with.sync(&rules).unwrap();
    without.sync(&rules).unwrap();
    let mut x: u32 = 12345;
    let mut drops = 0;
    for i in 0..4000u32 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        // Mix random sources with ones near the deny prefixes.
        let src = match i % 4 {
            0 => x,
            1 => 0x0a00_0000 | (x & 0x1ff),
            2 => 0xac10_0000 | (x & 0x1f_ffff),
            _ => 0xc633_6400 | (x & 0xff),
        };
        let f = frames::tcp4(
            Ipv4Addr::from(src),
            v4(GW4),
            [80, 443, 22][(x % 3) as usize],
        );
        let a = with.run(&f).unwrap();
        assert_eq!(a, without.run(&f).unwrap(), "{}", Ipv4Addr::from(src));
        drops += u32::from(a == DROP);
    }
    assert!(drops > 500, "{drops}");
    let filtered_v4 = with.stats().unwrap().counter("pass_filter");
    assert!(filtered_v4 > 0);
    assert_eq!(without.stats().unwrap().counter("pass_filter"), 0);

    // IPv6 shares the bitmap (its first 24 bits): same verdicts with and
    // without it, including a prefix shorter than /24, fragments and the
    // /128s; misses far from every prefix are answered by the filter.
    let mut rules6 = rules.clone();
    for (net, rule) in [
        ("2001:db8:77::/48", "ns/net6[0]"),
        ("3000::/12", "ns/wide6[0]"),
        ("2a00:1450::beef/128", "ns/host6[0]"),
    ] {
        rules6.entries.push(entry(net, rule, None));
    }
    with.sync(&rules6).unwrap();
    without.sync(&rules6).unwrap();
    assert!(
        with.maps_match_last_sync().unwrap(),
        "tries, /128 mirror, filter"
    );
    let mut y: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut drops6 = 0;
    for i in 0..4000u32 {
        y ^= y << 13;
        y ^= y >> 7;
        y ^= y << 17;
        let low = u128::from(y);
        let src: u128 = match i % 5 {
            0 => (low << 64) | low,
            1 => 0x2001_0db8_0077_0000_0000_0000_0000_0000 | (low & 0xffff_ffff),
            2 => 0x3000_0000_0000_0000_0000_0000_0000_0000 | ((low << 64) >> 12),
            3 => 0x2a00_1450_0000_0000_0000_0000_0000_beef,
            _ => 0x2a00_1450_0000_0000_0000_0000_0000_0000 | (low & 0xffff),
        };
        let src = Ipv6Addr::from(src);
        let port = [80, 443, 22][(y % 3) as usize];
        let f = if i % 7 == 0 {
            frames::eth(
                0x86dd,
                &[],
                &frames::ipv6(
                    src,
                    v6(GW6),
                    &[(44, frames::frag6(0, 100, false))],
                    frames::TCP,
                    &[0u8; 24],
                ),
            )
        } else {
            frames::tcp6(src, v6(GW6), port)
        };
        let a = with.run(&f).unwrap();
        assert_eq!(a, without.run(&f).unwrap(), "{src}");
        drops6 += u32::from(a == DROP);
    }
    assert!(drops6 > 1000, "{drops6}");
    let filtered = with.stats().unwrap().counter("pass_filter") - filtered_v4;
    assert!(
        filtered > 300,
        "{filtered} IPv6 misses answered by the filter"
    );
}

#[test]
fn default_route_prefix() {
    if !privileged("default_route_prefix") {
        return;
    }
    let mut p = XdpProgram::load().unwrap();
    p.sync(&L4Rules {
        entries: vec![
            entry("0.0.0.0/0", "all", Some(&[443])),
            entry("::/0", "all6", None),
        ],
        listener_ports: vec![443, 80],
        destinations: Default::default(),
    })
    .unwrap();
    assert_eq!(
        run(&mut p, &frames::tcp4(v4("1.2.3.4"), v4(GW4), 443)),
        DROP
    );
    assert_eq!(run(&mut p, &frames::tcp4(v4("1.2.3.4"), v4(GW4), 80)), PASS);
    assert_eq!(run(&mut p, &frames::tcp6(v6("2001::1"), v6(GW6), 80)), DROP);
}

/// With the gateway's addresses known, a denied source's packets to another
/// destination on a listener port (traffic the node forwards, to a pod or
/// another host) pass; to the gateway's own addresses they drop. Turning the
/// check off again restores "any destination".
#[test]
fn only_packets_to_the_gateways_addresses_drop() {
    let Some(mut p) = loaded("only_packets_to_the_gateways_addresses_drop") else {
        return;
    };
    let mut r = rules();
    r.destinations = Destinations::Only(vec![GW4.parse().unwrap(), GW6.parse().unwrap()]);
    p.sync(&r).expect("sync with destinations");
    let (denied4, denied6) = (v4("10.0.0.1"), v6("2001:db8:bad::9"));
    let (pod4, pod6) = (v4("10.244.1.5"), v6("fd00:244::5"));
    assert_eq!(run(&mut p, &frames::tcp4(denied4, v4(GW4), 80)), DROP);
    assert_eq!(run(&mut p, &frames::tcp4(denied4, pod4, 80)), PASS);
    assert_eq!(run(&mut p, &frames::udp4(denied4, pod4, 443)), PASS);
    assert_eq!(run(&mut p, &frames::tcp6(denied6, v6(GW6), 80)), DROP);
    assert_eq!(run(&mut p, &frames::tcp6(denied6, pod6, 80)), PASS);
    // A non-first fragment to another destination passes too.
    let frag = |dst: Ipv4Addr| {
        let opts = V4Opts {
            frag_offset: 185,
            ..V4Opts::default()
        };
        frames::eth(
            frames::ETH_P_IP,
            &[],
            &frames::ipv4(denied4, dst, frames::UDP, opts, &[0u8; 32]),
        )
    };
    assert_eq!(run(&mut p, &frag(v4(GW4))), DROP);
    assert_eq!(run(&mut p, &frag(pod4)), PASS);
    assert_eq!(p.stats().unwrap().counter("pass_not_local"), 4);
    // What is not denied still passes to the gateway.
    assert_eq!(
        run(&mut p, &frames::tcp4(v4("172.16.0.1"), v4(GW4), 80)),
        PASS
    );

    // The program remembers its last lookup per CPU; a change of the
    // address set must not leave it stale, either way.
    let other = v4("192.0.2.222");
    for _ in 0..3 {
        assert_eq!(run(&mut p, &frames::tcp4(denied4, other, 80)), PASS);
    }
    r.destinations = Destinations::Only(vec![GW4.parse().unwrap(), other.into()]);
    p.sync(&r).expect("sync with one more address");
    for _ in 0..3 {
        assert_eq!(run(&mut p, &frames::tcp4(denied4, other, 80)), DROP);
    }
    r.destinations = Destinations::Only(vec![GW4.parse().unwrap()]);
    p.sync(&r).expect("sync without it");
    assert_eq!(run(&mut p, &frames::tcp4(denied4, other, 80)), PASS);
    assert_eq!(run(&mut p, &frames::tcp4(denied4, v4(GW4), 80)), DROP);

    // The host's own addresses: 127.0.0.1 is one of them.
    r.destinations = Destinations::Host;
    p.sync(&r).expect("sync with the host's addresses");
    assert_eq!(
        run(&mut p, &frames::tcp4(denied4, v4("127.0.0.1"), 80)),
        DROP
    );
    assert_eq!(
        run(&mut p, &frames::tcp4(denied4, v4("192.0.2.222"), 80)),
        PASS
    );

    // Any destination again.
    r.destinations = Destinations::Any;
    p.sync(&r).expect("sync without destinations");
    assert_eq!(run(&mut p, &frames::tcp4(denied4, pod4, 80)), DROP);
    assert_eq!(run(&mut p, &frames::tcp6(denied6, pod6, 80)), DROP);
}
