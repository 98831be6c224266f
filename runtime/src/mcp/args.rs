//! The input of every tool: one struct each, whose doc comments become the
//! JSON Schema descriptions a model reads, and whose [`Check`] enforces what
//! types cannot (lengths, ranges, blank text).
//!
//! **Invariant:** every struct denies unknown fields, so a misspelt argument
//! is an error naming it instead of a silently ignored default.

use super::params::{
    ArgError, Check, attempt, bounded, id, name, optional_name, optional_text, text,
};
use crate::spec::JobSpec;
use crate::spec::plan::{self, Plan, plan_job};
use schemars::JsonSchema;
use serde::Deserialize;

/// Longest reason, summary or note, in characters (as a plan's instructions).
pub const MAX_TEXT: usize = plan::MAX_INSTRUCTIONS_CHARS;
/// Longest `details` of a completion, in characters.
pub const MAX_DETAILS: usize = 1024 * 1024;
/// Longest specialist or artifact kind, in characters (as a plan's keys).
pub const MAX_NAME: usize = plan::MAX_NAME_CHARS;
/// Longest artifact path, in characters.
pub const MAX_PATH: usize = 4096;
/// Most artifacts per completion.
pub const MAX_ARTIFACTS: usize = 1000;
/// Most jobs returned by one `list_jobs` call.
pub const MAX_PAGE: u32 = 200;
/// Longest `wait_job` timeout, in seconds.
pub const MAX_WAIT_SECONDS: f64 = 300.0;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

impl Check for NoArgs {
    fn check(&self) -> Result<(), ArgError> {
        Ok(())
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitJobArgs {
    /// The job, with the same structure as a lockstep job file (TOML or JSON):
    /// `{"name": "...", "stages": [{"name": "...", "tasks": [{"handler": "...", "input": {...}}]}]}`.
    /// Call list_handlers for the handler names and their input schemas.
    pub job: JobSpec,
    /// Submitting again with the same key returns the existing job (`created: false`)
    /// instead of running it twice. Overrides the job's own `idempotency_key`;
    /// default: the SHA-256 of the job.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

impl Check for SubmitJobArgs {
    fn check(&self) -> Result<(), ArgError> {
        optional_name(
            "idempotency_key",
            self.idempotency_key.as_deref(),
            plan::MAX_IDEMPOTENCY_KEY_CHARS,
        )
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunPipelineArgs {
    /// The pipeline file (`lockstep-ci.toml` or `.json`), relative to the
    /// server's pipelines root.
    pub path: String,
}

impl Check for RunPipelineArgs {
    fn check(&self) -> Result<(), ArgError> {
        name("path", &self.path, MAX_PATH)
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobIdArgs {
    /// The job's id, as returned by submit_job, plan_task or list_jobs.
    pub job_id: i64,
}

impl Check for JobIdArgs {
    fn check(&self) -> Result<(), ArgError> {
        id("job_id", self.job_id)
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskIdArgs {
    /// The task's id, as returned by claim_task, plan_task or get_task.
    pub task_id: i64,
}

impl Check for TaskIdArgs {
    fn check(&self) -> Result<(), ArgError> {
        id("task_id", self.task_id)
    }
}

/// Job states a filter may name.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStateArg {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl From<JobStateArg> for crate::model::JobState {
    fn from(s: JobStateArg) -> Self {
        match s {
            JobStateArg::Running => crate::model::JobState::Running,
            JobStateArg::Succeeded => crate::model::JobState::Succeeded,
            JobStateArg::Failed => crate::model::JobState::Failed,
            JobStateArg::Cancelled => crate::model::JobState::Cancelled,
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListJobsArgs {
    /// Only jobs in this state.
    #[serde(default)]
    pub state: Option<JobStateArg>,
    /// Only jobs with exactly this name.
    #[serde(default)]
    pub name: Option<String>,
    /// Only jobs created at or after this time (milliseconds since the Unix epoch).
    #[serde(default)]
    pub created_after: Option<i64>,
    /// Only jobs created before this time (milliseconds since the Unix epoch).
    #[serde(default)]
    pub created_before: Option<i64>,
    /// `next_cursor` of the previous page; omit for the newest jobs.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Jobs per page, 1 to 200 (default 20).
    #[serde(default)]
    pub limit: Option<u32>,
}

impl ListJobsArgs {
    /// The job id the cursor stands for (jobs below it come next).
    pub fn cursor_job(&self) -> Result<Option<i64>, ArgError> {
        match &self.cursor {
            None => Ok(None),
            Some(c) => match c
                .strip_prefix("before:")
                .and_then(|n| n.parse::<i64>().ok())
            {
                Some(n) if n > 0 => Ok(Some(n)),
                _ => Err(ArgError::new(
                    "cursor",
                    "is not a cursor returned by list_jobs; pass next_cursor unchanged or omit it",
                )),
            },
        }
    }
}

impl Check for ListJobsArgs {
    fn check(&self) -> Result<(), ArgError> {
        // Searched for by the rule submit_job accepts a job name with, so
        // every name a job can have can be found, and no other.
        if let Some(name) = &self.name {
            crate::limits::check_name(name, crate::limits::MAX_JOB_NAME_BYTES)
                .map_err(|e| ArgError::new("name", format!("job name {e}")))?;
        }
        if let Some(limit) = self.limit
            && !(1..=MAX_PAGE).contains(&limit)
        {
            return Err(ArgError::new(
                "limit",
                format!("must be between 1 and {MAX_PAGE}, got {limit}"),
            ));
        }
        if let (Some(a), Some(b)) = (self.created_after, self.created_before)
            && a >= b
        {
            return Err(ArgError::new(
                "created_before",
                "must be later than created_after",
            ));
        }
        self.cursor_job().map(|_| ())
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitJobArgs {
    /// The job to wait for.
    pub job_id: i64,
    /// Return after this many seconds even if the job is still running
    /// (default 30, at most 300). The result says whether it finished.
    #[serde(default)]
    pub timeout_seconds: Option<f64>,
}

impl Check for WaitJobArgs {
    fn check(&self) -> Result<(), ArgError> {
        id("job_id", self.job_id)?;
        if let Some(t) = self.timeout_seconds
            && !(t.is_finite() && (0.0..=MAX_WAIT_SECONDS).contains(&t))
        {
            return Err(ArgError::new(
                "timeout_seconds",
                format!("must be between 0 and {MAX_WAIT_SECONDS} seconds, got {t}"),
            ));
        }
        Ok(())
    }
}

/// `plan_task`'s arguments are a [`Plan`]: the one validation of a plan
/// ([`plan_job`]) is its check.
impl Check for Plan {
    fn check(&self) -> Result<(), ArgError> {
        plan_job(self).map(|_| ())
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimTaskArgs {
    /// Only claim a task of this job (a plan's job_id). Omit for any job.
    #[serde(default)]
    pub job_id: Option<i64>,
    /// Only claim a task planned for this specialist. Omit for any.
    #[serde(default)]
    pub specialist: Option<String>,
}

impl Check for ClaimTaskArgs {
    fn check(&self) -> Result<(), ArgError> {
        if let Some(j) = self.job_id {
            id("job_id", j)?;
        }
        optional_name("specialist", self.specialist.as_deref(), MAX_NAME)
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTaskArgs {
    /// The claimed task.
    pub task_id: i64,
    /// The attempt claim_task returned with it.
    pub attempt: i32,
    /// What has been done so far / what is happening now.
    pub note: String,
}

impl Check for UpdateTaskArgs {
    fn check(&self) -> Result<(), ArgError> {
        id("task_id", self.task_id)?;
        attempt("attempt", self.attempt)?;
        text("note", &self.note, MAX_TEXT)
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArtifactArg {
    /// Where the artifact is (a file path relative to the workspace, or a URL).
    pub path: String,
    /// What it is, e.g. "file", "diff", "report", "url".
    pub kind: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteTaskArgs {
    /// The claimed task.
    pub task_id: i64,
    /// The attempt claim_task returned with it (proves the lease is still yours).
    pub attempt: i32,
    /// What was achieved, in a few sentences; tasks that depend on this one receive it.
    pub summary: String,
    /// The detailed record of the work (optional; shown by get_task).
    #[serde(default)]
    pub details: Option<String>,
    /// Files or other products of the work.
    #[serde(default)]
    pub artifacts: Vec<ArtifactArg>,
    /// What should happen next, if anything.
    #[serde(default)]
    pub next_action: Option<String>,
}

impl Check for CompleteTaskArgs {
    fn check(&self) -> Result<(), ArgError> {
        id("task_id", self.task_id)?;
        attempt("attempt", self.attempt)?;
        text("summary", &self.summary, MAX_TEXT)?;
        if let Some(d) = &self.details {
            bounded("details", d, MAX_DETAILS)?;
        }
        optional_text("next_action", self.next_action.as_deref(), MAX_TEXT)?;
        if self.artifacts.len() > MAX_ARTIFACTS {
            return Err(ArgError::new(
                "artifacts",
                format!(
                    "has {} entries, more than the {MAX_ARTIFACTS} limit",
                    self.artifacts.len()
                ),
            ));
        }
        for (i, a) in self.artifacts.iter().enumerate() {
            text(&format!("artifacts[{i}].path"), &a.path, MAX_PATH)?;
            name(&format!("artifacts[{i}].kind"), &a.kind, MAX_NAME)?;
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailTaskArgs {
    /// The claimed task.
    pub task_id: i64,
    /// The attempt claim_task returned with it.
    pub attempt: i32,
    /// Why it failed, for whoever looks at it next.
    pub reason: String,
    /// True when another attempt may succeed (it goes back to the queue until
    /// its attempts are used up); false gives it up now.
    pub retryable: bool,
}

impl Check for FailTaskArgs {
    fn check(&self) -> Result<(), ArgError> {
        id("task_id", self.task_id)?;
        attempt("attempt", self.attempt)?;
        text("reason", &self.reason, MAX_TEXT)
    }
}
