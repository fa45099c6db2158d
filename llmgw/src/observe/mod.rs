//! Observability: Prometheus metrics, the JSON access log, token usage read
//! from responses (plain JSON and SSE), and the admin server that exposes
//! `/ready`, `/metrics` and `/config_dump`.

pub mod access_log;
pub mod downstream;
pub mod log_line;
pub mod metrics;

use std::sync::Arc;

/// Token counts as OpenAI-compatible providers report them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub total_tokens: Option<u64>,
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where finished requests are reported.
pub struct Observer {
    pub metrics: Arc<metrics::Metrics>,
    pub log: access_log::AccessLog,
}
