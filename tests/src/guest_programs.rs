//! One test per guest program (example, hostile and fixture), named after it, each
//! asserting the program's exact outcome in the sandbox. After every hostile
//! run the same host still serves example:noop.

use crate::plugin_support::{
    LineageContext, Logged, PluginDir, RecordingContext, assert_still_serving, attempts, request,
    run,
};
use lockstep::engine::JobProgress;
use lockstep::guest_artifacts;
use lockstep::model::TenantId;
use lockstep::plugin::{LoadFailure, LogLevel, PluginHost, RunFailure, Spawn};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A host with example:noop and the plugin at `artifact`, whose grants file
/// (when given) is written first.
async fn host_with(artifact: &str, grants: Option<&str>) -> (PluginDir, PluginHost) {
    let dir = PluginDir::new();
    dir.add(guest_artifacts::EXAMPLE_NOOP);
    let wasm = dir.add(artifact);
    if let Some(grants) = grants {
        dir.grant(&wasm, grants);
    }
    let (host, report) = dir.load().await;
    assert_eq!(report.failures, vec![]);
    (dir, host)
}

#[test]
fn every_guest_program_has_a_test_named_after_it() {
    let source = include_str!("guest_programs.rs");
    for (name, _) in guest_artifacts::EXAMPLES
        .iter()
        .chain(guest_artifacts::HOSTILE.iter())
        .chain(guest_artifacts::FIXTURES.iter())
    {
        let prefix = format!("async fn {}_", name.replace([':', '-'], "_"));
        assert!(
            source.contains(&prefix),
            "no test named after {name} ({prefix}…)"
        );
    }
}

// ------------------------------------------------------------ examples

#[tokio::test]
async fn example_noop_returns_its_input_unchanged() {
    let (_dir, host) = host_with(guest_artifacts::EXAMPLE_NOOP, None).await;
    let input = json!({"value": 7, "nested": {"list": [1, 2, 3]}, "text": "ü"});
    let (result, cx) = run(&host, "example:noop", input.clone()).await;
    let outcome = result.expect("noop succeeds");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&outcome.output).expect("json"),
        input
    );
    assert_eq!(outcome.spawn, vec![]);
    assert_eq!(cx.lines(), vec![]);
}

#[tokio::test]
async fn example_fanout_spawns_count_tasks_into_the_later_stage() {
    let (_dir, host) = host_with(guest_artifacts::EXAMPLE_FANOUT, None).await;
    let (result, _) = run(&host, "example:fanout", json!({"count": 3})).await;
    let outcome = result.expect("fanout succeeds");
    assert_eq!(outcome.output, r#"{"spawned":3}"#);
    assert_eq!(
        outcome.spawn,
        (1..=3)
            .map(|i| Spawn {
                stage: "process".to_owned(),
                handler: "example:noop".to_owned(),
                input: format!(r#"{{"value":{i}}}"#),
            })
            .collect::<Vec<_>>()
    );
    // The example, the SDK and the host agree on the most one task may spawn.
    assert_eq!(lockstep::limits::MAX_SPAWNS_PER_TASK, 10_000);
    assert_eq!(
        lockstep::store::SPAWN_LIMIT,
        lockstep::limits::MAX_SPAWNS_PER_TASK
    );
    let (result, _) = run(&host, "example:fanout", json!({"count": 10_000})).await;
    assert_eq!(result.expect("the most").spawn.len(), 10_000);
    let (result, _) = run(&host, "example:fanout", json!({"count": 10_001})).await;
    assert_eq!(
        result.expect_err("too many").to_string(),
        "count 10001 is more than one task may spawn (10000); split the work over several tasks"
    );
}

#[tokio::test]
async fn example_sum_adds_up_an_earlier_stage_a_page_at_a_time() {
    let (_dir, host) = host_with(guest_artifacts::EXAMPLE_SUM, None).await;
    let outputs: Vec<(u64, String)> = (1..=2_500u64)
        .map(|i| (i * 10, format!(r#"{{"value":{i}}}"#)))
        .collect();
    let cx = Arc::new(LineageContext {
        stage: "process".to_owned(),
        outputs,
        page_sizes: Mutex::new(Vec::new()),
    });
    let outcome = host
        .run(
            request("example:sum", json!({"from": "process"})),
            cx.clone(),
        )
        .await
        .expect("sum succeeds");
    assert_eq!(outcome.output, r#"{"count":2500,"sum":3126250}"#);
    // Three full pages, one short page, then the empty page that ends it.
    assert_eq!(*cx.page_sizes.lock().expect("lock"), vec![1000; 4]);

    // Outside a job there is no lineage: the guest gets the host's error.
    let (result, _) = run(&host, "example:sum", json!({"from": "process"})).await;
    assert_eq!(
        result.expect_err("no job").to_string(),
        "reading the results of stage `process` failed: no job context: stage-results is only available inside a job"
    );
}

#[tokio::test]
async fn example_wordcount_counts_a_file_in_its_granted_directory() {
    let dir = PluginDir::new();
    let data = dir.mkdir("data");
    std::fs::write(data.join("words.txt"), "one two  three\nfour\n\nfive six").expect("write");
    let wasm = dir.add(guest_artifacts::EXAMPLE_WORDCOUNT);
    dir.grant(
        &wasm,
        &format!(
            "[[dirs]]\nhost = {:?}\nguest = \"/data\"\n",
            data.display().to_string()
        ),
    );
    let (host, _) = dir.load().await;
    let (result, _) = run(
        &host,
        "example:wordcount",
        json!({"path": "/data/words.txt"}),
    )
    .await;
    assert_eq!(
        result.expect("wordcount succeeds").output,
        r#"{"words":6,"lines":4,"bytes":29}"#
    );
    // Only the granted directory exists for it.
    let (result, _) = run(&host, "example:wordcount", json!({"path": "/etc/hostname"})).await;
    let err = result.expect_err("not granted");
    assert!(matches!(err, RunFailure::Fatal(_)), "{err:?}");
    assert!(
        err.to_string().starts_with("cannot read /etc/hostname: "),
        "{err}"
    );
}

#[tokio::test]
async fn example_flaky_fails_retryably_until_its_attempt_passes_fail_times() {
    let (_dir, host) = host_with(guest_artifacts::EXAMPLE_FLAKY, None).await;
    for attempt in 1..=2 {
        let mut req = request("example:flaky", json!({"fail_times": 2}));
        req.attempt = attempt;
        let cx = RecordingContext::new();
        let err = host
            .run(req, cx.clone())
            .await
            .expect_err("fails on purpose");
        let logged: Vec<String> = cx.lines().into_iter().map(|l| l.message).collect();
        assert_eq!(logged, [format!("attempt {attempt} of 2 planned failures")]);
        assert_eq!(
            err,
            RunFailure::Retryable(format!(
                "attempt {attempt} fails on purpose (fail_times = 2)"
            ))
        );
        assert!(err.is_retryable());
    }
    let mut req = request("example:flaky", json!({"fail_times": 2}));
    req.attempt = 3;
    let outcome = host
        .run(req, RecordingContext::new())
        .await
        .expect("third attempt succeeds");
    assert_eq!(outcome.output, r#"{"attempt":3}"#);
}

#[tokio::test]
async fn example_steps_reports_progress_after_every_step() {
    let (_dir, host) = host_with(guest_artifacts::EXAMPLE_STEPS, None).await;
    let (result, cx) = run(&host, "example:steps", json!({"steps": 3, "step_ms": 1})).await;
    assert_eq!(result.expect("three steps").output, r#"{"steps":3}"#);
    let progress: Vec<String> = cx.lines().into_iter().map(|l| l.message).collect();
    assert_eq!(
        progress,
        [
            "progress 1/3: working",
            "progress 2/3: working",
            "progress 3/3: working"
        ]
    );
    assert_eq!(cx.checks(), 3, "asks before every step");
}

#[tokio::test]
async fn example_steps_stops_at_the_next_step_once_its_job_is_cancelled() {
    let (_dir, host) = host_with(guest_artifacts::EXAMPLE_STEPS, None).await;
    let cx = RecordingContext::cancelled_after(2);
    let err = host
        .run(
            request("example:steps", json!({"steps": 1_000_000, "step_ms": 1})),
            cx.clone(),
        )
        .await
        .expect_err("stops when cancelled");
    assert_eq!(
        err,
        RunFailure::Fatal("cancelled after 2 of 1000000 steps".into())
    );
    assert_eq!(cx.checks(), 3);
    assert_eq!(cx.lines().len(), 2, "two steps done, then it stopped");
}

// ------------------------------------------------------------ fixtures

/// The sandbox bounds what a handler and its agent exchange through the WIT
/// `agent` import (Invariant 41): a request over the limit never reaches the
/// task context, an answer over it never reaches the guest, and a context
/// with no agent (here, the default of `TaskContext::ask`) says so.
#[tokio::test]
async fn fixture_mcp_conformance_asks_its_agent_within_the_limits() {
    use crate::plugin_support::AnsweringContext;
    use lockstep::limits::{MAX_AGENT_ANSWER_BYTES, MAX_AGENT_REQUEST_BYTES};
    use std::sync::atomic::Ordering;
    let (_dir, host) = host_with(guest_artifacts::FIXTURE_MCP_CONFORMANCE, None).await;
    let sampled = |text: &str| {
        json!({ "role": "assistant", "content": { "type": "text", "text": text }, "model": "m" })
            .to_string()
    };

    let cx = AnsweringContext::new(sampled("Paris."));
    let outcome = host
        .run(
            request("conformance:sampling", json!({ "prompt": "Capital?" })),
            cx.clone(),
        )
        .await
        .expect("the handler runs");
    assert_eq!(
        outcome.output,
        json!([{ "type": "text", "text": "LLM response: Paris." }]).to_string()
    );
    assert_eq!(cx.asked.load(Ordering::SeqCst), 1);

    let prompt = "a".repeat(MAX_AGENT_REQUEST_BYTES);
    let asked = json!({
        "messages": [{ "role": "user", "content": { "type": "text", "text": prompt } }],
        "maxTokens": 100
    })
    .to_string();
    let cx = AnsweringContext::new(sampled("Paris."));
    let err = host
        .run(
            request("conformance:sampling", json!({ "prompt": prompt })),
            cx.clone(),
        )
        .await
        .expect_err("a request over the limit");
    assert_eq!(
        err,
        RunFailure::Fatal(format!(
            "sampling failed (invalid-request): the sampling/createMessage request is {} bytes, larger than the {MAX_AGENT_REQUEST_BYTES}-byte limit",
            asked.len()
        ))
    );
    assert_eq!(
        cx.asked.load(Ordering::SeqCst),
        0,
        "never reached the context"
    );

    let answer = sampled(&"b".repeat(MAX_AGENT_ANSWER_BYTES));
    let cx = AnsweringContext::new(answer.clone());
    let err = host
        .run(
            request("conformance:sampling", json!({ "prompt": "hi" })),
            cx,
        )
        .await
        .expect_err("an answer over the limit");
    assert_eq!(
        err,
        RunFailure::Fatal(format!(
            "sampling failed (failed): the agent's answer to sampling/createMessage is {} bytes, larger than the {MAX_AGENT_ANSWER_BYTES}-byte limit",
            answer.len()
        ))
    );

    let (result, _) = run(&host, "conformance:elicitation", json!({ "message": "hi" })).await;
    assert_eq!(
        result.expect_err("no agent"),
        RunFailure::Fatal(
            "elicitation failed (no-agent): no agent is attached to this task: agent.elicit only reaches the MCP agent whose handler tool call waits on the task".into()
        )
    );
}

#[tokio::test]
async fn fixture_mcp_conformance_declares_its_tools_resources_and_prompts() {
    use lockstep::plugin::{McpResult, McpTool};
    let (_dir, host) = host_with(guest_artifacts::FIXTURE_MCP_CONFORMANCE, None).await;
    let declared: Vec<(String, Option<McpTool>)> = host
        .describe_all()
        .into_iter()
        .map(|l| (l.name, l.mcp_tool))
        .collect();
    let tool = |name: &str, result| {
        Some(McpTool {
            name: name.to_owned(),
            result,
        })
    };
    use McpResult::{Content, Json};
    assert_eq!(
        declared,
        vec![
            (
                "conformance:audio".to_owned(),
                tool("test_audio_content", Content)
            ),
            (
                "conformance:elicitation".to_owned(),
                tool("test_elicitation", Content)
            ),
            (
                "conformance:elicitation-defaults".to_owned(),
                tool("test_elicitation_sep1034_defaults", Content)
            ),
            (
                "conformance:elicitation-enums".to_owned(),
                tool("test_elicitation_sep1330_enums", Content)
            ),
            (
                "conformance:embedded-resource".to_owned(),
                tool("test_embedded_resource", Content)
            ),
            (
                "conformance:error".to_owned(),
                tool("test_error_handling", Content)
            ),
            (
                "conformance:image".to_owned(),
                tool("test_image_content", Content)
            ),
            (
                "conformance:json-schema-2020-12".to_owned(),
                tool("json_schema_2020_12_tool", Json)
            ),
            (
                "conformance:logging".to_owned(),
                tool("test_tool_with_logging", Content)
            ),
            (
                "conformance:mixed-content".to_owned(),
                tool("test_multiple_content_types", Content)
            ),
            (
                "conformance:progress".to_owned(),
                tool("test_tool_with_progress", Content)
            ),
            // The handlers of its resources and prompts keep their default tools.
            ("conformance:prompt-with-arguments".to_owned(), None),
            ("conformance:prompt-with-embedded-resource".to_owned(), None),
            ("conformance:prompt-with-image".to_owned(), None),
            (
                "conformance:reconnection".to_owned(),
                tool("test_reconnection", Content)
            ),
            (
                "conformance:sampling".to_owned(),
                tool("test_sampling", Content)
            ),
            ("conformance:simple-prompt".to_owned(), None),
            (
                "conformance:simple-text".to_owned(),
                tool("test_simple_text", Content)
            ),
            ("conformance:static-binary".to_owned(), None),
            ("conformance:static-text".to_owned(), None),
            ("conformance:template-data".to_owned(), None),
            ("conformance:watched".to_owned(), None),
            // A component without the `mcp` export declares nothing.
            ("example:noop".to_owned(), None),
        ]
    );
    // Its `mcp-catalog` export: four resources and four prompts, each with
    // the handler that serves it.
    let resources: Vec<(String, String, usize)> = host
        .mcp_resources()
        .into_iter()
        .map(|r| (r.uri, r.handler, r.variables.len()))
        .collect();
    assert_eq!(
        resources,
        [
            ("test://static-text", "conformance:static-text", 0),
            ("test://static-binary", "conformance:static-binary", 0),
            ("test://template/{id}/data", "conformance:template-data", 1),
            ("test://watched-resource", "conformance:watched", 0),
        ]
        .map(|(u, h, n)| (u.to_owned(), h.to_owned(), n))
    );
    let prompts: Vec<String> = host.mcp_prompts().into_iter().map(|p| p.name).collect();
    assert_eq!(
        prompts,
        [
            "test_simple_prompt",
            "test_prompt_with_arguments",
            "test_prompt_with_embedded_resource",
            "test_prompt_with_image"
        ]
    );
    // Its handlers log and report progress through the ordinary context.
    let (result, cx) = run(&host, "conformance:logging", json!({})).await;
    let output = result.expect("logging succeeds").output;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&output).expect("JSON"),
        json!([{ "type": "text", "text": "Tool with logging executed successfully" }])
    );
    assert_eq!(
        cx.lines(),
        [
            "Tool execution started",
            "Tool processing data",
            "Tool execution completed"
        ]
        .map(|message| Logged {
            level: LogLevel::Info,
            message: message.to_owned(),
        })
        .to_vec()
    );
    let (result, _) = run(&host, "conformance:error", json!({})).await;
    assert_eq!(
        result.expect_err("error fails"),
        RunFailure::Fatal("This tool intentionally returns an error for testing".to_owned())
    );
}

// ------------------------------------------------------------- hostile

#[tokio::test]
async fn hostile_read_passwd_sees_no_file_system() {
    let (_dir, host) = host_with(guest_artifacts::HOSTILE_READ_PASSWD, None).await;
    let (result, _) = run(&host, "hostile:read-passwd", json!({})).await;
    let seen = attempts(&result.expect("the guest reports what it saw"));
    // With no preopened directory there is no file system at all.
    assert_eq!(
        seen.iter()
            .map(|a| (
                a.action.as_str(),
                a.target.as_str(),
                a.ok,
                a.detail.as_str()
            ))
            .collect::<Vec<_>>(),
        vec![
            (
                "read",
                "/etc/passwd",
                false,
                "No such file or directory (os error 44)"
            ),
            (
                "list",
                "/",
                false,
                "No such file or directory (os error 44)"
            ),
        ]
    );
    assert_still_serving(&host).await;
}

#[tokio::test]
async fn hostile_escape_dotdot_cannot_leave_its_granted_directory() {
    let dir = PluginDir::new();
    dir.add(guest_artifacts::EXAMPLE_NOOP);
    let data = dir.mkdir("jail/data");
    std::fs::write(data.join("inside.txt"), "inside").expect("write");
    std::fs::write(dir.root.path().join("jail/secret"), "the secret").expect("write");
    let wasm = dir.add(guest_artifacts::HOSTILE_ESCAPE_DOTDOT);
    dir.grant(
        &wasm,
        &format!(
            "[[dirs]]\nhost = {:?}\nguest = \"/data\"\n",
            data.display().to_string()
        ),
    );
    let (host, _) = dir.load().await;
    let (result, _) = run(&host, "hostile:escape-dotdot", json!({})).await;
    let seen = attempts(&result.expect("the guest reports what it saw"));
    // Through the preopen, `..` above it is refused (ENOTCAPABLE, 63);
    // relative to the guest's current directory there is nothing (ENOENT, 44).
    let denied = "Operation not permitted (os error 63)";
    let nothing = "No such file or directory (os error 44)";
    assert_eq!(
        seen.iter()
            .map(|a| (
                a.action.as_str(),
                a.target.as_str(),
                a.ok,
                a.detail.as_str()
            ))
            .collect::<Vec<_>>(),
        vec![
            ("read", "/data/../secret", false, denied),
            ("read", "/data/./../secret", false, denied),
            ("read", "../secret", false, nothing),
            ("read", "/data/../../etc/passwd", false, denied),
            ("list", "/data/..", false, denied),
            ("list", "..", false, nothing),
        ]
    );
    assert_still_serving(&host).await;
}

#[tokio::test]
async fn hostile_escape_symlink_cannot_follow_links_out_of_its_granted_directory() {
    let dir = PluginDir::new();
    dir.add(guest_artifacts::EXAMPLE_NOOP);
    let data = dir.mkdir("data");
    let outside = dir.mkdir("outside");
    std::fs::write(outside.join("secret"), "the secret").expect("write");
    std::os::unix::fs::symlink(outside.join("secret"), data.join("abs-file")).expect("link");
    std::os::unix::fs::symlink("../outside/secret", data.join("rel-file")).expect("link");
    std::os::unix::fs::symlink(&outside, data.join("abs-dir")).expect("link");
    std::os::unix::fs::symlink("/etc/passwd", data.join("passwd")).expect("link");
    let wasm = dir.add(guest_artifacts::HOSTILE_ESCAPE_SYMLINK);
    dir.grant(
        &wasm,
        &format!(
            "[[dirs]]\nhost = {:?}\nguest = \"/data\"\n",
            data.display().to_string()
        ),
    );
    let (host, _) = dir.load().await;
    let paths = [
        "/data/abs-file",
        "/data/rel-file",
        "/data/abs-dir",
        "/data/passwd",
    ];
    let (result, _) = run(&host, "hostile:escape-symlink", json!({"paths": paths})).await;
    let seen = attempts(&result.expect("the guest reports what it saw"));
    // Only a relative link's text can be read; nothing can be followed out.
    let denied = "Operation not permitted (os error 63)";
    let mut expected = Vec::new();
    for path in paths {
        let link = if path == "/data/rel-file" {
            (true, "../outside/secret")
        } else {
            (false, denied)
        };
        expected.push(("read_link", path, link.0, link.1));
        expected.push(("read", path, false, denied));
        expected.push(("list", path, false, denied));
    }
    assert_eq!(
        seen.iter()
            .map(|a| (
                a.action.as_str(),
                a.target.as_str(),
                a.ok,
                a.detail.as_str()
            ))
            .collect::<Vec<_>>(),
        expected
    );
    assert_still_serving(&host).await;
}

#[tokio::test]
async fn hostile_read_env_sees_no_environment_and_no_arguments() {
    let (_dir, host) = host_with(guest_artifacts::HOSTILE_READ_ENV, None).await;
    let (result, _) = run(&host, "hostile:read-env", json!({})).await;
    let output: serde_json::Value =
        serde_json::from_str(&result.expect("runs").output).expect("json");
    assert_eq!(
        output,
        json!({"vars": {}, "home": null, "path": null, "args": []})
    );
    assert_still_serving(&host).await;
}

#[tokio::test]
async fn hostile_open_socket_cannot_connect_resolve_or_listen() {
    // Something really listens, so a refusal is the sandbox's doing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (_dir, host) = host_with(guest_artifacts::HOSTILE_OPEN_SOCKET, None).await;
    let (result, _) = run(&host, "hostile:open-socket", json!({"addr": addr})).await;
    let seen = attempts(&result.expect("the guest reports what it saw"));
    assert_eq!(
        seen.iter()
            .map(|a| (a.action.as_str(), a.ok, a.detail.as_str()))
            .collect::<Vec<_>>(),
        vec![
            ("connect", false, "Permission denied (os error 2)"),
            (
                "lookup",
                false,
                "failed to lookup address information: Non-recoverable error"
            ),
            ("listen", false, "Permission denied (os error 2)"),
        ]
    );
    assert_still_serving(&host).await;
}

/// Run through the whole engine (a real SQLite store), since the bound is
/// on what reaches the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_log_flood_leaves_a_bounded_log_in_the_database() {
    use lockstep::model::EventKind;
    use lockstep::plugin::{MAX_LOG_LINES, MAX_LOG_MESSAGE};

    let (dir, host) = host_with(guest_artifacts::HOSTILE_LOG_FLOOD, None).await;
    let (engine, tenant, done) = run_job(
        &dir,
        host,
        "name = \"flood\"\n[[stages]]\nname = \"s\"\ntasks = [{ handler = \"hostile:log-flood\", timeout = \"5m\" }]\n",
    )
    .await;
    assert_eq!(done.job.state, lockstep::model::JobState::Succeeded);

    let logs: Vec<String> = crate::harness::all_events(&engine, &tenant, done.job.job_id)
        .await
        .into_iter()
        .filter(|e| e.kind == EventKind::TaskLog)
        .filter_map(|e| e.detail)
        .collect();
    // 100 lines cut to 4 KiB, the host's note of the rest, and only the last
    // progress report (also cut).
    assert_eq!(logs.len(), MAX_LOG_LINES + 2);
    // Each cut to 4 KiB with its marker.
    let kept = MAX_LOG_MESSAGE - " [cut: 5000 bytes]".len();
    let cut_line = format!("info: {} [cut: 5000 bytes]", "x".repeat(kept));
    assert!(logs[..MAX_LOG_LINES].iter().all(|l| *l == cut_line));
    assert_eq!(
        logs[MAX_LOG_LINES],
        "warn: 19900 more log lines dropped (limit 100 per run)"
    );
    assert_eq!(
        logs[MAX_LOG_LINES + 1],
        format!(
            "progress 20000/20000: {} [cut: 5000 bytes]",
            "x".repeat(kept)
        )
    );
}

#[tokio::test]
async fn hostile_infinite_loop_is_stopped_at_its_deadline() {
    let (_dir, host) = host_with(
        guest_artifacts::HOSTILE_INFINITE_LOOP,
        Some("timeout_ms = 500\n"),
    )
    .await;
    let (result, _) = run(&host, "hostile:infinite-loop", json!({})).await;
    let err = result.expect_err("stopped");
    assert_eq!(
        err,
        RunFailure::Deadline {
            handler: "hostile:infinite-loop".to_owned(),
            timeout: Duration::from_millis(500),
        }
    );
    assert_eq!(
        err.to_string(),
        "handler hostile:infinite-loop exceeded its 500ms deadline and was stopped"
    );
    assert!(err.is_retryable());
    assert_still_serving(&host).await;
}

#[tokio::test]
async fn hostile_infinite_loop_does_not_hold_up_other_tasks() {
    // One runtime thread and a loop granted a whole day: noop can only run
    // (and finish) while the loop spins if the spinning guest yields.
    let (_dir, host) = host_with(
        guest_artifacts::HOSTILE_INFINITE_LOOP,
        Some("timeout_ms = 86400000\n"),
    )
    .await;
    let host = Arc::new(host);
    let cx = RecordingContext::new();
    let spinning = {
        let host = host.clone();
        let cx = cx.clone();
        tokio::spawn(async move {
            host.run(request("hostile:infinite-loop", json!({})), cx)
                .await
        })
    };
    // Let the loop start before noop asks for the thread.
    tokio::task::yield_now().await;
    assert_still_serving(&host).await;
    assert!(
        !spinning.is_finished(),
        "the loop ended before its day was up: {:?}",
        cx.lines()
    );
    // Dropping the run stops the guest; the host keeps serving.
    spinning.abort();
    assert!(spinning.await.expect_err("aborted").is_cancelled());
    assert_still_serving(&host).await;
}

#[tokio::test]
async fn hostile_memory_bomb_is_stopped_at_its_memory_limit() {
    let (_dir, host) = host_with(
        guest_artifacts::HOSTILE_MEMORY_BOMB,
        Some("memory_mib = 16\n"),
    )
    .await;
    let (result, cx) = run(&host, "hostile:memory-bomb", json!({})).await;
    let err = result.expect_err("stopped");
    assert_eq!(
        err,
        RunFailure::OutOfMemory {
            handler: "hostile:memory-bomb".to_owned(),
            limit_bytes: 16 << 20,
        }
    );
    assert_eq!(
        err.to_string(),
        "handler hostile:memory-bomb ran out of memory: it tried to grow past its 16 MiB limit and was stopped"
    );
    // The guest's dying words became warn log lines of the task.
    assert_eq!(
        cx.lines(),
        vec![
            Logged {
                level: LogLevel::Warn,
                message: "stderr: memory allocation of 1048576 bytes failed".to_owned(),
            },
            Logged {
                level: LogLevel::Warn,
                message: "stderr: note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace".to_owned(),
            },
        ]
    );
    assert_still_serving(&host).await;

    // A guest that handles the refusal keeps running and reports it.
    let (result, _) = run(&host, "hostile:memory-bomb", json!({"graceful": true})).await;
    let output: serde_json::Value =
        serde_json::from_str(&result.expect("graceful").output).expect("json");
    let allocated = output["allocated_mib"].as_u64().expect("a count");
    assert!((10..16).contains(&allocated), "{output}");
    assert_eq!(
        output["error"],
        "memory allocation failed because the memory allocator returned an error"
    );
}

#[tokio::test]
async fn hostile_deep_recursion_is_reported_as_a_stack_overflow() {
    let (_dir, host) = host_with(guest_artifacts::HOSTILE_DEEP_RECURSION, None).await;
    let (result, _) = run(&host, "hostile:deep-recursion", json!({})).await;
    let err = result.expect_err("overflowed");
    assert_eq!(
        err,
        RunFailure::StackOverflow {
            handler: "hostile:deep-recursion".to_owned()
        }
    );
    assert_eq!(
        err.to_string(),
        "handler hostile:deep-recursion overflowed its stack (too deep recursion) and was stopped"
    );
    assert_still_serving(&host).await;
    // Bounded recursion is fine.
    let (result, _) = run(&host, "hostile:deep-recursion", json!({"depth": 100})).await;
    assert_eq!(result.expect("bounded").output, r#"{"depth":100}"#);
}

#[tokio::test]
async fn hostile_panic_is_a_trap_carrying_the_panic_message() {
    let (_dir, host) = host_with(guest_artifacts::HOSTILE_PANIC, None).await;
    let (result, cx) = run(&host, "hostile:panic", json!({})).await;
    let err = result.expect_err("panicked");
    let RunFailure::Trap { handler, reason } = &err else {
        panic!("expected a trap, got {err:?}");
    };
    assert_eq!(handler, "hostile:panic");
    assert!(
        reason.starts_with("panicked at ") && reason.contains(": hostile:panic panics on purpose"),
        "{reason}"
    );
    assert!(
        reason.ends_with(" (wasm trap: wasm `unreachable` instruction executed)"),
        "{reason}"
    );
    assert!(
        err.to_string()
            .starts_with("handler hostile:panic trapped: panicked at "),
        "{err}"
    );
    // The guest's stderr became warn log lines of the task.
    let lines = cx.lines();
    assert!(
        lines
            .iter()
            .any(|l| l.level == LogLevel::Warn
                && l.message == "stderr: hostile:panic panics on purpose"),
        "{lines:?}"
    );
    assert_still_serving(&host).await;
}

#[tokio::test]
async fn hostile_write_readonly_cannot_write_to_a_read_only_grant() {
    let dir = PluginDir::new();
    dir.add(guest_artifacts::EXAMPLE_NOOP);
    let data = dir.mkdir("data");
    std::fs::write(data.join("existing.txt"), "first line\n").expect("write");
    let wasm = dir.add(guest_artifacts::HOSTILE_WRITE_READONLY);
    dir.grant(
        &wasm,
        &format!(
            "[[dirs]]\nhost = {:?}\nguest = \"/data\"\nmode = \"ro\"\n",
            data.display().to_string()
        ),
    );
    let (host, _) = dir.load().await;
    let (result, _) = run(
        &host,
        "hostile:write-readonly",
        json!({"existing": "/data/existing.txt"}),
    )
    .await;
    let seen = attempts(&result.expect("the guest reports what it saw"));
    let denied = "Operation not permitted (os error 63)";
    assert_eq!(
        seen.iter()
            .map(|a| (a.action.as_str(), a.ok, a.detail.as_str()))
            .collect::<Vec<_>>(),
        vec![
            ("create_file", false, denied),
            ("create_dir", false, denied),
            ("append", false, denied)
        ]
    );
    let mut left: Vec<String> = std::fs::read_dir(&data)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, vec!["existing.txt"]);
    assert_eq!(
        std::fs::read_to_string(data.join("existing.txt")).expect("read"),
        "first line\n"
    );
    assert_still_serving(&host).await;
}

// -------------------------------------------- what a guest hands the host

/// A fresh SQLite database with `host`'s plugins (retries after 10 ms),
/// the job `text` (JSON when it starts with `{`, else TOML) submitted and
/// run to its end.
async fn run_job(
    dir: &PluginDir,
    host: PluginHost,
    text: &str,
) -> (Arc<lockstep::engine::Engine>, TenantId, JobProgress) {
    use lockstep::engine::{Engine, EngineConfig, WorkerConfig};
    let url = format!("sqlite://{}", dir.root.path().join("job.db").display());
    let store = lockstep::store::open(&url).await.expect("open store");
    let config = EngineConfig {
        retry_base: Duration::from_millis(10),
        retry_cap: Duration::from_millis(10),
        ..EngineConfig::default()
    };
    let engine = Engine::new(store, Arc::new(host), config);
    let tenant = TenantId("local".into());
    let format = if text.starts_with('{') {
        lockstep::spec::Format::Json
    } else {
        lockstep::spec::Format::Toml
    };
    let spec =
        lockstep::spec::parse_job_str(text, format, &Default::default()).expect("job parses");
    let job = engine.submit(&tenant, spec).await.expect("submit").job_id;
    let pool = engine.start_workers(WorkerConfig::default());
    let done = engine
        .wait(&tenant, job, Some(Duration::from_secs(240)), |_| {})
        .await
        .expect("wait");
    pool.shutdown().await;
    assert!(done.job.state.is_terminal(), "{:?}", done.job);
    (engine, tenant, done)
}

/// The dead tasks of a finished job: input → error.
async fn dead_errors(
    engine: &lockstep::engine::Engine,
    tenant: &TenantId,
    job: &JobProgress,
) -> std::collections::BTreeMap<String, String> {
    engine
        .dead_tasks(tenant, job.job.job_id, 100)
        .await
        .expect("dead tasks")
        .into_iter()
        .map(|t| (t.input_json, t.error.unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn hostile_oversize_output_past_its_grant_is_refused_and_a_grant_raises_the_limit() {
    let (_dir, host) = host_with(guest_artifacts::HOSTILE_OVERSIZE, None).await;
    let (result, _) = run(
        &host,
        "hostile:oversize",
        json!({"output_bytes": 2_000_000}),
    )
    .await;
    let err = result.expect_err("past the default 1 MiB");
    assert_eq!(
        err,
        RunFailure::Fatal(
            "handler hostile:oversize returned an output of 1.9 MiB, larger than the 1 MiB limit of its plugin (raise it with max_output_bytes in the plugin's grants file)".into()
        )
    );
    assert!(!err.is_retryable());
    let (result, _) = run(&host, "hostile:oversize", json!({"output_bytes": 1 << 20})).await;
    assert_eq!(result.expect("exactly the limit").output.len(), 1 << 20);
    assert_still_serving(&host).await;

    let (_dir, host) = host_with(
        guest_artifacts::HOSTILE_OVERSIZE,
        Some("max_output_bytes = 4194304\n"),
    )
    .await;
    let (result, _) = run(
        &host,
        "hostile:oversize",
        json!({"output_bytes": 2_000_000}),
    )
    .await;
    assert_eq!(result.expect("granted").output.len(), 2_000_000);
}

/// Far past every limit (40 MiB, under the guest's 256 MiB): wasmtime
/// refuses to copy it at all, for outputs and error texts alike.
#[tokio::test]
async fn hostile_oversize_results_past_the_call_budget_are_refused_before_they_are_copied() {
    let (_dir, host) = host_with(
        guest_artifacts::HOSTILE_OVERSIZE,
        Some("memory_mib = 256\n"),
    )
    .await;
    let budget = lockstep::plugin::host::run_budget(&lockstep::plugin::Grants::default());
    assert_eq!(budget, 23_731_328);
    for input in [
        json!({"output_bytes": 40 << 20}),
        json!({"error_bytes": 40 << 20, "retryable": true}),
    ] {
        let (result, _) = run(&host, "hostile:oversize", input).await;
        let err = result.expect_err("too much");
        assert_eq!(
            err,
            RunFailure::TooMuchData {
                handler: "hostile:oversize".into(),
                limit_bytes: budget as u64,
            }
        );
        assert_eq!(
            err.to_string(),
            "handler hostile:oversize tried to hand the host more than 22.6 MiB in one call and was stopped (outputs are limited by max_output_bytes in its grants file, spawned inputs to 16 MiB per task)"
        );
        assert!(!err.is_retryable(), "the same input fails the same way");
    }
    assert_still_serving(&host).await;
}

/// A retried 1 MB error is stored cut to 4 KiB, once per attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_oversize_error_text_is_cut_before_it_is_stored() {
    use lockstep::limits::MAX_ERROR_BYTES;
    let (dir, host) = host_with(guest_artifacts::HOSTILE_OVERSIZE, None).await;
    let (engine, tenant, done) = run_job(
        &dir,
        host,
        "name = \"errors\"\n[[stages]]\nname = \"s\"\nmax_attempts = 3\ntasks = [{ handler = \"hostile:oversize\", input = { error_bytes = 1000000, retryable = true } }]\n",
    )
    .await;
    assert_eq!(done.job.state, lockstep::model::JobState::Failed);
    let marker = " [cut: 1000000 bytes]";
    let cut = format!("{}{marker}", "e".repeat(MAX_ERROR_BYTES - marker.len()));
    assert_eq!(cut.len(), MAX_ERROR_BYTES);
    let errors = dead_errors(&engine, &tenant, &done).await;
    assert_eq!(errors.values().collect::<Vec<_>>(), vec![&cut]);
    let details: Vec<String> = crate::harness::all_events(&engine, &tenant, done.job.job_id)
        .await
        .into_iter()
        .filter_map(|e| e.detail)
        .filter(|d| d.starts_with("eee"))
        .collect();
    let expected = [
        format!("{cut} (attempt 1 of 3, retry at "),
        format!("{cut} (attempt 2 of 3, retry at "),
        format!("{cut} (attempt 3 of 3, no attempts left)"),
    ];
    assert_eq!(details.len(), expected.len(), "{details:?}");
    for (got, want) in details.iter().zip(&expected) {
        assert!(got.starts_with(want.as_str()), "{got}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_oversize_spawned_inputs_meet_the_limits_of_submitted_ones() {
    let (dir, host) = host_with(
        guest_artifacts::HOSTILE_OVERSIZE,
        Some("memory_mib = 128\n"),
    )
    .await;
    let (engine, tenant, done) = run_job(
        &dir,
        host,
        r#"name = "spawns"
[[stages]]
name = "first"
on_failure = "continue"
tasks = [
  { handler = "hostile:oversize", input = { spawns = 1, spawn_bytes = 2000000 } },
  { handler = "hostile:oversize", input = { spawns = 20, spawn_bytes = 1000000 } },
  { handler = "hostile:oversize", input = { spawns = 1, spawn_depth = 65 } },
  { handler = "hostile:oversize", input = { spawns = 3, spawn_bytes = 1000 } },
]
[[stages]]
name = "next"
"#,
    )
    .await;
    let errors = dead_errors(&engine, &tenant, &done).await;
    assert_eq!(
        errors,
        [
            (
                r#"{"spawn_bytes":2000000,"spawns":1}"#,
                "spawned task 0 has an input of 1.9 MiB, larger than the 1 MiB limit (raise it with --max-input-bytes)",
            ),
            (
                r#"{"spawn_bytes":1000000,"spawns":20}"#,
                "handler hostile:oversize spawned tasks whose inputs total 19.1 MiB, more than the 16 MiB one task may spawn; split the work over several tasks",
            ),
            (
                r#"{"spawn_depth":65,"spawns":1}"#,
                "spawned task 0 has an input that nests arrays and objects more than 64 levels deep",
            ),
        ]
        .into_iter()
        .map(|(input, error)| (input.to_owned(), error.to_owned()))
        .collect()
    );
    // Only the task within the limits spawned (three tasks, all run).
    let next = engine
        .stage_outputs(&tenant, done.job.job_id, "next", 10)
        .await
        .expect("outputs");
    assert_eq!(next.len(), 3);
}

#[tokio::test]
async fn hostile_oversize_deep_output_is_refused_and_the_deepest_accepted_reads_back() {
    let (_dir, host) = host_with(guest_artifacts::HOSTILE_OVERSIZE, None).await;
    let (result, _) = run(&host, "hostile:oversize", json!({"depth": 100_000})).await;
    assert_eq!(
        result.expect_err("too deep"),
        RunFailure::Fatal(
            "handler hostile:oversize returned output that nests arrays and objects more than 64 levels deep".into()
        )
    );
    let depth = lockstep::limits::MAX_JSON_DEPTH;
    let (result, _) = run(&host, "hostile:oversize", json!({"depth": depth})).await;
    let output = result.expect("the deepest accepted").output;
    // The SDK reads outputs with serde_json, which reads this back.
    serde_json::from_str::<serde_json::Value>(&output).expect("readable");
    assert_still_serving(&host).await;

    // A submitted input is held to the same depth.
    let store = lockstep::store::open(&format!(
        "sqlite://{}",
        _dir.root.path().join("deep.db").display()
    ))
    .await
    .expect("store");
    let engine = lockstep::engine::Engine::new(
        store,
        Arc::new(host),
        lockstep::engine::EngineConfig::default(),
    );
    let deep = format!("{}{}", "[".repeat(depth + 1), "]".repeat(depth + 1));
    let spec = lockstep::spec::parse_job_str(
        &format!(
            r#"{{"name": "deep", "stages": [{{"name": "s", "tasks": [{{"handler": "example:noop", "input": {deep}}}]}}]}}"#
        ),
        lockstep::spec::Format::Json,
        &Default::default(),
    )
    .expect("parses");
    let err = engine
        .submit(&TenantId("local".into()), spec)
        .await
        .expect_err("too deep");
    assert_eq!(
        err.to_string(),
        "/stages/0/tasks/0/input: input nests arrays and objects more than 64 levels deep"
    );
}

/// Six outputs of 900,000 bytes: a page stops once it holds 4 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_lineage_probe_pages_are_bounded_by_bytes_as_well_as_count() {
    let dir = PluginDir::new();
    dir.add(guest_artifacts::EXAMPLE_NOOP);
    dir.add(guest_artifacts::HOSTILE_OVERSIZE);
    dir.add(guest_artifacts::HOSTILE_LINEAGE_PROBE);
    let (host, report) = dir.load().await;
    assert_eq!(report.failures, vec![]);
    let task = r#"{ handler = "hostile:oversize", input = { output_bytes = 900000 } }"#;
    let (engine, tenant, done) = run_job(
        &dir,
        host,
        &format!(
            "name = \"pages\"\n[[stages]]\nname = \"first\"\ntasks = [{}]\n[[stages]]\nname = \"second\"\ntasks = [{{ handler = \"hostile:lineage-probe\", input = {{ stage = \"first\" }} }}]\n",
            [task; 6].join(", ")
        ),
    )
    .await;
    assert_eq!(done.job.state, lockstep::model::JobState::Succeeded);
    let outputs = engine
        .stage_outputs(&tenant, done.job.job_id, "second", 1)
        .await
        .expect("outputs");
    assert_eq!(outputs[0].1, r#"{"pages":[5,1]}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_lineage_probe_after_past_i64_max_is_refused_not_wrapped() {
    let (dir, host) = host_with(guest_artifacts::HOSTILE_LINEAGE_PROBE, None).await;
    let (engine, tenant, done) = run_job(
        &dir,
        host,
        // JSON: a TOML integer cannot hold 2^63.
        r#"{"name": "wrap", "stages": [
            {"name": "first", "tasks": [{"handler": "example:noop"}, {"handler": "example:noop"}]},
            {"name": "second", "tasks": [{"handler": "hostile:lineage-probe",
                "input": {"stage": "first", "after": 9223372036854775808}}]}
        ]}"#,
    )
    .await;
    assert_eq!(done.job.state, lockstep::model::JobState::Failed);
    assert_eq!(
        dead_errors(&engine, &tenant, &done)
            .await
            .into_values()
            .collect::<Vec<_>>(),
        vec![
            "after 9223372036854775808 is not a task id: task ids are at most 9223372036854775807"
        ]
    );
}

// ------------------------------------------------- describe() misbehaving

/// A plugin directory with example:noop and `hostile:describe` granted a
/// `/config` directory whose `mode` file says how to misbehave, plus
/// `grants` (TOML top-level keys).
fn describe_dir(mode: &str, grants: &str) -> (PluginDir, std::path::PathBuf) {
    misbehaving_dir(guest_artifacts::HOSTILE_DESCRIBE, mode, grants)
}

/// A plugin directory with example:noop and the hostile plugin `artifact`
/// granted a `/config` directory whose `mode` file says how to misbehave,
/// plus `grants` (TOML top-level keys).
fn misbehaving_dir(artifact: &str, mode: &str, grants: &str) -> (PluginDir, std::path::PathBuf) {
    let dir = PluginDir::new();
    dir.add(guest_artifacts::EXAMPLE_NOOP);
    let config = dir.mkdir("config");
    std::fs::write(config.join("mode"), mode).expect("write mode");
    let wasm = dir.add(artifact);
    dir.grant(
        &wasm,
        &format!(
            "{grants}\n[[dirs]]\nhost = {:?}\nguest = \"/config\"\n",
            config.display().to_string()
        ),
    );
    (dir, wasm)
}

/// Loads `dir`, failing (rather than hanging) if the load never finishes.
async fn load_within_two_minutes(dir: &PluginDir) -> (PluginHost, lockstep::plugin::LoadReport) {
    tokio::time::timeout(Duration::from_secs(120), dir.load())
        .await
        .expect("the load finishes")
}

#[tokio::test]
async fn hostile_describe_that_never_returns_is_given_up_on_and_remembered() {
    // Its grant allows a task a whole day; describe() gets 5 s.
    let (dir, wasm) = describe_dir("hang", "timeout_ms = 86400000");
    let (host, report) = load_within_two_minutes(&dir).await;
    assert_eq!(host.handler_names(), vec!["example:noop"]);
    assert_eq!(
        report.failures,
        vec![LoadFailure {
            path: wasm.clone(),
            reason: "describe() did not return within 5s".into(),
        }]
    );
    assert_still_serving(&host).await;
    // The next start does not pay again: the failure is remembered by digest.
    let (_, report) = load_within_two_minutes(&dir).await;
    let reason = &report.failures[0].reason;
    assert!(
        reason.starts_with(
            "describe() did not return within 5s (remembered from an earlier load; delete "
        ),
        "{reason}"
    );
    assert!(reason.ends_with(".failed to try again)"), "{reason}");
}

#[tokio::test]
async fn hostile_describe_claiming_a_taken_name_is_refused_and_the_rest_still_serve() {
    let (dir, wasm) = describe_dir("claim:example:noop", "");
    let (host, report) = load_within_two_minutes(&dir).await;
    assert_eq!(
        report.failures,
        vec![LoadFailure {
            path: wasm,
            reason: format!(
                "it provides handler \"example:noop\", which {} already provides; this plugin was not loaded (remove or rename one of them)",
                dir.plugins().join("example-noop.wasm").display()
            ),
        }]
    );
    assert_eq!(host.handler_names(), vec!["example:noop"]);
    assert_still_serving(&host).await;
}

#[tokio::test]
async fn hostile_describe_listing_too_many_handlers_or_too_long_a_description_is_refused() {
    for (mode, reason) in [
        (
            "handlers:100000",
            "describe() lists 100000 handlers, more than the 1000 one plugin may provide",
        ),
        (
            "description-bytes:8388608",
            "describe() gives handler \"hostile:describe\" a description of 8 MiB, longer than the 4 KiB limit",
        ),
        (
            "description-bytes:33554432",
            "describe() returned more than 16 MiB and was stopped",
        ),
    ] {
        let (dir, wasm) = describe_dir(mode, "memory_mib = 128");
        let (host, report) = load_within_two_minutes(&dir).await;
        assert_eq!(
            report.failures,
            vec![LoadFailure {
                path: wasm,
                reason: reason.into(),
            }],
            "{mode}"
        );
        assert_eq!(host.handler_names(), vec!["example:noop"]);
    }
    // The most a plugin may provide registers.
    let (dir, _) = describe_dir("handlers:1000", "");
    let (host, report) = load_within_two_minutes(&dir).await;
    assert_eq!(report.failures, vec![]);
    assert_eq!(host.handler_names().len(), 1001);
}

/// A plugin directory with example:noop and `hostile:mcp-tools` whose
/// `/config/mode` says how to misbehave.
fn mcp_tools_dir(mode: &str) -> (PluginDir, std::path::PathBuf) {
    misbehaving_dir(guest_artifacts::HOSTILE_MCP_TOOLS, mode, "")
}

#[tokio::test]
async fn hostile_mcp_tools_declaring_bad_tools_resources_or_prompts_is_refused_and_the_rest_still_serve()
 {
    let long = format!("name:{}", "x".repeat(65));
    for (mode, reason) in [
        (
            "unknown-handler",
            "mcp tools() offers handler \"hostile:nobody\" as tool \"nobody\", but describe() lists no such handler".to_owned(),
        ),
        (
            "name:",
            "mcp tools() lists tool \"\", whose name is not 1 to 64 characters long".to_owned(),
        ),
        (
            long.as_str(),
            format!("mcp tools() lists tool {:?}, whose name is not 1 to 64 characters long", "x".repeat(65)),
        ),
        (
            "name:run:it",
            "mcp tools() lists tool \"run:it\", whose name contains ':'; MCP names use only `A-Z a-z 0-9 _ - . /`".to_owned(),
        ),
        ("same-name", "mcp tools() lists tool \"twin\" twice".to_owned()),
        (
            "same-handler",
            "mcp tools() offers handler \"hostile:mcp-tools\" twice (as \"one\" and \"two\"); offer each handler once".to_owned(),
        ),
        ("hang", "mcp tools() did not return within 5s".to_owned()),
        (
            "resource-lockstep",
            "mcp-catalog resource \"lockstep://jobs/1\" is a lockstep:// URI; those name lockstep's own jobs and tasks".to_owned(),
        ),
        (
            "resource-unknown-handler",
            "mcp-catalog resource \"test://x\" is read by handler \"hostile:nobody\", which describe() does not list".to_owned(),
        ),
        (
            "resource-bad-template",
            "mcp-catalog resource \"test://{a}{b}\" is not a URI template: two variables side by side cannot be told apart".to_owned(),
        ),
        (
            "resource-twice",
            "mcp-catalog resources() lists \"test://x\" twice".to_owned(),
        ),
        ("prompt-twice", "mcp-catalog prompts() lists prompt \"twice\" twice".to_owned()),
        (
            "prompt-bad-name",
            "mcp-catalog prompts() lists prompt \"a prompt\", whose name contains ' '; MCP names use only `A-Z a-z 0-9 _ - . /`".to_owned(),
        ),
    ] {
        let (dir, wasm) = mcp_tools_dir(mode);
        let (host, report) = load_within_two_minutes(&dir).await;
        assert_eq!(
            report.failures,
            vec![LoadFailure { path: wasm, reason }],
            "{mode}"
        );
        assert_eq!(host.handler_names(), vec!["example:noop"], "{mode}");
        assert_still_serving(&host).await;
    }
    // Behaving, its two handlers are offered as the tools it names.
    let (dir, _) = mcp_tools_dir("");
    let (host, report) = load_within_two_minutes(&dir).await;
    assert_eq!(report.failures, vec![]);
    let tools: Vec<(String, Option<String>)> = host
        .describe_all()
        .into_iter()
        .map(|l| (l.name, l.mcp_tool.map(|t| t.name)))
        .collect();
    assert_eq!(
        tools,
        vec![
            ("example:noop".to_owned(), None),
            (
                "hostile:mcp-tools".to_owned(),
                Some("hostile_tool".to_owned())
            ),
            (
                "hostile:mcp-tools-2".to_owned(),
                Some("hostile_tool_2".to_owned())
            ),
        ]
    );
}

// ------------------------------------------------ guest text on a terminal

/// Every place the CLI prints what the guest wrote: `plugins list`, `exec`
/// (its log lines and its error), `run`, `events`, `task`.
#[tokio::test]
async fn hostile_terminal_escape_text_is_escaped_wherever_it_is_printed() {
    let dir = PluginDir::new();
    dir.add(guest_artifacts::EXAMPLE_NOOP);
    dir.add(guest_artifacts::HOSTILE_TERMINAL_ESCAPE);
    let db = format!("sqlite://{}", dir.root.path().join("cli.db").display());
    let job = dir.root.path().join("job.toml");
    std::fs::write(
        &job,
        "name = \"escape\"\n[[stages]]\nname = \"s\"\ntasks = [{ handler = \"hostile:terminal-escape\" }]\n",
    )
    .expect("job file");
    let lockstep = |args: &[&str]| {
        std::process::Command::new(crate::harness::cli_bin())
            .args(["--db", &db, "--plugins"])
            .arg(dir.plugins())
            .arg("--cache-dir")
            .arg(dir.cache())
            .args(args)
            .output()
            .expect("run lockstep")
    };
    let job_path = job.display().to_string();
    let mut printed = String::new();
    for args in [
        &["plugins", "list"][..],
        &["exec", "hostile:terminal-escape"],
        &["run", &job_path],
        &["events", "1"],
        &["task", "1"],
    ] {
        let out = lockstep(args);
        for stream in [&out.stdout, &out.stderr] {
            let text = String::from_utf8_lossy(stream);
            assert!(
                !text.contains(['\u{1b}', '\u{7}', '\r']),
                "{args:?} printed a control character: {text:?}"
            );
            printed.push_str(&text);
        }
    }
    for escaped in [
        "\\u{1b}[2J\\u{1b}[H\\u{1b}[32mALL PLUGINS VERIFIED OK\\u{1b}[0m\\u{7} hostile description",
        "\\u{1b}[2J\\u{1b}[Hlog: ALL TASKS SUCCEEDED\\u{7}",
        "\\u{1b}]0;fake title\\u{7}progress\\r",
        "\\u{1b}[31mfailed\\u{1b}[0m\\r\\u{1b}[2Kerror: nothing failed",
    ] {
        assert!(printed.contains(escaped), "{escaped} not in {printed}");
    }
}
