//! What an event row records.

use super::name::spelled;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Submitted,
    StageOpened,
    StageClosed,
    TaskClaimed,
    TaskSucceeded,
    TaskFailed,
    TaskRetried,
    TaskDead,
    TaskCancelled,
    TaskRevived,
    CompletionRefused,
    JobFinished,
    JobCancelled,
    JobReopened,
    /// A progress note from the agent holding the task's lease.
    TaskNote,
    /// A line the task's handler logged, or its last progress report.
    TaskLog,
    /// The task decided not to run (a CI step whose `if` is false).
    TaskSkipped,
}

spelled!(
    EventKind,
    "event kind",
    [
        Submitted => "submitted",
        StageOpened => "stage_opened",
        StageClosed => "stage_closed",
        TaskClaimed => "task_claimed",
        TaskSucceeded => "task_succeeded",
        TaskFailed => "task_failed",
        TaskRetried => "task_retried",
        TaskDead => "task_dead",
        TaskCancelled => "task_cancelled",
        TaskRevived => "task_revived",
        CompletionRefused => "completion_refused",
        JobFinished => "job_finished",
        JobCancelled => "job_cancelled",
        JobReopened => "job_reopened",
        TaskNote => "task_note",
        TaskLog => "task_log",
        TaskSkipped => "task_skipped",
    ]
);
