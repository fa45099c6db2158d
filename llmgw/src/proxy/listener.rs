//! Accepting connections: one accept loop per bound address; per connection
//! the current snapshot says whether it is plain HTTP (HTTP/1.1 or h2c) or
//! HTTPS (TLS with SNI-chosen certificate, ALPN h2/http1.1), then hyper
//! serves it until it closes or a drain asks it to finish.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant, SystemTime},
};

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_rustls::LazyConfigAcceptor;
use tracing::{debug, warn};

use super::{
    ConnInfo, Drain, Worker,
    conn::{ConnIo, ConnState, ConnTimeouts},
    handler,
};
use crate::{
    model::Protocol,
    observe::{
        access_log::{Entry, Rfc3339},
        downstream::{ConnProtocol, TimeoutKind},
    },
};

/// Accepts on `listener` (configured as `listen`) until `stop` turns true.
/// Stops accepting while client connections hold `--max-connections` (the
/// open-file limit less a reserve), so the admin server and providers keep
/// descriptors; backs off when the process runs out of them anyway.
pub async fn accept_loop(
    listener: TcpListener,
    listen: SocketAddr,
    worker: Arc<Worker>,
    mut stop: watch::Receiver<bool>,
) {
    let downstream = &worker.proxy.observer.metrics.downstream;
    let max = i64::try_from(worker.proxy.opts.max_connections).unwrap_or(i64::MAX);
    let mut backoff = Backoff::default();
    loop {
        if downstream.open() >= max {
            downstream.accept_paused.fetch_add(1, Relaxed);
            debug!(%listen, max, "connection limit reached: not accepting");
            while downstream.open() >= max {
                tokio::select! {
                    biased;
                    _ = Drain::stopped(&mut stop) => return debug!(%listen, "listener closed"),
                    _ = tokio::time::sleep(PAUSE_POLL) => {}
                }
            }
        }
        tokio::select! {
            biased;
            _ = Drain::stopped(&mut stop) => break,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    backoff.reset();
                    // Counted now, before the next accept looks at the count.
                    let state = ConnState::new(worker.proxy.observer.metrics.clone());
                    tokio::spawn(serve_connection(stream, peer, listen, state, worker.clone()));
                }
                Err(e) => {
                    let wait = if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                        downstream.accept_fd_exhausted.fetch_add(1, Relaxed);
                        backoff.out_of_descriptors(listen, &e)
                    } else {
                        // The client gave up before the accept (ECONNABORTED
                        // and the like): nothing to wait for.
                        debug!(%listen, error = %e, "accept failed");
                        Duration::ZERO
                    };
                    tokio::time::sleep(wait).await;
                }
            },
        }
    }
    debug!(%listen, "listener closed");
}

/// How often a paused listener looks whether connections were closed.
const PAUSE_POLL: Duration = Duration::from_millis(20);

/// Waits between accepts that failed for lack of descriptors: 10 ms
/// doubling to 1 s; one warning per 10 s with the count of failures.
#[derive(Default)]
pub struct Backoff {
    wait: Duration,
    failures: u64,
    warned: Option<Instant>,
}

impl Backoff {
    pub fn out_of_descriptors(&mut self, listen: SocketAddr, e: &std::io::Error) -> Duration {
        self.failures += 1;
        if self
            .warned
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(10))
        {
            warn!(
                %listen,
                error = %e,
                failures = self.failures,
                "out of file descriptors: accepting slower"
            );
            self.warned = Some(Instant::now());
            self.failures = 0;
        }
        self.wait = (self.wait * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
        self.wait
    }

    pub fn reset(&mut self) {
        self.wait = Duration::ZERO;
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    listen: SocketAddr,
    state: Arc<ConnState>,
    worker: Arc<Worker>,
) {
    let proxy = &worker.proxy;
    let _guard = proxy.drain.track();
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(listen);
    let (protocol, tls) = {
        let live = proxy.live.load();
        let Some(l) = live.snapshot.listeners.iter().find(|l| l.local == listen) else {
            return;
        };
        (l.protocol, live.tls.get(&listen).cloned())
    };
    let timeouts = ConnTimeouts {
        idle: proxy.opts.idle_timeout,
        header: proxy.opts.header_read_timeout,
        write: proxy.opts.stream_idle_timeout,
    };
    match protocol {
        Protocol::Http => {
            let io = ConnIo::new(stream, state.clone(), timeouts, None);
            let conn = ConnInfo {
                peer,
                local,
                listen,
                tls: false,
                sni: None,
                state,
            };
            serve_http(TokioIo::new(io), conn, &worker).await
        }
        Protocol::Https => {
            let Some(tls) = tls else { return };
            let limit = proxy.opts.header_read_timeout;
            let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
            let start = match tokio::time::timeout(limit, acceptor).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "TLS ClientHello");
                    return;
                }
                Err(_) => return handshake_timed_out(&state, peer),
            };
            let sni: Option<Arc<str>> = start.client_hello().server_name().map(Arc::from);
            let Some(config) = tls.config_for(sni.as_deref()) else {
                debug!(%peer, sni = ?sni, "TLS: no server for this name");
                return;
            };
            let stream = match tokio::time::timeout(limit, start.into_stream(config)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "TLS handshake");
                    return;
                }
                Err(_) => return handshake_timed_out(&state, peer),
            };
            let alpn = match stream.get_ref().1.alpn_protocol() {
                Some(b"h2") => Some(ConnProtocol::Http2),
                Some(_) => Some(ConnProtocol::Http1),
                None => None,
            };
            let io = ConnIo::new(stream, state.clone(), timeouts, alpn);
            let conn = ConnInfo {
                peer,
                local,
                listen,
                tls: true,
                sni,
                state,
            };
            serve_http(TokioIo::new(io), conn, &worker).await
        }
    }
}

async fn serve_http<I>(io: I, conn: ConnInfo, worker: &Arc<Worker>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (opened, opened_at) = (Instant::now(), SystemTime::now());
    let peer = conn.peer.ip();
    let conn = Arc::new(conn);
    let w = worker.clone();
    let svc = service_fn(move |req| handler::handle(req, conn.clone(), w.clone()));
    let proxy = &worker.proxy;
    let served = proxy.http.serve_connection(io, svc);
    tokio::pin!(served);
    let mut stop = proxy.drain.subscribe();
    let mut abort = proxy.drain.subscribe_abort();
    tokio::select! {
        r = served.as_mut() => {
            if let Err(e) = r {
                debug!(error = %e, "connection ended with an error");
                if let Some((status, why)) = rejection(&*e) {
                    log_rejection(worker, status, why, peer, opened, opened_at);
                }
            }
        }
        _ = Drain::stopped(&mut stop) => {
            served.as_mut().graceful_shutdown();
            tokio::select! {
                _ = served.as_mut() => {}
                // The drain timeout passed: the connection and its requests
                // are dropped here (and logged as cut).
                _ = Drain::stopped(&mut abort) => {}
            }
        }
    }
}

/// The TLS handshake took longer than `--header-read-timeout`: counted as
/// a header timeout (no request could be read).
fn handshake_timed_out(state: &ConnState, peer: SocketAddr) {
    state.timed_out(TimeoutKind::Header);
    debug!(%peer, "TLS handshake timed out");
}

/// A request the HTTP layer refused before the handler saw it (hyper has
/// answered it): the status sent and why, or `None` for other errors.
fn rejection(e: &(dyn std::error::Error + 'static)) -> Option<(u16, String)> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(h) = c.downcast_ref::<hyper::Error>() {
            return if h.is_parse_too_large() {
                Some((431, format!("request refused: {h}")))
            } else if h.is_parse() {
                Some((400, format!("request refused: {h}")))
            } else {
                None
            };
        }
        cur = c.source();
    }
    None
}

/// Counts a refused request and gives it an access-log line (as Envoy logs
/// a downstream protocol error): no method, path or route, since none could
/// be read; its duration is the connection's.
fn log_rejection(
    worker: &Worker,
    status: u16,
    why: String,
    peer: IpAddr,
    opened: Instant,
    opened_at: SystemTime,
) {
    let metrics = &worker.proxy.observer.metrics;
    match status {
        431 => metrics.rejected_too_large.fetch_add(1, Relaxed),
        _ => metrics.rejected_malformed.fetch_add(1, Relaxed),
    };
    if !worker.log.enabled() {
        return;
    }
    let now = Instant::now();
    let entry = Entry {
        time: Rfc3339(opened_at),
        request_id: "-",
        client: peer,
        peer,
        host: "",
        method: "-",
        path: "-",
        // hyper answers only HTTP/1 requests it cannot read.
        protocol: "HTTP/1.1",
        route: None,
        rule: None,
        provider: None,
        model: None,
        stream: false,
        status,
        upstream_status: None,
        duration_ms: now.saturating_duration_since(opened),
        ttfb_ms: None,
        ttft_ms: None,
        prompt_tokens: None,
        completion_tokens: None,
        total_tokens: None,
        bytes_sent: 0,
        error: Some(&why),
        policy: None,
    };
    worker.log.write(&entry, now);
}
