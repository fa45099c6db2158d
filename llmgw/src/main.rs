//! The `llmgw` command line: parses flags and calls the library.

use std::{net::IpAddr, path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};
use llmgw::config::{self, Labels, Settings, load::ProcessEnv};

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
    }
}
