//! The security stage's runtime state, kept apart from the compiled
//! policies: remote key sets being fetched, and the ext_authz counters. Built from the compiled policies and the state of the
//! configuration being replaced, so a reload keeps fetched keys and
//! counts, and drops what is no longer named.

use super::{
    extauthz::ExtAuthzCounters,
    jwks_fetch::{FetchSettings, JwksFetchers},
};
use crate::model::{authn::Authenticator, extauthz::ExtAuthz};

#[derive(Debug, Default)]
pub struct SecurityState {
    pub jwks: JwksFetchers,
    pub ext_authz: ExtAuthzCounters,
}

impl SecurityState {
    /// Must be called inside a tokio runtime (new key fetches start at once).
    pub fn build(
        authn: &Authenticator,
        ext_authz: &ExtAuthz,
        fetch: &FetchSettings,
        previous: Option<&SecurityState>,
    ) -> Self {
        SecurityState {
            jwks: JwksFetchers::build(authn, fetch, previous.map(|p| &p.jwks)),
            ext_authz: ExtAuthzCounters::build(ext_authz, previous.map(|p| &p.ext_authz)),
        }
    }
}
