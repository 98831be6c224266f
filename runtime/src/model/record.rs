//! What a job, a stage, a task, an event and a token look like when read
//! back: the store returns these and the engine hands them on. Front doors
//! render them through the engine's views, not as they are.

use super::name::spelled;
use super::{EventKind, Executor, JobId, JobState, Millis, OnFailure, StageState, TaskId};
use super::{TaskState, TenantId};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    pub job_id: JobId,
    pub tenant: TenantId,
    pub name: String,
    pub state: JobState,
    pub created_at: Millis,
    pub finished_at: Option<Millis>,
    pub error: Option<String>,
    pub stages: Vec<StageStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageStatus {
    pub position: i32,
    pub name: String,
    pub state: StageState,
    pub on_failure: OnFailure,
    pub total: i64,
    pub remaining: i64,
    /// Task counts by state (every state present, zero when none); empty
    /// when read by `Store::job_counters`, which reads only the counters.
    pub counts: Vec<(TaskState, i64)>,
    pub opened_at: Option<Millis>,
    pub closed_at: Option<Millis>,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobSummary {
    pub job_id: JobId,
    pub name: String,
    pub state: JobState,
    pub created_at: Millis,
    pub finished_at: Option<Millis>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskRecord {
    pub task_id: TaskId,
    pub job_id: JobId,
    pub stage_position: i32,
    pub stage_name: String,
    pub handler: String,
    pub executor: Executor,
    pub key: Option<String>,
    pub state: TaskState,
    pub attempt: i32,
    pub max_attempts: i32,
    pub input_json: String,
    pub output_json: Option<String>,
    pub error: Option<String>,
    pub parent_task: Option<TaskId>,
    /// Title/instructions/specialist of an agent task (JSON), `None` for WASM.
    pub agent_json: Option<String>,
    pub lease_expires_at: Option<Millis>,
    /// Who claimed the latest attempt and when (`None` before the first
    /// claim, and for attempts claimed before migration 0009). They stay
    /// after the attempt ends: a running attempt is seen here, not in the
    /// event log (Invariant 42).
    pub worker: Option<String>,
    pub claimed_at: Option<Millis>,
    pub run_after: Millis,
    pub created_at: Millis,
    pub finished_at: Option<Millis>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: i64,
    pub job_id: JobId,
    pub task_id: Option<TaskId>,
    pub kind: EventKind,
    pub stage_position: Option<i32>,
    pub detail: Option<String>,
    pub at: Millis,
    /// The attempt an attempt's end (task_succeeded, task_retried, task_dead,
    /// task_skipped) or a claim is about: its number, who ran it and when it
    /// was claimed (Invariant 42). `None` on other events and on events
    /// written before migration 0009.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claimed_at: Option<Millis>,
}

impl Event {
    /// When the attempt this event is about was claimed: a claim's own time,
    /// or the claim time an attempt's end carries.
    pub fn attempt_claimed_at(&self) -> Option<Millis> {
        match self.kind {
            EventKind::TaskClaimed => Some(self.at),
            _ => self.claimed_at,
        }
    }
}

/// A tenant's tasks by readiness (for `health_check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QueueDepth {
    pub pending: i64,
    pub running: i64,
    pub blocked: i64,
}

/// One handler's share of a tenant's unfinished tasks (the dashboard's
/// queues).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HandlerDepth {
    pub executor: Executor,
    pub handler: String,
    pub depth: QueueDepth,
}

/// Every tenant's tasks and jobs by state, and the oldest ready task per
/// executor: what `/metrics` samples from the database. Counts only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateTotals {
    /// Every task state, in the order of `TaskState::ALL` (0 when none).
    pub tasks: Vec<(super::TaskState, i64)>,
    /// Every job state, in the order of `JobState::ALL` (0 when none).
    pub jobs: Vec<(super::JobState, i64)>,
    /// Per executor with a ready task (pending, no unfinished dependency,
    /// `run_after` passed): the oldest such task's `run_after`.
    pub oldest_ready: Vec<(super::Executor, Millis)>,
}

/// A live (or just revoked) token: which tenant it acts for, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRecord {
    pub token_id: i64,
    pub tenant: TenantId,
    pub label: Option<String>,
    pub role: TokenRole,
    pub created_at: Millis,
}

impl TokenRecord {
    /// How the token is named in events and pages: its label, or `token N`.
    pub fn name(&self) -> String {
        match &self.label {
            Some(label) => label.clone(),
            None => format!("token {}", self.token_id),
        }
    }
}

/// What a token may do in the dashboard: `read` views, `admin` also
/// retries and cancels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenRole {
    Read,
    Admin,
}

spelled!(TokenRole, "token role", [Read => "read", Admin => "admin"]);
