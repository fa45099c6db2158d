//! Keeps the XDP maps following the configuration: one thread owns the
//! plane and syncs it with the deny rules of each snapshot put in service,
//! so a long sync (a million prefixes) never holds up reloads or signals,
//! and a burst of reloads collapses into one sync of the latest rules. The
//! same thread reads the program's counters every few seconds for metrics,
//! and re-reads the host's addresses when the rules name them: when the
//! kernel announces a change (netlink), and every few seconds anyway.

use std::{
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver, RecvTimeoutError, Sender},
    },
    thread,
    time::Duration,
};

use tokio::sync::oneshot;
use tracing::{error, info, warn};

use super::{Destinations, L4Rules, Plane, PlaneStats};

/// How stale the published counters may be.
const STATS_EVERY: Duration = Duration::from_secs(5);

/// What the L4 thread is told.
enum Msg {
    /// Rules to put in force, and whom to tell once they are (or failed).
    Rules(L4Rules, Option<oneshot::Sender<()>>),
    /// The kernel announced an address change.
    Addresses,
    /// The gateway failed to start: take back what the plane's start did
    /// (see `Plane::rollback`), answer, and end.
    Rollback(oneshot::Sender<Result<(), String>>),
    Stop,
}

/// The sending side; dropping it ends the thread (the pins stay, so
/// protection outlives the process until `llmgw xdp detach`).
pub struct Follower {
    tx: Sender<Msg>,
    stats: Arc<Mutex<Option<PlaneStats>>>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
    }
}

impl Follower {
    /// Moves `plane` to its own thread, and starts a second one that wakes
    /// it when the kernel announces an address change (so a new address of
    /// the host is protected within milliseconds; without netlink, within
    /// [`STATS_EVERY`]).
    pub fn start(plane: Plane) -> std::io::Result<Follower> {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(Mutex::new(None));
        let published = stats.clone();
        thread::Builder::new()
            .name("llmgw-l4".into())
            .spawn(move || run(plane, rx, published))?;
        match super::sys::AddressEvents::open() {
            Ok(events) => {
                let wake = tx.clone();
                thread::Builder::new()
                    .name("llmgw-l4-addr".into())
                    .spawn(move || {
                        while events.wait().is_ok() {
                            if wake.send(Msg::Addresses).is_err() {
                                return;
                            }
                        }
                    })?;
            }
            Err(e) => warn!(
                "cannot watch address changes ({e}); the host's addresses are re-read every {STATS_EVERY:?}"
            ),
        }
        Ok(Follower { tx, stats })
    }

    /// Queues `rules` to be put in force.
    pub fn update(&self, rules: L4Rules) {
        // A closed channel means the thread died, which it logged.
        let _ = self.tx.send(Msg::Rules(rules, None));
    }

    /// Queues `rules`; the answer resolves once they (or newer rules) were
    /// synced, or the sync failed (the thread logs why).
    pub fn update_acked(&self, rules: L4Rules) -> oneshot::Receiver<()> {
        let (done, wait) = oneshot::channel();
        let _ = self.tx.send(Msg::Rules(rules, Some(done)));
        wait
    }

    /// For a reload from `current` to `next`: when `next` listens on ports
    /// `current` does not, the rules in force with those ports added, to be
    /// synced before the new ports are bound (so a denied client finds no
    /// new port open before XDP drops it there). Should the reload then
    /// fail (a port another service owns), `serve` puts the rules in
    /// service back, so denied sources are not dropped on someone else's port.
    pub fn ports_first(current: &L4Rules, next: &L4Rules) -> Option<L4Rules> {
        let new: Vec<u16> = next
            .listener_ports
            .iter()
            .filter(|p| !current.listener_ports.contains(p))
            .copied()
            .collect();
        if new.is_empty() {
            return None;
        }
        let mut r = current.clone();
        r.listener_ports.extend(new);
        r.listener_ports.sort_unstable();
        Some(r)
    }

    /// Takes back what starting the plane did (the gateway failed to start
    /// after XDP was attached) and ends the thread; blocks until done.
    pub fn rollback(&self) -> Result<(), String> {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Rollback(done)).is_err() {
            return Err("the L4 thread is gone".into());
        }
        wait.blocking_recv()
            .unwrap_or_else(|_| Err("the L4 thread ended without answering".into()))
    }

    /// A handle on the latest counters (refreshed every few seconds).
    pub fn stats(&self) -> Arc<Mutex<Option<PlaneStats>>> {
        self.stats.clone()
    }
}

fn run(mut plane: Plane, rx: Receiver<Msg>, stats: Arc<Mutex<Option<PlaneStats>>>) {
    let mut in_force: Option<L4Rules> = None;
    // The host's addresses at the last sync of rules that name them.
    let mut addresses: Option<Vec<std::net::IpAddr>> = None;
    loop {
        publish(&plane, &stats);
        let mut acks = Vec::new();
        let mut rules = None;
        match rx.recv_timeout(STATS_EVERY) {
            Ok(Msg::Rules(r, ack)) => {
                acks.extend(ack);
                rules = Some(r);
            }
            // Addresses come and go (DHCP, a new interface): re-read them
            // when the kernel says so, and every few seconds anyway.
            Ok(Msg::Addresses) | Err(RecvTimeoutError::Timeout) => {}
            Ok(Msg::Rollback(done)) => return roll_back(plane, done),
            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
        }
        // Only the newest rules matter.
        while let Ok(m) = rx.try_recv() {
            match m {
                Msg::Rules(newer, ack) => {
                    rules = Some(newer);
                    acks.extend(ack);
                }
                Msg::Addresses => {}
                Msg::Rollback(done) => return roll_back(plane, done),
                Msg::Stop => return,
            }
        }
        // Whatever happens below, those waiting hear of it.
        let _acks = Acked(acks);
        let rules = match rules {
            Some(r) if in_force.as_ref() != Some(&r) => r,
            _ => match &in_force {
                Some(r) if r.destinations == Destinations::Host => {
                    let now = sorted_host_addresses();
                    if now.is_none() || now == addresses {
                        continue;
                    }
                    info!("the host's addresses changed; updating XDP's destination set");
                    r.clone()
                }
                _ => continue,
            },
        };
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

fn roll_back(plane: Plane, done: oneshot::Sender<Result<(), String>>) {
    let _ = done.send(plane.rollback().map_err(|e| e.to_string()));
}

/// Answers its waiters when dropped.
struct Acked(Vec<oneshot::Sender<()>>);

impl Drop for Acked {
    fn drop(&mut self) {
        for a in self.0.drain(..) {
            let _ = a.send(());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(ports: &[u16]) -> L4Rules {
        L4Rules {
            entries: Vec::new(),
            listener_ports: ports.to_vec(),
            destinations: Destinations::Host,
        }
    }

    #[test]
    fn new_listener_ports_go_first_with_the_rules_in_force() {
        let mut current = rules(&[80, 443]);
        current.entries.push(super::super::DenyEntry {
            net: "192.0.2.0/24".parse().unwrap(),
            rule: "ns/p[0]".into(),
            ports: None,
        });
        // The next snapshot drops the rule and 443, and adds 8080: first
        // the current rules on 80, 443 and 8080.
        let mut next = rules(&[8080, 80]);
        next.destinations = Destinations::Any;
        let first = Follower::ports_first(&current, &next).expect("a new port");
        assert_eq!(first.listener_ports, vec![80, 443, 8080]);
        assert_eq!(first.entries, current.entries);
        assert_eq!(first.destinations, Destinations::Host);
        // No new port: nothing to do first.
        assert_eq!(Follower::ports_first(&current, &rules(&[443])), None);
    }
}
