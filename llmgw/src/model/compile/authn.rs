//! RequestAuthentications: the ones that apply to this gateway, one rule per
//! `jwtRules[]` entry (several may name one issuer: each is a provider of
//! its own, as istiod makes them), inline key sets parsed, remote ones
//! named, token locations and output headers checked.

use super::applies;
use crate::config::{
    ErrorList, Settings,
    authn::{JwtRule as RawRule, RequestAuthenticationSpec},
    duration::parse_duration,
    load::Document,
};
use crate::model::jwks::Jwks;
use http::{HeaderName, Uri, header};
use std::sync::Arc;

use crate::model::authn::*;

/// `jwtRules[].outputClaimToHeaders[].header` as Istio's CRD allows it.
fn valid_claim_header(h: &str) -> bool {
    !h.is_empty()
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

pub(crate) fn compile(
    docs: &[Document<RequestAuthenticationSpec>],
    settings: &Settings,
    errors: &mut ErrorList,
    warnings: &mut Vec<String>,
) -> Authenticator {
    let mut out = Authenticator::default();
    for doc in docs {
        let spec = &doc.spec;
        let targeted = spec.target_ref.is_some() || !spec.target_refs.is_empty();
        if !applies(doc, spec.selector.as_ref(), targeted, settings, errors) {
            continue;
        }
        for (i, raw) in spec.jwt_rules.iter().enumerate() {
            let before = errors.0.len();
            let field = format!("spec.jwtRules[{i}]");
            let Some(rule) = compile_rule(doc, i, raw, &field, errors, warnings) else {
                continue;
            };
            if errors.0.len() != before {
                continue;
            }
            out.add(rule, raw);
        }
    }
    out
}

impl Authenticator {
    fn add(&mut self, rule: Rule, raw: &RawRule) {
        let idx = self.rules.len();
        let mut headers: Vec<(HeaderName, String)> = Vec::new();
        for h in &raw.from_headers {
            if let Ok(name) = HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes()) {
                headers.push((name, h.prefix.clone().unwrap_or_default()));
            }
        }
        let mut params = raw.from_params.clone();
        if raw.from_headers.is_empty() && raw.from_params.is_empty() && raw.from_cookies.is_empty()
        {
            headers.push((header::AUTHORIZATION, "Bearer ".to_string()));
            params.push("access_token".to_string());
        }
        for (name, prefix) in headers {
            self.locations
                .headers
                .entry((name.as_str().to_string(), prefix))
                .or_insert_with(|| (name, Vec::new()))
                .1
                .push(idx);
        }
        for p in params {
            self.locations.params.entry(p).or_default().push(idx);
        }
        for c in &raw.from_cookies {
            self.locations
                .cookies
                .entry(c.clone())
                .or_default()
                .push(idx);
        }
        if let Some(h) = &rule.output_payload_to_header {
            self.sanitize.push(h.clone());
        }
        for (h, _) in &rule.output_claim_to_headers {
            self.sanitize.push(h.clone());
        }
        self.rules.push(Arc::new(rule));
    }
}

fn compile_rule(
    doc: &Document<RequestAuthenticationSpec>,
    index: usize,
    raw: &RawRule,
    field: &str,
    errors: &mut ErrorList,
    warnings: &mut Vec<String>,
) -> Option<Rule> {
    let mut err = |f: String, m: String| errors.push(doc.error(f, m));
    if raw.issuer.is_empty() {
        err(format!("{field}.issuer"), "is required".into());
        return None;
    }
    for (j, a) in raw.audiences.iter().enumerate() {
        if a.is_empty() {
            err(format!("{field}.audiences[{j}]"), "empty audience".into());
        }
    }
    let timeout = match &raw.timeout {
        None => DEFAULT_FETCH_TIMEOUT,
        Some(t) => match parse_duration(t) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                err(format!("{field}.timeout"), "must be greater than 0".into());
                DEFAULT_FETCH_TIMEOUT
            }
            Err(m) => {
                err(format!("{field}.timeout"), m);
                DEFAULT_FETCH_TIMEOUT
            }
        },
    };
    let keys = match (&raw.jwks, &raw.jwks_uri) {
        (Some(_), Some(_)) => {
            err(
                field.to_string(),
                "only one of jwks or jwksUri can be set".into(),
            );
            None
        }
        (Some(jwks), None) => match Jwks::parse(jwks) {
            Ok((set, skipped)) => {
                for s in skipped {
                    warnings.push(format!(
                        "{}: {}: {field}.jwks: key skipped: {s}",
                        doc.source,
                        doc.describe()
                    ));
                }
                Some(Keys::Inline(Arc::new(set)))
            }
            Err(e) => {
                err(format!("{field}.jwks"), e.to_string());
                None
            }
        },
        (None, Some(uri)) => match parse_fetch_uri(uri) {
            Ok(u) => Some(Keys::Remote {
                source: JwksSource::Uri(u),
                timeout,
            }),
            Err(m) => {
                err(format!("{field}.jwksUri"), m);
                None
            }
        },
        (None, None) => {
            let discovery = format!(
                "{}/.well-known/openid-configuration",
                raw.issuer.trim_end_matches('/')
            );
            match parse_fetch_uri(&discovery) {
                Ok(u) => Some(Keys::Remote {
                    source: JwksSource::Discovery(u),
                    timeout,
                }),
                Err(_) => {
                    err(
                        field.to_string(),
                        "needs jwks or jwksUri: the issuer is not an http(s) URL, so its keys cannot be found by OpenID discovery".into(),
                    );
                    None
                }
            }
        }
    };
    let mut locations = Vec::new();
    for (j, h) in raw.from_headers.iter().enumerate() {
        if h.name.is_empty()
            || HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes()).is_err()
        {
            err(
                format!("{field}.fromHeaders[{j}].name"),
                format!("{:?} is not a header name", h.name),
            );
        }
        locations.push(match h.prefix.as_deref() {
            Some(p) if !p.is_empty() => {
                format!("header {} (prefix {p:?})", h.name.to_ascii_lowercase())
            }
            _ => format!("header {}", h.name.to_ascii_lowercase()),
        });
    }
    for (j, p) in raw.from_params.iter().enumerate() {
        if p.is_empty() {
            err(
                format!("{field}.fromParams[{j}]"),
                "empty parameter name".into(),
            );
        }
        locations.push(format!("query parameter {p}"));
    }
    for (j, c) in raw.from_cookies.iter().enumerate() {
        if c.is_empty() {
            err(
                format!("{field}.fromCookies[{j}]"),
                "empty cookie name".into(),
            );
        }
        locations.push(format!("cookie {c}"));
    }
    if locations.is_empty() {
        locations.push("header authorization (prefix \"Bearer \")".into());
        locations.push("query parameter access_token".into());
    }
    let output_payload_to_header = match raw.output_payload_to_header.as_deref() {
        None | Some("") => None,
        Some(h) => match HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()) {
            Ok(n) => Some(n),
            Err(_) => {
                err(
                    format!("{field}.outputPayloadToHeader"),
                    format!("{h:?} is not a header name"),
                );
                None
            }
        },
    };
    let mut output_claim_to_headers: Vec<(HeaderName, Vec<String>)> = Vec::new();
    for (j, c) in raw.output_claim_to_headers.iter().enumerate() {
        let f = format!("{field}.outputClaimToHeaders[{j}]");
        if !valid_claim_header(&c.header) {
            err(
                format!("{f}.header"),
                format!(
                    "{:?} is not a header name (letters, digits, - and _)",
                    c.header
                ),
            );
            continue;
        }
        if c.claim.is_empty() {
            err(format!("{f}.claim"), "is required".into());
            continue;
        }
        let Ok(name) = HeaderName::from_bytes(c.header.to_ascii_lowercase().as_bytes()) else {
            continue;
        };
        if output_claim_to_headers.iter().any(|(n, _)| *n == name) {
            err(
                format!("{f}.header"),
                format!("header {name} is already the target of another claim; each header once"),
            );
            continue;
        }
        output_claim_to_headers.push((name, c.claim.split('.').map(str::to_string).collect()));
    }
    Some(Rule {
        origin: doc.id.clone(),
        index,
        issuer: raw.issuer.clone(),
        sanitized_audiences: raw.audiences.iter().map(|a| sanitize_audience(a)).collect(),
        audiences: raw.audiences.clone(),
        keys: keys?,
        forward_original_token: raw.forward_original_token,
        output_payload_to_header,
        output_claim_to_headers,
        locations,
        space_delimited_claims: space_delimited(raw, field, &mut err),
    })
}

/// `scope`, `permission` and the rule's own `spaceDelimitedClaims`, once each.
fn space_delimited(
    raw: &RawRule,
    field: &str,
    err: &mut impl FnMut(String, String),
) -> Vec<String> {
    let mut out: Vec<String> = DEFAULT_SPACE_DELIMITED.map(str::to_string).to_vec();
    for (j, c) in raw.space_delimited_claims.iter().enumerate() {
        if c.is_empty() {
            err(
                format!("{field}.spaceDelimitedClaims[{j}]"),
                "is empty".into(),
            );
        } else if !out.contains(c) {
            out.push(c.clone());
        }
    }
    out
}

/// A `jwksUri` (or discovery URL): absolute, `http` or `https`, with a host.
fn parse_fetch_uri(s: &str) -> Result<Uri, String> {
    let uri: Uri = s.parse().map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("{s:?}: url must have scheme http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{s:?} has no host"));
    }
    Ok(uri)
}
