//! The client side: HTTPS to providers with rustls (webpki and native roots
//! plus `--upstream-ca`), `--resolve` overrides, HTTP/2 when ALPN offers it
//! (driven with the `h2` crate directly: a request's headers and its whole,
//! already read body go out in one write, with no task per request), else
//! HTTP/1.1 (hyper's connection), one keep-alive pool per (connect
//! authority, TLS name) per worker, and the connect and response-header
//! timeouts. Failures are classified for the 502/504 mapping.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    path::Path,
    pin::Pin,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Frame, SizeHint};
use http_body_util::Full;
use hyper::{body::Incoming, client::conn::http1};
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, RootCertStore, pki_types::ServerName};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use thiserror::Error;
use tokio::{
    net::TcpStream,
    sync::{Notify, oneshot},
};
use tokio_rustls::{TlsConnector, client::TlsStream};
use tracing::debug;

use super::body::BoxError;
use crate::observe::metrics::UpstreamErrorKind;

/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);
/// Idle connections kept per pool.
const POOL_MAX_IDLE: usize = 256;

#[derive(Debug, Error)]
pub enum UpstreamError {
    #[error("cannot resolve {authority}: {source}")]
    Resolve {
        authority: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        authority: String,
        #[source]
        source: io::Error,
    },
    #[error("TLS with {authority} failed: {source}")]
    Tls {
        authority: String,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {authority} timed out after {after:?}")]
    ConnectTimeout { authority: String, after: Duration },
    #[error("{authority} sent no response headers within {after:?}")]
    ResponseTimeout { authority: String, after: Duration },
    #[error("request to {authority} failed: {message}")]
    Protocol { authority: String, message: String },
}

impl UpstreamError {
    pub fn kind(&self) -> UpstreamErrorKind {
        match self {
            UpstreamError::Resolve { .. } | UpstreamError::Connect { .. } => {
                UpstreamErrorKind::Connect
            }
            UpstreamError::Tls { .. } => UpstreamErrorKind::Tls,
            UpstreamError::ConnectTimeout { .. } | UpstreamError::ResponseTimeout { .. } => {
                UpstreamErrorKind::Timeout
            }
            UpstreamError::Protocol { .. } => UpstreamErrorKind::Protocol,
        }
    }

    pub fn is_timeout(&self) -> bool {
        self.kind() == UpstreamErrorKind::Timeout
    }
}

#[derive(Debug, Error)]
pub enum TlsSetupError {
    #[error("upstream CA file {path}: {message}")]
    Ca { path: String, message: String },
    #[error("TLS client configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The rustls client configuration for providers; ALPN offers h2 (when
/// `http2`) and http/1.1.
pub fn client_tls(
    upstream_ca: Option<&Path>,
    http2: bool,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // Native roots are best effort: a minimal container may have none.
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = upstream_ca {
        let ca_err = |message: String| TlsSetupError::Ca {
            path: path.display().to_string(),
            message,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| ca_err(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| ca_err(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_err("no PEM certificate in it".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| ca_err(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(cfg))
}

/// `--resolve HOST:PORT:ADDR[,ADDR...]`: connect to the ADDRs (in order)
/// when the provider is HOST:PORT, like curl; HOST `*` stands for any host.
/// An ADDR may carry its own port (`127.0.0.1:8443`, `[::1]:8443`), which
/// local test setups need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveOverride {
    /// Lower case; `*` matches every host.
    pub host: String,
    pub port: u16,
    pub addrs: Vec<SocketAddr>,
}

impl ResolveOverride {
    fn applies_to(&self, host: &str, port: u16) -> bool {
        self.port == port && (self.host == "*" || self.host.eq_ignore_ascii_case(host))
    }
}

impl std::str::FromStr for ResolveOverride {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.splitn(3, ':');
        let (Some(host), Some(port), Some(list)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("{s:?}: expected HOST:PORT:ADDR[,ADDR...]"));
        };
        if host.is_empty() {
            return Err(format!("{s:?}: the host is empty (use * for any host)"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{s:?}: {port:?} is not a port"))?;
        let addrs = list
            .split(',')
            .map(|addr| {
                let addr = addr.trim();
                if let Ok(sa) = addr.parse::<SocketAddr>() {
                    return Ok(sa);
                }
                let ip = addr.trim_start_matches('[').trim_end_matches(']');
                ip.parse::<IpAddr>()
                    .map(|ip| SocketAddr::new(ip, port))
                    .map_err(|_| format!("{s:?}: {addr:?} is not an IP address (or IP:PORT)"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ResolveOverride {
            host: host.to_ascii_lowercase(),
            port,
            addrs,
        })
    }
}

/// Everything a connection to one provider endpoint needs.
struct Target {
    host: String,
    port: u16,
    /// Addresses from `--resolve`, tried first and only.
    pinned: Vec<SocketAddr>,
    server_name: ServerName<'static>,
    tls: TlsConnector,
    connect_timeout: Duration,
}

/// Why a connection could not be made.
#[derive(Debug, Error)]
enum ConnectError {
    #[error("resolve: {0}")]
    Resolve(#[source] io::Error),
    #[error("connect: {0}")]
    Connect(#[source] io::Error),
    #[error("tls: {0}")]
    Tls(#[source] io::Error),
    #[error("timed out")]
    Timeout,
    #[error("HTTP/2 handshake: {0}")]
    Handshake(String),
}

impl Target {
    async fn connect(&self) -> Result<TlsStream<TcpStream>, ConnectError> {
        let addrs: Vec<SocketAddr> = if self.pinned.is_empty() {
            tokio::net::lookup_host((self.host.as_str(), self.port))
                .await
                .map_err(ConnectError::Resolve)?
                .collect()
        } else {
            self.pinned.clone()
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        let mut tcp = None;
        for a in addrs {
            match TcpStream::connect(a).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let tcp = tcp.ok_or(ConnectError::Connect(last))?;
        let _ = tcp.set_nodelay(true);
        self.tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(ConnectError::Tls)
    }
}

/// Settings of the upstream side.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub resolve: Vec<ResolveOverride>,
}

/// One worker's connections to providers: a pool per (authority, TLS name),
/// kept across reloads.
pub struct Upstreams {
    tls: TlsConnector,
    opts: UpstreamOptions,
    /// authority → [(TLS name, pool)]: looked up with `&str`, no allocation.
    pools: RwLock<PoolMap>,
}

type PoolMap = HashMap<String, Vec<(String, Arc<Pool>)>>;

impl Upstreams {
    pub fn new(tls: Arc<ClientConfig>, opts: UpstreamOptions) -> Self {
        Self {
            tls: TlsConnector::from(tls),
            opts,
            pools: RwLock::new(HashMap::new()),
        }
    }

    pub fn response_timeout(&self) -> Duration {
        self.opts.response_timeout
    }

    fn pool(&self, authority: &str, sni: &str) -> Result<Arc<Pool>, UpstreamError> {
        if let Ok(map) = self.pools.read()
            && let Some((_, p)) = map
                .get(authority)
                .and_then(|v| v.iter().find(|(s, _)| s == sni))
        {
            return Ok(p.clone());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().unwrap_or(443)),
            None => (authority, 443),
        };
        let server_name =
            ServerName::try_from(sni.to_string()).map_err(|e| UpstreamError::Tls {
                authority: authority.to_string(),
                source: io::Error::new(io::ErrorKind::InvalidInput, e),
            })?;
        // The first entry for this host wins (as in curl), a named host
        // before `*`.
        let pinned = self
            .opts
            .resolve
            .iter()
            .filter(|r| r.host != "*")
            .chain(self.opts.resolve.iter().filter(|r| r.host == "*"))
            .find(|r| r.applies_to(host, port))
            .map(|r| r.addrs.clone())
            .unwrap_or_default();
        let pool = Arc::new(Pool {
            authority: authority.to_string(),
            target: Target {
                host: host.to_string(),
                port,
                pinned,
                server_name,
                tls: self.tls.clone(),
                connect_timeout: self.opts.connect_timeout,
            },
            state: Mutex::default(),
            h2_made: Notify::new(),
        });
        let mut map = match self.pools.write() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let v = map.entry(authority.to_string()).or_default();
        if let Some((_, p)) = v.iter().find(|(s, _)| s == sni) {
            return Ok(p.clone());
        }
        v.push((sni.to_string(), pool.clone()));
        Ok(pool)
    }

    /// Sends `req` (absolute `https://` URI; the authority goes out as `Host`
    /// on HTTP/1.1 and as `:authority` alone on HTTP/2) to `authority`, TLS
    /// name `sni`; waits for the response headers up to the response timeout
    /// (connecting included, within its own connect timeout).
    pub async fn send(
        &self,
        authority: &str,
        sni: &str,
        req: Request<Bytes>,
    ) -> Result<Response<UpstreamIncoming>, UpstreamError> {
        let pool = self.pool(authority, sni)?;
        let after = self.opts.response_timeout;
        match tokio::time::timeout(after, pool.send(req)).await {
            Err(_) => Err(UpstreamError::ResponseTimeout {
                authority: authority.to_string(),
                after,
            }),
            Ok(r) => r,
        }
    }

    /// Drops the pools `keep` does not want (those of providers a reload
    /// removed), with their connections.
    pub fn retain(&self, keep: impl Fn(&str, &str) -> bool) {
        let mut map = match self.pools.write() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        for (authority, pools) in map.iter_mut() {
            pools.retain(|(sni, _)| keep(authority, sni));
        }
        map.retain(|_, pools| !pools.is_empty());
    }

    /// How many pools there are (one per provider endpoint used).
    pub fn pool_count(&self) -> usize {
        self.pools
            .read()
            .map_or(0, |m| m.values().map(Vec::len).sum())
    }

    /// Closes connections idle for longer than `POOL_IDLE` (called every
    /// second by the worker's heartbeat).
    pub fn close_idle(&self, now: Instant) {
        let Ok(map) = self.pools.read() else { return };
        for (_, pool) in map.values().flatten() {
            pool.close_idle(now);
        }
    }
}

/// The connections to one provider endpoint: HTTP/2 connections shared by
/// all requests (a new one only when every one has as many streams open as
/// the provider allows, as Envoy's pool does), or idle HTTP/1.1
/// connections, whichever the provider chose by ALPN.
pub struct Pool {
    authority: String,
    target: Target,
    state: Mutex<PoolState>,
    /// Woken when an HTTP/2 connection is made (or its making failed).
    h2_made: Notify,
}

#[derive(Default)]
struct PoolState {
    h2: Vec<H2Conn>,
    /// The provider chose h2 last time: while that connection is being
    /// made, requests wait for it instead of each opening their own.
    speaks_h2: bool,
    h2_connecting: bool,
    /// Idle HTTP/1.1 connections, most recently used last.
    idle: Vec<IdleH1>,
    /// Numbers connections, to tell which one a failure was on.
    made: u64,
}

struct H2Conn {
    id: u64,
    send: h2::client::SendRequest<Bytes>,
    last_used: Instant,
    /// Streams open on it (requests sent whose answer is not done).
    streams: Arc<AtomicUsize>,
    /// Dropped with this handle: wakes the connection's task, which then
    /// closes the connection once its last stream is done (h2 does not
    /// notice on its own that the last `SendRequest` is gone).
    _closer: oneshot::Sender<()>,
}

struct IdleH1 {
    send: http1::SendRequest<Full<Bytes>>,
    since: Instant,
}

/// A connection checked out for one request.
enum Conn {
    H2 {
        id: u64,
        send: h2::client::SendRequest<Bytes>,
        slot: StreamSlot,
        reused: bool,
    },
    H1 {
        send: http1::SendRequest<Full<Bytes>>,
        reused: bool,
    },
}

fn lock(m: &Mutex<PoolState>) -> std::sync::MutexGuard<'_, PoolState> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// hyper's client defaults for HTTP/2 (windows, frame and header sizes).
fn h2_builder() -> h2::client::Builder {
    let mut b = h2::client::Builder::new();
    b.initial_max_send_streams(100)
        .initial_window_size(2 * 1024 * 1024)
        .initial_connection_window_size(5 * 1024 * 1024)
        .max_header_list_size(16 * 1024)
        .max_send_buffer_size(1024 * 1024)
        .max_local_error_reset_streams(Some(1024))
        .max_frame_size(16 * 1024)
        .enable_push(false);
    b
}

/// How many times a request is sent again after finding its (reused)
/// connection closed before anything of it was sent, or after the provider
/// refused its HTTP/2 stream unprocessed (`REFUSED_STREAM`, RFC 9113 8.7):
/// Istio's default retry policy (two retries, `refused-stream`).
const RETRIES: usize = 2;

impl Pool {
    async fn send(
        self: &Arc<Self>,
        req: Request<Bytes>,
    ) -> Result<Response<UpstreamIncoming>, UpstreamError> {
        let mut req = req;
        let mut retries = 0;
        loop {
            let conn = self.checkout().await?;
            let (reused, sent) = match conn {
                Conn::H2 {
                    id,
                    send,
                    slot,
                    reused,
                } => (reused, self.send_h2(id, send, slot, req).await),
                Conn::H1 { send, reused } => (reused, self.send_h1(send, req).await),
            };
            match sent {
                Ok(resp) => return Ok(resp),
                Err(Failed::Unsent(r, _)) if reused && retries < RETRIES => {
                    retries += 1;
                    req = *r;
                }
                Err(Failed::Refused(r, e)) if retries < RETRIES => {
                    debug!(error = %e, "provider refused the stream; sending again");
                    retries += 1;
                    req = *r;
                }
                Err(Failed::Unsent(_, e) | Failed::Refused(_, e) | Failed::Sent(e)) => {
                    return Err(e);
                }
            }
        }
    }

    /// A connection for one request: the shared HTTP/2 one, an idle
    /// HTTP/1.1 one, or a new one.
    async fn checkout(self: &Arc<Self>) -> Result<Conn, UpstreamError> {
        loop {
            let wait = self.h2_made.notified();
            {
                let mut st = lock(&self.state);
                // The first connection with room for another stream.
                if let Some(c) = st
                    .h2
                    .iter_mut()
                    .find(|c| c.streams.load(Ordering::Relaxed) < c.send.current_max_send_streams())
                {
                    c.last_used = Instant::now();
                    return Ok(Conn::H2 {
                        id: c.id,
                        send: c.send.clone(),
                        slot: StreamSlot::take(&c.streams),
                        reused: true,
                    });
                }
                while let Some(idle) = st.idle.pop() {
                    if !idle.send.is_closed() {
                        return Ok(Conn::H1 {
                            send: idle.send,
                            reused: true,
                        });
                    }
                }
                if !(st.speaks_h2 && st.h2_connecting) {
                    if st.speaks_h2 {
                        st.h2_connecting = true;
                    }
                    break;
                }
            }
            // An HTTP/2 connection is being made: share it.
            wait.await;
        }
        let made = self.connect().await;
        let mut st = lock(&self.state);
        st.h2_connecting = false;
        self.h2_made.notify_waiters();
        if made.is_err() {
            // Those waiting connect on their own, as everyone does until a
            // connection is made again: no request waits out another's timeout.
            st.speaks_h2 = false;
        }
        let conn = made?;
        st.made += 1;
        let id = st.made;
        Ok(match conn {
            Made::H2(send, closer) => {
                st.speaks_h2 = true;
                let streams = Arc::new(AtomicUsize::new(0));
                let slot = StreamSlot::take(&streams);
                st.h2.push(H2Conn {
                    id,
                    send: send.clone(),
                    last_used: Instant::now(),
                    streams,
                    _closer: closer,
                });
                Conn::H2 {
                    id,
                    send,
                    slot,
                    reused: false,
                }
            }
            Made::H1(send) => {
                st.speaks_h2 = false;
                Conn::H1 {
                    send,
                    reused: false,
                }
            }
        })
    }

    /// Connects, and starts HTTP/2 or HTTP/1.1 as ALPN says.
    async fn connect(&self) -> Result<Made, UpstreamError> {
        let t = &self.target;
        let io = match tokio::time::timeout(t.connect_timeout, t.connect()).await {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => return Err(self.connect_error(e)),
            Err(_) => return Err(self.connect_error(ConnectError::Timeout)),
        };
        if io.get_ref().1.alpn_protocol() == Some(b"h2") {
            let (send, conn) = h2_builder()
                .handshake::<_, Bytes>(io)
                .await
                .map_err(|e| self.connect_error(ConnectError::Handshake(e.to_string())))?;
            let (closer, closed) = oneshot::channel();
            tokio::spawn(H2Task {
                conn,
                closed: Some(closed),
            });
            Ok(Made::H2(send, closer))
        } else {
            let (send, conn) = http1::handshake(TokioIo::new(io))
                .await
                .map_err(|e| self.protocol_error(&e))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    debug!(error = %e, "provider connection (HTTP/1.1) ended");
                }
            });
            Ok(Made::H1(send))
        }
    }

    /// One request on the shared HTTP/2 connection: headers and the whole
    /// body are queued together, so they leave in one write (the body waits
    /// in h2's buffer, not in a task, for flow-control window if it must).
    async fn send_h2(
        self: &Arc<Self>,
        id: u64,
        mut send: h2::client::SendRequest<Bytes>,
        slot: StreamSlot,
        req: Request<Bytes>,
    ) -> Result<Response<UpstreamIncoming>, Failed> {
        if let Err(e) = std::future::poll_fn(|cx| send.poll_ready(cx)).await {
            // The connection is gone (GOAWAY, closed): nothing was sent.
            self.forget_h2(id);
            return Err(Failed::Unsent(Box::new(req), self.h2_error(&e)));
        }
        let (mut head, body) = req.into_parts();
        crate::http::forwarded::fit_for_http2(&mut head.headers);
        // Kept to send again if the provider refuses the stream.
        let mut again = Request::new(body.clone());
        *again.method_mut() = head.method.clone();
        *again.uri_mut() = head.uri.clone();
        *again.version_mut() = head.version;
        *again.headers_mut() = head.headers.clone();
        let eos = body.is_empty();
        let (resp, mut stream) = send
            .send_request(Request::from_parts(head, ()), eos)
            .map_err(|e| {
                self.forget_h2(id);
                Failed::Sent(self.h2_error(&e))
            })?;
        // This request's handle on the connection goes now: the pool's is
        // the last, so dropping it closes the connection when idle.
        drop(send);
        if !eos {
            stream
                .send_data(body, true)
                .map_err(|e| Failed::Sent(self.h2_error(&e)))?;
        }
        drop(stream);
        let resp = resp.await.map_err(|e| {
            let refused =
                e.is_reset() && e.is_remote() && e.reason() == Some(h2::Reason::REFUSED_STREAM);
            // A graceful GOAWAY (NO_ERROR) fails exactly the streams above
            // its last stream id, which the provider guarantees it never
            // processed (RFC 9113 6.8): as refused; the connection is done.
            let gone_before =
                e.is_go_away() && e.is_remote() && e.reason() == Some(h2::Reason::NO_ERROR);
            if gone_before {
                self.forget_h2(id);
            }
            if refused || gone_before {
                Failed::Refused(Box::new(again), self.h2_error(&e))
            } else {
                Failed::Sent(self.h2_error(&e))
            }
        })?;
        let (parts, recv) = resp.into_parts();
        let remaining = if parts.status == http::StatusCode::NO_CONTENT
            || parts.status == http::StatusCode::NOT_MODIFIED
        {
            None
        } else {
            parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
        };
        Ok(Response::from_parts(
            parts,
            UpstreamIncoming::H2 {
                recv,
                remaining,
                data_done: false,
                _slot: slot,
            },
        ))
    }

    /// One request on an HTTP/1.1 connection of its own; the connection
    /// returns to the pool when the response body has been read to its end.
    async fn send_h1(
        self: &Arc<Self>,
        mut send: http1::SendRequest<Full<Bytes>>,
        req: Request<Bytes>,
    ) -> Result<Response<UpstreamIncoming>, Failed> {
        let (mut head, body) = req.into_parts();
        // HTTP/1.1 names the authority in Host (RFC 9112 §3.2).
        if !head.headers.contains_key(http::header::HOST)
            && let Some(a) = head.uri.authority()
            && let Ok(v) = http::HeaderValue::from_str(a.as_str())
        {
            head.headers.insert(http::header::HOST, v);
        }
        // Origin form on the wire: `/path?query`.
        let origin = head.uri.path_and_query().cloned();
        head.uri = origin.map_or_else(|| Uri::from_static("/"), Uri::from);
        let req = Request::from_parts(head, Full::new(body));
        if send.ready().await.is_err() {
            let req = req.map(|b| b.into_inner().unwrap_or_default());
            return Err(Failed::Unsent(
                Box::new(req),
                self.protocol_error_text("connection closed before the request was sent"),
            ));
        }
        match send.try_send_request(req).await {
            Ok(resp) => Ok(resp.map(|body| UpstreamIncoming::H1 {
                body,
                conn: Some((send, self.clone())),
            })),
            Err(mut e) => {
                let err = self.protocol_error(e.error());
                match e.take_message() {
                    Some(req) => Err(Failed::Unsent(
                        Box::new(req.map(|b| b.into_inner().unwrap_or_default())),
                        err,
                    )),
                    None => Err(Failed::Sent(err)),
                }
            }
        }
    }

    /// Keeps an HTTP/1.1 connection whose last answer was read to the end.
    fn put_idle(&self, send: http1::SendRequest<Full<Bytes>>) {
        if send.is_closed() {
            return;
        }
        let mut st = lock(&self.state);
        if st.idle.len() < POOL_MAX_IDLE {
            st.idle.push(IdleH1 {
                send,
                since: Instant::now(),
            });
        }
    }

    fn forget_h2(&self, id: u64) {
        lock(&self.state).h2.retain(|c| c.id != id);
    }

    fn close_idle(&self, now: Instant) {
        let mut st = lock(&self.state);
        st.h2
            .retain(|c| now.saturating_duration_since(c.last_used) <= POOL_IDLE);
        st.idle
            .retain(|c| now.saturating_duration_since(c.since) <= POOL_IDLE && !c.send.is_closed());
    }

    fn connect_error(&self, e: ConnectError) -> UpstreamError {
        let authority = self.authority.clone();
        match e {
            ConnectError::Resolve(source) => UpstreamError::Resolve { authority, source },
            ConnectError::Connect(source) => UpstreamError::Connect { authority, source },
            ConnectError::Tls(source) => UpstreamError::Tls { authority, source },
            ConnectError::Timeout => UpstreamError::ConnectTimeout {
                authority,
                after: self.target.connect_timeout,
            },
            ConnectError::Handshake(message) => UpstreamError::Protocol { authority, message },
        }
    }

    fn h2_error(&self, e: &h2::Error) -> UpstreamError {
        self.protocol_error(e)
    }

    /// The error and its sources, for the most specific text.
    fn protocol_error(&self, e: &(dyn std::error::Error + 'static)) -> UpstreamError {
        let mut message = e.to_string();
        let mut src = e.source();
        while let Some(s) = src {
            message = format!("{message}: {s}");
            src = s.source();
        }
        self.protocol_error_text(&message)
    }

    fn protocol_error_text(&self, message: &str) -> UpstreamError {
        UpstreamError::Protocol {
            authority: self.authority.clone(),
            message: message.to_string(),
        }
    }
}

/// A new connection, by protocol.
enum Made {
    H2(h2::client::SendRequest<Bytes>, oneshot::Sender<()>),
    H1(http1::SendRequest<Full<Bytes>>),
}

/// Why a request got no response; `Unsent` and `Refused` (an HTTP/2
/// stream the provider reset with `REFUSED_STREAM`: not processed) give the
/// request back.
enum Failed {
    Unsent(Box<Request<Bytes>>, UpstreamError),
    Refused(Box<Request<Bytes>>, UpstreamError),
    Sent(UpstreamError),
}

/// Drives an HTTP/2 connection until it ends.
struct H2Task {
    conn: h2::client::Connection<TlsStream<TcpStream>, Bytes>,
    closed: Option<oneshot::Receiver<()>>,
}

impl Future for H2Task {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        // The pool let go: polling the connection again makes it notice,
        // and close once no stream is left.
        if let Some(c) = &mut this.closed
            && Pin::new(c).poll(cx).is_ready()
        {
            this.closed = None;
        }
        match Pin::new(&mut this.conn).poll(cx) {
            Poll::Ready(Err(e)) => {
                debug!(error = %e, "provider connection (HTTP/2) ended");
                Poll::Ready(())
            }
            Poll::Ready(Ok(())) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A provider's response body, by protocol.
pub enum UpstreamIncoming {
    H1 {
        body: Incoming,
        /// Back to the pool when the body has been read to its end.
        conn: Option<(http1::SendRequest<Full<Bytes>>, Arc<Pool>)>,
    },
    H2 {
        recv: h2::RecvStream,
        /// Bytes still to come per Content-Length, when given.
        remaining: Option<u64>,
        data_done: bool,
        /// The stream's place on its connection, given back with the body.
        _slot: StreamSlot,
    },
}

/// One open stream on an HTTP/2 connection, counted while held.
pub struct StreamSlot(Arc<AtomicUsize>);

impl StreamSlot {
    fn take(streams: &Arc<AtomicUsize>) -> Self {
        streams.fetch_add(1, Ordering::Relaxed);
        StreamSlot(streams.clone())
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl UpstreamIncoming {
    /// The HTTP/1.1 connection is free again.
    fn release(&mut self) {
        if let UpstreamIncoming::H1 { conn, .. } = self
            && let Some((mut send, pool)) = conn.take()
        {
            if send.is_ready() {
                pool.put_idle(send);
            } else {
                // Not yet seen idle by its task: wait for that, off this request.
                tokio::spawn(async move {
                    if send.ready().await.is_ok() {
                        pool.put_idle(send);
                    }
                });
            }
        }
    }
}

impl Drop for UpstreamIncoming {
    fn drop(&mut self) {
        // An empty body may never be polled: its connection is free all the same.
        if let UpstreamIncoming::H1 { body, .. } = self
            && http_body::Body::is_end_stream(body)
        {
            self.release();
        }
    }
}

impl http_body::Body for UpstreamIncoming {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match this {
            UpstreamIncoming::H1 { body, .. } => {
                let r = Pin::new(&mut *body).poll_frame(cx);
                let end = match &r {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
                    _ => false,
                };
                if end {
                    this.release();
                }
                r.map_err(Into::into)
            }
            UpstreamIncoming::H2 {
                recv,
                remaining,
                data_done,
                ..
            } => {
                if !*data_done {
                    match recv.poll_data(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Some(Ok(data))) => {
                            let _ = recv.flow_control().release_capacity(data.len());
                            if let Some(r) = remaining {
                                *r = r.saturating_sub(data.len() as u64);
                            }
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        Poll::Ready(Some(Err(e))) => {
                            // As hyper: a reset with NO_ERROR or CANCEL ends the body.
                            return match e.reason() {
                                Some(h2::Reason::NO_ERROR | h2::Reason::CANCEL) => {
                                    Poll::Ready(None)
                                }
                                _ => Poll::Ready(Some(Err(e.into()))),
                            };
                        }
                        Poll::Ready(None) => *data_done = true,
                    }
                }
                match recv.poll_trailers(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Ok(Some(t))) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
                    Poll::Ready(Ok(None)) => Poll::Ready(None),
                    Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e.into()))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamIncoming::H1 { body, .. } => body.is_end_stream(),
            UpstreamIncoming::H2 { recv, .. } => recv.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamIncoming::H1 { body, .. } => body.size_hint(),
            UpstreamIncoming::H2 {
                remaining: Some(n), ..
            } => SizeHint::with_exact(*n),
            UpstreamIncoming::H2 { .. } => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_of_removed_providers_are_dropped() {
        let tls = client_tls(None, true).unwrap();
        let ups = Upstreams::new(
            tls,
            UpstreamOptions {
                connect_timeout: Duration::from_secs(1),
                response_timeout: Duration::from_secs(1),
                resolve: Vec::new(),
            },
        );
        ups.pool("a.example:443", "a.example").unwrap();
        ups.pool("b.example:443", "b.example").unwrap();
        ups.pool("b.example:443", "other-name").unwrap();
        assert_eq!(ups.pool_count(), 3);
        ups.retain(|authority, sni| authority == "b.example:443" && sni == "b.example");
        assert_eq!(ups.pool_count(), 1);
        assert!(ups.pools.read().unwrap().contains_key("b.example:443"));
    }

    #[test]
    fn parses_resolve_like_curl() {
        let r: ResolveOverride = "DashScope.aliyuncs.com:443:127.0.0.1".parse().unwrap();
        assert_eq!(
            r,
            ResolveOverride {
                host: "dashscope.aliyuncs.com".into(),
                port: 443,
                addrs: vec!["127.0.0.1:443".parse().unwrap()]
            }
        );
        let addrs = |s: &str| s.parse::<ResolveOverride>().map(|r| r.addrs);
        assert_eq!(
            addrs("h:8443:[::1]"),
            Ok(vec!["[::1]:8443".parse().unwrap()])
        );
        assert_eq!(
            addrs("h:443:127.0.0.1:9999"),
            Ok(vec!["127.0.0.1:9999".parse().unwrap()])
        );
        assert_eq!(
            addrs("h:443:[::1]:9999"),
            Ok(vec!["[::1]:9999".parse().unwrap()])
        );
        assert_eq!(
            addrs("h:443:127.0.0.1,[::1],10.0.0.1:8443"),
            Ok(vec![
                "127.0.0.1:443".parse().unwrap(),
                "[::1]:443".parse().unwrap(),
                "10.0.0.1:8443".parse().unwrap()
            ])
        );
        let any: ResolveOverride = "*:443:127.0.0.1".parse().unwrap();
        assert!(any.applies_to("api.openai.com", 443));
        assert!(!any.applies_to("api.openai.com", 8443));
        assert!(r.applies_to("dashscope.aliyuncs.COM", 443));
        assert!(!r.applies_to("other.com", 443));
        assert!("h:443".parse::<ResolveOverride>().is_err());
        assert!(":443:1.2.3.4".parse::<ResolveOverride>().is_err());
        assert!("h:x:1.2.3.4".parse::<ResolveOverride>().is_err());
        assert!("h:1:nope".parse::<ResolveOverride>().is_err());
        assert!("h:1:1.2.3.4,nope".parse::<ResolveOverride>().is_err());
    }
}
