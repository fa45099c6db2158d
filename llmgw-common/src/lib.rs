//! Types shared by the llmgw XDP program and its userspace loader: BPF map
//! names, key and value layouts (`#[repr(C)]`, network byte order for
//! addresses), limits and counter indices. Both halves use these names only.
#![no_std]

/// Deny trie for IPv4 sources: `LpmTrie<[u8; 4], DenyValue>`.
///
/// Key: `{prefix_len: u32, addr: [u8; 4]}` (aya's `lpm_trie::Key`, packed),
/// address in network byte order, host bits cleared.
pub const MAP_DENY_V4: &str = "LLMGW_DENY_V4";
/// Exact IPv4 hosts (/32 deny entries): `HashMap<[u8; 4], DenyValue>`,
/// looked up before the trie (a /32 is always the longest match); the trie
/// then only holds shorter prefixes. Same values as the trie.
pub const MAP_HOST_V4: &str = "LLMGW_HOST_V4";
/// Deny trie for IPv6 sources: `LpmTrie<[u8; 16], DenyValue>`.
pub const MAP_DENY_V6: &str = "LLMGW_DENY_V6";
/// Listener ports: `Array<u8>` of 65536 entries indexed by destination port
/// (host byte order); non-zero means "the gateway listens on this port".
/// Slot [`DST_CHECK_SLOT`] (port 0) is the destination-check switch instead.
pub const MAP_LISTEN: &str = "LLMGW_LISTEN";
/// Per-class port sets: `HashMap<ClassPortKey, u32>`, value = the rule id to
/// charge for a drop.
pub const MAP_PORTSET: &str = "LLMGW_PORTSET";
/// Per-rule drop counters: `PerCpuArray<RuleCounters>` indexed by rule id.
pub const MAP_RULE_CTR: &str = "LLMGW_RULE_CTR";
/// Global counters: `PerCpuArray<Stats>` with one entry (index 0).
pub const MAP_STATS: &str = "LLMGW_STATS";
/// Front filter for both families (the name is historical): `Array<u64>`
/// (mmapable) bitmap; bit `n` is set when some deny prefix may contain a
/// source whose first 24 bits are `n`: an IPv4 prefix overlapping that /24,
/// or an IPv6 prefix overlapping addresses that begin with those 24 bits.
pub const MAP_V4_FILTER: &str = "LLMGW_V4_FILT";
/// Exact IPv6 /128s: `HashMap<[u8; 16], DenyValue>`, a mirror of the /128
/// entries of the IPv6 trie (which keeps them too), looked up first: a hash
/// lookup costs far less than a trie walk for a flood from many sources.
pub const MAP_HOST_V6: &str = "LLMGW_HOST_V6";
/// Rule names: `HashMap<u32, RuleName>` (rule id to name). Written and read by
/// userspace only; pinned with the other maps so names survive restarts.
pub const MAP_RULE_NAME: &str = "LLMGW_RULE_NAME";
/// The gateway's own addresses: `HashMap<[u8; 16], u8>`, IPv4 as
/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`). When `LISTEN[DST_CHECK_SLOT]` is set,
/// a packet is dropped only if its destination is one of them, so traffic
/// the node forwards (to pods, to other hosts) is never touched.
pub const MAP_LOCAL: &str = "LLMGW_LOCAL";
/// Index of the listener array that holds the destination-check switch
/// rather than a port (port 0 is never listened on).
pub const DST_CHECK_SLOT: u32 = 0;
/// The port under which a port-set class keeps the rule to charge for a
/// packet whose port is unknown (a non-first fragment, an IPv6 header chain
/// longer than the program walks): the lowest rule id of the class. No
/// listener has port 0.
pub const UNKNOWN_PORT: u16 = 0;
/// Entries of `MAP_LOCAL` (a host with kube-proxy in IPVS mode carries
/// every ClusterIP on a dummy interface).
pub const LOCAL_ENTRIES: u32 = 16384;
/// Generation of `MAP_LOCAL`: `Array<u32>` of one entry, bumped by
/// userspace after every change to it, so the program's per-CPU cache of
/// the last destination it looked up (`MAP_DST_CACHE`) is never stale.
pub const MAP_DST_GEN: &str = "LLMGW_DST_GEN";
/// The program's per-CPU cache of its last destination lookup:
/// `PerCpuArray<DstCache>` of one entry (not pinned: each program has its
/// own). A flood from denied sources to one address looks it up once.
pub const MAP_DST_CACHE: &str = "LLMGW_DST_CACHE";

/// One cached destination lookup: valid while `generation` equals
/// `MAP_DST_GEN`'s value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DstCache {
    pub generation: u32,
    /// 1 when `addr` is one of the gateway's addresses.
    pub ours: u32,
    /// The destination (16 bytes as in `MAP_LOCAL`), as two words.
    pub addr: [u64; 2],
}

/// Every map the program defines, in the order userspace pins them.
pub const ALL_MAPS: [&str; 12] = [
    MAP_DENY_V4,
    MAP_HOST_V4,
    MAP_DENY_V6,
    MAP_HOST_V6,
    MAP_LISTEN,
    MAP_PORTSET,
    MAP_RULE_CTR,
    MAP_STATS,
    MAP_V4_FILTER,
    MAP_RULE_NAME,
    MAP_LOCAL,
    MAP_DST_GEN,
];

/// Name of the XDP program in the object.
pub const PROGRAM_NAME: &str = "llmgw_xdp";
/// Read-only global (`.rodata`): 1 enables the front filter (a bitmap over
/// a source's first 24 bits: IPv4 /24s and the top of IPv6 addresses). The
/// loader may set it to 0 (benchmarks compare both).
pub const GLOBAL_V4_FILTER_ON: &str = "LLMGW_V4_FILTER_ON";

/// Most IPv4 prefixes userspace puts in the trie (the map allows twice as
/// many so that a sync, which inserts before it removes, has room).
pub const MAX_V4_PREFIXES: u32 = 1 << 21;
/// Most IPv6 prefixes (same rule as IPv4).
pub const MAX_V6_PREFIXES: u32 = 1 << 18;
/// Map sizes: room for the old and the new set during a sync.
pub const DENY_V4_MAP_ENTRIES: u32 = 2 * MAX_V4_PREFIXES;
pub const DENY_V6_MAP_ENTRIES: u32 = 2 * MAX_V6_PREFIXES;
pub const HOST_V4_MAP_ENTRIES: u32 = 2 * MAX_V4_PREFIXES;
pub const HOST_V6_MAP_ENTRIES: u32 = 2 * MAX_V6_PREFIXES;
/// Rule ids are `1..MAX_RULES`; 0 means "no rule".
pub const MAX_RULES: u32 = 4096;
/// Most `(class, port)` entries userspace keeps; the map has twice as many.
pub const MAX_PORTSET_ENTRIES: u32 = 1 << 16;
pub const PORTSET_MAP_ENTRIES: u32 = 2 * MAX_PORTSET_ENTRIES;
/// Entries of the listener port array (every u16 port).
pub const LISTEN_ENTRIES: u32 = 1 << 16;
/// Words of the front-filter bitmap: 2^24 bits / 64.
pub const V4_FILTER_WORDS: u32 = (1 << 24) / 64;
/// Longest rule name stored in `MAP_RULE_NAME` (bytes of UTF-8).
pub const RULE_NAME_MAX: usize = 384;

/// "No rule" / "no class".
pub const NONE: u32 = 0;

/// Value of both deny tries.
///
/// Userspace computes it per prefix from every deny entry whose prefix
/// contains this one (see `docs/l4.md`): a packet from a source whose longest
/// match is this prefix, to listener port `p`, is dropped and charged to
/// - the rule `PORTSET[{class, p}]` if `class != 0` and that entry exists
///   (port-scoped rules more specific than `all_ports_rule`),
/// - else `all_ports_rule` if it is not 0 (a rule denying every listener port),
/// - else it passes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DenyValue {
    pub all_ports_rule: u32,
    pub class: u32,
}

/// Key of `MAP_PORTSET`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClassPortKey {
    pub class: u32,
    /// Destination port, host byte order.
    pub port: u16,
    pub _pad: u16,
}

impl ClassPortKey {
    pub const fn new(class: u32, port: u16) -> Self {
        Self {
            class,
            port,
            _pad: 0,
        }
    }
}

/// Per-rule, per-CPU drop counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleCounters {
    pub packets: u64,
    pub bytes: u64,
}

/// Index into [`Stats::counters`].
pub mod stat {
    /// Every packet the program saw.
    pub const SEEN: usize = 0;
    /// Every packet it passed (the sum of the `PASS_*` reasons).
    pub const PASSED: usize = 1;
    /// Every packet it dropped (the per-rule counters say whose rule).
    pub const DROPPED: usize = 2;
    /// Passed: not IPv4/IPv6 (ARP, LLDP, more than two VLAN tags, ...).
    pub const PASS_NOT_IP: usize = 3;
    /// Passed: truncated or malformed headers.
    pub const PASS_MALFORMED: usize = 4;
    /// Passed: neither TCP nor UDP (ICMP, ESP, ...).
    pub const PASS_NOT_TCP_UDP: usize = 5;
    /// Passed: destination port is not a listener port.
    pub const PASS_NOT_LISTENER: usize = 6;
    /// Passed: the front filter said "no prefix here" (either family).
    pub const PASS_FILTER: usize = 7;
    /// Passed: no deny prefix contains the source.
    pub const PASS_NO_MATCH: usize = 8;
    /// Passed: the source is denied, but not on this port.
    pub const PASS_PORT_ALLOWED: usize = 9;
    /// Passed: a non-first fragment (or an IPv6 header chain longer than the
    /// walk bound) whose source is not denied on every listener port.
    pub const PASS_UNKNOWN_PORT: usize = 10;
    /// Dropped: non-first fragment or over-long IPv6 header chain from a
    /// source denied on every listener port (counted in `DROPPED` too).
    pub const DROP_UNKNOWN_PORT: usize = 11;
    /// Passed: denied source, but addressed to none of the gateway's own
    /// addresses (the destination check is on).
    pub const PASS_NOT_LOCAL: usize = 12;
    /// Number of counters.
    pub const COUNT: usize = 13;
    /// Names, for userspace output.
    pub const NAMES: [&str; COUNT] = [
        "seen",
        "passed",
        "dropped",
        "pass_not_ip",
        "pass_malformed",
        "pass_not_tcp_udp",
        "pass_not_listener",
        "pass_filter",
        "pass_no_match",
        "pass_port_allowed",
        "pass_unknown_port",
        "drop_unknown_port",
        "pass_not_local",
    ];
}

/// Global per-CPU counters (one entry in `MAP_STATS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    pub counters: [u64; stat::COUNT],
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            counters: [0; stat::COUNT],
        }
    }
}

/// A rule name as stored in `MAP_RULE_NAME`: `len` bytes of UTF-8.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RuleName {
    pub len: u32,
    pub bytes: [u8; RULE_NAME_MAX],
}

impl RuleName {
    /// The stored bytes (clamped to the buffer).
    pub fn as_bytes(&self) -> &[u8] {
        let len = (self.len as usize).min(RULE_NAME_MAX);
        &self.bytes[..len]
    }
}

#[cfg(feature = "user")]
mod user {
    use super::*;

    unsafe impl aya::Pod for DenyValue {}
    unsafe impl aya::Pod for ClassPortKey {}
    unsafe impl aya::Pod for RuleCounters {}
    unsafe impl aya::Pod for Stats {}
    unsafe impl aya::Pod for RuleName {}
    unsafe impl aya::Pod for DstCache {}
}
