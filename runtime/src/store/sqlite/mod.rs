//! SQLite store: the embedded default, one file, no server.
//!
//! Same semantics as the Postgres store (the conformance suite checks both;
//! the decisions themselves come from `store::rules`). What is particular to
//! SQLite:
//!
//! - **Durability.** WAL with `synchronous = FULL`: a commit is on disk before
//!   it returns, so a crash at any point loses nothing committed. Foreign keys
//!   on, a busy timeout for other processes on the same file.
//! - **One writer.** Every write transaction runs on a single connection with
//!   `BEGIN IMMEDIATE`, so writers in this process queue instead of failing
//!   with "database is locked", and a second process waits on the busy
//!   timeout. Reads use a separate small pool (WAL lets them run beside the
//!   writer). Throughput comes from batching (one transaction per claim batch
//!   and per group of completions), not from concurrent writers.
//! - **Set-based statements.** A batch is bound once as a JSON array and
//!   joined through `json_each` (`CROSS JOIN` keeps the array as the outer
//!   loop, so each row is a primary-key lookup), never a statement per task.

mod advance;
mod complete;
mod effects;
mod operator;
mod submit;

use super::backend::{Backend, SqlStore};
use super::sql::{Conn, Tx};
use super::{
    CancelJob, ClaimBatch, ClaimedTask, CompleteBatch, CompletionOutcome, RenewLease,
    RescueExpiredLeases, RetryTask, StoreError,
};
use crate::model::{JobState, SubmitJob, Submitted, TaskState};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::str::FromStr;
use std::time::Duration;

// Shared spellings and helpers, re-exported for the modules below.
pub(super) use super::codec::{
    after, job_not_found, parse_job_state, parse_stage_state, parse_task_state, task_not_found,
};

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

/// The SQLite database behind a [`SqliteStore`]: one writer, a few readers.
#[derive(Debug, Clone)]
pub struct SqliteBackend {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqlStore<SqliteBackend> {
    /// Open (creating if missing) `sqlite://PATH` and run the migrations.
    pub async fn open(url: &str, options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        let connect = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(options.busy_timeout)
            .statement_cache_capacity(256);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(600))
            .connect_with(connect.clone())
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(options.readers.max(1))
            .connect_with(connect.read_only(false))
            .await?;
        SqlStore::with_backend(SqliteBackend { writer, reader }).await
    }

    /// The write pool (one connection), for tests and maintenance tools.
    pub fn writer(&self) -> &SqlitePool {
        &self.backend().writer
    }
}

impl SqliteBackend {
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        // IMMEDIATE takes the write lock up front: a deferred transaction that
        // reads first and writes later can fail with SQLITE_BUSY without ever
        // consulting the busy timeout.
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }
}

/// Bind a batch as one JSON array (joined through `json_each`).
pub(super) fn json_array<T: serde::Serialize>(rows: &[T]) -> String {
    serde_json::to_string(rows).unwrap_or_else(|_| "[]".to_string())
}

#[async_trait::async_trait]
impl Backend for SqliteBackend {
    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("../migrations/sqlite")
            .run(&self.writer)
            .await?;
        Ok(())
    }

    async fn begin_write(&self) -> Result<Tx, StoreError> {
        Ok(Tx::Sqlite(self.begin().await?))
    }

    async fn begin_snapshot(&self) -> Result<Tx, StoreError> {
        // A deferred read transaction: WAL gives it one snapshot.
        Ok(Tx::Sqlite(self.reader.begin().await?))
    }

    async fn read(&self) -> Result<Conn, StoreError> {
        Ok(Conn::Sqlite(self.reader.acquire().await?))
    }

    async fn submit_job(&self, p: SubmitJob) -> Result<Submitted, StoreError> {
        let mut tx = self.begin().await?;
        let submitted = submit::submit_job(&mut tx, &p).await?;
        if submitted.created {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(submitted)
    }

    async fn claim_batch(&self, p: ClaimBatch) -> Result<Vec<ClaimedTask>, StoreError> {
        if p.limit == 0 || p.handlers.as_ref().is_some_and(|h| h.is_empty()) {
            return Ok(Vec::new());
        }
        let mut tx = self.begin().await?;
        let claimed = complete::claim_batch(&mut tx, &p).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    async fn complete_batch(&self, p: CompleteBatch) -> Result<Vec<CompletionOutcome>, StoreError> {
        if p.completions.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin().await?;
        let outcomes = complete::complete_batch(&mut tx, &p).await?;
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn renew_lease(&self, p: RenewLease) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let held = complete::renew_lease(&mut tx, &p).await?;
        tx.commit().await?;
        Ok(held)
    }

    async fn rescue_expired_leases(&self, p: RescueExpiredLeases) -> Result<u64, StoreError> {
        if p.limit == 0 {
            return Ok(0);
        }
        // A cheap read first: almost always nothing has expired, and taking
        // the write lock every second would stall the claimers.
        let any: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM tasks WHERE state = 'running' AND lease_expires_at <= ?1 LIMIT 1",
        )
        .bind(p.now)
        .fetch_optional(&self.reader)
        .await?;
        if any.is_none() {
            return Ok(0);
        }
        let mut tx = self.begin().await?;
        let n = complete::rescue_expired_leases(&mut tx, &p).await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn cancel_job(&self, p: CancelJob) -> Result<JobState, StoreError> {
        let mut tx = self.begin().await?;
        let state = operator::cancel_job(&mut tx, &p).await?;
        tx.commit().await?;
        Ok(state)
    }

    async fn retry_task(&self, p: RetryTask) -> Result<TaskState, StoreError> {
        let mut tx = self.begin().await?;
        let state = operator::retry_task(&mut tx, &p).await?;
        tx.commit().await?;
        Ok(state)
    }
}
