//! Observability: Prometheus metrics, the JSON access log, token usage read
//! from responses (plain JSON and SSE), and the admin server that exposes
//! `/ready`, `/metrics` and `/config_dump`.

pub mod access_log;
pub mod admin;
pub mod metrics;
pub mod usage;

use std::sync::Arc;

/// Where finished requests are reported.
pub struct Observer {
    pub metrics: Arc<metrics::Metrics>,
    pub log: access_log::AccessLog,
}
