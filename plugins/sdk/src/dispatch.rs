//! Glue between the WIT `handler` export and typed handler functions:
//! schema derivation for `describe`, JSON decoding and encoding for `run`.

use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::lockstep::plugin::types::{
    HandlerInfo, Outcome, Task, TaskError as WitTaskError,
};
use crate::{Context, TaskError};

/// The shape every handler function has.
pub type HandlerFn<I, O> = fn(&Context, I) -> Result<O, TaskError>;

/// Describes one handler: its name, its description (doc comment lines
/// joined into one paragraph) and the JSON Schema of its input type.
pub fn describe<I: JsonSchema, O>(name: &str, doc: &str, _handler: HandlerFn<I, O>) -> HandlerInfo {
    let schema = schemars::schema_for!(I);
    HandlerInfo {
        name: name.to_owned(),
        description: doc
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
        // A derived schema is always a JSON value; `{}` (anything) is only a
        // fallback that keeps describe() total.
        input_schema: serde_json::to_string(&schema).unwrap_or_else(|_| "{}".to_owned()),
    }
}

/// Runs one task through a typed handler.
pub fn run<I: DeserializeOwned, O: Serialize>(
    task: Task,
    handler: HandlerFn<I, O>,
) -> Result<Outcome, WitTaskError> {
    let input: I = serde_json::from_str(&task.input)
        .map_err(|e| WitTaskError::Fatal(input_error(&task.handler, &task.input, &e)))?;
    let ctx = Context::new(task);
    let output = handler(&ctx, input)?;
    let output = serde_json::to_string(&output).map_err(|e| {
        WitTaskError::Fatal(format!(
            "the output of `{}` could not be encoded as JSON: {e}",
            ctx.handler()
        ))
    })?;
    Ok(Outcome {
        output,
        spawn: ctx.into_spawned(),
    })
}

/// serde_json names a missing or unknown field itself, but for a value of the
/// wrong type it gives only a position; then the message also quotes the input
/// up to that position, which ends with the field's name and value.
fn input_error(handler: &str, input: &str, error: &serde_json::Error) -> String {
    let mut message = format!("invalid input for `{handler}`: {error}");
    if error.is_data() && !message.contains("field `") {
        let before = text_before(input, error.line(), error.column());
        if !before.is_empty() {
            message.push_str(&format!(" (after `{before}`)"));
        }
    }
    message
}

/// Up to 40 bytes of `input` ending at serde_json's 1-based line and column,
/// on one line.
fn text_before(input: &str, line: usize, column: usize) -> String {
    let line_start: usize = input
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    let mut end = (line_start + column).min(input.len());
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    let mut start = end.saturating_sub(40);
    while !input.is_char_boundary(start) {
        start += 1;
    }
    input[start..end]
        .trim_start()
        .replace(['\n', '\r', '\t'], " ")
}

/// The error for a task naming a handler this component does not export.
pub fn unknown_handler(task: &Task, known: &[&str]) -> Result<Outcome, WitTaskError> {
    Err(WitTaskError::Fatal(format!(
        "this component has no handler `{}`; it exports: {}",
        task.handler,
        known.join(", ")
    )))
}
