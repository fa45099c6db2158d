//! The whole gateway in network namespaces: `llmgw run --xdp-iface ...` in
//! a gateway namespace, the mock provider beside it, a denied and an allowed
//! client in their own namespaces. A DENY `ipBlocks` policy is dropped in
//! XDP (the drop counter moves, connections time out, other ports stay
//! open) while a policy with a `hosts` condition answers 403 at L7; removing
//! the rule from the configuration restores the client; a `kill -9` of the
//! gateway and a restart never let the denied client through.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use llmgw_tests::{
    client::SEED_REQUEST,
    gateway::{admin_get, examples},
    mock::MockProvider,
    netns::{self, Netns, Topology},
    pki::Pki,
    privileged, workspace_bin,
};

const PORT: u16 = 8080;
const ADMIN: u16 = 15000;
const XDP_RULE: &str = "istio-system/deny-net[0]";

const POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-net, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from: [{source: {ipBlocks: ["10.201.1.0/24", "fd00:201:1::/64"]}}]
---
"#;

const L7_POLICY: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-host, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from: [{source: {ipBlocks: ["10.201.2.2"]}}]
    to: [{operation: {hosts: [blocked.test]}}]
"#;

/// A second Gateway listening on `port` (no route is bound to it).
fn extra_gateway(port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: extra-gw, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers: [{{port: {{number: {port}, name: extra, protocol: HTTP}}, hosts: [\"*\"]}}]\n"
    )
}

/// One HTTP/1.1 POST from the calling thread's namespace: the status, or
/// `None` when no connection could be made within `timeout`.
fn post(addr: SocketAddr, host: &str, timeout: Duration) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let req = format!(
        "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{SEED_REQUEST}",
        SEED_REQUEST.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Some((status, body))
}

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), port)
}

struct Gw {
    child: Child,
}

impl Gw {
    /// Starts `llmgw run` inside `ns` and waits for its admin `/ready`.
    fn start(ns: &Netns, args: &[String], bpf_root: &Path) -> Gw {
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path()))
            .arg(workspace_bin("llmgw"))
            .arg("run")
            .args(args)
            .env("API_KEY", "sk-netns-test")
            .env("LLMGW_BPF_ROOT", bpf_root)
            .stdout(Stdio::null())
            .spawn()
            .expect("llmgw starts");
        // Owned before waiting, so a failed wait still kills it.
        let gw = Gw { child };
        let admin = sa("127.0.0.1", ADMIN);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = ns.run(move || matches!(admin_get(admin, "/ready"), Ok((200, _))));
            if ready {
                return gw;
            }
            assert!(Instant::now() < deadline, "llmgw did not get ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        self.kill9();
    }
}

struct Cleanup {
    bpf_root: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = llmgw::l4::detach(&self.bpf_root);
    }
}

fn drops(bpf_root: &Path) -> u64 {
    llmgw::l4::status(bpf_root)
        .ok()
        .and_then(|s| s.stats.rule(XDP_RULE).map(|r| r.packets))
        .unwrap_or(0)
}

/// Rewrites the policy file and waits until the gateway has reloaded it
/// (its reload counter moves).
fn reconfigure(ns: &Netns, path: &Path, text: &str) {
    reconfigure_expecting(ns, path, text, "success");
}

/// As [`reconfigure`], waiting for a reload with `result` (`success`, `failure`).
fn reconfigure_expecting(ns: &Netns, path: &Path, text: &str, result: &str) {
    let counter = format!("llmgw_config_reloads_total{{result=\"{result}\"}}");
    let reloads = || {
        let admin = sa("127.0.0.1", ADMIN);
        ns.run(move || admin_get(admin, "/metrics"))
            .map(|(_, m)| {
                m.lines()
                    .find(|l| l.starts_with(&counter))
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    };
    let before = reloads();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write policy");
    std::fs::rename(&tmp, path).expect("replace policy");
    let deadline = Instant::now() + Duration::from_secs(20);
    while reloads() == before {
        assert!(Instant::now() < deadline, "the gateway did not reload");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn xdp_drops_denied_networks_while_l7_answers_host_policies() {
    if !privileged("xdp_drops_denied_networks_while_l7_answers_host_policies") {
        return;
    }
    let name = format!("llmgw-t-{}-gw", std::process::id());
    let bpf_root = PathBuf::from("/sys/fs/bpf").join(&name);
    let _cleanup = Cleanup {
        bpf_root: bpf_root.clone(),
    };
    let topo = Topology::new(&name);
    let dir = tempfile::tempdir().unwrap();

    // The mock provider listens inside the gateway namespace.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let std_listener = topo.gw.run(|| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind mock");
        l.set_nonblocking(true).expect("nonblocking");
        l
    });
    let mock = rt.block_on(async {
        let l = tokio::net::TcpListener::from_std(std_listener).unwrap();
        MockProvider::serve(l, Arc::new(Pki::new()))
    });
    let ca = dir.path().join("ca.pem");
    mock.pki.write_ca(&ca).unwrap();

    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, format!("{POLICIES}{L7_POLICY}")).unwrap();
    let args: Vec<String> = [
        "--config",
        &examples().join("quickstart").display().to_string(),
        "--config",
        &policy.display().to_string(),
        "--bind-address",
        "::",
        "--port-map",
        &format!("80={PORT}"),
        "--admin-address",
        &format!("0.0.0.0:{ADMIN}"),
        "--upstream-ca",
        &ca.display().to_string(),
        "--resolve",
        &format!("dashscope.aliyuncs.com:443:{}", mock.addr),
        "--reload-interval",
        "200ms",
        "--xdp-iface",
        netns::GW_DENY_IF,
        "--xdp-iface",
        netns::GW_ALLOW_IF,
        "--xdp-mode",
        "native",
        "--access-log",
        "off",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut gw = Gw::start(&topo.gw, &args, &bpf_root);

    let deny4 = sa(netns::GW_V4_DENY_SIDE, PORT);
    let deny6 = sa(netns::GW_V6_DENY_SIDE, PORT);
    let allow4 = sa(netns::GW_V4_ALLOW_SIDE, PORT);
    let allow6 = sa(netns::GW_V6_ALLOW_SIDE, PORT);
    let quick = Duration::from_millis(500);
    let patient = Duration::from_secs(3);

    // The allowed client is served by llmgw through the provider, v4 and v6.
    let ok = topo.allow.run(move || post(allow4, "test.com", patient));
    assert_eq!(ok.map(|(s, _)| s), Some(200), "allowed client v4");
    let ok = topo.allow.run(move || post(allow6, "test.com", patient));
    assert_eq!(ok.map(|(s, _)| s), Some(200), "allowed client v6");
    // A policy XDP cannot decide (it names a host) answers at L7.
    let denied = topo
        .allow
        .run(move || post(allow4, "blocked.test", patient));
    assert_eq!(
        denied,
        Some((403, "RBAC: access denied".to_string())),
        "L7 host policy"
    );

    // The denied network never connects; XDP counts the dropped SYNs.
    let before = drops(&bpf_root);
    assert_eq!(
        topo.deny.run(move || post(deny4, "test.com", quick)),
        None,
        "denied v4 got through"
    );
    assert_eq!(
        topo.deny.run(move || post(deny6, "test.com", quick)),
        None,
        "denied v6 got through"
    );
    assert!(drops(&bpf_root) > before, "XDP drop counter did not move");
    // ... but still reaches what is not a gateway listener (the admin port).
    let admin = sa(netns::GW_V4_DENY_SIDE, ADMIN);
    assert!(
        topo.deny.run(move || admin_get(admin, "/ready")).is_ok(),
        "denied client cut off from a non-listener port"
    );
    // The gateway's /metrics carries the XDP counters (refreshed every 5 s).
    let metric = format!("llmgw_xdp_dropped_packets_total{{rule=\"{XDP_RULE}\"}} ");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let admin = sa("127.0.0.1", ADMIN);
        let m = topo
            .gw
            .run(move || admin_get(admin, "/metrics"))
            .map(|(_, m)| m)
            .unwrap_or_default();
        let n: u64 = m
            .lines()
            .find_map(|l| l.strip_prefix(&metric))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if n > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no XDP drops in /metrics:\n{m}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let status = Command::new(workspace_bin("llmgw"))
        .args(["xdp", "status"])
        .env("LLMGW_BPF_ROOT", &bpf_root)
        .output()
        .expect("llmgw xdp status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains(XDP_RULE) && text.contains("native"), "{text}");
    // Listeners on `::` take the namespace's addresses: XDP drops only
    // packets sent to them.
    let dests = text
        .lines()
        .find(|l| l.starts_with("destinations: "))
        .unwrap_or_default();
    for a in [netns::GW_V4_DENY_SIDE, netns::GW_V6_DENY_SIDE, "127.0.0.1"] {
        assert!(dests.split(' ').any(|d| d == a), "{a} not in {dests:?}");
    }
    // An address added to the gateway's host is followed at once (the
    // kernel announces it over netlink; without that, the L4 thread's 5 s
    // re-read would be too slow for this deadline), and the denied client
    // is dropped on it too.
    let extra = "10.201.1.77";
    topo.gw.ip(&[
        "addr",
        "add",
        &format!("{extra}/24"),
        "dev",
        netns::GW_DENY_IF,
    ]);
    let deadline = Instant::now() + Duration::from_millis(1500);
    loop {
        let followed = llmgw::l4::status(&bpf_root).is_ok_and(|s| {
            s.destinations
                .as_ref()
                .is_some_and(|d| d.iter().any(|ip| ip.to_string() == extra))
        });
        if followed {
            break;
        }
        assert!(Instant::now() < deadline, "new address not followed");
        std::thread::sleep(Duration::from_millis(250));
    }
    let to_extra = sa(extra, PORT);
    assert_eq!(
        topo.deny.run(move || post(to_extra, "test.com", quick)),
        None,
        "denied client reached the new address"
    );
    let ok = topo.allow.run(move || post(allow4, "test.com", patient));
    assert_eq!(
        ok.map(|(s, _)| s),
        Some(200),
        "allowed client after the new address"
    );

    // Removing the rule from the configuration restores the client.
    reconfigure(&topo.gw, &policy, L7_POLICY);
    let back = topo.deny.run(move || post(deny4, "test.com", patient));
    assert_eq!(back.map(|(s, _)| s), Some(200), "client not restored");
    reconfigure(&topo.gw, &policy, &format!("{POLICIES}{L7_POLICY}"));
    // L7 applies the snapshot first (403), the L4 thread syncs the maps right
    // after it (dropped); the client is never served in between.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match topo.deny.run(move || post(deny4, "test.com", quick)) {
            None => break,
            Some((403, _)) => {
                assert!(Instant::now() < deadline, "rule not back in XDP");
                std::thread::sleep(Duration::from_millis(50));
            }
            other => panic!("denied client answered {other:?} while the rule came back"),
        }
    }

    // A reload that adds a listener port puts the port in XDP before it
    // binds it: a denied client hammering the new port never connects
    // (refused while nothing listens, dropped after).
    let extra_port = sa(netns::GW_V4_DENY_SIDE, PORT + 1);
    let stop = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(AtomicU64::new(0));
    let probe = {
        let (stop, connected) = (stop.clone(), connected.clone());
        topo.deny.spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if TcpStream::connect_timeout(&extra_port, Duration::from_millis(50)).is_ok() {
                    connected.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let with_port = format!("{POLICIES}{L7_POLICY}---\n{}", extra_gateway(PORT + 1));
    reconfigure(&topo.gw, &policy, &with_port);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    probe.join().expect("probe");
    assert_eq!(
        connected.load(Ordering::Relaxed),
        0,
        "the denied client connected to a new port before XDP knew it"
    );
    let allowed_extra = sa(netns::GW_V4_ALLOW_SIDE, PORT + 1);
    assert_eq!(
        topo.allow
            .run(move || post(allowed_extra, "test.com", patient))
            .map(|(s, _)| s),
        Some(404),
        "the new port serves (no route is bound to it)"
    );
    reconfigure(&topo.gw, &policy, &format!("{POLICIES}{L7_POLICY}"));

    // A reload that adds a port another process owns fails to bind it, and
    // leaves XDP's listener ports as they were: denied sources are not
    // dropped on someone else's port.
    let listeners = || {
        llmgw::l4::status(&bpf_root)
            .map(|s| s.listeners)
            .unwrap_or_default()
    };
    assert_eq!(listeners(), vec![PORT]);
    let held = topo
        .gw
        .run(|| std::net::TcpListener::bind(("::", PORT + 2)).expect("hold a port"));
    let taken = format!("{POLICIES}{L7_POLICY}---\n{}", extra_gateway(PORT + 2));
    reconfigure_expecting(&topo.gw, &policy, &taken, "failure");
    assert_eq!(
        listeners(),
        vec![PORT],
        "a failed reload left its port in XDP"
    );
    reconfigure(&topo.gw, &policy, &format!("{POLICIES}{L7_POLICY}"));

    // kill -9, a restart that fails on a bad configuration, and a good
    // restart, while the denied client keeps trying. With nothing listening
    // on the port, a SYN that got past XDP would be refused (RST) at once;
    // one XDP drops just times out. So a refusal is a lapse too.
    let stop = Arc::new(AtomicBool::new(false));
    let through = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let tries = Arc::new(AtomicU64::new(0));
    let probe = {
        let (stop, through, refused, tries) = (
            stop.clone(),
            through.clone(),
            refused.clone(),
            tries.clone(),
        );
        topo.deny.spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                tries.fetch_add(1, Ordering::Relaxed);
                match TcpStream::connect_timeout(&deny4, Duration::from_millis(100)) {
                    Ok(_) => {
                        through.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {}
                }
            }
        })
    };
    gw.kill9();
    std::thread::sleep(Duration::from_millis(500));
    let prefixes = || {
        llmgw::l4::status(&bpf_root)
            .map(|s| s.prefixes.len())
            .unwrap_or(0)
    };
    let pinned = prefixes();
    assert!(pinned > 0, "no prefixes pinned after kill -9");
    // A configuration that does not compile (API_KEY unset): the gateway
    // exits non-zero and leaves the pinned rules as they are.
    let bad = Command::new("nsenter")
        .arg(format!("--net={}", topo.gw.path()))
        .arg(workspace_bin("llmgw"))
        .arg("run")
        .args(&args)
        .env_remove("API_KEY")
        .env("LLMGW_BPF_ROOT", &bpf_root)
        .output()
        .expect("llmgw runs");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success(),
        "a bad configuration was served: {stderr}"
    );
    assert!(stderr.contains("API_KEY"), "{stderr}");
    assert_eq!(
        prefixes(),
        pinned,
        "a failed start changed the pinned rules"
    );
    // A start that cannot bind (another process owns a port of the
    // configuration): it exits non-zero and puts back what was pinned.
    std::fs::write(&policy, &taken).unwrap();
    let cannot_bind = Command::new("nsenter")
        .arg(format!("--net={}", topo.gw.path()))
        .arg(workspace_bin("llmgw"))
        .arg("run")
        .args(&args)
        .env("API_KEY", "sk-netns-test")
        .env("LLMGW_BPF_ROOT", &bpf_root)
        .output()
        .expect("llmgw runs");
    let stderr = String::from_utf8_lossy(&cannot_bind.stderr);
    assert!(!cannot_bind.status.success(), "{stderr}");
    assert!(stderr.contains("Address already in use"), "{stderr}");
    assert_eq!(
        listeners(),
        vec![PORT],
        "a failed start left its port in XDP"
    );
    assert_eq!(
        prefixes(),
        pinned,
        "a failed start changed the pinned rules"
    );
    std::fs::write(&policy, format!("{POLICIES}{L7_POLICY}")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut gw = Gw::start(&topo.gw, &args, &bpf_root);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    probe.join().expect("probe");
    assert!(tries.load(Ordering::Relaxed) >= 5, "the probe did not run");
    assert_eq!(
        through.load(Ordering::Relaxed),
        0,
        "a denied connection got through during the restart"
    );
    assert_eq!(
        refused.load(Ordering::Relaxed),
        0,
        "a denied SYN reached the host while the gateway was down"
    );
    let ok = topo.allow.run(move || post(allow4, "test.com", patient));
    assert_eq!(ok.map(|(s, _)| s), Some(200), "served after the restart");
    gw.kill9();

    // A first start (nothing pinned) that cannot bind leaves nothing behind.
    llmgw::l4::detach(&bpf_root).expect("detach");
    let fresh_root = PathBuf::from("/sys/fs/bpf").join(format!("{name}-fresh"));
    let _fresh_cleanup = Cleanup {
        bpf_root: fresh_root.clone(),
    };
    std::fs::write(&policy, &taken).unwrap();
    let fresh = Command::new("nsenter")
        .arg(format!("--net={}", topo.gw.path()))
        .arg(workspace_bin("llmgw"))
        .arg("run")
        .args(&args)
        .env("API_KEY", "sk-netns-test")
        .env("LLMGW_BPF_ROOT", &fresh_root)
        .output()
        .expect("llmgw runs");
    assert!(!fresh.status.success());
    assert!(
        llmgw::l4::status(&fresh_root).is_err(),
        "a failed first start left XDP pinned: {:?}",
        llmgw::l4::status(&fresh_root).map(|s| s.links)
    );
    drop(held);
    drop(mock);
}
