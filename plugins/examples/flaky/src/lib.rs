//! `example:flaky`: fails with a retryable error on its first `fail_times`
//! attempts and succeeds after, so retries and backoff can be watched and
//! tested with a real plugin. Each failing attempt logs a line first, so a
//! dead task has log lines to show beside its error.

use lockstep_sdk::{Context, LogLevel, TaskError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Input {
    /// How many attempts fail before one succeeds.
    #[serde(default = "default_fail_times")]
    fail_times: u32,
}

fn default_fail_times() -> u32 {
    2
}

#[derive(Serialize)]
struct Output {
    attempt: u32,
}

fn flaky(ctx: &Context, input: Input) -> Result<Output, TaskError> {
    let attempt = ctx.attempt();
    if attempt <= input.fail_times {
        ctx.log(
            LogLevel::Warn,
            &format!("attempt {attempt} of {} planned failures", input.fail_times),
        );
        return Err(TaskError::retryable(format!(
            "attempt {attempt} fails on purpose (fail_times = {})",
            input.fail_times
        )));
    }
    Ok(Output { attempt })
}

lockstep_sdk::export_handlers! {
    /// Fails retryably while the attempt number is at most `fail_times`
    /// (default 2), then outputs {"attempt": a}.
    "example:flaky" => flaky,
}
