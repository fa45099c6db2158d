//! A response body from the client's connections, by protocol: hyper's
//! HTTP/1.1 body (the connection goes back to its pool when read to the
//! end) or an HTTP/2 stream (its slot on the connection freed with it).

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

use super::pool::{H1Conn, Pool};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A provider's response body, by protocol.
pub enum UpstreamIncoming {
    H1 {
        body: Incoming,
        /// Back to the pool when the body has been read to its end.
        conn: Option<(H1Conn, Arc<Pool>)>,
    },
    H2 {
        recv: h2::RecvStream,
        /// The request's side of the stream, kept to reset the stream (see
        /// [`UpstreamIncoming::canceller`]).
        send: Option<h2::SendStream<Bytes>>,
        /// Bytes still to come per Content-Length, when given.
        remaining: Option<u64>,
        data_done: bool,
        /// The stream's place on its connection, given back with the body.
        _slot: StreamSlot,
    },
}

/// One open stream on an HTTP/2 connection, counted while held.
pub struct StreamSlot(Arc<AtomicUsize>);

impl StreamSlot {
    pub(crate) fn take(streams: &Arc<AtomicUsize>) -> Self {
        streams.fetch_add(1, Ordering::Relaxed);
        StreamSlot(streams.clone())
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl UpstreamIncoming {
    /// The HTTP/1.1 connection is free again.
    fn release(&mut self) {
        if let UpstreamIncoming::H1 { conn, .. } = self
            && let Some((mut conn, pool)) = conn.take()
        {
            if conn.send.is_ready() {
                pool.put_idle(conn);
            } else {
                // Not yet seen idle by its task: wait for that, off this request.
                tokio::spawn(async move {
                    if conn.send.ready().await.is_ok() {
                        pool.put_idle(conn);
                    }
                });
            }
        }
    }
}

/// Stops an answer being read from a provider without the body that
/// reads it: resets its HTTP/2 stream (the provider stops; the data the
/// stream held no longer counts against the connection's window), or
/// closes its HTTP/1.1 connection.
pub enum Canceller {
    H2(h2::SendStream<Bytes>),
    H1(tokio::task::AbortHandle),
}

impl Canceller {
    pub fn cancel(mut self) {
        match &mut self {
            Canceller::H2(s) => s.send_reset(h2::Reason::CANCEL),
            Canceller::H1(task) => task.abort(),
        }
    }
}

impl UpstreamIncoming {
    /// A handle to stop this answer from elsewhere (the body keeps
    /// reading until then, and then ends with an error).
    pub fn canceller(&mut self) -> Option<Canceller> {
        match self {
            UpstreamIncoming::H2 { send, .. } => send.take().map(Canceller::H2),
            UpstreamIncoming::H1 { conn, .. } => {
                conn.as_ref().map(|(c, _)| Canceller::H1(c.task.clone()))
            }
        }
    }
}

impl Drop for UpstreamIncoming {
    fn drop(&mut self) {
        // An empty body may never be polled: its connection is free all the same.
        if let UpstreamIncoming::H1 { body, .. } = self
            && http_body::Body::is_end_stream(body)
        {
            self.release();
        }
    }
}

impl http_body::Body for UpstreamIncoming {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match this {
            UpstreamIncoming::H1 { body, .. } => {
                let r = Pin::new(&mut *body).poll_frame(cx);
                let end = match &r {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
                    _ => false,
                };
                if end {
                    this.release();
                }
                r.map_err(Into::into)
            }
            UpstreamIncoming::H2 {
                recv,
                remaining,
                data_done,
                ..
            } => {
                if !*data_done {
                    match recv.poll_data(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Some(Ok(data))) => {
                            let _ = recv.flow_control().release_capacity(data.len());
                            if let Some(r) = remaining {
                                *r = r.saturating_sub(data.len() as u64);
                            }
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        Poll::Ready(Some(Err(e))) => {
                            // As hyper: a reset with NO_ERROR or CANCEL ends the body.
                            return match e.reason() {
                                Some(h2::Reason::NO_ERROR | h2::Reason::CANCEL) => {
                                    Poll::Ready(None)
                                }
                                _ => Poll::Ready(Some(Err(e.into()))),
                            };
                        }
                        Poll::Ready(None) => *data_done = true,
                    }
                }
                match recv.poll_trailers(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Ok(Some(t))) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
                    Poll::Ready(Ok(None)) => Poll::Ready(None),
                    Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e.into()))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamIncoming::H1 { body, .. } => body.is_end_stream(),
            UpstreamIncoming::H2 { recv, .. } => recv.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamIncoming::H1 { body, .. } => body.size_hint(),
            UpstreamIncoming::H2 {
                remaining: Some(n), ..
            } => SizeHint::with_exact(*n),
            UpstreamIncoming::H2 { .. } => SizeHint::default(),
        }
    }
}
