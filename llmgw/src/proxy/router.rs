//! Routing: from a request's host and headers to the server, virtual host
//! and LLMRoute rule that serve it (first matching rule wins), then a
//! weighted choice of backend. Pure functions over the snapshot.

use std::sync::Arc;

use http::{HeaderMap, header};

use crate::config::snapshot::{HostPattern, Listener, RequestMatch, RouteRule, Server};

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
/// most specifically (an exact name beats `*.suffix` beats `*`); on a tie,
/// the one declared first.
pub fn server_for<'a>(listener: &'a Listener, host: &str) -> Option<&'a Arc<Server>> {
    let mut best: Option<((u8, usize), &Arc<Server>)> = None;
    for s in &listener.servers {
        let Some(score) = s
            .hosts
            .iter()
            .filter(|h| h.matches(host))
            .map(HostPattern::specificity)
            .max()
        else {
            continue;
        };
        if best.is_none_or(|(b, _)| score > b) {
            best = Some((score, s));
        }
    }
    best.map(|(_, s)| s)
}

/// Routes a request; `host` is normalised (see [`normalize_host`]).
///
/// On a plain-HTTP port every server that accepts the host shares one route
/// table, as Istio builds one for all of a port's plain-HTTP servers: the
/// most specific virtual host among them wins, and the rules of routes bound
/// to different Gateways for that same host are tried in server order. An
/// HTTPS server keeps its own table.
pub fn route<'a>(
    listener: &'a Listener,
    host: &str,
    headers: &HeaderMap,
) -> Result<Routed<'a>, NoRoute> {
    let first = server_for(listener, host).ok_or(NoRoute::Host)?;
    let shared = first.tls.is_none();
    let candidates = || {
        listener
            .servers
            .iter()
            .filter(move |s| {
                if shared {
                    s.tls.is_none() && s.accepts_host(host)
                } else {
                    Arc::ptr_eq(s, first)
                }
            })
            .filter_map(|s| s.vhost(host).map(|v| (s, v)))
    };
    let best = candidates()
        .map(|(_, v)| v.host.specificity())
        .max()
        .ok_or(NoRoute::Rule)?;
    candidates()
        .filter(|(_, v)| v.host.specificity() == best)
        .find_map(|(server, v)| {
            v.rules
                .iter()
                .find(|r| {
                    r.matches.is_empty() || r.matches.iter().any(|m| matches(m, host, headers))
                })
                .map(|rule| Routed { server, rule })
        })
        .ok_or(NoRoute::Rule)
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
