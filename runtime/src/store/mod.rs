//! Persistence: one trait, one method per operation, each taking a params
//! struct. Backends: [`sqlite`] (embedded default) and [`postgres`] (many
//! processes on one database).
//!
//! **Invariant 6:** only this module (and `migrations/`) contains SQL; every
//! statement is parameterized, never formatted.
//! **Invariant 7:** every state change is one transaction: a task's transition,
//! its output, its stage counter, its dependents' counters, spawned children
//! and event rows commit together or not at all.
//! **Invariant 10:** every query filters by tenant; another tenant's id answers
//! [`StoreError::NotFound`].

use crate::model::{
    Event, Executor, HandlerDepth, IllegalTransition, JobId, JobState, JobStatus, JobSummary,
    LeaseToken, Millis, QueueDepth, StateTotals, SubmitJob, Submitted, TaskId, TaskRecord,
    TaskState, TenantId, TokenRecord, TokenRole,
};
use serde::Serialize;
use std::time::Duration;

mod advance;
mod agent;
mod backend;
mod codec;
mod complete;
mod effects;
mod operator;
pub mod postgres;
mod reads;
mod release;
mod rules;
mod sample;
mod sql;
pub mod sqlite;
mod submit;
mod wal_sync;

pub use backend::SqlStore;
pub use codec::SPAWN_LIMIT;
pub use sql::StoreCounters;
pub use submit::SPEC_PART_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{entity} {id} not found")]
    NotFound { entity: &'static str, id: String },
    #[error(transparent)]
    IllegalTransition(#[from] IllegalTransition),
    #[error(transparent)]
    StageNotReached(#[from] StageNotReached),
    /// What a write read at its start changed before it could lock it (a
    /// job finished by another transaction meanwhile): nothing was written,
    /// and the write runs again.
    #[error("{0} changed while this write ran; nothing was written, try again")]
    Raced(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://HOST/DB")]
    UnsupportedUrl(String),
    /// A database URL lockstep refuses to use (it could not be shared
    /// between processes); the text says why and what to use instead.
    #[error("{0}")]
    UnusableUrl(String),
    /// The file is not lockstep's: nothing was written to it.
    #[error("{path} is not a lockstep database: {reason}")]
    NotLockstep { path: String, reason: String },
    /// The database cannot be written by this process; the text names it.
    #[error("{0}")]
    ReadOnly(String),
    /// The database server cannot be reached at all.
    #[error("cannot connect to PostgreSQL at {address}: {reason}")]
    Unreachable { address: String, reason: String },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A sync of the SQLite log failed: what this process committed since
    /// its last good sync may never reach the disk (Invariant 43).
    #[error(
        "the SQLite log {path} could not be synced to disk ({reason}): what this process \
         committed since its last good sync may be lost, so it writes and reads no more; \
         restart lockstep, which recovers the database from what reached the disk"
    )]
    LogSyncFailed { path: String, reason: String },
}

/// `retry` of a task whose stage its failed or cancelled job never
/// reached: nothing would open the stage. The job resumes from the stage
/// where it stopped, and retrying a task there brings the later stages'
/// cancelled tasks back too.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "task {task} cannot be retried on its own: job {job} stopped ({job_state}) before its stage \
     {stage:?} opened; retry a dead or cancelled task of the stage where the job stopped, and the \
     cancelled tasks of the later stages come back with it"
)]
pub struct StageNotReached {
    pub task: i64,
    pub job: i64,
    pub job_state: JobState,
    pub stage: String,
}

impl StoreError {
    /// True when the caller named the wrong database (a URL that cannot be
    /// shared, another application's file), as opposed to a fault.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            StoreError::UnsupportedUrl(_)
                | StoreError::UnusableUrl(_)
                | StoreError::NotLockstep { .. }
        )
    }
}

// ---------------------------------------------------------------- submit

// ---------------------------------------------------------------- claim

#[derive(Debug, Clone)]
pub struct ClaimBatch {
    /// Claims across all tenants when `None` (workers); one tenant for MCP agents.
    pub tenant: Option<TenantId>,
    pub executor: Executor,
    /// Only these handlers (workers: the ones registered in this process);
    /// `None` for any handler (agents without a specialist filter).
    pub handlers: Option<Vec<String>>,
    pub job: Option<JobId>,
    pub limit: u32,
    pub lease: Duration,
    pub worker: String,
    pub now: Millis,
}

#[derive(Debug, Clone)]
pub struct ClaimedTask {
    pub tenant: TenantId,
    pub job_id: JobId,
    pub lease: LeaseToken,
    pub stage_name: String,
    pub stage_position: i32,
    pub handler: String,
    pub input_json: String,
    pub timeout_ms: i64,
    pub max_attempts: i32,
    /// Since when the task could be claimed: its `run_after` (set when it
    /// became ready, or to the end of a retry's backoff).
    pub ready_at: Millis,
}

// ---------------------------------------------------------------- complete

#[derive(Debug, Clone)]
pub struct CompleteBatch {
    pub completions: Vec<Completion>,
    pub now: Millis,
    /// Most tasks a job may hold (`--max-tasks-per-job`): a success whose
    /// spawns would take its job past it is recorded as a fatal failure.
    pub max_tasks_per_job: u64,
}

#[derive(Debug, Clone)]
pub struct Completion {
    pub tenant: TenantId,
    pub lease: LeaseToken,
    pub result: TaskResult,
    /// What the handler logged during this attempt (bounded by the engine),
    /// recorded as `task_log` events before the result's own event, in the
    /// same transaction; dropped with the result when it is stale.
    pub logs: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum TaskResult {
    Succeeded {
        output_json: String,
        spawn: Vec<SpawnTask>,
    },
    /// Goes back to `pending` after `retry_after` unless attempts are used up.
    Retryable {
        error: String,
        retry_after: Duration,
    },
    Fatal {
        error: String,
        /// What the attempt produced before it failed (a CI step's report),
        /// kept as the dead task's output.
        output_json: Option<String>,
    },
    /// The task decided not to run (a CI step whose `if` is false): it is
    /// `skipped`, with this output saying why; its dependents are released.
    Skipped { output_json: String },
}

#[derive(Debug, Clone)]
pub struct SpawnTask {
    pub stage_name: String,
    pub handler: String,
    pub input_json: String,
    pub max_attempts: i32,
    pub timeout_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompletionOutcome {
    /// Recorded; the task is now in this state.
    Recorded(TaskState),
    /// Refused by fencing: the task is no longer running with this attempt
    /// (lease expired and re-claimed, or a duplicate completion).
    Stale,
    /// Refused: spawned into the current or an earlier stage, an unknown
    /// stage, or past the spawn limit. Recorded as a fatal failure instead.
    RejectedSpawn(String),
}

// ---------------------------------------------------------------- leases

#[derive(Debug, Clone)]
pub struct RescueExpiredLeases {
    pub now: Millis,
    /// Backoff for the retried attempt.
    pub retry_after: Duration,
    pub limit: u32,
}

#[derive(Debug, Clone)]
pub struct RenewLease {
    pub tenant: TenantId,
    pub lease: LeaseToken,
    pub lease_for: Duration,
    pub now: Millis,
    /// A progress note (agents' `update_task`), recorded as a `task_note`
    /// event in the renewal's transaction when the lease is still held.
    pub note: Option<String>,
    /// Log lines of the running attempt (a CI step's streamed output),
    /// recorded as `task_log` events in the renewal's transaction when the
    /// lease is still held, and dropped with it otherwise.
    pub logs: Vec<String>,
}

/// Claimed tasks to hand back unrun (a worker stopping).
#[derive(Debug, Clone)]
pub struct ReleaseLeases {
    pub leases: Vec<(TenantId, LeaseToken)>,
    pub now: Millis,
}

// ---------------------------------------------------------------- reads

#[derive(Debug, Clone)]
pub struct GetJob {
    pub tenant: TenantId,
    pub job: JobId,
}

/// One part of a job's stored spec ([`Store::job_spec_part`]).
#[derive(Debug, Clone)]
pub struct JobSpecPart {
    pub tenant: TenantId,
    pub job: JobId,
    /// Parts are numbered from 0 in the spec's order.
    pub part: u32,
}

#[derive(Debug, Clone)]
pub struct ListJobs {
    pub tenant: TenantId,
    pub state: Option<JobState>,
    pub name: Option<String>,
    pub created_after: Option<Millis>,
    pub created_before: Option<Millis>,
    /// Jobs with an id below this (newest first paging).
    pub before_id: Option<JobId>,
    pub limit: u32,
}

/// How many of a tenant's jobs are in each state, narrowed like [`ListJobs`]
/// (without its state, cursor and limit).
#[derive(Debug, Clone)]
pub struct CountJobs {
    pub tenant: TenantId,
    pub name: Option<String>,
    pub created_after: Option<Millis>,
    pub created_before: Option<Millis>,
}

#[derive(Debug, Clone)]
pub struct GetTask {
    pub tenant: TenantId,
    pub task: TaskId,
}

/// The first `limit` dead tasks of a job, by task id.
#[derive(Debug, Clone)]
pub struct DeadTasks {
    pub tenant: TenantId,
    pub job: JobId,
    pub limit: u32,
}

#[derive(Debug, Clone)]
pub struct JobEvents {
    pub tenant: TenantId,
    pub job: JobId,
    pub after_id: Option<i64>,
    pub limit: u32,
}

#[derive(Debug, Clone)]
pub struct StageResults {
    pub tenant: TenantId,
    pub job: JobId,
    /// The asking task's stage: only earlier stages may be read.
    pub from_stage_position: i32,
    pub stage_name: String,
    pub after: Option<TaskId>,
    pub limit: u32,
    /// Outputs are added to the page until their bytes reach this (a page
    /// holds at least one output).
    pub max_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct CancelJob {
    pub tenant: TenantId,
    pub job: JobId,
    pub now: Millis,
    /// Who cancelled (a token's name), recorded in the job_cancelled event.
    pub by: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RetryTask {
    pub tenant: TenantId,
    pub task: TaskId,
    pub now: Millis,
    /// Who retried (a token's name), recorded in the task_revived event.
    pub by: Option<String>,
}

/// The window a job's throughput is measured over (progress and ETA).
pub const RATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// [`RATE_WINDOW`] in milliseconds: the width of the buckets stage rows
/// count their finished tasks in.
pub(crate) const RATE_WINDOW_MS: Millis = RATE_WINDOW.as_millis() as Millis;

/// How many of a job's tasks finished in the [`RATE_WINDOW`] before `now`.
#[derive(Debug, Clone)]
pub struct RecentCompletions {
    pub tenant: TenantId,
    pub job: JobId,
    pub now: Millis,
}

/// Every tenant's tasks and jobs by state (for `/metrics`); tasks ready at
/// or before `now` count as waiting.
#[derive(Debug, Clone)]
pub struct StateCounts {
    pub now: Millis,
}

// ---------------------------------------------------------------- agent workflow, tokens (MCP)

/// Tasks of one job in id order, a page at a time.
#[derive(Debug, Clone)]
pub struct ListTasks {
    pub tenant: TenantId,
    pub job: JobId,
    pub after: Option<TaskId>,
    pub limit: u32,
}

/// A task that another task depends on, with what it produced.
#[derive(Debug, Clone, Serialize)]
pub struct Dependency {
    pub task_id: TaskId,
    pub key: Option<String>,
    pub state: TaskState,
    pub agent_json: Option<String>,
    pub output_json: Option<String>,
}

/// The most recent events of one task.
#[derive(Debug, Clone)]
pub struct TaskEvents {
    pub tenant: TenantId,
    pub task: TaskId,
    /// The newest `limit` events are returned, oldest first.
    pub limit: u32,
}

/// Which handlers the ready (pending, due) tasks of a job are waiting for.
#[derive(Debug, Clone)]
pub struct ReadyHandlers {
    pub tenant: TenantId,
    pub job: JobId,
    pub now: Millis,
    /// Ready tasks looked at (any of them, in whatever order the job's task
    /// index yields): bounds the cost on huge jobs.
    pub sample: u32,
}

/// One (executor, handler) that ready tasks of a job wait for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadyHandler {
    pub executor: Executor,
    pub handler: String,
}

#[derive(Debug, Clone)]
pub struct QueueDepthQuery {
    pub tenant: TenantId,
}

/// Store a new bearer token (its SHA-256, never its text).
#[derive(Debug, Clone)]
pub struct CreateToken {
    pub tenant: TenantId,
    pub token_hash: String,
    pub label: Option<String>,
    pub role: TokenRole,
    pub now: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRef {
    Id(i64),
    Hash(String),
}

#[derive(Debug, Clone)]
pub struct RevokeToken {
    pub token: TokenRef,
    pub now: Millis,
}

#[derive(Debug, Clone)]
pub struct TokenLookup {
    pub token_hash: String,
}

/// The persistence interface every backend implements and the conformance
/// suite in `tests/` checks.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Apply pending migrations.
    async fn migrate(&self) -> Result<(), StoreError>;
    /// Insert job, stages and first tasks in one transaction; idempotent on
    /// (tenant, idempotency key) through a unique index.
    async fn submit_job(&self, p: SubmitJob) -> Result<Submitted, StoreError>;
    /// Claim up to `limit` ready tasks: `pending`, `run_after <= now`, stage
    /// open; sets `running`, `attempt += 1`, lease expiry. One statement.
    async fn claim_batch(&self, p: ClaimBatch) -> Result<Vec<ClaimedTask>, StoreError>;
    /// Record many completions in one transaction (group commit), fenced on
    /// (running, attempt); decrements stage and dependency counters, opens next
    /// stages exactly once, inserts spawned children and events.
    async fn complete_batch(&self, p: CompleteBatch) -> Result<Vec<CompletionOutcome>, StoreError>;
    /// Extend a live lease; `Ok(false)` when the lease is no longer held.
    async fn renew_lease(&self, p: RenewLease) -> Result<bool, StoreError>;
    /// Expired leases go back to `pending` (or `dead` when attempts are used
    /// up). Returns how many were rescued.
    async fn rescue_expired_leases(&self, p: RescueExpiredLeases) -> Result<u64, StoreError>;
    /// Hand back claimed tasks whose handlers never started: each goes back
    /// to `pending`, ready at `now`, with its claim's attempt given back;
    /// fenced on (running, attempt). Returns how many were released.
    async fn release_leases(&self, p: ReleaseLeases) -> Result<u64, StoreError>;
    async fn get_job(&self, p: GetJob) -> Result<JobStatus, StoreError>;
    /// The job and its stages' counters (`total`, `remaining`) without
    /// counting its tasks: each stage's `counts` is empty. Its cost does not
    /// grow with the job (what waiting for a job polls).
    async fn job_counters(&self, p: GetJob) -> Result<JobStatus, StoreError>;
    /// One part of the job's spec as submitted (the canonical JSON of its
    /// job file or plan), numbered from 0; `None` past the last. Each is at
    /// most [`SPEC_PART_BYTES`] and they concatenate to the spec, so a large
    /// spec is read a part at a time, never whole.
    async fn job_spec_part(&self, p: JobSpecPart) -> Result<Option<String>, StoreError>;
    async fn list_jobs(&self, p: ListJobs) -> Result<Vec<JobSummary>, StoreError>;
    /// Jobs per state (every state present, zero when none) among the
    /// tenant's jobs that match the name and creation window.
    async fn count_jobs(&self, p: CountJobs) -> Result<Vec<(JobState, i64)>, StoreError>;
    async fn get_task(&self, p: GetTask) -> Result<TaskRecord, StoreError>;
    /// The first `limit` dead tasks of a job, by id, with their errors
    /// (none for an unknown job).
    async fn dead_tasks(&self, p: DeadTasks) -> Result<Vec<TaskRecord>, StoreError>;
    async fn job_events(&self, p: JobEvents) -> Result<Vec<Event>, StoreError>;
    /// Outputs of succeeded tasks of an earlier stage, ordered by task id.
    async fn stage_results(&self, p: StageResults) -> Result<Vec<(TaskId, String)>, StoreError>;
    /// Cancel every non-terminal task and mark the job cancelled.
    async fn cancel_job(&self, p: CancelJob) -> Result<JobState, StoreError>;
    /// Revive a dead or cancelled task (and reopen its job).
    async fn retry_task(&self, p: RetryTask) -> Result<TaskState, StoreError>;
    /// How many tasks of the job finished (succeeded, died or were skipped
    /// by their own run) in the [`RATE_WINDOW`] before `now`: estimated
    /// from each stage's counts of the current and the previous
    /// window-wide bucket, the previous one weighted by how much of it the
    /// window still covers. Exact while every finish is in one bucket.
    async fn recent_completions(&self, p: RecentCompletions) -> Result<f64, StoreError>;
    /// Whether the job is cancelled or failed (running tasks poll this).
    async fn job_state(&self, p: GetJob) -> Result<JobState, StoreError>;
    /// The distinct (executor, handler) of a sample of up to `sample` ready
    /// tasks of the job (pending, `run_after <= now`), sorted.
    async fn ready_handlers(&self, p: ReadyHandlers) -> Result<Vec<ReadyHandler>, StoreError>;

    // Agent workflow and MCP tokens.
    /// Tasks of a job with ids above `after`, in id order, at most `limit`.
    async fn list_tasks(&self, p: ListTasks) -> Result<Vec<TaskRecord>, StoreError>;
    /// The tasks the given task depends on (its `depends_on`), in id order.
    async fn task_dependencies(&self, p: GetTask) -> Result<Vec<Dependency>, StoreError>;
    /// The newest events of one task, oldest first.
    async fn task_events(&self, p: TaskEvents) -> Result<Vec<Event>, StoreError>;
    /// Counts of the tenant's pending (ready), running and blocked tasks.
    async fn queue_depth(&self, p: QueueDepthQuery) -> Result<QueueDepth, StoreError>;
    /// [`Store::queue_depth`]'s counts per executor and handler, ordered by
    /// both; handlers with no unfinished task are absent.
    async fn queue_by_handler(&self, p: QueueDepthQuery) -> Result<Vec<HandlerDepth>, StoreError>;
    /// Every tenant's tasks and jobs by state and the oldest ready task per
    /// executor, read in one snapshot: counts for an operator (`/metrics`),
    /// never a row of any tenant.
    async fn state_counts(&self, p: StateCounts) -> Result<StateTotals, StoreError>;
    /// Store a token hash for a tenant; returns the token's id.
    async fn create_token(&self, p: CreateToken) -> Result<i64, StoreError>;
    /// Revoke a live token; `Ok(None)` when there is no such live token.
    async fn revoke_token(&self, p: RevokeToken) -> Result<Option<TokenRecord>, StoreError>;
    /// The live token with this hash. Not tenant-scoped: it is how a request's tenant is found.
    async fn tenant_for_token(&self, p: TokenLookup) -> Result<Option<TokenRecord>, StoreError>;
    /// Signalled when tasks may have become ready (submit, stage opened,
    /// dependency released, retry), so an idle worker can claim at once
    /// instead of waiting for its next poll. `None` when the backend has no
    /// such channel; polling always remains the fallback, since a signal can
    /// be lost. Create the `notified()` future before claiming to not miss a
    /// signal sent in between (the Postgres store also leaves a permit).
    fn ready_signal(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }
    /// Statements, round trips and transactions this store has run since it
    /// was opened (for benchmarks).
    fn counters(&self) -> StoreCounters {
        StoreCounters::default()
    }
    /// Whether this process's writes run one at a time (SQLite's one writer
    /// connection, whose commits a sync outside it makes durable): then the
    /// workers keep two group commits under way, the next one committing
    /// while the last one's sync runs.
    fn writes_one_at_a_time(&self) -> bool {
        false
    }
}

/// Open the store named by a database URL: `sqlite://PATH` (created if
/// missing) or `postgres://…`. Migrations run before it is returned.
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        let store = sqlite::SqliteStore::open(url, sqlite::SqliteOptions::default()).await?;
        Ok(std::sync::Arc::new(store))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let store = postgres::PgStore::open(url).await?;
        Ok(std::sync::Arc::new(store))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_string()))
    }
}
