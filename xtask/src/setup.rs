//! `cargo xtask setup`: installs what building and testing llmgw needs on a
//! Debian machine, and only what is missing, so a second run takes a second.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::status;

/// LLVM major version bpf-linker is built against; it must match the LLVM of
/// the nightly toolchain that compiles the eBPF crate (rustc 1.97 nightly: 22).
const LLVM_MAJOR: u32 = 22;
const BPF_LINKER_VERSION: &str = "0.13.0";

pub(crate) fn run() -> Result<()> {
    apt_packages()?;
    rust_src()?;
    bpf_linker()?;
    bpffs()?;
    Ok(())
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn sudo(program: &str) -> Command {
    if crate::is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.arg(program);
        c
    }
}

fn apt_packages() -> Result<()> {
    let llvm_dev = format!("llvm-{LLVM_MAJOR}-dev");
    // iproute2 and util-linux (nsenter) for the network-namespace tests;
    // python3 with venv for the `openai` client test and the manifest check;
    // nginx as a real provider for the interop tests and the benchmarks.
    let wanted = [
        llvm_dev.as_str(),
        "iproute2",
        "util-linux",
        "curl",
        "python3",
        "python3-venv",
        "nginx",
    ];
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|pkg| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", pkg])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !have("apt-get") {
        bail!(
            "missing packages {missing:?} and no apt-get: install them by hand \
             (LLVM {LLVM_MAJOR} with llvm-config, iproute2, util-linux)"
        );
    }
    eprintln!("xtask setup: installing {missing:?}");
    status(sudo("apt-get").arg("update").arg("-qq"))?;
    status(
        sudo("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
    )
}

fn rust_src() -> Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("rustup is needed to find the nightly toolchain")?;
    if !out.status.success() {
        bail!(
            "no nightly toolchain: the eBPF crate needs one (`rustup toolchain install nightly \
             --component rust-src`); {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        return Ok(());
    }
    eprintln!("xtask setup: adding rust-src to the nightly toolchain");
    status(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker() -> Result<()> {
    if let Ok(out) = Command::new("bpf-linker").arg("--version").output()
        && out.status.success()
        && String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION)
    {
        return Ok(());
    }
    let prefix = format!("/usr/lib/llvm-{LLVM_MAJOR}");
    if !Path::new(&prefix).join("bin/llvm-config").exists() {
        bail!("{prefix}/bin/llvm-config not found: install llvm-{LLVM_MAJOR}-dev");
    }
    eprintln!("xtask setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR}");
    status(
        Command::new("cargo")
            .env("LLVM_PREFIX", &prefix)
            .args([
                "install",
                "--locked",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{LLVM_MAJOR}")),
    )
}

/// XDP pins live under /sys/fs/bpf; mount bpffs there when we may.
fn bpffs() -> Result<()> {
    let mounted = std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(1) == Some("/sys/fs/bpf"))
        })
        .unwrap_or(false);
    if mounted || !crate::is_root() {
        return Ok(());
    }
    let _ = Command::new("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .status();
    Ok(())
}
