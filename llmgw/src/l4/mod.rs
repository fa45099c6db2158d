//! The L4 plane: the XDP program that drops packets from denied networks to
//! the gateway's listener ports, and the userspace side that loads, pins and
//! syncs it. (This file holds the contract with the policy compiler; the
//! loader lands with the XDP program.)

/// One deny entry: packets from `net` to `ports` (every listener port when
/// `None`) are dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyEntry {
    pub net: ipnet::IpNet,
    /// Which policy rule asked for it, e.g. `istio-system/auth-policy[0]`.
    pub rule: String,
    pub ports: Option<Vec<u16>>,
}

/// Everything the XDP plane enforces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct L4Rules {
    pub entries: Vec<DenyEntry>,
    /// Local socket ports the gateway listens on; only these are ever dropped.
    pub listener_ports: Vec<u16>,
}
