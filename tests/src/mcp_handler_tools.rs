//! Every registered handler as an MCP tool of its own, driven by a real
//! client (rmcp) against a real `lockstep mcp` process with the example
//! plugins: the tool runs one task durably and returns its output; a
//! schema-invalid argument is `invalid_params` naming the field, and
//! nothing is written; a failing handler is a tool error with its reason.
//! With the fixture plugin `fixture:mcp-conformance` (WIT `mcp` export):
//! the tool names it declares, its input schemas published intact, MCP
//! content results, and its log lines and progress forwarded as it runs.

use crate::mcp_harness::{Client, Db, Refusal, StdioServer, call, eventually, ok};
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
    let dir = PluginDir::new();
    dir.add(guest_artifacts::FIXTURE_MCP_CONFORMANCE);
    let server = StdioServer::start_with_plugins(db, "local", &dir.plugins(), &[]).await;
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
            "test_embedded_resource",
            "test_error_handling",
            "test_image_content",
            "test_multiple_content_types",
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
