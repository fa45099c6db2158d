//! What the proxy learns about one request as it goes (route, model, status,
//! timings, tokens), reported once to metrics and the access log when the
//! request ends: by [`Record::log`] when it ends normally or with an error;
//! when dropped unlogged (the client went away), by `Drop` as a backstop.

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use http::{HeaderValue, Method};

use super::{Worker, conn::ConnState, error::ProxyError};
use crate::{
    config::ResourceId,
    model::RouteRule,
    observe::{
        Usage,
        access_log::{Entry, Rfc3339},
        metrics::{Labels, Observation, UpstreamErrorKind},
    },
};

pub struct Record {
    /// Where it is reported: the shared metrics, the worker's access log.
    pub worker: Arc<Worker>,
    /// The client connection, told when the request is done.
    pub conn: Arc<ConnState>,
    /// What the connection had written when the request came.
    pub conn_written_before: u64,
    pub start: Instant,
    pub time: SystemTime,
    /// `x-request-id`, ours or a trusted proxy's.
    pub request_id: HeaderValue,
    pub client: IpAddr,
    pub peer: IpAddr,
    pub host: String,
    pub method: Method,
    /// As the client sent it.
    pub path: String,
    pub protocol: &'static str,
    pub rule: Option<Arc<RouteRule>>,
    pub backend: usize,
    pub model: Option<String>,
    pub stream: bool,
    /// 0 until a response is chosen; a record dropped at 0 means the client left.
    pub status: u16,
    pub upstream_status: Option<u16>,
    pub ttfb: Option<Duration>,
    pub ttft: Option<Duration>,
    pub usage: Option<Usage>,
    pub bytes_sent: u64,
    pub error: Option<String>,
    pub upstream_error: Option<UpstreamErrorKind>,
    /// The AuthorizationPolicy that denied the request, if one did.
    pub policy: Option<ResourceId>,
    /// Reported already (a record is reported once).
    pub logged: bool,
}

/// nginx's code for "client closed request".
pub const CLIENT_CLOSED: u16 = 499;

impl Record {
    /// What failed, when the request ends with `error`: the status it gets,
    /// the reason, and who denied it.
    pub fn fail(&mut self, error: &ProxyError) {
        self.error = Some(error.to_string());
        match error {
            ProxyError::Upstream(u) => self.upstream_error = Some(u.kind()),
            ProxyError::Denied { policy } => self.policy.clone_from(policy),
            _ => {}
        }
    }

    /// Reports the request to metrics and the access log, once; the
    /// request is no longer in flight.
    pub fn log(&mut self) {
        if !std::mem::replace(&mut self.logged, true) {
            self.emit();
            self.conn.request_finished();
            self.worker
                .proxy
                .observer
                .metrics
                .downstream
                .requests_in_flight
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn emit(&mut self) {
        if self.status == 0 {
            self.status = CLIENT_CLOSED;
            self.error
                .get_or_insert_with(|| "client disconnected before the response".into());
        }
        let now = Instant::now();
        let duration = now.saturating_duration_since(self.start);
        let (route, rule, provider) = match &self.rule {
            Some(r) => (
                r.route_label.as_str(),
                r.name.as_str(),
                r.backends
                    .get(self.backend)
                    .map_or("", |b| b.provider.label.as_str()),
            ),
            None => ("", "", ""),
        };
        let model = self.model.as_deref().unwrap_or("");
        self.worker.proxy.observer.metrics.record(
            &Labels {
                route,
                rule,
                provider,
                model,
            },
            &Observation {
                status: self.status,
                duration,
                upstream: self.upstream_status.is_some() || self.upstream_error.is_some(),
                ttft: self.ttft,
                usage: self.usage,
                upstream_error: self.upstream_error,
            },
        );
        let log = &self.worker.log;
        if log.enabled() {
            fn some(s: &str) -> Option<&str> {
                (!s.is_empty()).then_some(s)
            }
            let mut e = Entry {
                time: Rfc3339(self.time),
                request_id: self.request_id.to_str().unwrap_or("-"),
                client: self.client,
                peer: self.peer,
                host: &self.host,
                method: self.method.as_str(),
                path: &self.path,
                protocol: self.protocol,
                route: some(route),
                rule: some(rule),
                provider: some(provider),
                model: some(model),
                stream: self.stream,
                status: self.status,
                upstream_status: self.upstream_status,
                duration_ms: duration,
                ttfb_ms: self.ttfb,
                ttft_ms: self.ttft,
                prompt_tokens: None,
                completion_tokens: None,
                total_tokens: None,
                bytes_sent: self.bytes_sent,
                error: self.error.as_deref(),
                policy: self.policy.as_ref().map(ResourceId::to_string),
            };
            e.set_usage(self.usage);
            log.write(&e, now);
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        self.log();
    }
}

/// The longest model name the access log keeps (a client may send any
/// string): longer ones are cut, marked with `...`.
pub const MAX_LOGGED_MODEL: usize = 256;

pub fn clip(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_model_names_are_clipped_at_a_character_boundary() {
        assert_eq!(super::clip("short".into(), 10), "short");
        assert_eq!(super::clip("éééé".into(), 3), "é...");
        assert_eq!(super::clip("x".repeat(300), 256).len(), 259);
    }
}
