//! Compile tests: the source document's resources as written, routing,
//! selection and binding rules. What each invalid configuration is told is
//! specified by the fixtures of `tests/fixtures/invalid` and their snapshots.

use std::{collections::HashMap, path::Path, path::PathBuf};

use http::HeaderMap;

use super::compile;
use crate::{
    config::{
        ErrorList, RawConfig, Settings,
        load::{load_paths, load_text},
    },
    model::{
        Protocol, Snapshot,
        routing::{NoRoute, route},
    },
};

fn env() -> HashMap<String, String> {
    [
        ("API_KEY".to_string(), "sk-test-123".to_string()),
        ("LOCAL_IP".to_string(), "10.1.2.3".to_string()),
    ]
    .into()
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn seed() -> RawConfig {
    load_paths(
        &[examples().join("quickstart"), examples().join("security")],
        &env(),
    )
    .expect("seed loads")
}

fn parse(text: &str) -> RawConfig {
    let mut raw = RawConfig::default();
    let mut errors = ErrorList::default();
    load_text(Path::new("t.yaml"), text, &env(), &mut raw, &mut errors);
    assert!(errors.is_empty(), "{errors}");
    raw
}

fn compile_ok(raw: &RawConfig) -> Snapshot {
    compile(raw, &Settings::default()).unwrap_or_else(|e| panic!("{e}"))
}

/// A Gateway in istio-system selecting the default labels, one plain-HTTP
/// server on `port` for any host; ends with a document separator.
fn gateway_doc(name: &str, port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers: [{{port: {{number: {port}, name: http, protocol: HTTP}}, hosts: [\"*\"]}}]\n---\n"
    )
}

/// An LLMProvider in istio-system for every gateway; ends with a separator.
fn provider_doc(name: &str, host: &str) -> String {
    format!(
        "apiVersion: istio.alibabacloud.com/v1beta1\nkind: LLMProvider\nmetadata: {{name: {name}, namespace: istio-system}}\nspec: {{host: {host}, path: /v1/chat/completions}}\n---\n"
    )
}

fn host_headers(host: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(http::header::HOST, host.parse().unwrap());
    h
}

#[test]
fn seed_compiles_to_one_http_listener_with_the_rewrite() {
    let snap = compile_ok(&seed());
    assert_eq!(snap.listeners.len(), 1);
    let l = &snap.listeners[0];
    assert_eq!(
        (l.port, l.protocol, l.local.port()),
        (80, Protocol::Http, 80)
    );
    let routed = route(l, "test.com", &host_headers("test.com")).expect("test.com routes");
    assert_eq!(routed.rule.name, "ingress-route");
    assert_eq!(routed.rule.route.to_string(), "default/dashscope-route");
    let up = &routed.rule.pick(0).upstream;
    assert_eq!(up.host, "dashscope.aliyuncs.com");
    assert_eq!(up.authority, "dashscope.aliyuncs.com:443");
    assert_eq!(
        up.path.as_ref().unwrap().as_str(),
        "/compatible-mode/v1/chat/completions"
    );
    assert_eq!(up.model.as_deref(), Some("qwen1.5-72b-chat"));
    assert_eq!(up.stream, Some(false));
    let auth = up.authorization.as_ref().unwrap();
    assert_eq!(auth.to_str().unwrap(), "Bearer sk-test-123");
    assert!(auth.is_sensitive());
    assert!(route(l, "dashscope.aliyuncs.com", &HeaderMap::new()).is_ok());
    assert_eq!(
        route(l, "other.com", &HeaderMap::new()).unwrap_err(),
        NoRoute::Rule
    );
    // The key never shows in the snapshot's debug form.
    assert!(!format!("{snap:?}").contains("sk-test-123"));
}

#[test]
fn seed_policy_stays_at_l7_because_of_hosts() {
    let snap = compile_ok(&seed());
    assert_eq!(snap.policies.deny.len(), 1);
    let rule = &snap.policies.deny[0].rules[0];
    assert!(!rule.placement.xdp, "{:?}", rule.placement);
    assert!(crate::model::xdp::rules(&snap).entries.is_empty());
}

#[test]
fn ip_blocks_only_deny_goes_to_xdp_with_ports() {
    let mut raw = seed();
    raw.authorization_policies.extend(
        parse(
            r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: block, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from: [{source: {ipBlocks: ["192.0.2.7/24", "2001:db8::1"]}}]
  - from: [{source: {ipBlocks: ["198.51.100.0/24"]}}]
    to: [{operation: {ports: ["80"]}}, {operation: {ports: [8080]}}]
  - from: [{source: {ipBlocks: ["203.0.113.0/24"]}}]
    when: [{key: "request.headers[x]", values: ["1"]}]
"#,
        )
        .authorization_policies,
    );
    let snap = compile_ok(&raw);
    let l4 = crate::model::xdp::rules(&snap);
    assert_eq!(l4.listener_ports, vec![80]);
    let got: Vec<(String, String, Option<Vec<u16>>)> = l4
        .entries
        .iter()
        .map(|e| (e.net.to_string(), e.rule.clone(), e.ports.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("192.0.2.0/24".into(), "istio-system/block[0]".into(), None),
            (
                "2001:db8::1/128".into(),
                "istio-system/block[0]".into(),
                None
            ),
            (
                "198.51.100.0/24".into(),
                "istio-system/block[1]".into(),
                Some(vec![80, 8080])
            ),
        ]
    );
}

#[test]
fn route_specific_config_overrides_default_field_by_field() {
    let mut raw = seed();
    raw.providers[0].spec.configs.route_specific_configs.insert(
        "ingress-route".into(),
        crate::config::provider::ProviderConfig {
            openai_config: Some(crate::config::provider::OpenAiConfig {
                model: Some("qwen-turbo".into()),
                stream: Some(true),
                api_key: None,
            }),
        },
    );
    let snap = compile_ok(&raw);
    let r = route(&snap.listeners[0], "test.com", &HeaderMap::new()).unwrap();
    let up = &r.rule.pick(0).upstream;
    assert_eq!(up.model.as_deref(), Some("qwen-turbo"));
    assert_eq!(up.stream, Some(true));
    assert_eq!(
        up.authorization.as_ref().unwrap().to_str().unwrap(),
        "Bearer sk-test-123"
    );
}

#[test]
fn weighted_rules_header_matches_and_defaults() {
    let raw = parse(
        r#"
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: a}
spec: {host: a.example.com, path: /v1/chat/completions}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: b}
spec: {host: "b.example.com:8443"}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ["*.example.org", "api.test"]}]
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {name: r}
spec:
  host: "*"
  gateways: [gw]
  rules:
  - name: vip
    matches: [{headers: {user-type: {exact: subscriber}}}, {headers: {x-tier: {regex: "gold|plat.*"}}}]
    backendRefs: [{providerHost: b.example.com:8443}]
  - name: split
    matches: [{headers: {x-split: {}}}]
    backendRefs: [{providerHost: a.example.com, weight: 80}, {providerHost: b.example.com:8443, weight: 20}]
  - backendRefs: [{providerHost: a.example.com}]
"#,
    );
    let snap = compile_ok(&raw);
    let l = &snap.listeners[0];
    let mut h = HeaderMap::new();
    assert_eq!(route(l, "nope.com", &h).unwrap_err(), NoRoute::Host);
    assert_eq!(route(l, "api.test", &h).unwrap().rule.name, "rule-2");
    h.insert("user-type", "subscriber".parse().unwrap());
    let r = route(l, "x.example.org", &h).unwrap();
    assert_eq!(r.rule.name, "vip");
    assert_eq!(r.rule.pick(0).upstream.authority, "b.example.com:8443");
    assert_eq!(r.rule.pick(0).upstream.path, None);
    let mut h = HeaderMap::new();
    h.insert("x-tier", "platinum".parse().unwrap());
    assert_eq!(route(l, "api.test", &h).unwrap().rule.name, "vip");
    h.insert("x-tier", "xgold".parse().unwrap());
    assert_eq!(route(l, "api.test", &h).unwrap().rule.name, "rule-2");
    h.insert("x-split", "".parse().unwrap());
    let r = route(l, "api.test", &h).unwrap();
    assert_eq!(r.rule.name, "split");
    assert_eq!(r.rule.total_weight, 100);
    assert_eq!(r.rule.pick(79).provider.id.name, "a");
    assert_eq!(r.rule.pick(80).provider.id.name, "b");
}

#[test]
fn port_map_and_selection_by_labels() {
    let mut settings = Settings::default();
    settings.port_map.insert(80, 18080);
    let snap = compile(&seed(), &settings).unwrap();
    assert_eq!(snap.listeners[0].port, 80);
    assert_eq!(snap.listeners[0].local.port(), 18080);
    let l4 = crate::model::xdp::rules(&snap);
    assert_eq!(l4.listener_ports, vec![18080]);
    // Listeners on 0.0.0.0: XDP takes every address of the host as ours;
    // bound to an address, that address only.
    assert_eq!(l4.destinations, crate::model::xdp::Destinations::Host);
    let bound = Settings {
        bind_address: "127.0.0.1".parse().unwrap(),
        ..settings.clone()
    };
    let l4 = crate::model::xdp::rules(&compile(&seed(), &bound).unwrap());
    assert_eq!(
        l4.destinations,
        crate::model::xdp::Destinations::Only(vec!["127.0.0.1".parse().unwrap()])
    );

    // Policies name the port the gateway listens on; one naming only the
    // Gateway's port behind a --port-map is warned about.
    let mut raw = seed();
    let extra = parse(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ports, namespace: istio-system}\nspec: {action: DENY, rules: [{from: [{source: {ipBlocks: [192.0.2.0/24]}}], to: [{operation: {ports: [\"80\"]}}]}]}\n",
    );
    raw.authorization_policies
        .extend(extra.authorization_policies);
    let snap = compile(&raw, &settings).unwrap();
    assert!(
        snap.warnings.iter().any(|w| w.contains(
            "AuthorizationPolicy istio-system/ports rule 0: none of ports [80] is a port the gateway listens on ([18080]"
        )),
        "{:?}",
        snap.warnings
    );
    let snap = compile(&raw, &Settings::default()).unwrap();
    assert!(!snap.warnings.iter().any(|w| w.contains("none of ports")));

    // A gateway with other labels selects neither the Gateway nor the
    // provider: the route is bound to a Gateway another workload serves, so
    // it is not this one's to check; nothing is served, and it says so.
    settings.workload_labels = [("app".to_string(), "other".to_string())].into();
    let snap = compile(&seed(), &settings).unwrap();
    assert!(snap.listeners.is_empty());
    assert!(
        snap.warnings
            .iter()
            .any(|w| w.contains("no Gateway selects this gateway's labels (app=other")),
        "{:?}",
        snap.warnings
    );
}

#[test]
fn workloads_sharing_a_configuration_each_check_only_their_own_routes() {
    // A second gateway workload with its own Gateway, provider and route: each
    // workload compiles the same files, and neither trips over the other's
    // provider.
    let mut raw = seed();
    let extra = parse(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: internal-gw, namespace: istio-system}
spec:
  selector: {istio: internal-gateway}
  servers: [{port: {number: 8000, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: internal, namespace: istio-system}
spec:
  workloadSelector: {labels: {istio: internal-gateway}}
  host: llm.internal.example.com
  path: /v1/chat/completions
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {name: internal-route}
spec:
  host: "*"
  gateways: [istio-system/internal-gw]
  rules: [{name: all, backendRefs: [{providerHost: llm.internal.example.com}]}]
"#,
    );
    raw.providers.extend(extra.providers);
    raw.routes.extend(extra.routes);
    raw.gateways.extend(extra.gateways);
    let snap = compile_ok(&raw);
    assert_eq!(snap.listeners.len(), 1);
    let routed = route(&snap.listeners[0], "test.com", &host_headers("test.com")).unwrap();
    assert_eq!(routed.rule.route.to_string(), "default/dashscope-route");

    let internal = Settings {
        workload_labels: [("istio".to_string(), "internal-gateway".to_string())].into(),
        ..Settings::default()
    };
    let snap = compile(&raw, &internal).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snap.listeners.len(), 1);
    assert_eq!(snap.listeners[0].port, 8000);
    let routed = route(&snap.listeners[0], "a.b", &host_headers("a.b")).unwrap();
    assert_eq!(routed.rule.route.to_string(), "default/internal-route");
    assert_eq!(
        routed.rule.pick(0).upstream.host,
        "llm.internal.example.com"
    );
}

#[test]
fn plain_http_servers_on_one_port_share_their_routes() {
    // Two Gateways, one port, the same hosts; a route bound to each. Istio
    // builds one route table for the port: the first route's rules are tried
    // first, then the second's, and the second stays reachable.
    let raw = parse(&format!(
        "{}{}{}{}{}",
        gateway_doc("g1", 80),
        gateway_doc("g2", 80),
        provider_doc("p1", "p1.example.com"),
        provider_doc("p2", "p2.example.com"),
        r#"apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {name: r1}
spec:
  host: "*"
  gateways: [istio-system/g1]
  rules: [{name: one, matches: [{headers: {x-to: {exact: one}}}], backendRefs: [{providerHost: p1.example.com}]}]
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {name: r2}
spec:
  host: "*"
  gateways: [istio-system/g2]
  rules: [{name: two, backendRefs: [{providerHost: p2.example.com}]}]
"#
    ));
    let snap = compile_ok(&raw);
    assert_eq!(snap.listeners.len(), 1);
    let l = &snap.listeners[0];
    let mut h = host_headers("a.b");
    let routed = route(l, "a.b", &h).unwrap();
    assert_eq!(routed.rule.route.to_string(), "default/r2");
    h.insert("x-to", "one".parse().unwrap());
    let routed = route(l, "a.b", &h).unwrap();
    assert_eq!(routed.rule.route.to_string(), "default/r1");
    assert_eq!(routed.server.gateway.to_string(), "istio-system/g1");
}

#[test]
fn route_without_gateways_warns_and_binds_nothing() {
    let mut raw = seed();
    raw.routes[0].spec.gateways.clear();
    let snap = compile_ok(&raw);
    assert!(snap.listeners[0].servers[0].vhosts.is_empty());
    assert!(
        snap.warnings
            .iter()
            .any(|w| w.contains("sidecars (mesh) only")),
        "{:?}",
        snap.warnings
    );
}

#[test]
fn https_server_loads_certificates_from_credentials_dir() {
    let dir = tempfile::tempdir().unwrap();
    let cred = dir.path().join("gw-cert");
    std::fs::create_dir(&cred).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["test.com".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(cred.join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(cred.join("tls.key"), key.serialize_pem()).unwrap();
    let mut raw = seed();
    raw.gateways.extend(
        parse(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: tls, namespace: istio-system}\nspec: {selector: {istio: ingressgateway}, servers: [{port: {number: 443, protocol: HTTPS, name: https}, hosts: ['*'], tls: {mode: SIMPLE, credentialName: gw-cert}}]}\n",
        )
        .gateways,
    );
    let settings = Settings {
        credentials_dir: Some(dir.path().to_path_buf()),
        ..Settings::default()
    };
    let snap = compile(&raw, &settings).unwrap_or_else(|e| panic!("{e}"));
    let l = snap.listeners.iter().find(|l| l.port == 443).unwrap();
    assert_eq!(l.protocol, Protocol::Https);
    let tls = l.servers[0].tls.as_ref().unwrap();
    assert_eq!(tls.cert_chain.len(), 1);
    // The route binds to the gateway listed in its `gateways` only.
    assert!(l.servers[0].vhosts.is_empty());

    // A second TLS server for the same host on the port never gets a
    // connection (SNI picks the first): said, not silently accepted.
    let mut twice = raw.clone();
    twice.gateways.extend(
        parse(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: tls2, namespace: istio-system}\nspec: {selector: {istio: ingressgateway}, servers: [{port: {number: 443, protocol: HTTPS, name: https2}, hosts: ['*'], tls: {mode: SIMPLE, credentialName: gw-cert}}]}\n",
        )
        .gateways,
    );
    let snap = compile(&twice, &settings).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        snap.warnings.iter().any(|w| w.contains(
            "host * on port 443 is already served over TLS by Gateway istio-system/tls server https"
        )),
        "{:?}",
        snap.warnings
    );

    std::fs::write(cred.join("tls.key"), "garbage").unwrap();
    let err = compile(&raw, &settings).unwrap_err().to_string();
    assert!(
        err.contains("private key") && err.contains("tls.key"),
        "{err}"
    );
}

#[test]
fn server_host_namespace_filters_which_routes_bind() {
    let mut raw = seed();
    // The route lives in `default`; a server that only admits routes from
    // istio-system (".") leaves it unbound, "default/*" binds it.
    raw.gateways[0].spec.servers[0].hosts = vec!["./*".into()];
    let snap = compile_ok(&raw);
    assert!(snap.listeners[0].servers[0].vhosts.is_empty());
    raw.gateways[0].spec.servers[0].hosts = vec!["default/*".into()];
    let snap = compile_ok(&raw);
    assert_eq!(snap.listeners[0].servers[0].vhosts.len(), 1);
    raw.gateways[0].spec.servers[0].hosts = vec!["*/api.test.com".into()];
    let snap = compile_ok(&raw);
    // `*` route host intersects api.test.com: bound, and only that host is served.
    assert_eq!(snap.listeners[0].servers[0].vhosts.len(), 1);
    let l = &snap.listeners[0];
    assert!(
        route(l, "api.test.com", &HeaderMap::new()).is_err(),
        "no rule matches host api.test.com"
    );
    assert_eq!(
        route(l, "test.com", &HeaderMap::new()).unwrap_err(),
        NoRoute::Host
    );
}

#[test]
fn validate_lists_every_provider_and_gateway_only_matches() {
    let mut raw = seed();
    let extra = parse(
        r#"
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: spare, namespace: istio-system}
spec: {host: spare.example.com, configs: {defaultConfig: {openAIConfig: {apiKey: "${API_KEY}"}}}}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {name: gw-only}
spec:
  host: gw-only.test
  gateways: [istio-system/ingress-gw]
  rules: [{name: bound, matches: [{gateways: [istio-system/ingress-gw]}], backendRefs: [{providerHost: dashscope.aliyuncs.com}]}]
"#,
    );
    raw.providers.extend(extra.providers);
    raw.routes.extend(extra.routes);
    let text = crate::model::dump::describe(&compile_ok(&raw));
    assert!(
        text.contains("rule bound of LLMRoute default/gw-only when any request\n"),
        "{text}"
    );
    assert!(
        text.contains("LLMProvider istio-system/spare host spare.example.com: no rule on a served listener sends traffic here"),
        "{text}"
    );
    assert!(
        text.contains("LLMProvider istio-system/dashscope-qwen host dashscope.aliyuncs.com: used by rule bound of LLMRoute default/gw-only, rule ingress-route of LLMRoute default/dashscope-route"),
        "{text}"
    );
    assert!(!text.contains("sk-test-123"), "{text}");
}

#[test]
fn port_map_collisions_are_errors() {
    let mut settings = Settings::default();
    settings.port_map.insert(80, 18090);
    settings.port_map.insert(8080, 18090);
    let raw = parse(&format!(
        "{}{}",
        gateway_doc("a", 80),
        gateway_doc("b", 8080)
    ));
    let err = compile(&raw, &settings).unwrap_err().to_string();
    assert!(
        err.contains("--port-map: Gateway ports 80 and 8080 would both listen on 0.0.0.0:18090"),
        "{err}"
    );
}

#[test]
fn the_largest_weights_add_up_without_overflow() {
    let raw = parse(&format!(
        "{}{}{}{}",
        gateway_doc("g", 80),
        provider_doc("p", "p.example.com"),
        provider_doc("q", "q.example.com"),
        r#"apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {name: r}
spec:
  host: "*"
  gateways: [istio-system/g]
  rules:
    - name: all
      backendRefs:
        - {providerHost: p.example.com, weight: 2147483647}
        - {providerHost: q.example.com, weight: 2147483647}
        - {providerHost: p.example.com, weight: 2147483647}
"#
    ));
    let snap = compile_ok(&raw);
    let routed = route(&snap.listeners[0], "a.b", &host_headers("a.b")).unwrap();
    let rule = routed.rule;
    assert_eq!(rule.total_weight, 3 * 2147483647);
    let max = 2147483647u64;
    assert_eq!(rule.pick(max - 1).upstream.host, "p.example.com");
    assert_eq!(rule.pick(max).upstream.host, "q.example.com");
    assert_eq!(rule.pick(3 * max - 1).upstream.host, "p.example.com");
}
