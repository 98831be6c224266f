//! The agent workflow over MCP with real `lockstep mcp` processes (stdio) and
//! rmcp's client: plan → claim → update → complete/fail, dependencies that
//! release a subtask exactly when its own dependencies are done, fencing of
//! stale attempts, and durability across a SIGKILL.

use crate::mcp_harness::*;
use serde_json::json;
use std::collections::BTreeSet;

/// A(1) B(1) → C needs A; D needs A and B → E needs C and D.
const FIVE_IN_THREE_LEVELS: &[(&str, &str, &[&str])] = &[
    ("a", "Design the schema", &[]),
    ("b", "Collect requirements", &[]),
    ("c", "Write the migration", &["a"]),
    ("d", "Write the API", &["a", "b"]),
    ("e", "Write the docs", &["c", "d"]),
];

fn dependency_summaries(task: &serde_json::Value) -> BTreeSet<(String, String)> {
    task["dependencies"]
        .as_array()
        .expect("dependencies")
        .iter()
        .map(|d| {
            (
                d["key"].as_str().expect("dependency key").to_string(),
                d["summary"]
                    .as_str()
                    .expect("dependency summary")
                    .to_string(),
            )
        })
        .collect()
}

fn pair(key: &str, summary: &str) -> (String, String) {
    (key.to_string(), summary.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subtask_is_claimable_exactly_when_its_own_dependencies_are_done() {
    let db = Db::new().await;
    let server = StdioServer::start(&db, "local", &[]).await;
    let c = &server.client;
    let plan = plan(c, "ship the feature", FIVE_IN_THREE_LEVELS).await;
    assert_eq!(plan["created"], true);
    let job = plan["job_id"].as_i64().expect("job id");
    let states: Vec<(String, String)> = plan["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| {
            (
                t["key"].as_str().unwrap_or_default().to_string(),
                t["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        vec![
            pair("a", "pending"),
            pair("b", "pending"),
            pair("c", "blocked"),
            pair("d", "blocked"),
            pair("e", "blocked"),
        ]
    );

    // Level 1: exactly A and B are claimable.
    let first = claim(c, job).await.expect("a level-1 task");
    let second = claim(c, job).await.expect("the other level-1 task");
    let level1: BTreeSet<&str> = [&first, &second]
        .iter()
        .map(|t| t["key"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(level1, BTreeSet::from(["a", "b"]));
    assert_eq!(first["attempt"], 1);
    assert!(first["dependencies"].as_array().expect("deps").is_empty());
    assert_eq!(
        claim(c, job).await,
        None,
        "nothing of level 2 before its dependencies complete"
    );

    let (a, b) = if first["key"] == "a" {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(a["title"], "Design the schema");
    assert_eq!(a["instructions"], "do Design the schema");
    assert_eq!(a["goal"], "ship the feature");

    // A done, B still running: C (needs only A) is claimable, D (needs B too) is not.
    let done = complete(c, &a, "schema: users(id, email)").await;
    assert_eq!(done["state"], "succeeded");
    assert_eq!(done["job_state"], "running");
    let c_task = claim(c, job).await.expect("C is ready once A is done");
    assert_eq!(c_task["key"], "c");
    assert_eq!(
        dependency_summaries(&c_task),
        BTreeSet::from([pair("a", "schema: users(id, email)")])
    );
    assert_eq!(claim(c, job).await, None, "D still waits for B");

    complete(c, &b, "requirements: login by email").await;
    let d_task = claim(c, job)
        .await
        .expect("D is ready once A and B are done");
    assert_eq!(d_task["key"], "d");
    assert_eq!(
        dependency_summaries(&d_task),
        BTreeSet::from([
            pair("a", "schema: users(id, email)"),
            pair("b", "requirements: login by email")
        ])
    );

    complete(c, &c_task, "migration 0001 written").await;
    assert_eq!(claim(c, job).await, None, "E waits for D");
    complete(c, &d_task, "POST /login implemented").await;
    let e_task = claim(c, job)
        .await
        .expect("E is ready once C and D are done");
    assert_eq!(
        dependency_summaries(&e_task),
        BTreeSet::from([
            pair("c", "migration 0001 written"),
            pair("d", "POST /login implemented")
        ])
    );
    let last = complete(c, &e_task, "docs written").await;
    assert_eq!(last["job_state"], "succeeded");

    let status = ok(c, "get_job", json!({ "job_id": job })).await;
    assert_eq!(status["state"], "succeeded");
    assert_eq!(status["done"], 5);
    assert_eq!(status["total"], 5);
    assert_eq!(status["counts"]["succeeded"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_for_a_specialist_gets_only_that_specialists_tasks() {
    let db = Db::new().await;
    let server = StdioServer::start(&db, "local", &[]).await;
    let c = &server.client;
    let plan = ok(
        c,
        "plan_task",
        json!({
            "goal": "review and build",
            "subtasks": [
                { "title": "Build it", "instructions": "build", "specialist": "builder" },
                { "title": "Review it", "instructions": "review", "specialist": "reviewer" },
            ]
        }),
    )
    .await;
    let job = plan["job_id"].as_i64().expect("job");
    let r = ok(
        c,
        "claim_task",
        json!({ "job_id": job, "specialist": "reviewer" }),
    )
    .await;
    assert_eq!(r["task"]["title"], "Review it");
    assert_eq!(r["task"]["specialist"], "reviewer");
    let r = ok(
        c,
        "claim_task",
        json!({ "job_id": job, "specialist": "reviewer" }),
    )
    .await;
    assert_eq!(r["claimed"], false);
    let r = ok(c, "claim_task", json!({ "job_id": job })).await;
    assert_eq!(r["task"]["title"], "Build it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_and_its_summaries_survive_killing_the_server() {
    let db = Db::new().await;
    let server = StdioServer::start(&db, "local", &[]).await;
    let c = &server.client;
    let plan = plan(c, "survive a crash", FIVE_IN_THREE_LEVELS).await;
    let job = plan["job_id"].as_i64().expect("job");
    let first = claim(c, job).await.expect("level 1");
    let second = claim(c, job).await.expect("level 1");
    let (a, b) = if first["key"] == "a" {
        (first, second)
    } else {
        (second, first)
    };
    complete(c, &a, "A's summary").await;
    let c_task = claim(c, job).await.expect("C");
    complete(c, &c_task, "C's summary").await;
    // B is claimed and unfinished when the server dies.
    server.kill();
    drop(server);

    let server = StdioServer::start(&db, "local", &[]).await;
    let c = &server.client;
    let status = ok(c, "get_job", json!({ "job_id": job })).await;
    assert_eq!(status["state"], "running");
    assert_eq!(status["total"], 5);
    assert_eq!(status["done"], 2);
    assert_eq!(status["counts"]["succeeded"], 2);
    assert_eq!(
        status["counts"]["running"], 1,
        "B's claim is still held under its lease"
    );
    let a_view = ok(c, "get_task", json!({ "task_id": task_id(&plan, "a") })).await;
    assert_eq!(a_view["state"], "succeeded");
    assert_eq!(a_view["output"]["summary"], "A's summary");
    let c_view = ok(c, "get_task", json!({ "task_id": task_id(&plan, "c") })).await;
    assert_eq!(c_view["output"]["summary"], "C's summary");
    assert_eq!(c_view["title"], "Write the migration");

    // The lease survived too: B's holder completes it, and D follows with both summaries.
    complete(c, &b, "B's summary").await;
    let d = claim(c, job).await.expect("D after A and B");
    assert_eq!(d["key"], "d");
    assert_eq!(
        dependency_summaries(&d),
        BTreeSet::from([pair("a", "A's summary"), pair("b", "B's summary")])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_attempt_is_refused_and_says_why() {
    let db = Db::new().await;
    let server = StdioServer::start(&db, "local", &["--agent-lease-secs", "1"]).await;
    let c = &server.client;
    let plan = plan(c, "slow agent", &[("only", "The only step", &[])]).await;
    let job = plan["job_id"].as_i64().expect("job");
    let first = claim(c, job).await.expect("claim");
    assert_eq!(first["attempt"], 1);
    let id = first["task_id"].as_i64().expect("task id");
    // The first agent goes silent; its lease expires and another agent claims the task.
    let second = eventually("re-claim after the lease expired", || async {
        claim(c, job).await
    })
    .await;
    assert_eq!(second["task_id"], id);
    assert_eq!(second["attempt"], 2);

    let stale = call(
        c,
        "complete_task",
        json!({ "task_id": id, "attempt": 1, "summary": "late" }),
    )
    .await;
    assert_eq!(
        stale,
        Err(Refusal::Tool {
            code: "lease_lost".into(),
            message: format!(
                "task {id} attempt 1 is no longer yours: its lease expired and it was claimed again (attempt 2)"
            ),
        })
    );
    let stale_update = call(
        c,
        "update_task",
        json!({ "task_id": id, "attempt": 1, "note": "still here" }),
    )
    .await;
    assert_eq!(
        stale_update.map_err(|e| e.message().to_string()),
        Err(format!(
            "task {id} attempt 1 is no longer yours: its lease expired and it was claimed again (attempt 2)"
        ))
    );

    complete(c, &second, "on time").await;
    let view = ok(c, "get_task", json!({ "task_id": id })).await;
    assert_eq!(view["state"], "succeeded");
    assert_eq!(view["attempt"], 2);
    assert_eq!(view["output"]["summary"], "on time");
    let again = call(
        c,
        "complete_task",
        json!({ "task_id": id, "attempt": 2, "summary": "twice" }),
    )
    .await;
    assert_eq!(
        again.map_err(|e| e.message().to_string()),
        Err(format!(
            "task {id} attempt 2 is no longer yours: it was already completed"
        ))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_task_records_the_note_and_extends_the_lease() {
    let db = Db::new().await;
    let server = StdioServer::start(&db, "local", &[]).await;
    let c = &server.client;
    let plan = plan(c, "report progress", &[("only", "Long step", &[])]).await;
    let task = claim(c, plan["job_id"].as_i64().expect("job"))
        .await
        .expect("claim");
    let before = task["lease_expires_at"].as_i64().expect("lease expiry");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let r = ok(
        c,
        "update_task",
        json!({ "task_id": task["task_id"], "attempt": 1, "note": "half way: 3 of 6 files" }),
    )
    .await;
    assert!(r["lease_expires_at"].as_i64().expect("new expiry") > before);
    let view = ok(c, "get_task", json!({ "task_id": task["task_id"] })).await;
    let notes: Vec<&str> = view["recent_events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "task_note")
        .filter_map(|e| e["detail"].as_str())
        .collect();
    assert_eq!(notes, vec!["half way: 3 of 6 files"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_task_retryable_requeues_and_fatal_cancels_dependents() {
    let db = Db::new().await;
    let server = StdioServer::start(&db, "local", &[]).await;
    let c = &server.client;
    let plan = plan(
        c,
        "fail twice",
        &[("a", "Flaky step", &[]), ("b", "After it", &["a"])],
    )
    .await;
    let job = plan["job_id"].as_i64().expect("job");
    let a = claim(c, job).await.expect("a");
    let r = ok(
        c,
        "fail_task",
        json!({ "task_id": a["task_id"], "attempt": 1, "reason": "network down", "retryable": true }),
    )
    .await;
    assert_eq!(r["state"], "pending");
    assert_eq!(r["job_state"], "running");
    let again = eventually("the retried task to become claimable", || async {
        claim(c, job).await
    })
    .await;
    assert_eq!(again["task_id"], a["task_id"]);
    assert_eq!(again["attempt"], 2);
    let r = ok(
        c,
        "fail_task",
        json!({ "task_id": a["task_id"], "attempt": 2, "reason": "cannot be done", "retryable": false }),
    )
    .await;
    assert_eq!(r["state"], "dead");
    assert_eq!(r["job_state"], "failed");
    let b = ok(c, "get_task", json!({ "task_id": task_id(&plan, "b") })).await;
    assert_eq!(b["state"], "cancelled");
    let a_view = ok(c, "get_task", json!({ "task_id": a["task_id"] })).await;
    assert_eq!(a_view["error"], "cannot be done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planning_the_same_plan_twice_returns_the_first() {
    let db = Db::new().await;
    let server = StdioServer::start(&db, "local", &[]).await;
    let c = &server.client;
    let first = plan(c, "once", FIVE_IN_THREE_LEVELS).await;
    let second = plan(c, "once", FIVE_IN_THREE_LEVELS).await;
    assert_eq!(first["created"], true);
    assert_eq!(second["created"], false);
    assert_eq!(first["job_id"], second["job_id"]);
    assert_eq!(first["tasks"], second["tasks"]);
    let jobs = ok(c, "list_jobs", json!({})).await;
    assert_eq!(jobs["jobs"].as_array().expect("jobs").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_of_a_running_or_blocked_task_is_an_illegal_state_refusal() {
    let db = Db::new().await;
    let server = StdioServer::start(&db, "local", &[]).await;
    let c = &server.client;
    let plan = plan(
        c,
        "retry too early",
        &[("first", "First", &[]), ("second", "Second", &["first"])],
    )
    .await;
    let job = plan["job_id"].as_i64().expect("job");
    let (first, second) = (task_id(&plan, "first"), task_id(&plan, "second"));
    let claimed = claim(c, job).await.expect("claim first");
    assert_eq!(claimed["task_id"], first);

    for (task, state) in [(first, "running"), (second, "blocked")] {
        assert_eq!(
            call(c, "retry_task", json!({ "task_id": task })).await,
            Err(Refusal::Tool {
                code: "illegal_state".into(),
                message: format!(
                    "task {task} is {state}: only a dead or cancelled task can be retried"
                ),
            })
        );
    }
    // Nothing was counted twice: the plan runs to the end exactly as before.
    complete(c, &claimed, "first done").await;
    let next = claim(c, job).await.expect("claim second");
    assert_eq!(next["task_id"], second);
    let done = complete(c, &next, "second done").await;
    assert_eq!(done["job_state"], "succeeded");
    let view = ok(c, "get_job", json!({ "job_id": job })).await;
    assert_eq!(view["counts"]["succeeded"], 2);
    assert_eq!(view["stages"][0]["done"], 2);
    assert_eq!(view["stages"][0]["total"], 2);
}

/// `retry_task` of a task whose stage a failed job never reached is an
/// `illegal_state` refusal saying what to retry instead; retrying the dead
/// task resumes the job and brings the later stage's task back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_resumes_a_failed_job_and_refuses_a_stage_it_never_reached() {
    let db = Db::new().await;
    let server = StdioServer::start(&db, "local", &[]).await;
    let c = &server.client;
    let submitted = ok(
        c,
        "submit_job",
        json!({ "job": {
            "name": "two stages",
            "stages": [
                { "name": "a", "executor": "agent", "tasks": [{ "title": "First", "max_attempts": 1 }] },
                { "name": "b", "executor": "agent", "tasks": [{ "title": "Second" }] }
            ]
        } }),
    )
    .await;
    let job = submitted["job_id"].as_i64().expect("job");
    let first = claim(c, job).await.expect("claim the first task");
    let failed = ok(
        c,
        "fail_task",
        json!({ "task_id": first["task_id"], "attempt": 1, "reason": "cannot be done", "retryable": false }),
    )
    .await;
    assert_eq!(failed["job_state"], "failed");
    let second = first["task_id"].as_i64().expect("task id") + 1;
    assert_eq!(
        call(c, "retry_task", json!({ "task_id": second })).await,
        Err(Refusal::Tool {
            code: "illegal_state".into(),
            message: format!(
                "task {second} cannot be retried on its own: job {job} stopped (failed) before its \
                 stage \"b\" opened; retry a dead or cancelled task of the stage where the job \
                 stopped, and the cancelled tasks of the later stages come back with it"
            ),
        })
    );
    let revived = ok(c, "retry_task", json!({ "task_id": first["task_id"] })).await;
    assert_eq!(revived["state"], "pending");
    let again = claim(c, job).await.expect("claim the retried task");
    assert_eq!(
        (&again["task_id"], &again["attempt"]),
        (&first["task_id"], &json!(2))
    );
    complete(c, &again, "done this time").await;
    let next = claim(c, job).await.expect("claim the task brought back");
    assert_eq!(next["task_id"], second);
    let done = complete(c, &next, "second done").await;
    assert_eq!(done["job_state"], "succeeded");
}
