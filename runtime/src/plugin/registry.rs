//! The registered handler names: which plugin provides each, its
//! description and its compiled input schema.
//!
//! **Invariants:** a name is provided by exactly one plugin (a later plugin
//! claiming it is refused, naming both files); there is no fallback handler, so a
//! lookup of an unregistered name is an [`UnknownHandler`] error listing the
//! registered names; every registered schema is valid JSON and compiles as a
//! JSON Schema, so input validation never meets a broken schema.

use serde::Serialize;
use std::collections::BTreeMap;

/// What a handler says about itself in `describe()` (and, when its
/// component exports `mcp`, the tool it is offered as).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HandlerInfo {
    pub name: String,
    pub description: String,
    /// The input JSON Schema, parsed.
    pub input_schema: serde_json::Value,
    /// The MCP tool its component's `mcp.tools()` declared for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_tool: Option<McpTool>,
}

/// A handler's MCP tool as its component declared it (WIT `mcp.tool`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct McpTool {
    /// The tool name (1 to 64 of `A-Z a-z 0-9 _ - . /`).
    pub name: String,
    /// How the tool's result is made from the handler's output.
    pub result: McpResult,
}

/// WIT `mcp.result-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum McpResult {
    /// The output JSON as text (and structured content when an object).
    Json,
    /// The output is an array of MCP content blocks.
    Content,
}

/// A lookup for a name no plugin provides.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown handler {name:?}; registered handlers: {}", list_or_none(.registered))]
pub struct UnknownHandler {
    pub name: String,
    /// Registered names, sorted.
    pub registered: Vec<String>,
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// A task input that does not satisfy its handler's schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error(transparent)]
    UnknownHandler(#[from] UnknownHandler),
    /// `pointer` is the JSON pointer of the failing field (`""` for the
    /// input as a whole).
    #[error("input for handler {handler} is invalid at {}: {message}", describe_pointer(.pointer))]
    Invalid {
        handler: String,
        pointer: String,
        message: String,
    },
}

fn describe_pointer(pointer: &str) -> String {
    if pointer.is_empty() {
        "the top level".to_owned()
    } else {
        pointer.to_owned()
    }
}

/// Why a `describe()` result cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("handler {handler:?}: input schema is not valid JSON: {reason}")]
    NotJson { handler: String, reason: String },
    #[error("handler {handler:?}: input schema is not a valid JSON Schema: {reason}")]
    NotSchema { handler: String, reason: String },
}

/// One registered handler.
pub(crate) struct HandlerEntry {
    pub(crate) info: HandlerInfo,
    pub(crate) validator: std::sync::Arc<jsonschema::Validator>,
    /// Index of the providing plugin in the host's plugin list.
    pub(crate) plugin: usize,
}

impl std::fmt::Debug for HandlerEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerEntry")
            .field("info", &self.info)
            .field("plugin", &self.plugin)
            .finish_non_exhaustive()
    }
}

/// Longest schema error message kept: `jsonschema` messages quote the
/// offending value, which may be a megabyte of hostile input.
const MAX_MESSAGE_CHARS: usize = 200;

fn cut(mut text: String) -> String {
    if let Some((at, _)) = text.char_indices().nth(MAX_MESSAGE_CHARS) {
        text.truncate(at);
        text.push('…');
    }
    text
}

/// Parse and compile a handler's input schema.
pub(crate) fn compile_schema(
    handler: &str,
    schema_text: &str,
) -> Result<(serde_json::Value, jsonschema::Validator), SchemaError> {
    let schema: serde_json::Value =
        serde_json::from_str(schema_text).map_err(|e| SchemaError::NotJson {
            handler: handler.to_owned(),
            reason: e.to_string(),
        })?;
    let validator = jsonschema::validator_for(&schema).map_err(|e| SchemaError::NotSchema {
        handler: handler.to_owned(),
        reason: cut(e.to_string()),
    })?;
    Ok((schema, validator))
}

/// The handler table of a host.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub(crate) handlers: BTreeMap<String, HandlerEntry>,
}

impl Registry {
    pub(crate) fn get(&self, name: &str) -> Result<&HandlerEntry, UnknownHandler> {
        self.handlers.get(name).ok_or_else(|| UnknownHandler {
            name: name.to_owned(),
            registered: self.handlers.keys().cloned().collect(),
        })
    }

    /// The index of the plugin that registered `name`, if one did.
    pub(crate) fn owner(&self, name: &str) -> Option<usize> {
        self.handlers.get(name).map(|e| e.plugin)
    }

    /// Register a handler (the caller checked [`Registry::owner`]: a taken
    /// name is never replaced).
    pub(crate) fn insert(&mut self, entry: HandlerEntry) {
        self.handlers
            .entry(entry.info.name.clone())
            .or_insert(entry);
    }

    pub(crate) fn validate(&self, name: &str, input: &serde_json::Value) -> Result<(), InputError> {
        let entry = self.get(name)?;
        match entry.validator.iter_errors(input).next() {
            None => Ok(()),
            Some(err) => {
                let mut pointer = err.instance_path().to_string();
                // A missing required property fails at its parent; name the
                // property itself.
                if let jsonschema::error::ValidationErrorKind::Required { property } = err.kind()
                    && let Some(p) = property.as_str()
                {
                    pointer.push('/');
                    pointer.push_str(&p.replace('~', "~0").replace('/', "~1"));
                }
                Err(InputError::Invalid {
                    handler: name.to_owned(),
                    pointer,
                    message: cut(err.to_string()),
                })
            }
        }
    }
}
