//! The `llmgw` command line as data: the subcommands and flags (clap), and
//! `llmgw run`'s flags turned into [`ServeOptions`]. The binary (`main.rs`)
//! and the in-process test harness both parse with it.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::{
    client::ResolveOverride,
    config::{self, Labels, Settings},
    l4::{self, XdpMode},
    observe::access_log,
    serve::ServeOptions,
};

#[derive(Parser)]
#[command(
    name = "llmgw",
    version,
    about = "LLM ingress gateway: XDP deny at the NIC, LLM routing in userspace"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
pub enum XdpCommand {
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
pub struct RunArgs {
    /// Address of the admin server (/ready, /metrics, /config_dump); `off` for none.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin_address: String,
    /// Largest request body accepted (413 above), e.g. 10MiB.
    #[arg(long, default_value = "10MiB", value_parser = config::duration::parse_size)]
    pub max_request_body: u64,
    /// Extra CA certificates (PEM) trusted for provider TLS, besides the
    /// webpki and system roots.
    #[arg(long)]
    pub upstream_ca: Option<PathBuf>,
    /// Connect to ADDR (an IP, or IP:PORT; several separated by commas, tried
    /// in order) for provider HOST:PORT instead of resolving it, like curl's
    /// --resolve (repeatable; HOST `*` is any host).
    #[arg(long, value_name = "HOST:PORT:ADDR[,ADDR...]")]
    pub resolve: Vec<ResolveOverride>,
    /// Proxies in front of the gateway whose X-Forwarded-For entries are
    /// trusted (Envoy's xff_num_trusted_hops, Istio's numTrustedProxies).
    #[arg(long, default_value_t = 0)]
    pub num_trusted_proxies: usize,
    /// Time allowed to connect to a provider (TCP and TLS).
    #[arg(long, default_value = "5s", value_parser = config::duration::parse_flag_duration)]
    pub connect_timeout: Duration,
    /// Time allowed for a provider's response headers.
    #[arg(long, default_value = "300s", value_parser = config::duration::parse_flag_duration)]
    pub response_timeout: Duration,
    /// Longest silence allowed between two chunks of a body (either way).
    #[arg(long, default_value = "60s", value_parser = config::duration::parse_flag_duration)]
    pub stream_idle_timeout: Duration,
    /// Time a client has to send its request headers (from their first
    /// byte) or finish a TLS handshake.
    #[arg(long, default_value = "30s", value_parser = config::duration::parse_flag_duration)]
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request (an
    /// HTTP/2 connection: with no stream open) before it is closed.
    #[arg(long, default_value = "120s", value_parser = config::duration::parse_flag_duration)]
    pub idle_timeout: Duration,
    /// The longest a request body may take to arrive (408 after).
    #[arg(long, default_value = "60s", value_parser = config::duration::parse_flag_duration)]
    pub request_body_timeout: Duration,
    /// Bytes a second a request body must average once it has been
    /// arriving for 10 s (408 below); 0 for no minimum.
    #[arg(long, default_value = "1KiB", value_parser = config::duration::parse_size)]
    pub request_body_min_rate: u64,
    /// The most request-body bytes all requests in flight may hold together;
    /// above it new bodies are refused with 503 (and Retry-After).
    #[arg(long, default_value = "256MiB", value_parser = config::duration::parse_size)]
    pub max_buffered_bodies: u64,
    /// Client connections open at most at once; past it the listeners stop
    /// accepting until some close. 0: the open-file limit (raised to the
    /// hard limit at start) less a tenth kept for the admin server and
    /// providers.
    #[arg(long, default_value_t = 0)]
    pub max_connections: u64,
    /// Answers whose client has taken nothing for a second, at most at once
    /// (each may hold up to 256 KiB of a provider's HTTP/2 stream); past it
    /// the longest stalled are cut, before --stream-idle-timeout.
    #[arg(long, default_value_t = 1024)]
    pub max_stalled_answers: u64,
    /// On SIGTERM/SIGINT, how long in-flight requests may finish.
    #[arg(long, default_value = "10s", value_parser = config::duration::parse_flag_duration)]
    pub drain_timeout: Duration,
    /// Changes to the configuration files are seen at once (inotify); this
    /// is how often they are also polled, as a fallback; 0 for SIGHUP only
    /// (no watching, no polling).
    #[arg(long, default_value = "30s", value_parser = config::duration::parse_flag_duration)]
    pub reload_interval: Duration,
    /// Where the JSON access log goes: `-` (stdout), a file, or `off`.
    #[arg(long, default_value = "-")]
    pub access_log: String,
    /// Speak only HTTP/1.1 to providers (by default HTTP/2 is used when a
    /// provider offers it).
    #[arg(long)]
    pub upstream_http1_only: bool,
    /// Worker threads serving connections (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Format of the gateway's own log (stderr).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Attach the XDP deny program to IFACE (repeatable). Without it, or
    /// without the privileges XDP needs, the L7 plane still enforces every rule.
    #[arg(long = "xdp-iface", value_name = "IFACE")]
    pub xdp_ifaces: Vec<String>,
    /// XDP attach mode: auto (native, else generic with a warning), native, skb.
    #[arg(long, default_value = "auto")]
    pub xdp_mode: XdpMode,
    /// bpffs directory of the XDP pins (a versioned directory goes below).
    #[arg(long, env = "LLMGW_BPF_ROOT", default_value = l4::DEFAULT_BPF_ROOT)]
    pub bpf_root: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

pub fn parse_admin(s: &str) -> Result<Option<SocketAddr>> {
    if s == "off" {
        return Ok(None);
    }
    Ok(Some(s.parse().with_context(|| {
        format!("{s:?} is not an address like 127.0.0.1:15000")
    })?))
}

impl RunArgs {
    /// What `serve` is told: these flags with the configuration `config` names.
    pub fn serve_options(&self, config: &ConfigArgs) -> Result<ServeOptions> {
        let run = self;
        Ok(ServeOptions {
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
            idle_timeout: run.idle_timeout,
            request_body_timeout: run.request_body_timeout,
            request_body_min_rate: run.request_body_min_rate,
            max_buffered_bodies: run.max_buffered_bodies,
            max_connections: run.max_connections,
            max_stalled_answers: run.max_stalled_answers,
            drain_timeout: run.drain_timeout,
            reload_interval: run.reload_interval,
            workers: run.workers,
            upstream_http2: !run.upstream_http1_only,
            access_log: match run.access_log.as_str() {
                "-" | "stdout" => access_log::Target::Stdout,
                "off" => access_log::Target::Off,
                path => access_log::Target::File(PathBuf::from(path)),
            },
            stop: None,
        })
    }
}

/// Flags that say which configuration to read and what this gateway is.
#[derive(Args, Clone)]
pub struct ConfigArgs {
    /// YAML files or directories of them (several documents per file).
    #[arg(long, short = 'c', required = true, num_args = 1..)]
    pub config: Vec<PathBuf>,
    /// This gateway's workload labels, `key=value[,key=value...]`; selectors match them.
    #[arg(long, default_value = "istio=ingressgateway", value_parser = parse_labels)]
    pub workload_labels: Labels,
    /// The namespace this gateway runs in (namespace-scoped policies apply there).
    #[arg(long, default_value = "istio-system")]
    pub namespace: String,
    /// Istio's root namespace (its selector-less policies apply to every workload).
    #[arg(long, default_value = "istio-system")]
    pub root_namespace: String,
    /// Directory of TLS credentials: `credentialName: NAME` reads NAME/tls.crt and NAME/tls.key.
    #[arg(long)]
    pub credentials_dir: Option<PathBuf>,
    /// Address the listeners bind to (a server's `bind` overrides it).
    #[arg(long, default_value = "0.0.0.0")]
    pub bind_address: IpAddr,
    /// Listen on LOCAL for a Gateway port, e.g. `80=8080` (repeatable), to run without root.
    #[arg(long = "port-map", value_parser = parse_port_map)]
    pub port_map: Vec<(u16, u16)>,
    /// Istio MeshConfig YAML (or the `istio` ConfigMap holding it under `data.mesh`):
    /// its `extensionProviders` are the external authorizers CUSTOM policies name.
    #[arg(long)]
    pub mesh_config: Option<PathBuf>,
}

impl ConfigArgs {
    pub fn settings(&self) -> Settings {
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
