//! Server-side TLS: one rustls configuration per HTTPS server (certificate,
//! client verification for MUTUAL, TLS 1.3 floor, ALPN h2 and http/1.1),
//! chosen per connection from the ClientHello's SNI by the servers' `hosts`
//! as Envoy picks a filter chain (a server for `*` takes any name or none;
//! a name no server takes is refused).

use std::sync::Arc;

use rustls::{
    RootCertStore, ServerConfig,
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};
use thiserror::Error;

use crate::model::routing as router;
use crate::model::{HostPattern, Listener, Server, ServerTls};

#[derive(Debug, Error)]
pub enum ServerTlsError {
    #[error("Gateway {gateway} server {server}: {message}")]
    Config {
        gateway: String,
        server: String,
        message: String,
    },
}

/// The TLS configurations of one HTTPS listener, one per server.
pub struct ListenerTls {
    servers: Vec<(Vec<HostPattern>, Arc<ServerConfig>)>,
}

impl ListenerTls {
    pub fn build(listener: &Listener) -> Result<Self, ServerTlsError> {
        let mut servers = Vec::new();
        for s in &listener.servers {
            if let Some(tls) = &s.tls {
                servers.push((s.hosts.clone(), server_config(s, tls)?));
            }
        }
        if servers.is_empty() {
            return Err(ServerTlsError::Config {
                gateway: listener
                    .servers
                    .first()
                    .map(|s| s.gateway.to_string())
                    .unwrap_or_default(),
                server: format!("port {}", listener.port),
                message: "HTTPS listener without a certificate".into(),
            });
        }
        Ok(Self { servers })
    }

    /// The configuration for a ClientHello naming `sni`: that of the server
    /// [`router::server_for_sni`] picks; `None` refuses the handshake (no
    /// server takes that name, as no Envoy filter chain would).
    pub fn config_for(&self, sni: Option<&str>) -> Option<Arc<ServerConfig>> {
        let sni = sni.map(crate::http::authority::normalize_host);
        router::best_match(
            self.servers.iter().map(|(h, c)| (h.as_slice(), c)),
            sni.as_deref(),
        )
        .cloned()
    }
}

fn server_config(s: &Server, tls: &ServerTls) -> Result<Arc<ServerConfig>, ServerTlsError> {
    let err = |message: String| ServerTlsError::Config {
        gateway: s.gateway.to_string(),
        server: s.name.clone(),
        message,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if tls.min_tls13 {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| err(e.to_string()))?;
    let builder = match &tls.client_ca {
        Some(cas) => {
            let mut roots = RootCertStore::empty();
            for c in cas {
                roots
                    .add(c.clone())
                    .map_err(|e| err(format!("client CA: {e}")))?;
            }
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if tls.client_cert_optional {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier: Arc<dyn ClientCertVerifier> = verifier
                .build()
                .map_err(|e| err(format!("client verifier: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(tls.cert_chain.clone(), tls.key.clone_key())
        .map_err(|e| err(format!("certificate {}: {e}", tls.origin)))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
