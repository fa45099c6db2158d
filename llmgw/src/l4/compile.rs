//! Turns [`L4Rules`] into the exact contents of the XDP maps (a [`State`]):
//! stable rule ids, one trie value per distinct prefix that already accounts
//! for every enclosing prefix, interned port-set classes, the front-filter bitmap.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ipnet::IpNet;
use llmgw_common::{self as common, DenyValue};

use super::{Destinations, L4Error, L4Rules};

/// An IPv4 trie key: network address (host order, host bits clear), length.
pub(crate) type V4Key = (u32, u8);
/// An IPv6 trie key.
pub(crate) type V6Key = (u128, u8);
/// A port-set class: sorted `(port, rule id)` pairs.
pub(crate) type ClassContent = Vec<(u16, u32)>;

/// What the maps hold (or must hold): the unit `sync` diffs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct State {
    /// Rule id to rule name.
    pub rules: BTreeMap<u32, String>,
    pub v4: HashMap<V4Key, DenyValue>,
    pub v6: HashMap<V6Key, DenyValue>,
    pub classes: BTreeMap<u32, ClassContent>,
    pub listeners: BTreeSet<u16>,
    /// Drops need a destination in `local` (`LISTEN[DST_CHECK_SLOT]`).
    pub dst_check: bool,
    /// The gateway's own addresses, IPv4 as IPv4-mapped IPv6.
    pub local: BTreeSet<u128>,
}

/// An address as `MAP_LOCAL` keys it: IPv4 as IPv4-mapped IPv6.
pub(crate) fn local_key(ip: std::net::IpAddr) -> u128 {
    match ip {
        std::net::IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        std::net::IpAddr::V6(v6) => u128::from(v6),
    }
}

impl State {
    /// Number of `(class, port)` entries.
    pub fn portset_entries(&self) -> usize {
        self.classes.values().map(Vec::len).sum()
    }

    /// The front-filter bitmap: bit `n` is set when some deny prefix can
    /// contain a source whose top 24 bits are `n`: an IPv4 /24, or the first
    /// 24 bits of an IPv6 address. Both families share the one bitmap (a bit
    /// set by one family only costs the other a trie lookup).
    pub fn filter(&self) -> Vec<u64> {
        let mut words = vec![0u64; common::V4_FILTER_WORDS as usize];
        let count = |len: u8| if len >= 24 { 1 } else { 1usize << (24 - len) };
        for &(addr, len) in self.v4.keys() {
            set_bits(&mut words, (addr >> 8) as usize, count(len));
        }
        for &(addr, len) in self.v6.keys() {
            set_bits(&mut words, (addr >> 104) as usize, count(len));
        }
        words
    }
}

/// Sets bits `first..first + count` of a bitmap stored as 64-bit words.
fn set_bits(words: &mut [u64], first: usize, count: usize) {
    let mut bit = first;
    let end = first + count;
    while bit < end {
        let (w, b) = (bit / 64, bit % 64);
        let n = (64 - b).min(end - bit);
        let mask = if n == 64 {
            u64::MAX
        } else {
            ((1u64 << n) - 1) << b
        };
        if let Some(word) = words.get_mut(w) {
            *word |= mask;
        }
        bit += n;
    }
}

/// The lowest free ids at or above 1, skipping `used`.
struct IdAlloc {
    used: BTreeSet<u32>,
    next: u32,
}

impl IdAlloc {
    fn new(used: impl IntoIterator<Item = u32>) -> Self {
        Self {
            used: used.into_iter().collect(),
            next: 1,
        }
    }

    fn alloc(&mut self) -> u32 {
        while self.used.contains(&self.next) {
            self.next += 1;
        }
        let id = self.next;
        self.used.insert(id);
        self.next += 1;
        id
    }
}

/// What the entries of one exact prefix say by themselves.
#[derive(Default)]
struct Own {
    /// The lowest rule id among entries denying every listener port.
    all: Option<u32>,
    /// Per port, the lowest rule id among entries denying that port.
    ports: BTreeMap<u16, u32>,
}

impl Own {
    fn add(&mut self, rule: u32, ports: Option<&[u16]>) {
        match ports {
            None => self.all = Some(self.all.map_or(rule, |r| r.min(rule))),
            Some(ports) => {
                for &p in ports {
                    let r = self.ports.entry(p).or_insert(rule);
                    *r = (*r).min(rule);
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.all.is_none() && self.ports.is_empty()
    }
}

/// The decision for one prefix, counting every prefix that contains it.
#[derive(Clone, Default)]
struct Effective {
    all: Option<u32>,
    /// Port-scoped rules more specific than `all`.
    ports: BTreeMap<u16, u32>,
}

/// Does prefix `p` contain prefix `q` (both `width`-bit addresses)?
fn contains(p: (u128, u8), q: (u128, u8), width: u8) -> bool {
    if p.1 > q.1 {
        return false;
    }
    if p.1 == 0 {
        return true;
    }
    let shift = u32::from(width - p.1);
    (p.0 ^ q.0) >> shift == 0
}

/// Walks the prefixes in address order (a pre-order of the prefix tree) with
/// a stack of enclosing prefixes, so that each effective value is its
/// parent's plus its own entries.
fn effective(own: BTreeMap<(u128, u8), Own>, width: u8) -> Vec<((u128, u8), Effective)> {
    let mut out = Vec::with_capacity(own.len());
    let mut stack: Vec<((u128, u8), Effective)> = Vec::new();
    for (key, o) in own {
        while let Some((top, _)) = stack.last() {
            if contains(*top, key, width) {
                break;
            }
            stack.pop();
        }
        let parent = stack.last().map(|(_, e)| e);
        let eff = if o.all.is_some() {
            // An all-ports rule here is at least as specific as every
            // port-scoped rule above or beside it: it takes every drop.
            Effective {
                all: o.all,
                ports: BTreeMap::new(),
            }
        } else {
            let mut e = parent.cloned().unwrap_or_default();
            e.ports.extend(o.ports);
            e
        };
        stack.push((key, eff.clone()));
        out.push((key, eff));
    }
    out
}

/// Computes the map contents for `rules`, reusing the rule ids and class ids
/// of `current` (what the maps hold now) so counters stay attributed and
/// unchanged entries are not rewritten. New ids never reuse an id `current`
/// still holds, so during a sync old and new entries never disagree on what
/// an id means.
pub(crate) fn compile(rules: &L4Rules, current: &State) -> Result<State, L4Error> {
    let (dst_check, local) = match &rules.destinations {
        Destinations::Any => (false, BTreeSet::new()),
        Destinations::Only(ips) => (true, ips.iter().map(|ip| local_key(*ip)).collect()),
        Destinations::Host => {
            let ips = super::host_addresses()
                .map_err(|e| L4Error::io("reading interface addresses", e))?;
            (true, ips.into_iter().map(local_key).collect())
        }
    };
    // More addresses than the map holds: drop by port alone, as before the
    // check existed, rather than refuse to protect the gateway.
    let (dst_check, local) = if local.len() > common::LOCAL_ENTRIES as usize {
        tracing::warn!(
            addresses = local.len(),
            limit = common::LOCAL_ENTRIES,
            "XDP: too many local addresses to check destinations; dropping by source and port alone"
        );
        (false, BTreeSet::new())
    } else {
        (dst_check, local)
    };
    let mut next = State {
        listeners: rules
            .listener_ports
            .iter()
            .copied()
            .filter(|p| *p != 0)
            .collect(),
        dst_check,
        local,
        ..State::default()
    };

    // Rule ids: stable by name.
    let known: HashMap<&str, u32> = current
        .rules
        .iter()
        .map(|(id, name)| (name.as_str(), *id))
        .collect();
    let mut rule_ids = IdAlloc::new(current.rules.keys().copied());
    let mut ids: HashMap<&str, u32> = HashMap::new();
    for e in &rules.entries {
        if ids.contains_key(e.rule.as_str()) {
            continue;
        }
        if e.rule.len() > common::RULE_NAME_MAX {
            return Err(L4Error::RuleNameTooLong {
                name: e.rule.chars().take(64).collect(),
                len: e.rule.len(),
                limit: common::RULE_NAME_MAX,
            });
        }
        let id = match known.get(e.rule.as_str()) {
            Some(id) => *id,
            None => rule_ids.alloc(),
        };
        if id >= common::MAX_RULES {
            return Err(L4Error::TooMany {
                what: "rules (distinct rule names, old and new during a sync)",
                got: id as usize,
                limit: common::MAX_RULES as usize - 1,
            });
        }
        ids.insert(e.rule.as_str(), id);
        next.rules.insert(id, e.rule.clone());
    }

    // Group the entries by exact (normalised) prefix.
    let mut own4: BTreeMap<(u128, u8), Own> = BTreeMap::new();
    let mut own6: BTreeMap<(u128, u8), Own> = BTreeMap::new();
    for e in &rules.entries {
        let rule = ids[e.rule.as_str()];
        let ports = e.ports.as_deref();
        match e.net.trunc() {
            IpNet::V4(n) => own4
                .entry((u128::from(u32::from(n.network())), n.prefix_len()))
                .or_default()
                .add(rule, ports),
            IpNet::V6(n) => own6
                .entry((u128::from(n.network()), n.prefix_len()))
                .or_default()
                .add(rule, ports),
        }
    }
    own4.retain(|_, o| !o.is_empty());
    own6.retain(|_, o| !o.is_empty());
    if own4.len() > common::MAX_V4_PREFIXES as usize {
        return Err(L4Error::TooMany {
            what: "IPv4 deny prefixes",
            got: own4.len(),
            limit: common::MAX_V4_PREFIXES as usize,
        });
    }
    if own6.len() > common::MAX_V6_PREFIXES as usize {
        return Err(L4Error::TooMany {
            what: "IPv6 deny prefixes",
            got: own6.len(),
            limit: common::MAX_V6_PREFIXES as usize,
        });
    }

    // Classes: interned by content, keeping the ids `current` uses.
    let known_classes: HashMap<&ClassContent, u32> =
        current.classes.iter().map(|(id, c)| (c, *id)).collect();
    let mut class_ids = IdAlloc::new(current.classes.keys().copied());
    let mut interned: HashMap<ClassContent, u32> = HashMap::new();
    let mut intern = |mut ports: BTreeMap<u16, u32>, classes: &mut BTreeMap<u32, ClassContent>| {
        let Some(lowest) = ports.values().min().copied() else {
            return common::NONE;
        };
        // Packets whose port is unknown are charged to the lowest rule.
        ports.insert(common::UNKNOWN_PORT, lowest);
        let content: ClassContent = ports.into_iter().collect();
        if let Some(id) = interned.get(&content) {
            return *id;
        }
        let id = known_classes
            .get(&content)
            .copied()
            .unwrap_or_else(|| class_ids.alloc());
        classes.insert(id, content.clone());
        interned.insert(content, id);
        id
    };

    for (key, eff) in effective(own4, 32) {
        let class = intern(eff.ports, &mut next.classes);
        let value = DenyValue {
            all_ports_rule: eff.all.unwrap_or(common::NONE),
            class,
        };
        // Keys are built from u32 addresses, so this never truncates.
        next.v4.insert((key.0 as u32, key.1), value);
    }
    for (key, eff) in effective(own6, 128) {
        let class = intern(eff.ports, &mut next.classes);
        let value = DenyValue {
            all_ports_rule: eff.all.unwrap_or(common::NONE),
            class,
        };
        next.v6.insert(key, value);
    }
    let entries = next.portset_entries();
    if entries > common::MAX_PORTSET_ENTRIES as usize {
        return Err(L4Error::TooMany {
            what: "(port-set class, port) entries",
            got: entries,
            limit: common::MAX_PORTSET_ENTRIES as usize,
        });
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l4::DenyEntry;

    fn entry(net: &str, rule: &str, ports: Option<&[u16]>) -> DenyEntry {
        DenyEntry {
            net: net.parse().unwrap(),
            rule: rule.into(),
            ports: ports.map(<[u16]>::to_vec),
        }
    }

    fn v4(s: &State, net: &str) -> DenyValue {
        let n: ipnet::Ipv4Net = net.parse().unwrap();
        s.v4[&(u32::from(n.network()), n.prefix_len())]
    }

    fn rule_id(s: &State, name: &str) -> u32 {
        *s.rules.iter().find(|(_, n)| *n == name).unwrap().0
    }

    #[test]
    fn host_bits_are_cleared_and_duplicates_merge() {
        let rules = L4Rules {
            entries: vec![
                entry("10.1.2.3/24", "a", None),
                entry("10.1.2.0/24", "b", None),
            ],
            listener_ports: vec![80],
            destinations: Default::default(),
        };
        let s = compile(&rules, &State::default()).unwrap();
        assert_eq!(s.v4.len(), 1);
        assert_eq!(s.rules.len(), 2);
        // The lower rule id of the two takes the drops.
        assert_eq!(v4(&s, "10.1.2.0/24").all_ports_rule, rule_id(&s, "a"));
    }

    #[test]
    fn port_scoped_host_inside_all_ports_network() {
        let rules = L4Rules {
            entries: vec![
                entry("10.0.0.0/24", "net", None),
                entry("10.0.0.7/32", "host", Some(&[443])),
                entry("10.9.0.0/16", "scoped", Some(&[80, 443])),
                entry("10.9.1.0/24", "inner", Some(&[8080])),
            ],
            listener_ports: vec![80, 443, 8080],
            destinations: Default::default(),
        };
        let s = compile(&rules, &State::default()).unwrap();
        let host = v4(&s, "10.0.0.7/32");
        assert_eq!(host.all_ports_rule, rule_id(&s, "net"));
        // Port 0 (UNKNOWN_PORT) charges packets without a known port to the
        // class's lowest rule.
        assert_eq!(
            s.classes[&host.class],
            vec![(0, rule_id(&s, "host")), (443, rule_id(&s, "host"))]
        );
        let inner = v4(&s, "10.9.1.0/24");
        assert_eq!(inner.all_ports_rule, 0);
        assert_eq!(
            s.classes[&inner.class],
            vec![
                (0, rule_id(&s, "scoped").min(rule_id(&s, "inner"))),
                (80, rule_id(&s, "scoped")),
                (443, rule_id(&s, "scoped")),
                (8080, rule_id(&s, "inner"))
            ]
        );
        // An all-ports rule under a port-scoped one takes every port.
        let rules = L4Rules {
            entries: vec![
                entry("10.9.0.0/16", "scoped", Some(&[80])),
                entry("10.9.1.0/24", "all", None),
            ],
            listener_ports: vec![80],
            destinations: Default::default(),
        };
        let s = compile(&rules, &State::default()).unwrap();
        let all = v4(&s, "10.9.1.0/24");
        assert_eq!((all.all_ports_rule, all.class), (rule_id(&s, "all"), 0));
    }

    #[test]
    fn classes_are_shared_and_ids_stable() {
        let mut entries: Vec<_> = (0..100)
            .map(|i| entry(&format!("192.168.{i}.1/32"), "r", Some(&[443])))
            .collect();
        let rules = L4Rules {
            entries: entries.clone(),
            listener_ports: vec![443],
            destinations: Default::default(),
        };
        let s1 = compile(&rules, &State::default()).unwrap();
        assert_eq!(s1.classes.len(), 1);
        entries.push(entry("fd00::/64", "other", None));
        entries.remove(0);
        let rules2 = L4Rules {
            entries,
            listener_ports: vec![443],
            destinations: Default::default(),
        };
        let s2 = compile(&rules2, &s1).unwrap();
        assert_eq!(rule_id(&s2, "r"), rule_id(&s1, "r"));
        assert_eq!(s2.classes, s1.classes);
        assert_ne!(rule_id(&s2, "other"), rule_id(&s1, "r"));
    }

    #[test]
    fn new_ids_never_reuse_current_ones() {
        let cur = compile(
            &L4Rules {
                entries: vec![entry("10.0.0.0/8", "old", Some(&[1]))],
                listener_ports: vec![],
                destinations: Default::default(),
            },
            &State::default(),
        )
        .unwrap();
        let next = compile(
            &L4Rules {
                entries: vec![entry("10.0.0.0/8", "new", Some(&[2]))],
                listener_ports: vec![],
                destinations: Default::default(),
            },
            &cur,
        )
        .unwrap();
        assert!(next.rules.keys().all(|id| !cur.rules.contains_key(id)));
        assert!(next.classes.keys().all(|id| !cur.classes.contains_key(id)));
    }

    #[test]
    fn empty_port_list_denies_nothing() {
        let s = compile(
            &L4Rules {
                entries: vec![entry("10.0.0.0/8", "r", Some(&[]))],
                listener_ports: vec![80],
                destinations: Default::default(),
            },
            &State::default(),
        )
        .unwrap();
        assert!(s.v4.is_empty());
    }

    #[test]
    fn long_names_are_rejected() {
        let name = "x".repeat(common::RULE_NAME_MAX + 1);
        let err = compile(
            &L4Rules {
                entries: vec![entry("10.0.0.0/8", &name, None)],
                listener_ports: vec![],
                destinations: Default::default(),
            },
            &State::default(),
        )
        .unwrap_err();
        assert!(matches!(err, L4Error::RuleNameTooLong { .. }));
    }

    #[test]
    fn bitmap_covers_short_prefixes() {
        let s = compile(
            &L4Rules {
                entries: vec![
                    entry("10.0.0.0/22", "a", None),
                    entry("192.168.1.1/32", "b", None),
                    entry("0.0.0.0/0", "c", Some(&[1])),
                ],
                listener_ports: vec![],
                destinations: Default::default(),
            },
            &State::default(),
        )
        .unwrap();
        let words = s.filter();
        assert!(words.iter().all(|w| *w == u64::MAX));
        let s = compile(
            &L4Rules {
                entries: vec![entry("10.0.0.0/22", "a", None)],
                listener_ports: vec![],
                destinations: Default::default(),
            },
            &State::default(),
        )
        .unwrap();
        let words = s.filter();
        let base = 10usize << 16;
        assert_eq!(words[base / 64], 0b1111);
        assert_eq!(words.iter().map(|w| w.count_ones()).sum::<u32>(), 4);
    }

    #[test]
    fn destinations_become_the_local_set_or_turn_the_check_off() {
        let with = |d: Destinations| {
            let rules = L4Rules {
                entries: vec![entry("10.0.0.0/8", "ns/p[0]", None)],
                listener_ports: vec![80],
                destinations: d,
            };
            compile(&rules, &State::default()).unwrap()
        };
        let s = with(Destinations::Any);
        assert!(!s.dst_check && s.local.is_empty());
        let s = with(Destinations::Only(vec![
            "192.0.2.1".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
        ]));
        assert!(s.dst_check);
        assert_eq!(
            s.local,
            [
                u128::from("::ffff:192.0.2.1".parse::<std::net::Ipv6Addr>().unwrap()),
                u128::from("2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap()),
            ]
            .into()
        );
        // The host's own addresses include loopback.
        let s = with(Destinations::Host);
        assert!(s.dst_check && s.local.contains(&local_key("127.0.0.1".parse().unwrap())));
        // More than the map holds: no check rather than no protection.
        let many = (0..=common::LOCAL_ENTRIES)
            .map(|i| std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)))
            .collect();
        let s = with(Destinations::Only(many));
        assert!(!s.dst_check && s.local.is_empty());
    }
}
