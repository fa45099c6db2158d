//! The security stage of the request path, before routing, in Istio's
//! filter order: JWT authentication (RequestAuthentication), then CUSTOM
//! external authorization, then AuthorizationPolicy DENY and ALLOW.

use http::request::Parts;

use super::{Live, error::ProxyError};
use crate::client::Client;
use crate::{
    http::path::normalize_path,
    model::Snapshot,
    policy::{CheckRequest, CheckResult, Decision, Identity, RequestContext, extauthz::Allowed},
};

/// Verifies a JWT if the request carries one: `Ok(None)` without a token
/// (a policy decides), the identity when it verifies, Envoy's 401/403 when
/// it does not. Removes the token unless its rule forwards it and writes the
/// rule's output headers.
pub async fn authenticate(
    live: &Live,
    parts: &mut Parts,
    scheme: &str,
    authority: &str,
) -> Result<Option<Identity>, ProxyError> {
    let snapshot = &live.snapshot;
    if snapshot.authn.is_empty() {
        return Ok(None);
    }
    // Envoy's realm shows `:path` as its connection manager normalised it,
    // query included.
    let mut original = normalize_path(parts.uri.path());
    if let Some(q) = parts.uri.query() {
        original.push('?');
        original.push_str(q);
    }
    snapshot
        .authn
        .authenticate(
            &live.runtime.security.jwks,
            &parts.method,
            &mut parts.uri,
            &mut parts.headers,
        )
        .await
        .map_err(|e| ProxyError::Refused {
            reply: Box::new(e.local_reply(scheme, authority, &original)),
            reason: e.to_string(),
        })
}

/// Asks the extension provider of the CUSTOM policy that matched. On allow,
/// returns the header changes it asks for (the caller applies them to the
/// request, once the check no longer borrows its headers).
pub async fn check_custom(
    live: &Live,
    client: &Client,
    provider: &str,
    req: &CheckRequest<'_>,
) -> Result<Allowed, ProxyError> {
    let counters = &live.runtime.security.ext_authz;
    match live
        .snapshot
        .ext_authz
        .check(counters, client, provider, req)
        .await
    {
        CheckResult::Allow(allowed) => Ok(allowed),
        CheckResult::Deny(reply) => Err(ProxyError::Refused {
            reason: format!(
                "denied by external authorizer {provider} ({})",
                reply.status
            ),
            reply: Box::new(reply),
        }),
    }
}

/// The provider of the first CUSTOM policy matching `ctx`, if any.
pub fn custom_provider(snapshot: &Snapshot, ctx: &RequestContext<'_>) -> Option<String> {
    snapshot
        .policies
        .custom_match(ctx)
        .and_then(|p| p.provider.clone())
}

/// AuthorizationPolicy DENY, then ALLOW.
pub fn authorize(snapshot: &Snapshot, ctx: &RequestContext<'_>) -> Result<(), ProxyError> {
    for p in snapshot.policies.audited(ctx) {
        tracing::info!(policy = %p.id, authority = ctx.authority, path = ctx.path, "AUDIT policy matched");
    }
    match snapshot.policies.evaluate(ctx) {
        Decision::Allow => Ok(()),
        Decision::Deny { policy } => Err(ProxyError::Denied { policy }),
    }
}
