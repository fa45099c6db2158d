//! The admin server: `/ready` (200 once the listeners are bound, 503 while
//! starting or draining), `/metrics` (Prometheus text) and `/config_dump`
//! (the snapshot in use as JSON, API keys redacted). Plain HTTP/1.1.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::watch};
use tracing::debug;

use std::fmt::Write as _;

use super::MetricsSource;
use crate::{
    model::dump,
    observe::metrics::esc,
    proxy::{Drain, Live, Proxy, listener::Backoff},
};

/// Serves the admin endpoints on `listener` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    ready: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
    extra: Arc<[MetricsSource]>,
) {
    let mut backoff = Backoff::default();
    let addr = listener.local_addr().unwrap_or(([0, 0, 0, 0], 0).into());
    loop {
        let (stream, _) = tokio::select! {
            _ = Drain::stopped(&mut stop) => return,
            r = listener.accept() => match r {
                Ok(c) => {
                    backoff.reset();
                    c
                }
                Err(e) => {
                    let wait = if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                        backoff.out_of_descriptors(addr, &e)
                    } else {
                        debug!(error = %e, "admin accept failed");
                        std::time::Duration::ZERO
                    };
                    tokio::time::sleep(wait).await;
                    continue;
                }
            },
        };
        let proxy = proxy.clone();
        let ready = ready.clone();
        let extra = extra.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let r = answer(&req, &proxy, &ready, &extra);
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                debug!(error = %e, "admin connection");
            }
        });
    }
}

fn answer(
    req: &Request<Incoming>,
    proxy: &Proxy,
    ready: &AtomicBool,
    extra: &[MetricsSource],
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, ct: &'static str, body: Bytes| {
        let mut r = Response::new(Full::new(body));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(ct));
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            Bytes::from_static(b"GET only\n"),
        );
    }
    match req.uri().path() {
        "/ready" if ready.load(Ordering::Acquire) => {
            text(StatusCode::OK, "text/plain", Bytes::from_static(b"ready\n"))
        }
        "/ready" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            Bytes::from_static(b"not ready\n"),
        ),
        "/metrics" => {
            let mut body = proxy.observer.metrics.render();
            render_policy(&mut body, &proxy.live.load());
            for source in extra {
                source(&mut body);
            }
            text(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                Bytes::from(body),
            )
        }
        "/config_dump" => {
            let live = proxy.live.load();
            let v = dump::dump(&live.snapshot);
            let body = serde_json::to_vec_pretty(&v).unwrap_or_default();
            text(StatusCode::OK, "application/json", Bytes::from(body))
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"/ready /metrics /config_dump\n"),
        ),
    }
}

/// Counters of the security stage's outside calls: JWKS fetches per issuer
/// and external authorization checks per provider.
fn render_policy(out: &mut String, live: &Live) {
    let security = &live.runtime.security;
    let jwks = security.jwks.status(&live.snapshot.authn);
    if !jwks.is_empty() {
        out.push_str(
            "# HELP llmgw_jwks_fetches_total Fetches of remote JWT key sets, by issuer and result.\n\
             # TYPE llmgw_jwks_fetches_total counter\n",
        );
        for j in &jwks {
            let i = esc(&j.issuer);
            let _ = writeln!(
                out,
                "llmgw_jwks_fetches_total{{issuer=\"{i}\",result=\"success\"}} {}",
                j.fetch_ok
            );
            let _ = writeln!(
                out,
                "llmgw_jwks_fetches_total{{issuer=\"{i}\",result=\"failure\"}} {}",
                j.fetch_failed
            );
        }
        out.push_str(
            "# HELP llmgw_jwks_keys Keys in use per issuer (0 until a fetch succeeds).\n\
             # TYPE llmgw_jwks_keys gauge\n",
        );
        for j in &jwks {
            let _ = writeln!(
                out,
                "llmgw_jwks_keys{{issuer=\"{}\"}} {}",
                esc(&j.issuer),
                j.keys
            );
        }
    }
    let checks = security.ext_authz.stats();
    if !checks.is_empty() {
        out.push_str(
            "# HELP llmgw_ext_authz_checks_total External authorization checks, by provider and result.\n\
             # TYPE llmgw_ext_authz_checks_total counter\n",
        );
        for c in &checks {
            let p = esc(&c.provider);
            for (result, n) in [
                ("allowed", c.allowed),
                ("denied", c.denied),
                ("error", c.errors),
            ] {
                let _ = writeln!(
                    out,
                    "llmgw_ext_authz_checks_total{{provider=\"{p}\",result=\"{result}\"}} {n}"
                );
            }
        }
    }
}
