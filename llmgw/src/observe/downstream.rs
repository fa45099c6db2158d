//! What the client side is doing right now: open connections by protocol,
//! requests in flight, request-body bytes held, and connections or requests
//! cut by a timeout, by kind. Plain atomics, rendered for `/metrics`.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
};

/// The protocol of a client connection, once known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnProtocol {
    /// Accepted, protocol not known yet (TLS handshake, no byte read).
    Handshake = 0,
    Http1 = 1,
    Http2 = 2,
}

impl ConnProtocol {
    const ALL: [ConnProtocol; 3] = [
        ConnProtocol::Handshake,
        ConnProtocol::Http1,
        ConnProtocol::Http2,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnProtocol::Handshake => "handshake",
            ConnProtocol::Http1 => "http1",
            ConnProtocol::Http2 => "http2",
        }
    }
}

/// Why a client connection or request was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    /// Request headers not read in time (`--header-read-timeout`).
    Header = 0,
    /// Request body too slow or too long (`--request-body-timeout`,
    /// `--request-body-min-rate`, `--stream-idle-timeout` between frames).
    Body = 1,
    /// A keep-alive connection idle too long (`--idle-timeout`).
    Idle = 2,
    /// The client stopped reading the answer (`--stream-idle-timeout`).
    Write = 3,
}

impl TimeoutKind {
    const ALL: [TimeoutKind; 4] = [
        TimeoutKind::Header,
        TimeoutKind::Body,
        TimeoutKind::Idle,
        TimeoutKind::Write,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TimeoutKind::Header => "header",
            TimeoutKind::Body => "body",
            TimeoutKind::Idle => "idle",
            TimeoutKind::Write => "write",
        }
    }
}

#[derive(Debug, Default)]
pub struct Downstream {
    connections: [AtomicI64; 3],
    pub requests_in_flight: AtomicI64,
    /// Bytes of request bodies read and held by requests in flight.
    pub body_bytes_held: AtomicI64,
    timeouts: [AtomicU64; 4],
    /// Requests answered 503 because bodies held too much memory together.
    pub bodies_refused: AtomicU64,
    /// Accepts that failed for lack of file descriptors (EMFILE/ENFILE).
    pub accept_fd_exhausted: AtomicU64,
    /// Connections not accepted while descriptors ran short (the reserve
    /// kept for the admin server and outbound connections).
    pub accept_paused: AtomicU64,
    /// Answers whose client has taken nothing for a second or more.
    pub stalled_answers: AtomicI64,
    /// Stalled answers cut early because too many were stalled at once.
    pub stalled_answers_shed: AtomicU64,
}

impl Downstream {
    pub fn opened(&self, p: ConnProtocol) {
        self.connections[p as usize].fetch_add(1, Relaxed);
    }

    pub fn closed(&self, p: ConnProtocol) {
        self.connections[p as usize].fetch_sub(1, Relaxed);
    }

    /// Open client connections, all protocols.
    pub fn open(&self) -> i64 {
        self.connections.iter().map(|c| c.load(Relaxed)).sum()
    }

    pub fn timed_out(&self, kind: TimeoutKind) {
        self.timeouts[kind as usize].fetch_add(1, Relaxed);
    }

    pub fn timeouts(&self, kind: TimeoutKind) -> u64 {
        self.timeouts[kind as usize].load(Relaxed)
    }

    pub fn render(&self, out: &mut String) {
        out.push_str(
            "# HELP llmgw_downstream_connections Open client connections, by protocol (handshake: not known yet).\n\
             # TYPE llmgw_downstream_connections gauge\n",
        );
        for p in ConnProtocol::ALL {
            let _ = writeln!(
                out,
                "llmgw_downstream_connections{{protocol=\"{}\"}} {}",
                p.as_str(),
                self.connections[p as usize].load(Relaxed)
            );
        }
        let _ = write!(
            out,
            "# HELP llmgw_requests_in_flight Requests being handled (their answer not finished).\n\
             # TYPE llmgw_requests_in_flight gauge\n\
             llmgw_requests_in_flight {}\n\
             # HELP llmgw_request_body_bytes_held Bytes of request bodies held by requests in flight (bounded by --max-buffered-bodies).\n\
             # TYPE llmgw_request_body_bytes_held gauge\n\
             llmgw_request_body_bytes_held {}\n\
             # HELP llmgw_request_bodies_refused_total Requests answered 503 because request bodies held --max-buffered-bodies together.\n\
             # TYPE llmgw_request_bodies_refused_total counter\n\
             llmgw_request_bodies_refused_total {}\n\
             # HELP llmgw_downstream_accept_fd_exhausted_total Accepts that failed for lack of file descriptors.\n\
             # TYPE llmgw_downstream_accept_fd_exhausted_total counter\n\
             llmgw_downstream_accept_fd_exhausted_total {}\n\
             # HELP llmgw_downstream_accept_paused_total Times the listeners stopped accepting to keep descriptors for the admin server and providers.\n\
             # TYPE llmgw_downstream_accept_paused_total counter\n\
             llmgw_downstream_accept_paused_total {}\n\
             # HELP llmgw_stalled_answers Answers whose client has taken nothing for a second or more.\n\
             # TYPE llmgw_stalled_answers gauge\n\
             llmgw_stalled_answers {}\n\
             # HELP llmgw_stalled_answers_shed_total Stalled answers cut early because more than --max-stalled-answers were stalled at once.\n\
             # TYPE llmgw_stalled_answers_shed_total counter\n\
             llmgw_stalled_answers_shed_total {}\n\
             # HELP llmgw_downstream_timeouts_total Client connections or requests cut by a timeout, by kind.\n\
             # TYPE llmgw_downstream_timeouts_total counter\n",
            self.requests_in_flight.load(Relaxed),
            self.body_bytes_held.load(Relaxed),
            self.bodies_refused.load(Relaxed),
            self.accept_fd_exhausted.load(Relaxed),
            self.accept_paused.load(Relaxed),
            self.stalled_answers.load(Relaxed),
            self.stalled_answers_shed.load(Relaxed),
        );
        for k in TimeoutKind::ALL {
            let _ = writeln!(
                out,
                "llmgw_downstream_timeouts_total{{kind=\"{}\"}} {}",
                k.as_str(),
                self.timeouts(k)
            );
        }
    }
}
