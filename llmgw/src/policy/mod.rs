//! Security policy: Istio `AuthorizationPolicy` (compiled in `authz`,
//! evaluated per request CUSTOM → DENY → ALLOW) and the part of it XDP can
//! enforce exactly (`l4`). `compile` selects the policies that apply to this
//! gateway and compiles them; the request path only evaluates.

pub mod authz;
pub mod l4;

use crate::config::{ErrorList, RawConfig, Settings, load::Document, selector_matches};

pub use authz::{Decision, Policies, RequestContext};

/// Whether a namespaced, selector-scoped Istio policy applies to this gateway:
/// it lives in the root namespace or in the gateway's own, and its selector
/// (if any) matches the gateway's labels.
pub(crate) fn applies<S>(
    doc: &Document<S>,
    selector: Option<&crate::config::Labels>,
    settings: &Settings,
) -> bool {
    let ns = &doc.id.namespace;
    let in_scope = *ns == settings.root_namespace || *ns == settings.namespace;
    in_scope && selector.is_none_or(|s| selector_matches(s, &settings.workload_labels))
}

/// Compiles every policy that applies to this gateway (see [`applies`]).
pub fn compile(
    raw: &RawConfig,
    settings: &Settings,
    errors: &mut ErrorList,
    _warnings: &mut [String],
) -> Policies {
    authz::compile(&raw.authorization_policies, settings, errors)
}

#[cfg(test)]
mod authz_tests;
