//! CUSTOM authorization: the check exchange Envoy's ext_authz filter
//! performs with an authorizer (HTTP here, gRPC in `extauthz_grpc`), and
//! what its answer does to the request and the response. The providers are
//! compiled in `crate::model::extauthz`; checks go through the worker's
//! outbound client; counters are runtime state ([`ExtAuthzCounters`]), kept
//! across reloads.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header, uri::PathAndQuery,
};
use http_body_util::{BodyExt as _, Limited};

use super::LocalReply;
use crate::client::{Client, Scheme};
use crate::model::extauthz::{
    Common, DEFAULT_STATUS_ON_ERROR, ExtAuthz, HeaderPattern, HttpProvider, Provider, any_match,
};

/// The largest authorizer response body llmgw reads.
const MAX_RESPONSE_BODY: usize = 1 << 20;
/// Header Envoy's check request carries when the client body was cut.
const PARTIAL_BODY: HeaderName = HeaderName::from_static("x-envoy-auth-partial-body");
/// Authorizer response header listing request headers to drop on allow.
const HEADERS_TO_REMOVE: HeaderName = HeaderName::from_static("x-envoy-auth-headers-to-remove");

/// An authorizer that could not answer: `failOpen` allows, else
/// `statusOnError` with an empty body.
pub(super) fn on_error(common: &Common, counts: &Counters) -> CheckResult {
    counts.errors.fetch_add(1, Ordering::Relaxed);
    if common.fail_open {
        CheckResult::Allow(Allowed::default())
    } else {
        CheckResult::Deny(LocalReply::empty(common.status_on_error))
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

/// Each provider's check counters: the runtime state of CUSTOM
/// authorization (connections are the worker's client's). Built from the
/// compiled providers and the counters of the configuration being
/// replaced, so the counts carry over by provider name.
#[derive(Debug, Default)]
pub struct ExtAuthzCounters {
    counters: BTreeMap<String, Arc<Counters>>,
}

impl ExtAuthzCounters {
    pub fn build(ext: &ExtAuthz, previous: Option<&ExtAuthzCounters>) -> Self {
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
        ExtAuthzCounters { counters }
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
}

/// Never copied into a check request: connection-specific headers, those
/// the check sets itself (`Host`, `Content-Length`), and `Trailer` (the
/// check carries the body whole, without trailers).
pub(super) fn not_for_check(name: &HeaderName) -> bool {
    crate::http::forwarded::is_connection_specific(name)
        || matches!(name.as_str(), "trailer" | "host" | "content-length")
}

impl ExtAuthz {
    /// Asks provider `provider` whether `req` may proceed, as Envoy's
    /// ext_authz filter does. HTTP: a 200 answer allows; 5xx, no answer
    /// within the timeout, or no connection is an error (`failOpen` allows,
    /// else `statusOnError` with an empty body); any other status denies
    /// with the authorizer's status, body and allowed headers. gRPC: see
    /// `extauthz_grpc`. An unknown provider (which validation prevents)
    /// answers 403.
    pub async fn check(
        &self,
        counters: &ExtAuthzCounters,
        client: &Client,
        provider: &str,
        req: &CheckRequest<'_>,
    ) -> CheckResult {
        let counts = counters.counters(provider);
        if let Some(Provider::Grpc(p)) = self.providers.get(provider) {
            return p.check(client, req, &counts).await;
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
                return on_error(&p.common, &counts);
            }
        };
        if too_large {
            counts.denied.fetch_add(1, Ordering::Relaxed);
            return CheckResult::Deny(LocalReply::empty(StatusCode::PAYLOAD_TOO_LARGE));
        }
        let timeout = p.common.timeout;
        let Some((parts, body, _)) = call(client, Scheme::Http, request, timeout, provider).await
        else {
            return on_error(&p.common, &counts);
        };
        p.on_response(parts.status, &parts.headers, body, &counts)
    }
}

/// One exchange with an authorizer within `timeout`: the answer's head,
/// body (at most 1 MiB) and trailers, or `None` (logged) when it fails.
pub(super) async fn call(
    client: &Client,
    scheme: Scheme,
    request: Request<Bytes>,
    timeout: Duration,
    provider: &str,
) -> Option<(http::response::Parts, Bytes, Option<HeaderMap>)> {
    let exchange = async {
        let uri = request.uri().clone();
        let authority = uri.authority().map_or("", |a| a.as_str());
        let host = uri.host().unwrap_or("");
        let resp = client
            .send_to(scheme, authority, host, request, timeout)
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
    fn check_request(&self, req: &CheckRequest<'_>) -> Result<(Request<Bytes>, bool), String> {
        let mut body = Bytes::new();
        let mut partial = None;
        if let (Some(settings), Some(b)) = (self.common.body, req.body) {
            if b.len() > settings.max_request_bytes {
                if !settings.allow_partial_message {
                    return Ok((Request::new(Bytes::new()), true));
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
        let request = builder.body(body).map_err(|e| e.to_string())?;
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
            return on_error(&self.common, counts);
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
