//! The access log: one JSON line per request. Each worker thread formats its
//! lines into a buffer of its own (`LocalLog`) and writes them out itself when
//! it is awake anyway: after a request, once 100 ms have passed since its
//! last write (or 64 KiB are buffered), and at its one-second heartbeat. No
//! thread is woken per line or per batch, so a quiet gateway pays one write
//! per request at most and a busy one a write per 64 KiB.
//!
//! Workers never block on a pipe or a socket (stdout under a container
//! runtime): those are written with `RWF_NOWAIT`, and what they do not take
//! at once is queued for a writer thread, in order, up to 16k lines; beyond
//! that lines are dropped and counted rather than slowing requests. A
//! terminal, or a kernel without `RWF_NOWAIT` for the target, goes through
//! the writer thread always. A regular file (or `/dev/null`) is appended to
//! directly, as nginx does: such writes land in the page cache.

use std::{
    fs::File,
    io::{self, Write},
    net::IpAddr,
    os::fd::{AsFd, AsRawFd},
    path::PathBuf,
    sync::{
        Arc, Condvar, Mutex, MutexGuard, Weak,
        atomic::{AtomicU8, Ordering::Relaxed},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use tokio::sync::Notify;

use super::{Usage, metrics::Metrics};

/// Lines queued for the writer thread before new ones are dropped.
const QUEUE_LINES: usize = 16 * 1024;
/// A worker writes its buffer once this much has passed since its last write
/// (checked when it adds a line), or when the buffer reaches `FLUSH_BYTES`;
/// its heartbeat writes what is left every second (Envoy flushes its file
/// access logs every second).
const FLUSH_EVERY: Duration = Duration::from_millis(100);
const FLUSH_BYTES: usize = 64 * 1024;

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
    /// `x-request-id` as sent to the provider.
    pub request_id: &'a str,
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
    #[serde(serialize_with = "ser_millis")]
    pub duration_ms: Duration,
    #[serde(serialize_with = "ser_opt_millis")]
    pub ttfb_ms: Option<Duration>,
    #[serde(serialize_with = "ser_opt_millis")]
    pub ttft_ms: Option<Duration>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub total_tokens: Option<u64>,
    pub bytes_sent: u64,
    pub error: Option<&'a str>,
    /// The AuthorizationPolicy that denied the request (`namespace/name`).
    pub policy: Option<String>,
}

fn ser_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(millis(*d))
}

fn ser_opt_millis<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(millis(*d)),
        None => s.serialize_none(),
    }
}

impl Entry<'_> {
    pub fn set_usage(&mut self, u: Option<Usage>) {
        if let Some(u) = u {
            self.prompt_tokens = u.prompt_tokens;
            self.completion_tokens = u.completion_tokens;
            self.total_tokens = u.total_tokens;
        }
    }

    /// The JSON line (without the newline), byte for byte what serde_json
    /// writes for this struct, without its formatting machinery.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"time\":\"");
        self.time.write_to(out);
        out.extend_from_slice(b"\",\"request_id\":");
        json_str(out, self.request_id);
        out.extend_from_slice(b",\"client\":\"");
        write_ip(out, self.client);
        out.extend_from_slice(b"\",\"peer\":\"");
        write_ip(out, self.peer);
        out.extend_from_slice(b"\",\"host\":");
        json_str(out, self.host);
        out.extend_from_slice(b",\"method\":");
        json_str(out, self.method);
        out.extend_from_slice(b",\"path\":");
        json_str(out, self.path);
        out.extend_from_slice(b",\"protocol\":");
        json_str(out, self.protocol);
        out.extend_from_slice(b",\"route\":");
        json_opt_str(out, self.route);
        out.extend_from_slice(b",\"rule\":");
        json_opt_str(out, self.rule);
        out.extend_from_slice(b",\"provider\":");
        json_opt_str(out, self.provider);
        out.extend_from_slice(b",\"model\":");
        json_opt_str(out, self.model);
        out.extend_from_slice(if self.stream {
            b",\"stream\":true,\"status\":"
        } else {
            b",\"stream\":false,\"status\":"
        });
        write_u64(out, u64::from(self.status));
        out.extend_from_slice(b",\"upstream_status\":");
        json_opt_u64(out, self.upstream_status.map(u64::from));
        out.extend_from_slice(b",\"duration_ms\":");
        write_millis(out, self.duration_ms);
        out.extend_from_slice(b",\"ttfb_ms\":");
        json_opt_millis(out, self.ttfb_ms);
        out.extend_from_slice(b",\"ttft_ms\":");
        json_opt_millis(out, self.ttft_ms);
        out.extend_from_slice(b",\"prompt_tokens\":");
        json_opt_u64(out, self.prompt_tokens);
        out.extend_from_slice(b",\"completion_tokens\":");
        json_opt_u64(out, self.completion_tokens);
        out.extend_from_slice(b",\"total_tokens\":");
        json_opt_u64(out, self.total_tokens);
        out.extend_from_slice(b",\"bytes_sent\":");
        write_u64(out, self.bytes_sent);
        out.extend_from_slice(b",\"error\":");
        json_opt_str(out, self.error);
        out.extend_from_slice(b",\"policy\":");
        json_opt_str(out, self.policy.as_deref());
        out.push(b'}');
    }
}

/// Milliseconds with microsecond precision, as logged.
pub fn millis(d: Duration) -> f64 {
    micros(d) as f64 / 1e3
}

/// `d` in whole microseconds, rounded half up.
fn micros(d: Duration) -> u64 {
    let n = d.as_nanos().saturating_add(500) / 1000;
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// What serde_json writes for `micros / 1000` as an f64: the shortest
/// decimal that reads back as the same number (`12.0`, `0.5`, `1.234`).
fn write_millis(out: &mut Vec<u8>, d: Duration) {
    let us = micros(d);
    if us >= 1 << 50 {
        // Far beyond any request (35 years); let the float formatter decide.
        let _ = serde_json::to_writer(&mut *out, &millis(d));
        return;
    }
    write_u64(out, us / 1000);
    out.push(b'.');
    let frac = us % 1000;
    if frac == 0 {
        out.push(b'0');
        return;
    }
    let digits = [
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ];
    let len = if !frac.is_multiple_of(10) {
        3
    } else if !frac.is_multiple_of(100) {
        2
    } else {
        1
    };
    out.extend_from_slice(&digits[..len]);
}

fn json_opt_millis(out: &mut Vec<u8>, d: Option<Duration>) {
    match d {
        Some(d) => write_millis(out, d),
        None => out.extend_from_slice(b"null"),
    }
}

fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn json_opt_u64(out: &mut Vec<u8>, n: Option<u64>) {
    match n {
        Some(n) => write_u64(out, n),
        None => out.extend_from_slice(b"null"),
    }
}

/// An address as `Display` prints it.
pub fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                write_u64(out, u64::from(o));
            }
        }
        // Only hex digits, colons and dots: nothing to escape.
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// A JSON string, escaped as serde_json escapes (`\"`, `\\`, `\b`, `\f`,
/// `\n`, `\r`, `\t`, other control characters as `\u00XX`).
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    if !needs_escape(bytes) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Whether any byte is a control character, `"` or `\\`; eight at a time.
fn needs_escape(b: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Nonzero iff some byte of `w` is below `n` (n <= 128).
    let below = |w: u64, n: u64| w.wrapping_sub(ONES * n) & !w & HIGH;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let w = u64::from_le_bytes(w);
        if below(w, 0x20) | below(w ^ (ONES * 0x22), 1) | below(w ^ (ONES * 0x5c), 1) != 0 {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&c| c < 0x20 || c == b'"' || c == b'\\')
}

fn json_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// How a sink is written.
const DIRECT: u8 = 0;
const NOWAIT: u8 = 1;
const THREAD: u8 = 2;

/// The file or stream lines go to, shared by every worker.
struct Sink {
    file: File,
    /// `DIRECT`, `NOWAIT` or `THREAD`; `NOWAIT` turns into `THREAD` if the
    /// kernel refuses `RWF_NOWAIT` for this file.
    mode: AtomicU8,
    queue: Mutex<Queue>,
    ready: Condvar,
    metrics: Arc<Metrics>,
    /// Every worker's buffer, written out at close.
    locals: Mutex<Vec<Weak<LocalLog>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// What waits for the writer thread. While `backed_up`, workers queue
/// instead of writing, so lines stay in order and never interleave.
#[derive(Default)]
struct Queue {
    bytes: Vec<u8>,
    lines: usize,
    backed_up: bool,
    closing: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sink {
    /// Writes whole lines, or queues them (see the module documentation).
    fn write(&self, batch: &[u8], lines: usize) {
        let mut q = lock(&self.queue);
        let mut rest = batch;
        if !q.backed_up {
            match self.mode.load(Relaxed) {
                DIRECT => {
                    let _ = write_all(&self.file, batch);
                    return;
                }
                NOWAIT => match write_nowait(&self.file, batch) {
                    Ok(n) if n == batch.len() => return,
                    Ok(n) => rest = &batch[n..],
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL)) => {
                        self.mode.store(THREAD, Relaxed);
                    }
                    // The reader went away or the like: as before, lines are lost.
                    Err(_) => return,
                },
                _ => {}
            }
            q.backed_up = true;
        }
        let mut lines = if rest.len() == batch.len() {
            lines
        } else {
            memchr::memchr_iter(b'\n', rest).count()
        };
        if q.lines + lines > QUEUE_LINES {
            // Drop whole lines only: the tail of a line partly written stays.
            let keep = if rest.len() < batch.len() && batch[batch.len() - rest.len() - 1] != b'\n' {
                memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1)
            } else {
                0
            };
            let dropped = lines - usize::from(keep > 0);
            self.metrics
                .access_log_dropped
                .fetch_add(dropped as u64, Relaxed);
            rest = &rest[..keep];
            lines -= dropped;
        }
        q.bytes.extend_from_slice(rest);
        q.lines += lines;
        drop(q);
        self.ready.notify_one();
    }

    /// The writer thread: writes what workers could not, blocking if need be.
    fn run(&self) {
        let mut batch = Vec::new();
        loop {
            let mut q = lock(&self.queue);
            while q.bytes.is_empty() {
                // Everything queued is out: workers may write directly again.
                q.backed_up = false;
                if q.closing {
                    return;
                }
                q = self.ready.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            std::mem::swap(&mut batch, &mut q.bytes);
            q.lines = 0;
            drop(q);
            let _ = write_all(&self.file, &batch);
            batch.clear();
            batch.shrink_to(FLUSH_BYTES);
        }
    }
}

fn write_all(mut f: &File, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match f.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One write that never blocks: `pwritev2(RWF_NOWAIT)` at the current position.
fn write_nowait(f: &File, buf: &[u8]) -> io::Result<usize> {
    loop {
        let iov = libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: one iovec over `buf`, valid for the call; the fd is open.
        let n = unsafe { libc::pwritev2(f.as_raw_fd(), &iov, 1, -1, libc::RWF_NOWAIT) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// How a file is best written: regular files and `/dev/null` directly;
/// pipes and sockets without blocking; anything else (a terminal) by the thread.
fn mode_for(f: &File) -> u8 {
    let Ok(meta) = f.metadata() else {
        return THREAD;
    };
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let ft = meta.file_type();
    if ft.is_file() {
        DIRECT
    } else if ft.is_fifo() || ft.is_socket() {
        NOWAIT
    } else if ft.is_char_device() && meta.rdev() == libc::makedev(1, 3) {
        DIRECT // /dev/null
    } else {
        THREAD
    }
}

#[derive(Clone)]
pub struct AccessLog {
    sink: Option<Arc<Sink>>,
}

impl AccessLog {
    /// Opens `target`; starts the writer thread when the target may need it.
    pub fn start(target: &Target, metrics: Arc<Metrics>) -> io::Result<Self> {
        let file = match target {
            Target::Off => return Ok(Self { sink: None }),
            Target::Stdout => File::from(io::stdout().as_fd().try_clone_to_owned()?),
            Target::File(p) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        };
        let mode = mode_for(&file);
        let sink = Arc::new(Sink {
            file,
            mode: AtomicU8::new(mode),
            queue: Mutex::default(),
            ready: Condvar::new(),
            metrics,
            locals: Mutex::default(),
            thread: Mutex::default(),
        });
        if mode != DIRECT {
            let s = sink.clone();
            let t = std::thread::Builder::new()
                .name("access-log".into())
                .spawn(move || s.run())?;
            *lock(&sink.thread) = Some(t);
        }
        Ok(Self { sink: Some(sink) })
    }

    pub fn enabled(&self) -> bool {
        self.sink.is_some()
    }

    /// A buffer for one thread's lines.
    pub fn local(&self) -> Arc<LocalLog> {
        let l = Arc::new(LocalLog {
            sink: self.sink.clone(),
            state: Mutex::new(LocalState {
                buf: Vec::new(),
                lines: 0,
                last_flush: Instant::now(),
            }),
            due: Notify::new(),
        });
        if let Some(s) = &self.sink {
            let mut locals = lock(&s.locals);
            locals.retain(|w| w.strong_count() > 0);
            locals.push(Arc::downgrade(&l));
        }
        l
    }

    /// Writes every buffer and what is queued, and stops the writer (at shutdown).
    pub fn close(&self) {
        let Some(s) = &self.sink else { return };
        let locals: Vec<_> = lock(&s.locals).iter().filter_map(Weak::upgrade).collect();
        for l in locals {
            l.flush();
        }
        lock(&s.queue).closing = true;
        s.ready.notify_one();
        if let Some(t) = lock(&s.thread).take() {
            let _ = t.join();
        }
    }
}

/// One worker's buffered lines.
pub struct LocalLog {
    sink: Option<Arc<Sink>>,
    state: Mutex<LocalState>,
    due: Notify,
}

struct LocalState {
    buf: Vec<u8>,
    lines: usize,
    last_flush: Instant,
}

impl LocalLog {
    pub fn enabled(&self) -> bool {
        self.sink.is_some()
    }

    /// Adds a line; when a write is due, wakes whoever waits in `due` (the
    /// worker's heartbeat, which runs once the current request has yielded).
    pub fn write(&self, entry: &Entry<'_>, now: Instant) {
        if self.sink.is_none() {
            return;
        }
        let mut st = lock(&self.state);
        entry.write_json(&mut st.buf);
        st.buf.push(b'\n');
        st.lines += 1;
        let due = st.buf.len() >= FLUSH_BYTES
            || now.saturating_duration_since(st.last_flush) >= FLUSH_EVERY;
        drop(st);
        if due {
            self.due.notify_one();
        }
    }

    /// Resolves when `write` found a write due.
    pub async fn due(&self) {
        self.due.notified().await
    }

    /// Writes what is buffered.
    pub fn flush(&self) {
        let Some(sink) = &self.sink else { return };
        let mut st = lock(&self.state);
        st.last_flush = Instant::now();
        if st.buf.is_empty() {
            return;
        }
        sink.write(&st.buf, st.lines);
        st.buf.clear();
        st.buf.shrink_to(2 * FLUSH_BYTES);
        st.lines = 0;
    }
}

/// A wall-clock time printed as RFC 3339 UTC with milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Rfc3339(pub SystemTime);

/// A UTC civil time: year, month, day, seconds of the day, milliseconds.
struct Civil {
    year: i64,
    month: i64,
    day: i64,
    secs_of_day: u64,
    ms: u32,
}

impl Rfc3339 {
    fn civil(&self) -> Civil {
        let d = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs();
        let (days, secs_of_day) = ((secs / 86_400) as i64, secs % 86_400);
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        Civil {
            year: yoe + era * 400 + i64::from(month <= 2),
            month,
            day,
            secs_of_day,
            ms: d.subsec_millis(),
        }
    }

    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    fn write_to(&self, out: &mut Vec<u8>) {
        let c = self.civil();
        if !(0..=9999).contains(&c.year) {
            let _ = write!(out, "{self}");
            return;
        }
        let two = |out: &mut Vec<u8>, n: u64| {
            out.push(b'0' + (n / 10) as u8);
            out.push(b'0' + (n % 10) as u8);
        };
        let (year, rem) = (c.year as u64, c.secs_of_day);
        two(out, year / 100);
        two(out, year % 100);
        out.push(b'-');
        two(out, c.month as u64);
        out.push(b'-');
        two(out, c.day as u64);
        out.push(b'T');
        two(out, rem / 3600);
        out.push(b':');
        two(out, rem / 60 % 60);
        out.push(b':');
        two(out, rem % 60);
        out.push(b'.');
        let ms = u64::from(c.ms);
        out.push(b'0' + (ms / 100) as u8);
        two(out, ms % 100);
        out.push(b'Z');
    }
}

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Civil {
            year,
            month,
            day,
            secs_of_day: rem,
            ms,
        } = self.civil();
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60,
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
        for t in [
            t,
            UNIX_EPOCH,
            leap,
            UNIX_EPOCH + Duration::from_millis(4_102_444_799_999),
        ] {
            let mut out = Vec::new();
            Rfc3339(t).write_to(&mut out);
            assert_eq!(String::from_utf8(out).unwrap(), Rfc3339(t).to_string());
        }
    }

    fn entry<'a>(strs: &'a [&'a str; 8], n: u64, ip: IpAddr) -> Entry<'a> {
        let d = |us: u64| Duration::from_nanos(us * 1000 + n % 1000);
        Entry {
            time: Rfc3339(UNIX_EPOCH + Duration::from_millis(1_720_682_745_000 + n)),
            request_id: if n.is_multiple_of(2) {
                strs[7]
            } else {
                "0b6c3d0e-1f2a-4b3c-8d4e-5f60718293a4"
            },
            client: ip,
            peer: IpAddr::from([127, 0, 0, 1]),
            host: strs[0],
            method: strs[1],
            path: strs[2],
            protocol: strs[3],
            route: Some(strs[4]).filter(|_| n.is_multiple_of(2)),
            rule: Some(strs[5]),
            provider: Some(strs[6]).filter(|_| n.is_multiple_of(3)),
            model: None,
            stream: n % 2 == 1,
            status: (100 + n % 500) as u16,
            upstream_status: Some(200).filter(|_| !n.is_multiple_of(5)),
            duration_ms: d(n * 7919 % 10_000_000),
            ttfb_ms: Some(d(n % 1000)).filter(|_| !n.is_multiple_of(4)),
            ttft_ms: Some(d(n * 13 % 100_000)),
            prompt_tokens: Some(n),
            completion_tokens: None,
            total_tokens: Some(n * 1_000_003),
            bytes_sent: n * 31,
            error: Some(strs[7]),
            policy: n
                .is_multiple_of(3)
                .then(|| strs[n as usize % strs.len()].to_string()),
        }
    }

    /// The hand-written line is exactly what serde_json writes.
    #[test]
    fn json_line_is_serde_json() {
        let strs = [
            "test.com",
            "POST",
            "/v1/chat/\"completions\"\\",
            "HTTP/1.1",
            "default/route",
            "rule-0",
            "ns/provider",
            "tab\there, newline\n, nul \u{0}, \u{1f} bell \u{7} \u{8}\u{c}\r é ✓ \u{7f}",
        ];
        let ips = [
            IpAddr::from([10, 0, 0, 255]),
            IpAddr::from([0, 0, 0, 0]),
            "2001:db8::1".parse().unwrap(),
            "::ffff:1.2.3.4".parse().unwrap(),
        ];
        for n in 0..2000u64 {
            let e = entry(&strs, n, ips[(n % 4) as usize]);
            let mut ours = Vec::new();
            e.write_json(&mut ours);
            let theirs = serde_json::to_vec(&e).unwrap();
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                String::from_utf8(theirs).unwrap()
            );
        }
        for us in [0u64, 1, 10, 100, 999, 1000, 1001, 1010, 1100, 123_456_789] {
            let mut ours = Vec::new();
            write_millis(&mut ours, Duration::from_micros(us));
            let theirs = serde_json::to_vec(&millis(Duration::from_micros(us))).unwrap();
            assert_eq!(ours, theirs, "{us} µs");
        }
    }

    #[test]
    fn escape_check_finds_every_byte_that_needs_it() {
        for len in 0..20 {
            for pos in 0..len {
                for b in 0..=255u8 {
                    let mut v = vec![b'a'; len];
                    v[pos] = b;
                    let expect = b < 0x20 || b == b'"' || b == b'\\';
                    assert_eq!(needs_escape(&v), expect, "len {len} pos {pos} byte {b}");
                }
            }
        }
    }

    #[test]
    fn workers_write_in_order_and_close_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let metrics = Arc::new(Metrics::new());
        let log = AccessLog::start(&Target::File(path.clone()), metrics).unwrap();
        let a = log.local();
        let b = log.local();
        let strs = ["h", "GET", "/", "HTTP/1.1", "r", "x", "p", "e"];
        let now = Instant::now();
        for n in 0..100 {
            let l = if n % 2 == 0 { &a } else { &b };
            l.write(&entry(&strs, n, IpAddr::from([1, 2, 3, 4])), now);
        }
        a.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 50);
        log.close();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 100);
        for l in text.lines() {
            serde_json::from_str::<serde_json::Value>(l).unwrap();
        }
    }

    #[test]
    fn a_full_pipe_queues_then_drains_in_order() {
        let (r, w) = std::io::pipe().unwrap();
        let file = File::from(std::os::fd::OwnedFd::from(w));
        let metrics = Arc::new(Metrics::new());
        assert_eq!(mode_for(&file), NOWAIT);
        let sink = Arc::new(Sink {
            file,
            mode: AtomicU8::new(NOWAIT),
            queue: Mutex::default(),
            ready: Condvar::new(),
            metrics: metrics.clone(),
            locals: Mutex::default(),
            thread: Mutex::default(),
        });
        let s = sink.clone();
        let t = std::thread::spawn(move || s.run());
        // Far more than a pipe holds (64 KiB): the rest waits for the thread.
        let mut expected = Vec::new();
        for n in 0..4000u32 {
            let line = format!("{{\"n\":{n},\"pad\":\"{}\"}}\n", "x".repeat(40));
            sink.write(line.as_bytes(), 1);
            expected.extend_from_slice(line.as_bytes());
        }
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut r = r;
            std::io::Read::read_to_end(&mut r, &mut all).unwrap();
            all
        });
        lock(&sink.queue).closing = true;
        sink.ready.notify_one();
        t.join().unwrap();
        drop(sink);
        let all = reader.join().unwrap();
        assert_eq!(all, expected);
        assert_eq!(metrics.access_log_dropped.load(Relaxed), 0);
    }
}
