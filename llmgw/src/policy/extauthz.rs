//! CUSTOM authorization: the `envoyExtAuthzHttp` and `envoyExtAuthzGrpc`
//! extension providers of MeshConfig, and the check exchange Envoy's
//! ext_authz filter performs with such an authorizer (HTTP here, gRPC in
//! `extauthz_grpc`).

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header, uri::PathAndQuery,
};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use super::{LocalReply, extauthz_grpc::GrpcProvider};
use crate::config::{
    ConfigError, ErrorList, Scalar,
    duration::parse_duration,
    mesh::{EnvoyExtAuthzHttp, MeshConfig, RequestBody},
};

/// Istio's default `timeout` of an ext_authz provider.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Istio's default `statusOnError`.
pub const DEFAULT_STATUS_ON_ERROR: StatusCode = StatusCode::FORBIDDEN;
/// The largest authorizer response body llmgw reads.
const MAX_RESPONSE_BODY: usize = 1 << 20;
/// Header Envoy's check request carries when the client body was cut.
const PARTIAL_BODY: HeaderName = HeaderName::from_static("x-envoy-auth-partial-body");
/// Authorizer response header listing request headers to drop on allow.
const HEADERS_TO_REMOVE: HeaderName = HeaderName::from_static("x-envoy-auth-headers-to-remove");

/// A header-name pattern of the provider's lists: `exact`, `prefix*` or
/// `*suffix`, compared case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderPattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl HeaderPattern {
    fn parse(s: &str) -> Result<Self, String> {
        let s = s.to_ascii_lowercase();
        if s.is_empty() {
            return Err("empty header pattern".into());
        }
        if s == "*" {
            return Err(
                "a single wildcard (\"*\") is not supported, change it to either prefix or suffix match"
                    .into(),
            );
        }
        Ok(if let Some(p) = s.strip_prefix('*') {
            HeaderPattern::Suffix(p.to_string())
        } else if let Some(p) = s.strip_suffix('*') {
            HeaderPattern::Prefix(p.to_string())
        } else {
            HeaderPattern::Exact(s)
        })
    }

    /// `name` is lower-case (as `http::HeaderName`s are).
    pub fn matches(&self, name: &str) -> bool {
        match self {
            HeaderPattern::Exact(e) => name == e,
            HeaderPattern::Prefix(p) => name.starts_with(p.as_str()),
            HeaderPattern::Suffix(s) => name.ends_with(s.as_str()),
        }
    }
}

fn any_match(patterns: &[HeaderPattern], name: &str) -> bool {
    patterns.iter().any(|p| p.matches(name))
}

/// `includeRequestBodyInCheck`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodySettings {
    pub max_request_bytes: usize,
    pub allow_partial_message: bool,
}

/// One compiled `envoyExtAuthzHttp` provider.
#[derive(Debug)]
pub struct HttpProvider {
    pub common: Common,
    pub path_prefix: String,
    pub include_request_headers: Vec<HeaderPattern>,
    pub additional_headers: Vec<(HeaderName, HeaderValue)>,
    pub headers_to_upstream_on_allow: Vec<HeaderPattern>,
    pub headers_to_downstream_on_deny: Vec<HeaderPattern>,
    pub headers_to_downstream_on_allow: Vec<HeaderPattern>,
}

/// What every provider kind has: its name, where it is, how long to wait,
/// what a failure means, the body it wants, and its counters.
#[derive(Debug)]
pub struct Common {
    pub name: String,
    /// `service` without a `namespace/` part.
    pub host: String,
    pub port: u16,
    pub timeout: Duration,
    pub fail_open: bool,
    pub status_on_error: StatusCode,
    pub body: Option<BodySettings>,
}

impl Common {
    /// An authorizer that could not answer: `failOpen` allows, else
    /// `statusOnError` with an empty body.
    pub(super) fn on_error(&self, counts: &Counters) -> CheckResult {
        counts.errors.fetch_add(1, Ordering::Relaxed);
        if self.fail_open {
            CheckResult::Allow(Allowed::default())
        } else {
            CheckResult::Deny(LocalReply::empty(self.status_on_error))
        }
    }

    /// One line for `llmgw validate`: `kind` reached at `url`.
    fn describe(&self, kind: &str, url: &str) -> String {
        let failure = if self.fail_open {
            "fail open".to_string()
        } else {
            format!("{} on error", self.status_on_error.as_u16())
        };
        format!(
            "{}: {kind} {url} (timeout {:?}, {failure})",
            self.name, self.timeout
        )
    }
}

/// Check counters of one provider: runtime state, kept by provider name
/// across reloads (see [`ExtAuthzClients`]).
#[derive(Debug, Default)]
pub struct Counters {
    pub(super) allowed: AtomicU64,
    pub(super) denied: AtomicU64,
    pub(super) errors: AtomicU64,
}

/// Check counters of one provider, for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderStats {
    pub provider: String,
    pub allowed: u64,
    pub denied: u64,
    /// Unreachable, timed out, or answered 5xx.
    pub errors: u64,
}

#[derive(Debug)]
enum Provider {
    Http(Arc<HttpProvider>),
    Grpc(Arc<GrpcProvider>),
    /// Another kind of extension provider, by its key (`zipkin`, ...).
    Other(String),
    /// Failed validation (the errors were reported).
    Invalid,
}

/// What the request in question looks like to the authorizer.
#[derive(Debug, Clone, Copy)]
pub struct CheckRequest<'a> {
    pub method: &'a Method,
    /// The authority the client asked for (`Host`).
    pub host: &'a str,
    /// The path and query as the client sent them.
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    /// The buffered client body, for providers with `includeRequestBodyInCheck`
    /// (see [`ExtAuthz::body_settings`]).
    pub body: Option<&'a Bytes>,
    /// The connection and request attributes a gRPC check carries.
    pub attrs: Option<Attributes<'a>>,
}

/// What a gRPC check request says about the connection and the request
/// beyond its headers (Envoy's `AttributeContext`).
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    /// The client (`source`) and the gateway's address (`destination`).
    pub source: SocketAddr,
    pub destination: SocketAddr,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// `HTTP/1.1`, `HTTP/2`, ...
    pub protocol: &'a str,
    /// The request's `x-request-id`.
    pub request_id: &'a str,
}

/// The outcome of a check.
#[derive(Debug, Clone)]
pub enum CheckResult {
    /// Go on; apply the header changes.
    Allow(Allowed),
    /// Answer the client with this and stop.
    Deny(LocalReply),
}

/// Header changes an allowing authorizer asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowed {
    /// `headersToUpstreamOnAllow`: set on the upstream request, replacing values.
    pub upstream_set: Vec<(HeaderName, HeaderValue)>,
    /// gRPC authorizers' other header actions, applied after `upstream_set`.
    pub upstream_edits: Vec<(HeaderName, HeaderValue, HeaderAction)>,
    /// Named by the authorizer's `x-envoy-auth-headers-to-remove`.
    pub upstream_remove: Vec<HeaderName>,
    /// `headersToDownstreamOnAllow`: added to the response to the client.
    pub downstream_add: Vec<(HeaderName, HeaderValue)>,
}

impl Allowed {
    pub fn apply_to_request(&self, headers: &mut HeaderMap) {
        for h in &self.upstream_remove {
            // Envoy never lets the authorizer remove pseudo-headers or Host.
            if *h != header::HOST {
                headers.remove(h);
            }
        }
        set_all(headers, &self.upstream_set);
        for (k, v, action) in &self.upstream_edits {
            action.apply(headers, k, v);
        }
    }

    pub fn apply_to_response(&self, headers: &mut HeaderMap) {
        for (k, v) in &self.downstream_add {
            headers.append(k.clone(), v.clone());
        }
    }
}

/// How a gRPC authorizer's header joins the request (Envoy's
/// `HeaderValueOption`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderAction {
    /// Another value beside those there.
    Append,
    /// Only when the request has no such header.
    AddIfAbsent,
    /// Only when the request has such a header, replacing it.
    OverwriteIfPresent,
}

impl HeaderAction {
    pub fn apply(self, headers: &mut HeaderMap, k: &HeaderName, v: &HeaderValue) {
        match self {
            HeaderAction::Append => {
                headers.append(k.clone(), v.clone());
            }
            HeaderAction::AddIfAbsent => {
                if !headers.contains_key(k) {
                    headers.insert(k.clone(), v.clone());
                }
            }
            HeaderAction::OverwriteIfPresent => {
                if headers.contains_key(k) {
                    headers.insert(k.clone(), v.clone());
                }
            }
        }
    }
}

/// Replaces each named header; several entries with one name all stay.
pub(super) fn set_all(headers: &mut HeaderMap, items: &[(HeaderName, HeaderValue)]) {
    let mut seen: Vec<&HeaderName> = Vec::new();
    for (k, v) in items {
        if seen.contains(&k) {
            headers.append(k.clone(), v.clone());
        } else {
            headers.insert(k.clone(), v.clone());
            seen.push(k);
        }
    }
}

pub(super) type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The extension providers of MeshConfig, compiled.
#[derive(Default)]
pub struct ExtAuthz {
    providers: BTreeMap<String, Provider>,
}

/// What checks need at run time: pooled clients (HTTP/1.1 for HTTP
/// authorizers, HTTP/2 cleartext for gRPC ones) and each provider's
/// counters. Built from the compiled providers and the state of the
/// configuration being replaced: connections and counts carry over.
#[derive(Default)]
pub struct ExtAuthzClients {
    client: OnceLock<HttpClient>,
    grpc_client: OnceLock<HttpClient>,
    counters: BTreeMap<String, Arc<Counters>>,
}

impl fmt::Debug for ExtAuthzClients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExtAuthzClients")
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl ExtAuthzClients {
    pub fn build(ext: &ExtAuthz, previous: Option<&ExtAuthzClients>) -> Self {
        let carry = |cell: Option<&OnceLock<HttpClient>>| {
            let out = OnceLock::new();
            if let Some(c) = cell.and_then(OnceLock::get) {
                let _ = out.set(c.clone());
            }
            out
        };
        let counters = ext
            .providers
            .iter()
            .filter(|(_, p)| matches!(p, Provider::Http(_) | Provider::Grpc(_)))
            .map(|(name, _)| {
                let c = previous
                    .and_then(|p| p.counters.get(name).cloned())
                    .unwrap_or_default();
                (name.clone(), c)
            })
            .collect();
        ExtAuthzClients {
            client: carry(previous.map(|p| &p.client)),
            grpc_client: carry(previous.map(|p| &p.grpc_client)),
            counters,
        }
    }

    /// Per-provider counters, for metrics.
    pub fn stats(&self) -> Vec<ProviderStats> {
        self.counters
            .iter()
            .map(|(name, c)| ProviderStats {
                provider: name.clone(),
                allowed: c.allowed.load(Ordering::Relaxed),
                denied: c.denied.load(Ordering::Relaxed),
                errors: c.errors.load(Ordering::Relaxed),
            })
            .collect()
    }

    fn counters(&self, provider: &str) -> Arc<Counters> {
        self.counters.get(provider).cloned().unwrap_or_default()
    }

    fn client(&self) -> &HttpClient {
        self.client.get_or_init(|| {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(16)
                .build(connector)
        })
    }

    fn grpc_client(&self) -> &HttpClient {
        self.grpc_client.get_or_init(|| {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            Client::builder(TokioExecutor::new())
                .http2_only(true)
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector)
        })
    }
}

impl fmt::Debug for ExtAuthz {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExtAuthz")
            .field("providers", &self.providers)
            .finish_non_exhaustive()
    }
}

/// Never copied into a check request: connection-specific headers, those
/// the check sets itself (`Host`, `Content-Length`), and `Trailer` (the
/// check carries the body whole, without trailers).
pub(super) fn not_for_check(name: &HeaderName) -> bool {
    crate::http::forwarded::is_connection_specific(name)
        || matches!(name.as_str(), "trailer" | "host" | "content-length")
}

impl ExtAuthz {
    /// The HTTP provider named `name`, if it is one.
    pub fn http_provider(&self, name: &str) -> Option<&Arc<HttpProvider>> {
        match self.providers.get(name) {
            Some(Provider::Http(p)) => Some(p),
            _ => None,
        }
    }

    /// Whether a CUSTOM policy may name `name`: `Ok` for an HTTP or gRPC
    /// authorizer, else why not.
    pub fn usable(&self, name: &str) -> Result<(), String> {
        match self.providers.get(name) {
            Some(Provider::Http(_) | Provider::Grpc(_)) => Ok(()),
            Some(Provider::Other(kind)) => Err(format!(
                "extension provider {name:?} is {kind}, which is not an authorizer (CUSTOM needs envoyExtAuthzHttp or envoyExtAuthzGrpc)"
            )),
            Some(Provider::Invalid) => Err(format!(
                "extension provider {name:?} is invalid (see its errors)"
            )),
            None => {
                let known: Vec<&str> = self.providers.keys().map(String::as_str).collect();
                Err(if known.is_empty() {
                    format!(
                        "extension provider {name:?} is not defined: no extensionProviders were given (--mesh-config)"
                    )
                } else {
                    format!(
                        "extension provider {name:?} is not defined; available providers are {known:?}"
                    )
                })
            }
        }
    }

    /// The body a provider wants with its check requests (the proxy buffers
    /// up to `max_request_bytes + 1` bytes and passes them in [`CheckRequest::body`]).
    pub fn body_settings(&self, provider: &str) -> Option<BodySettings> {
        match self.providers.get(provider) {
            Some(Provider::Http(p)) => p.common.body,
            Some(Provider::Grpc(p)) => p.common.body,
            _ => None,
        }
    }

    /// One line per provider, for `llmgw validate`.
    pub fn describe(&self) -> Vec<String> {
        self.providers
            .iter()
            .map(|(name, p)| match p {
                Provider::Http(p) => {
                    let c = &p.common;
                    let url = format!("http://{}:{}{}", c.host, c.port, p.path_prefix);
                    c.describe("envoyExtAuthzHttp", &url)
                }
                Provider::Grpc(p) => {
                    let c = &p.common;
                    c.describe(
                        "envoyExtAuthzGrpc",
                        &format!("grpc://{}:{}", c.host, c.port),
                    )
                }
                Provider::Other(kind) => format!("{name}: {kind} (not used by llmgw)"),
                Provider::Invalid => format!("{name}: invalid"),
            })
            .collect()
    }

    /// Asks provider `provider` whether `req` may proceed, as Envoy's
    /// ext_authz filter does. HTTP: a 200 answer allows; 5xx, no answer
    /// within the timeout, or no connection is an error (`failOpen` allows,
    /// else `statusOnError` with an empty body); any other status denies
    /// with the authorizer's status, body and allowed headers. gRPC: see
    /// `extauthz_grpc`. An unknown provider (which validation prevents)
    /// answers 403.
    pub async fn check(
        &self,
        rt: &ExtAuthzClients,
        provider: &str,
        req: &CheckRequest<'_>,
    ) -> CheckResult {
        let counts = rt.counters(provider);
        if let Some(Provider::Grpc(p)) = self.providers.get(provider) {
            return p.check(rt.grpc_client(), req, &counts).await;
        }
        let Some(p) = self.http_provider(provider) else {
            tracing::error!(
                provider,
                "CUSTOM policy names an unusable extension provider"
            );
            return CheckResult::Deny(LocalReply::empty(DEFAULT_STATUS_ON_ERROR));
        };
        let (request, too_large) = match p.check_request(req) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(provider, error = %e, "ext_authz: cannot build the check request");
                return p.common.on_error(&counts);
            }
        };
        if too_large {
            counts.denied.fetch_add(1, Ordering::Relaxed);
            return CheckResult::Deny(LocalReply::empty(StatusCode::PAYLOAD_TOO_LARGE));
        }
        let timeout = p.common.timeout;
        let Some((parts, body, _)) = call(rt.client(), request, timeout, provider).await else {
            return p.common.on_error(&counts);
        };
        p.on_response(parts.status, &parts.headers, body, &counts)
    }
}

/// One exchange with an authorizer within `timeout`: the answer's head,
/// body (at most 1 MiB) and trailers, or `None` (logged) when it fails.
pub(super) async fn call(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
    timeout: Duration,
    provider: &str,
) -> Option<(http::response::Parts, Bytes, Option<HeaderMap>)> {
    let exchange = async {
        let resp = client
            .request(request)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let (parts, body) = resp.into_parts();
        let collected = Limited::new(body, MAX_RESPONSE_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the response: {e}"))?;
        let trailers = collected.trailers().cloned();
        Ok::<_, String>((parts, collected.to_bytes(), trailers))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(r)) => Some(r),
        Ok(Err(e)) => {
            tracing::warn!(provider, error = %e, "ext_authz: authorizer unreachable");
            None
        }
        Err(_) => {
            tracing::warn!(provider, ?timeout, "ext_authz: authorizer timed out");
            None
        }
    }
}

impl HttpProvider {
    /// The HTTP request Envoy would send, and whether the body is too large.
    fn check_request(
        &self,
        req: &CheckRequest<'_>,
    ) -> Result<(Request<Full<Bytes>>, bool), String> {
        let mut body = Bytes::new();
        let mut partial = None;
        if let (Some(settings), Some(b)) = (self.common.body, req.body) {
            if b.len() > settings.max_request_bytes {
                if !settings.allow_partial_message {
                    return Ok((Request::new(Full::new(Bytes::new())), true));
                }
                body = b.slice(..settings.max_request_bytes);
                partial = Some(true);
            } else {
                body = b.clone();
                partial = Some(false);
            }
        }
        let path = format!("{}{}", self.path_prefix, req.path_and_query);
        let pq: PathAndQuery = path.parse().map_err(|e| format!("path {path:?}: {e}"))?;
        let uri = Uri::builder()
            .scheme("http")
            .authority(format!("{}:{}", self.common.host, self.common.port).as_str())
            .path_and_query(pq)
            .build()
            .map_err(|e| e.to_string())?;
        let mut builder = Request::builder().method(req.method.clone()).uri(uri);
        let headers = builder
            .headers_mut()
            .ok_or_else(|| "invalid request".to_string())?;
        for (name, value) in req.headers {
            if not_for_check(name) {
                continue;
            }
            if *name == header::AUTHORIZATION
                || any_match(&self.include_request_headers, name.as_str())
            {
                headers.append(name.clone(), value.clone());
            }
        }
        headers.insert(
            header::HOST,
            HeaderValue::from_str(req.host).map_err(|_| format!("host {:?}", req.host))?,
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        if let Some(p) = partial {
            headers.insert(
                PARTIAL_BODY,
                HeaderValue::from_static(if p { "true" } else { "false" }),
            );
        }
        set_all(headers, &self.additional_headers);
        let request = builder.body(Full::new(body)).map_err(|e| e.to_string())?;
        Ok((request, false))
    }

    fn on_response(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: Bytes,
        counts: &Counters,
    ) -> CheckResult {
        if status.is_server_error() {
            tracing::warn!(provider = %self.common.name, %status, "ext_authz: authorizer failed");
            return self.common.on_error(counts);
        }
        if status == StatusCode::OK {
            counts.allowed.fetch_add(1, Ordering::Relaxed);
            let pick = |patterns: &[HeaderPattern]| -> Vec<(HeaderName, HeaderValue)> {
                headers
                    .iter()
                    .filter(|(k, _)| *k != HEADERS_TO_REMOVE && any_match(patterns, k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            };
            let upstream_remove = headers
                .get_all(&HEADERS_TO_REMOVE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .filter_map(|s| HeaderName::from_bytes(s.to_ascii_lowercase().as_bytes()).ok())
                .collect();
            return CheckResult::Allow(Allowed {
                upstream_set: pick(&self.headers_to_upstream_on_allow),
                upstream_edits: Vec::new(),
                upstream_remove,
                downstream_add: pick(&self.headers_to_downstream_on_allow),
            });
        }
        counts.denied.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(provider = %self.common.name, %status, "ext_authz: denied");
        let mut reply = if body.is_empty() {
            LocalReply::empty(status)
        } else {
            let mut r = LocalReply::empty(status);
            r.headers
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            r.body = body;
            r
        };
        let always = ["content-length", "www-authenticate", "location"];
        let forwarded: Vec<(HeaderName, HeaderValue)> = headers
            .iter()
            .filter(|(k, _)| !not_for_check(k) && *k != HEADERS_TO_REMOVE)
            .filter(|(k, _)| {
                if self.headers_to_downstream_on_deny.is_empty() {
                    true
                } else {
                    always.contains(&k.as_str())
                        || any_match(&self.headers_to_downstream_on_deny, k.as_str())
                }
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        set_all(&mut reply.headers, &forwarded);
        CheckResult::Deny(reply)
    }
}

// ---------------------------------------------------------------- compile

/// Compiles MeshConfig's extension providers. Every `envoyExtAuthzHttp`
/// provider is validated; other kinds are kept by name so a CUSTOM policy
/// naming one gets a clear error.
pub(crate) fn compile(mesh: &MeshConfig, errors: &mut ErrorList) -> ExtAuthz {
    let mut out = ExtAuthz::default();
    for (i, p) in mesh.extension_providers.iter().enumerate() {
        let mut err = |field: &str, message: String| {
            errors.push(ConfigError::Invalid {
                at: None,
                resource: Some(format!("mesh config extensionProviders[{i}] ({})", p.name)),
                field: field.to_string(),
                message,
            })
        };
        if p.name.is_empty() {
            err("name", "extension provider name must not be empty".into());
            continue;
        }
        if out.providers.contains_key(&p.name) {
            err(
                "name",
                format!(
                    "extension provider name must be unique, found duplicate: {}",
                    p.name
                ),
            );
            continue;
        }
        let kinds = usize::from(p.envoy_ext_authz_http.is_some())
            + usize::from(p.envoy_ext_authz_grpc.is_some())
            + p.other.len();
        if kinds != 1 {
            err(
                "",
                format!("exactly one provider kind must be set, found {kinds}"),
            );
            out.providers.insert(p.name.clone(), Provider::Invalid);
            continue;
        }
        let compiled = match (&p.envoy_ext_authz_http, &p.envoy_ext_authz_grpc) {
            (Some(h), _) => compile_http(&p.name, h).map(|c| Provider::Http(Arc::new(c))),
            (_, Some(g)) => GrpcProvider::compile(&p.name, g).map(|c| Provider::Grpc(Arc::new(c))),
            _ => Ok(Provider::Other(p.kind().unwrap_or("unknown").to_string())),
        };
        let provider = compiled.unwrap_or_else(|list| {
            for (f, m) in list {
                err(&format!("{}.{f}", p.kind().unwrap_or("")), m);
            }
            Provider::Invalid
        });
        out.providers.insert(p.name.clone(), provider);
    }
    out
}

/// The fields of [`Common`] as a provider kind's YAML gives them.
pub(super) struct CommonRaw<'a> {
    pub service: &'a str,
    pub port: Option<&'a Scalar>,
    pub timeout: Option<&'a String>,
    pub fail_open: bool,
    pub status_on_error: Option<&'a Scalar>,
    pub request_body: Option<&'a RequestBody>,
}

/// Validates `service`, `port`, `timeout`, `statusOnError` and
/// `includeRequestBodyInCheck`, reporting each problem through `e`.
pub(super) fn compile_common(
    name: &str,
    raw: CommonRaw<'_>,
    e: &mut impl FnMut(&str, String),
) -> Common {
    let CommonRaw {
        service,
        port,
        timeout,
        fail_open,
        status_on_error,
        request_body,
    } = raw;
    let host = match service.rsplit_once('/') {
        Some((_ns, host)) => host,
        None => service,
    }
    .trim()
    .to_ascii_lowercase();
    let host_ok = !host.is_empty()
        && (host.parse::<std::net::IpAddr>().is_ok()
            || host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')));
    if service.is_empty() {
        e("service", "service must not be empty".into());
    } else if !host_ok {
        e(
            "service",
            format!("{:?} is not [namespace/]hostname", service),
        );
    }
    let port = match port {
        None => {
            e("port", "port is required".into());
            0
        }
        Some(s) => match s.0.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                e(
                    "port",
                    format!("port must be in the range [1, 65535], found: {}", s.0),
                );
                0
            }
        },
    };
    let timeout = match timeout {
        None => DEFAULT_TIMEOUT,
        Some(t) => match parse_duration(t) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                e("timeout", "must be greater than 0".into());
                DEFAULT_TIMEOUT
            }
            Err(m) => {
                e("timeout", m);
                DEFAULT_TIMEOUT
            }
        },
    };
    let status_on_error = match status_on_error {
        None => DEFAULT_STATUS_ON_ERROR,
        Some(s) if s.0.is_empty() => DEFAULT_STATUS_ON_ERROR,
        Some(s) => match s
            .0
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(c) if c.canonical_reason().is_some() && c.as_u16() >= 200 => c,
            _ => {
                e(
                    "statusOnError",
                    format!(
                        "unsupported statusOnError {:?}: not an HTTP status code",
                        s.0
                    ),
                );
                DEFAULT_STATUS_ON_ERROR
            }
        },
    };
    let body = match request_body {
        None => None,
        Some(b) if b.max_request_bytes == 0 => {
            e(
                "includeRequestBodyInCheck.maxRequestBytes",
                "must be greater than 0".into(),
            );
            None
        }
        Some(b) => Some(BodySettings {
            max_request_bytes: b.max_request_bytes as usize,
            allow_partial_message: b.allow_partial_message,
        }),
    };
    Common {
        name: name.to_string(),
        host,
        port,
        timeout,
        fail_open,
        status_on_error,
        body,
    }
}

fn compile_http(name: &str, h: &EnvoyExtAuthzHttp) -> Result<HttpProvider, Vec<(String, String)>> {
    let mut errs: Vec<(String, String)> = Vec::new();
    let mut e = |f: &str, m: String| errs.push((f.to_string(), m));
    let common = compile_common(
        name,
        CommonRaw {
            service: &h.service,
            port: h.port.as_ref(),
            timeout: h.timeout.as_ref(),
            fail_open: h.fail_open,
            status_on_error: h.status_on_error.as_ref(),
            request_body: h.include_request_body_in_check.as_ref(),
        },
        &mut e,
    );
    let path_prefix = h.path_prefix.clone().unwrap_or_default();
    if !path_prefix.is_empty() {
        if !path_prefix.starts_with('/') {
            e(
                "pathPrefix",
                format!("pathPrefix must begin with `/`, found: {path_prefix:?}"),
            );
        } else if path_prefix.parse::<PathAndQuery>().is_err() || path_prefix.contains('?') {
            e("pathPrefix", format!("invalid pathPrefix {path_prefix:?}"));
        }
    }
    let mut patterns = |field: &str, items: &[String]| -> Vec<HeaderPattern> {
        let mut out = Vec::new();
        for (i, s) in items.iter().enumerate() {
            match HeaderPattern::parse(s) {
                Ok(p) => out.push(p),
                Err(m) => e(&format!("{field}[{i}]"), m),
            }
        }
        out
    };
    let include_request_headers = if h.include_request_headers_in_check.is_empty() {
        patterns("includeHeadersInCheck", &h.include_headers_in_check)
    } else {
        patterns(
            "includeRequestHeadersInCheck",
            &h.include_request_headers_in_check,
        )
    };
    let headers_to_upstream_on_allow =
        patterns("headersToUpstreamOnAllow", &h.headers_to_upstream_on_allow);
    let headers_to_downstream_on_deny = patterns(
        "headersToDownstreamOnDeny",
        &h.headers_to_downstream_on_deny,
    );
    let headers_to_downstream_on_allow = patterns(
        "headersToDownstreamOnAllow",
        &h.headers_to_downstream_on_allow,
    );
    let mut additional_headers = Vec::new();
    for (k, v) in &h.include_additional_headers_in_check {
        let f = format!("includeAdditionalHeadersInCheck.{k}");
        match (
            HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()),
            HeaderValue::from_str(v),
        ) {
            (Ok(n), Ok(v)) => additional_headers.push((n, v)),
            (Err(_), _) => e(&f, format!("{k:?} is not a header name")),
            (_, Err(_)) => e(&f, "value has characters a header cannot carry".into()),
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(HttpProvider {
        common,
        path_prefix,
        include_request_headers,
        additional_headers,
        headers_to_upstream_on_allow,
        headers_to_downstream_on_deny,
        headers_to_downstream_on_allow,
    })
}
