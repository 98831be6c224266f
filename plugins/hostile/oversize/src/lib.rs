//! `hostile:oversize`: hands the host more than it accepts, chosen by the
//! input, without the SDK's typed layer (so nothing is copied twice in the
//! guest):
//! - `{"output_bytes": N}`: an output of N bytes (a JSON string);
//! - `{"depth": D}`: an output of arrays nested D deep;
//! - `{"error_bytes": N, "retryable": true}`: an error message of N bytes;
//! - `{"spawns": C, "spawn_bytes": B, "spawn_depth": D, "stage": S,
//!   "handler": H}`: C spawned tasks into S for H, each input B bytes long
//!   (or, with `spawn_depth`, arrays nested D deep).
//!
//! The host must refuse each before it stores (or even copies) it.

use lockstep_sdk::__private::{Guest, HandlerInfo, Outcome, Task, WitTaskError};
use lockstep_sdk::bindings::lockstep::plugin::types::Spawn;
use serde_json::Value;

struct Oversize;

/// A JSON string of exactly `bytes` bytes (at least 2: the quotes).
fn string_of(bytes: u64) -> String {
    let inner = bytes.saturating_sub(2) as usize;
    let mut text = String::with_capacity(inner + 2);
    text.push('"');
    text.extend(std::iter::repeat_n('x', inner));
    text.push('"');
    text
}

/// Arrays nested `depth` deep: `[[[]]]`.
fn nested(depth: u64) -> String {
    let depth = depth as usize;
    let mut text = String::with_capacity(2 * depth);
    text.extend(std::iter::repeat_n('[', depth));
    text.extend(std::iter::repeat_n(']', depth));
    text
}

fn number(input: &Value, field: &str) -> Option<u64> {
    input.get(field).and_then(Value::as_u64)
}

fn text(input: &Value, field: &str, default: &str) -> String {
    input
        .get(field)
        .and_then(Value::as_str)
        .unwrap_or(default)
        .to_owned()
}

impl Guest for Oversize {
    fn describe() -> Vec<HandlerInfo> {
        vec![HandlerInfo {
            name: "hostile:oversize".to_owned(),
            description: "Hostile: returns outputs, errors and spawns larger or deeper than the host accepts.".to_owned(),
            input_schema: "{}".to_owned(),
        }]
    }

    fn run(task: Task) -> Result<Outcome, WitTaskError> {
        let input: Value = serde_json::from_str(&task.input)
            .map_err(|e| WitTaskError::Fatal(format!("bad input: {e}")))?;
        if let Some(bytes) = number(&input, "error_bytes") {
            let message = "e".repeat(bytes as usize);
            return Err(if input.get("retryable") == Some(&Value::Bool(true)) {
                WitTaskError::Retryable(message)
            } else {
                WitTaskError::Fatal(message)
            });
        }
        let output = match (number(&input, "output_bytes"), number(&input, "depth")) {
            (Some(bytes), _) => string_of(bytes),
            (None, Some(depth)) => nested(depth),
            (None, None) => "{}".to_owned(),
        };
        let mut spawn = Vec::new();
        if let Some(count) = number(&input, "spawns") {
            let stage = text(&input, "stage", "next");
            let handler = text(&input, "handler", "example:noop");
            for _ in 0..count {
                let input = match number(&input, "spawn_depth") {
                    Some(depth) => nested(depth),
                    None => string_of(number(&input, "spawn_bytes").unwrap_or(2)),
                };
                spawn.push(Spawn {
                    stage: stage.clone(),
                    handler: handler.clone(),
                    input,
                });
            }
        }
        Ok(Outcome { output, spawn })
    }
}

lockstep_sdk::bindings::__lockstep_export_plugin!(Oversize with_types_in lockstep_sdk::bindings);
