//! What the tools return: structured results (with a JSON Schema published
//! as each tool's output schema) and the one-line text a model reads first.
//!
//! Views are built from engine values only; they carry ids, states, counts
//! and the caller's own data, never database or file-system details.

use crate::engine::agent::{AgentBrief, ClaimedAgentTask, PlannedJob};
use crate::engine::{JobProgress, WaitingFor};
use crate::model::{Event, JobSummary, TaskRecord};
use schemars::JsonSchema;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Serialize, JsonSchema)]
pub struct HandlerList {
    /// Every registered WASM handler: name, description and input JSON Schema.
    pub handlers: Vec<serde_json::Value>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Submitted {
    pub job_id: i64,
    /// False when a job with the same idempotency key already existed; that job is returned.
    pub created: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct PipelineStarted {
    /// The run: a job id (watch it with get_job or wait_job).
    pub job_id: i64,
    /// True when an unfinished run of the same pipeline was found and goes on.
    pub resumed: bool,
    /// The steps' keys (matrix steps expanded).
    pub steps: Vec<String>,
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

    pub fn line(&self) -> String {
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
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct JobStateView {
    pub job_id: i64,
    pub state: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TaskStateView {
    pub task_id: i64,
    pub state: String,
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
    pub created_at: i64,
    pub finished_at: Option<i64>,
    /// The task's most recent events (claims, progress notes, failures), oldest first.
    pub recent_events: Vec<EventView>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct EventView {
    /// task_claimed, task_note (an agent's progress note), task_log (a line the
    /// handler logged, or its last progress report), task_failed,
    /// task_retried, task_succeeded, …
    pub kind: String,
    pub detail: Option<String>,
    pub at: i64,
}

impl From<&Event> for EventView {
    fn from(e: &Event) -> Self {
        let kind = serde_json::to_value(e.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        EventView {
            kind,
            detail: e.detail.clone(),
            at: e.at,
        }
    }
}

/// A stored JSON text as a value; text that is not JSON stays a string.
fn json_or_text(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|_| serde_json::Value::String(s.to_string()))
}

impl TaskView {
    pub fn new(t: &TaskRecord, events: &[Event]) -> TaskView {
        let brief = AgentBrief::of(t);
        TaskView {
            task_id: t.task_id.0,
            job_id: t.job_id.0,
            stage: t.stage_name.clone(),
            handler: t.handler.clone(),
            executor: t.executor.as_str().to_string(),
            key: t.key.clone(),
            state: t.state.to_string(),
            attempt: t.attempt,
            max_attempts: t.max_attempts,
            input: json_or_text(&t.input_json),
            output: t.output_json.as_deref().map(json_or_text),
            error: t.error.clone(),
            title: brief.as_ref().map(|b| b.title.clone()),
            instructions: brief.as_ref().and_then(|b| b.instructions.clone()),
            specialist: brief.and_then(|b| b.specialist),
            lease_expires_at: t.lease_expires_at,
            created_at: t.created_at,
            finished_at: t.finished_at,
            recent_events: events.iter().map(EventView::from).collect(),
        }
    }

    pub fn line(&self) -> String {
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

impl From<&PlannedJob> for PlanView {
    fn from(p: &PlannedJob) -> Self {
        PlanView {
            job_id: p.job_id.0,
            created: p.created,
            goal: p.goal.clone(),
            tasks: p
                .tasks
                .iter()
                .map(|t| PlannedTaskView {
                    task_id: t.task_id.0,
                    key: t.key.clone(),
                    title: t.title.clone(),
                    specialist: t.specialist.clone(),
                    depends_on: t.depends_on.clone(),
                    state: t.state.to_string(),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ClaimResult {
    /// False when no agent task is ready right now; try again later (tasks
    /// become ready as their dependencies complete).
    pub claimed: bool,
    pub task: Option<ClaimedTaskView>,
}

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

#[derive(Debug, Serialize, JsonSchema)]
pub struct DependencyView {
    pub task_id: i64,
    pub key: Option<String>,
    pub title: Option<String>,
    pub state: String,
    pub summary: Option<String>,
    pub next_action: Option<String>,
    pub artifacts: Vec<ArtifactView>,
    /// A non-agent dependency's output.
    pub output: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ArtifactView {
    pub path: String,
    pub kind: String,
}

impl From<&ClaimedAgentTask> for ClaimedTaskView {
    fn from(c: &ClaimedAgentTask) -> Self {
        ClaimedTaskView {
            task_id: c.task_id.0,
            attempt: c.attempt,
            job_id: c.job_id.0,
            goal: c.goal.clone(),
            key: c.key.clone(),
            title: c.title.clone(),
            instructions: c.instructions.clone(),
            specialist: c.specialist.clone(),
            lease_expires_at: c.lease_expires_at,
            dependencies: c
                .dependencies
                .iter()
                .map(|d| DependencyView {
                    task_id: d.task_id.0,
                    key: d.key.clone(),
                    title: d.title.clone(),
                    state: d.state.to_string(),
                    summary: d.summary.clone(),
                    next_action: d.next_action.clone(),
                    artifacts: d
                        .artifacts
                        .iter()
                        .map(|a| ArtifactView {
                            path: a.path.clone(),
                            kind: a.kind.clone(),
                        })
                        .collect(),
                    output: d.output.clone(),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct LeaseView {
    pub task_id: i64,
    pub attempt: i32,
    /// The renewed lease's end (milliseconds since the Unix epoch).
    pub lease_expires_at: i64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct FinishedView {
    pub task_id: i64,
    pub job_id: i64,
    /// The task's state now: succeeded; pending (will be retried); dead.
    pub state: String,
    /// The job's state now.
    pub job_state: String,
}
