//! Every registered handler as an MCP tool of its own, driven by a real
//! client (rmcp) against a real `lockstep mcp` process with the example
//! plugins: the tool runs one task durably and returns its output; a
//! schema-invalid argument is `invalid_params` naming the field, and
//! nothing is written; a failing handler is a tool error with its reason.

use crate::mcp_harness::{Db, Refusal, StdioServer, call, ok};
use lockstep::guest_artifacts;
use lockstep::mcp::handler_tools::tool_name;
use serde_json::json;
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
