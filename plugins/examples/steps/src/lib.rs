//! `example:steps`: slow work done in steps. It reports progress after each
//! step and asks the host whether its job was cancelled before each one, so
//! a cancelled job frees its worker at the next step instead of at the
//! task's time limit. The pattern to copy for any long-running handler.

use lockstep_sdk::{Context, TaskError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Input {
    /// How many steps to take.
    #[schemars(range(min = 1, max = 1_000_000))]
    steps: u64,
    /// How long each step takes, in milliseconds (default 10).
    #[serde(default = "default_step_ms")]
    #[schemars(range(max = 60_000))]
    step_ms: u64,
}

fn default_step_ms() -> u64 {
    10
}

#[derive(Serialize)]
struct Output {
    steps: u64,
}

fn steps(ctx: &Context, input: Input) -> Result<Output, TaskError> {
    for step in 0..input.steps {
        // The host answers from memory and asks the database at most every
        // 250 ms, so checking on every step is cheap.
        if ctx.cancelled() {
            return Err(TaskError::fatal(format!(
                "cancelled after {step} of {} steps",
                input.steps
            )));
        }
        std::thread::sleep(Duration::from_millis(input.step_ms));
        ctx.progress(step + 1, input.steps, "working");
    }
    Ok(Output { steps: input.steps })
}

lockstep_sdk::export_handlers! {
    /// Takes `steps` steps of `step_ms` milliseconds (default 10), reporting
    /// progress after each and stopping early if its job is cancelled;
    /// outputs {"steps": n}.
    "example:steps" => steps,
}
