//! The gateway against a real provider server, not only the project's mock:
//! Debian's nginx over TLS, offering HTTP/2 (also with one stream per
//! connection) or only HTTP/1.1 by ALPN. The seed's request, a stream passed
//! through, and both conversions (completion → chunks, stream → completion).

use std::path::{Path, PathBuf};

use llmgw_tests::{
    client::{Answer, SEED_REQUEST, post},
    gateway::{Gateway, GatewayBuilder, examples},
    mock::SEED_COMPLETION,
    nginx::{HOSTS, Nginx, Protocol},
    pki::Pki,
};

struct Setup {
    nginx: Nginx,
    gw: Gateway,
    _dir: tempfile::TempDir,
}

fn streaming_yaml() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python/streaming.yaml")
}

async fn setup(protocol: Protocol) -> Setup {
    let pki = std::sync::Arc::new(Pki::new());
    let nginx = {
        let pki = pki.clone();
        tokio::task::spawn_blocking(move || Nginx::start(&pki, protocol))
            .await
            .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    pki.write_ca(&ca).unwrap();
    let hosts: Vec<&str> = HOSTS.iter().map(|(h, _)| *h).collect();
    let b = GatewayBuilder::new()
        .in_process()
        .config(examples().join("quickstart"))
        .config(streaming_yaml())
        .upstream(nginx.addr, ca)
        .resolve_hosts(&hosts);
    let gw = tokio::task::spawn_blocking(move || b.start())
        .await
        .unwrap();
    Setup {
        nginx,
        gw,
        _dir: dir,
    }
}

/// The content of every `data:` chunk of an SSE answer, joined, and whether
/// it ended with `[DONE]`.
fn sse_content(a: &Answer) -> (String, bool) {
    let text = a.text();
    let mut content = String::new();
    let mut done = false;
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let data = data.trim();
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(data).expect("chunk is JSON");
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
            content.push_str(c);
        }
    }
    (content, done)
}

fn with_stream(stream: bool) -> String {
    format!(
        r#"{{"messages": [{{"role": "user", "content": "Please introduce yourself"}}], "stream": {stream}}}"#
    )
}

/// Every answer the quickstart and streaming.yaml give, through `protocol`.
async fn every_shape_through(protocol: Protocol, wire: &str) {
    let s = setup(protocol).await;
    let url = s.gw.url();
    let why = |a: &Answer| format!("{} {}\nnginx: {}", a.status, a.text(), s.nginx.error_log());

    // The seed's step 4, byte for byte.
    let a = post(&url, "test.com", SEED_REQUEST, &[]).await;
    assert_eq!(a.status, 200, "{}", why(&a));
    assert_eq!(a.body, SEED_COMPLETION.as_bytes(), "{}", why(&a));

    // A stream the client asked for, passed through.
    let a = post(&url, "stream.test", &with_stream(true), &[]).await;
    assert_eq!(a.status, 200, "{}", why(&a));
    assert!(
        a.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert_eq!(sse_content(&a), ("c0c1c2".into(), true), "{}", a.text());

    // The provider forces `stream: false`; the client asked for a stream.
    let a = post(&url, "test.com", &with_stream(true), &[]).await;
    assert_eq!(a.status, 200, "{}", why(&a));
    assert_eq!(
        sse_content(&a),
        ("Hello! I am Qwen, ...".into(), true),
        "{}",
        a.text()
    );

    // The provider forces `stream: true`; the client asked for JSON.
    let a = post(&url, "forced.test", &with_stream(false), &[]).await;
    assert_eq!(a.status, 200, "{}", why(&a));
    let v = a.json();
    assert_eq!(v["object"], "chat.completion", "{}", a.text());
    assert_eq!(v["choices"][0]["message"]["content"], "c0c1c2");
    assert_eq!(v["usage"]["total_tokens"], 8);

    // nginx saw four requests, on the protocol expected, and answered each
    // 200 (over HTTP/2 it answers 400 to a Host beside `:authority`, and
    // makes the Host it logs from `:authority`).
    let log = s.nginx.access_log();
    assert_eq!(log.len(), 4, "{log:?}");
    for line in &log {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f[0], wire, "{line}");
        assert_eq!(f[1], "200", "{line}");
        assert!(HOSTS.iter().any(|(h, _)| *h == f[2]), "{line}");
        assert_eq!(f[3], f[2], "{line}");
    }
}

#[tokio::test]
async fn every_answer_through_nginx_over_http2() {
    every_shape_through(
        Protocol::Http2 {
            max_concurrent_streams: 128,
        },
        "HTTP/2.0",
    )
    .await;
}

#[tokio::test]
async fn every_answer_through_nginx_offering_only_http1() {
    every_shape_through(Protocol::Http1, "HTTP/1.1").await;
}

/// A provider that allows one stream per HTTP/2 connection: concurrent
/// requests get connections of their own instead of failing or queueing
/// behind one another forever.
#[tokio::test]
async fn concurrent_requests_to_an_http2_provider_allowing_one_stream() {
    let s = setup(Protocol::Http2 {
        max_concurrent_streams: 1,
    })
    .await;
    let url = s.gw.url();
    let mut tasks = Vec::new();
    for i in 0..12 {
        let url = url.clone();
        let (host, body) = if i % 2 == 0 {
            ("test.com", SEED_REQUEST.to_string())
        } else {
            ("stream.test", with_stream(true))
        };
        tasks.push(tokio::spawn(
            async move { post(&url, host, &body, &[]).await },
        ));
    }
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!(
            a.status,
            200,
            "{}\nnginx: {}",
            a.text(),
            s.nginx.error_log()
        );
    }
    let log = s.nginx.access_log();
    assert_eq!(log.len(), 12, "{log:?}");
    assert!(
        log.iter().all(|l| l.starts_with("HTTP/2.0 200 ")),
        "{log:?}"
    );
}
