//! Istio AuthorizationPolicy evaluated with Istio's semantics: CUSTOM,
//! then DENY, then ALLOW (allow when no ALLOW policy applies); a rule
//! matches when one `from`, one `to` and every `when` match; fields inside a
//! source or operation AND, values in a list OR; `notX` fields exclude. The
//! compiled policies are `crate::model::authz`.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

use crate::{
    config::ResourceId,
    model::authz::{
        Action, Condition, Key, Operation, Pattern, Policies, Policy, PrincipalPattern, Rule,
        Source, Values,
    },
};

/// A validated JWT's identity, as `RequestAuthentication` produces it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Identity {
    /// `iss/sub`, as logged and sent to authorizers.
    pub principal: String,
    /// The rule's issuer (the token's `iss`).
    pub issuer: String,
    /// The token's `sub`, when it has one.
    pub subject: Option<String>,
    pub audiences: Vec<String>,
    /// `azp`.
    pub presenter: Option<String>,
    pub claims: serde_json::Value,
}

/// What a policy can look at.
#[derive(Debug)]
pub struct RequestContext<'a> {
    /// The TCP peer (`source.ip`, `ipBlocks`).
    pub peer: IpAddr,
    /// The original client per X-Forwarded-For and the trusted-hop count.
    pub remote: IpAddr,
    /// The local socket the request arrived on (`destination.ip`/`.port`).
    pub local: SocketAddr,
    pub sni: Option<&'a str>,
    /// The request's authority (`Host` / `:authority`) as sent, port
    /// included: what `hosts` and `notHosts` compare, case-insensitively
    /// (and the host without port and trailing dot, as routing sees it).
    pub authority: &'a str,
    pub method: &'a str,
    /// Normalised, without query.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub identity: Option<&'a Identity>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied by a matching DENY policy, or by no ALLOW policy matching.
    Deny {
        policy: Option<ResourceId>,
    },
}

impl Policies {
    /// DENY then ALLOW (CUSTOM runs before, asynchronously, in the proxy).
    pub fn evaluate(&self, ctx: &RequestContext<'_>) -> Decision {
        if let Some(p) = self.deny.iter().find(|p| p.matches(ctx)) {
            return Decision::Deny {
                policy: Some(p.id.clone()),
            };
        }
        if self.allow.is_empty() || self.allow.iter().any(|p| p.matches(ctx)) {
            Decision::Allow
        } else {
            Decision::Deny { policy: None }
        }
    }

    /// The CUSTOM policy (and so the extension provider) that must check this request.
    pub fn custom_match(&self, ctx: &RequestContext<'_>) -> Option<&Policy> {
        self.custom.iter().find(|p| p.matches(ctx))
    }

    /// AUDIT policies that match: logged, never deciding.
    pub fn audited<'a>(&'a self, ctx: &RequestContext<'_>) -> impl Iterator<Item = &'a Policy> {
        self.audit.iter().filter(|p| p.matches(ctx))
    }
}

impl Policy {
    pub fn matches(&self, ctx: &RequestContext<'_>) -> bool {
        let hosts = match self.action {
            Action::Deny | Action::Custom => Hosts::Refusing,
            Action::Allow | Action::Audit => Hosts::Admitting,
        };
        self.rules.iter().any(|r| r.matches(ctx, hosts))
    }
}

/// How `hosts` and `notHosts` compare with the authority. Istio compares
/// the authority as sent (port included), ignoring case. llmgw routes
/// `test.com:80` and `test.com.` as `test.com`, so where a match refuses a
/// request (DENY, and CUSTOM, which asks an authorizer) `hosts` also match
/// the host routing sees and `notHosts` only as Istio does: never narrower
/// than Istio. Where a match admits it (ALLOW; AUDIT likewise) the reverse:
/// never wider than Istio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hosts {
    Refusing,
    Admitting,
}

fn any_or_empty<T>(items: &[T], f: impl Fn(&T) -> bool) -> bool {
    items.is_empty() || items.iter().any(f)
}

fn none<T>(items: &[T], f: impl Fn(&T) -> bool) -> bool {
    !items.iter().any(f)
}

fn in_nets(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = canonical(ip);
    nets.iter().any(|n| n.contains(&ip))
}

/// IPv4-mapped IPv6 peers (dual-stack sockets) compare as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Rule {
    fn matches(&self, ctx: &RequestContext<'_>, hosts: Hosts) -> bool {
        any_or_empty(&self.from, |s| s.matches(ctx))
            && any_or_empty(&self.to, |o| o.matches(ctx, hosts))
            && self.when.iter().all(|c| c.matches(ctx))
    }
}

impl Source {
    fn matches(&self, ctx: &RequestContext<'_>) -> bool {
        let principal_in = |ps: &[PrincipalPattern]| {
            ctx.identity
                .is_some_and(|id| ps.iter().any(|x| principal(x, id)))
        };
        (self.ip_blocks.is_empty() || in_nets(&self.ip_blocks, ctx.peer))
            && !in_nets(&self.not_ip_blocks, ctx.peer)
            && (self.remote_ip_blocks.is_empty() || in_nets(&self.remote_ip_blocks, ctx.remote))
            && !in_nets(&self.not_remote_ip_blocks, ctx.remote)
            && (self.request_principals.is_empty() || principal_in(&self.request_principals))
            && !principal_in(&self.not_request_principals)
    }
}

impl Operation {
    fn matches(&self, ctx: &RequestContext<'_>, hosts: Hosts) -> bool {
        let port = ctx.local.port();
        // Istio's comparison: the authority as sent, ignoring case.
        let as_sent = |h: &Pattern| h.matches_ignore_case(ctx.authority);
        // Also the host routing sees in it (port and trailing dot stripped).
        let routed = crate::http::authority::host_of(ctx.authority);
        let dotless = crate::http::authority::without_trailing_dot(ctx.authority);
        let as_routed = |h: &Pattern| {
            as_sent(h) || h.matches_ignore_case(routed) || h.matches_ignore_case(&dotless)
        };
        type Test<'a> = &'a dyn Fn(&Pattern) -> bool;
        let (host_in, host_out): (Test, Test) = match hosts {
            Hosts::Refusing => (&as_routed, &as_sent),
            Hosts::Admitting => (&as_sent, &as_routed),
        };
        any_or_empty(&self.hosts, host_in)
            && none(&self.not_hosts, host_out)
            && (self.ports.is_empty() || self.ports.contains(&port))
            && !self.not_ports.contains(&port)
            && any_or_empty(&self.methods, |m| m.matches(ctx.method))
            && none(&self.not_methods, |m| m.matches(ctx.method))
            && any_or_empty(&self.paths, |p| p.matches(ctx.path))
            && none(&self.not_paths, |p| p.matches(ctx.path))
    }
}

impl Condition {
    fn matches(&self, ctx: &RequestContext<'_>) -> bool {
        let pos = self.values.is_empty() || self.eval(&self.values, ctx);
        pos && (self.not_values.is_empty() || !self.eval(&self.not_values, ctx))
    }

    fn eval(&self, values: &Values, ctx: &RequestContext<'_>) -> bool {
        let strings = |candidates: &[&str]| match values {
            Values::Strings(ps) => candidates.iter().any(|c| ps.iter().any(|p| p.matches(c))),
            _ => false,
        };
        let nets = |ip: IpAddr| matches!(values, Values::Nets(n) if in_nets(n, ip));
        match &self.key {
            Key::Header(name) => {
                let joined: Vec<&str> = ctx
                    .headers
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                if joined.is_empty() {
                    return false;
                }
                // `*` is Envoy's present match: an empty value counts.
                matches!(values, Values::Strings(ps) if ps.contains(&Pattern::Present))
                    || strings(&[&joined.join(",")])
            }
            Key::SourceIp => nets(ctx.peer),
            Key::RemoteIp => nets(ctx.remote),
            Key::DestinationIp => nets(ctx.local.ip()),
            Key::DestinationPort => {
                matches!(values, Values::Ports(p) if p.contains(&ctx.local.port()))
            }
            Key::Sni => ctx.sni.is_some_and(|s| strings(&[s])),
            Key::AuthPrincipal => ctx.identity.is_some_and(
                |id| matches!(values, Values::Principals(ps) if ps.iter().any(|p| principal(p, id))),
            ),
            Key::AuthAudiences => ctx.identity.is_some_and(|i| {
                let a: Vec<&str> = i.audiences.iter().map(String::as_str).collect();
                strings(&a)
            }),
            Key::AuthPresenter => ctx
                .identity
                .and_then(|i| i.presenter.as_deref())
                .is_some_and(|p| strings(&[p])),
            Key::AuthClaim(path) => ctx.identity.is_some_and(|i| {
                let mut v = &i.claims;
                for k in path {
                    match v.get(k) {
                        Some(next) => v = next,
                        None => return false,
                    }
                }
                // String matchers see strings only (as Envoy's metadata
                // matcher does): a claim or list element that is a number
                // or a boolean matches nothing.
                let refs: Vec<&str> = match v {
                    serde_json::Value::String(s) => vec![s.as_str()],
                    serde_json::Value::Array(items) => {
                        items.iter().filter_map(serde_json::Value::as_str).collect()
                    }
                    _ => Vec::new(),
                };
                strings(&refs)
            }),
        }
    }
}

fn principal(p: &PrincipalPattern, id: &Identity) -> bool {
    p.matches(&id.issuer, id.subject.as_deref())
}
