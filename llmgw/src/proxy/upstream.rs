//! The client side: HTTPS to providers with rustls (webpki and native roots
//! plus `--upstream-ca`), `--resolve` overrides, HTTP/2 when ALPN offers it,
//! one keep-alive pool per (connect authority, TLS name), and the connect and
//! response-header timeouts. Failures are classified for the 502/504 mapping.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    path::Path,
    pin::Pin,
    sync::{Arc, RwLock},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{
        Client,
        connect::{Connected, Connection},
    },
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use rustls::{ClientConfig, RootCertStore, pki_types::ServerName};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};

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

/// `--resolve HOST:PORT:ADDR`: connect to ADDR when the provider is
/// HOST:PORT, like curl. ADDR may carry its own port (`127.0.0.1:8443`,
/// `[::1]:8443`), which local test setups need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveOverride {
    pub host: String,
    pub port: u16,
    pub addr: SocketAddr,
}

impl std::str::FromStr for ResolveOverride {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.splitn(3, ':');
        let (Some(host), Some(port), Some(addr)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("{s:?}: expected HOST:PORT:ADDR"));
        };
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{s:?}: {port:?} is not a port"))?;
        let addr = if let Ok(sa) = addr.parse::<SocketAddr>() {
            sa
        } else {
            let ip = addr.trim_start_matches('[').trim_end_matches(']');
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| format!("{s:?}: {addr:?} is not an IP address (or IP:PORT)"))?;
            SocketAddr::new(ip, port)
        };
        Ok(ResolveOverride {
            host: host.to_ascii_lowercase(),
            port,
            addr,
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

#[derive(Clone)]
pub struct Connector(Arc<Target>);

pub struct TlsConn {
    io: TokioIo<TlsStream<TcpStream>>,
    h2: bool,
}

impl Connection for TlsConn {
    fn connected(&self) -> Connected {
        let c = Connected::new();
        if self.h2 { c.negotiated_h2() } else { c }
    }
}

impl hyper::rt::Read for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

/// The connector's failures; the pool wraps them, `classify` digs them out.
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
}

impl Target {
    async fn connect(self: Arc<Self>) -> Result<TlsConn, ConnectError> {
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
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(ConnectError::Tls)?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok(TlsConn {
            io: TokioIo::new(tls),
            h2,
        })
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TlsConn;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<TlsConn, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        // The target is fixed per pool: the URI carries the Host, not where to dial.
        let t = self.0.clone();
        Box::pin(async move {
            let after = t.connect_timeout;
            match tokio::time::timeout(after, t.connect()).await {
                Ok(r) => r.map_err(Into::into),
                Err(_) => Err(ConnectError::Timeout.into()),
            }
        })
    }
}

/// Settings of the upstream side.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub resolve: Vec<ResolveOverride>,
}

type HttpsClient = Client<Connector, Full<Bytes>>;

/// One pooled client per (authority, TLS name), kept across reloads.
pub struct Upstreams {
    tls: TlsConnector,
    opts: UpstreamOptions,
    /// authority → [(TLS name, client)]: looked up with `&str`, no allocation.
    clients: RwLock<HashMap<String, Vec<(String, HttpsClient)>>>,
}

impl Upstreams {
    pub fn new(tls: Arc<ClientConfig>, opts: UpstreamOptions) -> Self {
        Self {
            tls: TlsConnector::from(tls),
            opts,
            clients: RwLock::new(HashMap::new()),
        }
    }

    pub fn response_timeout(&self) -> Duration {
        self.opts.response_timeout
    }

    fn client(&self, authority: &str, sni: &str) -> Result<HttpsClient, UpstreamError> {
        if let Ok(map) = self.clients.read()
            && let Some((_, c)) = map
                .get(authority)
                .and_then(|v| v.iter().find(|(s, _)| s == sni))
        {
            return Ok(c.clone());
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
        let pinned = self
            .opts
            .resolve
            .iter()
            .filter(|r| r.port == port && r.host.eq_ignore_ascii_case(host))
            .map(|r| r.addr)
            .collect();
        let connector = Connector(Arc::new(Target {
            host: host.to_string(),
            port,
            pinned,
            server_name,
            tls: self.tls.clone(),
            connect_timeout: self.opts.connect_timeout,
        }));
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(POOL_MAX_IDLE)
            .set_host(false)
            .build(connector);
        let mut map = match self.clients.write() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let v = map.entry(authority.to_string()).or_default();
        if let Some((_, c)) = v.iter().find(|(s, _)| s == sni) {
            return Ok(c.clone());
        }
        v.push((sni.to_string(), client.clone()));
        Ok(client)
    }

    /// Sends `req` (absolute `https://` URI, Host set) to `authority`, TLS
    /// name `sni`; waits for the response headers up to the response timeout.
    pub async fn send(
        &self,
        authority: &str,
        sni: &str,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let client = self.client(authority, sni)?;
        let after = self.opts.response_timeout;
        match tokio::time::timeout(after, client.request(req)).await {
            Err(_) => Err(UpstreamError::ResponseTimeout {
                authority: authority.to_string(),
                after,
            }),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(classify(authority, self.opts.connect_timeout, &e)),
        }
    }
}

fn classify(
    authority: &str,
    connect_timeout: Duration,
    e: &hyper_util::client::legacy::Error,
) -> UpstreamError {
    let authority = authority.to_string();
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(ce) = s.downcast_ref::<ConnectError>() {
            let copy = |e: &io::Error| io::Error::new(e.kind(), e.to_string());
            return match ce {
                ConnectError::Resolve(io) => UpstreamError::Resolve {
                    authority,
                    source: copy(io),
                },
                ConnectError::Connect(io) => UpstreamError::Connect {
                    authority,
                    source: copy(io),
                },
                ConnectError::Tls(io) => UpstreamError::Tls {
                    authority,
                    source: copy(io),
                },
                ConnectError::Timeout => UpstreamError::ConnectTimeout {
                    authority,
                    after: connect_timeout,
                },
            };
        }
        src = s.source();
    }
    // Walk the chain for the most specific text.
    let mut message = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        message = format!("{message}: {s}");
        src = s.source();
    }
    UpstreamError::Protocol { authority, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_resolve_like_curl() {
        let r: ResolveOverride = "DashScope.aliyuncs.com:443:127.0.0.1".parse().unwrap();
        assert_eq!(
            r,
            ResolveOverride {
                host: "dashscope.aliyuncs.com".into(),
                port: 443,
                addr: "127.0.0.1:443".parse().unwrap()
            }
        );
        let r: ResolveOverride = "h:8443:[::1]".parse().unwrap();
        assert_eq!(r.addr, "[::1]:8443".parse().unwrap());
        let r: ResolveOverride = "h:443:127.0.0.1:9999".parse().unwrap();
        assert_eq!(r.addr, "127.0.0.1:9999".parse().unwrap());
        let r: ResolveOverride = "h:443:[::1]:9999".parse().unwrap();
        assert_eq!(r.addr, "[::1]:9999".parse().unwrap());
        assert!("h:443".parse::<ResolveOverride>().is_err());
        assert!("h:x:1.2.3.4".parse::<ResolveOverride>().is_err());
        assert!("h:1:nope".parse::<ResolveOverride>().is_err());
    }
}
