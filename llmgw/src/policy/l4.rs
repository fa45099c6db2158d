//! The part of the authorization policy XDP can enforce exactly: DENY rules
//! whose sources are `ipBlocks` alone, on every listener port or on the
//! ports a `to.operation.ports` lists, for packets addressed to the
//! gateway's own addresses. L7 still enforces the same rules.

use crate::{
    config::Snapshot,
    l4::{DenyEntry, Destinations, L4Rules},
};

/// The XDP deny set for `snapshot`.
pub fn rules(snapshot: &Snapshot) -> L4Rules {
    let mut entries = Vec::new();
    for policy in &snapshot.policies.deny {
        for rule in &policy.rules {
            for (net, ports) in super::authz::offload(rule) {
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
