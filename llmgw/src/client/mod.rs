//! The one outbound HTTP client, used for providers, external authorizers
//! and JWKS fetching: endpoints over TLS (`https`: HTTP/2 when ALPN offers
//! it, else HTTP/1.1), plain HTTP/1.1 (`http`) and HTTP/2 with prior
//! knowledge (h2c, gRPC); `--resolve` overrides; one keep-alive pool per
//! (scheme, authority, TLS name); connect and response-header timeouts.
//! Connections stay on the runtime that opened them: each worker thread
//! has its own `Client`.

pub mod body;
pub mod connect;
pub mod error;
pub mod pool;
pub mod tls;

use std::{
    collections::HashMap,
    io,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, Uri};
use rustls::{ClientConfig, pki_types::ServerName};
use tokio_rustls::TlsConnector;

pub use body::{BoxError, UpstreamIncoming};
pub use connect::ResolveOverride;
pub use error::{TlsSetupError, UpstreamError};
pub use tls::client_tls;

use connect::{Target, Transport};
use pool::{Pool, Protocol};

/// How an endpoint is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// TLS; HTTP/2 or HTTP/1.1 by ALPN.
    Https,
    /// Cleartext HTTP/1.1.
    Http,
    /// Cleartext HTTP/2 with prior knowledge (gRPC).
    H2c,
}

impl Scheme {
    /// `https` or `http` from a URI (`None` for anything else).
    pub fn of(uri: &Uri) -> Option<Scheme> {
        match uri.scheme_str() {
            Some("https") => Some(Scheme::Https),
            Some("http") => Some(Scheme::Http),
            _ => None,
        }
    }
}

/// Settings of the client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// Until the response headers, connecting included (per request
    /// overridable).
    pub response_timeout: Duration,
    pub resolve: Vec<ResolveOverride>,
}

/// `host:port`, `[v6]:port`, or either without a port (`default_port`).
fn split_authority(authority: &str, default_port: u16) -> (&str, u16) {
    if let Some(rest) = authority.strip_prefix('[')
        && let Some((host, after)) = rest.split_once(']')
    {
        let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
        return (host, port.unwrap_or(default_port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().unwrap_or(default_port)),
        _ => (authority, default_port),
    }
}

/// Connection pools to every endpoint this runtime talks to.
pub struct Client {
    tls: TlsConnector,
    opts: ClientOptions,
    /// authority → [(scheme, TLS name, pool)]: looked up with `&str`, no allocation.
    pools: RwLock<PoolMap>,
}

type PoolMap = HashMap<String, Vec<(Scheme, String, Arc<Pool>)>>;

impl Client {
    pub fn new(tls: Arc<ClientConfig>, opts: ClientOptions) -> Self {
        Self {
            tls: TlsConnector::from(tls),
            opts,
            pools: RwLock::new(HashMap::new()),
        }
    }

    pub fn response_timeout(&self) -> Duration {
        self.opts.response_timeout
    }

    fn pool(
        &self,
        scheme: Scheme,
        authority: &str,
        name: &str,
    ) -> Result<Arc<Pool>, UpstreamError> {
        if let Ok(map) = self.pools.read()
            && let Some((_, _, p)) = map
                .get(authority)
                .and_then(|v| v.iter().find(|(s, n, _)| *s == scheme && n == name))
        {
            return Ok(p.clone());
        }
        let default_port = if scheme == Scheme::Https { 443 } else { 80 };
        let (host, port) = split_authority(authority, default_port);
        let (transport, protocol) = match scheme {
            Scheme::Https => {
                let server_name =
                    ServerName::try_from(name.to_string()).map_err(|e| UpstreamError::Tls {
                        authority: authority.to_string(),
                        source: io::Error::new(io::ErrorKind::InvalidInput, e),
                    })?;
                let connector = self.tls.clone();
                (
                    Transport::Tls {
                        server_name,
                        connector,
                    },
                    Protocol::Alpn,
                )
            }
            Scheme::Http => (Transport::Plain, Protocol::Http1),
            Scheme::H2c => (Transport::Plain, Protocol::H2c),
        };
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
        let target = Target {
            host: host.to_string(),
            port,
            pinned,
            transport,
            connect_timeout: self.opts.connect_timeout,
        };
        let pool = Arc::new(Pool::new(authority.to_string(), target, protocol));
        let mut map = match self.pools.write() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let v = map.entry(authority.to_string()).or_default();
        if let Some((_, _, p)) = v.iter().find(|(s, n, _)| *s == scheme && n == name) {
            return Ok(p.clone());
        }
        v.push((scheme, name.to_string(), pool.clone()));
        Ok(pool)
    }

    /// Sends `req` (absolute `https://` URI; the authority goes out as `Host`
    /// on HTTP/1.1 and as `:authority` alone on HTTP/2) to provider endpoint
    /// `authority`, TLS name `sni`; waits for the response headers up to the
    /// response timeout (connecting included, within its own connect timeout).
    pub async fn send(
        &self,
        authority: &str,
        sni: &str,
        req: Request<Bytes>,
    ) -> Result<Response<UpstreamIncoming>, UpstreamError> {
        self.send_to(
            Scheme::Https,
            authority,
            sni,
            req,
            self.opts.response_timeout,
        )
        .await
    }

    /// Sends `req` to the endpoint its absolute URI names (`http` or
    /// `https`; the TLS name is the URI's host), waiting `timeout` for the
    /// response headers.
    pub async fn request(
        &self,
        req: Request<Bytes>,
        timeout: Duration,
    ) -> Result<Response<UpstreamIncoming>, UpstreamError> {
        let uri = req.uri().clone();
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or("");
        let Some(scheme) = Scheme::of(&uri) else {
            return Err(UpstreamError::Protocol {
                authority: authority.to_string(),
                message: format!("{uri}: not an http(s) URL"),
            });
        };
        let name = uri
            .host()
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']');
        self.send_to(scheme, authority, name, req, timeout).await
    }

    /// Sends `req` to `authority` as `scheme` says (`name`: the TLS server
    /// name for `https`), waiting `timeout` for the response headers.
    pub async fn send_to(
        &self,
        scheme: Scheme,
        authority: &str,
        name: &str,
        req: Request<Bytes>,
        timeout: Duration,
    ) -> Result<Response<UpstreamIncoming>, UpstreamError> {
        let pool = self.pool(scheme, authority, name)?;
        match tokio::time::timeout(timeout, pool.send(req)).await {
            Err(_) => Err(UpstreamError::ResponseTimeout {
                authority: authority.to_string(),
                after: timeout,
            }),
            Ok(r) => r,
        }
    }

    /// Drops the provider (`https`) pools `keep` does not want (those of
    /// providers a reload removed), with their connections.
    pub fn retain_https(&self, keep: impl Fn(&str, &str) -> bool) {
        let mut map = match self.pools.write() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        for (authority, pools) in map.iter_mut() {
            pools.retain(|(scheme, name, _)| *scheme != Scheme::Https || keep(authority, name));
        }
        map.retain(|_, pools| !pools.is_empty());
    }

    /// How many pools there are (one per endpoint used).
    pub fn pool_count(&self) -> usize {
        self.pools
            .read()
            .map_or(0, |m| m.values().map(Vec::len).sum())
    }

    /// Closes connections idle for longer than the pool's idle time (called
    /// every second by the worker's heartbeat).
    pub fn close_idle(&self, now: Instant) {
        let Ok(map) = self.pools.read() else { return };
        for (_, _, pool) in map.values().flatten() {
            pool.close_idle(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_split_into_host_and_port() {
        assert_eq!(split_authority("a.example:8443", 443), ("a.example", 8443));
        assert_eq!(split_authority("a.example", 443), ("a.example", 443));
        assert_eq!(split_authority("[::1]:8000", 80), ("::1", 8000));
        assert_eq!(split_authority("[::1]", 80), ("::1", 80));
        assert_eq!(split_authority("10.0.0.1:9000", 80), ("10.0.0.1", 9000));
    }

    #[test]
    fn pools_of_removed_providers_are_dropped() {
        let tls = client_tls(None, true).unwrap();
        let ups = Client::new(
            tls,
            ClientOptions {
                connect_timeout: Duration::from_secs(1),
                response_timeout: Duration::from_secs(1),
                resolve: Vec::new(),
            },
        );
        ups.pool(Scheme::Https, "a.example:443", "a.example")
            .unwrap();
        ups.pool(Scheme::Https, "b.example:443", "b.example")
            .unwrap();
        ups.pool(Scheme::Https, "b.example:443", "other-name")
            .unwrap();
        ups.pool(Scheme::Http, "authz:8000", "authz").unwrap();
        assert_eq!(ups.pool_count(), 4);
        ups.retain_https(|authority, sni| authority == "b.example:443" && sni == "b.example");
        // Another scheme's pools (an authorizer's) are not providers'.
        assert_eq!(ups.pool_count(), 2);
        assert!(ups.pools.read().unwrap().contains_key("b.example:443"));
    }
}
