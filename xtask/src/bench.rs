//! `cargo xtask bench`: benchmarks run on this machine, in one run, with
//! interleaved rounds so drift hits every contender alike. `bench proxy`
//! compares the mock provider direct, llmgw and nginx (reverse proxy);
//! `bench xdp` runs `llmgw/benches/xdp.rs` through BPF_PROG_TEST_RUN (root).

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};

use crate::{bin_path, cargo, is_root, root, status, target_dir};

#[derive(Subcommand)]
pub enum Which {
    /// L7: p50 latency at 20 and 200 req/s, max req/s at 64 connections,
    /// proxy CPU per request, time to first SSE chunk and RSS; the mock
    /// provider direct vs llmgw vs nginx. Writes BENCHMARKS.md ("L7").
    Proxy(ProxyArgs),
    /// XDP: ns per packet (hit/miss, hot/random, 1 to 1M prefixes) and
    /// load/update times, through BPF_PROG_TEST_RUN (needs root).
    /// `-- --quick` skips the 1M-prefix IPv4 and 250k-prefix IPv6 rows.
    Xdp {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Args)]
pub struct ProxyArgs {
    /// Interleaved rounds (medians are reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Print the table without writing BENCHMARKS.md.
    #[arg(long)]
    no_write: bool,
    /// Another llmgw binary (an earlier build) measured in the same run,
    /// configured as the default llmgw row: before/after comparisons.
    #[arg(long)]
    baseline: Option<std::path::PathBuf>,
}

pub fn run(which: Which) -> Result<()> {
    match which {
        Which::Proxy(a) => proxy(a),
        Which::Xdp { args } => {
            if !is_root() {
                bail!("the XDP benchmark loads BPF programs: run it as root");
            }
            let mut cmd = cargo();
            cmd.args(["bench", "--package", "llmgw", "--bench", "xdp", "--"])
                .args(args);
            status(&mut cmd)
        }
    }
}

/// A child process stopped when dropped: SIGTERM (nginx's master then
/// stops its workers), SIGKILL if it is still there after 5 s.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_port(port: u16, what: &str) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} did not open port {port}")
}

fn ensure_tools() -> Result<()> {
    if Command::new("oha").arg("--version").output().is_err() {
        eprintln!("bench: installing oha (cargo install oha --locked)");
        status(Command::new("cargo").args(["install", "oha", "--locked"]))?;
    }
    if Command::new("nginx").arg("-v").output().is_err() {
        eprintln!("bench: installing nginx");
        status(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-qq", "nginx"]),
        )?;
    }
    Ok(())
}

/// CPU time (ns) of every thread of `pids`, from /proc/PID/task/*/schedstat,
/// and (utime+stime) ticks from /proc/PID/stat as a cross-check.
fn cpu(pids: &[u32]) -> (u64, u64) {
    let mut ns = 0;
    let mut ticks = 0;
    for pid in pids {
        if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in rd.flatten() {
                if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                    ns += s
                        .split_whitespace()
                        .next()
                        .and_then(|x| x.parse::<u64>().ok())
                        .unwrap_or(0);
                }
            }
        }
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            && let Some((_, rest)) = s.rsplit_once(')')
        {
            let f: Vec<&str> = rest.split_whitespace().collect();
            // Fields 14 and 15 of stat; `rest` starts at field 3.
            let u: u64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0);
            let s: u64 = f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0);
            ticks += u + s;
        }
    }
    (ns, ticks)
}

/// Context switches of every thread of `pids` so far: (voluntary, when the
/// thread waited; involuntary, when it was preempted).
fn switches(pids: &[u32]) -> (u64, u64) {
    let (mut vol, mut inv) = (0, 0);
    for pid in pids {
        let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in rd.flatten() {
            let Ok(st) = std::fs::read_to_string(t.path().join("status")) else {
                continue;
            };
            for line in st.lines() {
                let n = |prefix: &str| {
                    line.strip_prefix(prefix)
                        .and_then(|v| v.trim().parse::<u64>().ok())
                };
                if let Some(v) = n("voluntary_ctxt_switches:") {
                    vol += v;
                } else if let Some(v) = n("nonvoluntary_ctxt_switches:") {
                    inv += v;
                }
            }
        }
    }
    (vol, inv)
}

/// Resident memory (kB) of `pids`.
fn rss_kb(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

/// `pid` and its children (nginx workers).
fn family(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(s) = std::fs::read_to_string(format!("/proc/{p}/stat"))
                && let Some((_, rest)) = s.rsplit_once(')')
                && rest.split_whitespace().nth(1) == Some(&pid.to_string())
            {
                out.push(p);
            }
        }
    }
    out
}

/// Column names of the L7 table.
const DIRECT: &str = "direct (mock, TLS)";
const LLMGW: &str = "llmgw (default: h2 upstream)";
const LLMGW_H1: &str = "llmgw, HTTP/1.1 upstream";
const NGINX: &str = "nginx 1.22";
const LLMGW_FRONT: &str = "llmgw → nginx-fronted provider (h2)";
const BASELINE: &str = "llmgw baseline (--baseline)";

struct Target {
    name: &'static str,
    /// URL, extra oha args, for the plain completion.
    url: String,
    args: Vec<String>,
    /// Address, Host and path of a streaming request (plaintext HTTP/1.1).
    stream: (SocketAddr, String, String),
    pids: Vec<u32>,
}

#[derive(Default, Clone)]
struct Sample {
    p50_20: f64,
    p50_200: f64,
    rps_max: f64,
    cpu_us_200: f64,
    /// Context switches per request at 200 req/s: waits, preemptions.
    waits_200: f64,
    preempted_200: f64,
    cpu_us_max: f64,
    cpu_us_max_ticks: f64,
    ttfc_1: f64,
    ttfc_8: f64,
    errors: u64,
}

fn oha(url: &str, extra: &[String], args: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new("oha")
        .args(["--no-tui", "--output-format", "json", "-w"])
        .args(args)
        .args(extra)
        .arg(url)
        .output()
        .context("running oha")?;
    if !out.status.success() {
        bail!("oha failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).context("oha's JSON output")
}

fn non_200(v: &serde_json::Value) -> u64 {
    let codes = v["statusCodeDistribution"].as_object();
    let bad: u64 = codes
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.as_str() != "200")
                .map(|(_, n)| n.as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0);
    bad + v["errorDistribution"]
        .as_object()
        .map(|m| m.values().map(|n| n.as_u64().unwrap_or(0)).sum())
        .unwrap_or(0)
}

fn requests(v: &serde_json::Value) -> u64 {
    v["statusCodeDistribution"]
        .as_object()
        .map(|m| m.values().map(|n| n.as_u64().unwrap_or(0)).sum())
        .unwrap_or(0)
}

/// Time to the first `data:` of a streamed answer, over a fresh connection.
fn first_chunk(addr: SocketAddr, host: &str, path: &str) -> Result<Duration> {
    let body = r#"{"model":"qwen1.5-72b-chat","stream":true,"messages":[{"role":"user","content":"Please introduce yourself"}]}"#;
    let start = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut first = None;
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if first.is_none() && buf.windows(5).any(|w| w == b"data:") {
            first = Some(start.elapsed());
        }
    }
    if !buf.starts_with(b"HTTP/1.1 200") {
        bail!(
            "stream through {addr} ({host}): {}",
            String::from_utf8_lossy(&buf[..buf.len().min(200)])
        );
    }
    first.context("no data: event in the stream")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn measure(t: &Target, secs: u64) -> Result<Sample> {
    let dur = format!("{secs}s");
    let mut s = Sample::default();
    let run = |args: &[&str]| -> Result<(serde_json::Value, (u64, u64))> {
        let (ns0, tk0) = cpu(&t.pids);
        let v = oha(&t.url, &t.args, args)?;
        let (ns1, tk1) = cpu(&t.pids);
        Ok((v, (ns1 - ns0, tk1 - tk0)))
    };
    let (v, _) = run(&["-z", &dur, "-q", "20", "-c", "4", "--latency-correction"])?;
    s.p50_20 = v["latencyPercentiles"]["p50"].as_f64().unwrap_or(f64::NAN) * 1e3;
    s.errors += non_200(&v);
    let (vol0, inv0) = switches(&t.pids);
    let (v, (ns, _)) = run(&["-z", &dur, "-q", "200", "-c", "16", "--latency-correction"])?;
    let (vol1, inv1) = switches(&t.pids);
    let n200 = requests(&v).max(1) as f64;
    s.p50_200 = v["latencyPercentiles"]["p50"].as_f64().unwrap_or(f64::NAN) * 1e3;
    s.cpu_us_200 = ns as f64 / 1e3 / n200;
    s.waits_200 = vol1.saturating_sub(vol0) as f64 / n200;
    s.preempted_200 = inv1.saturating_sub(inv0) as f64 / n200;
    s.errors += non_200(&v);
    let (v, (ns, ticks)) = run(&["-z", &dur, "-c", "64"])?;
    s.rps_max = v["summary"]["requestsPerSec"].as_f64().unwrap_or(f64::NAN);
    let n = requests(&v).max(1) as f64;
    s.cpu_us_max = ns as f64 / 1e3 / n;
    let hz = 100.0; // USER_HZ on Linux
    s.cpu_us_max_ticks = ticks as f64 / hz * 1e6 / n;
    s.errors += non_200(&v);

    let (addr, host, path) = &t.stream;
    let mut one = Vec::new();
    for _ in 0..20 {
        one.push(first_chunk(*addr, host, path)?.as_secs_f64() * 1e3);
    }
    s.ttfc_1 = median(one);
    let mut eight = Vec::new();
    for _ in 0..3 {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (a, h, p) = (*addr, host.clone(), path.clone());
                std::thread::spawn(move || first_chunk(a, &h, &p))
            })
            .collect();
        for h in handles {
            let d = h.join().map_err(|_| anyhow::anyhow!("stream thread"))??;
            eight.push(d.as_secs_f64() * 1e3);
        }
    }
    s.ttfc_8 = median(eight);
    Ok(s)
}

/// nginx twice over: the reverse proxy compared with llmgw (port `port`, to
/// the mock over TLS), and a provider front (port `front`: TLS with HTTP/2,
/// the mock's certificate authority, to the mock's plaintext port), the real
/// server llmgw's default HTTP/2 upstream is measured against.
fn nginx_conf(
    dir: &Path,
    port: u16,
    upstream: SocketAddr,
    front: u16,
    plain: SocketAddr,
    key: &str,
) -> String {
    let d = dir.display();
    format!(
        r#"worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {d}/nginx-access.log;
    client_body_temp_path {d}/nginx-body;
    proxy_temp_path {d}/nginx-proxy;
    upstream provider {{
        server {upstream};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass https://provider;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host dashscope.aliyuncs.com;
            proxy_set_header Authorization "Bearer {key}";
            proxy_ssl_server_name on;
            proxy_ssl_name dashscope.aliyuncs.com;
            proxy_ssl_session_reuse on;
            proxy_buffering off;
        }}
    }}
    upstream provider_plain {{
        server {plain};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{front} ssl http2;
        server_name dashscope.aliyuncs.com dashscope-intl.aliyuncs.com;
        ssl_certificate {d}/front/cert.pem;
        ssl_certificate_key {d}/front/key.pem;
        http2_max_concurrent_streams 128;
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://provider_plain;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"#
    )
}

fn proxy(a: ProxyArgs) -> Result<()> {
    ensure_tools()?;
    status(cargo().args([
        "build",
        "--release",
        "--package",
        "llmgw",
        "--package",
        "llmgw-tests",
    ]))?;
    let dir = target_dir().join("bench-l7");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let key = "sk-bench-0123456789";

    // The mock provider: TLS and plaintext ports.
    let ca = dir.join("mock-ca.pem");
    std::fs::create_dir_all(dir.join("front"))?;
    let mut mock = Command::new(bin_path(true, "llmgw-mock"))
        .arg("--ca-out")
        .arg(&ca)
        .arg("--front-cert-dir")
        .arg(dir.join("front"))
        .stdout(Stdio::piped())
        .spawn()
        .context("starting llmgw-mock")?;
    let mut lines = BufReader::new(mock.stdout.take().context("mock stdout")?).lines();
    let mut addr_of = |prefix: &str| -> Result<SocketAddr> {
        let l = lines.next().context("mock said nothing")??;
        l.strip_prefix(prefix)
            .context("unexpected mock output")?
            .trim()
            .parse()
            .context("mock address")
    };
    let mock_tls = addr_of("tls ")?;
    let mock_plain = addr_of("plain ")?;
    let mock = Proc(mock);

    // nginx: the reverse proxy, and the provider front (HTTP/2 over TLS).
    let ng_port = free_port()?;
    let front_port = free_port()?;
    let front: SocketAddr = ([127, 0, 0, 1], front_port).into();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        nginx_conf(&dir, ng_port, mock_tls, front_port, mock_plain, key),
    )?;
    let ng = Command::new("nginx")
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(dir.join("nginx-error.log"))
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx")?;
    let ng = Proc(ng);
    wait_port(ng_port, "nginx")?;
    wait_port(front_port, "nginx (provider front)")?;
    std::thread::sleep(Duration::from_millis(300));

    // llmgw: the quickstart plus a streaming route (tests/python/streaming.yaml),
    // as configured by default (HTTP/2 to the provider when offered), again
    // speaking HTTP/1.1 to the provider as nginx does, and by default to the
    // nginx-fronted provider.
    let start_gw = |bin: &Path, provider: SocketAddr, extra: &[&str]| -> Result<(Proc, u16)> {
        let port = free_port()?;
        let admin = free_port()?;
        let child = Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(root().join("examples/quickstart"))
            .arg("--config")
            .arg(root().join("tests/python/streaming.yaml"))
            .args(["--bind-address", "127.0.0.1"])
            .arg("--port-map")
            .arg(format!("80={port}"))
            .arg("--admin-address")
            .arg(format!("127.0.0.1:{admin}"))
            .arg("--upstream-ca")
            .arg(&ca)
            .arg("--resolve")
            .arg(format!("dashscope.aliyuncs.com:443:{provider}"))
            .arg("--resolve")
            .arg(format!("dashscope-intl.aliyuncs.com:443:{provider}"))
            .arg("--access-log")
            .arg(dir.join(format!("llmgw-access-{port}.log")))
            .args(extra)
            .env("API_KEY", key)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("starting llmgw")?;
        let p = Proc(child);
        wait_port(port, "llmgw")?;
        Ok((p, port))
    };
    let llmgw = bin_path(true, "llmgw");
    let (gw, gw_port) = start_gw(&llmgw, mock_tls, &[])?;
    let (gw1, gw1_port) = start_gw(&llmgw, mock_tls, &["--upstream-http1-only"])?;
    let (gwf, gwf_port) = start_gw(&llmgw, front, &[])?;
    let base = match &a.baseline {
        Some(bin) => Some(start_gw(bin, mock_tls, &[])?),
        None => None,
    };

    let body_direct = r#"{"model":"qwen1.5-72b-chat","stream":false,"messages":[{"role":"user","content":"Please introduce yourself"}]}"#;
    let body_seed = r#"{"messages":[{"role":"user","content":"Please introduce yourself"}]}"#;
    let post = |host: &str, body: &str, auth: bool| -> Vec<String> {
        let mut v: Vec<String> = vec![
            "-m".into(),
            "POST".into(),
            "-H".into(),
            "content-type: application/json".into(),
            "--host".into(),
            host.into(),
            "-d".into(),
            body.into(),
        ];
        if auth {
            v.extend(["-H".into(), format!("authorization: Bearer {key}")]);
        }
        v
    };
    let path = "/compatible-mode/v1/chat/completions";
    let llmgw_target = |name: &'static str, port: u16, pid: u32| Target {
        name,
        url: format!("http://127.0.0.1:{port}/"),
        args: post("test.com", body_seed, false),
        stream: (
            ([127, 0, 0, 1], port).into(),
            "stream.test".into(),
            "/".into(),
        ),
        pids: vec![pid],
    };
    let mut targets = vec![
        Target {
            name: DIRECT,
            url: format!("https://{mock_tls}{path}"),
            args: {
                let mut v = post("dashscope.aliyuncs.com", body_direct, true);
                v.push("--insecure".into());
                v
            },
            stream: (mock_plain, "dashscope.aliyuncs.com".into(), path.into()),
            pids: vec![],
        },
        llmgw_target(LLMGW, gw_port, gw.0.id()),
        llmgw_target(LLMGW_H1, gw1_port, gw1.0.id()),
        Target {
            name: NGINX,
            url: format!("http://127.0.0.1:{ng_port}{path}"),
            args: post("test.com", body_direct, false),
            stream: (
                ([127, 0, 0, 1], ng_port).into(),
                "test.com".into(),
                path.into(),
            ),
            pids: family(ng.0.id()),
        },
        llmgw_target(LLMGW_FRONT, gwf_port, gwf.0.id()),
    ];
    if let Some((p, port)) = &base {
        targets.push(llmgw_target(BASELINE, *port, p.0.id()));
    }
    // Warm every path (pools, caches) before measuring.
    for t in &targets {
        oha(&t.url, &t.args, &["-z", "2s", "-c", "64"])?;
        first_chunk(t.stream.0, &t.stream.1, &t.stream.2)?;
    }

    let mut samples: BTreeMap<&str, Vec<Sample>> = BTreeMap::new();
    for round in 1..=a.rounds {
        for t in &targets {
            eprintln!("bench: round {round}/{}: {}", a.rounds, t.name);
            let s = measure(t, a.seconds)?;
            eprintln!(
                "  p50@20 {:.3} ms, p50@200 {:.3} ms, max {:.0} req/s, cpu {:.1}/{:.1} us/req, ttfc {:.2}/{:.2} ms, errors {}",
                s.p50_20,
                s.p50_200,
                s.rps_max,
                s.cpu_us_200,
                s.cpu_us_max,
                s.ttfc_1,
                s.ttfc_8,
                s.errors
            );
            samples.entry(t.name).or_default().push(s);
        }
    }
    let rss: Vec<(&str, u64)> = targets.iter().map(|t| (t.name, rss_kb(&t.pids))).collect();
    let nginx_processes = family(ng.0.id()).len();
    drop((mock, gw, gw1, gwf, base, ng));

    let med = |name: &str, f: fn(&Sample) -> f64| {
        median(
            samples
                .get(name)
                .map_or(vec![], |v| v.iter().map(f).collect()),
        )
    };
    let errors: u64 = samples.values().flatten().map(|s| s.errors).sum();
    let names: Vec<&str> = targets.iter().map(|t| t.name).collect();
    let mut table = String::new();
    let row = |label: &str, f: fn(&Sample) -> f64, unit: &str, digits: usize, added: bool| {
        let d = med(DIRECT, f);
        let mut cells = vec![format!("{d:.digits$}{unit}")];
        if d.is_nan() {
            cells[0] = "—".into();
        }
        for n in &names[1..] {
            let v = med(n, f);
            let extra = if added && !d.is_nan() {
                format!(" (+{:.0} µs)", (v - d) * 1e3)
            } else {
                String::new()
            };
            cells.push(format!("{v:.digits$}{unit}{extra}"));
        }
        let ratio = med(LLMGW, f) / med(NGINX, f);
        let ratio1 = med(LLMGW_H1, f) / med(NGINX, f);
        format!(
            "| {label} | {} | {ratio:.2} / {ratio1:.2} |\n",
            cells.join(" | ")
        )
    };
    table.push_str(&format!(
        "| | {} | llmgw / nginx (h2 / 1.1) |\n|{}---|\n",
        names.join(" | "),
        "---|".repeat(names.len() + 1)
    ));
    table.push_str(&row("p50 at 20 req/s", |s| s.p50_20, " ms", 3, true));
    table.push_str(&row("p50 at 200 req/s", |s| s.p50_200, " ms", 3, true));
    table.push_str(&row(
        "max req/s at 64 connections",
        |s| s.rps_max,
        "",
        0,
        false,
    ));
    table.push_str(&row(
        "proxy CPU per request at 200 req/s",
        |s| s.cpu_us_200,
        " µs",
        1,
        false,
    ));
    table.push_str(&row(
        "proxy context switches per request at 200 req/s: waits",
        |s| s.waits_200,
        "",
        2,
        false,
    ));
    table.push_str(&row("same: preemptions", |s| s.preempted_200, "", 2, false));
    table.push_str(&row(
        "proxy CPU per request at max load",
        |s| s.cpu_us_max,
        " µs",
        1,
        false,
    ));
    table.push_str(&row(
        "same, from /proc/PID/stat utime+stime",
        |s| s.cpu_us_max_ticks,
        " µs",
        1,
        false,
    ));
    table.push_str(&row(
        "time to first SSE chunk, 1 stream (direct: plaintext)",
        |s| s.ttfc_1,
        " ms",
        2,
        false,
    ));
    table.push_str(&row(
        "time to first SSE chunk, 8 concurrent",
        |s| s.ttfc_8,
        " ms",
        2,
        false,
    ));
    let rss_of = |name: &str| rss.iter().find(|(n, _)| *n == name).map_or(0, |(_, k)| *k);
    let cells: Vec<String> = rss
        .iter()
        .map(|(name, kb)| match *name {
            DIRECT => "—".to_string(),
            NGINX => format!(
                "{:.1} MB ({nginx_processes} processes)",
                *kb as f64 / 1024.0
            ),
            _ => format!("{:.1} MB", *kb as f64 / 1024.0),
        })
        .collect();
    table.push_str(&format!(
        "| RSS after load | {} | {:.2} / {:.2} |\n",
        cells.join(" | "),
        rss_of(LLMGW) as f64 / rss_of(NGINX).max(1) as f64,
        rss_of(LLMGW_H1) as f64 / rss_of(NGINX).max(1) as f64
    ));
    println!("{table}");
    if errors > 0 {
        bail!("{errors} requests failed during the benchmark: figures not written");
    }
    if !a.no_write {
        write_section(&table, &a)?;
    }
    Ok(())
}

/// The commit measured, as `` `abc1234` `` (with "plus uncommitted
/// changes" when the tree differs from it).
fn git_commit() -> String {
    let out = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match out(&["rev-parse", "--short", "HEAD"]) {
        Some(c) => {
            let dirty = out(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("`{c}` plus uncommitted changes")
            } else {
                format!("`{c}`")
            }
        }
        None => "an unknown commit".to_string(),
    }
}

fn write_section(table: &str, a: &ProxyArgs) -> Result<()> {
    let path = root().join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let commit = git_commit();
    let section = format!(
        "## L7\n\n\
         Command: `cargo xtask bench proxy --rounds {} --seconds {}` (release build of \
         {commit}; {cpus} CPUs, Linux {kernel}). Medians of {} interleaved rounds, all on loopback, \
         in one run. Upstream: `llmgw-mock` over TLS (855-byte chat.completion; SSE: \
         20 chunks 5 ms apart). llmgw serves `examples/quickstart` (rewrites path, model, \
         stream and key in the JSON body, JSON access log to a file, metrics), once as \
         configured by default (HTTP/2 to the provider, which offers it) and once with \
         `--upstream-http1-only`; nginx is a keep-alive (HTTP/1.1) reverse proxy that sets Host and Authorization, buffering off, no body \
         rewrite. The column `llmgw → nginx-fronted provider (h2)` is llmgw as configured by default with a real \
         HTTP/2 server as the provider: nginx over TLS with HTTP/2 in front of the mock (its added latency \
         includes that extra hop; its CPU is llmgw's alone). A `--baseline` column, when present, is another llmgw \
         build configured as the default column. Load: oha, `--latency-correction` at fixed rates (4 and 16 connections), \
         64 connections for max throughput. CPU: the proxy's threads (all nginx processes) \
         from /proc/PID/task/*/schedstat, per request answered; context switches from \
         /proc/PID/task/*/status (waits: voluntary, the thread slept; preemptions: \
         involuntary, a woken process took its CPU). Time to first chunk: a fresh \
         HTTP/1.1 connection per stream, to the first `data:`.\n\n{table}\n",
        a.rounds, a.seconds, a.rounds
    );
    let new = match old.find("## L7\n") {
        Some(start) => {
            let end = old[start + 6..]
                .find("\n## ")
                .map_or(old.len(), |e| start + 6 + e + 1);
            format!("{}{}{}", &old[..start], section, &old[end..])
        }
        None => format!("{}\n\n{section}", old.trim_end()),
    };
    std::fs::write(&path, new)?;
    eprintln!("bench: wrote {}", path.display());
    Ok(())
}
