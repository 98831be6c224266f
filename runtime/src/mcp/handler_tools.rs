//! Each registered handler as an MCP tool of its own, beside the built-in
//! tools: `example:sum` is the tool `example.sum` (or the name its
//! component's WIT `mcp` export declares for it), its input schema is the
//! handler's (from `describe()`), and a call runs one task durably — a
//! one-stage job of the caller's tenant, stored, retried and leased like any
//! other — and answers with the task's output: as JSON text (and structured
//! content), or, when the component declared the `content` result format,
//! as the MCP content blocks the output lists. A task that fails for good
//! is an `isError` result with the handler's error as its text. While the
//! task runs in this process, its log lines go to the caller as
//! `notifications/message` (after `logging/setLevel`, at or above that
//! level) and its progress as `notifications/progress` (when the call
//! carries a `progressToken`), and what its handler asks the agent (the WIT
//! `agent` import: sampling, elicitation) goes to the calling session
//! ([`super::ask`]) while the call waits. A call the client cancels (or
//! whose session ends) stops waiting; its job goes on.
//!
//! **Invariants:**
//! - Tool names use only MCP's characters (`A-Z a-z 0-9 _ - . /`): a
//!   declared name is checked at load; otherwise `:` becomes `.`, anything
//!   else `_`. A built-in tool keeps its name; of two handlers that map to
//!   one name, the first by handler name gets it and the other is left out
//!   (and logged), so a name never means two things.
//! - The published input schema is the handler's own, every keyword kept
//!   (`$schema`, `$defs`, `$ref`, composition, conditionals); only boolean
//!   subschemas are written as their object forms (Invariant 25). A handler
//!   whose schema is not an object schema takes its input as the one
//!   argument `input` (MCP tool arguments are always an object).
//! - Progress notifications only rise: a report that does not raise
//!   `done` is not sent, and a call sends at most [`MAX_PROGRESS_NOTES`].
//! - Arguments are checked against the handler's schema before anything is
//!   written: a mismatch is `invalid_params` naming the field.
//! - The list is read from the current plugin host at every `tools/list`,
//!   so a reload shows at once; sessions are told by
//!   `notifications/tools/list_changed` (see [`super::LockstepMcp`]).

use super::Caller;
use super::failure::ToolFailure;
use super::logging;
use super::params::ArgError;
use crate::engine::Engine;
use crate::engine::live::{Live, LiveReport};
use crate::model::{JobId, JobState};
use crate::plugin::{InputError, McpResult, PluginHost};
use crate::spec::field::pointer_field;
use rmcp::model::{
    CallToolResult, ContentBlock, JsonObject, ProgressNotificationParam, ProgressToken, RequestId,
    Tool,
};
use rmcp::service::Peer;
use rmcp::{ErrorData, RoleServer};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;

/// The stage a handler tool's job runs its one task in.
pub const STAGE: &str = "run";
/// The argument holding the input of a handler whose schema is not an object.
pub const INPUT_ARGUMENT: &str = "input";
/// Most progress notifications one call sends.
pub const MAX_PROGRESS_NOTES: u32 = 1_000;

/// One handler offered as a tool.
#[derive(Debug, Clone)]
pub struct HandlerTool {
    pub handler: String,
    /// True when the tool's arguments are the input itself (an object
    /// schema); false when the input is the `input` argument.
    direct: bool,
    /// How the result is made from the output.
    result: McpResult,
    pub tool: Tool,
}

/// Who hears a call's task as it runs: the session's peer, the call's
/// request id and progress token, and the session's log level.
pub struct Listener<'a> {
    pub peer: &'a Peer<RoleServer>,
    /// The `tools/call` request: the handler's questions ride its stream.
    pub call: RequestId,
    /// Its SSE stream over HTTP, which the handler may release.
    pub stream: Option<super::streams::HeldStream>,
    pub progress_token: Option<ProgressToken>,
    pub logging: &'a logging::Session,
    /// Cancelled when the client cancels the call or its session ends.
    pub cancelled: tokio_util::sync::CancellationToken,
}

impl HandlerTool {
    /// True when the tool's arguments are the input itself; false when the
    /// input is its `input` argument.
    pub fn direct(&self) -> bool {
        self.direct
    }
}

/// The MCP tool name of handler `name`.
pub fn tool_name(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            ':' => '.',
            c if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') => c,
            _ => '_',
        })
        .collect()
}

/// The handlers of `plugins` as tools, keyed by tool name, leaving out
/// names in `taken` (the built-in tools) and all but the first handler of
/// a clash.
pub fn handler_tools(plugins: &PluginHost, taken: &[Tool]) -> BTreeMap<String, HandlerTool> {
    let mut tools = BTreeMap::new();
    for listing in plugins.describe_all() {
        let (name, result) = match &listing.mcp_tool {
            Some(declared) => (declared.name.clone(), declared.result),
            None => (tool_name(&listing.name), McpResult::Json),
        };
        if taken.iter().any(|t| t.name == name) || tools.contains_key(&name) {
            tracing::warn!(
                "handler {} is not offered as an MCP tool: the tool name {name} is taken",
                crate::limits::printable(&listing.name)
            );
            continue;
        }
        let (schema, direct) = match listing.input_schema.as_object() {
            Some(object) if object.get("type").and_then(|t| t.as_str()) == Some("object") => {
                (super::schema::intact(object), true)
            }
            _ => {
                let mut wrapper = JsonObject::new();
                wrapper.insert("type".into(), "object".into());
                wrapper.insert(
                    "properties".into(),
                    serde_json::json!({ INPUT_ARGUMENT: listing.input_schema }),
                );
                wrapper.insert("required".into(), serde_json::json!([INPUT_ARGUMENT]));
                // Nested under `input`, the handler's own `$ref`s would
                // point nowhere: inlined instead.
                (super::schema::portable(&wrapper), false)
            }
        };
        let description = format!(
            "{} (runs handler {} once as a durable lockstep job and returns its output)",
            listing.description, listing.name
        );
        let tool = Tool::new(name.clone(), description, Arc::new(schema));
        tools.insert(
            name,
            HandlerTool {
                handler: listing.name,
                direct,
                result,
                tool,
            },
        );
    }
    tools
}

/// Run `tool` once for `caller` with `arguments`, telling `listener` what
/// the task reports as it runs, and answer with its output.
pub async fn call(
    engine: &Arc<Engine>,
    caller: &Caller,
    tool: &HandlerTool,
    mut arguments: JsonObject,
    listener: &Listener<'_>,
) -> Result<CallToolResult, ErrorData> {
    let input = if tool.direct {
        serde_json::Value::Object(arguments)
    } else {
        match arguments.remove(INPUT_ARGUMENT) {
            Some(input) => input,
            None => {
                return Err(ArgError::new(INPUT_ARGUMENT, "is required").into_error_data());
            }
        }
    };
    let root = if tool.direct { "" } else { INPUT_ARGUMENT };
    if let Err(e) = engine.plugins().validate_input(&tool.handler, &input) {
        let failure = match e {
            InputError::Invalid {
                pointer, message, ..
            } => ToolFailure::Argument(ArgError::new(field(root, &pointer), message)),
            InputError::UnknownHandler(unknown) => ToolFailure::Refused {
                code: "unknown_handler",
                message: unknown.to_string(),
            },
        };
        return failure.into_response();
    }
    let job: crate::spec::JobSpec = match serde_json::from_value(serde_json::json!({
        "name": tool.tool.name,
        // Every call runs: no two calls share a job.
        "idempotency_key": format!("mcp-tool-{}", uuid::Uuid::new_v4().simple()),
        "stages": [{ "name": STAGE, "tasks": [{ "handler": tool.handler, "input": input }] }],
    })) {
        Ok(job) => job,
        Err(e) => return ToolFailure::internal(&tool.tool.name, &e).into_response(),
    };
    // Listening, and reserving the task's agent, before the job exists:
    // its task may start (and ask) at once.
    let mut reports = engine.live_reports();
    let reservation = engine.agent_links().reserve();
    let submitted = match engine.submit(&caller.tenant, job).await {
        Ok(s) => s,
        Err(e) => return ToolFailure::from_engine(&tool.tool.name, e).into_response(),
    };
    let job = submitted.job_id;
    // Held while the call waits: its end detaches the agent (Invariant 41).
    let _attached = reservation.attach(
        caller.tenant.clone(),
        job,
        Arc::new(super::ask::SessionAgent::new(
            listener.peer.clone(),
            listener.call.clone(),
            listener.stream.as_ref().map(|held| held.stream.clone()),
        )),
    );
    let mut relay = Relay::new(caller, job, listener);
    let waited = {
        let wait = engine.wait(&caller.tenant, job, None, |_| {});
        tokio::pin!(wait);
        loop {
            tokio::select! {
                // Reports first: every one sent before the task ended is
                // forwarded before the answer.
                biased;
                report = reports.recv() => match report {
                    Ok(report) => relay.forward(report).await,
                    Err(RecvError::Lagged(lost)) => relay.lost(lost).await,
                    // The engine outlives its calls; only its end closes this.
                    Err(RecvError::Closed) => break wait.await,
                },
                waited = &mut wait => break waited,
                // The job goes on; the call (and its agent) ends here.
                () = listener.cancelled.cancelled() => return cancelled(job),
            }
        }
    };
    while let Ok(report) = reports.try_recv() {
        relay.forward(report).await;
    }
    if let Some(held) = &listener.stream {
        // A released stream's answer waits for its client (see `streams`).
        tokio::select! {
            () = held.stream.resumed() => {}
            () = listener.cancelled.cancelled() => return cancelled(job),
        }
    }
    answer(engine, caller, tool, job, waited).await
}

/// What a cancelled call answers (a client that cancelled does not read
/// it): its job goes on, durably.
fn cancelled(job: JobId) -> Result<CallToolResult, ErrorData> {
    ToolFailure::Refused {
        code: "cancelled",
        message: format!(
            "the call was cancelled; job {} goes on (see it with get_job or wait_job)",
            job.0
        ),
    }
    .into_response()
}

/// Forwards one call's task reports to its listener.
struct Relay<'a> {
    caller: &'a Caller,
    job: JobId,
    listener: &'a Listener<'a>,
    /// The last `done` sent as progress, and how many were sent.
    progress: Option<u64>,
    progress_sent: u32,
    lines_sent: u32,
}

impl<'a> Relay<'a> {
    fn new(caller: &'a Caller, job: JobId, listener: &'a Listener<'a>) -> Self {
        Relay {
            caller,
            job,
            listener,
            progress: None,
            progress_sent: 0,
            lines_sent: 0,
        }
    }

    async fn forward(&mut self, report: LiveReport) {
        // Invariant 23: only the caller's own job.
        if report.job != self.job || report.tenant != self.caller.tenant {
            return;
        }
        match report.what {
            Live::Log { level, message } => {
                if self.lines_sent >= logging::MAX_LINES_PER_JOB {
                    return;
                }
                self.lines_sent += 1;
                logging::send_line(
                    self.listener.logging,
                    self.listener.peer,
                    logging::guest_level(level),
                    self.job,
                    Some(report.task),
                    &message,
                )
                .await;
            }
            Live::Progress {
                done,
                total,
                message,
            } => {
                let Some(token) = &self.listener.progress_token else {
                    return;
                };
                if self.progress.is_some_and(|sent| done <= sent)
                    || self.progress_sent >= MAX_PROGRESS_NOTES
                {
                    return;
                }
                self.progress = Some(done);
                self.progress_sent += 1;
                let text = crate::limits::printable(&message);
                let mut note = ProgressNotificationParam::new(token.clone(), done as f64)
                    .with_total(total.max(done) as f64);
                if !text.is_empty() {
                    note = note.with_message(super::params::clip(&text, logging::MAX_LINE_BYTES));
                }
                if let Err(e) = self.listener.peer.notify_progress(note).await {
                    tracing::debug!(error = %e, "progress notification not delivered");
                }
            }
        }
    }

    /// This call fell behind the process's live reports and lost `lost`.
    // MCP logging is deprecated by SEP-2577 for the 2026-07-28 protocol; it
    // is the current protocol of every 2025 revision clients speak today.
    #[allow(deprecated)]
    async fn lost(&mut self, lost: u64) {
        logging::send_line(
            self.listener.logging,
            self.listener.peer,
            rmcp::model::LoggingLevel::Warning,
            self.job,
            None,
            &format!(
                "{lost} live log and progress reports of this process were dropped before this call read them; the task's log lines are stored with its result (get_task)"
            ),
        )
        .await;
    }
}

/// Turn the ended job's one task into the tool's answer.
async fn answer(
    engine: &Arc<Engine>,
    caller: &Caller,
    tool: &HandlerTool,
    job: JobId,
    waited: Result<crate::engine::JobProgress, crate::engine::EngineError>,
) -> Result<CallToolResult, ErrorData> {
    let name = &tool.tool.name;
    let progress = match waited {
        Ok(p) => p,
        Err(e) => return ToolFailure::from_engine(name, e).into_response(),
    };
    match progress.job.state {
        JobState::Succeeded => {
            let outputs = match engine.stage_outputs(&caller.tenant, job, STAGE, 1).await {
                Ok(o) => o,
                Err(e) => return ToolFailure::from_engine(name, e).into_response(),
            };
            let Some((_, output)) = outputs.into_iter().next() else {
                return ToolFailure::internal(name, &format!("job {} has no output", job.0))
                    .into_response();
            };
            match tool.result {
                McpResult::Json => {
                    let mut result =
                        CallToolResult::success(vec![ContentBlock::text(output.clone())]);
                    if let Ok(serde_json::Value::Object(object)) = serde_json::from_str(&output) {
                        result.structured_content = Some(serde_json::Value::Object(object));
                    }
                    Ok(result)
                }
                McpResult::Content => match content_blocks(&output) {
                    Ok(blocks) => Ok(CallToolResult::success(blocks)),
                    Err(why) => ToolFailure::Refused {
                        code: "invalid_output",
                        message: format!(
                            "handler {} returned output that is not MCP content: {why} (its plugin declares the content result format: a JSON array of content blocks)",
                            tool.handler
                        ),
                    }
                    .into_response(),
                },
            }
        }
        state => {
            let dead = engine
                .dead_tasks(&caller.tenant, job, 1)
                .await
                .ok()
                .and_then(|tasks| tasks.into_iter().next());
            let message = match dead.and_then(|t| t.error) {
                Some(error) => format!("handler {} failed in job {}: {error}", tool.handler, job.0),
                None => format!("job {} ended {state:?} without an output", job.0),
            };
            ToolFailure::Refused {
                code: "task_failed",
                message,
            }
            .into_response()
        }
    }
}

/// The content blocks of an output in the `content` result format: a JSON
/// array of MCP content blocks; else which block is wrong and why.
fn content_blocks(output: &str) -> Result<Vec<ContentBlock>, String> {
    let serde_json::Value::Array(items) = serde_json::from_str::<serde_json::Value>(output)
        .map_err(|e| format!("it is not JSON ({e})"))?
    else {
        return Err("it is not an array".to_owned());
    };
    items
        .into_iter()
        .enumerate()
        .map(|(at, item)| {
            serde_json::from_value::<ContentBlock>(item).map_err(|e| format!("block {at}: {e}"))
        })
        .collect()
}

/// The argument a JSON pointer into the input names: `/items/2` →
/// `items[2]` (or `input.items[2]` when the input is the `input` argument);
/// the input as a whole is `arguments`.
fn field(root: &str, pointer: &str) -> String {
    let field = pointer_field(root, pointer);
    let field = field.strip_prefix('.').unwrap_or(&field).to_owned();
    if field.is_empty() {
        "arguments".to_owned()
    } else {
        field
    }
}
