//! The attached, pinned L4 plane. `start` adopts whatever a previous process
//! left pinned (maps with their contents, links) and swaps the program inside
//! existing links atomically, so protection never lapses across restarts;
//! `detach` removes links, maps and pins.

use std::path::{Path, PathBuf};

use aya::{
    Ebpf,
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use llmgw_common as common;

use super::{
    L4Error, L4Rules, XdpMode,
    compile::{State, compile},
    maps::{Maps, check_pin},
    pin_dir,
    program::{load, xdp_mut},
    status::{PlaneStats, Status, link_file_name, pinned_links, plane_stats},
    sync::{self, SyncReport},
    sys,
};

/// Where and how the plane runs.
#[derive(Clone, Debug)]
pub struct PlaneOptions {
    /// bpffs directory holding the versioned pin directory
    /// (default `/sys/fs/bpf/llmgw`).
    pub bpf_root: PathBuf,
    /// Whether the front filter (IPv4 /24s, top 24 bits of IPv6 sources) is
    /// used (default on).
    pub v4_filter: bool,
}

impl Default for PlaneOptions {
    fn default() -> Self {
        Self {
            bpf_root: PathBuf::from(super::DEFAULT_BPF_ROOT),
            v4_filter: true,
        }
    }
}

struct Attached {
    iface: String,
    mode: &'static str,
    _link: FdLink,
}

/// The running L4 plane. Dropping it leaves everything pinned and enforcing
/// (a restarted gateway adopts it); [`Plane::detach`] removes it.
pub struct Plane {
    dir: PathBuf,
    _ebpf: Ebpf,
    maps: Maps,
    links: Vec<Attached>,
    /// What the maps hold; `None` after a failed sync (re-read before the
    /// next one).
    state: Option<State>,
    /// What the maps held before this start adopted them; `None` when
    /// nothing was pinned (a first start). See [`Plane::rollback`].
    prior: Option<State>,
    /// Interfaces this start attached (rather than adopted).
    attached_here: Vec<String>,
    /// Exclusive flock on the pin directory: one owner at a time (released
    /// by the kernel when the process dies).
    _lock: std::fs::File,
}

/// The OS error code at the bottom of `e`'s chain, if any.
fn os_error(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && let Some(code) = io.raw_os_error()
        {
            return Some(code);
        }
        cur = c.source();
    }
    None
}

fn check_iface(iface: &str) -> Result<(), L4Error> {
    if iface.is_empty()
        || iface.len() > 15
        || iface.contains(['/', '\0', '@', ':'])
        || iface.chars().any(char::is_whitespace)
    {
        return Err(L4Error::BadInterfaceName(iface.into()));
    }
    Ok(())
}

/// Makes sure the parent of the pin directory is on bpffs, mounting it at
/// `/sys/fs/bpf` when that is where it should be and we may.
fn ensure_bpffs(root: &Path) -> Result<(), L4Error> {
    let mount_point = Path::new("/sys/fs/bpf");
    let probe = if root.starts_with(mount_point) {
        mount_point
    } else {
        root.parent().unwrap_or(root)
    };
    if sys::is_bpffs(probe) {
        return Ok(());
    }
    if probe == mount_point && sys::may_mount() {
        match sys::mount_bpffs(mount_point) {
            Ok(()) => {
                tracing::info!("mounted bpffs at {}", mount_point.display());
                return Ok(());
            }
            Err(e) => {
                return Err(L4Error::NoBpffs {
                    path: mount_point.into(),
                    reason: format!("mount failed: {e}"),
                });
            }
        }
    }
    Err(L4Error::NoBpffs {
        path: probe.into(),
        reason: "not a bpf filesystem".into(),
    })
}

fn mkdir(path: &Path) -> Result<(), L4Error> {
    std::fs::create_dir_all(path).map_err(|e| {
        let unavailable = e.kind() == std::io::ErrorKind::PermissionDenied;
        let err = L4Error::io(format!("creating {}", path.display()), e);
        if unavailable {
            L4Error::NotPermitted(err.to_string())
        } else {
            err
        }
    })
}

impl Plane {
    /// Starts the plane on `ifaces` with the default pin root.
    pub fn start(ifaces: &[String], mode: XdpMode, rules: &L4Rules) -> Result<Self, L4Error> {
        Self::start_with(&PlaneOptions::default(), ifaces, mode, rules)
    }

    /// Loads the program, adopts pinned maps and links (or creates and pins
    /// them), syncs the maps to `rules`, attaches to the interfaces not yet
    /// attached and detaches pinned interfaces not in `ifaces`.
    pub fn start_with(
        opts: &PlaneOptions,
        ifaces: &[String],
        mode: XdpMode,
        rules: &L4Rules,
    ) -> Result<Self, L4Error> {
        // Every interface must exist before anything is pinned or attached:
        // a failed start leaves nothing behind.
        for i in ifaces {
            check_iface(i)?;
            if sys::ifindex(i).is_none() {
                return Err(L4Error::UnknownInterface(i.clone()));
            }
        }
        if let Some(why) = sys::missing_privileges() {
            return Err(L4Error::NotPermitted(why));
        }
        if let Err(e) = sys::raise_memlock() {
            tracing::debug!("RLIMIT_MEMLOCK not raised ({e}); not needed on kernels >= 5.11");
        }
        ensure_bpffs(&opts.bpf_root)?;
        let dir = pin_dir(&opts.bpf_root);
        let maps_dir = dir.join("maps");
        mkdir(&maps_dir)?;
        mkdir(&dir.join("links"))?;
        let lock = sys::lock_dir(&dir).map_err(|e| {
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                L4Error::InUse(dir.clone())
            } else {
                L4Error::io(format!("locking {}", dir.display()), e)
            }
        })?;

        // Refuse pinned maps of another layout before the loader reuses them.
        let mut adopted = 0;
        for name in common::ALL_MAPS {
            if check_pin(&maps_dir.join(name), name)? {
                adopted += 1;
            }
        }
        let mut ebpf = load(Some(&maps_dir), opts.v4_filter)?;
        let mut maps = Maps::from_ebpf(&mut ebpf)?;
        let state = if adopted > 0 {
            let state = maps.read_state()?;
            // The /128 mirror follows the trie (a crash mid-sync, or maps
            // filled by a binary that had no mirror).
            maps.reconcile_host_v6(&state)?;
            state
        } else {
            State::default()
        };

        let prior = (adopted > 0).then(|| state.clone());
        let mut plane = Self {
            dir,
            _ebpf: ebpf,
            maps,
            links: Vec::new(),
            state: Some(state),
            prior,
            attached_here: Vec::new(),
            _lock: lock,
        };

        // From here on a failure takes back what this start did.
        match plane.finish_start(opts, ifaces, mode, rules) {
            Ok(()) => Ok(plane),
            Err(e) => {
                if let Err(undo) = plane.rollback() {
                    tracing::warn!("XDP: taking back a failed start: {undo}");
                }
                Err(e)
            }
        }
    }

    /// The part of [`Plane::start_with`] after the maps are loaded: links
    /// checked, maps synced, programs swapped or attached.
    fn finish_start(
        &mut self,
        opts: &PlaneOptions,
        ifaces: &[String],
        mode: XdpMode,
        rules: &L4Rules,
    ) -> Result<(), L4Error> {
        let plane = self;
        // Links are pinned by interface name: before touching anything, make
        // sure each live one is on this network namespace's interface of
        // that name (another namespace sharing the pin root, or a renamed
        // interface, must not be adopted or detached from here).
        for (iface, _, path) in pinned_links(&plane.dir)? {
            let Ok((_, prog, ifindex)) = sys::obj_get(&path).and_then(|fd| sys::xdp_link_info(&fd))
            else {
                continue;
            };
            if ifindex == 0 {
                continue; // defunct: replaced below
            }
            let here = sys::ifindex(&iface) == Some(ifindex)
                && sys::xdp_prog_ids(ifindex).map_or(true, |ids| ids.contains(&prog));
            if !here {
                return Err(L4Error::ForeignPin { iface, path });
            }
        }

        // The maps first, while a pinned program (if any) still runs on
        // them: every sync step is safe for it, and the program that
        // replaces it below then finds the maps complete (a newer program
        // may read more of them, e.g. IPv6 bits of the front filter that an
        // older binary never set).
        plane.sync(rules)?;

        // Existing links: replace their program atomically.
        // A link whose interface went away is defunct (ifindex 0): unpin it,
        // the interface gets a fresh link below.
        let mut pinned = pinned_links(&plane.dir)?;
        pinned.retain(|(iface, _, path)| {
            let alive = sys::obj_get(path)
                .and_then(|fd| sys::xdp_link_info(&fd))
                .is_ok_and(|(_, _, ifindex)| ifindex != 0);
            if !alive {
                tracing::warn!("XDP: pinned link for {iface} is defunct; replacing it");
                if let Err(e) = detach_link(path) {
                    tracing::warn!("XDP: removing {}: {e}", path.display());
                }
            }
            alive
        });
        for (iface, pinned_mode, path) in &pinned {
            if !ifaces.contains(iface) {
                continue;
            }
            plane.adopt_link(iface, pinned_mode, path, mode, false)?;
        }
        // Links an older binary pinned under another layout: the program in
        // them is swapped for this one in place (no moment without XDP) and
        // their pins move here; what is left of the old layout goes.
        for old in older_layouts(&opts.bpf_root) {
            for (iface, pinned_mode, path) in pinned_links(&old)? {
                if ifaces.contains(&iface) && !plane.links.iter().any(|l| l.iface == iface) {
                    tracing::info!("XDP: taking over {iface} from layout {}", old.display());
                    plane.adopt_link(&iface, &pinned_mode, &path, mode, true)?;
                }
            }
            detach_dir(&old)?;
        }
        for iface in ifaces {
            if plane.links.iter().any(|l| &l.iface == iface) {
                continue;
            }
            plane.attach(iface, mode)?;
        }
        for (iface, _, path) in &pinned {
            if !ifaces.contains(iface) {
                tracing::info!("XDP: detaching from {iface} (no longer configured)");
                detach_link(path)?;
            }
        }
        Ok(())
    }

    fn adopt_link(
        &mut self,
        iface: &str,
        pinned_mode: &str,
        path: &Path,
        wanted: XdpMode,
        repin: bool,
    ) -> Result<(), L4Error> {
        let mode: &'static str = if pinned_mode == "skb" {
            "skb"
        } else {
            "native"
        };
        if (wanted == XdpMode::Native && mode == "skb")
            || (wanted == XdpMode::Skb && mode == "native")
        {
            tracing::warn!(
                "XDP: {iface} stays in {mode} mode (changing mode needs `llmgw xdp detach` first)"
            );
        }
        let link_err = |what: &str, source| L4Error::Link {
            what: format!("{what} {}", path.display()),
            source,
        };
        let pinned = PinnedLink::from_pin(path).map_err(|e| link_err("opening", e))?;
        let xdp_link =
            XdpLink::try_from(FdLink::from(pinned)).map_err(|e| link_err("checking", e))?;
        let prog = xdp_mut(&mut self._ebpf)?;
        let id = prog
            .attach_to_link(xdp_link)
            .map_err(|e| L4Error::program(format!("replacing the program in {iface}'s link"), e))?;
        let link = prog
            .take_link(id)
            .map_err(|e| L4Error::program("taking the link", e))?;
        let mut fd_link = FdLink::try_from(link).map_err(|e| link_err("converting", e))?;
        if repin {
            // Pinned here first, then unpinned there: the link always has a pin.
            let here = self.dir.join("links").join(link_file_name(iface, mode));
            let pinned = fd_link.pin(&here).map_err(|source| L4Error::Pin {
                path: here.clone(),
                source,
            })?;
            fd_link = FdLink::from(pinned);
            std::fs::remove_file(path)
                .map_err(|e| L4Error::io(format!("removing {}", path.display()), e))?;
        }
        tracing::info!("XDP: adopted {iface} ({mode}), program replaced in place");
        self.links.push(Attached {
            iface: iface.into(),
            mode,
            _link: fd_link,
        });
        Ok(())
    }

    fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<(), L4Error> {
        use aya::programs::XdpMode as Aya;
        let prog = xdp_mut(&mut self._ebpf)?;
        let attach = |prog: &mut aya::programs::Xdp, m: Aya, name: &'static str| {
            prog.attach(iface, m).map_err(|source| match source {
                aya::programs::ProgramError::UnknownInterface { .. } => {
                    L4Error::UnknownInterface(iface.into())
                }
                source if os_error(&source) == Some(libc::EBUSY) => {
                    L4Error::OtherProgram(iface.into())
                }
                source => L4Error::Attach {
                    iface: iface.into(),
                    mode: name,
                    source,
                },
            })
        };
        let (id, name) = match mode {
            XdpMode::Native => (attach(prog, Aya::Driver, "native")?, "native"),
            XdpMode::Skb => (attach(prog, Aya::Skb, "skb")?, "skb"),
            XdpMode::Auto => match attach(prog, Aya::Driver, "native") {
                Ok(id) => (id, "native"),
                Err(e @ (L4Error::UnknownInterface(_) | L4Error::OtherProgram(_))) => {
                    return Err(e);
                }
                Err(e) => {
                    tracing::warn!(
                        "XDP: native mode failed on {iface} ({}); using generic (skb) mode",
                        crate::error_chain(&e)
                    );
                    (attach(prog, Aya::Skb, "skb")?, "skb")
                }
            },
        };
        let link = prog
            .take_link(id)
            .map_err(|e| L4Error::program("taking the link", e))?;
        let fd_link = FdLink::try_from(link).map_err(|source| L4Error::Link {
            what: format!("on {iface} is not a bpf_link (kernel without XDP links?)"),
            source,
        })?;
        let path = self.dir.join("links").join(link_file_name(iface, name));
        let pinned = fd_link.pin(&path).map_err(|source| L4Error::Pin {
            path: path.clone(),
            source,
        })?;
        tracing::info!("XDP: attached to {iface} in {name} mode");
        self.attached_here.push(iface.to_string());
        self.links.push(Attached {
            iface: iface.into(),
            mode: name,
            _link: FdLink::from(pinned),
        });
        Ok(())
    }

    /// Syncs the maps to `rules` by difference (additions and changes first,
    /// removals last), keeping rule ids stable.
    pub fn sync(&mut self, rules: &L4Rules) -> Result<SyncReport, L4Error> {
        let cur = match self.state.take() {
            Some(s) => s,
            None => {
                // After a failed sync: re-read, and realign the /128 mirror.
                let s = self.maps.read_state()?;
                self.maps.reconcile_host_v6(&s)?;
                s
            }
        };
        let next = match compile(rules, &cur) {
            Ok(n) => n,
            Err(e) => {
                self.state = Some(cur);
                return Err(e);
            }
        };
        let filter = self.maps.filter.read();
        let report = sync::apply(&mut self.maps, &cur, &next, &filter)?;
        self.state = Some(next);
        tracing::debug!(?report, "XDP maps synced");
        Ok(report)
    }

    /// Whether the maps hold exactly what the last sync wrote (the tries,
    /// the /32 and /128 hashes, the filter); for tests and diagnostics.
    pub fn maps_match_last_sync(&self) -> Result<bool, L4Error> {
        let Some(state) = &self.state else {
            return Ok(false);
        };
        Ok(self.maps.read_state()? == *state
            && self.maps.filter.read() == state.filter()
            && self.maps.host_v6_matches(state)?)
    }

    /// Counters per rule, packets seen and passed.
    pub fn stats(&self) -> Result<PlaneStats, L4Error> {
        match &self.state {
            Some(s) => plane_stats(&self.maps, &s.rules),
            None => plane_stats(&self.maps, &self.maps.read_state()?.rules),
        }
    }

    /// Interfaces this plane is attached to, with their mode.
    pub fn interfaces(&self) -> Vec<(String, &'static str)> {
        self.links
            .iter()
            .map(|l| (l.iface.clone(), l.mode))
            .collect()
    }

    /// The full status, as `llmgw xdp status` shows it.
    pub fn status(&self) -> Result<Status, L4Error> {
        super::status::status(self.dir.parent().unwrap_or(&self.dir))
    }

    /// Takes back what this start did, for a gateway that failed to start
    /// after attaching: with nothing pinned before, everything goes (links,
    /// maps, pins); else the maps get back what they held and the
    /// interfaces this start attached are detached (adopted links stay,
    /// running this binary's program on the restored maps).
    pub fn rollback(mut self) -> Result<(), L4Error> {
        let Some(prior) = self.prior.take() else {
            return self.detach();
        };
        let cur = match self.state.take() {
            Some(s) => s,
            None => self.maps.read_state()?,
        };
        let filter = self.maps.filter.read();
        sync::apply(&mut self.maps, &cur, &prior, &filter)?;
        self.state = Some(prior);
        for iface in std::mem::take(&mut self.attached_here) {
            if let Some(i) = self.links.iter().position(|l| l.iface == iface) {
                let l = self.links.remove(i);
                let path = self
                    .dir
                    .join("links")
                    .join(link_file_name(&l.iface, l.mode));
                drop(l);
                detach_link(&path)?;
                tracing::info!("XDP: detached from {iface} (attached by a start that failed)");
            }
        }
        Ok(())
    }

    /// Detaches from every interface and removes maps and pins.
    pub fn detach(self) -> Result<(), L4Error> {
        let root = self.dir.parent().map(Path::to_path_buf);
        drop(self);
        match root {
            Some(root) => detach(&root).map(|_| ()),
            None => Ok(()),
        }
    }
}

fn detach_link(path: &Path) -> Result<(), L4Error> {
    match sys::obj_get(path) {
        Ok(fd) => {
            // Force the detach even if another process still holds the link.
            if let Err(e) = sys::link_detach(&fd) {
                tracing::debug!("BPF_LINK_DETACH {}: {e}", path.display());
            }
        }
        Err(e) => tracing::debug!("opening {}: {e}", path.display()),
    }
    std::fs::remove_file(path).map_err(|e| L4Error::io(format!("removing {}", path.display()), e))
}

/// Removes the plane pinned under `bpf_root`, in this layout and any older
/// one: detaches every link (even one still held by a running process),
/// unpins the maps, removes the directories. Returns whether anything was
/// there.
pub fn detach(bpf_root: &Path) -> Result<bool, L4Error> {
    let mut found = false;
    for dir in std::iter::once(pin_dir(bpf_root)).chain(older_layouts(bpf_root)) {
        if dir.exists() {
            found = true;
            detach_dir(&dir)?;
        }
    }
    // The root itself goes too when nothing else is left in it.
    let _ = std::fs::remove_dir(bpf_root);
    Ok(found)
}

/// Layout directories under `bpf_root` other than this binary's
/// (`v<N>`, see [`super::PIN_LAYOUT`]).
fn older_layouts(bpf_root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(bpf_root) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name != super::PIN_LAYOUT
                && name
                    .strip_prefix('v')
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// Detaches the links pinned in one layout directory, unpins its maps and
/// removes it.
fn detach_dir(dir: &Path) -> Result<(), L4Error> {
    for (_, _, path) in pinned_links(dir)? {
        detach_link(&path)?;
    }
    let maps_dir = dir.join("maps");
    if let Ok(entries) = std::fs::read_dir(&maps_dir) {
        for e in entries.flatten() {
            std::fs::remove_file(e.path())
                .map_err(|err| L4Error::io(format!("removing {}", e.path().display()), err))?;
        }
    }
    for d in [dir.join("links"), maps_dir, dir.to_path_buf()] {
        match std::fs::remove_dir(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(L4Error::io(format!("removing {}", d.display()), e)),
        }
    }
    Ok(())
}
