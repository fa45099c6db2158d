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
    os::fd::{AsFd, AsRawFd},
    path::PathBuf,
    sync::{
        Arc, Condvar, Mutex, MutexGuard, Weak,
        atomic::{AtomicU8, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use tokio::sync::Notify;

pub use super::log_line::{Entry, Rfc3339, millis, write_ip};
use super::metrics::Metrics;

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

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::observe::log_line::tests::entry;

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
