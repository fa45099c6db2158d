//! Answers whose client stopped reading. A client that takes nothing of an
//! answer for `--stream-idle-timeout` (its socket full, or its HTTP/2
//! window at zero) has the answer cut: the provider's stream is reset (or
//! its HTTP/1.1 connection closed), so it stops generating and a shared
//! HTTP/2 connection gets its window back; the client's connection is
//! closed then too (HTTP/1.1), or once the stream is still held a timeout
//! later (HTTP/2: hyper cannot reset one stream from outside). A stalled
//! answer may hold a provider stream's window of data, so past
//! `--max-stalled-answers` in the process the longest stalled are cut
//! early. Each worker keeps a list of its answers in progress, swept by its
//! heartbeat.

use std::{
    sync::{
        Arc, Mutex, OnceLock, Weak,
        atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use super::conn::ConnState;
use crate::{
    client::body::Canceller,
    observe::downstream::{Downstream, TimeoutKind},
};

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

/// An answer stalled this long counts against `--max-stalled-answers`.
const STALLED_AFTER_MS: u64 = 1000;

/// Why an answer was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Nothing taken for `--stream-idle-timeout`.
    Timeout = 1,
    /// Stalled while the process held `--max-stalled-answers`.
    Shed = 2,
}

/// One answer in progress, as the sweeper sees it.
pub struct Watch {
    /// When data was last handed to the client and not taken since (the
    /// body not polled again), in [`now_ms`]; 0 while the client keeps up
    /// or the answer waits for the provider.
    handed_at: AtomicU64,
    /// Why it was cut ([`Cut`]), 0 while it is not.
    cut: AtomicU8,
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

    pub fn cut(&self) -> Option<Cut> {
        match self.cut.load(Ordering::Relaxed) {
            1 => Some(Cut::Timeout),
            2 => Some(Cut::Shed),
            _ => None,
        }
    }

    /// Why the answer ended early, if its client stopped reading: cut here,
    /// or its connection closed for a write that made no progress for
    /// `timeout`.
    pub fn stopped_reading(&self, timeout: Duration) -> Option<String> {
        match self.cut() {
            Some(Cut::Shed) => Some(
                "the client stopped reading the answer (cut early: too many stalled answers)"
                    .into(),
            ),
            Some(Cut::Timeout) => Some(format!(
                "the client stopped reading the answer (nothing taken for {timeout:?})"
            )),
            None if self.conn.stopped_reading() => Some(format!(
                "the client stopped reading the answer (nothing taken for {timeout:?})"
            )),
            None => None,
        }
    }

    /// Cuts the answer: its provider side stops; an HTTP/1.1 client's
    /// connection is closed.
    fn cut_now(&self, why: Cut, now: u64) {
        self.cut.store(why as u8, Ordering::Relaxed);
        self.cut_at.store(now, Ordering::Relaxed);
        let cancel = self.cancel.lock().ok().and_then(|mut c| c.take());
        if let Some(c) = cancel {
            c.cancel();
        }
        if why == Cut::Timeout {
            self.conn.timed_out(TimeoutKind::Write);
        }
        if !self.conn.is_http2() {
            self.conn.kill();
        }
    }
}

/// A worker's answers in progress.
#[derive(Default)]
pub struct Stalls {
    list: Mutex<Vec<Weak<Watch>>>,
    /// This worker's stalled answers at its last sweep (its share of the
    /// process-wide gauge).
    stalled: AtomicI64,
}

/// What [`Stalls::sweep`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub timed_out: usize,
    pub shed: usize,
}

impl Stalls {
    /// Watches a new answer; `cancel` stops its provider side.
    pub fn watch(&self, cancel: Option<Canceller>, conn: Arc<ConnState>) -> Arc<Watch> {
        let w = Arc::new(Watch {
            handed_at: AtomicU64::new(0),
            cut: AtomicU8::new(0),
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
    /// Then, while the process has more than `max_stalled` answers stalled
    /// (`downstream`'s gauge, which this worker's share is added to), cuts
    /// this worker's share of the excess, longest stalled first.
    pub fn sweep(&self, timeout: Duration, max_stalled: u64, downstream: &Downstream) -> Swept {
        let now = now_ms();
        let limit = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let mut expired = Vec::new();
        // Stalled, not cut: (since, answer).
        let mut stalled = Vec::new();
        if let Ok(mut l) = self.list.lock() {
            l.retain(|w| {
                let Some(w) = w.upgrade() else {
                    return false;
                };
                let handed = w.handed_at.load(Ordering::Relaxed);
                let age = now.saturating_sub(handed);
                if w.cut().is_some() {
                    let at = w.cut_at.load(Ordering::Relaxed);
                    if now.saturating_sub(at) > limit {
                        w.conn.kill();
                    }
                } else if handed != 0 && age > limit {
                    expired.push(w);
                } else if handed != 0 && age >= STALLED_AFTER_MS {
                    stalled.push((handed, w));
                }
                true
            });
        }
        let mut swept = Swept {
            timed_out: expired.len(),
            shed: 0,
        };
        for w in expired {
            w.cut_now(Cut::Timeout, now);
        }
        // This worker's share of the gauge, then of the excess.
        let mine = stalled.len() as i64;
        let before = self.stalled.swap(mine, Ordering::Relaxed);
        let all = downstream
            .stalled_answers
            .fetch_add(mine - before, Ordering::Relaxed)
            + (mine - before);
        let max = i64::try_from(max_stalled).unwrap_or(i64::MAX);
        if all > max && mine > 0 {
            let excess = all - max;
            // Rounded up, so that the shares together cover the excess.
            let share = ((excess * mine + all - 1) / all).min(mine) as usize;
            stalled.sort_unstable_by_key(|(since, _)| *since);
            for (_, w) in stalled.drain(..share) {
                w.cut_now(Cut::Shed, now);
            }
            swept.shed = share;
            self.stalled.fetch_sub(share as i64, Ordering::Relaxed);
            downstream
                .stalled_answers
                .fetch_sub(share as i64, Ordering::Relaxed);
            downstream
                .stalled_answers_shed
                .fetch_add(share as u64, Ordering::Relaxed);
        }
        swept
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
