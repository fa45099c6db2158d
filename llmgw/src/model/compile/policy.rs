//! Security resources: AuthorizationPolicies, RequestAuthentications and
//! MeshConfig's extension providers (a CUSTOM policy must name a usable
//! authorizer), and the checks that need the listeners (ports a policy names).

use std::sync::Arc;

use super::{Compiler, authn, authz, extauthz};
use crate::{
    config::{ErrorList, RawConfig, Settings, authz::Selector, load::Document, selector_matches},
    model::{Listener, authn::Authenticator, authz::Policies, extauthz::ExtAuthz},
};

/// Everything security-related the snapshot carries.
#[derive(Debug, Default)]
pub(crate) struct Security {
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
    selector: Option<&Selector>,
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

impl Compiler<'_> {
    /// Compiles every policy that applies to this gateway (see [`applies`]),
    /// the RequestAuthentications, and MeshConfig's extension providers.
    pub(super) fn policies(&mut self, raw: &RawConfig, listeners: &[Listener]) -> Security {
        let settings = self.settings;
        let errors = &mut self.errors;
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
        let authn = authn::compile(
            &raw.request_authentications,
            settings,
            errors,
            &mut self.warnings,
        );
        // `ports` are the ports the gateway listens on (after --port-map), as
        // Istio's are the proxy's: a list naming none of them never matches.
        let local_ports: Vec<u16> = listeners.iter().map(|l| l.local.port()).collect();
        for p in policies.all() {
            for r in &p.rules {
                for o in &r.to {
                    if !o.ports.is_empty() && !o.ports.iter().any(|port| local_ports.contains(port))
                    {
                        self.warnings.push(format!(
                            "AuthorizationPolicy {} rule {}: none of ports {:?} is a port the gateway \
                             listens on ({local_ports:?}; with --port-map, policies name the local \
                             port), so that operation never matches",
                            p.id, r.index, o.ports
                        ));
                    }
                }
            }
        }
        Security {
            policies,
            authn: Arc::new(authn),
            ext_authz: Arc::new(ext_authz),
        }
    }
}
