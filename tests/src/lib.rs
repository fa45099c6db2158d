//! Test support for llmgw's end-to-end tests: a throwaway PKI, a mock
//! OpenAI-compatible provider over TLS that records what it receives, a
//! helper that runs the built `llmgw` binary, and small HTTP clients.

pub mod client;
pub mod gateway;
pub mod mock;
pub mod pki;

use std::time::{Duration, Instant};

/// Retries `f` until it returns `Some` or `patience` runs out.
pub async fn eventually<T, F, Fut>(patience: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + patience;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}
