//! AuthorizationPolicies: the ones that apply to this gateway, their rules'
//! sources, operations and conditions parsed into matchers (refusing what
//! Istio refuses and what needs a mesh), and where each rule is enforced.

use super::applies;
use crate::config::{
    ConfigError, ErrorList, Scalar, Settings,
    authz::{self as raw, AuthorizationPolicySpec},
    load::Document,
};
use ipnet::IpNet;
use std::net::IpAddr;

use crate::model::authz::*;

/// Source fields that need the peer's mesh identity (mTLS), which an ingress
/// gateway's clients never have.
const MESH_ONLY: &str = "needs the peer's mesh identity (Istio mTLS), which clients of an ingress gateway do not have; use ipBlocks, remoteIpBlocks or requestPrincipals";

pub(crate) fn compile(
    docs: &[Document<AuthorizationPolicySpec>],
    settings: &Settings,
    errors: &mut ErrorList,
) -> Policies {
    let mut out = Policies::default();
    // Istio: one extension provider per workload.
    let mut custom_provider: Option<(String, &Document<AuthorizationPolicySpec>)> = None;
    for doc in docs {
        let spec = &doc.spec;
        let targeted = spec.target_ref.is_some() || !spec.target_refs.is_empty();
        if !applies(doc, spec.selector.as_ref(), targeted, settings, errors) {
            continue;
        }
        if let Some(p) = compile_policy(doc, errors) {
            if let Some(name) = &p.provider {
                match &custom_provider {
                    Some((first, by)) if first != name => {
                        errors.push(doc.error(
                            "spec.provider.name",
                            format!(
                                "CUSTOM policies for one workload must use one extension provider \
                                 (as in Istio); {} ({}) already uses {first:?}, this one {name:?}",
                                by.id, by.source
                            ),
                        ));
                        continue;
                    }
                    Some(_) => {}
                    None => custom_provider = Some((name.clone(), doc)),
                }
            }
            match p.action {
                Action::Custom => out.custom.push(p),
                Action::Deny => out.deny.push(p),
                Action::Allow => out.allow.push(p),
                Action::Audit => out.audit.push(p),
            }
        }
    }
    out
}

fn compile_policy(
    doc: &Document<AuthorizationPolicySpec>,
    errors: &mut ErrorList,
) -> Option<Policy> {
    let spec = &doc.spec;
    let before = errors.0.len();
    let action = match spec.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" => Action::Allow,
        "DENY" => Action::Deny,
        "AUDIT" => Action::Audit,
        "CUSTOM" => Action::Custom,
        other => {
            errors.push(doc.error(
                "spec.action",
                format!("unknown action {other:?} (ALLOW, DENY, AUDIT, CUSTOM)"),
            ));
            return None;
        }
    };
    let provider = match (action, &spec.provider) {
        (Action::Custom, Some(p)) if !p.name.is_empty() => Some(p.name.clone()),
        (Action::Custom, _) => {
            errors.push(doc.error(
                "spec.provider.name",
                "CUSTOM needs an extension provider name",
            ));
            None
        }
        (_, Some(_)) => {
            errors.push(doc.error(
                "spec.provider",
                format!("only CUSTOM takes a provider, not {action}"),
            ));
            None
        }
        (_, None) => None,
    };
    if action == Action::Deny && spec.rules.as_ref().is_none_or(Vec::is_empty) {
        errors.push(doc.error(
            "spec.rules",
            "DENY without rules never matches; add an empty rule {} to deny every request",
        ));
    }
    if action == Action::Custom {
        custom_limits(doc, errors);
    }
    let mut rules = Vec::new();
    for (i, r) in spec.rules.iter().flatten().enumerate() {
        let f = format!("spec.rules[{i}]");
        let mut c = Ctx { doc, errors };
        if r.from.as_ref().is_some_and(Vec::is_empty) {
            c.err(
                format!("{f}.from"),
                "must not be empty (leave it out to match any source)",
            );
        }
        if r.to.as_ref().is_some_and(Vec::is_empty) {
            c.err(
                format!("{f}.to"),
                "must not be empty (leave it out to match any operation)",
            );
        }
        let mut from = Vec::new();
        for (j, s) in r.from.iter().flatten().enumerate() {
            let field = format!("{f}.from[{j}].source");
            match &s.source {
                Some(s) => from.push(c.source(s, &field)),
                None => c.err(field, "is required"),
            }
        }
        let mut to = Vec::new();
        for (j, o) in r.to.iter().flatten().enumerate() {
            let field = format!("{f}.to[{j}].operation");
            match &o.operation {
                Some(o) => to.push(c.operation(o, &field)),
                None => c.err(field, "is required"),
            }
        }
        let when: Vec<Condition> = r
            .when
            .iter()
            .enumerate()
            .filter_map(|(j, w)| c.condition(w, &format!("{f}.when[{j}]")))
            .collect();
        let placement = placement(action, &from, &to, &when);
        rules.push(Rule {
            index: i,
            from,
            to,
            when,
            placement,
        });
    }
    (errors.0.len() == before).then(|| Policy {
        id: doc.id.clone(),
        action,
        provider,
        rules,
    })
}

/// What Istio's validation refuses in a CUSTOM policy: no rules (it would
/// never run) and JWT attributes (the authorizer runs before JWT
/// authentication has an answer for it).
fn custom_limits(doc: &Document<AuthorizationPolicySpec>, errors: &mut ErrorList) {
    let rules = doc.spec.rules.as_deref().unwrap_or_default();
    if rules.is_empty() {
        errors.push(doc.error(
            "spec.rules",
            "CUSTOM without rules never runs; add an empty rule {} to check every request",
        ));
    }
    for (i, r) in rules.iter().enumerate() {
        for (j, from) in r.from.iter().flatten().enumerate() {
            let Some(src) = &from.source else { continue };
            for (field, list) in [
                ("requestPrincipals", &src.request_principals),
                ("notRequestPrincipals", &src.not_request_principals),
            ] {
                if !list.is_empty() {
                    errors.push(doc.error(
                        format!("spec.rules[{i}].from[{j}].source.{field}"),
                        "is not supported with the CUSTOM action (as in Istio)",
                    ));
                }
            }
        }
        for (j, w) in r.when.iter().enumerate() {
            if w.key.starts_with("request.auth.") {
                errors.push(doc.error(
                    format!("spec.rules[{i}].when[{j}].key"),
                    format!(
                        "{} is not supported with the CUSTOM action (as in Istio)",
                        w.key
                    ),
                ));
            }
        }
    }
}

fn placement(action: Action, from: &[Source], to: &[Operation], when: &[Condition]) -> Placement {
    let l7 = |reason: &str| Placement {
        xdp: false,
        reason: reason.to_string(),
    };
    if action != Action::Deny {
        return l7("only DENY rules can drop packets");
    }
    if !when.is_empty() {
        return l7("has `when` conditions");
    }
    if from.is_empty() || !from.iter().any(Source::ip_blocks_only) {
        return l7("no source with ipBlocks alone");
    }
    if !to.is_empty() && !to.iter().any(|o| o.ports_only().is_some()) {
        return l7("every `to` operation checks more than ports");
    }
    let partial =
        from.iter().any(|s| !s.ip_blocks_only()) || to.iter().any(|o| o.ports_only().is_none());
    Placement {
        xdp: true,
        reason: if partial {
            "XDP drops the ipBlocks-only sources on port-only operations; the rest at L7".into()
        } else if to.is_empty() {
            "XDP drops ipBlocks on every listener port (and L7 answers 403 if a packet gets past)"
                .into()
        } else {
            "XDP drops ipBlocks on the listed ports (and L7 answers 403 if a packet gets past)"
                .into()
        },
    }
}

/// The XDP deny entries of an offloadable rule: `(net, ports)` where
/// `ports` is `None` for every listener port.
pub(crate) fn offload(rule: &Rule) -> Vec<(IpNet, Option<Vec<u16>>)> {
    if !rule.placement.xdp {
        return Vec::new();
    }
    let ports: Option<Vec<u16>> = if rule.to.is_empty() {
        None
    } else {
        let mut all = false;
        let mut ports = Vec::new();
        for o in &rule.to {
            match o.ports_only() {
                Some([]) => all = true,
                Some(p) => ports.extend_from_slice(p),
                None => {}
            }
        }
        ports.sort_unstable();
        ports.dedup();
        (!all).then_some(ports)
    };
    rule.from
        .iter()
        .filter(|s| s.ip_blocks_only())
        .flat_map(|s| s.ip_blocks.iter().map(|n| (*n, ports.clone())))
        .collect()
}

struct Ctx<'a> {
    doc: &'a Document<AuthorizationPolicySpec>,
    errors: &'a mut ErrorList,
}

impl Ctx<'_> {
    fn err(&mut self, field: String, msg: impl Into<String>) {
        let e: ConfigError = self.doc.error(field, msg);
        self.errors.push(e);
    }

    fn nets(&mut self, items: &[String], field: &str) -> Vec<IpNet> {
        let mut out = Vec::new();
        for (i, s) in items.iter().enumerate() {
            match parse_net(s) {
                Ok(n) => out.push(n),
                Err(m) => self.err(format!("{field}[{i}]"), m),
            }
        }
        out
    }

    fn patterns(&mut self, items: &[String], field: &str, lower: bool) -> Vec<Pattern> {
        let mut out = Vec::new();
        for (i, s) in items.iter().enumerate() {
            if s.is_empty() {
                self.err(format!("{field}[{i}]"), "empty value");
            } else {
                out.push(Pattern::parse(s, lower));
            }
        }
        out
    }

    fn principals(&mut self, items: &[String], field: &str) -> Vec<PrincipalPattern> {
        let mut out = Vec::new();
        for (i, s) in items.iter().enumerate() {
            if s.is_empty() {
                self.err(format!("{field}[{i}]"), "empty value");
            } else {
                out.push(PrincipalPattern::parse(s));
            }
        }
        out
    }

    fn ports(&mut self, items: &[Scalar], field: &str) -> Vec<u16> {
        let mut out = Vec::new();
        for (i, s) in items.iter().enumerate() {
            match s.0.parse::<u16>() {
                Ok(p) => out.push(p),
                Err(_) => self.err(
                    format!("{field}[{i}]"),
                    format!("{:?} is not a port (0-65535)", s.0),
                ),
            }
        }
        out
    }

    fn source(&mut self, s: &raw::Source, f: &str) -> Source {
        for (name, v) in [
            ("principals", &s.principals),
            ("notPrincipals", &s.not_principals),
            ("namespaces", &s.namespaces),
            ("notNamespaces", &s.not_namespaces),
            ("serviceAccounts", &s.service_accounts),
            ("notServiceAccounts", &s.not_service_accounts),
        ] {
            if !v.is_empty() {
                self.err(format!("{f}.{name}"), MESH_ONLY);
            }
        }
        let fields = [
            &s.principals,
            &s.not_principals,
            &s.namespaces,
            &s.not_namespaces,
            &s.service_accounts,
            &s.not_service_accounts,
            &s.ip_blocks,
            &s.not_ip_blocks,
            &s.remote_ip_blocks,
            &s.not_remote_ip_blocks,
            &s.request_principals,
            &s.not_request_principals,
        ];
        if fields.iter().all(|v| v.is_empty()) {
            self.err(
                f.to_string(),
                "must not be empty (it would match every source)",
            );
        }
        Source {
            ip_blocks: self.nets(&s.ip_blocks, &format!("{f}.ipBlocks")),
            not_ip_blocks: self.nets(&s.not_ip_blocks, &format!("{f}.notIpBlocks")),
            remote_ip_blocks: self.nets(&s.remote_ip_blocks, &format!("{f}.remoteIpBlocks")),
            not_remote_ip_blocks: self
                .nets(&s.not_remote_ip_blocks, &format!("{f}.notRemoteIpBlocks")),
            request_principals: self
                .principals(&s.request_principals, &format!("{f}.requestPrincipals")),
            not_request_principals: self.principals(
                &s.not_request_principals,
                &format!("{f}.notRequestPrincipals"),
            ),
        }
    }

    fn operation(&mut self, o: &raw::Operation, f: &str) -> Operation {
        let paths = |this: &mut Self, items: &[String], field: String| {
            let mut out = Vec::new();
            for (i, p) in items.iter().enumerate() {
                match PathPattern::parse(p) {
                    Ok(pp) => out.push(pp),
                    Err(m) => this.err(format!("{field}[{i}]"), m),
                }
            }
            out
        };
        let texts = [
            &o.hosts,
            &o.not_hosts,
            &o.methods,
            &o.not_methods,
            &o.paths,
            &o.not_paths,
        ];
        if texts.iter().all(|v| v.is_empty()) && o.ports.is_empty() && o.not_ports.is_empty() {
            self.err(
                f.to_string(),
                "must not be empty (it would match every request)",
            );
        }
        Operation {
            hosts: self.patterns(&o.hosts, &format!("{f}.hosts"), true),
            not_hosts: self.patterns(&o.not_hosts, &format!("{f}.notHosts"), true),
            ports: self.ports(&o.ports, &format!("{f}.ports")),
            not_ports: self.ports(&o.not_ports, &format!("{f}.notPorts")),
            methods: self.patterns(&o.methods, &format!("{f}.methods"), false),
            not_methods: self.patterns(&o.not_methods, &format!("{f}.notMethods"), false),
            paths: paths(self, &o.paths, format!("{f}.paths")),
            not_paths: paths(self, &o.not_paths, format!("{f}.notPaths")),
        }
    }

    fn condition(&mut self, w: &raw::Condition, f: &str) -> Option<Condition> {
        if w.values.is_empty() && w.not_values.is_empty() {
            self.err(f.to_string(), "needs values or notValues");
            return None;
        }
        let key = match parse_key(&w.key) {
            Ok(k) => k,
            Err(m) => {
                self.err(format!("{f}.key"), m);
                return None;
            }
        };
        let strs = |v: &[Scalar]| v.iter().map(|s| s.0.clone()).collect::<Vec<_>>();
        let conv = |this: &mut Self, v: &[Scalar], field: String| -> Values {
            match key {
                Key::SourceIp | Key::RemoteIp | Key::DestinationIp => {
                    Values::Nets(this.nets(&strs(v), &field))
                }
                Key::DestinationPort => Values::Ports(this.ports(v, &field)),
                Key::AuthPrincipal => Values::Principals(this.principals(&strs(v), &field)),
                _ => Values::Strings(this.patterns(&strs(v), &field, false)),
            }
        };
        let values = conv(self, &w.values, format!("{f}.values"));
        let not_values = conv(self, &w.not_values, format!("{f}.notValues"));
        Some(Condition {
            key,
            values,
            not_values,
        })
    }
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))
}

fn parse_key(key: &str) -> Result<Key, String> {
    let bracketed = |prefix: &str| -> Option<Vec<String>> {
        let rest = key.strip_prefix(prefix)?;
        let mut parts = Vec::new();
        let mut r = rest;
        while let Some(inner) = r.strip_prefix('[') {
            let end = inner.find(']')?;
            parts.push(inner[..end].to_string());
            r = &inner[end + 1..];
        }
        (r.is_empty() && !parts.is_empty() && parts.iter().all(|p| !p.is_empty())).then_some(parts)
    };
    if let Some(parts) = bracketed("request.headers") {
        if parts.len() != 1 {
            return Err(format!("{key}: one header name in brackets"));
        }
        return http::HeaderName::from_bytes(parts[0].to_ascii_lowercase().as_bytes())
            .map(Key::Header)
            .map_err(|_| format!("{key}: {:?} is not a header name", parts[0]));
    }
    if let Some(parts) = bracketed("request.auth.claims") {
        return Ok(Key::AuthClaim(parts));
    }
    Ok(match key {
        "source.ip" => Key::SourceIp,
        "remote.ip" => Key::RemoteIp,
        "destination.ip" => Key::DestinationIp,
        "destination.port" => Key::DestinationPort,
        "connection.sni" => Key::Sni,
        "request.auth.principal" => Key::AuthPrincipal,
        "request.auth.audiences" => Key::AuthAudiences,
        "request.auth.presenter" => Key::AuthPresenter,
        "source.principal" | "source.namespace" | "source.serviceAccount" => {
            return Err(format!("{key} {MESH_ONLY}"));
        }
        k if k.starts_with("experimental.envoy.filters.") => {
            return Err(format!(
                "{k}: Envoy filter metadata is not available in llmgw"
            ));
        }
        k => {
            return Err(format!(
                "unknown key {k:?} (request.headers[NAME], source.ip, remote.ip, destination.ip, \
                 destination.port, connection.sni, request.auth.principal, request.auth.audiences, \
                 request.auth.presenter, request.auth.claims[NAME])"
            ));
        }
    })
}
