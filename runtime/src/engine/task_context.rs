//! The host side of the WIT `context` import for tasks that run inside a job:
//! lineage reads go to the store, cancellation is read from the job's state,
//! and what the handler logs is kept to be recorded with its result (and
//! sent live, with its progress, to this process's listeners: [`super::live`]),
//! and what it asks its agent goes to the MCP session attached to its job
//! ([`super::ask`]).

use super::ask::AgentLinks;
use super::live::{Live, LiveReport, LiveReports};
use crate::limits::printable;
use crate::model::{JobId, JobState, TaskId, TenantId};
use crate::plugin::{
    AskError, AskKind, LogLevel, STAGE_RESULTS_PAGE_BYTES, STAGE_RESULTS_PAGE_MAX, TaskContext,
};
use crate::store::{GetJob, StageResults, Store};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// How often a running task may hit the database to learn about cancellation.
const CANCEL_CHECK_EVERY_MS: i64 = 250;

/// What a handler logged during one attempt. The plugin host bounds it
/// ([`crate::plugin::MAX_LOG_LINES`] lines of at most
/// [`crate::plugin::MAX_LOG_MESSAGE`] bytes, then a note of what it dropped).
#[derive(Debug, Default)]
struct GuestLog {
    lines: Vec<String>,
    last_progress: Option<String>,
}

pub(crate) struct JobTaskContext {
    pub store: Arc<dyn Store>,
    pub tenant: TenantId,
    pub job: JobId,
    pub task: TaskId,
    pub stage_position: i32,
    pub cancelled: AtomicBool,
    pub last_cancel_check: AtomicI64,
    log: Mutex<GuestLog>,
    /// Where log lines and progress also go as they come ([`super::live`]).
    live: LiveReports,
    /// Who the `agent` import asks.
    agents: Arc<AgentLinks>,
    /// Whether the guest started or the task was handed back first
    /// ([`QUEUED`], [`STARTED`], [`RELEASED`]): exactly one of the two wins.
    turn: AtomicU8,
}

const QUEUED: u8 = 0;
const STARTED: u8 = 1;
const RELEASED: u8 = 2;

impl JobTaskContext {
    pub fn new(
        store: Arc<dyn Store>,
        tenant: TenantId,
        job: JobId,
        task: TaskId,
        stage_position: i32,
        live: LiveReports,
        agents: Arc<AgentLinks>,
    ) -> Self {
        JobTaskContext {
            store,
            tenant,
            job,
            task,
            stage_position,
            cancelled: AtomicBool::new(false),
            last_cancel_check: AtomicI64::new(0),
            log: Mutex::new(GuestLog::default()),
            live,
            agents,
            turn: AtomicU8::new(QUEUED),
        }
    }

    /// Hand the task back if its guest has not started; `false` when it has
    /// (it then runs to its end or its interruption).
    pub fn release(&self) -> bool {
        match self
            .turn
            .compare_exchange(QUEUED, RELEASED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(current) => current == RELEASED,
        }
    }

    fn report(&self, what: Live) -> LiveReport {
        LiveReport {
            tenant: self.tenant.clone(),
            job: self.job,
            task: self.task,
            what,
        }
    }

    /// The lines to record with this attempt's result: what was logged, then
    /// the last progress report.
    pub fn take_logs(&self) -> Vec<String> {
        let log = std::mem::take(&mut *self.log.lock().unwrap_or_else(|p| p.into_inner()));
        let mut lines = log.lines;
        lines.extend(log.last_progress);
        lines
    }
}

#[async_trait::async_trait]
impl TaskContext for JobTaskContext {
    fn log(&self, level: LogLevel, message: &str) {
        let (job, task) = (self.job.0, self.task.0);
        let shown = printable(message);
        match level {
            LogLevel::Error => tracing::error!(job, task, "{shown}"),
            LogLevel::Warn => tracing::warn!(job, task, "{shown}"),
            LogLevel::Info => tracing::info!(job, task, "{shown}"),
            LogLevel::Debug => tracing::debug!(job, task, "{shown}"),
            LogLevel::Trace => tracing::trace!(job, task, "{shown}"),
        }
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .lines
            .push(format!("{level}: {message}"));
        self.live.send(|| {
            self.report(Live::Log {
                level,
                message: message.to_owned(),
            })
        });
    }

    fn progress(&self, done: u64, total: u64, message: &str) {
        tracing::debug!(
            job = self.job.0,
            task = self.task.0,
            done,
            total,
            "{}",
            printable(message)
        );
        // Only the latest report is kept: progress is a state, not a history.
        let report = format!("progress {done}/{total}: {message}");
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_progress = Some(report);
        self.live.send(|| {
            self.report(Live::Progress {
                done,
                total,
                message: message.to_owned(),
            })
        });
    }

    async fn stage_results(
        &self,
        stage: &str,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<(u64, String)>, String> {
        let after = match after.map(i64::try_from) {
            None => None,
            Some(Ok(after)) => Some(TaskId(after)),
            Some(Err(_)) => return Err("after is not a task id".to_owned()),
        };
        let rows = self
            .store
            .stage_results(StageResults {
                tenant: self.tenant.clone(),
                job: self.job,
                from_stage_position: self.stage_position,
                stage_name: stage.to_string(),
                after,
                limit: limit.clamp(1, STAGE_RESULTS_PAGE_MAX),
                max_bytes: STAGE_RESULTS_PAGE_BYTES,
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok(rows
            .into_iter()
            .map(|(id, out)| (id.0 as u64, out))
            .collect())
    }

    async fn cancelled(&self) -> bool {
        if self.cancelled.load(Ordering::Relaxed) {
            return true;
        }
        let now = super::now_millis();
        let last = self.last_cancel_check.load(Ordering::Relaxed);
        if now - last < CANCEL_CHECK_EVERY_MS {
            return false;
        }
        self.last_cancel_check.store(now, Ordering::Relaxed);
        let state = self
            .store
            .job_state(GetJob {
                tenant: self.tenant.clone(),
                job: self.job,
            })
            .await;
        let gone = matches!(state, Ok(JobState::Cancelled) | Ok(JobState::Failed));
        if gone {
            self.cancelled.store(true, Ordering::Relaxed);
        }
        gone
    }

    async fn ask(&self, kind: AskKind, request: &str) -> Result<String, AskError> {
        self.agents.ask(&self.tenant, self.job, kind, request).await
    }

    async fn release_connection(&self, retry: std::time::Duration) -> Result<(), AskError> {
        self.agents
            .release_connection(&self.tenant, self.job, retry)
            .await
    }

    fn start(&self) -> bool {
        self.turn
            .compare_exchange(QUEUED, STARTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}
