//! Group commit for SQLite: the sync of the log runs outside the writer.
//!
//! Every write commits at `synchronous = NORMAL`: its frames are written to
//! the `-wal` file (the operating system's cache) and the one writer
//! connection is free for the next write at once. A write that must be
//! durable ([`Durability::Commit`](super::backend::Durability)) then waits
//! until a sync of the `-wal` file that began after its commit has returned:
//! one sync at a time (`fdatasync` on a file handle of its own, on a
//! blocking thread), and whoever arrives while one runs waits for the next,
//! which covers every commit written before it began — many commits per
//! sync, and claims and completions run while it does.
//!
//! What holds (**Invariant 43**):
//! - A durable write returns only once its commit is on disk (a crash of
//!   the machine keeps it). A WAL is replayed only up to its first missing
//!   frame, so everything committed before it is on disk too.
//! - A read in this process returns only once every commit it could have
//!   seen is on disk: after its statements ran, it waits for the durable
//!   writes that had begun by then (usually there is none left to wait
//!   for). Claims ([`Durability::NextCommit`](super::backend::Durability))
//!   are not waited for, as before: a claim lost with the machine leaves its
//!   tasks pending, as if never claimed.
//! - Other processes reading the same file see a commit as soon as it is
//!   written, up to one sync before it is durable.
//! - A crash of the machine loses only commits nobody was told about: the
//!   caller of such a write was still waiting, and no read of this process
//!   had returned them.
//! - A failed sync is never retried: the kernel may have dropped the pages
//!   it could not write and report the next sync as a success (PostgreSQL's
//!   "fsyncgate"). From the first failure on, every durable write and every
//!   read of this process fails with it ([`StoreError::LogSyncFailed`]);
//!   a restart recovers the database from what reached the disk.
//!
//! The `-wal` file is found by its name and kept open. SQLite reuses it
//! (rewinding to its start after a checkpoint) while any connection has the
//! database open, and deletes it only when the last one closes — after
//! checkpointing every frame into the database file and syncing it. So
//! before each sync the name is looked up again: a different file there (a
//! new `-wal` after all connections were closed, e.g. idle ones) is opened,
//! and its directory synced once so that its name survives a crash; no file
//! there means nothing is left to sync.

use super::StoreError;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The syncer of one SQLite file's log, and the counters that say which
/// commits it has covered. Commits are numbered in the order they run on
/// the one writer connection.
#[derive(Debug)]
pub(crate) struct WalSync {
    wal: PathBuf,
    /// Commits begun: numbered right before their `COMMIT`, while the
    /// writer connection is held, so in commit order.
    begun: AtomicU64,
    /// The number of the last durable write begun: what a read waits for.
    wanted: AtomicU64,
    /// Every commit up to this number has returned from `COMMIT`.
    written: AtomicU64,
    written_changed: tokio::sync::Notify,
    /// Every commit up to this number is on disk.
    synced: AtomicU64,
    /// Held while a sync runs (and by a [`SyncHold`]): one sync at a time.
    /// Holds the open `-wal` file.
    syncer: Arc<tokio::sync::Mutex<Option<WalFile>>>,
    /// Callers waiting for a sync now.
    waiting: AtomicUsize,
    /// Why a sync failed, once one has: the answer to every wait since.
    failed: std::sync::OnceLock<String>,
}

/// The open `-wal` file and which file it is.
#[derive(Debug)]
struct WalFile {
    file: std::fs::File,
    id: (u64, u64),
}

/// While held, no sync of the log begins: durable writes and reads that
/// wait for one wait. From [`SqliteStore::hold_syncs`](super::sqlite::SqliteStore),
/// for tests that look at a commit between its write and its sync.
pub struct SyncHold(#[allow(dead_code)] tokio::sync::OwnedMutexGuard<Option<WalFile>>);

impl WalSync {
    /// The syncer of the database file `path`.
    pub(crate) fn new(path: &str) -> WalSync {
        let mut wal = std::ffi::OsString::from(path);
        wal.push("-wal");
        WalSync {
            wal: PathBuf::from(wal),
            begun: AtomicU64::new(0),
            wanted: AtomicU64::new(0),
            written: AtomicU64::new(0),
            written_changed: tokio::sync::Notify::new(),
            synced: AtomicU64::new(0),
            syncer: Arc::new(tokio::sync::Mutex::new(None)),
            waiting: AtomicUsize::new(0),
            failed: std::sync::OnceLock::new(),
        }
    }

    /// Number the commit about to run on the writer; `durable`: a read that
    /// could see it must wait for its sync.
    pub(crate) fn begin_commit(&self, durable: bool) -> u64 {
        let n = self.begun.fetch_add(1, Ordering::SeqCst) + 1;
        if durable {
            self.wanted.fetch_max(n, Ordering::SeqCst);
        }
        n
    }

    /// Commit `n` has returned (committed or failed): its frames, if any,
    /// are in the `-wal` file.
    pub(crate) fn written(&self, n: u64) {
        self.written.fetch_max(n, Ordering::SeqCst);
        self.written_changed.notify_waiters();
    }

    /// Wait until every commit a read that has run so far could have seen
    /// is on disk.
    pub(crate) async fn settle(&self) -> Result<(), StoreError> {
        let wanted = self.wanted.load(Ordering::SeqCst);
        self.wait(wanted).await
    }

    /// Wait until commit `n` and every one before it is on disk, syncing
    /// the log when no sync that covers it runs.
    pub(crate) async fn wait(&self, n: u64) -> Result<(), StoreError> {
        self.check_failed()?;
        if self.synced.load(Ordering::SeqCst) >= n {
            return Ok(());
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _counted = Uncount(&self.waiting);
        loop {
            // Made before `written` is read: a commit returning in between
            // still wakes this wait.
            let written_changed = self.written_changed.notified();
            let mut file = self.syncer.clone().lock_owned().await;
            self.check_failed()?;
            if self.synced.load(Ordering::SeqCst) >= n {
                return Ok(());
            }
            // Only a read waits for a commit still running on the writer.
            let covers = self.written.load(Ordering::SeqCst);
            if covers < n {
                drop(file);
                written_changed.await;
                continue;
            }
            let wal = self.wal.clone();
            let (synced, file) = tokio::task::spawn_blocking(move || {
                let synced = sync_wal(&wal, &mut file);
                (synced, file)
            })
            .await
            .map_err(|e| StoreError::Database(sqlx::Error::Io(std::io::Error::other(e))))?;
            if let Err(e) = synced {
                // The first failure is the one reported, ever after.
                let reason = self.failed.get_or_init(|| e.to_string());
                return Err(self.failure(reason));
            }
            self.synced.fetch_max(covers, Ordering::SeqCst);
            drop(file);
            return Ok(());
        }
    }

    /// Sync every frame in the log now (after writes that were not
    /// numbered: the migrations).
    pub(crate) async fn sync_all(&self) -> Result<(), StoreError> {
        let n = self.begin_commit(false);
        self.written(n);
        self.wait(n).await
    }

    fn check_failed(&self) -> Result<(), StoreError> {
        match self.failed.get() {
            Some(reason) => Err(self.failure(reason)),
            None => Ok(()),
        }
    }

    fn failure(&self, reason: &str) -> StoreError {
        StoreError::LogSyncFailed {
            path: self.wal.display().to_string(),
            reason: reason.to_owned(),
        }
    }

    pub(crate) async fn hold(&self) -> SyncHold {
        SyncHold(self.syncer.clone().lock_owned().await)
    }

    /// Callers (durable writes and reads) waiting for a sync now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
}

struct Uncount<'a>(&'a AtomicUsize);

impl Drop for Uncount<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `fdatasync` the `-wal` file at `path`, (re)opening it when the name
/// holds another file than the one open.
fn sync_wal(path: &Path, open: &mut Option<WalFile>) -> std::io::Result<()> {
    let id = match std::fs::metadata(path) {
        Ok(m) => (m.dev(), m.ino()),
        // No log: the last connection closed, and closing checkpointed
        // every frame into the database file and synced it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            *open = None;
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let file = match open {
        Some(f) if f.id == id => &f.file,
        _ => {
            let file = std::fs::File::open(path)?;
            let m = file.metadata()?;
            // A log created since: its name must survive a crash too.
            if let Some(dir) = path.parent() {
                let dir = if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                };
                std::fs::File::open(dir)?.sync_all()?;
            }
            &open
                .insert(WalFile {
                    file,
                    id: (m.dev(), m.ino()),
                })
                .file
        }
    };
    file.sync_data()
}
