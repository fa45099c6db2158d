//! Developer tasks for llmgw: install the toolchain the XDP half needs, build
//! both halves, run the gateway (with the privileges XDP needs), run every
//! test and the benchmarks. `cargo xtask --help` lists them.

mod bench;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Build, run, test and benchmark llmgw")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building the XDP half needs (idempotent): LLVM 22 from
    /// apt, bpf-linker, rust-src for the nightly toolchain, iproute2.
    Setup,
    /// Build the gateway and its embedded XDP program (after installing what
    /// is missing, as `setup` does).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Set up what is missing, build, then run the gateway with ARGS (via sudo when XDP is requested
    /// and you are not root); ARGS that start with a flag are `llmgw run`'s.
    /// `cargo xtask run -- quickstart` runs the offline example: a local mock
    /// provider and the gateway in front of it.
    Run {
        #[arg(long)]
        release: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmarks (same machine, same run, interleaved rounds).
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
    /// Set up, then run every check: fmt, clippy, unit, integration,
    /// privileged XDP and network-namespace tests, the Python client test.
    Test {
        /// Skip `cargo xtask setup` (the toolchain is known to be there).
        #[arg(long)]
        no_setup: bool,
        /// Extra arguments for `cargo test` (a test name filter, ...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Setup => setup::run(),
        Task::Build { release } => {
            setup::run()?;
            build(release)
        }
        Task::Run { release, args } => {
            setup::run()?;
            run(release, args)
        }
        Task::Test { no_setup, args } => test(no_setup, args),
        Task::Bench { which } => {
            setup::run()?;
            bench::run(which)
        }
    }
}

/// The workspace root (the parent of this crate's manifest directory).
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// Runs `cmd`, failing with the command line when it does not exit 0.
pub(crate) fn status(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs a long-lived `cmd` (the gateway) until it ends; being stopped by
/// Ctrl-C or SIGTERM is the normal way for it to end.
fn serve(cmd: &mut Command) -> Result<()> {
    use std::os::unix::process::ExitStatusExt as _;
    let status = cmd
        .status()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    // SIGINT = 2, SIGTERM = 15; a shell reports them as 130 and 143.
    let stopped =
        matches!(status.signal(), Some(2 | 15)) || matches!(status.code(), Some(130 | 143));
    if !status.success() && !stopped {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

pub(crate) fn is_root() -> bool {
    // SAFETY-free: `id -u` keeps this crate free of libc.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn build_packages(release: bool, packages: &[&str]) -> Result<()> {
    let mut cmd = cargo();
    cmd.arg("build");
    for p in packages {
        cmd.args(["--package", p]);
    }
    if release {
        cmd.arg("--release");
    }
    status(&mut cmd)
}

fn build(release: bool) -> Result<()> {
    build_packages(release, &["llmgw"])
}

pub(crate) fn bin_path(release: bool, name: &str) -> PathBuf {
    target_dir()
        .join(if release { "release" } else { "debug" })
        .join(name)
}

fn run(release: bool, mut args: Vec<String>) -> Result<()> {
    // `cargo xtask run -- --config DIR ...` means `llmgw run --config DIR ...`.
    if args.first().is_some_and(|a| a.starts_with('-')) && !is_help(&args[0]) {
        args.insert(0, "run".into());
    }
    if args.first().map(String::as_str) == Some("quickstart") {
        build_packages(release, &["llmgw", "llmgw-tests"])?;
        let mut cmd = Command::new(bin_path(release, "llmgw-quickstart"));
        cmd.arg("--llmgw")
            .arg(bin_path(release, "llmgw"))
            .arg("--examples")
            .arg(root().join("examples/quickstart"))
            .args(&args[1..]);
        return serve(&mut cmd);
    }
    build(release)?;
    let bin = bin_path(release, "llmgw");
    // Attaching XDP, and the `xdp` subcommands (status, detach, serve), need
    // root for bpf() and bpffs.
    let wants_xdp = args.first().is_some_and(|a| a == "xdp")
        || args.iter().any(|a| a.starts_with("--xdp-iface"));
    let mut cmd = if wants_xdp && !is_root() {
        let mut c = Command::new("sudo");
        c.arg("-E").arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    cmd.args(&args);
    serve(&mut cmd)
}

fn is_help(arg: &str) -> bool {
    matches!(arg, "-h" | "--help" | "-V" | "--version")
}

fn test(no_setup: bool, args: Vec<String>) -> Result<()> {
    if !no_setup {
        setup::run()?;
    }
    status(cargo().args(["fmt", "--all", "--", "--check"]))
        .context("formatting differs: run `cargo fmt --all`")?;
    status(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The end-to-end tests run the built binaries; build them first so the
    // tests find them next to their own executables.
    build_packages(false, &["llmgw", "llmgw-tests"])?;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace"]).args(&args);
    status(&mut cmd)?;
    if args.is_empty() {
        let python = python_env()?;
        python_client_test(&python)?;
        deploy_manifests_test(&python)?;
    }
    Ok(())
}

/// A virtualenv under target/ with the Python packages the checks use.
fn python_env() -> Result<PathBuf> {
    let venv = target_dir().join("pyenv");
    let python = venv.join("bin/python");
    if !python.exists() {
        status(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    status(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "openai>=1.40,<3",
        "kubernetes-validate>=1.30,<2",
    ]))?;
    Ok(python)
}

/// The Kubernetes manifests against the API schemas, strictly (unknown
/// fields are errors); their embedded configuration is checked by
/// `tests/tests/deploy.rs`.
fn deploy_manifests_test(python: &Path) -> Result<()> {
    status(
        Command::new(python)
            .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
            .arg(root().join("deploy/kubernetes/llmgw.yaml")),
    )
    .context("deploy/kubernetes/llmgw.yaml does not validate")
}

/// The official `openai` Python client against the gateway (plain,
/// streaming and converted answers), through the quickstart's mock provider
/// and through nginx as the provider over HTTP/2 and over HTTP/1.1.
fn python_client_test(python: &Path) -> Result<()> {
    for provider in ["mock", "nginx-h2", "nginx-h1"] {
        python_client_test_with(python, provider)
            .with_context(|| format!("the openai client through the {provider} provider"))?;
    }
    Ok(())
}

fn python_client_test_with(python: &Path, provider: &str) -> Result<()> {
    let mut cmd = Command::new(bin_path(false, "llmgw-quickstart"));
    cmd.arg("--provider").arg(provider);
    cmd.arg("--llmgw")
        .arg(bin_path(false, "llmgw"))
        .arg("--examples")
        .arg(root().join("examples/quickstart"))
        .arg("--port")
        .arg("0")
        .arg("--extra-config")
        .arg(root().join("tests/python/streaming.yaml"))
        .arg("--then")
        .arg(python)
        .arg(root().join("tests/python/openai_client.py"));
    status(&mut cmd)
}
