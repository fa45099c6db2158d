//! The L4 plane: source-IP deny rules enforced in XDP on the gateway's
//! listener ports. This module loads the embedded program, attaches and pins
//! it, keeps its maps in sync with [`L4Rules`] (by difference) and reads its
//! counters. `docs/l4.md` describes the decisions, maps and pin layout.

mod compile;
mod error;
mod follow;
pub mod frames;
mod maps;
mod plane;
mod program;
pub mod status;
mod sync;
mod sys;
mod text;

use std::path::PathBuf;

pub use error::L4Error;
pub use follow::Follower;
pub use plane::{Plane, PlaneOptions, detach};
pub use program::XdpProgram;
pub use status::{LinkStatus, PlaneStats, PrefixStatus, RuleStats, Status, status};
pub use sync::SyncReport;
pub use text::parse_rules;

/// The XDP object built from `llmgw-ebpf` by `build.rs`.
#[cfg(feature = "xdp")]
pub(crate) static XDP_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/llmgw"));
/// Built without the `xdp` feature: no program to load.
#[cfg(not(feature = "xdp"))]
pub(crate) static XDP_OBJECT: &[u8] = &[];

/// Layout version of the pinned objects: bumped whenever a map's key, value
/// or meaning changes, so that a new binary never adopts maps it misreads.
pub const PIN_LAYOUT: &str = "v2";

/// Default bpffs directory under which `PIN_LAYOUT` is created.
pub const DEFAULT_BPF_ROOT: &str = "/sys/fs/bpf/llmgw";

/// Directory of the pinned objects for `bpf_root` (`<root>/v1`).
pub fn pin_dir(bpf_root: &std::path::Path) -> PathBuf {
    bpf_root.join(PIN_LAYOUT)
}

pub use crate::model::xdp::{DenyEntry, Destinations, L4Rules};

/// The addresses of every interface of this network namespace.
pub fn host_addresses() -> std::io::Result<Vec<std::net::IpAddr>> {
    sys::interface_addresses()
}

/// How to attach the program to an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpMode {
    /// Native (driver) mode, or generic mode with a warning when the driver
    /// has no XDP support.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode.
    Skb,
}

impl std::fmt::Display for XdpMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Native => "native",
            Self::Skb => "skb",
        })
    }
}

impl std::str::FromStr for XdpMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "native" | "driver" | "drv" => Ok(Self::Native),
            "skb" | "generic" => Ok(Self::Skb),
            other => Err(format!("unknown XDP mode {other:?} (auto, native, skb)")),
        }
    }
}
