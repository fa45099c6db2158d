//! Reading the client's body: bounded by `--max-request-body` (refused
//! early on a larger `Content-Length`), with the stream idle timeout
//! between frames; a refused body is drained a little so the client can
//! read the 413.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{Proxy, error::ProxyError};

/// Reads the request body up to `--max-request-body`, refusing early on a
/// larger Content-Length, with the stream idle timeout between frames.
pub async fn read_body(
    mut body: Incoming,
    headers: &HeaderMap,
    proxy: &Proxy,
) -> Result<Bytes, ProxyError> {
    let limit = proxy.opts.max_request_body;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ProxyError::TooLarge { limit });
    }
    let idle = proxy.opts.stream_idle_timeout;
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(limit) as usize);
    let mut first: Option<Bytes> = None;
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(ProxyError::BodyTimeout(idle)),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(ProxyError::ClientBody(e.to_string())),
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let total = buf.len() + first.as_ref().map_or(0, Bytes::len) + data.len();
        if total as u64 > limit {
            drain_body(&mut body, idle).await;
            return Err(ProxyError::TooLarge { limit });
        }
        // One frame is the common case: keep it without copying.
        match first.take() {
            None if buf.is_empty() => first = Some(data),
            Some(f) => {
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
