//! Clients for the tests: plain HTTP/1.1 to the gateway, and HTTPS with
//! HTTP/2 or HTTP/1.1 against a given CA and SNI.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

/// A finished response.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Sends `req` over a fresh HTTP/1.1 client and returns the response head
/// with the body unread.
pub async fn send(req: Request<Full<Bytes>>) -> Response<Incoming> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    client.request(req).await.expect("gateway answers")
}

/// POST `body` to `url` with `Host: host` and JSON content type.
pub async fn post(url: &str, host: &str, body: &str, headers: &[(&str, &str)]) -> Answer {
    let mut b = Request::post(url)
        .header("host", host)
        .header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = send(
        b.body(Full::new(Bytes::from(body.to_string())))
            .expect("request"),
    )
    .await;
    collect(resp).await
}

pub async fn collect(resp: Response<Incoming>) -> Answer {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Reads a body frame by frame, timing each data frame.
pub async fn timed_frames(resp: Response<Incoming>) -> Vec<(Instant, Bytes)> {
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(f) = body.frame().await {
        if let Ok(data) = f.expect("frame").into_data() {
            out.push((Instant::now(), data));
        }
    }
    out
}

/// The seed's request body (step 4).
pub const SEED_REQUEST: &str = r#"{
    "messages": [
      {"role": "user", "content": "Please introduce yourself"}
    ]
  }"#;

/// Sends one request over TLS to `addr` with SNI `sni`, offering `alpn`,
/// trusting `ca`. Returns the negotiated HTTP version and the answer.
pub async fn https(
    addr: SocketAddr,
    sni: &str,
    ca: CertificateDer<'static>,
    alpn: &[&[u8]],
    req: Request<Full<Bytes>>,
) -> Result<(Version, Answer), String> {
    tls_request(addr, sni, ca, None, alpn, req).await
}

/// As [`https`], presenting a client certificate (HTTP/1.1).
pub async fn https_with_client_cert(
    addr: SocketAddr,
    sni: &str,
    ca: CertificateDer<'static>,
    client: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    req: Request<Full<Bytes>>,
) -> Result<(Version, Answer), String> {
    tls_request(addr, sni, ca, Some(client), &[b"http/1.1"], req).await
}

async fn tls_request(
    addr: SocketAddr,
    sni: &str,
    ca: CertificateDer<'static>,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: &[&[u8]],
    req: Request<Full<Bytes>>,
) -> Result<(Version, Answer), String> {
    let mut roots = RootCertStore::empty();
    roots.add(ca).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut cfg = match client {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| e.to_string())?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    let resp = if h2 {
        let (mut s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        s.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut s, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        s.send_request(req).await.map_err(|e| e.to_string())?
    };
    let version = resp.version();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((
        version,
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        },
    ))
}
