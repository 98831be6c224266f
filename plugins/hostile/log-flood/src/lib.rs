//! `hostile:log-flood`: logs 20,000 lines of 5,000 characters and reports
//! progress as often, then succeeds. The host must keep a bounded number of
//! bounded lines per attempt, so a chatty or malicious handler cannot fill
//! the database.

use lockstep_sdk::{Context, LogLevel, TaskError};
use serde_json::{Value, json};

/// Lines logged.
const LINES: u64 = 20_000;

/// Characters per line.
const LINE_CHARS: usize = 5_000;

fn log_flood(ctx: &Context, _input: Value) -> Result<Value, TaskError> {
    let line = "x".repeat(LINE_CHARS);
    for i in 0..LINES {
        ctx.log(LogLevel::Info, &line);
        ctx.progress(i + 1, LINES, &line);
    }
    Ok(json!({ "logged": LINES }))
}

lockstep_sdk::export_handlers! {
    /// Logs 20,000 lines of 5,000 characters, with as many progress reports.
    "hostile:log-flood" => log_flood,
}
