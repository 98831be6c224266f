//! `example:noop`: returns its input unchanged. It does no work on purpose, so
//! that `lockstep bench plugin` measures the cost of instantiating and calling
//! a handler and nothing else.

use lockstep_sdk::{Context, TaskError};
use serde_json::Value;

fn noop(_ctx: &Context, input: Value) -> Result<Value, TaskError> {
    Ok(input)
}

lockstep_sdk::export_handlers! {
    /// Returns its input unchanged as its output (used for benchmarks).
    "example:noop" => noop,
}
