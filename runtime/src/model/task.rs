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
}

spelled!(OnFailure, "on_failure", [FailJob => "fail_job", Continue => "continue"]);
spelled!(Executor, "executor", [Wasm => "wasm", Agent => "agent"]);
