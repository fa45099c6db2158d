//! Errors of the L4 plane. [`L4Error::is_unavailable`] tells the caller that
//! this host cannot run XDP at all (no privileges, no bpffs), so it can log
//! "L4 plane off" once and let the L7 plane enforce every rule.

use std::{io, path::PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum L4Error {
    /// The process lacks the privileges XDP needs (root, or CAP_BPF and
    /// CAP_NET_ADMIN).
    #[error("XDP unavailable: {0}")]
    NotPermitted(String),
    /// No BPF filesystem where the pins go, and it could not be mounted.
    #[error("XDP unavailable: no bpffs at {path}: {reason}")]
    NoBpffs { path: PathBuf, reason: String },
    #[error(
        "this llmgw was built without the XDP program (cargo feature `xdp`): \
         build it with default features to use --xdp-iface"
    )]
    NotBuilt,
    #[error("loading the XDP object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("XDP program {what}: {source}")]
    Program {
        what: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("XDP link {what}: {source}")]
    Link {
        what: String,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("BPF map {map}: {what}: {source}")]
    Map {
        map: &'static str,
        what: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("pinned map {path} does not match this binary ({reason}); detach the L4 plane first")]
    IncompatiblePin { path: PathBuf, reason: String },
    #[error("another process owns the L4 plane pinned at {0}")]
    InUse(PathBuf),
    #[error("nothing pinned at {0} (is the L4 plane attached?)")]
    NotPinned(PathBuf),
    #[error("interface {0:?} not found")]
    UnknownInterface(String),
    #[error(
        "the XDP link pinned at {path} is not on this network namespace's {iface} \
         (another namespace uses the same pin root, or the interface was renamed): \
         give each network namespace its own --bpf-root, or remove it with `llmgw xdp detach`"
    )]
    ForeignPin { iface: String, path: PathBuf },
    #[error("invalid interface name {0:?}")]
    BadInterfaceName(String),
    #[error(
        "another XDP program (not one llmgw pinned here) is attached to {0}; remove it \
         (`ip link set dev {0} xdp off`) or choose another interface"
    )]
    OtherProgram(String),
    #[error("attaching to {iface} in {mode} mode: {source}")]
    Attach {
        iface: String,
        mode: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("too many {what}: {got} (limit {limit})")]
    TooMany {
        what: &'static str,
        got: usize,
        limit: usize,
    },
    #[error("rule name {name:?} is {len} bytes long (limit {limit})")]
    RuleNameTooLong {
        name: String,
        len: usize,
        limit: usize,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl L4Error {
    /// `true` when XDP cannot run on this host as this process (missing
    /// privileges): the caller should turn the plane off, not fail. A pin
    /// root that is not on bpffs is a configuration error (a mistyped
    /// `--bpf-root`, a missing hostPath mount), not that.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::NotPermitted(_) => true,
            // EPERM from bpf(2) when loading or attaching: missing privileges
            // (a lockdown LSM, a seccomp filter, user namespaces).
            Self::Load(_) | Self::Program { .. } | Self::Attach { .. } => permission_denied(self),
            _ => false,
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn map(
        map: &'static str,
        what: impl Into<String>,
        source: aya::maps::MapError,
    ) -> Self {
        Self::Map {
            map,
            what: what.into(),
            source,
        }
    }

    pub(crate) fn program(what: impl Into<String>, source: aya::programs::ProgramError) -> Self {
        Self::Program {
            what: what.into(),
            source,
        }
    }
}

/// Whether some `io::Error` in the source chain is EPERM (EACCES is also
/// what the verifier returns for a rejected program: not a privilege issue).
fn permission_denied(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>()
            && io.raw_os_error() == Some(libc::EPERM)
        {
            return true;
        }
        cur = e.source();
    }
    false
}
