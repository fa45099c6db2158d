//! The L7 plane: listeners, routing, LLM request rewriting, the upstream
//! client and streaming back to the client. `Proxy` is the state every
//! connection shares, `Worker` one thread's part of it; `Live` is what a
//! reload swaps in whole.

pub mod body;
pub mod conn;
pub mod context;
pub mod error;
pub mod handler;
pub mod listener;
pub mod outbound;
pub mod record;
pub mod request_body;
pub mod request_id;
pub mod respond;
pub mod runtime;
pub mod security;
pub mod stall;
pub mod tls;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use hyper_util::{
    rt::{TokioExecutor, TokioTimer},
    server::conn::auto,
};
use tokio::sync::{Notify, watch};

use crate::{
    model::{Protocol, Snapshot},
    observe::Observer,
};

/// Limits and timeouts of the request path.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    pub max_request_body: u64,
    /// Envoy's `xff_num_trusted_hops`.
    pub num_trusted_proxies: usize,
    /// Longest silence between two frames of a body, either way.
    pub stream_idle_timeout: Duration,
    /// Time a client has to send its request headers (and a TLS handshake).
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request (an
    /// HTTP/2 connection, with no stream open).
    pub idle_timeout: Duration,
    /// How fast request bodies must arrive.
    pub body_pace: request_body::BodyPace,
    /// The most all request bodies in flight may hold together (503 above).
    pub max_buffered_bodies: u64,
    /// Client connections open at most at once (past it, accepting pauses).
    pub max_connections: u64,
    /// Answers stalled at once past which the longest stalled are cut.
    pub max_stalled_answers: u64,
}

/// A snapshot in service: the compiled data, the runtime state built for
/// it, and what the data path derives from it once.
pub struct Live {
    pub snapshot: Arc<Snapshot>,
    pub runtime: runtime::Runtime,
    /// TLS configurations of the HTTPS listeners, by bound address.
    pub tls: HashMap<SocketAddr, Arc<tls::ListenerTls>>,
}

impl Live {
    /// `previous` is the `Live` being replaced: its runtime state carries
    /// over. Must be called inside a tokio runtime.
    pub fn build(
        snapshot: Arc<Snapshot>,
        settings: &runtime::RuntimeSettings,
        previous: Option<&Live>,
    ) -> Result<Self, tls::ServerTlsError> {
        let mut by_addr = HashMap::new();
        for l in &snapshot.listeners {
            if l.protocol == Protocol::Https {
                by_addr.insert(l.local, Arc::new(tls::ListenerTls::build(l)?));
            }
        }
        let runtime = runtime::Runtime::build(&snapshot, settings, previous.map(|p| &p.runtime));
        Ok(Self {
            snapshot,
            runtime,
            tls: by_addr,
        })
    }
}

/// Tracks open connections so shutdown can wait for them.
pub struct Drain {
    tx: watch::Sender<bool>,
    /// Turned true when the drain timeout has passed: connections still open
    /// are dropped (their requests are logged as cut).
    abort_tx: watch::Sender<bool>,
    active: AtomicUsize,
    idle: Notify,
}

pub struct DrainGuard<'a>(&'a Drain);

impl Drop for DrainGuard<'_> {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            tx: watch::channel(false).0,
            abort_tx: watch::channel(false).0,
            active: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }
}

impl Drain {
    pub fn track(&self) -> DrainGuard<'_> {
        self.active.fetch_add(1, Ordering::AcqRel);
        DrainGuard(self)
    }

    /// Resolves once `stop` has turned true.
    pub async fn stopped(stop: &mut watch::Receiver<bool>) {
        let _ = stop.wait_for(|s| *s).await;
    }

    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    /// Asks every connection to finish its in-flight requests and close.
    pub fn start(&self) {
        self.tx.send_replace(true);
    }

    pub fn subscribe_abort(&self) -> watch::Receiver<bool> {
        self.abort_tx.subscribe()
    }

    /// Drops every connection still open (after the drain timeout).
    pub fn abort(&self) {
        self.abort_tx.send_replace(true);
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Waits until no connection is open; false if `limit` passed first.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.idle.notified();
                if self.active() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

/// What every connection of every worker shares.
pub struct Proxy {
    pub live: ArcSwap<Live>,
    pub observer: Arc<Observer>,
    pub opts: ProxyOptions,
    pub drain: Drain,
    http: auto::Builder<TokioExecutor>,
}

/// The most request header bytes read (Envoy's default
/// `max_request_headers_kb` is 60); past it the client gets 431.
pub const MAX_REQUEST_HEADERS_BYTES: usize = 60 * 1024;

impl Proxy {
    pub fn new(live: Live, observer: Arc<Observer>, opts: ProxyOptions) -> Self {
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            // The header-read and idle timeouts are the connection I/O's
            // (conn::ConnIo): hyper's header timer also ran while idle.
            .header_read_timeout(None)
            .max_buf_size(MAX_REQUEST_HEADERS_BYTES)
            .keep_alive(true);
        http.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_REQUEST_HEADERS_BYTES as u32)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .max_concurrent_streams(256);
        Self {
            live: ArcSwap::from_pointee(live),
            observer,
            opts,
            drain: Drain::default(),
            http,
        }
    }
}

/// One worker thread's view: the shared state and its own upstream pools
/// (connections stay on the thread that opened them, so a request never
/// waits for another thread to wake up).
pub struct Worker {
    pub proxy: Arc<Proxy>,
    pub client: crate::client::Client,
    /// This thread's access log lines, written out by its heartbeat.
    pub log: Arc<crate::observe::access_log::LocalLog>,
    /// This thread's answers in progress, for the stall sweep.
    pub stalls: stall::Stalls,
}

/// Facts about the connection a request came on.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The connection's local address (`destination.ip`).
    pub local: SocketAddr,
    /// The configured listener address the connection was accepted on.
    pub listen: SocketAddr,
    pub tls: bool,
    pub sni: Option<Arc<str>>,
    /// What the connection's I/O and its requests share.
    pub state: Arc<conn::ConnState>,
}
