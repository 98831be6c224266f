//! How store values are spelled in SQL rows, shared by every backend: state,
//! executor, on-failure and event-kind names, millisecond arithmetic, and the
//! "not found" errors. A name read back that is not one of these is
//! [`StoreError::Corrupt`].

use super::{EventKind, Executor, JobId, Millis, OnFailure, ReadyHandler, StoreError, TaskId};
use crate::state::{JobState, StageState, TaskState};
use std::time::Duration;

/// A handler may spawn at most this many children per completion; more is a
/// fatal task error.
pub const SPAWN_LIMIT: usize = 10_000;

pub(crate) fn parse_task_state(s: &str) -> Result<TaskState, StoreError> {
    s.parse().map_err(|e| StoreError::Corrupt(format!("{e}")))
}

pub(crate) fn parse_job_state(s: &str) -> Result<JobState, StoreError> {
    s.parse().map_err(|e| StoreError::Corrupt(format!("{e}")))
}

pub(crate) fn parse_stage_state(s: &str) -> Result<StageState, StoreError> {
    s.parse().map_err(|e| StoreError::Corrupt(format!("{e}")))
}

pub(crate) fn executor_str(e: Executor) -> &'static str {
    match e {
        Executor::Wasm => "wasm",
        Executor::Agent => "agent",
    }
}

pub(crate) fn parse_executor(s: &str) -> Result<Executor, StoreError> {
    match s {
        "wasm" => Ok(Executor::Wasm),
        "agent" => Ok(Executor::Agent),
        other => Err(StoreError::Corrupt(format!(
            "unknown executor {other:?} (expected wasm or agent)"
        ))),
    }
}

pub(crate) fn on_failure_str(o: OnFailure) -> &'static str {
    match o {
        OnFailure::FailJob => "fail_job",
        OnFailure::Continue => "continue",
    }
}

pub(crate) fn parse_on_failure(s: &str) -> Result<OnFailure, StoreError> {
    match s {
        "fail_job" => Ok(OnFailure::FailJob),
        "continue" => Ok(OnFailure::Continue),
        other => Err(StoreError::Corrupt(format!(
            "unknown on_failure {other:?} (expected fail_job or continue)"
        ))),
    }
}

pub(crate) fn event_kind_str(k: EventKind) -> &'static str {
    match k {
        EventKind::Submitted => "submitted",
        EventKind::StageOpened => "stage_opened",
        EventKind::StageClosed => "stage_closed",
        EventKind::TaskClaimed => "task_claimed",
        EventKind::TaskSucceeded => "task_succeeded",
        EventKind::TaskFailed => "task_failed",
        EventKind::TaskRetried => "task_retried",
        EventKind::TaskDead => "task_dead",
        EventKind::TaskCancelled => "task_cancelled",
        EventKind::TaskRevived => "task_revived",
        EventKind::CompletionRefused => "completion_refused",
        EventKind::JobFinished => "job_finished",
        EventKind::JobCancelled => "job_cancelled",
        EventKind::JobReopened => "job_reopened",
        EventKind::TaskNote => "task_note",
        EventKind::TaskLog => "task_log",
    }
}

const EVENT_KINDS: [EventKind; 16] = [
    EventKind::Submitted,
    EventKind::StageOpened,
    EventKind::StageClosed,
    EventKind::TaskClaimed,
    EventKind::TaskSucceeded,
    EventKind::TaskFailed,
    EventKind::TaskRetried,
    EventKind::TaskDead,
    EventKind::TaskCancelled,
    EventKind::TaskRevived,
    EventKind::CompletionRefused,
    EventKind::JobFinished,
    EventKind::JobCancelled,
    EventKind::JobReopened,
    EventKind::TaskNote,
    EventKind::TaskLog,
];

pub(crate) fn parse_event_kind(s: &str) -> Result<EventKind, StoreError> {
    EVENT_KINDS
        .into_iter()
        .find(|k| event_kind_str(*k) == s)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown event kind {s:?}")))
}

/// A duration as milliseconds, saturating (a lease of u64::MAX ms is "forever").
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `now + d`, saturating.
pub(crate) fn after(now: Millis, d: Duration) -> Millis {
    now.saturating_add(millis(d))
}

pub(crate) fn job_not_found(job: JobId) -> StoreError {
    StoreError::NotFound {
        entity: "job",
        id: job.0.to_string(),
    }
}

/// The rows of the ready-handlers statement (a job LEFT JOIN its ready
/// handlers): none means no such job for the tenant; a row of NULLs, a job
/// with nothing ready.
pub(crate) fn ready_handlers_from_rows(
    job: JobId,
    rows: Vec<(Option<String>, Option<String>)>,
) -> Result<Vec<ReadyHandler>, StoreError> {
    if rows.is_empty() {
        return Err(job_not_found(job));
    }
    rows.into_iter()
        .filter_map(|(executor, handler)| executor.zip(handler))
        .map(|(executor, handler)| {
            Ok(ReadyHandler {
                executor: parse_executor(&executor)?,
                handler,
            })
        })
        .collect()
}

pub(crate) fn task_not_found(task: TaskId) -> StoreError {
    StoreError::NotFound {
        entity: "task",
        id: task.0.to_string(),
    }
}
