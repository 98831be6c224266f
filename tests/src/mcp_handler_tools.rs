//! Every registered handler as an MCP tool of its own, driven by a real
//! client (rmcp) against a real `lockstep mcp` process with the example
//! plugins: the tool runs one task durably and returns its output; a
//! schema-invalid argument is `invalid_params` naming the field, and
//! nothing is written; a failing handler is a tool error with its reason.
//! With the fixture plugin `fixture:mcp-conformance` (WIT `mcp` export):
//! the tool names it declares, its input schemas published intact, MCP
//! content results, and its log lines and progress forwarded as it runs.

use crate::harness::{cli_bin, test_cache_dir};
use crate::mcp_harness::{
    Answers, Client, Db, Recorder, Refusal, StdioServer, call, eventually, ok,
};
use crate::plugin_support::PluginDir;
use lockstep::guest_artifacts;
use lockstep::mcp::handler_tools::tool_name;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use serde_json::{Value, json};
use std::path::Path;

#[test]
fn handler_names_map_to_mcp_tool_names() {
    assert_eq!(tool_name("example:sum"), "example.sum");
    assert_eq!(tool_name("a-b_c.d"), "a-b_c.d");
    assert_eq!(tool_name("team/x:émoji✓"), "team_x._moji_");
}

async fn server(db: &Db) -> StdioServer {
    StdioServer::start_with_plugins(db, "local", Path::new(guest_artifacts::EXAMPLES_DIR), &[])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_handler_is_a_tool_with_its_own_schema() {
    let db = Db::new().await;
    let server = server(&db).await;
    let tools = server.client.list_all_tools().await.expect("tools/list");
    let mut handler_tools: Vec<&str> = tools
        .iter()
        .map(|t| t.name.as_ref())
        .filter(|n| n.starts_with("example."))
        .collect();
    handler_tools.sort();
    let mut expected: Vec<String> = guest_artifacts::EXAMPLES
        .iter()
        .map(|(handler, _)| tool_name(handler))
        .collect();
    expected.sort();
    assert_eq!(handler_tools, expected);

    let steps = tools
        .iter()
        .find(|t| t.name == "example.steps")
        .expect("example.steps");
    assert_eq!(steps.input_schema.get("type"), Some(&json!("object")));
    assert_eq!(steps.input_schema["required"], json!(["steps"]));
    assert!(
        steps.input_schema["properties"]["steps"].is_object(),
        "{:?}",
        steps.input_schema
    );
    // noop takes any JSON value: its input is the one argument `input`.
    let noop = tools
        .iter()
        .find(|t| t.name == "example.noop")
        .expect("example.noop");
    assert_eq!(noop.input_schema["required"], json!(["input"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calling_a_handler_tool_runs_a_job_and_returns_its_output() {
    let db = Db::new().await;
    let server = server(&db).await;
    let out = ok(
        &server.client,
        "example.steps",
        json!({"steps": 3, "step_ms": 1}),
    )
    .await;
    assert_eq!(out, json!({"steps": 3}));
    let out = ok(
        &server.client,
        "example.noop",
        json!({"input": {"echo": [1, 2]}}),
    )
    .await;
    assert_eq!(out, json!({"echo": [1, 2]}));

    // Both ran as durable jobs of the caller's tenant.
    let jobs = ok(&server.client, "list_jobs", json!({})).await;
    let jobs = jobs["jobs"].as_array().expect("jobs");
    let mut names: Vec<&str> = jobs.iter().filter_map(|j| j["name"].as_str()).collect();
    names.sort();
    assert_eq!(names, ["example.noop", "example.steps"]);
    assert!(jobs.iter().all(|j| j["state"] == "succeeded"), "{jobs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_invalid_argument_names_the_field_and_writes_nothing() {
    let db = Db::new().await;
    let server = server(&db).await;
    for (args, field) in [
        (json!({"steps": "three"}), "steps"),
        (json!({}), "steps"),
        (json!({"steps": 1, "step_ms": -5}), "step_ms"),
    ] {
        let refused = call(&server.client, "example.steps", args.clone())
            .await
            .expect_err("schema-invalid arguments are refused");
        match &refused {
            Refusal::Protocol { code, .. } => assert_eq!(*code, -32602, "{args}: {refused:?}"),
            other => panic!("{args}: expected invalid_params, got {other:?}"),
        }
        assert_eq!(
            refused.field().as_deref(),
            Some(field),
            "{args}: {refused:?}"
        );
        assert!(
            refused
                .message()
                .starts_with(&format!("invalid argument {field}: ")),
            "{refused:?}"
        );
    }
    let refused = call(&server.client, "example.noop", json!({}))
        .await
        .expect_err("noop needs `input`");
    assert_eq!(refused.field().as_deref(), Some("input"));

    let jobs = ok(&server.client, "list_jobs", json!({})).await;
    assert_eq!(jobs["jobs"], json!([]), "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handler_is_a_tool_error_with_its_reason() {
    let db = Db::new().await;
    let server = server(&db).await;
    let refused = call(
        &server.client,
        "example.wordcount",
        json!({"path": "/no/such/file.txt"}),
    )
    .await
    .expect_err("wordcount of a missing file fails");
    match &refused {
        Refusal::Tool { code, message } => {
            assert_eq!(code, "task_failed");
            assert!(
                message.starts_with("handler example:wordcount failed in job ")
                    && message.contains("cannot read /no/such/file.txt"),
                "{message}"
            );
        }
        other => panic!("expected a tool error, got {other:?}"),
    }
}

// ------------------------------------------------- plugin-declared tools

/// A stdio server with only the conformance fixture plugin.
async fn fixture_server(db: &Db) -> (PluginDir, StdioServer) {
    fixture_server_with(db, &[], Recorder::default()).await
}

/// A stdio server with only the conformance fixture plugin, started with
/// `extra` flags, whose client is `client`.
async fn fixture_server_with(
    db: &Db,
    extra: &[&str],
    client: Recorder,
) -> (PluginDir, StdioServer) {
    let dir = PluginDir::new();
    dir.add(guest_artifacts::FIXTURE_MCP_CONFORMANCE);
    let server = StdioServer::start_with_client(db, "local", &dir.plugins(), extra, client).await;
    (dir, server)
}

/// Call `tool` with `args` and return the raw result (content results carry
/// no structured content, so `call` does not fit).
async fn raw_call(client: &Client, tool: &str, args: Value) -> CallToolResult {
    let mut params = CallToolRequestParams::new(tool.to_string());
    params.arguments = args.as_object().cloned();
    client
        .call_tool(params)
        .await
        .unwrap_or_else(|e| panic!("{tool}: {e:?}"))
}

fn content(result: &CallToolResult) -> Value {
    serde_json::to_value(&result.content).expect("content is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_names_its_tools_and_its_input_schemas_are_published_intact() {
    let db = Db::new().await;
    let (_dir, server) = fixture_server(&db).await;
    let tools = server.client.list_all_tools().await.expect("tools/list");
    let builtin = crate::mcp_official_clients::TOOLS;
    let mut offered: Vec<&str> = tools
        .iter()
        .map(|t| t.name.as_ref())
        .filter(|n| !builtin.contains(n))
        .collect();
    offered.sort();
    // Handlers the plugin declares no tool for keep their default names.
    assert_eq!(
        offered,
        [
            "conformance.prompt-with-arguments",
            "conformance.prompt-with-embedded-resource",
            "conformance.prompt-with-image",
            "conformance.simple-prompt",
            "conformance.static-binary",
            "conformance.static-text",
            "conformance.template-data",
            "conformance.watched",
            "json_schema_2020_12_tool",
            "test_audio_content",
            "test_elicitation",
            "test_elicitation_sep1034_defaults",
            "test_elicitation_sep1330_enums",
            "test_embedded_resource",
            "test_error_handling",
            "test_image_content",
            "test_multiple_content_types",
            "test_reconnection",
            "test_sampling",
            "test_simple_text",
            "test_tool_with_logging",
            "test_tool_with_progress",
        ]
    );
    let schema = |name: &str| {
        let tool = tools.iter().find(|t| t.name == name).expect(name);
        Value::Object((*tool.input_schema).clone())
    };
    assert_eq!(
        schema("test_simple_text"),
        json!({ "type": "object", "properties": {}, "additionalProperties": false })
    );
    // Every 2020-12 keyword as the plugin wrote it: $schema, $defs with an
    // $anchor, $ref, allOf/anyOf, if/then/else.
    assert_eq!(
        schema("json_schema_2020_12_tool"),
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "$defs": { "address": {
                "$anchor": "addressDef",
                "type": "object",
                "properties": { "street": { "type": "string" }, "city": { "type": "string" } }
            } },
            "properties": {
                "name": { "type": "string" },
                "address": { "$ref": "#/$defs/address" },
                "contactMethod": { "type": "string", "enum": ["phone", "email"] },
                "phone": { "type": "string" },
                "email": { "type": "string" }
            },
            "allOf": [{ "anyOf": [{ "required": ["phone"] }, { "required": ["email"] }] }],
            "if": { "properties": { "contactMethod": { "const": "phone" } }, "required": ["contactMethod"] },
            "then": { "required": ["phone"] },
            "else": { "required": ["email"] },
            "additionalProperties": false
        })
    );
    // The schema is the one arguments are checked against, $ref and all.
    let received = ok(
        &server.client,
        "json_schema_2020_12_tool",
        json!({ "name": "Ana", "email": "ana@example.com", "address": { "city": "Porto" } }),
    )
    .await;
    assert_eq!(
        received,
        json!({ "received": { "name": "Ana", "email": "ana@example.com", "address": { "city": "Porto" } } })
    );
    for bad in [
        json!({ "name": "Ana" }),
        json!({ "contactMethod": "phone", "email": "ana@example.com" }),
        json!({ "email": "a@b", "address": { "city": 7 } }),
    ] {
        let refused = call(&server.client, "json_schema_2020_12_tool", bad.clone())
            .await
            .expect_err("a schema-invalid argument");
        assert!(
            matches!(refused, Refusal::Protocol { code: -32602, .. }),
            "{bad}: {refused:?}"
        );
    }
    let jobs = ok(&server.client, "list_jobs", json!({})).await;
    assert_eq!(
        jobs["jobs"].as_array().map(Vec::len),
        Some(1),
        "only the valid call ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_tool_answers_with_the_blocks_its_handler_output() {
    let db = Db::new().await;
    let (_dir, server) = fixture_server(&db).await;
    let c = &server.client;
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC";

    let simple = raw_call(c, "test_simple_text", json!({})).await;
    assert_eq!(
        content(&simple),
        json!([{ "type": "text", "text": "This is a simple text response for testing." }])
    );
    assert_eq!(simple.structured_content, None);
    assert_ne!(simple.is_error, Some(true));

    let image = raw_call(c, "test_image_content", json!({})).await;
    assert_eq!(
        content(&image),
        json!([{ "type": "image", "data": png, "mimeType": "image/png" }])
    );
    let audio = raw_call(c, "test_audio_content", json!({})).await;
    assert_eq!(content(&audio)[0]["type"], "audio");
    assert_eq!(content(&audio)[0]["mimeType"], "audio/wav");
    let embedded = raw_call(c, "test_embedded_resource", json!({})).await;
    assert_eq!(
        content(&embedded),
        json!([{ "type": "resource", "resource": {
            "uri": "test://embedded-resource",
            "mimeType": "text/plain",
            "text": "This is an embedded resource content."
        } }])
    );
    let mixed = raw_call(c, "test_multiple_content_types", json!({})).await;
    assert_eq!(
        content(&mixed),
        json!([
            { "type": "text", "text": "Multiple content types test:" },
            { "type": "image", "data": png, "mimeType": "image/png" },
            { "type": "resource", "resource": {
                "uri": "test://mixed-content-resource",
                "mimeType": "application/json",
                "text": "{\"test\":\"data\",\"value\":123}"
            } }
        ])
    );

    // A handler error is an isError result whose text is the error.
    let failed = call(c, "test_error_handling", json!({})).await;
    let jobs = ok(c, "list_jobs", json!({ "state": "failed" })).await;
    let job = jobs["jobs"][0]["job_id"].as_i64().expect("the failed job");
    assert_eq!(
        failed,
        Err(Refusal::Tool {
            code: "task_failed".into(),
            message: format!(
                "handler conformance:error failed in job {job}: This tool intentionally returns an error for testing"
            ),
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(deprecated)]
async fn a_handler_tool_forwards_its_log_lines_and_progress_while_it_runs() {
    use rmcp::model::{LoggingLevel, SetLevelRequestParams};
    let db = Db::new().await;
    let (_dir, server) = fixture_server(&db).await;
    let c = &server.client;
    let logs = c.service().logs.clone();
    let progress = c.service().progress.clone();

    // No level set: nothing. Above the lines' level: nothing either.
    raw_call(c, "test_tool_with_logging", json!({})).await;
    c.set_level(SetLevelRequestParams::new(LoggingLevel::Warning))
        .await
        .expect("setLevel");
    raw_call(c, "test_tool_with_logging", json!({})).await;
    c.set_level(SetLevelRequestParams::new(LoggingLevel::Debug))
        .await
        .expect("setLevel");
    let done = raw_call(c, "test_tool_with_logging", json!({})).await;
    assert_eq!(
        content(&done),
        json!([{ "type": "text", "text": "Tool with logging executed successfully" }])
    );
    eventually("three log lines", || async {
        (logs.lock().expect("logs").len() >= 3).then_some(())
    })
    .await;
    // The third call's job: 3 (the first two ran too).
    let line = |message: &str| {
        json!({
            "level": "info",
            "logger": "lockstep",
            "data": { "job_id": 3, "task_id": 3, "message": message },
        })
    };
    assert_eq!(
        *logs.lock().expect("logs"),
        [
            line("Tool execution started"),
            line("Tool processing data"),
            line("Tool execution completed"),
        ]
    );

    // rmcp's client gives every request a progress token.
    let done = raw_call(c, "test_tool_with_progress", json!({})).await;
    assert_eq!(
        content(&done),
        json!([{ "type": "text", "text": "Tool with progress executed successfully" }])
    );
    eventually("three progress notifications", || async {
        (progress.lock().expect("progress").len() >= 3).then_some(())
    })
    .await;
    let seen: Vec<(f64, Option<f64>, Option<String>)> = progress
        .lock()
        .expect("progress")
        .iter()
        .map(|p| (p.progress, p.total, p.message.clone()))
        .collect();
    assert_eq!(
        seen,
        [
            (0.0, Some(100.0), Some("started".to_owned())),
            (50.0, Some(100.0), Some("halfway".to_owned())),
            (100.0, Some(100.0), Some("done".to_owned())),
        ]
    );
    // The progress tool logs nothing.
    assert_eq!(logs.lock().expect("logs").len(), 3);
}

// ------------------------------------------------- asking the agent (WIT `agent`)

/// The text of a result's one text block.
fn only_text(result: &CallToolResult) -> String {
    let blocks = content(result);
    assert_eq!(blocks.as_array().map(Vec::len), Some(1), "{blocks}");
    blocks[0]["text"].as_str().expect("a text block").to_owned()
}

/// The part of `text` after `prefix`, as JSON.
fn json_after(text: &str, prefix: &str) -> Value {
    let rest = text
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{text:?} starts with {prefix:?}"));
    serde_json::from_str(rest).unwrap_or_else(|e| panic!("{rest:?} is JSON: {e}"))
}

fn answers(elicit: Value) -> Answers {
    Answers {
        sample: json!({
            "role": "assistant",
            "content": { "type": "text", "text": "Paris." },
            "model": "test-model",
            "stopReason": "endTurn"
        }),
        elicit,
        never_elicit: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_tool_asks_the_agent_that_called_it_and_a_decline_is_an_answer() {
    let db = Db::new().await;
    let accept = json!({
        "action": "accept",
        "content": { "username": "ana", "email": "ana@example.com" }
    });
    let (_dir, server) = fixture_server_with(&db, &[], Recorder::answering(answers(accept))).await;
    let c = &server.client;

    let sampled = raw_call(
        c,
        "test_sampling",
        json!({ "prompt": "Capital of France?" }),
    )
    .await;
    assert_eq!(only_text(&sampled), "LLM response: Paris.");
    let elicited = raw_call(c, "test_elicitation", json!({ "message": "Who are you?" })).await;
    assert_eq!(
        json_after(
            &only_text(&elicited),
            "User response: action=accept, content="
        ),
        json!({ "username": "ana", "email": "ana@example.com" })
    );
    // What the client was asked: the handler's requests, as MCP sent them.
    let asked = c.service().asked.lock().expect("asked").clone();
    let methods: Vec<&str> = asked.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(methods, ["sampling/createMessage", "elicitation/create"]);
    let sample = &asked[0].1;
    assert_eq!(sample["maxTokens"], 100);
    assert_eq!(
        sample["messages"],
        json!([{ "role": "user", "content": { "type": "text", "text": "Capital of France?" } }])
    );
    let elicit = &asked[1].1;
    assert_eq!(elicit["message"], "Who are you?");
    assert_eq!(
        elicit["requestedSchema"],
        json!({
            "type": "object",
            "properties": {
                "username": { "type": "string", "description": "User's response" },
                "email": { "type": "string", "description": "User's email address" }
            },
            "required": ["username", "email"]
        })
    );

    // A user who declines answers: the handler gets the decline, not an error.
    let db = Db::new().await;
    let decline = json!({ "action": "decline" });
    let (_dir, server) = fixture_server_with(&db, &[], Recorder::answering(answers(decline))).await;
    let declined = raw_call(
        &server.client,
        "test_elicitation",
        json!({ "message": "Who are you?" }),
    )
    .await;
    assert_ne!(declined.is_error, Some(true));
    assert_eq!(
        only_text(&declined),
        "User response: action=decline, content=null"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_the_capability_is_not_asked_and_the_handler_gets_why() {
    let db = Db::new().await;
    // rmcp's client declares neither sampling nor elicitation by default.
    let (_dir, server) = fixture_server(&db).await;
    let c = &server.client;
    let refusal = |job: u32, message: &str| {
        Err(Refusal::Tool {
            code: "task_failed".into(),
            message: message.replace("{job}", &job.to_string()),
        })
    };
    assert_eq!(
        call(c, "test_sampling", json!({ "prompt": "hi" })).await,
        refusal(
            1,
            "handler conformance:sampling failed in job {job}: sampling failed (unsupported): the MCP client that called this tool did not declare the `sampling` capability, so it cannot answer sampling/createMessage"
        )
    );
    assert_eq!(
        call(c, "test_elicitation", json!({ "message": "hi" })).await,
        refusal(
            2,
            "handler conformance:elicitation failed in job {job}: elicitation failed (unsupported): the MCP client that called this tool did not declare the `elicitation` capability, so it cannot answer elicitation/create"
        )
    );
    // Over stdio there is no stream to release.
    assert_eq!(
        call(c, "test_reconnection", json!({})).await,
        refusal(
            3,
            "handler conformance:reconnection failed in job {job}: releasing the connection failed (unsupported): the MCP client that called this tool is connected over stdio, which has no stream to release"
        )
    );
    assert_eq!(*c.service().asked.lock().expect("asked"), []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_no_tool_call_waits_on_has_no_agent_and_ends_as_its_handler_decided() {
    let db = Db::new().await;
    // An agent that would answer is connected to the server that runs the
    // task, but the task was submitted from the command line: it is not
    // that agent's to answer.
    let (dir, server) = fixture_server_with(
        &db,
        &[],
        Recorder::answering(answers(json!({ "action": "cancel" }))),
    )
    .await;
    let job = db.dir.path().join("ask.toml");
    std::fs::write(
        &job,
        "name = \"ask\"\n[[stages]]\nname = \"s\"\ntasks = [{ handler = \"conformance:sampling\", input = { prompt = \"hi\" } }]\n",
    )
    .expect("write the job file");
    let out = std::process::Command::new(cli_bin())
        .args(["--db", &db.url])
        .arg("--plugins")
        .arg(dir.plugins())
        .arg("--cache-dir")
        .arg(test_cache_dir())
        .arg("submit")
        .arg(&job)
        .output()
        .expect("lockstep submit");
    assert!(out.status.success(), "{out:?}");
    let c = &server.client;
    let waited = ok(c, "wait_job", json!({ "job_id": 1, "timeout_seconds": 60 })).await;
    assert_eq!(waited["job"]["state"], "failed", "{waited}");
    let task = ok(c, "get_task", json!({ "task_id": 1 })).await;
    assert_eq!(task["state"], "dead", "{task}");
    assert_eq!(
        task["error"],
        "sampling failed (no-agent): no agent is attached to this task: agent.sample reaches only the MCP agent whose handler tool call waits on the task in the process that runs it, and none waits on job 1"
    );
    assert_eq!(*c.service().asked.lock().expect("asked"), []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_tool_call_ends_the_question_its_handler_waits_on() {
    use rmcp::model::{CallToolRequest, ClientRequest};
    use rmcp::service::PeerRequestOptions;
    let db = Db::new().await;
    let mut user = answers(json!({ "action": "accept" }));
    user.never_elicit = true;
    let (_dir, server) = fixture_server_with(&db, &[], Recorder::answering(user)).await;
    let c = &server.client;
    let mut params = CallToolRequestParams::new("test_elicitation");
    params.arguments = json!({ "message": "Who are you?" }).as_object().cloned();
    let call = c
        .send_cancellable_request(
            ClientRequest::CallToolRequest(CallToolRequest::new(params)),
            PeerRequestOptions::no_options(),
        )
        .await
        .expect("tools/call sent");
    eventually("the user is asked", || async {
        (!c.service().asked.lock().expect("asked").is_empty()).then_some(())
    })
    .await;
    call.cancel(Some("the user walked away".into()))
        .await
        .expect("notifications/cancelled sent");
    // The handler got an error instead of waiting on: its task is over.
    let waited = ok(c, "wait_job", json!({ "job_id": 1, "timeout_seconds": 60 })).await;
    assert_eq!(waited["job"]["state"], "failed", "{waited}");
    let task = ok(c, "get_task", json!({ "task_id": 1 })).await;
    assert_eq!(
        task["error"],
        "elicitation failed (failed): the MCP tool call waiting on this task ended before its agent answered elicitation/create"
    );
}

/// The front door bounds the answer it writes as JSON before handing it to
/// the task (the sandbox bounds the request and checks the answer again:
/// guest_programs::fixture_mcp_conformance_asks_its_agent_within_the_limits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(deprecated)]
async fn an_answer_over_the_limit_is_an_error_the_handler_gets() {
    use lockstep::limits::MAX_AGENT_ANSWER_BYTES;
    let db = Db::new().await;
    let huge_answer = json!({
        "role": "assistant",
        "content": { "type": "text", "text": "b".repeat(MAX_AGENT_ANSWER_BYTES) },
        "model": "test-model"
    });
    let client = Recorder::answering(Answers {
        sample: huge_answer.clone(),
        elicit: json!({ "action": "cancel" }),
        never_elicit: false,
    });
    let (_dir, server) = fixture_server_with(&db, &[], client).await;
    let c = &server.client;
    // The answer as the server writes it back: rmcp's own serialization.
    let answer: rmcp::model::CreateMessageResult =
        serde_json::from_value(huge_answer).expect("a sampling result");
    let answer = serde_json::to_string(&answer).expect("JSON");
    assert_eq!(
        call(c, "test_sampling", json!({ "prompt": "hi" })).await,
        Err(Refusal::Tool {
            code: "task_failed".into(),
            message: format!(
                "handler conformance:sampling failed in job 1: sampling failed (failed): the agent's answer to sampling/createMessage is {} bytes, larger than the {MAX_AGENT_ANSWER_BYTES}-byte limit",
                answer.len()
            ),
        })
    );
    assert_eq!(c.service().asked.lock().expect("asked").len(), 1);
}
