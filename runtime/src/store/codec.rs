//! How store values are read back from SQL rows, shared by every backend:
//! states, executors, on-failure and event kinds (spelled by `model`),
//! millisecond arithmetic, and the "not found" errors. A name read back that
//! is not one of the known spellings is [`StoreError::Corrupt`], never a
//! default (Invariant 15).

use super::{ReadyHandler, StoreError};
use crate::model::{
    EventKind, Executor, JobId, JobState, Millis, OnFailure, StageState, TaskId, TaskState,
    UnknownName,
};
use std::str::FromStr;
use std::time::Duration;

/// A handler may spawn at most this many children per completion; more is a
/// fatal task error (the plugin host checks it first; the store holds it for
/// every completion).
pub const SPAWN_LIMIT: usize = crate::limits::MAX_SPAWNS_PER_TASK;

fn parse<T: FromStr<Err = UnknownName>>(s: &str) -> Result<T, StoreError> {
    s.parse()
        .map_err(|e: UnknownName| StoreError::Corrupt(e.to_string()))
}

/// A name read from `column` of `row` (`task 7`, `stage 2 of job 5`); an
/// unknown spelling is [`StoreError::Corrupt`] naming the row and the column.
pub(crate) fn parse_column<T: FromStr<Err = UnknownName>>(
    row: &dyn std::fmt::Display,
    column: &str,
    s: &str,
) -> Result<T, StoreError> {
    s.parse()
        .map_err(|e: UnknownName| StoreError::Corrupt(format!("{row} {column}: {e}")))
}

pub(crate) fn parse_task_state(s: &str) -> Result<TaskState, StoreError> {
    parse(s)
}

pub(crate) fn parse_job_state(s: &str) -> Result<JobState, StoreError> {
    parse(s)
}

pub(crate) fn parse_stage_state(s: &str) -> Result<StageState, StoreError> {
    parse(s)
}

pub(crate) fn parse_executor(s: &str) -> Result<Executor, StoreError> {
    parse(s)
}

pub(crate) fn parse_on_failure(s: &str) -> Result<OnFailure, StoreError> {
    parse(s)
}

pub(crate) fn parse_event_kind(s: &str) -> Result<EventKind, StoreError> {
    parse(s)
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
