//! What a running handler may ask of its surroundings: the `context` imports
//! of the WIT world (`log`, `progress`, `stage-results`, `cancelled`), and
//! the `agent` import of the `mcp-plugin` world (`sample`, `elicit`: ask the
//! MCP agent whose tool call waits on the task).
//!
//! [`TaskContext`] is implemented by whoever runs the task: the engine
//! implements it over the store (logs and progress are recorded against the
//! task, lineage reads earlier stages of the job), and [`StandaloneContext`]
//! serves `lockstep exec`, where there is no job. The sandbox calls it with
//! guest-controlled arguments already bounded (message length, page size), so
//! implementations need not re-check those limits.

use crate::limits::printable;
use async_trait::async_trait;
use serde::Serialize;

/// Severity of a log line, as the guest reports it (or `info` / `warn` for
/// captured stdout / stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

impl std::fmt::Display for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The host services a running handler can reach. One value per task
/// attempt; it outlives the sandbox of that attempt. `log` and `progress`
/// must not block (buffer or hand off if they write somewhere slow).
#[async_trait]
pub trait TaskContext: Send + Sync {
    /// Record a log line against the task.
    fn log(&self, level: LogLevel, message: &str);

    /// Record progress (`done` of `total` units) against the task.
    fn progress(&self, done: u64, total: u64, message: &str);

    /// Lineage: outputs of succeeded tasks of an earlier stage of the same
    /// job, ordered by task id, starting after `after` (a task id: at most
    /// `i64::MAX`), at most `limit` (already capped by the host at
    /// [`STAGE_RESULTS_PAGE_MAX`]) and at most [`STAGE_RESULTS_PAGE_BYTES`]
    /// before the last output of the page. The error
    /// string is handed to the guest as is, so it must be one clear sentence.
    async fn stage_results(
        &self,
        stage: &str,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<(u64, String)>, String>;

    /// True once the task's job has been cancelled.
    async fn cancelled(&self) -> bool;

    /// Ask the agent waiting on this task ([`AskKind`]) with `request`, the
    /// JSON of the MCP request's params (at most
    /// [`crate::limits::MAX_AGENT_REQUEST_BYTES`], checked by the sandbox);
    /// the answer is the JSON of the client's result. Without an agent (the
    /// default: `lockstep exec`, load-time calls) it is [`AskError::NoAgent`].
    async fn ask(&self, kind: AskKind, request: &str) -> Result<String, AskError> {
        let _ = request;
        Err(AskError::NoAgent(format!(
            "no agent is attached to this task: {} only reaches the MCP agent whose handler tool call waits on the task",
            kind.import()
        )))
    }

    /// Let the agent's client reconnect after `retry` (the WIT
    /// `release-connection`, `retry` already capped at
    /// [`MAX_RELEASE_RETRY`] by the sandbox). Without an agent it is
    /// [`AskError::NoAgent`].
    async fn release_connection(&self, retry: std::time::Duration) -> Result<(), AskError> {
        let _ = retry;
        Err(AskError::NoAgent(
            "no agent is attached to this task: agent.release-connection only reaches the MCP agent whose handler tool call waits on the task".to_owned(),
        ))
    }

    /// Called once, when the run has its plugin slot and the guest is about
    /// to start. `false`: the task was handed back while it waited (its
    /// worker is stopping), and the guest must not start.
    fn start(&self) -> bool {
        true
    }
}

/// The longest reconnection delay `release-connection` passes on.
pub const MAX_RELEASE_RETRY: std::time::Duration = std::time::Duration::from_secs(60);

/// What a handler asks its agent (the WIT `agent` import).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AskKind {
    /// `agent.sample`: MCP `sampling/createMessage`.
    Sample,
    /// `agent.elicit`: MCP `elicitation/create`.
    Elicit,
}

impl AskKind {
    /// The WIT function, as messages name it.
    pub fn import(self) -> &'static str {
        match self {
            AskKind::Sample => "agent.sample",
            AskKind::Elicit => "agent.elicit",
        }
    }

    /// The MCP request it sends.
    pub fn method(self) -> &'static str {
        match self {
            AskKind::Sample => "sampling/createMessage",
            AskKind::Elicit => "elicitation/create",
        }
    }

    /// The client capability it needs.
    pub fn capability(self) -> &'static str {
        match self {
            AskKind::Sample => "sampling",
            AskKind::Elicit => "elicitation",
        }
    }
}

/// Why an agent could not be asked or did not answer: the WIT
/// `agent.ask-error`, each a sentence handed to the guest (cut to
/// [`crate::limits::MAX_ERROR_BYTES`] by the sandbox).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AskError {
    /// No MCP tool call in this process waits on the task.
    #[error("{0}")]
    NoAgent(String),
    /// The agent's client did not declare the capability.
    #[error("{0}")]
    Unsupported(String),
    /// The request is not the MCP params object, or too long.
    #[error("{0}")]
    InvalidRequest(String),
    /// The client answered with an error, too long an answer, or the call
    /// ended before it answered.
    #[error("{0}")]
    Failed(String),
}

/// The largest page `stage-results` returns, whatever the guest asks for.
pub const STAGE_RESULTS_PAGE_MAX: u32 = 1_000;

/// The bytes of output a `stage-results` page holds at most before its last
/// output: outputs are added to a page until they reach this total, so a
/// page is never larger than this plus one output (at least one output, so
/// paging always moves on).
pub const STAGE_RESULTS_PAGE_BYTES: u64 = 4 << 20;

/// The error `stage-results` returns outside a job.
pub const NO_JOB_CONTEXT: &str = "no job context: stage-results is only available inside a job";

/// The context of a task run outside any job (`lockstep exec`): lineage is
/// unavailable, nothing is ever cancelled, and log lines are printed to
/// stderr as `[level] message` for the plugin author to read (control
/// characters escaped).
#[derive(Debug, Clone, Copy, Default)]
pub struct StandaloneContext;

#[async_trait]
impl TaskContext for StandaloneContext {
    fn log(&self, level: LogLevel, message: &str) {
        eprintln!("[{level}] {}", printable(message));
    }

    fn progress(&self, done: u64, total: u64, message: &str) {
        eprintln!("[progress {done}/{total}] {}", printable(message));
    }

    async fn stage_results(
        &self,
        _stage: &str,
        _after: Option<u64>,
        _limit: u32,
    ) -> Result<Vec<(u64, String)>, String> {
        Err(NO_JOB_CONTEXT.to_owned())
    }

    async fn cancelled(&self) -> bool {
        false
    }
}

/// The context of the load-time `describe()` call: no job, and log lines go
/// to `tracing` (target `lockstep::guest`) at debug level, since a plugin
/// has no business being chatty while it is registered.
#[derive(Debug, Clone)]
pub(crate) struct LoadContext {
    pub(crate) plugin: String,
}

#[async_trait]
impl TaskContext for LoadContext {
    fn log(&self, level: LogLevel, message: &str) {
        let message = printable(message);
        tracing::debug!(target: "lockstep::guest", plugin = %self.plugin, %level, "{message}");
    }

    fn progress(&self, _done: u64, _total: u64, _message: &str) {}

    async fn stage_results(
        &self,
        _stage: &str,
        _after: Option<u64>,
        _limit: u32,
    ) -> Result<Vec<(u64, String)>, String> {
        Err(NO_JOB_CONTEXT.to_owned())
    }

    async fn cancelled(&self) -> bool {
        false
    }
}
