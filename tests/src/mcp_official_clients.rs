//! lockstep driven by the official MCP clients that MCP hosts are built on:
//! the TypeScript SDK client (the agent workflow over stdio and HTTP, every
//! refusal kind read as a tool result), the MCP conformance suite (every
//! server scenario against `lockstep serve --http`), and the MCP Inspector
//! running the client configurations of docs/mcp.md exactly as written.
//! The clients are installed by [`crate::interop_tools`].

use crate::harness::{cli_bin, test_cache_dir};
use crate::interop_tools::{js_dir, node_tools};
use crate::mcp_harness::*;
use crate::plugin_support::PluginDir;
use lockstep::guest_artifacts;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Output;

pub const TOOLS: [&str; 15] = [
    "cancel_job",
    "claim_task",
    "complete_task",
    "fail_task",
    "get_job",
    "get_task",
    "health_check",
    "list_handlers",
    "list_jobs",
    "plan_task",
    "retry_task",
    "run_pipeline",
    "submit_job",
    "update_task",
    "wait_job",
];

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Run a Node command; its stdout when it exits 0.
fn succeed(what: &str, out: std::io::Result<Output>) -> String {
    let out = out.unwrap_or_else(|e| panic!("{what}: cannot start node: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The agent workflow of tests/js/agent_workflow.mjs through the TypeScript SDK.
fn typescript_workflow(connection: Value) -> Value {
    let tools = node_tools();
    let out = tools
        .script(&js_dir().join("agent_workflow.mjs"))
        .arg(connection.to_string())
        .output();
    let stdout = succeed("the TypeScript SDK agent workflow", out);
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("the workflow printed no JSON ({e}): {stdout}"))
}

/// A refusal as the TypeScript SDK hands it to the agent: a result with
/// `isError`, its message as text, `{code, message}` under `_meta`, and no
/// structured content.
fn refusal(code: &str, message: &str) -> Value {
    json!({
        "isError": true,
        "structured": null,
        "meta": { "lockstep/error": { "code": code, "message": message } },
        "text": [message],
    })
}

/// The example handlers, each an MCP tool of its own (`mcp::handler_tools`).
fn handler_tools() -> Vec<String> {
    lockstep::guest_artifacts::EXAMPLES
        .iter()
        .map(|(handler, _)| lockstep::mcp::handler_tools::tool_name(handler))
        .collect()
}

/// Every tool a server with the example plugins lists, sorted: the
/// built-in ones and one per example handler.
fn all_tools() -> Vec<String> {
    let mut all: Vec<String> = TOOLS.iter().map(|t| t.to_string()).collect();
    all.extend(handler_tools());
    all.sort();
    all
}

fn check_workflow(run: &Value) {
    let handlers = handler_tools();
    let listed: Vec<&str> = run["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|t| {
            let name = t["name"].as_str().expect("name");
            // Built-in tools publish an output schema; handler tools cannot.
            let handler = handlers.iter().any(|h| h == name);
            assert_eq!(t["hasOutputSchema"], !handler, "{t}");
            name
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(listed, all_tools());

    let steps = &run["steps"];
    // Every success went through the SDK's output-schema validation: nothing
    // threw but the two protocol errors.
    for (name, step) in steps.as_object().expect("steps") {
        let expected_throw = name == "invalid_params" || name == "unknown_tool";
        assert_eq!(
            step.get("threw").is_some(),
            expected_throw,
            "{name}: {step}"
        );
    }
    let s = |name: &str| &steps[name]["structured"];

    assert_eq!(s("health")["ok"], true);
    assert!(
        s("handlers")["handlers"]
            .as_array()
            .expect("handlers")
            .iter()
            .any(|h| h["name"] == "example:noop"),
        "{}",
        s("handlers")
    );
    let plan = s("plan");
    assert_eq!(plan["created"], true);
    assert_eq!(plan["tasks"][0]["state"], "pending");
    assert_eq!(plan["tasks"][1]["state"], "blocked");
    assert_eq!(s("claim_design")["task"]["title"], "Design the schema");
    assert_eq!(s("claim_design")["task"]["attempt"], 1);
    assert_eq!(
        s("nothing_ready"),
        &json!({ "claimed": false, "task": null })
    );
    assert_eq!(s("update_design")["attempt"], 1);
    assert_eq!(s("complete_design")["state"], "succeeded");
    assert_eq!(s("complete_design")["job_state"], "running");
    assert_eq!(
        s("claim_build")["task"]["dependencies"],
        json!([{
            "task_id": 1, "key": "design", "title": "Design the schema", "state": "succeeded",
            "summary": "users(id, email unique)", "next_action": "write the endpoint",
            "artifacts": [{ "path": "db/schema.sql", "kind": "file" }], "output": null
        }])
    );
    assert_eq!(s("complete_build")["job_state"], "succeeded");
    assert_eq!(s("get_job")["state"], "succeeded");
    assert_eq!(s("get_job")["done"], 2);
    assert_eq!(s("wait_plan")["finished"], true);
    assert_eq!(
        s("get_task")["output"]["details"],
        "CREATE TABLE users (...)"
    );
    assert_eq!(s("submit"), &json!({ "job_id": 2, "created": true }));
    assert_eq!(s("wait_submitted")["finished"], true);
    assert_eq!(s("wait_submitted")["job"]["state"], "succeeded");
    let names: Vec<&Value> = s("list_jobs")["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| &j["name"])
        .collect();
    assert_eq!(names, [&json!("noops"), &json!("Ship email login")]);
    // wait_job reported progress to the SDK's onprogress: of 1 task, never
    // going back. The SDK drops a notification that reaches it after the
    // result (rmcp does not order the two under load), so the final count is
    // asserted on the result above, not on the last notification.
    let progress = run["progress"].as_array().expect("progress");
    assert!(!progress.is_empty(), "at least one progress notification");
    let values: Vec<f64> = progress
        .iter()
        .map(|p| {
            assert_eq!(p["total"], json!(1), "progress of one task: {p}");
            p["progress"].as_f64().expect("progress is a number")
        })
        .collect();
    assert!(
        values.windows(2).all(|w| w[0] < w[1]) && values.iter().all(|v| (0.0..=1.0).contains(v)),
        "progress values rise within 0..=1: {values:?}"
    );
    assert_eq!(s("wait_submitted")["job"]["done"], 1);

    assert_eq!(
        steps["not_found"],
        refusal("not_found", "job 999999 not found")
    );
    assert_eq!(
        steps["lease_lost"],
        refusal(
            "lease_lost",
            "task 1 attempt 1 is no longer yours: it was already completed"
        )
    );
    assert_eq!(
        steps["illegal_state"],
        refusal(
            "illegal_state",
            "task 1 is succeeded: only a dead or cancelled task can be retried"
        )
    );
    assert_eq!(
        steps["not_agent_task"],
        refusal(
            "not_agent_task",
            "task 3 is not an agent task: a WASM worker runs it"
        )
    );
    assert_eq!(
        steps["not_enabled"],
        refusal(
            "not_enabled",
            "this server runs no pipelines: its operator can start it with --pipelines-root DIR"
        )
    );
    assert_eq!(steps["invalid_params"]["code"], -32602);
    assert_eq!(steps["invalid_params"]["data"]["field"], "job_id");
    assert_eq!(steps["unknown_tool"]["code"], -32602);

    assert_eq!(s("fail_solo")["state"], "dead");
    assert_eq!(s("fail_solo")["job_state"], "failed");
    assert_eq!(
        s("retry_solo"),
        &json!({ "task_id": 4, "state": "pending" })
    );
    assert_eq!(
        s("cancel_solo"),
        &json!({ "job_id": 3, "state": "cancelled" })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_sdk_runs_the_agent_workflow_over_stdio() {
    let db = Db::new().await;
    let cache = test_cache_dir();
    let run = typescript_workflow(json!({
        "transport": "stdio",
        "command": cli_bin(),
        "args": [
            "--db", db.url, "--tenant", "local",
            "--plugins", guest_artifacts::EXAMPLES_DIR,
            "--cache-dir", cache,
            "mcp",
        ],
    }));
    check_workflow(&run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_sdk_runs_the_agent_workflow_over_http() {
    let db = Db::new().await;
    let token = db.create_token("local");
    let server = HttpServer::start_with_plugins(&db, Path::new(guest_artifacts::EXAMPLES_DIR), &[]);
    let run = typescript_workflow(json!({
        "transport": "http",
        "url": server.url,
        "token": token,
    }));
    check_workflow(&run);
    // The workflow ended its session with DELETE; the server still serves others.
    let client = server.client(&token).await;
    assert_eq!(
        ok(&client, "get_job", json!({ "job_id": 1 })).await["state"],
        "succeeded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_passes_every_server_scenario() {
    let tools = node_tools();
    let suite = tools.module("@modelcontextprotocol/conformance/dist/index.js");
    let listed = succeed(
        "conformance list",
        tools.script(&suite).args(["list", "--server"]).output(),
    );
    let scenarios: BTreeSet<String> = listed
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    assert!(scenarios.len() >= 30, "{listed}");

    let db = Db::new().await;
    // The suite's fixture tools, resources and prompts, as a real plugin's
    // handlers offered through the WIT `mcp` and `mcp-catalog` exports; its
    // sampling, elicitation and reconnection tools ask the suite's client
    // through the `agent` import (plugins/fixtures/mcp-conformance).
    let fixtures = PluginDir::new();
    fixtures.add(guest_artifacts::FIXTURE_MCP_CONFORMANCE);
    let server = HttpServer::start_with_plugins(
        &db,
        &fixtures.plugins(),
        &["--no-auth", "--rate-limit", "0"],
    );
    let results = db.dir.path().join("conformance");
    let out = tools
        .script(&suite)
        .args(["server", "--suite", "all", "--url", &server.url])
        .arg("-o")
        .arg(&results)
        .output();
    // Exit 0: no scenario has a failure or a warning.
    let summary = succeed("the conformance suite", out);

    // One result directory per scenario, named server-<scenario>-<time>.
    let mut checks: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for entry in std::fs::read_dir(&results).expect("conformance results") {
        let path = entry.expect("result entry").path();
        let dir = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        let scenario = scenarios
            .iter()
            .filter(|s| dir.starts_with(&format!("server-{s}-20")))
            .max_by_key(|s| s.len())
            .unwrap_or_else(|| panic!("a result for no known scenario: {dir}"))
            .clone();
        let file = std::fs::read_to_string(path.join("checks.json")).expect("checks.json");
        let parsed: Vec<Value> = serde_json::from_str(&file).expect("checks are JSON");
        checks.insert(scenario, parsed);
    }
    assert_eq!(
        checks.keys().cloned().collect::<BTreeSet<_>>(),
        scenarios,
        "every server scenario ran"
    );
    for (scenario, results) in &checks {
        for check in results {
            assert!(
                check["status"] == "SUCCESS" || check["status"] == "INFO",
                "{scenario}: {check}\n{summary}"
            );
        }
    }
    let succeeded = |scenario: &str, id: &str| {
        assert!(
            checks[scenario]
                .iter()
                .any(|c| c["id"] == id && c["status"] == "SUCCESS"),
            "{scenario}: {id} did not succeed: {:?}",
            checks[scenario]
        );
    };
    // The tools that ask the client: it was asked, and they answered.
    succeeded("tools-call-sampling", "tools-call-sampling");
    succeeded("tools-call-elicitation", "tools-call-elicitation");
    for id in [
        "string-default",
        "integer-default",
        "number-default",
        "enum-default",
        "boolean-default",
    ] {
        succeeded(
            "elicitation-sep1034-defaults",
            &format!("elicitation-sep1034-{id}"),
        );
    }
    for id in [
        "untitled-single",
        "titled-single",
        "legacy-enumnames",
        "untitled-multi",
        "titled-multi",
    ] {
        succeeded(
            "elicitation-sep1330-enums",
            &format!("elicitation-sep1330-{id}"),
        );
    }
    // test_reconnection's stream was closed mid-call and its result came on
    // the resumed stream (an INFO here would mean it came on the first one).
    for id in [
        "server-sse-priming-event",
        "server-sse-retry-field",
        "server-sse-disconnect-resume",
    ] {
        succeeded("server-sse-polling", id);
    }
    // Besides the protocol's core, lockstep's own logging, resources and
    // prompts pass the scenarios that exercise them, and the fixture
    // plugin's handler tools, resources and prompts pass theirs.
    for own in [
        "logging-set-level",
        "resources-list",
        "prompts-list",
        "tools-call-simple-text",
        "tools-call-image",
        "tools-call-audio",
        "tools-call-embedded-resource",
        "tools-call-mixed-content",
        "tools-call-with-logging",
        "tools-call-error",
        "tools-call-with-progress",
        "tools-call-sampling",
        "tools-call-elicitation",
        "elicitation-sep1034-defaults",
        "elicitation-sep1330-enums",
        "server-sse-polling",
        "json-schema-2020-12",
        "resources-read-text",
        "resources-read-binary",
        "resources-templates-read",
        "prompts-get-simple",
        "prompts-get-with-args",
        "prompts-get-embedded-resource",
        "prompts-get-with-image",
        "completion-complete",
        "resources-subscribe",
        "resources-unsubscribe",
    ] {
        assert!(checks.contains_key(own), "{own}");
    }
}

// ------------------------------------------------------------ docs/mcp.md

fn docs() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/mcp.md"))
        .expect("docs/mcp.md")
}

/// The fenced blocks of `language` in `markdown`.
fn fenced(markdown: &str, language: &str) -> Vec<String> {
    let open = format!("```{language}\n");
    markdown
        .split(&open)
        .skip(1)
        .map(|rest| rest.split("\n```").next().unwrap_or_default().to_string())
        .collect()
}

/// Shell words of one command line (double quotes group; no escapes in docs).
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    words.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(word);
    }
    words
}

/// The docs' example values, and what the test uses instead.
struct Local {
    db: String,
    url: String,
    token: String,
}

impl Local {
    fn apply(&self, text: &str) -> String {
        text.replace("sqlite:///home/me/work/lockstep.db", &self.db)
            .replace("/home/me/work/plugins", guest_artifacts::EXAMPLES_DIR)
            .replace("http://127.0.0.1:7300/mcp", &self.url)
            .replace("lst_6f1c…", &self.token)
    }
}

/// Run the Inspector CLI with `arguments`; the JSON it printed.
fn inspector(arguments: &[String]) -> Value {
    let tools = node_tools();
    let cli = tools.module("@modelcontextprotocol/inspector/clients/launcher/build/index.js");
    // A first start compiles the example plugins: allow more than the
    // Inspector's 15 s.
    let out = tools
        .script(&cli)
        .args(arguments)
        .args(["--connect-timeout", "300000"])
        .output();
    let stdout = succeed(&format!("the Inspector with {arguments:?}"), out);
    let start = stdout
        .find('{')
        .unwrap_or_else(|| panic!("no JSON: {stdout}"));
    serde_json::from_str(stdout[start..].trim())
        .unwrap_or_else(|e| panic!("the Inspector printed no JSON ({e}): {stdout}"))
}

fn tool_names(listed: &Value) -> Vec<String> {
    let mut names: Vec<String> = listed["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|t| t["name"].as_str().expect("name").to_string())
        .collect();
    names.sort();
    names
}

/// `lockstep` in a documented command line is the binary under test.
fn lockstep_program(words: &mut [String]) {
    let at = words
        .iter()
        .position(|w| w == "lockstep")
        .unwrap_or_else(|| panic!("no lockstep command in {words:?}"));
    words[at] = cli_bin().to_string();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_configurations_in_docs_mcp_md_work() {
    let db = Db::new().await;
    let token = db.create_token("me");
    let server = HttpServer::start(&db, &[]);
    let local = Local {
        db: db.url.clone(),
        url: server.url.clone(),
        token,
    };
    let docs = docs();
    let shell: Vec<String> = fenced(&docs, "sh")
        .iter()
        .flat_map(|b| b.lines().map(str::to_string).collect::<Vec<_>>())
        .collect();
    let line = |prefix: &str| -> Vec<String> {
        let found = shell
            .iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("docs/mcp.md has no command starting {prefix:?}"));
        words(&local.apply(found))
    };
    let json_blocks = fenced(&docs, "json");
    let config = |marker: &str| -> Value {
        let block = json_blocks
            .iter()
            .find(|b| b.contains("\"mcpServers\"") && b.contains(marker))
            .unwrap_or_else(|| panic!("docs/mcp.md has no mcpServers block with {marker}"));
        // The JSON as written must parse before anything is replaced.
        let _: Value = serde_json::from_str(block)
            .unwrap_or_else(|e| panic!("the mcpServers JSON in docs/mcp.md does not parse: {e}"));
        serde_json::from_str(&local.apply(block)).expect("the localized JSON parses")
    };
    let config_file = |name: &str, mut config: Value| -> String {
        if config["mcpServers"]["lockstep"]["command"] == "lockstep" {
            config["mcpServers"]["lockstep"]["command"] = json!(cli_bin());
        }
        let path = db.dir.path().join(name);
        std::fs::write(&path, config.to_string()).expect("write the config file");
        path.display().to_string()
    };
    let health = |result: &Value, handlers: bool| {
        assert_eq!(result["structuredContent"]["ok"], true, "{result}");
        let names = &result["structuredContent"]["handlers"];
        assert_eq!(
            names
                .as_array()
                .expect("handlers")
                .contains(&json!("example:noop")),
            handlers,
            "{result}"
        );
    };
    let health_call: Vec<String> = ["--method", "tools/call", "--tool-name", "health_check"]
        .map(String::from)
        .to_vec();

    // stdio: the Claude Code command, started by the Inspector.
    let mut claude = line("claude mcp add lockstep -- ");
    let command = claude.split_off(claude.iter().position(|w| w == "--").expect("--") + 1);
    let mut command = command;
    lockstep_program(&mut command);
    let mut args = vec!["--cli".to_string()];
    args.extend(command.clone());
    args.extend(["--method".to_string(), "tools/list".to_string()]);
    assert_eq!(tool_names(&inspector(&args)), all_tools());

    // stdio: the mcpServers JSON (Claude Desktop, Cursor, .mcp.json), read by the Inspector.
    let stdio = config_file("stdio.json", config("\"command\": \"lockstep\""));
    let mut args: Vec<String> = ["--cli", "--config", &stdio, "--server", "lockstep"]
        .map(String::from)
        .to_vec();
    args.extend(health_call.clone());
    health(&inspector(&args), true);

    // stdio: the Inspector's own command line.
    let mut inspector_line = line("npx @modelcontextprotocol/inspector --cli lockstep ");
    inspector_line.drain(..2);
    lockstep_program(&mut inspector_line);
    assert_eq!(tool_names(&inspector(&inspector_line)), all_tools());

    // HTTP: the mcpServers JSON with the token header.
    let http = config_file("http.json", config("\"type\": \"http\""));
    let mut args: Vec<String> = ["--cli", "--config", &http, "--server", "lockstep"]
        .map(String::from)
        .to_vec();
    args.extend(health_call);
    health(&inspector(&args), false);

    // HTTP: the Claude Code command's URL and header, and the Inspector's line.
    let claude_http = line("claude mcp add --transport http lockstep ");
    assert_eq!(claude_http[6], server.url);
    let header = claude_http
        .iter()
        .skip_while(|w| *w != "--header")
        .nth(1)
        .expect("--header value")
        .clone();
    let args: Vec<String> = [
        "--cli",
        &server.url,
        "--header",
        &header,
        "--method",
        "tools/list",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(tool_names(&inspector(&args)), TOOLS);
    let mut inspector_http = line("npx @modelcontextprotocol/inspector --cli http");
    inspector_http.drain(..2);
    assert_eq!(tool_names(&inspector(&inspector_http)), TOOLS);
}
