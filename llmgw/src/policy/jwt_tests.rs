//! RequestAuthentication tests: keys made in the test (RSA from fixed test
//! keys, EC and Ed25519 generated), tokens signed here, requests run through
//! the compiled `Authenticator`; remote keys from a real HTTPS server.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use http::{HeaderMap, Method, StatusCode, Uri};
use ring::{
    rand::SystemRandom,
    signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair},
};
use serde_json::{Value, json};

use super::{
    jwks_fetch::{FetchSettings, JwksFetchers, JwksStatus},
    jwt::{JwtError, KeyStore, b64url},
    test_support::{Reply, TestPki, eventually, serve, test_pki},
};
use crate::{
    config::{ErrorList, RawConfig, Settings, load::load_text},
    model::{
        authn::{Authenticator, JwksSource},
        jwks::Jwks,
    },
};

// ---------------------------------------------------------------- keys

enum Key {
    Rsa(RsaKeyPair),
    /// P-521 (ES512), which ring cannot sign.
    P521(p521::ecdsa::SigningKey),
    Ec(EcdsaKeyPair, &'static str),
    Ed(Ed25519KeyPair),
    Hmac(Vec<u8>),
}

const RSA_1: &[u8] = include_bytes!("testdata/rsa2048-1.der");
const RSA_2: &[u8] = include_bytes!("testdata/rsa2048-2.der");

fn rsa(der: &[u8]) -> Key {
    Key::Rsa(RsaKeyPair::from_der(der).expect("rsa key"))
}

fn ec(curve: &'static str) -> Key {
    let rng = SystemRandom::new();
    let alg = match curve {
        "P-256" => &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        _ => &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
    };
    let doc = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("gen ec");
    Key::Ec(
        EcdsaKeyPair::from_pkcs8(alg, doc.as_ref(), &rng).expect("ec key"),
        curve,
    )
}

fn p521() -> Key {
    use ring::rand::SecureRandom as _;
    // 65 random bytes under a zero byte: below the group order, and (all but
    // surely) not zero.
    let mut secret = [0u8; 66];
    SystemRandom::new().fill(&mut secret[1..]).expect("random");
    Key::P521(p521::ecdsa::SigningKey::from_slice(&secret).expect("P-521 key"))
}

fn ed() -> Key {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("gen ed");
    Key::Ed(Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("ed key"))
}

impl Key {
    fn sign(&self, alg: &str, msg: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Key::Rsa(k) => {
                let enc: &'static dyn signature::RsaEncoding = match alg {
                    "RS256" => &signature::RSA_PKCS1_SHA256,
                    "RS384" => &signature::RSA_PKCS1_SHA384,
                    "RS512" => &signature::RSA_PKCS1_SHA512,
                    "PS256" => &signature::RSA_PSS_SHA256,
                    "PS384" => &signature::RSA_PSS_SHA384,
                    "PS512" => &signature::RSA_PSS_SHA512,
                    other => panic!("no RSA alg {other}"),
                };
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(enc, &rng, msg, &mut sig).expect("rsa sign");
                sig
            }
            Key::Ec(k, _) => k.sign(&rng, msg).expect("ec sign").as_ref().to_vec(),
            Key::P521(k) => {
                use p521::ecdsa::{Signature, signature::Signer};
                let sig: Signature = k.sign(msg);
                sig.to_vec()
            }
            Key::Ed(k) => k.sign(msg).as_ref().to_vec(),
            Key::Hmac(secret) => {
                let a = match alg {
                    "HS256" => ring::hmac::HMAC_SHA256,
                    "HS384" => ring::hmac::HMAC_SHA384,
                    _ => ring::hmac::HMAC_SHA512,
                };
                ring::hmac::sign(&ring::hmac::Key::new(a, secret), msg)
                    .as_ref()
                    .to_vec()
            }
        }
    }

    fn jwk(&self, kid: &str, alg: Option<&str>) -> Value {
        let mut v = match self {
            Key::Rsa(k) => {
                let c: signature::RsaPublicKeyComponents<Vec<u8>> = k.public().into();
                json!({"kty": "RSA", "n": b64url(&c.n), "e": b64url(&c.e)})
            }
            Key::Ec(k, crv) => {
                let p = k.public_key().as_ref();
                let n = (p.len() - 1) / 2;
                json!({"kty": "EC", "crv": crv, "x": b64url(&p[1..1 + n]), "y": b64url(&p[1 + n..])})
            }
            Key::P521(k) => {
                let vk = p521::ecdsa::VerifyingKey::from(k);
                let p = vk.to_encoded_point(false);
                let (x, y) = (p.x().expect("x"), p.y().expect("y"));
                json!({"kty": "EC", "crv": "P-521", "x": b64url(x), "y": b64url(y)})
            }
            Key::Ed(k) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64url(k.public_key().as_ref())})
            }
            Key::Hmac(secret) => json!({"kty": "oct", "k": b64url(secret)}),
        };
        if !kid.is_empty() {
            v["kid"] = json!(kid);
        }
        if let Some(a) = alg {
            v["alg"] = json!(a);
        }
        v
    }
}

fn jwks(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A signed token: `alg` and `kid` in the header, `claims` as payload.
fn token(key: &Key, alg: &str, kid: &str, claims: &Value) -> String {
    let mut header = json!({"alg": alg, "typ": "JWT"});
    if !kid.is_empty() {
        header["kid"] = json!(kid);
    }
    let signed = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig = key.sign(alg, signed.as_bytes());
    format!("{signed}.{}", b64url(&sig))
}

fn claims(iss: &str, sub: &str) -> Value {
    json!({"iss": iss, "sub": sub, "exp": now() + 3600, "iat": now()})
}

// ---------------------------------------------------------------- config

const ISS: &str = "https://issuer.example.com";

/// Compiled rules with the runtime's key fetchers, once started.
#[derive(Debug)]
struct Auth {
    compiled: Authenticator,
    fetchers: OnceLock<JwksFetchers>,
}

impl std::ops::Deref for Auth {
    type Target = Authenticator;
    fn deref(&self) -> &Authenticator {
        &self.compiled
    }
}

impl KeyStore for Auth {
    async fn keys(&self, source: &JwksSource) -> Option<Arc<Jwks>> {
        match self.fetchers.get() {
            Some(f) => f.keys(source).await,
            None => None,
        }
    }
}

impl Auth {
    /// Starts fetching remote keys, carrying over `previous`'s fetchers as
    /// a reload does.
    fn start(&self, settings: &FetchSettings, previous: Option<&Auth>) {
        let prev = previous.and_then(|p| p.fetchers.get());
        let _ = self
            .fetchers
            .set(JwksFetchers::build(&self.compiled, settings, prev));
    }

    fn jwks_status(&self) -> Vec<JwksStatus> {
        self.fetchers
            .get()
            .map(|f| f.status(&self.compiled))
            .unwrap_or_default()
    }
}

fn compile(yaml: &str) -> Result<(Auth, Vec<String>), String> {
    let mut raw = RawConfig::default();
    let mut errors = ErrorList::default();
    load_text(
        Path::new("ra.yaml"),
        yaml,
        &HashMap::<String, String>::new(),
        &mut raw,
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors}");
    let mut warnings = Vec::new();
    let a = crate::model::compile::authn::compile(
        &raw.request_authentications,
        &Settings::default(),
        &mut errors,
        &mut warnings,
    );
    if errors.is_empty() {
        let a = Auth {
            compiled: a,
            fetchers: OnceLock::new(),
        };
        Ok((a, warnings))
    } else {
        Err(errors.to_string())
    }
}

fn ra(rules: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: jwt\n  namespace: istio-system\nspec:\n  selector:\n    matchLabels:\n      istio: ingressgateway\n  jwtRules:\n{rules}"
    )
}

/// One rule for `ISS` with inline `jwks` and `extra` YAML lines (indented 4).
fn one_rule(jwks: &str, extra: &str) -> Auth {
    let yaml = ra(&format!("  - issuer: {ISS}\n    jwks: '{jwks}'\n{extra}"));
    compile(&yaml).unwrap_or_else(|e| panic!("{e}")).0
}

/// A request under test.
struct Req {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Req {
    fn get(uri: &str) -> Self {
        Req {
            method: Method::POST,
            uri: uri.parse().expect("uri"),
            headers: HeaderMap::new(),
        }
    }
    fn header(mut self, k: &'static str, v: &str) -> Self {
        self.headers.append(k, v.parse().expect("value"));
        self
    }
    fn bearer(self, t: &str) -> Self {
        self.header("authorization", &format!("Bearer {t}"))
    }
    async fn run(&mut self, a: &Auth) -> Result<Option<super::Identity>, JwtError> {
        a.compiled
            .authenticate(a, &self.method, &mut self.uri, &mut self.headers)
            .await
    }
}

async fn verify(a: &Auth, t: &str) -> Result<String, JwtError> {
    Req::get("/v1/chat/completions")
        .bearer(t)
        .run(a)
        .await
        .map(|i| i.expect("identity").principal)
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn every_algorithm_verifies() {
    let cases: Vec<(Key, &str)> = vec![
        (rsa(RSA_1), "RS256"),
        (rsa(RSA_1), "RS384"),
        (rsa(RSA_1), "RS512"),
        (rsa(RSA_1), "PS256"),
        (rsa(RSA_1), "PS384"),
        (rsa(RSA_1), "PS512"),
        (ec("P-256"), "ES256"),
        (ec("P-384"), "ES384"),
        (p521(), "ES512"),
        (ed(), "EdDSA"),
        (
            Key::Hmac(b"a secret of thirty-two bytes, ok".to_vec()),
            "HS256",
        ),
        (Key::Hmac(b"another secret for HS384".to_vec()), "HS384"),
        (Key::Hmac(vec![7; 64]), "HS512"),
    ];
    for (key, alg) in cases {
        // With and without `alg`/`kid` on the key.
        for (kid, key_alg) in [("k1", Some(alg)), ("", None)] {
            let a = one_rule(&jwks(&[key.jwk(kid, key_alg)]), "");
            let t = token(&key, alg, kid, &claims(ISS, "alice"));
            assert_eq!(
                verify(&a, &t).await,
                Ok(format!("{ISS}/alice")),
                "{alg} kid={kid:?}"
            );
            // The same token with one bit of its signature flipped.
            let (head, sig) = t.rsplit_once('.').expect("three parts");
            let mut sig = crate::model::jwks::B64URL.decode(sig).expect("signature");
            let mid = sig.len() / 2;
            sig[mid] ^= 1;
            let forged = format!("{head}.{}", b64url(&sig));
            assert_eq!(
                verify(&a, &forged).await,
                Err(JwtError::VerificationFail),
                "{alg} kid={kid:?}"
            );
        }
    }
}

#[tokio::test]
async fn time_checks_allow_sixty_seconds_of_skew() {
    let key = ec("P-256");
    let a = one_rule(&jwks(&[key.jwk("k", None)]), "");
    let at = |exp: Option<u64>, nbf: Option<u64>| {
        let mut c = json!({"iss": ISS, "sub": "s"});
        if let Some(e) = exp {
            c["exp"] = json!(e);
        }
        if let Some(n) = nbf {
            c["nbf"] = json!(n);
        }
        token(&key, "ES256", "k", &c)
    };
    let n = now();
    assert_eq!(
        verify(&a, &at(Some(n - 120), None)).await,
        Err(JwtError::Expired)
    );
    assert!(
        verify(&a, &at(Some(n - 30), None)).await.is_ok(),
        "within skew"
    );
    assert_eq!(
        verify(&a, &at(None, Some(n + 120))).await,
        Err(JwtError::NotYetValid)
    );
    assert!(
        verify(&a, &at(None, Some(n + 30))).await.is_ok(),
        "within skew"
    );
    assert!(verify(&a, &at(None, None)).await.is_ok(), "exp is optional");
}

#[tokio::test]
async fn issuer_audience_signature_and_kid() {
    let key = rsa(RSA_1);
    let other = rsa(RSA_2);
    let a = one_rule(
        &jwks(&[key.jwk("k1", Some("RS256"))]),
        "    audiences:\n    - https://api.example.com/\n    - llm\n",
    );
    let with = |c: Value| token(&key, "RS256", "k1", &c);
    let mut c = claims(ISS, "u");
    c["aud"] = json!("api.example.com");
    assert!(verify(&a, &with(c.clone())).await.is_ok(), "aud sanitized");
    c["aud"] = json!(["x", "llm"]);
    assert!(verify(&a, &with(c.clone())).await.is_ok(), "aud list");
    c["aud"] = json!("other");
    assert_eq!(
        verify(&a, &with(c)).await,
        Err(JwtError::AudienceNotAllowed)
    );
    assert_eq!(
        verify(&a, &with(claims(ISS, "u"))).await,
        Err(JwtError::AudienceNotAllowed),
        "no aud while audiences are required"
    );

    let mut c = claims("https://evil.example.com", "u");
    c["aud"] = json!("llm");
    assert_eq!(verify(&a, &with(c)).await, Err(JwtError::UnknownIssuer));

    let mut c = claims(ISS, "u");
    c["aud"] = json!("llm");
    let forged = token(&other, "RS256", "k1", &c);
    assert_eq!(verify(&a, &forged).await, Err(JwtError::VerificationFail));
    let good = with(c.clone());
    let parts: Vec<&str> = good.split('.').collect();
    let mut c2 = c.clone();
    c2["sub"] = json!("admin");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64url(c2.to_string().as_bytes()),
        parts[2]
    );
    assert_eq!(verify(&a, &tampered).await, Err(JwtError::VerificationFail));
    assert_eq!(
        verify(&a, &token(&key, "RS256", "nope", &c)).await,
        Err(JwtError::JwksKidAlgMismatch),
        "unknown kid"
    );
    assert_eq!(
        verify(&a, &token(&key, "PS256", "k1", &c)).await,
        Err(JwtError::JwksKidAlgMismatch),
        "key alg differs"
    );
}

#[tokio::test]
async fn malformed_tokens_get_envoys_texts() {
    let key = ec("P-256");
    let a = one_rule(&jwks(&[key.jwk("k", None)]), "");
    let h = |v: Value| b64url(v.to_string().as_bytes());
    let p = h(claims(ISS, "s"));
    let cases = [
        ("abc".to_string(), JwtError::BadFormat),
        ("a.b".to_string(), JwtError::BadFormat),
        // Exactly three sections, as jwt_verify_lib splits: an empty one is
        // a section too, and four (an extra dot) are not a JWT.
        (
            format!("{}..{p}.c2ln", h(json!({"alg": "ES256"}))),
            JwtError::BadFormat,
        ),
        (format!(".{p}.c2ln"), JwtError::HeaderBadJson),
        (format!("A.{p}.c2ln"), JwtError::HeaderBadBase64),
        (
            format!("{}.{p}.c2ln", b64url(b"not json")),
            JwtError::HeaderBadJson,
        ),
        (
            format!("{}.{p}.c2ln", h(json!({"typ": "JWT"}))),
            JwtError::HeaderBadAlg,
        ),
        (
            format!("{}.{p}.c2ln", h(json!({"alg": "none"}))),
            JwtError::HeaderNotImplementedAlg,
        ),
        (
            format!("{}.{p}.c2ln", h(json!({"alg": "ES256", "kid": 1}))),
            JwtError::HeaderBadKid,
        ),
        (
            format!("{}.A.c2ln", h(json!({"alg": "ES256"}))),
            JwtError::PayloadBadBase64,
        ),
        (
            format!(
                "{}.{}.c2ln",
                h(json!({"alg": "ES256"})),
                h(json!({"iss": ISS, "exp": "soon"}))
            ),
            JwtError::ExpNotInteger,
        ),
        (
            format!(
                "{}.{}.c2ln",
                h(json!({"alg": "ES256"})),
                h(json!({"iss": ISS, "nbf": -5}))
            ),
            JwtError::NbfOutOfRange,
        ),
        (
            format!(
                "{}.{}.c2ln",
                h(json!({"alg": "ES256"})),
                h(json!({"iss": ISS, "aud": 7}))
            ),
            JwtError::AudNotString,
        ),
        (
            format!(
                "{}.{}.c2ln",
                h(json!({"alg": "ES256"})),
                h(json!({"iss": 7}))
            ),
            JwtError::IssNotString,
        ),
        (
            format!("{}.{p}.A", h(json!({"alg": "ES256"}))),
            JwtError::SignatureBadBase64,
        ),
        // A key without `alg` is tried for any algorithm (and fails), as jwt_verify_lib does.
        (
            format!("{}.{p}.c2ln", h(json!({"alg": "HS256"}))),
            JwtError::VerificationFail,
        ),
        (
            format!("{}.{p}.c2ln", h(json!({"alg": "ES256", "kid": "k"}))),
            JwtError::VerificationFail,
        ),
    ];
    for (t, want) in cases {
        assert_eq!(verify(&a, &t).await, Err(want.clone()), "{t}");
    }
    assert_eq!(
        JwtError::BadFormat.to_string(),
        "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
    );
    let edkey = ed();
    let a = one_rule(&jwks(&[edkey.jwk("e", None)]), "");
    let t = format!("{}.{p}.c2ln", h(json!({"alg": "EdDSA"})));
    assert_eq!(
        verify(&a, &t).await,
        Err(JwtError::Ed25519SignatureWrongLength)
    );
}

#[tokio::test]
async fn default_locations_and_token_removal() {
    let key = ec("P-256");
    let a = one_rule(&jwks(&[key.jwk("k", None)]), "");
    let t = token(&key, "ES256", "k", &claims(ISS, "bob"));

    // No token: no identity, nothing rejected.
    let mut r = Req::get("/x?a=1");
    assert_eq!(r.run(&a).await, Ok(None));
    // Authorization: Bearer, removed afterwards.
    let mut r = Req::get("/x").bearer(&t);
    let id = r.run(&a).await.expect("ok").expect("identity");
    assert_eq!(id.principal, format!("{ISS}/bob"));
    assert!(r.headers.get("authorization").is_none());
    // access_token query parameter, removed from the query.
    let mut r = Req::get(&format!("/x?a=1&access_token={t}&b=2"));
    assert!(r.run(&a).await.expect("ok").is_some());
    assert_eq!(r.uri.to_string(), "/x?a=1&b=2");
    let mut r = Req::get(&format!("/x?access_token={t}"));
    assert!(r.run(&a).await.expect("ok").is_some());
    assert_eq!(r.uri.to_string(), "/x");
    // A prefix other than Bearer is no token at all.
    let mut r = Req::get("/x").header("authorization", &format!("Basic {t}"));
    assert_eq!(r.run(&a).await, Ok(None));
    // A bad token in the default location is rejected.
    let mut r = Req::get("/x").bearer("garbage");
    assert_eq!(r.run(&a).await, Err(JwtError::BadFormat));
    // CORS preflight skips the check even with a bad token.
    let mut r = Req::get("/x")
        .bearer("garbage")
        .header("origin", "https://app")
        .header("access-control-request-method", "POST");
    r.method = Method::OPTIONS;
    assert_eq!(r.run(&a).await, Ok(None));
}

#[tokio::test]
async fn custom_header_param_cookie_and_forwarding() {
    let key = ec("P-384");
    let set = jwks(&[key.jwk("k", Some("ES384"))]);
    let t = token(&key, "ES384", "k", &claims(ISS, "carol"));
    let locations = "    fromHeaders:\n    - name: X-Jwt-Assertion\n      prefix: \"Token \"\n    fromParams:\n    - my_token\n    fromCookies:\n    - auth-token\n";
    for forward in [false, true] {
        let a = one_rule(
            &set,
            &format!("{locations}    forwardOriginalToken: {forward}\n"),
        );
        let mut r = Req::get("/x").header("x-jwt-assertion", &format!("Token {t}"));
        assert!(r.run(&a).await.expect("header").is_some());
        assert_eq!(r.headers.contains_key("x-jwt-assertion"), forward);

        let mut r = Req::get(&format!("/x?my_token={t}&keep=1"));
        assert!(r.run(&a).await.expect("param").is_some());
        assert_eq!(r.uri.query().expect("query").contains("my_token"), forward);
        assert!(r.uri.query().expect("query").contains("keep=1"));

        // Envoy leaves a cookie token where it is, forwarded or not.
        let mut r = Req::get("/x").header("cookie", &format!("a=1; auth-token={t}; b=2"));
        assert!(r.run(&a).await.expect("cookie").is_some());
        let cookie = r.headers.get("cookie").expect("cookies stay");
        assert_eq!(
            cookie.to_str().expect("ascii"),
            format!("a=1; auth-token={t}; b=2")
        );

        // With explicit locations the defaults are not searched.
        let mut r = Req::get("/x").bearer(&t);
        assert_eq!(r.run(&a).await, Ok(None));
        assert!(r.headers.contains_key("authorization"));
    }
}

#[tokio::test]
async fn token_in_another_issuers_location_is_unknown_issuer() {
    let ka = ec("P-256");
    let kb = ec("P-256");
    let yaml = ra(&format!(
        "  - issuer: https://a\n    jwks: '{}'\n  - issuer: https://b\n    jwks: '{}'\n    fromHeaders:\n    - name: x-b\n",
        jwks(&[ka.jwk("a", None)]),
        jwks(&[kb.jwk("b", None)])
    ));
    let (a, _) = compile(&yaml).expect("compiles");
    let tb = token(&kb, "ES256", "b", &claims("https://b", "u"));
    let ta = token(&ka, "ES256", "a", &claims("https://a", "u"));
    let mut r = Req::get("/x").header("x-b", &tb);
    assert!(r.run(&a).await.expect("b in x-b").is_some());
    let mut r = Req::get("/x").bearer(&tb);
    assert_eq!(r.run(&a).await, Err(JwtError::UnknownIssuer));
    // Both valid: the identity is the first rule's.
    let mut r = Req::get("/x").bearer(&ta).header("x-b", &tb);
    let id = r.run(&a).await.expect("both valid").expect("identity");
    assert_eq!(id.principal, "https://a/u");
    // Each rule is a provider of its own and one succeeding is enough
    // (Istio's requires_any): a bad token where only the other rule looks
    // does not spoil a good one.
    let mut r = Req::get("/x").bearer(&ta).header("x-b", "bad");
    let id = r
        .run(&a)
        .await
        .expect("a's token is enough")
        .expect("identity");
    assert_eq!(id.principal, "https://a/u");
    let mut r = Req::get("/x").bearer(&ta).header("x-b", &ta);
    let id = r
        .run(&a)
        .await
        .expect("a's token is enough")
        .expect("identity");
    assert_eq!(id.principal, "https://a/u");
    // No rule succeeding: the real error beats "issuer is not configured".
    let mut r = Req::get("/x").bearer("bad").header("x-b", &ta);
    assert_eq!(r.run(&a).await, Err(JwtError::BadFormat));
    let mut r = Req::get("/x").bearer(&tb).header("x-b", &ta);
    assert_eq!(r.run(&a).await, Err(JwtError::UnknownIssuer));
    // Within one rule, every token it finds must verify.
    let (one, _) = compile(&ra(&format!(
        "  - issuer: https://a\n    jwks: '{}'\n",
        jwks(&[ka.jwk("a", None)])
    )))
    .expect("compiles");
    let mut r = Req::get("/x?access_token=bad").bearer(&ta);
    assert_eq!(r.run(&one).await, Err(JwtError::BadFormat));
}

#[tokio::test]
async fn two_rules_reading_one_location_report_the_signature_failure() {
    let ka = ec("P-256");
    let kb = ec("P-256");
    let other = ec("P-256");
    let yaml = ra(&format!(
        "  - issuer: https://a\n    jwks: '{}'\n  - issuer: https://b\n    jwks: '{}'\n",
        jwks(&[ka.jwk("a", None)]),
        jwks(&[kb.jwk("b", None)])
    ));
    let (a, _) = compile(&yaml).expect("compiles");
    // a's issuer, signed with another key: rule a fails the signature,
    // rule b the issuer; Envoy reports the signature.
    let forged = token(&other, "ES256", "a", &claims("https://a", "u"));
    let mut r = Req::get("/x").bearer(&forged);
    assert_eq!(r.run(&a).await, Err(JwtError::VerificationFail));
    let good = token(&kb, "ES256", "b", &claims("https://b", "u"));
    let mut r = Req::get("/x").bearer(&good);
    let id = r.run(&a).await.expect("b verifies").expect("identity");
    assert_eq!(id.principal, "https://b/u");
    assert!(!r.headers.contains_key("authorization"));
}

#[tokio::test]
async fn payload_and_claim_headers() {
    let key = ed();
    let a = one_rule(
        &jwks(&[key.jwk("k", None)]),
        "    outputPayloadToHeader: x-jwt-payload\n    outputClaimToHeaders:\n    - header: x-sub\n      claim: sub\n    - header: x-group\n      claim: org.team.group\n    - header: x-admin\n      claim: admin\n    - header: x-level\n      claim: level\n    - header: x-ratio\n      claim: ratio\n    - header: x-obj\n      claim: org\n    - header: x-missing\n      claim: nope\n",
    );
    let mut c = claims(ISS, "dave");
    c["org"] = json!({"team": {"group": "ml"}});
    c["admin"] = json!(true);
    c["level"] = json!(3);
    c["ratio"] = json!(0.5);
    c["azp"] = json!("web-app");
    c["aud"] = json!(["a1", "a2"]);
    let t = token(&key, "EdDSA", "k", &c);
    let mut r = Req::get("/x")
        .bearer(&t)
        .header("x-sub", "spoofed")
        .header("x-missing", "spoofed");
    let id = r.run(&a).await.expect("ok").expect("identity");
    let get = |h: &str| {
        r.headers
            .get(h)
            .map(|v| v.to_str().expect("ascii").to_string())
    };
    let payload_b64 = t.split('.').nth(1).expect("payload");
    assert_eq!(get("x-jwt-payload").as_deref(), Some(payload_b64));
    assert_eq!(get("x-sub").as_deref(), Some("dave"));
    assert_eq!(
        r.headers.get_all("x-sub").iter().count(),
        1,
        "spoofed value removed"
    );
    assert_eq!(get("x-group").as_deref(), Some("ml"));
    assert_eq!(get("x-admin").as_deref(), Some("true"));
    assert_eq!(get("x-level").as_deref(), Some("3"));
    assert_eq!(get("x-ratio").as_deref(), Some("0.500000"));
    assert_eq!(get("x-obj"), None, "objects are not copied");
    assert_eq!(
        get("x-missing"),
        None,
        "spoofed header removed, claim absent"
    );
    assert_eq!(id.presenter.as_deref(), Some("web-app"));
    assert_eq!(id.audiences, vec!["a1", "a2"]);
    assert_eq!(id.claims["org"]["team"]["group"], "ml");

    // Without a token the output headers are still stripped.
    let mut r = Req::get("/x").header("x-jwt-payload", "forged");
    assert_eq!(r.run(&a).await, Ok(None));
    assert!(r.headers.get("x-jwt-payload").is_none());
}

#[test]
fn local_replies_are_envoys() {
    let r = JwtError::Expired.local_reply("http", "test.com", "/v1/chat?x=1");
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(&r.body[..], b"Jwt is expired");
    assert_eq!(r.headers["content-type"], "text/plain");
    assert_eq!(
        r.headers["www-authenticate"],
        "Bearer realm=\"http://test.com/v1/chat?x=1\", error=\"invalid_token\""
    );
    let r = JwtError::AudienceNotAllowed.local_reply("https", "h", "/");
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(&r.body[..], b"Audiences in Jwt are not allowed");
    let r = JwtError::Missing.local_reply("https", "h", "/");
    assert_eq!(r.headers["www-authenticate"], "Bearer realm=\"https://h/\"");
    let long = format!("/{}", "a".repeat(400));
    let r = JwtError::VerificationFail.local_reply("http", "h", &long);
    let v = r.headers["www-authenticate"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(
        v.contains(&format!("http://h/{}\"", "a".repeat(255))),
        "{v}"
    );
}

#[tokio::test]
async fn space_delimited_claims_become_lists_for_authorization_only() {
    let key = ed();
    let a = one_rule(
        &jwks(&[key.jwk("k", None)]),
        "    spaceDelimitedClaims: [roles, scope]\n    outputClaimToHeaders:\n    - header: x-scope\n      claim: scope\n",
    );
    let mut c = claims(ISS, "erin");
    c["scope"] = json!("read  write");
    c["permission"] = json!("p1 p2");
    c["roles"] = json!("admin ops");
    c["team"] = json!("ml infra");
    c["org"] = json!({"scope": "a b"});
    c["scp"] = json!(["x", "y"]);
    let t = token(&key, "EdDSA", "k", &c);
    let mut r = Req::get("/x").bearer(&t);
    let id = r.run(&a).await.expect("ok").expect("identity");
    assert_eq!(id.claims["scope"], json!(["read", "write"]));
    assert_eq!(id.claims["permission"], json!(["p1", "p2"]));
    assert_eq!(
        id.claims["roles"],
        json!(["admin", "ops"]),
        "listed by the rule"
    );
    assert_eq!(id.claims["team"], "ml infra", "not listed: one string");
    assert_eq!(id.claims["org"]["scope"], "a b", "only top-level claims");
    assert_eq!(id.claims["scp"], json!(["x", "y"]));
    // Headers carry the claim as the token has it.
    assert_eq!(r.headers["x-scope"], "read  write");

    // Without the field, scope and permission are still split.
    let a = one_rule(&jwks(&[key.jwk("k", None)]), "");
    let id = Req::get("/x")
        .bearer(&t)
        .run(&a)
        .await
        .expect("ok")
        .expect("identity");
    assert_eq!(id.claims["scope"], json!(["read", "write"]));
    assert_eq!(id.claims["roles"], "admin ops");
}

/// Several rules may name one issuer (one RequestAuthentication in the root
/// namespace, another for the gateway): istiod makes each its own provider
/// and a token passes when any accepts it.
#[tokio::test]
async fn rules_naming_one_issuer_are_each_a_provider() {
    let key = ec("P-256");
    let set = jwks(&[key.jwk("k", None)]);
    let (a, _) = compile(&format!(
        "{}\n---\n{}",
        ra(&format!(
            "  - issuer: {ISS}\n    jwks: '{set}'\n    audiences: [team-a]\n"
        )),
        ra(&format!(
            "  - issuer: {ISS}\n    jwks: '{set}'\n    audiences: [team-b]\n    fromHeaders: [{{name: x-token}}]\n"
        ))
        .replace("name: jwt\n", "name: jwt-b\n")
    ))
    .expect("two rules for one issuer compile");
    assert_eq!(a.rules.len(), 2);
    let with_aud = |aud: &str| {
        let mut c = claims(ISS, "u");
        c["aud"] = json!(aud);
        token(&key, "ES256", "k", &c)
    };
    // Each rule reads its own locations and wants its own audience.
    assert!(verify(&a, &with_aud("team-a")).await.is_ok());
    let b = Req::get("/x")
        .header("x-token", &with_aud("team-b"))
        .run(&a)
        .await;
    assert!(matches!(b, Ok(Some(_))), "{b:?}");
    assert_eq!(
        verify(&a, &with_aud("team-b")).await,
        Err(JwtError::AudienceNotAllowed),
        "the bearer header belongs to the team-a rule"
    );
}

/// Envoy's extractor: the token ends at the first character outside
/// `[A-Za-z0-9-_.]` after the prefix, and repeated headers are joined with
/// `,`, the first token read.
#[tokio::test]
async fn a_token_ends_where_envoy_ends_it() {
    let key = ec("P-256");
    let a = one_rule(&jwks(&[key.jwk("k", None)]), "");
    let t = token(&key, "ES256", "k", &claims(ISS, "u"));
    for value in [
        format!("Bearer {t}, extra"),
        format!("Bearer {t};x"),
        format!("Bearer   {t} trailing"),
    ] {
        let got = Req::get("/x").header("authorization", &value).run(&a).await;
        assert!(matches!(got, Ok(Some(_))), "{value}: {got:?}");
    }
    // Two Authorization headers: joined, the first token counts.
    let got = Req::get("/x")
        .bearer(&t)
        .header("authorization", "Bearer not-a-token")
        .run(&a)
        .await;
    assert!(matches!(got, Ok(Some(_))), "{got:?}");
    let got = Req::get("/x")
        .header("authorization", "Bearer not-a-token")
        .bearer(&t)
        .run(&a)
        .await;
    assert_eq!(got, Err(JwtError::BadFormat));
}

#[test]
fn config_errors_name_the_field() {
    let key = ec("P-256");
    let set = jwks(&[key.jwk("k", None)]);
    let err = |rules: &str| compile(&ra(rules)).expect_err("should fail");
    let e = err(&format!("  - issuer: {ISS}\n    jwks: 'not json'\n"));
    assert!(
        e.contains("spec.jwtRules[0].jwks: Jwks is an invalid JSON"),
        "{e}"
    );
    let e = err(&format!(
        "  - issuer: {ISS}\n    jwks: '{{\"keys\": [{{\"kty\": \"oct\", \"alg\": \"HS256\"}}]}}'\n"
    ));
    assert!(
        e.contains("jwks: Jwks doesn't have any valid public key") && e.contains("[k]"),
        "{e}"
    );
    let e = err(&format!(
        "  - issuer: {ISS}\n    jwks: '{set}'\n    jwksUri: https://x/jwks\n"
    ));
    assert!(e.contains("only one of jwks or jwksUri"), "{e}");
    let e = err("  - issuer: issuer-without-url\n");
    assert!(e.contains("needs jwks or jwksUri"), "{e}");
    let e = err(&format!("  - issuer: {ISS}\n    jwksUri: ftp://x/jwks\n"));
    assert!(
        e.contains("jwksUri") && e.contains("http:// or https://"),
        "{e}"
    );
    let e = err(&format!(
        "  - issuer: {ISS}\n    jwks: '{set}'\n    timeout: soon\n"
    ));
    assert!(e.contains("spec.jwtRules[0].timeout"), "{e}");
    let e = err(&format!(
        "  - issuer: {ISS}\n    jwks: '{set}'\n    outputClaimToHeaders:\n    - header: 'x y'\n      claim: sub\n"
    ));
    assert!(e.contains("outputClaimToHeaders[0].header"), "{e}");
    let e = err(&format!(
        "  - issuer: {ISS}\n    jwks: '{set}'\n    fromHeaders:\n    - name: ''\n"
    ));
    assert!(e.contains("fromHeaders[0].name"), "{e}");

    let target = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: t\n  namespace: istio-system\nspec:\n  targetRefs:\n  - kind: Gateway\n    group: gateway.networking.k8s.io\n    name: gw\n";
    let e = compile(target).expect_err("targetRefs rejected");
    assert!(e.contains("spec.targetRefs"), "{e}");

    // Skipped keys are warnings, not errors; selectors and namespaces scope rules.
    let (a, warnings) = compile(&ra(&format!(
        "  - issuer: {ISS}\n    jwks: '{}'\n",
        jwks(&[
            key.jwk("k", None),
            json!({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"})
        ])
    )))
    .expect("compiles");
    assert_eq!(a.rules.len(), 1);
    assert!(
        warnings.iter().any(|w| w.contains("not a point on P-521")),
        "{warnings:?}"
    );
    let other = ra(&format!("  - issuer: {ISS}\n    jwks: '{set}'\n"))
        .replace("istio: ingressgateway", "app: other");
    assert!(compile(&other).expect("compiles").0.is_empty());
    let elsewhere = ra(&format!("  - issuer: {ISS}\n    jwks: '{set}'\n"))
        .replace("namespace: istio-system", "namespace: team-a");
    assert!(compile(&elsewhere).expect("compiles").0.is_empty());
}

#[test]
fn jwks_parsing() {
    let key = rsa(RSA_1);
    let (set, skipped) = Jwks::parse(&jwks(&[
        key.jwk("r", Some("RS256")),
        json!({"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"}),
        json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"}),
        json!({"kty": "EC", "alg": "ES256", "crv": "P-384", "x": "AA", "y": "AA"}),
        json!({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}),
        json!({"kty": "weird"}),
        json!("not an object"),
    ]))
    .expect("one key is usable");
    assert_eq!(set.keys.len(), 1);
    assert_eq!(skipped.len(), 6, "{skipped:?}");
    assert!(skipped[0].contains("use"));
    assert!(skipped[1].contains("2048"));
    assert!(skipped[2].contains("not compatible"));
    assert!(skipped[3].contains("wrong length"));
    assert_eq!(
        Jwks::parse("{}").unwrap_err().to_string(),
        "Jwks does not have [keys] field"
    );
    assert_eq!(
        Jwks::parse("{\"keys\": 1}").unwrap_err().to_string(),
        "[keys] in Jwks is not an array"
    );
}

// ---------------------------------------------------------------- remote keys

/// A JWKS server over HTTPS whose answer the test changes.
struct JwksServer {
    server: super::test_support::Server,
    reply: Arc<Mutex<Reply>>,
    pki: TestPki,
}

async fn jwks_server(body: String) -> JwksServer {
    let pki = test_pki();
    let reply = Arc::new(Mutex::new(Reply::new(200, body)));
    let r = reply.clone();
    let server = serve(Some(pki.server.clone()), move |seen| {
        if seen.uri.path() == "/.well-known/openid-configuration" {
            let host = seen.headers["host"].to_str().expect("host").to_string();
            return Reply::new(
                200,
                json!({"jwks_uri": format!("https://{host}/keys")}).to_string(),
            );
        }
        r.lock().expect("lock").clone()
    })
    .await;
    JwksServer { server, reply, pki }
}

impl JwksServer {
    fn set(&self, reply: Reply) {
        *self.reply.lock().expect("lock") = reply;
    }
    fn uri(&self) -> String {
        format!("https://127.0.0.1:{}/keys", self.server.addr.port())
    }
    fn settings(&self) -> FetchSettings {
        let mut s = FetchSettings::with_roots([self.pki.ca.clone()]).expect("roots");
        s.refresh_interval = Duration::from_millis(150);
        s.retry_initial = Duration::from_millis(50);
        s.retry_max = Duration::from_millis(100);
        s
    }
}

fn remote_rule(uri: &str, extra: &str) -> Auth {
    compile(&ra(&format!(
        "  - issuer: {ISS}\n    jwksUri: {uri}\n{extra}"
    )))
    .unwrap_or_else(|e| panic!("{e}"))
    .0
}

#[tokio::test]
async fn jwks_uri_fetch_rotation_failure_and_timeout() {
    let k1 = rsa(RSA_1);
    let k2 = ec("P-256");
    let srv = jwks_server(jwks(&[k1.jwk("one", Some("RS256"))])).await;
    let a = remote_rule(&srv.uri(), "    timeout: 1s\n");
    let t1 = token(&k1, "RS256", "one", &claims(ISS, "u1"));
    let t2 = token(&k2, "ES256", "two", &claims(ISS, "u2"));

    assert_eq!(
        verify(&a, &t1).await,
        Err(JwtError::JwksFetchFail),
        "not started"
    );
    a.start(&srv.settings(), None);
    assert_eq!(
        verify(&a, &t1).await,
        Ok(format!("{ISS}/u1")),
        "waits for the first fetch"
    );
    assert_eq!(verify(&a, &t2).await, Err(JwtError::JwksKidAlgMismatch));

    // Key rotation: the next refresh picks up the new set.
    srv.set(Reply::new(200, jwks(&[k2.jwk("two", None)])));
    eventually("rotated key accepted", || async {
        verify(&a, &t2).await.is_ok()
    })
    .await;
    assert_eq!(verify(&a, &t1).await, Err(JwtError::JwksKidAlgMismatch));

    // Failures are counted and logged; the last good keys stay.
    srv.set(Reply::new(500, "boom"));
    let failed_before = a.jwks_status()[0].fetch_failed;
    eventually("failures counted", || async {
        a.jwks_status()[0].fetch_failed >= failed_before + 2
    })
    .await;
    assert!(verify(&a, &t2).await.is_ok(), "old keys kept");
    let st = &a.jwks_status()[0];
    assert!(
        st.last_error.as_deref().unwrap_or("").contains("500"),
        "{st:?}"
    );
    assert!(st.fetch_ok >= 2 && st.keys == 1, "{st:?}");

    // A slow server times out (counted as a failure) and keys stay.
    srv.set(Reply::new(200, jwks(&[k1.jwk("one", None)])).delay(Duration::from_secs(4)));
    let failed_before = a.jwks_status()[0].fetch_failed;
    eventually("timeout counted", || async {
        a.jwks_status()[0].fetch_failed > failed_before
            && a.jwks_status()[0]
                .last_error
                .as_deref()
                .unwrap_or("")
                .contains("no answer")
    })
    .await;
    assert!(verify(&a, &t2).await.is_ok());

    // Recovery.
    srv.set(Reply::new(200, jwks(&[k1.jwk("one", None)])));
    eventually("recovered", || async { verify(&a, &t1).await.is_ok() }).await;
}

#[tokio::test]
async fn first_fetch_failure_timeout_untrusted_ca_and_reload() {
    let k = ec("P-256");
    let t = token(&k, "ES256", "k", &claims(ISS, "u"));
    let srv = jwks_server(jwks(&[k.jwk("k", None)])).await;

    // A first fetch that times out: the request fails with Envoy's text.
    srv.set(Reply::new(200, jwks(&[k.jwk("k", None)])).delay(Duration::from_secs(3)));
    let a = remote_rule(&srv.uri(), "    timeout: 500ms\n");
    a.start(&srv.settings(), None);
    assert_eq!(verify(&a, &t).await, Err(JwtError::JwksFetchFail));
    srv.set(Reply::new(200, jwks(&[k.jwk("k", None)])));
    eventually("retry succeeds", || async { verify(&a, &t).await.is_ok() }).await;

    // A certificate from an unknown CA is refused.
    let b = remote_rule(&srv.uri(), "");
    b.start(&FetchSettings::with_roots([]).expect("roots"), None);
    assert_eq!(verify(&b, &t).await, Err(JwtError::JwksFetchFail));
    assert!(
        b.jwks_status()[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("TLS"),
        "{:?}",
        b.jwks_status()
    );

    // A reloaded configuration keeps the keys of the one it replaces.
    srv.set(Reply::new(503, "down"));
    let c = remote_rule(&srv.uri(), "");
    c.start(&srv.settings(), Some(&a));
    assert!(verify(&c, &t).await.is_ok(), "inherited keys");
    drop(a);
}

#[tokio::test]
async fn openid_discovery_when_no_jwks_is_given() {
    let k = ed();
    let srv = jwks_server(jwks(&[k.jwk("d", None)])).await;
    let issuer = format!("https://127.0.0.1:{}", srv.server.addr.port());
    let (a, _) = compile(&ra(&format!("  - issuer: {issuer}\n"))).expect("compiles");
    a.start(&srv.settings(), None);
    let t = token(&k, "EdDSA", "d", &claims(&issuer, "u"));
    assert_eq!(verify(&a, &t).await, Ok(format!("{issuer}/u")));
    let paths: Vec<String> = srv
        .server
        .requests()
        .iter()
        .map(|s| s.uri.path().to_string())
        .collect();
    assert_eq!(paths[..2], ["/.well-known/openid-configuration", "/keys"]);
}

/// Istio's published demo token and key set (security/tools/jwt/samples),
/// signed by another implementation: the principal Istio documents.
#[tokio::test]
async fn istio_demo_token_verifies() {
    const JWKS: &str = r#"{ "keys":[ {"e":"AQAB","kid":"DHFbpoIUqrY8t2zpA2qXfCmr5VO5ZEr4RzHU_-envvQ","kty":"RSA","n":"xAE7eB6qugXyCAG3yhh7pkDkT65pHymX-P7KfIupjf59vsdo91bSP9C8H07pSAGQO1MV_xFj9VswgsCg4R6otmg5PV2He95lZdHtOcU5DXIg_pbhLdKXbi66GlVeK6ABZOUW3WYtnNHD-91gVuoeJT_DwtGGcp4ignkgXfkiEm4sw-4sfb4qdt5oLbyVpmW6x9cfa7vs2WTfURiCrBoUqgBo_-4WTiULmmHSGZHOjzwa8WtrtOQGsAFjIbno85jp6MnGGGZPYZbDAa_b3y5u-YpW7ypZrvD8BgtKVjgtQgZhLAGezMt0ua3DRrWnKqTZ0BJ_EyxOGuHJrLsn00fnMQ"}]}"#;
    const TOKEN: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6IkRIRmJwb0lVcXJZOHQyenBBMnFYZkNtcjVWTzVaRXI0UnpIVV8tZW52dlEiLCJ0eXAiOiJKV1QifQ.eyJleHAiOjQ2ODU5ODk3MDAsImZvbyI6ImJhciIsImlhdCI6MTUzMjM4OTcwMCwiaXNzIjoidGVzdGluZ0BzZWN1cmUuaXN0aW8uaW8iLCJzdWIiOiJ0ZXN0aW5nQHNlY3VyZS5pc3Rpby5pbyJ9.CfNnxWP2tcnR9q0vxyxweaF3ovQYHYZl82hAUsn21bwQd9zP7c-LS9qd_vpdLG4Tn1A15NxfCjp5f7QNBUo-KC9PJqYpgGbaXhaGx7bEdFWjcwv3nZzvc7M__ZpaCERdwU7igUmJqYGBYQ51vr2njU9ZimyKkfDe3axcyiBZde7G6dabliUosJvvKOPcKIWPccCgefSj_GNfwIip3-SsFdlR7BtbVUcqR-yv-XOxJ3Uc1MI0tz3uMiiZcyPV7sNCU4KRnemRIMHVOfuvHsU60_GhGbiSFzgPTAa9WTltbnarTbxudb_YEOx12JiwYToeX0DCPb43W1tzIBxgm8NxUg";
    let yaml = ra(&format!(
        "  - issuer: \"testing@secure.istio.io\"\n    jwks: '{JWKS}'\n"
    ));
    let (a, _) = compile(&yaml).expect("compiles");
    let id = Req::get("/headers")
        .bearer(TOKEN)
        .run(&a)
        .await
        .expect("valid")
        .expect("identity");
    assert_eq!(
        id.principal,
        "testing@secure.istio.io/testing@secure.istio.io"
    );
    assert_eq!(id.claims["foo"], "bar");
}

#[tokio::test]
async fn hmac_keys_verify_only_hmac_tokens() {
    let secret = Key::Hmac(b"a secret of thirty-two bytes, ok".to_vec());
    let rsa_key = rsa(RSA_1);
    // One HMAC key and one RSA key, neither with `alg`.
    let a = one_rule(&jwks(&[secret.jwk("", None), rsa_key.jwk("", None)]), "");
    let c = claims(ISS, "hal");
    assert_eq!(
        verify(&a, &token(&secret, "HS256", "", &c)).await,
        Ok(format!("{ISS}/hal"))
    );
    assert_eq!(
        verify(&a, &token(&rsa_key, "RS256", "", &c)).await,
        Ok(format!("{ISS}/hal"))
    );
    // Another secret, or an HMAC over the RSA key's public modulus, fails.
    let wrong = Key::Hmac(b"not the secret".to_vec());
    assert_eq!(
        verify(&a, &token(&wrong, "HS256", "", &c)).await,
        Err(JwtError::VerificationFail)
    );
    let Value::String(n) = rsa_key.jwk("", None)["n"].clone() else {
        panic!("n");
    };
    let confused = Key::Hmac(n.into_bytes());
    assert_eq!(
        verify(&a, &token(&confused, "HS256", "", &c)).await,
        Err(JwtError::VerificationFail)
    );
    // An HMAC key with an RSA `alg` is skipped; the secret never shows.
    let (set, skipped) = Jwks::parse(&jwks(&[
        json!({"kty": "oct", "alg": "RS256", "k": "c2VjcmV0"}),
        secret.jwk("h", Some("HS256")),
    ]))
    .expect("parses");
    assert_eq!(set.keys.len(), 1);
    assert!(skipped[0].contains("[HS]"), "{skipped:?}");
    assert!(!format!("{set:?}").contains("secret"), "{set:?}");
}
