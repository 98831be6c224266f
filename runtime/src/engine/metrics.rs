//! What this process did, recorded as Prometheus series through the
//! `metrics` facade and logged with the job and task ids as fields, and what
//! the database holds, sampled on request.
//!
//! The engine records; whoever installed a recorder (`lockstep serve`,
//! `bench`; see `telemetry`) renders. Without one every call here is a
//! no-op, so `lockstep run` and the tests' in-process engines pay nothing.
//!
//! **Invariant 37:** counters count what this process did, each event once,
//! after it was committed (a completion refused as stale is counted as
//! fenced, not as an outcome); series carry no ids (job, task, tenant,
//! token) as labels, only names of bounded sets: a registered handler (or
//! `agent`, `command` for tasks no plugin runs), an outcome, a state, a
//! failure kind, a built-in or handler tool (`unknown` for any other name).
//! Gauges sampled from the database (`lockstep_tasks`, `lockstep_jobs`,
//! `lockstep_oldest_ready_task_age_seconds`, and the time of that sample)
//! are the same for every process on one database.

use super::{Engine, EngineError, now_millis};
use crate::model::{Executor, JobId, TaskState};
use crate::plugin::RunFailure;
use crate::store::{Completion, CompletionOutcome, StateCounts, TaskResult};
use std::time::Duration;

/// Tasks this process recorded an attempt's end of, by handler and outcome.
pub const TASKS_TOTAL: &str = "lockstep_tasks_total";
/// How long a handler ran, by handler and outcome (tasks run by workers).
pub const TASK_DURATION: &str = "lockstep_task_duration_seconds";
/// From ready (`run_after`) to claimed, by handler (tasks run by workers).
pub const TASK_WAIT: &str = "lockstep_task_wait_seconds";
/// Every tenant's tasks by state, sampled from the database.
pub const TASKS: &str = "lockstep_tasks";
/// Every tenant's jobs by state, sampled from the database.
pub const JOBS: &str = "lockstep_jobs";
/// How long the oldest ready, unclaimed task has waited, per executor.
pub const OLDEST_READY: &str = "lockstep_oldest_ready_task_age_seconds";
/// When the gauges above were last read from the database (Unix seconds).
pub const SAMPLED_AT: &str = "lockstep_database_sampled_timestamp_seconds";
/// Expired leases this process returned to `pending` (or `dead`).
pub const LEASE_RESCUED: &str = "lockstep_lease_rescued_total";
/// Completions this process sent that fencing refused (stale attempts).
pub const COMPLETION_FENCED: &str = "lockstep_completion_fenced_total";
/// Guest runs stopped by the sandbox, by handler and kind.
pub const PLUGIN_TRAPS: &str = "lockstep_plugin_traps_total";
/// Database work this process retried, by kind.
pub const STORE_RETRIES: &str = "lockstep_store_retries_total";
/// MCP tool calls this process answered, by tool and outcome.
pub const MCP_REQUESTS: &str = "lockstep_mcp_requests_total";
/// How long answering an MCP tool call took, by tool.
pub const MCP_DURATION: &str = "lockstep_mcp_request_duration_seconds";

/// Every series name with its type and help text (the `# HELP` lines).
pub const SERIES: [(&str, Kind, &str); 13] = [
    (
        TASKS_TOTAL,
        Kind::Counter,
        "Task attempts whose end this process recorded, by handler and outcome (succeeded, retried, dead, skipped).",
    ),
    (
        TASK_DURATION,
        Kind::Histogram,
        "How long a handler ran in the sandbox, by handler and outcome (tasks run by this process's workers).",
    ),
    (
        TASK_WAIT,
        Kind::Histogram,
        "Seconds from a task being ready to this process claiming it, by handler.",
    ),
    (
        TASKS,
        Kind::Gauge,
        "Tasks of every tenant by state, as last sampled from the database.",
    ),
    (
        JOBS,
        Kind::Gauge,
        "Jobs of every tenant by state, as last sampled from the database.",
    ),
    (
        OLDEST_READY,
        Kind::Gauge,
        "Seconds the oldest ready, unclaimed task had waited, by executor (0 when none waits), as last sampled from the database.",
    ),
    (
        SAMPLED_AT,
        Kind::Gauge,
        "Unix time at which lockstep_tasks, lockstep_jobs and lockstep_oldest_ready_task_age_seconds were last sampled from the database.",
    ),
    (
        LEASE_RESCUED,
        Kind::Counter,
        "Expired leases this process returned to pending (or dead when out of attempts).",
    ),
    (
        COMPLETION_FENCED,
        Kind::Counter,
        "Completions this process sent that were refused because the attempt no longer held the task.",
    ),
    (
        PLUGIN_TRAPS,
        Kind::Counter,
        "Guest runs the sandbox stopped, by handler and kind (trap, deadline, out_of_memory, stack_overflow, too_much_data).",
    ),
    (
        STORE_RETRIES,
        Kind::Counter,
        "Database work this process retried, by kind (transaction: rerun after a deadlock or serialization failure; claim, completion, rescue: a failed call of the workers, retried with backoff).",
    ),
    (
        MCP_REQUESTS,
        Kind::Counter,
        "MCP tool calls this process answered, by tool and outcome (ok, refused, error).",
    ),
    (
        MCP_DURATION,
        Kind::Histogram,
        "Seconds this process took to answer an MCP tool call, by tool.",
    ),
];

/// A series' Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Histogram buckets of the `_seconds` series, in seconds: from a no-op
/// task's half millisecond to a five-minute handler.
pub const SECONDS_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
    300.0,
];

/// The `handler` label of a task: its handler's name when a plugin runs it
/// (registered names are a bounded set), the executor's name otherwise
/// (agent tasks' and CI steps' names come from requests).
pub(crate) fn handler_label(executor: Executor, handler: &str) -> String {
    match executor {
        Executor::Wasm => handler.to_string(),
        other => other.as_str().to_string(),
    }
}

/// The `outcome` label of a recorded completion; `None` when fencing refused it.
fn outcome_label(outcome: &CompletionOutcome) -> Option<&'static str> {
    match outcome {
        CompletionOutcome::Recorded(TaskState::Succeeded) => Some("succeeded"),
        CompletionOutcome::Recorded(TaskState::Pending) => Some("retried"),
        CompletionOutcome::Recorded(TaskState::Skipped) => Some("skipped"),
        CompletionOutcome::Recorded(_) | CompletionOutcome::RejectedSpawn(_) => Some("dead"),
        CompletionOutcome::Stale => None,
    }
}

/// What a completion this process sends is about, besides the completion:
/// counted and logged once the store has said what it made of it.
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    /// The `handler` label ([`handler_label`]).
    pub handler: String,
    pub job: JobId,
    /// How long its handler ran, when this process ran it.
    pub took: Option<Duration>,
}

/// One committed batch of completions, counted and logged: `attempts[i]`
/// is what `batch[i]` was about, `outcomes[i]` what the store made of it.
pub(crate) fn recorded(batch: &[Completion], attempts: &[Attempt], outcomes: &[CompletionOutcome]) {
    count_outcomes(attempts, outcomes);
    log_outcomes(batch, attempts, outcomes);
}

fn count_outcomes(attempts: &[Attempt], outcomes: &[CompletionOutcome]) {
    let mut fenced = 0u64;
    for (attempt, outcome) in attempts.iter().zip(outcomes) {
        let Some(outcome) = outcome_label(outcome) else {
            fenced += 1;
            continue;
        };
        ::metrics::counter!(TASKS_TOTAL, "handler" => attempt.handler.clone(), "outcome" => outcome)
            .increment(1);
        if let Some(took) = attempt.took {
            ::metrics::histogram!(TASK_DURATION, "handler" => attempt.handler.clone(), "outcome" => outcome)
                .record(took.as_secs_f64());
        }
    }
    if fenced > 0 {
        ::metrics::counter!(COMPLETION_FENCED).increment(fenced);
    }
}

/// One log event per recorded completion, with the job and task ids as
/// fields (`--log-format json` makes each a JSON object): a retried or dead
/// attempt at `info` with its error, a success at `debug`. Disabled levels
/// cost a check of the filter, nothing more.
fn log_outcomes(batch: &[Completion], ran: &[Attempt], outcomes: &[CompletionOutcome]) {
    for ((completion, run), outcome) in batch.iter().zip(ran).zip(outcomes) {
        let handler = &run.handler;
        let job_id = run.job.0;
        let task_id = completion.lease.task_id.0;
        let attempt = completion.lease.attempt;
        let ms = run.took.map_or(0, |t| t.as_millis() as u64);
        let error = match &completion.result {
            TaskResult::Retryable { error, .. } | TaskResult::Fatal { error, .. } => error.as_str(),
            _ => "",
        };
        match outcome {
            CompletionOutcome::Recorded(TaskState::Succeeded) => tracing::debug!(
                job_id, task_id, handler = %handler, attempt, duration_ms = ms,
                "task succeeded"
            ),
            CompletionOutcome::Recorded(TaskState::Pending) => tracing::info!(
                job_id, task_id, handler = %handler, attempt, duration_ms = ms, error = ?error,
                "task attempt failed; it will be retried"
            ),
            CompletionOutcome::Recorded(TaskState::Skipped) => tracing::debug!(
                job_id, task_id, handler = %handler, attempt, "task skipped"
            ),
            CompletionOutcome::Recorded(_) => tracing::info!(
                job_id, task_id, handler = %handler, attempt, duration_ms = ms, error = ?error,
                "task dead"
            ),
            CompletionOutcome::RejectedSpawn(reason) => tracing::info!(
                job_id, task_id, handler = %handler, attempt, error = ?reason,
                "task dead: its spawned tasks were refused"
            ),
            CompletionOutcome::Stale => tracing::info!(
                job_id, task_id, handler = %handler, attempt,
                "completion refused: the attempt no longer held the task"
            ),
        }
    }
}

/// The tasks of one claim, each claimed `now - ready_at` after it became
/// ready; the series of a handler is looked up once per run of its tasks.
pub(crate) fn claimed<'a>(now: i64, tasks: impl IntoIterator<Item = (&'a str, i64)>) {
    let mut series: Option<(&str, ::metrics::Histogram)> = None;
    for (handler, ready_at) in tasks {
        let waited = Duration::from_millis(now.saturating_sub(ready_at).max(0) as u64);
        match &series {
            Some((h, wait)) if *h == handler => wait.record(waited.as_secs_f64()),
            _ => {
                let wait = ::metrics::histogram!(TASK_WAIT, "handler" => handler.to_string());
                wait.record(waited.as_secs_f64());
                series = Some((handler, wait));
            }
        }
    }
}

/// A guest run that ended in `failure`: counted when the sandbox stopped it.
pub(crate) fn run_failed(handler: &str, failure: &RunFailure) {
    let kind = match failure {
        RunFailure::Trap { .. } => "trap",
        RunFailure::Deadline { .. } => "deadline",
        RunFailure::OutOfMemory { .. } => "out_of_memory",
        RunFailure::StackOverflow { .. } => "stack_overflow",
        RunFailure::TooMuchData { .. } => "too_much_data",
        // The guest's own errors, an unknown handler, a sandbox that could
        // not be set up: not traps.
        RunFailure::Retryable(_)
        | RunFailure::Fatal(_)
        | RunFailure::UnknownHandler(_)
        | RunFailure::Setup { .. } => return,
    };
    ::metrics::counter!(PLUGIN_TRAPS, "handler" => handler.to_string(), "kind" => kind)
        .increment(1);
}

/// `n` expired leases were returned to the queue by this process.
pub(crate) fn leases_rescued(n: u64) {
    ::metrics::counter!(LEASE_RESCUED).increment(n);
}

/// A failed database call of the workers that will be tried again.
pub(crate) fn store_retry(kind: &'static str) {
    ::metrics::counter!(STORE_RETRIES, "kind" => kind).increment(1);
}

/// An MCP tool call answered.
pub fn mcp_call(tool: &str, outcome: &'static str, took: Duration) {
    ::metrics::counter!(MCP_REQUESTS, "tool" => tool.to_string(), "outcome" => outcome)
        .increment(1);
    ::metrics::histogram!(MCP_DURATION, "tool" => tool.to_string()).record(took.as_secs_f64());
}

impl Engine {
    /// Read the database's counts into the sampled gauges (and the store's
    /// retried transactions into its counter): what `telemetry::Sampler`
    /// does on its timer. One read snapshot.
    pub async fn sample_metrics(&self) -> Result<(), EngineError> {
        let now = now_millis();
        let totals = self.store().state_counts(StateCounts { now }).await?;
        for (state, n) in &totals.tasks {
            ::metrics::gauge!(TASKS, "state" => state.as_str()).set(*n as f64);
        }
        for (state, n) in &totals.jobs {
            ::metrics::gauge!(JOBS, "state" => state.as_str()).set(*n as f64);
        }
        for executor in Executor::ALL {
            let age = totals
                .oldest_ready
                .iter()
                .find(|(e, _)| *e == executor)
                .map_or(0.0, |(_, at)| {
                    (now.saturating_sub(*at)).max(0) as f64 / 1000.0
                });
            ::metrics::gauge!(OLDEST_READY, "executor" => executor.as_str()).set(age);
        }
        ::metrics::gauge!(SAMPLED_AT).set(now as f64 / 1000.0);
        ::metrics::counter!(STORE_RETRIES, "kind" => "transaction")
            .absolute(self.store().counters().retried_transactions);
        Ok(())
    }
}
