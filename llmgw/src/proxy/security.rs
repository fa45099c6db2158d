//! The security stage of the request path, run before routing: today the
//! AuthorizationPolicy DENY/ALLOW decision. JWT authentication
//! (RequestAuthentication) and CUSTOM external authorization belong here too,
//! so that every check stays in this one function.

use super::error::ProxyError;
use crate::{
    config::Snapshot,
    policy::{Decision, RequestContext},
};

/// Admits or refuses a request. `ctx.identity` is `None` until JWT
/// authentication fills it in this stage.
pub async fn admit(snapshot: &Snapshot, ctx: &RequestContext<'_>) -> Result<(), ProxyError> {
    match snapshot.policies.evaluate(ctx) {
        Decision::Allow => Ok(()),
        Decision::Deny { policy } => Err(ProxyError::Denied { policy }),
    }
}
