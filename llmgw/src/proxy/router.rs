//! Routing: from a request's host and headers to the server, virtual host
//! and LLMRoute rule that serve it (first matching rule wins), then a
//! weighted choice of backend. Pure functions over the snapshot.

use std::sync::Arc;

use http::{HeaderMap, header};

use crate::config::snapshot::{Listener, RequestMatch, RouteRule, Server};

/// Where a request goes.
#[derive(Debug)]
pub struct Routed<'a> {
    pub server: &'a Arc<Server>,
    pub rule: &'a Arc<RouteRule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoute {
    /// No server of the listener accepts the host.
    Host,
    /// A server accepts the host but no rule matches.
    Rule,
}

/// Lower-cases `authority` and strips its port (`[v6]:port` too).
pub fn normalize_host(authority: &str) -> String {
    let a = authority.trim();
    let host = if let Some(rest) = a.strip_prefix('[') {
        match rest.find(']') {
            Some(end) => &a[..end + 2],
            None => a,
        }
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => a,
        }
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The server of `listener` for `host`: the one whose host list matches
/// most specifically (an exact name beats `*.suffix` beats `*`).
pub fn server_for<'a>(listener: &'a Listener, host: &str) -> Option<&'a Arc<Server>> {
    use crate::config::snapshot::HostPattern;
    let score = |s: &Server| {
        s.hosts
            .iter()
            .filter(|h| h.matches(host))
            .map(|h| match h {
                HostPattern::Exact(e) => (2, e.len()),
                HostPattern::Suffix(x) => (1, x.len()),
                HostPattern::Any => (0, 0),
            })
            .max()
    };
    listener
        .servers
        .iter()
        .filter_map(|s| score(s).map(|sc| (sc, s)))
        .max_by_key(|(sc, _)| *sc)
        .map(|(_, s)| s)
}

/// Routes a request; `host` is normalised (see [`normalize_host`]).
pub fn route<'a>(
    listener: &'a Listener,
    host: &str,
    headers: &HeaderMap,
) -> Result<Routed<'a>, NoRoute> {
    let server = server_for(listener, host).ok_or(NoRoute::Host)?;
    let vhost = server.vhost(host).ok_or(NoRoute::Rule)?;
    let rule = vhost
        .rules
        .iter()
        .find(|r| r.matches.is_empty() || r.matches.iter().any(|m| matches(m, host, headers)))
        .ok_or(NoRoute::Rule)?;
    Ok(Routed { server, rule })
}

fn matches(m: &RequestMatch, host: &str, headers: &HeaderMap) -> bool {
    m.headers.iter().all(|h| {
        if h.name == header::HOST {
            // The authority, lower-cased and without port, whatever the HTTP version.
            return h.matcher.matches(host);
        }
        let mut values = headers
            .get_all(&h.name)
            .iter()
            .filter_map(|v| v.to_str().ok());
        values.any(|v| h.matcher.matches(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_hosts() {
        assert_eq!(normalize_host("Test.COM:80"), "test.com");
        assert_eq!(normalize_host("test.com."), "test.com");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("::1"), "::1");
        assert_eq!(normalize_host("a.b"), "a.b");
    }
}
