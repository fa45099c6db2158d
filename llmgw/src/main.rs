//! The `llmgw` command line (L4 part only on this branch): `llmgw xdp status`,
//! `llmgw xdp detach`, and the developer command `llmgw xdp serve`.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use llmgw::l4::{self, L4Rules, Plane, PlaneOptions, XdpMode};

#[derive(Parser)]
#[command(name = "llmgw", about = "LLM ingress gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Xdp { bpf_root, command } => match command {
            XdpCommand::Status { max_prefixes } => {
                let status = l4::status(&bpf_root)?;
                print!("{}", status.render(max_prefixes));
                Ok(())
            }
            XdpCommand::Detach => {
                if l4::detach(&bpf_root)? {
                    println!("detached; pins under {} removed", bpf_root.display());
                } else {
                    println!("nothing pinned under {}", bpf_root.display());
                }
                Ok(())
            }
            XdpCommand::Serve {
                ifaces,
                mode,
                rules,
                no_v4_filter,
            } => serve(bpf_root, ifaces, mode, rules, !no_v4_filter),
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

fn serve(
    bpf_root: PathBuf,
    ifaces: Vec<String>,
    mode: XdpMode,
    path: PathBuf,
    v4_filter: bool,
) -> Result<()> {
    let (mut text, rules) = read_rules(&path)?;
    let opts = PlaneOptions {
        bpf_root,
        v4_filter,
    };
    let mut plane = match Plane::start_with(&opts, &ifaces, mode, &rules) {
        Ok(p) => p,
        Err(e) if e.is_unavailable() => {
            tracing::warn!("L4 plane off: {e}");
            std::process::exit(3);
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
