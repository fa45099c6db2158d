//! CUSTOM authorization over gRPC (`envoyExtAuthzGrpc`): the
//! `envoy.service.auth.v3.Authorization/Check` call Envoy's ext_authz filter
//! makes, over HTTP/2 cleartext. The check carries every request header
//! (with `:authority`, `:method`, `:path`, `:scheme`), the addresses and, if
//! configured, the body; `status.code` 0 allows with the `ok_response`
//! header changes, anything else denies with the `denied_response` (403 when
//! it names no status). A transport failure, a non-OK gRPC status or the
//! timeout is an error: `failOpen` allows, else `statusOnError`.

use std::{
    collections::HashMap,
    sync::atomic::Ordering,
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, Request, StatusCode, header};
use prost::Message as _;

use super::{
    LocalReply,
    extauthz::{
        Allowed, CheckRequest, CheckResult, Counters, HeaderAction, call, not_for_check, on_error,
        set_all,
    },
    extauthz_proto as pb,
};
use crate::{
    client::{Client, Scheme},
    model::extauthz::GrpcProvider,
};

impl GrpcProvider {
    pub(super) async fn check(
        &self,
        client: &Client,
        req: &CheckRequest<'_>,
        counts: &Counters,
    ) -> CheckResult {
        let (message, too_large) = self.check_message(req);
        if too_large {
            counts.denied.fetch_add(1, Ordering::Relaxed);
            return CheckResult::Deny(LocalReply::empty(StatusCode::PAYLOAD_TOO_LARGE));
        }
        let request = match self.http_request(&message) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(provider = %self.common.name, error = %e, "ext_authz: cannot build the check request");
                return on_error(&self.common, counts);
            }
        };
        let Some((parts, body, trailers)) = call(
            client,
            Scheme::H2c,
            request,
            self.common.timeout,
            &self.common.name,
        )
        .await
        else {
            return on_error(&self.common, counts);
        };
        match decode_reply(parts.status, &parts.headers, trailers.as_ref(), &body) {
            Ok(resp) => self.on_check_response(resp, counts),
            Err(e) => {
                tracing::warn!(provider = %self.common.name, error = %e, "ext_authz: check failed");
                on_error(&self.common, counts)
            }
        }
    }

    /// The `CheckRequest` Envoy would send, and whether the body is too
    /// large for a provider that does not take partial bodies.
    fn check_message(&self, req: &CheckRequest<'_>) -> (pb::CheckRequest, bool) {
        let mut headers: HashMap<String, String> = HashMap::new();
        for (name, value) in req.headers {
            if not_for_check(name) {
                continue;
            }
            let v = String::from_utf8_lossy(value.as_bytes());
            headers
                .entry(name.as_str().to_string())
                .and_modify(|prev| {
                    prev.push(',');
                    prev.push_str(&v);
                })
                .or_insert_with(|| v.into_owned());
        }
        // Envoy passes the request's own Content-Length too (an HTTP check
        // request carries its own instead, hence the shared filter drops it).
        if let Some(v) = req
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
        {
            headers.insert("content-length".into(), v.to_string());
        }
        let attrs = req.attrs;
        let scheme = attrs.map_or("http", |a| a.scheme);
        headers.insert(":authority".into(), req.host.to_string());
        headers.insert(":method".into(), req.method.as_str().to_string());
        headers.insert(":path".into(), req.path_and_query.to_string());
        headers.insert(":scheme".into(), scheme.to_string());
        let size = req
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(-1);
        let mut http = pb::HttpRequest {
            id: attrs.map(|a| a.request_id.to_string()).unwrap_or_default(),
            method: req.method.as_str().to_string(),
            path: req.path_and_query.to_string(),
            host: req.host.to_string(),
            scheme: scheme.to_string(),
            size,
            protocol: attrs.map(|a| a.protocol.to_string()).unwrap_or_default(),
            ..Default::default()
        };
        if let Some(a) = attrs {
            headers.insert("x-request-id".into(), a.request_id.to_string());
        }
        if let (Some(settings), Some(b)) = (self.common.body, req.body) {
            let cut = b.len() > settings.max_request_bytes;
            if cut && !settings.allow_partial_message {
                return (pb::CheckRequest::default(), true);
            }
            let sent = if cut {
                b.slice(..settings.max_request_bytes)
            } else {
                b.clone()
            };
            headers.insert("x-envoy-auth-partial-body".into(), cut.to_string());
            if self.pack_as_bytes {
                http.raw_body = sent.to_vec();
            } else {
                http.body = String::from_utf8_lossy(&sent).into_owned();
            }
        }
        http.headers = headers;
        let peer = |addr: std::net::SocketAddr| pb::Peer {
            address: Some(pb::Address {
                socket_address: Some(pb::SocketAddress {
                    address: addr.ip().to_string(),
                    port_value: u32::from(addr.port()),
                }),
            }),
            ..Default::default()
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let message = pb::CheckRequest {
            attributes: Some(pb::AttributeContext {
                source: attrs.map(|a| peer(a.source)),
                destination: attrs.map(|a| peer(a.destination)),
                request: Some(pb::AttrRequest {
                    time: Some(pb::Timestamp {
                        seconds: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
                        nanos: i32::try_from(now.subsec_nanos()).unwrap_or(0),
                    }),
                    http: Some(http),
                }),
                context_extensions: HashMap::new(),
            }),
        };
        (message, false)
    }

    /// The gRPC call: POST with a length-prefixed message, a deadline.
    fn http_request(&self, message: &pb::CheckRequest) -> Result<Request<Bytes>, String> {
        let mut buf = BytesMut::with_capacity(5 + message.encoded_len());
        buf.put_u8(0);
        buf.put_u32(u32::try_from(message.encoded_len()).map_err(|_| "check request too large")?);
        message.encode(&mut buf).map_err(|e| e.to_string())?;
        Request::post(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/grpc")
            .header(header::TE, "trailers")
            .header("grpc-timeout", self.grpc_timeout.clone())
            .body(buf.freeze())
            .map_err(|e| e.to_string())
    }

    fn on_check_response(&self, resp: pb::CheckResponse, counts: &Counters) -> CheckResult {
        let code = resp.status.as_ref().map_or(0, |s| s.code);
        if code == 0 {
            counts.allowed.fetch_add(1, Ordering::Relaxed);
            let ok = resp.ok_response.unwrap_or_default();
            let mut allowed = Allowed::default();
            for (k, v, action) in header_options(&ok.headers, false) {
                match action {
                    None => allowed.upstream_set.push((k, v)),
                    Some(a) => allowed.upstream_edits.push((k, v, a)),
                }
            }
            allowed.upstream_remove = ok
                .headers_to_remove
                .iter()
                .filter_map(|h| HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok())
                .filter(|h| !h.as_str().starts_with(':'))
                .collect();
            allowed.downstream_add = header_options(&ok.response_headers_to_add, true)
                .into_iter()
                .map(|(k, v, _)| (k, v))
                .collect();
            return CheckResult::Allow(allowed);
        }
        counts.denied.fetch_add(1, Ordering::Relaxed);
        let denied = resp.denied_response.unwrap_or_default();
        let status = denied
            .status
            .and_then(|s| u16::try_from(s.code).ok())
            .filter(|c| *c >= 200)
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::FORBIDDEN);
        tracing::debug!(provider = %self.common.name, %status, grpc_code = code, "ext_authz: denied");
        let mut reply = if denied.body.is_empty() {
            LocalReply::empty(status)
        } else {
            LocalReply::text(status, denied.body)
        };
        let mut set = Vec::new();
        for (k, v, action) in header_options(&denied.headers, false) {
            if not_for_check(&k) {
                continue;
            }
            match action {
                None => set.push((k, v)),
                Some(a) => a.apply(&mut reply.headers, &k, &v),
            }
        }
        set_all(&mut reply.headers, &set);
        CheckResult::Deny(reply)
    }
}

/// Envoy's `HeaderValueOption`s as header changes: `None` replaces, else
/// the action. In `OkHttpResponse.headers` and `DeniedHttpResponse.headers`
/// an unset `append` means replace; `response_headers_to_add` appends
/// (`append_default`). Invalid names or values are skipped.
fn header_options(
    opts: &[pb::HeaderValueOption],
    append_default: bool,
) -> Vec<(HeaderName, http::HeaderValue, Option<HeaderAction>)> {
    let mut out = Vec::new();
    for o in opts {
        let Some(h) = &o.header else { continue };
        let Ok(name) = HeaderName::from_bytes(h.key.to_ascii_lowercase().as_bytes()) else {
            tracing::debug!(header = %h.key, "ext_authz: skipping an invalid header name");
            continue;
        };
        let raw: &[u8] = if h.raw_value.is_empty() {
            h.value.as_bytes()
        } else {
            &h.raw_value
        };
        let Ok(value) = http::HeaderValue::from_bytes(raw) else {
            continue;
        };
        let action = match (&o.append, o.append_action) {
            (Some(a), _) if a.value => Some(HeaderAction::Append),
            (Some(_), _) => None,
            (None, 1) => Some(HeaderAction::AddIfAbsent),
            (None, 3) => Some(HeaderAction::OverwriteIfPresent),
            (None, 2) => None,
            (None, _) if append_default => Some(HeaderAction::Append),
            (None, _) => None,
        };
        out.push((name, value, action));
    }
    out
}

/// The `CheckResponse` of a gRPC answer, or why there is none: an HTTP
/// status other than 200, a non-zero `grpc-status` (trailers, or headers
/// for a trailers-only answer), a compressed or malformed message.
fn decode_reply(
    status: StatusCode,
    headers: &HeaderMap,
    trailers: Option<&HeaderMap>,
    body: &[u8],
) -> Result<pb::CheckResponse, String> {
    if status != StatusCode::OK {
        return Err(format!("HTTP status {status}"));
    }
    let grpc_status = trailers
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .ok_or("no grpc-status")?;
    if grpc_status != "0" {
        let message = trailers
            .and_then(|t| t.get("grpc-message"))
            .or_else(|| headers.get("grpc-message"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        return Err(format!("grpc-status {grpc_status} {message}"));
    }
    if body.len() < 5 {
        return Err("no response message".into());
    }
    if body[0] != 0 {
        return Err("compressed response message (no compression was offered)".into());
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    let message = body
        .get(5..5 + len)
        .ok_or("response message shorter than its length prefix")?;
    pb::CheckResponse::decode(message).map_err(|e| format!("decoding CheckResponse: {e}"))
}
