//! Forwarding headers: the original client address from X-Forwarded-For with
//! Envoy's `xff_num_trusted_hops` rule, and the hop-by-hop headers a proxy
//! must not pass on (RFC 9110 §7.6.1).

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, header};

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The client address: the peer when no proxy in front is trusted, else the
/// `trusted_hops`-th address from the right of X-Forwarded-For (the peer when
/// the header has fewer, or the entry does not parse).
pub fn remote_addr(headers: &HeaderMap, peer: IpAddr, trusted_hops: usize) -> IpAddr {
    if trusted_hops == 0 {
        return peer;
    }
    let mut seen = 0;
    // Later header lines come later in the list; walk from the right.
    let values: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for v in values.iter().rev() {
        for entry in v.rsplit(',') {
            seen += 1;
            if seen == trusted_hops {
                return parse_xff_entry(entry.trim()).unwrap_or(peer);
            }
        }
    }
    peer
}

/// A bare IPv4 or IPv6 address, as Envoy reads an X-Forwarded-For entry:
/// anything else (a port, brackets, a name) leaves the peer as the client.
fn parse_xff_entry(s: &str) -> Option<IpAddr> {
    s.parse().ok()
}

/// The connection-specific fields of RFC 9110 §7.6.1 (besides the names
/// `Connection` lists): meaningful for one connection only.
pub fn is_connection_specific(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-connection" | "te" | "transfer-encoding" | "upgrade"
    )
}

/// Hop-by-hop headers (connection-specific ones and proxy credentials) that
/// never cross the proxy, either way.
pub static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Whether `name` must be dropped, given the `Connection` header's list.
pub fn is_hop_by_hop(name: &HeaderName, connection: &[HeaderName]) -> bool {
    HOP_BY_HOP.contains(name) || connection.contains(name)
}

/// Makes a request's header fields fit for HTTP/2 (RFC 9113 §8.2.2, §8.3.1):
/// the authority travels in `:authority` (from the URI) alone, so `Host`
/// goes; so do the connection-specific fields (`Connection` and what it
/// lists, `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`)
/// and `TE` unless it is exactly `trailers`. Strict HTTP/2 servers (nginx)
/// answer 400 to a request that carries them.
pub fn fit_for_http2(headers: &mut HeaderMap) {
    for name in connection_listed(headers) {
        headers.remove(name);
    }
    headers.remove(header::HOST);
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        debug_assert!(is_connection_specific(&name));
        headers.remove(name);
    }
    if headers
        .get_all(header::TE)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(header::TE);
    }
}

/// The header names listed in `Connection` (lower-cased).
pub fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().to_ascii_lowercase().as_bytes()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn envoy_trusted_hops() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let h = xff(&["192.0.2.10, 198.51.100.2", "203.0.113.7"]);
        assert_eq!(remote_addr(&h, peer, 0), peer);
        assert_eq!(
            remote_addr(&h, peer, 1),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            remote_addr(&h, peer, 2),
            "198.51.100.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            remote_addr(&h, peer, 3),
            "192.0.2.10".parse::<IpAddr>().unwrap()
        );
        // Fewer entries than hops: the peer.
        assert_eq!(remote_addr(&h, peer, 4), peer);
        assert_eq!(remote_addr(&xff(&["garbage"]), peer, 1), peer);
        assert_eq!(
            remote_addr(&xff(&["2001:db8::1"]), peer, 1),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        // Envoy parses an entry as a bare address: with a port it is no address.
        assert_eq!(remote_addr(&xff(&["[2001:db8::1]:80"]), peer, 1), peer);
        assert_eq!(remote_addr(&xff(&["192.0.2.1:80"]), peer, 1), peer);
    }

    #[test]
    fn http2_requests_carry_no_host_nor_connection_fields() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("host", "api.example.com"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
            ("content-type", "application/json"),
        ] {
            h.append(k, v.parse().unwrap());
        }
        fit_for_http2(&mut h);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["te", "content-type"]);
        h.insert(header::TE, "gzip, trailers".parse().unwrap());
        fit_for_http2(&mut h);
        assert!(!h.contains_key(header::TE));
    }

    #[test]
    fn hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, X-Secret".parse().unwrap());
        let listed = connection_listed(&h);
        assert!(is_hop_by_hop(&HeaderName::from_static("x-secret"), &listed));
        assert!(is_hop_by_hop(&header::TRANSFER_ENCODING, &listed));
        assert!(is_hop_by_hop(
            &HeaderName::from_static("keep-alive"),
            &listed
        ));
        assert!(!is_hop_by_hop(&header::CONTENT_TYPE, &listed));
    }
}
