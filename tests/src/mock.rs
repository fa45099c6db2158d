//! A mock OpenAI-compatible provider over TLS (HTTP/1.1 and h2 by ALPN). It
//! records every request (method, path, Host, SNI, headers, body) and answers
//! from a script: a chat.completion with usage, an SSE stream of N chunks
//! with a delay, an error, a slow answer, or none at all.

use std::{
    collections::VecDeque,
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version, header};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use rustls::ServerConfig;
use tokio::{
    net::TcpListener,
    sync::{Notify, mpsc},
};
use tokio_rustls::TlsAcceptor;

use crate::pki::{AnyHost, Pki};

/// One request as the provider saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The Host header, or the `:authority` on h2.
    pub host: Option<String>,
    pub sni: Option<String>,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Recorded {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What the mock answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A status with a body and content type, as given.
    Body {
        status: u16,
        content_type: &'static str,
        body: String,
    },
    /// `text/event-stream`: each event is sent `delay` after the previous one
    /// (the first one too).
    Sse {
        events: Vec<String>,
        delay: Duration,
    },
    /// Waits, then answers.
    Slow { delay: Duration, then: Box<Reply> },
    /// Never answers.
    Hang,
}

/// The seed document's expected answer (step 4), verbatim.
pub const SEED_COMPLETION: &str = r#"{"choices":[{"message":{"role":"assistant","content":"Hello! I am Qwen, ..."},"finish_reason":"stop","index":0,"logprobs":null}],"object":"chat.completion","usage":{"prompt_tokens":12,"completion_tokens":130,"total_tokens":142},"created":1720682745,"system_fingerprint":null,"model":"qwen1.5-72b-chat","id":"chatcmpl-3608dcd5-e3ad-9ade-bc70-xxxxxxxxxxxxxx"}"#;

impl Reply {
    pub fn completion() -> Reply {
        Reply::json(200, SEED_COMPLETION)
    }

    pub fn json(status: u16, body: &str) -> Reply {
        Reply::Body {
            status,
            content_type: "application/json",
            body: body.to_string(),
        }
    }

    /// `n` content chunks (`"c0"`, `"c1"`, ...), a final usage chunk
    /// (prompt 5, completion `n`), then `[DONE]`.
    pub fn stream(n: usize, delay: Duration) -> Reply {
        let mut events: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"qwen1.5-72b-chat\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"c{i}\"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"
                )
            })
            .collect();
        events.push(format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"qwen1.5-72b-chat\",\"choices\":[],\"usage\":{{\"prompt_tokens\":5,\"completion_tokens\":{n},\"total_tokens\":{}}}}}\n\n",
            5 + n
        ));
        events.push("data: [DONE]\n\n".into());
        Reply::Sse { events, delay }
    }
}

type Script = dyn Fn(&Recorded) -> Reply + Send + Sync;

/// What happened to one streamed answer.
#[derive(Debug, Clone, Default)]
pub struct StreamLog {
    /// When each event was handed to the connection.
    pub sent: Vec<Instant>,
    /// When the mock found the receiver gone (the gateway dropped the stream).
    pub cancelled: Option<Instant>,
    pub completed: bool,
}

struct State {
    /// Keep requests (off for benchmarks, which send millions).
    record: std::sync::atomic::AtomicBool,
    requests: Mutex<Vec<Recorded>>,
    script: Mutex<Arc<Script>>,
    streams: Mutex<Vec<StreamLog>>,
    changed: Notify,
    /// Connections accepted (after TLS).
    connections: std::sync::atomic::AtomicUsize,
    /// Bumped to make every open connection shut down gracefully.
    shutdown: tokio::sync::watch::Sender<u64>,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS for new connections (0: hyper's default).
    max_streams: std::sync::atomic::AtomicU32,
}

pub struct MockProvider {
    pub addr: SocketAddr,
    pub pki: Arc<Pki>,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl MockProvider {
    /// Starts on 127.0.0.1 (a free port), answering `Reply::completion()`
    /// to JSON requests and `Reply::stream(3, 10ms)` to `"stream": true`.
    pub async fn start() -> Self {
        Self::start_with(Arc::new(Pki::new())).await
    }

    pub async fn start_with(pki: Arc<Pki>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("mock provider binds");
        Self::serve(listener, pki)
    }

    pub fn serve(listener: TcpListener, pki: Arc<Pki>) -> Self {
        let addr = listener.local_addr().expect("mock address");
        let state = Arc::new(State {
            record: std::sync::atomic::AtomicBool::new(true),
            requests: Mutex::new(Vec::new()),
            script: Mutex::new(Arc::new(default_script)),
            streams: Mutex::new(Vec::new()),
            changed: Notify::new(),
            connections: std::sync::atomic::AtomicUsize::new(0),
            shutdown: tokio::sync::watch::channel(0).0,
            max_streams: std::sync::atomic::AtomicU32::new(0),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(AnyHost(pki.clone())));
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(cfg));
        let task = tokio::spawn(accept_loop(listener, Some(acceptor), state.clone()));
        Self {
            addr,
            pki,
            state,
            task,
        }
    }

    /// Also serves plaintext HTTP on `listener` (same script and records),
    /// for baselines without TLS.
    pub fn serve_plain(&self, listener: TcpListener) {
        tokio::spawn(accept_loop(listener, None, self.state.clone()));
    }

    /// Whether requests are kept for [`MockProvider::requests`].
    pub fn set_recording(&self, on: bool) {
        self.state
            .record
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Replaces the script.
    pub fn respond(&self, f: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) {
        if let Ok(mut s) = self.state.script.lock() {
            *s = Arc::new(f);
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Shuts every open connection down gracefully, as a provider that
    /// restarts does: h2 sends GOAWAY, HTTP/1.1 closes once idle.
    /// Allows at most `n` concurrent HTTP/2 streams on connections accepted
    /// from now on.
    pub fn limit_streams(&self, n: u32) {
        self.state
            .max_streams
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn close_connections(&self) {
        self.state.shutdown.send_modify(|n| *n += 1);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    pub fn streams(&self) -> Vec<StreamLog> {
        self.state
            .streams
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Waits until `pred` holds for the stream logs, or `patience` passes.
    pub async fn wait_streams(
        &self,
        patience: Duration,
        pred: impl Fn(&[StreamLog]) -> bool,
    ) -> Vec<StreamLog> {
        let end = tokio::time::Instant::now() + patience;
        loop {
            let notified = self.state.changed.notified();
            let s = self.streams();
            if pred(&s) {
                return s;
            }
            if tokio::time::timeout_at(end, notified).await.is_err() {
                return self.streams();
            }
        }
    }

    /// Waits for at least `n` recorded requests.
    pub async fn wait_requests(&self, n: usize, patience: Duration) -> Vec<Recorded> {
        let end = tokio::time::Instant::now() + patience;
        loop {
            let notified = self.state.changed.notified();
            let r = self.requests();
            if r.len() >= n {
                return r;
            }
            if tokio::time::timeout_at(end, notified).await.is_err() {
                return self.requests();
            }
        }
    }
}

impl Drop for MockProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, st: Arc<State>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let tls = tls.clone();
        let st = st.clone();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let sni = tls.get_ref().1.server_name().map(str::to_string);
                    serve_conn(TokioIo::new(tls), sni, st).await;
                }
                None => serve_conn(TokioIo::new(tcp), None, st).await,
            }
        });
    }
}

async fn serve_conn<I>(io: I, sni: Option<String>, st: Arc<State>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    st.connections
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut shutdown = st.shutdown.subscribe();
    shutdown.mark_unchanged();
    let max = st.max_streams.load(std::sync::atomic::Ordering::Relaxed);
    let svc = service_fn(move |req| {
        let st = st.clone();
        let sni = sni.clone();
        async move { Ok::<_, Infallible>(answer(req, sni, st).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if max > 0 {
        builder.http2().max_concurrent_streams(max);
    }
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = shutdown.changed() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

fn default_script(r: &Recorded) -> Reply {
    if r.json()["stream"] == serde_json::json!(true) {
        Reply::stream(3, Duration::from_millis(10))
    } else {
        Reply::completion()
    }
}

async fn answer(req: Request<Incoming>, sni: Option<String>, st: Arc<State>) -> Response<MockBody> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()));
    let rec = Recorded {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string(),
        host,
        sni,
        version: parts.version,
        headers: parts.headers,
        body,
        at: Instant::now(),
    };
    let script = st.script.lock().map(|s| s.clone()).ok();
    let reply = script.map_or_else(Reply::completion, |s| s(&rec));
    if st.record.load(std::sync::atomic::Ordering::Relaxed)
        && let Ok(mut r) = st.requests.lock()
    {
        r.push(rec);
    }
    st.changed.notify_waiters();
    render(reply, st).await
}

async fn render(mut reply: Reply, st: Arc<State>) -> Response<MockBody> {
    loop {
        match reply {
            Reply::Slow { delay, then } => {
                tokio::time::sleep(delay).await;
                reply = *then;
            }
            Reply::Hang => std::future::pending::<()>().await,
            Reply::Body {
                status,
                content_type,
                body,
            } => {
                let mut r = Response::new(MockBody::Full(Some(Bytes::from(body))));
                *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(content_type),
                );
                return r;
            }
            Reply::Sse { events, delay } => {
                let (tx, rx) = mpsc::channel::<Bytes>(1);
                let index = st
                    .streams
                    .lock()
                    .map(|mut s| {
                        s.push(StreamLog::default());
                        s.len() - 1
                    })
                    .unwrap_or(0);
                let st2 = st.clone();
                tokio::spawn(async move {
                    let log = |f: &dyn Fn(&mut StreamLog)| {
                        if let Ok(mut s) = st2.streams.lock()
                            && let Some(l) = s.get_mut(index)
                        {
                            f(l);
                        }
                        st2.changed.notify_waiters();
                    };
                    let mut queue: VecDeque<String> = events.into();
                    while let Some(ev) = queue.pop_front() {
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = tx.closed() => {
                                log(&|l| l.cancelled = Some(Instant::now()));
                                return;
                            }
                        }
                        if tx.send(Bytes::from(ev)).await.is_err() {
                            log(&|l| l.cancelled = Some(Instant::now()));
                            return;
                        }
                        log(&|l| l.sent.push(Instant::now()));
                    }
                    log(&|l| l.completed = true);
                });
                let mut r = Response::new(MockBody::Channel(rx));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/event-stream"),
                );
                r.headers_mut().insert(
                    header::CACHE_CONTROL,
                    header::HeaderValue::from_static("no-cache"),
                );
                return r;
            }
        }
    }
}

/// A whole body, or chunks as the script sends them.
pub enum MockBody {
    Full(Option<Bytes>),
    Channel(mpsc::Receiver<Bytes>),
}

impl http_body::Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            MockBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Channel(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, MockBody::Full(None))
    }

    /// A whole body is sent with its Content-Length, as providers do.
    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            MockBody::Full(b) => {
                http_body::SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64))
            }
            MockBody::Channel(_) => http_body::SizeHint::default(),
        }
    }
}
