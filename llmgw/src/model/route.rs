//! Compiled LLMRoutes and LLMProviders: virtual hosts, rules with their
//! header matchers, weighted backends, and per (rule, provider) the
//! resolved rewrite (`Upstream`) the proxy writes into each request.

use std::sync::Arc;

use http::{HeaderName, HeaderValue, uri::PathAndQuery};
use regex::Regex;

use super::gateway::HostPattern;
use crate::config::ResourceId;

#[derive(Debug)]
pub struct VirtualHost {
    pub host: HostPattern,
    pub rules: Vec<Arc<RouteRule>>,
}

/// One LLMRoute rule, as bound to one server.
#[derive(Debug)]
pub struct RouteRule {
    pub route: ResourceId,
    /// `route` as `namespace/name`, for metrics and the access log.
    pub route_label: String,
    /// The rule's `name`, or `rule-N` (0-based index) when unnamed.
    pub name: String,
    /// Any match selects the rule; empty means always.
    pub matches: Vec<RequestMatch>,
    pub backends: Vec<Backend>,
    /// Sum of backend weights (> 0; a u64, as 2^31 - 1 each can overflow a u32).
    pub total_weight: u64,
}

impl RouteRule {
    /// Picks a backend by weight; `roll` is uniform in `0..total_weight`.
    pub fn pick(&self, roll: u64) -> &Backend {
        let mut acc = 0u64;
        for b in &self.backends {
            acc += u64::from(b.weight);
            if roll < acc {
                return b;
            }
        }
        // Unreachable when roll < total_weight; the last backend is a safe answer.
        &self.backends[self.backends.len() - 1]
    }
}

#[derive(Debug)]
pub struct RequestMatch {
    pub headers: Vec<HeaderMatch>,
}

#[derive(Debug)]
pub struct HeaderMatch {
    /// Lower-case; `host` stands for the authority.
    pub name: HeaderName,
    pub matcher: StrMatcher,
}

#[derive(Debug)]
pub enum StrMatcher {
    Present,
    Exact(String),
    Prefix(String),
    /// Anchored at both ends, as Envoy's safe_regex.
    Regex(Regex),
}

impl StrMatcher {
    pub fn matches(&self, v: &str) -> bool {
        match self {
            StrMatcher::Present => true,
            StrMatcher::Exact(e) => v == e,
            StrMatcher::Prefix(p) => v.starts_with(p.as_str()),
            StrMatcher::Regex(r) => r.is_match(v),
        }
    }
}

/// One backend of a rule: a provider and the rewrite for requests sent there.
#[derive(Debug)]
pub struct Backend {
    pub provider: Arc<Provider>,
    pub weight: u32,
    pub upstream: Arc<Upstream>,
}

/// Everything the proxy writes into a request for one (rule, provider).
#[derive(Debug)]
pub struct Upstream {
    pub provider: ResourceId,
    /// Host header and TLS server name.
    pub host: String,
    /// `host:port` the connection goes to (before `--resolve`).
    pub authority: String,
    pub port: u16,
    /// The `Host` header (and URI authority) the provider gets: `host`, with
    /// the port unless it is 443.
    pub host_header: HeaderValue,
    /// The API path; `None` keeps the client's.
    pub path: Option<PathAndQuery>,
    pub model: Option<String>,
    pub stream: Option<bool>,
    /// `Bearer <apiKey>`, marked sensitive; `None` keeps the client's header.
    pub authorization: Option<HeaderValue>,
}

impl Upstream {
    /// The TLS server name: the host without a port.
    pub fn tls_name(&self) -> &str {
        self.host.split(':').next().unwrap_or(&self.host)
    }
}

/// A selected LLMProvider.
#[derive(Debug)]
pub struct Provider {
    pub id: ResourceId,
    /// `id` as `namespace/name`, for metrics and the access log.
    pub label: String,
    /// Lower-case host as written (`host` or `host:port`).
    pub host: String,
}

/// `Host` for a provider: its host, with the port unless it is 443.
pub fn provider_host_header(host: &str, port: u16) -> String {
    if port == 443 || host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:{port}")
    }
}
