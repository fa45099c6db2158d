//! Remote key sets: `jwksUri` (or the issuer's OpenID discovery document)
//! fetched over HTTP(S) with a timeout, refreshed periodically and retried
//! with backoff; a failure is logged and counted and the last good keys stay.
//! [`JwksFetchers`] is the runtime's set of them, carried across reloads.

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Limited};
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use thiserror::Error;
use tokio::sync::watch;

use super::jwt::KeyStore;
use crate::client::{Client, ClientOptions, UpstreamError, tls::client_tls_with_roots};
use crate::model::{
    authn::{Authenticator, DEFAULT_FETCH_TIMEOUT, JwksSource, Keys},
    jwks::{Jwks, JwksError},
};

/// Istio's default refresh period for remote keys (`PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`).
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(20 * 60);
/// First retry delay after a failed fetch; doubles up to [`DEFAULT_RETRY_MAX`].
pub const DEFAULT_RETRY_INITIAL: Duration = Duration::from_secs(1);
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(5 * 60);
/// A key set larger than this is refused.
pub const MAX_JWKS_BYTES: usize = 1 << 20;

/// How remote keys are fetched: the outbound client, refresh period, retry backoff.
#[derive(Clone)]
pub struct FetchSettings {
    pub client: Arc<Client>,
    pub refresh_interval: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub max_body_bytes: usize,
}

impl fmt::Debug for FetchSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchSettings")
            .field("refresh_interval", &self.refresh_interval)
            .field("retry_initial", &self.retry_initial)
            .field("retry_max", &self.retry_max)
            .finish_non_exhaustive()
    }
}

impl FetchSettings {
    /// Defaults, fetching through `client`.
    pub fn new(client: Arc<Client>) -> Self {
        FetchSettings {
            client,
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            retry_initial: DEFAULT_RETRY_INITIAL,
            retry_max: DEFAULT_RETRY_MAX,
            max_body_bytes: MAX_JWKS_BYTES,
        }
    }

    /// Defaults, trusting the Mozilla roots (webpki-roots) plus `extra`.
    pub fn with_roots(
        extra: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Result<Self, rustls::Error> {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for cert in extra {
            roots.add(cert)?;
        }
        let client = Client::new(
            client_tls_with_roots(roots)?,
            ClientOptions {
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                // Each fetch waits its rule's `timeout` instead.
                response_timeout: DEFAULT_FETCH_TIMEOUT,
                resolve: Vec::new(),
            },
        );
        Ok(Self::new(Arc::new(client)))
    }
}

/// How long a key server has to accept a connection (within the rule's timeout).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why one fetch failed.
#[derive(Debug, Error)]
pub enum FetchError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("answered {0}, not 200")]
    Status(StatusCode),
    #[error("reading the body: {0}")]
    Body(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("invalid key set: {0}")]
    Jwks(#[from] JwksError),
    #[error("OpenID discovery document: {0}")]
    Discovery(String),
    #[error("{0}")]
    Request(String),
}

/// Fetch counters and state of one remote key set, for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksStatus {
    pub issuer: String,
    pub source: String,
    pub fetch_ok: u64,
    pub fetch_failed: u64,
    /// Unix seconds of the last successful fetch.
    pub last_ok_unix: Option<u64>,
    pub last_error: Option<String>,
    /// Keys currently in use (0 until the first success).
    pub keys: usize,
}

#[derive(Debug, Clone, Default)]
struct State {
    keys: Option<Arc<Jwks>>,
    /// Completed fetch attempts, successful or not.
    attempts: u64,
}

/// One rule's remote keys: the current set, shared by requests, updated by
/// a background task that lives as long as this does.
pub struct RemoteJwks {
    source: JwksSource,
    timeout: Duration,
    state: watch::Sender<State>,
    /// Dropped with `self`; the refresh task stops when it sees that.
    shutdown: watch::Sender<()>,
    started: AtomicBool,
    warned_not_started: AtomicBool,
    ok: AtomicU64,
    failed: AtomicU64,
    last_ok: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteJwks")
            .field("source", &self.source)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RemoteJwks {
    pub fn new(source: JwksSource, timeout: Duration) -> Self {
        RemoteJwks {
            source,
            timeout,
            state: watch::Sender::new(State::default()),
            shutdown: watch::Sender::new(()),
            started: AtomicBool::new(false),
            warned_not_started: AtomicBool::new(false),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_ok: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    pub fn source(&self) -> &JwksSource {
        &self.source
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The keys in use now, if any fetch has succeeded (or were inherited).
    pub fn current(&self) -> Option<Arc<Jwks>> {
        self.state.borrow().keys.clone()
    }

    /// The keys to verify with. Before the first fetch attempt has finished,
    /// waits for it (as Envoy holds a request while it fetches); after a
    /// failed first attempt, answers `None` at once while retries go on.
    pub async fn keys(&self) -> Option<Arc<Jwks>> {
        let mut rx = self.state.subscribe();
        {
            let s = rx.borrow();
            if s.keys.is_some() || s.attempts > 0 {
                return s.keys.clone();
            }
        }
        if !self.started.load(Ordering::Acquire) {
            if !self.warned_not_started.swap(true, Ordering::Relaxed) {
                tracing::error!(source = %self.source, "JWKS fetching was never started; tokens of this issuer are rejected");
            }
            return None;
        }
        // Discovery makes two requests, each with the timeout.
        let patience = self
            .timeout
            .saturating_mul(2)
            .saturating_add(Duration::from_secs(1));
        match tokio::time::timeout(patience, rx.wait_for(|s| s.attempts > 0)).await {
            Ok(Ok(s)) => s.keys.clone(),
            _ => None,
        }
    }

    pub fn status(&self, issuer: &str) -> JwksStatus {
        let last_ok = self.last_ok.load(Ordering::Relaxed);
        JwksStatus {
            issuer: issuer.to_string(),
            source: self.source.to_string(),
            fetch_ok: self.ok.load(Ordering::Relaxed),
            fetch_failed: self.failed.load(Ordering::Relaxed),
            last_ok_unix: (last_ok > 0).then_some(last_ok),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
            keys: self.current().map_or(0, |k| k.keys.len()),
        }
    }

    /// Spawns the fetch-and-refresh task (once). The keys of `previous`
    /// (the same source in the configuration this one replaces) are used
    /// until a fetch succeeds, and its counts carried on, so the metrics
    /// never go backwards across a reload.
    pub fn start(self: &Arc<Self>, settings: FetchSettings, previous: Option<&RemoteJwks>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(source = %self.source, "JWKS fetching needs a tokio runtime; not started");
            self.started.store(false, Ordering::Release);
            return;
        };
        if let Some(prev) = previous {
            if let Some(keys) = prev.current() {
                self.state.send_modify(|s| s.keys = Some(keys));
            }
            self.ok
                .fetch_add(prev.ok.load(Ordering::Relaxed), Ordering::Relaxed);
            self.failed
                .fetch_add(prev.failed.load(Ordering::Relaxed), Ordering::Relaxed);
            self.last_ok
                .fetch_max(prev.last_ok.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        let weak = Arc::downgrade(self);
        let mut shutdown = self.shutdown.subscribe();
        runtime.spawn(async move {
            let mut backoff = settings.retry_initial;
            loop {
                let Some(this) = weak.upgrade() else { return };
                let result = fetch(&settings, &this.source, this.timeout).await;
                let delay = match result {
                    Ok(jwks) => {
                        this.record_ok(jwks);
                        backoff = settings.retry_initial;
                        settings.refresh_interval
                    }
                    Err(e) => {
                        this.record_error(&e);
                        let d = jitter(backoff);
                        backoff = backoff.saturating_mul(2).min(settings.retry_max);
                        d
                    }
                };
                drop(this);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return,
                }
            }
        });
    }

    fn record_ok(&self, jwks: Jwks) {
        let n = jwks.keys.len();
        let changed = self.current().is_none_or(|old| *old != jwks);
        self.state.send_modify(|s| {
            s.keys = Some(Arc::new(jwks));
            s.attempts += 1;
        });
        self.ok.fetch_add(1, Ordering::Relaxed);
        self.last_ok
            .store(crate::observe::unix_now(), Ordering::Relaxed);
        if let Ok(mut e) = self.last_error.lock() {
            *e = None;
        }
        if changed {
            tracing::info!(source = %self.source, keys = n, "JWKS fetched");
        } else {
            tracing::debug!(source = %self.source, keys = n, "JWKS refreshed, unchanged");
        }
    }

    fn record_error(&self, e: &FetchError) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let keeping = self.current().is_some();
        self.state.send_modify(|s| s.attempts += 1);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(e.to_string());
        }
        tracing::warn!(
            source = %self.source,
            error = %e,
            keeping_previous_keys = keeping,
            "JWKS fetch failed"
        );
    }
}

/// The runtime's remote key sets: one fetcher per source the compiled
/// rules name. Built from the rules and the fetchers of the configuration
/// being replaced: a source still in use keeps its fetcher (its keys,
/// counters and refresh task); a source no longer named is dropped with its
/// fetcher, which stops its task.
#[derive(Debug, Default)]
pub struct JwksFetchers {
    by_source: HashMap<JwksSource, Arc<RemoteJwks>>,
}

impl JwksFetchers {
    /// Must be called inside a tokio runtime (new fetchers start at once).
    pub fn build(
        authn: &Authenticator,
        settings: &FetchSettings,
        previous: Option<&JwksFetchers>,
    ) -> Self {
        let mut by_source = HashMap::new();
        for rule in &authn.rules {
            let Keys::Remote { source, timeout } = &rule.keys else {
                continue;
            };
            if by_source.contains_key(source) {
                continue;
            }
            let prev = previous.and_then(|p| p.by_source.get(source));
            let fetcher = match prev {
                Some(p) if p.timeout() == *timeout => p.clone(),
                _ => {
                    // New, or fetched with another timeout: a new fetcher
                    // that starts from the previous one's keys and counts.
                    let f = Arc::new(RemoteJwks::new(source.clone(), *timeout));
                    f.start(settings.clone(), prev.map(|p| &**p));
                    f
                }
            };
            by_source.insert(source.clone(), fetcher);
        }
        Self { by_source }
    }

    /// Fetch counters and state of every remote key set `authn` uses, for metrics.
    pub fn status(&self, authn: &Authenticator) -> Vec<JwksStatus> {
        authn
            .rules
            .iter()
            .filter_map(|r| match &r.keys {
                Keys::Remote { source, .. } => {
                    self.by_source.get(source).map(|f| f.status(&r.issuer))
                }
                Keys::Inline(_) => None,
            })
            .collect()
    }
}

impl KeyStore for JwksFetchers {
    async fn keys(&self, source: &JwksSource) -> Option<Arc<Jwks>> {
        match self.by_source.get(source) {
            Some(f) => f.keys().await,
            None => None,
        }
    }
}

/// `d` plus up to 20 %, so many gateways do not retry in step.
fn jitter(d: Duration) -> Duration {
    d + d.mul_f64(fastrand::f64() * 0.2)
}

/// One fetch of `source`: the key set, parsed.
pub async fn fetch(
    settings: &FetchSettings,
    source: &JwksSource,
    timeout: Duration,
) -> Result<Jwks, FetchError> {
    let uri = match source {
        JwksSource::Uri(u) => u.clone(),
        JwksSource::Discovery(u) => {
            let doc = get(settings, u, timeout).await?;
            let v: serde_json::Value = serde_json::from_slice(&doc)
                .map_err(|e| FetchError::Discovery(format!("not JSON: {e}")))?;
            let s = v
                .get("jwks_uri")
                .and_then(|x| x.as_str())
                .ok_or_else(|| FetchError::Discovery("no jwks_uri string".into()))?;
            let uri: Uri = s
                .parse()
                .map_err(|e| FetchError::Discovery(format!("jwks_uri {s:?}: {e}")))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(FetchError::Discovery(format!(
                    "jwks_uri {s:?} is not an http(s) URL"
                )));
            }
            uri
        }
    };
    let body = get(settings, &uri, timeout).await?;
    let text = std::str::from_utf8(&body).map_err(|_| JwksError::ParseError)?;
    let (jwks, skipped) = Jwks::parse(text)?;
    for s in skipped {
        tracing::warn!(uri = %uri, "JWKS key skipped: {s}");
    }
    Ok(jwks)
}

/// `GET uri` with a deadline; the body of a 200 answer.
async fn get(settings: &FetchSettings, uri: &Uri, timeout: Duration) -> Result<Bytes, FetchError> {
    tokio::time::timeout(timeout, get_inner(settings, uri, timeout))
        .await
        .map_err(|_| FetchError::Timeout(timeout))?
}

async fn get_inner(
    settings: &FetchSettings,
    uri: &Uri,
    timeout: Duration,
) -> Result<Bytes, FetchError> {
    let req = Request::get(uri.clone())
        .header(header::ACCEPT, "application/json")
        .header(header::USER_AGENT, "llmgw")
        .body(Bytes::new())
        .map_err(|e| FetchError::Request(e.to_string()))?;
    let resp = match settings.client.request(req, timeout).await {
        Err(UpstreamError::ResponseTimeout { .. }) => return Err(FetchError::Timeout(timeout)),
        r => r?,
    };
    if resp.status() != StatusCode::OK {
        return Err(FetchError::Status(resp.status()));
    }
    let body = Limited::new(resp.into_body(), settings.max_body_bytes)
        .collect()
        .await
        .map_err(|e| FetchError::Body(e.to_string()))?;
    Ok(body.to_bytes())
}
