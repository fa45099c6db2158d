//! Compiled extension providers of MeshConfig (`envoyExtAuthzHttp` and
//! `envoyExtAuthzGrpc`): where each authorizer is, how long to wait, what a
//! failure means, which headers and body go to it and which come back.
//! The check exchange itself is `crate::policy::extauthz`.

use std::{collections::BTreeMap, fmt, sync::Arc, time::Duration};

use http::{HeaderName, HeaderValue, StatusCode, Uri};

pub(crate) const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// Istio's default `timeout` of an ext_authz provider.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Istio's default `statusOnError`.
pub const DEFAULT_STATUS_ON_ERROR: StatusCode = StatusCode::FORBIDDEN;
/// A header-name pattern of the provider's lists: `exact`, `prefix*` or
/// `*suffix`, compared case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderPattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl HeaderPattern {
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
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

pub fn any_match(patterns: &[HeaderPattern], name: &str) -> bool {
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
    /// One line for `llmgw validate`: `kind` reached at `url`.
    pub fn describe_as(&self, kind: &str, url: &str) -> String {
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

#[derive(Debug)]
pub enum Provider {
    Http(Arc<HttpProvider>),
    Grpc(Arc<GrpcProvider>),
    /// Another kind of extension provider, by its key (`zipkin`, ...).
    Other(String),
    /// Failed validation (the errors were reported).
    Invalid,
}

/// The extension providers of MeshConfig, compiled.
#[derive(Default)]
pub struct ExtAuthz {
    pub providers: BTreeMap<String, Provider>,
}

impl fmt::Debug for ExtAuthz {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExtAuthz")
            .field("providers", &self.providers)
            .finish_non_exhaustive()
    }
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
                    c.describe_as("envoyExtAuthzHttp", &url)
                }
                Provider::Grpc(p) => {
                    let c = &p.common;
                    c.describe_as(
                        "envoyExtAuthzGrpc",
                        &format!("grpc://{}:{}", c.host, c.port),
                    )
                }
                Provider::Other(kind) => format!("{name}: {kind} (not used by llmgw)"),
                Provider::Invalid => format!("{name}: invalid"),
            })
            .collect()
    }
}

/// One compiled `envoyExtAuthzGrpc` provider.
#[derive(Debug)]
pub struct GrpcProvider {
    pub common: Common,
    /// `http://host:port/envoy.service.auth.v3.Authorization/Check`, and the
    /// `grpc-timeout` header: the same for every check.
    pub uri: Uri,
    pub grpc_timeout: http::HeaderValue,
    /// `includeRequestBodyInCheck.packAsBytes`: the body goes in `raw_body`.
    pub pack_as_bytes: bool,
}
