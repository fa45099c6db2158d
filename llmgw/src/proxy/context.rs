//! One request's context as it goes through the phases of `handler`: the
//! request head, its body (unread, or read once), what each phase learned
//! (authority, client address, identity, route, backend, body shape) and
//! the [`Record`] that is logged when the request ends.

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Instant, SystemTime},
};

use bytes::Bytes;
use http::{Request, Version, request::Parts};
use hyper::body::Incoming;

use super::{ConnInfo, Live, Worker, record::Record, request_body::BodyHold, request_id};
use crate::{
    llm::convert::Convert,
    model::{Listener, Upstream},
    policy::{Identity, RequestContext, extauthz::Allowed},
};

pub struct Ctx {
    pub rec: Record,
    pub conn: Arc<ConnInfo>,
    /// The snapshot (and its runtime) this request is served with, from
    /// start to end, whatever reloads happen meanwhile.
    pub live: Arc<Live>,
    pub parts: Parts,
    /// The client's body until a phase reads it into `body`.
    pub incoming: Option<Incoming>,
    /// The client's body, once read (bounded by `--max-request-body`).
    pub body: Option<Bytes>,
    /// The bytes of `body`, counted against `--max-buffered-bodies` until
    /// the request is done with them.
    pub body_hold: BodyHold,
    /// `:authority` or `Host`, as sent.
    pub authority: String,
    /// The listener the connection was accepted on, by index in the snapshot.
    pub listener: usize,
    /// The path and query as the client sent them (after JWT removed a token
    /// from the query), and the normalised path policies and routing see.
    pub raw_path: String,
    pub path: String,
    pub identity: Option<Identity>,
    /// Header changes an external authorizer asked for on the response.
    pub downstream: Option<Allowed>,
    /// The backend chosen: the rewrite requests to it get.
    pub upstream: Option<Arc<Upstream>>,
    /// How the provider's answer is reshaped for the client, if at all.
    pub convert: Option<Convert>,
}

impl Ctx {
    pub fn new(req: Request<Incoming>, conn: Arc<ConnInfo>, worker: Arc<Worker>) -> Ctx {
        let live = worker.proxy.live.load_full();
        let (parts, incoming) = req.into_parts();
        let trusted = worker.proxy.opts.num_trusted_proxies;
        let worker_metrics = worker.proxy.observer.metrics.clone();
        conn.state.request_started();
        worker_metrics
            .downstream
            .requests_in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let rec = Record {
            start: Instant::now(),
            time: SystemTime::now(),
            request_id: request_id::choose(&parts.headers, trusted),
            client: conn.peer.ip(),
            peer: conn.peer.ip(),
            host: String::new(),
            method: parts.method.clone(),
            // Without the query: some APIs take keys there (`?key=...`).
            path: parts.uri.path().to_string(),
            protocol: match parts.version {
                Version::HTTP_2 => "HTTP/2",
                Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            rule: None,
            backend: 0,
            model: None,
            stream: false,
            status: 0,
            upstream_status: None,
            ttfb: None,
            ttft: None,
            usage: None,
            bytes_sent: 0,
            error: None,
            upstream_error: None,
            policy: None,
            logged: false,
            conn: conn.state.clone(),
            conn_written_before: conn.state.written(),
            worker,
        };
        Ctx {
            rec,
            conn,
            live,
            parts,
            incoming: Some(incoming),
            body: None,
            body_hold: BodyHold::new(worker_metrics),
            authority: String::new(),
            listener: 0,
            raw_path: String::new(),
            path: String::new(),
            identity: None,
            downstream: None,
            upstream: None,
            convert: None,
        }
    }

    pub fn worker(&self) -> &Worker {
        &self.rec.worker
    }

    pub fn listener(&self) -> Option<&Listener> {
        self.live.snapshot.listeners.get(self.listener)
    }

    /// The client address policies see (`remote.ip`): the peer, or what
    /// trusted proxies in front said.
    pub fn remote(&self) -> IpAddr {
        self.rec.client
    }

    /// What policies see of this request, with `headers` (the request's, or
    /// those an external authorizer is shown).
    pub fn policy_view<'a>(&'a self, headers: &'a http::HeaderMap) -> RequestContext<'a> {
        RequestContext {
            peer: self.conn.peer.ip(),
            remote: self.remote(),
            local: self.conn.local,
            sni: self.conn.sni.as_deref(),
            authority: &self.authority,
            method: self.parts.method.as_str(),
            path: &self.path,
            headers,
            identity: self.identity.as_ref(),
        }
    }

    /// The downstream scheme (`http` or `https`), by the connection.
    pub fn scheme(&self) -> &'static str {
        if self.conn.tls { "https" } else { "http" }
    }
}
