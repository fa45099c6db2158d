//! The connections to one endpoint: HTTP/2 connections shared by all
//! requests (driven with the `h2` crate directly: a request's headers and
//! its whole, already read body go out in one write, with no task per
//! request), or idle HTTP/1.1 connections (hyper's), whichever the endpoint
//! speaks; requests certainly never processed are sent again.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::sync::{Notify, oneshot};
use tracing::debug;

use super::{
    body::{StreamSlot, UpstreamIncoming},
    connect::{ConnectError, Io, Target},
    error::UpstreamError,
};

/// How long an idle pooled connection is kept.
pub(crate) const POOL_IDLE: Duration = Duration::from_secs(90);
/// Idle connections kept per pool.
const POOL_MAX_IDLE: usize = 256;

/// Which HTTP version a pool's connections speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// Over TLS, what the endpoint chose by ALPN.
    Alpn,
    /// HTTP/1.1 (plain `http://`).
    Http1,
    /// HTTP/2 with prior knowledge over cleartext (gRPC authorizers).
    H2c,
}

impl Pool {
    pub(crate) fn new(authority: String, target: Target, protocol: Protocol) -> Self {
        Pool {
            authority,
            target,
            protocol,
            state: Mutex::default(),
            h2_made: Notify::new(),
        }
    }
}

/// The connections to one provider endpoint: HTTP/2 connections shared by
/// all requests (a new one only when every one has as many streams open as
/// the provider allows, as Envoy's pool does), or idle HTTP/1.1
/// connections, whichever the provider chose by ALPN.
pub struct Pool {
    authority: String,
    target: Target,
    protocol: Protocol,
    state: Mutex<PoolState>,
    /// Woken when an HTTP/2 connection is made (or its making failed).
    h2_made: Notify,
}

#[derive(Default)]
struct PoolState {
    h2: Vec<H2Conn>,
    /// The provider chose h2 last time: while that connection is being
    /// made, requests wait for it instead of each opening their own.
    speaks_h2: bool,
    h2_connecting: bool,
    /// Idle HTTP/1.1 connections, most recently used last.
    idle: Vec<IdleH1>,
    /// Numbers connections, to tell which one a failure was on.
    made: u64,
}

struct H2Conn {
    id: u64,
    send: h2::client::SendRequest<Bytes>,
    last_used: Instant,
    /// Streams open on it (requests sent whose answer is not done).
    streams: Arc<AtomicUsize>,
    /// Dropped with this handle: wakes the connection's task, which then
    /// closes the connection once its last stream is done (h2 does not
    /// notice on its own that the last `SendRequest` is gone).
    _closer: oneshot::Sender<()>,
}

struct IdleH1 {
    conn: H1Conn,
    since: Instant,
}

/// An HTTP/1.1 connection: the handle to send on, and its task (aborted to
/// close the connection while an answer is still being read from it).
pub struct H1Conn {
    pub send: http1::SendRequest<Full<Bytes>>,
    pub task: tokio::task::AbortHandle,
}

/// A connection checked out for one request.
enum Conn {
    H2 {
        id: u64,
        send: h2::client::SendRequest<Bytes>,
        slot: StreamSlot,
        reused: bool,
    },
    H1 {
        conn: H1Conn,
        reused: bool,
    },
}

fn lock(m: &Mutex<PoolState>) -> std::sync::MutexGuard<'_, PoolState> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// hyper's client defaults for HTTP/2 (windows, frame and header sizes).
///
/// Streams a client gave up on are reset (`CANCEL`) and remembered for
/// `RESET_STREAM_MEMORY`, up to `RESET_STREAMS_REMEMBERED` at once: frames
/// the provider had already sent for them are then dropped quietly. With
/// h2's defaults (50 streams, 1 s) a burst of cancellations (clients of a
/// load test stopping together) let such frames count as protocol errors,
/// and after 1,024 of those over a connection's life h2 closed it
/// (`too_many_internal_resets`), failing every request in flight on it;
/// with the larger memory it still happened, rarely, in long runs against
/// nginx. That count guards a server against clients that provoke resets;
/// a provider connection is ours and long-lived, so it is off here.
fn h2_builder() -> h2::client::Builder {
    let mut b = h2::client::Builder::new();
    b.initial_max_send_streams(MAX_STREAMS_PER_CONNECTION)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(STREAM_WINDOW * MAX_STREAMS_PER_CONNECTION as u32)
        .max_header_list_size(16 * 1024)
        .max_send_buffer_size(1024 * 1024)
        .max_concurrent_reset_streams(RESET_STREAMS_REMEMBERED)
        .reset_stream_duration(RESET_STREAM_MEMORY)
        .max_local_error_reset_streams(None)
        .max_frame_size(16 * 1024)
        .enable_push(false);
    b
}

/// The most streams put on one HTTP/2 connection (fewer if the provider
/// allows fewer); another connection is opened beyond.
const MAX_STREAMS_PER_CONNECTION: usize = 100;

/// Each stream's receive window. A stream whose client does not read holds
/// at most this much of the provider's answer, unreleased; the
/// connection's window is this times [`MAX_STREAMS_PER_CONNECTION`], so
/// streams that stall can never use up the window the others need (one
/// slow client only ever holds back its own stream).
const STREAM_WINDOW: u32 = 256 * 1024;

/// See [`h2_builder`].
const RESET_STREAMS_REMEMBERED: usize = 4096;
const RESET_STREAM_MEMORY: Duration = Duration::from_secs(10);

/// How many times a request is sent again after finding its (reused)
/// connection closed before anything of it was sent, or after the provider
/// refused its HTTP/2 stream unprocessed (`REFUSED_STREAM`, RFC 9113 8.7):
/// Istio's default retry policy (two retries, `refused-stream`).
const RETRIES: usize = 2;

impl Pool {
    pub(crate) async fn send(
        self: &Arc<Self>,
        req: Request<Bytes>,
    ) -> Result<Response<UpstreamIncoming>, UpstreamError> {
        let mut req = req;
        let mut retries = 0;
        loop {
            let conn = self.checkout().await?;
            let (reused, sent) = match conn {
                Conn::H2 {
                    id,
                    send,
                    slot,
                    reused,
                } => (reused, self.send_h2(id, send, slot, req).await),
                Conn::H1 { conn, reused } => (reused, self.send_h1(conn, req).await),
            };
            match sent {
                Ok(resp) => return Ok(resp),
                Err(Failed::Unsent(r, _)) if reused && retries < RETRIES => {
                    retries += 1;
                    req = *r;
                }
                Err(Failed::Refused(r, e)) if retries < RETRIES => {
                    debug!(error = %e, "provider refused the stream; sending again");
                    retries += 1;
                    req = *r;
                }
                Err(Failed::Unsent(_, e) | Failed::Refused(_, e) | Failed::Sent(e)) => {
                    return Err(e);
                }
            }
        }
    }

    /// A connection for one request: the shared HTTP/2 one, an idle
    /// HTTP/1.1 one, or a new one.
    async fn checkout(self: &Arc<Self>) -> Result<Conn, UpstreamError> {
        loop {
            let wait = self.h2_made.notified();
            {
                let mut st = lock(&self.state);
                // The first connection with room for another stream.
                if let Some(c) = st.h2.iter_mut().find(|c| {
                    let most = c
                        .send
                        .current_max_send_streams()
                        .min(MAX_STREAMS_PER_CONNECTION);
                    c.streams.load(Ordering::Relaxed) < most
                }) {
                    c.last_used = Instant::now();
                    return Ok(Conn::H2 {
                        id: c.id,
                        send: c.send.clone(),
                        slot: StreamSlot::take(&c.streams),
                        reused: true,
                    });
                }
                while let Some(idle) = st.idle.pop() {
                    if !idle.conn.send.is_closed() {
                        return Ok(Conn::H1 {
                            conn: idle.conn,
                            reused: true,
                        });
                    }
                }
                if !(st.speaks_h2 && st.h2_connecting) {
                    if st.speaks_h2 {
                        st.h2_connecting = true;
                    }
                    break;
                }
            }
            // An HTTP/2 connection is being made: share it.
            wait.await;
        }
        let made = self.connect().await;
        let mut st = lock(&self.state);
        st.h2_connecting = false;
        self.h2_made.notify_waiters();
        if made.is_err() {
            // Those waiting connect on their own, as everyone does until a
            // connection is made again: no request waits out another's timeout.
            st.speaks_h2 = false;
        }
        let conn = made?;
        st.made += 1;
        let id = st.made;
        Ok(match conn {
            Made::H2(send, closer) => {
                st.speaks_h2 = true;
                let streams = Arc::new(AtomicUsize::new(0));
                let slot = StreamSlot::take(&streams);
                st.h2.push(H2Conn {
                    id,
                    send: send.clone(),
                    last_used: Instant::now(),
                    streams,
                    _closer: closer,
                });
                Conn::H2 {
                    id,
                    send,
                    slot,
                    reused: false,
                }
            }
            Made::H1(conn) => {
                st.speaks_h2 = false;
                Conn::H1 {
                    conn,
                    reused: false,
                }
            }
        })
    }

    /// Connects, and starts HTTP/2 or HTTP/1.1 as ALPN says.
    async fn connect(&self) -> Result<Made, UpstreamError> {
        let t = &self.target;
        let io = match tokio::time::timeout(t.connect_timeout, t.connect()).await {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => return Err(self.connect_error(e)),
            Err(_) => return Err(self.connect_error(ConnectError::Timeout)),
        };
        let h2 = match self.protocol {
            Protocol::Alpn => io.alpn_h2(),
            Protocol::Http1 => false,
            Protocol::H2c => true,
        };
        if h2 {
            let (send, conn) = h2_builder()
                .handshake::<_, Bytes>(io)
                .await
                .map_err(|e| self.connect_error(ConnectError::Handshake(e.to_string())))?;
            let (closer, closed) = oneshot::channel();
            tokio::spawn(H2Task {
                conn,
                closed: Some(closed),
            });
            Ok(Made::H2(send, closer))
        } else {
            let (send, conn) = http1::handshake(TokioIo::new(io))
                .await
                .map_err(|e| self.protocol_error(&e))?;
            let task = tokio::spawn(async move {
                if let Err(e) = conn.await {
                    debug!(error = %e, "provider connection (HTTP/1.1) ended");
                }
            });
            Ok(Made::H1(H1Conn {
                send,
                task: task.abort_handle(),
            }))
        }
    }

    /// One request on the shared HTTP/2 connection: headers and the whole
    /// body are queued together, so they leave in one write (the body waits
    /// in h2's buffer, not in a task, for flow-control window if it must).
    async fn send_h2(
        self: &Arc<Self>,
        id: u64,
        mut send: h2::client::SendRequest<Bytes>,
        slot: StreamSlot,
        req: Request<Bytes>,
    ) -> Result<Response<UpstreamIncoming>, Failed> {
        if let Err(e) = std::future::poll_fn(|cx| send.poll_ready(cx)).await {
            // The connection is gone (GOAWAY, closed): nothing was sent.
            self.forget_h2(id);
            return Err(Failed::Unsent(Box::new(req), self.h2_error(&e)));
        }
        let (mut head, body) = req.into_parts();
        crate::http::forwarded::fit_for_http2(&mut head.headers);
        // Kept to send again if the provider refuses the stream.
        let mut again = Request::new(body.clone());
        *again.method_mut() = head.method.clone();
        *again.uri_mut() = head.uri.clone();
        *again.version_mut() = head.version;
        *again.headers_mut() = head.headers.clone();
        let eos = body.is_empty();
        let (resp, mut stream) = send
            .send_request(Request::from_parts(head, ()), eos)
            .map_err(|e| {
                self.forget_h2(id);
                Failed::Sent(self.h2_error(&e))
            })?;
        // This request's handle on the connection goes now: the pool's is
        // the last, so dropping it closes the connection when idle.
        drop(send);
        if !eos {
            stream
                .send_data(body, true)
                .map_err(|e| Failed::Sent(self.h2_error(&e)))?;
        }
        let resp = resp.await.map_err(|e| {
            let refused =
                e.is_reset() && e.is_remote() && e.reason() == Some(h2::Reason::REFUSED_STREAM);
            // A graceful GOAWAY (NO_ERROR) fails exactly the streams above
            // its last stream id, which the provider guarantees it never
            // processed (RFC 9113 6.8): as refused; the connection is done.
            let gone_before =
                e.is_go_away() && e.is_remote() && e.reason() == Some(h2::Reason::NO_ERROR);
            if gone_before {
                self.forget_h2(id);
            }
            if refused || gone_before {
                Failed::Refused(Box::new(again), self.h2_error(&e))
            } else {
                Failed::Sent(self.h2_error(&e))
            }
        })?;
        let (parts, recv) = resp.into_parts();
        let remaining = if parts.status == http::StatusCode::NO_CONTENT
            || parts.status == http::StatusCode::NOT_MODIFIED
        {
            None
        } else {
            parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
        };
        Ok(Response::from_parts(
            parts,
            UpstreamIncoming::H2 {
                recv,
                send: Some(stream),
                remaining,
                data_done: false,
                _slot: slot,
            },
        ))
    }

    /// One request on an HTTP/1.1 connection of its own; the connection
    /// returns to the pool when the response body has been read to its end.
    async fn send_h1(
        self: &Arc<Self>,
        mut conn: H1Conn,
        req: Request<Bytes>,
    ) -> Result<Response<UpstreamIncoming>, Failed> {
        let send = &mut conn.send;
        let (mut head, body) = req.into_parts();
        // HTTP/1.1 names the authority in Host (RFC 9112 §3.2).
        if !head.headers.contains_key(http::header::HOST)
            && let Some(a) = head.uri.authority()
            && let Ok(v) = http::HeaderValue::from_str(a.as_str())
        {
            head.headers.insert(http::header::HOST, v);
        }
        // Origin form on the wire: `/path?query`.
        let origin = head.uri.path_and_query().cloned();
        head.uri = origin.map_or_else(|| Uri::from_static("/"), Uri::from);
        let req = Request::from_parts(head, Full::new(body));
        if send.ready().await.is_err() {
            let req = req.map(|b| b.into_inner().unwrap_or_default());
            return Err(Failed::Unsent(
                Box::new(req),
                self.protocol_error_text("connection closed before the request was sent"),
            ));
        }
        match send.try_send_request(req).await {
            Ok(resp) => Ok(resp.map(|body| UpstreamIncoming::H1 {
                body,
                conn: Some((conn, self.clone())),
            })),
            Err(mut e) => {
                let err = self.protocol_error(e.error());
                match e.take_message() {
                    Some(req) => Err(Failed::Unsent(
                        Box::new(req.map(|b| b.into_inner().unwrap_or_default())),
                        err,
                    )),
                    None => Err(Failed::Sent(err)),
                }
            }
        }
    }

    /// Keeps an HTTP/1.1 connection whose last answer was read to the end.
    pub(crate) fn put_idle(&self, conn: H1Conn) {
        if conn.send.is_closed() {
            return;
        }
        let mut st = lock(&self.state);
        if st.idle.len() < POOL_MAX_IDLE {
            st.idle.push(IdleH1 {
                conn,
                since: Instant::now(),
            });
        }
    }

    fn forget_h2(&self, id: u64) {
        lock(&self.state).h2.retain(|c| c.id != id);
    }

    pub(crate) fn close_idle(&self, now: Instant) {
        let mut st = lock(&self.state);
        st.h2
            .retain(|c| now.saturating_duration_since(c.last_used) <= POOL_IDLE);
        st.idle.retain(|c| {
            now.saturating_duration_since(c.since) <= POOL_IDLE && !c.conn.send.is_closed()
        });
    }

    fn connect_error(&self, e: ConnectError) -> UpstreamError {
        let authority = self.authority.clone();
        match e {
            ConnectError::Resolve(source) => UpstreamError::Resolve { authority, source },
            ConnectError::Connect(source) => UpstreamError::Connect { authority, source },
            ConnectError::Tls(source) => UpstreamError::Tls { authority, source },
            ConnectError::Timeout => UpstreamError::ConnectTimeout {
                authority,
                after: self.target.connect_timeout,
            },
            ConnectError::Handshake(message) => UpstreamError::Protocol { authority, message },
        }
    }

    fn h2_error(&self, e: &h2::Error) -> UpstreamError {
        self.protocol_error(e)
    }

    /// The error and its sources, for the most specific text.
    fn protocol_error(&self, e: &(dyn std::error::Error + 'static)) -> UpstreamError {
        let mut message = e.to_string();
        let mut src = e.source();
        while let Some(s) = src {
            message = format!("{message}: {s}");
            src = s.source();
        }
        self.protocol_error_text(&message)
    }

    fn protocol_error_text(&self, message: &str) -> UpstreamError {
        UpstreamError::Protocol {
            authority: self.authority.clone(),
            message: message.to_string(),
        }
    }
}

/// A new connection, by protocol.
enum Made {
    H2(h2::client::SendRequest<Bytes>, oneshot::Sender<()>),
    H1(H1Conn),
}

/// Why a request got no response; `Unsent` and `Refused` (an HTTP/2
/// stream the provider reset with `REFUSED_STREAM`: not processed) give the
/// request back.
enum Failed {
    Unsent(Box<Request<Bytes>>, UpstreamError),
    Refused(Box<Request<Bytes>>, UpstreamError),
    Sent(UpstreamError),
}

/// Drives an HTTP/2 connection until it ends.
struct H2Task {
    conn: h2::client::Connection<Io, Bytes>,
    closed: Option<oneshot::Receiver<()>>,
}

impl Future for H2Task {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        // The pool let go: polling the connection again makes it notice,
        // and close once no stream is left.
        if let Some(c) = &mut this.closed
            && Pin::new(c).poll(cx).is_ready()
        {
            this.closed = None;
        }
        match Pin::new(&mut this.conn).poll(cx) {
            Poll::Ready(Err(e)) => {
                debug!(error = %e, "provider connection (HTTP/2) ended");
                Poll::Ready(())
            }
            Poll::Ready(Ok(())) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    }
}
