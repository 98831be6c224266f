//! The agent workflow on the engine: plan → claim → update → complete/fail.
//!
//! Agent tasks are ordinary tasks with `executor = "agent"`: a plan (pure
//! spec, [`crate::spec::plan`]) is a one-stage job whose subtasks carry
//! `key`/`depends_on`, submitted through [`Engine::submit`] like any job, so
//! the same validation, idempotency, dependency counters and fencing apply.
//! Agents claim them (instead of WASM workers) under a lease and complete
//! them with a summary. What each step returns is a view
//! ([`super::views`]).
//!
//! **Invariant 21:** a subtask becomes claimable exactly when its own
//! dependencies have succeeded (the store's per-task dependency counter), not
//! when a whole level has.
//! **Invariant 8:** every completion and failure is fenced on (task, attempt):
//! once a lease has expired and the task was claimed again, the old attempt's
//! result is refused with [`AgentError::LeaseLost`] saying what happened,
//! and nothing is written.
//! **Invariant 10:** only agent tasks of the caller's tenant can be claimed,
//! renewed, completed or failed here; a WASM task answers
//! [`AgentError::NotAgentTask`] and another tenant's id answers "not found".

use super::backoff::retry_delay;
use super::views::{
    ClaimedTaskView, DependencyView, FinishedView, LeaseView, PlanView, PlannedTaskView, corrupt,
};
use super::{Engine, EngineError, now_millis};
use crate::model::{Executor, JobId, LeaseToken, TaskId, TaskRecord, TaskState, TenantId};
use crate::spec::plan::{Plan, plan_field, plan_job};
use crate::spec::{FieldError, SpecError};
use crate::store::{
    ClaimBatch, CompleteBatch, Completion, CompletionOutcome, GetTask, ListTasks, RenewLease,
    TaskResult,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

/// What an agent task asks for, as stored in its `agent_json` (written by
/// `spec::validate`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentBrief {
    pub title: String,
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    pub specialist: Option<String>,
}

impl AgentBrief {
    /// The brief of a stored task; `None` for tasks that are not agent tasks.
    pub fn of(task: &TaskRecord) -> Result<Option<AgentBrief>, EngineError> {
        AgentBrief::decode(task.task_id, task.agent_json.as_deref())
    }

    /// `task`'s stored `agent_json`; JSON that is not a brief is corrupt.
    pub(crate) fn decode(
        task: TaskId,
        json: Option<&str>,
    ) -> Result<Option<AgentBrief>, EngineError> {
        json.map(|json| serde_json::from_str(json).map_err(|e| corrupt(task, "agent_json", &e)))
            .transpose()
    }
}

/// Which agent task to claim.
#[derive(Debug, Clone)]
pub struct AgentClaim {
    /// Only tasks of this job.
    pub job: Option<JobId>,
    /// Only tasks for this specialist; any agent task when `None`.
    pub specialist: Option<String>,
    pub lease: Duration,
    /// Recorded with the claim.
    pub worker: String,
}

/// A file or other product of an agent's work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "ArtifactView")]
pub struct Artifact {
    pub path: String,
    pub kind: String,
}

/// What an agent reports when it completes a task; stored as the task's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentOutput {
    pub summary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<Artifact>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_action: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The plan itself is wrong; the field names the argument (`subtasks[2].depends_on[0]`).
    #[error(transparent)]
    InvalidPlan(#[from] FieldError),
    /// Fencing refused the call: the lease is gone.
    #[error("task {} attempt {} is no longer yours: {why}", .lease.task_id.0, .lease.attempt)]
    LeaseLost { lease: LeaseToken, why: String },
    #[error("task {0} is not an agent task: a WASM worker runs it")]
    NotAgentTask(i64),
}

impl From<crate::store::StoreError> for AgentError {
    fn from(e: crate::store::StoreError) -> Self {
        AgentError::Engine(e.into())
    }
}

impl AgentError {
    /// True when the caller, not the system, must fix something.
    pub fn is_bad_input(&self) -> bool {
        match self {
            AgentError::Engine(e) => e.is_bad_input(),
            _ => true,
        }
    }
}

impl Engine {
    /// Store a plan as a one-stage job of agent tasks (validated by
    /// [`plan_job`]; nothing is written unless the whole plan is valid).
    pub async fn plan(&self, tenant: &TenantId, plan: Plan) -> Result<PlanView, AgentError> {
        let job = plan_job(&plan)?;
        let goal = job.spec.name.clone();
        let submitted = match self.submit(tenant, job.spec).await {
            Ok(s) => s,
            Err(EngineError::Spec(SpecError::Invalid { pointer, message })) => {
                return Err(FieldError::new(plan_field(&pointer), message).into());
            }
            Err(e) => return Err(e.into()),
        };
        let records = self.job_tasks(tenant, submitted.job_id).await?;
        let by_key: HashMap<&str, &TaskRecord> = records
            .iter()
            .filter_map(|r| r.key.as_deref().map(|k| (k, r)))
            .collect();
        let mut tasks = Vec::with_capacity(plan.subtasks.len());
        for ((s, key), deps) in plan.subtasks.into_iter().zip(job.keys).zip(job.depends_on) {
            // An idempotent replay may return a plan stored with other keys; report what is stored.
            let Some(record) = by_key.get(key.as_str()) else {
                continue;
            };
            tasks.push(PlannedTaskView {
                task_id: record.task_id.0,
                key,
                title: s.title,
                specialist: s.specialist,
                depends_on: deps,
                state: record.state.to_string(),
            });
        }
        Ok(PlanView {
            job_id: submitted.job_id.0,
            created: submitted.created,
            goal,
            tasks,
        })
    }

    /// Every task of a job, in id order (paged internally).
    pub async fn job_tasks(
        &self,
        tenant: &TenantId,
        job: JobId,
    ) -> Result<Vec<TaskRecord>, EngineError> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .store()
                .list_tasks(ListTasks {
                    tenant: tenant.clone(),
                    job,
                    after,
                    limit: 1000,
                })
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.task_id);
            let full = page.len() == 1000;
            out.extend(page);
            if !full {
                break;
            }
        }
        Ok(out)
    }

    /// Claim the next ready agent task of this tenant, with what its
    /// dependencies produced. `Ok(None)` when none is ready.
    pub async fn claim_agent_task(
        &self,
        tenant: &TenantId,
        claim: AgentClaim,
    ) -> Result<Option<ClaimedTaskView>, AgentError> {
        if let Some(job) = claim.job {
            // A foreign or unknown job answers "not found" rather than "nothing ready".
            self.store()
                .job_state(crate::store::GetJob {
                    tenant: tenant.clone(),
                    job,
                })
                .await?;
        }
        let claimed = self
            .store()
            .claim_batch(ClaimBatch {
                tenant: Some(tenant.clone()),
                executor: Executor::Agent,
                handlers: claim.specialist.map(|s| vec![s]),
                job: claim.job,
                limit: 1,
                lease: claim.lease,
                worker: claim.worker,
                now: now_millis(),
            })
            .await?;
        let Some(task) = claimed.into_iter().next() else {
            return Ok(None);
        };
        let record = self.task(tenant, task.lease.task_id).await?;
        let brief = AgentBrief::of(&record)?
            .ok_or_else(|| corrupt(record.task_id, "agent_json", &"an agent task has none"))?;
        // Only the job's name is wanted: its counters are one row per stage,
        // where `get_job` counts every task of the job.
        let job = self
            .store()
            .job_counters(crate::store::GetJob {
                tenant: tenant.clone(),
                job: task.job_id,
            })
            .await?;
        let dependencies = self
            .store()
            .task_dependencies(GetTask {
                tenant: tenant.clone(),
                task: task.lease.task_id,
            })
            .await?
            .into_iter()
            .map(DependencyView::new)
            .collect::<Result<_, _>>()?;
        Ok(Some(ClaimedTaskView {
            task_id: task.lease.task_id.0,
            attempt: task.lease.attempt,
            job_id: task.job_id.0,
            goal: job.name,
            key: record.key.clone(),
            title: brief.title,
            instructions: brief.instructions,
            specialist: brief.specialist,
            lease_expires_at: record.lease_expires_at,
            dependencies,
        }))
    }

    /// Record a progress note and extend the lease to `lease_for` from now.
    pub async fn update_agent_task(
        &self,
        tenant: &TenantId,
        lease: LeaseToken,
        note: Option<String>,
        lease_for: Duration,
    ) -> Result<LeaseView, AgentError> {
        self.agent_task(tenant, lease.task_id).await?;
        let now = now_millis();
        let held = self
            .store()
            .renew_lease(RenewLease {
                tenant: tenant.clone(),
                lease,
                lease_for,
                now,
                note,
                logs: Vec::new(),
            })
            .await?;
        if !held {
            return Err(self.lease_lost(tenant, lease).await);
        }
        Ok(LeaseView {
            task_id: lease.task_id.0,
            attempt: lease.attempt,
            lease_expires_at: now
                .saturating_add(i64::try_from(lease_for.as_millis()).unwrap_or(i64::MAX)),
            lease_seconds: lease_for.as_secs(),
        })
    }

    /// Complete a claimed agent task with its output (fenced on the attempt).
    pub async fn complete_agent_task(
        &self,
        tenant: &TenantId,
        lease: LeaseToken,
        output: AgentOutput,
    ) -> Result<FinishedView, AgentError> {
        let output_json = serde_json::to_string(&output)
            .map_err(|e| FieldError::new("summary", format!("cannot be stored as JSON: {e}")))?;
        self.finish_agent_task(
            tenant,
            lease,
            TaskResult::Succeeded {
                output_json,
                spawn: Vec::new(),
            },
        )
        .await
    }

    /// Fail a claimed agent task: a retryable failure goes back to `pending`
    /// (after a backoff) until its attempts are used up, a fatal one is dead.
    pub async fn fail_agent_task(
        &self,
        tenant: &TenantId,
        lease: LeaseToken,
        reason: String,
        retryable: bool,
    ) -> Result<FinishedView, AgentError> {
        let result = if retryable {
            TaskResult::Retryable {
                error: reason,
                retry_after: retry_delay(
                    lease.attempt,
                    self.config().retry_base,
                    self.config().retry_cap,
                ),
            }
        } else {
            TaskResult::Fatal {
                error: reason,
                output_json: None,
            }
        };
        self.finish_agent_task(tenant, lease, result).await
    }

    async fn finish_agent_task(
        &self,
        tenant: &TenantId,
        lease: LeaseToken,
        result: TaskResult,
    ) -> Result<FinishedView, AgentError> {
        let task = self.agent_task(tenant, lease.task_id).await?;
        let completions = vec![Completion {
            tenant: tenant.clone(),
            lease,
            result,
            // An agent's notes are recorded by update_task as they come.
            logs: vec![],
        }];
        let outcomes = self
            .store()
            .complete_batch(CompleteBatch {
                completions: completions.clone(),
                now: now_millis(),
                max_tasks_per_job: self.config().limits.max_tasks_per_job,
            })
            .await?;
        let attempt = super::metrics::Attempt {
            handler: super::metrics::handler_label(task.executor, &task.handler),
            job: task.job_id,
            took: None,
        };
        super::metrics::recorded(&completions, &[attempt], &outcomes);
        match outcomes.into_iter().next() {
            Some(CompletionOutcome::Recorded(state)) => {
                self.wake().notify_waiters();
                let job_state = self
                    .store()
                    .job_state(crate::store::GetJob {
                        tenant: tenant.clone(),
                        job: task.job_id,
                    })
                    .await?;
                Ok(FinishedView {
                    task_id: lease.task_id.0,
                    job_id: task.job_id.0,
                    state: state.to_string(),
                    job_state: job_state.to_string(),
                })
            }
            Some(CompletionOutcome::Stale) | None => Err(self.lease_lost(tenant, lease).await),
            Some(CompletionOutcome::RejectedSpawn(reason)) => {
                Err(FieldError::new("task_id", reason).into())
            }
        }
    }

    /// The task, when it is an agent task of this tenant.
    async fn agent_task(&self, tenant: &TenantId, task: TaskId) -> Result<TaskRecord, AgentError> {
        let record = self.task(tenant, task).await?;
        if record.executor != Executor::Agent {
            return Err(AgentError::NotAgentTask(task.0));
        }
        Ok(record)
    }

    /// Why a fenced call with this lease was refused, read after the fact.
    async fn lease_lost(&self, tenant: &TenantId, lease: LeaseToken) -> AgentError {
        let why = match self.task(tenant, lease.task_id).await {
            Ok(now) => lease_lost_reason(&now, lease.attempt),
            Err(e) => e.to_string(),
        };
        AgentError::LeaseLost { lease, why }
    }
}

/// Explains, from the task's current row, why `attempt` no longer holds it.
pub fn lease_lost_reason(task: &TaskRecord, attempt: i32) -> String {
    let current = task.attempt;
    match task.state {
        _ if attempt > current => {
            format!("attempt {attempt} was never claimed (the task is at attempt {current})")
        }
        TaskState::Running if current > attempt => {
            format!("its lease expired and it was claimed again (attempt {current})")
        }
        TaskState::Running => "its lease expired".to_string(),
        TaskState::Pending => "its lease expired and it is waiting to be claimed again".to_string(),
        TaskState::Succeeded if current == attempt => "it was already completed".to_string(),
        TaskState::Succeeded => {
            format!("its lease expired and attempt {current} completed it")
        }
        TaskState::Dead => match &task.error {
            Some(e) => format!("it is dead ({e})"),
            None => "it is dead".to_string(),
        },
        TaskState::Cancelled => "it was cancelled".to_string(),
        TaskState::Skipped => "it was skipped".to_string(),
        TaskState::Blocked => "it is blocked".to_string(),
    }
}
