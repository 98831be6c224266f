//! The store, once: [`SqlStore`] implements [`Store`] for any [`Backend`].
//!
//! A backend (`sqlite`, `postgres`) says only what its database needs beyond
//! statements: how to open it and migrate it, how a write transaction and a
//! read snapshot begin, which failed transactions may run again, and whether
//! it can push ready signals. The algorithms above it are written once over
//! [`Db`](super::sql::Db); where the two databases differ inside an
//! algorithm, they differ in one statement's text ([`Sql::each`](super::sql::Sql::each)).

use super::sql::{Conn, Counters, StoreCounters, Tx};
use super::{
    CancelJob, ClaimBatch, ClaimedTask, CompleteBatch, CompletionOutcome, CountJobs, CreateToken,
    Dependency, GetJob, GetTask, JobEvents, JobSpecPart, ListJobs, ListTasks, QueueDepthQuery,
    ReadyHandler, ReadyHandlers, RecentCompletions, RenewLease, RescueExpiredLeases, RetryTask,
    RevokeToken, StageResults, Store, StoreError, TaskEvents, TokenLookup,
};
use super::{DeadTasks, ReleaseLeases, StateCounts, agent, complete, operator, reads, release};
use super::{sample, submit};
use crate::model::{
    Event, HandlerDepth, JobState, JobStatus, JobSummary, QueueDepth, StateTotals, SubmitJob,
    Submitted, TaskId, TaskRecord, TaskState, TokenRecord,
};
use std::sync::Arc;

/// When a write transaction's commit must be on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Before the commit returns.
    Commit,
    /// With the next `Commit` write (one sync of the log covers every
    /// earlier commit in it: SQLite in WAL mode, PostgreSQL's WAL); its
    /// commit returns without waiting for the disk. Only a crash in between
    /// loses it (of the machine for SQLite; of the server for PostgreSQL,
    /// whose clients outlive it), and only its own effects: no `Commit`
    /// write after it survives without it. Used for claims: a lost one
    /// leaves its tasks pending with their attempts uncounted, as if never
    /// claimed, and the run it started is refused by the claim's nonce
    /// (Invariant 8). On PostgreSQL only a claim with a nonce (wasm) commits
    /// so, and its statement says so itself (`complete::claim_nonce`).
    NextCommit,
}

/// What one database provides to the store beyond running statements.
///
/// Reads other than `get_job` need no snapshot: rows are never deleted, so a
/// job or task found by one statement is still there for the next.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Apply pending migrations.
    async fn migrate(&self) -> Result<(), StoreError>;
    /// Begin a write transaction (how durable its commit is, [`Backend::commit`] decides).
    async fn begin_write(&self) -> Result<Tx, StoreError>;
    /// Begin a read-only transaction: its statements see one snapshot.
    async fn begin_snapshot(&self) -> Result<Tx, StoreError>;
    /// A connection for a read of one statement.
    async fn read(&self) -> Result<Conn, StoreError>;
    /// Commit a write transaction; return once it is as durable as
    /// `durability` says.
    async fn commit(
        &self,
        tx: Tx,
        durability: Durability,
        counters: &Counters,
    ) -> Result<(), StoreError> {
        let _ = durability;
        tx.commit(counters).await
    }
    /// Called after a read's statements ran, before its result is handed
    /// out: wait until every commit it could have seen is durable (where a
    /// commit becomes visible before it is durable: SQLite's group commit).
    async fn settle(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// How long to wait before running a transaction again that failed with
    /// `error` after `retries` earlier retries; `None`: return the error.
    fn retry_delay(
        &self,
        operation: &'static str,
        error: &StoreError,
        retries: u32,
    ) -> Option<std::time::Duration> {
        let _ = (operation, error, retries);
        None
    }
    /// Whether `error` says the server had closed the connection before
    /// the work began on it (a restart, `pg_terminate_backend`), after
    /// `lost` such errors in a row: the pool hands out connections
    /// untested (a test costs a round trip per call), so a dead one is
    /// found by using it, discarded, and the work runs again on the next.
    fn connection_lost(&self, error: &StoreError, lost: u32) -> bool {
        let _ = (error, lost);
        false
    }
    /// A connection for a claim, where a claim is one statement on this
    /// database, atomic by itself, so it needs no `BEGIN` and `COMMIT`
    /// round trips (PostgreSQL: one whose session plans claims once,
    /// `store/postgres`); `None`: run it in a write transaction.
    async fn claim_connection(&self) -> Result<Option<Conn>, StoreError> {
        Ok(None)
    }
    /// Signalled when tasks may have become ready (see [`Store::ready_signal`]).
    fn ready_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }
    /// See [`Store::writes_one_at_a_time`].
    fn writes_one_at_a_time(&self) -> bool {
        false
    }
}

/// The [`Store`] over one database.
#[derive(Debug)]
pub struct SqlStore<B> {
    backend: B,
    counters: Counters,
}

impl<B: Backend> SqlStore<B> {
    pub(crate) async fn with_backend(backend: B) -> Result<SqlStore<B>, StoreError> {
        let store = SqlStore {
            backend,
            counters: Counters::default(),
        };
        store.backend.migrate().await?;
        Ok(store)
    }

    pub(crate) fn backend(&self) -> &B {
        &self.backend
    }

    /// Statements, round trips and transactions run since open.
    pub fn counters(&self) -> StoreCounters {
        self.counters.snapshot()
    }

    /// Run a read of several statements in one snapshot (again on another
    /// connection when the first one turns out dead).
    async fn snapshot<T, R>(&self, mut read: impl FnMut() -> R) -> Result<T, StoreError>
    where
        R: AsyncFnOnce(&mut super::sql::Db<'_>) -> Result<T, StoreError>,
    {
        let mut lost = 0;
        loop {
            let once = read();
            let value = async {
                let mut tx = self.backend.begin_snapshot().await?;
                let value = once(&mut tx.db(&self.counters)).await;
                let value = match value {
                    Ok(value) => {
                        tx.commit(&self.counters).await?;
                        Ok(value)
                    }
                    Err(error) => {
                        // The snapshot wrote nothing; the error is what matters.
                        let _ = tx.rollback(&self.counters).await;
                        Err(error)
                    }
                };
                self.backend.settle().await?;
                value
            }
            .await;
            match value {
                Err(error) if self.backend.connection_lost(&error, lost) => lost += 1,
                value => return value,
            }
        }
    }

    /// Run a read of one statement (again on another connection when the
    /// first one turns out dead: a read changes nothing).
    pub(super) async fn read<T, R>(&self, mut read: impl FnMut() -> R) -> Result<T, StoreError>
    where
        R: AsyncFnOnce(&mut super::sql::Db<'_>) -> Result<T, StoreError>,
    {
        let mut lost = 0;
        loop {
            let once = read();
            let value = async {
                let mut conn = self.backend.read().await?;
                let value = once(&mut conn.db(&self.counters)).await;
                drop(conn);
                self.backend.settle().await?;
                value
            }
            .await;
            match value {
                Err(error) if self.backend.connection_lost(&error, lost) => lost += 1,
                value => return value,
            }
        }
    }

    /// Run a write in one transaction: committed when it succeeds, rolled
    /// back when it fails, and run again when the backend says the failure
    /// was a lock conflict worth retrying (PostgreSQL deadlocks) or the
    /// connection was dead before the transaction began.
    ///
    /// `attempt` makes the write for each try (an `AsyncFnOnce`: an async
    /// closure called more than once cannot lend its captures to a `Send`
    /// future yet).
    async fn write<T, W>(
        &self,
        operation: &'static str,
        attempt: impl FnMut() -> W,
    ) -> Result<T, StoreError>
    where
        W: AsyncFnOnce(&mut super::sql::Db<'_>) -> Result<T, StoreError>,
    {
        self.write_durably(operation, Durability::Commit, attempt)
            .await
    }

    /// [`SqlStore::write`], committed as durably as `durability` says.
    async fn write_durably<T, W>(
        &self,
        operation: &'static str,
        durability: Durability,
        mut attempt: impl FnMut() -> W,
    ) -> Result<T, StoreError>
    where
        W: AsyncFnOnce(&mut super::sql::Db<'_>) -> Result<T, StoreError>,
    {
        let (mut retries, mut lost) = (0, 0);
        loop {
            let write = attempt();
            let mut tx = match self.backend.begin_write().await {
                Ok(tx) => tx,
                // Nothing was begun: another connection may begin it.
                Err(error) if self.backend.connection_lost(&error, lost) => {
                    lost += 1;
                    continue;
                }
                Err(error) => return Err(error),
            };
            let value = write(&mut tx.db(&self.counters)).await;
            let error = match value {
                Ok(value) => match self.backend.commit(tx, durability, &self.counters).await {
                    Ok(()) => return Ok(value),
                    Err(error) => error,
                },
                Err(error) => {
                    let _ = tx.rollback(&self.counters).await;
                    error
                }
            };
            self.after_failure(operation, error, &mut retries).await?;
        }
    }

    /// A failed write: back off and `Ok` when the backend says to run it
    /// again (counted), the error otherwise.
    async fn after_failure(
        &self,
        operation: &'static str,
        error: StoreError,
        retries: &mut u32,
    ) -> Result<(), StoreError> {
        let delay = self
            .backend
            .retry_delay(operation, &error, *retries)
            .ok_or(error)?;
        *retries += 1;
        self.counters.retried_transaction();
        tokio::time::sleep(delay).await;
        Ok(())
    }

    /// Run `read` on a claim connection ([`Backend::claim_connection`]),
    /// where the backend has them, on a read connection where not: to see
    /// a statement as a claim connection plans it.
    pub(super) async fn on_claim_connection<T, R>(&self, read: R) -> Result<T, StoreError>
    where
        R: AsyncFnOnce(&mut super::sql::Db<'_>) -> Result<T, StoreError>,
    {
        let mut conn = match self.backend.claim_connection().await? {
            Some(conn) => conn,
            None => self.backend.read().await?,
        };
        read(&mut conn.db(&self.counters)).await
    }

    /// Run a claim: a single statement on backends that can run it
    /// without a transaction ([`Backend::claim_connection`]), in a write
    /// transaction committed as `durability` says on the others. Run again
    /// like [`SqlStore::write`]; a statement that failed on a dead
    /// connection was not run.
    async fn write_claim<T, W>(
        &self,
        operation: &'static str,
        durability: Durability,
        mut attempt: impl FnMut() -> W,
    ) -> Result<T, StoreError>
    where
        W: AsyncFnOnce(&mut super::sql::Db<'_>) -> Result<T, StoreError>,
    {
        let (mut retries, mut lost) = (0, 0);
        loop {
            let Some(mut conn) = self.backend.claim_connection().await? else {
                return self.write_durably(operation, durability, attempt).await;
            };
            let error = match attempt()(&mut conn.db(&self.counters)).await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            if self.backend.connection_lost(&error, lost) {
                lost += 1;
                continue;
            }
            self.after_failure(operation, error, &mut retries).await?;
        }
    }
}

#[async_trait::async_trait]
impl<B: Backend> Store for SqlStore<B> {
    async fn migrate(&self) -> Result<(), StoreError> {
        self.backend.migrate().await
    }

    async fn submit_job(&self, p: SubmitJob) -> Result<Submitted, StoreError> {
        self.write("submit_job", || async |db| submit::submit_job(db, &p).await)
            .await
    }

    async fn claim_batch(&self, p: ClaimBatch) -> Result<Vec<ClaimedTask>, StoreError> {
        if p.limit == 0 || p.handlers.as_ref().is_some_and(|h| h.is_empty()) {
            return Ok(Vec::new());
        }
        // A claim lost to a crash leaves its tasks pending, as if never
        // claimed, and its nonce refuses the run it started: it need not
        // wait for the disk (`complete::claim_nonce`).
        let nonce = complete::claim_nonce(p.executor);
        self.write_claim("claim_batch", Durability::NextCommit, || {
            async |db| complete::claim_batch(db, &p, nonce).await
        })
        .await
    }

    async fn complete_batch(&self, p: CompleteBatch) -> Result<Vec<CompletionOutcome>, StoreError> {
        if p.completions.is_empty() {
            return Ok(Vec::new());
        }
        self.write("complete_batch", || {
            async |db| complete::complete_batch(db, &p).await
        })
        .await
    }

    async fn renew_lease(&self, p: RenewLease) -> Result<bool, StoreError> {
        self.write("renew_lease", || {
            async |db| complete::renew_lease(db, &p).await
        })
        .await
    }

    async fn rescue_expired_leases(&self, p: RescueExpiredLeases) -> Result<u64, StoreError> {
        if p.limit == 0 {
            return Ok(0);
        }
        // A cheap read first: almost always nothing has expired, and a write
        // transaction every second would stall the claimers.
        if !self
            .read(|| async |db| complete::any_expired(db, p.now).await)
            .await?
        {
            return Ok(0);
        }
        self.write("rescue_expired_leases", || {
            async |db| complete::rescue_expired_leases(db, &p).await
        })
        .await
    }

    async fn release_leases(&self, p: ReleaseLeases) -> Result<u64, StoreError> {
        if p.leases.is_empty() {
            return Ok(0);
        }
        self.write("release_leases", || {
            async |db| release::release_leases(db, &p).await
        })
        .await
    }

    async fn get_job(&self, p: GetJob) -> Result<JobStatus, StoreError> {
        self.snapshot(|| async |db| reads::get_job(db, &p).await)
            .await
    }

    async fn job_counters(&self, p: GetJob) -> Result<JobStatus, StoreError> {
        self.read(|| async |db| reads::job_counters(db, &p).await)
            .await
    }

    async fn job_spec_part(&self, p: JobSpecPart) -> Result<Option<String>, StoreError> {
        self.read(|| async |db| reads::job_spec_part(db, &p).await)
            .await
    }

    async fn list_jobs(&self, p: ListJobs) -> Result<Vec<JobSummary>, StoreError> {
        self.read(|| async |db| reads::list_jobs(db, &p).await)
            .await
    }

    async fn count_jobs(&self, p: CountJobs) -> Result<Vec<(JobState, i64)>, StoreError> {
        self.read(|| async |db| reads::count_jobs(db, &p).await)
            .await
    }

    async fn get_task(&self, p: GetTask) -> Result<TaskRecord, StoreError> {
        self.read(|| async |db| reads::get_task(db, &p).await).await
    }

    async fn dead_tasks(&self, p: DeadTasks) -> Result<Vec<TaskRecord>, StoreError> {
        self.read(|| async |db| reads::dead_tasks(db, &p).await)
            .await
    }

    async fn job_events(&self, p: JobEvents) -> Result<Vec<Event>, StoreError> {
        self.read(|| async |db| reads::job_events(db, &p).await)
            .await
    }

    async fn stage_results(&self, p: StageResults) -> Result<Vec<(TaskId, String)>, StoreError> {
        self.read(|| async |db| reads::stage_results(db, &p).await)
            .await
    }

    async fn cancel_job(&self, p: CancelJob) -> Result<JobState, StoreError> {
        self.write("cancel_job", || {
            async |db| operator::cancel_job(db, &p).await
        })
        .await
    }

    async fn retry_task(&self, p: RetryTask) -> Result<TaskState, StoreError> {
        self.write("retry_task", || {
            async |db| operator::retry_task(db, &p).await
        })
        .await
    }

    async fn recent_completions(&self, p: RecentCompletions) -> Result<f64, StoreError> {
        self.read(|| async |db| reads::recent_completions(db, &p).await)
            .await
    }

    async fn job_state(&self, p: GetJob) -> Result<JobState, StoreError> {
        self.read(|| async |db| reads::job_state(db, &p).await)
            .await
    }

    async fn ready_handlers(&self, p: ReadyHandlers) -> Result<Vec<ReadyHandler>, StoreError> {
        self.read(|| async |db| reads::ready_handlers(db, &p).await)
            .await
    }

    async fn list_tasks(&self, p: ListTasks) -> Result<Vec<TaskRecord>, StoreError> {
        self.read(|| async |db| agent::list_tasks(db, &p).await)
            .await
    }

    async fn task_dependencies(&self, p: GetTask) -> Result<Vec<Dependency>, StoreError> {
        self.read(|| async |db| agent::task_dependencies(db, &p).await)
            .await
    }

    async fn task_events(&self, p: TaskEvents) -> Result<Vec<Event>, StoreError> {
        self.read(|| async |db| agent::task_events(db, &p).await)
            .await
    }

    async fn queue_depth(&self, p: QueueDepthQuery) -> Result<QueueDepth, StoreError> {
        self.read(|| async |db| agent::queue_depth(db, &p).await)
            .await
    }

    async fn state_counts(&self, p: StateCounts) -> Result<StateTotals, StoreError> {
        self.snapshot(|| async |db| sample::state_counts(db, &p).await)
            .await
    }

    async fn queue_by_handler(&self, p: QueueDepthQuery) -> Result<Vec<HandlerDepth>, StoreError> {
        self.read(|| async |db| agent::queue_by_handler(db, &p).await)
            .await
    }

    async fn create_token(&self, p: CreateToken) -> Result<i64, StoreError> {
        self.write("create_token", || {
            async |db| agent::create_token(db, &p).await
        })
        .await
    }

    async fn revoke_token(&self, p: RevokeToken) -> Result<Option<TokenRecord>, StoreError> {
        self.write("revoke_token", || {
            async |db| agent::revoke_token(db, &p).await
        })
        .await
    }

    async fn tenant_for_token(&self, p: TokenLookup) -> Result<Option<TokenRecord>, StoreError> {
        self.read(|| async |db| agent::tenant_for_token(db, &p).await)
            .await
    }

    fn ready_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.backend.ready_signal()
    }

    fn counters(&self) -> StoreCounters {
        self.counters.snapshot()
    }

    fn writes_one_at_a_time(&self) -> bool {
        self.backend.writes_one_at_a_time()
    }
}
