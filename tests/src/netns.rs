//! Network namespaces for end-to-end tests: a gateway namespace wired by veth
//! pairs to a "deny" and an "allow" client namespace (IPv4 and IPv6), code
//! run inside a namespace from a thread, small servers and probes. Every
//! namespace is deleted when its guard drops, even after a failed assertion.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

/// Runs `ip ARGS`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run `ip` (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ip ARGS` stdout.
pub fn ip_out(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run `ip`");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace (`/run/netns/NAME`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Self {
        // A leftover from a killed run of the same pid would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        ip(&["netns", "add", name]);
        let ns = Self { name: name.into() };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        ip(&a);
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs `f` on a fresh thread that has entered this namespace; sockets
    /// it creates live in the namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .expect("thread in netns panicked")
    }

    /// Like [`Netns::run`], without waiting.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let path = self.path();
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Moves the calling thread into the network namespace at `path`.
fn enter(path: &str) {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: setns on a valid namespace fd affects only this thread.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// Gateway namespace with two client namespaces:
///
/// | link | gateway side | client side |
/// |---|---|---|
/// | `gw-deny` / deny `eth0` | 10.201.1.1/24, fd00:201:1::1/64 | .2, ::2 |
/// | `gw-allow` / allow `eth0` | 10.201.2.1/24, fd00:201:2::1/64 | .2, ::2 |
pub struct Topology {
    // Field order is drop order: clients first, the gateway last.
    pub deny: Netns,
    pub allow: Netns,
    pub gw: Netns,
}

pub const GW_DENY_IF: &str = "gw-deny";
pub const GW_ALLOW_IF: &str = "gw-allow";
pub const GW_V4_DENY_SIDE: &str = "10.201.1.1";
pub const GW_V4_ALLOW_SIDE: &str = "10.201.2.1";
pub const GW_V6_DENY_SIDE: &str = "fd00:201:1::1";
pub const GW_V6_ALLOW_SIDE: &str = "fd00:201:2::1";
pub const DENY_V4_NET: &str = "10.201.1.0/24";
pub const DENY_V6_NET: &str = "fd00:201:1::/64";

impl Topology {
    /// Namespaces `<prefix>-gw`, `<prefix>-deny`, `<prefix>-allow`.
    pub fn new(prefix: &str) -> Self {
        let gw = Netns::new(&format!("{prefix}-gw"));
        let deny = Netns::new(&format!("{prefix}-deny"));
        let allow = Netns::new(&format!("{prefix}-allow"));
        let topo = Self { deny, allow, gw };
        for (gw_if, client, n) in [(GW_DENY_IF, &topo.deny, 1), (GW_ALLOW_IF, &topo.allow, 2)] {
            topo.gw.ip(&[
                "link",
                "add",
                gw_if,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &client.name,
            ]);
            topo.gw
                .ip(&["addr", "add", &format!("10.201.{n}.1/24"), "dev", gw_if]);
            topo.gw.ip(&[
                "addr",
                "add",
                &format!("fd00:201:{n}::1/64"),
                "dev",
                gw_if,
                "nodad",
            ]);
            topo.gw.ip(&["link", "set", gw_if, "up"]);
            client.ip(&["addr", "add", &format!("10.201.{n}.2/24"), "dev", "eth0"]);
            client.ip(&[
                "addr",
                "add",
                &format!("fd00:201:{n}::2/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
            client.ip(&["link", "set", "eth0", "up"]);
        }
        topo
    }
}

/// A TCP server that greets every connection with `hello\n`, and counts.
pub struct TcpServer {
    stop: Arc<AtomicBool>,
    pub accepted: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl TcpServer {
    /// Listens on `[::]:port` (dual stack) inside `ns`.
    pub fn start(ns: &Netns, port: u16) -> Self {
        let listener = ns.run(move || {
            let l = TcpListener::bind(("::", port)).expect("bind test server");
            l.set_nonblocking(true).expect("nonblocking");
            l
        });
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (s, a) = (stop.clone(), accepted.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        a.fetch_add(1, Ordering::Relaxed);
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.write_all(b"hello\n");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            stop,
            accepted,
            thread: Some(thread),
        }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP sink that counts datagrams.
pub struct UdpServer {
    stop: Arc<AtomicBool>,
    pub received: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl UdpServer {
    pub fn start(ns: &Netns, port: u16) -> Self {
        let sock = ns.run(move || {
            let s = UdpSocket::bind(("::", port)).expect("bind udp");
            s.set_read_timeout(Some(Duration::from_millis(20)))
                .expect("timeout");
            s
        });
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let (s, r) = (stop.clone(), received.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if sock.recv_from(&mut buf).is_ok() {
                    r.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Self {
            stop,
            received,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// From inside the caller's namespace: connects and reads the greeting.
pub fn tcp_hello(addr: SocketAddr, timeout: Duration) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(timeout));
    let mut buf = [0u8; 6];
    s.read_exact(&mut buf).is_ok() && &buf == b"hello\n"
}

/// From inside the caller's namespace: sends `n` datagrams.
pub fn udp_send(addr: SocketAddr, n: usize) {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("addr")
    } else {
        "[::]:0".parse().expect("addr")
    };
    let s = UdpSocket::bind(bind).expect("bind udp client");
    for i in 0..n {
        let _ = s.send_to(format!("ping {i}").as_bytes(), addr);
    }
}
