//! Reading the client's body: bounded by `--max-request-body` (refused
//! early on a larger `Content-Length`) and, for all requests together, by
//! `--max-buffered-bodies` (503); within `--request-body-timeout`, the
//! stream idle timeout between frames, and `--request-body-min-rate` after
//! a grace period (408). A refused body is drained a little so the client
//! can read the 413.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::{Proxy, error::ProxyError};
use crate::observe::{downstream::TimeoutKind, metrics::Metrics};

/// Request-body bytes held by one request, counted in the process-wide
/// total (`llmgw_request_body_bytes_held`) until dropped.
pub struct BodyHold {
    metrics: Arc<Metrics>,
    bytes: i64,
}

impl BodyHold {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        BodyHold { metrics, bytes: 0 }
    }

    /// Holds `n` more bytes, unless all bodies together would then pass
    /// `limit`.
    fn grow(&mut self, n: usize, limit: u64) -> Result<(), ProxyError> {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let held = &self.metrics.downstream.body_bytes_held;
        let before = held.fetch_add(n, Ordering::Relaxed);
        if before.saturating_add(n) as u64 > limit {
            held.fetch_sub(n, Ordering::Relaxed);
            self.metrics
                .downstream
                .bodies_refused
                .fetch_add(1, Ordering::Relaxed);
            return Err(ProxyError::BodiesFull { limit });
        }
        self.bytes += n;
        Ok(())
    }
}

impl Drop for BodyHold {
    fn drop(&mut self) {
        self.metrics
            .downstream
            .body_bytes_held
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// How long a request body may take: at most `whole` in all, at most
/// `idle` between two frames, and after `GRACE` at least `min_rate` bytes a
/// second on average (0: no minimum).
#[derive(Debug, Clone, Copy)]
pub struct BodyPace {
    pub whole: Duration,
    pub idle: Duration,
    pub min_rate: u64,
}

/// Before this much time has passed, a body may arrive at any rate.
pub const GRACE: Duration = Duration::from_secs(10);

impl BodyPace {
    /// When the body has failed if nothing more comes, having received
    /// `got` bytes since `start`, the last frame at `last`; and why.
    fn deadline(
        &self,
        start: Instant,
        last: Instant,
        got: u64,
    ) -> (Instant, fn(&BodyPace, u64) -> ProxyError) {
        let mut when = (
            start + self.whole,
            whole_error as fn(&BodyPace, u64) -> ProxyError,
        );
        if last + self.idle < when.0 {
            when = (last + self.idle, idle_error);
        }
        if self.min_rate > 0 {
            // Below the rate at `t` once t > got / rate (and t >= GRACE).
            let secs = got as f64 / self.min_rate as f64;
            let at = start + GRACE.max(Duration::from_secs_f64(secs.min(1e9)));
            if at < when.0 {
                when = (at, rate_error);
            }
        }
        when
    }
}

fn whole_error(p: &BodyPace, _: u64) -> ProxyError {
    ProxyError::BodyTimeout(p.whole)
}

fn idle_error(p: &BodyPace, _: u64) -> ProxyError {
    ProxyError::BodyTimeout(p.idle)
}

fn rate_error(p: &BodyPace, got: u64) -> ProxyError {
    ProxyError::BodyTooSlow {
        min_rate: p.min_rate,
        got,
    }
}

/// Reads the request body up to `--max-request-body`, refusing early on a
/// larger Content-Length, at the pace `pace` allows. The buffer grows with
/// what arrives (a declared length reserves nothing), and every byte held
/// counts against `--max-buffered-bodies` through `hold`.
pub async fn read_body(
    mut body: Incoming,
    headers: &HeaderMap,
    proxy: &Proxy,
    hold: &mut BodyHold,
) -> Result<Bytes, ProxyError> {
    let limit = proxy.opts.max_request_body;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ProxyError::TooLarge { limit });
    }
    let pace = proxy.opts.body_pace;
    let all_bodies = proxy.opts.max_buffered_bodies;
    let start = Instant::now();
    let mut last = start;
    let mut buf = BytesMut::new();
    let mut first: Option<Bytes> = None;
    loop {
        let got = (buf.len() + first.as_ref().map_or(0, Bytes::len)) as u64;
        let (deadline, fail) = pace.deadline(start, last, got);
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                proxy
                    .observer
                    .metrics
                    .downstream
                    .timed_out(TimeoutKind::Body);
                return Err(fail(&pace, got));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(ProxyError::ClientBody(e.to_string())),
            Ok(Some(Ok(f))) => f,
        };
        last = Instant::now();
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let total = got as usize + data.len();
        if total as u64 > limit {
            drain_body(&mut body, pace.idle).await;
            return Err(ProxyError::TooLarge { limit });
        }
        hold.grow(data.len(), all_bodies)?;
        // One frame is the common case: keep it without copying.
        match first.take() {
            None if buf.is_empty() => first = Some(data),
            Some(f) => {
                buf.reserve(f.len() + data.len());
                buf.extend_from_slice(&f);
                buf.extend_from_slice(&data);
            }
            None => buf.extend_from_slice(&data),
        }
    }
    Ok(match first {
        Some(f) => f,
        None => buf.freeze(),
    })
}

/// Most a refused body is read past the limit, and for how long, so that a
/// client still sending can read the 413 instead of a reset connection
/// (nginx's "lingering close").
const DRAIN_BYTES: usize = 1 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// Reads and discards what is left of a refused body, within the bounds above.
async fn drain_body(body: &mut Incoming, idle: Duration) {
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    let mut drained = 0;
    while drained < DRAIN_BYTES {
        let wait = idle.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        match tokio::time::timeout(wait, body.frame()).await {
            Ok(Some(Ok(f))) => drained += f.data_ref().map_or(0, Bytes::len),
            _ => return,
        }
    }
}
