//! Moves the maps from one [`State`] to another by difference, in an order
//! that never lets a packet through that both states deny: everything that
//! is added or changed goes in first, then what is gone comes out.

use std::time::{Duration, Instant};

use llmgw_common::DenyValue;

use super::{
    L4Error,
    compile::{ClassContent, State, V4Key, V6Key},
};

/// One map write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// Zero the rule's counters and record its name.
    RuleAdd {
        id: u32,
        name: String,
    },
    /// Add one of the gateway's addresses (IPv4-mapped for IPv4).
    LocalAdd(u128),
    /// Turn the destination check on or off.
    DstCheck(bool),
    ListenerAdd(u16),
    ClassAdd {
        class: u32,
        content: ClassContent,
    },
    /// Store this front-filter bitmap (a superset of old and new first, exact last).
    Filter(std::sync::Arc<Vec<u64>>),
    V4Put {
        key: V4Key,
        value: DenyValue,
    },
    V6Put {
        key: V6Key,
        value: DenyValue,
    },
    V4Remove(V4Key),
    V6Remove(V6Key),
    ClassRemove {
        class: u32,
        content: ClassContent,
    },
    ListenerRemove(u16),
    RuleRemove(u32),
    LocalRemove(u128),
}

/// Where the ops go: the real maps, or a recorder in tests.
pub(crate) trait Target {
    fn apply(&mut self, op: &Op) -> Result<(), L4Error>;
    /// Writes whatever `apply` buffered; called after the last op.
    fn flush(&mut self) -> Result<(), L4Error> {
        Ok(())
    }
}

/// What a sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Trie entries inserted.
    pub added: usize,
    /// Trie entries whose value changed.
    pub updated: usize,
    /// Trie entries removed.
    pub removed: usize,
    /// Prefixes in the tries after the sync (IPv4 + IPv6).
    pub prefixes: usize,
    /// Distinct rules after the sync.
    pub rules: usize,
    pub elapsed: Duration,
}

/// The ops that turn `cur` into `next`, in safe order.
pub(crate) fn plan(cur: &State, next: &State, cur_filter: &[u64]) -> (Vec<Op>, SyncReport) {
    let mut ops = Vec::new();
    let mut report = SyncReport {
        prefixes: next.v4.len() + next.v6.len(),
        rules: next.rules.len(),
        ..SyncReport::default()
    };

    // 1. Additions, from the leaves of the reference graph up: rules (ids
    //    are never reused within a sync, see `compile`), listener ports,
    //    classes, the filter bits, then trie entries.
    for (id, name) in &next.rules {
        if !cur.rules.contains_key(id) {
            ops.push(Op::RuleAdd {
                id: *id,
                name: name.clone(),
            });
        }
    }
    // The gateway's new addresses before the check that needs them; the
    // check itself may change at once (a packet both states deny is to an
    // address both hold).
    for a in next.local.difference(&cur.local) {
        ops.push(Op::LocalAdd(*a));
    }
    if next.dst_check != cur.dst_check {
        ops.push(Op::DstCheck(next.dst_check));
    }
    for p in next.listeners.difference(&cur.listeners) {
        ops.push(Op::ListenerAdd(*p));
    }
    for (class, content) in &next.classes {
        if !cur.classes.contains_key(class) {
            ops.push(Op::ClassAdd {
                class: *class,
                content: content.clone(),
            });
        }
    }
    let next_filter = next.filter();
    let union: Vec<u64> = next_filter
        .iter()
        .zip(cur_filter.iter().chain(std::iter::repeat(&0)))
        .map(|(a, b)| a | b)
        .collect();
    if union.as_slice() != cur_filter {
        ops.push(Op::Filter(union.into()));
    }
    let mut puts = |added: bool, op: Op| {
        if added {
            report.added += 1;
        } else {
            report.updated += 1;
        }
        ops.push(op);
    };
    for (key, value) in &next.v4 {
        match cur.v4.get(key) {
            Some(old) if old == value => {}
            old => puts(
                old.is_none(),
                Op::V4Put {
                    key: *key,
                    value: *value,
                },
            ),
        }
    }
    for (key, value) in &next.v6 {
        match cur.v6.get(key) {
            Some(old) if old == value => {}
            old => puts(
                old.is_none(),
                Op::V6Put {
                    key: *key,
                    value: *value,
                },
            ),
        }
    }

    // 2. Removals, in the reverse order.
    for key in cur.v4.keys() {
        if !next.v4.contains_key(key) {
            report.removed += 1;
            ops.push(Op::V4Remove(*key));
        }
    }
    for key in cur.v6.keys() {
        if !next.v6.contains_key(key) {
            report.removed += 1;
            ops.push(Op::V6Remove(*key));
        }
    }
    if next_filter.as_slice() != cur_filter {
        ops.push(Op::Filter(next_filter.into()));
    }
    for (class, content) in &cur.classes {
        if !next.classes.contains_key(class) {
            ops.push(Op::ClassRemove {
                class: *class,
                content: content.clone(),
            });
        }
    }
    for p in cur.listeners.difference(&next.listeners) {
        ops.push(Op::ListenerRemove(*p));
    }
    for id in cur.rules.keys() {
        if !next.rules.contains_key(id) {
            ops.push(Op::RuleRemove(*id));
        }
    }
    for a in cur.local.difference(&next.local) {
        ops.push(Op::LocalRemove(*a));
    }
    (ops, report)
}

/// Applies the plan from `cur` to `next` on `target`. On error the maps hold
/// a mix of both states (never less than what both deny); the caller must
/// re-read them before the next sync.
pub(crate) fn apply(
    target: &mut dyn Target,
    cur: &State,
    next: &State,
    cur_filter: &[u64],
) -> Result<SyncReport, L4Error> {
    let start = Instant::now();
    let (ops, mut report) = plan(cur, next, cur_filter);
    for op in &ops {
        target.apply(op)?;
    }
    target.flush()?;
    report.elapsed = start.elapsed();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l4::{DenyEntry, L4Rules, compile::compile};

    fn rules(entries: &[(&str, &str, Option<&[u16]>)], listen: &[u16]) -> L4Rules {
        L4Rules {
            entries: entries
                .iter()
                .map(|(net, rule, ports)| DenyEntry {
                    net: net.parse().unwrap(),
                    rule: (*rule).into(),
                    ports: ports.map(<[u16]>::to_vec),
                })
                .collect(),
            listener_ports: listen.to_vec(),
            destinations: crate::l4::Destinations::Any,
        }
    }

    /// Replays ops on an in-memory model and checks after every op that a
    /// set of probe packets denied by both states stays denied.
    struct Model {
        state: State,
        filter: Vec<u64>,
        ops: Vec<Op>,
    }

    impl Model {
        fn denies_v4(&self, src: u32, port: u16) -> bool {
            if !self.state.listeners.contains(&port) {
                return false;
            }
            let n = (src >> 8) as usize;
            if self.filter[n / 64] >> (n % 64) & 1 == 0 {
                return false;
            }
            let best = (0..=32u8).rev().find_map(|len| {
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                self.state.v4.get(&(src & mask, len))
            });
            self.drops(best, port)
        }
    }

    impl Model {
        fn denies_v6(&self, src: u128, port: u16) -> bool {
            if !self.state.listeners.contains(&port) {
                return false;
            }
            let n = (src >> 104) as usize;
            if self.filter[n / 64] >> (n % 64) & 1 == 0 {
                return false;
            }
            let best = (0..=128u8).rev().find_map(|len| {
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len)
                };
                self.state.v6.get(&(src & mask, len))
            });
            self.drops(best, port)
        }
    }

    impl Model {
        /// The program's decision for the longest match `best` and `port`.
        fn drops(&self, best: Option<&DenyValue>, port: u16) -> bool {
            let Some(v) = best else { return false };
            let in_class = self
                .state
                .classes
                .get(&v.class)
                .is_some_and(|c| c.iter().any(|(p, _)| *p == port));
            in_class || v.all_ports_rule != 0
        }
    }

    impl Target for Model {
        fn apply(&mut self, op: &Op) -> Result<(), L4Error> {
            self.ops.push(op.clone());
            let s = &mut self.state;
            match op {
                Op::RuleAdd { id, name } => {
                    s.rules.insert(*id, name.clone());
                }
                Op::RuleRemove(id) => {
                    s.rules.remove(id);
                }
                Op::ListenerAdd(p) => {
                    s.listeners.insert(*p);
                }
                Op::ListenerRemove(p) => {
                    s.listeners.remove(p);
                }
                Op::LocalAdd(a) => {
                    s.local.insert(*a);
                }
                Op::LocalRemove(a) => {
                    s.local.remove(a);
                }
                Op::DstCheck(on) => s.dst_check = *on,
                Op::ClassAdd { class, content } => {
                    s.classes.insert(*class, content.clone());
                }
                Op::ClassRemove { class, .. } => {
                    s.classes.remove(class);
                }
                Op::Filter(words) => self.filter = words.to_vec(),
                Op::V4Put { key, value } => {
                    s.v4.insert(*key, *value);
                }
                Op::V4Remove(key) => {
                    s.v4.remove(key);
                }
                Op::V6Put { key, value } => {
                    s.v6.insert(*key, *value);
                }
                Op::V6Remove(key) => {
                    s.v6.remove(key);
                }
            }
            Ok(())
        }
    }

    fn ip(s: &str) -> u32 {
        u32::from(s.parse::<std::net::Ipv4Addr>().unwrap())
    }

    #[test]
    fn no_packet_denied_by_both_states_passes_midway() {
        let a = rules(
            &[
                ("10.0.0.0/24", "net", None),
                ("10.0.0.7/32", "host", Some(&[443])),
                ("172.16.0.0/12", "wide", Some(&[80])),
                ("192.0.2.0/24", "gone", None),
            ],
            &[80, 443],
        );
        let b = rules(
            &[
                ("10.0.0.0/24", "net", Some(&[80, 443])),
                ("10.0.0.0/16", "wider", None),
                ("172.16.5.0/24", "narrow", Some(&[80, 8080])),
                ("198.51.100.0/24", "new", None),
            ],
            &[80, 443, 8080],
        );
        let sa = compile(&a, &State::default()).unwrap();
        let sb = compile(&b, &sa).unwrap();
        let probes: Vec<(u32, u16)> = [
            "10.0.0.7",
            "10.0.0.8",
            "10.0.1.1",
            "172.16.5.5",
            "172.17.0.1",
            "192.0.2.1",
            "198.51.100.1",
            "8.8.8.8",
        ]
        .iter()
        .flat_map(|s| [80u16, 443, 8080, 22].map(|p| (ip(s), p)))
        .collect();

        let mut model = Model {
            state: sa.clone(),
            filter: sa.filter(),
            ops: vec![],
        };
        let in_a: Vec<bool> = probes
            .iter()
            .map(|(s, p)| model.denies_v4(*s, *p))
            .collect();
        let (ops, report) = plan(&sa, &sb, &sa.filter());
        assert!(report.added > 0 && report.removed > 0);
        for op in &ops {
            model.apply(op).unwrap();
            let in_b_model = Model {
                state: sb.clone(),
                filter: sb.filter(),
                ops: vec![],
            };
            for (i, (s, p)) in probes.iter().enumerate() {
                if in_a[i] && in_b_model.denies_v4(*s, *p) {
                    assert!(model.denies_v4(*s, *p), "{s:x}:{p} passed after {op:?}");
                }
            }
        }
        assert_eq!(model.state, sb);
        assert_eq!(model.filter, sb.filter());
        // Sanity: some probes flip, so the test can tell states apart.
        let in_b: Vec<bool> = probes
            .iter()
            .map(|(s, p)| model.denies_v4(*s, *p))
            .collect();
        assert_ne!(in_a, in_b);
        assert!(in_a.iter().zip(&in_b).any(|(a, b)| *a && *b));
    }

    #[test]
    fn no_ipv6_packet_denied_by_both_states_passes_midway() {
        // The front filter is shared with IPv4: IPv6 prefixes set the bits of
        // their first 24 bits (ranges for prefixes shorter than /24).
        let a = rules(
            &[
                ("2001:db8::/48", "net", None),
                ("2001:db8:0:1::7/128", "host", Some(&[443])),
                ("3000::/4", "wide", Some(&[80])),
                ("fd00:1::/32", "gone", None),
                ("10.0.0.0/8", "v4", None),
            ],
            &[80, 443],
        );
        let b = rules(
            &[
                ("2001:db8::/48", "net", Some(&[80, 443])),
                ("2001:db8::/32", "wider", None),
                ("3000::/8", "narrow", Some(&[80])),
                ("fd00:2::/40", "new", None),
            ],
            &[80, 443],
        );
        let sa = compile(&a, &State::default()).unwrap();
        let sb = compile(&b, &sa).unwrap();
        let v6 = |s: &str| u128::from(s.parse::<std::net::Ipv6Addr>().unwrap());
        let probes: Vec<(u128, u16)> = [
            "2001:db8::1",
            "2001:db8:0:1::7",
            "2001:db8:ffff::1",
            "3000::1",
            "3f00::1",
            "fd00:1::1",
            "fd00:2::1",
            "2a00::1",
        ]
        .iter()
        .flat_map(|s| [80u16, 443, 22].map(|p| (v6(s), p)))
        .collect();
        let mut model = Model {
            state: sa.clone(),
            filter: sa.filter(),
            ops: vec![],
        };
        let target = Model {
            state: sb.clone(),
            filter: sb.filter(),
            ops: vec![],
        };
        let in_a: Vec<bool> = probes
            .iter()
            .map(|(s, p)| model.denies_v6(*s, *p))
            .collect();
        let (ops, _) = plan(&sa, &sb, &sa.filter());
        for op in &ops {
            model.apply(op).unwrap();
            for (i, (s, p)) in probes.iter().enumerate() {
                if in_a[i] && target.denies_v6(*s, *p) {
                    assert!(model.denies_v6(*s, *p), "{s:x}:{p} passed after {op:?}");
                }
            }
        }
        assert_eq!(model.filter, sb.filter());
        let in_b: Vec<bool> = probes
            .iter()
            .map(|(s, p)| model.denies_v6(*s, *p))
            .collect();
        assert_ne!(in_a, in_b);
        assert!(in_a.iter().zip(&in_b).any(|(a, b)| *a && *b));
        // 3000::/4 set 2^20 bits; 3000::/8 leaves 2^16, and 2a00:: none.
        let bit = |f: &[u64], a: u128| {
            let n = (a >> 104) as usize;
            f[n / 64] >> (n % 64) & 1 == 1
        };
        assert!(bit(&sa.filter(), v6("3f00::1")) && !bit(&sb.filter(), v6("3f00::1")));
        assert!(!bit(&sb.filter(), v6("2a00::1")));
    }

    #[test]
    fn removals_come_after_every_addition() {
        let a = rules(
            &[("10.0.0.0/8", "a", None), ("fd00::/64", "a6", None)],
            &[80],
        );
        let b = rules(
            &[("11.0.0.0/8", "b", Some(&[80])), ("fd01::/64", "b6", None)],
            &[443],
        );
        let sa = compile(&a, &State::default()).unwrap();
        let sb = compile(&b, &sa).unwrap();
        let (ops, _) = plan(&sa, &sb, &sa.filter());
        let is_removal = |op: &Op| {
            matches!(
                op,
                Op::V4Remove(_)
                    | Op::V6Remove(_)
                    | Op::ClassRemove { .. }
                    | Op::ListenerRemove(_)
                    | Op::RuleRemove(_)
            )
        };
        let first_removal = ops.iter().position(is_removal).unwrap();
        let last_addition = ops
            .iter()
            .rposition(|op| !is_removal(op) && !matches!(op, Op::Filter(_)))
            .unwrap();
        assert!(last_addition < first_removal, "{ops:#?}");
        // The filter is widened before the first trie insert and narrowed
        // after the last trie removal.
        let first_put = ops
            .iter()
            .position(|o| matches!(o, Op::V4Put { .. }))
            .unwrap();
        let widen = ops.iter().position(|o| matches!(o, Op::Filter(_))).unwrap();
        let narrow = ops
            .iter()
            .rposition(|o| matches!(o, Op::Filter(_)))
            .unwrap();
        let last_remove = ops
            .iter()
            .rposition(|o| matches!(o, Op::V4Remove(_)))
            .unwrap();
        assert!(widen < first_put && narrow > last_remove);
    }

    #[test]
    fn unchanged_rules_write_nothing() {
        let a = rules(&[("10.0.0.0/8", "a", Some(&[80]))], &[80]);
        let sa = compile(&a, &State::default()).unwrap();
        let sb = compile(&a, &sa).unwrap();
        let (ops, report) = plan(&sa, &sb, &sa.filter());
        assert!(ops.is_empty(), "{ops:?}");
        assert_eq!((report.added, report.updated, report.removed), (0, 0, 0));
    }
}
