//! Compiled AuthorizationPolicies: the policies that apply to this gateway,
//! by action, with their sources, operations and conditions parsed into
//! matchers (IP networks, Istio string patterns, principals, path
//! templates), and where each rule is enforced (XDP and L7, or L7 only).
//! Evaluation against a request is `crate::policy::authz`.

use std::fmt;

use ipnet::IpNet;
use regex::Regex;
use serde::Serialize;

use crate::config::ResourceId;

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
    pub fn is_empty(&self) -> bool {
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
    pub(crate) fn parse(s: &str, lower: bool) -> Pattern {
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
    pub fn matches_ignore_case(&self, v: &str) -> bool {
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
    pub(crate) fn parse(value: &str) -> PrincipalPattern {
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

    /// Whether a token with this issuer and subject matches.
    pub fn matches(&self, issuer: &str, subject: Option<&str>) -> bool {
        self.iss.matches(issuer) && subject.is_some_and(|sub| self.sub.matches(sub))
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
    pub(crate) fn parse(s: &str) -> Result<PathPattern, String> {
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

impl Policies {
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

impl Source {
    /// Only `ipBlocks` set: the source is decidable from the packet alone.
    pub(crate) fn ip_blocks_only(&self) -> bool {
        !self.ip_blocks.is_empty()
            && self.not_ip_blocks.is_empty()
            && self.remote_ip_blocks.is_empty()
            && self.not_remote_ip_blocks.is_empty()
            && self.request_principals.is_empty()
            && self.not_request_principals.is_empty()
    }
}

impl Operation {
    /// The ports this operation is limited to, if ports are all it checks
    /// (`Some(empty)` = every port); `None` when it needs L7 facts.
    pub(crate) fn ports_only(&self) -> Option<&[u16]> {
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
