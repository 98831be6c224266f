//! `hostile:mcp-tools`: describes itself properly (handlers
//! `hostile:mcp-tools` and `hostile:mcp-tools-2`), then misbehaves when the
//! host asks its `mcp` export for tools, in the way the file `/config/mode`
//! (a directory the test grants) names:
//! - `hang`: never returns;
//! - `unknown-handler`: offers a handler `describe()` does not list;
//! - `name:NAME`: offers its handler as the tool NAME;
//! - `same-name`: offers both handlers under one name;
//! - `same-handler`: offers one handler twice, under two names;
//! - anything else (or no file): offers its handlers as `hostile_tool` and
//!   `hostile_tool_2`.
//!
//! The host must refuse the plugin with the reason and keep serving the
//! others.

use std::hint::black_box;

wit_bindgen::generate!({
    world: "mcp-plugin",
    path: "../../../wit",
});

use exports::lockstep::plugin::handler::{Guest as Handler, HandlerInfo, Outcome, Task, TaskError};
use exports::lockstep::plugin::mcp::{Guest as Mcp, ResultFormat, Tool};

const HANDLERS: [&str; 2] = ["hostile:mcp-tools", "hostile:mcp-tools-2"];

fn tool(handler: &str, name: &str) -> Tool {
    Tool {
        handler: handler.to_owned(),
        name: name.to_owned(),
        format: ResultFormat::Json,
    }
}

struct Hostile;

impl Handler for Hostile {
    fn describe() -> Vec<HandlerInfo> {
        HANDLERS
            .iter()
            .map(|name| HandlerInfo {
                name: (*name).to_owned(),
                description: "Hostile: misbehaves in mcp tools() as /config/mode says.".to_owned(),
                input_schema: "{}".to_owned(),
            })
            .collect()
    }

    fn run(_task: Task) -> Result<Outcome, TaskError> {
        Ok(Outcome {
            output: "{}".to_owned(),
            spawn: Vec::new(),
        })
    }
}

impl Mcp for Hostile {
    fn tools() -> Vec<Tool> {
        let mode = std::fs::read_to_string("/config/mode").unwrap_or_default();
        let mode = mode.trim();
        let [first, second] = HANDLERS;
        match mode {
            "hang" => {
                let mut spins = 0u64;
                loop {
                    spins = black_box(spins.wrapping_add(1));
                }
            }
            "unknown-handler" => vec![tool("hostile:nobody", "nobody")],
            "same-name" => vec![tool(first, "twin"), tool(second, "twin")],
            "same-handler" => vec![tool(first, "one"), tool(first, "two")],
            _ => match mode.strip_prefix("name:") {
                Some(name) => vec![tool(first, name)],
                None => vec![tool(first, "hostile_tool"), tool(second, "hostile_tool_2")],
            },
        }
    }
}

export!(Hostile);
