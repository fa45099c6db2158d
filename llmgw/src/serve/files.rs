//! Noticing configuration changes at once: inotify (the `notify` crate) on
//! the directories holding the configuration and the files it reads, so a
//! kubelet's `..data` symlink swap and an editor's write-then-rename are
//! seen like an in-place write; a change is reported once the directory
//! has been quiet for [`QUIET`]. `serve` keeps a slow poll as the fallback
//! (`--reload-interval`), for filesystems without inotify.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::Duration,
};

use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// How long the watched directories must be quiet after an event before a
/// change is reported (a file still being written keeps them busy).
pub const QUIET: Duration = Duration::from_millis(100);

pub struct Watcher {
    inner: Option<RecommendedWatcher>,
    events: mpsc::UnboundedReceiver<()>,
    dirs: HashSet<PathBuf>,
}

impl Watcher {
    /// A watcher watching nothing yet. Without inotify (or past its limits)
    /// it reports nothing and says so once: the poll still works.
    pub fn new() -> Self {
        let (tx, events) = mpsc::unbounded_channel();
        let inner = notify::recommended_watcher(move |r: notify::Result<notify::Event>| match r {
            Ok(ev) if !ev.kind.is_access() => {
                let _ = tx.send(());
            }
            Ok(_) => {}
            Err(e) => debug!(error = %e, "configuration watch"),
        });
        let inner = match inner {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(error = %e, "cannot watch the configuration files; changes are seen by polling (--reload-interval) and SIGHUP");
                None
            }
        };
        Watcher {
            inner,
            events,
            dirs: HashSet::new(),
        }
    }

    /// Watches the directories of `paths`: a directory itself, a file's
    /// parent (so that replacing the file, or a symlink on the way to it,
    /// is seen); new ones only.
    pub fn watch<'a>(&mut self, paths: impl IntoIterator<Item = &'a Path>) {
        let Some(inner) = &mut self.inner else {
            return;
        };
        for p in paths {
            let dir = if p.is_dir() {
                p.to_path_buf()
            } else {
                match p.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                    _ => PathBuf::from("."),
                }
            };
            if self.dirs.contains(&dir) {
                continue;
            }
            match inner.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    debug!(dir = %dir.display(), "watching for configuration changes");
                    self.dirs.insert(dir);
                }
                Err(e) => warn!(
                    dir = %dir.display(),
                    error = %e,
                    "cannot watch; changes there are seen by polling (--reload-interval) and SIGHUP"
                ),
            }
        }
    }

    /// Resolves once something changed in a watched directory and the
    /// directories have then been quiet for [`QUIET`].
    pub async fn changed(&mut self) {
        if self.events.recv().await.is_none() {
            return std::future::pending().await;
        }
        loop {
            match tokio::time::timeout(QUIET, self.events.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return std::future::pending().await,
                Err(_) => return,
            }
        }
    }
}

impl Default for Watcher {
    fn default() -> Self {
        Self::new()
    }
}
