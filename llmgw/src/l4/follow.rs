//! Keeps the XDP maps following the configuration: one thread owns the
//! plane and syncs it with the deny rules of each snapshot put in service,
//! so a long sync (a million prefixes) never holds up reloads or signals,
//! and a burst of reloads collapses into one sync of the latest rules. The
//! same thread reads the program's counters every few seconds for metrics,
//! and re-reads the host's addresses when the rules name them.

use std::{
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver, RecvTimeoutError, Sender},
    },
    thread,
    time::Duration,
};

use tracing::{error, info, warn};

use super::{Destinations, L4Rules, Plane, PlaneStats};

/// How stale the published counters may be.
const STATS_EVERY: Duration = Duration::from_secs(5);

/// The sending side; dropping it ends the thread (the pins stay, so
/// protection outlives the process until `llmgw xdp detach`).
pub struct Follower {
    tx: Sender<L4Rules>,
    stats: Arc<Mutex<Option<PlaneStats>>>,
}

impl Follower {
    /// Moves `plane` to its own thread.
    pub fn start(plane: Plane) -> std::io::Result<Follower> {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(Mutex::new(None));
        let published = stats.clone();
        thread::Builder::new()
            .name("llmgw-l4".into())
            .spawn(move || run(plane, rx, published))?;
        Ok(Follower { tx, stats })
    }

    /// Queues `rules` to be put in force.
    pub fn update(&self, rules: L4Rules) {
        // A closed channel means the thread died, which it logged.
        let _ = self.tx.send(rules);
    }

    /// A handle on the latest counters (refreshed every few seconds).
    pub fn stats(&self) -> Arc<Mutex<Option<PlaneStats>>> {
        self.stats.clone()
    }
}

fn run(mut plane: Plane, rx: Receiver<L4Rules>, stats: Arc<Mutex<Option<PlaneStats>>>) {
    let mut in_force: Option<L4Rules> = None;
    // The host's addresses at the last sync of rules that name them.
    let mut addresses: Option<Vec<std::net::IpAddr>> = None;
    loop {
        publish(&plane, &stats);
        let mut resync = false;
        let mut rules = match rx.recv_timeout(STATS_EVERY) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => {
                // Addresses come and go (DHCP, a new interface): follow them.
                match &in_force {
                    Some(r) if r.destinations == Destinations::Host => {
                        let now = sorted_host_addresses();
                        if now.is_none() || now == addresses {
                            continue;
                        }
                        info!("the host's addresses changed; updating XDP's destination set");
                        resync = true;
                        r.clone()
                    }
                    _ => continue,
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        // Only the newest rules matter.
        while let Ok(newer) = rx.try_recv() {
            rules = newer;
        }
        if !resync && in_force.as_ref() == Some(&rules) {
            continue;
        }
        let seen = (rules.destinations == Destinations::Host)
            .then(sorted_host_addresses)
            .flatten();
        match plane.sync(&rules) {
            Ok(r) => {
                addresses = seen;
                info!(
                    added = r.added,
                    updated = r.updated,
                    removed = r.removed,
                    prefixes = r.prefixes,
                    rules = r.rules,
                    "XDP deny maps synced"
                );
                in_force = Some(rules);
            }
            Err(e) => error!("XDP sync failed, the previous deny set stays in force: {e}"),
        }
    }
}

fn publish(plane: &Plane, stats: &Mutex<Option<PlaneStats>>) {
    match plane.stats() {
        Ok(s) => {
            if let Ok(mut slot) = stats.lock() {
                *slot = Some(s);
            }
        }
        Err(e) => warn!("reading XDP counters: {e}"),
    }
}

fn sorted_host_addresses() -> Option<Vec<std::net::IpAddr>> {
    match super::host_addresses() {
        Ok(mut a) => {
            a.sort_unstable();
            Some(a)
        }
        Err(e) => {
            warn!("reading the host's addresses: {e}");
            None
        }
    }
}
