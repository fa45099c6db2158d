//! The gateway as a process: HTTPS listeners (SNI, h2, mutual TLS), the
//! seed's step 5 (RBAC), https redirects, hot reload (good swaps in, bad is
//! refused), startup errors, and draining on SIGTERM.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use llmgw_tests::{
    client::{self, SEED_REQUEST, post},
    eventually,
    gateway::{Gateway, GatewayBuilder, examples},
    mock::{MockProvider, Reply},
    pki::Pki,
};

async fn start(b: GatewayBuilder) -> Gateway {
    tokio::task::spawn_blocking(move || b.start())
        .await
        .unwrap()
}

fn gateway_with(mock: &MockProvider, dir: &Path) -> GatewayBuilder {
    let ca = dir.join("upstream-ca.pem");
    mock.pki.write_ca(&ca).unwrap();
    GatewayBuilder::new().upstream(mock.addr, ca)
}

const PROVIDER_AND_ROUTE: &str = r#"
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: dashscope-qwen, namespace: istio-system}
spec:
  host: dashscope.aliyuncs.com
  path: /compatible-mode/v1/chat/completions
  configs: {defaultConfig: {openAIConfig: {model: qwen1.5-72b-chat, stream: false, apiKey: "${API_KEY}"}}}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {name: r, namespace: istio-system}
spec:
  host: "*"
  gateways: [gw]
  rules:
    - name: all
      backendRefs: [{providerHost: dashscope.aliyuncs.com}]
"#;

#[tokio::test]
async fn https_listener_picks_the_certificate_by_sni_and_speaks_h2() {
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ca1, ca2, client_ca) = (Pki::new(), Pki::new(), Pki::new());
    let write = |name: &str, pki: &Pki, host: &str| {
        let leaf = pki.leaf(&[host]);
        std::fs::write(d.join(format!("{name}.crt")), &leaf.cert_pem).unwrap();
        std::fs::write(d.join(format!("{name}.key")), &leaf.key_pem).unwrap();
    };
    write("a", &ca1, "a.secure.test");
    write("b", &ca2, "b.secure.test");
    write("m", &ca1, "m.secure.test");
    client_ca.write_ca(&d.join("client-ca.pem")).unwrap();
    let p = |f: &str| d.join(f).display().to_string();
    let gateway = format!(
        r#"
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
    - hosts: [a.secure.test]
      port: {{name: https-a, number: 443, protocol: HTTPS}}
      tls: {{mode: SIMPLE, serverCertificate: "{}", privateKey: "{}"}}
    - hosts: [b.secure.test]
      port: {{name: https-b, number: 443, protocol: HTTPS}}
      tls: {{mode: SIMPLE, serverCertificate: "{}", privateKey: "{}", minProtocolVersion: TLSV1_3}}
    - hosts: ["*"]
      port: {{name: mtls, number: 8443, protocol: HTTPS}}
      tls: {{mode: MUTUAL, serverCertificate: "{}", privateKey: "{}", caCertificates: "{}"}}
    - hosts: ["*"]
      port: {{name: optional-mtls, number: 9443, protocol: HTTPS}}
      tls: {{mode: OPTIONAL_MUTUAL, serverCertificate: "{}", privateKey: "{}", caCertificates: "{}"}}
"#,
        p("a.crt"),
        p("a.key"),
        p("b.crt"),
        p("b.key"),
        p("m.crt"),
        p("m.key"),
        p("client-ca.pem"),
        p("m.crt"),
        p("m.key"),
        p("client-ca.pem")
    );
    std::fs::write(
        d.join("gw.yaml"),
        format!("{gateway}---{PROVIDER_AND_ROUTE}"),
    )
    .unwrap();
    let gw = start(
        gateway_with(&mock, d)
            .config(d.join("gw.yaml"))
            .ports(&[443, 8443, 9443]),
    )
    .await;
    let addr = ([127, 0, 0, 1], gw.port(443)).into();
    let req = |host: &str| {
        Request::post(format!("https://{host}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(SEED_REQUEST.as_bytes())))
            .unwrap()
    };
    let both: &[&[u8]] = &[b"h2", b"http/1.1"];

    let (v, a) = client::https(
        addr,
        "a.secure.test",
        ca1.ca_der(),
        both,
        req("a.secure.test"),
    )
    .await
    .expect("TLS with a.secure.test");
    assert_eq!(v, Version::HTTP_2);
    assert_eq!(a.status, 200, "{}", a.text());
    let (v, a) = client::https(
        addr,
        "b.secure.test",
        ca2.ca_der(),
        &[b"http/1.1"],
        req("b.secure.test"),
    )
    .await
    .expect("TLS with b.secure.test");
    assert_eq!(v, Version::HTTP_11);
    assert_eq!(a.status, 200);
    // b's certificate comes from CA 2: a client trusting only CA 1 refuses it.
    let wrong = client::https(
        addr,
        "b.secure.test",
        ca1.ca_der(),
        both,
        req("b.secure.test"),
    )
    .await;
    assert!(wrong.is_err(), "b.secure.test must get b's certificate");
    // b.secure.test sets minProtocolVersion TLSV1_3; a.secure.test does not.
    let old = client::https_tls12(addr, "b.secure.test", ca2.ca_der(), req("b.secure.test")).await;
    assert!(old.is_err(), "TLS 1.2 accepted by a TLSV1_3 server");
    let (_, a) = client::https_tls12(addr, "a.secure.test", ca1.ca_der(), req("a.secure.test"))
        .await
        .expect("TLS 1.2 with a.secure.test");
    assert_eq!(a.status, 200);
    // The connection belongs to the server its SNI chose: a.secure.test's
    // connection does not serve b.secure.test's routes (Envoy: that
    // server's route table has no such host, 404) ...
    let (_, a) = client::https(
        addr,
        "a.secure.test",
        ca1.ca_der(),
        both,
        req("b.secure.test"),
    )
    .await
    .expect("TLS with a.secure.test");
    assert_eq!(a.status, 404, "{}", a.text());
    // ... and a name no server on the port takes gets no handshake (no
    // filter chain), rather than the first server's certificate.
    let unknown = client::https(
        addr,
        "c.secure.test",
        ca1.ca_der(),
        both,
        req("c.secure.test"),
    )
    .await;
    assert!(unknown.is_err(), "a name no server takes was served");
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 3);
    assert!(
        reqs.iter()
            .all(|r| r.header("x-forwarded-proto") == Some("https"))
    );

    // MUTUAL: no client certificate, no service.
    let maddr = ([127, 0, 0, 1], gw.port(8443)).into();
    let refused = client::https(
        maddr,
        "m.secure.test",
        ca1.ca_der(),
        both,
        req("m.secure.test"),
    )
    .await;
    assert!(
        refused.is_err(),
        "a client without a certificate got through"
    );
    let leaf = client_ca.leaf(&["client.test"]);
    let (_, a) = client::https_with_client_cert(
        maddr,
        "m.secure.test",
        ca1.ca_der(),
        (leaf.chain, leaf.key),
        req("m.secure.test"),
    )
    .await
    .expect("mutual TLS with a client certificate");
    assert_eq!(a.status, 200);

    // OPTIONAL_MUTUAL: served with or without a certificate, but a
    // certificate from another CA is refused.
    let oaddr = ([127, 0, 0, 1], gw.port(9443)).into();
    let (_, a) = client::https(
        oaddr,
        "m.secure.test",
        ca1.ca_der(),
        both,
        req("m.secure.test"),
    )
    .await
    .expect("OPTIONAL_MUTUAL without a client certificate");
    assert_eq!(a.status, 200);
    let leaf = client_ca.leaf(&["client.test"]);
    let (_, a) = client::https_with_client_cert(
        oaddr,
        "m.secure.test",
        ca1.ca_der(),
        (leaf.chain, leaf.key),
        req("m.secure.test"),
    )
    .await
    .expect("OPTIONAL_MUTUAL with a client certificate");
    assert_eq!(a.status, 200);
    let stranger = ca2.leaf(&["stranger.test"]);
    let refused = client::https_with_client_cert(
        oaddr,
        "m.secure.test",
        ca1.ca_der(),
        (stranger.chain, stranger.key),
        req("m.secure.test"),
    )
    .await;
    assert!(
        refused.is_err(),
        "a certificate from an unknown CA got through"
    );
}

#[tokio::test]
async fn seed_step_5_denies_the_listed_ip_for_test_com_only() {
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start(
        gateway_with(&mock, dir.path())
            .config(examples().join("quickstart"))
            .config(examples().join("security"))
            .env("LOCAL_IP", "127.0.0.1"),
    )
    .await;
    let a = post(&gw.url(), "test.com", SEED_REQUEST, &[]).await;
    assert_eq!(a.status, 403);
    assert_eq!(a.text(), "RBAC: access denied");
    assert_eq!(a.headers["content-type"], "text/plain");
    // Spelled with a port or a trailing dot, test.com is routed as test.com,
    // and denied as test.com too.
    for host in ["test.com:80", "TEST.com.", "test.com.:8080"] {
        let a = post(&gw.url(), host, SEED_REQUEST, &[]).await;
        assert_eq!(a.status, 403, "{host}: {}", a.text());
    }
    assert!(
        mock.requests().is_empty(),
        "a denied request reached the provider"
    );
    // Another host is still served.
    let a = post(&gw.url(), "dashscope.aliyuncs.com", SEED_REQUEST, &[]).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(mock.requests().len(), 1);
    assert!(gw.metrics().contains("code=\"403\"} 4"));
    // The access log names the policy that denied.
    let denied = llmgw_tests::eventually(Duration::from_secs(5), || async {
        gw.stdout()
            .lines()
            .find(|l| l.contains("\"status\":403"))
            .map(str::to_string)
    })
    .await
    .expect("a 403 logged");
    let v: serde_json::Value = serde_json::from_str(&denied).unwrap();
    assert_eq!(v["policy"], "istio-system/auth-policy", "{denied}");
    assert_eq!(v["error"], "RBAC: access denied", "{denied}");
}

#[tokio::test]
async fn plain_http_servers_with_https_redirect_answer_301() {
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
    - hosts: ["*"]
      port: {{name: http, number: 80, protocol: HTTP}}
      tls: {{httpsRedirect: true}}
---{PROVIDER_AND_ROUTE}"#
    );
    std::fs::write(dir.path().join("gw.yaml"), yaml).unwrap();
    let gw = start(gateway_with(&mock, dir.path()).config(dir.path().join("gw.yaml"))).await;
    let req = Request::get(format!("{}/v1/models?x=1", gw.url()))
        .header("host", "Test.com:80")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let a = client::collect(client::send(req).await).await;
    assert_eq!(a.status, 301);
    assert_eq!(a.headers["location"], "https://test.com/v1/models?x=1");
    assert!(mock.requests().is_empty());
}

fn write_quickstart(dir: &Path, route_host: &str) {
    for f in ["01-llmprovider.yaml", "02-gateway.yaml"] {
        std::fs::copy(examples().join("quickstart").join(f), dir.join(f)).unwrap();
    }
    let route = std::fs::read_to_string(examples().join("quickstart/03-llmroute.yaml"))
        .unwrap()
        .replace("exact: test.com", &format!("exact: {route_host}"));
    // Write then rename, as a config management tool would.
    let tmp = dir.join(".03-llmroute.yaml.tmp");
    std::fs::write(&tmp, route).unwrap();
    std::fs::rename(&tmp, dir.join("03-llmroute.yaml")).unwrap();
}

#[tokio::test]
async fn hot_reload_swaps_good_configurations_and_keeps_serving_on_bad_ones() {
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    write_quickstart(&conf, "test.com");
    let gw = start(
        gateway_with(&mock, dir.path())
            .config(&conf)
            .arg("--reload-interval")
            .arg("100ms"),
    )
    .await;
    let url = gw.url();
    assert_eq!(post(&url, "test.com", SEED_REQUEST, &[]).await.status, 200);
    assert_eq!(post(&url, "other.com", SEED_REQUEST, &[]).await.status, 404);

    // A good change is picked up from the files.
    write_quickstart(&conf, "other.com");
    let swapped = eventually(Duration::from_secs(10), || async {
        (post(&url, "other.com", SEED_REQUEST, &[]).await.status == 200).then_some(())
    })
    .await;
    assert!(
        swapped.is_some(),
        "the new route never served:\n{}",
        gw.stderr()
    );
    assert_eq!(post(&url, "test.com", SEED_REQUEST, &[]).await.status, 404);

    // A bad one is refused, loudly, and the last good one keeps serving.
    std::fs::write(conf.join("03-llmroute.yaml"), "kind: LLMRoute\nspec: [").unwrap();
    assert!(
        gw.wait_output("reload failed", Duration::from_secs(10)),
        "{}",
        gw.stderr()
    );
    assert_eq!(post(&url, "other.com", SEED_REQUEST, &[]).await.status, 200);
    let m = gw.metrics();
    assert!(
        m.contains("llmgw_config_reloads_total{result=\"success\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("llmgw_config_reloads_total{result=\"failure\"} 1"),
        "{m}"
    );
}

/// Files as a ConfigMap volume holds them: each a link into `..data`, itself
/// a link to a directory of this version; the kubelet swaps `..data`.
fn configmap_version(mount: &Path, version: &str, route_host: &str) {
    let v = mount.join(format!("..{version}"));
    std::fs::create_dir(&v).unwrap();
    write_quickstart(&v, route_host);
    let tmp = mount.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, mount.join("..data")).unwrap();
    for f in ["01-llmprovider.yaml", "02-gateway.yaml", "03-llmroute.yaml"] {
        let link = mount.join(f);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{f}"), link).unwrap();
        }
    }
}

/// Changes are seen at once (inotify), with polling as good as off: a
/// ConfigMap's `..data` swap, and a file written then renamed over the old
/// one in a plain directory.
#[tokio::test]
async fn changes_are_seen_without_polling() {
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("configmap");
    std::fs::create_dir(&mount).unwrap();
    configmap_version(&mount, "v1", "test.com");
    let plain = dir.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    write_quickstart(&plain, "a.test");
    let gw = start(
        gateway_with(&mock, dir.path())
            .config(&mount)
            .arg("--reload-interval")
            .arg("1h"),
    )
    .await;
    let url = gw.url();
    assert_eq!(post(&url, "test.com", SEED_REQUEST, &[]).await.status, 200);
    configmap_version(&mount, "v2", "other.com");
    let swapped = eventually(Duration::from_secs(5), || async {
        (post(&url, "other.com", SEED_REQUEST, &[]).await.status == 200).then_some(())
    })
    .await;
    assert!(
        swapped.is_some(),
        "the ..data swap was not seen:\n{}",
        gw.stderr()
    );
    assert_eq!(post(&url, "test.com", SEED_REQUEST, &[]).await.status, 404);
    drop(gw);

    let gw = start(
        gateway_with(&mock, dir.path())
            .config(&plain)
            .arg("--reload-interval")
            .arg("1h"),
    )
    .await;
    let url = gw.url();
    assert_eq!(post(&url, "a.test", SEED_REQUEST, &[]).await.status, 200);
    write_quickstart(&plain, "b.test");
    let swapped = eventually(Duration::from_secs(5), || async {
        (post(&url, "b.test", SEED_REQUEST, &[]).await.status == 200).then_some(())
    })
    .await;
    assert!(
        swapped.is_some(),
        "the renamed file was not seen:\n{}",
        gw.stderr()
    );
}

#[tokio::test]
async fn sighup_reloads_without_polling() {
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    write_quickstart(&conf, "test.com");
    let gw = start(
        gateway_with(&mock, dir.path())
            .config(&conf)
            .arg("--reload-interval")
            .arg("0"),
    )
    .await;
    let url = gw.url();
    write_quickstart(&conf, "other.com");
    // No polling: the change is not seen...
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(post(&url, "other.com", SEED_REQUEST, &[]).await.status, 404);
    // ...until SIGHUP.
    gw.signal("HUP");
    let swapped = eventually(Duration::from_secs(10), || async {
        (post(&url, "other.com", SEED_REQUEST, &[]).await.status == 200).then_some(())
    })
    .await;
    assert!(swapped.is_some(), "{}", gw.stderr());
    assert!(gw.stderr().contains("SIGHUP"), "{}", gw.stderr());
}

#[tokio::test]
async fn reload_binds_new_listeners_and_closes_removed_ones() {
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("gw.yaml");
    let gateway = |ports: &[u16]| {
        let servers: String = ports
            .iter()
            .map(|p| {
                format!("    - hosts: [\"*\"]\n      port: {{name: http-{p}, number: {p}, protocol: HTTP}}\n")
            })
            .collect();
        format!(
            "apiVersion: networking.istio.io/v1beta1\nkind: Gateway\nmetadata: {{name: gw, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n{servers}---{PROVIDER_AND_ROUTE}"
        )
    };
    std::fs::write(&conf, gateway(&[80])).unwrap();
    let gw = start(
        gateway_with(&mock, dir.path())
            .config(&conf)
            .ports(&[80, 81])
            .arg("--reload-interval")
            .arg("100ms"),
    )
    .await;
    let url81 = format!("http://127.0.0.1:{}", gw.port(81));
    assert_eq!(post(&gw.url(), "x", "{}", &[]).await.status, 200);
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", gw.port(81)))
            .await
            .is_err()
    );

    std::fs::write(&conf, gateway(&[81])).unwrap();
    let up = eventually(Duration::from_secs(10), || async {
        let s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port(81))).await;
        s.is_ok().then_some(())
    })
    .await;
    assert!(up.is_some(), "port 81 never opened:\n{}", gw.stderr());
    assert_eq!(post(&url81, "x", "{}", &[]).await.status, 200);
    let down = eventually(Duration::from_secs(10), || async {
        let s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port(80))).await;
        s.is_err().then_some(())
    })
    .await;
    assert!(down.is_some(), "port 80 still open");
}

#[tokio::test]
async fn an_invalid_configuration_at_start_exits_non_zero_with_the_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: istio.alibabacloud.com/v1beta1\nkind: LLMProvider\nmetadata: {name: p}\nspec: {host: 'a b'}\n",
    )
    .unwrap();
    let mut gw = start(GatewayBuilder::new().config(&bad).no_wait()).await;
    let status = tokio::task::spawn_blocking(move || {
        let s = gw.wait_exit(Duration::from_secs(10));
        (s, gw.stderr())
    })
    .await
    .unwrap();
    let (status, stderr) = status;
    let status = status.expect("llmgw exits");
    assert!(!status.success());
    assert!(stderr.contains("spec.host"), "{stderr}");
    assert!(stderr.contains("bad.yaml"), "{stderr}");
}

/// The quickstart with a provider that streams, and a stream of `chunks`
/// chunks `every` apart in flight; then SIGTERM.
async fn terminated_mid_stream(
    drain_timeout: &str,
    chunks: usize,
    every: Duration,
) -> (MockProvider, tempfile::TempDir, Gateway, Response<Incoming>) {
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    write_quickstart(&conf, "test.com");
    let provider = std::fs::read_to_string(conf.join("01-llmprovider.yaml"))
        .unwrap()
        .replace("stream: false", "stream: true");
    std::fs::write(conf.join("01-llmprovider.yaml"), provider).unwrap();
    let gw = start(
        gateway_with(&mock, dir.path())
            .config(&conf)
            .arg("--drain-timeout")
            .arg(drain_timeout),
    )
    .await;
    mock.respond(move |_| Reply::stream(chunks, every));
    let req = Request::post(gw.url())
        .header("host", "test.com")
        .body(Full::new(Bytes::from_static(SEED_REQUEST.as_bytes())))
        .unwrap();
    let resp = client::send(req).await;
    assert_eq!(resp.status(), 200);
    gw.signal("TERM");
    (mock, dir, gw, resp)
}

#[tokio::test]
async fn sigterm_drains_in_flight_streams_then_exits() {
    let (_mock, _dir, gw, resp) = terminated_mid_stream("10s", 6, Duration::from_millis(100)).await;
    let gw = Arc::new(std::sync::Mutex::new(gw));
    // The stream in flight finishes whole.
    let frames = client::timed_frames(resp).await;
    let text: String = frames
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let g = gw.clone();
    let status =
        tokio::task::spawn_blocking(move || g.lock().unwrap().wait_exit(Duration::from_secs(10)))
            .await
            .unwrap();
    assert!(status.expect("llmgw exits").success());
    let stderr = gw.lock().unwrap().stderr();
    assert!(stderr.contains("draining"), "{stderr}");
}

/// A stream longer than the drain timeout is cut when it passes: the
/// gateway exits soon after, and the cut request still has its access log
/// line.
#[tokio::test]
async fn the_drain_timeout_cuts_what_is_left_and_logs_it() {
    let (_mock, _dir, gw, resp) = terminated_mid_stream("1s", 40, Duration::from_millis(200)).await;
    let sent = Instant::now();
    let gw = Arc::new(std::sync::Mutex::new(gw));
    // Read until the gateway cuts the stream (an error, not the end).
    let mut body = resp.into_body();
    let mut text = String::new();
    let cut = loop {
        match http_body_util::BodyExt::frame(&mut body).await {
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    text.push_str(&String::from_utf8_lossy(&d));
                }
            }
            Some(Err(_)) => break true,
            None => break false,
        }
    };
    assert!(
        cut && !text.ends_with("data: [DONE]\n\n"),
        "the stream was not cut: {text}"
    );
    let g = gw.clone();
    let status =
        tokio::task::spawn_blocking(move || g.lock().unwrap().wait_exit(Duration::from_secs(10)))
            .await
            .unwrap();
    assert!(status.expect("llmgw exits").success());
    // Well before the stream's 8 s: the drain timeout and a little more.
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "{:?}",
        sent.elapsed()
    );
    let out = gw.lock().unwrap().stdout();
    let line = out
        .lines()
        .find(|l| l.contains("\"status\":200"))
        .unwrap_or_else(|| panic!("no access log line for the cut stream: {out}"));
    assert!(line.contains("\"error\":\""), "{line}");
}

#[tokio::test]
async fn rotated_credentials_are_served_without_a_restart() {
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let creds = d.join("credentials");
    let (old_ca, new_ca) = (Pki::new(), Pki::new());
    let write_cred = |pki: &Pki| {
        let cred = creds.join("gw-cert");
        std::fs::create_dir_all(&cred).unwrap();
        let leaf = pki.leaf(&["secure.test"]);
        // Keys first, as a Secret update swaps both at once.
        std::fs::write(cred.join("tls.key.new"), &leaf.key_pem).unwrap();
        std::fs::write(cred.join("tls.crt.new"), &leaf.cert_pem).unwrap();
        std::fs::rename(cred.join("tls.key.new"), cred.join("tls.key")).unwrap();
        std::fs::rename(cred.join("tls.crt.new"), cred.join("tls.crt")).unwrap();
    };
    write_cred(&old_ca);
    let gateway = r#"
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
    - hosts: ["*"]
      port: {name: https, number: 443, protocol: HTTPS}
      tls: {mode: SIMPLE, credentialName: gw-cert}
"#;
    std::fs::write(
        d.join("gw.yaml"),
        format!("{gateway}---{PROVIDER_AND_ROUTE}"),
    )
    .unwrap();
    let gw = start(
        gateway_with(&mock, d)
            .config(d.join("gw.yaml"))
            .ports(&[443])
            .arg("--credentials-dir")
            .arg(creds.display().to_string())
            .arg("--reload-interval")
            .arg("100ms"),
    )
    .await;
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], gw.port(443)).into();
    let req = || {
        Request::post("https://secure.test/v1/chat/completions")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(SEED_REQUEST.as_bytes())))
            .unwrap()
    };
    let h1: &[&[u8]] = &[b"http/1.1"];
    let (_, a) = client::https(addr, "secure.test", old_ca.ca_der(), h1, req())
        .await
        .expect("the first certificate is served");
    assert_eq!(a.status, 200);

    write_cred(&new_ca);
    let rotated = eventually(Duration::from_secs(10), || async {
        client::https(addr, "secure.test", new_ca.ca_der(), h1, req())
            .await
            .ok()
    })
    .await
    .expect("the rotated certificate is served");
    assert_eq!(rotated.1.status, 200);
    assert!(
        client::https(addr, "secure.test", old_ca.ca_der(), h1, req())
            .await
            .is_err(),
        "the old certificate is no longer served"
    );
}
