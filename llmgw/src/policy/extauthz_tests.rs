//! CUSTOM authorization tests against a small authorizer on 127.0.0.1:
//! what the check request carries, and what allow, deny and failure do.

use std::{collections::HashMap, path::Path, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};

use super::{
    extauthz::{CheckRequest, CheckResult},
    test_support::{Ext, Reply, Seen, serve},
};
use crate::config::{ErrorList, RawConfig, Settings, load::load_text, mesh::parse_mesh_config};

fn ext_authz(providers: &str) -> Ext {
    let mesh = parse_mesh_config(&format!("extensionProviders:\n{providers}")).expect("mesh");
    let mut errors = ErrorList::default();
    let e = crate::model::compile::extauthz::compile(&mesh, &mut errors);
    assert!(errors.is_empty(), "{errors}");
    Ext::new(e)
}

fn provider(name: &str, port: u16, extra: &str) -> String {
    format!(
        "- name: {name}\n  envoyExtAuthzHttp:\n    service: foo/127.0.0.1\n    port: {port}\n{extra}"
    )
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, v.parse().expect("value"));
    }
    h
}

async fn check(e: &Ext, name: &str, h: &HeaderMap, body: Option<&Bytes>) -> CheckResult {
    let req = CheckRequest {
        method: &Method::POST,
        host: "test.com",
        path_and_query: "/v1/chat/completions?x=1",
        headers: h,
        body,
        attrs: None,
    };
    e.check(name, &req).await
}

fn denied(r: CheckResult) -> super::LocalReply {
    match r {
        CheckResult::Deny(reply) => reply,
        CheckResult::Allow(a) => panic!("expected a denial, got {a:?}"),
    }
}

fn hv(h: &HeaderMap, k: &str) -> Option<String> {
    h.get(k).map(|v| v.to_str().expect("ascii").to_string())
}

#[tokio::test]
async fn allow_sends_envoys_check_request_and_injects_headers() {
    let authz = serve(None, |_s: &Seen| {
        Reply::new(200, "ignored")
            .header("x-user", "alice")
            .header("x-ext-team", "ml")
            .header("x-resp", "r1")
            .header("x-envoy-auth-headers-to-remove", "x-secret, x-other-secret")
    })
    .await;
    let e = ext_authz(&provider(
        "authz",
        authz.addr.port(),
        "    pathPrefix: /check\n    includeRequestHeadersInCheck: [\"X-Api-*\", \"*-trace\"]\n    includeAdditionalHeadersInCheck:\n      x-gateway: llmgw\n      x-api-key: overridden\n    headersToUpstreamOnAllow: [x-user, \"x-ext*\"]\n    headersToDownstreamOnAllow: [x-resp]\n",
    ));
    let client = headers(&[
        ("authorization", "Bearer t"),
        ("x-api-key", "k"),
        ("my-trace", "t1"),
        ("cookie", "c=1"),
        ("content-length", "42"),
        ("connection", "keep-alive"),
    ]);
    let CheckResult::Allow(allowed) = check(&e, "authz", &client, None).await else {
        panic!("expected allow");
    };

    let seen = &authz.requests()[0];
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.uri.to_string(), "/check/v1/chat/completions?x=1");
    assert_eq!(hv(&seen.headers, "host").as_deref(), Some("test.com"));
    assert_eq!(
        hv(&seen.headers, "authorization").as_deref(),
        Some("Bearer t")
    );
    assert_eq!(hv(&seen.headers, "my-trace").as_deref(), Some("t1"));
    assert_eq!(
        hv(&seen.headers, "x-api-key").as_deref(),
        Some("overridden")
    );
    assert_eq!(hv(&seen.headers, "x-gateway").as_deref(), Some("llmgw"));
    assert_eq!(hv(&seen.headers, "content-length").as_deref(), Some("0"));
    assert!(seen.headers.get("cookie").is_none(), "not included");
    assert!(seen.body.is_empty());

    let mut upstream = headers(&[("x-user", "mallory"), ("x-secret", "s"), ("x-keep", "k")]);
    allowed.apply_to_request(&mut upstream);
    assert_eq!(
        hv(&upstream, "x-user").as_deref(),
        Some("alice"),
        "replaced"
    );
    assert_eq!(hv(&upstream, "x-ext-team").as_deref(), Some("ml"));
    assert!(
        upstream.get("x-secret").is_none(),
        "removed as the authorizer asked"
    );
    assert!(upstream.get("x-resp").is_none(), "downstream-only header");
    assert!(upstream.get("x-keep").is_some());
    let mut downstream = headers(&[("x-resp", "from-upstream")]);
    allowed.apply_to_response(&mut downstream);
    assert_eq!(downstream.get_all("x-resp").iter().count(), 2, "appended");
    assert_eq!(e.stats()[0].allowed, 1);
}

#[tokio::test]
async fn deny_returns_the_authorizers_status_body_and_headers() {
    let authz = serve(None, |s: &Seen| {
        let status = if s.uri.path().ends_with("/empty") {
            403
        } else {
            401
        };
        let body = if status == 403 {
            ""
        } else {
            "denied by policy"
        };
        Reply::new(status, body)
            .header("www-authenticate", "Basic realm=\"x\"")
            .header("x-reason", "no-scope")
            .header("x-other", "o")
            .header("content-type", "application/json")
    })
    .await;
    let port = authz.addr.port();
    let e = ext_authz(&format!(
        "{}{}",
        provider(
            "listed",
            port,
            "    headersToDownstreamOnDeny: [x-reason]\n"
        ),
        provider("all", port, "")
    ));
    let h = headers(&[]);
    let r = denied(check(&e, "listed", &h, None).await);
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(&r.body[..], b"denied by policy");
    assert_eq!(hv(&r.headers, "x-reason").as_deref(), Some("no-scope"));
    assert!(
        r.headers.get("www-authenticate").is_some(),
        "always forwarded"
    );
    assert!(r.headers.get("x-other").is_none(), "not listed");
    assert_eq!(
        hv(&r.headers, "content-type").as_deref(),
        Some("text/plain")
    );

    let r = denied(check(&e, "all", &h, None).await);
    assert_eq!(
        hv(&r.headers, "x-other").as_deref(),
        Some("o"),
        "all but Host"
    );
    assert_eq!(
        hv(&r.headers, "content-type").as_deref(),
        Some("application/json")
    );

    let req = CheckRequest {
        method: &Method::GET,
        host: "test.com",
        path_and_query: "/empty",
        headers: &h,
        body: None,
        attrs: None,
    };
    let r = denied(e.check("all", &req).await);
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.is_empty());
    assert_eq!(e.stats().iter().map(|s| s.denied).sum::<u64>(), 3);
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("addr").port()
}

#[tokio::test]
async fn unreachable_authorizer_fails_open_or_closed() {
    let port = closed_port().await;
    let e = ext_authz(&format!(
        "{}{}{}",
        provider("open", port, "    failOpen: true\n"),
        provider("closed", port, ""),
        provider("unavailable", port, "    statusOnError: \"503\"\n"),
    ));
    let h = headers(&[]);
    assert!(matches!(
        check(&e, "open", &h, None).await,
        CheckResult::Allow(a) if a == Default::default()
    ));
    let r = denied(check(&e, "closed", &h, None).await);
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.is_empty());
    assert_eq!(
        denied(check(&e, "unavailable", &h, None).await).status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(e.stats().iter().map(|s| s.errors).sum::<u64>(), 3);
}

#[tokio::test]
async fn timeouts_and_5xx_are_errors() {
    let authz = serve(None, |s: &Seen| {
        if s.uri.path().starts_with("/slow") {
            Reply::new(200, "").delay(Duration::from_secs(3))
        } else {
            Reply::new(502, "upstream of the authorizer broke")
        }
    })
    .await;
    let port = authz.addr.port();
    let e = ext_authz(&format!(
        "{}{}",
        provider(
            "slow",
            port,
            "    pathPrefix: /slow\n    timeout: 200ms\n    statusOnError: \"504\"\n"
        ),
        provider("broken", port, "    statusOnError: \"500\"\n"),
    ));
    let h = headers(&[]);
    let started = std::time::Instant::now();
    let r = denied(check(&e, "slow", &h, None).await);
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "timed out early"
    );
    let r = denied(check(&e, "broken", &h, None).await);
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        r.body.is_empty(),
        "the authorizer's 5xx body is not passed on"
    );
}

#[tokio::test]
async fn request_body_in_check() {
    let authz = serve(None, |_s: &Seen| Reply::new(200, "")).await;
    let port = authz.addr.port();
    let e = ext_authz(&format!(
        "{}{}",
        provider(
            "partial",
            port,
            "    includeRequestBodyInCheck:\n      maxRequestBytes: 5\n      allowPartialMessage: true\n"
        ),
        provider(
            "whole",
            port,
            "    includeRequestBodyInCheck:\n      maxRequestBytes: 5\n"
        ),
    ));
    assert_eq!(
        e.body_settings("partial").map(|b| b.max_request_bytes),
        Some(5)
    );
    let h = headers(&[]);
    let body = Bytes::from_static(b"0123456789");
    assert!(matches!(
        check(&e, "partial", &h, Some(&body)).await,
        CheckResult::Allow(_)
    ));
    let seen = &authz.requests()[0];
    assert_eq!(&seen.body[..], b"01234");
    assert_eq!(
        hv(&seen.headers, "x-envoy-auth-partial-body").as_deref(),
        Some("true")
    );
    assert_eq!(hv(&seen.headers, "content-length").as_deref(), Some("5"));
    assert_eq!(
        denied(check(&e, "whole", &h, Some(&body)).await).status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let small = Bytes::from_static(b"abc");
    assert!(matches!(
        check(&e, "whole", &h, Some(&small)).await,
        CheckResult::Allow(_)
    ));
    let seen = &authz.requests()[1];
    assert_eq!(&seen.body[..], b"abc");
    assert_eq!(
        hv(&seen.headers, "x-envoy-auth-partial-body").as_deref(),
        Some("false")
    );
}

fn compile_errors(mesh: &str, policy_provider: &str) -> String {
    let policy = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: ext\n  namespace: istio-system\nspec:\n  action: CUSTOM\n  provider:\n    name: {policy_provider}\n  rules:\n  - to:\n    - operation:\n        paths: [\"/admin/*\"]\n"
    );
    let mut raw = RawConfig::default();
    let mut errors = ErrorList::default();
    load_text(
        Path::new("p.yaml"),
        &policy,
        &HashMap::<String, String>::new(),
        &mut raw,
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors}");
    let settings = Settings {
        mesh: parse_mesh_config(mesh).expect("mesh parses"),
        ..Settings::default()
    };
    match crate::model::compile(&raw, &settings) {
        Ok(snapshot) => {
            assert_eq!(snapshot.policies.custom.len(), 1);
            String::new()
        }
        Err(errors) => errors.to_string(),
    }
}

#[test]
fn custom_policies_need_a_usable_authorizer() {
    let good = "extensionProviders:\n- name: authz\n  envoyExtAuthzHttp:\n    service: authz.foo.svc.cluster.local\n    port: 8000\n- name: grpc\n  envoyExtAuthzGrpc:\n    service: g\n    port: 9000\n- name: tracing\n  zipkin:\n    service: zipkin.istio-system.svc.cluster.local\n    port: 9411\n";
    assert_eq!(compile_errors(good, "authz"), "");
    assert_eq!(compile_errors(good, "grpc"), "");
    let e = compile_errors(good, "tracing");
    assert!(
        e.contains("AuthorizationPolicy istio-system/ext")
            && e.contains("spec.provider.name")
            && e.contains("zipkin")
            && e.contains("not an authorizer"),
        "{e}"
    );
    let e = compile_errors(good, "nope");
    assert!(
        e.contains("spec.provider.name") && e.contains("not defined") && e.contains("authz"),
        "{e}"
    );
    let e = compile_errors("", "authz");
    assert!(e.contains("--mesh-config"), "{e}");

    let bad = "extensionProviders:\n- name: authz\n  envoyExtAuthzHttp:\n    service: ''\n    port: 0\n    timeout: fast\n    pathPrefix: check\n    statusOnError: \"abc\"\n    headersToUpstreamOnAllow: [\"*\"]\n    includeRequestBodyInCheck: {maxRequestBytes: 0}\n- name: authz\n  envoyExtAuthzHttp: {service: a, port: 1}\n";
    let e = compile_errors(bad, "authz");
    for want in [
        "envoyExtAuthzHttp.service: service must not be empty",
        "envoyExtAuthzHttp.port: port must be in the range [1, 65535], found: 0",
        "envoyExtAuthzHttp.timeout",
        "pathPrefix must begin with `/`",
        "unsupported statusOnError \"abc\"",
        "headersToUpstreamOnAllow[0]: a single wildcard",
        "includeRequestBodyInCheck.maxRequestBytes",
        "must be unique, found duplicate: authz",
    ] {
        assert!(e.contains(want), "missing {want:?} in {e}");
    }
}

#[test]
fn defaults_follow_istio() {
    let e = ext_authz(
        "- name: a\n  envoyExtAuthzHttp:\n    service: ns/Authz.Example.com\n    port: \"8000\"\n",
    );
    let p = e.http_provider("a").expect("provider");
    assert_eq!(p.common.host, "authz.example.com");
    assert_eq!(p.common.port, 8000);
    assert_eq!(p.common.timeout, Duration::from_secs(600));
    assert_eq!(p.common.status_on_error, StatusCode::FORBIDDEN);
    assert!(!p.common.fail_open);
    assert!(p.path_prefix.is_empty());
    assert!(e.usable("a").is_ok());
}

/// The proxy spawns request futures on a multi-threaded runtime.
#[test]
fn futures_are_send() {
    fn is_send<T: Send>(_: &T) {}
    let e = crate::model::extauthz::ExtAuthz::default();
    let h = HeaderMap::new();
    let req = CheckRequest {
        method: &Method::GET,
        host: "h",
        path_and_query: "/",
        headers: &h,
        body: None,
        attrs: None,
    };
    let ext = Ext::new(e);
    is_send(&ext.check("p", &req));
    let a = crate::model::authn::Authenticator::default();
    let keys = super::jwks_fetch::JwksFetchers::default();
    let mut uri = http::Uri::from_static("/");
    let mut headers = HeaderMap::new();
    is_send(&a.authenticate(&keys, &Method::GET, &mut uri, &mut headers));
    let mut r = http::Request::new(());
    is_send(&a.authenticate_request(&keys, &mut r));
}
