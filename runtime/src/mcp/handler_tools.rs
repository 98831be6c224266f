//! Each registered handler as an MCP tool of its own, beside the built-in
//! tools: `example:sum` is the tool `example.sum`, its input schema is the
//! handler's (from `describe()`), and a call runs one task durably — a
//! one-stage job of the caller's tenant, stored, retried and leased like any
//! other — and answers with the task's output.
//!
//! **Invariants:**
//! - Tool names use only MCP's characters (`A-Z a-z 0-9 _ - .`): `:`
//!   becomes `.`, anything else `_`. A built-in tool keeps its name; of two
//!   handlers that map to one name, the first by handler name gets it and
//!   the other is left out (and logged), so a name never means two things.
//! - A handler whose schema is not an object schema takes its input as the
//!   one argument `input` (MCP tool arguments are always an object).
//! - Arguments are checked against the handler's schema before anything is
//!   written: a mismatch is `invalid_params` naming the field.
//! - The list is read from the current plugin host at every `tools/list`,
//!   so a reload shows at once; sessions are told by
//!   `notifications/tools/list_changed` (see [`super::LockstepMcp`]).

use super::Caller;
use super::failure::ToolFailure;
use super::params::ArgError;
use crate::engine::Engine;
use crate::model::{JobId, JobState};
use crate::plugin::{InputError, PluginHost};
use crate::spec::field::pointer_field;
use rmcp::ErrorData;
use rmcp::model::{CallToolResult, ContentBlock, JsonObject, Tool};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The stage a handler tool's job runs its one task in.
pub const STAGE: &str = "run";
/// The argument holding the input of a handler whose schema is not an object.
pub const INPUT_ARGUMENT: &str = "input";

/// One handler offered as a tool.
#[derive(Debug, Clone)]
pub struct HandlerTool {
    pub handler: String,
    /// True when the tool's arguments are the input itself (an object
    /// schema); false when the input is the `input` argument.
    direct: bool,
    pub tool: Tool,
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
        let name = tool_name(&listing.name);
        if taken.iter().any(|t| t.name == name) || tools.contains_key(&name) {
            tracing::warn!(
                "handler {} is not offered as an MCP tool: the tool name {name} is taken",
                crate::limits::printable(&listing.name)
            );
            continue;
        }
        let (schema, direct) = match listing.input_schema.as_object() {
            Some(object) if object.get("type").and_then(|t| t.as_str()) == Some("object") => {
                (object.clone(), true)
            }
            _ => {
                let mut wrapper = JsonObject::new();
                wrapper.insert("type".into(), "object".into());
                wrapper.insert(
                    "properties".into(),
                    serde_json::json!({ INPUT_ARGUMENT: listing.input_schema }),
                );
                wrapper.insert("required".into(), serde_json::json!([INPUT_ARGUMENT]));
                (wrapper, false)
            }
        };
        let description = format!(
            "{} (runs handler {} once as a durable lockstep job and returns its output)",
            listing.description, listing.name
        );
        // Published portable (see `schema`); input is still validated
        // against the handler's own schema.
        let tool = Tool::new(
            name.clone(),
            description,
            Arc::new(super::schema::portable(&schema)),
        );
        tools.insert(
            name,
            HandlerTool {
                handler: listing.name,
                direct,
                tool,
            },
        );
    }
    tools
}

/// Run `tool` once for `caller` with `arguments`, and answer with its output.
pub async fn call(
    engine: &Arc<Engine>,
    caller: &Caller,
    tool: &HandlerTool,
    mut arguments: JsonObject,
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
    let submitted = match engine.submit(&caller.tenant, job).await {
        Ok(s) => s,
        Err(e) => return ToolFailure::from_engine(&tool.tool.name, e).into_response(),
    };
    answer(engine, caller, tool, submitted.job_id).await
}

/// Wait for the job to end and turn its one task into the tool's answer.
async fn answer(
    engine: &Arc<Engine>,
    caller: &Caller,
    tool: &HandlerTool,
    job: JobId,
) -> Result<CallToolResult, ErrorData> {
    let name = &tool.tool.name;
    let progress = match engine.wait(&caller.tenant, job, None, |_| {}).await {
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
            let mut result = CallToolResult::success(vec![ContentBlock::text(output.clone())]);
            if let Ok(serde_json::Value::Object(object)) = serde_json::from_str(&output) {
                result.structured_content = Some(serde_json::Value::Object(object));
            }
            Ok(result)
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
