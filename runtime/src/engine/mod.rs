//! The engine: the one API the front doors (`cli`, `mcp`, `ci`) call.
//!
//! It validates job specs against the registered handlers, hands them to the
//! store, runs workers that claim tasks, execute them in the plugin sandbox
//! and record results, rescues expired leases and reports progress.
//!
//! **Invariant 18:** the engine never holds a database transaction open while a
//! handler runs: claim, run and complete are three separate steps, and only
//! the fenced completion decides what a run meant.
//! **Invariant 19:** nothing is routed to a stand-in handler: a task runs in a
//! registered plugin or is never claimed (and spawning one for an unknown
//! handler is a fatal task error).

pub mod agent;
pub mod ask;
pub mod backoff;
pub mod live;
pub mod metrics;
pub mod pipeline;
pub mod progress;
pub mod reload;
mod task_context;
pub mod tokens;
pub mod views;
pub mod worker;

use crate::model::{
    Event, JobId, JobState, JobSummary, Millis, Submitted, TaskId, TaskRecord, TaskState, TenantId,
};
use crate::plugin::PluginHost;
use crate::spec::{self, JobSpec, SpecError};
use crate::store::{
    CancelJob, GetJob, GetTask, JobEvents, JobSpecPart, ListJobs, RetryTask, Store, StoreError,
};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use progress::{JobProgress, StageProgress, WaitingFor};
pub use worker::{Execution, WorkerConfig, WorkerPool, WorkerStats};

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// Tunables that are not per job.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub limits: spec::Limits,
    /// First retry delay; doubles per attempt.
    pub retry_base: Duration,
    /// Largest retry delay.
    pub retry_cap: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            limits: spec::Limits::default(),
            retry_base: Duration::from_secs(1),
            retry_cap: Duration::from_secs(300),
        }
    }
}

/// What can go wrong in an engine call, split by who must act.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The caller's input was wrong (exit code 2 on the CLI).
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The id does not exist for this tenant.
    #[error("{entity} {id} not found")]
    NotFound { entity: &'static str, id: String },
    /// The requested change is not allowed from the current state.
    #[error(transparent)]
    IllegalTransition(#[from] crate::model::IllegalTransition),
    /// `retry` of a task that has not stopped for good.
    #[error("task {task} is {state}: only a dead or cancelled task can be retried")]
    NotRetryable { task: i64, state: String },
    /// `retry` of a task in a stage its stopped job never reached.
    #[error(transparent)]
    StageNotReached(#[from] crate::store::StageNotReached),
    /// A request that cannot be done as asked; the text says why and what
    /// to do instead (re-running a run that is still going, say).
    #[error("{0}")]
    Refused(String),
    /// A stored value the engine cannot read; names the row and the column.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Store(StoreError),
}

impl EngineError {
    /// True when the caller, not the system, must fix something.
    pub fn is_bad_input(&self) -> bool {
        match self {
            EngineError::Spec(_)
            | EngineError::NotFound { .. }
            | EngineError::IllegalTransition(_)
            | EngineError::NotRetryable { .. }
            | EngineError::StageNotReached(_)
            | EngineError::Refused(_) => true,
            EngineError::Corrupt(_) => false,
            // A database URL that cannot be shared, another application's file.
            EngineError::Store(e) => e.is_bad_input(),
        }
    }
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { entity, id } => EngineError::NotFound { entity, id },
            StoreError::IllegalTransition(t) => EngineError::IllegalTransition(t),
            StoreError::StageNotReached(s) => EngineError::StageNotReached(s),
            other => EngineError::Store(other),
        }
    }
}

/// Which jobs [`Engine::list_jobs`] returns.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub state: Option<JobState>,
    /// Exactly this name.
    pub name: Option<String>,
    /// Created at or after (milliseconds since the Unix epoch).
    pub created_after: Option<Millis>,
    /// Created before.
    pub created_before: Option<Millis>,
    /// Only jobs with an id below this one (the next, older page).
    pub before: Option<JobId>,
    /// At most this many.
    pub limit: u32,
}

pub struct Engine {
    store: Arc<dyn Store>,
    /// The current plugin host: swapped whole by a reload, so a task runs on
    /// the snapshot it started with (see [`Engine::replace_plugins`]).
    plugins: std::sync::RwLock<Arc<PluginHost>>,
    /// Bumped at every swap; MCP sessions announce `tools/list_changed`.
    plugin_generation: tokio::sync::watch::Sender<u64>,
    config: EngineConfig,
    /// Signalled when new work may be ready in this process (submit, stage opened).
    wake: Arc<tokio::sync::Notify>,
    /// Log lines and progress of the tasks this process runs, as they come.
    live: live::LiveReports,
    /// The MCP agents attached to this process's jobs ([`ask`]).
    agents: Arc<ask::AgentLinks>,
}

impl Engine {
    pub fn new(store: Arc<dyn Store>, plugins: Arc<PluginHost>, config: EngineConfig) -> Arc<Self> {
        Arc::new(Engine {
            store,
            plugins: std::sync::RwLock::new(plugins),
            plugin_generation: tokio::sync::watch::Sender::new(0),
            config,
            wake: Arc::new(tokio::sync::Notify::new()),
            live: live::LiveReports::default(),
            agents: Arc::default(),
        })
    }

    /// Hear the log lines and progress of the tasks this process's workers
    /// run from now on ([`live`]).
    pub fn live_reports(&self) -> tokio::sync::broadcast::Receiver<live::LiveReport> {
        self.live.subscribe()
    }

    /// The agents a handler tool call attaches to the job it waits on, for
    /// its task's `agent` import to ask ([`ask`]).
    pub fn agent_links(&self) -> &Arc<ask::AgentLinks> {
        &self.agents
    }

    /// Where the tasks this process runs send their live reports.
    pub(crate) fn live(&self) -> &live::LiveReports {
        &self.live
    }

    /// Open the database at `db_url` (`sqlite://PATH`, created if missing, or
    /// `postgres://…`; migrations run first) and build an engine on it: how
    /// the front doors get one without naming the store.
    pub async fn open(
        db_url: &str,
        plugins: Arc<PluginHost>,
        config: EngineConfig,
    ) -> Result<Arc<Self>, EngineError> {
        let store = crate::store::open(db_url).await?;
        Ok(Engine::new(store, plugins, config))
    }

    /// The store is the engine's own: front doors go through the methods
    /// below (ARCHITECTURE.md, API Boundary).
    fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The current plugin host. Hold the `Arc` for as long as one piece of
    /// work must see one version (a run, a validation and its submit).
    pub fn plugins(&self) -> Arc<PluginHost> {
        self.plugins
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Swap in a reloaded plugin host: new work sees it at once, tasks
    /// already running finish on the host they started with, and workers
    /// waiting for a handler that just appeared are woken (Invariant 36).
    pub fn replace_plugins(&self, host: Arc<PluginHost>) {
        *self
            .plugins
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = host;
        self.plugin_generation.send_modify(|g| *g += 1);
        self.wake.notify_waiters();
    }

    /// Changes whenever [`Engine::replace_plugins`] swapped the host.
    pub fn plugin_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.plugin_generation.subscribe()
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Validate and insert a job. Nothing is written unless every check passes.
    pub async fn submit(&self, tenant: &TenantId, job: JobSpec) -> Result<Submitted, EngineError> {
        let plugins = self.plugins();
        // Consumed: a large job is not held twice (spec and rows to insert).
        let new_job = spec::validate_owned(
            job,
            plugins.as_ref(),
            &self.config.limits,
            tenant.clone(),
            now_millis(),
        )?;
        self.insert(new_job).await
    }

    /// Parse a job file (TOML or JSON) and submit it.
    pub async fn submit_file(
        &self,
        tenant: &TenantId,
        path: &Path,
    ) -> Result<Submitted, EngineError> {
        let new_job = Self::load_job_file(&self.plugins(), &self.config.limits, tenant, path)?;
        self.insert(new_job).await
    }

    /// Read, parse and check a job file against `plugins` and `limits`
    /// without a database: a front door that has not opened its store yet
    /// refuses a bad file before anything (even a new database file) is
    /// written.
    pub fn load_job_file(
        plugins: &PluginHost,
        limits: &spec::Limits,
        tenant: &TenantId,
        path: &Path,
    ) -> Result<crate::model::SubmitJob, EngineError> {
        Ok(spec::load_job_file(
            path,
            plugins,
            limits,
            tenant.clone(),
            now_millis(),
        )?)
    }

    pub(crate) async fn insert(
        &self,
        job: crate::model::SubmitJob,
    ) -> Result<Submitted, EngineError> {
        let submitted = self.store.submit_job(job).await?;
        self.wake.notify_waiters();
        Ok(submitted)
    }

    pub async fn progress(
        &self,
        tenant: &TenantId,
        job: JobId,
    ) -> Result<JobProgress, EngineError> {
        let window = progress::RATE_WINDOW;
        // Independent reads: run side by side (the read pools hold several
        // connections), since get_job's latency is what agents feel.
        let (status, recent) = tokio::join!(
            self.store.get_job(GetJob {
                tenant: tenant.clone(),
                job,
            }),
            self.store
                .recent_completions(crate::store::RecentCompletions {
                    tenant: tenant.clone(),
                    job,
                    now: now_millis(),
                })
        );
        Ok(JobProgress::from_status(status?, recent?, window))
    }

    /// A job's progress and, when it is stalled (running, with ready tasks
    /// and none running), what it waits for: the handlers its ready tasks
    /// need, from a sample of [`progress::STALL_SAMPLE`] of them. The sample
    /// is read beside the progress rather than after it, since this is
    /// get_job's path and its latency is what agents feel.
    pub async fn progress_and_waiting(
        &self,
        tenant: &TenantId,
        job: JobId,
    ) -> Result<(JobProgress, Vec<WaitingFor>), EngineError> {
        let (progress, ready) =
            tokio::join!(self.progress(tenant, job), self.ready_handlers(tenant, job));
        let progress = progress?;
        let waiting = if stalled(&progress) {
            self.waiting_for_handlers(ready?)
        } else {
            Vec::new()
        };
        Ok((progress, waiting))
    }

    /// The view of a job: its progress and what it waits for (`get_job`,
    /// `lockstep status --json`).
    pub async fn job_view(
        &self,
        tenant: &TenantId,
        job: JobId,
    ) -> Result<views::JobView, EngineError> {
        let (progress, waiting) = self.progress_and_waiting(tenant, job).await?;
        Ok(views::JobView::from_progress(&progress).waiting_for(waiting))
    }

    /// The view of a task with its [`views::RECENT_EVENTS`] most recent
    /// events (`get_task`, `lockstep task --json`).
    pub async fn task_view(
        &self,
        tenant: &TenantId,
        task: TaskId,
    ) -> Result<views::TaskView, EngineError> {
        let record = self.task(tenant, task).await?;
        let events = self.task_events(tenant, task, views::RECENT_EVENTS).await?;
        views::TaskView::new(&record, &events)
    }

    /// What a job waits for (see [`Engine::progress_and_waiting`]), given
    /// progress already read. Empty unless the job is stalled.
    pub async fn waiting_for(
        &self,
        tenant: &TenantId,
        progress: &JobProgress,
    ) -> Result<Vec<WaitingFor>, EngineError> {
        if !stalled(progress) {
            return Ok(Vec::new());
        }
        let ready = self.ready_handlers(tenant, progress.job.job_id).await?;
        Ok(self.waiting_for_handlers(ready))
    }

    async fn ready_handlers(
        &self,
        tenant: &TenantId,
        job: JobId,
    ) -> Result<Vec<crate::store::ReadyHandler>, EngineError> {
        Ok(self
            .store
            .ready_handlers(crate::store::ReadyHandlers {
                tenant: tenant.clone(),
                job,
                now: now_millis(),
                sample: progress::STALL_SAMPLE,
            })
            .await?)
    }

    fn waiting_for_handlers(&self, ready: Vec<crate::store::ReadyHandler>) -> Vec<WaitingFor> {
        // A process that loaded no plugins (e.g. `lockstep status`) cannot say.
        let known = self.plugins().handler_names();
        ready
            .into_iter()
            .map(|r| WaitingFor {
                registered_here: (r.executor == crate::model::Executor::Wasm && !known.is_empty())
                    .then(|| known.contains(&r.handler)),
                executor: r.executor,
                handler: r.handler,
            })
            .collect()
    }

    /// The tenant's jobs, newest first, narrowed by `filter`.
    pub async fn list_jobs(
        &self,
        tenant: &TenantId,
        filter: JobFilter,
    ) -> Result<Vec<JobSummary>, EngineError> {
        Ok(self
            .store
            .list_jobs(ListJobs {
                tenant: tenant.clone(),
                state: filter.state,
                name: filter.name,
                created_after: filter.created_after,
                created_before: filter.created_before,
                before_id: filter.before,
                limit: filter.limit,
            })
            .await?)
    }

    /// How many of the tenant's jobs are in each state (every state, zero
    /// when none), among those matching `filter`'s name and creation window.
    pub async fn count_jobs(
        &self,
        tenant: &TenantId,
        filter: &JobFilter,
    ) -> Result<Vec<(JobState, i64)>, EngineError> {
        Ok(self
            .store
            .count_jobs(crate::store::CountJobs {
                tenant: tenant.clone(),
                name: filter.name.clone(),
                created_after: filter.created_after,
                created_before: filter.created_before,
            })
            .await?)
    }

    pub async fn events(
        &self,
        tenant: &TenantId,
        job: JobId,
        after_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Event>, EngineError> {
        Ok(self
            .store
            .job_events(JobEvents {
                tenant: tenant.clone(),
                job,
                after_id,
                limit,
            })
            .await?)
    }

    /// The job's spec as submitted (the canonical JSON of its job file or
    /// plan), a stored part at a time: a million-task spec is 52 MB, never
    /// held whole. The first part is read here, so an unknown job (or
    /// another tenant's) is an error before anything is written out; the
    /// rest are read as the stream is polled.
    pub async fn spec(
        self: &Arc<Self>,
        tenant: &TenantId,
        job: JobId,
    ) -> Result<
        impl futures_util::Stream<Item = Result<String, EngineError>> + Send + 'static,
        EngineError,
    > {
        let first = self.spec_part(tenant, job, 0).await?;
        let (engine, tenant) = (Arc::clone(self), tenant.clone());
        let rest = futures_util::stream::unfold(Some(1u32), move |next| {
            let (engine, tenant) = (Arc::clone(&engine), tenant.clone());
            async move {
                let part = next?;
                match engine.spec_part(&tenant, job, part).await {
                    Ok(Some(text)) => Some((Ok(text), Some(part + 1))),
                    Ok(None) => None,
                    Err(e) => Some((Err(e), None)),
                }
            }
        });
        Ok(futures_util::StreamExt::chain(
            futures_util::stream::iter(first.map(Ok)),
            rest,
        ))
    }

    async fn spec_part(
        &self,
        tenant: &TenantId,
        job: JobId,
        part: u32,
    ) -> Result<Option<String>, EngineError> {
        Ok(self
            .store
            .job_spec_part(JobSpecPart {
                tenant: tenant.clone(),
                job,
                part,
            })
            .await?)
    }

    pub async fn task(&self, tenant: &TenantId, task: TaskId) -> Result<TaskRecord, EngineError> {
        Ok(self
            .store
            .get_task(GetTask {
                tenant: tenant.clone(),
                task,
            })
            .await?)
    }

    /// A page of a job's tasks in id order: the first `limit` after `after`.
    pub async fn job_tasks_page(
        &self,
        tenant: &TenantId,
        job: JobId,
        after: Option<TaskId>,
        limit: u32,
    ) -> Result<Vec<TaskRecord>, EngineError> {
        Ok(self
            .store
            .list_tasks(crate::store::ListTasks {
                tenant: tenant.clone(),
                job,
                after,
                limit,
            })
            .await?)
    }

    /// A job's progress from its stage counters only (no count over its
    /// tasks, no throughput): what a list of many jobs can afford per row.
    pub async fn progress_counters(
        &self,
        tenant: &TenantId,
        job: JobId,
    ) -> Result<JobProgress, EngineError> {
        let status = self
            .store
            .job_counters(GetJob {
                tenant: tenant.clone(),
                job,
            })
            .await?;
        Ok(JobProgress::from_status(status, 0.0, progress::RATE_WINDOW))
    }

    /// The first `limit` dead tasks of a job, by task id, with their errors.
    pub async fn dead_tasks(
        &self,
        tenant: &TenantId,
        job: JobId,
        limit: u32,
    ) -> Result<Vec<TaskRecord>, EngineError> {
        Ok(self
            .store
            .dead_tasks(crate::store::DeadTasks {
                tenant: tenant.clone(),
                job,
                limit,
            })
            .await?)
    }

    /// Outputs of a stage's succeeded tasks (the first `limit`, by task id),
    /// e.g. the result of a job's last stage.
    pub async fn stage_outputs(
        &self,
        tenant: &TenantId,
        job: JobId,
        stage: &str,
        limit: u32,
    ) -> Result<Vec<(TaskId, String)>, EngineError> {
        Ok(self
            .store
            .stage_results(crate::store::StageResults {
                tenant: tenant.clone(),
                job,
                // Any stage of the job may be read from outside it.
                from_stage_position: i32::MAX,
                stage_name: stage.to_string(),
                after: None,
                limit,
                max_bytes: crate::plugin::STAGE_RESULTS_PAGE_BYTES,
            })
            .await?)
    }

    /// The most recent events of one task (newest last).
    pub async fn task_events(
        &self,
        tenant: &TenantId,
        task: TaskId,
        limit: u32,
    ) -> Result<Vec<Event>, EngineError> {
        Ok(self
            .store
            .task_events(crate::store::TaskEvents {
                tenant: tenant.clone(),
                task,
                limit,
            })
            .await?)
    }

    /// Tasks waiting and running for this tenant (for health checks).
    pub async fn queue_depth(
        &self,
        tenant: &TenantId,
    ) -> Result<crate::model::QueueDepth, EngineError> {
        Ok(self
            .store
            .queue_depth(crate::store::QueueDepthQuery {
                tenant: tenant.clone(),
            })
            .await?)
    }

    /// Tasks waiting and running for this tenant, per executor and handler.
    pub async fn queue_by_handler(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<crate::model::HandlerDepth>, EngineError> {
        Ok(self
            .store
            .queue_by_handler(crate::store::QueueDepthQuery {
                tenant: tenant.clone(),
            })
            .await?)
    }

    pub async fn cancel(&self, tenant: &TenantId, job: JobId) -> Result<JobState, EngineError> {
        self.cancel_as(tenant, job, None).await
    }

    /// Cancel a job on behalf of `by` (a token's name), recorded in the
    /// job_cancelled event.
    pub async fn cancel_as(
        &self,
        tenant: &TenantId,
        job: JobId,
        by: Option<String>,
    ) -> Result<JobState, EngineError> {
        Ok(self
            .store
            .cancel_job(CancelJob {
                tenant: tenant.clone(),
                job,
                now: now_millis(),
                by,
            })
            .await?)
    }

    pub async fn retry(&self, tenant: &TenantId, task: TaskId) -> Result<TaskState, EngineError> {
        self.retry_as(tenant, task, None).await
    }

    /// Revive a dead or cancelled task on behalf of `by` (a token's name),
    /// recorded in the task_revived event.
    pub async fn retry_as(
        &self,
        tenant: &TenantId,
        task: TaskId,
        by: Option<String>,
    ) -> Result<TaskState, EngineError> {
        let state = self
            .store
            .retry_task(RetryTask {
                tenant: tenant.clone(),
                task,
                now: now_millis(),
                by,
            })
            .await
            .map_err(|e| match e {
                StoreError::IllegalTransition(t) if t.entity == "task" => {
                    EngineError::NotRetryable {
                        task: task.0,
                        state: t.from,
                    }
                }
                other => EngineError::from(other),
            })?;
        self.wake.notify_waiters();
        Ok(state)
    }

    /// Wait until the job reaches a terminal state or `timeout` passes,
    /// calling `on_progress` after every poll. Returns the last progress
    /// seen, in full (with task counts) once the wait ends.
    ///
    /// Each poll reads only the job's stage counters (a row per stage, not a
    /// count over the job's tasks), so waiting costs the same at 100 and at
    /// 1,000,000 tasks; the progress it reports has no task counts by state
    /// and measures throughput from the counters it saw over
    /// [`progress::RATE_WINDOW`].
    pub async fn wait(
        &self,
        tenant: &TenantId,
        job: JobId,
        timeout: Option<Duration>,
        mut on_progress: impl FnMut(&JobProgress),
    ) -> Result<JobProgress, EngineError> {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut seen: std::collections::VecDeque<(tokio::time::Instant, i64)> =
            std::collections::VecDeque::new();
        loop {
            let status = self
                .store
                .job_counters(GetJob {
                    tenant: tenant.clone(),
                    job,
                })
                .await?;
            let at = tokio::time::Instant::now();
            let done: i64 = status.stages.iter().map(|s| s.total - s.remaining).sum();
            while seen
                .front()
                .is_some_and(|(then, _)| at.duration_since(*then) > progress::RATE_WINDOW)
            {
                seen.pop_front();
            }
            let (window, finished) = match seen.front() {
                Some((then, done_then)) => (at.duration_since(*then), done - done_then),
                None => (progress::RATE_WINDOW, 0),
            };
            seen.push_back((at, done));
            let terminal = status.state.is_terminal();
            let p = JobProgress::from_status(
                status,
                finished as f64,
                window.max(Duration::from_millis(1)),
            );
            on_progress(&p);
            if terminal || deadline.is_some_and(|d| at >= d) {
                return self.progress(tenant, job).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Statements, round trips and transactions the store has run since it
    /// was opened (benchmarks report them per task).
    pub fn store_counters(&self) -> crate::store::StoreCounters {
        self.store.counters()
    }

    /// Whether the store's writes run one at a time (SQLite): it decides
    /// how many group commits the workers keep under way.
    pub fn store_writes_one_at_a_time(&self) -> bool {
        self.store.writes_one_at_a_time()
    }

    /// Start workers in this process; they run until the pool is shut down.
    pub fn start_workers(self: &Arc<Self>, config: WorkerConfig) -> WorkerPool {
        WorkerPool::start(self.clone(), config)
    }

    pub(crate) fn wake(&self) -> &Arc<tokio::sync::Notify> {
        &self.wake
    }
}

/// Running, with ready (pending) tasks, and none of its tasks running.
fn stalled(progress: &JobProgress) -> bool {
    let count = |state: TaskState| {
        progress
            .counts
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n)
    };
    progress.job.state == JobState::Running
        && count(TaskState::Running) == 0
        && count(TaskState::Pending) > 0
}

/// Jobs are validated against the handlers this process has registered.
impl spec::HandlerCatalog for PluginHost {
    fn names(&self) -> Vec<String> {
        self.handler_names()
    }

    fn validate_input(&self, handler: &str, input: &serde_json::Value) -> Result<(), String> {
        PluginHost::validate_input(self, handler, input).map_err(|e| e.to_string())
    }
}
