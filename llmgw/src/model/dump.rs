//! What a snapshot holds, for people: the text `llmgw validate` prints and
//! the JSON the admin server's `/config_dump` returns. API keys appear only
//! as `<redacted>`; both forms come from the same walk.

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Value, json};

use super::authz::Policy;
use super::{HostPattern, Protocol, RouteRule, Snapshot, route::StrMatcher, xdp};

/// The snapshot as JSON (keys redacted).
pub fn dump(s: &Snapshot) -> Value {
    let l4 = xdp::rules(s);
    json!({
        "listeners": s.listeners.iter().map(|l| json!({
            "port": l.port,
            "local": l.local.to_string(),
            "protocol": l.protocol,
            "servers": l.servers.iter().map(|srv| json!({
                "gateway": srv.gateway.to_string(),
                "name": srv.name,
                "hosts": srv.hosts.iter().map(HostPattern::to_string).collect::<Vec<_>>(),
                "tls": srv.tls.as_ref().map(|t| json!({
                    "origin": t.origin,
                    "mutual": t.client_ca.is_some(),
                    "clientCertificateOptional": t.client_cert_optional,
                    "minTls13": t.min_tls13,
                })),
                "httpsRedirect": srv.https_redirect,
                "virtualHosts": srv.vhosts.iter().map(|v| json!({
                    "host": v.host.to_string(),
                    "rules": v.rules.iter().map(|r| rule(r)).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "providers": s.providers.iter().map(|p| json!({"name": p.id.to_string(), "host": p.host})).collect::<Vec<_>>(),
        "authorizationPolicies": s.policies.all().map(policy).collect::<Vec<_>>(),
        "requestAuthentication": s.authn.dump(),
        "extensionProviders": s.ext_authz.describe(),
        "xdp": {
            "listenerPorts": l4.listener_ports,
            "destinations": match &l4.destinations {
                xdp::Destinations::Any => json!("any"),
                xdp::Destinations::Host => json!("host"),
                xdp::Destinations::Only(ips) => json!(ips),
            },
            "deny": l4.entries.iter().map(|e| json!({
                "net": e.net.to_string(),
                "rule": e.rule,
                "ports": e.ports,
            })).collect::<Vec<_>>(),
        },
        "warnings": s.warnings,
    })
}

fn rule(r: &RouteRule) -> Value {
    json!({
        "route": r.route.to_string(),
        "name": r.name,
        "matches": r.matches.iter().map(|m| {
            m.headers.iter().map(|h| (h.name.to_string(), matcher(&h.matcher))).collect::<serde_json::Map<_, _>>()
        }).collect::<Vec<_>>(),
        "backends": r.backends.iter().map(|b| json!({
            "provider": b.provider.id.to_string(),
            "weight": b.weight,
            "host": b.upstream.host,
            "connect": b.upstream.authority,
            "path": b.upstream.path.as_ref().map(|p| p.as_str()),
            "model": b.upstream.model,
            "stream": b.upstream.stream,
            "apiKey": b.upstream.authorization.as_ref().map(|_| "<redacted>"),
        })).collect::<Vec<_>>(),
    })
}

fn matcher(m: &StrMatcher) -> Value {
    match m {
        StrMatcher::Present => json!({"present": true}),
        StrMatcher::Exact(e) => json!({"exact": e}),
        StrMatcher::Prefix(p) => json!({"prefix": p}),
        StrMatcher::Regex(r) => {
            let s = r.as_str();
            // Stored anchored as ^(?:...)$; show what the user wrote.
            let inner = s
                .strip_prefix("^(?:")
                .and_then(|x| x.strip_suffix(")$"))
                .unwrap_or(s);
            json!({"regex": inner})
        }
    }
}

#[derive(Serialize)]
struct RuleView<'a> {
    index: usize,
    xdp: bool,
    placement: &'a str,
}

fn policy(p: &Policy) -> Value {
    json!({
        "name": p.id.to_string(),
        "action": p.action,
        "provider": p.provider,
        "rules": p.rules.iter().map(|r| RuleView { index: r.index, xdp: r.placement.xdp, placement: &r.placement.reason }).collect::<Vec<_>>(),
    })
}

/// The snapshot as the text `llmgw validate` prints.
pub fn describe(s: &Snapshot) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "listeners:");
    if s.listeners.is_empty() {
        let _ = writeln!(w, "  (none: no Gateway selects this workload's labels)");
    }
    for l in &s.listeners {
        let proto = match l.protocol {
            Protocol::Http => "HTTP",
            Protocol::Https => "HTTPS",
        };
        let _ = writeln!(w, "  {proto} port {} on {}", l.port, l.local);
        for srv in &l.servers {
            let hosts: Vec<String> = srv.hosts.iter().map(HostPattern::to_string).collect();
            let _ = write!(
                w,
                "    server {} of Gateway {} hosts [{}]",
                srv.name,
                srv.gateway,
                hosts.join(", ")
            );
            if let Some(t) = &srv.tls {
                let _ = write!(
                    w,
                    " tls from {}{}",
                    t.origin,
                    match (t.client_ca.is_some(), t.client_cert_optional) {
                        (true, true) => " (mutual, client certificate optional)",
                        (true, false) => " (mutual)",
                        _ => "",
                    }
                );
            }
            if srv.https_redirect {
                let _ = write!(w, " (redirects to https)");
            }
            let _ = writeln!(w);
            if srv.vhosts.is_empty() {
                let _ = writeln!(w, "      (no routes: every request gets 404)");
            }
            for v in &srv.vhosts {
                let _ = writeln!(w, "      host {}", v.host);
                for r in &v.rules {
                    let m = if r.matches.is_empty() {
                        "always".to_string()
                    } else {
                        r.matches
                            .iter()
                            .map(|m| {
                                if m.headers.is_empty() {
                                    // A match whose only conditions (gateways,
                                    // sourceLabels) hold where it is bound.
                                    return "any request".to_string();
                                }
                                m.headers
                                    .iter()
                                    .map(|h| format!("{}={}", h.name, matcher(&h.matcher)))
                                    .collect::<Vec<_>>()
                                    .join(" and ")
                            })
                            .collect::<Vec<_>>()
                            .join(" or ")
                    };
                    let _ = writeln!(
                        w,
                        "        rule {} of LLMRoute {} when {m}",
                        r.name, r.route
                    );
                    for b in &r.backends {
                        let u = &b.upstream;
                        let _ = writeln!(
                            w,
                            "          -> {} weight {}/{}: https://{}{} (connect {}) model={} stream={} apiKey={}",
                            b.provider.id,
                            b.weight,
                            r.total_weight,
                            u.host,
                            u.path.as_ref().map_or("<client path>", |p| p.as_str()),
                            u.authority,
                            u.model.as_deref().unwrap_or("<client's>"),
                            u.stream.map_or("<client's>".to_string(), |s| s.to_string()),
                            if u.authorization.is_some() {
                                "<redacted>"
                            } else {
                                "<client's>"
                            },
                        );
                    }
                }
            }
        }
    }
    let _ = writeln!(
        w,
        "providers (the rewrite of each is under the rules above):"
    );
    if s.providers.is_empty() {
        let _ = writeln!(w, "  (none selects this workload)");
    }
    for p in &s.providers {
        let mut users: Vec<String> = Vec::new();
        for r in s
            .listeners
            .iter()
            .flat_map(|l| &l.servers)
            .flat_map(|srv| &srv.vhosts)
            .flat_map(|v| &v.rules)
        {
            let label = format!("{} of LLMRoute {}", r.name, r.route);
            if r.backends.iter().any(|b| Arc::ptr_eq(&b.provider, p)) && !users.contains(&label) {
                users.push(label);
            }
        }
        let used = if users.is_empty() {
            "no rule on a served listener sends traffic here".to_string()
        } else {
            format!("used by rule {}", users.join(", rule "))
        };
        let _ = writeln!(w, "  LLMProvider {} host {}: {used}", p.id, p.host);
    }
    let _ = writeln!(w, "authorization policies:");
    if s.policies.is_empty() {
        let _ = writeln!(w, "  (none: every request is allowed)");
    }
    for p in s.policies.all() {
        let _ = write!(w, "  {} {}", p.action, p.id);
        if let Some(pr) = &p.provider {
            let _ = write!(w, " (provider {pr})");
        }
        let _ = writeln!(w);
        if p.rules.is_empty() {
            let _ = writeln!(w, "    (no rules: matches nothing)");
        }
        for r in &p.rules {
            let place = if r.placement.xdp { "XDP+L7" } else { "L7" };
            let _ = writeln!(w, "    rule {}: {place}: {}", r.index, r.placement.reason);
        }
    }
    let _ = writeln!(w, "request authentication (JWT issuers):");
    let authn = s.authn.describe();
    if authn.is_empty() {
        let _ = writeln!(w, "  (none: tokens are not checked)");
    }
    for line in &authn {
        let _ = writeln!(w, "  {line}");
    }
    let providers = s.ext_authz.describe();
    if !providers.is_empty() {
        let _ = writeln!(w, "extension providers (CUSTOM):");
        for line in &providers {
            let _ = writeln!(w, "  {line}");
        }
    }
    let l4 = xdp::rules(s);
    let destinations = match &l4.destinations {
        xdp::Destinations::Any => "any address".to_string(),
        xdp::Destinations::Host => "every address of this host".to_string(),
        xdp::Destinations::Only(ips) => ips
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    };
    let _ = writeln!(
        w,
        "xdp deny entries (listener ports {:?}, addressed to {destinations}):",
        l4.listener_ports
    );
    if l4.entries.is_empty() {
        let _ = writeln!(w, "  (none)");
    }
    for e in &l4.entries {
        let ports = e
            .ports
            .as_ref()
            .map_or("every listener port".to_string(), |p| {
                format!("ports {p:?}")
            });
        let _ = writeln!(w, "  {} -> {} ({})", e.net, ports, e.rule);
    }
    if !s.warnings.is_empty() {
        let _ = writeln!(w, "warnings:");
        for x in &s.warnings {
            let _ = writeln!(w, "  - {x}");
        }
    }
    out
}
