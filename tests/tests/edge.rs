//! Slow and abusive clients over real sockets, each against the quickstart
//! with the mock provider: bodies declared and never sent, clients that stop
//! reading (HTTP/1.1 and HTTP/2, alone and sharing a provider connection
//! with a good client), trickling bodies, slowloris headers, idle
//! keep-alive connections and a process short of file descriptors. Each
//! case checks what the good client gets, what the gateway holds, and what
//! `/metrics` and the access log say.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use llmgw_tests::{
    client::SEED_REQUEST,
    eventually,
    gateway::{Gateway, GatewayBuilder, examples},
    mock::{MockProvider, Reply},
    raise_open_files,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const MIB: usize = 1024 * 1024;

struct Setup {
    mock: MockProvider,
    gw: Gateway,
    _dir: tempfile::TempDir,
}

/// The quickstart in front of the mock; `binary`: the built binary (its
/// memory and descriptors can be read), else in this process.
async fn quickstart(extra: &[&str], binary: Option<(u64, u64)>) -> Setup {
    raise_open_files();
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    mock.pki.write_ca(&ca).unwrap();
    let mut b = GatewayBuilder::new()
        .upstream(mock.addr, ca)
        .config(examples().join("quickstart"));
    match binary {
        None => b = b.in_process(),
        Some((soft, hard)) => b = b.open_files(soft, hard),
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

fn addr(gw: &Gateway) -> SocketAddr {
    ([127, 0, 0, 1], gw.port(80)).into()
}

/// The value of the sample `name` (with its labels, as printed) in `/metrics`.
fn metric(gw: &Gateway, name: &str) -> f64 {
    let text = gw.metrics();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

async fn wait_metric(gw: &Gateway, name: &str, ok: impl Fn(f64) -> bool, patience: Duration) {
    let got = eventually(patience, || async {
        let v = metric(gw, name);
        ok(v).then_some(v)
    })
    .await;
    assert!(
        got.is_some(),
        "{name} is {} after {patience:?}",
        metric(gw, name)
    );
}

/// An HTTP/1.1 request head for the quickstart's route.
fn head(content_length: usize) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: test.com\r\n\
         Content-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n"
    )
}

/// A whole request, sent on a fresh connection that is then never read.
async fn send_and_never_read(gw: &Gateway) -> TcpStream {
    let mut s = TcpStream::connect(addr(gw)).await.unwrap();
    let req = format!("{}{SEED_REQUEST}", head(SEED_REQUEST.len()));
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

/// Reads until the gateway closes the connection (or `patience` passes):
/// the bytes read and whether it closed.
async fn read_to_close(s: &mut TcpStream, patience: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    let end = tokio::time::Instant::now() + patience;
    loop {
        match tokio::time::timeout_at(end, s.read(&mut buf)).await {
            Err(_) => return (got, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// An answer of `size` bytes as server-sent events of 64 KiB, sent as fast
/// as the gateway takes them (so the mock sees when it stops taking them).
fn big_stream(size: usize) -> Reply {
    let event = format!("data: {}\n\n", "x".repeat(64 * 1024 - 8));
    Reply::Sse {
        events: vec![event; size / (64 * 1024)],
        delay: Duration::ZERO,
    }
}

/// An HTTP/2 (prior knowledge) connection to the gateway.
async fn h2c(
    gw: &Gateway,
    stream_window: u32,
) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tcp = TcpStream::connect(addr(gw)).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(stream_window)
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// The seed's request; `gw`: to its address (HTTP/1.1 clients connect
/// where the URI says), else with `test.com` as the authority (HTTP/2).
fn seed_request(gw: Option<&Gateway>) -> Request<Full<Bytes>> {
    let base = gw.map_or_else(|| "http://test.com".to_string(), Gateway::url);
    Request::post(format!("{base}/v1/chat/completions"))
        .header("host", "test.com")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(SEED_REQUEST.as_bytes())))
        .unwrap()
}

#[tokio::test]
async fn a_declared_body_takes_memory_only_as_it_arrives() {
    // 500 requests declare 10 MiB (the largest allowed) and send 10 bytes.
    let s = quickstart(&[], Some((20_000, 20_000))).await;
    // Large bodies first, as a gateway in service has seen: the allocator
    // then serves big buffers from memory it keeps, not fresh mappings.
    let big = format!("{{\"messages\":[],\"pad\":\"{}\"}}", " ".repeat(8 * MIB));
    for _ in 0..4 {
        let a = llmgw_tests::client::post(&s.gw.url(), "test.com", &big, &[]).await;
        assert_eq!(a.status, 200, "{}", a.text());
    }
    let before = (s.gw.rss().unwrap(), s.gw.virtual_memory().unwrap());
    let mut conns = Vec::new();
    for _ in 0..500 {
        let mut c = TcpStream::connect(addr(&s.gw)).await.unwrap();
        c.write_all(format!("{}{{\"mes", head(10 * MIB)).as_bytes())
            .await
            .unwrap();
        conns.push(c);
    }
    // The rest of the 10 bytes apart, so the body is more than one frame.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for c in &mut conns {
        c.write_all(b"sages").await.unwrap();
    }
    wait_metric(
        &s.gw,
        "llmgw_request_body_bytes_held",
        |v| v == 5000.0,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(metric(&s.gw, "llmgw_requests_in_flight"), 500.0);
    let rss = s.gw.rss().unwrap().saturating_sub(before.0);
    let reserved = s.gw.virtual_memory().unwrap().saturating_sub(before.1);
    eprintln!("500 bodies of 10 bytes: RSS +{rss} bytes, virtual +{reserved} bytes");
    assert!(
        rss < 100 * MIB as u64,
        "500 bodies of 10 bytes took {} MiB",
        rss / MIB as u64
    );
    // Not even reserved (whether a reserve becomes resident depends on the
    // allocator and transparent huge pages: 2 MiB each where always on).
    assert!(
        reserved < 500 * MIB as u64,
        "500 bodies of 10 bytes reserved {} MiB",
        reserved / MIB as u64
    );
    drop(conns);
    wait_metric(
        &s.gw,
        "llmgw_request_body_bytes_held",
        |v| v == 0.0,
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test]
async fn bodies_in_flight_together_are_bounded() {
    let s = quickstart(&["--max-buffered-bodies", "4KiB"], None).await;
    // One request holds 3,000 bytes of a 5,000-byte body.
    let mut holder = TcpStream::connect(addr(&s.gw)).await.unwrap();
    let mut req = head(5000).into_bytes();
    req.extend(std::iter::repeat_n(b' ', 3000));
    holder.write_all(&req).await.unwrap();
    wait_metric(
        &s.gw,
        "llmgw_request_body_bytes_held",
        |v| v == 3000.0,
        Duration::from_secs(5),
    )
    .await;
    // Another body of 2,000 bytes would pass 4 KiB together: 503, retry.
    let big = format!("{{\"messages\":[],\"pad\":\"{}\"}}", " ".repeat(2000));
    let resp = llmgw_tests::client::post(&s.gw.url(), "test.com", &big, &[]).await;
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert_eq!(resp.headers["retry-after"], "1");
    assert!(resp.text().contains("request bodies"), "{}", resp.text());
    assert_eq!(metric(&s.gw, "llmgw_request_bodies_refused_total"), 1.0);
    // A small one still fits.
    let ok = llmgw_tests::client::post(&s.gw.url(), "test.com", SEED_REQUEST, &[]).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    // Once the holder leaves, the room is back.
    drop(holder);
    wait_metric(
        &s.gw,
        "llmgw_request_body_bytes_held",
        |v| v == 0.0,
        Duration::from_secs(5),
    )
    .await;
    let resp = llmgw_tests::client::post(&s.gw.url(), "test.com", &big, &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[tokio::test]
async fn clients_that_never_read_do_not_stall_others_on_a_shared_http2_provider_connection() {
    // One worker: every request shares its one warm HTTP/2 connection to
    // the provider. No stall cut during the test.
    let s = quickstart(&["--workers", "1", "--stream-idle-timeout", "300s"], None).await;
    let answer = "x".repeat(16 * MIB);
    s.mock.respond(move |_| Reply::Body {
        status: 200,
        content_type: "application/octet-stream",
        body: answer.clone(),
    });
    let good = |gw: &Gateway| {
        let req = seed_request(Some(gw));
        async move {
            let resp = llmgw_tests::client::send(req).await;
            let status = resp.status();
            let body = tokio::time::timeout(Duration::from_secs(30), resp.into_body().collect())
                .await
                .map(|b| b.map(|b| b.to_bytes().len()));
            (status, body)
        }
    };
    // Warm.
    let (status, body) = good(&s.gw).await;
    assert_eq!(status, 200);
    assert_eq!(body.unwrap().unwrap(), 16 * MIB);
    // Ten clients ask and never read.
    let mut stalled = Vec::new();
    for _ in 0..10 {
        stalled.push(send_and_never_read(&s.gw).await);
    }
    s.mock.wait_requests(11, Duration::from_secs(10)).await;
    assert_eq!(s.mock.connections(), 1, "all on one provider connection");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..3 {
        let (status, body) = good(&s.gw).await;
        assert_eq!(status, 200);
        match body {
            Ok(Ok(n)) => assert_eq!(n, 16 * MIB, "answer {i}: every byte"),
            Ok(Err(e)) => panic!("answer {i} failed: {e}"),
            Err(_) => panic!("answer {i} stalled behind the clients that do not read"),
        }
    }
    drop(stalled);
}

#[tokio::test]
async fn an_http1_client_that_stops_reading_is_cut_and_the_provider_released() {
    let s = quickstart(&["--stream-idle-timeout", "2s"], Some((20_000, 20_000))).await;
    s.mock.respond(|_| big_stream(64 * MIB));
    let started = Instant::now();
    let mut c = send_and_never_read(&s.gw).await;
    // The provider sees the stream cancelled once the client took nothing
    // for 2 s (and the sweep, once a second, noticed).
    let cancelled = s
        .mock
        .wait_streams(Duration::from_secs(15), |l| {
            l.first().is_some_and(|l| l.cancelled.is_some())
        })
        .await;
    let at = cancelled[0]
        .cancelled
        .expect("the provider's stream cancelled")
        .duration_since(started);
    assert!(at >= Duration::from_secs(2), "cut after {at:?}");
    wait_metric(
        &s.gw,
        "llmgw_downstream_timeouts_total{kind=\"write\"}",
        |v| v == 1.0,
        Duration::from_secs(5),
    )
    .await;
    // The client's connection was closed: what it can still read is what
    // sat in the socket buffers, far from the whole answer.
    let (got, closed) = read_to_close(&mut c, Duration::from_secs(10)).await;
    assert!(closed, "the connection is closed");
    assert!(got.len() < 64 * MIB, "read {} bytes", got.len());
    let gw = &s.gw;
    let line = eventually(Duration::from_secs(5), || async {
        gw.stdout()
            .lines()
            .find(|l| l.contains("stopped reading"))
            .map(str::to_string)
    })
    .await
    .unwrap_or_else(|| panic!("no access log line for the cut:\n{}", gw.stdout()));
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
    let sent = entry["bytes_sent"].as_u64().unwrap();
    assert!(
        sent <= got.len() as u64,
        "logged {sent} bytes sent, the client got {} (with headers)",
        got.len()
    );
    assert_eq!(metric(gw, "llmgw_requests_in_flight"), 0.0);
}

#[tokio::test]
async fn an_http2_stream_that_stops_reading_is_cut_and_the_provider_released() {
    let s = quickstart(&["--stream-idle-timeout", "2s"], None).await;
    s.mock.respond(|_| big_stream(16 * MIB));
    let mut h2 = h2c(&s.gw, 65_535).await;
    // The stream's window fills and is never given back.
    let resp = h2.send_request(seed_request(None)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let streams = s
        .mock
        .wait_streams(Duration::from_secs(15), |l| {
            l.first().is_some_and(|l| l.cancelled.is_some())
        })
        .await;
    assert!(
        streams.first().is_some_and(|l| l.cancelled.is_some()),
        "the provider's stream is cancelled: {streams:?}"
    );
    wait_metric(
        &s.gw,
        "llmgw_downstream_timeouts_total{kind=\"write\"}",
        |v| v == 1.0,
        Duration::from_secs(5),
    )
    .await;
    // Reading now: the stream ends in an error, not a whole answer.
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect()).await;
    match body {
        Ok(Ok(b)) => panic!("a whole answer of {} bytes", b.to_bytes().len()),
        Ok(Err(_)) => {}
        Err(_) => panic!("the stream was neither reset nor closed"),
    }
    let gw = &s.gw;
    let line = eventually(Duration::from_secs(5), || async {
        gw.stdout()
            .lines()
            .find(|l| l.contains("stopped reading"))
            .map(str::to_string)
    })
    .await
    .unwrap_or_else(|| panic!("no access log line for the cut:\n{}", gw.stdout()));
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
    // The client's window let 64 KiB through; one more frame may sit in
    // HTTP/2's send buffer, never more.
    assert!(
        entry["bytes_sent"].as_u64().unwrap() < 2 * 65_536,
        "logged more than the window let through: {line}"
    );
}

#[tokio::test]
async fn a_request_body_has_a_deadline() {
    let s = quickstart(&["--request-body-timeout", "2s"], None).await;
    let mut c = TcpStream::connect(addr(&s.gw)).await.unwrap();
    c.write_all(head(1000).as_bytes()).await.unwrap();
    let started = Instant::now();
    // A byte every 300 ms: never idle, never done.
    let trickle = async {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if c.write_all(b" ").await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = trickle => {}
        _ = tokio::time::sleep(Duration::from_secs(10)) => panic!("not cut in 10 s"),
        _ = wait_metric(&s.gw, "llmgw_downstream_timeouts_total{kind=\"body\"}", |v| v == 1.0, Duration::from_secs(10)) => {}
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(2), "cut after {took:?}");
    let gw = &s.gw;
    let line = eventually(Duration::from_secs(5), || async {
        gw.stdout()
            .lines()
            .find(|l| l.contains("\"status\":408"))
            .map(str::to_string)
    })
    .await
    .expect("a 408 in the access log");
    assert!(line.contains("request body"), "{line}");
}

#[tokio::test]
async fn a_request_body_must_keep_a_minimum_rate() {
    let s = quickstart(&["--request-body-min-rate", "1KiB"], None).await;
    let mut c = TcpStream::connect(addr(&s.gw)).await.unwrap();
    c.write_all(head(100_000).as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let (mut rd, mut wr) = c.split();
    let trickle = async {
        // 100 bytes a second, well below 1 KiB.
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if wr.write_all(&[b' '; 10]).await.is_err() {
                break;
            }
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = trickle => {}
        r = tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut answer)) => {
            assert!(r.is_ok(), "no answer in 20 s");
        }
    }
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("slower than 1024 bytes a second"), "{text}");
    // The grace period (10 s) passes first.
    assert!(took >= Duration::from_secs(10), "cut after {took:?}");
}

#[tokio::test]
async fn slowloris_headers_and_idle_connections_time_out_each_by_its_own_setting() {
    let s = quickstart(
        &["--header-read-timeout", "1s", "--idle-timeout", "3s"],
        None,
    )
    .await;
    // Headers that never end: closed after 1 s.
    let mut slow = TcpStream::connect(addr(&s.gw)).await.unwrap();
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: test.com\r\n")
        .await
        .unwrap();
    let t = Instant::now();
    let (_, closed) = read_to_close(&mut slow, Duration::from_secs(5)).await;
    assert!(closed);
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    wait_metric(
        &s.gw,
        "llmgw_downstream_timeouts_total{kind=\"header\"}",
        |v| v == 1.0,
        Duration::from_secs(2),
    )
    .await;

    // A keep-alive connection after its answer: open past the header
    // timeout, closed after the idle timeout.
    let mut idle = TcpStream::connect(addr(&s.gw)).await.unwrap();
    let req = format!("{}{SEED_REQUEST}", head(SEED_REQUEST.len()));
    idle.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0; 64 * 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let t = Instant::now();
    assert_eq!(
        metric(&s.gw, "llmgw_downstream_connections{protocol=\"http1\"}"),
        1.0
    );
    let (_, closed) = read_to_close(&mut idle, Duration::from_secs(8)).await;
    assert!(closed);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(6),
        "idle connection closed after {took:?}"
    );
    wait_metric(
        &s.gw,
        "llmgw_downstream_timeouts_total{kind=\"idle\"}",
        |v| v == 1.0,
        Duration::from_secs(2),
    )
    .await;

    // An HTTP/2 connection with no stream open: the idle timeout too.
    let mut h2 = h2c(&s.gw, 65_535).await;
    let resp = h2.send_request(seed_request(None)).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    assert_eq!(
        metric(&s.gw, "llmgw_downstream_connections{protocol=\"http2\"}"),
        1.0
    );
    let closed = eventually(Duration::from_secs(8), || {
        let ready = h2.is_closed();
        async move { ready.then_some(()) }
    })
    .await;
    assert!(closed.is_some(), "the idle HTTP/2 connection is closed");
    wait_metric(
        &s.gw,
        "llmgw_downstream_timeouts_total{kind=\"idle\"}",
        |v| v == 2.0,
        Duration::from_secs(2),
    )
    .await;
    wait_metric(
        &s.gw,
        "llmgw_downstream_connections{protocol=\"http2\"}",
        |v| v == 0.0,
        Duration::from_secs(2),
    )
    .await;
}

#[tokio::test]
async fn the_open_file_limit_is_raised_to_the_hard_limit() {
    let s = quickstart(&[], Some((256, 4096))).await;
    let gw = &s.gw;
    assert!(
        gw.wait_output("open-file limit", Duration::from_secs(5)),
        "{}",
        gw.stderr()
    );
    let line = gw
        .stderr()
        .lines()
        .find(|l| l.contains("open-file limit"))
        .unwrap()
        .to_string();
    assert!(line.contains("soft_before=256"), "{line}");
    assert!(line.contains("soft=4096"), "{line}");
    assert!(line.contains("hard=4096"), "{line}");
}

#[tokio::test]
async fn short_of_descriptors_the_admin_server_still_answers() {
    // 256 descriptors and no way up: clients may hold 256 less a reserve.
    let s = quickstart(&["--workers", "2"], Some((256, 256))).await;
    let gw = &s.gw;
    let mut idle = Vec::new();
    for _ in 0..400 {
        if let Ok(c) = TcpStream::connect(addr(gw)).await {
            idle.push(c);
        }
    }
    wait_metric(
        gw,
        "llmgw_downstream_accept_paused_total",
        |v| v >= 1.0,
        Duration::from_secs(5),
    )
    .await;
    let max: f64 = gw
        .stderr()
        .split("max_connections=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no max_connections in the log:\n{}", gw.stderr()));
    assert!(max > 100.0 && max < 256.0, "{max}");
    let open = metric(gw, "llmgw_downstream_connections{protocol=\"handshake\"}");
    // Each of the two workers looks at the count, then accepts: one may
    // pass it by one.
    assert!(
        open >= max && open <= max + 1.0,
        "{open} connections accepted"
    );
    let (status, _) = gw.admin_get("/ready");
    assert_eq!(status, 200);
    assert_eq!(
        metric(gw, "llmgw_downstream_accept_fd_exhausted_total"),
        0.0,
        "the reserve kept the process from running out"
    );
    // Once they leave, clients are served again.
    drop(idle);
    let ok = llmgw_tests::client::post(&gw.url(), "test.com", SEED_REQUEST, &[]).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert!(
        !gw.stderr().contains("Too many open files"),
        "{}",
        gw.stderr()
    );
}

#[tokio::test]
async fn past_the_most_stalled_answers_the_longest_stalled_are_cut_early() {
    let s = quickstart(
        &[
            "--max-stalled-answers",
            "2",
            "--stream-idle-timeout",
            "300s",
        ],
        None,
    )
    .await;
    s.mock.respond(|_| big_stream(64 * MIB));
    let mut stalled = Vec::new();
    for _ in 0..5 {
        stalled.push(send_and_never_read(&s.gw).await);
    }
    // Three of five are cut (their provider streams cancelled), long
    // before the stream idle timeout.
    let streams = s
        .mock
        .wait_streams(Duration::from_secs(15), |l| {
            l.iter().filter(|l| l.cancelled.is_some()).count() >= 3
        })
        .await;
    assert_eq!(
        streams.iter().filter(|l| l.cancelled.is_some()).count(),
        3,
        "{streams:?}"
    );
    assert_eq!(metric(&s.gw, "llmgw_stalled_answers_shed_total"), 3.0);
    wait_metric(
        &s.gw,
        "llmgw_stalled_answers",
        |v| v == 2.0,
        Duration::from_secs(5),
    )
    .await;
    let gw = &s.gw;
    let cut = eventually(Duration::from_secs(5), || async {
        let n = gw
            .stdout()
            .lines()
            .filter(|l| l.contains("too many stalled answers"))
            .count();
        (n == 3).then_some(n)
    })
    .await;
    assert_eq!(cut, Some(3), "{}", gw.stdout());
    // A client that reads is served meanwhile.
    s.mock.respond(|_| Reply::completion());
    let ok = llmgw_tests::client::post(&gw.url(), "test.com", SEED_REQUEST, &[]).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    drop(stalled);
}
