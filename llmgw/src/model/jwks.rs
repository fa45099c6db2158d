//! JSON Web Key Sets: the public keys a `RequestAuthentication` rule trusts
//! (RSA, EC P-256/P-384/P-521, Ed25519, HMAC), parsed once, and JWT
//! signature checks against them with `ring` (P-521 with RustCrypto's
//! `p521`, which ring lacks), choosing keys by `kid` and `alg` as Envoy does.

use base64::Engine as _;
use ring::{
    hmac,
    signature::{self, UnparsedPublicKey},
};
use serde_json::{Map, Value};
use thiserror::Error;

/// base64url, with or without padding (JWTs and JWKs are written both ways).
pub(crate) const B64URL: base64::engine::GeneralPurpose =
    base64::engine::general_purpose::URL_SAFE_NO_PAD_INDIFFERENT;

/// Why a whole key set was rejected (texts as jwt_verify_lib's).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JwksError {
    #[error("Jwks is an invalid JSON")]
    ParseError,
    #[error("Jwks does not have [keys] field")]
    NoKeys,
    #[error("[keys] in Jwks is not an array")]
    BadKeys,
    /// Every key was skipped; the reasons are in the message.
    #[error("Jwks doesn't have any valid public key ({})", .0.join("; "))]
    NoValidKeys(Vec<String>),
}

/// A signing algorithm a JWT header may name (Envoy's list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    Es512,
    Hs256,
    Hs384,
    Hs512,
    EdDsa,
}

impl Alg {
    pub fn parse(s: &str) -> Option<Alg> {
        Some(match s {
            "RS256" => Alg::Rs256,
            "RS384" => Alg::Rs384,
            "RS512" => Alg::Rs512,
            "PS256" => Alg::Ps256,
            "PS384" => Alg::Ps384,
            "PS512" => Alg::Ps512,
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            "ES512" => Alg::Es512,
            "HS256" => Alg::Hs256,
            "HS384" => Alg::Hs384,
            "HS512" => Alg::Hs512,
            "EdDSA" => Alg::EdDsa,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::Es512 => "ES512",
            Alg::Hs256 => "HS256",
            Alg::Hs384 => "HS384",
            Alg::Hs512 => "HS512",
            Alg::EdDsa => "EdDSA",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
    P521,
}

#[derive(Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// Big-endian modulus (no leading zeros) and exponent.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed SEC1 point `04 || x || y`.
    Ec {
        curve: Curve,
        point: Vec<u8>,
    },
    Ed25519([u8; 32]),
    /// An HMAC secret (`kty: oct`), for HS256/384/512.
    Hmac(Vec<u8>),
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublicKey::Rsa { n, .. } => write!(f, "RSA-{}", n.len() * 8),
            PublicKey::Ec { curve, .. } => write!(f, "EC-{curve:?}"),
            PublicKey::Ed25519(_) => f.write_str("Ed25519"),
            // Never the secret itself.
            PublicKey::Hmac(k) => write!(f, "HMAC-{}", k.len() * 8),
        }
    }
}

/// One usable key of a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwk {
    pub kid: Option<String>,
    pub alg: Option<String>,
    pub key: PublicKey,
}

/// A parsed key set: only the keys llmgw can verify with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// ring's RSA verification needs at least this many modulus bits.
const RSA_MIN_BITS: usize = 2048;

impl Jwks {
    /// Parses a JWKS document. Keys that cannot be used (unknown `kty`,
    /// P-521, `use` other than `sig`, malformed fields) are skipped and
    /// their reasons returned; a set left with no key is an error.
    pub fn parse(json: &str) -> Result<(Jwks, Vec<String>), JwksError> {
        let v: Value = serde_json::from_str(json).map_err(|_| JwksError::ParseError)?;
        let Value::Object(obj) = v else {
            return Err(JwksError::ParseError);
        };
        let keys = match obj.get("keys") {
            None => return Err(JwksError::NoKeys),
            Some(Value::Array(a)) => a,
            Some(_) => return Err(JwksError::BadKeys),
        };
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let Value::Object(k) = k else {
                skipped.push(format!("keys[{i}]: not an object"));
                continue;
            };
            match parse_jwk(k) {
                Ok(jwk) => out.push(jwk),
                Err(reason) => {
                    let kid = k.get("kid").and_then(Value::as_str).unwrap_or("");
                    skipped.push(if kid.is_empty() {
                        format!("keys[{i}]: {reason}")
                    } else {
                        format!("keys[{i}] (kid {kid:?}): {reason}")
                    });
                }
            }
        }
        if out.is_empty() {
            return Err(JwksError::NoValidKeys(skipped));
        }
        Ok((Jwks { keys: out }, skipped))
    }

    /// Verifies `signature` over `signed` (`header.payload` as sent) as
    /// jwt_verify_lib does: a key is tried when its `kid` (if both sides have
    /// one) and its `alg` (if it has one) match the token's.
    pub fn verify(
        &self,
        alg: Alg,
        kid: Option<&str>,
        signed: &[u8],
        sig: &[u8],
    ) -> Result<(), SignatureError> {
        let mut matched = false;
        for jwk in &self.keys {
            if let (Some(want), Some(have)) = (kid, jwk.kid.as_deref())
                && !want.is_empty()
                && !have.is_empty()
                && want != have
            {
                continue;
            }
            if jwk.alg.as_deref().is_some_and(|a| a != alg.as_str()) {
                continue;
            }
            matched = true;
            match verify_one(&jwk.key, alg, signed, sig) {
                Verified::Ok => return Ok(()),
                Verified::Ed25519WrongLength => return Err(SignatureError::Ed25519WrongLength),
                Verified::Failed => {}
            }
        }
        Err(if matched {
            SignatureError::Failed
        } else {
            SignatureError::NoKey
        })
    }
}

/// Why a signature did not verify against a key set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// No key matches the token's `kid` and `alg`.
    NoKey,
    /// Keys matched, none verified the signature.
    Failed,
    /// An Ed25519 signature that is not 64 bytes.
    Ed25519WrongLength,
}

enum Verified {
    Ok,
    Failed,
    Ed25519WrongLength,
}

fn verify_one(key: &PublicKey, alg: Alg, signed: &[u8], sig: &[u8]) -> Verified {
    let ok = |r: Result<(), ring::error::Unspecified>| {
        if r.is_ok() {
            Verified::Ok
        } else {
            Verified::Failed
        }
    };
    match key {
        PublicKey::Rsa { n, e } => {
            let params: &signature::RsaParameters = match alg {
                Alg::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                Alg::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                Alg::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                Alg::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
                Alg::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
                Alg::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
                _ => return Verified::Failed,
            };
            let components = signature::RsaPublicKeyComponents {
                n: n.as_slice(),
                e: e.as_slice(),
            };
            ok(components.verify(params, signed, sig))
        }
        PublicKey::Ec { curve, point } => {
            let algorithm: &signature::EcdsaVerificationAlgorithm = match (curve, alg) {
                (Curve::P256, Alg::Es256) => &signature::ECDSA_P256_SHA256_FIXED,
                (Curve::P384, Alg::Es384) => &signature::ECDSA_P384_SHA384_FIXED,
                (Curve::P521, Alg::Es512) => return ok(verify_p521(point, signed, sig)),
                _ => return Verified::Failed,
            };
            ok(UnparsedPublicKey::new(algorithm, point).verify(signed, sig))
        }
        PublicKey::Ed25519(x) => {
            if alg != Alg::EdDsa {
                return Verified::Failed;
            }
            if sig.len() != 64 {
                return Verified::Ed25519WrongLength;
            }
            ok(UnparsedPublicKey::new(&signature::ED25519, x).verify(signed, sig))
        }
        PublicKey::Hmac(secret) => {
            let algorithm = match alg {
                Alg::Hs256 => hmac::HMAC_SHA256,
                Alg::Hs384 => hmac::HMAC_SHA384,
                Alg::Hs512 => hmac::HMAC_SHA512,
                _ => return Verified::Failed,
            };
            // Constant-time comparison inside ring.
            ok(hmac::verify(
                &hmac::Key::new(algorithm, secret),
                signed,
                sig,
            ))
        }
    }
}

/// ES512: ECDSA over P-521 with SHA-512, the signature as `r || s` of 66
/// bytes each (RFC 7518 3.4).
fn verify_p521(point: &[u8], signed: &[u8], sig: &[u8]) -> Result<(), ring::error::Unspecified> {
    use p521::ecdsa::{Signature, VerifyingKey, signature::Verifier};
    let key = VerifyingKey::from_sec1_bytes(point).map_err(|_| ring::error::Unspecified)?;
    let sig = Signature::from_slice(sig).map_err(|_| ring::error::Unspecified)?;
    key.verify(signed, &sig)
        .map_err(|_| ring::error::Unspecified)
}

fn get_str<'a>(k: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, String> {
    match k.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("[{name}] is not a string")),
    }
}

fn required_b64(k: &Map<String, Value>, name: &str, kty: &str) -> Result<Vec<u8>, String> {
    let s = get_str(k, name)?.ok_or_else(|| format!("[{name}] field is missing for {kty} key"))?;
    B64URL
        .decode(s)
        .map_err(|_| format!("[{name}] field of {kty} key is an invalid Base64url"))
}

fn parse_jwk(k: &Map<String, Value>) -> Result<Jwk, String> {
    let kty = get_str(k, "kty")?.ok_or("[kty] is missing in [keys]")?;
    let kid = get_str(k, "kid").ok().flatten().map(str::to_string);
    let alg = get_str(k, "alg")
        .ok()
        .flatten()
        .filter(|a| !a.is_empty())
        .map(str::to_string);
    if let Some(u) = get_str(k, "use")?
        && u != "sig"
    {
        return Err(format!("[use] is {u:?}, not \"sig\""));
    }
    let key = match kty {
        "RSA" => {
            if let Some(a) = &alg
                && !(a.starts_with("RS") || a.starts_with("PS"))
            {
                return Err("[alg] is not started with [RS] or [PS] for an RSA key".into());
            }
            let n = required_b64(k, "n", "an RSA")?;
            let e = required_b64(k, "e", "an RSA")?;
            let n = strip_leading_zeros(n);
            let e = strip_leading_zeros(e);
            let bits = n
                .first()
                .map_or(0, |b| (n.len() - 1) * 8 + (8 - b.leading_zeros() as usize));
            if bits < RSA_MIN_BITS {
                return Err(format!(
                    "RSA modulus of {bits} bits; at least {RSA_MIN_BITS} are required"
                ));
            }
            if e.is_empty() || e.len() > 4 || e.last().is_some_and(|b| b & 1 == 0) {
                return Err("[e] of the RSA key is not a usable exponent".into());
            }
            PublicKey::Rsa { n, e }
        }
        "EC" => {
            if let Some(a) = &alg
                && !a.starts_with("ES")
            {
                return Err("[alg] is not started with [ES] for an EC key".into());
            }
            let crv = get_str(k, "crv")?;
            let curve = match (alg.as_deref(), crv) {
                (Some("ES256"), None | Some("P-256")) | (None, Some("P-256") | None) => Curve::P256,
                (Some("ES384"), None | Some("P-384")) | (None, Some("P-384")) => Curve::P384,
                (Some("ES512"), None | Some("P-521")) | (None, Some("P-521")) => Curve::P521,
                (Some(_), Some(_)) => {
                    return Err(
                        "[crv] field specified is not compatible with [alg] for an EC key".into(),
                    );
                }
                _ => return Err("[crv] or [alg] field is not supported for an EC key".into()),
            };
            let size = match curve {
                Curve::P256 => 32,
                Curve::P384 => 48,
                Curve::P521 => 66,
            };
            let x = left_pad(required_b64(k, "x", "an EC")?, size)
                .ok_or("[x] field of the EC key is longer than the curve")?;
            let y = left_pad(required_b64(k, "y", "an EC")?, size)
                .ok_or("[y] field of the EC key is longer than the curve")?;
            let mut point = Vec::with_capacity(1 + 2 * size);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            if curve == Curve::P521 && p521::ecdsa::VerifyingKey::from_sec1_bytes(&point).is_err() {
                return Err("[x] and [y] of the EC key are not a point on P-521".into());
            }
            PublicKey::Ec { curve, point }
        }
        "OKP" => {
            if let Some(a) = &alg
                && a != "EdDSA"
            {
                return Err("[alg] is not [EdDSA] for an OKP key".into());
            }
            match get_str(k, "crv")? {
                None => return Err("[crv] field is missing for an OKP key".into()),
                Some("Ed25519") => {}
                Some(_) => return Err("[crv] field is not supported for an OKP key".into()),
            }
            let x = required_b64(k, "x", "an OKP")?;
            let x: [u8; 32] = x
                .try_into()
                .map_err(|_| "Jwks OKP [x] field is wrong length.".to_string())?;
            PublicKey::Ed25519(x)
        }
        "oct" => {
            if let Some(a) = &alg
                && !a.starts_with("HS")
            {
                return Err("[alg] is not started with [HS] for an oct key".into());
            }
            let secret = required_b64(k, "k", "an oct")?;
            if secret.is_empty() {
                return Err("[k] field of the oct key is empty".into());
            }
            PublicKey::Hmac(secret)
        }
        _ => return Err("[kty] is not supported in [keys]".into()),
    };
    Ok(Jwk { kid, alg, key })
}

fn strip_leading_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let zeros = v.iter().take_while(|b| **b == 0).count();
    v.drain(..zeros);
    v
}

fn left_pad(v: Vec<u8>, size: usize) -> Option<Vec<u8>> {
    if v.len() > size {
        return None;
    }
    let mut out = vec![0; size - v.len()];
    out.extend_from_slice(&v);
    Some(out)
}
