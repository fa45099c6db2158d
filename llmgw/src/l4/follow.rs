//! Keeps the XDP maps following the configuration: one thread owns the
//! plane and syncs it with the deny rules of each snapshot put in service,
//! so a long sync (a million prefixes) never holds up reloads or signals,
//! and a burst of reloads collapses into one sync of the latest rules.

use std::{
    sync::mpsc::{self, Receiver, Sender},
    thread,
};

use tracing::{error, info};

use super::{L4Rules, Plane};

/// The sending side; dropping it ends the thread (the pins stay, so
/// protection outlives the process until `llmgw xdp detach`).
pub struct Follower {
    tx: Sender<L4Rules>,
}

impl Follower {
    /// Moves `plane` to its own thread.
    pub fn start(plane: Plane) -> std::io::Result<Follower> {
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name("llmgw-l4".into())
            .spawn(move || run(plane, rx))?;
        Ok(Follower { tx })
    }

    /// Queues `rules` to be put in force.
    pub fn update(&self, rules: L4Rules) {
        // A closed channel means the thread died, which it logged.
        let _ = self.tx.send(rules);
    }
}

fn run(mut plane: Plane, rx: Receiver<L4Rules>) {
    let mut in_force: Option<L4Rules> = None;
    while let Ok(mut rules) = rx.recv() {
        // Only the newest rules matter.
        while let Ok(newer) = rx.try_recv() {
            rules = newer;
        }
        if in_force.as_ref() == Some(&rules) {
            continue;
        }
        match plane.sync(&rules) {
            Ok(r) => {
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
