//! What the front doors show: one set of views, the JSON that `lockstep
//! status|task|jobs|submit --json` print and the structured content of every
//! MCP tool (whose output schemas are derived from these types), each with
//! the one-line text ([`View::line`]) a person or a model reads first.
//!
//! Views are built here from engine values only — never by a front door
//! from store rows — and carry ids, states, counts and the caller's own
//! data, never database or file-system details (Invariant 30). A stored
//! value a view cannot read (JSON that is not JSON, a brief that is not a
//! brief) is [`EngineError::Corrupt`] naming the task and the column, never a
//! default (Invariant 15).

use super::agent::{AgentBrief, AgentOutput, Artifact};
use super::{EngineError, JobProgress, WaitingFor};
use crate::model::{Event, JobId, JobState, JobSummary, TaskId, TaskRecord, TaskState};
use schemars::JsonSchema;
use serde::Serialize;
use std::collections::BTreeMap;

/// A view: serializable, with its one line of text.
pub trait View: Serialize {
    /// One line saying what the view says, for a terminal or a model.
    fn line(&self) -> String;
}

/// The events a task view carries (its most recent, oldest first).
pub const RECENT_EVENTS: u32 = 20;

/// `json` read back from `task`'s `column`; text that is not JSON is corrupt.
pub(crate) fn stored_json(
    task: TaskId,
    column: &str,
    json: &str,
) -> Result<serde_json::Value, EngineError> {
    serde_json::from_str(json).map_err(|e| corrupt(task, column, &e))
}

/// The error for a value of `task`'s `column` that cannot be read.
pub(crate) fn corrupt(task: TaskId, column: &str, why: &dyn std::fmt::Display) -> EngineError {
    EngineError::Corrupt(format!("task {} {column} cannot be read: {why}", task.0))
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct HandlerList {
    /// Every registered WASM handler: name, description and input JSON Schema.
    pub handlers: Vec<serde_json::Value>,
}

impl HandlerList {
    /// The listing of every registered handler, as JSON.
    pub fn new(
        listings: &[crate::plugin::HandlerListing],
    ) -> Result<HandlerList, serde_json::Error> {
        let handlers = listings
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()?;
        Ok(HandlerList { handlers })
    }
}

impl View for HandlerList {
    fn line(&self) -> String {
        let names: Vec<&str> = self
            .handlers
            .iter()
            .filter_map(|h| h.get("name").and_then(|n| n.as_str()))
            .collect();
        if names.is_empty() {
            "no handlers are registered".to_string()
        } else {
            format!("{} handlers: {}", names.len(), names.join(", "))
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Submitted {
    pub job_id: i64,
    /// False when a job with the same idempotency key already existed; that job is returned.
    pub created: bool,
}

impl From<crate::model::Submitted> for Submitted {
    fn from(s: crate::model::Submitted) -> Self {
        Submitted {
            job_id: s.job_id.0,
            created: s.created,
        }
    }
}

impl View for Submitted {
    fn line(&self) -> String {
        if self.created {
            format!("submitted job {}", self.job_id)
        } else {
            format!(
                "job {} already existed with this idempotency key; nothing new was submitted",
                self.job_id
            )
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct PipelineStarted {
    /// The run: a job id (watch it with get_job or wait_job).
    pub job_id: i64,
    /// True when an unfinished run of the same pipeline was found and goes on.
    pub resumed: bool,
    /// The steps' keys (matrix steps expanded).
    pub steps: Vec<String>,
    /// The pipeline's name (for the line only).
    #[serde(skip)]
    pub pipeline: String,
}

impl View for PipelineStarted {
    fn line(&self) -> String {
        format!(
            "{} run {} of pipeline {:?}: {} steps",
            if self.resumed { "resumed" } else { "started" },
            self.job_id,
            self.pipeline,
            self.steps.len()
        )
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct JobView {
    pub job_id: i64,
    pub name: String,
    /// running, succeeded, failed or cancelled.
    pub state: String,
    /// Finished tasks over all known tasks, 0–100.
    pub percent: f64,
    pub done: i64,
    pub total: i64,
    /// Task completions per second recently.
    pub throughput_per_s: f64,
    /// Estimated seconds to finish; absent while nothing completes.
    pub eta_seconds: Option<f64>,
    pub error: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub finished_at: Option<i64>,
    /// Task counts by state (blocked, pending, running, succeeded, dead, cancelled).
    pub counts: BTreeMap<String, i64>,
    pub stages: Vec<StageView>,
    /// Only when the job is running but none of its tasks is: what its ready
    /// tasks wait for. A wasm handler with registered_here=false has no
    /// plugin in this server, so those tasks wait for a server that has one;
    /// agent tasks wait for claim_task.
    pub waiting_for: Vec<WaitingForView>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct WaitingForView {
    /// wasm, agent or command.
    pub executor: String,
    pub handler: String,
    /// For wasm handlers: whether this server has a plugin for it.
    pub registered_here: Option<bool>,
}

impl From<WaitingFor> for WaitingForView {
    fn from(w: WaitingFor) -> Self {
        WaitingForView {
            executor: w.executor.as_str().to_string(),
            handler: w.handler,
            registered_here: w.registered_here,
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct StageView {
    pub name: String,
    /// waiting, open or done.
    pub state: String,
    pub percent: f64,
    pub done: i64,
    pub total: i64,
    pub counts: BTreeMap<String, i64>,
}

impl JobView {
    pub fn from_progress(p: &JobProgress) -> JobView {
        let stages = p
            .job
            .stages
            .iter()
            .zip(&p.stages)
            .map(|(status, progress)| StageView {
                name: status.name.clone(),
                state: status.state.to_string(),
                percent: round1(progress.percent),
                done: progress.done,
                total: progress.total,
                counts: status
                    .counts
                    .iter()
                    .map(|(s, n)| (s.to_string(), *n))
                    .collect(),
            })
            .collect();
        JobView {
            job_id: p.job.job_id.0,
            name: p.job.name.clone(),
            state: p.job.state.to_string(),
            percent: round1(p.percent),
            done: p.done,
            total: p.total,
            throughput_per_s: round1(p.throughput_per_s),
            eta_seconds: p.eta_seconds.map(round1),
            error: p.job.error.clone(),
            created_at: p.job.created_at,
            finished_at: p.job.finished_at,
            counts: p.counts.iter().map(|(s, n)| (s.to_string(), *n)).collect(),
            stages,
            waiting_for: Vec::new(),
        }
    }

    /// The view with what a stalled job waits for (see [`Engine::waiting_for`](crate::engine::Engine::waiting_for)).
    pub fn waiting_for(mut self, waiting: Vec<WaitingFor>) -> JobView {
        self.waiting_for = waiting.into_iter().map(WaitingForView::from).collect();
        self
    }
}

impl View for JobView {
    fn line(&self) -> String {
        let mut line = format!(
            "job {} {:?} is {}: {}/{} tasks done ({}%)",
            self.job_id, self.name, self.state, self.done, self.total, self.percent
        );
        let running = self.counts.get("running").copied().unwrap_or(0);
        let dead = self.counts.get("dead").copied().unwrap_or(0);
        if running > 0 {
            line.push_str(&format!(", {running} running"));
        }
        if dead > 0 {
            line.push_str(&format!(", {dead} dead"));
        }
        if let Some(eta) = self.eta_seconds
            && self.state == "running"
        {
            line.push_str(&format!(", ETA {eta:.0}s"));
        }
        if let Some(e) = &self.error {
            line.push_str(&format!("; error: {e}"));
        }
        let unserved: Vec<&str> = self
            .waiting_for
            .iter()
            .filter(|w| w.registered_here == Some(false))
            .map(|w| w.handler.as_str())
            .collect();
        if !unserved.is_empty() {
            line.push_str(&format!(
                "; nothing runs: no plugin in this server registers {}",
                unserved.join(", ")
            ));
        }
        line
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct JobPage {
    pub jobs: Vec<JobListEntry>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

impl View for JobPage {
    fn line(&self) -> String {
        match self.jobs.len() {
            0 => "no jobs match".to_string(),
            n => format!(
                "{n} jobs: {}{}",
                self.jobs
                    .iter()
                    .take(10)
                    .map(|j| format!("{} {:?} {}", j.job_id, j.name, j.state))
                    .collect::<Vec<_>>()
                    .join("; "),
                if n > 10 { "; …" } else { "" }
            ),
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct JobListEntry {
    pub job_id: i64,
    pub name: String,
    pub state: String,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

impl From<&JobSummary> for JobListEntry {
    fn from(j: &JobSummary) -> Self {
        JobListEntry {
            job_id: j.job_id.0,
            name: j.name.clone(),
            state: j.state.to_string(),
            created_at: j.created_at,
            finished_at: j.finished_at,
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct WaitResult {
    /// True when the job reached a final state (succeeded, failed, cancelled).
    pub finished: bool,
    /// True when the timeout passed first; call wait_job again to keep waiting.
    pub timed_out: bool,
    pub job: JobView,
    /// How long the wait was allowed to take (for the line only).
    #[serde(skip)]
    pub timeout_seconds: f64,
}

impl View for WaitResult {
    fn line(&self) -> String {
        if self.finished {
            format!("finished: {}", self.job.line())
        } else {
            format!(
                "still running after {:.0}s: {}",
                self.timeout_seconds,
                self.job.line()
            )
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct JobStateView {
    pub job_id: i64,
    pub state: String,
}

impl JobStateView {
    pub fn new(job: JobId, state: JobState) -> Self {
        JobStateView {
            job_id: job.0,
            state: state.to_string(),
        }
    }
}

impl View for JobStateView {
    fn line(&self) -> String {
        format!("job {} is {}", self.job_id, self.state)
    }
}

/// A task's state after a retry.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TaskStateView {
    pub task_id: i64,
    pub state: String,
}

impl TaskStateView {
    pub fn new(task: TaskId, state: TaskState) -> Self {
        TaskStateView {
            task_id: task.0,
            state: state.to_string(),
        }
    }
}

impl View for TaskStateView {
    fn line(&self) -> String {
        format!("task {} is {} again", self.task_id, self.state)
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TaskView {
    pub task_id: i64,
    pub job_id: i64,
    pub stage: String,
    /// The WASM handler, or the specialist (`agent` when none) of an agent task.
    pub handler: String,
    /// wasm, agent or command.
    pub executor: String,
    pub key: Option<String>,
    /// blocked, pending, running, succeeded, dead or cancelled.
    pub state: String,
    /// Attempts made so far (the current one while running).
    pub attempt: i32,
    pub max_attempts: i32,
    pub input: serde_json::Value,
    /// The output (an agent task's summary, details, artifacts, next_action).
    pub output: Option<serde_json::Value>,
    /// The last error (failed attempt or death).
    pub error: Option<String>,
    /// Agent tasks: title, instructions, specialist.
    pub title: Option<String>,
    pub instructions: Option<String>,
    pub specialist: Option<String>,
    pub lease_expires_at: Option<i64>,
    /// Who claimed the latest attempt, and when (milliseconds since the Unix
    /// epoch): a running attempt is seen here (`state` running), an ended
    /// one also in the event that ended it.
    pub worker: Option<String>,
    pub claimed_at: Option<i64>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    /// The task's most recent events (attempts' ends, agents' claims, progress notes), oldest first.
    pub recent_events: Vec<EventView>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct EventView {
    /// task_claimed (an agent's or a command's claim; a wasm task's claim is
    /// in its attempt's end), task_note (an agent's progress note), task_log
    /// (a line the handler logged, or its last progress report),
    /// task_retried, task_succeeded, task_dead, …
    pub kind: String,
    pub detail: Option<String>,
    pub at: i64,
    /// On a claim and on an attempt's end: the attempt, who ran it and when
    /// it was claimed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claimed_at: Option<i64>,
}

impl From<&Event> for EventView {
    fn from(e: &Event) -> Self {
        EventView {
            kind: e.kind.as_str().to_string(),
            detail: e.detail.clone(),
            at: e.at,
            attempt: e.attempt,
            worker: e.worker.clone(),
            claimed_at: e.claimed_at,
        }
    }
}

impl TaskView {
    /// The view of a stored task; corrupt input, output or brief is an error
    /// naming the task and the column.
    pub fn new(t: &TaskRecord, events: &[Event]) -> Result<TaskView, EngineError> {
        let brief = AgentBrief::of(t)?;
        let output = match &t.output_json {
            Some(json) => Some(stored_json(t.task_id, "output_json", json)?),
            None => None,
        };
        Ok(TaskView {
            task_id: t.task_id.0,
            job_id: t.job_id.0,
            stage: t.stage_name.clone(),
            handler: t.handler.clone(),
            executor: t.executor.as_str().to_string(),
            key: t.key.clone(),
            state: t.state.to_string(),
            attempt: t.attempt,
            max_attempts: t.max_attempts,
            input: stored_json(t.task_id, "input_json", &t.input_json)?,
            output,
            error: t.error.clone(),
            title: brief.as_ref().map(|b| b.title.clone()),
            instructions: brief.as_ref().and_then(|b| b.instructions.clone()),
            specialist: brief.and_then(|b| b.specialist),
            lease_expires_at: t.lease_expires_at,
            worker: t.worker.clone(),
            claimed_at: t.claimed_at,
            created_at: t.created_at,
            finished_at: t.finished_at,
            recent_events: events.iter().map(EventView::from).collect(),
        })
    }
}

impl View for TaskView {
    fn line(&self) -> String {
        let what = match &self.title {
            Some(title) => format!("{title:?}"),
            None => self.handler.clone(),
        };
        let mut line = format!(
            "task {} ({what}) of job {} is {}, attempt {}/{}",
            self.task_id, self.job_id, self.state, self.attempt, self.max_attempts
        );
        if let Some(e) = &self.error {
            line.push_str(&format!("; error: {e}"));
        }
        line
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Health {
    /// True when the database answered.
    pub ok: bool,
    pub database: String,
    pub version: String,
    /// How many WASM handlers are registered.
    pub plugins_loaded: usize,
    pub handlers: Vec<String>,
    /// Tasks of your tenant waiting to be claimed (ready now).
    pub queue_pending: i64,
    /// Tasks of your tenant running now.
    pub queue_running: i64,
    /// Tasks of your tenant waiting for dependencies or an earlier stage.
    pub queue_blocked: i64,
}

impl View for Health {
    fn line(&self) -> String {
        format!(
            "{}: database {}, {} handlers, {} pending / {} running / {} blocked tasks, version {}",
            if self.ok { "healthy" } else { "unhealthy" },
            self.database,
            self.plugins_loaded,
            self.queue_pending,
            self.queue_running,
            self.queue_blocked,
            self.version
        )
    }
}

/// A stored plan: its job and one entry per subtask, in plan order.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PlanView {
    pub job_id: i64,
    /// False when this plan (same idempotency key) already existed; it is returned unchanged.
    pub created: bool,
    pub goal: String,
    pub tasks: Vec<PlannedTaskView>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct PlannedTaskView {
    pub task_id: i64,
    pub key: String,
    pub title: String,
    pub specialist: Option<String>,
    pub depends_on: Vec<String>,
    /// pending (claimable now) or blocked (waiting for depends_on).
    pub state: String,
}

impl View for PlanView {
    fn line(&self) -> String {
        let ready = self.tasks.iter().filter(|t| t.state == "pending").count();
        format!(
            "{} plan {} with {} subtasks ({ready} ready to claim now)",
            if self.created {
                "stored"
            } else {
                "found the existing"
            },
            self.job_id,
            self.tasks.len()
        )
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ClaimResult {
    /// False when no agent task is ready right now; try again later (tasks
    /// become ready as their dependencies complete).
    pub claimed: bool,
    pub task: Option<ClaimedTaskView>,
}

impl From<Option<ClaimedTaskView>> for ClaimResult {
    fn from(task: Option<ClaimedTaskView>) -> Self {
        ClaimResult {
            claimed: task.is_some(),
            task,
        }
    }
}

impl View for ClaimResult {
    fn line(&self) -> String {
        match &self.task {
            Some(task) => format!(
                "claimed task {} attempt {}: {:?} ({} dependency summaries attached)",
                task.task_id,
                task.attempt,
                task.title,
                task.dependencies.len()
            ),
            None => "no agent task is ready to claim right now".to_string(),
        }
    }
}

// A claimed agent task: what to do, the attempt that proves the claim, and
// what the tasks it depends on produced. (A line comment: a doc comment would
// become a description in claim_task's published output schema.)
#[derive(Debug, Serialize, JsonSchema)]
pub struct ClaimedTaskView {
    pub task_id: i64,
    /// Pass this with update_task, complete_task and fail_task.
    pub attempt: i32,
    pub job_id: i64,
    pub goal: String,
    pub key: Option<String>,
    pub title: String,
    pub instructions: Option<String>,
    pub specialist: Option<String>,
    /// When the lease ends (milliseconds since the Unix epoch) unless renewed by update_task.
    pub lease_expires_at: Option<i64>,
    /// What the tasks this one depends on produced.
    pub dependencies: Vec<DependencyView>,
}

/// A finished dependency of a claimed task.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DependencyView {
    pub task_id: i64,
    pub key: Option<String>,
    pub title: Option<String>,
    pub state: String,
    pub summary: Option<String>,
    pub next_action: Option<String>,
    pub artifacts: Vec<Artifact>,
    /// A non-agent dependency's output.
    pub output: Option<serde_json::Value>,
}

impl DependencyView {
    /// The view of a dependency row: an agent task that succeeded shows its
    /// summary, next action and artifacts; any other task its raw output.
    pub(crate) fn new(d: crate::store::Dependency) -> Result<DependencyView, EngineError> {
        let brief = AgentBrief::decode(d.task_id, d.agent_json.as_deref())?;
        let agent_output = match (&brief, d.state, d.output_json.as_deref()) {
            (Some(_), TaskState::Succeeded, Some(json)) => Some(
                serde_json::from_str::<AgentOutput>(json)
                    .map_err(|e| corrupt(d.task_id, "output_json", &e))?,
            ),
            _ => None,
        };
        let output = match (&agent_output, d.output_json.as_deref()) {
            (None, Some(json)) => Some(stored_json(d.task_id, "output_json", json)?),
            _ => None,
        };
        let (summary, next_action, artifacts) = match agent_output {
            Some(o) => (Some(o.summary), o.next_action, o.artifacts),
            None => (None, None, Vec::new()),
        };
        Ok(DependencyView {
            task_id: d.task_id.0,
            key: d.key,
            title: brief.map(|b| b.title),
            state: d.state.to_string(),
            summary,
            next_action,
            artifacts,
            output,
        })
    }
}

/// A renewed lease.
#[derive(Debug, Serialize, JsonSchema)]
pub struct LeaseView {
    pub task_id: i64,
    pub attempt: i32,
    /// The renewed lease's end (milliseconds since the Unix epoch).
    pub lease_expires_at: i64,
    /// How long the lease was renewed for (for the line only).
    #[serde(skip)]
    pub lease_seconds: u64,
}

impl View for LeaseView {
    fn line(&self) -> String {
        format!(
            "noted; task {} attempt {} is yours for another {}s",
            self.task_id, self.attempt, self.lease_seconds
        )
    }
}

/// The state of a task after an agent completed or failed it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FinishedView {
    pub task_id: i64,
    pub job_id: i64,
    /// The task's state now: succeeded; pending (will be retried); dead.
    pub state: String,
    /// The job's state now.
    pub job_state: String,
}

impl View for FinishedView {
    fn line(&self) -> String {
        format!(
            "task {} is {}; job {} is {}",
            self.task_id, self.state, self.job_id, self.job_state
        )
    }
}

/// One event of a job (`lockstep events --json`, a line each).
#[derive(Debug, Serialize, JsonSchema)]
pub struct JobEventView {
    pub id: i64,
    pub job_id: i64,
    pub task_id: Option<i64>,
    /// job_submitted, stage_opened, task_succeeded, task_log, …
    pub kind: String,
    pub stage_position: Option<i32>,
    pub detail: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub at: i64,
    /// On an attempt's end (and an agent's or command's claim): the attempt,
    /// who ran it and when it was claimed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claimed_at: Option<i64>,
}

impl From<&Event> for JobEventView {
    fn from(e: &Event) -> Self {
        JobEventView {
            id: e.id,
            job_id: e.job_id.0,
            task_id: e.task_id.map(|t| t.0),
            kind: e.kind.as_str().to_string(),
            stage_position: e.stage_position,
            detail: e.detail.clone(),
            at: e.at,
            attempt: e.attempt,
            worker: e.worker.clone(),
            claimed_at: e.claimed_at,
        }
    }
}

impl View for JobEventView {
    fn line(&self) -> String {
        format!(
            "{:>8} {} {:<18} stage={} task={} {}",
            self.id,
            self.at,
            self.kind,
            self.stage_position
                .map_or_else(|| "-".to_string(), |s| s.to_string()),
            self.task_id
                .map_or_else(|| "-".to_string(), |t| t.to_string()),
            // Event details hold guest text (log lines): escaped for a terminal.
            crate::limits::printable(self.detail.as_deref().unwrap_or_default())
        )
    }
}
