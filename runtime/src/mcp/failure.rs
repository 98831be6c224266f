//! How engine errors reach an MCP client.
//!
//! Three kinds: a wrong argument is an `invalid_params` MCP error naming the
//! field; a refusal the caller can act on (not found, lease lost, wrong
//! state) is a tool result with `isError: true`, its message as text and
//! `_meta["lockstep/error"] = {code, message}`; anything else is logged
//! with a correlation id and reaches the client as that id only.
//!
//! A refusal carries no `structuredContent`: a client validates structured
//! content against the tool's output schema even on an error (the
//! TypeScript SDK does, and turns a mismatch into a thrown `-32602`), and a
//! refusal is not the tool's result.
//!
//! **Invariant 26:** no SQL, file path, or error chain from the store reaches a
//! client; internal errors are logged in full on the server.

use super::params::ArgError;
use crate::engine::EngineError;
use crate::engine::agent::AgentError;
use crate::spec::SpecError;
use crate::spec::field::pointer_field;
use rmcp::ErrorData;
use rmcp::model::{CallToolResult, ContentBlock};

/// The `_meta` key of a refusal's `{code, message}`.
pub const ERROR_META: &str = "lockstep/error";

/// Why a tool call did not succeed.
#[derive(Debug)]
pub enum ToolFailure {
    /// The arguments were wrong: `invalid_params`, nothing written.
    Argument(ArgError),
    /// Valid request, refused: a tool error result the model can read.
    Refused { code: &'static str, message: String },
    /// The server failed; the client gets the correlation id.
    Internal { correlation_id: String },
}

impl ToolFailure {
    /// Log an internal error and keep only a correlation id for the client.
    pub fn internal(tool: &str, error: &dyn std::fmt::Display) -> ToolFailure {
        ToolFailure::Internal {
            correlation_id: log_internal(tool, error),
        }
    }

    pub fn from_engine(tool: &str, e: EngineError) -> ToolFailure {
        match e {
            EngineError::Spec(spec) => ToolFailure::Argument(spec_argument(spec)),
            EngineError::NotFound { .. } => ToolFailure::Refused {
                code: "not_found",
                message: e.to_string(),
            },
            EngineError::IllegalTransition(_)
            | EngineError::NotRetryable { .. }
            | EngineError::StageNotReached(_) => ToolFailure::Refused {
                code: "illegal_state",
                message: e.to_string(),
            },
            EngineError::Refused(message) => ToolFailure::Refused {
                code: "refused",
                message,
            },
            other => ToolFailure::internal(tool, &other),
        }
    }

    pub fn from_agent(tool: &str, e: AgentError) -> ToolFailure {
        match e {
            AgentError::Engine(e) => ToolFailure::from_engine(tool, e),
            AgentError::InvalidPlan(field) => ToolFailure::Argument(field),
            AgentError::LeaseLost { .. } => ToolFailure::Refused {
                code: "lease_lost",
                message: e.to_string(),
            },
            AgentError::NotAgentTask(_) => ToolFailure::Refused {
                code: "not_agent_task",
                message: e.to_string(),
            },
        }
    }

    /// The MCP answer: a tool error result, or a protocol error.
    pub fn into_response(self) -> Result<CallToolResult, ErrorData> {
        match self {
            ToolFailure::Argument(a) => Err(a.into_error_data()),
            ToolFailure::Refused { code, message } => {
                let message = super::params::clip(&message, super::params::MAX_MESSAGE_BYTES);
                let mut result = CallToolResult::error(vec![ContentBlock::text(message.clone())]);
                let mut meta = rmcp::model::JsonObject::new();
                meta.insert(
                    ERROR_META.to_string(),
                    serde_json::json!({ "code": code, "message": message }),
                );
                result.meta = Some(rmcp::model::MetaObject(meta));
                Ok(result)
            }
            ToolFailure::Internal { correlation_id } => Err(correlation_error(&correlation_id)),
        }
    }
}

impl From<ArgError> for ToolFailure {
    fn from(a: ArgError) -> Self {
        ToolFailure::Argument(a)
    }
}

/// The protocol error of an internal failure: its correlation id, nothing else.
fn correlation_error(correlation_id: &str) -> ErrorData {
    ErrorData::internal_error(
        format!(
            "internal error (correlation id {correlation_id}); the server's log has the details"
        ),
        Some(serde_json::json!({ "correlation_id": correlation_id })),
    )
}

/// Log an internal error of a request that is not a tool call (resources,
/// prompts) in full; the client gets the correlation id.
pub fn internal_error(what: &str, error: &dyn std::fmt::Display) -> ErrorData {
    correlation_error(&log_internal(what, error))
}

/// Log an internal error in full; returns the correlation id the client may see.
pub fn log_internal(tool: &str, error: &dyn std::fmt::Display) -> String {
    let correlation_id = uuid::Uuid::new_v4().simple().to_string();
    tracing::error!(%correlation_id, tool, error = %error, "MCP tool failed");
    correlation_id
}

/// A spec error about `submit_job`'s `job` argument, with its JSON pointer
/// turned into the argument path (`/stages/1/tasks/0/input` → `job.stages[1].tasks[0].input`).
fn spec_argument(e: SpecError) -> ArgError {
    match e {
        SpecError::Invalid { pointer, message } => {
            ArgError::new(pointer_field("job", &pointer), message)
        }
        SpecError::InFile { source, .. } => spec_argument(*source),
        other => ArgError::new("job", other.to_string()),
    }
}
