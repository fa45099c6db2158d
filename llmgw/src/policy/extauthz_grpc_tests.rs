//! CUSTOM authorization over gRPC against a small `Authorization/Check`
//! server on 127.0.0.1 (HTTP/2 cleartext): what the check carries, what
//! allow and deny do to the request and the answer, and failures.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message as _;
use tokio::net::TcpListener;

use super::{
    extauthz::{Attributes, CheckRequest, CheckResult},
    extauthz_proto as pb,
    test_support::Ext,
};
use crate::config::{ErrorList, mesh::parse_mesh_config};

/// What the test authorizer answers: a CheckResponse, or a gRPC error code.
#[derive(Clone)]
enum Answer {
    Check(pb::CheckResponse),
    GrpcError(u32),
}

struct Seen {
    path: String,
    headers: HeaderMap,
    check: pb::CheckRequest,
}

struct Authorizer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Authorizer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn authorizer(
    delay: Duration,
    answer: impl Fn(&pb::CheckRequest) -> Answer + Send + Sync + 'static,
) -> Authorizer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let answer = Arc::new(answer);
    let seen2 = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (answer, seen) = (answer.clone(), seen2.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (answer, seen) = (answer.clone(), seen.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.expect("body").to_bytes();
                        let check = pb::CheckRequest::decode(&body[5..]).expect("CheckRequest");
                        let a = answer(&check);
                        seen.lock().expect("lock").push(Seen {
                            path: parts.uri.path().to_string(),
                            headers: parts.headers,
                            check,
                        });
                        tokio::time::sleep(delay).await;
                        let mut trailers = HeaderMap::new();
                        let data = match a {
                            Answer::Check(r) => {
                                trailers.insert("grpc-status", "0".parse().expect("v"));
                                let mut b = BytesMut::new();
                                b.put_u8(0);
                                b.put_u32(r.encoded_len() as u32);
                                r.encode(&mut b).expect("encode");
                                b.freeze()
                            }
                            Answer::GrpcError(code) => {
                                trailers.insert("grpc-status", code.into());
                                trailers.insert("grpc-message", "down".parse().expect("v"));
                                Bytes::new()
                            }
                        };
                        let body = Full::new(data).with_trailers(async move { Some(Ok(trailers)) });
                        let mut resp = Response::new(body);
                        resp.headers_mut()
                            .insert("content-type", "application/grpc".parse().expect("v"));
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Authorizer { addr, seen, task }
}

fn ext_authz(port: u16, extra: &str) -> Ext {
    let mesh = parse_mesh_config(&format!(
        "extensionProviders:\n- name: g\n  envoyExtAuthzGrpc:\n    service: authz/127.0.0.1\n    port: {port}\n{extra}"
    ))
    .expect("mesh");
    let mut errors = ErrorList::default();
    let e = crate::model::compile::extauthz::compile(&mesh, &mut errors);
    assert!(errors.is_empty(), "{errors}");
    Ext::new(e)
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, v.parse().expect("value"));
    }
    h
}

async fn check(e: &Ext, h: &HeaderMap, body: Option<&Bytes>) -> CheckResult {
    let req = CheckRequest {
        method: &Method::POST,
        host: "test.com",
        path_and_query: "/v1/chat/completions?x=1",
        headers: h,
        body,
        attrs: Some(Attributes {
            source: "10.1.2.3:40000".parse().expect("addr"),
            destination: "10.0.0.1:8443".parse().expect("addr"),
            scheme: "https",
            protocol: "HTTP/2",
            request_id: "req-1",
        }),
    };
    e.check("g", &req).await
}

fn option(key: &str, value: &str, append: Option<bool>, action: i32) -> pb::HeaderValueOption {
    pb::HeaderValueOption {
        header: Some(pb::HeaderValue {
            key: key.into(),
            value: value.into(),
            raw_value: Vec::new(),
        }),
        append: append.map(|value| pb::BoolValue { value }),
        append_action: action,
    }
}

fn ok(resp: pb::OkHttpResponse) -> Answer {
    Answer::Check(pb::CheckResponse {
        status: Some(pb::RpcStatus::default()),
        denied_response: None,
        ok_response: Some(resp),
    })
}

#[tokio::test]
async fn allow_carries_envoys_attributes_and_applies_header_actions() {
    let authz = authorizer(Duration::ZERO, |_| {
        ok(pb::OkHttpResponse {
            headers: vec![
                option("x-user", "alice", None, 0),
                option("x-tag", "t2", Some(true), 0),
                option("x-keep", "new", None, 1),
                option("x-absent", "no", None, 3),
            ],
            headers_to_remove: vec!["x-secret".into(), ":path".into()],
            response_headers_to_add: vec![option("x-resp", "r", None, 0)],
        })
    })
    .await;
    let e = ext_authz(
        authz.addr.port(),
        "    includeRequestBodyInCheck:\n      maxRequestBytes: 100\n",
    );
    let mut h = headers(&[
        ("authorization", "Bearer t"),
        ("x-multi", "a"),
        ("x-multi", "b"),
        ("x-user", "mallory"),
        ("x-tag", "t1"),
        ("x-keep", "old"),
        ("x-secret", "s"),
        ("content-length", "7"),
        ("connection", "keep-alive"),
    ]);
    let body = Bytes::from_static(b"{\"a\":1}");
    let CheckResult::Allow(allowed) = check(&e, &h, Some(&body)).await else {
        panic!("expected allow");
    };

    let seen = authz.seen.lock().expect("lock");
    assert_eq!(seen[0].path, "/envoy.service.auth.v3.Authorization/Check");
    assert_eq!(seen[0].headers["content-type"], "application/grpc");
    assert_eq!(seen[0].headers["te"], "trailers");
    assert!(seen[0].headers.contains_key("grpc-timeout"));
    let attrs = seen[0].check.attributes.as_ref().expect("attributes");
    let addr = |p: &Option<pb::Peer>| {
        let s = p
            .as_ref()
            .and_then(|p| p.address.as_ref())
            .and_then(|a| a.socket_address.as_ref())
            .expect("address");
        (s.address.clone(), s.port_value)
    };
    assert_eq!(addr(&attrs.source), ("10.1.2.3".to_string(), 40000));
    assert_eq!(addr(&attrs.destination), ("10.0.0.1".to_string(), 8443));
    let req = attrs.request.as_ref().expect("request");
    assert!(req.time.as_ref().is_some_and(|t| t.seconds > 1_700_000_000));
    let http = req.http.as_ref().expect("http");
    assert_eq!(http.id, "req-1");
    assert_eq!(http.method, "POST");
    assert_eq!(http.path, "/v1/chat/completions?x=1");
    assert_eq!(http.host, "test.com");
    assert_eq!(http.scheme, "https");
    assert_eq!(http.protocol, "HTTP/2");
    assert_eq!(http.size, 7);
    assert_eq!(http.body, "{\"a\":1}");
    let hh = &http.headers;
    assert_eq!(hh[":authority"], "test.com");
    assert_eq!(hh[":method"], "POST");
    assert_eq!(hh[":path"], "/v1/chat/completions?x=1");
    assert_eq!(hh[":scheme"], "https");
    assert_eq!(hh["authorization"], "Bearer t");
    assert_eq!(hh["x-multi"], "a,b");
    assert_eq!(hh["x-request-id"], "req-1");
    assert_eq!(hh["x-envoy-auth-partial-body"], "false");
    assert!(
        !hh.contains_key("connection"),
        "hop-by-hop headers stay out"
    );
    drop(seen);

    allowed.apply_to_request(&mut h);
    assert_eq!(h["x-user"], "alice", "unset append replaces");
    let tags: Vec<_> = h.get_all("x-tag").iter().collect();
    assert_eq!(tags, ["t1", "t2"], "append: true appends");
    assert_eq!(
        h["x-keep"], "old",
        "ADD_IF_ABSENT leaves an existing header"
    );
    assert!(
        !h.contains_key("x-absent"),
        "OVERWRITE_IF_EXISTS adds nothing"
    );
    assert!(!h.contains_key("x-secret"), "headers_to_remove");
    let mut resp = HeaderMap::new();
    allowed.apply_to_response(&mut resp);
    assert_eq!(resp["x-resp"], "r");
    assert_eq!(e.stats()[0].allowed, 1);
}

#[tokio::test]
async fn deny_answers_with_the_authorizers_status_headers_and_body() {
    let authz = authorizer(Duration::ZERO, |c| {
        let path = c
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .map(|h| h.headers.get("x-case").cloned().unwrap_or_default())
            .unwrap_or_default();
        let denied = (path == "full").then(|| pb::DeniedHttpResponse {
            status: Some(pb::HttpStatus { code: 401 }),
            headers: vec![option("www-authenticate", "Bearer", None, 0)],
            body: "denied by policy".into(),
        });
        Answer::Check(pb::CheckResponse {
            status: Some(pb::RpcStatus {
                code: 7,
                message: "no".into(),
            }),
            denied_response: denied,
            ok_response: None,
        })
    })
    .await;
    let e = ext_authz(authz.addr.port(), "");
    let CheckResult::Deny(r) = check(&e, &headers(&[("x-case", "full")]), None).await else {
        panic!("expected deny");
    };
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    assert_eq!(r.headers["content-type"], "text/plain");
    assert_eq!(&r.body[..], b"denied by policy");
    let CheckResult::Deny(r) = check(&e, &headers(&[]), None).await else {
        panic!("expected deny");
    };
    assert_eq!(r.status, StatusCode::FORBIDDEN, "no denied_response: 403");
    assert!(r.body.is_empty());
    assert_eq!(e.stats()[0].denied, 2);
}

#[tokio::test]
async fn grpc_errors_timeouts_and_no_authorizer_follow_fail_open_and_status_on_error() {
    let down = authorizer(Duration::ZERO, |_| Answer::GrpcError(14)).await;
    let e = ext_authz(down.addr.port(), "    statusOnError: \"503\"\n");
    let CheckResult::Deny(r) = check(&e, &headers(&[]), None).await else {
        panic!("expected deny");
    };
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let e = ext_authz(down.addr.port(), "    failOpen: true\n");
    assert!(matches!(
        check(&e, &headers(&[]), None).await,
        CheckResult::Allow(a) if a == Default::default()
    ));

    let slow = authorizer(Duration::from_secs(2), |_| ok(Default::default())).await;
    let e = ext_authz(slow.addr.port(), "    timeout: 200ms\n");
    let CheckResult::Deny(r) = check(&e, &headers(&[]), None).await else {
        panic!("expected deny");
    };
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "Istio's default statusOnError"
    );

    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let e = ext_authz(port, "    timeout: 1s\n");
    assert!(matches!(
        check(&e, &headers(&[]), None).await,
        CheckResult::Deny(r) if r.status == StatusCode::FORBIDDEN
    ));
    assert_eq!(e.stats()[0].errors, 1);
}

#[tokio::test]
async fn bodies_are_cut_refused_or_packed_as_bytes() {
    let authz = authorizer(Duration::ZERO, |_| ok(Default::default())).await;
    let body = Bytes::from_static(b"0123456789");
    let e = ext_authz(
        authz.addr.port(),
        "    includeRequestBodyInCheck:\n      maxRequestBytes: 4\n",
    );
    let CheckResult::Deny(r) = check(&e, &headers(&[]), Some(&body)).await else {
        panic!("expected deny");
    };
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(authz.seen.lock().expect("lock").is_empty(), "nothing sent");
    let e = ext_authz(
        authz.addr.port(),
        "    includeRequestBodyInCheck:\n      maxRequestBytes: 4\n      allowPartialMessage: true\n      packAsBytes: true\n",
    );
    assert!(matches!(
        check(&e, &headers(&[]), Some(&body)).await,
        CheckResult::Allow(_)
    ));
    let seen = authz.seen.lock().expect("lock");
    let http = seen[0]
        .check
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .expect("http");
    assert_eq!(http.raw_body, b"0123");
    assert!(http.body.is_empty());
    assert_eq!(http.headers["x-envoy-auth-partial-body"], "true");
}

#[test]
fn grpc_provider_fields_are_validated() {
    let mesh = parse_mesh_config(
        "extensionProviders:\n- name: g\n  envoyExtAuthzGrpc:\n    service: \"bad host\"\n    port: 0\n    timeout: soon\n",
    )
    .expect("mesh");
    let mut errors = ErrorList::default();
    crate::model::compile::extauthz::compile(&mesh, &mut errors);
    let e = errors.to_string();
    for field in [
        "envoyExtAuthzGrpc.service",
        "envoyExtAuthzGrpc.port",
        "envoyExtAuthzGrpc.timeout",
    ] {
        assert!(e.contains(field), "{field}: {e}");
    }
    let mesh = parse_mesh_config(
        "extensionProviders:\n- name: g\n  envoyExtAuthzGrpc:\n    service: a\n    port: 1\n    pathPrefix: /x\n",
    );
    assert!(
        mesh.is_err_and(|m| m.contains("pathPrefix")),
        "unknown fields are errors"
    );
}
