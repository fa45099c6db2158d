//! The part of the authorization policy XDP can enforce exactly: DENY rules
//! whose sources are `ipBlocks` alone, on every listener port or on the
//! ports a `to.operation.ports` lists, for packets addressed to the
//! gateway's own addresses (L7 still enforces the same rules). The L4 plane
//! turns these rules into map contents.

use super::Snapshot;

/// One source network denied by one policy rule (the policy compiler's
/// output). `ports: None` denies every listener port; `Some(ports)` only
/// those (an empty list denies nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DenyEntry {
    pub net: ipnet::IpNet,
    /// The rule's name, e.g. `"istio-system/auth-policy[0]"`; counters are
    /// kept per rule name.
    pub rule: String,
    pub ports: Option<Vec<u16>>,
}

/// Everything the XDP plane enforces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct L4Rules {
    pub entries: Vec<DenyEntry>,
    /// Local TCP/UDP ports the gateway listens on; XDP only drops packets
    /// addressed to one of them.
    pub listener_ports: Vec<u16>,
    /// Which destination addresses count as the gateway's.
    pub destinations: Destinations,
}

/// The destination addresses a dropped packet must be sent to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Destinations {
    /// Any address (the destination is not checked).
    #[default]
    Any,
    /// Every address of this host's network namespace, read when the maps
    /// are synced (and re-read every few seconds by the follower): what a
    /// listener bound to `0.0.0.0` or `::` accepts.
    Host,
    /// These addresses only (listeners bound to them).
    Only(Vec<std::net::IpAddr>),
}

/// The XDP deny set for `snapshot`.
pub fn rules(snapshot: &Snapshot) -> L4Rules {
    let mut entries = Vec::new();
    for policy in &snapshot.policies.deny {
        for rule in &policy.rules {
            for (net, ports) in super::compile::authz::offload(rule) {
                entries.push(DenyEntry {
                    net,
                    rule: format!("{}[{}]", policy.id, rule.index),
                    ports,
                });
            }
        }
    }
    let mut listener_ports: Vec<u16> = snapshot.listeners.iter().map(|l| l.local.port()).collect();
    listener_ports.sort_unstable();
    listener_ports.dedup();
    // A listener on 0.0.0.0 or :: takes whatever reaches the host; one bound
    // to an address takes only that address.
    let binds: Vec<std::net::IpAddr> = snapshot.listeners.iter().map(|l| l.local.ip()).collect();
    let destinations = if binds.iter().any(|ip| ip.is_unspecified()) {
        Destinations::Host
    } else {
        let mut ips = binds;
        ips.sort_unstable();
        ips.dedup();
        Destinations::Only(ips)
    };
    L4Rules {
        entries,
        listener_ports,
        destinations,
    }
}
