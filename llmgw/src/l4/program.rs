//! The embedded XDP program loaded with private (unpinned) maps and attached
//! nowhere: what the packet-level tests and the benchmark drive through
//! `BPF_PROG_TEST_RUN`. The same loader serves [`super::Plane`].

use std::{path::Path, time::Duration};

use aya::{
    Ebpf, EbpfLoader,
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use llmgw_common as common;

use super::{
    L4Error, L4Rules,
    compile::{State, compile},
    maps::Maps,
    status::{PlaneStats, plane_stats},
    sync::{self, SyncReport},
};

/// Loads the embedded object; with `pin_dir`, maps are reused from (or
/// pinned to) `pin_dir/<map name>`.
pub(crate) fn load(pin_dir: Option<&Path>, v4_filter: bool) -> Result<Ebpf, L4Error> {
    if super::XDP_OBJECT.is_empty() {
        return Err(L4Error::NotBuilt);
    }
    let filter_on: u8 = v4_filter.into();
    let mut loader = EbpfLoader::new();
    loader.override_global(common::GLOBAL_V4_FILTER_ON, &filter_on, true);
    let paths: Vec<(&str, std::path::PathBuf)> = match pin_dir {
        Some(dir) => common::ALL_MAPS.iter().map(|n| (*n, dir.join(n))).collect(),
        None => Vec::new(),
    };
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(super::XDP_OBJECT).map_err(L4Error::Load)?;
    xdp_mut(&mut ebpf)?
        .load()
        .map_err(|e| L4Error::program("load (verifier)", e))?;
    Ok(ebpf)
}

pub(crate) fn xdp_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, L4Error> {
    let prog = ebpf
        .program_mut(common::PROGRAM_NAME)
        .ok_or_else(|| L4Error::NotPinned(format!("program {}", common::PROGRAM_NAME).into()))?;
    prog.try_into()
        .map_err(|e| L4Error::program("is not an XDP program", e))
}

/// The program with its own maps, for `BPF_PROG_TEST_RUN`.
pub struct XdpProgram {
    ebpf: Ebpf,
    maps: Maps,
    state: State,
}

impl XdpProgram {
    /// Loads the program (front filter on).
    pub fn load() -> Result<Self, L4Error> {
        Self::load_with(true)
    }

    /// Loads the program with the front filter (both families) on or off.
    pub fn load_with(v4_filter: bool) -> Result<Self, L4Error> {
        if let Some(why) = super::sys::missing_privileges() {
            return Err(L4Error::NotPermitted(why));
        }
        let _ = super::sys::raise_memlock();
        let mut ebpf = load(None, v4_filter)?;
        let maps = Maps::from_ebpf(&mut ebpf)?;
        Ok(Self {
            ebpf,
            maps,
            state: State::default(),
        })
    }

    /// Syncs the maps to `rules` by difference.
    pub fn sync(&mut self, rules: &L4Rules) -> Result<SyncReport, L4Error> {
        let next = compile(rules, &self.state)?;
        let filter = self.maps.filter.read();
        match sync::apply(&mut self.maps, &self.state, &next, &filter) {
            Ok(report) => {
                self.state = next;
                Ok(report)
            }
            Err(e) => {
                self.state = self.maps.read_state()?;
                Err(e)
            }
        }
    }

    /// Runs the program once on `frame`; returns the XDP action.
    pub fn run(&mut self, frame: &[u8]) -> Result<u32, L4Error> {
        self.run_repeat(frame, 1).map(|(action, _)| action)
    }

    /// Runs the program `repeat` times on `frame`; returns the XDP action
    /// and the kernel's mean time per run.
    pub fn run_repeat(&mut self, frame: &[u8], repeat: u32) -> Result<(u32, Duration), L4Error> {
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.repeat = repeat;
        let r = xdp_mut(&mut self.ebpf)?
            .test_run(opts)
            .map_err(|e| L4Error::program("test run", e))?;
        Ok((r.return_value, r.duration))
    }

    /// Counters, per rule and global.
    pub fn stats(&self) -> Result<PlaneStats, L4Error> {
        plane_stats(&self.maps, &self.state.rules)
    }

    /// The id of a rule, by name.
    pub fn rule_id(&self, name: &str) -> Option<u32> {
        self.state
            .rules
            .iter()
            .find_map(|(id, n)| (n == name).then_some(*id))
    }

    /// Whether the maps hold exactly what the last sync wrote.
    pub fn maps_match_last_sync(&self) -> Result<bool, L4Error> {
        let kernel = self.maps.read_state()?;
        Ok(kernel == self.state
            && self.maps.filter.read() == self.state.filter()
            && self.maps.host_v6_matches(&self.state)?)
    }
}
