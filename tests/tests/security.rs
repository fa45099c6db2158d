//! Security end to end over real sockets: RequestAuthentication with keys
//! generated here (valid, expired, wrong issuer, wrong audience, bad
//! signature, missing token under `requestPrincipals: ["*"]`), and CUSTOM
//! authorization against small HTTP and gRPC authorizers this test runs.

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use llmgw::policy::extauthz_proto as pb;
use llmgw_tests::{
    client::{SEED_REQUEST, post},
    gateway::{Gateway, GatewayBuilder, examples},
    mock::MockProvider,
};
use ring::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _},
};
use serde_json::json;

const API_KEY: &str = "sk-test-0123456789";
const ISSUER: &str = "https://issuer.test";

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// An ES256 signing key and its JWKS.
struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Signer {
    fn new() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Signer { key, rng }
    }

    fn jwks(&self) -> String {
        let point = self.key.public_key().as_ref(); // 0x04 || x || y
        json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        }]})
        .to_string()
    }

    fn token(&self, claims: serde_json::Value) -> String {
        let header = b64(json!({"alg": "ES256", "kid": "k1", "typ": "JWT"})
            .to_string()
            .as_bytes());
        let payload = b64(claims.to_string().as_bytes());
        let input = format!("{header}.{payload}");
        let sig = self.key.sign(&self.rng, input.as_bytes()).unwrap();
        format!("{input}.{}", b64(sig.as_ref()))
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Setup {
    mock: MockProvider,
    gw: Gateway,
    _dir: tempfile::TempDir,
}

/// The quickstart plus `extra` YAML, with `args` for `llmgw run`.
async fn setup(extra: &str, args: Vec<String>) -> Setup {
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    mock.pki.write_ca(&ca).unwrap();
    let extra_path = dir.path().join("security.yaml");
    std::fs::write(&extra_path, extra).unwrap();
    let mut b = GatewayBuilder::new()
        .upstream(mock.addr, ca)
        .config(examples().join("quickstart"))
        .config(extra_path);
    for a in args {
        b = b.arg(a);
    }
    let gw = tokio::task::spawn_blocking(move || b.start())
        .await
        .unwrap();
    Setup {
        mock,
        gw,
        _dir: dir,
    }
}

fn jwt_config(jwks: &str) -> String {
    format!(
        r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  jwtRules:
  - issuer: {ISSUER}
    audiences: [llmgw]
    jwks: '{jwks}'
    outputClaimToHeaders: [{{header: x-jwt-sub, claim: sub}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-jwt, namespace: istio-system}}
spec:
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: ["*"]}}}}]
"#
    )
}

#[tokio::test]
async fn jwt_decides_who_reaches_the_provider() {
    let signer = Signer::new();
    let s = setup(&jwt_config(&signer.jwks()), vec![]).await;
    let url = s.gw.url();
    let claims = |iss: &str, aud: &str, exp: u64| json!({"iss": iss, "sub": "alice", "aud": [aud], "exp": exp, "iat": now() - 10});
    let bearer = |t: &str| format!("Bearer {t}");

    // Valid: served; the provider gets its API key (not the token) and the claim header.
    let good = signer.token(claims(ISSUER, "llmgw", now() + 600));
    let a = post(
        &url,
        "test.com",
        SEED_REQUEST,
        &[("authorization", &bearer(&good))],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let r = s.mock.requests().pop().expect("the provider was called");
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {API_KEY}").as_str())
    );
    assert_eq!(r.header("x-jwt-sub"), Some("alice"));
    assert!(
        !format!("{:?}", r.headers).contains(&good),
        "the token is not forwarded"
    );

    // Each failure gets Envoy's status and text, and never reaches the provider.
    let before = s.mock.requests().len();
    let mut tampered = signer.token(claims(ISSUER, "llmgw", now() + 600));
    tampered.pop();
    tampered.push('A');
    let cases: Vec<(String, StatusCode, &str)> = vec![
        (
            signer.token(claims(ISSUER, "llmgw", now() - 3600)),
            StatusCode::UNAUTHORIZED,
            "Jwt is expired",
        ),
        (
            signer.token(claims("https://other.test", "llmgw", now() + 600)),
            StatusCode::UNAUTHORIZED,
            "Jwt issuer is not configured",
        ),
        (
            signer.token(claims(ISSUER, "someone-else", now() + 600)),
            StatusCode::FORBIDDEN,
            "Audiences in Jwt are not allowed",
        ),
        (
            Signer::new().token(claims(ISSUER, "llmgw", now() + 600)),
            StatusCode::UNAUTHORIZED,
            "Jwt verification fails",
        ),
        (
            "not-a-jwt".to_string(),
            StatusCode::UNAUTHORIZED,
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        ),
    ];
    for (token, status, text) in cases {
        let a = post(
            &url,
            "test.com",
            SEED_REQUEST,
            &[("authorization", &bearer(&token))],
        )
        .await;
        assert_eq!((a.status, a.text().as_str()), (status, text));
        if status == StatusCode::UNAUTHORIZED {
            let www = a.headers["www-authenticate"].to_str().unwrap();
            assert!(www.starts_with("Bearer realm=\"http://test.com/"), "{www}");
            assert!(www.contains("error=\"invalid_token\""), "{www}");
        }
    }
    // Missing: no identity, and the ALLOW policy wants one.
    let a = post(&url, "test.com", SEED_REQUEST, &[]).await;
    assert_eq!(
        (a.status, a.text().as_str()),
        (StatusCode::FORBIDDEN, "RBAC: access denied")
    );
    assert_eq!(
        s.mock.requests().len(),
        before,
        "refused requests never reach the provider"
    );
}

/// A small ext_authz HTTP server: allows requests with `x-allow: yes`
/// (adding `x-authz-user` for upstream and `x-authz-decision` for the
/// client), denies the rest with 403, a body and `x-reason`.
struct Authorizer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<(String, String, http::HeaderMap)>>>,
}

impl Authorizer {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let log = log.clone();
                        async move {
                            log.lock().unwrap().push((
                                req.method().to_string(),
                                req.uri().to_string(),
                                req.headers().clone(),
                            ));
                            let allow = req.headers().get("x-allow").is_some_and(|v| v == "yes");
                            let resp = if allow {
                                Response::builder()
                                    .header("x-authz-user", "alice")
                                    .header("x-authz-decision", "allowed")
                                    .body(Full::new(Bytes::new()))
                            } else {
                                Response::builder()
                                    .status(403)
                                    .header("x-reason", "not on the list")
                                    .header("content-type", "text/plain")
                                    .body(Full::new(Bytes::from_static(b"nope")))
                            };
                            Ok::<_, Infallible>(resp.unwrap())
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
        Authorizer { addr, seen }
    }
}

fn write_mesh(dir: &Path, authz: SocketAddr, dead_port: u16) -> PathBuf {
    let path = dir.join("mesh.yaml");
    std::fs::write(
        &path,
        format!(
            r#"
extensionProviders:
- name: my-authz
  envoyExtAuthzHttp:
    service: 127.0.0.1
    port: {}
    pathPrefix: /check
    includeRequestHeadersInCheck: [x-allow]
    headersToUpstreamOnAllow: [x-authz-user]
    headersToDownstreamOnAllow: [x-authz-decision]
    headersToDownstreamOnDeny: [x-reason, content-type]
- name: down
  envoyExtAuthzHttp:
    service: 127.0.0.1
    port: {dead_port}
    timeout: 2s
    statusOnError: "503"
"#,
            authz.port()
        ),
    )
    .unwrap();
    path
}

/// CUSTOM for test.com, and a DENY the authorizer's verdict comes before.
const CUSTOM_POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: istio-system}
spec:
  action: CUSTOM
  provider: {name: my-authz}
  rules: [{to: [{operation: {hosts: [test.com]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-flagged, namespace: istio-system}
spec:
  action: DENY
  rules:
  - when: [{key: "request.headers[x-allow]", values: ["no"]}]
  - when: [{key: "request.headers[x-deny]", values: ["yes"]}]
"#;

/// CUSTOM with an authorizer nobody listens for.
const CUSTOM_DOWN: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-down, namespace: istio-system}
spec:
  action: CUSTOM
  provider: {name: down}
  rules: [{to: [{operation: {hosts: [dashscope.aliyuncs.com]}}]}]
"#;

#[tokio::test]
async fn custom_authorization_asks_the_external_authorizer() {
    let authz = Authorizer::start().await;
    let dead = llmgw_tests::free_port();
    let mesh_dir = tempfile::tempdir().unwrap();
    let mesh = write_mesh(mesh_dir.path(), authz.addr, dead);
    let mesh_args = vec!["--mesh-config".to_string(), mesh.display().to_string()];
    let s = setup(CUSTOM_POLICIES, mesh_args.clone()).await;
    let url = s.gw.url();

    // Allowed: the authorizer's headers reach the provider and the client.
    let a = post(&url, "test.com", SEED_REQUEST, &[("x-allow", "yes")]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.headers["x-authz-decision"], "allowed");
    let r = s.mock.requests().pop().unwrap();
    assert_eq!(r.header("x-authz-user"), Some("alice"));
    let (method, uri, headers) = authz.seen.lock().unwrap()[0].clone();
    assert_eq!(method, "POST");
    assert_eq!(uri, "/check/");
    assert_eq!(headers["x-allow"], "yes");
    assert_eq!(headers["host"], "test.com");

    // Denied: the authorizer's status, body and listed headers; no provider
    // call. The DENY policy matches too, but CUSTOM is asked first.
    let calls = s.mock.requests().len();
    let a = post(&url, "test.com", SEED_REQUEST, &[("x-allow", "no")]).await;
    assert_eq!(
        (a.status, a.text().as_str()),
        (StatusCode::FORBIDDEN, "nope")
    );
    assert_eq!(a.headers["x-reason"], "not on the list");
    assert_eq!(s.mock.requests().len(), calls);

    // Allowed by the authorizer, then denied by the DENY policy.
    let checks = authz.seen.lock().unwrap().len();
    let a = post(
        &url,
        "test.com",
        SEED_REQUEST,
        &[("x-allow", "yes"), ("x-deny", "yes")],
    )
    .await;
    assert_eq!(
        (a.status, a.text().as_str()),
        (StatusCode::FORBIDDEN, "RBAC: access denied")
    );
    assert_eq!(authz.seen.lock().unwrap().len(), checks + 1);
    assert_eq!(s.mock.requests().len(), calls);

    // Every check is counted by provider and result, and a reload carries
    // the counts on (the series never go backwards).
    let counted = |metrics: &str| {
        for line in [
            "llmgw_ext_authz_checks_total{provider=\"my-authz\",result=\"allowed\"} 2",
            "llmgw_ext_authz_checks_total{provider=\"my-authz\",result=\"denied\"} 1",
        ] {
            assert!(
                metrics.lines().any(|l| l == line),
                "no {line:?} in:\n{metrics}"
            );
        }
    };
    counted(&s.gw.metrics());
    let reloads = |m: &str| m.contains("llmgw_config_reloads_total{result=\"success\"} 1");
    s.gw.signal("HUP");
    let reloaded = llmgw_tests::eventually(std::time::Duration::from_secs(10), || async {
        reloads(&s.gw.metrics()).then_some(())
    })
    .await;
    assert!(reloaded.is_some(), "no reload: {}", s.gw.stderr());
    counted(&s.gw.metrics());

    // Unreachable authorizer without failOpen: statusOnError.
    let s = setup(CUSTOM_DOWN, mesh_args).await;
    let a = post(&s.gw.url(), "dashscope.aliyuncs.com", SEED_REQUEST, &[]).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text());
    assert!(s.mock.requests().is_empty());
    let metrics = s.gw.metrics();
    let line = "llmgw_ext_authz_checks_total{provider=\"down\",result=\"error\"} 1";
    assert!(
        metrics.lines().any(|l| l == line),
        "no {line:?} in:\n{metrics}"
    );
}

#[tokio::test]
async fn custom_policy_naming_an_unknown_provider_is_a_startup_error() {
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    mock.pki.write_ca(&ca).unwrap();
    let p = dir.path().join("p.yaml");
    std::fs::write(&p, CUSTOM_POLICIES).unwrap();
    let b = GatewayBuilder::new()
        .upstream(mock.addr, ca)
        .config(examples().join("quickstart"))
        .config(p)
        .no_wait();
    let mut gw = tokio::task::spawn_blocking(move || b.start())
        .await
        .unwrap();
    let status = gw
        .wait_exit(std::time::Duration::from_secs(20))
        .expect("llmgw exits");
    assert!(!status.success());
    let err = gw.stderr();
    assert!(
        err.contains("AuthorizationPolicy istio-system/ext"),
        "{err}"
    );
    assert!(err.contains("spec.provider.name"), "{err}");
}

/// A small gRPC `envoy.service.auth.v3.Authorization/Check` server (HTTP/2
/// cleartext): allows checks whose headers have `x-allow: yes` (adding
/// `x-authz-user` upstream and `x-authz-decision` for the client), denies
/// the rest with 401, `www-authenticate` and a body. Keeps every check.
async fn grpc_authorizer() -> (SocketAddr, Arc<Mutex<Vec<pb::CheckRequest>>>) {
    use http_body_util::BodyExt as _;
    use prost::Message as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let log = log.clone();
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let check = pb::CheckRequest::decode(&body[5..]).unwrap();
                        let allow = check
                            .attributes
                            .as_ref()
                            .and_then(|a| a.request.as_ref())
                            .and_then(|r| r.http.as_ref())
                            .is_some_and(|h| h.headers.get("x-allow").is_some_and(|v| v == "yes"));
                        log.lock().unwrap().push(check);
                        let header = |k: &str, v: &str| pb::HeaderValueOption {
                            header: Some(pb::HeaderValue {
                                key: k.into(),
                                value: v.into(),
                                raw_value: Vec::new(),
                            }),
                            append: None,
                            append_action: 0,
                        };
                        let answer = if allow {
                            pb::CheckResponse {
                                status: Some(pb::RpcStatus::default()),
                                denied_response: None,
                                ok_response: Some(pb::OkHttpResponse {
                                    headers: vec![header("x-authz-user", "alice")],
                                    headers_to_remove: vec![],
                                    response_headers_to_add: vec![header(
                                        "x-authz-decision",
                                        "allowed",
                                    )],
                                }),
                            }
                        } else {
                            pb::CheckResponse {
                                status: Some(pb::RpcStatus {
                                    code: 16,
                                    message: "who?".into(),
                                }),
                                denied_response: Some(pb::DeniedHttpResponse {
                                    status: Some(pb::HttpStatus { code: 401 }),
                                    headers: vec![header("www-authenticate", "Bearer")],
                                    body: "nope".into(),
                                }),
                                ok_response: None,
                            }
                        };
                        let mut framed = vec![0u8];
                        framed.extend_from_slice(&(answer.encoded_len() as u32).to_be_bytes());
                        answer.encode(&mut framed).unwrap();
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        let body = Full::new(Bytes::from(framed))
                            .with_trailers(async move { Some(Ok(trailers)) });
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", "application/grpc")
                                .body(body)
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn custom_authorization_over_grpc() {
    let (addr, seen) = grpc_authorizer().await;
    let mesh_dir = tempfile::tempdir().unwrap();
    let mesh = mesh_dir.path().join("mesh.yaml");
    std::fs::write(
        &mesh,
        format!(
            "extensionProviders:\n- name: my-authz\n  envoyExtAuthzGrpc:\n    service: authz/127.0.0.1\n    port: {}\n    timeout: 2s\n",
            addr.port()
        ),
    )
    .unwrap();
    let policy = CUSTOM_POLICIES.split("---").next().unwrap().to_string();
    let s = setup(
        &policy,
        vec!["--mesh-config".into(), mesh.display().to_string()],
    )
    .await;
    let url = s.gw.url();

    let a = post(&url, "test.com", SEED_REQUEST, &[("x-allow", "yes")]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.headers["x-authz-decision"], "allowed");
    let upstream = s.mock.requests().pop().unwrap();
    assert_eq!(upstream.header("x-authz-user"), Some("alice"));
    let check = seen.lock().unwrap()[0].clone();
    let attrs = check.attributes.unwrap();
    let http = attrs.request.unwrap().http.unwrap();
    assert_eq!(http.method, "POST");
    assert_eq!(http.host, "test.com");
    assert_eq!(http.path, "/");
    assert_eq!(http.protocol, "HTTP/1.1");
    assert_eq!(Some(http.id.as_str()), upstream.header("x-request-id"));
    // The headers as Envoy's filters see them: the connection manager's
    // additions included.
    assert_eq!(
        http.headers.get("x-forwarded-for").map(String::as_str),
        Some("127.0.0.1")
    );
    assert_eq!(
        http.headers.get("x-forwarded-proto").map(String::as_str),
        Some("http")
    );
    assert_eq!(http.headers.get("x-request-id"), Some(&http.id));
    assert!(
        http.headers.contains_key("content-length"),
        "{:?}",
        http.headers
    );
    let source = attrs
        .source
        .unwrap()
        .address
        .unwrap()
        .socket_address
        .unwrap();
    assert_eq!(source.address, "127.0.0.1");
    let dest = attrs
        .destination
        .unwrap()
        .address
        .unwrap()
        .socket_address
        .unwrap();
    assert_eq!(
        Some(dest.port_value),
        url.rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
    );

    let calls = s.mock.requests().len();
    let a = post(&url, "test.com", SEED_REQUEST, &[("x-allow", "no")]).await;
    assert_eq!(
        (a.status, a.text().as_str()),
        (StatusCode::UNAUTHORIZED, "nope")
    );
    assert_eq!(a.headers["www-authenticate"], "Bearer");
    assert_eq!(s.mock.requests().len(), calls, "denied requests stay here");
    let metrics = s.gw.metrics();
    for line in [
        "llmgw_ext_authz_checks_total{provider=\"my-authz\",result=\"allowed\"} 1",
        "llmgw_ext_authz_checks_total{provider=\"my-authz\",result=\"denied\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in:\n{metrics}"
        );
    }
}
