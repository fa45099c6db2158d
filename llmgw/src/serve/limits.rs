//! The process's open-file limit: raised to the hard limit at start (an
//! edge gateway holds a descriptor per client), and the share of it client
//! connections may take, the rest kept for the admin server, providers,
//! the access log and reloads.

use tracing::{info, warn};

/// The open-file limit, before and after [`raise_open_files`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
}

impl OpenFiles {
    /// Descriptors never given to client connections: a tenth of the
    /// limit, at least 16 and at most 1024.
    pub fn reserve(&self) -> u64 {
        (self.soft / 10).clamp(16, 1024)
    }

    /// Client connections accepted at most at once, given `configured`
    /// (`--max-connections`, 0: as many as the limit leaves) and the
    /// descriptors `in_use` already (listeners, log, runtime).
    pub fn max_connections(&self, configured: u64, in_use: u64) -> u64 {
        let room = self
            .soft
            .saturating_sub(in_use)
            .saturating_sub(self.reserve())
            .max(1);
        match configured {
            0 => room,
            n => n.min(room),
        }
    }
}

/// Descriptors this process has open now (32 if it cannot tell).
pub fn in_use() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(32, |d| d.count() as u64)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and logs both.
pub fn raise_open_files() -> OpenFiles {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        let e = std::io::Error::last_os_error();
        warn!(error = %e, "cannot read the open-file limit; assuming 1024");
        return OpenFiles {
            soft_before: 1024,
            soft: 1024,
            hard: 1024,
        };
    }
    let (soft_before, hard) = (lim.rlim_cur, lim.rlim_max);
    let mut soft = soft_before;
    if soft_before < hard {
        let want = libc::rlimit {
            rlim_cur: hard,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            soft = hard;
        } else {
            let e = std::io::Error::last_os_error();
            warn!(soft = soft_before, hard, error = %e, "cannot raise the open-file limit");
        }
    }
    let files = OpenFiles {
        soft_before,
        soft,
        hard,
    };
    info!(
        soft_before,
        soft,
        hard,
        reserve = files.reserve(),
        "open-file limit"
    );
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_a_tenth_within_bounds() {
        let f = |soft| OpenFiles {
            soft_before: soft,
            soft,
            hard: soft,
        };
        assert_eq!(f(256).reserve(), 25);
        assert_eq!(f(100).reserve(), 16);
        assert_eq!(f(1 << 20).reserve(), 1024);
        assert_eq!(f(1024).max_connections(0, 22), 900);
        assert_eq!(f(1024).max_connections(100, 22), 100);
        assert_eq!(f(1024).max_connections(5000, 22), 900);
        assert_eq!(f(20).max_connections(0, 30), 1);
    }
}
