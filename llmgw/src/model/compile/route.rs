//! LLMRoutes: each route's gateways and backends resolved, its rules'
//! matchers compiled, and the rules added to the virtual hosts of every
//! server the route binds to (as seen through that server's Gateway).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use http::HeaderName;
use regex::Regex;

use super::{Compiler, SelectedProvider, provider::upstream, split_host_port};
use crate::{
    config::{
        ResourceId, StringMatch,
        gateway::GatewaySpec,
        load::Document,
        route::{LlmRouteSpec, LlmRule},
        selector_matches,
    },
    model::{
        gateway::{HostPattern, Listener, Server},
        route::{Backend, HeaderMatch, RequestMatch, RouteRule, StrMatcher, VirtualHost},
    },
};

impl Compiler<'_> {
    /// Resolves each LLMRoute's gateways and backends and adds its rules to
    /// the virtual hosts of every server it binds to.
    pub(super) fn bind_routes(
        &mut self,
        routes: &[Document<LlmRouteSpec>],
        all_gateways: &[Document<GatewaySpec>],
        selected: &[&Document<GatewaySpec>],
        providers: &BTreeMap<String, SelectedProvider<'_>>,
        listeners: &mut [Listener],
    ) {
        let known: HashSet<&ResourceId> = all_gateways.iter().map(|g| &g.id).collect();
        let selected_ids: Vec<&ResourceId> = selected.iter().map(|g| &g.id).collect();
        // (server pointer identity) -> vhosts being built
        let mut tables: HashMap<*const Server, Vec<VirtualHost>> = HashMap::new();

        for route in routes {
            let ns = &route.id.namespace;
            if route.spec.gateways.is_empty() {
                self.warnings.push(format!(
                    "{}: {}: no spec.gateways: the route applies to sidecars (mesh) only, \
                     not to this gateway; add gateways: [namespace/name]",
                    route.source,
                    route.describe()
                ));
                continue;
            }
            let mut bound_gateways = Vec::new();
            for (i, g) in route.spec.gateways.iter().enumerate() {
                if g == "mesh" {
                    continue;
                }
                let id = gateway_ref(g, ns);
                if !known.contains(&id) {
                    self.errors.push(route.error(
                        format!("spec.gateways[{i}]"),
                        format!("Gateway {id} does not exist"),
                    ));
                    continue;
                }
                if selected_ids.contains(&&id) {
                    bound_gateways.push(id);
                }
            }
            let route_host = HostPattern::parse(route.spec.host.trim());
            if route.spec.host.trim().is_empty() {
                self.errors
                    .push(route.error("spec.host", "must not be empty (use \"*\" for any host)"));
                continue;
            }
            if route.spec.rules.is_empty() {
                self.errors
                    .push(route.error("spec.rules", "at least one rule is required"));
                continue;
            }
            if bound_gateways.is_empty() {
                // Bound only to Gateways another workload serves: its
                // providers are that workload's business, not this one's.
                continue;
            }
            // Compile the rules once per route, then clone the match lists per
            // server (the `gateways` condition of a match differs per server).
            let Some(rules) = self.route_rules(route, providers, &known) else {
                continue;
            };
            for listener in listeners.iter_mut() {
                for server in &listener.servers {
                    if !bound_gateways.contains(&server.gateway) {
                        continue;
                    }
                    let binds = server
                        .hosts
                        .iter()
                        .zip(&server.host_namespaces)
                        .any(|(h, hns)| {
                            h.intersects(&route_host) && hns.as_ref().is_none_or(|n| n == ns)
                        });
                    if !binds {
                        continue;
                    }
                    let bound: Vec<Arc<RouteRule>> = rules
                        .iter()
                        .filter_map(|r| r.for_gateway(&server.gateway, route))
                        .collect();
                    let table = tables.entry(Arc::as_ptr(server)).or_default();
                    match table.iter_mut().find(|v| v.host == route_host) {
                        Some(v) => v.rules.extend(bound),
                        None => table.push(VirtualHost {
                            host: route_host.clone(),
                            rules: bound,
                        }),
                    }
                }
            }
        }
        for listener in listeners.iter_mut() {
            for server in listener.servers.iter_mut() {
                if let Some(mut vhosts) = tables.remove(&Arc::as_ptr(server)) {
                    vhosts.sort_by_key(|v| std::cmp::Reverse(v.host.specificity()));
                    match Arc::get_mut(server) {
                        Some(s) => s.vhosts = vhosts,
                        None => unreachable!("servers are not shared before compile ends"),
                    }
                }
            }
        }
    }

    fn route_rules(
        &mut self,
        route: &Document<LlmRouteSpec>,
        providers: &BTreeMap<String, SelectedProvider<'_>>,
        known_gateways: &HashSet<&ResourceId>,
    ) -> Option<Vec<PendingRule>> {
        let mut out = Vec::new();
        let mut ok = true;
        for (i, rule) in route.spec.rules.iter().enumerate() {
            let field = format!("spec.rules[{i}]");
            let name = rule_name(rule, i);
            let mut matches = Vec::new();
            for (j, m) in rule.matches.iter().enumerate() {
                let mfield = format!("{field}.matches[{j}]");
                let mut headers = Vec::new();
                for (h, sm) in &m.headers {
                    let hfield = format!("{mfield}.headers.{h}");
                    let name = match HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()) {
                        Ok(n) => n,
                        Err(_) => {
                            self.errors
                                .push(route.error(hfield, format!("{h:?} is not a header name")));
                            ok = false;
                            continue;
                        }
                    };
                    match string_matcher(sm) {
                        Ok(matcher) => headers.push(HeaderMatch { name, matcher }),
                        Err(msg) => {
                            self.errors.push(route.error(hfield, msg));
                            ok = false;
                        }
                    }
                }
                let mut gateways = Vec::new();
                for (k, g) in m.gateways.iter().enumerate() {
                    let id = gateway_ref(g, &route.id.namespace);
                    if g != "mesh" && !known_gateways.contains(&id) {
                        self.errors.push(route.error(
                            format!("{mfield}.gateways[{k}]"),
                            format!("Gateway {id} does not exist"),
                        ));
                        ok = false;
                    }
                    gateways.push(id);
                }
                matches.push(PendingMatch {
                    headers,
                    gateways,
                    source_labels_ok: selector_matches(
                        &m.source_labels,
                        &self.settings.workload_labels,
                    ),
                });
            }
            if rule.backend_refs.is_empty() {
                self.errors.push(route.error(
                    format!("{field}.backendRefs"),
                    "at least one backend is required",
                ));
                ok = false;
                continue;
            }
            let mut backends = Vec::new();
            let any_weight = rule.backend_refs.iter().any(|b| b.weight.is_some());
            for (k, b) in rule.backend_refs.iter().enumerate() {
                let bfield = format!("{field}.backendRefs[{k}]");
                if b.backend_ref.is_some() {
                    self.errors.push(route.error(
                        format!("{bfield}.backendRef"),
                        "in-cluster backends (InferencePool) are not served by llmgw; use providerHost",
                    ));
                    ok = false;
                    continue;
                }
                let Some(host) = &b.provider_host else {
                    self.errors
                        .push(route.error(format!("{bfield}.providerHost"), "is required"));
                    ok = false;
                    continue;
                };
                let host = host.trim().to_ascii_lowercase();
                let Some(p) = providers.get(&host) else {
                    self.errors.push(route.error(
                        format!("{bfield}.providerHost"),
                        format!("no LLMProvider with host {host} selects this gateway"),
                    ));
                    ok = false;
                    continue;
                };
                let weight = match (b.weight, any_weight) {
                    (Some(w), _) if w < 0 => {
                        self.errors
                            .push(route.error(format!("{bfield}.weight"), "must not be negative"));
                        ok = false;
                        continue;
                    }
                    (Some(w), _) => w as u32,
                    (None, true) => 0,
                    (None, false) => 1,
                };
                match upstream(p, &name, b.host_rewrite.as_deref()) {
                    Ok(u) => backends.push(Backend {
                        provider: p.provider.clone(),
                        weight,
                        upstream: Arc::new(u),
                    }),
                    Err((f, m)) => {
                        self.errors.push(p.doc.error(f, m));
                        ok = false;
                    }
                }
            }
            let total_weight: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
            if !backends.is_empty() && total_weight == 0 {
                self.errors.push(route.error(
                    format!("{field}.backendRefs"),
                    "weights add up to 0: no backend would ever be chosen",
                ));
                ok = false;
            }
            for (k, b) in rule.backend_refs.iter().enumerate() {
                if let Some(h) = &b.host_rewrite
                    && split_host_port(h).is_err()
                {
                    self.errors.push(route.error(
                        format!("{field}.backendRefs[{k}].hostRewrite"),
                        format!("{h:?} is not a host name"),
                    ));
                    ok = false;
                }
            }
            out.push(PendingRule {
                name,
                always: rule.matches.is_empty(),
                matches,
                backends: backends.into_iter().map(Arc::new).collect(),
                total_weight,
            });
        }
        ok.then_some(out)
    }
}

struct PendingMatch {
    headers: Vec<HeaderMatch>,
    gateways: Vec<ResourceId>,
    source_labels_ok: bool,
}

struct PendingRule {
    name: String,
    always: bool,
    matches: Vec<PendingMatch>,
    backends: Vec<Arc<Backend>>,
    total_weight: u64,
}

impl PendingRule {
    /// The rule as seen through `gateway`; `None` if no match can apply there.
    fn for_gateway(
        &self,
        gateway: &ResourceId,
        route: &Document<LlmRouteSpec>,
    ) -> Option<Arc<RouteRule>> {
        let matches: Vec<RequestMatch> = self
            .matches
            .iter()
            .filter(|m| {
                m.source_labels_ok && (m.gateways.is_empty() || m.gateways.contains(gateway))
            })
            .map(|m| RequestMatch {
                headers: m
                    .headers
                    .iter()
                    .map(|h| HeaderMatch {
                        name: h.name.clone(),
                        matcher: h.matcher.clone_matcher(),
                    })
                    .collect(),
            })
            .collect();
        if !self.always && matches.is_empty() {
            return None;
        }
        Some(Arc::new(RouteRule {
            route: route.id.clone(),
            route_label: route.id.to_string(),
            name: self.name.clone(),
            matches,
            backends: self
                .backends
                .iter()
                .map(|b| Backend {
                    provider: b.provider.clone(),
                    weight: b.weight,
                    upstream: b.upstream.clone(),
                })
                .collect(),
            total_weight: self.total_weight,
        }))
    }
}

impl StrMatcher {
    fn clone_matcher(&self) -> StrMatcher {
        match self {
            StrMatcher::Present => StrMatcher::Present,
            StrMatcher::Exact(s) => StrMatcher::Exact(s.clone()),
            StrMatcher::Prefix(s) => StrMatcher::Prefix(s.clone()),
            StrMatcher::Regex(r) => StrMatcher::Regex(r.clone()),
        }
    }
}

fn string_matcher(sm: &StringMatch) -> Result<StrMatcher, String> {
    match (&sm.exact, &sm.prefix, &sm.regex) {
        (None, None, None) => Ok(StrMatcher::Present),
        (Some(e), None, None) => Ok(StrMatcher::Exact(e.clone())),
        (None, Some(p), None) => Ok(StrMatcher::Prefix(p.clone())),
        (None, None, Some(r)) => Regex::new(&format!("^(?:{r})$"))
            .map(StrMatcher::Regex)
            .map_err(|e| format!("regex {r:?}: {e}")),
        _ => Err("set only one of exact, prefix, regex".into()),
    }
}

/// A rule's name: its own, or `rule-INDEX` when it has none.
pub(super) fn rule_name(rule: &LlmRule, index: usize) -> String {
    rule.name.clone().unwrap_or_else(|| format!("rule-{index}"))
}

/// `ns/name` or `name` (in `default_ns`).
fn gateway_ref(s: &str, default_ns: &str) -> ResourceId {
    match s.split_once('/') {
        Some((ns, name)) => ResourceId {
            namespace: ns.to_string(),
            name: name.to_string(),
        },
        None => ResourceId {
            namespace: default_ns.to_string(),
            name: s.to_string(),
        },
    }
}
