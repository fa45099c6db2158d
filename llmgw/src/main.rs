//! The `llmgw` command line: parses flags and calls the library.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};
use llmgw::{
    client::ResolveOverride,
    config::{self, Labels, Settings, load::ProcessEnv},
    l4::{self, L4Rules, Plane, PlaneOptions, XdpMode},
    model,
    observe::access_log,
    serve::{self, Hooks, ServeError, ServeOptions},
};

#[derive(Parser)]
#[command(
    name = "llmgw",
    version,
    about = "LLM ingress gateway: XDP deny at the NIC, LLM routing in userspace"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check the configuration without serving; print what was compiled.
    Validate {
        #[command(flatten)]
        config: ConfigArgs,
        /// Print the compiled configuration as JSON (as /config_dump does).
        #[arg(long)]
        json: bool,
    },
    /// Serve: every listener of the configuration, reloading it on SIGHUP and
    /// when its files change; drain on SIGTERM/SIGINT.
    Run {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        run: Box<RunArgs>,
    },
    /// The XDP (L4) plane.
    Xdp {
        /// bpffs directory of the pins (a versioned directory goes below).
        #[arg(long, env = "LLMGW_BPF_ROOT", default_value = l4::DEFAULT_BPF_ROOT, global = true)]
        bpf_root: PathBuf,
        #[command(subcommand)]
        command: XdpCommand,
    },
}

#[derive(Subcommand)]
enum XdpCommand {
    /// Interfaces, mode, prefixes with their rules, drops per rule.
    Status {
        /// Prefixes to list.
        #[arg(long, default_value_t = 50)]
        max_prefixes: usize,
    },
    /// Detach from every interface and remove the maps and pins.
    Detach,
    /// Developer: attach, enforce the rules in FILE (text form, re-read when
    /// it changes) until killed; the pins stay behind.
    Serve {
        #[arg(long = "iface", required = true)]
        ifaces: Vec<String>,
        #[arg(long, default_value = "auto")]
        mode: XdpMode,
        #[arg(long)]
        rules: PathBuf,
        /// Do not use the front filter (IPv4 /24s, top 24 bits of IPv6 sources).
        #[arg(long)]
        no_v4_filter: bool,
    },
}

/// Flags of `llmgw run`.
#[derive(Args, Clone)]
struct RunArgs {
    /// Address of the admin server (/ready, /metrics, /config_dump); `off` for none.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_address: String,
    /// Largest request body accepted (413 above), e.g. 10MiB.
    #[arg(long, default_value = "10MiB", value_parser = config::duration::parse_size)]
    max_request_body: u64,
    /// Extra CA certificates (PEM) trusted for provider TLS, besides the
    /// webpki and system roots.
    #[arg(long)]
    upstream_ca: Option<PathBuf>,
    /// Connect to ADDR (an IP, or IP:PORT; several separated by commas, tried
    /// in order) for provider HOST:PORT instead of resolving it, like curl's
    /// --resolve (repeatable; HOST `*` is any host).
    #[arg(long, value_name = "HOST:PORT:ADDR[,ADDR...]")]
    resolve: Vec<ResolveOverride>,
    /// Proxies in front of the gateway whose X-Forwarded-For entries are
    /// trusted (Envoy's xff_num_trusted_hops, Istio's numTrustedProxies).
    #[arg(long, default_value_t = 0)]
    num_trusted_proxies: usize,
    /// Time allowed to connect to a provider (TCP and TLS).
    #[arg(long, default_value = "5s", value_parser = config::duration::parse_flag_duration)]
    connect_timeout: Duration,
    /// Time allowed for a provider's response headers.
    #[arg(long, default_value = "300s", value_parser = config::duration::parse_flag_duration)]
    response_timeout: Duration,
    /// Longest silence allowed between two chunks of a body (either way).
    #[arg(long, default_value = "60s", value_parser = config::duration::parse_flag_duration)]
    stream_idle_timeout: Duration,
    /// Time a client has to send its request headers or finish a TLS handshake.
    #[arg(long, default_value = "30s", value_parser = config::duration::parse_flag_duration)]
    header_read_timeout: Duration,
    /// On SIGTERM/SIGINT, how long in-flight requests may finish.
    #[arg(long, default_value = "10s", value_parser = config::duration::parse_flag_duration)]
    drain_timeout: Duration,
    /// How often the configuration files are checked for changes; 0 for SIGHUP only.
    #[arg(long, default_value = "2s", value_parser = config::duration::parse_flag_duration)]
    reload_interval: Duration,
    /// Where the JSON access log goes: `-` (stdout), a file, or `off`.
    #[arg(long, default_value = "-")]
    access_log: String,
    /// Speak only HTTP/1.1 to providers (by default HTTP/2 is used when a
    /// provider offers it).
    #[arg(long)]
    upstream_http1_only: bool,
    /// Worker threads serving connections (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Format of the gateway's own log (stderr).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Attach the XDP deny program to IFACE (repeatable). Without it, or
    /// without the privileges XDP needs, the L7 plane still enforces every rule.
    #[arg(long = "xdp-iface", value_name = "IFACE")]
    xdp_ifaces: Vec<String>,
    /// XDP attach mode: auto (native, else generic with a warning), native, skb.
    #[arg(long, default_value = "auto")]
    xdp_mode: XdpMode,
    /// bpffs directory of the XDP pins (a versioned directory goes below).
    #[arg(long, env = "LLMGW_BPF_ROOT", default_value = l4::DEFAULT_BPF_ROOT)]
    bpf_root: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

fn parse_admin(s: &str) -> Result<Option<SocketAddr>> {
    if s == "off" {
        return Ok(None);
    }
    Ok(Some(s.parse().with_context(|| {
        format!("{s:?} is not an address like 127.0.0.1:15000")
    })?))
}

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
    let opts = ServeOptions {
        config: config.config.clone(),
        settings: config.settings(),
        admin_address: parse_admin(&run.admin_address)?,
        max_request_body: run.max_request_body,
        upstream_ca: run.upstream_ca.clone(),
        resolve: run.resolve.clone(),
        num_trusted_proxies: run.num_trusted_proxies,
        connect_timeout: run.connect_timeout,
        response_timeout: run.response_timeout,
        stream_idle_timeout: run.stream_idle_timeout,
        header_read_timeout: run.header_read_timeout,
        drain_timeout: run.drain_timeout,
        reload_interval: run.reload_interval,
        workers: run.workers,
        upstream_http2: !run.upstream_http1_only,
        access_log: match run.access_log.as_str() {
            "-" | "stdout" => access_log::Target::Stdout,
            "off" => access_log::Target::Off,
            path => access_log::Target::File(PathBuf::from(path)),
        },
    };
    // The control plane (signals, reloads, admin server) runs here; the
    // data plane runs on `serve`'s worker threads.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut hooks = Hooks::default();
    if let Some(follower) = start_l4(&opts, &run)? {
        let follower = Arc::new(follower);
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
    match served {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(ServeError::Config(errors)) => {
            eprint!("{errors}");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

/// Flags that say which configuration to read and what this gateway is.
#[derive(Args, Clone)]
struct ConfigArgs {
    /// YAML files or directories of them (several documents per file).
    #[arg(long, short = 'c', required = true, num_args = 1..)]
    config: Vec<PathBuf>,
    /// This gateway's workload labels, `key=value[,key=value...]`; selectors match them.
    #[arg(long, default_value = "istio=ingressgateway", value_parser = parse_labels)]
    workload_labels: Labels,
    /// The namespace this gateway runs in (namespace-scoped policies apply there).
    #[arg(long, default_value = "istio-system")]
    namespace: String,
    /// Istio's root namespace (its selector-less policies apply to every workload).
    #[arg(long, default_value = "istio-system")]
    root_namespace: String,
    /// Directory of TLS credentials: `credentialName: NAME` reads NAME/tls.crt and NAME/tls.key.
    #[arg(long)]
    credentials_dir: Option<PathBuf>,
    /// Address the listeners bind to (a server's `bind` overrides it).
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// Listen on LOCAL for a Gateway port, e.g. `80=8080` (repeatable), to run without root.
    #[arg(long = "port-map", value_parser = parse_port_map)]
    port_map: Vec<(u16, u16)>,
    /// Istio MeshConfig YAML (or the `istio` ConfigMap holding it under `data.mesh`):
    /// its `extensionProviders` are the external authorizers CUSTOM policies name.
    #[arg(long)]
    mesh_config: Option<PathBuf>,
}

impl ConfigArgs {
    fn settings(&self) -> Settings {
        Settings {
            workload_labels: self.workload_labels.clone(),
            namespace: self.namespace.clone(),
            root_namespace: self.root_namespace.clone(),
            credentials_dir: self.credentials_dir.clone(),
            bind_address: self.bind_address,
            port_map: self.port_map.iter().copied().collect(),
            // Read with the configuration, at start and at every reload.
            mesh: Default::default(),
            mesh_path: self.mesh_config.clone(),
        }
    }
}

fn parse_labels(s: &str) -> Result<Labels> {
    let mut labels = Labels::new();
    for pair in s.split(',').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            bail!("{pair:?} is not key=value");
        };
        labels.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(labels)
}

fn parse_port_map(s: &str) -> Result<(u16, u16)> {
    let (a, b) = s
        .split_once('=')
        .context("expected GATEWAY_PORT=LOCAL_PORT, e.g. 80=8080")?;
    Ok((
        a.parse().with_context(|| format!("{a:?} is not a port"))?,
        b.parse().with_context(|| format!("{b:?} is not a port"))?,
    ))
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
