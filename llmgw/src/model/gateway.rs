//! Compiled Gateways: one listener per port, its servers with their hosts,
//! TLS material and the virtual hosts routes bound to them.

use std::{net::SocketAddr, sync::Arc};

use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;

use super::route::VirtualHost;
use crate::config::ResourceId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Protocol {
    Http,
    Https,
}

/// One socket: every server of every selected Gateway with this port.
#[derive(Debug)]
pub struct Listener {
    /// The port as written in the Gateway (`destination.port` is `local.port()`).
    pub port: u16,
    pub local: SocketAddr,
    pub protocol: Protocol,
    pub servers: Vec<Arc<Server>>,
}

/// One `servers[]` entry of a Gateway, with the routes bound to it.
#[derive(Debug)]
pub struct Server {
    pub gateway: ResourceId,
    /// `port.name` (or `servers[].name`), for logs.
    pub name: String,
    pub hosts: Vec<HostPattern>,
    /// Per `hosts` entry, the namespace routes must be in to bind
    /// (`ns/host`; `None` = any namespace).
    pub host_namespaces: Vec<Option<String>>,
    pub tls: Option<Arc<ServerTls>>,
    /// Plain-HTTP server that answers every request with a redirect to https.
    pub https_redirect: bool,
    /// Most specific host first.
    pub vhosts: Vec<VirtualHost>,
}

impl Server {
    /// The virtual host serving `host` (lower-case, no port), if any.
    pub fn vhost(&self, host: &str) -> Option<&VirtualHost> {
        self.vhosts.iter().find(|v| v.host.matches(host))
    }

    pub fn accepts_host(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h.matches(host))
    }
}

pub struct ServerTls {
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// `MUTUAL` and `OPTIONAL_MUTUAL`: client certificates are verified
    /// against these roots.
    pub client_ca: Option<Vec<CertificateDer<'static>>>,
    /// `OPTIONAL_MUTUAL`: a client without a certificate is served too (one
    /// that presents a certificate must present a valid one).
    pub client_cert_optional: bool,
    pub min_tls13: bool,
    /// Where the certificate came from, for `validate` and logs.
    pub origin: String,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("origin", &self.origin)
            .field("certificates", &self.cert_chain.len())
            .field("mutual", &self.client_ca.is_some())
            .field("client_cert_optional", &self.client_cert_optional)
            .finish()
    }
}

/// A host as Istio writes them: `name`, `*.suffix` or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Any,
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
    Exact(String),
}

impl HostPattern {
    pub fn parse(s: &str) -> Self {
        let s = s.to_ascii_lowercase();
        if s == "*" {
            HostPattern::Any
        } else if let Some(rest) = s.strip_prefix('*') {
            HostPattern::Suffix(rest.to_string())
        } else {
            HostPattern::Exact(s)
        }
    }

    /// `host` must already be lower-case without a port.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
            HostPattern::Exact(e) => e == host,
        }
    }

    /// Exact names first, then longer suffixes, then `*` (Envoy's order).
    pub fn specificity(&self) -> (u8, usize) {
        match self {
            HostPattern::Exact(e) => (2, e.len()),
            HostPattern::Suffix(s) => (1, s.len()),
            HostPattern::Any => (0, 0),
        }
    }

    /// Whether some host matches both patterns.
    pub(crate) fn intersects(&self, other: &HostPattern) -> bool {
        use HostPattern::*;
        match (self, other) {
            (Any, _) | (_, Any) => true,
            (Exact(a), p) | (p, Exact(a)) => p.matches(a),
            (Suffix(a), Suffix(b)) => a.ends_with(b.as_str()) || b.ends_with(a.as_str()),
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Any => f.write_str("*"),
            HostPattern::Suffix(s) => write!(f, "*{s}"),
            HostPattern::Exact(e) => f.write_str(e),
        }
    }
}
