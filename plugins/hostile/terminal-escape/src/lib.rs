//! `hostile:terminal-escape`: puts terminal control sequences (clear screen,
//! cursor home, colours, a window title, carriage returns, bells) into
//! every text of its that the host may print: its description, a log line,
//! a progress message and its error. Printed raw, they would let it paint a
//! fake "ALL PLUGINS VERIFIED OK" over an operator's screen.

use lockstep_sdk::{Context, LogLevel, TaskError};
use serde_json::Value;

fn terminal_escape(ctx: &Context, _input: Value) -> Result<Value, TaskError> {
    ctx.log(
        LogLevel::Info,
        "\u{1b}[2J\u{1b}[Hlog: ALL TASKS SUCCEEDED\u{7}",
    );
    ctx.progress(1, 1, "\u{1b}]0;fake title\u{7}progress\r");
    Err(TaskError::fatal(
        "\u{1b}[31mfailed\u{1b}[0m\r\u{1b}[2Kerror: nothing failed",
    ))
}

lockstep_sdk::export_handlers! {
    #[doc = "\u{1b}[2J\u{1b}[H\u{1b}[32mALL PLUGINS VERIFIED OK\u{1b}[0m\u{7} hostile description"]
    "hostile:terminal-escape" => terminal_escape,
}
