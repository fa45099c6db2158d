//! The compiled configuration the data path reads: listeners with their
//! servers, virtual hosts and rules; providers with the rewrite each backend
//! applies already resolved (route-specific over default), header values
//! pre-built, regexes compiled; policies compiled. Immutable once built;
//! a reload builds a new one and swaps it in whole.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
};

use http::{HeaderName, HeaderValue, uri::PathAndQuery};
use regex::Regex;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde::Serialize;

use super::mesh::MeshConfig;
use super::{
    ErrorList, Labels, RawConfig, ResourceId, StringMatch,
    gateway::{GatewaySpec, Server as RawServer},
    load::Document,
    provider::{LlmProviderSpec, OpenAiConfig},
    route::{LlmRouteSpec, LlmRule},
    selector_matches,
};
use crate::policy::{self, Authenticator, ExtAuthz, Policies};

/// What the gateway is, as opposed to what the configuration says.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The gateway workload's labels; selectors are matched against them.
    pub workload_labels: Labels,
    /// The namespace the gateway runs in (namespace-scoped policies apply here).
    pub namespace: String,
    /// Istio's root namespace: selector-less policies there apply to every workload.
    pub root_namespace: String,
    /// Where `credentialName: NAME` finds `NAME/tls.crt` and `NAME/tls.key`.
    pub credentials_dir: Option<PathBuf>,
    /// Address listeners bind to unless a server sets `bind`.
    pub bind_address: IpAddr,
    /// Gateway port → local port, for running unprivileged (`80=8080`).
    pub port_map: BTreeMap<u16, u16>,
    /// Istio MeshConfig: the extension providers CUSTOM policies name.
    pub mesh: MeshConfig,
    /// Where `mesh` is read from (`--mesh-config`), again at every reload.
    pub mesh_path: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            workload_labels: [("istio".to_string(), "ingressgateway".to_string())].into(),
            namespace: "istio-system".into(),
            root_namespace: "istio-system".into(),
            credentials_dir: None,
            bind_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port_map: BTreeMap::new(),
            mesh: MeshConfig::default(),
            mesh_path: None,
        }
    }
}

/// The validated configuration.
#[derive(Debug)]
pub struct Snapshot {
    pub listeners: Vec<Listener>,
    pub providers: Vec<Arc<Provider>>,
    pub policies: Policies,
    /// RequestAuthentication: JWT verification (call `authn.start` once serving).
    pub authn: Arc<Authenticator>,
    /// CUSTOM policies' external authorizers.
    pub ext_authz: Arc<ExtAuthz>,
    /// Things that are not errors but that a user should hear about.
    pub warnings: Vec<String>,
    /// Files read besides the configuration (certificates, keys, CAs):
    /// a change to any of them is a reason to reload.
    pub watched: Vec<PathBuf>,
}

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
    fn intersects(&self, other: &HostPattern) -> bool {
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

/// Compiles `raw` for the gateway described by `settings`. Collects every
/// error; a snapshot is returned only when there are none.
pub fn compile(raw: &RawConfig, settings: &Settings) -> Result<Snapshot, ErrorList> {
    let mut c = Compiler {
        settings,
        errors: ErrorList::default(),
        warnings: Vec::new(),
        watched: Vec::new(),
    };
    for (source, what) in &raw.skipped {
        c.warnings
            .push(format!("{source}: skipped {what}: not a kind llmgw serves"));
    }
    let providers = c.providers(&raw.providers, &raw.routes);
    let gateways: Vec<&Document<GatewaySpec>> = raw
        .gateways
        .iter()
        .filter(|g| selector_matches(&g.spec.selector, &settings.workload_labels))
        .collect();
    if gateways.is_empty() {
        let labels: Vec<String> = settings
            .workload_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        c.warnings.push(format!(
            "no Gateway selects this gateway's labels ({}; see --workload-labels): \
             nothing will be served",
            labels.join(",")
        ));
    }
    let mut listeners = c.listeners(&gateways);
    c.bind_routes(
        &raw.routes,
        &raw.gateways,
        &gateways,
        &providers,
        &mut listeners,
    );
    let security = policy::compile(raw, settings, &mut c.errors, &mut c.warnings);
    // `ports` are the ports the gateway listens on (after --port-map), as
    // Istio's are the proxy's: a list naming none of them never matches.
    let local_ports: Vec<u16> = listeners.iter().map(|l| l.local.port()).collect();
    for p in security.policies.all() {
        for r in &p.rules {
            for o in &r.to {
                if !o.ports.is_empty() && !o.ports.iter().any(|port| local_ports.contains(port)) {
                    c.warnings.push(format!(
                        "AuthorizationPolicy {} rule {}: none of ports {:?} is a port the gateway \
                         listens on ({local_ports:?}; with --port-map, policies name the local \
                         port), so that operation never matches",
                        p.id, r.index, o.ports
                    ));
                }
            }
        }
    }
    let Compiler {
        errors,
        warnings,
        watched,
        ..
    } = c;
    errors.into_result(Snapshot {
        listeners,
        providers: providers.into_values().map(|p| p.provider).collect(),
        policies: security.policies,
        authn: security.authn,
        ext_authz: security.ext_authz,
        warnings,
        watched,
    })
}

struct Compiler<'a> {
    settings: &'a Settings,
    errors: ErrorList,
    warnings: Vec<String>,
    watched: Vec<PathBuf>,
}

struct SelectedProvider<'a> {
    provider: Arc<Provider>,
    doc: &'a Document<LlmProviderSpec>,
}

impl Compiler<'_> {
    fn providers<'a>(
        &mut self,
        docs: &'a [Document<LlmProviderSpec>],
        routes: &[Document<LlmRouteSpec>],
    ) -> BTreeMap<String, SelectedProvider<'a>> {
        let mut by_host: BTreeMap<String, SelectedProvider<'a>> = BTreeMap::new();
        let rule_names: HashSet<String> = routes
            .iter()
            .flat_map(|r| {
                r.spec
                    .rules
                    .iter()
                    .enumerate()
                    .map(|(i, rule)| rule_name(rule, i))
            })
            .collect();
        for doc in docs {
            for key in doc.spec.configs.route_specific_configs.keys() {
                if !rule_names.contains(key) {
                    self.errors.push(doc.error(
                        format!("spec.configs.routeSpecificConfigs.{key}"),
                        format!("no LLMRoute has a rule named {key:?}; the keys are rule names"),
                    ));
                }
            }
            let selected = doc
                .spec
                .workload_selector
                .as_ref()
                .is_none_or(|s| selector_matches(&s.labels, &self.settings.workload_labels));
            if !selected {
                continue;
            }
            let host = doc.spec.host.trim().to_ascii_lowercase();
            if let Err(m) = split_host_port(&host) {
                self.errors.push(doc.error("spec.host", m));
                continue;
            }
            if let Some(path) = &doc.spec.path
                && let Err(m) = parse_path(path)
            {
                self.errors.push(doc.error("spec.path", m));
            }
            if let Some(prev) = by_host.get(&host) {
                self.errors.push(doc.error(
                    "spec.host",
                    format!(
                        "host {host} is already served by LLMProvider {} ({}); a provider host must be unique",
                        prev.doc.id, prev.doc.source
                    ),
                ));
                continue;
            }
            by_host.insert(
                host.clone(),
                SelectedProvider {
                    provider: Arc::new(Provider {
                        id: doc.id.clone(),
                        label: doc.id.to_string(),
                        host,
                    }),
                    doc,
                },
            );
        }
        by_host
    }

    fn listeners(&mut self, gateways: &[&Document<GatewaySpec>]) -> Vec<Listener> {
        let mut listeners: Vec<Listener> = Vec::new();
        for gw in gateways {
            for (i, server) in gw.spec.servers.iter().enumerate() {
                let field = format!("spec.servers[{i}]");
                let Some((port, protocol, compiled)) = self.server(gw, server, &field) else {
                    continue;
                };
                let bind = match &server.bind {
                    Some(b) => {
                        match b.parse::<IpAddr>() {
                            Ok(ip) => ip,
                            Err(_) => {
                                self.errors.push(gw.error(
                                format!("{field}.bind"),
                                format!("{b:?} is not an IP address (unix sockets are not supported)"),
                            ));
                                continue;
                            }
                        }
                    }
                    None => self.settings.bind_address,
                };
                let local_port = self.settings.port_map.get(&port).copied().unwrap_or(port);
                let local = SocketAddr::new(bind, local_port);
                match listeners.iter_mut().find(|l| l.port == port) {
                    Some(l) => {
                        if l.protocol != protocol {
                            self.errors.push(gw.error(
                                format!("{field}.port"),
                                format!(
                                    "port {port} is already served as {:?} by Gateway {}; one port has one protocol",
                                    l.protocol, l.servers[0].gateway
                                ),
                            ));
                            continue;
                        }
                        if l.local != local {
                            self.errors.push(gw.error(
                                format!("{field}.bind"),
                                format!("port {port} is bound to {} by another server", l.local),
                            ));
                            continue;
                        }
                        if compiled.tls.is_some() {
                            // SNI picks one server per name: a second
                            // server for the same name never gets a
                            // connection (its TLS settings would be lost).
                            for h in &compiled.hosts {
                                if let Some(first) = l
                                    .servers
                                    .iter()
                                    .find(|o| o.tls.is_some() && o.hosts.contains(h))
                                {
                                    self.warnings.push(format!(
                                        "{}: {}: {field}: host {h} on port {port} is already \
                                         served over TLS by Gateway {} server {}; connections \
                                         for it go there, never to this server",
                                        gw.source,
                                        gw.describe(),
                                        first.gateway,
                                        first.name
                                    ));
                                }
                            }
                        }
                        l.servers.push(Arc::new(compiled));
                    }
                    None => listeners.push(Listener {
                        port,
                        local,
                        protocol,
                        servers: vec![Arc::new(compiled)],
                    }),
                }
            }
        }
        listeners.sort_by_key(|l| l.port);
        // Two Gateway ports mapped onto one local address (--port-map).
        for (i, a) in listeners.iter().enumerate() {
            if let Some(b) = listeners[..i].iter().find(|b| b.local == a.local) {
                self.errors.push(super::ConfigError::Invalid {
                    at: None,
                    resource: None,
                    field: "--port-map".into(),
                    message: format!(
                        "Gateway ports {} and {} would both listen on {}",
                        b.port, a.port, a.local
                    ),
                });
            }
        }
        listeners
    }

    fn server(
        &mut self,
        gw: &Document<GatewaySpec>,
        server: &RawServer,
        field: &str,
    ) -> Option<(u16, Protocol, Server)> {
        let port = match u16::try_from(server.port.number) {
            Ok(p) if p > 0 => p,
            _ => {
                self.errors.push(gw.error(
                    format!("{field}.port.number"),
                    format!("{} is not a port (1-65535)", server.port.number),
                ));
                return None;
            }
        };
        let protocol = match server.port.protocol.to_ascii_uppercase().as_str() {
            "HTTP" | "HTTP2" | "GRPC" => Protocol::Http,
            "HTTPS" => Protocol::Https,
            other => {
                self.errors.push(gw.error(
                    format!("{field}.port.protocol"),
                    format!(
                        "protocol {other} is not served by llmgw (HTTP, HTTP2, GRPC, HTTPS are)"
                    ),
                ));
                return None;
            }
        };
        if server.hosts.is_empty() {
            self.errors.push(gw.error(
                format!("{field}.hosts"),
                "at least one host is required (use \"*\" for any)",
            ));
            return None;
        }
        let mut hosts = Vec::new();
        let mut host_namespaces = Vec::new();
        for h in &server.hosts {
            // `namespace/host`: the namespace part filters which routes may bind
            // (`.` is the Gateway's own namespace, `*` any).
            let (ns, host) = match h.split_once('/') {
                Some(("*", host)) => (None, host),
                Some((".", host)) => (Some(gw.id.namespace.clone()), host),
                Some((ns, host)) => (Some(ns.to_string()), host),
                None => (None, h.as_str()),
            };
            hosts.push(HostPattern::parse(host));
            host_namespaces.push(ns);
        }
        let mut https_redirect = false;
        let tls = match (&server.tls, protocol) {
            (Some(tls), Protocol::Http) => {
                https_redirect = tls.https_redirect;
                None
            }
            // On a TLS error keep going (without TLS) so that the listener
            // checks below still report their own problems.
            (Some(tls), Protocol::Https) => self
                .server_tls(gw, tls, &format!("{field}.tls"))
                .map(Arc::new),
            (None, Protocol::Https) => {
                self.errors.push(gw.error(
                    format!("{field}.tls"),
                    "an HTTPS server needs tls (mode SIMPLE with a certificate)",
                ));
                return None;
            }
            (None, Protocol::Http) => None,
        };
        let name = server
            .port
            .name
            .clone()
            .or_else(|| server.name.clone())
            .unwrap_or_else(|| format!("{}-{port}", server.port.protocol.to_lowercase()));
        Some((
            port,
            protocol,
            Server {
                gateway: gw.id.clone(),
                name,
                hosts,
                host_namespaces,
                tls,
                https_redirect,
                vhosts: Vec::new(),
            },
        ))
    }

    fn server_tls(
        &mut self,
        gw: &Document<GatewaySpec>,
        tls: &super::gateway::ServerTlsSettings,
        field: &str,
    ) -> Option<ServerTls> {
        let mode = tls.mode.as_deref().unwrap_or("SIMPLE").to_ascii_uppercase();
        let (mutual, client_cert_optional) = match mode.as_str() {
            "SIMPLE" => (false, false),
            "MUTUAL" => (true, false),
            "OPTIONAL_MUTUAL" => (true, true),
            other => {
                self.errors.push(gw.error(
                    format!("{field}.mode"),
                    format!(
                        "TLS mode {other} is not served by llmgw (SIMPLE, MUTUAL and \
                         OPTIONAL_MUTUAL are; PASSTHROUGH, AUTO_PASSTHROUGH and \
                         ISTIO_MUTUAL need a mesh)"
                    ),
                ));
                return None;
            }
        };
        let (cert_path, key_path, ca_path, origin) = match (
            &tls.credential_name,
            &tls.server_certificate,
        ) {
            (Some(name), _) => {
                let Some(dir) = &self.settings.credentials_dir else {
                    self.errors.push(gw.error(
                        format!("{field}.credentialName"),
                        format!("credential {name:?} needs --credentials-dir (a directory holding {name}/tls.crt and {name}/tls.key)"),
                    ));
                    return None;
                };
                let d = dir.join(name);
                let ca = d.join("ca.crt");
                (
                    d.join("tls.crt"),
                    d.join("tls.key"),
                    (mutual && ca.exists()).then_some(ca),
                    format!("credential {name}"),
                )
            }
            (None, Some(cert)) => {
                let Some(key) = &tls.private_key else {
                    self.errors.push(gw.error(
                        format!("{field}.privateKey"),
                        "serverCertificate needs privateKey",
                    ));
                    return None;
                };
                (
                    PathBuf::from(cert),
                    PathBuf::from(key),
                    tls.ca_certificates.as_ref().map(PathBuf::from),
                    format!("file {cert}"),
                )
            }
            (None, None) => {
                self.errors.push(gw.error(
                    field.to_string(),
                    "set credentialName, or serverCertificate and privateKey",
                ));
                return None;
            }
        };
        self.watched.push(cert_path.clone());
        self.watched.push(key_path.clone());
        self.watched.extend(ca_path.iter().cloned());
        let certs = |path: &PathBuf, what: &str| -> Result<Vec<CertificateDer<'static>>, String> {
            let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("{what} {}: {e}", path.display()))?
                .collect();
            let certs = certs.map_err(|e| format!("{what} {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "{what} {}: no PEM certificate in it",
                    path.display()
                ));
            }
            Ok(certs)
        };
        let cert_chain = match certs(&cert_path, "certificate") {
            Ok(c) => c,
            Err(m) => {
                self.errors.push(gw.error(field.to_string(), m));
                return None;
            }
        };
        let key = match PrivateKeyDer::from_pem_file(&key_path) {
            Ok(k) => k,
            Err(e) => {
                self.errors.push(gw.error(
                    field.to_string(),
                    format!("private key {}: {e}", key_path.display()),
                ));
                return None;
            }
        };
        let client_ca = if mutual {
            let Some(ca) = ca_path else {
                self.errors.push(gw.error(
                    format!("{field}.caCertificates"),
                    format!("{mode} needs caCertificates (or ca.crt beside the credential)"),
                ));
                return None;
            };
            match certs(&ca, "CA certificates") {
                Ok(c) => Some(c),
                Err(m) => {
                    self.errors.push(gw.error(field.to_string(), m));
                    return None;
                }
            }
        } else {
            None
        };
        let min_tls13 = match tls.min_protocol_version.as_deref() {
            None | Some("TLS_AUTO" | "TLSV1_2" | "TLSV1_0" | "TLSV1_1") => false,
            Some("TLSV1_3") => true,
            Some(other) => {
                self.errors.push(gw.error(
                    format!("{field}.minProtocolVersion"),
                    format!("unknown TLS version {other} (TLS_AUTO, TLSV1_2, TLSV1_3)"),
                ));
                return None;
            }
        };
        if !tls.cipher_suites.is_empty() || !tls.subject_alt_names.is_empty() {
            self.warnings.push(format!(
                "{}: Gateway {}: {field}: cipherSuites and subjectAltNames are ignored",
                gw.source, gw.id
            ));
        }
        Some(ServerTls {
            cert_chain,
            key,
            client_ca,
            client_cert_optional,
            min_tls13,
            origin,
        })
    }

    /// Resolves each LLMRoute's gateways and backends and adds its rules to
    /// the virtual hosts of every server it binds to.
    fn bind_routes(
        &mut self,
        routes: &[Document<LlmRouteSpec>],
        all_gateways: &[Document<GatewaySpec>],
        selected: &[&Document<GatewaySpec>],
        providers: &BTreeMap<String, SelectedProvider<'_>>,
        listeners: &mut [Listener],
    ) {
        let known: HashSet<&ResourceId> = all_gateways.iter().map(|g| &g.id).collect();
        let selected_ids: Vec<&ResourceId> = selected.iter().map(|g| &g.id).collect();
        // (server pointer identity) -> vhosts being built
        let mut tables: HashMap<*const Server, Vec<VirtualHost>> = HashMap::new();

        for route in routes {
            let ns = &route.id.namespace;
            if route.spec.gateways.is_empty() {
                self.warnings.push(format!(
                    "{}: {}: no spec.gateways: the route applies to sidecars (mesh) only, \
                     not to this gateway; add gateways: [namespace/name]",
                    route.source,
                    route.describe()
                ));
                continue;
            }
            let mut bound_gateways = Vec::new();
            for (i, g) in route.spec.gateways.iter().enumerate() {
                if g == "mesh" {
                    continue;
                }
                let id = gateway_ref(g, ns);
                if !known.contains(&id) {
                    self.errors.push(route.error(
                        format!("spec.gateways[{i}]"),
                        format!("Gateway {id} does not exist"),
                    ));
                    continue;
                }
                if selected_ids.contains(&&id) {
                    bound_gateways.push(id);
                }
            }
            let route_host = HostPattern::parse(route.spec.host.trim());
            if route.spec.host.trim().is_empty() {
                self.errors
                    .push(route.error("spec.host", "must not be empty (use \"*\" for any host)"));
                continue;
            }
            if route.spec.rules.is_empty() {
                self.errors
                    .push(route.error("spec.rules", "at least one rule is required"));
                continue;
            }
            if bound_gateways.is_empty() {
                // Bound only to Gateways another workload serves: its
                // providers are that workload's business, not this one's.
                continue;
            }
            // Compile the rules once per route, then clone the match lists per
            // server (the `gateways` condition of a match differs per server).
            let Some(rules) = self.route_rules(route, providers, &known) else {
                continue;
            };
            for listener in listeners.iter_mut() {
                for server in &listener.servers {
                    if !bound_gateways.contains(&server.gateway) {
                        continue;
                    }
                    let binds = server
                        .hosts
                        .iter()
                        .zip(&server.host_namespaces)
                        .any(|(h, hns)| {
                            h.intersects(&route_host) && hns.as_ref().is_none_or(|n| n == ns)
                        });
                    if !binds {
                        continue;
                    }
                    let bound: Vec<Arc<RouteRule>> = rules
                        .iter()
                        .filter_map(|r| r.for_gateway(&server.gateway, route))
                        .collect();
                    let table = tables.entry(Arc::as_ptr(server)).or_default();
                    match table.iter_mut().find(|v| v.host == route_host) {
                        Some(v) => v.rules.extend(bound),
                        None => table.push(VirtualHost {
                            host: route_host.clone(),
                            rules: bound,
                        }),
                    }
                }
            }
        }
        for listener in listeners.iter_mut() {
            for server in listener.servers.iter_mut() {
                if let Some(mut vhosts) = tables.remove(&Arc::as_ptr(server)) {
                    vhosts.sort_by_key(|v| std::cmp::Reverse(v.host.specificity()));
                    match Arc::get_mut(server) {
                        Some(s) => s.vhosts = vhosts,
                        None => unreachable!("servers are not shared before compile ends"),
                    }
                }
            }
        }
    }

    fn route_rules(
        &mut self,
        route: &Document<LlmRouteSpec>,
        providers: &BTreeMap<String, SelectedProvider<'_>>,
        known_gateways: &HashSet<&ResourceId>,
    ) -> Option<Vec<PendingRule>> {
        let mut out = Vec::new();
        let mut ok = true;
        for (i, rule) in route.spec.rules.iter().enumerate() {
            let field = format!("spec.rules[{i}]");
            let name = rule_name(rule, i);
            let mut matches = Vec::new();
            for (j, m) in rule.matches.iter().enumerate() {
                let mfield = format!("{field}.matches[{j}]");
                let mut headers = Vec::new();
                for (h, sm) in &m.headers {
                    let hfield = format!("{mfield}.headers.{h}");
                    let name = match HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()) {
                        Ok(n) => n,
                        Err(_) => {
                            self.errors
                                .push(route.error(hfield, format!("{h:?} is not a header name")));
                            ok = false;
                            continue;
                        }
                    };
                    match string_matcher(sm) {
                        Ok(matcher) => headers.push(HeaderMatch { name, matcher }),
                        Err(msg) => {
                            self.errors.push(route.error(hfield, msg));
                            ok = false;
                        }
                    }
                }
                let mut gateways = Vec::new();
                for (k, g) in m.gateways.iter().enumerate() {
                    let id = gateway_ref(g, &route.id.namespace);
                    if g != "mesh" && !known_gateways.contains(&id) {
                        self.errors.push(route.error(
                            format!("{mfield}.gateways[{k}]"),
                            format!("Gateway {id} does not exist"),
                        ));
                        ok = false;
                    }
                    gateways.push(id);
                }
                matches.push(PendingMatch {
                    headers,
                    gateways,
                    source_labels_ok: selector_matches(
                        &m.source_labels,
                        &self.settings.workload_labels,
                    ),
                });
            }
            if rule.backend_refs.is_empty() {
                self.errors.push(route.error(
                    format!("{field}.backendRefs"),
                    "at least one backend is required",
                ));
                ok = false;
                continue;
            }
            let mut backends = Vec::new();
            let any_weight = rule.backend_refs.iter().any(|b| b.weight.is_some());
            for (k, b) in rule.backend_refs.iter().enumerate() {
                let bfield = format!("{field}.backendRefs[{k}]");
                if b.backend_ref.is_some() {
                    self.errors.push(route.error(
                        format!("{bfield}.backendRef"),
                        "in-cluster backends (InferencePool) are not served by llmgw; use providerHost",
                    ));
                    ok = false;
                    continue;
                }
                let Some(host) = &b.provider_host else {
                    self.errors
                        .push(route.error(format!("{bfield}.providerHost"), "is required"));
                    ok = false;
                    continue;
                };
                let host = host.trim().to_ascii_lowercase();
                let Some(p) = providers.get(&host) else {
                    self.errors.push(route.error(
                        format!("{bfield}.providerHost"),
                        format!("no LLMProvider with host {host} selects this gateway"),
                    ));
                    ok = false;
                    continue;
                };
                let weight = match (b.weight, any_weight) {
                    (Some(w), _) if w < 0 => {
                        self.errors
                            .push(route.error(format!("{bfield}.weight"), "must not be negative"));
                        ok = false;
                        continue;
                    }
                    (Some(w), _) => w as u32,
                    (None, true) => 0,
                    (None, false) => 1,
                };
                match upstream(p, &name, b.host_rewrite.as_deref()) {
                    Ok(u) => backends.push(Backend {
                        provider: p.provider.clone(),
                        weight,
                        upstream: Arc::new(u),
                    }),
                    Err((f, m)) => {
                        self.errors.push(p.doc.error(f, m));
                        ok = false;
                    }
                }
            }
            let total_weight: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
            if !backends.is_empty() && total_weight == 0 {
                self.errors.push(route.error(
                    format!("{field}.backendRefs"),
                    "weights add up to 0: no backend would ever be chosen",
                ));
                ok = false;
            }
            for (k, b) in rule.backend_refs.iter().enumerate() {
                if let Some(h) = &b.host_rewrite
                    && split_host_port(h).is_err()
                {
                    self.errors.push(route.error(
                        format!("{field}.backendRefs[{k}].hostRewrite"),
                        format!("{h:?} is not a host name"),
                    ));
                    ok = false;
                }
            }
            out.push(PendingRule {
                name,
                always: rule.matches.is_empty(),
                matches,
                backends: backends.into_iter().map(Arc::new).collect(),
                total_weight,
            });
        }
        ok.then_some(out)
    }
}

struct PendingMatch {
    headers: Vec<HeaderMatch>,
    gateways: Vec<ResourceId>,
    source_labels_ok: bool,
}

struct PendingRule {
    name: String,
    always: bool,
    matches: Vec<PendingMatch>,
    backends: Vec<Arc<Backend>>,
    total_weight: u64,
}

impl PendingRule {
    /// The rule as seen through `gateway`; `None` if no match can apply there.
    fn for_gateway(
        &self,
        gateway: &ResourceId,
        route: &Document<LlmRouteSpec>,
    ) -> Option<Arc<RouteRule>> {
        let matches: Vec<RequestMatch> = self
            .matches
            .iter()
            .filter(|m| {
                m.source_labels_ok && (m.gateways.is_empty() || m.gateways.contains(gateway))
            })
            .map(|m| RequestMatch {
                headers: m
                    .headers
                    .iter()
                    .map(|h| HeaderMatch {
                        name: h.name.clone(),
                        matcher: h.matcher.clone_matcher(),
                    })
                    .collect(),
            })
            .collect();
        if !self.always && matches.is_empty() {
            return None;
        }
        Some(Arc::new(RouteRule {
            route: route.id.clone(),
            route_label: route.id.to_string(),
            name: self.name.clone(),
            matches,
            backends: self
                .backends
                .iter()
                .map(|b| Backend {
                    provider: b.provider.clone(),
                    weight: b.weight,
                    upstream: b.upstream.clone(),
                })
                .collect(),
            total_weight: self.total_weight,
        }))
    }
}

impl StrMatcher {
    fn clone_matcher(&self) -> StrMatcher {
        match self {
            StrMatcher::Present => StrMatcher::Present,
            StrMatcher::Exact(s) => StrMatcher::Exact(s.clone()),
            StrMatcher::Prefix(s) => StrMatcher::Prefix(s.clone()),
            StrMatcher::Regex(r) => StrMatcher::Regex(r.clone()),
        }
    }
}

fn string_matcher(sm: &StringMatch) -> Result<StrMatcher, String> {
    match (&sm.exact, &sm.prefix, &sm.regex) {
        (None, None, None) => Ok(StrMatcher::Present),
        (Some(e), None, None) => Ok(StrMatcher::Exact(e.clone())),
        (None, Some(p), None) => Ok(StrMatcher::Prefix(p.clone())),
        (None, None, Some(r)) => Regex::new(&format!("^(?:{r})$"))
            .map(StrMatcher::Regex)
            .map_err(|e| format!("regex {r:?}: {e}")),
        _ => Err("set only one of exact, prefix, regex".into()),
    }
}

/// `ns/name` or `name` (in `default_ns`).
/// A rule's name: its own, or `rule-INDEX` when it has none.
fn rule_name(rule: &LlmRule, index: usize) -> String {
    rule.name.clone().unwrap_or_else(|| format!("rule-{index}"))
}

fn gateway_ref(s: &str, default_ns: &str) -> ResourceId {
    match s.split_once('/') {
        Some((ns, name)) => ResourceId {
            namespace: ns.to_string(),
            name: name.to_string(),
        },
        None => ResourceId {
            namespace: default_ns.to_string(),
            name: s.to_string(),
        },
    }
}

fn split_host_port(s: &str) -> Result<(&str, Option<u16>), String> {
    if s.contains('/') {
        return Err(format!("{s:?} is not a host name (no scheme, no path)"));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => {
            let port: u16 = p
                .parse()
                .map_err(|_| format!("{s:?}: {p:?} is not a port"))?;
            (h, Some(port))
        }
        _ => (s, None),
    };
    let valid = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_');
    if !valid {
        return Err(format!("{s:?} is not a host name (no scheme, no path)"));
    }
    Ok((host, port))
}

fn parse_path(p: &str) -> Result<PathAndQuery, String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} must start with /"));
    }
    p.parse::<PathAndQuery>()
        .map_err(|e| format!("{p:?} is not a valid path: {e}"))
}

/// The rewrite for requests that rule `rule` sends to provider `p`:
/// `routeSpecificConfigs[rule]` field by field over `defaultConfig`.
fn upstream(
    p: &SelectedProvider<'_>,
    rule: &str,
    host_rewrite: Option<&str>,
) -> Result<Upstream, (String, String)> {
    let spec = &p.doc.spec;
    let default = spec
        .configs
        .default_config
        .as_ref()
        .and_then(|c| c.openai_config.as_ref());
    let specific = spec
        .configs
        .route_specific_configs
        .get(rule)
        .and_then(|c| c.openai_config.as_ref());
    fn pick<T>(
        specific: Option<&OpenAiConfig>,
        default: Option<&OpenAiConfig>,
        f: impl Fn(&OpenAiConfig) -> Option<T>,
    ) -> Option<T> {
        specific.and_then(&f).or_else(|| default.and_then(&f))
    }
    let model = pick(specific, default, |c| c.model.clone());
    let stream = pick(specific, default, |c| c.stream);
    let api_key = pick(specific, default, |c| c.api_key.clone());
    let authorization = match api_key {
        Some(key) => {
            let field = if specific.and_then(|c| c.api_key.as_ref()).is_some() {
                format!("spec.configs.routeSpecificConfigs.{rule}.openAIConfig.apiKey")
            } else {
                "spec.configs.defaultConfig.openAIConfig.apiKey".to_string()
            };
            if key.expose().is_empty() {
                return Err((field, "is empty".into()));
            }
            let mut v =
                HeaderValue::from_str(&format!("Bearer {}", key.expose())).map_err(|_| {
                    (
                        field,
                        "contains characters not allowed in a header".to_string(),
                    )
                })?;
            v.set_sensitive(true);
            Some(v)
        }
        None => None,
    };
    let (h, port) = split_host_port(&p.provider.host).map_err(|m| ("spec.host".to_string(), m))?;
    let port = port.unwrap_or(443);
    let host = match host_rewrite {
        Some(r) => r.trim().to_ascii_lowercase(),
        None => h.to_string(),
    };
    let path = match &spec.path {
        Some(path) => Some(parse_path(path).map_err(|m| ("spec.path".to_string(), m))?),
        None => None,
    };
    let host_header = HeaderValue::from_str(&provider_host_header(&host, port))
        .map_err(|_| ("spec.host".to_string(), "is not a header value".to_string()))?;
    Ok(Upstream {
        provider: p.doc.id.clone(),
        authority: format!("{h}:{port}"),
        host,
        port,
        host_header,
        path,
        model,
        stream,
        authorization,
    })
}
