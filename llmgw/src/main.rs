//! The `llmgw` command line: parses flags and calls the library.

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use clap::Parser;
use llmgw::{
    cli::{Cli, Command, ConfigArgs, LogFormat, RunArgs, XdpCommand},
    config::load::ProcessEnv,
    l4::{self, L4Rules, Plane, PlaneOptions, XdpMode},
    model,
    serve::{self, Hooks, ServeError, ServeOptions},
};

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Attaches XDP before anything is served (adopting pinned state from a
/// previous run, so protection never lapses). `None` when no interface is
/// asked for or the privileges are missing (one log line says so).
fn start_l4(opts: &ServeOptions, run: &RunArgs) -> Result<Option<l4::Follower>> {
    if run.xdp_ifaces.is_empty() {
        // A program pinned by an earlier run stays attached (its pins keep it)
        // and keeps enforcing the rules it was last given: say so.
        match l4::status(&run.bpf_root) {
            Ok(st) if !st.links.is_empty() => {
                let ifaces: Vec<&str> = st.links.iter().map(|l| l.iface.as_str()).collect();
                tracing::warn!(
                    pinned = %st.dir.display(),
                    prefixes = st.prefixes.len(),
                    "L4 plane not managed: no --xdp-iface, but XDP pinned by an earlier run is \
                     still attached to {} with its last rules, which this run does not update; \
                     pass --xdp-iface to manage it or run `llmgw xdp detach` to remove it",
                    ifaces.join(", ")
                );
            }
            _ => tracing::info!("L4 plane off: no --xdp-iface; the L7 plane enforces every rule"),
        }
        return Ok(None);
    }
    // The rules of the configuration as it is now; serving compiles it again
    // and the follower catches up with any difference.
    let rules = match model::load(&opts.config, &opts.settings, &ProcessEnv) {
        Ok(s) => model::xdp::rules(&s),
        Err(_) => {
            // `serve` reports the errors and exits. Pinned XDP state from an
            // earlier run is left alone: it keeps its rules until a
            // configuration that compiles replaces them.
            tracing::warn!(
                "L4 plane untouched: the configuration has errors; XDP state pinned by an \
                 earlier run, if any, keeps its rules"
            );
            return Ok(None);
        }
    };
    let plane_opts = PlaneOptions {
        bpf_root: run.bpf_root.clone(),
        ..PlaneOptions::default()
    };
    match Plane::start_with(&plane_opts, &run.xdp_ifaces, run.xdp_mode, &rules) {
        Ok(plane) => {
            let ifaces: Vec<String> = plane
                .interfaces()
                .iter()
                .map(|(i, m)| format!("{i} ({m})"))
                .collect();
            tracing::info!(
                prefixes = rules.entries.len(),
                "L4 plane on: XDP attached to {}",
                ifaces.join(", ")
            );
            Ok(Some(
                l4::Follower::start(plane).context("starting the L4 thread")?,
            ))
        }
        Err(e) if e.is_unavailable() => {
            tracing::warn!("L4 plane off: {e}; the L7 plane enforces every rule");
            Ok(None)
        }
        Err(e) => Err(anyhow::Error::new(e).context("attaching XDP (--xdp-iface)")),
    }
}

fn run_gateway(config: ConfigArgs, run: RunArgs) -> Result<ExitCode> {
    init_logging(run.log_format);
    let opts = run.serve_options(&config)?;
    // The control plane (signals, reloads, admin server) runs here; the
    // data plane runs on `serve`'s worker threads.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut hooks = Hooks::default();
    let l4_plane = start_l4(&opts, &run)?.map(Arc::new);
    if let Some(follower) = l4_plane.clone() {
        let stats = follower.stats();
        hooks.metrics.push(Arc::new(move |out: &mut String| {
            if let Ok(slot) = stats.lock()
                && let Some(s) = slot.as_ref()
            {
                llmgw::l4::status::render_prometheus(out, s);
            }
        }));
        let early = follower.clone();
        hooks.before_bind.push(Box::new(move |current, next| {
            let (current, next) = (model::xdp::rules(current), model::xdp::rules(next));
            l4::Follower::ports_first(&current, &next).map(|r| early.update_acked(r))
        }));
        hooks
            .on_apply
            .push(Box::new(move |s| follower.update(model::xdp::rules(s))));
    }
    let served = runtime.block_on(serve::serve(opts, Arc::new(ProcessEnv), hooks));
    // Everything is written and closed: do not wait on blocking tasks that
    // may still sleep (a provider address lookup, a file read).
    runtime.shutdown_background();
    // `serve` fails only before it serves (a port another process owns):
    // what starting the L4 plane did is taken back.
    if served.is_err()
        && let Some(plane) = &l4_plane
    {
        match plane.rollback() {
            Ok(()) => tracing::info!("L4 plane: the failed start's XDP changes were taken back"),
            Err(e) => tracing::warn!("L4 plane: taking back the failed start's XDP changes: {e}"),
        }
    }
    match served {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(ServeError::Config(errors)) => {
            eprint!("{errors}");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

/// mimalloc: the request path allocates and frees many small buffers across
/// worker threads; see BENCHMARKS.md ("L7 profile").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("llmgw: {}", llmgw::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    if !matches!(cli.command, Command::Run { .. }) {
        init_logging(LogFormat::Text);
    }
    match cli.command {
        Command::Run { config, run } => run_gateway(config, *run),
        Command::Validate { config, json } => {
            let snapshot = model::load(&config.config, &config.settings(), &ProcessEnv);
            match snapshot {
                Ok(s) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&model::dump::dump(&s))?);
                    } else {
                        print!("{}", model::dump::describe(&s));
                        println!("configuration is valid");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    eprint!("{errors}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Xdp { bpf_root, command } => match command {
            XdpCommand::Status { max_prefixes } => match l4::status(&bpf_root) {
                Ok(status) => {
                    print!("{}", status.render(max_prefixes));
                    Ok(ExitCode::SUCCESS)
                }
                Err(l4::L4Error::NotPinned(_)) => {
                    println!("not attached: nothing pinned under {}", bpf_root.display());
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Err(e.into()),
            },
            XdpCommand::Detach => {
                if l4::detach(&bpf_root)? {
                    println!("detached; pins under {} removed", bpf_root.display());
                } else {
                    println!("nothing pinned under {}", bpf_root.display());
                }
                Ok(ExitCode::SUCCESS)
            }
            XdpCommand::Serve {
                ifaces,
                mode,
                rules,
                no_v4_filter,
            } => xdp_serve(bpf_root, ifaces, mode, rules, !no_v4_filter),
        },
    }
}

fn read_rules(path: &PathBuf) -> Result<(String, L4Rules)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let rules = l4::parse_rules(&text)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("parsing {}", path.display()))?;
    Ok((text, rules))
}

fn xdp_serve(
    bpf_root: PathBuf,
    ifaces: Vec<String>,
    mode: XdpMode,
    path: PathBuf,
    v4_filter: bool,
) -> Result<ExitCode> {
    let (mut text, rules) = read_rules(&path)?;
    let opts = PlaneOptions {
        bpf_root,
        v4_filter,
    };
    let mut plane = match Plane::start_with(&opts, &ifaces, mode, &rules) {
        Ok(p) => p,
        Err(e) if e.is_unavailable() => {
            tracing::warn!("L4 plane off: {e}");
            return Ok(ExitCode::from(3));
        }
        Err(e) => return Err(e.into()),
    };
    let ifs: Vec<String> = plane
        .interfaces()
        .iter()
        .map(|(i, m)| format!("{i}:{m}"))
        .collect();
    println!(
        "ready {} prefixes on {}",
        rules.entries.len(),
        ifs.join(",")
    );
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let (new_text, rules) = match read_rules(&path) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("{e:#}; keeping the rules in force");
                continue;
            }
        };
        if new_text == text {
            continue;
        }
        text = new_text;
        match plane.sync(&rules) {
            Ok(r) => println!(
                "synced +{} ~{} -{} ({} prefixes, {} rules)",
                r.added, r.updated, r.removed, r.prefixes, r.rules
            ),
            Err(e) => tracing::error!("sync failed, keeping what is in force: {e}"),
        }
    }
}
