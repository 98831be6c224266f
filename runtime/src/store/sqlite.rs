//! SQLite store: the embedded default, one file, no server.
//!
//! The algorithms are the store's own (written once for both databases);
//! this module only opens the file and says how its transactions begin.
//! What is particular to SQLite:
//!
//! - **Durability.** WAL, and group commit ([`super::wal_sync`]): every
//!   write commits at `synchronous = NORMAL`, so the one writer connection
//!   never waits for the disk; a write that must be durable
//!   ([`Durability::Commit`]) then waits, off the writer, for a sync of the
//!   `-wal` file that covers it (one sync covers every commit written before
//!   it began), and a read returns only once every commit it could have
//!   seen is synced. So a crash at any point loses nothing anyone was told
//!   about. Claims alone ([`Durability::NextCommit`]) do not wait: a claim
//!   lost with the machine leaves its tasks pending as if never claimed.
//!   Other processes on the same file can see a commit up to one sync
//!   before it is durable. Foreign keys on, a busy timeout for other
//!   processes on the same file.
//! - **One writer.** Every write transaction runs on a single connection with
//!   `BEGIN IMMEDIATE`, so writers in this process queue instead of failing
//!   with "database is locked", and a second process waits on the busy
//!   timeout. Reads use a separate small pool (WAL lets them run beside the
//!   writer). Throughput comes from batching (one transaction per claim batch
//!   and per group of completions), not from concurrent writers.
//! - **Set-based statements.** A batch is bound once as a JSON array and
//!   joined through `jsonb_each` (`CROSS JOIN` keeps the array as the outer
//!   loop, so each row is a primary-key lookup), never a statement per task;
//!   the statements' SQLite texts are beside their PostgreSQL ones.

use super::StoreError;
use super::backend::{Backend, Durability, SqlStore};
use super::sql::{Conn, Counters, Tx};
pub use super::wal_sync::SyncHold;
use super::wal_sync::WalSync;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions as _, Connection as _, SqlSafeStr as _};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Settings for [`SqliteStore::open`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// How long a writer waits for another process holding the file's write lock.
    pub busy_timeout: Duration,
    /// Read connections (the writer is always one).
    pub readers: u32,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            busy_timeout: Duration::from_secs(30),
            readers: 4,
        }
    }
}

/// The SQLite store.
pub type SqliteStore = SqlStore<SqliteBackend>;

/// lockstep's schema migrations for SQLite.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// The SQLite database behind a [`SqliteStore`]: one writer, a few readers.
#[derive(Debug, Clone)]
pub struct SqliteBackend {
    writer: SqlitePool,
    reader: SqlitePool,
    /// The file, as the URL names it.
    path: String,
    /// The file cannot be written (permissions, a read-only mount): reads
    /// work, every write is refused with the file's name.
    read_only: bool,
    /// Writer connections closed because a failed commit left them inside
    /// a transaction.
    replaced_writers: Arc<AtomicU64>,
    /// Group commit: numbers the commits and syncs the log for them.
    sync: Arc<WalSync>,
}

impl SqlStore<SqliteBackend> {
    /// Open (creating if missing) `sqlite://PATH` and run the migrations.
    ///
    /// Refuses URLs no other process could open (`sqlite::memory:`, an empty
    /// path), a file that is not SQLite, and a SQLite file of another
    /// application (tables, but none of lockstep's bookkeeping) — before
    /// anything is written to it. A file this process may not write is
    /// opened read-only when its schema is current (Invariant 12).
    pub async fn open(url: &str, options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        let parsed = SqliteConnectOptions::from_str(url)?;
        let path = shareable_path(url, &parsed)?;
        let base = parsed
            .foreign_keys(true)
            .busy_timeout(options.busy_timeout)
            .statement_cache_capacity(256)
            // A claim's or a fencing read's rows cross from the connection's
            // thread one message each: room for a whole batch lets that
            // thread run its statement to the end instead of waiting on the
            // reader every 50 rows (sqlx's default).
            .row_buffer_size(4096)
            // A large submit is one long statement by design; sqlx would
            // print its whole SQL as a warning.
            .log_slow_statements(log::LevelFilter::Debug, Duration::from_secs(1));
        let read_only = inspect_existing(&path, &base).await?;
        let replaced_writers = Arc::new(AtomicU64::new(0));
        if read_only {
            let reader = SqlitePoolOptions::new()
                .max_connections(options.readers.max(1))
                .connect_with(reading_options(&base).await?)
                .await?;
            return SqlStore::with_backend(SqliteBackend {
                writer: reader.clone(),
                reader,
                read_only: true,
                sync: Arc::new(WalSync::new(&path)),
                path,
                replaced_writers,
            })
            .await;
        }
        let connect = base
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // The writer never waits for the disk; `WalSync` syncs the log
            // for the writes that must be durable (checkpoints still sync).
            .synchronous(SqliteSynchronous::Normal)
            // A batch statement's journal (kept so that a failing statement
            // undoes only itself) and its temporary b-trees (RETURNING rows,
            // materialized subqueries) spill past 64 KiB into a file SQLite
            // creates and unlinks in /var/tmp: measured, ~170 files per
            // 20,000 tasks, each an open, writes and an unlink on the
            // writer's thread. In memory they are bounded by the batch.
            .pragma("temp_store", "memory");
        let replaced = replaced_writers.clone();
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            // A connection to a file cannot go away as a socket can: the
            // ping sqlx sends before handing it out was one more round trip
            // to the writer's thread per transaction.
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(600))
            // A write whose COMMIT failed (a full disk) can leave the
            // connection inside a transaction SQLite has already rolled
            // back; used again, every BEGIN would fail for good. Such a
            // connection is closed, and the pool opens a fresh one for the
            // next write (Invariant 13).
            .after_release(move |conn, _| {
                let replaced = replaced.clone();
                Box::pin(async move {
                    // A committed or rolled-back write leaves the depth at
                    // zero: no round trip to the connection's thread. A
                    // dropped transaction may only have queued its rollback:
                    // the ping runs after it, so the depth read next is final.
                    if !conn.is_in_transaction() {
                        return Ok(true);
                    }
                    conn.ping().await?;
                    if !conn.is_in_transaction() {
                        return Ok(true);
                    }
                    let n = replaced.fetch_add(1, Ordering::Relaxed) + 1;
                    // The failure itself reaches the caller, which logs it;
                    // this says once what was done about it.
                    if n == 1 {
                        tracing::warn!(
                            "a failed SQLite commit left the writer connection inside a transaction: the writer connection is replaced by a new one (each time this happens; counted in replaced_writers)"
                        );
                    } else {
                        tracing::debug!(replaced_writers = n, "writer connection replaced");
                    }
                    Ok(false)
                })
            })
            .connect_with(connect.clone())
            .await?;
        // SQLite's own word on what was opened, for URL spellings the text
        // check above does not know (`mode=%6Demory`): a database without a
        // file is private to this process.
        let file: String =
            sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
                .fetch_one(&writer)
                .await?;
        if file.is_empty() {
            return Err(in_memory_url());
        }
        let reader = SqlitePoolOptions::new()
            .max_connections(options.readers.max(1))
            .connect_with(connect)
            .await?;
        SqlStore::with_backend(SqliteBackend {
            writer,
            reader,
            sync: Arc::new(WalSync::new(&path)),
            path,
            read_only: false,
            replaced_writers,
        })
        .await
    }

    /// The write pool (one connection), for tests and maintenance tools.
    pub fn writer(&self) -> &SqlitePool {
        &self.backend().writer
    }

    /// The database file, as the URL names it.
    pub fn path(&self) -> &str {
        &self.backend().path
    }

    /// Holds back every sync of the log until dropped: a durable write
    /// commits and then waits, and so does a read that could see it. For
    /// tests of what is visible between a commit and its sync.
    pub async fn hold_syncs(&self) -> SyncHold {
        self.backend().sync.hold().await
    }

    /// Durable writes and reads waiting for a sync of the log now.
    pub fn waiting_for_sync(&self) -> usize {
        self.backend().sync.waiting()
    }

    /// How many times the writer connection was replaced because a failed
    /// commit (e.g. `database or disk is full`) left it unusable.
    pub fn replaced_writers(&self) -> u64 {
        self.backend().replaced_writers.load(Ordering::Relaxed)
    }
}

impl SqliteBackend {
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnly(format!(
                "the database {} cannot be written by this process (no write permission, or a read-only file system); commands that only read it work",
                self.path
            )));
        }
        let conn = self.writer.acquire().await?;
        // IMMEDIATE takes the write lock up front: a deferred transaction that
        // reads first and writes later can fail with SQLITE_BUSY without ever
        // consulting the busy timeout.
        Ok(sqlx::Transaction::begin(conn, Some("BEGIN IMMEDIATE".into_sql_str())).await?)
    }

    /// True when every lockstep migration is applied with its checksum.
    async fn schema_is_current(conn: &mut sqlx::SqliteConnection) -> Result<bool, StoreError> {
        let exists: Option<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_optional(&mut *conn)
        .await?;
        if exists.is_none() {
            return Ok(false);
        }
        let applied: Vec<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations WHERE success")
                .fetch_all(&mut *conn)
                .await?;
        Ok(MIGRATOR.iter().all(|m| {
            applied
                .iter()
                .any(|(v, c)| *v == m.version && c.as_slice() == m.checksum.as_ref())
        }))
    }
}

/// The file a `sqlite:` URL names (percent-decoded, as SQLite will open
/// it), refusing URLs that name no file another process could open:
/// lockstep's state must outlive the process that wrote it and be shared
/// with `serve`.
fn shareable_path(url: &str, parsed: &SqliteConnectOptions) -> Result<String, StoreError> {
    let query = url.split_once('?').map_or("", |(_, query)| query);
    let file = parsed.get_filename().to_string_lossy().into_owned();
    // sqlx opens `:memory:` as the shared-cache URI `file:sqlx-in-memory-N`.
    if file == ":memory:"
        || file.starts_with("file:sqlx-in-memory-")
        || query.split('&').any(|pair| pair == "mode=memory")
    {
        return Err(in_memory_url());
    }
    if file.starts_with("file:") {
        return Err(StoreError::UnusableUrl(
            "a SQLite URI filename (file:…) carries options of its own, an in-memory database among them; name the file as a path, e.g. sqlite://lockstep.db".to_string(),
        ));
    }
    if file.is_empty() {
        return Err(StoreError::UnusableUrl(
            "the URL names no file (SQLite would use a private temporary database that no other command sees); name a file, e.g. sqlite://lockstep.db".to_string(),
        ));
    }
    Ok(file)
}

fn in_memory_url() -> StoreError {
    StoreError::UnusableUrl(
        "an in-memory SQLite database lives and dies with one process, so nothing written would remain for the next command; name a file, e.g. sqlite://lockstep.db".to_string(),
    )
}

/// Options that read a file this process may not write. SQLite reads a WAL
/// database through `-wal` and `-shm` files beside it and creates them when
/// they are missing — with the database's mode and this process's owner,
/// where the database's own owner could not write them again. So when
/// neither exists (nobody has the database open), and when they cannot be
/// created (the directory is not writable either), the file is opened as
/// immutable, without locks: nothing is created, and nobody is writing it.
async fn reading_options(base: &SqliteConnectOptions) -> Result<SqliteConnectOptions, StoreError> {
    let plain = base.clone().read_only(true);
    let beside = |suffix: &str| {
        let mut path = base.get_filename().as_os_str().to_owned();
        path.push(suffix);
        std::path::PathBuf::from(path).exists()
    };
    if !beside("-wal") && !beside("-shm") {
        return Ok(plain.immutable(true));
    }
    let probe = async {
        let mut conn = plain.connect().await?;
        let read = sqlx::query("SELECT 1 FROM sqlite_master LIMIT 1")
            .fetch_optional(&mut conn)
            .await;
        let _ = conn.close().await;
        read.map(|_| ())
    };
    match probe.await {
        Ok(()) => Ok(plain),
        Err(sqlx::Error::Database(e)) if e.code().is_some_and(|c| is_read_only_code(&c)) => {
            Ok(plain.immutable(true))
        }
        Err(e) => Err(e.into()),
    }
}

/// SQLITE_READONLY (8) and its extended codes (`8 | n << 8`), and
/// SQLITE_CANTOPEN (14) and its extended codes.
fn is_read_only_code(code: &str) -> bool {
    code.parse::<i32>()
        .is_ok_and(|c| matches!(c & 0xff, 8 | 14))
}

/// Looks at an existing file before lockstep changes anything in it (even
/// switching it to WAL rewrites its header). Refuses what is not SQLite or
/// belongs to another application; returns true when the file exists but
/// this process may not write it.
async fn inspect_existing(path: &str, base: &SqliteConnectOptions) -> Result<bool, StoreError> {
    let metadata = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(StoreError::NotLockstep {
                path: path.to_string(),
                reason: format!("it cannot be read ({e})"),
            });
        }
    };
    if !metadata.is_file() {
        return Err(StoreError::NotLockstep {
            path: path.to_string(),
            reason: "it is not a regular file".to_string(),
        });
    }
    let writable = match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(_) => true,
        Err(e)
            if e.kind() == std::io::ErrorKind::PermissionDenied
                || e.kind() == std::io::ErrorKind::ReadOnlyFilesystem =>
        {
            false
        }
        Err(e) => return Err(StoreError::Database(sqlx::Error::Io(e))),
    };
    if metadata.len() == 0 {
        return Ok(!writable);
    }
    let mut conn = if writable {
        base.clone().read_only(true).connect().await?
    } else {
        reading_options(base).await?.connect().await?
    };
    let tables: Result<Vec<String>, sqlx::Error> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
    )
    .fetch_all(&mut conn)
    .await;
    let _ = sqlx::Connection::close(conn).await;
    let tables = match tables {
        Ok(t) => t,
        // SQLITE_NOTADB: the header is not SQLite's.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("26") => {
            return Err(StoreError::NotLockstep {
                path: path.to_string(),
                reason: "it is not a SQLite database".to_string(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    if !tables.is_empty() && !tables.iter().any(|t| t == "_sqlx_migrations") {
        const SHOWN: usize = 5;
        let mut named = tables
            .iter()
            .take(SHOWN)
            .map(|t| crate::limits::printable(t).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        if tables.len() > SHOWN {
            named.push_str(&format!(" and {} more", tables.len() - SHOWN));
        }
        return Err(StoreError::NotLockstep {
            path: path.to_string(),
            reason: format!(
                "it holds another application's tables ({named}) and none of lockstep's; lockstep adds nothing to it"
            ),
        });
    }
    Ok(!writable)
}

#[async_trait::async_trait]
impl Backend for SqliteBackend {
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.writer.acquire().await?;
        if Self::schema_is_current(&mut conn).await? {
            return Ok(());
        }
        if self.read_only {
            return Err(StoreError::ReadOnly(format!(
                "the database {} cannot be written by this process and its schema is older than this lockstep's; run `lockstep migrate` once with write access",
                self.path
            )));
        }
        // SQLite's migrator takes no lock: serialize concurrent first starts
        // on the file's write lock (others wait on the busy timeout), then
        // look again, since the process before us may have done the work.
        // Each migration runs inside this transaction as a savepoint.
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        if !Self::schema_is_current(&mut tx).await? {
            // `run_direct` is sqlx's own way around "Acquire is not general
            // enough" inside async-trait futures.
            let conn: &mut sqlx::SqliteConnection = &mut tx;
            MIGRATOR
                .run_direct(None, conn, false)
                .await
                .map_err(|e| match e {
                    sqlx::migrate::MigrateError::VersionMissing(version) => {
                        StoreError::NotLockstep {
                            path: self.path.clone(),
                            reason: format!(
                                "it records migration {version}, which this lockstep does not know (a newer lockstep or another application wrote it)"
                            ),
                        }
                    }
                    other => other.into(),
                })?;
        }
        tx.commit().await?;
        drop(conn);
        // Written at `synchronous = NORMAL` like every commit.
        self.sync.sync_all().await
    }

    async fn begin_write(&self) -> Result<Tx, StoreError> {
        Ok(Tx::Sqlite(self.begin().await?))
    }

    async fn commit(
        &self,
        tx: Tx,
        durability: Durability,
        counters: &Counters,
    ) -> Result<(), StoreError> {
        let Tx::Sqlite(tx) = tx else {
            return tx.commit(counters).await;
        };
        counters.transaction();
        let sync = self.sync.clone();
        // Numbered while the transaction holds the one writer connection,
        // so in commit order; spawned so that a caller who stops waiting
        // cannot leave a numbered commit unmarked as written.
        let n = sync.begin_commit(durability == Durability::Commit);
        let committed = tokio::spawn(async move {
            let committed = tx.commit().await;
            sync.written(n);
            committed
        })
        .await
        .map_err(|e| StoreError::Database(sqlx::Error::Io(std::io::Error::other(e))))?;
        committed?;
        if durability == Durability::Commit {
            self.sync.wait(n).await?;
        }
        Ok(())
    }

    async fn settle(&self) -> Result<(), StoreError> {
        self.sync.settle().await
    }

    async fn begin_snapshot(&self) -> Result<Tx, StoreError> {
        // A deferred read transaction: WAL gives it one snapshot.
        Ok(Tx::Sqlite(self.reader.begin().await?))
    }

    async fn read(&self) -> Result<Conn, StoreError> {
        Ok(Conn::Sqlite(self.reader.acquire().await?))
    }

    fn writes_one_at_a_time(&self) -> bool {
        true
    }
}
