//! Table-driven tests of AuthorizationPolicy semantics: one case per
//! sentence of Istio's reference that changes an outcome.

use std::{collections::HashMap, net::IpAddr, path::Path};

use http::HeaderMap;
use serde_json::json;

use super::authz::{Decision, Identity, RequestContext};
use crate::config::{ErrorList, RawConfig, Settings, load::load_text};
use crate::model::authz::Policies;

/// A request as a test describes it.
#[derive(Clone)]
struct Req {
    peer: &'static str,
    remote: &'static str,
    port: u16,
    host: &'static str,
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    identity: Option<Identity>,
    sni: Option<&'static str>,
}

impl Default for Req {
    fn default() -> Self {
        Req {
            peer: "10.0.0.1",
            remote: "10.0.0.1",
            port: 80,
            host: "test.com",
            method: "POST",
            path: "/v1/chat/completions",
            headers: vec![],
            identity: None,
            sni: None,
        }
    }
}

fn jwt(principal: &str, claims: serde_json::Value) -> Option<Identity> {
    // Tests write `iss/sub`; a principal without `/` stands for a token
    // without `sub`.
    let (issuer, subject) = match principal.rsplit_once('/') {
        Some((iss, sub)) => (iss.to_string(), Some(sub.to_string())),
        None => (principal.to_string(), None),
    };
    Some(Identity {
        principal: principal.into(),
        issuer,
        subject,
        audiences: claims["aud"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
        presenter: claims["azp"].as_str().map(String::from),
        claims,
    })
}

fn policies(yaml: &str) -> Policies {
    policies_for(yaml, &Settings::default())
}

fn policies_for(yaml: &str, settings: &Settings) -> Policies {
    let (p, errors) = compile_yaml(yaml, settings);
    assert!(errors.is_empty(), "{errors}");
    p
}

/// The policies of `yaml` (which must load) and the errors compiling them.
fn compile_yaml(yaml: &str, settings: &Settings) -> (Policies, ErrorList) {
    let mut raw = RawConfig::default();
    let mut errors = ErrorList::default();
    load_text(
        Path::new("p.yaml"),
        yaml,
        &HashMap::<String, String>::new(),
        &mut raw,
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors}");
    let p =
        crate::model::compile::authz::compile(&raw.authorization_policies, settings, &mut errors);
    (p, errors)
}

/// One AuthorizationPolicy in istio-system whose spec body is `spec`.
fn policy_yaml(spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: istio-system}}\nspec:\n{}",
        spec.lines().map(|l| format!("  {l}\n")).collect::<String>()
    )
}

fn decide(p: &Policies, r: &Req) -> bool {
    let mut headers = HeaderMap::new();
    for (k, v) in &r.headers {
        headers.append(*k, v.parse().unwrap());
    }
    let ctx = RequestContext {
        peer: r.peer.parse::<IpAddr>().unwrap(),
        remote: r.remote.parse::<IpAddr>().unwrap(),
        local: format!("10.9.9.9:{}", r.port).parse().unwrap(),
        sni: r.sni,
        authority: r.host,
        method: r.method,
        path: r.path,
        headers: &headers,
        identity: r.identity.as_ref(),
    };
    p.evaluate(&ctx) == Decision::Allow
}

/// `policy` is the spec body of one AuthorizationPolicy in istio-system.
fn case(policy: &str, req: Req, allowed: bool, why: &str) {
    let yaml = policy_yaml(policy);
    let p = policies(&yaml);
    assert_eq!(decide(&p, &req), allowed, "{why}\npolicy:\n{yaml}");
}

fn allow_if(cond: &str) -> String {
    format!("action: ALLOW\nrules:\n- {cond}")
}

#[test]
fn no_policy_allows() {
    assert!(decide(&Policies::default(), &Req::default()));
}

#[test]
fn allow_nothing_and_deny_all_and_allow_all() {
    case(
        "{}",
        Req::default(),
        false,
        "spec: {} is ALLOW with no rules: allow-nothing",
    );
    case(
        "action: ALLOW\nrules: []",
        Req::default(),
        false,
        "empty rules match nothing",
    );
    case(
        "action: ALLOW\nrules: [{}]",
        Req::default(),
        true,
        "an empty rule always matches",
    );
    case(
        "action: DENY\nrules: [{}]",
        Req::default(),
        false,
        "deny-all",
    );
    case(
        "action: AUDIT\nrules: [{}]",
        Req::default(),
        true,
        "AUDIT never decides",
    );
    // Nor does it count as an ALLOW: with an ALLOW policy that does not
    // match, a request AUDIT matches is still denied.
    let audit_and_allow = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-all, namespace: istio-system}
spec: {action: AUDIT, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-other, namespace: istio-system}
spec: {action: ALLOW, rules: [{to: [{operation: {paths: ["/other"]}}]}]}
"#;
    assert!(!decide(&policies(audit_and_allow), &Req::default()));
}

/// The errors compiling one AuthorizationPolicy (spec body as in `case`).
fn rejected(policy: &str) -> String {
    let yaml = policy_yaml(policy);
    let (_, errors) = compile_yaml(&yaml, &Settings::default());
    assert!(!errors.is_empty(), "accepted:\n{yaml}");
    errors.to_string()
}

/// What Istio's validation refuses, because it would silently match
/// everything or nothing.
#[test]
fn policies_istio_refuses_are_errors() {
    for (policy, field, why) in [
        (
            "action: DENY",
            "spec.rules: DENY without rules never matches",
            "a DENY without rules",
        ),
        (
            "action: DENY\nrules: []",
            "spec.rules: DENY without rules",
            "rules: []",
        ),
        (
            "rules: [{from: []}]",
            "spec.rules[0].from: must not be empty",
            "from: []",
        ),
        (
            "rules: [{to: []}]",
            "spec.rules[0].to: must not be empty",
            "to: []",
        ),
        (
            "rules: [{from: [{source: {}}]}]",
            "spec.rules[0].from[0].source: must not be empty",
            "an empty source",
        ),
        (
            "rules: [{from: [{}]}]",
            "spec.rules[0].from[0].source: is required",
            "from without a source",
        ),
        (
            "action: DENY\nrules: [{to: [{operation: {}}]}]",
            "spec.rules[0].to[0].operation: must not be empty",
            "an empty operation",
        ),
        (
            "rules: [{to: [{}]}]",
            "spec.rules[0].to[0].operation: is required",
            "to without an operation",
        ),
        (
            "rules: [{to: [{operation: {paths: [\"/a/{**}/{*}\"]}}]}]",
            "{**} must be the last operator",
            "an operator after {**}",
        ),
        (
            "rules: [{to: [{operation: {paths: [\"/a/{x}\"]}}]}]",
            "'{' and '}' only appear in the templates",
            "braces that are no template",
        ),
        (
            "rules: [{to: [{operation: {paths: [\"/a/b{*}\"]}}]}]",
            "a segment is literal, {*} or {**}",
            "a template inside a segment",
        ),
        (
            "rules: [{to: [{operation: {paths: [\"/a/*/{*}\"]}}]}]",
            "\"*\" is not a valid path segment",
            "a * segment beside a template",
        ),
        (
            "rules: [{to: [{operation: {paths: [\"/a//{*}\"]}}]}]",
            "empty path segment",
            "an empty segment in a template",
        ),
        (
            "action: CUSTOM\nprovider: {name: ext}",
            "spec.rules: CUSTOM without rules never runs",
            "a CUSTOM without rules",
        ),
        (
            "action: CUSTOM\nprovider: {name: ext}\nrules: [{from: [{source: {requestPrincipals: [\"*\"]}}]}]",
            "spec.rules[0].from[0].source.requestPrincipals: is not supported with the CUSTOM action",
            "requestPrincipals in a CUSTOM policy",
        ),
        (
            "action: CUSTOM\nprovider: {name: ext}\nrules: [{when: [{key: \"request.auth.claims[x]\", values: [a]}]}]",
            "spec.rules[0].when[0].key: request.auth.claims[x] is not supported with the CUSTOM action",
            "a request.auth condition in a CUSTOM policy",
        ),
    ] {
        let err = rejected(policy);
        assert!(err.contains(field), "{why}: {err}");
    }
}

#[test]
fn deny_wins_over_allow_and_allow_requires_a_match() {
    let yaml = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: istio-system}
spec: {action: ALLOW, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: istio-system}
spec: {action: DENY, rules: [{to: [{operation: {paths: ["/admin*"]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-get, namespace: istio-system}
spec: {action: ALLOW, rules: [{to: [{operation: {methods: [GET]}}]}]}
"#;
    let p = policies(yaml);
    assert!(decide(&p, &Req::default()), "allow-all matches");
    assert!(
        !decide(
            &p,
            &Req {
                path: "/admin/x",
                ..Req::default()
            }
        ),
        "DENY before ALLOW"
    );
    let p = policies(&yaml.replace(
        "spec: {action: ALLOW, rules: [{}]}",
        "spec: {action: ALLOW}",
    ));
    assert!(
        !decide(&p, &Req::default()),
        "ALLOW policies exist and none matches POST"
    );
    assert!(decide(
        &p,
        &Req {
            method: "GET",
            ..Req::default()
        }
    ));
}

#[test]
fn rule_needs_one_from_one_to_and_every_when() {
    let p = "action: ALLOW\nrules:\n- from: [{source: {ipBlocks: [10.0.0.0/8]}}, {source: {ipBlocks: [192.168.0.0/16]}}]\n  to: [{operation: {methods: [GET]}}, {operation: {paths: [/v1/*]}}]\n  when:\n  - {key: \"request.headers[x-a]\", values: [\"1\"]}\n  - {key: \"request.headers[x-b]\", values: [\"2\"]}";
    let hdrs = vec![("x-a", "1"), ("x-b", "2")];
    case(
        p,
        Req {
            headers: hdrs.clone(),
            ..Req::default()
        },
        true,
        "from[0], to[1], all when",
    );
    case(
        p,
        Req {
            peer: "192.168.1.1",
            headers: hdrs.clone(),
            ..Req::default()
        },
        true,
        "from[1] ORs",
    );
    case(
        p,
        Req {
            peer: "172.16.0.1",
            headers: hdrs.clone(),
            ..Req::default()
        },
        false,
        "no from matches",
    );
    case(
        p,
        Req {
            path: "/x",
            headers: hdrs.clone(),
            ..Req::default()
        },
        false,
        "no to matches",
    );
    case(
        p,
        Req {
            headers: vec![("x-a", "1")],
            ..Req::default()
        },
        false,
        "when conditions AND",
    );
}

#[test]
fn fields_inside_a_source_and_together() {
    let p = allow_if(
        "from: [{source: {ipBlocks: [10.0.0.0/8], notIpBlocks: [10.0.0.1], requestPrincipals: [\"*\"]}}]",
    );
    let id = jwt("iss/sub", json!({}));
    case(
        &p,
        Req {
            peer: "10.0.0.2",
            identity: id.clone(),
            ..Req::default()
        },
        true,
        "all fields match",
    );
    case(
        &p,
        Req {
            peer: "10.0.0.1",
            identity: id.clone(),
            ..Req::default()
        },
        false,
        "notIpBlocks excludes",
    );
    case(
        &p,
        Req {
            peer: "10.0.0.2",
            ..Req::default()
        },
        false,
        "requestPrincipals * needs a JWT",
    );
}

#[test]
fn ip_blocks_single_addresses_cidrs_and_v6() {
    let p =
        allow_if("from: [{source: {ipBlocks: [203.0.113.4, 198.51.100.0/24, \"2001:db8::/32\"]}}]");
    case(
        &p,
        Req {
            peer: "203.0.113.4",
            ..Req::default()
        },
        true,
        "single IP",
    );
    case(
        &p,
        Req {
            peer: "203.0.113.5",
            ..Req::default()
        },
        false,
        "single IP is /32",
    );
    case(
        &p,
        Req {
            peer: "198.51.100.77",
            ..Req::default()
        },
        true,
        "CIDR",
    );
    case(
        &p,
        Req {
            peer: "2001:db8:1::9",
            ..Req::default()
        },
        true,
        "IPv6 CIDR",
    );
    case(
        &p,
        Req {
            peer: "::ffff:198.51.100.1",
            ..Req::default()
        },
        true,
        "IPv4-mapped IPv6 peer",
    );
}

#[test]
fn remote_ip_blocks_use_the_forwarded_client() {
    let p = allow_if("from: [{source: {remoteIpBlocks: [1.2.3.0/24]}}]");
    case(
        &p,
        Req {
            peer: "10.0.0.1",
            remote: "1.2.3.4",
            ..Req::default()
        },
        true,
        "remote, not peer",
    );
    case(
        &p,
        Req {
            peer: "1.2.3.4",
            remote: "10.0.0.1",
            ..Req::default()
        },
        false,
        "peer does not count",
    );
    let p = allow_if("from: [{source: {notRemoteIpBlocks: [1.2.3.0/24]}}]");
    case(
        &p,
        Req {
            remote: "1.2.3.4",
            ..Req::default()
        },
        false,
        "notRemoteIpBlocks",
    );
}

#[test]
fn request_principals_patterns() {
    let p = allow_if("from: [{source: {requestPrincipals: [\"https://issuer/*\"]}}]");
    case(
        &p,
        Req {
            identity: jwt("https://issuer/alice", json!({})),
            ..Req::default()
        },
        true,
        "prefix",
    );
    case(
        &p,
        Req {
            identity: jwt("https://other/alice", json!({})),
            ..Req::default()
        },
        false,
        "prefix miss",
    );
    // Istio splits a value at its last `/` and matches `iss` and `sub`
    // apart; `*` alone is "both present and non-empty".
    for (pattern, principal, want) in [
        ("*", "https://issuer/alice", true),
        ("*", "https://issuer", false), // no `sub`
        ("https://issuer/*", "https://issuer", false),
        ("https://issuer/al*", "https://issuer/alice", true),
        ("https://issuer/al*", "https://issuerX/alice", false),
        ("htt*", "https://issuer/alice", true), // no `/`: iss prefix, any sub
        // Split at the last `/`: iss exactly "https:/", sub prefix "iss".
        ("https://iss*", "https://issuer/alice", false),
        ("*/alice", "https://issuer/alice", true),
        ("*/alice", "https://issuer/alice/x", false),
        ("*suer/alice", "https://issuer/alice", true),
        ("*ice", "https://issuer/alice", true), // sub suffix, any iss
        ("https://issuer/alice", "https://issuer/alice", true),
        // A `sub` holding a `/` is split where Istio splits it.
        ("https://issuer/a/b", "https://issuer/a/b", false),
    ] {
        let (iss, sub) = principal.split_at(
            principal
                .strip_prefix("https://")
                .and_then(|r| r.find('/'))
                .map_or(principal.len(), |i| i + "https://".len()),
        );
        let identity = Some(Identity {
            principal: principal.to_string(),
            issuer: iss.to_string(),
            subject: sub.strip_prefix('/').map(str::to_string),
            ..Identity::default()
        });
        for how in [
            "from: [{source: {requestPrincipals: [\"@\"]}}]",
            "when: [{key: request.auth.principal, values: [\"@\"]}]",
        ] {
            case(
                &allow_if(&how.replace('@', pattern)),
                Req {
                    identity: identity.clone(),
                    ..Req::default()
                },
                want,
                &format!("{pattern} vs iss {iss:?} sub {sub:?} ({how})"),
            );
        }
    }
    let p = "action: DENY\nrules:\n- from: [{source: {notRequestPrincipals: [\"*\"]}}]";
    case(
        p,
        Req::default(),
        false,
        "DENY notRequestPrincipals * denies requests without a JWT",
    );
    case(
        p,
        Req {
            identity: jwt("i/s", json!({})),
            ..Req::default()
        },
        true,
        "with a JWT it passes",
    );
}

#[test]
fn hosts_are_case_insensitive_with_prefix_and_suffix() {
    let p = allow_if("to: [{operation: {hosts: [Test.COM, \"*.example.com\", \"api.*\"]}}]");
    case(&p, Req::default(), true, "exact, case-insensitive");
    case(
        &p,
        Req {
            host: "a.example.com",
            ..Req::default()
        },
        true,
        "suffix",
    );
    case(
        &p,
        Req {
            host: "api.foo",
            ..Req::default()
        },
        true,
        "prefix",
    );
    case(
        &p,
        Req {
            host: "example.com",
            ..Req::default()
        },
        false,
        "suffix needs the dot",
    );
    // Istio reads a leading `*` first: `*aliyuncs*` is a suffix match on
    // `aliyuncs*`, never a prefix match on `*aliyuncs`.
    let p = allow_if("to: [{operation: {hosts: [\"*aliyuncs*\"]}}]");
    case(
        &p,
        Req {
            host: "*aliyuncs.com",
            ..Req::default()
        },
        false,
        "*x* is no prefix match",
    );
    case(
        &p,
        Req {
            host: "a.aliyuncs*",
            ..Req::default()
        },
        true,
        "*x* is a suffix match",
    );
    let p = allow_if("to: [{operation: {notHosts: [test.com]}}]");
    case(&p, Req::default(), false, "notHosts");
    // The authority as sent is compared, port included, as Istio's
    // HostMatcher does (so `hosts: ["x:*"]` takes any port): an ALLOW is
    // never wider than Istio's. A DENY also compares the host routing sees
    // in it: routes match `test.com:8080` and `test.com.` as `test.com`, so
    // a DENY on `test.com` holds for them too (it cannot be slipped past
    // with a port or a trailing dot).
    let with_port = Req {
        host: "Test.com:8080",
        ..Req::default()
    };
    let p = allow_if("to: [{operation: {hosts: [test.com]}}]");
    case(
        &p,
        with_port.clone(),
        false,
        "ALLOW test.com: test.com:8080 is another authority",
    );
    let dotted = Req {
        host: "test.com.",
        ..Req::default()
    };
    case(
        &p,
        dotted,
        false,
        "ALLOW test.com: test.com. is another authority",
    );
    let p = allow_if("to: [{operation: {hosts: [\"test.com:*\"]}}]");
    case(&p, with_port.clone(), true, "host:* takes any port");
    case(&p, Req::default(), false, "host:* needs a port");
    let p = "action: DENY\nrules:\n- to: [{operation: {hosts: [\"test.com:*\"]}}]";
    case(p, with_port.clone(), false, "DENY host:* with a port");
    let p = "action: DENY\nrules:\n- to: [{operation: {hosts: [test.com]}}]";
    case(p, with_port, false, "DENY test.com with a port");
    let dot = Req {
        host: "test.com.",
        ..Req::default()
    };
    case(p, dot, false, "DENY test.com with a trailing dot");
    let p = "action: DENY\nrules:\n- to: [{operation: {hosts: [\"test.com:80\"]}}]";
    let dot_port = Req {
        host: "test.com.:80",
        ..Req::default()
    };
    case(p, dot_port, false, "DENY test.com:80 with a trailing dot");
    let p = allow_if("to: [{operation: {notHosts: [test.com]}}]");
    let dot80 = Req {
        host: "TEST.com.:80",
        ..Req::default()
    };
    case(&p, dot80, false, "notHosts sees the routed host too");
}

#[test]
fn ports_methods_and_paths() {
    let p = allow_if("to: [{operation: {ports: [\"8080\"], methods: [GET, HEAD]}}]");
    case(
        &p,
        Req {
            port: 8080,
            method: "GET",
            ..Req::default()
        },
        true,
        "port and method",
    );
    case(
        &p,
        Req {
            port: 80,
            method: "GET",
            ..Req::default()
        },
        false,
        "port is the local port",
    );
    case(
        &p,
        Req {
            port: 8080,
            method: "get",
            ..Req::default()
        },
        false,
        "methods are exact",
    );
    let p = allow_if("to: [{operation: {notPorts: [\"80\"], notMethods: [DELETE]}}]");
    case(
        &p,
        Req {
            port: 80,
            ..Req::default()
        },
        false,
        "notPorts",
    );
    case(
        &p,
        Req {
            port: 81,
            method: "DELETE",
            ..Req::default()
        },
        false,
        "notMethods",
    );
    for (pat, path, want) in [
        ("/v1/chat/completions", "/v1/chat/completions", true),
        ("/v1/chat/completions", "/v1/chat/completions/", false),
        ("/v1/*", "/v1/models", true),
        ("*/completions", "/v1/chat/completions", true),
        ("*", "/anything", true),
        ("/v1/{*}/completions", "/v1/chat/completions", true),
        ("/v1/{*}/completions", "/v1/a/b/completions", false),
        ("/v1/{*}/completions", "/v1//completions", false),
        ("/v1/{**}", "/v1/a/b/c", true),
        ("/v1/{**}", "/v2/a", false),
        // Envoy's uri_template: `/v1/{**}` needs the slash after v1.
        ("/v1/{**}", "/v1", false),
        ("/v1/{**}", "/v1/", true),
        ("/v1/{**}/models", "/v1/a/b/models", true),
        ("/v1/{**}/models", "/v1/models", false),
        ("/v1/{**}/", "/v1/a/", true),
        ("/v1/{**}/", "/v1/a", false),
        ("/{*}/chat/{**}", "/v1/chat/completions", true),
        // Neither a literal nor an operator takes a `*`.
        ("/v1/{*}/x", "/v1/a*b/x", false),
        ("/v1/{**}", "/v1/a/*", false),
        // `*x*` is a suffix match on `x*` (a leading `*` is read first).
        ("*v1*", "/a/v1*", true),
        ("*v1*", "*v1/a", false),
    ] {
        let p = allow_if(&format!("to: [{{operation: {{paths: [\"{pat}\"]}}}}]"));
        case(
            &p,
            Req {
                path,
                ..Req::default()
            },
            want,
            &format!("path {pat} vs {path}"),
        );
    }
    let p = allow_if("to: [{operation: {notPaths: [/admin*]}}]");
    case(
        &p,
        Req {
            path: "/admin/x",
            ..Req::default()
        },
        false,
        "notPaths",
    );
}

#[test]
fn when_keys() {
    let id = jwt(
        "iss/sub",
        json!({"aud": ["a1", "a2"], "azp": "cli", "groups": ["dev", "ops"], "scope": ["read", "write"], "team": "ml infra", "nested": {"team": "x"}, "admin": true, "level": 3, "mixed": [1, "a"]}),
    );
    let base = Req {
        identity: id,
        sni: Some("api.test"),
        ..Req::default()
    };
    for (cond, want) in [
        ("{key: request.auth.principal, values: [iss/sub]}", true),
        ("{key: request.auth.audiences, values: [a2]}", true),
        ("{key: request.auth.audiences, values: [a3]}", false),
        ("{key: request.auth.presenter, values: [cli]}", true),
        (
            "{key: \"request.auth.claims[groups]\", values: [ops]}",
            true,
        ),
        (
            "{key: \"request.auth.claims[groups]\", notValues: [ops]}",
            false,
        ),
        (
            "{key: \"request.auth.claims[scope]\", values: [write]}",
            true,
        ),
        // A string claim is one value, spaces and all (the authenticator
        // splits `scope`, `permission` and `spaceDelimitedClaims` into lists).
        (
            "{key: \"request.auth.claims[team]\", values: [infra]}",
            false,
        ),
        (
            "{key: \"request.auth.claims[team]\", values: [ml infra]}",
            true,
        ),
        (
            "{key: \"request.auth.claims[nested][team]\", values: [x]}",
            true,
        ),
        (
            "{key: \"request.auth.claims[missing]\", values: [\"*\"]}",
            false,
        ),
        (
            "{key: \"request.auth.claims[missing]\", notValues: [x]}",
            true,
        ),
        ("{key: source.ip, values: [10.0.0.0/24]}", true),
        ("{key: remote.ip, notValues: [10.0.0.1]}", false),
        ("{key: destination.ip, values: [10.9.9.9]}", true),
        ("{key: destination.port, values: [\"80\", \"443\"]}", true),
        ("{key: destination.port, values: [81]}", false),
        ("{key: connection.sni, values: [\"*.test\"]}", true),
        ("{key: \"request.headers[x-user]\", values: [\"*\"]}", false),
        // Claims that are not strings match no string (Envoy's matcher).
        (
            "{key: \"request.auth.claims[admin]\", values: [\"true\"]}",
            false,
        ),
        (
            "{key: \"request.auth.claims[level]\", values: [\"3\"]}",
            false,
        ),
        (
            "{key: \"request.auth.claims[mixed]\", values: [\"1\"]}",
            false,
        ),
        ("{key: \"request.auth.claims[mixed]\", values: [a]}", true),
        ("{key: \"request.headers[x-user]\", notValues: [bob]}", true),
    ] {
        case(
            &allow_if(&format!("when: [{cond}]")),
            base.clone(),
            want,
            cond,
        );
    }
    let with_header = Req {
        headers: vec![("x-user", "bob")],
        ..base.clone()
    };
    case(
        &allow_if("when: [{key: \"request.headers[x-e]\", values: [\"*\"]}]"),
        Req {
            headers: vec![("x-e", "")],
            ..base.clone()
        },
        true,
        "`*` is a present match: an empty header counts",
    );
    case(
        &allow_if("when: [{key: \"request.headers[X-User]\", values: [bo*]}]"),
        with_header.clone(),
        true,
        "header names are case-insensitive, prefix values",
    );
    case(
        &allow_if("when: [{key: \"request.headers[x-user]\", notValues: [bob]}]"),
        with_header,
        false,
        "notValues",
    );
}

#[test]
fn scope_root_namespace_own_namespace_and_selectors() {
    let deny_all = |ns: &str, selector: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: d, namespace: {ns}}}\nspec: {{action: DENY, rules: [{{}}]{selector}}}\n"
        )
    };
    let settings = Settings {
        namespace: "gw-ns".into(),
        ..Settings::default()
    };
    let applies = |yaml: String| !policies_for(&yaml, &settings).deny.is_empty();
    assert!(
        applies(deny_all("istio-system", "")),
        "root namespace, no selector"
    );
    assert!(applies(deny_all("gw-ns", "")), "own namespace, no selector");
    assert!(!applies(deny_all("other", "")), "another namespace");
    assert!(
        applies(deny_all(
            "istio-system",
            ", selector: {matchLabels: {istio: ingressgateway}}"
        )),
        "selector matches"
    );
    assert!(
        !applies(deny_all(
            "istio-system",
            ", selector: {matchLabels: {app: x}}"
        )),
        "selector does not match"
    );
}

#[test]
fn seed_step5_policy_denies_only_that_ip_and_host() {
    let p = "action: DENY\nrules:\n- from: [{source: {ipBlocks: [192.0.2.10]}}]\n  to: [{operation: {hosts: [test.com]}}]\nselector: {matchLabels: {istio: ingressgateway}}";
    case(
        p,
        Req {
            peer: "192.0.2.10",
            ..Req::default()
        },
        false,
        "listed IP to test.com",
    );
    case(
        p,
        Req {
            peer: "192.0.2.10",
            host: "dashscope.aliyuncs.com",
            ..Req::default()
        },
        true,
        "other host",
    );
    case(
        p,
        Req {
            peer: "192.0.2.11",
            ..Req::default()
        },
        true,
        "other IP",
    );
}

/// Istio serves one extension provider per workload: CUSTOM policies that
/// name two are refused, not half-applied.
#[test]
fn custom_policies_must_share_one_provider() {
    let yaml = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: c1, namespace: istio-system}
spec: {action: CUSTOM, provider: {name: p1}, rules: [{to: [{operation: {paths: ["/c/*"]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: c2, namespace: istio-system}
spec: {action: CUSTOM, provider: {name: p2}, rules: [{to: [{operation: {paths: ["/c/admin*"]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: c3, namespace: istio-system}
spec: {action: CUSTOM, provider: {name: p1}, rules: [{to: [{operation: {paths: ["/d/*"]}}]}]}
"#;
    let (_, errors) = compile_yaml(yaml, &Settings::default());
    let text = errors.to_string();
    assert_eq!(errors.0.len(), 1, "{text}");
    assert!(
        text.contains("istio-system/c2: spec.provider.name: CUSTOM policies for one workload must use one extension provider"),
        "{text}"
    );
    assert!(text.contains("istio-system/c1"), "{text}");
}
