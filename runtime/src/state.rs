//! The one transition table for jobs and tasks.
//!
//! Every state change the store makes is checked against these tables first;
//! an illegal transition is an [`IllegalTransition`] naming both states and
//! nothing is written. The store's SQL encodes the same rules in its `WHERE`
//! clauses (fencing), so a row can never reach a state the table forbids.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

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
    pub const ALL: [TaskState; 6] = [
        TaskState::Blocked,
        TaskState::Pending,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Dead,
        TaskState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Blocked => "blocked",
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Dead => "dead",
            TaskState::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Dead | TaskState::Cancelled
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
                // job cancelled or failed, or a dependency died
                | (Blocked, Cancelled)
                | (Pending, Cancelled)
                | (Running, Cancelled)
                // `lockstep retry`: a dead or cancelled task is revived
                | (Dead, Pending)
                | (Cancelled, Pending)
        )
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
    pub const ALL: [JobState; 4] = [
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

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

impl StageState {
    pub fn as_str(self) -> &'static str {
        match self {
            StageState::Waiting => "waiting",
            StageState::Open => "open",
            StageState::Done => "done",
        }
    }
}

/// A state name read from the database or the command line that is not one
/// of the known states.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {entity} state {value:?} (expected one of: {expected})")]
pub struct UnknownState {
    pub entity: &'static str,
    pub value: String,
    pub expected: &'static str,
}

macro_rules! state_text {
    ($ty:ty, $entity:literal, $expected:literal, [$($variant:ident),*]) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $ty {
            type Err = UnknownState;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $(if s == <$ty>::$variant.as_str() { return Ok(<$ty>::$variant); })*
                Err(UnknownState { entity: $entity, value: s.to_string(), expected: $expected })
            }
        }
    };
}

state_text!(
    TaskState,
    "task",
    "blocked, pending, running, succeeded, dead, cancelled",
    [Blocked, Pending, Running, Succeeded, Dead, Cancelled]
);
state_text!(
    JobState,
    "job",
    "running, succeeded, failed, cancelled",
    [Running, Succeeded, Failed, Cancelled]
);
state_text!(
    StageState,
    "stage",
    "waiting, open, done",
    [Waiting, Open, Done]
);
