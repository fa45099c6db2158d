//! `cargo xtask run -- quickstart`: the source document's quickstart, offline.
//! Starts the mock provider (posing as dashscope.aliyuncs.com), runs
//! `llmgw run --config examples/quickstart` in front of it, prints the curl
//! to try, and with `--then CMD...` runs CMD with GATEWAY_URL set instead.
//! `--provider nginx-h2|nginx-h1` puts Debian's nginx in the mock's place
//! (a real server, over HTTP/2 or HTTP/1.1 only), for interop checks.

use std::{
    path::PathBuf,
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, ValueEnum};
use llmgw_tests::{
    free_port,
    gateway::admin_get,
    mock::MockProvider,
    nginx::{Nginx, Protocol},
    pki::Pki,
};

/// Who answers as the provider.
#[derive(Clone, Copy, ValueEnum)]
enum Provider {
    /// The project's mock (HTTP/2 and HTTP/1.1).
    Mock,
    /// nginx offering HTTP/2 (and HTTP/1.1) by ALPN.
    NginxH2,
    /// nginx offering HTTP/1.1 only.
    NginxH1,
}

/// The running provider, kept until the quickstart ends.
enum Running {
    Mock(MockProvider),
    Nginx(Nginx),
}

#[derive(Parser)]
#[command(about = "Run the quickstart offline: a mock provider and llmgw in front of it")]
struct Args {
    /// The llmgw binary.
    #[arg(long)]
    llmgw: PathBuf,
    /// The quickstart's YAML directory.
    #[arg(long)]
    examples: PathBuf,
    /// Local port for the Gateway's port 80 (0: any free port).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Who answers as the provider.
    #[arg(long, value_enum, default_value_t = Provider::Mock)]
    provider: Provider,
    /// More configuration files or directories, added to the quickstart's.
    #[arg(long)]
    extra_config: Vec<PathBuf>,
    /// Run this command (with GATEWAY_URL set) instead of waiting for Ctrl-C;
    /// exit with its status.
    #[arg(long, num_args = 1.., allow_hyphen_values = true, trailing_var_arg = true)]
    then: Vec<String>,
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("llmgw-quickstart: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode> {
    let args = Args::parse();
    let rt = tokio::runtime::Runtime::new()?;
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("mock-ca.pem");
    let (provider, addr) = match args.provider {
        Provider::Mock => {
            let mock = rt.block_on(MockProvider::start());
            mock.pki.write_ca(&ca)?;
            let addr = mock.addr;
            (Running::Mock(mock), addr)
        }
        Provider::NginxH2 | Provider::NginxH1 => {
            let pki = Pki::new();
            pki.write_ca(&ca)?;
            let protocol = match args.provider {
                Provider::NginxH1 => Protocol::Http1,
                _ => Protocol::Http2 {
                    max_concurrent_streams: 128,
                },
            };
            let nginx = Nginx::start(&pki, protocol);
            let addr = nginx.addr;
            (Running::Nginx(nginx), addr)
        }
    };
    let port = if args.port == 0 {
        free_port()
    } else {
        args.port
    };
    let admin = free_port();
    let api_key = std::env::var("API_KEY").unwrap_or_else(|_| "sk-quickstart-demo".into());
    let mut child = Command::new(&args.llmgw)
        .arg("run")
        .arg("--config")
        .arg(&args.examples)
        .args(["--bind-address", "127.0.0.1"])
        .arg("--port-map")
        .arg(format!("80={port}"))
        .arg("--admin-address")
        .arg(format!("127.0.0.1:{admin}"))
        .arg("--upstream-ca")
        .arg(&ca)
        .args(
            args.extra_config
                .iter()
                .flat_map(|c| [PathBuf::from("--config"), c.clone()]),
        )
        .arg("--resolve")
        .arg(format!("dashscope.aliyuncs.com:443:{addr}"))
        .arg("--resolve")
        .arg(format!("dashscope-intl.aliyuncs.com:443:{addr}"))
        .arg("--resolve")
        .arg(format!("dashscope-stream.aliyuncs.com:443:{addr}"))
        .env("API_KEY", &api_key)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", args.llmgw.display()))?;
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("llmgw exited with {status}");
        }
        if matches!(
            admin_get(([127, 0, 0, 1], admin).into(), "/ready"),
            Ok((200, _))
        ) {
            break;
        }
        if Instant::now() > end {
            let _ = child.kill();
            bail!("llmgw did not become ready");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let url = format!("http://localhost:{port}");
    let who = match provider {
        Running::Mock(_) => "a mock",
        Running::Nginx(_) => "nginx as",
    };
    eprintln!(
        "\nllmgw is serving the quickstart on {url}, in front of {who} dashscope.aliyuncs.com \
         ({addr}); admin on 127.0.0.1:{admin}. Try:\n\n\
         curl --location '{url}' \\\n  --header 'Content-Type: application/json' \\\n  \
         --header \"host: test.com\" \\\n  --data '{{\n    \"messages\": [\n      \
         {{\"role\": \"user\", \"content\": \"Please introduce yourself\"}}\n    ]\n  }}'\n"
    );
    let code = if let Some((cmd, rest)) = args.then.split_first() {
        let status = Command::new(cmd)
            .args(rest)
            .env("GATEWAY_URL", &url)
            .env("GATEWAY_ADMIN_URL", format!("http://127.0.0.1:{admin}"))
            .status()
            .with_context(|| format!("running {cmd}"))?;
        if status.success() {
            ExitCode::SUCCESS
        } else {
            eprintln!("llmgw-quickstart: {cmd} failed: {status}");
            ExitCode::FAILURE
        }
    } else {
        eprintln!("(Ctrl-C to stop)");
        rt.block_on(until_stopped(&mut child))?;
        ExitCode::SUCCESS
    };
    stop(&mut child);
    match provider {
        Running::Mock(m) => drop(m),
        Running::Nginx(n) => drop(n),
    }
    Ok(code)
}

/// Waits for Ctrl-C or SIGTERM (or the gateway ending by itself).
async fn until_stopped(child: &mut std::process::Child) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if let Some(status) = child.try_wait()? {
                    bail!("llmgw exited with {status}");
                }
            }
        }
    }
}

/// Stops the gateway as an operator would (SIGTERM: it drains), then for sure.
fn stop(child: &mut std::process::Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
