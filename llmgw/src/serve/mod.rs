//! `llmgw run`: loads the configuration, binds every listener of the
//! snapshot and the admin server, then reloads on SIGHUP or when a config
//! file changes (a bad configuration keeps the last good one serving) and
//! drains on SIGTERM/SIGINT. `Hooks` is where other planes (L4) follow reloads.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

mod admin;
mod files;
mod limits;

use thiserror::Error;
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};
use tracing::{error, info, warn};

use crate::{
    client::{self, ClientOptions, ResolveOverride, TlsSetupError},
    config::{ErrorList, Settings, load::Env},
    model::{self, Snapshot},
    observe::{Observer, access_log, metrics::Metrics},
    policy::jwks_fetch::FetchSettings,
    proxy::{
        Live, Proxy, ProxyOptions, Worker, listener, request_body::BodyPace,
        runtime::RuntimeSettings, tls::ServerTlsError,
    },
};

/// Everything `llmgw run` is told.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub config: Vec<PathBuf>,
    pub settings: Settings,
    pub admin_address: Option<SocketAddr>,
    pub max_request_body: u64,
    pub upstream_ca: Option<PathBuf>,
    pub resolve: Vec<ResolveOverride>,
    pub num_trusted_proxies: usize,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub header_read_timeout: Duration,
    /// A keep-alive connection waiting for its next request longer is closed.
    pub idle_timeout: Duration,
    /// The longest a request body may take in all.
    pub request_body_timeout: Duration,
    /// Bytes a second a request body must average after a grace period (0: any).
    pub request_body_min_rate: u64,
    /// Request bytes all requests in flight may hold together.
    pub max_buffered_bodies: u64,
    /// Client connections open at most at once (0: the open-file limit
    /// less a reserve).
    pub max_connections: u64,
    /// Answers stalled at once (their client taking nothing) past which the
    /// longest stalled are cut.
    pub max_stalled_answers: u64,
    pub drain_timeout: Duration,
    /// Config files are watched (inotify) and also polled this often, as a
    /// fallback; zero: reload only on SIGHUP.
    pub reload_interval: Duration,
    pub access_log: access_log::Target,
    /// Worker threads serving connections (0: one per CPU).
    pub workers: usize,
    /// Offer HTTP/2 to providers (ALPN); HTTP/1.1 only when false.
    pub upstream_http2: bool,
    /// Stops the gateway (as SIGTERM does) when it turns true: for
    /// embedders and in-process tests.
    pub stop: Option<watch::Receiver<bool>>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            config: Vec::new(),
            settings: Settings::default(),
            admin_address: None,
            max_request_body: 10 * 1024 * 1024,
            upstream_ca: None,
            resolve: Vec::new(),
            num_trusted_proxies: 0,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(300),
            stream_idle_timeout: Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            request_body_timeout: Duration::from_secs(60),
            request_body_min_rate: 1024,
            max_buffered_bodies: 256 * 1024 * 1024,
            max_connections: 0,
            max_stalled_answers: 1024,
            drain_timeout: Duration::from_secs(10),
            reload_interval: Duration::from_secs(30),
            access_log: access_log::Target::Stdout,
            workers: 0,
            upstream_http2: true,
            stop: None,
        }
    }
}

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(ErrorList),
    #[error(transparent)]
    ServerTls(#[from] ServerTlsError),
    #[error(transparent)]
    UpstreamTls(#[from] TlsSetupError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("access log: {0}")]
    AccessLog(#[source] io::Error),
    #[error("signal handler: {0}")]
    Signal(#[source] io::Error),
    #[error("starting worker threads: {0}")]
    Workers(#[source] io::Error),
}

/// Called with each snapshot put in service (at start and after each
/// successful reload), after the swap. The L4 plane syncs its maps here.
pub type SnapshotHook = Box<dyn FnMut(&Snapshot) + Send>;

/// Called on reload with the snapshot in service and the one about to
/// replace it, before new listeners are bound; what it returns is awaited
/// (for at most [`PREPARE_PATIENCE`]) before they are. The L4 plane puts new
/// listener ports in force here, so a denied client never finds a new port
/// open before XDP knows it.
pub type PrepareHook = Box<dyn FnMut(&Snapshot, &Snapshot) -> Option<Prepared> + Send>;

/// Resolves when a [`PrepareHook`]'s work is done.
pub type Prepared = tokio::sync::oneshot::Receiver<()>;

/// How long a reload waits for its [`PrepareHook`]s before binding anyway
/// (the L7 plane enforces every rule meanwhile).
pub const PREPARE_PATIENCE: Duration = Duration::from_secs(2);

/// Appends more Prometheus text to `/metrics` (other planes' counters).
pub type MetricsSource = Arc<dyn Fn(&mut String) + Send + Sync>;

#[derive(Default)]
pub struct Hooks {
    pub before_bind: Vec<PrepareHook>,
    pub on_apply: Vec<SnapshotHook>,
    pub metrics: Vec<MetricsSource>,
}

impl Hooks {
    async fn prepare(&mut self, current: &Snapshot, next: &Snapshot) {
        let waits: Vec<Prepared> = self
            .before_bind
            .iter_mut()
            .filter_map(|h| h(current, next))
            .collect();
        for w in waits {
            if tokio::time::timeout(PREPARE_PATIENCE, w).await.is_err() {
                warn!(
                    "the L4 plane took over {PREPARE_PATIENCE:?} to take the new listener ports; \
                     binding them anyway (L7 enforces every rule meanwhile)"
                );
            }
        }
    }

    fn applied(&mut self, s: &Snapshot) {
        for h in &mut self.on_apply {
            h(s);
        }
    }
}

/// A command for a worker thread.
enum Cmd {
    /// Accept on `listener` (a clone of the listening socket) until `stop`.
    Listen {
        addr: SocketAddr,
        listener: std::net::TcpListener,
        stop: watch::Receiver<bool>,
    },
}

/// The worker threads: each runs a single-threaded runtime with its own
/// upstream pools; all accept from clones of the same listening sockets, so
/// whichever is free takes the next connection.
struct Workers {
    tx: Vec<mpsc::UnboundedSender<Cmd>>,
}

impl Workers {
    fn start(
        n: usize,
        proxy: &Arc<Proxy>,
        tls: &Arc<rustls::ClientConfig>,
        opts: &ClientOptions,
    ) -> Result<Self, ServeError> {
        let mut tx = Vec::with_capacity(n);
        for i in 0..n {
            let (t, mut rx) = mpsc::unbounded_channel::<Cmd>();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(ServeError::Workers)?;
            let worker = Arc::new(Worker {
                proxy: proxy.clone(),
                client: client::Client::new(tls.clone(), opts.clone()),
                log: proxy.observer.log.local(),
                stalls: Default::default(),
            });
            std::thread::Builder::new()
                .name(format!("llmgw-worker-{i}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        tokio::spawn(heartbeat(worker.clone()));
                        while let Some(cmd) = rx.recv().await {
                            match cmd {
                                Cmd::Listen {
                                    addr,
                                    listener,
                                    stop,
                                } => match TcpListener::from_std(listener) {
                                    Ok(l) => {
                                        tokio::spawn(listener::accept_loop(
                                            l,
                                            addr,
                                            worker.clone(),
                                            stop,
                                        ));
                                    }
                                    Err(e) => {
                                        error!(listen = %addr, error = %e, "worker cannot accept")
                                    }
                                },
                            }
                        }
                    });
                })
                .map_err(ServeError::Workers)?;
            tx.push(t);
        }
        Ok(Self { tx })
    }

    /// Hands a clone of `sock` to every worker.
    fn listen(&self, addr: SocketAddr, sock: TcpListener, stop: &watch::Sender<bool>) {
        let sock = match sock.into_std() {
            Ok(s) => s,
            Err(e) => return error!(listen = %addr, error = %e, "listener"),
        };
        for t in &self.tx {
            match sock.try_clone() {
                Ok(clone) => {
                    let _ = t.send(Cmd::Listen {
                        addr,
                        listener: clone,
                        stop: stop.subscribe(),
                    });
                }
                Err(e) => error!(listen = %addr, error = %e, "cannot share the listener"),
            }
        }
    }
}

/// Keeps the worker's timer driver waking at least once a second, and
/// writes the worker's access log lines. Tokio's timer wakes its own driver
/// through an eventfd (a syscall) whenever a new timer is due before the
/// driver's next planned wake; with nothing planned, that is every
/// per-request timeout (response, header read, idle stream). All of those
/// are a second or more away, so with this tick planned they register
/// without a syscall. Costs one wake per second per worker. Access log lines
/// are written when a request found a write due (run after that request has
/// yielded, so never before its response), and at each tick. Each tick also
/// closes the worker's idle provider connections.
async fn heartbeat(worker: Arc<Worker>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The snapshot whose providers the pools were last pruned for.
    let mut pruned_for: Option<Arc<Live>> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                worker.client.close_idle(std::time::Instant::now());
                let opts = &worker.proxy.opts;
                worker.stalls.sweep(
                    opts.stream_idle_timeout,
                    opts.max_stalled_answers,
                    &worker.proxy.observer.metrics.downstream,
                );
                let live = worker.proxy.live.load_full();
                if !pruned_for.as_ref().is_some_and(|p| Arc::ptr_eq(p, &live)) {
                    prune_pools(&worker, &live);
                    pruned_for = Some(live);
                }
            }
            _ = worker.log.due() => {}
        }
        worker.log.flush();
    }
}

/// Resolves when `stop` (if any) turns true; never without one.
async fn stop_requested(stop: &mut Option<watch::Receiver<bool>>) {
    match stop {
        Some(rx) => {
            if rx.wait_for(|s| *s).await.is_err() {
                // The sender is gone: nobody can ask any more.
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Closes the idle connections of a client that no worker heartbeat tends.
async fn close_idle_connections(client: Arc<client::Client>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        client.close_idle(std::time::Instant::now());
    }
}

/// Drops the worker's pools to providers the snapshot in service no longer
/// names (after a reload removed them).
fn prune_pools(worker: &Worker, live: &Live) {
    let wanted: std::collections::HashSet<(&str, &str)> = live
        .snapshot
        .upstreams()
        .map(|u| (u.authority.as_str(), u.tls_name()))
        .collect();
    worker
        .client
        .retain_https(|authority, sni| wanted.contains(&(authority, sni)));
}

/// Connections the kernel queues for a listener before it accepts them
/// (capped by `net.core.somaxconn`, as Envoy's default is): not the 128 of
/// `std`, so a burst while accepting is paused waits instead of failing.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listening socket with [`LISTEN_BACKLOG`].
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(LISTEN_BACKLOG)
}

/// The bound listeners, by configured address; dropping a sender's value
/// (sending `true`) makes every worker stop accepting on it.
#[derive(Default)]
struct Listeners {
    running: HashMap<SocketAddr, watch::Sender<bool>>,
}

impl Listeners {
    /// Binds what `live` needs and is not bound yet; all or nothing.
    async fn bind_new(&self, live: &Live) -> Result<Vec<(SocketAddr, TcpListener)>, ServeError> {
        let mut bound = Vec::new();
        for l in &live.snapshot.listeners {
            if self.running.contains_key(&l.local) {
                continue;
            }
            let sock = bind(l.local).map_err(|source| ServeError::Bind {
                addr: l.local,
                source,
            })?;
            bound.push((l.local, sock));
        }
        Ok(bound)
    }

    /// Starts `bound` on every worker and stops what `live` no longer has.
    fn commit(&mut self, bound: Vec<(SocketAddr, TcpListener)>, live: &Live, workers: &Workers) {
        for (addr, sock) in bound {
            let (stop, _) = watch::channel(false);
            workers.listen(addr, sock, &stop);
            info!(listen = %addr, "listening");
            self.running.insert(addr, stop);
        }
        let keep: Vec<SocketAddr> = live.snapshot.listeners.iter().map(|l| l.local).collect();
        let gone: Vec<SocketAddr> = self
            .running
            .keys()
            .filter(|a| !keep.contains(a))
            .copied()
            .collect();
        for addr in gone {
            if let Some(stop) = self.running.remove(&addr) {
                stop.send_replace(true);
                info!(listen = %addr, "listener removed");
            }
        }
    }

    fn stop_all(&mut self) {
        for (_, stop) in self.running.drain() {
            stop.send_replace(true);
        }
    }
}

fn compile(opts: &ServeOptions, env: &dyn Env) -> Result<Snapshot, ErrorList> {
    model::load(&opts.config, &opts.settings, env)
}

/// Runs the gateway until SIGTERM or SIGINT, then drains.
pub async fn serve(
    opts: ServeOptions,
    env: Arc<dyn Env + Send + Sync>,
    mut hooks: Hooks,
) -> Result<(), ServeError> {
    let mut sighup = signal(SignalKind::hangup()).map_err(ServeError::Signal)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(ServeError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(ServeError::Signal)?;
    let mut stop = opts.stop.clone();
    let open_files = limits::raise_open_files();

    let snapshot = compile(&opts, env.as_ref()).map_err(ServeError::Config)?;
    for w in &snapshot.warnings {
        warn!("{w}");
    }
    // One outbound client kind for everything: workers each have their own
    // (providers, authorizers); JWKS fetches, which run on this runtime,
    // have this one. Same roots and `--resolve`; JWKS over HTTP/1.1.
    let upstream_tls = client::client_tls(opts.upstream_ca.as_deref(), opts.upstream_http2)?;
    let upstream_opts = ClientOptions {
        connect_timeout: opts.connect_timeout,
        response_timeout: opts.response_timeout,
        resolve: opts.resolve.clone(),
    };
    let jwks_client = Arc::new(client::Client::new(
        client::client_tls(opts.upstream_ca.as_deref(), false)?,
        upstream_opts.clone(),
    ));
    tokio::spawn(close_idle_connections(jwks_client.clone()));
    let runtime_settings = RuntimeSettings {
        jwks_fetch: FetchSettings::new(jwks_client),
    };
    let live = Live::build(Arc::new(snapshot), &runtime_settings, None)?;

    let metrics = Arc::new(Metrics::new());
    metrics
        .last_reload_ok
        .store(crate::observe::unix_now(), Ordering::Relaxed);
    let log = access_log::AccessLog::start(&opts.access_log, metrics.clone())
        .map_err(ServeError::AccessLog)?;
    let observer = Arc::new(Observer { metrics, log });
    let mut listeners = Listeners::default();
    let bound = listeners.bind_new(&live).await?;
    let admin = match opts.admin_address {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })?,
        ),
        None => None,
    };
    let max_connections = open_files.max_connections(opts.max_connections, limits::in_use());
    info!(
        max_connections,
        "client connections accepted at most at once"
    );
    let proxy = Arc::new(Proxy::new(
        live,
        observer,
        ProxyOptions {
            max_request_body: opts.max_request_body,
            num_trusted_proxies: opts.num_trusted_proxies,
            stream_idle_timeout: opts.stream_idle_timeout,
            header_read_timeout: opts.header_read_timeout,
            idle_timeout: opts.idle_timeout,
            body_pace: BodyPace {
                whole: opts.request_body_timeout,
                idle: opts.stream_idle_timeout,
                min_rate: opts.request_body_min_rate,
            },
            max_buffered_bodies: opts.max_buffered_bodies,
            max_connections,
            max_stalled_answers: opts.max_stalled_answers,
        },
    ));
    let n = match opts.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let workers = Workers::start(n, &proxy, &upstream_tls, &upstream_opts)?;
    listeners.commit(bound, &proxy.live.load(), &workers);
    hooks.applied(&proxy.live.load().snapshot);

    let ready = Arc::new(AtomicBool::new(false));
    let (admin_stop, admin_rx) = watch::channel(false);
    if let Some(sock) = admin {
        if let Ok(a) = sock.local_addr() {
            info!(admin = %a, "admin server listening");
        }
        tokio::spawn(admin::serve(
            sock,
            proxy.clone(),
            ready.clone(),
            admin_rx,
            hooks.metrics.clone().into(),
        ));
    }
    ready.store(true, Ordering::Release);
    info!(
        listeners = proxy.live.load().snapshot.listeners.len(),
        workers = n,
        "llmgw is serving"
    );

    // The configuration files, and the files the snapshot in use read
    // (certificates, keys, MeshConfig): a change to any is a reason to reload.
    let config_files = || config_fingerprint(&opts.config, &[]);
    let read_files = || config_fingerprint(&[], &proxy.live.load().snapshot.watched);
    let mut fingerprint = (config_files(), read_files());
    // Changes are seen at once by inotify (after a quiet period, so a file
    // still being written is not read half-way), and by a slow poll as the
    // fallback. `--reload-interval 0`: SIGHUP only.
    let automatic = !opts.reload_interval.is_zero();
    let mut watcher = files::Watcher::new();
    if automatic {
        watcher.watch(
            watched_paths(&opts.config, &proxy.live.load())
                .iter()
                .map(PathBuf::as_path),
        );
    }
    // A change seen by polling is reloaded once two polls in a row see the
    // same files: a file caught while an editor or `cp` is still writing it
    // is not.
    let mut settling: Option<(u64, u64)> = None;
    let poll = if opts.reload_interval.is_zero() {
        Duration::from_secs(3600)
    } else {
        opts.reload_interval
    };
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let why = tokio::select! {
            _ = sighup.recv() => "SIGHUP",
            _ = watcher.changed(), if automatic => {
                let now = (config_files(), read_files());
                if now == fingerprint {
                    continue;
                }
                "configuration files changed"
            }
            _ = tick.tick(), if !opts.reload_interval.is_zero() => {
                let now = (config_files(), read_files());
                if now == fingerprint {
                    settling = None;
                    continue;
                }
                if settling != Some(now) {
                    settling = Some(now);
                    continue;
                }
                "configuration files changed"
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = stop_requested(&mut stop) => break,
        };
        settling = None;
        // Taken before compiling: a change made while the reload runs is
        // still a change afterwards (the files the new snapshot reads are
        // only known after it).
        let compiled = config_files();
        reload(
            why,
            &opts,
            env.as_ref(),
            (&proxy, &workers),
            &mut listeners,
            &mut hooks,
            &runtime_settings,
        )
        .await;
        fingerprint = (compiled, read_files());
        if automatic {
            watcher.watch(
                watched_paths(&opts.config, &proxy.live.load())
                    .iter()
                    .map(PathBuf::as_path),
            );
        }
    }

    info!(
        connections = proxy.drain.active(),
        timeout = ?opts.drain_timeout,
        "shutting down: draining"
    );
    ready.store(false, Ordering::Release);
    listeners.stop_all();
    proxy.drain.start();
    if !proxy.drain.wait_idle(opts.drain_timeout).await {
        warn!(
            connections = proxy.drain.active(),
            "drain timeout: closing the remaining connections"
        );
        // Their requests end here, logged as cut, before the log closes.
        proxy.drain.abort();
        let _ = proxy.drain.wait_idle(Duration::from_millis(500)).await;
    }
    admin_stop.send_replace(true);
    proxy.observer.log.close();
    info!("stopped");
    Ok(())
}

/// Compiles the configuration again and puts it in service, or keeps the
/// current one and says why.
async fn reload(
    why: &str,
    opts: &ServeOptions,
    env: &dyn Env,
    (proxy, workers): (&Arc<Proxy>, &Workers),
    listeners: &mut Listeners,
    hooks: &mut Hooks,
    runtime_settings: &RuntimeSettings,
) {
    let metrics = &proxy.observer.metrics;
    let fail = |msg: String| {
        metrics.reloads_failed.fetch_add(1, Ordering::Relaxed);
        error!(
            reason = why,
            "reload failed, still serving the previous configuration: {msg}"
        );
    };
    let snapshot = match compile(opts, env) {
        Ok(s) => s,
        Err(errors) => return fail(errors.to_string()),
    };
    // Built over the runtime in service: key sets already fetched, ext_authz
    // connections and counters carry over.
    let current = proxy.live.load_full();
    let live = match Live::build(Arc::new(snapshot), runtime_settings, Some(&current)) {
        Ok(l) => l,
        Err(e) => return fail(e.to_string()),
    };
    hooks.prepare(&current.snapshot, &live.snapshot).await;
    let bound = match listeners.bind_new(&live).await {
        Ok(b) => b,
        Err(e) => {
            // The other planes took the new listener ports: give them the
            // rules in service back (denied sources must not be dropped on
            // a port another service owns).
            hooks.applied(&current.snapshot);
            return fail(e.to_string());
        }
    };
    drop(current);
    for w in &live.snapshot.warnings {
        warn!("{w}");
    }
    proxy.live.store(Arc::new(live));
    let live = proxy.live.load();
    listeners.commit(bound, &live, workers);
    metrics.reloads_ok.fetch_add(1, Ordering::Relaxed);
    metrics
        .last_reload_ok
        .store(crate::observe::unix_now(), Ordering::Relaxed);
    info!(
        reason = why,
        listeners = live.snapshot.listeners.len(),
        "configuration reloaded"
    );
    hooks.applied(&live.snapshot);
}

/// The configuration paths and the files the snapshot in service read.
fn watched_paths(config: &[PathBuf], live: &Live) -> Vec<PathBuf> {
    config
        .iter()
        .chain(&live.snapshot.watched)
        .cloned()
        .collect()
}

/// A hash of the configuration files' contents, following symlinks (a
/// ConfigMap mount swaps its `..data` link): changes when any file does.
pub fn config_fingerprint(paths: &[PathBuf], files: &[PathBuf]) -> u64 {
    let mut h = DefaultHasher::new();
    for p in paths {
        hash_path(p, &mut h);
    }
    for f in files {
        f.hash(&mut h);
        match std::fs::read(f) {
            Ok(bytes) => bytes.hash(&mut h),
            Err(e) => e.kind().hash(&mut h),
        }
    }
    h.finish()
}

fn hash_path(p: &Path, h: &mut DefaultHasher) {
    p.hash(h);
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => {
            let mut entries: Vec<PathBuf> = match std::fs::read_dir(p) {
                Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
                Err(e) => {
                    e.kind().hash(h);
                    return;
                }
            };
            entries.sort();
            for e in entries {
                let name = e.file_name().and_then(|n| n.to_str()).unwrap_or("");
                let yaml = [".yaml", ".yml", ".json"].iter().any(|x| name.ends_with(x));
                if !name.starts_with('.') && yaml {
                    hash_path(&e, h);
                }
            }
        }
        Ok(_) => match std::fs::read(p) {
            Ok(bytes) => bytes.hash(h),
            Err(e) => e.kind().hash(h),
        },
        Err(e) => e.kind().hash(h),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_follows_a_swapped_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("v1")).unwrap();
        std::fs::create_dir(d.join("v2")).unwrap();
        std::fs::write(d.join("v1/a.yaml"), "one").unwrap();
        std::fs::write(d.join("v2/a.yaml"), "two").unwrap();
        std::os::unix::fs::symlink("v1", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/a.yaml", d.join("a.yaml")).unwrap();
        let before = config_fingerprint(&[d.to_path_buf()], &[]);
        assert_eq!(before, config_fingerprint(&[d.to_path_buf()], &[]));
        std::fs::remove_file(d.join("..data")).unwrap();
        std::os::unix::fs::symlink("v2", d.join("..data")).unwrap();
        assert_ne!(before, config_fingerprint(&[d.to_path_buf()], &[]));
    }
}
