//! Routing: from a request's host and headers to the server, virtual host
//! and LLMRoute rule that serve it (first matching rule wins). Pure
//! functions over the compiled tables.

use std::sync::Arc;

use http::{HeaderMap, header};

use super::{HostPattern, Listener, RouteRule, Server, route::RequestMatch};
use crate::http::authority::normalize_host;

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
    /// A CONNECT request: routes match host and path, and a CONNECT has no
    /// path, so none matches it (Envoy answers 404 without a CONNECT matcher).
    Connect,
}

/// Of `candidates` (host lists with what they stand for), the one whose
/// hosts match `name` most specifically (an exact name beats `*.suffix`
/// beats `*`), the first on a tie; no name matches only `*`. This is how
/// Envoy picks a virtual host, and a filter chain by SNI.
pub fn best_match<'a, T>(
    candidates: impl IntoIterator<Item = (&'a [HostPattern], T)>,
    name: Option<&str>,
) -> Option<T> {
    let mut best: Option<((u8, usize), T)> = None;
    for (hosts, item) in candidates {
        let Some(score) = hosts
            .iter()
            .filter(|h| match name {
                Some(n) => h.matches(n),
                None => **h == HostPattern::Any,
            })
            .map(HostPattern::specificity)
            .max()
        else {
            continue;
        };
        if best.as_ref().is_none_or(|(b, _)| score > *b) {
            best = Some((score, item));
        }
    }
    best.map(|(_, item)| item)
}

/// The server of `listener` for `host` (see [`best_match`]).
pub fn server_for<'a>(listener: &'a Listener, host: &str) -> Option<&'a Arc<Server>> {
    best_match(
        listener.servers.iter().map(|s| (s.hosts.as_slice(), s)),
        Some(host),
    )
}

/// The HTTPS server of `listener` a TLS connection belongs to, chosen by
/// the ClientHello's SNI as Envoy chooses a filter chain: the best match of
/// the servers' hosts; without SNI, or with one no server names, only a
/// server for `*` takes it (else the handshake is refused).
pub fn server_for_sni<'a>(listener: &'a Listener, sni: Option<&str>) -> Option<&'a Arc<Server>> {
    let sni = sni.map(normalize_host);
    best_match(
        listener
            .servers
            .iter()
            .filter(|s| s.tls.is_some())
            .map(|s| (s.hosts.as_slice(), s)),
        sni.as_deref(),
    )
}

/// Routes a request that arrived on plain HTTP; `host` is normalised (see
/// [`normalize_host`]).
pub fn route<'a>(
    listener: &'a Listener,
    host: &str,
    headers: &HeaderMap,
) -> Result<Routed<'a>, NoRoute> {
    let first = server_for(listener, host).ok_or(NoRoute::Host)?;
    route_in(listener, first, host, headers)
}

/// Routes a request within `server` (for HTTPS, the one the connection's
/// SNI chose). On a plain-HTTP port every server that accepts the host
/// shares one route table, as Istio builds one for all of a port's
/// plain-HTTP servers: the most specific virtual host among them wins, and
/// the rules of routes bound to different Gateways for that same host are
/// tried in server order. An HTTPS server keeps its own table, and only
/// serves the hosts it lists (another host on its connection: 404).
pub fn route_in<'a>(
    listener: &'a Listener,
    server: &'a Arc<Server>,
    host: &str,
    headers: &HeaderMap,
) -> Result<Routed<'a>, NoRoute> {
    if !server.accepts_host(host) {
        return Err(NoRoute::Host);
    }
    let shared = server.tls.is_none();
    let candidates = || {
        listener
            .servers
            .iter()
            .filter(move |s| {
                if shared {
                    s.tls.is_none() && s.accepts_host(host)
                } else {
                    Arc::ptr_eq(s, server)
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
