//! Test support for llmgw's end-to-end tests: a throwaway PKI, a mock
//! OpenAI-compatible provider over TLS that records what it receives, a
//! helper that runs the built `llmgw` binary, Debian's nginx as a real
//! provider, small HTTP clients, and network
//! namespaces wired with veth pairs (removed on drop) for the XDP tests.

pub mod client;
pub mod gateway;
pub mod mock;
pub mod netns;
pub mod nginx;
pub mod pki;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

/// Whether privileged tests may run: true as root; without root, skips (with
/// a message) when `LLMGW_SKIP_PRIVILEGED=1`, else fails with the reason.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("LLMGW_SKIP_PRIVILEGED").as_deref() == Ok("1") {
        // Straight to stderr: the test harness captures `eprintln!`.
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!("SKIPPED {test}: needs root (LLMGW_SKIP_PRIVILEGED=1)\n").as_bytes(),
        );
        return false;
    }
    panic!(
        "{test} needs root (network namespaces, XDP); run as root, or set \
         LLMGW_SKIP_PRIVILEGED=1 to skip privileged tests"
    );
}

/// A binary of this workspace, next to the test executable
/// (`target/debug/NAME`); `cargo xtask test` builds them first.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/TEST-HASH -> target/debug/NAME
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("test executable in target/<profile>/deps");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build -p llmgw`, which `cargo xtask test` does)",
        bin.display()
    );
    bin
}

/// Retries `f` until it returns `Some` or `patience` runs out.
pub async fn eventually<T, F, Fut>(patience: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + patience;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A port free on 127.0.0.1 right now, never handed out before by this
/// process, and below the kernel's ephemeral range: the kernel gives ports
/// in that range to outgoing connections (other tests' clients, the
/// gateway's upstream connections), which could take a port between this
/// call and the gateway's bind. Test binaries run one after another; each
/// starts at an offset from its pid.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 10_000;
    let high = ephemeral_low().clamp(LOW + 1_000, 65_535);
    let span = high - LOW;
    let _ = NEXT.compare_exchange(
        0,
        1 + (std::process::id() * 97) % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{high} on 127.0.0.1")
}

/// The lowest port of `net.ipv4.ip_local_port_range` (32768 if unreadable).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// Raises this process's soft open-file limit to its hard limit (tests that
/// hold hundreds of connections); returns the soft limit now in force.
pub fn raise_open_files() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
            return lim.rlim_max;
        }
    }
    lim.rlim_cur
}
