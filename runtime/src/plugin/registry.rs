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

/// WIT `mcp-catalog.argument`: a prompt's argument or a resource template's
/// variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct McpArgument {
    pub name: String,
    pub description: String,
    pub required: bool,
    /// What completion suggests for it.
    pub values: Vec<String>,
}

/// WIT `mcp-catalog.resource`: a resource (or a URI template of them) a
/// handler reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct McpResource {
    pub uri: String,
    pub name: String,
    pub description: String,
    pub mime_type: String,
    /// Template variables; empty for a plain URI.
    pub variables: Vec<McpArgument>,
    pub handler: String,
}

impl McpResource {
    /// True when the URI is a template (holds a `{variable}`).
    pub fn is_template(&self) -> bool {
        self.uri.contains('{')
    }

    /// The variables `uri` gives this resource's URI (template), when it
    /// names this resource: each `{variable}` stands for one non-empty
    /// path segment (no `/`); a plain URI matches only itself.
    pub fn matches(&self, uri: &str) -> Option<Vec<(String, String)>> {
        let parts = template_parts(&self.uri).ok()?;
        let mut rest = uri;
        let mut found = Vec::new();
        let mut parts = parts.iter().peekable();
        while let Some(part) = parts.next() {
            match part {
                TemplatePart::Literal(text) => rest = rest.strip_prefix(text.as_str())?,
                TemplatePart::Variable(name) => {
                    // Up to the next literal's start within this segment.
                    let segment_end = rest.find('/').unwrap_or(rest.len());
                    let end = match parts.peek() {
                        Some(TemplatePart::Literal(next)) => rest[..segment_end]
                            .find(next.as_str())
                            .unwrap_or(segment_end),
                        _ => segment_end,
                    };
                    if end == 0 {
                        return None;
                    }
                    found.push((name.clone(), rest[..end].to_owned()));
                    rest = &rest[end..];
                }
            }
        }
        rest.is_empty().then_some(found)
    }
}

/// A piece of a URI template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Literal(String),
    Variable(String),
}

/// A URI template (RFC 6570 level 1: `{name}`, names of `A-Z a-z 0-9 _`,
/// never two variables side by side) in pieces; a plain URI is one literal.
pub fn template_parts(template: &str) -> Result<Vec<TemplatePart>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while !rest.is_empty() {
        match rest.find(['{', '}']) {
            None => {
                parts.push(TemplatePart::Literal(rest.to_owned()));
                break;
            }
            Some(at) if rest.as_bytes()[at] == b'}' => {
                return Err("a `}` closes no `{`".to_owned());
            }
            Some(at) => {
                if at > 0 {
                    parts.push(TemplatePart::Literal(rest[..at].to_owned()));
                }
                let close = rest[at..].find('}').ok_or("a `{` is never closed")? + at;
                let name = &rest[at + 1..close];
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!(
                        "{{{name}}} is not a variable: use a name of letters, digits and `_`"
                    ));
                }
                if matches!(parts.last(), Some(TemplatePart::Variable(_))) {
                    return Err("two variables side by side cannot be told apart".to_owned());
                }
                parts.push(TemplatePart::Variable(name.to_owned()));
                rest = &rest[close + 1..];
            }
        }
    }
    Ok(parts)
}

/// WIT `mcp-catalog.prompt`: a prompt a handler renders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct McpPrompt {
    pub name: String,
    pub description: String,
    pub arguments: Vec<McpArgument>,
    pub handler: String,
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
