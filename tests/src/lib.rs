//! Test support for llmgw's end-to-end tests: a throwaway PKI, a mock
//! OpenAI-compatible provider over TLS that records what it receives, a
//! helper that runs the built `llmgw` binary, small HTTP clients, and network
//! namespaces wired with veth pairs (removed on drop) for the XDP tests.

pub mod client;
pub mod gateway;
pub mod mock;
pub mod netns;
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

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}
