//! End-to-end tests of the XDP plane in network namespaces: the built
//! `llmgw xdp serve` attaches natively to the gateway side of two veth pairs
//! and must block the denied client on listener ports only (TCP and UDP,
//! IPv4 and IPv6), serve the allowed one, follow rule changes, keep blocking
//! through a `kill -9` and restart, and go away with `llmgw xdp detach`.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use llmgw_tests::{
    netns::{self, Netns, TcpServer, Topology, UdpServer, tcp_hello, udp_send},
    privileged, workspace_bin,
};

const LISTEN: u16 = 8080;
const OTHER: u16 = 9090;
const RULE4: &str = "e2e/deny-policy[0]";
const RULE6: &str = "e2e/deny-policy[1]";

fn unique(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "llmgw-t-{}-{tag}{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn sa(ip: &str, port: u16) -> SocketAddr {
    let ip: std::net::IpAddr = ip.parse().expect("ip");
    SocketAddr::new(ip, port)
}

/// `setpriv` dropping to nobody with no capabilities, to run what follows.
fn as_nobody() -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
    ]);
    c
}

/// A running `llmgw xdp serve`, with its stdout lines on a channel.
struct Serve {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Serve {
    fn start(gw: &Netns, bpf_root: &Path, rules: &Path) -> Self {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", gw.path()))
            .arg(workspace_bin("llmgw"))
            .args(["xdp", "serve", "--mode", "native"])
            .args(["--iface", netns::GW_DENY_IF, "--iface", netns::GW_ALLOW_IF])
            .arg("--rules")
            .arg(rules)
            .env("LLMGW_BPF_ROOT", bpf_root)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start llmgw xdp serve");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut s = Self { child, lines };
        s.expect_line("ready");
        s
    }

    fn expect_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let status = self.child.try_wait();
        panic!("no {prefix:?} line from llmgw xdp serve (exit: {status:?})");
    }

    fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Cleans up what a test pinned and wrote, even when it fails.
struct Cleanup {
    bpf_root: PathBuf,
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = llmgw::l4::detach(&self.bpf_root);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Detaches the planes pinned under these roots, even when a test fails.
struct Detach(Vec<PathBuf>);

impl Drop for Detach {
    fn drop(&mut self) {
        for r in &self.0 {
            let _ = llmgw::l4::detach(r);
        }
    }
}

/// A veth pair `d0`/`d1`, both up, inside `ns`.
fn veth_pair(ns: &Netns) {
    ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
    ns.ip(&["link", "set", "d0", "up"]);
    ns.ip(&["link", "set", "d1", "up"]);
}

fn write_rules(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write rules");
    std::fs::rename(&tmp, path).expect("rename rules");
}

fn deny_rules() -> String {
    format!(
        "listen {LISTEN}\ndeny {} {RULE4}\ndeny {} {RULE6}\n",
        netns::DENY_V4_NET,
        netns::DENY_V6_NET
    )
}

fn from(ns: &Netns, addr: SocketAddr, timeout_ms: u64) -> bool {
    ns.run(move || tcp_hello(addr, Duration::from_millis(timeout_ms)))
}

fn drops(bpf_root: &Path, rule: &str) -> u64 {
    llmgw::l4::status(bpf_root)
        .expect("status from pins")
        .stats
        .rule(rule)
        .map_or(0, |r| r.packets)
}

#[test]
fn xdp_blocks_denied_client_on_listener_ports_across_restart() {
    if !privileged("xdp_blocks_denied_client_on_listener_ports_across_restart") {
        return;
    }
    let name = unique("e");
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let bpf_root = PathBuf::from("/sys/fs/bpf").join(&name);
    let _cleanup = Cleanup {
        bpf_root: bpf_root.clone(),
        dir: dir.clone(),
    };
    let topo = Topology::new(&name);
    let _tcp = TcpServer::start(&topo.gw, LISTEN);
    let _other = TcpServer::start(&topo.gw, OTHER);
    let udp = UdpServer::start(&topo.gw, LISTEN);

    let gw4 = sa(netns::GW_V4_DENY_SIDE, LISTEN);
    let gw6 = sa(netns::GW_V6_DENY_SIDE, LISTEN);
    let gw4_other = sa(netns::GW_V4_DENY_SIDE, OTHER);
    let gw6_other = sa(netns::GW_V6_DENY_SIDE, OTHER);
    let allow4 = sa(netns::GW_V4_ALLOW_SIDE, LISTEN);
    let allow6 = sa(netns::GW_V6_ALLOW_SIDE, LISTEN);

    // Baseline without XDP: everyone gets through (so the test can fail).
    assert!(from(&topo.deny, gw4, 2000), "baseline v4");
    assert!(from(&topo.deny, gw6, 2000), "baseline v6");
    topo.deny.run(move || udp_send(gw4, 5));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(udp.received.load(Ordering::Relaxed), 5, "baseline udp");

    let rules = dir.join("rules.txt");
    write_rules(&rules, &deny_rules());
    let mut serve = Serve::start(&topo.gw, &bpf_root, &rules);
    let links = netns::ip_out(&["-n", &topo.gw.name, "link", "show", netns::GW_DENY_IF]);
    assert!(
        links.contains("xdp"),
        "no native XDP on {}: {links}",
        netns::GW_DENY_IF
    );

    // Denied client: listener port blocked, other port open.
    assert!(!from(&topo.deny, gw4, 500), "denied v4 got through");
    assert!(!from(&topo.deny, gw6, 500), "denied v6 got through");
    assert!(
        from(&topo.deny, gw4_other, 2000),
        "denied v4 cut off from port {OTHER}"
    );
    assert!(
        from(&topo.deny, gw6_other, 2000),
        "denied v6 cut off from port {OTHER}"
    );
    // Allowed client served.
    assert!(from(&topo.allow, allow4, 2000), "allowed v4");
    assert!(from(&topo.allow, allow6, 2000), "allowed v6");
    // UDP from the denied client is dropped and counted.
    let before = drops(&bpf_root, RULE4);
    let received = udp.received.load(Ordering::Relaxed);
    topo.deny.run(move || udp_send(gw4, 20));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        udp.received.load(Ordering::Relaxed),
        received,
        "udp got through"
    );
    assert!(
        drops(&bpf_root, RULE4) >= before + 20,
        "udp drops not counted"
    );
    let before6 = drops(&bpf_root, RULE6);
    topo.deny.run(move || udp_send(gw6, 10));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        udp.received.load(Ordering::Relaxed),
        received,
        "udp v6 got through"
    );
    assert!(
        drops(&bpf_root, RULE6) >= before6 + 10,
        "udp v6 drops not counted"
    );
    topo.allow.run(move || udp_send(allow4, 3));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        udp.received.load(Ordering::Relaxed),
        received + 3,
        "allowed udp"
    );

    // `llmgw xdp status` from outside the namespace and the owner.
    let out = Command::new(workspace_bin("llmgw"))
        .args(["xdp", "status"])
        .env("LLMGW_BPF_ROOT", &bpf_root)
        .output()
        .expect("llmgw xdp status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "status failed: {text}");
    for want in [
        netns::GW_DENY_IF,
        netns::GW_ALLOW_IF,
        "native",
        RULE4,
        RULE6,
        "listener ports: 8080",
    ] {
        assert!(text.contains(want), "status lacks {want:?}:\n{text}");
    }

    // kill -9 the owner and restart it while probing continuously.
    let stop = Arc::new(AtomicBool::new(false));
    let got_through = Arc::new(AtomicU64::new(0));
    let attempts = Arc::new(AtomicU64::new(0));
    let probe = {
        let (stop, got, att) = (stop.clone(), got_through.clone(), attempts.clone());
        topo.deny.spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                att.fetch_add(1, Ordering::Relaxed);
                if tcp_hello(gw4, Duration::from_millis(100)) {
                    got.fetch_add(1, Ordering::Relaxed);
                }
                let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
                let _ = s.send_to(b"probe", gw4);
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let udp_before = udp.received.load(Ordering::Relaxed);
    serve.kill9();
    std::thread::sleep(Duration::from_millis(500));
    let counted_before = drops(&bpf_root, RULE4);
    let mut serve = Serve::start(&topo.gw, &bpf_root, &rules);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    probe.join().expect("probe thread");
    assert!(attempts.load(Ordering::Relaxed) >= 5, "too few probes");
    assert_eq!(
        got_through.load(Ordering::Relaxed),
        0,
        "denied client got through during restart"
    );
    assert_eq!(
        udp.received.load(Ordering::Relaxed),
        udp_before,
        "udp got through during restart"
    );
    // Counters and names survived: the restarted plane kept the rule ids.
    assert!(
        drops(&bpf_root, RULE4) >= counted_before,
        "counters reset by the restart"
    );
    assert!(from(&topo.allow, allow4, 2000), "allowed v4 after restart");
    assert!(!from(&topo.deny, gw4, 500), "denied v4 after restart");

    // Removing the rules restores the denied client.
    write_rules(&rules, &format!("listen {LISTEN}\n"));
    serve.expect_line("synced");
    assert!(from(&topo.deny, gw4, 2000), "denied v4 not restored");
    assert!(from(&topo.deny, gw6, 2000), "denied v6 not restored");
    // ... and putting them back blocks it again.
    write_rules(&rules, &deny_rules());
    serve.expect_line("synced");
    assert!(!from(&topo.deny, gw4, 500), "denied v4 not blocked again");

    // `llmgw xdp detach` while the owner still runs: links, maps, pins go.
    let out = Command::new(workspace_bin("llmgw"))
        .args(["xdp", "detach"])
        .env("LLMGW_BPF_ROOT", &bpf_root)
        .output()
        .expect("llmgw xdp detach");
    assert!(
        out.status.success(),
        "detach: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!llmgw::l4::pin_dir(&bpf_root).exists(), "pins left behind");
    assert!(from(&topo.deny, gw4, 2000), "still blocked after detach");
    let links = netns::ip_out(&["-n", &topo.gw.name, "link", "show", netns::GW_DENY_IF]);
    assert!(!links.contains("prog/xdp"), "XDP still attached: {links}");
    drop(serve);
}

#[test]
fn without_privileges_the_plane_is_off() {
    if !privileged("without_privileges_the_plane_is_off") {
        return;
    }
    let name = unique("u");
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let bpf_root = PathBuf::from("/sys/fs/bpf").join(&name);
    let _cleanup = Cleanup {
        bpf_root: bpf_root.clone(),
        dir: dir.clone(),
    };
    let rules = dir.join("rules.txt");
    write_rules(&rules, &deny_rules());
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    std::fs::set_permissions(&rules, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let out = as_nobody()
        .arg(workspace_bin("llmgw"))
        .args(["xdp", "serve", "--iface", "lo", "--rules"])
        .arg(&rules)
        .env("LLMGW_BPF_ROOT", &bpf_root)
        .output()
        .expect("setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "exit status; stderr: {err}");
    assert!(err.contains("L4 plane off"), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.contains("L4 plane off")).count(),
        1,
        "{err}"
    );
    assert!(!bpf_root.exists());
}

/// `auto` falls back to generic mode on a device without native XDP (a
/// dummy), `native` refuses it, and an interface name with a dot (as VLAN
/// interfaces have) pins and adopts fine.
#[test]
fn auto_mode_falls_back_to_generic() {
    if !privileged("auto_mode_falls_back_to_generic") {
        return;
    }
    let name = unique("a");
    let bpf_root = PathBuf::from("/sys/fs/bpf").join(&name);
    let _cleanup = Cleanup {
        bpf_root: bpf_root.clone(),
        dir: std::env::temp_dir().join(&name),
    };
    let ns = Netns::new(&format!("{name}-gw"));
    ns.ip(&["link", "add", "dm.5", "type", "bridge"]);
    ns.ip(&["link", "set", "dm.5", "up"]);
    let rules = llmgw::l4::parse_rules(&deny_rules()).expect("rules");
    let root = bpf_root.clone();
    let r = rules.clone();
    let (modes, native_err) = ns.run(move || {
        let opts = llmgw::l4::PlaneOptions {
            bpf_root: root,
            v4_filter: true,
        };
        let iface = vec!["dm.5".to_string()];
        let native = llmgw::l4::Plane::start_with(&opts, &iface, llmgw::l4::XdpMode::Native, &r)
            .err()
            .map(|e| e.to_string());
        let plane = llmgw::l4::Plane::start_with(&opts, &iface, llmgw::l4::XdpMode::Auto, &r)
            .expect("auto mode");
        let modes = plane.interfaces();
        drop(plane);
        // Adopting the pinned link works too.
        let again = llmgw::l4::Plane::start_with(&opts, &iface, llmgw::l4::XdpMode::Auto, &r)
            .expect("adopt");
        assert_eq!(again.interfaces(), modes);
        (modes, native)
    });
    assert_eq!(modes, vec![("dm.5".to_string(), "skb")]);
    assert!(native_err.is_some(), "native mode on a bridge should fail");
    let st = llmgw::l4::status(&bpf_root).expect("status");
    assert_eq!(st.links.len(), 1);
    assert_eq!(
        (st.links[0].iface.as_str(), st.links[0].mode.as_str()),
        ("dm.5", "skb")
    );
    assert_ne!(st.links[0].ifindex, 0);
    let links = netns::ip_out(&["-n", &ns.name, "link", "show", "dm.5"]);
    assert!(links.contains("xdpgeneric"), "{links}");

    // The interface is deleted and re-created: the pinned link is defunct;
    // the next start replaces it instead of failing.
    let old_ifindex = st.links[0].ifindex;
    ns.ip(&["link", "del", "dm.5"]);
    ns.ip(&["link", "add", "dm.5", "type", "bridge"]);
    let dead = llmgw::l4::status(&bpf_root).expect("status");
    assert_eq!(dead.links[0].ifindex, 0, "link should be defunct");
    let root = bpf_root.clone();
    let modes = ns.run(move || {
        let opts = llmgw::l4::PlaneOptions {
            bpf_root: root,
            v4_filter: true,
        };
        llmgw::l4::Plane::start_with(
            &opts,
            &["dm.5".to_string()],
            llmgw::l4::XdpMode::Auto,
            &rules,
        )
        .expect("start over a defunct link")
        .interfaces()
    });
    assert_eq!(modes, vec![("dm.5".to_string(), "skb")]);
    let st = llmgw::l4::status(&bpf_root).expect("status");
    assert_eq!(st.links.len(), 1);
    assert!(st.links[0].ifindex != 0 && st.links[0].ifindex != old_ifindex);
}

/// A gateway of an older pin layout left its link on an interface: a new
/// one takes that link over (the program swapped in place, so the
/// interface is never without XDP) and removes the old layout.
#[test]
fn links_of_an_older_pin_layout_are_taken_over_in_place() {
    if !privileged("links_of_an_older_pin_layout_are_taken_over_in_place") {
        return;
    }
    use llmgw::l4::{self, DenyEntry, L4Rules, Plane, PlaneOptions, XdpMode};
    let name = unique("layout");
    let ns = Netns::new(&name);
    veth_pair(&ns);
    let root = PathBuf::from("/sys/fs/bpf").join(&name);
    let _cleanup = Detach(vec![root.clone()]);
    let opts = PlaneOptions {
        bpf_root: root.clone(),
        v4_filter: true,
    };
    let rules = L4Rules {
        entries: vec![DenyEntry {
            net: "10.0.0.0/8".parse().unwrap(),
            rule: "ns/old[0]".into(),
            ports: None,
        }],
        listener_ports: vec![80],
        destinations: Default::default(),
    };
    let ifaces = vec!["d0".to_string()];
    let (o, i, r) = (opts.clone(), ifaces.clone(), rules.clone());
    ns.run(move || drop(Plane::start_with(&o, &i, XdpMode::Auto, &r).expect("first start")));
    let link_before = l4::status(&root).unwrap().links[0].link_id;
    // Make the pins look like another layout's.
    let current = l4::pin_dir(&root);
    let older = root.join("v1");
    std::fs::rename(&current, &older).expect("rename the layout directory");

    let (o, i, r) = (opts.clone(), ifaces.clone(), rules.clone());
    ns.run(move || drop(Plane::start_with(&o, &i, XdpMode::Auto, &r).expect("second start")));
    assert!(!older.exists(), "the older layout was left behind");
    let st = l4::status(&root).unwrap();
    assert_eq!(st.links.len(), 1, "{:?}", st.links);
    assert_eq!(st.links[0].iface, "d0");
    assert_eq!(st.links[0].link_id, link_before, "not the same link");
    assert_eq!(st.prefixes.len(), 1);
    assert!(l4::detach(&root).unwrap());
    assert!(!root.exists());
}

/// `llmgw run` with `--xdp-iface`: without privileges the L4 plane is off
/// (one log line) and the gateway serves anyway; as root, an interface that
/// does not exist is a startup error that names it.
#[test]
fn gateway_runs_without_xdp_privileges_and_refuses_an_unknown_interface() {
    if !privileged("gateway_runs_without_xdp_privileges_and_refuses_an_unknown_interface") {
        return;
    }
    use llmgw_tests::gateway::{admin_get, examples};
    let name = unique("run");
    let bpf_root = PathBuf::from("/sys/fs/bpf").join(&name);
    let (port, admin) = (llmgw_tests::free_port(), llmgw_tests::free_port());
    let args = |iface: &str| -> Vec<String> {
        [
            "run",
            "--config",
            &examples().join("quickstart").display().to_string(),
            "--bind-address",
            "127.0.0.1",
            "--port-map",
            &format!("80={port}"),
            "--admin-address",
            &format!("127.0.0.1:{admin}"),
            "--access-log",
            "off",
            "--xdp-iface",
            iface,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };

    let mut child = as_nobody()
        .arg(workspace_bin("llmgw"))
        .args(args("lo"))
        .env("API_KEY", "sk-unprivileged")
        .env("LLMGW_BPF_ROOT", &bpf_root)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv llmgw run");
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        if matches!(admin_get(sa("127.0.0.1", admin), "/ready"), Ok((200, _))) {
            break true;
        }
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let out = child.wait_with_output().expect("llmgw output");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(ready, "the unprivileged gateway did not serve: {err}");
    assert_eq!(
        err.lines().filter(|l| l.contains("L4 plane off")).count(),
        1,
        "{err}"
    );
    assert!(!bpf_root.exists());

    let out = Command::new(workspace_bin("llmgw"))
        .args(args("llmgw-nope0"))
        .env("API_KEY", "sk-root")
        .env("LLMGW_BPF_ROOT", &bpf_root)
        .output()
        .expect("llmgw run");
    let err = String::from_utf8_lossy(&out.stderr);
    // Interfaces are resolved before anything is pinned: nothing is left.
    let left = bpf_root.exists();
    let _ = llmgw::l4::detach(&bpf_root);
    assert!(
        !out.status.success(),
        "started without its interface: {err}"
    );
    assert!(err.contains("llmgw-nope0"), "{err}");
    assert!(!left, "a failed start left pins behind");

    // A pin root that is not on bpffs (a mistyped --bpf-root, a missing
    // mount) is a configuration error, not "no privileges": exit non-zero.
    let not_bpffs = tempfile::tempdir().expect("tempdir");
    let out = Command::new(workspace_bin("llmgw"))
        .args(args("lo"))
        .env("API_KEY", "sk-root")
        .env("LLMGW_BPF_ROOT", not_bpffs.path().join("llmgw"))
        .output()
        .expect("llmgw run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "served without its pin root: {err}");
    assert!(err.contains("not a bpf filesystem"), "{err}");
}

/// Pins are named by interface. Another network namespace with an interface
/// of the same name, sharing the pin root, must not adopt (or detach) a link
/// that is not on its interface; the namespace that made it still can.
#[test]
fn a_link_pinned_in_another_namespace_is_not_adopted() {
    if !privileged("a_link_pinned_in_another_namespace_is_not_adopted") {
        return;
    }
    use llmgw::l4::{self, L4Error, L4Rules, Plane, PlaneOptions, XdpMode};
    let (na, nb) = (unique("forA"), unique("forB"));
    let (a, b) = (Netns::new(&na), Netns::new(&nb));
    for ns in [&a, &b] {
        veth_pair(ns);
    }
    let root = PathBuf::from("/sys/fs/bpf").join(&na);
    let _cleanup = Detach(vec![root.clone()]);
    let opts = PlaneOptions {
        bpf_root: root.clone(),
        v4_filter: true,
    };
    let rules = L4Rules {
        entries: Vec::new(),
        listener_ports: vec![80],
        destinations: Default::default(),
    };
    let ifaces = vec!["d0".to_string()];
    let start = |ns: &Netns| {
        let (o, i, r) = (opts.clone(), ifaces.clone(), rules.clone());
        ns.run(move || {
            Plane::start_with(&o, &i, XdpMode::Auto, &r)
                .map(drop)
                .map_err(Box::new)
        })
    };
    start(&a).expect("first start in A");
    let link = l4::status(&root).unwrap().links[0].link_id;
    match start(&b).map_err(|e| *e) {
        Err(L4Error::ForeignPin { iface, .. }) => assert_eq!(iface, "d0"),
        other => panic!("B adopted A's link: {other:?}"),
    }
    // A's link is untouched, and A adopts it again.
    start(&a).expect("A again");
    assert_eq!(l4::status(&root).unwrap().links[0].link_id, link);
    assert!(a.run(|| netns::ip_out(&["-d", "link", "show", "d0"]).contains("xdp")));
    assert!(!b.run(|| netns::ip_out(&["-d", "link", "show", "d0"]).contains("xdp")));
}

/// An interface that already has an XDP program (here: another pin root's)
/// is refused with a message that says so, in any mode.
#[test]
fn an_interface_with_another_xdp_program_is_refused_clearly() {
    if !privileged("an_interface_with_another_xdp_program_is_refused_clearly") {
        return;
    }
    use llmgw::l4::{L4Rules, Plane, PlaneOptions, XdpMode};
    let name = unique("busy");
    let ns = Netns::new(&name);
    veth_pair(&ns);
    let roots = [
        PathBuf::from("/sys/fs/bpf").join(format!("{name}-a")),
        PathBuf::from("/sys/fs/bpf").join(format!("{name}-b")),
    ];
    let _cleanup = Detach(roots.to_vec());
    let start = |root: &PathBuf, mode: XdpMode| {
        let o = PlaneOptions {
            bpf_root: root.clone(),
            v4_filter: true,
        };
        let r = L4Rules {
            entries: Vec::new(),
            listener_ports: vec![80],
            destinations: Default::default(),
        };
        ns.run(move || {
            Plane::start_with(&o, &["d0".to_string()], mode, &r)
                .map(drop)
                .map_err(|e| e.to_string())
        })
    };
    start(&roots[0], XdpMode::Auto).expect("first program");
    for mode in [XdpMode::Auto, XdpMode::Native] {
        let err = start(&roots[1], mode).expect_err("a second program on d0");
        assert!(
            err.contains("another XDP program") && err.contains("d0"),
            "{mode}: {err}"
        );
    }
}

/// An IPv6 options header of `(n8 + 1) * 8` bytes (next header left for the
/// kernel), filled with experimental options the receiver skips.
fn options_header(n8: u8) -> Vec<u8> {
    let mut h = vec![0u8, n8];
    let mut rem = (usize::from(n8) + 1) * 8 - 2;
    while rem > 0 {
        // An option is 2 bytes of type and length, then up to 255 of data.
        let data = if rem <= 257 {
            rem - 2
        } else if rem - 257 >= 2 {
            255
        } else {
            250
        };
        h.extend_from_slice(&[0x1e, data as u8]);
        h.extend(std::iter::repeat_n(0u8, data));
        rem -= data + 2;
    }
    h
}

/// A TCP connection to `to` whose packets carry a hop-by-hop and a
/// destination-options header of `ext` bytes each (none when 0): whether it
/// was established within a second.
fn connects_with_options(to: std::net::Ipv6Addr, port: u16, ext: Option<u8>) -> bool {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    // SAFETY: plain socket(2), owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: a new socket nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let set = |level: i32, name: i32, v: &[u8]| {
        // SAFETY: `v` is valid for its length.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                name,
                v.as_ptr().cast(),
                v.len() as u32,
            )
        };
        assert_eq!(
            r,
            0,
            "setsockopt {name}: {}",
            std::io::Error::last_os_error()
        );
    };
    if let Some(n8) = ext {
        let h = options_header(n8);
        set(libc::IPPROTO_IPV6, libc::IPV6_HOPOPTS, &h);
        set(libc::IPPROTO_IPV6, libc::IPV6_DSTOPTS, &h);
    }
    // A blocking connect gives up after SO_SNDTIMEO.
    let tv = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: a timeval, by value.
    let tv_bytes = unsafe {
        std::slice::from_raw_parts(
            (&tv as *const libc::timeval).cast::<u8>(),
            size_of::<libc::timeval>(),
        )
    };
    set(libc::SOL_SOCKET, libc::SO_SNDTIMEO, tv_bytes);
    // SAFETY: an all-zero sockaddr_in6 is valid; fields set below.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sa.sin6_port = port.to_be();
    sa.sin6_addr.s6_addr = to.octets();
    // SAFETY: `sa` is a sockaddr_in6 of the size given.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in6).cast(),
            size_of::<libc::sockaddr_in6>() as u32,
        )
    };
    r == 0
}

/// A denied IPv6 client that stacks option headers so long (2 KiB each, on
/// a jumbo-frame link) that the port lies past what the program reads is
/// still dropped: the port is unknown, and the source is denied.
#[test]
fn ipv6_headers_past_the_parse_bound_do_not_get_a_denied_client_through() {
    if !privileged("ipv6_headers_past_the_parse_bound_do_not_get_a_denied_client_through") {
        return;
    }
    use llmgw::l4::{self, DenyEntry, L4Rules, Plane, PlaneOptions, XdpMode};
    let name = unique("jumbo");
    let topo = Topology::new(&name);
    for (ns, dev) in [
        (&topo.gw, netns::GW_DENY_IF),
        (&topo.gw, netns::GW_ALLOW_IF),
        (&topo.deny, "eth0"),
        (&topo.allow, "eth0"),
    ] {
        ns.ip(&["link", "set", dev, "mtu", "9000"]);
    }
    let root = PathBuf::from("/sys/fs/bpf").join(&name);
    let _cleanup = Detach(vec![root.clone()]);
    let _server = TcpServer::start(&topo.gw, 8080);
    let o = PlaneOptions {
        bpf_root: root.clone(),
        v4_filter: true,
    };
    let r = L4Rules {
        entries: vec![DenyEntry {
            net: netns::DENY_V6_NET.parse().unwrap(),
            rule: "ns/deny[0]".into(),
            ports: None,
        }],
        listener_ports: vec![8080],
        destinations: Default::default(),
    };
    let ifaces = vec![
        netns::GW_DENY_IF.to_string(),
        netns::GW_ALLOW_IF.to_string(),
    ];
    // Generic mode: veth takes no native XDP at this MTU.
    let plane = topo
        .gw
        .run(move || Plane::start_with(&o, &ifaces, XdpMode::Skb, &r).map_err(|e| e.to_string()))
        .expect("attach");
    let deny_side: std::net::Ipv6Addr = netns::GW_V6_DENY_SIDE.parse().unwrap();
    let allow_side: std::net::Ipv6Addr = netns::GW_V6_ALLOW_SIDE.parse().unwrap();
    // The kernel takes such packets: an allowed client connects with them.
    assert!(
        topo.allow
            .run(move || connects_with_options(allow_side, 8080, Some(254))),
        "an allowed client with 2 KiB option headers did not connect"
    );
    assert!(
        !topo
            .deny
            .run(move || connects_with_options(deny_side, 8080, None))
    );
    assert!(
        !topo
            .deny
            .run(move || connects_with_options(deny_side, 8080, Some(254))),
        "a denied client got through with 2 KiB option headers"
    );
    let st = l4::status(&root).unwrap();
    assert!(st.stats.counter("drop_unknown_port") > 0, "{:?}", st.stats);
    drop(plane);
}
