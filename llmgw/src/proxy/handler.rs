//! The request pipeline: security → route (or https redirect) → weighted
//! backend → read and rewrite the body → upstream request → stream the answer
//! back through the usage tap. Never panics on input; every failure becomes
//! a `ProxyError` and so one response.

use std::{
    convert::Infallible,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use bytes::{Bytes, BytesMut};
use http::{
    HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header,
    uri::PathAndQuery,
};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{
    ConnInfo, Proxy, Worker,
    body::{ProxyBody, Tap, UpstreamBody},
    convert::{self, Convert, Gathered},
    error::ProxyError,
    record::Record,
    request_id::{self, X_REQUEST_ID},
    rewrite::{self, BodyRewrite},
    security,
    upstream::UpstreamIncoming,
};
use crate::{
    http::{
        authority::normalize_host,
        forwarded::{self, X_FORWARDED_FOR, X_FORWARDED_PROTO},
        path::normalize_path,
    },
    model::Protocol,
    model::Upstream,
    model::routing::{self as router, NoRoute},
    observe::{
        access_log::write_ip,
        usage::{JsonUsageTap, SseTap},
    },
    policy::{
        CheckRequest, RequestContext,
        extauthz::{Allowed, Attributes},
    },
};

/// Client headers that carry API credentials; dropped when the provider sets its own key.
const API_KEY_HEADERS: &[&str] = &["api-key", "x-api-key"];

/// The hyper service function.
pub async fn handle(
    req: Request<Incoming>,
    conn: Arc<ConnInfo>,
    worker: Arc<Worker>,
) -> Result<Response<ProxyBody>, Infallible> {
    let proxy = &worker.proxy;
    let mut rec = Record {
        worker: worker.clone(),
        start: Instant::now(),
        time: SystemTime::now(),
        request_id: request_id::choose(req.headers(), worker.proxy.opts.num_trusted_proxies),
        client: conn.peer.ip(),
        peer: conn.peer.ip(),
        host: String::new(),
        method: req.method().clone(),
        // Without the query: some APIs take keys there (`?key=...`).
        path: req.uri().path().to_string(),
        protocol: match req.version() {
            Version::HTTP_2 => "HTTP/2",
            Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        },
        rule: None,
        backend: 0,
        model: None,
        stream: false,
        status: 0,
        upstream_status: None,
        ttfb: None,
        ttft: None,
        usage: None,
        bytes_sent: 0,
        error: None,
        upstream_error: None,
    };
    // Headers an external authorizer asked to add to the answer.
    let mut downstream: Option<Allowed> = None;
    let mut resp = match pipeline(req, &conn, &worker, &mut rec, &mut downstream).await {
        Ok(Reply::Local(resp)) => {
            rec.status = resp.status().as_u16();
            resp
        }
        Ok(Reply::Upstream(resp, tap, convert)) => {
            rec.status = resp.status().as_u16();
            rec.upstream_status = Some(rec.status);
            rec.ttfb = Some(rec.start.elapsed());
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            if let Some(a) = &downstream {
                a.apply_to_response(&mut parts.headers);
            }
            let body = UpstreamBody::new(body, rec, tap, proxy.opts.stream_idle_timeout);
            let body = match convert {
                Some(c) if parts.status.is_success() && converts(&parts.headers, c) => {
                    reshape(&mut parts, body, c).await
                }
                _ => ProxyBody::Upstream(Box::new(body)),
            };
            return Ok(Response::from_parts(parts, body));
        }
        Err(e) => {
            rec.status = e.status().as_u16();
            rec.error = Some(e.to_string());
            if let ProxyError::Upstream(u) = &e {
                rec.upstream_error = Some(u.kind());
            }
            e.to_response()
        }
    };
    if let Some(a) = &downstream {
        a.apply_to_response(resp.headers_mut());
    }
    rec.bytes_sent = http_body::Body::size_hint(resp.body()).exact().unwrap_or(0);
    Ok(resp)
}

enum Reply {
    Local(Response<ProxyBody>),
    Upstream(Response<UpstreamIncoming>, Tap, Option<Convert>),
}

async fn pipeline(
    req: Request<Incoming>,
    conn: &ConnInfo,
    worker: &Worker,
    rec: &mut Record,
    downstream: &mut Option<Allowed>,
) -> Result<Reply, ProxyError> {
    let proxy = &worker.proxy;
    let live = proxy.live.load_full();
    let snapshot = &live.snapshot;
    let (mut parts, body) = req.into_parts();
    if parts.headers.get_all(header::HOST).iter().nth(1).is_some() {
        // RFC 9112 §3.2: more than one Host is a bad request (Envoy: 400).
        return Err(ProxyError::BadRequest("more than one Host header".into()));
    }
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
        })
        .unwrap_or("")
        .to_string();
    let host = normalize_host(&authority);
    rec.host.clone_from(&host);
    let Some(listener) = snapshot.listeners.iter().find(|l| l.local == conn.listen) else {
        // The listener was removed by a reload while this connection was open.
        return Err(ProxyError::NoRoute {
            host,
            why: NoRoute::Host,
        });
    };
    let remote = forwarded::remote_addr(
        &parts.headers,
        conn.peer.ip(),
        proxy.opts.num_trusted_proxies,
    );
    rec.client = remote;

    // 1. Security, before routing, in Istio's order: JWT, CUSTOM, DENY/ALLOW.
    let scheme = match listener.protocol {
        Protocol::Https => "https",
        Protocol::Http => "http",
    };
    let identity = security::authenticate(&live, &mut parts, scheme, &authority).await?;
    // JWT may have removed a token from the query: read the path after it.
    let raw_path = parts
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
    let path = normalize_path(&raw_path);
    // What policies see; built again after an external authorizer changed headers.
    macro_rules! ctx {
        ($headers:expr) => {
            RequestContext {
                peer: conn.peer.ip(),
                remote,
                local: conn.local,
                sni: conn.sni.as_deref(),
                authority: &authority,
                method: parts.method.as_str(),
                path: &path,
                headers: $headers,
                identity: identity.as_ref(),
            }
        };
    }
    let custom = security::custom_provider(snapshot, &ctx!(&parts.headers));
    // A provider that checks bodies needs the body now; later stages reuse it.
    let mut early_body = None;
    let mut body = Some(body);
    if let Some(provider) = custom {
        if snapshot.ext_authz.body_settings(&provider).is_some()
            && let Some(b) = body.take()
        {
            early_body = Some(read_body(b, &parts.headers, proxy).await?);
        }
        // The authorizer sees the request as Envoy's filters do, after the
        // connection manager added its headers: X-Forwarded-For with the
        // peer, X-Forwarded-Proto, X-Request-Id.
        let mut seen = parts.headers.clone();
        append_forwarded(
            &parts.headers,
            &mut seen,
            conn,
            proxy.opts.num_trusted_proxies,
        );
        seen.insert(X_REQUEST_ID, rec.request_id.clone());
        let check = CheckRequest {
            method: &parts.method,
            host: &authority,
            path_and_query: &raw_path,
            headers: &seen,
            body: early_body.as_ref(),
            attrs: Some(Attributes {
                source: conn.peer,
                destination: conn.local,
                scheme: if conn.tls { "https" } else { "http" },
                protocol: rec.protocol,
                request_id: rec.request_id.to_str().unwrap_or(""),
            }),
        };
        let allowed = security::check_custom(&live, &provider, &check).await?;
        allowed.apply_to_request(&mut parts.headers);
        *downstream = Some(allowed);
    }
    security::authorize(snapshot, &ctx!(&parts.headers))?;

    // 2. Route.
    let no_route = |why| ProxyError::NoRoute {
        host: host.clone(),
        why,
    };
    if parts.method == Method::CONNECT {
        // Never forwarded: a 2xx to a CONNECT would turn the connection
        // into a tunnel to the provider.
        return Err(no_route(NoRoute::Connect));
    }
    // HTTPS: the server the handshake chose by SNI; plain HTTP: by Host.
    let server = if conn.tls {
        router::server_for_sni(listener, conn.sni.as_deref())
    } else {
        router::server_for(listener, &host)
    }
    .ok_or_else(|| no_route(NoRoute::Host))?;
    if server.https_redirect {
        return Ok(Reply::Local(redirect(&host, &raw_path)));
    }
    let routed = router::route_in(listener, server, &host, &parts.headers).map_err(no_route)?;
    let rule = routed.rule.clone();
    let roll = fastrand::u64(..rule.total_weight.max(1));
    let picked = rule.pick(roll);
    rec.backend = rule
        .backends
        .iter()
        .position(|b| std::ptr::eq(b, picked))
        .unwrap_or(0);
    let up = picked.upstream.clone();
    rec.rule = Some(rule);
    rec.model.clone_from(&up.model);

    // 3. Body: bounded read, then the provider rewrite.
    let body = match (early_body, body) {
        (Some(b), _) => b,
        (None, Some(b)) => read_body(b, &parts.headers, proxy).await?,
        (None, None) => Bytes::new(),
    };
    let mut convert = None;
    let body = if body.is_empty()
        && !matches!(parts.method, Method::POST | Method::PUT | Method::PATCH)
    {
        // Nothing to rewrite: GET /v1/models, DELETE, a CORS preflight.
        body
    } else {
        if let Some(enc) = parts.headers.get(header::CONTENT_ENCODING)
            && !enc.as_bytes().eq_ignore_ascii_case(b"identity")
        {
            return Err(ProxyError::Encoded(
                String::from_utf8_lossy(enc.as_bytes()).into_owned(),
            ));
        }
        // RFC 8259 lets a parser ignore a byte order mark.
        let json = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&body);
        let rw = rewrite::rewrite(
            json,
            &BodyRewrite {
                model: up.model.as_deref(),
                stream: up.stream,
            },
        )?;
        rec.model = rw.model.map(|m| clip(m, MAX_LOGGED_MODEL));
        rec.stream = rw.stream;
        // The provider's `stream` overrode the client's: answer in the
        // shape the client asked for. A client that said nothing of
        // streaming gets the provider's stream, unless it only accepts JSON
        // (as OpenAI's SDKs say for a plain completion).
        let json_only = parts
            .headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("application/json") && !a.contains("text/event-stream"));
        convert = match (rw.client_stream, rw.stream) {
            (Some(true), false) => Some(Convert::ToStream {
                usage: rw.client_usage,
            }),
            (Some(false), true) => Some(Convert::ToCompletion),
            (None, true) if json_only => Some(Convert::ToCompletion),
            _ => None,
        };
        Bytes::from(rw.body)
    };

    // 4. Upstream request.
    let host_header = up.host_header.to_str().unwrap_or(&up.host);
    let uri = upstream_uri(&up, host_header, &raw_path, &path)?;
    let body_len = body.len();
    let mut out = Request::new(body);
    *out.method_mut() = parts.method.clone();
    *out.uri_mut() = uri;
    *out.version_mut() = Version::HTTP_11;
    let headers = out.headers_mut();
    // The provider's authority is the URI's: the client sends it as Host
    // or `:authority`, as the connection's protocol wants.
    copy_request_headers(&parts.headers, headers, &up);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body_len));
    if let Some(auth) = &up.authorization {
        headers.insert(header::AUTHORIZATION, auth.clone());
    }
    append_forwarded(
        &parts.headers,
        headers,
        conn,
        proxy.opts.num_trusted_proxies,
    );
    // Unique per request: kept out of the provider connection's HPACK table
    // (an entry per request would only evict the headers that repeat).
    let mut request_id = rec.request_id.clone();
    request_id.set_sensitive(true);
    headers.insert(X_REQUEST_ID, request_id);

    let resp = worker
        .upstreams
        .send(&up.authority, up.tls_name(), out)
        .await?;
    let tap = tap_for(resp.headers(), rec.stream);
    Ok(Reply::Upstream(resp, tap, convert))
}

/// Reads the request body up to `--max-request-body`, refusing early on a
/// larger Content-Length, with the stream idle timeout between frames.
async fn read_body(
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

/// `https://HOST/PATH`: the provider's path (the client's query kept when the
/// provider's path has none), else the client's path as normalised.
fn upstream_uri(
    up: &Upstream,
    host: &str,
    raw_path: &str,
    normalized: &str,
) -> Result<Uri, ProxyError> {
    let query = raw_path.split_once('?').map(|(_, q)| q);
    let pq: PathAndQuery = match (&up.path, query) {
        (Some(p), Some(q)) if p.query().is_none() => format!("{}?{q}", p.path())
            .parse()
            .map_err(|_| ProxyError::BadRequest("invalid query".into()))?,
        (Some(p), _) => p.clone(),
        (None, Some(q)) => format!("{normalized}?{q}")
            .parse()
            .map_err(|_| ProxyError::BadRequest("invalid path".into()))?,
        (None, None) => normalized
            .parse()
            .map_err(|_| ProxyError::BadRequest("invalid path".into()))?,
    };
    Uri::builder()
        .scheme("https")
        .authority(host)
        .path_and_query(pq)
        .build()
        .map_err(|e| ProxyError::BadRequest(format!("provider URI: {e}")))
}

/// Copies the client's end-to-end headers. Dropped: hop-by-hop ones, Host
/// and Content-Length (set anew), Trailer (the body goes whole, without
/// trailers), Accept-Encoding (so usage can be read from
/// the answer), Expect (the body is already read), forwarding headers and
/// x-request-id (set anew) and, when the provider has a key, every client credential header.
fn copy_request_headers(from: &HeaderMap, to: &mut HeaderMap, up: &Upstream) {
    let listed = forwarded::connection_listed(from);
    to.reserve(from.len() + 4);
    for (name, value) in from {
        let skip = forwarded::is_hop_by_hop(name, &listed)
            || name == header::HOST
            || name == header::CONTENT_LENGTH
            || name == header::TRAILER
            || name == header::ACCEPT_ENCODING
            || name == header::EXPECT
            || name == X_FORWARDED_FOR
            || name == X_FORWARDED_PROTO
            || name == X_REQUEST_ID
            || (up.authorization.is_some()
                && (name == header::AUTHORIZATION || API_KEY_HEADERS.contains(&name.as_str())));
        if !skip {
            to.append(name.clone(), value.clone());
        }
    }
}

/// X-Forwarded-For gets the peer appended; X-Forwarded-Proto is ours unless a
/// trusted proxy in front set it (Envoy's `use_remote_address` behaviour).
fn append_forwarded(from: &HeaderMap, to: &mut HeaderMap, conn: &ConnInfo, trusted: usize) {
    let mut xff = Vec::with_capacity(48);
    for v in from.get_all(X_FORWARDED_FOR) {
        if let Ok(s) = v.to_str() {
            xff.extend_from_slice(s.as_bytes());
            xff.extend_from_slice(b", ");
        }
    }
    write_ip(&mut xff, conn.peer.ip());
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(xff)) {
        to.insert(X_FORWARDED_FOR, v);
    }
    let scheme = if conn.tls { "https" } else { "http" };
    let proto = match from.get(X_FORWARDED_PROTO) {
        Some(v) if trusted > 0 => v.clone(),
        _ => HeaderValue::from_static(scheme),
    };
    to.insert(X_FORWARDED_PROTO, proto);
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed = forwarded::connection_listed(headers);
    for name in forwarded::HOP_BY_HOP.iter().chain(&listed) {
        headers.remove(name);
    }
}

/// Which usage tap fits the response.
fn tap_for(headers: &HeaderMap, stream: bool) -> Tap {
    if headers.contains_key(header::CONTENT_ENCODING) {
        return Tap::None;
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.starts_with("text/event-stream") || (stream && ct.is_empty()) {
        Tap::Sse(SseTap::default())
    } else if ct.contains("json") || ct.is_empty() {
        Tap::Json(JsonUsageTap::default())
    } else {
        Tap::None
    }
}

fn redirect(host: &str, path: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::empty());
    *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if let Ok(v) = HeaderValue::from_str(&format!("https://{host}{path}")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Whether the provider's answer has the shape `c` converts from.
fn converts(headers: &HeaderMap, c: Convert) -> bool {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    !headers.contains_key(header::CONTENT_ENCODING)
        && match c {
            Convert::ToStream { .. } => ct.starts_with("application/json"),
            Convert::ToCompletion => ct.starts_with("text/event-stream"),
        }
}

/// Gathers the provider's whole answer (through the usage tap, so the
/// record still sees it) and turns it into the shape the client asked for;
/// an answer that is not of the expected kind, or too large, passes as it
/// came. A stream that carried an error event, or broke off, becomes a 502
/// in the OpenAI error shape (the provider's own error object when it sent
/// one): a client that asked for JSON must not get half an answer as a
/// success.
async fn reshape(
    parts: &mut http::response::Parts,
    mut body: UpstreamBody,
    c: Convert,
) -> ProxyBody {
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
    drop(body); // the record reports here
    ProxyBody::full(out)
}

/// The longest model name the access log keeps (a client may send any
/// string): longer ones are cut, marked with `...`.
const MAX_LOGGED_MODEL: usize = 256;

fn clip(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {

    #[test]
    fn long_model_names_are_clipped_at_a_character_boundary() {
        assert_eq!(super::clip("short".into(), 10), "short");
        assert_eq!(super::clip("éééé".into(), 3), "é...");
        assert_eq!(super::clip("x".repeat(300), 256).len(), 259);
    }

    use super::*;
    use crate::model::route::provider_host_header;

    fn upstream(path: Option<&str>, port: u16, key: bool) -> Upstream {
        Upstream {
            provider: crate::config::ResourceId {
                namespace: "ns".into(),
                name: "p".into(),
            },
            host: "api.example.com".into(),
            authority: format!("api.example.com:{port}"),
            port,
            host_header: provider_host_header("api.example.com", port)
                .parse()
                .unwrap(),
            path: path.map(|p| p.parse().unwrap()),
            model: None,
            stream: None,
            authorization: key.then(|| HeaderValue::from_static("Bearer sk-provider")),
        }
    }

    #[test]
    fn uri_takes_the_providers_path_and_keeps_the_query() {
        let up = upstream(Some("/v1/chat/completions"), 443, false);
        let u = upstream_uri(&up, "api.example.com", "/x?a=1", "/x").unwrap();
        assert_eq!(
            u.to_string(),
            "https://api.example.com/v1/chat/completions?a=1"
        );
        let up = upstream(None, 8443, false);
        assert_eq!(
            provider_host_header(&up.host, up.port),
            "api.example.com:8443"
        );
        let u = upstream_uri(
            &up,
            &provider_host_header(&up.host, up.port),
            "/a/../b?q",
            "/b",
        )
        .unwrap();
        assert_eq!(u.to_string(), "https://api.example.com:8443/b?q");
    }

    #[test]
    fn client_credentials_and_hop_by_hop_headers_are_dropped() {
        let mut from = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer sk-client"),
            ("x-api-key", "sk-client"),
            ("api-key", "sk-client"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("accept-encoding", "gzip"),
            ("expect", "100-continue"),
            ("content-type", "application/json"),
            ("x-custom", "kept"),
        ] {
            from.append(k, v.parse().unwrap());
        }
        let mut to = HeaderMap::new();
        copy_request_headers(&from, &mut to, &upstream(None, 443, true));
        let names: Vec<&str> = to.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "x-custom"]);
        // Without a provider key, the client's credentials go through.
        let mut to = HeaderMap::new();
        copy_request_headers(&from, &mut to, &upstream(None, 443, false));
        assert_eq!(to["authorization"], "Bearer sk-client");
    }

    #[test]
    fn forwarded_for_appends_the_peer_to_every_prior_line() {
        let conn = |ip: &str, tls| ConnInfo {
            peer: std::net::SocketAddr::new(ip.parse().unwrap(), 1234),
            local: "127.0.0.1:80".parse().unwrap(),
            listen: "127.0.0.1:80".parse().unwrap(),
            tls,
            sni: None,
        };
        let mut from = HeaderMap::new();
        let mut to = HeaderMap::new();
        append_forwarded(&from, &mut to, &conn("10.1.2.3", false), 0);
        assert_eq!(to[X_FORWARDED_FOR], "10.1.2.3");
        assert_eq!(to[X_FORWARDED_PROTO], "http");
        from.append(X_FORWARDED_FOR, "1.1.1.1, 2.2.2.2".parse().unwrap());
        from.append(X_FORWARDED_FOR, "3.3.3.3".parse().unwrap());
        from.append(X_FORWARDED_PROTO, "http".parse().unwrap());
        let mut to = HeaderMap::new();
        append_forwarded(&from, &mut to, &conn("2001:db8::7", true), 0);
        assert_eq!(
            to[X_FORWARDED_FOR],
            "1.1.1.1, 2.2.2.2, 3.3.3.3, 2001:db8::7"
        );
        assert_eq!(to.get_all(X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(to[X_FORWARDED_PROTO], "https");
        let mut to = HeaderMap::new();
        append_forwarded(&from, &mut to, &conn("2001:db8::7", true), 1);
        assert_eq!(to[X_FORWARDED_PROTO], "http");
    }

    #[test]
    fn taps() {
        let h = |ct: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            m
        };
        assert!(matches!(
            tap_for(&h("text/event-stream; charset=utf-8"), false),
            Tap::Sse(_)
        ));
        assert!(matches!(
            tap_for(&h("application/json"), true),
            Tap::Json(_)
        ));
        assert!(matches!(tap_for(&h("text/html"), false), Tap::None));
    }
}
