//! The request a provider gets: its URI (the provider's path, the client's
//! query), the client's end-to-end headers without credentials the
//! provider's key replaces, the forwarding headers and `x-request-id`.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Uri, Version, header, uri::PathAndQuery};

use super::{ConnInfo, context::Ctx, error::ProxyError, request_id::X_REQUEST_ID};
use crate::{
    http::forwarded::{self, X_FORWARDED_FOR, X_FORWARDED_PROTO},
    model::Upstream,
    observe::access_log::write_ip,
};

/// Client headers that carry API credentials; dropped when the provider sets its own key.
const API_KEY_HEADERS: &[&str] = &["api-key", "x-api-key"];

/// The request for provider `up` with `body` (already rewritten).
pub fn provider_request(
    ctx: &Ctx,
    up: &Upstream,
    body: Bytes,
) -> Result<Request<Bytes>, ProxyError> {
    let host_header = up.host_header.to_str().unwrap_or(&up.host);
    let uri = upstream_uri(up, host_header, &ctx.raw_path, &ctx.path)?;
    let body_len = body.len();
    let mut out = Request::new(body);
    *out.method_mut() = ctx.parts.method.clone();
    *out.uri_mut() = uri;
    *out.version_mut() = Version::HTTP_11;
    let headers = out.headers_mut();
    // The provider's authority is the URI's: the client sends it as Host
    // or `:authority`, as the connection's protocol wants.
    copy_request_headers(&ctx.parts.headers, headers, up);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body_len));
    if let Some(auth) = &up.authorization {
        headers.insert(header::AUTHORIZATION, auth.clone());
    }
    let trusted = ctx.worker().proxy.opts.num_trusted_proxies;
    append_forwarded(&ctx.parts.headers, headers, &ctx.conn, trusted);
    // Unique per request: kept out of the provider connection's HPACK table
    // (an entry per request would only evict the headers that repeat).
    let mut request_id = ctx.rec.request_id.clone();
    request_id.set_sensitive(true);
    headers.insert(X_REQUEST_ID, request_id);
    Ok(out)
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
pub fn append_forwarded(from: &HeaderMap, to: &mut HeaderMap, conn: &ConnInfo, trusted: usize) {
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

#[cfg(test)]
mod tests {
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
            state: super::super::conn::ConnState::new(Default::default()),
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
}
