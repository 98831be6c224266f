//! Tool arguments: decoding with the path of the offending field, and the
//! checks every argument struct runs before a tool touches the engine.
//!
//! **Invariant 24:** a tool body only ever sees arguments that decoded and
//! passed [`Check`]; anything else is an `invalid_params` MCP error whose
//! message starts with the field (`subtasks[2].title: is empty …`), and no
//! engine call has been made.

use rmcp::ErrorData;
use rmcp::handler::server::common::FromContextPart;
use rmcp::handler::server::tool::ToolCallContext;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;
use std::borrow::Cow;

/// An argument that is wrong: which one, and why (the field errors of
/// [`crate::spec::field`], whose checks the argument structs use).
pub use crate::spec::FieldError as ArgError;
pub use crate::spec::field::{bounded, name, optional_name, optional_text, text};

impl ArgError {
    /// The MCP error a client sees: message `field: why`, and the field in
    /// `data`. Quoted values longer than a few words are shortened to their
    /// start and their length, and the whole is bounded: the value may be
    /// megabytes of hostile text.
    pub fn into_error_data(self) -> ErrorData {
        let field = clip(&shorten_quoted(&self.field), MAX_FIELD_BYTES);
        let reason = clip(&shorten_quoted(&self.message), MAX_MESSAGE_BYTES);
        ErrorData::invalid_params(
            clip(
                &format!("invalid argument {field}: {reason}"),
                MAX_FIELD_BYTES + MAX_MESSAGE_BYTES,
            ),
            Some(serde_json::json!({ "field": field, "reason": reason })),
        )
    }
}

/// Checks an argument struct makes beyond its types (lengths, ranges, emptiness).
pub trait Check {
    fn check(&self) -> Result<(), ArgError>;
}

/// Tool arguments of type `T`, decoded and checked. Named like rmcp's own
/// wrapper so the `#[tool]` macro publishes `T`'s JSON Schema as the input
/// schema; unlike it, decoding errors name the field.
pub struct Parameters<T>(pub T);

impl<T: JsonSchema> JsonSchema for Parameters<T> {
    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }

    fn schema_id() -> Cow<'static, str> {
        T::schema_id()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }

    fn inline_schema() -> bool {
        T::inline_schema()
    }
}

impl<S, T> FromContextPart<ToolCallContext<'_, S>> for Parameters<T>
where
    T: DeserializeOwned + Check,
{
    fn from_context_part(context: &mut ToolCallContext<'_, S>) -> Result<Self, ErrorData> {
        let arguments = context.arguments.take().unwrap_or_default();
        decode::<T>(serde_json::Value::Object(arguments))
            .map(Parameters)
            .map_err(ArgError::into_error_data)
    }
}

/// Decode and check arguments; the error names the field.
pub fn decode<T: DeserializeOwned + Check>(value: serde_json::Value) -> Result<T, ArgError> {
    let decoded: T = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        field_error(&path, &message)
    })?;
    decoded.check()?;
    Ok(decoded)
}

/// serde reports a missing field at its parent's path and an unknown one at
/// its own; name the field itself, once.
fn field_error(path: &str, message: &str) -> ArgError {
    let path = if path == "." { "" } else { path };
    let join = |parent: &str, name: &str| {
        if parent.is_empty() {
            name.to_string()
        } else {
            format!("{parent}.{name}")
        }
    };
    let quoted = message.split('`').nth(1);
    if let (Some(name), true) = (quoted, message.starts_with("missing field")) {
        return ArgError::new(join(path, name), "is required");
    }
    if let (Some(name), true) = (quoted, message.starts_with("unknown field")) {
        let parent = path
            .strip_suffix(name)
            .map(|p| p.strip_suffix('.').unwrap_or(p))
            .unwrap_or(path);
        let expected = message
            .split_once(", expected ")
            .map(|(_, rest)| format!("; expected {rest}"))
            .unwrap_or_default();
        return ArgError::new(
            join(parent, &shorten(name)),
            format!("is not an argument of this tool{expected}"),
        );
    }
    let field = if path.is_empty() {
        "arguments".to_string()
    } else {
        path.to_string()
    };
    ArgError::new(field, message.to_string())
}

// ---------------------------------------------------------------- bounded error texts

/// Longest field path in an error, in bytes.
pub const MAX_FIELD_BYTES: usize = 200;
/// Longest reason (or refusal message), in bytes.
pub const MAX_MESSAGE_BYTES: usize = 500;
/// Quoted values up to this many characters are shown whole.
const SHOWN_WHOLE: usize = 40;
/// How much of a longer quoted value is shown.
const SHOWN_START: usize = 32;

/// `text` cut to at most `max` bytes at a character boundary, marked when cut.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// A long name as its start and its length.
fn shorten(name: &str) -> String {
    let count = name.chars().count();
    if count <= SHOWN_WHOLE {
        return name.to_string();
    }
    let start: String = name.chars().take(SHOWN_START).collect();
    format!("{start}…({count} characters)")
}

/// Every `"…"` or `` `…` `` segment of `message` longer than a few words
/// shortened to its start and its length.
pub fn shorten_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(1024));
    let mut chars = message.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '"' && c != '`' {
            out.push(c);
            continue;
        }
        let mut inside = String::new();
        let mut closed = false;
        while let Some(d) = chars.next() {
            if d == c {
                closed = true;
                break;
            }
            inside.push(d);
            // A backslash escapes the next character inside double quotes.
            if c == '"'
                && d == '\\'
                && let Some(e) = chars.next()
            {
                inside.push(e);
            }
        }
        let count = inside.chars().count();
        out.push(c);
        if count <= SHOWN_WHOLE {
            out.push_str(&inside);
        } else {
            out.extend(inside.chars().take(SHOWN_START));
            out.push('…');
        }
        if closed {
            out.push(c);
        }
        if count > SHOWN_WHOLE {
            out.push_str(&format!(" ({count} characters)"));
        }
    }
    out
}

// ---------------------------------------------------------------- checks used by the argument structs

/// A positive id.
pub fn id(field: &str, value: i64) -> Result<(), ArgError> {
    if value <= 0 {
        return Err(ArgError::new(
            field,
            format!("must be a positive id, got {value}"),
        ));
    }
    Ok(())
}

/// An attempt number as returned by `claim_task` (1 or more).
pub fn attempt(field: &str, value: i32) -> Result<(), ArgError> {
    if value < 1 {
        return Err(ArgError::new(
            field,
            format!("must be the attempt returned by claim_task (1 or more), got {value}"),
        ));
    }
    Ok(())
}
