//! A bearer token as Envoy's jwt_authn handles it: where it was found
//! (header with prefix, query parameter, cookie), how it is cut out of a
//! header value, how it is removed from the request, and how it is split
//! and decoded with its registered claims type-checked.

use base64::Engine as _;
use http::{HeaderMap, HeaderName, Uri, header};
use serde_json::Value;

use super::jwt::JwtError;
use crate::model::jwks::{Alg, B64URL};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Found {
    Header(HeaderName),
    Param(String),
    Cookie(String),
}

pub(super) struct Token {
    pub value: String,
    pub at: Found,
    /// Rules (by index) whose issuer may use this location.
    pub issuers: Vec<usize>,
}

pub(super) fn is_b64url_or_dot(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// The token after a header prefix, as Envoy's extractor cuts it: from the
/// first base64url character (or dot) on, up to the first character that is
/// neither (`Bearer <jwt>, other` and `Bearer <jwt>;x` give `<jwt>`); the
/// whole value when nothing follows the prefix.
pub(super) fn after_prefix(v: &str, start: usize) -> &str {
    let rest = &v[start..];
    let Some(from) = rest.find(is_b64url_or_dot) else {
        return v;
    };
    let token = &rest[from..];
    match token.find(|c: char| !is_b64url_or_dot(c)) {
        Some(end) => &token[..end],
        None => token,
    }
}

/// First value of `name` in a raw query, percent-decoded.
pub(super) fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

pub(super) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// The value of cookie `name` from the request's `Cookie` headers
/// (quotes around the value removed).
pub(super) fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k.trim() == name).then(|| {
                let v = v.trim();
                v.strip_prefix('"')
                    .and_then(|x| x.strip_suffix('"'))
                    .unwrap_or(v)
            })
        })
}

pub(super) fn remove_token(at: &Found, uri: &mut Uri, headers: &mut HeaderMap) {
    match at {
        Found::Header(h) => {
            headers.remove(h);
        }
        Found::Param(p) => {
            if let Some(new) = without_param(uri, p) {
                *uri = new;
            }
        }
        // Envoy never removes a cookie token (its removeJwt for cookies is
        // a TODO), so neither do we.
        Found::Cookie(_) => {}
    }
}

pub(super) fn without_param(uri: &Uri, param: &str) -> Option<Uri> {
    let query = uri.query()?;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let k = pair.split_once('=').map_or(*pair, |(k, _)| k);
            percent_decode(k) != param
        })
        .collect();
    let mut pq = uri.path().to_string();
    if !kept.is_empty() {
        pq.push('?');
        pq.push_str(&kept.join("&"));
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq.parse().ok()?);
    Uri::from_parts(parts).ok()
}

/// A token split and decoded, its registered claims type-checked in
/// jwt_verify_lib's order.
pub(super) struct ParsedJwt<'a> {
    pub signed: String,
    pub payload_b64: &'a str,
    pub alg: Alg,
    pub kid: Option<String>,
    pub iss: String,
    pub sub: Option<String>,
    pub nbf: u64,
    pub exp: u64,
    pub audiences: Vec<String>,
    pub payload: Value,
    pub signature: Vec<u8>,
}

pub(super) enum Num {
    Missing,
    Ok(u64),
    NotInteger,
    OutOfRange,
}

pub(super) fn num(obj: &serde_json::Map<String, Value>, name: &str) -> Num {
    match obj.get(name) {
        None => Num::Missing,
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if f >= 0.0 && f < u64::MAX as f64 => Num::Ok(f as u64),
            _ => Num::OutOfRange,
        },
        Some(_) => Num::NotInteger,
    }
}

pub(super) fn opt_string(
    obj: &serde_json::Map<String, Value>,
    name: &str,
    err: JwtError,
) -> Result<Option<String>, JwtError> {
    match obj.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(err),
    }
}

impl<'a> ParsedJwt<'a> {
    pub(super) fn parse(token: &'a str) -> Result<Self, JwtError> {
        // Exactly three sections, as jwt_verify_lib splits them; an empty
        // one fails its own decoding below.
        let parts: Vec<&str> = token.split('.').collect();
        let [h, p, s] = parts[..] else {
            return Err(JwtError::BadFormat);
        };
        let header = B64URL.decode(h).map_err(|_| JwtError::HeaderBadBase64)?;
        let header: Value = serde_json::from_slice(&header).map_err(|_| JwtError::HeaderBadJson)?;
        let Value::Object(header) = header else {
            return Err(JwtError::HeaderBadJson);
        };
        let alg = match header.get("alg") {
            Some(Value::String(a)) => Alg::parse(a).ok_or(JwtError::HeaderNotImplementedAlg)?,
            _ => return Err(JwtError::HeaderBadAlg),
        };
        let kid = opt_string(&header, "kid", JwtError::HeaderBadKid)?;
        let payload = B64URL.decode(p).map_err(|_| JwtError::PayloadBadBase64)?;
        let payload: Value =
            serde_json::from_slice(&payload).map_err(|_| JwtError::PayloadBadJson)?;
        let Value::Object(obj) = &payload else {
            return Err(JwtError::PayloadBadJson);
        };
        let iss = opt_string(obj, "iss", JwtError::IssNotString)?.unwrap_or_default();
        let sub = opt_string(obj, "sub", JwtError::SubNotString)?;
        let int = |name, not_int, range| match num(obj, name) {
            Num::Missing => Ok(0),
            Num::Ok(v) => Ok(v),
            Num::NotInteger => Err(not_int),
            Num::OutOfRange => Err(range),
        };
        int("iat", JwtError::IatNotInteger, JwtError::IatOutOfRange)?;
        let nbf = int("nbf", JwtError::NbfNotInteger, JwtError::NbfOutOfRange)?;
        let exp = int("exp", JwtError::ExpNotInteger, JwtError::ExpOutOfRange)?;
        opt_string(obj, "jti", JwtError::JtiNotString)?;
        let audiences = match obj.get("aud") {
            None => Vec::new(),
            Some(Value::String(a)) => vec![a.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|x| x.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or(JwtError::AudNotString)?,
            Some(_) => return Err(JwtError::AudNotString),
        };
        let signature = B64URL.decode(s).map_err(|_| JwtError::SignatureBadBase64)?;
        // What was signed: `header.payload` as sent (empty sections were skipped above).
        let signed = format!("{h}.{p}");
        Ok(ParsedJwt {
            signed,
            payload_b64: p,
            alg,
            kid,
            iss,
            sub,
            nbf,
            exp,
            audiences,
            payload,
            signature,
        })
    }

    pub(super) fn check_time(&self, now: u64, skew: u64) -> Result<(), JwtError> {
        if now.saturating_add(skew) < self.nbf {
            return Err(JwtError::NotYetValid);
        }
        if self.exp != 0 && now > self.exp.saturating_add(skew) {
            return Err(JwtError::Expired);
        }
        Ok(())
    }
}
