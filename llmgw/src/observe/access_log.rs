//! The access log: one JSON line per request, written by a dedicated thread
//! that wakes every few milliseconds and writes what is queued, so the
//! request path never blocks on stdout nor wakes a thread per line. When the
//! writer falls behind, lines are dropped and counted, not queued without bound.

use std::{
    io::{self, Write},
    net::IpAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering, Ordering::Relaxed},
        mpsc::{self, SyncSender, TryRecvError, TrySendError},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use super::{metrics::Metrics, usage::Usage};

/// Lines queued for the writer before new ones are dropped.
const QUEUE: usize = 16 * 1024;
/// How often the writer wakes to write what is queued: often while lines
/// come, backing off to the slower pace when idle.
const FLUSH_EVERY: Duration = Duration::from_millis(20);
const FLUSH_IDLE: Duration = Duration::from_millis(320);

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
    Off,
}

/// One request, as logged. Never holds a credential.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    pub time: Rfc3339,
    pub client: IpAddr,
    pub peer: IpAddr,
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub protocol: &'a str,
    pub route: Option<&'a str>,
    pub rule: Option<&'a str>,
    pub provider: Option<&'a str>,
    pub model: Option<&'a str>,
    pub stream: bool,
    pub status: u16,
    pub upstream_status: Option<u16>,
    pub duration_ms: f64,
    pub ttfb_ms: Option<f64>,
    pub ttft_ms: Option<f64>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub total_tokens: Option<u64>,
    pub bytes_sent: u64,
    pub error: Option<&'a str>,
}

impl Entry<'_> {
    pub fn set_usage(&mut self, u: Option<Usage>) {
        if let Some(u) = u {
            self.prompt_tokens = u.prompt_tokens;
            self.completion_tokens = u.completion_tokens;
            self.total_tokens = u.total_tokens;
        }
    }
}

pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

#[derive(Clone)]
pub struct AccessLog {
    tx: Option<SyncSender<Vec<u8>>>,
    metrics: Arc<Metrics>,
    writer: Arc<Writer>,
}

#[derive(Default)]
struct Writer {
    closing: AtomicBool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl AccessLog {
    /// Starts the writer thread for `target`.
    pub fn start(target: &Target, metrics: Arc<Metrics>) -> io::Result<Self> {
        let out: Box<dyn Write + Send> = match target {
            Target::Off => {
                return Ok(Self {
                    tx: None,
                    metrics,
                    writer: Arc::default(),
                });
            }
            Target::Stdout => Box::new(io::stdout()),
            Target::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        };
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE);
        let writer = Arc::new(Writer::default());
        let w = writer.clone();
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut out = io::BufWriter::with_capacity(64 * 1024, out);
                let mut pause = FLUSH_EVERY;
                loop {
                    let closing = w.closing.load(Ordering::Acquire);
                    let mut wrote = false;
                    loop {
                        match rx.try_recv() {
                            Ok(line) => {
                                let _ = out.write_all(&line);
                                wrote = true;
                            }
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Disconnected) => {
                                let _ = out.flush();
                                return;
                            }
                        }
                    }
                    if wrote {
                        let _ = out.flush();
                        pause = FLUSH_EVERY;
                    } else {
                        pause = (pause * 2).min(FLUSH_IDLE);
                    }
                    if closing {
                        return;
                    }
                    std::thread::park_timeout(pause);
                }
            })?;
        if let Ok(mut t) = writer.thread.lock() {
            *t = Some(thread);
        }
        Ok(Self {
            tx: Some(tx),
            metrics,
            writer,
        })
    }

    /// Writes what is queued and stops the writer (at shutdown).
    pub fn close(&self) {
        self.writer.closing.store(true, Ordering::Release);
        let handle = self.writer.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            h.thread().unpark();
            let _ = h.join();
        }
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn write(&self, entry: &Entry<'_>) {
        let Some(tx) = &self.tx else { return };
        let mut line = Vec::with_capacity(512);
        if serde_json::to_writer(&mut line, entry).is_err() {
            return;
        }
        line.push(b'\n');
        if let Err(TrySendError::Full(_)) = tx.try_send(line) {
            self.metrics.access_log_dropped.fetch_add(1, Relaxed);
        }
    }
}

/// A wall-clock time printed as RFC 3339 UTC with milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Rfc3339(pub SystemTime);

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs();
        let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60,
            d.subsec_millis()
        )
    }
}

impl Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        let t = UNIX_EPOCH + Duration::from_millis(1_720_682_745_123);
        assert_eq!(Rfc3339(t).to_string(), "2024-07-11T07:25:45.123Z");
        assert_eq!(Rfc3339(UNIX_EPOCH).to_string(), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(Rfc3339(leap).to_string(), "2000-02-29T00:00:00.000Z");
    }
}
