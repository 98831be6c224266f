//! One test per guest program (example and hostile), named after it, each
//! asserting the program's exact outcome in the sandbox. After every hostile
//! run the same host still serves example:noop.

use crate::plugin_support::{
    LineageContext, Logged, PluginDir, RecordingContext, assert_still_serving, attempts, request,
    run,
};
use lockstep::guest_artifacts;
use lockstep::plugin::{LogLevel, PluginHost, RunFailure, Spawn};
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
    let (result, _) = run(&host, "example:fanout", json!({"count": 100_001})).await;
    assert_eq!(
        result.expect_err("too many").to_string(),
        "count 100001 is more than example:fanout spawns in one run (100000); split the work over several tasks"
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
        let err = host
            .run(req, RecordingContext::new())
            .await
            .expect_err("fails on purpose");
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
    use lockstep::engine::{Engine, EngineConfig, WorkerConfig};
    use lockstep::model::{EventKind, TenantId};
    use lockstep::plugin::{MAX_LOG_LINES, MAX_LOG_MESSAGE};

    let (dir, host) = host_with(guest_artifacts::HOSTILE_LOG_FLOOD, None).await;
    let url = format!("sqlite://{}", dir.root.path().join("flood.db").display());
    let store = lockstep::store::open(&url).await.expect("open store");
    let engine = Engine::new(store, Arc::new(host), EngineConfig::default());
    let tenant = TenantId("local".into());
    let spec = lockstep::spec::parse_job_str(
        "name = \"flood\"\n[[stages]]\nname = \"s\"\ntasks = [{ handler = \"hostile:log-flood\", timeout = \"5m\" }]\n",
        lockstep::spec::Format::Toml,
        &Default::default(),
    )
    .expect("job parses");
    let job = engine.submit(&tenant, spec).await.expect("submit").job_id;
    let pool = engine.start_workers(WorkerConfig::default());
    let done = engine
        .wait(&tenant, job, Some(Duration::from_secs(240)), |_| {})
        .await
        .expect("wait");
    pool.shutdown().await;
    assert_eq!(done.job.state, lockstep::model::JobState::Succeeded);

    let logs: Vec<String> = crate::harness::all_events(&engine, &tenant, job)
        .await
        .into_iter()
        .filter(|e| e.kind == EventKind::TaskLog)
        .filter_map(|e| e.detail)
        .collect();
    // 100 lines cut to 4 KiB, the host's note of the rest, and only the last
    // progress report (also cut).
    assert_eq!(logs.len(), MAX_LOG_LINES + 2);
    let cut_line = format!("info: {} [cut: 5000 bytes]", "x".repeat(MAX_LOG_MESSAGE));
    assert!(logs[..MAX_LOG_LINES].iter().all(|l| *l == cut_line));
    assert_eq!(
        logs[MAX_LOG_LINES],
        "warn: 19900 more log lines dropped (limit 100 per run)"
    );
    assert_eq!(
        logs[MAX_LOG_LINES + 1],
        format!("progress 20000/20000: {}", "x".repeat(MAX_LOG_MESSAGE))
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
    // One runtime thread: the spinning guest must yield so noop can run.
    let (_dir, host) = host_with(
        guest_artifacts::HOSTILE_INFINITE_LOOP,
        Some("timeout_ms = 2000\n"),
    )
    .await;
    let host = Arc::new(host);
    let spinning = {
        let host = host.clone();
        tokio::spawn(async move {
            host.run(
                request("hostile:infinite-loop", json!({})),
                RecordingContext::new(),
            )
            .await
        })
    };
    tokio::task::yield_now().await;
    assert_still_serving(&host).await;
    assert!(
        !spinning.is_finished(),
        "noop finished while the loop was still spinning"
    );
    let err = spinning.await.expect("join").expect_err("stopped");
    assert_eq!(
        err.to_string(),
        "handler hostile:infinite-loop exceeded its 2s deadline and was stopped"
    );
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
