//! The job tools over stdio with the real example plugins, and the contract
//! for bad arguments: every tool answers an `invalid_params` error naming
//! the field, and nothing is written.

use crate::mcp_harness::*;
use lockstep::guest_artifacts;
use serde_json::{Value, json};
use std::path::Path;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tool_is_listed_with_an_input_schema() {
    let db = Db::new().await;
    let server = StdioServer::start(&db, "local", &[]).await;
    let tools = server.client.list_all_tools().await.expect("tools/list");
    let mut names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(
        names,
        [
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
        ]
    );
    for tool in &tools {
        assert_eq!(
            tool.input_schema.get("type"),
            Some(&json!("object")),
            "{}",
            tool.name
        );
        assert!(
            tool.output_schema.is_some(),
            "{} has no output schema",
            tool.name
        );
        assert!(
            tool.description.as_ref().is_some_and(|d| d.len() > 40),
            "{} is undocumented",
            tool.name
        );
    }
    let plan = tools
        .iter()
        .find(|t| t.name == "plan_task")
        .expect("plan_task");
    let required = plan
        .input_schema
        .get("required")
        .cloned()
        .unwrap_or_default();
    assert_eq!(required, json!(["goal", "subtasks"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_submitted_watched_and_listed_through_mcp() {
    let db = Db::new().await;
    let server = StdioServer::start_with_plugins(
        &db,
        "local",
        Path::new(guest_artifacts::EXAMPLES_DIR),
        &[],
    )
    .await;
    let c = &server.client;
    let handlers = ok(c, "list_handlers", json!({})).await;
    let names: Vec<&str> = handlers["handlers"]
        .as_array()
        .expect("handlers")
        .iter()
        .filter_map(|h| h["name"].as_str())
        .collect();
    assert!(names.contains(&"example:noop"), "{names:?}");

    let job = json!({
        "name": "three noops",
        "stages": [{ "name": "only", "tasks": [
            { "handler": "example:noop", "input": {} },
            { "handler": "example:noop", "input": {}, "key": "x" },
            { "handler": "example:noop", "input": {}, "depends_on": ["x"] },
        ]}]
    });
    let submitted = ok(
        c,
        "submit_job",
        json!({ "job": job, "idempotency_key": "noops-1" }),
    )
    .await;
    assert_eq!(submitted["created"], true);
    let id = submitted["job_id"].as_i64().expect("job id");
    let again = ok(
        c,
        "submit_job",
        json!({ "job": job, "idempotency_key": "noops-1" }),
    )
    .await;
    assert_eq!(again, json!({ "job_id": id, "created": false }));

    let waited = ok(
        c,
        "wait_job",
        json!({ "job_id": id, "timeout_seconds": 120 }),
    )
    .await;
    assert_eq!(waited["finished"], true);
    assert_eq!(waited["job"]["state"], "succeeded");
    assert_eq!(waited["job"]["done"], 3);
    assert_eq!(waited["job"]["stages"][0]["counts"]["succeeded"], 3);

    let listed = ok(c, "list_jobs", json!({ "state": "succeeded" })).await;
    assert_eq!(listed["jobs"].as_array().expect("jobs").len(), 1);
    assert_eq!(listed["jobs"][0]["name"], "three noops");
    assert_eq!(
        ok(c, "list_jobs", json!({ "state": "running" })).await["jobs"],
        json!([])
    );
    let health = ok(c, "health_check", json!({})).await;
    assert_eq!(health["ok"], true);
    assert_eq!(health["database"], "reachable");
    assert_eq!(health["queue_pending"], 0);
    assert!(health["plugins_loaded"].as_u64().expect("count") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_jobs_pages_newest_first_with_a_cursor() {
    let db = Db::new().await;
    let server = StdioServer::start(&db, "local", &[]).await;
    let c = &server.client;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(
            plan(c, &format!("plan {n}"), &[("a", "A", &[])]).await["job_id"]
                .as_i64()
                .expect("id"),
        );
    }
    let first = ok(c, "list_jobs", json!({ "limit": 2 })).await;
    let page = |v: &Value| -> Vec<i64> {
        v["jobs"]
            .as_array()
            .expect("jobs")
            .iter()
            .filter_map(|j| j["job_id"].as_i64())
            .collect()
    };
    assert_eq!(page(&first), vec![ids[4], ids[3]]);
    let second = ok(
        c,
        "list_jobs",
        json!({ "limit": 2, "cursor": first["next_cursor"] }),
    )
    .await;
    assert_eq!(page(&second), vec![ids[2], ids[1]]);
    let third = ok(
        c,
        "list_jobs",
        json!({ "limit": 2, "cursor": second["next_cursor"] }),
    )
    .await;
    assert_eq!(page(&third), vec![ids[0]]);
    assert_eq!(third["next_cursor"], Value::Null);
    let named = ok(c, "list_jobs", json!({ "name": "plan 3" })).await;
    assert_eq!(page(&named), vec![ids[3]]);
}

/// (tool, arguments, field named, start of the reason)
fn bad_calls() -> Vec<(&'static str, Value, &'static str, &'static str)> {
    let long = "x".repeat(70_000);
    vec![
        (
            "list_handlers",
            json!({ "verbose": true }),
            "verbose",
            "is not an argument of this tool",
        ),
        (
            "health_check",
            json!({ "deep": 1 }),
            "deep",
            "is not an argument of this tool",
        ),
        ("submit_job", json!({}), "job", "is required"),
        ("run_pipeline", json!({}), "path", "is required"),
        (
            "submit_job",
            json!({ "job": { "stages": [] } }),
            "job.name",
            "is required",
        ),
        (
            "submit_job",
            json!({ "job": { "name": "j", "stages": [{ "name": "s", "tasks": [{ "handler": "no:such", "input": {} }] }] } }),
            "job.stages[0].tasks[0].handler",
            "unknown handler",
        ),
        (
            "submit_job",
            json!({ "job": { "name": "j", "stages": [{ "name": "s", "tasks": [{ "handlr": "x" }] }] } }),
            "job.stages[0].tasks[0].handlr",
            "is not an argument of this tool",
        ),
        (
            "get_job",
            json!({ "job_id": "seven" }),
            "job_id",
            "invalid type",
        ),
        (
            "get_job",
            json!({ "job_id": 0 }),
            "job_id",
            "must be a positive id",
        ),
        (
            "list_jobs",
            json!({ "limit": 1000 }),
            "limit",
            "must be between 1 and 200",
        ),
        (
            "list_jobs",
            json!({ "state": "done" }),
            "state",
            "unknown variant",
        ),
        (
            "list_jobs",
            json!({ "cursor": "page-2" }),
            "cursor",
            "is not a cursor returned by list_jobs",
        ),
        (
            "list_jobs",
            json!({ "created_after": 20, "created_before": 10 }),
            "created_before",
            "must be later",
        ),
        (
            "wait_job",
            json!({ "job_id": 1, "timeout_seconds": 1000 }),
            "timeout_seconds",
            "must be between 0 and 300",
        ),
        (
            "wait_job",
            json!({ "timeout_seconds": 1 }),
            "job_id",
            "is required",
        ),
        ("cancel_job", json!({}), "job_id", "is required"),
        (
            "get_task",
            json!({ "task_id": -1 }),
            "task_id",
            "must be a positive id",
        ),
        (
            "retry_task",
            json!({ "task": 1 }),
            "task",
            "is not an argument of this tool",
        ),
        (
            "plan_task",
            json!({ "goal": " ", "subtasks": [{ "title": "t", "instructions": "i" }] }),
            "goal",
            "is empty",
        ),
        (
            "plan_task",
            json!({ "goal": "g", "subtasks": [] }),
            "subtasks",
            "is empty",
        ),
        (
            "plan_task",
            json!({ "goal": "g", "subtasks": [{ "title": "t" }] }),
            "subtasks[0].instructions",
            "is required",
        ),
        (
            "plan_task",
            json!({ "goal": "g", "subtasks": [{ "title": "t", "instructions": long }] }),
            "subtasks[0].instructions",
            "is longer than 65536 characters",
        ),
        (
            "plan_task",
            json!({ "goal": "g", "subtasks": [{ "title": "a", "instructions": "i" }, { "title": "b", "instructions": "i", "depends_on": ["zzz"] }] }),
            "subtasks[1].depends_on[0]",
            "\"zzz\" is neither the key nor the title of a subtask in this plan",
        ),
        (
            "plan_task",
            json!({ "goal": "g", "subtasks": [
                { "key": "a", "title": "A", "instructions": "i", "depends_on": ["b"] },
                { "key": "b", "title": "B", "instructions": "i", "depends_on": ["a"] }
            ] }),
            "subtasks[0].depends_on",
            "",
        ),
        (
            "plan_task",
            json!({ "goal": "g", "subtasks": [{ "key": "k", "title": "a", "instructions": "i" }, { "key": "k", "title": "b", "instructions": "i" }] }),
            "subtasks[1].key",
            "\"k\" is already the key of subtasks[0]",
        ),
        (
            "claim_task",
            json!({ "job_id": -3 }),
            "job_id",
            "must be a positive id",
        ),
        (
            "claim_task",
            json!({ "specialist": "" }),
            "specialist",
            "is empty",
        ),
        (
            "update_task",
            json!({ "task_id": 1, "attempt": 0, "note": "n" }),
            "attempt",
            "must be the attempt returned by claim_task",
        ),
        (
            "update_task",
            json!({ "task_id": 1, "attempt": 1 }),
            "note",
            "is required",
        ),
        (
            "complete_task",
            json!({ "task_id": 1, "attempt": 1, "summary": "  " }),
            "summary",
            "is empty",
        ),
        (
            "complete_task",
            json!({ "task_id": 1, "attempt": 1, "summary": "s", "artifacts": [{ "path": "a.txt" }] }),
            "artifacts[0].kind",
            "is required",
        ),
        (
            "complete_task",
            json!({ "task_id": 1, "attempt": 1, "summary": "s", "artifacts": "a.txt" }),
            "artifacts",
            "invalid type",
        ),
        (
            "fail_task",
            json!({ "task_id": 1, "attempt": 1, "reason": "r" }),
            "retryable",
            "is required",
        ),
        (
            "fail_task",
            json!({ "task_id": 1, "attempt": 1, "reason": "r", "retryable": "yes" }),
            "retryable",
            "invalid type",
        ),
        (
            "complete_task",
            json!({ "task_id": 1, "attempt": 1, "summary": "x".repeat(1_200_000) }),
            "summary",
            "is longer than 65536 characters",
        ),
        (
            "complete_task",
            json!({ "task_id": 1, "attempt": 1, "summary": "x".repeat(2_010_000) }),
            "arguments",
            "are 2010",
        ),
        // Names are bounded in bytes and hold no control characters; no text
        // holds a NUL (PostgreSQL cannot store it, SQLite could).
        (
            "submit_job",
            json!({ "job": { "name": "j", "stages": [{ "name": "s".repeat(300), "tasks": [] }] } }),
            "job.stages[0].name",
            "stage name is 300 bytes, longer than the 256-byte limit",
        ),
        (
            "submit_job",
            json!({ "job": { "name": "j\u{0}", "stages": [{ "name": "s" }] } }),
            "job.name",
            "job name contains the control character U+0000 at byte 1; NUL cannot be stored",
        ),
        (
            "fail_task",
            json!({ "task_id": 1, "attempt": 1, "reason": "a\u{0}b", "retryable": true }),
            "reason",
            "contains the control character U+0000 at byte 1; NUL cannot be stored",
        ),
        (
            "update_task",
            json!({ "task_id": 1, "attempt": 1, "note": "\u{0}" }),
            "note",
            "contains the control character U+0000 at byte 0",
        ),
        (
            "claim_task",
            json!({ "specialist": "a\u{1b}[2Jb" }),
            "specialist",
            "contains the control character U+001B at byte 1; names may only hold printable characters",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_name_the_field_and_write_nothing() {
    let db = Db::new().await;
    let server = StdioServer::start(&db, "local", &["--max-argument-bytes", "2000000"]).await;
    let c = &server.client;
    // One real claimed task, so the task tools would have something to write to.
    let plan = plan(c, "target", &[("a", "A", &[])]).await;
    let task = claim(c, plan["job_id"].as_i64().expect("job"))
        .await
        .expect("claim");
    assert_eq!(task["task_id"], 1);
    for (tool, args, field, reason) in bad_calls() {
        let shown = args.to_string().chars().take(120).collect::<String>();
        match call(c, tool, args).await {
            Err(refusal @ Refusal::Protocol { code: -32602, .. }) => {
                let named = refusal.field().unwrap_or_default();
                assert_eq!(named, field, "{tool} {shown}");
                let message = refusal.message();
                assert!(
                    message.starts_with(&format!("invalid argument {named}: {reason}")),
                    "{tool} {shown}: message {message:?}"
                );
            }
            other => {
                panic!("{tool} {shown}: expected invalid_params naming {field}, got {other:?}")
            }
        }
    }
    // Nothing was written: one job, its one task still running at attempt 1 with no output.
    let jobs = ok(c, "list_jobs", json!({})).await;
    assert_eq!(jobs["jobs"].as_array().expect("jobs").len(), 1);
    let view = ok(c, "get_task", json!({ "task_id": 1 })).await;
    assert_eq!(view["state"], "running");
    assert_eq!(view["attempt"], 1);
    assert_eq!(view["output"], Value::Null);
    let notes = view["recent_events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "task_note")
        .count();
    assert_eq!(notes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasm_task_cannot_be_completed_as_an_agent_task() {
    let db = Db::new().await;
    let server = StdioServer::start_with_plugins(
        &db,
        "local",
        Path::new(guest_artifacts::EXAMPLES_DIR),
        &["--workers", "1"],
    )
    .await;
    let c = &server.client;
    let job = json!({ "name": "wasm", "stages": [{ "name": "s", "tasks": [{ "handler": "example:noop", "input": {} }] }] });
    let id = ok(c, "submit_job", json!({ "job": job })).await["job_id"]
        .as_i64()
        .expect("job");
    ok(
        c,
        "wait_job",
        json!({ "job_id": id, "timeout_seconds": 120 }),
    )
    .await;
    let r = call(
        c,
        "complete_task",
        json!({ "task_id": 1, "attempt": 1, "summary": "mine" }),
    )
    .await;
    assert_eq!(
        r,
        Err(Refusal::Tool {
            code: "not_agent_task".into(),
            message: "task 1 is not an agent task: a WASM worker runs it".into()
        })
    );
    assert_eq!(ok(c, "claim_task", json!({})).await["claimed"], false);
}

/// A job submitted where `example:noop` exists, read by a server whose only
/// plugin is `example:sum`: get_job says what nothing here can run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_job_names_a_ready_handler_no_plugin_here_registers() {
    let db = Db::new().await;
    let job_file = db.dir.path().join("noop.toml");
    std::fs::write(
        &job_file,
        "name = \"orphan\"\n[[stages]]\nname = \"s\"\ntasks = [{ handler = \"example:noop\" }]\n",
    )
    .expect("job file");
    let out = std::process::Command::new(crate::harness::cli_bin())
        .args(["--db", &db.url, "--tenant", "local", "--plugins"])
        .arg(guest_artifacts::EXAMPLES_DIR)
        .arg("--cache-dir")
        .arg(crate::harness::test_cache_dir())
        .arg("submit")
        .arg(&job_file)
        .output()
        .expect("lockstep submit");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let only_sum = db.dir.path().join("only-sum");
    std::fs::create_dir(&only_sum).expect("plugin dir");
    std::fs::copy(
        guest_artifacts::EXAMPLE_SUM,
        only_sum.join("example-sum.wasm"),
    )
    .expect("copy plugin");
    let server = StdioServer::start_with_plugins(&db, "local", &only_sum, &[]).await;
    let job = ok(&server.client, "get_job", json!({ "job_id": 1 })).await;
    assert_eq!(
        job["waiting_for"],
        json!([{ "executor": "wasm", "handler": "example:noop", "registered_here": false }])
    );
    let mut params = rmcp::model::CallToolRequestParams::new("get_job");
    params.arguments = json!({ "job_id": 1 }).as_object().cloned();
    let result = server.client.call_tool(params).await.expect("get_job");
    let text = result.content[0].as_text().expect("text").text.clone();
    assert!(
        text.ends_with("; nothing runs: no plugin in this server registers example:noop"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_quote_a_bounded_part_of_a_bad_value() {
    let db = Db::new().await;
    let server = StdioServer::start(&db, "local", &[]).await;
    let c = &server.client;
    let huge = "7".repeat(100_000);
    let calls = [
        ("get_job", json!({ "job_id": huge }), "job_id"),
        ("list_jobs", json!({ "state": huge }), "state"),
        ("get_job", json!({ "job_id": 1, huge.as_str(): true }), ""),
        (
            "submit_job",
            json!({ "job": { "name": "j", "stages": [{ "name": "s", "tasks": [{ "handler": huge, "input": {} }] }] } }),
            "job.stages[0].tasks[0].handler",
        ),
    ];
    for (tool, args, field) in calls {
        let refusal = call(c, tool, args).await.expect_err(tool);
        let message = refusal.message();
        // A value is shown by its start and its size (submit_job names the
        // limit a handler name broke instead).
        if tool != "submit_job" {
            assert!(
                message.contains("77777777…") && message.contains("(100000 characters)"),
                "{tool}: {message}"
            );
        }
        let named = refusal.field().unwrap_or_default();
        let message = refusal.message();
        assert!(
            matches!(refusal, Refusal::Protocol { code: -32602, .. }),
            "{tool}: {refusal:?}"
        );
        if !field.is_empty() {
            assert_eq!(named, field, "{tool}");
        }
        assert!(named.len() <= 200, "{tool}: field of {} bytes", named.len());
        assert!(
            message.len() <= 600,
            "{tool}: a {}-byte message: {}…",
            message.len(),
            message.chars().take(200).collect::<String>()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_task_takes_details_of_exactly_the_documented_limit() {
    let db = Db::new().await;
    let token = db.create_token("local");
    let stdio = StdioServer::start(&db, "local", &[]).await;
    let http = HttpServer::start(&db, &[]);
    let over_http = http.client(&token).await;
    // `details` may hold 1 Mi characters, however many bytes they take in
    // UTF-8 (4 for U+1D11E) or in JSON (6 for the escape of U+0001).
    let limit = 1024 * 1024;
    let details = [
        "d".repeat(limit),
        "\u{1D11E}".repeat(limit),
        format!("{}\n\"", "\u{1}".repeat(limit - 2)),
    ];
    for (client, transport) in [(&stdio.client, "stdio"), (&over_http, "http")] {
        for (i, details) in details.iter().enumerate() {
            let plan = plan(
                client,
                &format!("big details {transport} {i}"),
                &[("only", "Only", &[])],
            )
            .await;
            let task = claim(client, plan["job_id"].as_i64().expect("job"))
                .await
                .expect("claim");
            let done = ok(
                client,
                "complete_task",
                json!({ "task_id": task["task_id"], "attempt": task["attempt"], "summary": "s", "details": details }),
            )
            .await;
            assert_eq!(done["state"], "succeeded", "{transport} {i}");
            let view = ok(client, "get_task", json!({ "task_id": task["task_id"] })).await;
            assert_eq!(
                view["output"]["details"]
                    .as_str()
                    .map(|d| d.chars().count()),
                Some(limit),
                "{transport} {i}"
            );
        }
        let plan = plan(
            client,
            &format!("too big {transport}"),
            &[("only", "Only", &[])],
        )
        .await;
        let task = claim(client, plan["job_id"].as_i64().expect("job"))
            .await
            .expect("claim");
        let refusal = call(
            client,
            "complete_task",
            json!({ "task_id": task["task_id"], "attempt": task["attempt"], "summary": "s", "details": "d".repeat(limit + 1) }),
        )
        .await
        .expect_err("one character over");
        assert_eq!(refusal.field().as_deref(), Some("details"), "{transport}");
        assert_eq!(
            refusal.message(),
            "invalid argument details: is longer than 1048576 characters",
            "{transport}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_name_submit_job_accepts_list_jobs_can_find() {
    let db = Db::new().await;
    let server = StdioServer::start_with_plugins(
        &db,
        "local",
        Path::new(guest_artifacts::EXAMPLES_DIR),
        &[],
    )
    .await;
    let c = &server.client;
    let mut accepted = 0;
    for length in [1000, 1001, 4096, 4097, 200_000] {
        let name = "n".repeat(length);
        let job = json!({ "name": name, "stages": [{ "name": "s", "tasks": [{ "handler": "example:noop", "input": {} }] }] });
        match call(c, "submit_job", json!({ "job": job })).await {
            Ok(submitted) => {
                accepted += 1;
                let found = ok(c, "list_jobs", json!({ "name": name })).await;
                assert_eq!(
                    found["jobs"][0]["job_id"], submitted["job_id"],
                    "a {length}-character name"
                );
            }
            Err(refusal) => {
                // Refused at submit: list_jobs refuses the same name for the same reason.
                assert_eq!(refusal.field().as_deref(), Some("job.name"), "{refusal:?}");
                let listed = call(c, "list_jobs", json!({ "name": name }))
                    .await
                    .expect_err("a name no job can have");
                assert_eq!(listed.field().as_deref(), Some("name"), "{listed:?}");
            }
        }
    }
    assert!(
        accepted >= 3,
        "names of 1,000 to 4,096 characters are accepted"
    );
}

/// `lockstep … --json` as a process on the server's database.
fn cli_json(db: &Db, args: &[&str]) -> Value {
    let out = std::process::Command::new(crate::harness::cli_bin())
        .args(["--db", &db.url, "--tenant", "local", "--plugins"])
        .arg(db.no_plugins())
        .arg("--cache-dir")
        .arg(crate::harness::test_cache_dir())
        .args(args)
        .output()
        .expect("run lockstep");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// A job view without the figures that move with the clock.
fn timeless(mut job: Value) -> Value {
    let object = job.as_object_mut().expect("a job view");
    object.remove("throughput_per_s");
    object.remove("eta_seconds");
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_the_views_the_tools_return() {
    let db = Db::new().await;
    let server = StdioServer::start(&db, "local", &[]).await;
    let c = &server.client;
    let planned = plan(c, "same views", &[("a", "A", &[]), ("b", "B", &["a"])]).await;
    let job = planned["job_id"].as_i64().expect("job id");
    let task = claim(c, job).await.expect("a is ready");
    complete(c, &task, "a is done").await;
    let job_arg = job.to_string();

    let status = cli_json(&db, &["status", &job_arg, "--json"]);
    let get_job = ok(c, "get_job", json!({ "job_id": job })).await;
    assert_eq!(timeless(status), timeless(get_job));
    for id in [1, 2] {
        let view = cli_json(&db, &["task", &id.to_string(), "--json"]);
        assert_eq!(view, ok(c, "get_task", json!({ "task_id": id })).await);
    }
    let jobs = cli_json(&db, &["jobs", "--json"]);
    assert_eq!(jobs, ok(c, "list_jobs", json!({})).await["jobs"]);
    // What the views hold: the dependency's summary reached the task view
    // as a JSON value, not as the stored text.
    let a = cli_json(&db, &["task", "1", "--json"]);
    assert_eq!(a["output"], json!({ "summary": "a is done" }), "{a}");
    assert_eq!(a["title"], "A", "{a}");
}
