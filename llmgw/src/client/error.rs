//! Why an outbound request failed, classified for the 502/504 mapping and
//! the `llmgw_upstream_errors_total{kind}` metric; and why the client's TLS
//! configuration could not be built.

use std::{io, time::Duration};

use thiserror::Error;

use crate::observe::metrics::UpstreamErrorKind;

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
