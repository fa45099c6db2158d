//! What the L4 plane is doing, read from the pinned objects alone so that
//! `llmgw xdp status` works without (and beside) the process that owns the
//! plane: interfaces and modes, prefixes with their rules, counters (also
//! as Prometheus text for `/metrics`).

use std::{
    collections::BTreeMap,
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use llmgw_common::{self as common, stat};

use std::fmt::Write as _;

use super::{L4Error, compile::State, maps::Maps, pin_dir, sys};
use crate::observe::metrics::esc;

/// Drops charged to one rule (summed over CPUs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleStats {
    pub id: u32,
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Counters of the program (summed over CPUs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlaneStats {
    pub seen: u64,
    pub passed: u64,
    pub dropped: u64,
    /// Every counter by name (`stat::NAMES`), including the pass reasons.
    pub counters: Vec<(&'static str, u64)>,
    pub rules: Vec<RuleStats>,
}

impl PlaneStats {
    /// A counter by name (`"pass_not_listener"`, ...); 0 if unknown.
    pub fn counter(&self, name: &str) -> u64 {
        self.counters
            .iter()
            .find_map(|(n, v)| (*n == name).then_some(*v))
            .unwrap_or(0)
    }

    /// Drops charged to a rule, by name.
    pub fn rule(&self, name: &str) -> Option<&RuleStats> {
        self.rules.iter().find(|r| r.name == name)
    }
}

pub(crate) fn plane_stats(
    maps: &Maps,
    rules: &BTreeMap<u32, String>,
) -> Result<PlaneStats, L4Error> {
    let s = maps.stats()?;
    let mut out = PlaneStats {
        seen: s.counters[stat::SEEN],
        passed: s.counters[stat::PASSED],
        dropped: s.counters[stat::DROPPED],
        counters: stat::NAMES.iter().copied().zip(s.counters).collect(),
        rules: Vec::with_capacity(rules.len()),
    };
    for (id, name) in rules {
        let c = maps.rule_counters(*id)?;
        out.rules.push(RuleStats {
            id: *id,
            name: name.clone(),
            packets: c.packets,
            bytes: c.bytes,
        });
    }
    Ok(out)
}

/// One attached interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkStatus {
    pub iface: String,
    /// `native` or `skb`.
    pub mode: String,
    /// Kernel link id, program id and interface index (0: detached).
    pub link_id: u32,
    pub prog_id: u32,
    pub ifindex: u32,
}

/// One trie entry: what a source in `net` (and in no longer prefix) gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixStatus {
    pub net: IpNet,
    /// Rule denying every listener port, if any.
    pub all_ports: Option<String>,
    /// Port-scoped rules that take precedence over `all_ports`.
    pub ports: Vec<(u16, String)>,
}

/// Everything `llmgw xdp status` prints.
#[derive(Clone, Debug)]
pub struct Status {
    pub dir: PathBuf,
    pub links: Vec<LinkStatus>,
    pub listeners: Vec<u16>,
    /// The gateway's addresses a dropped packet must be sent to; `None`
    /// when any destination counts.
    pub destinations: Option<Vec<std::net::IpAddr>>,
    pub prefixes: Vec<PrefixStatus>,
    pub stats: PlaneStats,
}

/// Pin name of a link: `<iface>@<mode>`, with `%` and `.` in the interface
/// name percent-encoded (bpffs refuses names with a dot, and VLAN interfaces
/// have one).
pub(crate) fn link_file_name(iface: &str, mode: &str) -> String {
    let enc = iface.replace('%', "%25").replace('.', "%2e");
    format!("{enc}@{mode}")
}

fn decode_iface(enc: &str) -> String {
    enc.replace("%2e", ".").replace("%25", "%")
}

/// The pinned links in `<dir>/links`: `(iface, mode, path)`.
pub(crate) fn pinned_links(dir: &Path) -> Result<Vec<(String, String, PathBuf)>, L4Error> {
    let links = dir.join("links");
    let read = match std::fs::read_dir(&links) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(L4Error::io(format!("reading {}", links.display()), e)),
    };
    let mut out = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| L4Error::io(format!("reading {}", links.display()), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((iface, mode)) = name.rsplit_once('@') {
            out.push((decode_iface(iface), mode.to_owned(), entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn state_prefixes(state: &State) -> Vec<PrefixStatus> {
    let name = |id: u32| {
        state
            .rules
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("#{id}"))
    };
    let describe = |net: IpNet, v: &common::DenyValue| PrefixStatus {
        net,
        all_ports: (v.all_ports_rule != common::NONE).then(|| name(v.all_ports_rule)),
        ports: state
            .classes
            .get(&v.class)
            .map(|c| {
                c.iter()
                    .filter(|(p, _)| *p != common::UNKNOWN_PORT)
                    .map(|(p, r)| (*p, name(*r)))
                    .collect()
            })
            .unwrap_or_default(),
    };
    let mut out: Vec<PrefixStatus> = Vec::with_capacity(state.v4.len() + state.v6.len());
    for ((addr, len), v) in &state.v4 {
        if let Ok(n) = Ipv4Net::new(Ipv4Addr::from(*addr), *len) {
            out.push(describe(IpNet::V4(n), v));
        }
    }
    for ((addr, len), v) in &state.v6 {
        if let Ok(n) = Ipv6Net::new(Ipv6Addr::from(*addr), *len) {
            out.push(describe(IpNet::V6(n), v));
        }
    }
    out.sort_by_key(|p| p.net);
    out
}

/// Reads the status of the plane pinned under `bpf_root` (e.g.
/// `/sys/fs/bpf/llmgw`), without owning it.
pub fn status(bpf_root: &Path) -> Result<Status, L4Error> {
    let dir = pin_dir(bpf_root);
    let maps = Maps::from_pins(&dir.join("maps"))?;
    let state = maps.read_state()?;
    let mut links = Vec::new();
    for (iface, mode, path) in pinned_links(&dir)? {
        let (link_id, prog_id, ifindex) = sys::obj_get(&path)
            .and_then(|fd| sys::xdp_link_info(&fd))
            .unwrap_or((0, 0, 0));
        links.push(LinkStatus {
            iface,
            mode,
            link_id,
            prog_id,
            ifindex,
        });
    }
    Ok(Status {
        links,
        listeners: state.listeners.iter().copied().collect(),
        destinations: state.dst_check.then(|| {
            state
                .local
                .iter()
                .map(|a| {
                    let v6 = std::net::Ipv6Addr::from(*a);
                    v6.to_ipv4_mapped()
                        .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4)
                })
                .collect()
        }),
        prefixes: state_prefixes(&state),
        stats: plane_stats(&maps, &state.rules)?,
        dir,
    })
}

impl Status {
    /// Renders the status, listing at most `max_prefixes` prefixes.
    pub fn render(&self, max_prefixes: usize) -> String {
        struct R<'a>(&'a Status, usize);
        impl fmt::Display for R<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let (s, max) = (self.0, self.1);
                writeln!(f, "pins: {}", s.dir.display())?;
                if s.links.is_empty() {
                    writeln!(f, "interfaces: none attached")?;
                }
                for l in &s.links {
                    let state = if l.ifindex == 0 {
                        "DETACHED"
                    } else {
                        "attached"
                    };
                    writeln!(
                        f,
                        "interface {} mode {} {state} (ifindex {}, link {}, prog {})",
                        l.iface, l.mode, l.ifindex, l.link_id, l.prog_id
                    )?;
                }
                let ports: Vec<String> = s.listeners.iter().map(u16::to_string).collect();
                writeln!(f, "listener ports: {}", ports.join(" "))?;
                match &s.destinations {
                    None => writeln!(f, "destinations: any")?,
                    Some(ips) => {
                        let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
                        writeln!(f, "destinations: {}", ips.join(" "))?;
                    }
                }
                writeln!(f, "prefixes: {}", s.prefixes.len())?;
                for p in s.prefixes.iter().take(max) {
                    write!(f, "  {}", p.net)?;
                    if let Some(r) = &p.all_ports {
                        write!(f, " all-ports={r}")?;
                    }
                    for (port, r) in &p.ports {
                        write!(f, " port {port}={r}")?;
                    }
                    writeln!(f)?;
                }
                if s.prefixes.len() > max {
                    writeln!(f, "  ... {} more", s.prefixes.len() - max)?;
                }
                let st = &s.stats;
                writeln!(
                    f,
                    "packets: seen {} passed {} dropped {}",
                    st.seen, st.passed, st.dropped
                )?;
                for (name, v) in &st.counters {
                    if name.starts_with("pass_") || name.starts_with("drop_") {
                        writeln!(f, "  {name} {v}")?;
                    }
                }
                writeln!(f, "drops per rule:")?;
                for r in &st.rules {
                    writeln!(
                        f,
                        "  {} (id {}): {} packets, {} bytes",
                        r.name, r.id, r.packets, r.bytes
                    )?;
                }
                Ok(())
            }
        }
        R(self, max_prefixes).to_string()
    }
}

/// The XDP program's counters (summed over CPUs).
pub fn render_prometheus(out: &mut String, stats: &PlaneStats) {
    let _ = write!(
        out,
        "# HELP llmgw_xdp_packets_total Packets the XDP program saw, by verdict.\n\
         # TYPE llmgw_xdp_packets_total counter\n\
         llmgw_xdp_packets_total{{verdict=\"pass\"}} {}\n\
         llmgw_xdp_packets_total{{verdict=\"drop\"}} {}\n",
        stats.passed, stats.dropped
    );
    out.push_str(
        "# HELP llmgw_xdp_pass_reasons_total Packets passed, by the reason they were not dropped.\n\
         # TYPE llmgw_xdp_pass_reasons_total counter\n",
    );
    for (name, n) in &stats.counters {
        if let Some(reason) = name.strip_prefix("pass_") {
            let _ = writeln!(
                out,
                "llmgw_xdp_pass_reasons_total{{reason=\"{reason}\"}} {n}"
            );
        }
    }
    type Field = fn(&RuleStats) -> u64;
    let per_rule: [(&str, &str, Field); 2] = [
        ("packets", "Packets", |r| r.packets),
        ("bytes", "Bytes", |r| r.bytes),
    ];
    for (unit, what, field) in per_rule {
        let _ = write!(
            out,
            "# HELP llmgw_xdp_dropped_{unit}_total {what} dropped in XDP, by policy rule.\n\
             # TYPE llmgw_xdp_dropped_{unit}_total counter\n"
        );
        for r in &stats.rules {
            let _ = writeln!(
                out,
                "llmgw_xdp_dropped_{unit}_total{{rule=\"{}\"}} {}",
                esc(&r.name),
                field(r)
            );
        }
    }
}
