//! Answers whose client stopped reading. A client that takes nothing of an
//! answer for `--stream-idle-timeout` (its socket full, or its HTTP/2
//! window at zero) has the answer cut: the provider's stream is reset (or
//! its HTTP/1.1 connection closed), so it stops generating and a shared
//! HTTP/2 connection gets its window back; the client's connection is
//! closed then too (HTTP/1.1), or once the stream is still held a timeout
//! later (HTTP/2: hyper cannot reset one stream from outside). Each worker
//! keeps a list of its answers in progress, swept by its heartbeat.

use std::{
    sync::{
        Arc, Mutex, OnceLock, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use super::conn::ConnState;
use crate::{client::body::Canceller, observe::downstream::TimeoutKind};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since the first call (a monotonic clock in one word).
pub fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The instant [`now_ms`] reads `ms` at.
pub fn instant_at(ms: u64) -> tokio::time::Instant {
    tokio::time::Instant::from_std(epoch() + Duration::from_millis(ms))
}

/// One answer in progress, as the sweeper sees it.
pub struct Watch {
    /// When data was last handed to the client and not taken since (the
    /// body not polled again), in [`now_ms`]; 0 while the client keeps up
    /// or the answer waits for the provider.
    handed_at: AtomicU64,
    /// Cut for a client that stopped reading (set once).
    cut: AtomicBool,
    /// When it was cut, in [`now_ms`].
    cut_at: AtomicU64,
    cancel: Mutex<Option<Canceller>>,
    conn: Arc<ConnState>,
}

impl Watch {
    /// The body was polled: the client takes what it is given.
    pub fn polled(&self) {
        self.handed_at.store(0, Ordering::Relaxed);
    }

    /// Data went to the client.
    pub fn handed(&self) {
        self.handed_at.store(now_ms().max(1), Ordering::Relaxed);
    }

    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Relaxed)
    }

    /// Cut here, or its connection closed for a write that made no
    /// progress: either way the client stopped reading.
    pub fn client_stopped_reading(&self) -> bool {
        self.is_cut() || self.conn.stopped_reading()
    }
}

/// A worker's answers in progress.
#[derive(Default)]
pub struct Stalls {
    list: Mutex<Vec<Weak<Watch>>>,
}

impl Stalls {
    /// Watches a new answer; `cancel` stops its provider side.
    pub fn watch(&self, cancel: Option<Canceller>, conn: Arc<ConnState>) -> Arc<Watch> {
        let w = Arc::new(Watch {
            handed_at: AtomicU64::new(0),
            cut: AtomicBool::new(false),
            cut_at: AtomicU64::new(0),
            cancel: Mutex::new(cancel),
            conn,
        });
        if let Ok(mut l) = self.list.lock() {
            l.push(Arc::downgrade(&w));
        }
        w
    }

    /// Cuts the answers whose client took nothing for `timeout`; closes the
    /// connection of an HTTP/2 answer still held `timeout` after its cut.
    /// Returns how many were cut.
    pub fn sweep(&self, timeout: Duration) -> usize {
        let now = now_ms();
        let limit = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let mut cut = Vec::new();
        if let Ok(mut l) = self.list.lock() {
            l.retain(|w| {
                let Some(w) = w.upgrade() else {
                    return false;
                };
                let handed = w.handed_at.load(Ordering::Relaxed);
                if w.is_cut() {
                    let at = w.cut_at.load(Ordering::Relaxed);
                    if now.saturating_sub(at) > limit {
                        w.conn.kill();
                    }
                } else if handed != 0 && now.saturating_sub(handed) > limit {
                    cut.push(w);
                }
                true
            });
        }
        let n = cut.len();
        for w in cut {
            w.cut.store(true, Ordering::Relaxed);
            w.cut_at.store(now, Ordering::Relaxed);
            let cancel = w.cancel.lock().ok().and_then(|mut c| c.take());
            if let Some(c) = cancel {
                c.cancel();
            }
            w.conn.timed_out(TimeoutKind::Write);
            if !w.conn.is_http2() {
                w.conn.kill();
            }
        }
        n
    }

    /// Answers being watched (for tests and metrics).
    pub fn len(&self) -> usize {
        self.list
            .lock()
            .map_or(0, |l| l.iter().filter(|w| w.strong_count() > 0).count())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
