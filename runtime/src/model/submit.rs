//! A job as `spec` validates it and the store inserts it, and what the
//! insert answers.

use super::{Executor, JobId, Millis, OnFailure, TenantId};
use serde::Serialize;

/// A fully validated job, ready to insert. Produced by `spec`.
#[derive(Debug, Clone)]
pub struct SubmitJob {
    pub tenant: TenantId,
    pub name: String,
    pub idempotency_key: String,
    /// The canonical spec as JSON, kept for inspection.
    pub spec_json: String,
    pub stages: Vec<NewStage>,
    pub now: Millis,
}

#[derive(Debug, Clone)]
pub struct NewStage {
    pub name: String,
    pub on_failure: OnFailure,
    /// The stage's own attempts and per-attempt limit, if it sets them: tasks
    /// spawned into the stage take these (else their parent's).
    pub max_attempts: Option<i32>,
    pub timeout_ms: Option<i64>,
    pub tasks: Vec<NewTask>,
}

#[derive(Debug, Clone)]
pub struct NewTask {
    pub handler: String,
    pub executor: Executor,
    /// Unique within the job when present; `depends_on` refers to it.
    pub key: Option<String>,
    /// Keys of tasks in the same stage this task waits for.
    pub depends_on: Vec<String>,
    pub input_json: String,
    pub max_attempts: i32,
    pub timeout_ms: i64,
    /// What this task's death does to its dependents and its job (the task's
    /// own `on_failure`, else its stage's).
    pub on_failure: OnFailure,
    /// Free-form title/instructions for agent tasks (JSON), `None` for WASM.
    pub agent_json: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Submitted {
    pub job_id: JobId,
    /// False when the (tenant, idempotency key) already existed.
    pub created: bool,
}
