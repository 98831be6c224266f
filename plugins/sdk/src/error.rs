//! [`TaskError`]: how a handler says a run failed, and whether the host
//! should try again.

use std::fmt;

use crate::bindings::lockstep::plugin::types::TaskError as WitTaskError;

/// Why a run failed. The message is stored with the task and shown to
/// operators, so make it one clear sentence: what failed and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskError {
    /// A transient failure (a busy service, a timeout): the host retries the
    /// task with exponential backoff until its attempts are used up.
    Retryable(String),
    /// A permanent failure (bad input, a missing file): the task is dead at
    /// once and kept for inspection and `lockstep retry`.
    Fatal(String),
}

impl TaskError {
    /// A failure worth retrying.
    pub fn retryable(message: impl Into<String>) -> Self {
        TaskError::Retryable(message.into())
    }

    /// A failure that retrying cannot fix.
    pub fn fatal(message: impl Into<String>) -> Self {
        TaskError::Fatal(message.into())
    }

    /// The message, without saying whether it is retryable.
    pub fn message(&self) -> &str {
        match self {
            TaskError::Retryable(message) | TaskError::Fatal(message) => message,
        }
    }

    /// True for [`TaskError::Retryable`].
    pub fn is_retryable(&self) -> bool {
        matches!(self, TaskError::Retryable(_))
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for TaskError {}

impl From<TaskError> for WitTaskError {
    fn from(error: TaskError) -> Self {
        match error {
            TaskError::Retryable(message) => WitTaskError::Retryable(message),
            TaskError::Fatal(message) => WitTaskError::Fatal(message),
        }
    }
}
