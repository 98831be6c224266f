//! MCP over streamable HTTP with real `lockstep serve --http` processes:
//! bearer tokens, their roles and tenant isolation, 401/429/403 at the door, many
//! concurrent agents on one plan, and wait_job's progress notifications.

use crate::mcp_harness::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}"#;

/// A raw POST to /mcp with optional headers; the status and headers.
async fn raw_post(url: &str, body: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_string());
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.send().await.expect("HTTP request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_cannot_reach_each_others_jobs() {
    let db = Db::new().await;
    let acme_token = db.create_token("acme");
    let globex_token = db.create_token("globex");
    let server = HttpServer::start(&db, &[]);
    let acme = server.client(&acme_token).await;
    let globex = server.client(&globex_token).await;

    let plan = plan(
        &acme,
        "acme's secret plan",
        &[("a", "Step one", &[]), ("b", "Step two", &[])],
    )
    .await;
    let job = plan["job_id"].as_i64().expect("job");
    let claimed = claim(&acme, job).await.expect("acme claims its own task");
    let task = claimed["task_id"].as_i64().expect("task");
    let not_found_job = Err(Refusal::Tool {
        code: "not_found".into(),
        message: format!("job {job} not found"),
    });
    let not_found_task = Err(Refusal::Tool {
        code: "not_found".into(),
        message: format!("task {task} not found"),
    });

    assert_eq!(
        call(&globex, "get_job", json!({ "job_id": job })).await,
        not_found_job
    );
    assert_eq!(
        call(
            &globex,
            "wait_job",
            json!({ "job_id": job, "timeout_seconds": 1 })
        )
        .await,
        not_found_job
    );
    assert_eq!(
        call(&globex, "cancel_job", json!({ "job_id": job })).await,
        not_found_job
    );
    assert_eq!(
        call(&globex, "claim_task", json!({ "job_id": job })).await,
        not_found_job
    );
    assert_eq!(
        call(&globex, "get_task", json!({ "task_id": task })).await,
        not_found_task
    );
    assert_eq!(
        call(&globex, "retry_task", json!({ "task_id": task })).await,
        not_found_task
    );
    assert_eq!(
        call(
            &globex,
            "complete_task",
            json!({ "task_id": task, "attempt": 1, "summary": "stolen" })
        )
        .await,
        not_found_task
    );
    assert_eq!(
        call(
            &globex,
            "fail_task",
            json!({ "task_id": task, "attempt": 1, "reason": "x", "retryable": false })
        )
        .await,
        not_found_task
    );
    assert_eq!(
        call(
            &globex,
            "update_task",
            json!({ "task_id": task, "attempt": 1, "note": "x" })
        )
        .await,
        not_found_task
    );
    let globex_jobs = ok(&globex, "list_jobs", json!({})).await;
    assert_eq!(globex_jobs["jobs"], json!([]));
    let globex_claim = ok(&globex, "claim_task", json!({})).await;
    assert_eq!(
        globex_claim["claimed"], false,
        "globex must not claim acme's pending task"
    );

    // Nothing globex tried changed acme's job.
    let status = ok(&acme, "get_job", json!({ "job_id": job })).await;
    assert_eq!(status["state"], "running");
    assert_eq!(status["counts"]["running"], 1);
    assert_eq!(status["counts"]["pending"], 1);
    let acme_jobs = ok(&acme, "list_jobs", json!({})).await;
    assert_eq!(acme_jobs["jobs"].as_array().expect("jobs").len(), 1);
    complete(&acme, &claimed, "done by acme").await;
    let view = ok(&acme, "get_task", json!({ "task_id": task })).await;
    assert_eq!(view["output"]["summary"], "done by acme");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_live_token_get_401_and_change_nothing() {
    let db = Db::new().await;
    let token = db.create_token("acme");
    let server = HttpServer::start(&db, &[]);
    let submit = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"plan_task","arguments":{"goal":"sneaky","subtasks":[{"title":"t","instructions":"i"}]}}}"#;

    let none = raw_post(&server.url, INITIALIZE, &[]).await;
    assert_eq!(none.status(), 401);
    assert_eq!(
        none.headers()["www-authenticate"],
        "Bearer realm=\"lockstep\""
    );
    let wrong = raw_post(&server.url, submit, &[("authorization", "Bearer lst_0000")]).await;
    assert_eq!(wrong.status(), 401);
    let not_bearer = raw_post(
        &server.url,
        submit,
        &[("authorization", &format!("Basic {token}"))],
    )
    .await;
    assert_eq!(not_bearer.status(), 401);

    let client = server.client(&token).await;
    assert_eq!(
        ok(&client, "list_jobs", json!({})).await["jobs"],
        json!([]),
        "the 401s wrote nothing"
    );
    plan(&client, "allowed", &[("a", "Step", &[])]).await;

    db.revoke_token(&token);
    let revoked = raw_post(
        &server.url,
        INITIALIZE,
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(revoked.status(), 401);
    let refused = call(&client, "list_jobs", json!({})).await;
    assert!(
        matches!(&refused, Err(Refusal::Transport(e)) if e.contains("401") || e.contains("Unauthorized") || e.contains("Auth")),
        "a revoked token must not be served: {refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_over_its_rate_gets_429_with_retry_after() {
    let db = Db::new().await;
    let token = db.create_token("acme");
    let server = HttpServer::start(&db, &["--rate-limit", "0.5", "--rate-burst", "2"]);
    let auth = format!("Bearer {token}");
    let statuses = [
        raw_post(&server.url, INITIALIZE, &[("authorization", &auth)])
            .await
            .status()
            .as_u16(),
        raw_post(&server.url, INITIALIZE, &[("authorization", &auth)])
            .await
            .status()
            .as_u16(),
    ];
    assert_eq!(statuses, [200, 200]);
    let limited = raw_post(&server.url, INITIALIZE, &[("authorization", &auth)]).await;
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["retry-after"], "2");
    // Another token has its own budget.
    let other = db.create_token("acme");
    let fresh = raw_post(
        &server.url,
        INITIALIZE,
        &[("authorization", &format!("Bearer {other}"))],
    )
    .await;
    assert_eq!(fresh.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_host_and_origin_headers_are_refused() {
    let db = Db::new().await;
    let token = db.create_token("acme");
    let server = HttpServer::start(&db, &[]);
    let auth = format!("Bearer {token}");
    let evil_host = raw_post(
        &server.url,
        INITIALIZE,
        &[("authorization", &auth), ("host", "evil.example")],
    )
    .await;
    assert_eq!(evil_host.status(), 403);
    let evil_origin = raw_post(
        &server.url,
        INITIALIZE,
        &[("authorization", &auth), ("origin", "http://evil.example")],
    )
    .await;
    assert_eq!(evil_origin.status(), 403);
    let fine = raw_post(&server.url, INITIALIZE, &[("authorization", &auth)]).await;
    assert_eq!(fine.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_bodies_are_refused() {
    let db = Db::new().await;
    let token = db.create_token("acme");
    let server = HttpServer::start(&db, &["--max-body-bytes", "4096"]);
    let big = json!({
        "jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": { "name": "plan_task", "arguments": { "goal": "x".repeat(8000), "subtasks": [] } }
    })
    .to_string();
    let r = raw_post(
        &server.url,
        &big,
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(r.status(), 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_agents_complete_a_500_task_plan_exactly_once() {
    let db = Db::new().await;
    let token = db.create_token("acme");
    let server = HttpServer::start(&db, &["--rate-limit", "0"]);
    let planner = server.client(&token).await;
    // 500 subtasks: 400 independent, then 100 that each need two of them.
    let mut subtasks: Vec<Value> = (0..400)
        .map(|i| json!({ "key": format!("t{i}"), "title": format!("step {i}"), "instructions": "work" }))
        .collect();
    subtasks.extend((0..100).map(|i| {
        json!({
            "key": format!("u{i}"), "title": format!("join {i}"), "instructions": "join",
            "depends_on": [format!("t{}", 2 * i), format!("t{}", 2 * i + 1)]
        })
    }));
    let plan = ok(
        &planner,
        "plan_task",
        json!({ "goal": "big plan", "subtasks": subtasks }),
    )
    .await;
    let job = plan["job_id"].as_i64().expect("job");
    assert_eq!(plan["tasks"].as_array().expect("tasks").len(), 500);

    let mut agents = Vec::new();
    for agent in 0..50 {
        let client = server.client(&token).await;
        agents.push(tokio::spawn(async move {
            let mut mine: Vec<(i64, i64)> = Vec::new();
            loop {
                match claim(&client, job).await {
                    Some(task) => {
                        let id = task["task_id"].as_i64().expect("task id");
                        let attempt = task["attempt"].as_i64().expect("attempt");
                        if task["key"].as_str().is_some_and(|k| k.starts_with('u')) {
                            assert_eq!(task["dependencies"].as_array().expect("deps").len(), 2);
                        }
                        complete(&client, &task, &format!("agent {agent} did task {id}")).await;
                        mine.push((id, attempt));
                    }
                    None => {
                        let status = ok(&client, "get_job", json!({ "job_id": job })).await;
                        if status["state"] != "running" {
                            return mine;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }
    let mut claims: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    let mut claimed_by: BTreeMap<i64, usize> = BTreeMap::new();
    for (agent, handle) in agents.into_iter().enumerate() {
        for (task, attempt) in handle.await.expect("agent finished") {
            claims.entry(task).or_default().push(attempt);
            claimed_by.insert(task, agent);
        }
    }
    assert_eq!(claims.len(), 500, "every task was claimed and completed");
    assert!(
        claims.values().all(|a| a == &vec![1]),
        "a task was claimed twice: {claims:?}"
    );
    let status = ok(&planner, "get_job", json!({ "job_id": job })).await;
    assert_eq!(status["state"], "succeeded");
    assert_eq!(status["done"], 500);
    assert_eq!(status["counts"]["succeeded"], 500);
    // Each stored summary is the one its claimer wrote: no completion lost or overwritten.
    for task in [
        task_id(&plan, "t0"),
        task_id(&plan, "t399"),
        task_id(&plan, "u99"),
    ] {
        let view = ok(&planner, "get_task", json!({ "task_id": task })).await;
        assert_eq!(
            view["output"]["summary"],
            format!("agent {} did task {task}", claimed_by[&task])
        );
    }
    let distinct: BTreeSet<usize> = claimed_by.values().copied().collect();
    assert!(distinct.len() > 1, "the work was shared by several agents");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_job_streams_progress_and_returns_at_its_timeout() {
    let db = Db::new().await;
    let token = db.create_token("acme");
    let server = HttpServer::start(&db, &[]);
    let watcher = server.client(&token).await;
    let worker = server.client(&token).await;
    let plan = plan(
        &watcher,
        "watched",
        &[
            ("a", "A", &[]),
            ("b", "B", &[]),
            ("c", "C", &[]),
            ("d", "D", &[]),
        ],
    )
    .await;
    let job = plan["job_id"].as_i64().expect("job");

    // The worker completes a task each time the watcher has seen one more
    // notification, so the run is the same however fast the machine is.
    let seen = watcher.service().progress.clone();
    let work = tokio::spawn(async move {
        for n in 0..2 {
            eventually("a progress notification", || {
                let seen = seen.clone();
                async move { (seen.lock().expect("progress").len() > n).then_some(()) }
            })
            .await;
            let task = claim(&worker, job).await.expect("a ready task");
            complete(&worker, &task, &format!("done {n}")).await;
        }
    });
    // rmcp's client gives every request a progress token of its own.
    let waited = call(
        &watcher,
        "wait_job",
        json!({ "job_id": job, "timeout_seconds": 10 }),
    )
    .await
    .expect("wait_job");
    work.await.expect("worker");
    assert_eq!(waited["finished"], false);
    assert_eq!(waited["timed_out"], true);
    assert_eq!(waited["job"]["state"], "running");
    assert_eq!(waited["job"]["done"], 2);
    assert_eq!(waited["job"]["total"], 4);

    let progress = watcher.service().progress.lock().expect("progress").clone();
    let values: Vec<f64> = progress.iter().map(|p| p.progress).collect();
    assert_eq!(
        values,
        vec![0.0, 1.0, 2.0],
        "one notification per change: {progress:?}"
    );
    assert!(progress.iter().all(|p| p.total == Some(4.0)));
    assert!(
        progress
            .iter()
            .all(|p| p.progress_token == progress[0].progress_token)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_job_returns_as_soon_as_the_job_finishes() {
    let db = Db::new().await;
    let token = db.create_token("acme");
    let server = HttpServer::start(&db, &[]);
    let c = server.client(&token).await;
    let plan = plan(&c, "quick", &[("a", "A", &[])]).await;
    let job = plan["job_id"].as_i64().expect("job");
    let task = claim(&c, job).await.expect("task");
    complete(&c, &task, "done").await;
    let waited = ok(
        &c,
        "wait_job",
        json!({ "job_id": job, "timeout_seconds": 300 }),
    )
    .await;
    assert_eq!(waited["finished"], true);
    assert_eq!(waited["timed_out"], false);
    assert_eq!(waited["job"]["state"], "succeeded");
}

/// Invariant 40: a `read` token reads jobs, tasks, resources and prompts
/// but every tool that writes — handler tools included — is refused as a
/// `forbidden` tool result naming the role, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_token_calls_only_read_only_tools() {
    let db = Db::new().await;
    let admin_token = db.create_token("acme");
    let read_token = db.create_token_with_role("acme", "read");
    let examples = std::path::Path::new(lockstep::guest_artifacts::EXAMPLES_DIR);
    let server = HttpServer::start_with_plugins(&db, examples, &[]);
    let admin = server.client(&admin_token).await;
    let reader = server.client(&read_token).await;

    let plan = plan(
        &admin,
        "guarded",
        &[("a", "Step one", &[]), ("b", "Step two", &["a"])],
    )
    .await;
    let job = plan["job_id"].as_i64().expect("job");
    let task = task_id(&plan, "a");

    // What a read token may do.
    assert_eq!(
        ok(&reader, "get_job", json!({ "job_id": job })).await["state"],
        "running"
    );
    assert_eq!(
        ok(&reader, "get_task", json!({ "task_id": task })).await["state"],
        "pending"
    );
    assert_eq!(
        ok(&reader, "list_jobs", json!({})).await["jobs"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(ok(&reader, "health_check", json!({})).await["ok"], true);
    assert!(
        ok(&reader, "list_handlers", json!({})).await["handlers"]
            .as_array()
            .is_some_and(|h| !h.is_empty())
    );
    let waited = ok(
        &reader,
        "wait_job",
        json!({ "job_id": job, "timeout_seconds": 0.1 }),
    )
    .await;
    assert_eq!(waited["finished"], false);
    let resources = reader
        .list_resources(None)
        .await
        .expect("a read token lists resources");
    assert_eq!(resources.resources.len(), 1, "the one job: {resources:?}");
    reader
        .read_resource(rmcp::model::ReadResourceRequestParams::new(format!(
            "lockstep://jobs/{job}"
        )))
        .await
        .expect("a read token reads a resource");
    reader
        .get_prompt(
            rmcp::model::GetPromptRequestParams::new("plan_work").with_arguments(
                json!({ "goal": "ship it" })
                    .as_object()
                    .cloned()
                    .expect("object"),
            ),
        )
        .await
        .expect("a read token gets a prompt");

    // What it may not, each refused before the engine sees it.
    let refused = |tool: &str| {
        Err(Refusal::Tool {
            code: "forbidden".into(),
            message: format!(
                "token-2 is a read token: it may call only the read-only tools (get_job, get_task, health_check, list_handlers, list_jobs, wait_job), not {tool}; call it with an admin token (`lockstep token create --role admin`)"
            ),
        })
    };
    let noop_job = json!({ "name": "n", "stages": [{ "name": "s", "tasks": [{ "handler": "example:noop", "input": {} }] }] });
    let writes = [
        ("cancel_job", json!({ "job_id": job })),
        ("retry_task", json!({ "task_id": task })),
        ("claim_task", json!({ "job_id": job })),
        (
            "update_task",
            json!({ "task_id": task, "attempt": 1, "note": "x" }),
        ),
        (
            "complete_task",
            json!({ "task_id": task, "attempt": 1, "summary": "x" }),
        ),
        (
            "fail_task",
            json!({ "task_id": task, "attempt": 1, "reason": "x", "retryable": false }),
        ),
        (
            "plan_task",
            json!({ "goal": "g", "subtasks": [{ "title": "t", "instructions": "i" }] }),
        ),
        ("submit_job", json!({ "job": noop_job })),
        ("run_pipeline", json!({ "path": "ci.toml" })),
        ("example.noop", json!({})),
    ];
    for (tool, args) in writes {
        assert_eq!(call(&reader, tool, args).await, refused(tool), "{tool}");
    }
    // An unknown tool is still unknown, not forbidden.
    assert!(
        matches!(
            call(&reader, "no_such_tool", json!({})).await,
            Err(Refusal::Protocol { code: -32602, .. })
        ),
        "an unknown tool name is a protocol error"
    );

    // Nothing was written: one job, still running, its first task unclaimed.
    let jobs = ok(&admin, "list_jobs", json!({})).await;
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(1), "{jobs}");
    let status = ok(&admin, "get_job", json!({ "job_id": job })).await;
    assert_eq!(status["state"], "running");
    assert_eq!(status["counts"]["pending"], 1);
    assert_eq!(status["counts"]["blocked"], 1);
    // The admin token may do what the read token may not.
    assert_eq!(
        ok(&admin, "cancel_job", json!({ "job_id": job })).await["state"],
        "cancelled"
    );
}
