//! The agent workflow on the engine: plan → claim → update → complete/fail.
//!
//! Agent tasks are ordinary tasks with `executor = "agent"`: a plan is a
//! one-stage job whose subtasks carry `key`/`depends_on`, submitted through
//! [`Engine::submit`] like any job, so the same validation, idempotency,
//! dependency counters and fencing apply. Agents claim them (instead of WASM
//! workers) under a lease and complete them with a summary.
//!
//! **Invariant:** a subtask becomes claimable exactly when its own
//! dependencies have succeeded (the store's per-task dependency counter), not
//! when a whole level has.
//! **Invariant:** every completion and failure is fenced on (task, attempt):
//! once a lease has expired and the task was claimed again, the old attempt's
//! result is refused with [`AgentError::LeaseLost`] saying what happened,
//! and nothing is written.
//! **Invariant:** only agent tasks of the caller's tenant can be claimed,
//! renewed, completed or failed here; a WASM task answers
//! [`AgentError::NotAgentTask`] and another tenant's id answers "not found".

use super::backoff::retry_delay;
use super::{Engine, EngineError, now_millis};
use crate::model::{
    Executor, JobId, JobState, LeaseToken, Millis, TaskId, TaskRecord, TaskState, TenantId,
};
use crate::spec::{JobSpec, SpecError, StageSpec, TaskSpec};
use crate::store::{
    ClaimBatch, CompleteBatch, Completion, CompletionOutcome, Dependency, GetTask, ListTasks,
    RenewLease, TaskResult,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

/// The name of the one stage a plan's job has.
pub const PLAN_STAGE: &str = "subtasks";

/// Longest goal (it becomes the job's name).
pub const MAX_GOAL_CHARS: usize = 1_000;
/// Most subtasks in one plan.
pub const MAX_SUBTASKS: usize = 10_000;

/// A goal broken into subtasks, as an agent plans it.
#[derive(Debug, Clone)]
pub struct Plan {
    pub goal: String,
    /// Replanning with the same key returns the existing plan.
    pub idempotency_key: Option<String>,
    pub subtasks: Vec<PlannedSubtask>,
}

#[derive(Debug, Clone)]
pub struct PlannedSubtask {
    pub title: String,
    pub instructions: String,
    pub specialist: Option<String>,
    /// Unique within the plan; generated (`subtask-N`) when absent.
    pub key: Option<String>,
    /// Keys or titles of the subtasks this one waits for.
    pub depends_on: Vec<String>,
    pub max_attempts: Option<u32>,
}

/// The stored plan: its job and one entry per subtask, in plan order.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedJob {
    pub job_id: JobId,
    /// False when the same plan (idempotency key) already existed.
    pub created: bool,
    pub goal: String,
    pub tasks: Vec<PlannedTask>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedTask {
    pub task_id: TaskId,
    pub key: String,
    pub title: String,
    pub specialist: Option<String>,
    /// Keys of the subtasks this one waits for.
    pub depends_on: Vec<String>,
    pub state: TaskState,
}

/// What an agent task asks for, as stored in its `agent_json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentBrief {
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    pub specialist: Option<String>,
}

impl AgentBrief {
    /// The brief of a stored task; `None` for WASM tasks.
    pub fn of(task: &TaskRecord) -> Option<AgentBrief> {
        let json = task.agent_json.as_deref()?;
        // Written by `spec::validate`; unreadable JSON would be corruption, shown as an empty brief.
        Some(serde_json::from_str(json).unwrap_or_default())
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

/// A claimed agent task: what to do, the lease to prove it, and what the
/// tasks it depends on produced.
#[derive(Debug, Clone, Serialize)]
pub struct ClaimedAgentTask {
    pub task_id: TaskId,
    pub attempt: i32,
    pub job_id: JobId,
    /// The job's name (a plan's goal).
    pub goal: String,
    pub key: Option<String>,
    pub title: String,
    pub instructions: Option<String>,
    pub specialist: Option<String>,
    pub lease_expires_at: Option<Millis>,
    pub dependencies: Vec<DependencyResult>,
}

/// A finished dependency of a claimed task, as the claimer needs it.
#[derive(Debug, Clone, Serialize)]
pub struct DependencyResult {
    pub task_id: TaskId,
    pub key: Option<String>,
    pub title: Option<String>,
    pub state: TaskState,
    /// The dependency's `summary` when an agent completed it.
    pub summary: Option<String>,
    pub next_action: Option<String>,
    pub artifacts: Vec<Artifact>,
    /// The raw output when it was not an agent's (a WASM task's output JSON).
    pub output: Option<serde_json::Value>,
}

/// A file or other product of an agent's work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// The state of a task after an agent completed or failed it.
#[derive(Debug, Clone, Serialize)]
pub struct AgentTaskOutcome {
    pub task_id: TaskId,
    pub job_id: JobId,
    pub state: TaskState,
    pub job_state: JobState,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The plan itself is wrong; `field` names the argument (`subtasks[2].depends_on[0]`).
    #[error("{field}: {message}")]
    InvalidPlan { field: String, message: String },
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

fn invalid(field: impl Into<String>, message: impl Into<String>) -> AgentError {
    AgentError::InvalidPlan {
        field: field.into(),
        message: message.into(),
    }
}

/// `/stages/0/tasks/3/depends_on/1` → `subtasks[3].depends_on[1]`: spec
/// errors about a plan's job are reported in the plan's own terms.
fn plan_field(pointer: &str) -> String {
    match pointer {
        "/name" => return "goal".to_string(),
        "/idempotency_key" => return "idempotency_key".to_string(),
        _ => {}
    }
    let rest = pointer.strip_prefix("/stages/0/tasks/").unwrap_or("");
    let mut parts = rest.split('/');
    let Some(index) = parts.next().filter(|i| !i.is_empty()) else {
        return "subtasks".to_string();
    };
    let mut field = format!("subtasks[{index}]");
    for part in parts {
        if part.chars().all(|c| c.is_ascii_digit()) {
            field.push_str(&format!("[{part}]"));
        } else {
            field.push('.');
            field.push_str(part);
        }
    }
    field
}

impl Engine {
    /// Store a plan as a one-stage job of agent tasks. Dependencies name
    /// other subtasks by key or by (unique) title; nothing is written unless
    /// the whole plan is valid.
    pub async fn plan(&self, tenant: &TenantId, plan: Plan) -> Result<PlannedJob, AgentError> {
        let goal = plan.goal.trim();
        if goal.is_empty() {
            return Err(invalid("goal", "is empty; say what the plan is for"));
        }
        if goal.chars().count() > MAX_GOAL_CHARS {
            return Err(invalid(
                "goal",
                format!("is longer than {MAX_GOAL_CHARS} characters"),
            ));
        }
        if plan.subtasks.is_empty() {
            return Err(invalid(
                "subtasks",
                "is empty; a plan needs at least one subtask",
            ));
        }
        if plan.subtasks.len() > MAX_SUBTASKS {
            return Err(invalid(
                "subtasks",
                format!(
                    "has {} entries, more than the {MAX_SUBTASKS} limit",
                    plan.subtasks.len()
                ),
            ));
        }
        let keys = subtask_keys(&plan.subtasks)?;
        let depends_on = resolve_dependencies(&plan.subtasks, &keys)?;
        let tasks = plan
            .subtasks
            .iter()
            .zip(&keys)
            .zip(&depends_on)
            .map(|((s, key), deps)| TaskSpec {
                handler: None,
                input: serde_json::json!({}),
                key: Some(key.clone()),
                depends_on: deps.clone(),
                max_attempts: s.max_attempts,
                timeout: None,
                on_failure: None,
                executor: Some(Executor::Agent),
                title: Some(s.title.clone()),
                instructions: Some(s.instructions.clone()),
                specialist: s.specialist.clone(),
            })
            .collect();
        let job = JobSpec {
            name: goal.to_string(),
            idempotency_key: plan.idempotency_key.clone(),
            stages: vec![StageSpec {
                name: PLAN_STAGE.to_string(),
                tasks,
                on_failure: None,
                max_attempts: None,
                timeout: None,
                executor: Some(Executor::Agent),
            }],
        };
        let submitted = match self.submit(tenant, job).await {
            Ok(s) => s,
            Err(EngineError::Spec(SpecError::Invalid { pointer, message })) => {
                return Err(invalid(plan_field(&pointer), message));
            }
            Err(e) => return Err(e.into()),
        };
        let records = self.job_tasks(tenant, submitted.job_id).await?;
        let by_key: HashMap<&str, &TaskRecord> = records
            .iter()
            .filter_map(|r| r.key.as_deref().map(|k| (k, r)))
            .collect();
        let mut tasks = Vec::with_capacity(plan.subtasks.len());
        for ((s, key), deps) in plan.subtasks.iter().zip(&keys).zip(depends_on) {
            // An idempotent replay may return a plan stored with other keys; report what is stored.
            let Some(record) = by_key.get(key.as_str()) else {
                continue;
            };
            tasks.push(PlannedTask {
                task_id: record.task_id,
                key: key.clone(),
                title: s.title.clone(),
                specialist: s.specialist.clone(),
                depends_on: deps,
                state: record.state,
            });
        }
        Ok(PlannedJob {
            job_id: submitted.job_id,
            created: submitted.created,
            goal: goal.to_string(),
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
    ) -> Result<Option<ClaimedAgentTask>, AgentError> {
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
        let brief = AgentBrief::of(&record).unwrap_or_default();
        let job = self
            .store()
            .get_job(crate::store::GetJob {
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
            .map(dependency_result)
            .collect();
        Ok(Some(ClaimedAgentTask {
            task_id: task.lease.task_id,
            attempt: task.lease.attempt,
            job_id: task.job_id,
            goal: job.name,
            key: record.key.clone(),
            title: brief.title,
            instructions: brief.instructions,
            specialist: brief.specialist,
            lease_expires_at: record.lease_expires_at,
            dependencies,
        }))
    }

    /// Record a progress note and extend the lease. Returns the new expiry.
    pub async fn update_agent_task(
        &self,
        tenant: &TenantId,
        lease: LeaseToken,
        note: Option<String>,
        lease_for: Duration,
    ) -> Result<Millis, AgentError> {
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
        Ok(now + lease_for.as_millis() as Millis)
    }

    /// Complete a claimed agent task with its output (fenced on the attempt).
    pub async fn complete_agent_task(
        &self,
        tenant: &TenantId,
        lease: LeaseToken,
        output: AgentOutput,
    ) -> Result<AgentTaskOutcome, AgentError> {
        let output_json = serde_json::to_string(&output)
            .map_err(|e| invalid("summary", format!("cannot be stored as JSON: {e}")))?;
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
    ) -> Result<AgentTaskOutcome, AgentError> {
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
    ) -> Result<AgentTaskOutcome, AgentError> {
        let task = self.agent_task(tenant, lease.task_id).await?;
        let outcomes = self
            .store()
            .complete_batch(CompleteBatch {
                completions: vec![Completion {
                    tenant: tenant.clone(),
                    lease,
                    result,
                    // An agent's notes are recorded by update_task as they come.
                    logs: vec![],
                }],
                now: now_millis(),
            })
            .await?;
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
                Ok(AgentTaskOutcome {
                    task_id: lease.task_id,
                    job_id: task.job_id,
                    state,
                    job_state,
                })
            }
            Some(CompletionOutcome::Stale) | None => Err(self.lease_lost(tenant, lease).await),
            Some(CompletionOutcome::RejectedSpawn(reason)) => Err(AgentError::InvalidPlan {
                field: "task_id".to_string(),
                message: reason,
            }),
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

fn dependency_result(d: Dependency) -> DependencyResult {
    let brief: Option<AgentBrief> = d
        .agent_json
        .as_deref()
        .and_then(|j| serde_json::from_str(j).ok());
    let agent_output: Option<AgentOutput> = match (&brief, d.output_json.as_deref()) {
        (Some(_), Some(json)) => serde_json::from_str(json).ok(),
        _ => None,
    };
    let raw_output = match (&agent_output, d.output_json.as_deref()) {
        (None, Some(json)) => serde_json::from_str(json).ok(),
        _ => None,
    };
    DependencyResult {
        task_id: d.task_id,
        key: d.key,
        title: brief.map(|b| b.title),
        state: d.state,
        summary: agent_output.as_ref().map(|o| o.summary.clone()),
        next_action: agent_output.as_ref().and_then(|o| o.next_action.clone()),
        artifacts: agent_output.map(|o| o.artifacts).unwrap_or_default(),
        output: raw_output,
    }
}

/// Each subtask's key: its own, or `subtask-N` (1-based) when it has none.
fn subtask_keys(subtasks: &[PlannedSubtask]) -> Result<Vec<String>, AgentError> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut keys = Vec::with_capacity(subtasks.len());
    for (i, s) in subtasks.iter().enumerate() {
        if s.title.trim().is_empty() {
            return Err(invalid(
                format!("subtasks[{i}].title"),
                "is empty; give the subtask a short title",
            ));
        }
        let key = match &s.key {
            Some(k) if k.trim().is_empty() => {
                return Err(invalid(
                    format!("subtasks[{i}].key"),
                    "is empty; omit it to use subtask-N",
                ));
            }
            Some(k) => k.clone(),
            None => format!("subtask-{}", i + 1),
        };
        if let Some(first) = seen.insert(key.clone(), i) {
            return Err(invalid(
                format!("subtasks[{i}].key"),
                format!("{key:?} is already the key of subtasks[{first}]; keys must be unique"),
            ));
        }
        keys.push(key);
    }
    Ok(keys)
}

/// Each `depends_on` entry as a key: an entry is a key, or else the title of
/// exactly one subtask.
fn resolve_dependencies(
    subtasks: &[PlannedSubtask],
    keys: &[String],
) -> Result<Vec<Vec<String>>, AgentError> {
    let key_set: HashMap<&str, usize> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i))
        .collect();
    let mut by_title: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, s) in subtasks.iter().enumerate() {
        by_title.entry(s.title.trim()).or_default().push(i);
    }
    let mut out = Vec::with_capacity(subtasks.len());
    for (i, s) in subtasks.iter().enumerate() {
        let mut deps = Vec::with_capacity(s.depends_on.len());
        for (j, dep) in s.depends_on.iter().enumerate() {
            let field = format!("subtasks[{i}].depends_on[{j}]");
            let target = match key_set.get(dep.as_str()) {
                Some(&t) => t,
                None => match by_title.get(dep.trim()).map(Vec::as_slice) {
                    Some([t]) => *t,
                    Some(many) => {
                        return Err(invalid(
                            field,
                            format!(
                                "{dep:?} is the title of {} subtasks; give them keys and depend on a key",
                                many.len()
                            ),
                        ));
                    }
                    None => {
                        return Err(invalid(
                            field,
                            format!(
                                "{dep:?} is neither the key nor the title of a subtask in this plan"
                            ),
                        ));
                    }
                },
            };
            if target == i {
                return Err(invalid(field, "a subtask cannot depend on itself"));
            }
            let key = keys[target].clone();
            if deps.contains(&key) {
                return Err(invalid(field, format!("{dep:?} is listed twice")));
            }
            deps.push(key);
        }
        out.push(deps);
    }
    Ok(out)
}
