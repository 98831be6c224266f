//! `hostile:mcp-tools`: describes itself properly (handlers
//! `hostile:mcp-tools` and `hostile:mcp-tools-2`), then misbehaves when the
//! host asks its `mcp` export for tools (or its `mcp-catalog` export for
//! resources and prompts), in the way the file `/config/mode` (a directory
//! the test grants) names:
//! - `hang`: never returns;
//! - `unknown-handler`: offers a handler `describe()` does not list;
//! - `name:NAME`: offers its handler as the tool NAME;
//! - `same-name`: offers both handlers under one name;
//! - `same-handler`: offers one handler twice, under two names;
//! - `resource-lockstep`, `resource-unknown-handler`,
//!   `resource-bad-template`, `resource-twice`, `prompt-twice`,
//!   `prompt-bad-name`: a resource or prompt of that fault;
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
use exports::lockstep::plugin::mcp_catalog::{Guest as Catalog, Prompt, Resource};

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
        let mode = mode();
        let [first, second] = HANDLERS;
        match mode.as_str() {
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

fn mode() -> String {
    std::fs::read_to_string("/config/mode")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn resource(uri: &str, handler: &str) -> Resource {
    Resource {
        uri: uri.to_owned(),
        name: "hostile".to_owned(),
        description: String::new(),
        mime_type: "text/plain".to_owned(),
        variables: Vec::new(),
        handler: handler.to_owned(),
    }
}

fn prompt(name: &str) -> Prompt {
    Prompt {
        name: name.to_owned(),
        description: String::new(),
        arguments: Vec::new(),
        handler: HANDLERS[0].to_owned(),
    }
}

impl Catalog for Hostile {
    fn resources() -> Vec<Resource> {
        match mode().as_str() {
            "resource-lockstep" => vec![resource("lockstep://jobs/1", HANDLERS[0])],
            "resource-unknown-handler" => vec![resource("test://x", "hostile:nobody")],
            "resource-bad-template" => vec![resource("test://{a}{b}", HANDLERS[0])],
            "resource-twice" => vec![
                resource("test://x", HANDLERS[0]),
                resource("test://x", HANDLERS[1]),
            ],
            _ => Vec::new(),
        }
    }

    fn prompts() -> Vec<Prompt> {
        match mode().as_str() {
            "prompt-twice" => vec![prompt("twice"), prompt("twice")],
            "prompt-bad-name" => vec![prompt("a prompt")],
            _ => Vec::new(),
        }
    }
}

export!(Hostile);
