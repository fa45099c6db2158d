//! A client connection's state and its I/O with the timeouts hyper does
//! not give: how long a keep-alive connection may wait for its next
//! request (`--idle-timeout`), how long request headers may take from their
//! first byte (`--header-read-timeout`), and how long a write may stay
//! blocked (`--stream-idle-timeout`: a client that stopped reading). The
//! state counts the connection in `llmgw_downstream_connections` by
//! protocol and lets the stall sweeper close it.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};
use tracing::debug;

use super::stall::{instant_at, now_ms};
use crate::observe::{
    downstream::{ConnProtocol, TimeoutKind},
    metrics::Metrics,
};

/// The HTTP/2 connection preface a plaintext (h2c) client starts with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the connection's I/O and its requests share.
pub struct ConnState {
    metrics: Arc<Metrics>,
    protocol: AtomicU8,
    /// Requests whose answer is not finished.
    in_flight: AtomicUsize,
    /// When the connection last had no request in flight ([`now_ms`]).
    idle_since: AtomicU64,
    /// When the first byte of the next request arrived, 0 before it
    /// ([`now_ms`]; HTTP/1.1 only).
    head_started: AtomicU64,
    killed: AtomicBool,
    /// Bytes written to the client so far.
    written: AtomicU64,
    /// A write made no progress for `--stream-idle-timeout`: the client
    /// stopped reading.
    write_timed_out: AtomicBool,
    /// The connection's task, woken to notice `killed`.
    waker: Mutex<Option<Waker>>,
}

impl std::fmt::Debug for ConnState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnState")
            .field("protocol", &self.protocol())
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .field("killed", &self.killed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl ConnState {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        metrics.downstream.opened(ConnProtocol::Handshake);
        Arc::new(ConnState {
            metrics,
            protocol: AtomicU8::new(ConnProtocol::Handshake as u8),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(now_ms()),
            head_started: AtomicU64::new(0),
            killed: AtomicBool::new(false),
            write_timed_out: AtomicBool::new(false),
            written: AtomicU64::new(0),
            waker: Mutex::new(None),
        })
    }

    fn protocol(&self) -> ConnProtocol {
        match self.protocol.load(Ordering::Relaxed) {
            1 => ConnProtocol::Http1,
            2 => ConnProtocol::Http2,
            _ => ConnProtocol::Handshake,
        }
    }

    /// The protocol is known (ALPN, or the first bytes).
    pub fn set_protocol(&self, p: ConnProtocol) {
        let before = self.protocol.swap(p as u8, Ordering::Relaxed);
        if before != p as u8 {
            let d = &self.metrics.downstream;
            d.closed(match before {
                1 => ConnProtocol::Http1,
                2 => ConnProtocol::Http2,
                _ => ConnProtocol::Handshake,
            });
            d.opened(p);
        }
    }

    pub fn is_http2(&self) -> bool {
        self.protocol() == ConnProtocol::Http2
    }

    /// A request was handed to the service.
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(0, Ordering::Relaxed);
    }

    /// A request's answer ended (or the request was given up).
    pub fn request_finished(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle_since.store(now_ms(), Ordering::Relaxed);
        }
    }

    pub fn timed_out(&self, kind: TimeoutKind) {
        if kind == TimeoutKind::Write {
            self.write_timed_out.store(true, Ordering::Relaxed);
        }
        self.metrics.downstream.timed_out(kind);
    }

    /// Bytes written to the client so far (all requests).
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Whether the connection was closed for a client that stopped reading.
    pub fn stopped_reading(&self) -> bool {
        self.write_timed_out.load(Ordering::Relaxed)
    }

    /// Closes the connection: its I/O fails at the next poll, which is
    /// asked for now.
    pub fn kill(&self) {
        if !self.killed.swap(true, Ordering::Relaxed)
            && let Ok(mut w) = self.waker.lock()
            && let Some(w) = w.take()
        {
            w.wake();
        }
    }
}

impl Drop for ConnState {
    fn drop(&mut self) {
        self.metrics.downstream.closed(self.protocol());
    }
}

/// The timeouts [`ConnIo`] enforces.
#[derive(Debug, Clone, Copy)]
pub struct ConnTimeouts {
    pub idle: Duration,
    pub header: Duration,
    pub write: Duration,
}

/// A client connection's I/O, with the timeouts of [`ConnTimeouts`].
pub struct ConnIo<I> {
    inner: I,
    state: Arc<ConnState>,
    timeouts: ConnTimeouts,
    /// Fires at the earliest deadline armed by a pending read or write.
    timer: Pin<Box<Sleep>>,
    /// A write has been blocked since then.
    write_blocked: Option<Instant>,
    /// The first bytes were looked at for the protocol.
    sniffed: bool,
}

impl<I> ConnIo<I> {
    /// `known`: the protocol ALPN chose, if any (else the first bytes tell).
    pub fn new(
        inner: I,
        state: Arc<ConnState>,
        timeouts: ConnTimeouts,
        known: Option<ConnProtocol>,
    ) -> Self {
        if let Some(p) = known {
            state.set_protocol(p);
        }
        ConnIo {
            inner,
            state,
            timeouts,
            timer: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
            write_blocked: None,
            sniffed: known.is_some(),
        }
    }

    fn killed(&self) -> bool {
        self.state.killed.load(Ordering::Relaxed)
    }

    fn register(&self, cx: &Context<'_>) {
        if let Ok(mut w) = self.state.waker.lock()
            && !w.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
        {
            *w = Some(cx.waker().clone());
        }
    }

    /// The read deadline, when the connection waits for a request.
    fn read_deadline(&self) -> Option<(Instant, TimeoutKind)> {
        let s = &self.state;
        if s.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let at = |since_ms: u64, d: Duration| {
            let d = u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2);
            instant_at(since_ms.saturating_add(d))
        };
        let head = s.head_started.load(Ordering::Relaxed);
        if head != 0 && !s.is_http2() {
            return Some((at(head, self.timeouts.header), TimeoutKind::Header));
        }
        Some((
            at(s.idle_since.load(Ordering::Relaxed), self.timeouts.idle),
            TimeoutKind::Idle,
        ))
    }

    /// Arms the timer for the earliest deadline; an error once one passed.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let read = self.read_deadline();
        let write = self
            .write_blocked
            .map(|since| (since + self.timeouts.write, TimeoutKind::Write));
        let next = match (read, write) {
            (Some(r), Some(w)) => Some(if w.0 < r.0 { w } else { r }),
            (r, w) => r.or(w),
        };
        let Some((deadline, kind)) = next else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(self.time_out(kind));
        }
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            return Err(self.time_out(kind));
        }
        Ok(())
    }

    fn time_out(&self, kind: TimeoutKind) -> io::Error {
        self.state.timed_out(kind);
        debug!(kind = kind.as_str(), "client connection timed out");
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("client connection timed out ({})", kind.as_str()),
        )
    }

    fn closed_error() -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "client connection closed: it stopped reading an answer",
        )
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ConnIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.killed() {
            return Poll::Ready(Err(Self::closed_error()));
        }
        this.register(cx);
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let got = &buf.filled()[before..];
                if !got.is_empty() {
                    if !this.sniffed {
                        this.sniffed = true;
                        let h2 = got.starts_with(&H2_PREFACE[..got.len().min(H2_PREFACE.len())]);
                        this.state.set_protocol(if h2 {
                            ConnProtocol::Http2
                        } else {
                            ConnProtocol::Http1
                        });
                    }
                    let s = &this.state;
                    if s.in_flight.load(Ordering::Acquire) == 0
                        && s.head_started.load(Ordering::Relaxed) == 0
                    {
                        s.head_started.store(now_ms().max(1), Ordering::Relaxed);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.check(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ConnIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.killed() {
            return Poll::Ready(Err(Self::closed_error()));
        }
        match Pin::new(&mut this.inner).poll_write(cx, b) {
            Poll::Ready(Ok(n)) => {
                this.write_blocked = None;
                this.state.written.fetch_add(n as u64, Ordering::Relaxed);
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                this.write_blocked.get_or_insert_with(Instant::now);
                match this.check(cx) {
                    Ok(()) => Poll::Pending,
                    Err(e) => Poll::Ready(Err(e)),
                }
            }
            r => {
                this.write_blocked = None;
                r
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.killed() {
            return Poll::Ready(Err(Self::closed_error()));
        }
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                this.write_blocked = None;
                this.state.written.fetch_add(n as u64, Ordering::Relaxed);
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                this.write_blocked.get_or_insert_with(Instant::now);
                match this.check(cx) {
                    Ok(()) => Poll::Pending,
                    Err(e) => Poll::Ready(Err(e)),
                }
            }
            r => {
                this.write_blocked = None;
                r
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => {
                this.write_blocked.get_or_insert_with(Instant::now);
                match this.check(cx) {
                    Ok(()) => Poll::Pending,
                    Err(e) => Poll::Ready(Err(e)),
                }
            }
            r => {
                this.write_blocked = None;
                r
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
