//! Istio AuthorizationPolicy, compiled and evaluated with Istio's semantics:
//! CUSTOM, then DENY, then ALLOW (allow when no ALLOW policy applies); a rule
//! matches when one `from`, one `to` and every `when` match; fields inside a
//! source or operation AND, values in a list OR; `notX` fields exclude.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

use http::HeaderMap;
use ipnet::IpNet;
use regex::Regex;
use serde::Serialize;

use crate::config::{
    ConfigError, ErrorList, ResourceId, Scalar, Settings,
    authz::{self as raw, AuthorizationPolicySpec},
    load::Document,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    Allow,
    Deny,
    Audit,
    Custom,
}

/// The compiled policies that apply to this gateway, by action.
#[derive(Debug, Default)]
pub struct Policies {
    pub custom: Vec<Policy>,
    pub deny: Vec<Policy>,
    pub allow: Vec<Policy>,
    pub audit: Vec<Policy>,
}

#[derive(Debug)]
pub struct Policy {
    pub id: ResourceId,
    pub action: Action,
    /// CUSTOM: the extension provider's name.
    pub provider: Option<String>,
    /// Empty when `rules` is absent or empty: the policy matches nothing.
    pub rules: Vec<Rule>,
}

#[derive(Debug)]
pub struct Rule {
    pub index: usize,
    /// Empty: any source.
    pub from: Vec<Source>,
    /// Empty: any operation.
    pub to: Vec<Operation>,
    pub when: Vec<Condition>,
    /// Where the rule is enforced and why (shown by `llmgw validate`).
    pub placement: Placement,
}

#[derive(Debug, Clone, Serialize)]
pub struct Placement {
    /// Part of the rule is also enforced in XDP.
    pub xdp: bool,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Source {
    pub ip_blocks: Vec<IpNet>,
    pub not_ip_blocks: Vec<IpNet>,
    pub remote_ip_blocks: Vec<IpNet>,
    pub not_remote_ip_blocks: Vec<IpNet>,
    pub request_principals: Vec<PrincipalPattern>,
    pub not_request_principals: Vec<PrincipalPattern>,
}

#[derive(Debug, Default)]
pub struct Operation {
    pub hosts: Vec<Pattern>,
    pub not_hosts: Vec<Pattern>,
    pub ports: Vec<u16>,
    pub not_ports: Vec<u16>,
    pub methods: Vec<Pattern>,
    pub not_methods: Vec<Pattern>,
    pub paths: Vec<PathPattern>,
    pub not_paths: Vec<PathPattern>,
}

/// One `when` entry: the attribute and what it must (not) be.
#[derive(Debug)]
pub struct Condition {
    pub key: Key,
    pub values: Values,
    pub not_values: Values,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Header(http::HeaderName),
    SourceIp,
    RemoteIp,
    DestinationIp,
    DestinationPort,
    Sni,
    AuthPrincipal,
    AuthAudiences,
    AuthPresenter,
    /// `request.auth.claims[a][b]`: the path into nested claims.
    AuthClaim(Vec<String>),
}

#[derive(Debug)]
pub enum Values {
    Strings(Vec<Pattern>),
    Principals(Vec<PrincipalPattern>),
    Nets(Vec<IpNet>),
    Ports(Vec<u16>),
}

impl Values {
    fn is_empty(&self) -> bool {
        match self {
            Values::Strings(v) => v.is_empty(),
            Values::Principals(v) => v.is_empty(),
            Values::Nets(v) => v.is_empty(),
            Values::Ports(v) => v.is_empty(),
        }
    }
}

/// Istio's string match for principals, hosts, methods, header values:
/// `*` (present, non-empty), `prefix*`, `*suffix`, or exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Present,
    Prefix(String),
    Suffix(String),
    Exact(String),
}

impl Pattern {
    fn parse(s: &str, lower: bool) -> Pattern {
        let s = if lower {
            s.to_ascii_lowercase()
        } else {
            s.to_string()
        };
        // Istio's order: a leading `*` first, so `*x*` is a suffix match on
        // `x*` (not a prefix match on `*x`).
        if s == "*" {
            Pattern::Present
        } else if let Some(p) = s.strip_prefix('*') {
            Pattern::Suffix(p.to_string())
        } else if let Some(p) = s.strip_suffix('*') {
            Pattern::Prefix(p.to_string())
        } else {
            Pattern::Exact(s)
        }
    }

    pub fn matches(&self, v: &str) -> bool {
        match self {
            Pattern::Present => !v.is_empty(),
            Pattern::Prefix(p) => v.starts_with(p.as_str()),
            Pattern::Suffix(p) => v.ends_with(p.as_str()),
            Pattern::Exact(e) => v == e,
        }
    }

    /// [`Pattern::matches`] ignoring ASCII case; the pattern is lower case.
    fn matches_ignore_case(&self, v: &str) -> bool {
        let (v, p) = (
            v.as_bytes(),
            match self {
                Pattern::Present => return !v.is_empty(),
                Pattern::Prefix(p) | Pattern::Suffix(p) | Pattern::Exact(p) => p.as_bytes(),
            },
        );
        match self {
            Pattern::Prefix(_) => v.len() >= p.len() && v[..p.len()].eq_ignore_ascii_case(p),
            Pattern::Suffix(_) => {
                v.len() >= p.len() && v[v.len() - p.len()..].eq_ignore_ascii_case(p)
            }
            _ => v.eq_ignore_ascii_case(p),
        }
    }
}

/// A `requestPrincipals` (or `request.auth.principal`) value, as Istio
/// compiles it: split at the last `/` into a matcher of the token's `iss`
/// and one of its `sub`, where `*` alone means "present and non-empty". A
/// token without `sub` matches nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrincipalPattern {
    iss: Pattern,
    sub: Pattern,
}

impl PrincipalPattern {
    fn parse(value: &str) -> PrincipalPattern {
        let split = value.rfind('/').map(|i| (&value[..i], &value[i + 1..]));
        let (iss, sub) = if value == "*" {
            (Pattern::Present, Pattern::Present)
        } else if let Some(rest) = value.strip_prefix('*') {
            match split {
                Some(("*", sub)) => (Pattern::Present, Pattern::Exact(sub.into())),
                Some((iss, sub)) => (
                    Pattern::Suffix(iss.trim_start_matches('*').into()),
                    Pattern::Exact(sub.into()),
                ),
                None => (Pattern::Present, Pattern::Suffix(rest.into())),
            }
        } else if let Some(rest) = value.strip_suffix('*') {
            match split {
                Some((iss, "*")) => (Pattern::Exact(iss.into()), Pattern::Present),
                Some((iss, sub)) => (
                    Pattern::Exact(iss.into()),
                    Pattern::Prefix(sub.trim_end_matches('*').into()),
                ),
                None => (Pattern::Prefix(rest.into()), Pattern::Present),
            }
        } else {
            let (iss, sub) = split.unwrap_or((value, ""));
            (Pattern::Exact(iss.into()), Pattern::Exact(sub.into()))
        };
        PrincipalPattern { iss, sub }
    }

    pub fn matches(&self, id: &Identity) -> bool {
        self.iss.matches(&id.issuer)
            && id
                .subject
                .as_deref()
                .is_some_and(|sub| self.sub.matches(sub))
    }
}

/// `paths`: exact, `prefix*`, `*suffix`, `*`, or a template of whole
/// segments `{*}` (one segment) and `{**}` (any number of segments, the last
/// operator), matched as Envoy's `uri_template` does.
#[derive(Debug)]
pub enum PathPattern {
    Glob(Pattern),
    Template { source: String, re: Regex },
}

/// RFC 3986 `pchar` without `/` and `*`: what a template's literal and
/// `{*}` may hold (Envoy's uri_template literal, Istio's `validLiteral`).
const PCHAR: &str = "A-Za-z0-9\\-._~%!$&'()+,;:@=";

impl PathPattern {
    fn parse(s: &str) -> Result<PathPattern, String> {
        if !s.contains("{*}") && !s.contains("{**}") {
            if s.is_empty() {
                return Err("empty path".into());
            }
            if s.contains(['{', '}']) {
                return Err(format!(
                    "{s:?}: '{{' and '}}' only appear in the templates {{*}} and {{**}}"
                ));
            }
            return Ok(PathPattern::Glob(Pattern::parse(s, false)));
        }
        if !s.starts_with('/') {
            return Err(format!("path template {s:?} must start with /"));
        }
        let mut re = String::from("^");
        let mut any_seen = false;
        let last = s.split('/').count() - 1;
        for (i, seg) in s.split('/').enumerate() {
            if i > 0 {
                re.push('/');
            }
            match seg {
                // Before the leading slash, and after a trailing one.
                "" if i == 0 || i == last => {}
                "" => return Err(format!("{s:?}: empty path segment (//) in a template")),
                "{*}" | "{**}" if any_seen => {
                    return Err(format!("{s:?}: {{**}} must be the last operator"));
                }
                "{*}" => re.push_str(&format!("[{PCHAR}]+")),
                "{**}" => {
                    any_seen = true;
                    re.push_str(&format!("[{PCHAR}/]*"));
                }
                lit if lit.contains(['{', '}']) => {
                    return Err(format!(
                        "{s:?}: a segment is literal, {{*}} or {{**}}; got {lit:?}"
                    ));
                }
                lit if !lit
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@=".contains(&b)) =>
                {
                    return Err(format!("{s:?}: {lit:?} is not a valid path segment"));
                }
                lit => re.push_str(&regex::escape(lit)),
            }
        }
        re.push('$');
        let re = Regex::new(&re).map_err(|e| format!("{s:?}: {e}"))?;
        Ok(PathPattern::Template {
            source: s.to_string(),
            re,
        })
    }

    /// `path` is normalised and without its query.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Glob(p) => p.matches(path),
            PathPattern::Template { re, .. } => re.is_match(path),
        }
    }
}

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

    pub fn is_empty(&self) -> bool {
        self.custom.is_empty()
            && self.deny.is_empty()
            && self.allow.is_empty()
            && self.audit.is_empty()
    }

    pub fn all(&self) -> impl Iterator<Item = &Policy> {
        self.custom
            .iter()
            .chain(&self.deny)
            .chain(&self.allow)
            .chain(&self.audit)
    }
}

impl Policy {
    pub fn matches(&self, ctx: &RequestContext<'_>) -> bool {
        self.rules.iter().any(|r| r.matches(ctx))
    }
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
    pub fn matches(&self, ctx: &RequestContext<'_>) -> bool {
        any_or_empty(&self.from, |s| s.matches(ctx))
            && any_or_empty(&self.to, |o| o.matches(ctx))
            && self.when.iter().all(|c| c.matches(ctx))
    }
}

impl Source {
    fn matches(&self, ctx: &RequestContext<'_>) -> bool {
        let principal_in = |ps: &[PrincipalPattern]| {
            ctx.identity
                .is_some_and(|id| ps.iter().any(|x| x.matches(id)))
        };
        (self.ip_blocks.is_empty() || in_nets(&self.ip_blocks, ctx.peer))
            && !in_nets(&self.not_ip_blocks, ctx.peer)
            && (self.remote_ip_blocks.is_empty() || in_nets(&self.remote_ip_blocks, ctx.remote))
            && !in_nets(&self.not_remote_ip_blocks, ctx.remote)
            && (self.request_principals.is_empty() || principal_in(&self.request_principals))
            && !principal_in(&self.not_request_principals)
    }

    /// Only `ipBlocks` set: the source is decidable from the packet alone.
    fn ip_blocks_only(&self) -> bool {
        !self.ip_blocks.is_empty()
            && self.not_ip_blocks.is_empty()
            && self.remote_ip_blocks.is_empty()
            && self.not_remote_ip_blocks.is_empty()
            && self.request_principals.is_empty()
            && self.not_request_principals.is_empty()
    }
}

impl Operation {
    fn matches(&self, ctx: &RequestContext<'_>) -> bool {
        let port = ctx.local.port();
        // The authority as sent (Istio's comparison), or the host routing
        // sees in it (port and trailing dot stripped): `test.com:80` and
        // `test.com.` are routed as `test.com`, so a policy on `test.com`
        // must see them as that too.
        let routed = crate::http::authority::host_of(ctx.authority);
        let dotless = crate::http::authority::without_trailing_dot(ctx.authority);
        let host_is = |h: &Pattern| {
            h.matches_ignore_case(ctx.authority)
                || h.matches_ignore_case(routed)
                || h.matches_ignore_case(&dotless)
        };
        any_or_empty(&self.hosts, host_is)
            && none(&self.not_hosts, host_is)
            && (self.ports.is_empty() || self.ports.contains(&port))
            && !self.not_ports.contains(&port)
            && any_or_empty(&self.methods, |m| m.matches(ctx.method))
            && none(&self.not_methods, |m| m.matches(ctx.method))
            && any_or_empty(&self.paths, |p| p.matches(ctx.path))
            && none(&self.not_paths, |p| p.matches(ctx.path))
    }

    /// The ports this operation is limited to, if ports are all it checks
    /// (`Some(empty)` = every port); `None` when it needs L7 facts.
    fn ports_only(&self) -> Option<&[u16]> {
        let l7_free = self.hosts.is_empty()
            && self.not_hosts.is_empty()
            && self.not_ports.is_empty()
            && self.methods.is_empty()
            && self.not_methods.is_empty()
            && self.paths.is_empty()
            && self.not_paths.is_empty();
        l7_free.then_some(self.ports.as_slice())
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
                |id| matches!(values, Values::Principals(ps) if ps.iter().any(|p| p.matches(id))),
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

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
            Action::Custom => "CUSTOM",
        })
    }
}

// ---------------------------------------------------------------- compile

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
        if !super::applies(doc, spec.selector.as_ref(), targeted, settings, errors) {
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
