//! Making a connection to an endpoint: the addresses `--resolve` pins (or
//! DNS), TCP without Nagle, then TLS with the endpoint's name for `https`,
//! or the plain stream for `http` and h2c.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use rustls::pki_types::ServerName;
use thiserror::Error;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

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
    pub(crate) fn applies_to(&self, host: &str, port: u16) -> bool {
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

/// How bytes travel to the endpoint.
pub(crate) enum Transport {
    Tls {
        server_name: ServerName<'static>,
        connector: TlsConnector,
    },
    Plain,
}

/// Everything a connection to one endpoint needs.
pub(crate) struct Target {
    pub host: String,
    pub port: u16,
    /// Addresses from `--resolve`, tried first and only.
    pub pinned: Vec<SocketAddr>,
    pub transport: Transport,
    pub connect_timeout: Duration,
}

/// Why a connection could not be made.
#[derive(Debug, Error)]
pub(crate) enum ConnectError {
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
    pub async fn connect(&self) -> Result<Io, ConnectError> {
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
        match &self.transport {
            Transport::Tls {
                server_name,
                connector,
            } => connector
                .connect(server_name.clone(), tcp)
                .await
                .map(|s| Io::Tls(Box::new(s)))
                .map_err(ConnectError::Tls),
            Transport::Plain => Ok(Io::Plain(tcp)),
        }
    }
}

/// A connection, over TLS or not.
pub(crate) enum Io {
    Tls(Box<TlsStream<TcpStream>>),
    Plain(TcpStream),
}

impl Io {
    /// The server chose HTTP/2 by ALPN.
    pub fn alpn_h2(&self) -> bool {
        match self {
            Io::Tls(s) => s.get_ref().1.alpn_protocol() == Some(b"h2"),
            Io::Plain(_) => false,
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, b),
            Io::Plain(s) => Pin::new(s).poll_write(cx, b),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tls(s) => s.is_write_vectored(),
            Io::Plain(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
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
