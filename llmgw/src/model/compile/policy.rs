//! Security resources: AuthorizationPolicies, RequestAuthentications and
//! MeshConfig's extension providers (compiled by `crate::policy`), and the
//! checks that need the listeners (ports a policy names).

use super::Compiler;
use crate::{config::RawConfig, model::Listener, policy};

impl Compiler<'_> {
    pub(super) fn policies(&mut self, raw: &RawConfig, listeners: &[Listener]) -> policy::Compiled {
        let security = policy::compile(raw, self.settings, &mut self.errors, &mut self.warnings);
        // `ports` are the ports the gateway listens on (after --port-map), as
        // Istio's are the proxy's: a list naming none of them never matches.
        let local_ports: Vec<u16> = listeners.iter().map(|l| l.local.port()).collect();
        for p in security.policies.all() {
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
        security
    }
}
