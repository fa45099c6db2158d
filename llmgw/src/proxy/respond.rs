//! Shaping what the client gets: hop-by-hop headers dropped, the https
//! redirect, and an answer gathered and converted when the provider's
//! `stream` overrode the client's.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt;

use super::body::{ProxyBody, UpstreamBody};
use crate::{
    http::forwarded,
    llm::convert::{self, Convert, Gathered},
};

pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed = forwarded::connection_listed(headers);
    for name in forwarded::HOP_BY_HOP.iter().chain(&listed) {
        headers.remove(name);
    }
}

pub fn redirect(host: &str, path: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::empty());
    *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if let Ok(v) = HeaderValue::from_str(&format!("https://{host}{path}")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Gathers the provider's whole answer (through the usage tap, so the
/// record still sees it) and turns it into the shape the client asked for;
/// an answer that is not of the expected kind, or too large, passes as it
/// came. A stream that carried an error event, or broke off, becomes a 502
/// in the OpenAI error shape (the provider's own error object when it sent
/// one): a client that asked for JSON must not get half an answer as a
/// success.
pub async fn reshape(
    parts: &mut http::response::Parts,
    mut body: UpstreamBody,
    c: Convert,
) -> ProxyBody {
    body.log_at_end(false);
    let mut buf = BytesMut::new();
    let mut broken = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(data) = f.into_data() {
                    buf.extend_from_slice(&data);
                }
                if buf.len() > convert::MAX_CONVERTED_BYTES {
                    // Too big to gather: what came so far, then the rest.
                    body.log_at_end(true);
                    return ProxyBody::Chained(Some(buf.freeze()), Box::new(body));
                }
            }
            Err(e) => {
                broken = Some(e.to_string());
                break;
            }
        }
    }
    let failed = |parts: &mut http::response::Parts, error: serde_json::Value| {
        parts.status = http::StatusCode::BAD_GATEWAY;
        let v = serde_json::json!({ "error": error });
        (Some(v.to_string().into_bytes()), "application/json")
    };
    let (out, ct) = match (c, broken) {
        (Convert::ToCompletion, Some(e)) => failed(
            parts,
            serde_json::json!({
                "message": format!("the provider's stream broke off: {e}"),
                "type": "server_error",
                "param": null,
                "code": "upstream_unavailable",
            }),
        ),
        (Convert::ToCompletion, None) => match convert::stream_to_completion(&buf) {
            Gathered::Completion(out) => (Some(out), "application/json"),
            Gathered::Error(e) => {
                body.record_mut().error =
                    Some(format!("the provider's stream carried an error: {e}"));
                failed(parts, e)
            }
            Gathered::NotAStream => (None, ""),
        },
        (Convert::ToStream { usage }, _) => (
            convert::completion_to_stream(&buf, usage),
            "text/event-stream",
        ),
    };
    let out = match out {
        Some(out) => {
            parts
                .headers
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            parts.headers.remove(header::CONTENT_LENGTH);
            Bytes::from(out)
        }
        None => buf.freeze(),
    };
    // What the client gets, not what the provider sent.
    let rec = body.record_mut();
    rec.status = parts.status.as_u16();
    rec.bytes_sent = out.len() as u64;
    rec.log();
    ProxyBody::full(out)
}
