//! Security policy: Istio `AuthorizationPolicy` (compiled in `authz`,
//! evaluated per request CUSTOM → DENY → ALLOW; CUSTOM asks `extauthz`),
//! `RequestAuthentication` (`jwt`), and the part XDP can enforce (`l4`).
//! `compile` selects what applies to this gateway; the request path only evaluates.

pub mod authz;
pub mod extauthz;
pub mod extauthz_grpc;
pub mod extauthz_proto;
pub mod jwks;
pub mod jwks_fetch;
pub mod jwt;
pub mod runtime;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};

use crate::config::{ErrorList, RawConfig, Settings, load::Document, selector_matches};

pub use authz::{Decision, Identity, Policies, RequestContext};
pub use extauthz::{CheckRequest, CheckResult, ExtAuthz};
pub use jwt::{Authenticator, JwtError};

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

/// Everything security-related the snapshot carries.
#[derive(Debug, Default)]
pub struct Compiled {
    pub policies: Policies,
    pub authn: Arc<Authenticator>,
    pub ext_authz: Arc<ExtAuthz>,
}

/// Whether a namespaced, selector-scoped Istio policy applies to this gateway:
/// it lives in the root namespace or in the gateway's own, and its selector
/// (if any) matches the gateway's labels. A policy attached with
/// `targetRef(s)` is an error (they name Kubernetes Gateway API objects).
pub(crate) fn applies<S>(
    doc: &Document<S>,
    selector: Option<&crate::config::authz::Selector>,
    has_target_refs: bool,
    settings: &Settings,
    errors: &mut ErrorList,
) -> bool {
    if has_target_refs {
        errors.push(doc.error(
            "spec.targetRefs",
            "targetRef(s) attach policies to Kubernetes Gateway API resources, which llmgw does not serve; use selector",
        ));
        return false;
    }
    let ns = &doc.id.namespace;
    let in_scope = *ns == settings.root_namespace || *ns == settings.namespace;
    in_scope
        && selector.is_none_or(|s| selector_matches(&s.match_labels, &settings.workload_labels))
}

/// Compiles every policy that applies to this gateway (see [`applies`]),
/// the RequestAuthentications, and MeshConfig's extension providers; a
/// CUSTOM policy must name a usable `envoyExtAuthzHttp` provider.
pub fn compile(
    raw: &RawConfig,
    settings: &Settings,
    errors: &mut ErrorList,
    warnings: &mut Vec<String>,
) -> Compiled {
    let policies = authz::compile(&raw.authorization_policies, settings, errors);
    let ext_authz = extauthz::compile(&settings.mesh, errors);
    for p in &policies.custom {
        let Some(name) = &p.provider else { continue };
        if let Err(m) = ext_authz.usable(name)
            && let Some(doc) = raw.authorization_policies.iter().find(|d| d.id == p.id)
        {
            errors.push(doc.error("spec.provider.name", m));
        }
    }
    let authn = jwt::compile(&raw.request_authentications, settings, errors, warnings);
    Compiled {
        policies,
        authn: Arc::new(authn),
        ext_authz: Arc::new(ext_authz),
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
