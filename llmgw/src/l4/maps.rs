//! Typed handles on the program's maps, taken from a freshly loaded object or
//! reopened from their pins (checked against this binary's layout). They
//! apply sync ops, read the current [`State`] back, and read the counters.

use std::{
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::{
    Ebpf,
    maps::{
        Array, HashMap, LpmTrie, Map, MapData, MapError, MapType, PerCpuArray, PerCpuValues,
        lpm_trie::Key,
    },
};
use llmgw_common::{self as common, ClassPortKey, DenyValue, RuleCounters, RuleName, Stats};

use super::{
    L4Error,
    compile::State,
    sync::{Op, Target},
};

/// The shape every map must have; checked before adopting a pinned map.
struct Spec {
    name: &'static str,
    kind: MapType,
    max_entries: u32,
}

const SPECS: [Spec; 12] = [
    Spec {
        name: common::MAP_HOST_V4,
        kind: MapType::Hash,
        max_entries: common::HOST_V4_MAP_ENTRIES,
    },
    Spec {
        name: common::MAP_HOST_V6,
        kind: MapType::Hash,
        max_entries: common::HOST_V6_MAP_ENTRIES,
    },
    Spec {
        name: common::MAP_DENY_V4,
        kind: MapType::LpmTrie,
        max_entries: common::DENY_V4_MAP_ENTRIES,
    },
    Spec {
        name: common::MAP_DENY_V6,
        kind: MapType::LpmTrie,
        max_entries: common::DENY_V6_MAP_ENTRIES,
    },
    Spec {
        name: common::MAP_LISTEN,
        kind: MapType::Array,
        max_entries: common::LISTEN_ENTRIES,
    },
    Spec {
        name: common::MAP_PORTSET,
        kind: MapType::Hash,
        max_entries: common::PORTSET_MAP_ENTRIES,
    },
    Spec {
        name: common::MAP_RULE_CTR,
        kind: MapType::PerCpuArray,
        max_entries: common::MAX_RULES,
    },
    Spec {
        name: common::MAP_STATS,
        kind: MapType::PerCpuArray,
        max_entries: 1,
    },
    Spec {
        name: common::MAP_V4_FILTER,
        kind: MapType::Array,
        max_entries: common::V4_FILTER_WORDS,
    },
    Spec {
        name: common::MAP_RULE_NAME,
        kind: MapType::Hash,
        max_entries: common::MAX_RULES,
    },
    Spec {
        name: common::MAP_LOCAL,
        kind: MapType::Hash,
        max_entries: common::LOCAL_ENTRIES,
    },
    Spec {
        name: common::MAP_DST_GEN,
        kind: MapType::Array,
        max_entries: 1,
    },
];

/// Checks the pinned map at `path` (if any) against this binary's layout:
/// type and size here, key and value sizes when the typed handle is built.
pub(crate) fn check_pin(path: &Path, name: &'static str) -> Result<bool, L4Error> {
    if !path.exists() {
        return Ok(false);
    }
    let spec = SPECS
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| L4Error::NotPinned(path.to_path_buf()))?;
    let info = aya::maps::MapInfo::from_pin(path)
        .map_err(|e| L4Error::map(name, format!("reading {}", path.display()), e))?;
    let kind = info
        .map_type()
        .map_err(|e| L4Error::map(name, "map type", e))?;
    if kind != spec.kind || info.max_entries() != spec.max_entries {
        return Err(L4Error::IncompatiblePin {
            path: path.to_path_buf(),
            reason: format!(
                "{kind:?} with {} entries, expected {:?} with {}",
                info.max_entries(),
                spec.kind,
                spec.max_entries
            ),
        });
    }
    Ok(true)
}

/// The front-filter bitmap (both families), mapped into our memory: the program reads the same
/// pages, so a store here is visible to the next packet.
pub(crate) struct FilterMap {
    _map: MapData,
    ptr: std::ptr::NonNull<AtomicU64>,
}

const FILTER_BYTES: usize = common::V4_FILTER_WORDS as usize * 8;

// SAFETY: the mapping is owned by this value and only accessed through
// atomics.
unsafe impl Send for FilterMap {}
unsafe impl Sync for FilterMap {}

impl FilterMap {
    fn new(map: MapData) -> Result<Self, L4Error> {
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: mapping a BPF_F_MMAPABLE array of V4_FILTER_WORDS u64s
        // (checked by `check_pin` or created by this object); the kernel keeps
        // the pages alive while mapped.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                FILTER_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(L4Error::io(
                format!("mmap of {}", common::MAP_V4_FILTER),
                std::io::Error::last_os_error(),
            ));
        }
        let ptr = std::ptr::NonNull::new(p.cast::<AtomicU64>())
            .ok_or_else(|| L4Error::io("mmap returned NULL", std::io::Error::other("NULL")))?;
        Ok(Self { _map: map, ptr })
    }

    fn words(&self) -> &[AtomicU64] {
        // SAFETY: `ptr` maps FILTER_BYTES bytes, page aligned, for as long
        // as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), common::V4_FILTER_WORDS as usize) }
    }

    pub(crate) fn read(&self) -> Vec<u64> {
        self.words()
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .collect()
    }

    fn write(&self, words: &[u64]) {
        for (slot, w) in self.words().iter().zip(words) {
            if slot.load(Ordering::Relaxed) != *w {
                slot.store(*w, Ordering::Release);
            }
        }
    }
}

impl Drop for FilterMap {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), FILTER_BYTES);
        }
    }
}

/// Every map of the program, typed.
pub(crate) struct Maps {
    deny_v4: LpmTrie<MapData, [u8; 4], DenyValue>,
    /// The /32 entries of the IPv4 set (the trie holds the shorter ones).
    host_v4: HashMap<MapData, [u8; 4], DenyValue>,
    deny_v6: LpmTrie<MapData, [u8; 16], DenyValue>,
    /// A mirror of the IPv6 trie's /128 entries (the trie keeps them too).
    host_v6: HashMap<MapData, [u8; 16], DenyValue>,
    /// Inserts not written yet, per map: consecutive ones go in one
    /// BPF_MAP_UPDATE_BATCH per map, all written before any other op, the
    /// IPv6 trie before its mirror.
    puts: [Batch; 4],
    listen: Array<MapData, u8>,
    portset: HashMap<MapData, ClassPortKey, u32>,
    rule_ctr: PerCpuArray<MapData, RuleCounters>,
    stats: PerCpuArray<MapData, Stats>,
    pub(crate) filter: FilterMap,
    rule_name: HashMap<MapData, u32, RuleName>,
    local: HashMap<MapData, [u8; 16], u8>,
    /// `local`'s generation (see `MAP_DST_GEN`).
    dst_gen: Array<MapData, u32>,
    /// `local` changed since the generation was last bumped.
    local_changed: bool,
}

fn typed<T: TryFrom<Map, Error = MapError>>(name: &'static str, map: Map) -> Result<T, L4Error> {
    T::try_from(map).map_err(|e| L4Error::map(name, "unexpected layout", e))
}

/// The filter's raw map, checked: an mmapable array of u64 words.
fn map_data(name: &'static str, map: Map) -> Result<MapData, L4Error> {
    let bad = |reason: String| L4Error::IncompatiblePin {
        path: name.into(),
        reason,
    };
    let Map::Array(data) = map else {
        return Err(bad("not an array".into()));
    };
    let info = data
        .info()
        .map_err(|e| L4Error::map(name, "reading map info", e))?;
    let mmapable = aya::maps::MapInfo::map_flags(&info) & BPF_F_MMAPABLE != 0;
    if info.value_size() != 8 || info.max_entries() != common::V4_FILTER_WORDS || !mmapable {
        return Err(bad(format!(
            "value size {}, {} entries, flags {:#x}",
            info.value_size(),
            info.max_entries(),
            info.map_flags()
        )));
    }
    Ok(data)
}

/// `BPF_F_MMAPABLE` from the kernel's uapi.
const BPF_F_MMAPABLE: u32 = 1 << 10;

impl Maps {
    /// Takes the maps out of a loaded object.
    pub(crate) fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self, L4Error> {
        let take = |name: &'static str| {
            ebpf.take_map(name)
                .ok_or_else(|| L4Error::NotPinned(format!("map {name} in the XDP object").into()))
        };
        Self::build(take)
    }

    /// Reopens the pinned maps in `dir` (read-only use: status).
    pub(crate) fn from_pins(dir: &Path) -> Result<Self, L4Error> {
        for spec in &SPECS {
            let path = dir.join(spec.name);
            if !check_pin(&path, spec.name)? {
                return Err(L4Error::NotPinned(path));
            }
        }
        Self::build(|name| {
            let path = dir.join(name);
            let data = MapData::from_pin(&path)
                .map_err(|e| L4Error::map(name, format!("opening {}", path.display()), e))?;
            Map::from_map_data(data).map_err(|e| L4Error::map(name, "unsupported map", e))
        })
    }

    fn build(mut get: impl FnMut(&'static str) -> Result<Map, L4Error>) -> Result<Self, L4Error> {
        let (deny_v4, host_v4) = (get(common::MAP_DENY_V4)?, get(common::MAP_HOST_V4)?);
        let (deny_v6, host_v6) = (get(common::MAP_DENY_V6)?, get(common::MAP_HOST_V6)?);
        let puts = [
            Batch::of(common::MAP_DENY_V4, &deny_v4)?,
            Batch::of(common::MAP_HOST_V4, &host_v4)?,
            Batch::of(common::MAP_DENY_V6, &deny_v6)?,
            Batch::of(common::MAP_HOST_V6, &host_v6)?,
        ];
        Ok(Self {
            deny_v4: typed(common::MAP_DENY_V4, deny_v4)?,
            host_v4: typed(common::MAP_HOST_V4, host_v4)?,
            deny_v6: typed(common::MAP_DENY_V6, deny_v6)?,
            host_v6: typed(common::MAP_HOST_V6, host_v6)?,
            puts,
            listen: typed(common::MAP_LISTEN, get(common::MAP_LISTEN)?)?,
            portset: typed(common::MAP_PORTSET, get(common::MAP_PORTSET)?)?,
            rule_ctr: typed(common::MAP_RULE_CTR, get(common::MAP_RULE_CTR)?)?,
            stats: typed(common::MAP_STATS, get(common::MAP_STATS)?)?,
            filter: FilterMap::new(map_data(
                common::MAP_V4_FILTER,
                get(common::MAP_V4_FILTER)?,
            )?)?,
            rule_name: typed(common::MAP_RULE_NAME, get(common::MAP_RULE_NAME)?)?,
            local: typed(common::MAP_LOCAL, get(common::MAP_LOCAL)?)?,
            dst_gen: typed(common::MAP_DST_GEN, get(common::MAP_DST_GEN)?)?,
            local_changed: false,
        })
    }

    /// Reads back what the maps hold.
    pub(crate) fn read_state(&self) -> Result<State, L4Error> {
        let mut s = State::default();
        for item in self.rule_name.iter() {
            let (id, name) =
                item.map_err(|e| L4Error::map(common::MAP_RULE_NAME, "iterating", e))?;
            s.rules
                .insert(id, String::from_utf8_lossy(name.as_bytes()).into_owned());
        }
        for item in self.deny_v4.iter() {
            let (key, value) =
                item.map_err(|e| L4Error::map(common::MAP_DENY_V4, "iterating", e))?;
            let len = u8::try_from(key.prefix_len()).unwrap_or(32).min(32);
            s.v4.insert((u32::from_be_bytes(key.data()), len), value);
        }
        for item in self.host_v4.iter() {
            let (addr, value) =
                item.map_err(|e| L4Error::map(common::MAP_HOST_V4, "iterating", e))?;
            s.v4.insert((u32::from_be_bytes(addr), 32), value);
        }
        for item in self.deny_v6.iter() {
            let (key, value) =
                item.map_err(|e| L4Error::map(common::MAP_DENY_V6, "iterating", e))?;
            let len = u8::try_from(key.prefix_len()).unwrap_or(128).min(128);
            s.v6.insert((u128::from_be_bytes(key.data()), len), value);
        }
        for item in self.portset.iter() {
            let (key, rule) =
                item.map_err(|e| L4Error::map(common::MAP_PORTSET, "iterating", e))?;
            s.classes
                .entry(key.class)
                .or_default()
                .push((key.port, rule));
        }
        for content in s.classes.values_mut() {
            content.sort_unstable();
        }
        for (port, v) in self.listen.iter().enumerate() {
            let v = v.map_err(|e| L4Error::map(common::MAP_LISTEN, "reading", e))?;
            if v == 0 {
                continue;
            }
            if port == common::DST_CHECK_SLOT as usize {
                s.dst_check = true;
            } else {
                // `port` < LISTEN_ENTRIES = 65536.
                s.listeners.insert(port as u16);
            }
        }
        for item in self.local.iter() {
            let (addr, _) = item.map_err(|e| L4Error::map(common::MAP_LOCAL, "iterating", e))?;
            s.local.insert(u128::from_be_bytes(addr));
        }
        Ok(s)
    }

    /// The /128 mirror as it is.
    fn host_v6_entries(&self) -> Result<std::collections::HashMap<u128, DenyValue>, L4Error> {
        let mut out = std::collections::HashMap::new();
        for item in self.host_v6.iter() {
            let (addr, value) =
                item.map_err(|e| L4Error::map(common::MAP_HOST_V6, "iterating", e))?;
            out.insert(u128::from_be_bytes(addr), value);
        }
        Ok(out)
    }

    /// Whether the /128 mirror holds exactly the /128 entries of `state`.
    pub(crate) fn host_v6_matches(&self, state: &State) -> Result<bool, L4Error> {
        let want: std::collections::HashMap<u128, DenyValue> = state
            .v6
            .iter()
            .filter(|((_, len), _)| *len == 128)
            .map(|((a, _), v)| (*a, *v))
            .collect();
        Ok(self.host_v6_entries()? == want)
    }

    /// Makes the /128 mirror equal to the /128 entries of `state` (what the
    /// trie holds): after adopting maps that a crash interrupted mid-sync,
    /// or that a binary without the mirror filled. Entries are added before
    /// stale ones are removed.
    pub(crate) fn reconcile_host_v6(&mut self, state: &State) -> Result<(), L4Error> {
        let have = self.host_v6_entries()?;
        for ((addr, len), value) in &state.v6 {
            if *len == 128 && have.get(addr) != Some(value) {
                self.host_v6
                    .insert(addr.to_be_bytes(), value, 0)
                    .map_err(|e| L4Error::map(common::MAP_HOST_V6, "insert", e))?;
            }
        }
        for addr in have.keys() {
            if !state.v6.contains_key(&(*addr, 128)) {
                ignore_missing(self.host_v6.remove(&addr.to_be_bytes()))
                    .map_err(|e| L4Error::map(common::MAP_HOST_V6, "remove", e))?;
            }
        }
        Ok(())
    }

    /// Sum over CPUs of the global counters.
    pub(crate) fn stats(&self) -> Result<Stats, L4Error> {
        let per_cpu = self
            .stats
            .get(&0, 0)
            .map_err(|e| L4Error::map(common::MAP_STATS, "reading", e))?;
        let mut total = Stats::default();
        for s in per_cpu.iter() {
            for (t, v) in total.counters.iter_mut().zip(s.counters) {
                *t += v;
            }
        }
        Ok(total)
    }

    /// Sum over CPUs of one rule's counters.
    pub(crate) fn rule_counters(&self, id: u32) -> Result<RuleCounters, L4Error> {
        let per_cpu = self
            .rule_ctr
            .get(&id, 0)
            .map_err(|e| L4Error::map(common::MAP_RULE_CTR, format!("reading rule {id}"), e))?;
        let mut total = RuleCounters::default();
        for c in per_cpu.iter() {
            total.packets += c.packets;
            total.bytes += c.bytes;
        }
        Ok(total)
    }
}

/// Entries per BPF_MAP_UPDATE_BATCH call.
const BATCH: usize = 8192;

/// Which of [`Maps::puts`] an insert goes to (also the order they are written in).
const PUT_DENY_V4: usize = 0;
const PUT_HOST_V4: usize = 1;
const PUT_DENY_V6: usize = 2;
const PUT_HOST_V6: usize = 3;

/// Inserts into one map, buffered to be written in batches.
pub(crate) struct Batch {
    name: &'static str,
    /// A second handle on the map.
    fd: OwnedFd,
    keys: Vec<u8>,
    values: Vec<u8>,
    key_size: usize,
    len: usize,
}

impl Batch {
    fn of(name: &'static str, map: &Map) -> Result<Self, L4Error> {
        let (data, key_size) = match map {
            Map::HashMap(d) if name == common::MAP_HOST_V4 => (d, 4),
            Map::HashMap(d) if name == common::MAP_HOST_V6 => (d, 16),
            // `{prefixlen: u32, addr}`.
            Map::LpmTrie(d) if name == common::MAP_DENY_V4 => (d, 8),
            Map::LpmTrie(d) if name == common::MAP_DENY_V6 => (d, 20),
            _ => {
                return Err(L4Error::IncompatiblePin {
                    path: name.into(),
                    reason: "not the map type this binary writes".into(),
                });
            }
        };
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| L4Error::io(format!("duplicating {name}"), e))?;
        Ok(Self {
            name,
            fd,
            keys: Vec::new(),
            values: Vec::new(),
            key_size,
            len: 0,
        })
    }

    fn push(&mut self, key: &[u8], value: &DenyValue) {
        debug_assert_eq!(key.len(), self.key_size);
        self.keys.extend_from_slice(key);
        // DenyValue is #[repr(C)] { u32, u32 }.
        self.values
            .extend_from_slice(&value.all_ports_rule.to_ne_bytes());
        self.values.extend_from_slice(&value.class.to_ne_bytes());
        self.len += 1;
    }

    /// Writes what is buffered: one BPF_MAP_UPDATE_BATCH per [`BATCH`]
    /// entries, or one update each on kernels without batch support.
    fn write(&mut self) -> Result<(), L4Error> {
        let (keys, values) = (
            std::mem::take(&mut self.keys),
            std::mem::take(&mut self.values),
        );
        self.len = 0;
        let (ks, vs) = (self.key_size, 8);
        for (kc, vc) in keys.chunks(BATCH * ks).zip(values.chunks(BATCH * vs)) {
            let n = (kc.len() / ks) as u32;
            match super::sys::map_update_batch(self.fd.as_fd(), kc, vc, n) {
                Ok(()) => {}
                Err((e, 0))
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | libc::ENOTSUP | libc::ENOSYS)
                    ) =>
                {
                    for (k, v) in kc.chunks(ks).zip(vc.chunks(vs)) {
                        super::sys::map_update_elem(self.fd.as_fd(), k, v)
                            .map_err(|e| L4Error::io(format!("{}: insert", self.name), e))?;
                    }
                }
                Err((e, done)) => {
                    return Err(L4Error::io(
                        format!("{}: batch insert ({done} of {n} written)", self.name),
                        e,
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Maps {
    /// Writes the buffered inserts, map by map: the IPv6 trie before its
    /// mirror, so a /128 is in the trie before the mirror has it.
    fn write_puts(&mut self) -> Result<(), L4Error> {
        for b in &mut self.puts {
            if b.len > 0 {
                b.write()?;
            }
        }
        Ok(())
    }
}

impl Target for Maps {
    fn flush(&mut self) -> Result<(), L4Error> {
        self.write_puts()?;
        if self.local_changed {
            // After every change to `local`: the program's cached lookups
            // of the old generation are dropped from here on.
            let g = self
                .dst_gen
                .get(&0, 0)
                .map_err(|e| L4Error::map(common::MAP_DST_GEN, "reading", e))?;
            self.dst_gen
                .set(0, g.wrapping_add(1), 0)
                .map_err(|e| L4Error::map(common::MAP_DST_GEN, "bumping", e))?;
            self.local_changed = false;
        }
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), L4Error> {
        // Inserts are buffered (see `puts`): an LPM trie key is
        // `{prefixlen: u32 (host order), addr}`.
        let trie_key = |len: u8, addr: &[u8]| {
            let mut k = u32::from(len).to_ne_bytes().to_vec();
            k.extend_from_slice(addr);
            k
        };
        match op {
            Op::V4Put { key, value } if key.1 == 32 => {
                self.puts[PUT_HOST_V4].push(&key.0.to_be_bytes(), value);
                return Ok(());
            }
            Op::V4Put { key, value } => {
                self.puts[PUT_DENY_V4].push(&trie_key(key.1, &key.0.to_be_bytes()), value);
                return Ok(());
            }
            Op::V6Put { key, value } => {
                self.puts[PUT_DENY_V6].push(&trie_key(key.1, &key.0.to_be_bytes()), value);
                if key.1 == 128 {
                    self.puts[PUT_HOST_V6].push(&key.0.to_be_bytes(), value);
                }
                return Ok(());
            }
            _ => {}
        }
        // Every other op sees the buffered inserts written first: the
        // order of the plan is kept.
        self.write_puts()?;
        match op {
            Op::RuleAdd { id, name } => {
                let ncpu = aya::util::nr_cpus()
                    .map_err(|(what, e)| L4Error::io(format!("counting CPUs ({what})"), e))?;
                let zeros = PerCpuValues::try_from(vec![RuleCounters::default(); ncpu])
                    .map_err(|e| L4Error::io("per-CPU zero values", e))?;
                self.rule_ctr.set(*id, zeros, 0).map_err(|e| {
                    L4Error::map(common::MAP_RULE_CTR, format!("zeroing rule {id}"), e)
                })?;
                let mut stored = RuleName {
                    len: 0,
                    bytes: [0; common::RULE_NAME_MAX],
                };
                let n = name.len().min(common::RULE_NAME_MAX);
                stored.bytes[..n].copy_from_slice(&name.as_bytes()[..n]);
                stored.len = n as u32;
                self.rule_name.insert(id, stored, 0).map_err(|e| {
                    L4Error::map(common::MAP_RULE_NAME, format!("naming rule {id}"), e)
                })
            }
            Op::RuleRemove(id) => ignore_missing(self.rule_name.remove(id))
                .map_err(|e| L4Error::map(common::MAP_RULE_NAME, format!("removing rule {id}"), e)),
            Op::ListenerAdd(p) => self
                .listen
                .set(u32::from(*p), 1, 0)
                .map_err(|e| L4Error::map(common::MAP_LISTEN, format!("adding port {p}"), e)),
            Op::ListenerRemove(p) => self
                .listen
                .set(u32::from(*p), 0, 0)
                .map_err(|e| L4Error::map(common::MAP_LISTEN, format!("removing port {p}"), e)),
            Op::DstCheck(on) => self
                .listen
                .set(common::DST_CHECK_SLOT, u8::from(*on), 0)
                .map_err(|e| L4Error::map(common::MAP_LISTEN, "setting the destination check", e)),
            Op::LocalAdd(a) => {
                self.local_changed = true;
                self.local
                    .insert(a.to_be_bytes(), 1, 0)
                    .map_err(|e| L4Error::map(common::MAP_LOCAL, "adding an address", e))
            }
            Op::LocalRemove(a) => {
                self.local_changed = true;
                self.local
                    .remove(&a.to_be_bytes())
                    .map_err(|e| L4Error::map(common::MAP_LOCAL, "removing an address", e))
            }
            Op::ClassAdd { class, content } => {
                for (port, rule) in content {
                    self.portset
                        .insert(ClassPortKey::new(*class, *port), rule, 0)
                        .map_err(|e| {
                            L4Error::map(common::MAP_PORTSET, format!("adding class {class}"), e)
                        })?;
                }
                Ok(())
            }
            Op::ClassRemove { class, content } => {
                for (port, _) in content {
                    ignore_missing(self.portset.remove(&ClassPortKey::new(*class, *port)))
                        .map_err(|e| {
                            L4Error::map(common::MAP_PORTSET, format!("removing class {class}"), e)
                        })?;
                }
                Ok(())
            }
            Op::Filter(words) => {
                self.filter.write(words);
                Ok(())
            }
            // Buffered above.
            Op::V4Put { .. } | Op::V6Put { .. } => Ok(()),
            Op::V4Remove(key) if key.1 == 32 => {
                ignore_missing(self.host_v4.remove(&key.0.to_be_bytes()))
                    .map_err(|e| L4Error::map(common::MAP_HOST_V4, "remove", e))
            }
            Op::V4Remove(key) => ignore_missing(
                self.deny_v4
                    .remove(&Key::new(u32::from(key.1), key.0.to_be_bytes())),
            )
            .map_err(|e| L4Error::map(common::MAP_DENY_V4, "remove", e)),
            Op::V6Remove(key) => {
                // The mirror first: what is left in between is the trie's
                // entry, which still denies (never less than both states).
                if key.1 == 128 {
                    ignore_missing(self.host_v6.remove(&key.0.to_be_bytes()))
                        .map_err(|e| L4Error::map(common::MAP_HOST_V6, "remove", e))?;
                }
                ignore_missing(
                    self.deny_v6
                        .remove(&Key::new(u32::from(key.1), key.0.to_be_bytes())),
                )
                .map_err(|e| L4Error::map(common::MAP_DENY_V6, "remove", e))
            }
        }
    }
}

/// A removal of something already gone is not an error.
fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}
