//! How a task runs: who executes it and what its death does.

use super::name::spelled;
use serde::{Deserialize, Serialize};

/// What to do when a task dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Dependents of the dead task are cancelled; when the stage closes the
    /// job fails and later stages never open.
    #[default]
    FailJob,
    /// Dependents are released as if the task had succeeded; the job goes on.
    Continue,
    /// Dependents are released to decide for themselves (a CI step's `if`),
    /// and the job fails when the stage closes.
    ReleaseThenFail,
}

impl OnFailure {
    /// Whether a death releases the task's dependents (instead of
    /// cancelling them).
    pub fn releases_dependents(self) -> bool {
        matches!(self, OnFailure::Continue | OnFailure::ReleaseThenFail)
    }

    /// Whether a death fails the job when its stage closes.
    pub fn fails_job(self) -> bool {
        matches!(self, OnFailure::FailJob | OnFailure::ReleaseThenFail)
    }
}

/// Who executes a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Executor {
    /// A registered WASM handler, run by a worker.
    #[default]
    Wasm,
    /// An AI agent that claims and completes the task over MCP.
    Agent,
    /// A CI step: a `wasi:cli/command` component run by `lockstep ci`.
    Command,
}

spelled!(
    OnFailure,
    "on_failure",
    [FailJob => "fail_job", Continue => "continue", ReleaseThenFail => "release_then_fail"]
);
spelled!(Executor, "executor", [Wasm => "wasm", Agent => "agent", Command => "command"]);
