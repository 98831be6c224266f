//! The host side of the WIT `context` import for tasks that run inside a job:
//! lineage reads go to the store, cancellation is read from the job's state.

use crate::plugin::{LogLevel, TaskContext};
use crate::state::JobState;
use crate::store::{GetJob, JobId, StageResults, Store, TaskId, TenantId};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// How often a running task may hit the database to learn about cancellation.
const CANCEL_CHECK_EVERY_MS: i64 = 250;

pub(crate) struct JobTaskContext {
    pub store: Arc<dyn Store>,
    pub tenant: TenantId,
    pub job: JobId,
    pub task: TaskId,
    pub stage_position: i32,
    pub cancelled: AtomicBool,
    pub last_cancel_check: AtomicI64,
}

impl JobTaskContext {
    pub fn new(
        store: Arc<dyn Store>,
        tenant: TenantId,
        job: JobId,
        task: TaskId,
        stage_position: i32,
    ) -> Self {
        JobTaskContext {
            store,
            tenant,
            job,
            task,
            stage_position,
            cancelled: AtomicBool::new(false),
            last_cancel_check: AtomicI64::new(0),
        }
    }
}

#[async_trait::async_trait]
impl TaskContext for JobTaskContext {
    fn log(&self, level: LogLevel, message: &str) {
        let (job, task) = (self.job.0, self.task.0);
        match level {
            LogLevel::Error => tracing::error!(job, task, "{message}"),
            LogLevel::Warn => tracing::warn!(job, task, "{message}"),
            LogLevel::Info => tracing::info!(job, task, "{message}"),
            LogLevel::Debug => tracing::debug!(job, task, "{message}"),
            LogLevel::Trace => tracing::trace!(job, task, "{message}"),
        }
    }

    fn progress(&self, done: u64, total: u64, message: &str) {
        tracing::debug!(
            job = self.job.0,
            task = self.task.0,
            done,
            total,
            "{message}"
        );
    }

    async fn stage_results(
        &self,
        stage: &str,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<(u64, String)>, String> {
        let rows = self
            .store
            .stage_results(StageResults {
                tenant: self.tenant.clone(),
                job: self.job,
                from_stage_position: self.stage_position,
                stage_name: stage.to_string(),
                after: after.map(|a| TaskId(a as i64)),
                limit: limit.clamp(1, 1000),
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
}
