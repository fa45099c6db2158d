//! Runs the built `llmgw` binary (found next to the test executable, or at
//! `$LLMGW_BIN`) on free ports, pointed at a mock provider, waits for
//! `/ready`, captures stdout and stderr, and kills it when dropped. Or, with
//! [`GatewayBuilder::in_process`], runs `llmgw::serve` inside the test
//! process, from the same flags (the L7 cases that need no signals, no
//! stderr and no XDP): its access log is what `stdout()` returns.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::free_port;

/// The `llmgw` binary: `$LLMGW_BIN`, else beside the running test binary
/// (`target/debug/deps/..` → `target/debug/llmgw`).
pub fn llmgw_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LLMGW_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("llmgw");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build -p llmgw`; `cargo xtask test` does)",
        bin.display()
    );
    bin
}

/// The workspace's `examples/` directory.
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

pub struct GatewayBuilder {
    configs: Vec<PathBuf>,
    env: Vec<(String, String)>,
    args: Vec<String>,
    ports: Vec<u16>,
    upstream: Option<(SocketAddr, PathBuf)>,
    resolve_hosts: Vec<String>,
    wait_ready: bool,
    in_process: bool,
    /// The binary's open-file limit (soft, hard), if set.
    open_files: Option<(u64, u64)>,
}

pub struct Gateway {
    process: Process,
    /// Gateway port (as in the YAML) → local port.
    ports: Vec<(u16, u16)>,
    pub admin: SocketAddr,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    pumps: Vec<std::thread::JoinHandle<()>>,
}

impl GatewayBuilder {
    pub fn new() -> Self {
        Self {
            configs: Vec::new(),
            env: vec![("API_KEY".into(), "sk-test-0123456789".into())],
            args: Vec::new(),
            ports: vec![80],
            upstream: None,
            resolve_hosts: vec!["dashscope.aliyuncs.com".into()],
            wait_ready: true,
            in_process: false,
            open_files: None,
        }
    }

    /// Starts the binary with this open-file limit (as `ulimit -Sn soft
    /// -Hn hard` would).
    pub fn open_files(mut self, soft: u64, hard: u64) -> Self {
        self.open_files = Some((soft, hard));
        self
    }

    /// Serve in this process (`llmgw::serve`) instead of running the binary.
    pub fn in_process(mut self) -> Self {
        self.in_process = true;
        self
    }

    pub fn config(mut self, p: impl Into<PathBuf>) -> Self {
        self.configs.push(p.into());
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.retain(|(x, _)| x != k);
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Gateway ports to map to free local ports (default: 80).
    pub fn ports(mut self, ports: &[u16]) -> Self {
        self.ports = ports.to_vec();
        self
    }

    /// Send provider traffic to `addr`, trusting the CA in `ca`.
    pub fn upstream(mut self, addr: SocketAddr, ca: PathBuf) -> Self {
        self.upstream = Some((addr, ca));
        self
    }

    /// Provider hosts `--resolve`d to the upstream (default: dashscope.aliyuncs.com).
    pub fn resolve_hosts(mut self, hosts: &[&str]) -> Self {
        self.resolve_hosts = hosts.iter().map(|h| h.to_string()).collect();
        self
    }

    pub fn no_wait(mut self) -> Self {
        self.wait_ready = false;
        self
    }

    /// Starts the gateway and (unless [`no_wait`](Self::no_wait)) waits for
    /// `/ready`. A start that lost one of its ports to another process
    /// between choosing and binding it is retried on fresh ports, twice.
    pub fn start(self) -> Gateway {
        let mut attempt = 1;
        loop {
            let mut gw = self.spawn();
            if !self.wait_ready {
                return gw;
            }
            match gw.ready_within(Duration::from_secs(20)) {
                Ok(()) => return gw,
                Err(e) if attempt < 3 && e.contains("Address already in use") => attempt += 1,
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// `llmgw run`'s arguments for these ports.
    fn run_args(&self, admin: SocketAddr, ports: &[(u16, u16)]) -> Vec<String> {
        let mut a: Vec<String> = vec!["run".into()];
        for c in &self.configs {
            a.push("--config".into());
            a.push(c.display().to_string());
        }
        a.extend(["--bind-address".into(), "127.0.0.1".into()]);
        a.extend(["--admin-address".into(), admin.to_string()]);
        for (p, l) in ports {
            a.push("--port-map".into());
            a.push(format!("{p}={l}"));
        }
        if let Some((addr, ca)) = &self.upstream {
            a.push("--upstream-ca".into());
            a.push(ca.display().to_string());
            for h in &self.resolve_hosts {
                a.push("--resolve".into());
                a.push(format!("{h}:443:{addr}"));
            }
        }
        a.extend(self.args.iter().cloned());
        a
    }

    fn spawn(&self) -> Gateway {
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let ports: Vec<(u16, u16)> = self.ports.iter().map(|p| (*p, free_port())).collect();
        if self.in_process {
            return self.serve_in_process(admin, ports);
        }
        let mut cmd = Command::new(llmgw_bin());
        cmd.args(self.run_args(admin, &ports));
        cmd.env_remove("RUST_LOG");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some((soft, hard)) = self.open_files {
            use std::os::unix::process::CommandExt;
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            // SAFETY: only setrlimit (async-signal-safe) runs in the child.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("llmgw starts");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let pumps = [
            pump(child.stdout.take(), stdout.clone()),
            pump(child.stderr.take(), stderr.clone()),
        ]
        .into_iter()
        .flatten()
        .collect();
        Gateway {
            process: Process::Child(child),
            ports,
            admin,
            stdout,
            stderr,
            pumps,
        }
    }

    fn serve_in_process(&self, admin: SocketAddr, ports: Vec<(u16, u16)>) -> Gateway {
        use clap::Parser as _;
        let dir = tempfile::tempdir().expect("temporary directory");
        let log = dir.path().join("access.log");
        let mut args = vec!["llmgw".to_string()];
        args.extend(self.run_args(admin, &ports));
        if !self.args.iter().any(|a| a == "--access-log") {
            args.extend(["--access-log".into(), log.display().to_string()]);
        }
        // Dropping the gateway stops it: connections a test left open are
        // not waited for long.
        if !self.args.iter().any(|a| a == "--drain-timeout") {
            args.extend(["--drain-timeout".into(), "200ms".into()]);
        }
        let cli = llmgw::cli::Cli::try_parse_from(&args).expect("llmgw run's flags");
        let llmgw::cli::Command::Run { config, run } = cli.command else {
            unreachable!("run_args starts with run")
        };
        let mut opts = run.serve_options(&config).expect("serve options");
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        opts.stop = Some(stop_rx);
        let env: std::collections::HashMap<String, String> = self.env.iter().cloned().collect();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let served = rt.block_on(llmgw::serve::serve(
                opts,
                std::sync::Arc::new(env),
                llmgw::serve::Hooks::default(),
            ));
            rt.shutdown_background();
            served.map_err(|e| llmgw::error_chain(&e))
        });
        Gateway {
            process: Process::InProcess {
                stop,
                thread: Some(thread),
                access_log: log,
                _dir: dir,
            },
            ports,
            admin,
            stdout: Arc::new(Mutex::new(String::new())),
            stderr: Arc::new(Mutex::new(String::new())),
            pumps: Vec::new(),
        }
    }
}

/// How the gateway runs.
enum Process {
    Child(Child),
    InProcess {
        stop: tokio::sync::watch::Sender<bool>,
        thread: Option<std::thread::JoinHandle<Result<(), String>>>,
        access_log: PathBuf,
        _dir: tempfile::TempDir,
    },
}

impl Process {
    /// The exit status, once it ended (in process: success or failure).
    fn try_wait(&mut self) -> Option<Result<std::process::ExitStatus, String>> {
        match self {
            Process::Child(c) => c.try_wait().ok().flatten().map(Ok),
            Process::InProcess { thread, .. } => {
                if !thread.as_ref().is_some_and(|t| t.is_finished()) {
                    return None;
                }
                let result = thread
                    .take()?
                    .join()
                    .map_err(|_| "serve panicked".to_string());
                Some(match result {
                    Ok(Ok(())) => Ok(std::os::unix::process::ExitStatusExt::from_raw(0)),
                    Ok(Err(e)) | Err(e) => Err(e),
                })
            }
        }
    }
}

impl Default for GatewayBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn pump(
    from: Option<impl Read + Send + 'static>,
    to: Arc<Mutex<String>>,
) -> Option<std::thread::JoinHandle<()>> {
    let from = from?;
    Some(std::thread::spawn(move || {
        let mut r = BufReader::new(from);
        let mut line = String::new();
        while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
            if let Ok(mut s) = to.lock() {
                s.push_str(&line);
            }
            line.clear();
        }
    }))
}

impl Gateway {
    /// The local port serving gateway port `port`.
    pub fn port(&self, port: u16) -> u16 {
        self.ports
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, l)| *l)
            .unwrap_or_else(|| panic!("port {port} was not mapped"))
    }

    /// The binary's process id (`None` in process).
    pub fn pid(&self) -> Option<u32> {
        match &self.process {
            Process::Child(c) => Some(c.id()),
            Process::InProcess { .. } => None,
        }
    }

    /// The binary's resident memory, in bytes (`VmRSS`).
    pub fn rss(&self) -> Option<u64> {
        self.vm("VmRSS")
    }

    /// The binary's virtual memory, in bytes (`VmSize`): what it reserved,
    /// touched or not.
    pub fn virtual_memory(&self) -> Option<u64> {
        self.vm("VmSize")
    }

    /// A `Vm...` line of `/proc/PID/status`, in bytes.
    fn vm(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?;
        let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    }

    /// The binary's open file descriptors.
    pub fn open_fds(&self) -> Option<usize> {
        let dir = std::fs::read_dir(format!("/proc/{}/fd", self.pid()?)).ok()?;
        Some(dir.count())
    }

    /// `http://127.0.0.1:PORT` for gateway port 80.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port(80))
    }

    /// What the binary printed (the access log, by default); in process,
    /// the access log.
    pub fn stdout(&self) -> String {
        if let Process::InProcess { access_log, .. } = &self.process {
            return std::fs::read_to_string(access_log).unwrap_or_default();
        }
        self.stdout.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Panics (with the gateway's stderr) unless `/ready` answers 200 in time.
    pub fn wait_ready(&mut self, patience: Duration) {
        if let Err(e) = self.ready_within(patience) {
            panic!("{e}");
        }
    }

    /// Whether `/ready` answers 200 in time; else why not, with the stderr.
    fn ready_within(&mut self, patience: Duration) -> Result<(), String> {
        let end = Instant::now() + patience;
        loop {
            if let Some(status) = self.process.try_wait() {
                for p in self.pumps.drain(..) {
                    let _ = p.join();
                }
                return Err(match status {
                    Ok(status) => format!("llmgw exited with {status}:\n{}", self.stderr()),
                    Err(e) => format!("llmgw (in process) ended: {e}"),
                });
            }
            if matches!(admin_get(self.admin, "/ready"), Ok((200, _))) {
                return Ok(());
            }
            if Instant::now() > end {
                return Err(format!(
                    "llmgw not ready after {patience:?}:\n{}",
                    self.stderr()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// GET on the admin server: (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        admin_get(self.admin, path).unwrap_or_else(|e| panic!("admin GET {path}: {e}"))
    }

    pub fn metrics(&self) -> String {
        self.admin_get("/metrics").1
    }

    pub fn signal(&self, sig: &str) {
        let Process::Child(child) = &self.process else {
            panic!("signals need the gateway as a process (not in_process)")
        };
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(child.id().to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit (and for its output to be read);
    /// `None` if it is still running after `patience`.
    pub fn wait_exit(&mut self, patience: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + patience;
        loop {
            if let Some(s) = self.process.try_wait() {
                for p in self.pumps.drain(..) {
                    let _ = p.join();
                }
                return s.ok();
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the captured stdout/stderr contains `needle`.
    pub fn wait_output(&self, needle: &str, patience: Duration) -> bool {
        let end = Instant::now() + patience;
        loop {
            if self.stdout().contains(needle) || self.stderr().contains(needle) {
                return true;
            }
            if Instant::now() > end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        match &mut self.process {
            Process::Child(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Process::InProcess { stop, thread, .. } => {
                stop.send_replace(true);
                if let Some(t) = thread.take() {
                    let _ = t.join();
                }
            }
        }
    }
}

/// A minimal HTTP/1.1 GET for the admin server (blocking, no pooling).
pub fn admin_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}
