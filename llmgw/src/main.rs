//! The `llmgw` command line: parses flags and calls the library.

use std::{net::IpAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};
use llmgw::{
    config::{self, Labels, Settings, load::ProcessEnv},
    l4::{self, L4Rules, Plane, PlaneOptions, XdpMode},
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
        /// Do not use the IPv4 /24 front filter.
        #[arg(long)]
        no_v4_filter: bool,
    },
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
    fn settings(&self) -> Result<Settings> {
        let mesh = match &self.mesh_config {
            Some(path) => config::mesh::load_mesh_config(path)?,
            None => Default::default(),
        };
        Ok(Settings {
            workload_labels: self.workload_labels.clone(),
            namespace: self.namespace.clone(),
            root_namespace: self.root_namespace.clone(),
            credentials_dir: self.credentials_dir.clone(),
            bind_address: self.bind_address,
            port_map: self.port_map.iter().copied().collect(),
            mesh,
        })
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("llmgw: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Validate { config, json } => {
            let snapshot =
                config::raw_to_snapshot(&config.config, &config.settings()?, &ProcessEnv);
            match snapshot {
                Ok(s) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&config::dump::dump(&s))?);
                    } else {
                        print!("{}", config::dump::describe(&s));
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
            XdpCommand::Status { max_prefixes } => {
                let status = l4::status(&bpf_root)?;
                print!("{}", status.render(max_prefixes));
                Ok(ExitCode::SUCCESS)
            }
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
