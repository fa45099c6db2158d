//! Helpers for llmgw's end-to-end tests: network namespaces wired with veth
//! pairs (removed on drop), running code inside a namespace, tiny TCP/UDP
//! servers and clients, the built binaries, the root-or-skip gate.

pub mod netns;

use std::path::PathBuf;

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
