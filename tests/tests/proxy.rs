//! The request path end to end over real sockets: llmgw (served in this
//! process, or the built binary where a test reads its stderr) in front of
//! the mock provider. The seed's step 4, routing, weighted split, error
//! mapping, pass-through, streaming, cancellation, usage and secrets.

use std::{path::PathBuf, time::Duration};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use llmgw_tests::{
    client::{self, SEED_REQUEST, post},
    eventually,
    gateway::{Gateway, GatewayBuilder, examples},
    mock::{MockProvider, Reply, SEED_COMPLETION},
};

const API_KEY: &str = "sk-test-0123456789";

struct Setup {
    mock: MockProvider,
    gw: Gateway,
    _dir: tempfile::TempDir,
}

async fn setup_with(configs: Vec<PathBuf>, extra: &[&str], hosts: &[&str]) -> Setup {
    setup_as(configs, extra, hosts, true).await
}

/// `in_process`: served by `llmgw::serve` in this process, else by the binary.
async fn setup_as(
    configs: Vec<PathBuf>,
    extra: &[&str],
    hosts: &[&str],
    in_process: bool,
) -> Setup {
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    mock.pki.write_ca(&ca).unwrap();
    let mut b = GatewayBuilder::new()
        .upstream(mock.addr, ca)
        .resolve_hosts(hosts);
    if in_process {
        b = b.in_process();
    }
    for c in configs {
        b = b.config(c);
    }
    for a in extra {
        b = b.arg(*a);
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

async fn quickstart(extra: &[&str]) -> Setup {
    setup_with(
        vec![examples().join("quickstart")],
        extra,
        &["dashscope.aliyuncs.com"],
    )
    .await
}

#[tokio::test]
async fn seed_step_4_rewrites_for_the_provider_and_passes_its_answer_through() {
    let s = quickstart(&[]).await;
    let a = post(
        &s.gw.url(),
        "test.com",
        SEED_REQUEST,
        &[("authorization", "Bearer client-key")],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        a.body,
        SEED_COMPLETION.as_bytes(),
        "the provider's body byte for byte"
    );
    assert_eq!(a.headers["content-type"], "application/json");

    let reqs = s.mock.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/compatible-mode/v1/chat/completions");
    assert_eq!(r.host.as_deref(), Some("dashscope.aliyuncs.com"));
    assert_eq!(r.sni.as_deref(), Some("dashscope.aliyuncs.com"));
    assert_eq!(
        r.version,
        http::Version::HTTP_2,
        "h2 when the provider offers it"
    );
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {API_KEY}").as_str()),
        "the provider's key replaces the client's"
    );
    assert_eq!(r.headers.get_all("authorization").iter().count(), 1);
    let body = r.json();
    assert_eq!(body["model"], "qwen1.5-72b-chat");
    assert_eq!(body["stream"], false);
    assert_eq!(
        body["messages"],
        serde_json::json!([{"role": "user", "content": "Please introduce yourself"}])
    );
    assert_eq!(r.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(r.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        r.header("content-length")
            .and_then(|v| v.parse::<usize>().ok()),
        Some(r.body.len())
    );
}

#[tokio::test]
async fn usage_reaches_the_access_log_and_metrics_and_the_key_goes_nowhere() {
    // The binary: its stderr (the gateway's own log) must not hold the key either.
    let s = setup_as(
        vec![examples().join("quickstart")],
        &[],
        &["dashscope.aliyuncs.com"],
        false,
    )
    .await;
    let a = post(&s.gw.url(), "test.com", SEED_REQUEST, &[]).await;
    assert_eq!(a.status, 200);
    let gw = &s.gw;
    let line = eventually(Duration::from_secs(5), || async {
        gw.stdout()
            .lines()
            .find(|l| l.contains("\"status\":200"))
            .map(str::to_string)
    })
    .await
    .expect("an access log line");
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON access log");
    assert_eq!(v["prompt_tokens"], 12);
    assert_eq!(v["completion_tokens"], 130);
    assert_eq!(v["total_tokens"], 142);
    assert_eq!(v["host"], "test.com");
    assert_eq!(v["route"], "default/dashscope-route");
    assert_eq!(v["rule"], "ingress-route");
    assert_eq!(v["provider"], "istio-system/dashscope-qwen");
    assert_eq!(v["model"], "qwen1.5-72b-chat");
    assert_eq!(v["upstream_status"], 200);
    assert!(v["duration_ms"].as_f64().is_some_and(|d| d > 0.0));
    assert!(v["time"].as_str().is_some_and(|t| t.ends_with('Z')));

    let m = gw.metrics();
    let labels = r#"route="default/dashscope-route",rule="ingress-route",provider="istio-system/dashscope-qwen",model="qwen1.5-72b-chat""#;
    assert!(
        m.contains(&format!("llmgw_requests_total{{{labels},code=\"200\"}} 1")),
        "{m}"
    );
    assert!(m.contains("gen_ai_token_type=\"input\"} 12\n"), "{m}");
    assert!(m.contains("gen_ai_token_type=\"output\"} 130\n"), "{m}");
    assert!(m.contains("gen_ai_server_request_duration_count{"));

    let (status, dump) = gw.admin_get("/config_dump");
    assert_eq!(status, 200);
    assert!(dump.contains("<redacted>"), "{dump}");
    for (what, text) in [
        ("stdout", gw.stdout()),
        ("stderr", gw.stderr()),
        ("/metrics", m),
        ("/config_dump", dump),
    ] {
        assert!(!text.contains(API_KEY), "the API key leaked into {what}");
    }
}

#[tokio::test]
async fn unknown_host_is_404_in_the_openai_shape() {
    let s = quickstart(&[]).await;
    let a = post(&s.gw.url(), "nope.example", SEED_REQUEST, &[]).await;
    assert_eq!(a.status, 404);
    assert_eq!(a.json()["error"]["code"], "route_not_found");
    assert!(a.json()["error"]["message"].is_string());
    assert!(s.mock.requests().is_empty());
    // The host is matched without its port and case-insensitively.
    let a = post(&s.gw.url(), "TEST.com:8080", SEED_REQUEST, &[]).await;
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn bad_bodies_are_400_and_big_ones_413() {
    let s = quickstart(&["--max-request-body", "1KiB"]).await;
    for bad in ["not json", "[1,2]", "{\"a\":", ""] {
        let a = post(&s.gw.url(), "test.com", bad, &[]).await;
        assert_eq!(a.status, 400, "{bad:?}: {}", a.text());
        assert_eq!(a.json()["error"]["type"], "invalid_request_error");
    }
    // A compressed body cannot be rewritten: 415, said so.
    let a = post(
        &s.gw.url(),
        "test.com",
        "{}",
        &[("content-encoding", "gzip")],
    )
    .await;
    assert_eq!(a.status, 415, "{}", a.text());
    assert_eq!(a.json()["error"]["code"], "unsupported_content_encoding");
    // A byte order mark before the JSON is ignored (RFC 8259 allows it).
    let a = post(&s.gw.url(), "test.com", "\u{feff}{\"messages\":[]}", &[]).await;
    assert_eq!(a.status, 200, "{}", a.text());
    // A bodiless DELETE (or OPTIONS) is passed on, not refused as bad JSON.
    let del = Request::delete(s.gw.url())
        .header("host", "test.com")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let a = client::collect(client::send(del).await).await;
    assert_ne!(a.status, 400, "{}", a.text());
    let big = format!("{{\"messages\":\"{}\"}}", "x".repeat(2000));
    let a = post(&s.gw.url(), "test.com", &big, &[]).await;
    assert_eq!(a.status, 413);
    assert_eq!(a.json()["error"]["code"], "request_too_large");

    // Without a Content-Length (chunked): counted while reading.
    let (tx, body) = chunked();
    let req = Request::post(s.gw.url())
        .header("host", "test.com")
        .body(body)
        .unwrap();
    let send = tokio::spawn(async move {
        for _ in 0..20 {
            if tx.send(Bytes::from(vec![b' '; 100])).await.is_err() {
                break;
            }
        }
    });
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let resp = client.request(req).await.expect("answer");
    assert_eq!(resp.status(), 413);
    let _ = send.await;
    // Only the BOM-prefixed body and the DELETE reached the provider.
    assert_eq!(s.mock.requests().len(), 2);
}

/// Writes `request` on a fresh connection and reads the answer's status line.
async fn raw_status(addr: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The gateway may answer (and close) before it has read everything.
    let _ = c.write_all(request).await;
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(2).any(|w| w == b"\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn two_host_headers_are_400_and_oversized_headers_431() {
    let s = quickstart(&[]).await;
    let addr = s.gw.url().trim_start_matches("http://").to_string();
    let body = SEED_REQUEST;
    let two_hosts = format!(
        "POST / HTTP/1.1\r\nHost: a.example\r\nHost: test.com\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(
        raw_status(&addr, two_hosts.as_bytes()).await,
        "HTTP/1.1 400 Bad Request"
    );
    let big = format!(
        "POST / HTTP/1.1\r\nHost: test.com\r\nx-big: {}\r\ncontent-length: {}\r\n\r\n{body}",
        "a".repeat(70 * 1024),
        body.len()
    );
    assert_eq!(
        raw_status(&addr, big.as_bytes()).await,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    // That answer was the gateway's own: no request was forwarded or counted
    // as one, but the refusal is counted.
    // (counted when the connection ends, just after the answer).
    let counted = |line: &'static str| {
        let gw = &s.gw;
        eventually(Duration::from_secs(5), move || async move {
            gw.admin_get("/metrics").1.contains(line).then_some(())
        })
    };
    assert!(
        counted("llmgw_downstream_rejected_total{reason=\"headers_too_large\"} 1")
            .await
            .is_some(),
        "{}",
        s.gw.admin_get("/metrics").1
    );
    let (_, metrics) = s.gw.admin_get("/metrics");
    assert!(!metrics.contains("code=\"431\""), "{metrics}");
    let garbage = b"GET /\x01 bad HTTP/1.1\r\nHost: test.com\r\n\r\n";
    assert_eq!(raw_status(&addr, garbage).await, "HTTP/1.1 400 Bad Request");
    assert!(
        counted("llmgw_downstream_rejected_total{reason=\"malformed\"} 1")
            .await
            .is_some(),
        "{}",
        s.gw.admin_get("/metrics").1
    );
    let fits = format!(
        "POST / HTTP/1.1\r\nHost: test.com\r\nx-big: {}\r\ncontent-length: {}\r\n\r\n{body}",
        "a".repeat(8 * 1024),
        body.len()
    );
    assert_eq!(raw_status(&addr, fits.as_bytes()).await, "HTTP/1.1 200 OK");
    assert_eq!(s.mock.requests().len(), 1);
    // Each refusal has its access-log line, with the status sent and why.
    let logged = |status: u16, why: &'static str| {
        let gw = &s.gw;
        eventually(Duration::from_secs(5), move || async move {
            gw.stdout()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| {
                    v["status"] == status && v["error"].as_str().is_some_and(|e| e.contains(why))
                })
        })
    };
    let line = logged(431, "too large").await;
    let line = line.unwrap_or_else(|| panic!("no 431 logged:\n{}", s.gw.stdout()));
    assert_eq!(line["method"], "-");
    assert_eq!(line["client"], "127.0.0.1");
    assert!(line["route"].is_null(), "{line}");
    assert!(
        logged(400, "invalid").await.is_some(),
        "no 400 logged for the garbage request line:\n{}",
        s.gw.stdout()
    );
}

/// CONNECT is never forwarded (a 2xx would make the connection a tunnel to
/// the provider): no route matches it, as in Envoy without a CONNECT
/// matcher, over HTTP/1.1 and over h2c.
#[tokio::test]
async fn connect_requests_find_no_route() {
    let s = quickstart(&[]).await;
    let addr = s.gw.url().trim_start_matches("http://").to_string();
    let h1 = b"CONNECT test.com:443 HTTP/1.1\r\nHost: test.com:443\r\n\r\n";
    assert_eq!(raw_status(&addr, h1).await, "HTTP/1.1 404 Not Found");

    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method("CONNECT")
        .uri("test.com:443")
        .body(())
        .unwrap();
    let (resp, _send) = h2.send_request(req, false).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("an answer")
        .expect("a response");
    assert_eq!(resp.status(), 404);
    assert!(s.mock.requests().is_empty(), "{:?}", s.mock.requests());
    let logged = {
        let gw = &s.gw;
        eventually(Duration::from_secs(5), move || async move {
            gw.stdout()
                .contains("no route for CONNECT to host")
                .then_some(())
        })
    };
    assert!(logged.await.is_some(), "{}", s.gw.stdout());
}

fn chunked() -> (tokio::sync::mpsc::Sender<Bytes>, ChannelBody) {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    (tx, ChannelBody(rx))
}

/// A request body fed from a channel (sent chunked).
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(http_body::Frame::data(b))))
    }
}

#[tokio::test]
async fn unreachable_provider_is_502_and_slow_one_504() {
    // Nothing listens on the resolved port.
    let closed = llmgw_tests::free_port();
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    mock.pki.write_ca(&ca).unwrap();
    let b = GatewayBuilder::new()
        .config(examples().join("quickstart"))
        .upstream(([127, 0, 0, 1], closed).into(), ca.clone());
    let gw = tokio::task::spawn_blocking(move || b.start())
        .await
        .unwrap();
    let a = post(&gw.url(), "test.com", SEED_REQUEST, &[]).await;
    assert_eq!(a.status, 502, "{}", a.text());
    assert_eq!(a.json()["error"]["code"], "upstream_unavailable");
    assert!(gw.metrics().contains("kind=\"connect\"} 1"));

    // TLS failure: the provider's certificate is not trusted.
    let other = llmgw_tests::pki::Pki::new();
    let wrong_ca = dir.path().join("wrong.pem");
    other.write_ca(&wrong_ca).unwrap();
    let b = GatewayBuilder::new()
        .config(examples().join("quickstart"))
        .upstream(mock.addr, wrong_ca);
    let gw = tokio::task::spawn_blocking(move || b.start())
        .await
        .unwrap();
    let a = post(&gw.url(), "test.com", SEED_REQUEST, &[]).await;
    assert_eq!(a.status, 502, "{}", a.text());
    assert_eq!(a.json()["error"]["code"], "upstream_tls_error");

    // No response headers within --response-timeout.
    let s = quickstart(&["--response-timeout", "300ms"]).await;
    s.mock.respond(|_| Reply::Hang);
    let started = std::time::Instant::now();
    let a = post(&s.gw.url(), "test.com", SEED_REQUEST, &[]).await;
    assert_eq!(a.status, 504, "{}", a.text());
    assert_eq!(a.json()["error"]["code"], "upstream_timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A slow answer within the timeout is fine.
    s.mock.respond(|_| Reply::Slow {
        delay: Duration::from_millis(50),
        then: Box::new(Reply::completion()),
    });
    let a = post(&s.gw.url(), "test.com", SEED_REQUEST, &[]).await;
    assert_eq!(a.status, 200);
}

/// `--resolve *:443:DEAD,LIVE` as curl reads it: any provider host, the
/// addresses tried in order.
#[tokio::test]
async fn resolve_takes_any_host_and_tries_its_addresses_in_order() {
    let closed = llmgw_tests::free_port();
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    mock.pki.write_ca(&ca).unwrap();
    let b = GatewayBuilder::new()
        .config(examples().join("quickstart"))
        .env("API_KEY", API_KEY)
        .resolve_hosts(&[])
        .arg("--upstream-ca")
        .arg(ca.to_string_lossy())
        .arg("--resolve")
        .arg(format!("*:443:127.0.0.1:{closed},{}", mock.addr));
    let gw = tokio::task::spawn_blocking(move || b.start())
        .await
        .unwrap();
    let a = post(&gw.url(), "test.com", SEED_REQUEST, &[]).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        mock.requests()[0].sni.as_deref(),
        Some("dashscope.aliyuncs.com")
    );
}

#[tokio::test]
async fn the_providers_errors_pass_through_unchanged() {
    let s = quickstart(&[]).await;
    let err = r#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
    s.mock.respond(move |_| Reply::json(429, err));
    let a = post(&s.gw.url(), "test.com", SEED_REQUEST, &[]).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.body, err.as_bytes());
    s.mock.respond(|_| Reply::Body {
        status: 500,
        content_type: "text/html",
        body: "<h1>oops</h1>".into(),
    });
    let a = post(&s.gw.url(), "test.com", SEED_REQUEST, &[]).await;
    assert_eq!(a.status, 500);
    assert_eq!(a.text(), "<h1>oops</h1>");
    assert_eq!(a.headers["content-type"], "text/html");
}

/// The quickstart with `stream: true` at the provider, in a new directory.
fn stream_conf() -> PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    for f in ["02-gateway.yaml", "03-llmroute.yaml"] {
        std::fs::copy(examples().join("quickstart").join(f), dir.join(f)).unwrap();
    }
    let provider = std::fs::read_to_string(examples().join("quickstart/01-llmprovider.yaml"))
        .unwrap()
        .replace("stream: false", "stream: true");
    std::fs::write(dir.join("01-llmprovider.yaml"), provider).unwrap();
    dir
}

async fn stream_setup() -> (Setup, PathBuf) {
    let dir = stream_conf();
    (
        setup_with(vec![dir.clone()], &[], &["dashscope.aliyuncs.com"]).await,
        dir,
    )
}

/// The provider forces `stream: true`; a client that asked for JSON gets
/// the stream gathered into one completion, and an error event in the
/// stream is a 502 carrying the provider's error, never a 200 half answer.
#[tokio::test]
async fn a_forced_stream_is_gathered_for_a_json_client_and_its_errors_kept() {
    let (s, _dir) = stream_setup().await;
    s.mock
        .respond(|_| Reply::stream(3, Duration::from_millis(1)));
    let json_body = r#"{"messages":[],"stream":false}"#;
    let a = post(&s.gw.url(), "test.com", json_body, &[]).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.headers["content-type"], "application/json");
    let v = a.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "c0c1c2");
    assert_eq!(v["usage"]["total_tokens"], 8);
    // The access log has what the client got.
    let gw = &s.gw;
    let line = eventually(Duration::from_secs(5), || async {
        gw.stdout()
            .lines()
            .find(|l| l.contains("\"status\":200") && l.contains("\"stream\":true"))
            .map(str::to_string)
    })
    .await
    .expect("an access log line");
    let logged: serde_json::Value = serde_json::from_str(&line).expect("JSON access log");
    assert_eq!(logged["bytes_sent"], a.text().len() as u64, "{logged}");

    s.mock.respond(|_| Reply::Sse {
        events: vec![
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n"
                .into(),
            "data: {\"error\":{\"message\":\"mid-stream failure\",\"type\":\"server_error\"}}\n\n"
                .into(),
        ],
        delay: Duration::from_millis(1),
    });
    let a = post(&s.gw.url(), "test.com", json_body, &[]).await;
    assert_eq!(a.status, 502, "{}", a.text());
    assert_eq!(a.json()["error"]["message"], "mid-stream failure");
    // A client that said nothing of streaming and accepts anything gets the
    // provider's stream as it is.
    s.mock
        .respond(|_| Reply::stream(2, Duration::from_millis(1)));
    let a = post(&s.gw.url(), "test.com", SEED_REQUEST, &[]).await;
    assert_eq!(a.headers["content-type"], "text/event-stream");
}

#[tokio::test]
async fn a_stream_reaches_the_client_while_the_provider_is_still_sending() {
    let (s, _dir) = stream_setup().await;
    let n = 5;
    let delay = Duration::from_millis(150);
    s.mock.respond(move |_| Reply::stream(n, delay));
    let req = Request::post(s.gw.url())
        .header("host", "test.com")
        .body(Full::new(Bytes::from_static(SEED_REQUEST.as_bytes())))
        .unwrap();
    let resp = client::send(req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let frames = client::timed_frames(resp).await;
    let logs = s.mock.streams();
    assert_eq!(logs.len(), 1);
    let sent = &logs[0].sent;
    assert_eq!(sent.len(), n + 2, "content chunks, usage, [DONE]");
    let first_seen = frames.first().expect("a frame").0;
    // The first event was in the client's hands before the provider sent the
    // third one (300 ms later), and well before the last.
    assert!(
        first_seen < sent[2],
        "first event seen {:?} after the third was sent",
        first_seen.duration_since(sent[2])
    );
    let text: String = frames
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert!(text.contains("\"content\":\"c0\""));
    assert!(text.ends_with("data: [DONE]\n\n"));

    // The provider saw the stream flags, with usage asked for.
    let body = s.mock.requests()[0].json();
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);

    // Usage from the final chunk, time to first token in the log and metrics.
    let gw = &s.gw;
    let line = eventually(Duration::from_secs(5), || async {
        gw.stdout()
            .lines()
            .find(|l| l.contains("\"status\":200"))
            .map(str::to_string)
    })
    .await
    .expect("access log line");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["completion_tokens"], n);
    assert_eq!(v["prompt_tokens"], 5);
    assert_eq!(v["stream"], true);
    let ttft = v["ttft_ms"].as_f64().expect("ttft");
    let total = v["duration_ms"].as_f64().unwrap();
    assert!(ttft < total - 500.0, "ttft {ttft} ms, total {total} ms");
    let m = gw.metrics();
    assert!(
        m.contains("gen_ai_server_time_to_first_token_count{"),
        "{m}"
    );
    assert!(
        m.contains(&format!("gen_ai_token_type=\"output\"}} {n}\n")),
        "{m}"
    );
}

#[tokio::test]
async fn a_client_that_leaves_cancels_the_upstream_request() {
    let (s, _dir) = stream_setup().await;
    s.mock
        .respond(|_| Reply::stream(100, Duration::from_millis(50)));
    let req = Request::post(s.gw.url())
        .header("host", "test.com")
        .body(Full::new(Bytes::from_static(SEED_REQUEST.as_bytes())))
        .unwrap();
    let resp = client::send(req).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.expect("a frame").expect("data");
    assert!(first.is_data());
    let left = std::time::Instant::now();
    drop(body);
    let logs = s
        .mock
        .wait_streams(Duration::from_secs(5), |l| {
            l.first().is_some_and(|x| x.cancelled.is_some())
        })
        .await;
    let log = &logs[0];
    let cancelled = log
        .cancelled
        .expect("the provider saw the stream cancelled");
    assert!(cancelled.duration_since(left) < Duration::from_secs(2));
    assert!(!log.completed);
    assert!(log.sent.len() < 50, "sent {} of 102", log.sent.len());
    // The access log says the client left.
    let gw = &s.gw;
    let line = eventually(Duration::from_secs(5), || async {
        gw.stdout()
            .lines()
            .find(|l| l.contains("client disconnected"))
            .map(str::to_string)
    })
    .await;
    assert!(line.is_some(), "{}", gw.stdout());
}

#[tokio::test]
async fn weighted_backends_split_traffic_by_weight() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = r#"
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: a, namespace: istio-system}
spec:
  host: a.provider.test
  path: /v1/chat/completions
  configs: {defaultConfig: {openAIConfig: {model: model-a, apiKey: "${API_KEY}"}}}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: b, namespace: istio-system}
spec:
  host: b.provider.test
  path: /v1/chat/completions
  configs: {defaultConfig: {openAIConfig: {model: model-b}}}
---
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
    - hosts: ["*"]
      port: {name: http, number: 80, protocol: HTTP}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {name: split, namespace: istio-system}
spec:
  host: "*"
  gateways: [gw]
  rules:
    - name: split
      backendRefs:
        - {providerHost: a.provider.test, weight: 80}
        - {providerHost: b.provider.test, weight: 20}
"#;
    let cfg = dir.path().join("split.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let s = setup_with(vec![cfg], &[], &["a.provider.test", "b.provider.test"]).await;
    let n = 400;
    let url = s.gw.url();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..n / 8 {
                let a = post(&url, "any.host", "{\"messages\":[]}", &[]).await;
                assert_eq!(a.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let reqs = s.mock.requests();
    assert_eq!(reqs.len(), n);
    let to_a = reqs
        .iter()
        .filter(|r| r.sni.as_deref() == Some("a.provider.test"))
        .count();
    let to_b = reqs
        .iter()
        .filter(|r| r.sni.as_deref() == Some("b.provider.test"))
        .count();
    assert_eq!(to_a + to_b, n);
    // Binomial(400, 0.8): sd = 8; allow 4.5 sd either way.
    assert!((284..=356).contains(&to_a), "{to_a} of {n} to a");
    for r in &reqs {
        let (model, host) = if r.sni.as_deref() == Some("a.provider.test") {
            ("model-a", "a.provider.test")
        } else {
            ("model-b", "b.provider.test")
        };
        assert_eq!(r.json()["model"], model);
        assert_eq!(r.host.as_deref(), Some(host));
    }
    // Provider b has no key: the client's would pass; provider a's replaces.
    assert!(
        reqs.iter()
            .filter(|r| r.sni.as_deref() == Some("a.provider.test"))
            .all(|r| r.header("authorization") == Some(&format!("Bearer {API_KEY}")))
    );
}

/// A header `prefix` match bound to one Gateway (`matches[].gateways`), its
/// `routeSpecificConfigs` and `hostRewrite`, as the provider sees them.
#[tokio::test]
async fn prefix_matches_gateway_bound_rules_and_host_rewrite_reach_the_provider() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = r#"
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: a, namespace: istio-system}
spec:
  host: a.provider.test
  path: /v1/chat/completions
  configs:
    defaultConfig: {openAIConfig: {model: model-default}}
    routeSpecificConfigs: {team-ab: {openAIConfig: {model: model-ab}}}
---
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{hosts: ["*"], port: {name: http, number: 80, protocol: HTTP}}]
---
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: gw2, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{hosts: ["*"], port: {name: http2, number: 81, protocol: HTTP}}]
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {name: teams, namespace: istio-system}
spec:
  host: "*"
  gateways: [gw, gw2]
  rules:
    - name: team-ab
      matches: [{headers: {x-team: {prefix: ab}}, gateways: [gw]}]
      backendRefs: [{providerHost: a.provider.test, hostRewrite: rewritten.provider.test}]
    - name: default
      backendRefs: [{providerHost: a.provider.test}]
"#;
    let cfg = dir.path().join("teams.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let mock = MockProvider::start().await;
    let ca = dir.path().join("ca.pem");
    mock.pki.write_ca(&ca).unwrap();
    let b = GatewayBuilder::new()
        .upstream(mock.addr, ca)
        .resolve_hosts(&["a.provider.test"])
        .ports(&[80, 81])
        .config(cfg);
    let gw = tokio::task::spawn_blocking(move || b.start())
        .await
        .unwrap();
    let gw2 = format!("http://127.0.0.1:{}", gw.port(81));
    let body = "{\"model\":\"x\",\"messages\":[]}";
    for (url, team) in [
        (&gw.url(), "abc"),
        (&gw.url(), "xab"),
        (&gw.url(), "ab"),
        (&gw2, "abc"),
    ] {
        let a = post(url, "any.host", body, &[("x-team", team)]).await;
        assert_eq!(a.status, 200, "{team} via {url}: {}", a.text());
    }
    let seen: Vec<(String, String, String)> = mock
        .requests()
        .iter()
        .map(|r| {
            (
                r.host.clone().unwrap_or_default(),
                r.sni.clone().unwrap_or_default(),
                r.json()["model"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    // (Host, SNI, model) as the provider saw them.
    let via = |host: &str, model: &str| (host.to_string(), host.to_string(), model.to_string());
    let rewritten = via("rewritten.provider.test", "model-ab");
    let plain = via("a.provider.test", "model-default");
    assert_eq!(
        seen,
        [rewritten.clone(), plain.clone(), rewritten, plain],
        "prefix ab matches abc and ab, not xab; the rule is bound to gw only"
    );
}

#[tokio::test]
async fn a_client_that_leaves_before_the_answer_cancels_the_pending_request() {
    use tokio::io::AsyncWriteExt;
    let s = quickstart(&["--response-timeout", "60s"]).await;
    s.mock.respond(|_| Reply::Hang);
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.gw.port(80)))
        .await
        .unwrap();
    let req = format!(
        "POST / HTTP/1.1\r\nHost: test.com\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{SEED_REQUEST}",
        SEED_REQUEST.len()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    assert_eq!(
        s.mock.wait_requests(1, Duration::from_secs(5)).await.len(),
        1
    );
    drop(tcp);
    // The gateway notices at once, not after the 60 s response timeout.
    let gw = &s.gw;
    let line = eventually(Duration::from_secs(5), || async {
        gw.stdout()
            .lines()
            .find(|l| l.contains("\"status\":499"))
            .map(str::to_string)
    })
    .await
    .unwrap_or_else(|| panic!("no 499 logged:\n{}", gw.stdout()));
    assert!(line.contains("client disconnected"), "{line}");
}

#[tokio::test]
async fn h2c_clients_are_served_and_their_requests_logged_complete() {
    let s = quickstart(&[]).await;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.gw.port(80)))
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2c handshake");
    tokio::spawn(conn);
    for _ in 0..2 {
        let req = Request::post("http://test.com/")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(SEED_REQUEST.as_bytes())))
            .unwrap();
        let resp = send.send_request(req).await.expect("h2c answer");
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let a = client::collect(resp).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.body, SEED_COMPLETION.as_bytes());
    }
    let gw = &s.gw;
    let lines = eventually(Duration::from_secs(5), || async {
        let l: Vec<String> = gw
            .stdout()
            .lines()
            .filter(|l| l.contains("\"protocol\":\"HTTP/2\""))
            .map(str::to_string)
            .collect();
        (l.len() == 2).then_some(l)
    })
    .await
    .unwrap_or_else(|| panic!("two HTTP/2 log lines:\n{}", gw.stdout()));
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["error"], serde_json::Value::Null, "{l}");
        assert_eq!(v["total_tokens"], 142, "{l}");
    }
}

#[tokio::test]
async fn a_provider_that_goes_quiet_mid_stream_is_cut_after_the_idle_timeout() {
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    mock.pki.write_ca(&ca).unwrap();
    let b = GatewayBuilder::new()
        .config(stream_conf())
        .upstream(mock.addr, ca)
        .arg("--stream-idle-timeout")
        .arg("400ms");
    let gw = tokio::task::spawn_blocking(move || b.start())
        .await
        .unwrap();
    let req = || {
        Request::post(gw.url())
            .header("host", "test.com")
            .body(Full::new(Bytes::from_static(SEED_REQUEST.as_bytes())))
            .unwrap()
    };
    // Gaps shorter than the timeout, for longer than it in all: complete.
    mock.respond(|_| Reply::stream(6, Duration::from_millis(150)));
    let resp = client::send(req()).await;
    let frames = client::timed_frames(resp).await;
    let text: String = frames
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");

    // A gap longer than the timeout: the answer is cut, and the log says why.
    mock.respond(|_| Reply::Sse {
        events: vec![
            "data: {\"choices\":[]}\n\n".into(),
            "data: [DONE]\n\n".into(),
        ],
        delay: Duration::from_secs(3),
    });
    let started = std::time::Instant::now();
    let resp = client::send(req()).await;
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await;
    assert!(body.is_err(), "a cut stream must not look complete");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        gw.wait_output("the provider sent nothing for", Duration::from_secs(5)),
        "{}",
        gw.stdout()
    );
}

#[tokio::test]
async fn upstream_http1_only_keeps_to_http_1_1() {
    let s = quickstart(&["--upstream-http1-only"]).await;
    for _ in 0..3 {
        let a = post(&s.gw.url(), "test.com", SEED_REQUEST, &[]).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.body, SEED_COMPLETION.as_bytes());
    }
    let reqs = s.mock.requests();
    assert_eq!(reqs.len(), 3);
    for r in reqs {
        assert_eq!(r.version, http::Version::HTTP_11);
        assert_eq!(r.host.as_deref(), Some("dashscope.aliyuncs.com"));
    }
}

#[tokio::test]
async fn provider_connections_are_kept_and_replaced_when_the_provider_closes_them() {
    for (extra, version) in [
        (None, http::Version::HTTP_2),
        (Some("--upstream-http1-only"), http::Version::HTTP_11),
    ] {
        let mut args = vec!["--workers", "1"];
        args.extend(extra);
        let s = quickstart(&args).await;
        let round = || async {
            for _ in 0..3 {
                let a = post(&s.gw.url(), "test.com", SEED_REQUEST, &[]).await;
                assert_eq!(a.status, 200, "{extra:?}: {}", a.text());
                assert_eq!(a.body, SEED_COMPLETION.as_bytes());
            }
        };
        round().await;
        assert_eq!(s.mock.connections(), 1, "{extra:?}: one connection is kept");
        // The provider restarts its connections: GOAWAY on h2, a close on
        // HTTP/1.1. The next requests go on a new one, none fails.
        s.mock.close_connections();
        tokio::time::sleep(Duration::from_millis(300)).await;
        round().await;
        assert_eq!(s.mock.connections(), 2, "{extra:?}: then a new one");
        let reqs = s.mock.requests();
        assert_eq!(reqs.len(), 6);
        assert!(reqs.iter().all(|r| r.version == version), "{extra:?}");
    }
}

/// A provider that allows 2 concurrent HTTP/2 streams: requests beyond
/// that go on more connections (Envoy's pool), instead of waiting in line
/// on one; each connection stays within the limit.
#[tokio::test]
async fn more_provider_connections_when_the_stream_limit_is_reached() {
    let s = quickstart(&["--workers", "1"]).await;
    s.mock.limit_streams(2);
    s.mock.respond(|_| Reply::Slow {
        delay: Duration::from_millis(300),
        then: Box::new(Reply::completion()),
    });
    // One request first, so the connection's SETTINGS (the limit) are known.
    let a = post(&s.gw.url(), "test.com", SEED_REQUEST, &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(s.mock.connections(), 1);
    let url = s.gw.url();
    let all: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { post(&url, "test.com", SEED_REQUEST, &[]).await.status })
        })
        .collect();
    for r in all {
        assert_eq!(r.await.unwrap(), 200);
    }
    // 6 at once, 2 per connection: 3 connections (1 before, 2 more).
    assert_eq!(s.mock.connections(), 3);
    assert!(
        s.mock
            .requests()
            .iter()
            .all(|r| r.version == http::Version::HTTP_2)
    );
}

#[tokio::test]
async fn a_body_larger_than_the_providers_flow_control_window_arrives_whole() {
    // hyper's server (the mock) opens 1 MiB stream windows: 3 MiB needs
    // WINDOW_UPDATEs while the body is being sent.
    let s = quickstart(&["--max-request-body", "8MiB"]).await;
    let content = "x".repeat(3 << 20);
    let body = format!(r#"{{"messages":[{{"role":"user","content":"{content}"}}]}}"#);
    for _ in 0..2 {
        let a = post(&s.gw.url(), "test.com", &body, &[]).await;
        assert_eq!(a.status, 200, "{}", a.text());
    }
    let reqs = s.mock.requests();
    assert_eq!(reqs.len(), 2);
    for r in reqs {
        assert_eq!(r.version, http::Version::HTTP_2);
        assert_eq!(
            r.json()["messages"][0]["content"].as_str().map(str::len),
            Some(content.len())
        );
        assert_eq!(r.json()["model"], "qwen1.5-72b-chat");
    }
}

/// An HTTP/2-only TLS provider that answers with the seed's completion,
/// except that it resets its first `refuse` streams with `REFUSED_STREAM`
/// (not processed, RFC 9113 8.7) and, with `goaway_first`, answers the first
/// request of its first connection with a graceful GOAWAY whose last stream
/// id is 0 (that stream was not processed, RFC 9113 6.8). Counts the streams
/// it sees and the connections it accepts.
struct QuirkyProvider {
    addr: std::net::SocketAddr,
    streams: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    dir: tempfile::TempDir,
}

impl QuirkyProvider {
    /// The quickstart gateway in front of this provider.
    async fn gateway(&self) -> Gateway {
        let b = GatewayBuilder::new()
            .upstream(self.addr, self.dir.path().join("ca.pem"))
            .resolve_hosts(&["dashscope.aliyuncs.com"])
            .config(examples().join("quickstart"));
        tokio::task::spawn_blocking(move || b.start())
            .await
            .unwrap()
    }
}

async fn quirky_provider(refuse: usize, goaway_first: bool) -> QuirkyProvider {
    use std::sync::{Arc, atomic::AtomicUsize, atomic::Ordering::SeqCst};
    let pki = llmgw_tests::pki::Pki::new();
    let dir = tempfile::tempdir().unwrap();
    pki.write_ca(&dir.path().join("ca.pem")).unwrap();
    let leaf = pki.leaf(&["dashscope.aliyuncs.com"]);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(leaf.chain, leaf.key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let streams = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let (seen, accepted) = (streams.clone(), connections.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            let first = accepted.fetch_add(1, SeqCst) == 0;
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if first && goaway_first {
                    goaway_at_first_headers(&mut tls, &seen).await;
                    return;
                }
                let Ok(mut conn) = h2::server::handshake(tls).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    if seen.fetch_add(1, SeqCst) < refuse {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    let head = http::Response::builder()
                        .status(200)
                        .header("content-type", "application/json")
                        .body(())
                        .unwrap();
                    if let Ok(mut body) = respond.send_response(head, false) {
                        let _ =
                            body.send_data(Bytes::from_static(SEED_COMPLETION.as_bytes()), true);
                    }
                }
            });
        }
    });
    QuirkyProvider {
        addr,
        streams,
        connections,
        dir,
    }
}

/// Speaks just enough raw HTTP/2 to take a request and refuse it with a
/// graceful GOAWAY (NO_ERROR, last stream id 0): SETTINGS and its ACK, then
/// GOAWAY at the first HEADERS frame; reads on until the client closes, so
/// the GOAWAY is not lost to a reset.
async fn goaway_at_first_headers<S>(io: &mut S, seen: &std::sync::atomic::AtomicUsize)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const PREFACE: usize = 24;
    let frame = |kind: u8, flags: u8, payload: &[u8]| {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags, 0, 0, 0, 0]);
        f.extend_from_slice(payload);
        f
    };
    let mut buf = Vec::new();
    let mut at = PREFACE;
    let mut chunk = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = match tokio::time::timeout_at(deadline, io.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return,
        };
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= at + 9 {
            let len = u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]]) as usize;
            let (kind, flags) = (buf[at + 3], buf[at + 4]);
            if buf.len() < at + 9 + len {
                break;
            }
            at += 9 + len;
            let reply = match (kind, flags & 1) {
                // The client's SETTINGS: ours, and the acknowledgement.
                (0x4, 0) => [frame(0x4, 0, &[]), frame(0x4, 1, &[])].concat(),
                // HEADERS: GOAWAY, last stream id 0, NO_ERROR.
                (0x1, _) => {
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    frame(0x7, 0, &[0; 8])
                }
                _ => continue,
            };
            if io.write_all(&reply).await.is_err() || io.flush().await.is_err() {
                return;
            }
        }
    }
}

#[tokio::test]
async fn streams_the_provider_refuses_are_sent_again_twice_at_most() {
    use std::sync::atomic::Ordering::SeqCst;
    // Refused twice, then answered: the client sees the answer.
    // Refused three times: 502 after the two retries (three streams in all).
    for (refuse, status, streams) in [(2, 200, 3), (3, 502, 3)] {
        let p = quirky_provider(refuse, false).await;
        let gw = p.gateway().await;
        let a = post(&gw.url(), "test.com", SEED_REQUEST, &[]).await;
        assert_eq!(a.status, status, "refused {refuse}: {}", a.text());
        if status == 200 {
            assert_eq!(a.body, SEED_COMPLETION.as_bytes());
        } else {
            assert!(
                a.text().contains("REFUSED_STREAM") || a.text().contains("refused"),
                "{}",
                a.text()
            );
        }
        assert_eq!(p.streams.load(SeqCst), streams, "refused {refuse}");
    }
}

/// A provider closing its connection gracefully (GOAWAY with NO_ERROR) below
/// a request in flight has promised not to process it: the gateway sends it
/// again on a new connection, and the client sees the answer.
#[tokio::test]
async fn a_stream_beyond_a_graceful_goaway_is_sent_again_on_a_new_connection() {
    use std::sync::atomic::Ordering::SeqCst;
    let p = quirky_provider(0, true).await;
    let gw = p.gateway().await;
    let a = post(&gw.url(), "test.com", SEED_REQUEST, &[]).await;
    assert_eq!(a.status, 200, "{}\n{}", a.text(), gw.stderr());
    assert_eq!(a.body, SEED_COMPLETION.as_bytes());
    // One stream refused by GOAWAY on the first connection, one answered on
    // the second.
    assert_eq!(p.streams.load(SeqCst), 2);
    assert_eq!(p.connections.load(SeqCst), 2);
}

#[tokio::test]
async fn each_request_gets_an_id_the_provider_and_the_access_log_share() {
    for (trusted, client_id_kept) in [("0", false), ("1", true)] {
        let s = quickstart(&["--num-trusted-proxies", trusted]).await;
        let a = post(
            &s.gw.url(),
            "test.com",
            SEED_REQUEST,
            &[("x-request-id", "from-the-client-7")],
        )
        .await;
        assert_eq!(a.status, 200);
        let b = post(&s.gw.url(), "test.com", SEED_REQUEST, &[]).await;
        assert_eq!(b.status, 200);
        let ids: Vec<String> = s
            .mock
            .requests()
            .iter()
            .map(|r| {
                r.header("x-request-id")
                    .expect("x-request-id upstream")
                    .to_string()
            })
            .collect();
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[0] == "from-the-client-7", client_id_kept, "{ids:?}");
        for id in &ids[usize::from(client_id_kept)..] {
            assert_eq!(id.len(), 36, "a UUID: {id}");
        }
        assert_ne!(ids[0], ids[1]);
        let gw = &s.gw;
        let logged = eventually(Duration::from_secs(5), || async {
            let ids: Vec<String> = gw
                .stdout()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|v| v["request_id"].as_str().map(str::to_string))
                .collect();
            (ids.len() == 2).then_some(ids)
        })
        .await
        .expect("two access log lines");
        // Each worker writes its own lines: compare regardless of order.
        let (mut logged, mut sent) = (logged, ids);
        logged.sort();
        sent.sort();
        assert_eq!(logged, sent, "trusted proxies: {trusted}");
    }
}
