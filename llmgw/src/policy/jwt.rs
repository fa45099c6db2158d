//! Istio `RequestAuthentication` enforced as Envoy's jwt_authn filter does
//! for Istio: find the token, pick the rule by `iss`, check time, audience
//! and signature, rewrite headers, and yield the request's identity. The
//! compiled rules are `crate::model::authn`.

use std::sync::Arc;

use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use serde_json::Value;
use thiserror::Error;

use super::{
    LocalReply,
    authz::Identity,
    jwt_token::{Found, ParsedJwt, Token, after_prefix, cookie_value, query_param, remove_token},
};
use crate::model::{
    authn::{Authenticator, JwksSource, Keys, Rule, sanitize_audience},
    jwks::{Jwks, SignatureError},
};

/// Envoy's (and jwt_verify_lib's) allowance for clocks that disagree.
pub const CLOCK_SKEW_SECS: u64 = 60;
/// Envoy truncates the path in the `WWW-Authenticate` realm to this length.
const MAX_REALM_PATH: usize = 256;

/// Why a token was rejected. `Display` is Envoy's text, which is also the
/// body of the 401 the client gets.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JwtError {
    #[error("Jwt is missing")]
    Missing,
    #[error("Jwt not yet valid")]
    NotYetValid,
    #[error("Jwt is expired")]
    Expired,
    #[error("Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")]
    BadFormat,
    #[error("Jwt header is an invalid Base64url encoded")]
    HeaderBadBase64,
    #[error("Jwt header is an invalid JSON")]
    HeaderBadJson,
    #[error("Jwt header [alg] field is required and must be a string")]
    HeaderBadAlg,
    #[error("Jwt header [alg] is not supported")]
    HeaderNotImplementedAlg,
    #[error("Jwt header [kid] field is not a string")]
    HeaderBadKid,
    #[error("Jwt payload is an invalid Base64url encoded")]
    PayloadBadBase64,
    #[error("Jwt payload is an invalid JSON")]
    PayloadBadJson,
    #[error("Jwt payload [iss] field is not a string")]
    IssNotString,
    #[error("Jwt payload [sub] field is not a string")]
    SubNotString,
    #[error("Jwt payload [iat] field is not an integer")]
    IatNotInteger,
    #[error("Jwt payload [iat] field is not a positive 64 bit integer")]
    IatOutOfRange,
    #[error("Jwt payload [nbf] field is not an integer")]
    NbfNotInteger,
    #[error("Jwt payload [nbf] field is not a positive 64 bit integer")]
    NbfOutOfRange,
    #[error("Jwt payload [exp] field is not an integer")]
    ExpNotInteger,
    #[error("Jwt payload [exp] field is not a positive 64 bit integer")]
    ExpOutOfRange,
    #[error("Jwt payload [jti] field is not a string")]
    JtiNotString,
    #[error("Jwt payload [aud] field is not a string or string list")]
    AudNotString,
    #[error("Jwt signature is an invalid Base64url encoded")]
    SignatureBadBase64,
    #[error("Jwt ED25519 signature is wrong length")]
    Ed25519SignatureWrongLength,
    #[error("Jwt issuer is not configured")]
    UnknownIssuer,
    #[error("Audiences in Jwt are not allowed")]
    AudienceNotAllowed,
    #[error("Jwt verification fails")]
    VerificationFail,
    #[error("Jwks doesn't have key to match kid or alg from Jwt")]
    JwksKidAlgMismatch,
    #[error("Jwks remote fetch is failed")]
    JwksFetchFail,
}

impl JwtError {
    /// Envoy answers 403 for a disallowed audience and 401 for everything else.
    pub fn status(&self) -> StatusCode {
        match self {
            JwtError::AudienceNotAllowed => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The response Envoy sends for this error: status, `text/plain` body
    /// with the error text, and `www-authenticate: Bearer realm="URI"` (plus
    /// `, error="invalid_token"` unless the token was missing). `scheme` is
    /// the downstream scheme (`http`/`https`), `host` the request's authority,
    /// `path_and_query` normalised as for authorization, with the query
    /// (truncated to 256 bytes).
    pub fn local_reply(&self, scheme: &str, host: &str, path_and_query: &str) -> LocalReply {
        let mut path = path_and_query;
        if path.len() > MAX_REALM_PATH {
            let mut end = MAX_REALM_PATH;
            while !path.is_char_boundary(end) {
                end -= 1;
            }
            path = &path[..end];
        }
        let mut value = format!("Bearer realm=\"{scheme}://{host}{path}\"");
        if *self != JwtError::Missing {
            value.push_str(", error=\"invalid_token\"");
        }
        let mut reply = LocalReply::text(self.status(), self.to_string());
        match HeaderValue::from_str(&value) {
            Ok(v) => {
                reply.headers.insert(header::WWW_AUTHENTICATE, v);
            }
            Err(_) => {
                // The host or path held bytes a header cannot carry; keep the realm empty.
                let v = if *self == JwtError::Missing {
                    "Bearer realm=\"\""
                } else {
                    "Bearer realm=\"\", error=\"invalid_token\""
                };
                reply
                    .headers
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(v));
            }
        }
        reply
    }
}

/// Where remote key sets come from while requests are verified: the
/// runtime's fetchers (`jwks_fetch::JwksFetchers`), kept apart from the
/// compiled rules so a reload keeps what was fetched.
pub trait KeyStore: Sync {
    /// The keys of `source` now; `None` when none were ever fetched.
    fn keys(&self, source: &JwksSource) -> impl Future<Output = Option<Arc<Jwks>>> + Send;
}

/// A store without remote keys: rules with `jwksUri` fail
/// (`Jwks remote fetch is failed`).
pub struct NoRemoteKeys;

impl KeyStore for NoRemoteKeys {
    async fn keys(&self, _: &JwksSource) -> Option<Arc<Jwks>> {
        None
    }
}

impl Authenticator {
    /// [`Authenticator::authenticate`] on a whole request.
    pub async fn authenticate_request<B>(
        &self,
        keys: &impl KeyStore,
        req: &mut http::Request<B>,
    ) -> Result<Option<Identity>, JwtError> {
        let method = req.method().clone();
        // `Request` cannot lend its URI and headers mutably at once: move the URI out.
        let mut uri = std::mem::take(req.uri_mut());
        let result = self
            .authenticate(keys, &method, &mut uri, req.headers_mut())
            .await;
        *req.uri_mut() = uri;
        result
    }

    /// Authenticates a request as Envoy's jwt_authn filter configured by
    /// Istio does. Each rule is a provider that reads tokens from its own
    /// locations; Istio requires any one provider to succeed, or, for every
    /// provider, its token to succeed or be missing:
    ///
    /// - output headers named by any rule are removed first;
    /// - no token anywhere: `Ok(None)` (an AuthorizationPolicy decides);
    /// - CORS preflights (`OPTIONS` with `Origin` and
    ///   `Access-Control-Request-Method`) are not checked: `Ok(None)`;
    /// - a provider succeeds when it finds tokens and every one of them
    ///   verifies (its issuer, time, audiences, signature); it fails with
    ///   the first failure, checking the last token found first;
    /// - one provider succeeding is enough: its tokens are removed from
    ///   where they were found (a header, a query parameter; a cookie is
    ///   left, as Envoy leaves it) unless the rule forwards them, and its
    ///   payload and claim headers are written. The identity is that of the
    ///   first succeeding provider's first token;
    /// - no provider succeeding: with one rule, its failure (a missing token
    ///   is no failure); with several, the request passes only if no rule
    ///   found a token, else Envoy's choice of error: the last "real" error
    ///   over `Jwt issuer is not configured` over `Jwt is missing`.
    pub async fn authenticate(
        &self,
        keys: &impl KeyStore,
        method: &Method,
        uri: &mut Uri,
        headers: &mut HeaderMap,
    ) -> Result<Option<Identity>, JwtError> {
        if self.rules.is_empty() {
            return Ok(None);
        }
        for h in &self.sanitize {
            headers.remove(h);
        }
        if is_cors_preflight(method, headers) {
            return Ok(None);
        }
        let tokens = self.extract(uri, headers);
        if tokens.is_empty() {
            return Ok(None);
        }
        let parsed: Vec<Result<ParsedJwt<'_>, JwtError>> =
            tokens.iter().map(|t| ParsedJwt::parse(&t.value)).collect();
        let now = crate::observe::unix_now();
        let mut outcomes = Vec::with_capacity(self.rules.len());
        for i in 0..self.rules.len() {
            outcomes.push(self.provider(keys, i, &tokens, &parsed, now).await);
        }
        let mut identity = None;
        for outcome in &outcomes {
            let Provider::Verified(list) = outcome else {
                continue;
            };
            for (k, v) in list {
                let rule = &self.rules[v.rule];
                if let Some(h) = &rule.output_payload_to_header
                    && let Ok(value) = HeaderValue::from_str(&v.payload_b64)
                {
                    headers.append(h.clone(), value);
                }
                for (h, path) in &rule.output_claim_to_headers {
                    if let Some(value) = claim_header_value(&v.claims, path) {
                        headers.append(h.clone(), value);
                    }
                }
                if !rule.forward_original_token {
                    remove_token(&tokens[*k].at, uri, headers);
                }
                if identity.is_none() {
                    identity = Some(v.identity(rule));
                }
            }
        }
        if identity.is_some() {
            return Ok(identity);
        }
        let failure = |o: &Provider| match o {
            Provider::Failed(e) => Some(e.clone()),
            _ => None,
        };
        if outcomes.len() == 1 {
            return failure(&outcomes[0]).map_or(Ok(None), Err);
        }
        // requires_all{any{P, allow_missing}...}: the first failure, if any.
        let Some(all) = outcomes.iter().find_map(failure) else {
            return Ok(None);
        };
        // requires_any over every provider, then that: Envoy's final status.
        let mut last = JwtError::Missing;
        for e in outcomes.iter().filter_map(failure).chain([all]) {
            if !matches!(e, JwtError::Missing | JwtError::UnknownIssuer)
                || last == JwtError::Missing
            {
                last = e;
            }
        }
        tracing::debug!(error = %last, "JWT rejected");
        Err(last)
    }

    /// Rule `i` as one Envoy provider: the tokens found in its locations,
    /// each verified against it, the last found first.
    async fn provider(
        &self,
        keys: &impl KeyStore,
        i: usize,
        tokens: &[Token],
        parsed: &[Result<ParsedJwt<'_>, JwtError>],
        now: u64,
    ) -> Provider {
        let mut verified = Vec::new();
        for (k, token) in tokens.iter().enumerate().rev() {
            if !token.issuers.contains(&i) {
                continue;
            }
            let result = match &parsed[k] {
                Ok(jwt) => self.verify(keys, i, jwt, now).await,
                Err(e) => Err(e.clone()),
            };
            match result {
                Ok(v) => verified.push((k, v)),
                Err(e) => {
                    tracing::debug!(error = %e, location = ?token.at, rule = i, "JWT rejected");
                    return Provider::Failed(e);
                }
            }
        }
        if verified.is_empty() {
            return Provider::Missing;
        }
        verified.reverse();
        Provider::Verified(verified)
    }

    fn extract(&self, uri: &Uri, headers: &HeaderMap) -> Vec<Token> {
        let mut tokens = Vec::new();
        for ((_, prefix), (name, issuers)) in &self.locations.headers {
            // As Envoy: every value of the header, joined with `,`, and one
            // token from it (the first after the prefix).
            let values: Vec<&str> = headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            if values.is_empty() {
                continue;
            }
            let joined = values.join(",");
            let token = if prefix.is_empty() {
                joined.as_str()
            } else {
                let Some(pos) = joined.find(prefix.as_str()) else {
                    continue;
                };
                after_prefix(&joined, pos + prefix.len())
            };
            tokens.push(Token {
                value: token.to_string(),
                at: Found::Header(name.clone()),
                issuers: issuers.clone(),
            });
        }
        if !self.locations.params.is_empty()
            && let Some(query) = uri.query()
        {
            for (param, issuers) in &self.locations.params {
                if let Some(v) = query_param(query, param) {
                    tokens.push(Token {
                        value: v,
                        at: Found::Param(param.clone()),
                        issuers: issuers.clone(),
                    });
                }
            }
        }
        if !self.locations.cookies.is_empty() {
            for (cookie, issuers) in &self.locations.cookies {
                if let Some(v) = cookie_value(headers, cookie) {
                    tokens.push(Token {
                        value: v.to_string(),
                        at: Found::Cookie(cookie.clone()),
                        issuers: issuers.clone(),
                    });
                }
            }
        }
        tokens
    }

    async fn verify(
        &self,
        keys: &impl KeyStore,
        i: usize,
        jwt: &ParsedJwt<'_>,
        now: u64,
    ) -> Result<Verified, JwtError> {
        let rule = &self.rules[i];
        if jwt.iss != rule.issuer {
            return Err(JwtError::UnknownIssuer);
        }
        jwt.check_time(now, CLOCK_SKEW_SECS)?;
        if !rule.sanitized_audiences.is_empty()
            && !jwt
                .audiences
                .iter()
                .any(|a| rule.sanitized_audiences.contains(&sanitize_audience(a)))
        {
            return Err(JwtError::AudienceNotAllowed);
        }
        let jwks = match &rule.keys {
            Keys::Inline(j) => j.clone(),
            Keys::Remote { source, .. } => {
                keys.keys(source).await.ok_or(JwtError::JwksFetchFail)?
            }
        };
        jwks.verify(
            jwt.alg,
            jwt.kid.as_deref(),
            jwt.signed.as_bytes(),
            &jwt.signature,
        )
        .map_err(|e| match e {
            SignatureError::NoKey => JwtError::JwksKidAlgMismatch,
            SignatureError::Failed => JwtError::VerificationFail,
            SignatureError::Ed25519WrongLength => JwtError::Ed25519SignatureWrongLength,
        })?;
        Ok(Verified {
            rule: i,
            payload_b64: jwt.payload_b64.to_string(),
            sub: jwt.sub.clone(),
            audiences: jwt.audiences.clone(),
            claims: jwt.payload.clone(),
        })
    }
}

/// What one provider (rule) made of the request's tokens.
enum Provider {
    /// No token in its locations.
    Missing,
    /// Every token it found verified: `(token index, result)`.
    Verified(Vec<(usize, Verified)>),
    Failed(JwtError),
}

struct Verified {
    rule: usize,
    payload_b64: String,
    sub: Option<String>,
    audiences: Vec<String>,
    claims: Value,
}

impl Verified {
    /// The identity authorization sees: the payload with the rule's
    /// space-delimited claims split (headers get the claims as sent).
    fn identity(&self, rule: &Rule) -> Identity {
        let mut claims = self.claims.clone();
        if let Value::Object(map) = &mut claims {
            for name in &rule.space_delimited_claims {
                if let Some(v) = map.get_mut(name)
                    && let Value::String(s) = v
                {
                    let words = s
                        .split(' ')
                        .filter(|w| !w.is_empty())
                        .map(|w| Value::String(w.to_string()))
                        .collect();
                    *v = Value::Array(words);
                }
            }
        }
        Identity {
            principal: format!(
                "{}/{}",
                rule.issuer,
                self.sub.as_deref().unwrap_or_default()
            ),
            issuer: rule.issuer.clone(),
            subject: self.sub.clone(),
            audiences: self.audiences.clone(),
            presenter: self
                .claims
                .get("azp")
                .and_then(Value::as_str)
                .map(str::to_string),
            claims,
        }
    }
}

fn is_cors_preflight(method: &Method, headers: &HeaderMap) -> bool {
    let non_empty = |h: HeaderName| headers.get(h).is_some_and(|v| !v.is_empty());
    method == Method::OPTIONS
        && non_empty(header::ORIGIN)
        && non_empty(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Envoy's claim-to-header conversion: strings as they are, numbers as an
/// integer when they are one (else with six decimals), booleans as
/// `true`/`false`; other types and missing claims give no header.
fn claim_header_value(claims: &Value, path: &[String]) -> Option<HeaderValue> {
    let mut v = claims;
    for k in path {
        v = v.as_object()?.get(k)?;
    }
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => {
            let f = n.as_f64()?;
            if f >= 0.0 && f < u64::MAX as f64 && f.fract() == 0.0 {
                format!("{}", f as u64)
            } else {
                format!("{f:.6}")
            }
        }
        _ => return None,
    };
    if s.is_empty() {
        return None;
    }
    HeaderValue::from_str(&s).ok()
}

/// Encodes `payload` as a JWT segment (tests and tools build tokens with it).
pub fn b64url(payload: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload)
}
