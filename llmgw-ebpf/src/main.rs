//! The llmgw XDP program: drops packets addressed to one of the gateway's
//! listener ports when the source address is in a deny prefix, passes every
//! other packet (including garbage), and counts both per CPU.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod parse;

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{
        Global,
        bindings::{BPF_F_MMAPABLE, xdp_action},
        macros::{map, xdp},
        maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
        programs::XdpContext,
    };
    use llmgw_common::{
        self as common, ClassPortKey, DenyValue, DstCache, RuleCounters, Stats, stat,
    };

    use crate::parse::{MAX_OFFSET, be16_at, bytes_at};

    /// `true` when two strings are equal; lets the map names below be
    /// checked against `llmgw_common` at compile time (the `#[map]` macro
    /// needs literals).
    const fn same(a: &str, b: &str) -> bool {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }
    const _: () = assert!(same(common::MAP_DENY_V4, "LLMGW_DENY_V4"));
    const _: () = assert!(same(common::MAP_DENY_V6, "LLMGW_DENY_V6"));
    const _: () = assert!(same(common::MAP_HOST_V4, "LLMGW_HOST_V4"));
    const _: () = assert!(same(common::MAP_HOST_V6, "LLMGW_HOST_V6"));
    const _: () = assert!(same(common::MAP_LISTEN, "LLMGW_LISTEN"));
    const _: () = assert!(same(common::MAP_PORTSET, "LLMGW_PORTSET"));
    const _: () = assert!(same(common::MAP_RULE_CTR, "LLMGW_RULE_CTR"));
    const _: () = assert!(same(common::MAP_STATS, "LLMGW_STATS"));
    const _: () = assert!(same(common::MAP_V4_FILTER, "LLMGW_V4_FILT"));
    const _: () = assert!(same(common::MAP_RULE_NAME, "LLMGW_RULE_NAME"));
    const _: () = assert!(same(common::MAP_LOCAL, "LLMGW_LOCAL"));
    const _: () = assert!(same(common::MAP_DST_GEN, "LLMGW_DST_GEN"));
    const _: () = assert!(same(common::MAP_DST_CACHE, "LLMGW_DST_CACHE"));
    const _: () = assert!(same(common::GLOBAL_V4_FILTER_ON, "LLMGW_V4_FILTER_ON"));
    const _: () = assert!(same(common::PROGRAM_NAME, "llmgw_xdp"));

    #[map(name = "LLMGW_DENY_V4")]
    static DENY_V4: LpmTrie<[u8; 4], DenyValue> =
        LpmTrie::with_max_entries(common::DENY_V4_MAP_ENTRIES, 0);
    #[map(name = "LLMGW_HOST_V4")]
    static HOST_V4: HashMap<[u8; 4], DenyValue> = HashMap::with_max_entries(
        common::HOST_V4_MAP_ENTRIES,
        aya_ebpf::bindings::BPF_F_NO_PREALLOC,
    );
    #[map(name = "LLMGW_DENY_V6")]
    static DENY_V6: LpmTrie<[u8; 16], DenyValue> =
        LpmTrie::with_max_entries(common::DENY_V6_MAP_ENTRIES, 0);
    #[map(name = "LLMGW_HOST_V6")]
    static HOST_V6: HashMap<[u8; 16], DenyValue> = HashMap::with_max_entries(
        common::HOST_V6_MAP_ENTRIES,
        aya_ebpf::bindings::BPF_F_NO_PREALLOC,
    );
    #[map(name = "LLMGW_LISTEN")]
    static LISTEN: Array<u8> = Array::with_max_entries(common::LISTEN_ENTRIES, 0);
    #[map(name = "LLMGW_PORTSET")]
    static PORTSET: HashMap<ClassPortKey, u32> =
        HashMap::with_max_entries(common::PORTSET_MAP_ENTRIES, 0);
    #[map(name = "LLMGW_RULE_CTR")]
    static RULE_CTR: PerCpuArray<RuleCounters> =
        PerCpuArray::with_max_entries(common::MAX_RULES, 0);
    #[map(name = "LLMGW_STATS")]
    static STATS: PerCpuArray<Stats> = PerCpuArray::with_max_entries(1, 0);
    #[map(name = "LLMGW_V4_FILT")]
    static V4_FILTER: Array<u64> = Array::with_max_entries(common::V4_FILTER_WORDS, BPF_F_MMAPABLE);
    // Userspace-only (rule id -> name); defined here so that one object
    // describes every map the plane pins.
    #[map(name = "LLMGW_RULE_NAME")]
    static RULE_NAME: HashMap<u32, common::RuleName> =
        HashMap::with_max_entries(common::MAX_RULES, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

    #[map(name = "LLMGW_LOCAL")]
    static LOCAL: HashMap<[u8; 16], u8> =
        HashMap::with_max_entries(common::LOCAL_ENTRIES, aya_ebpf::bindings::BPF_F_NO_PREALLOC);
    #[map(name = "LLMGW_DST_GEN")]
    static DST_GEN: Array<u32> = Array::with_max_entries(1, 0);
    #[map(name = "LLMGW_DST_CACHE")]
    static DST_CACHE: PerCpuArray<DstCache> = PerCpuArray::with_max_entries(1, 0);

    #[unsafe(no_mangle)]
    static LLMGW_V4_FILTER_ON: Global<u8> = Global::new(1);

    const ETH_P_IP: u16 = 0x0800;
    const ETH_P_IPV6: u16 = 0x86dd;
    const ETH_P_8021Q: u16 = 0x8100;
    const ETH_P_8021AD: u16 = 0x88a8;
    const ETH_HLEN: usize = 14;
    const VLAN_HLEN: usize = 4;
    /// VLAN tags we skip (802.1Q and QinQ); a third tag passes as "not IP".
    const MAX_VLAN_TAGS: usize = 2;

    const IPPROTO_HOPOPTS: u8 = 0;
    const IPPROTO_TCP: u8 = 6;
    const IPPROTO_UDP: u8 = 17;
    const IPPROTO_ROUTING: u8 = 43;
    const IPPROTO_FRAGMENT: u8 = 44;
    const IPPROTO_AH: u8 = 51;
    const IPPROTO_DSTOPTS: u8 = 60;
    /// IPv6 extension headers walked before giving up on finding the port.
    const MAX_EXT_HEADERS: usize = 6;

    /// What to do with a packet: pass (counted under a `stat::PASS_*`
    /// reason) or drop (charged to a rule id).
    ///
    /// A struct whose every field is set on every path, not an enum: with
    /// an enum, LLVM may carry the unused variant's fields as undefined
    /// registers into the merged tail, which the verifier rejects.
    #[derive(Clone, Copy)]
    struct Verdict {
        drop: bool,
        /// The `stat::PASS_*` reason of a pass, the rule id of a drop.
        code: u32,
        unknown_port: bool,
    }

    impl Verdict {
        const fn pass(reason: usize) -> Verdict {
            Verdict {
                drop: false,
                code: reason as u32,
                unknown_port: false,
            }
        }

        const fn drop(rule: u32, unknown_port: bool) -> Verdict {
            Verdict {
                drop: true,
                code: rule,
                unknown_port,
            }
        }
    }

    const MALFORMED: Verdict = Verdict::pass(stat::PASS_MALFORMED);

    #[xdp]
    pub fn llmgw_xdp(ctx: XdpContext) -> u32 {
        let verdict = classify(&ctx);
        account(&ctx, verdict)
    }

    /// Counts the verdict (per CPU, no atomics) and turns it into an action.
    #[inline(always)]
    fn account(ctx: &XdpContext, verdict: Verdict) -> u32 {
        let stats = STATS.get_ptr_mut(0);
        if let Some(s) = stats {
            // SAFETY: a per-CPU array slot of this CPU; the program is not
            // preempted while it runs, so nobody else writes it.
            unsafe { (*s).counters[stat::SEEN] += 1 };
        }
        if !verdict.drop {
            if let Some(s) = stats {
                // SAFETY: as above.
                let c = unsafe { &mut (*s).counters };
                c[stat::PASSED] += 1;
                if let Some(r) = c.get_mut(verdict.code as usize) {
                    *r += 1;
                }
            }
            return xdp_action::XDP_PASS;
        }
        if let Some(s) = stats {
            // SAFETY: as above.
            let c = unsafe { &mut (*s).counters };
            c[stat::DROPPED] += 1;
            if verdict.unknown_port {
                c[stat::DROP_UNKNOWN_PORT] += 1;
            }
        }
        if let Some(r) = RULE_CTR.get_ptr_mut(verdict.code) {
            let len = (ctx.data_end() - ctx.data()) as u64;
            // SAFETY: a per-CPU array slot of this CPU.
            unsafe {
                (*r).packets += 1;
                (*r).bytes += len;
            }
        }
        xdp_action::XDP_DROP
    }

    #[inline(always)]
    fn classify(ctx: &XdpContext) -> Verdict {
        let Some(mut proto) = be16_at(ctx, 12) else {
            return MALFORMED;
        };
        let mut off = ETH_HLEN;
        for _ in 0..MAX_VLAN_TAGS {
            if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
                break;
            }
            let Some(inner) = be16_at(ctx, off + 2) else {
                return MALFORMED;
            };
            proto = inner;
            off += VLAN_HLEN;
        }
        match proto {
            ETH_P_IP => ipv4(ctx, off),
            ETH_P_IPV6 => ipv6(ctx, off),
            _ => Verdict::pass(stat::PASS_NOT_IP),
        }
    }

    #[inline(always)]
    fn ipv4(ctx: &XdpContext, off: usize) -> Verdict {
        let Some(h) = bytes_at::<20>(ctx, off) else {
            return MALFORMED;
        };
        let ihl = (h[0] & 0x0f) as usize;
        if h[0] >> 4 != 4 || ihl < 5 {
            return MALFORMED;
        }
        let src = [h[12], h[13], h[14], h[15]];
        let dst = Dst {
            ctx,
            off: off + 16,
            v6: false,
        };
        let frag_offset = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
        if frag_offset != 0 {
            // A non-first fragment carries no port.
            return unknown_port(lookup_v4(src), dst);
        }
        let proto = h[9];
        if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
            return Verdict::pass(stat::PASS_NOT_TCP_UDP);
        }
        let Some(port) = be16_at(ctx, off + ihl * 4 + 2) else {
            return MALFORMED;
        };
        if !is_listener(port) {
            return Verdict::pass(stat::PASS_NOT_LISTENER);
        }
        if !filter_may_match(src[0], src[1], src[2]) {
            return Verdict::pass(stat::PASS_FILTER);
        }
        decide(longest_match_v4(src), port, dst)
    }

    #[inline(always)]
    fn ipv6(ctx: &XdpContext, off: usize) -> Verdict {
        let Some(h) = bytes_at::<24>(ctx, off) else {
            return MALFORMED;
        };
        // The fixed header is 40 bytes; make sure the rest (the
        // destination) is there too.
        if bytes_at::<16>(ctx, off + 24).is_none() || h[0] >> 4 != 6 {
            return MALFORMED;
        }
        let dst = Dst {
            ctx,
            off: off + 24,
            v6: true,
        };
        let mut src = [0u8; 16];
        src.copy_from_slice(&h[8..24]);
        let mut next = h[6];
        let mut off = off + 40;
        for _ in 0..MAX_EXT_HEADERS {
            match next {
                IPPROTO_TCP | IPPROTO_UDP => break,
                IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                    let Some(e) = bytes_at::<2>(ctx, off) else {
                        return MALFORMED;
                    };
                    next = e[0];
                    off += (e[1] as usize + 1) * 8;
                }
                IPPROTO_AH => {
                    // AH counts its length in 4-byte units, minus 2.
                    let Some(e) = bytes_at::<2>(ctx, off) else {
                        return MALFORMED;
                    };
                    next = e[0];
                    off += (e[1] as usize + 2) * 4;
                }
                IPPROTO_FRAGMENT => {
                    let Some(e) = bytes_at::<4>(ctx, off) else {
                        return MALFORMED;
                    };
                    let n = e[0];
                    if u16::from_be_bytes([e[2], e[3]]) >> 3 != 0 {
                        return unknown_port(lookup_v6(src), dst);
                    }
                    next = n;
                    off += 8;
                }
                _ => return Verdict::pass(stat::PASS_NOT_TCP_UDP),
            }
            if off > MAX_OFFSET - 4 {
                // A chain longer than we read (the kernel takes it): the
                // port is unknown, not the packet malformed.
                return unknown_port(lookup_v6(src), dst);
            }
        }
        match next {
            IPPROTO_TCP | IPPROTO_UDP => {}
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT => {
                // More extension headers than we walk: the port is unknown.
                return unknown_port(lookup_v6(src), dst);
            }
            _ => return Verdict::pass(stat::PASS_NOT_TCP_UDP),
        }
        let Some(port) = be16_at(ctx, off + 2) else {
            return MALFORMED;
        };
        if !is_listener(port) {
            return Verdict::pass(stat::PASS_NOT_LISTENER);
        }
        if !filter_may_match(src[0], src[1], src[2]) {
            return Verdict::pass(stat::PASS_FILTER);
        }
        decide(longest_match_v6(src), port, dst)
    }

    #[inline(always)]
    fn lookup_v6(src: [u8; 16]) -> Option<DenyValue> {
        if !filter_may_match(src[0], src[1], src[2]) {
            return None;
        }
        longest_match_v6(src)
    }

    /// As for IPv4: an exact /128 from the host hash (a /128 is always the
    /// longest match), else the trie.
    #[inline(always)]
    fn longest_match_v6(src: [u8; 16]) -> Option<DenyValue> {
        // SAFETY: as HOST_V4's: a BPF_F_NO_PREALLOC hash, the value copied
        // out at once.
        if let Some(v) = unsafe { HOST_V6.get(src) } {
            return Some(*v);
        }
        DENY_V6.get(Key::new(128, src)).copied()
    }

    /// Where a packet's destination address is, read only when a packet
    /// would drop (so passes cost nothing for it).
    #[derive(Clone, Copy)]
    struct Dst<'a> {
        ctx: &'a XdpContext,
        off: usize,
        v6: bool,
    }

    /// Whether a packet to `dst` is the gateway's: always, unless the
    /// destination check is on and `dst` is none of its addresses (then the
    /// node forwards it, to a pod or another host, and it must pass).
    #[inline(always)]
    fn ours(dst: Dst<'_>) -> bool {
        if !matches!(LISTEN.get(common::DST_CHECK_SLOT), Some(on) if *on != 0) {
            return true;
        }
        let mut key = [0u8; 16];
        if dst.v6 {
            match bytes_at::<16>(dst.ctx, dst.off) {
                Some(a) => key = a,
                // Checked by the caller; dropping stays the safe side.
                None => return true,
            }
        } else {
            match bytes_at::<4>(dst.ctx, dst.off) {
                Some(a) => {
                    key[10] = 0xff;
                    key[11] = 0xff;
                    key[12..].copy_from_slice(&a);
                }
                None => return true,
            }
        }
        let words = [
            u64::from_ne_bytes([
                key[0], key[1], key[2], key[3], key[4], key[5], key[6], key[7],
            ]),
            u64::from_ne_bytes([
                key[8], key[9], key[10], key[11], key[12], key[13], key[14], key[15],
            ]),
        ];
        let generation = DST_GEN.get(0).copied().unwrap_or(0);
        let cache = DST_CACHE.get_ptr_mut(0);
        if let Some(c) = cache {
            // SAFETY: this CPU's slot; the program is not preempted.
            let c = unsafe { &*c };
            if c.generation == generation && c.addr == words {
                return c.ours != 0;
            }
        }
        // SAFETY: only the entry's presence is read.
        let ours = unsafe { LOCAL.get(key) }.is_some();
        if let Some(c) = cache {
            // SAFETY: as above.
            unsafe {
                *c = DstCache {
                    generation,
                    ours: ours.into(),
                    addr: words,
                };
            }
        }
        ours
    }

    #[inline(always)]
    fn is_listener(port: u16) -> bool {
        matches!(LISTEN.get(port as u32), Some(v) if *v != 0)
    }

    /// The front filter, indexed by a source's first three bytes (an IPv4
    /// /24, or the top 24 bits of an IPv6 address): `false` means no deny
    /// prefix of either family can contain the source, so the lookups are
    /// skipped. Always `true` when the loader turned the filter off.
    #[inline(always)]
    fn filter_may_match(a: u8, b: u8, c: u8) -> bool {
        if LLMGW_V4_FILTER_ON.load() == 0 {
            return true;
        }
        let n = ((a as u32) << 16) | ((b as u32) << 8) | c as u32;
        match V4_FILTER.get(n >> 6) {
            Some(word) => (*word >> (n & 63)) & 1 != 0,
            None => true,
        }
    }

    #[inline(always)]
    fn lookup_v4(src: [u8; 4]) -> Option<DenyValue> {
        if !filter_may_match(src[0], src[1], src[2]) {
            return None;
        }
        longest_match_v4(src)
    }

    /// The value of the longest deny prefix containing `src`: an exact /32
    /// from the host hash, else the trie (which holds the shorter ones).
    #[inline(always)]
    fn longest_match_v4(src: [u8; 4]) -> Option<DenyValue> {
        // SAFETY: a BPF_F_NO_PREALLOC hash: elements are RCU-freed, never
        // recycled under a reader; the value is copied out at once.
        if let Some(v) = unsafe { HOST_V4.get(src) } {
            return Some(*v);
        }
        DENY_V4.get(Key::new(32, src)).copied()
    }

    /// Drop decision for a packet to listener port `port` whose source's
    /// longest matching deny prefix has value `value`: a port-scoped rule of
    /// its class (more specific) over its all-ports rule.
    #[inline(always)]
    fn decide(value: Option<DenyValue>, port: u16, dst: Dst<'_>) -> Verdict {
        let Some(v) = value else {
            return Verdict::pass(stat::PASS_NO_MATCH);
        };
        let rule = class_rule(v.class, port).unwrap_or(v.all_ports_rule);
        drop_if_ours(rule, dst, stat::PASS_PORT_ALLOWED, false)
    }

    /// A packet whose port we cannot know (non-first fragment, a header
    /// chain longer than the walk reads): dropped when its source is denied
    /// at all, on every listener port or on some (charged to the class's
    /// lowest rule, kept under port [`common::UNKNOWN_PORT`]), and it is
    /// addressed to the gateway. A denied source must not get past a
    /// port-scoped rule by hiding its port.
    #[inline(always)]
    fn unknown_port(value: Option<DenyValue>, dst: Dst<'_>) -> Verdict {
        let Some(v) = value else {
            return Verdict::pass(stat::PASS_UNKNOWN_PORT);
        };
        let mut rule = v.all_ports_rule;
        if rule == common::NONE {
            rule = class_rule(v.class, common::UNKNOWN_PORT).unwrap_or(common::NONE);
        }
        drop_if_ours(rule, dst, stat::PASS_UNKNOWN_PORT, true)
    }

    /// The rule class `class` charges for `port`, if it lists the port.
    #[inline(always)]
    fn class_rule(class: u32, port: u16) -> Option<u32> {
        if class == common::NONE {
            return None;
        }
        // SAFETY: the value is a plain u32 read once; userspace never
        // rewrites a value in place (it inserts, then deletes).
        unsafe { PORTSET.get(ClassPortKey::new(class, port)) }.copied()
    }

    /// Drops, charged to `rule`, when there is one and the packet is
    /// addressed to the gateway; else passes (`no_rule`: why, when none).
    #[inline(always)]
    fn drop_if_ours(rule: u32, dst: Dst<'_>, no_rule: usize, unknown_port: bool) -> Verdict {
        if rule == common::NONE {
            return Verdict::pass(no_rule);
        }
        if !ours(dst) {
            return Verdict::pass(stat::PASS_NOT_LOCAL);
        }
        Verdict::drop(rule, unknown_port)
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 4] = *b"GPL\0";
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
