//! Security policy evaluated per request: Istio `AuthorizationPolicy`
//! (`authz`: CUSTOM → DENY → ALLOW; CUSTOM asks `extauthz`) and
//! `RequestAuthentication` (`jwt`), over the compiled policies of
//! `crate::model`; `runtime` holds what they need while serving (key
//! fetchers, authorizer clients and counters).

pub mod authz;
pub mod extauthz;
pub mod extauthz_grpc;
pub mod extauthz_proto;
pub mod jwks_fetch;
pub mod jwt;
mod jwt_token;
pub mod runtime;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};

pub use authz::{Decision, Identity, RequestContext};
pub use extauthz::{CheckRequest, CheckResult};
pub use jwt::JwtError;

/// A response the gateway answers itself (Envoy's "local reply"): JWT
/// rejections, RBAC denials, ext_authz denials. The proxy only sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalReply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl LocalReply {
    /// `status` with no body and no headers.
    pub fn empty(status: StatusCode) -> Self {
        LocalReply {
            status,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    /// `status` with a `text/plain` body.
    pub fn text(status: StatusCode, body: impl Into<String>) -> Self {
        let mut r = Self::empty(status);
        r.headers
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        r.body = Bytes::from(body.into());
        r
    }

    /// What a request denied by an AuthorizationPolicy gets (Istio's text).
    pub fn rbac_denied() -> Self {
        Self::text(StatusCode::FORBIDDEN, "RBAC: access denied")
    }

    /// As an `http::Response` with any body type built from bytes.
    pub fn into_response<B: From<Bytes>>(self) -> http::Response<B> {
        let mut resp = http::Response::new(B::from(self.body));
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers;
        resp
    }
}

#[cfg(test)]
mod authz_tests;
#[cfg(test)]
mod extauthz_grpc_tests;
#[cfg(test)]
mod extauthz_tests;
#[cfg(test)]
mod jwt_tests;
#[cfg(test)]
mod test_support;
