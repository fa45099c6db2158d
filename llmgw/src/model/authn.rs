//! Compiled RequestAuthentications: one rule per `jwtRules[]` entry (issuer,
//! audiences, where its keys come from, what to forward), and where tokens
//! may be found. Verifying a request's tokens is `crate::policy::jwt`; remote
//! key sets are fetched by the runtime.

use std::{collections::BTreeMap, fmt, sync::Arc, time::Duration};

use http::{HeaderName, Uri};
use serde_json::Value;

use super::jwks::Jwks;
use crate::config::ResourceId;

/// Istio's default for `JWTRule.timeout`.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// One compiled `jwtRules[]` entry.
#[derive(Debug)]
pub struct Rule {
    /// The RequestAuthentication it came from and its index in `jwtRules`.
    pub origin: ResourceId,
    pub index: usize,
    pub issuer: String,
    /// As written; compared after removing `http(s)://` and a trailing `/`.
    pub audiences: Vec<String>,
    pub sanitized_audiences: Vec<String>,
    pub keys: Keys,
    pub forward_original_token: bool,
    pub output_payload_to_header: Option<HeaderName>,
    /// `(header, claim path)`; nested claims are `a.b.c`.
    pub output_claim_to_headers: Vec<(HeaderName, Vec<String>)>,
    /// Where this rule looks for tokens (for `validate` and logs).
    pub locations: Vec<String>,
    /// Top-level claims whose string value authorization sees as the list
    /// of its space-separated words: `scope`, `permission` and the rule's
    /// `spaceDelimitedClaims` (Envoy's `normalize_payload_in_metadata`).
    pub space_delimited_claims: Vec<String>,
}

/// Claims every rule splits on spaces (as Istio configures Envoy).
pub(crate) const DEFAULT_SPACE_DELIMITED: [&str; 2] = ["scope", "permission"];

#[derive(Debug)]
pub enum Keys {
    Inline(Arc<Jwks>),
    /// Fetched at run time by the runtime's [`KeyStore`].
    Remote {
        source: JwksSource,
        timeout: Duration,
    },
}

impl Keys {
    fn describe(&self) -> String {
        match self {
            Keys::Inline(j) => format!("inline ({} keys)", j.keys.len()),
            Keys::Remote { source, timeout } => format!("from {source} (timeout {timeout:?})"),
        }
    }
}

/// Where a rule's keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum JwksSource {
    /// `jwksUri`.
    Uri(Uri),
    /// `ISSUER/.well-known/openid-configuration`, whose `jwks_uri` is then fetched.
    Discovery(Uri),
}

impl fmt::Display for JwksSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksSource::Uri(u) => write!(f, "{u}"),
            JwksSource::Discovery(u) => write!(f, "{u} (OpenID discovery)"),
        }
    }
}

/// Where a token may be, and which issuers may put one there.
#[derive(Debug, Default)]
pub struct Locations {
    /// `(lower-case name, prefix)` → the header and rule indexes.
    pub headers: BTreeMap<(String, String), (HeaderName, Vec<usize>)>,
    pub params: BTreeMap<String, Vec<usize>>,
    pub cookies: BTreeMap<String, Vec<usize>>,
}

/// Every `RequestAuthentication` rule that applies to this gateway.
#[derive(Debug, Default)]
pub struct Authenticator {
    pub rules: Vec<Arc<Rule>>,
    pub locations: Locations,
    /// Output headers removed from every request so clients cannot forge them.
    pub sanitize: Vec<HeaderName>,
}

impl Authenticator {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules as JSON, for `/config_dump`.
    pub fn dump(&self) -> Value {
        Value::Array(
            self.rules
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "requestAuthentication": r.origin.to_string(),
                        "rule": r.index,
                        "issuer": r.issuer,
                        "audiences": r.audiences,
                        "keys": r.keys.describe(),
                        "locations": r.locations,
                        "spaceDelimitedClaims": r.space_delimited_claims,
                        "forwardOriginalToken": r.forward_original_token,
                        "outputPayloadToHeader": r.output_payload_to_header.as_ref().map(HeaderName::as_str),
                        "outputClaimToHeaders": r.output_claim_to_headers.iter()
                            .map(|(h, c)| (h.to_string(), Value::String(c.join("."))))
                            .collect::<serde_json::Map<_, _>>(),
                    })
                })
                .collect(),
        )
    }

    /// One line per rule, for `llmgw validate`.
    pub fn describe(&self) -> Vec<String> {
        self.rules
            .iter()
            .map(|r| {
                format!(
                    "{} (RequestAuthentication {} jwtRules[{}]): keys {}; tokens from {}{}",
                    r.issuer,
                    r.origin,
                    r.index,
                    r.keys.describe(),
                    r.locations.join(", "),
                    if r.audiences.is_empty() {
                        String::new()
                    } else {
                        format!("; audiences {:?}", r.audiences)
                    }
                )
            })
            .collect()
    }
}

/// jwt_verify_lib compares audiences without `http://`/`https://` and a trailing `/`.
pub fn sanitize_audience(a: &str) -> String {
    let s = a
        .strip_prefix("http://")
        .or_else(|| a.strip_prefix("https://"))
        .unwrap_or(a);
    s.strip_suffix('/').unwrap_or(s).to_string()
}
