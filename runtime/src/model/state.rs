//! The one transition table for jobs and tasks.
//!
//! Every state change the store makes is checked against these tables first;
//! an illegal transition is an [`IllegalTransition`] naming both states and
//! nothing is written (Invariant 3). The store's SQL encodes the same rules in its `WHERE`
//! clauses (fencing), so a row can never reach a state the table forbids.

use super::name::spelled;
use serde::{Deserialize, Serialize};

/// Lifecycle of one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for its stage to open or for its `depends_on` tasks to succeed.
    Blocked,
    /// Ready to be claimed once `run_after` has passed.
    Pending,
    /// Claimed by a worker under a lease.
    Running,
    /// Finished with an output.
    Succeeded,
    /// Failed fatally or used up its attempts; kept for inspection and `retry`.
    Dead,
    /// Will never run: its job was cancelled or failed, or a dependency died.
    Cancelled,
    /// Claimed and decided not to run (a CI step whose `if` is false, or
    /// stopped by `fail_fast`); finished, with an output saying why.
    Skipped,
}

/// Lifecycle of one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

/// Lifecycle of one stage of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageState {
    /// An earlier stage is still running.
    Waiting,
    /// Its tasks may run.
    Open,
    /// Every task reached a terminal state.
    Done,
}

/// A transition the table does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal {entity} transition: {from} -> {to}")]
pub struct IllegalTransition {
    pub entity: &'static str,
    pub from: String,
    pub to: String,
}

impl TaskState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Dead | TaskState::Cancelled | TaskState::Skipped
        )
    }

    /// The task transition table.
    pub fn can_become(self, to: TaskState) -> bool {
        use TaskState::*;
        matches!(
            (self, to),
            // stage opened / dependencies satisfied
            (Blocked, Pending)
                // claimed
                | (Pending, Running)
                // finished, failed for good, or retried (error or expired lease)
                | (Running, Succeeded)
                | (Running, Dead)
                | (Running, Pending)
                // a CI step whose `if` is false
                | (Running, Skipped)
                // job cancelled or failed, or a dependency died
                | (Blocked, Cancelled)
                | (Pending, Cancelled)
                | (Running, Cancelled)
                // `lockstep retry`: a dead or cancelled task is revived, blocked
                // while its stage waits or its dependencies are unfinished
                | (Dead, Pending)
                | (Dead, Blocked)
                | (Cancelled, Pending)
                | (Cancelled, Blocked)
                | (Skipped, Pending)
        )
    }

    /// `lockstep retry`: only a task that stopped for good without
    /// succeeding (dead or cancelled) is revived; a blocked, pending or
    /// running task is still on its way, and counting it in again would
    /// count it twice.
    pub fn revive(self) -> Result<TaskState, IllegalTransition> {
        match self {
            TaskState::Dead | TaskState::Cancelled => self.transition(TaskState::Pending),
            _ => Err(IllegalTransition {
                entity: "task",
                from: self.to_string(),
                to: TaskState::Pending.to_string(),
            }),
        }
    }

    pub fn transition(self, to: TaskState) -> Result<TaskState, IllegalTransition> {
        if self.can_become(to) {
            Ok(to)
        } else {
            Err(IllegalTransition {
                entity: "task",
                from: self.to_string(),
                to: to.to_string(),
            })
        }
    }
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobState::Running)
    }

    /// The job transition table.
    pub fn can_become(self, to: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, to),
            (Running, Succeeded)
                | (Running, Failed)
                | (Running, Cancelled)
                // `lockstep retry` of a dead task reopens its job
                | (Failed, Running)
                | (Cancelled, Running)
        )
    }

    pub fn transition(self, to: JobState) -> Result<JobState, IllegalTransition> {
        if self.can_become(to) {
            Ok(to)
        } else {
            Err(IllegalTransition {
                entity: "job",
                from: self.to_string(),
                to: to.to_string(),
            })
        }
    }
}

spelled!(
    TaskState,
    "task state",
    [
        Blocked => "blocked",
        Pending => "pending",
        Running => "running",
        Succeeded => "succeeded",
        Dead => "dead",
        Cancelled => "cancelled",
        Skipped => "skipped",
    ]
);
spelled!(
    JobState,
    "job state",
    [
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelled => "cancelled",
    ]
);
spelled!(
    StageState,
    "stage state",
    [Waiting => "waiting", Open => "open", Done => "done"]
);
