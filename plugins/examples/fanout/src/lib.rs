//! `example:fanout`: spawns `count` tasks into a later stage, each with input
//! `{"value": i}` for i in 1..=count. The first stage of the demo pipeline:
//! fanout → process (one task per value) → sum.

use lockstep_sdk::{Context, TaskError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The most tasks one run may spawn (the host's limit).
const MAX_COUNT: u64 = lockstep_sdk::MAX_SPAWNS as u64;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Input {
    /// How many tasks to spawn; more than 10,000 (the most one task may
    /// spawn) is a fatal error.
    count: u64,
    /// The later stage of this job to spawn into.
    #[serde(default = "default_stage")]
    stage: String,
    /// The handler that runs each spawned task.
    #[serde(default = "default_handler")]
    handler: String,
}

fn default_stage() -> String {
    "process".to_owned()
}

fn default_handler() -> String {
    "example:noop".to_owned()
}

#[derive(Serialize)]
struct Item {
    value: u64,
}

#[derive(Serialize)]
struct Output {
    spawned: u64,
}

fn fanout(ctx: &Context, input: Input) -> Result<Output, TaskError> {
    if input.count > MAX_COUNT {
        return Err(TaskError::fatal(format!(
            "count {} is more than one task may spawn ({MAX_COUNT}); split the work over several tasks",
            input.count
        )));
    }
    for value in 1..=input.count {
        ctx.spawn(&input.stage, &input.handler, &Item { value })?;
    }
    Ok(Output {
        spawned: input.count,
    })
}

lockstep_sdk::export_handlers! {
    /// Spawns `count` tasks (at most 10,000) into a later `stage` (default
    /// "process"), each run by `handler` (default "example:noop") with input
    /// {"value": i} for i = 1..=count; outputs {"spawned": count}.
    "example:fanout" => fanout,
}
