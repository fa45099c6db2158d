//! Response bodies: small local ones (errors, redirects) and the provider's
//! body streamed through frame by frame, never buffered, with an idle
//! timeout between frames and a usage tap. Dropping the body (the client
//! left) drops the upstream body, which cancels the upstream request.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use super::{record::Record, stall::Watch};
use crate::{
    client::{BoxError, UpstreamIncoming},
    llm::usage::UsageTap,
};

pub enum ProxyBody {
    Full(Option<Bytes>),
    Upstream(Box<UpstreamBody>),
    /// Bytes already read from the provider's body, then the rest of it.
    Chained(Option<Bytes>, Box<UpstreamBody>),
}

impl ProxyBody {
    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        ProxyBody::Full((!b.is_empty()).then_some(b))
    }

    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the provider sent nothing for {0:?}")]
pub struct IdleTimeout(pub Duration);

pub struct UpstreamBody {
    inner: UpstreamIncoming,
    /// Fires at the latest possible idle deadline; re-armed lazily from
    /// `last_frame` so a frame costs a clock read, not a timer update.
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    last_frame: tokio::time::Instant,
    tap: UsageTap,
    record: Record,
    /// What the stall sweeper sees of this answer.
    watch: Arc<Watch>,
    /// Bytes of the frame last handed to the client: counted as sent once
    /// the body is polled again (the client took it) or ends.
    handed: u64,
    done: bool,
    /// Log the record when the provider's body ends (off while the body is
    /// gathered for a conversion, which logs what the client got).
    log_at_end: bool,
}

impl UpstreamBody {
    pub fn new(
        inner: UpstreamIncoming,
        record: Record,
        tap: UsageTap,
        idle_timeout: Duration,
        watch: Arc<Watch>,
    ) -> Self {
        // The client is to take the first frame now.
        watch.handed();
        Self {
            inner,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            idle_timeout,
            last_frame: tokio::time::Instant::now(),
            tap,
            record,
            watch,
            handed: 0,
            done: false,
            log_at_end: true,
        }
    }

    /// Whether the record is logged when the provider's body ends: not
    /// while it is gathered whole for a conversion (the gatherer logs what
    /// the client got).
    pub fn log_at_end(&mut self, yes: bool) {
        self.log_at_end = yes;
    }

    /// The request's record, reported when this body is dropped.
    pub fn record_mut(&mut self) -> &mut Record {
        &mut self.record
    }

    fn on_data(&mut self, data: &Bytes) {
        let now = self.record.start.elapsed();
        self.record.ttfb.get_or_insert(now);
        self.handed = data.len() as u64;
        if self.tap.feed(data) {
            self.record.ttft = Some(now);
        }
    }

    /// The client took the frame last handed to it.
    fn taken(&mut self) {
        self.record.bytes_sent += std::mem::take(&mut self.handed);
    }

    fn on_end(&mut self) {
        self.done = true;
        self.taken();
        if self.tap.finish() {
            self.record.ttft = Some(self.record.start.elapsed());
        }
        self.record.usage = self.tap.usage();
        if self.log_at_end {
            self.record.log();
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if !self.done && self.inner.is_end_stream() {
            self.on_end();
        }
        if !self.done {
            // Keep what the stream already told us.
            self.record.usage = self.tap.usage();
            let why = self
                .watch
                .stopped_reading(self.idle_timeout)
                .unwrap_or_else(|| "client disconnected during the response".into());
            self.record.error.get_or_insert(why);
            // Over HTTP/1.1 the connection is this answer's alone: what
            // reached the socket bounds what the client got.
            let conn = &self.record.conn;
            if !conn.is_http2() {
                let written = conn.written() - self.record.conn_written_before;
                self.record.bytes_sent = self.record.bytes_sent.min(written);
            }
        }
        // The record reports itself when dropped with this body.
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        this.watch.polled();
        if this.watch.cut().is_some()
            && let Some(e) = this.watch.stopped_reading(this.idle_timeout)
        {
            // What it was handed last was not taken: not counted as sent.
            this.handed = 0;
            this.record.error = Some(e.clone());
            this.on_end();
            return Poll::Ready(Some(Err(e.into())));
        }
        this.taken();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.on_data(data);
                    this.watch.handed();
                }
                if this.inner.is_end_stream() {
                    // h2 stops polling once the body says it is done.
                    this.on_end();
                } else {
                    this.last_frame = tokio::time::Instant::now();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.record.error = Some(format!("provider response body: {e}"));
                this.on_end();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.on_end();
                Poll::Ready(None)
            }
            Poll::Pending => loop {
                if this.idle.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let due = this.last_frame + this.idle_timeout;
                if tokio::time::Instant::now() < due {
                    // Frames came since it was armed: re-arm for the real deadline.
                    this.idle.as_mut().reset(due);
                    continue;
                }
                let e = IdleTimeout(this.idle_timeout);
                this.record.error = Some(e.to_string());
                this.on_end();
                return Poll::Ready(Some(Err(e.into())));
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Upstream(u) => Pin::new(u.as_mut()).poll_frame(cx),
            ProxyBody::Chained(first, u) => match first.take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => Pin::new(u.as_mut()).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Upstream(u) => u.is_end_stream(),
            ProxyBody::Chained(first, u) => first.is_none() && u.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Upstream(u) => u.size_hint(),
            ProxyBody::Chained(..) => SizeHint::default(),
        }
    }
}
