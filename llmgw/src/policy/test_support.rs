//! Test servers for the security tests: a tiny HTTP(S) server on 127.0.0.1
//! answering from a closure and recording what it was asked, and a test CA.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;

/// What a test server saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: http::Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What a test server answers, after `delay`.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn new(status: u16, body: impl Into<String>) -> Self {
        Reply {
            status: StatusCode::from_u16(status).expect("status"),
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, k: &'static str, v: impl Into<String>) -> Self {
        self.headers.push((k, v.into()));
        self
    }

    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// A running server: its address and the requests it got.
pub struct Server {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves HTTP/1 on 127.0.0.1 (TLS when `tls` is given).
pub async fn serve(
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler: Handler = Arc::new(handler);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let seen2 = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            let seen = seen2.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let handler = handler.clone();
                    let seen = seen.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let s = Seen {
                            method: parts.method,
                            uri: parts.uri,
                            headers: parts.headers,
                            body,
                        };
                        let reply = handler(&s);
                        seen.lock().expect("lock").push(s);
                        tokio::time::sleep(reply.delay).await;
                        let mut resp = Response::new(Full::new(Bytes::from(reply.body)));
                        *resp.status_mut() = reply.status;
                        for (k, v) in reply.headers {
                            resp.headers_mut()
                                .append(k, v.parse().expect("header value"));
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let http = hyper::server::conn::http1::Builder::new();
                match acceptor {
                    Some(a) => {
                        if let Ok(stream) = a.accept(tcp).await {
                            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                    None => {
                        let _ = http.serve_connection(TokioIo::new(tcp), svc).await;
                    }
                }
            });
        }
    });
    Server { addr, seen, task }
}

/// A CA and a server certificate it signed for `127.0.0.1` and `localhost`.
pub struct TestPki {
    pub ca: CertificateDer<'static>,
    pub server: Arc<rustls::ServerConfig>,
}

pub fn test_pki() -> TestPki {
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let issuer = CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca cert");
    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    let cert = params.signed_by(&key, &*issuer).expect("server cert");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server config");
    TestPki {
        ca: issuer.der().clone(),
        server: Arc::new(server),
    }
}

/// Polls `f` every 20 ms for up to 10 s (bounded patience instead of sleeps).
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Compiled ext_authz providers with their runtime counters and an
/// outbound client, as a gateway worker holds them.
pub struct Ext {
    pub compiled: crate::model::extauthz::ExtAuthz,
    pub counters: super::extauthz::ExtAuthzCounters,
    pub client: crate::client::Client,
}

impl std::ops::Deref for Ext {
    type Target = crate::model::extauthz::ExtAuthz;
    fn deref(&self) -> &crate::model::extauthz::ExtAuthz {
        &self.compiled
    }
}

impl Ext {
    pub fn new(compiled: crate::model::extauthz::ExtAuthz) -> Self {
        let counters = super::extauthz::ExtAuthzCounters::build(&compiled, None);
        let client = crate::client::Client::new(
            crate::client::client_tls(None, true).expect("TLS"),
            crate::client::ClientOptions {
                connect_timeout: std::time::Duration::from_secs(5),
                response_timeout: std::time::Duration::from_secs(60),
                resolve: Vec::new(),
            },
        );
        Ext {
            compiled,
            counters,
            client,
        }
    }

    /// Shadows `ExtAuthz::check`: with this gateway's clients.
    pub async fn check(&self, provider: &str, req: &super::CheckRequest<'_>) -> super::CheckResult {
        self.compiled
            .check(&self.counters, &self.client, provider, req)
            .await
    }

    pub fn stats(&self) -> Vec<super::extauthz::ProviderStats> {
        self.counters.stats()
    }
}
