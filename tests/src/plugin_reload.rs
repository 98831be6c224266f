//! Hot reload: a plugin directory that changes under a serving process.
//! In the library: a reload carries unchanged plugins over, keeps the
//! previous version of a plugin whose new build is broken, and a task that
//! was running finishes on the version it started with. End to end: a
//! `lockstep serve --http` process with an MCP client connected sees a
//! copied-in plugin's handler (and hears `tools/list_changed`), keeps
//! serving through a broken build, unregisters a deleted plugin (its tasks
//! show `waiting_for` again), and starts them as soon as it is back.

use crate::harness::cli_bin;
use crate::mcp_harness::{Db, HttpServer, Refusal, call, eventually, ok};
use crate::plugin_support::{PluginDir, run};
use lockstep::engine::reload;
use lockstep::engine::{Engine, EngineConfig, WorkerConfig};
use lockstep::guest_artifacts;
use lockstep::model::{JobState, TaskState, TenantId};
use lockstep::spec::{self, Format};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Put `artifact` into `dir` as `name` the way an operator should: copy
/// beside it under a name the scan ignores, then rename into place.
fn install(artifact: &str, dir: &Path, name: &str) {
    let part = dir.join(format!("{name}.part"));
    std::fs::copy(artifact, &part).expect("copy plugin");
    std::fs::rename(&part, dir.join(name)).expect("rename plugin into place");
}

/// A broken build: a `.wasm` file that is not a component.
fn install_broken(dir: &Path, name: &str) {
    let part = dir.join(format!("{name}.part"));
    std::fs::write(&part, b"\0asm\x0d\0\x01\0broken build").expect("write broken plugin");
    std::fs::rename(&part, dir.join(name)).expect("rename into place");
}

#[tokio::test]
async fn a_broken_build_keeps_the_previous_version_and_unchanged_plugins_carry_over() {
    let dir = PluginDir::new();
    dir.add(guest_artifacts::EXAMPLE_NOOP);
    let steps = dir.add(guest_artifacts::EXAMPLE_STEPS);
    let (host, _) = dir.load().await;

    // Nothing changed: the very same plugins.
    let (same, report) = host.reload(&dir.config(false)).await.expect("reload");
    assert_eq!(report.failures, Vec::new());
    assert!(same.same_plugins_as(&host));

    // A broken build of steps: the old one keeps serving, and the reason says so.
    install_broken(&dir.plugins(), "example-steps.wasm");
    let (reloaded, report) = host.reload(&dir.config(false)).await.expect("reload");
    assert_eq!(report.failures.len(), 1);
    assert_eq!(report.failures[0].path, steps);
    let reason = &report.failures[0].reason;
    assert!(
        reason.starts_with("it is not a valid WebAssembly component: ")
            && reason.ends_with("; the previous version keeps serving"),
        "{reason}"
    );
    assert_eq!(
        reloaded.handler_names(),
        vec!["example:noop".to_owned(), "example:steps".to_owned()]
    );
    let (result, _) = run(&reloaded, "example:steps", json!({"steps": 2})).await;
    assert_eq!(result.expect("steps runs").output, r#"{"steps":2}"#);

    // A broken plugin that never loaded has nothing to keep.
    install_broken(&dir.plugins(), "new.wasm");
    let (reloaded, report) = reloaded.reload(&dir.config(false)).await.expect("reload");
    let new = report
        .failures
        .iter()
        .find(|f| f.path == dir.plugins().join("new.wasm"))
        .expect("new.wasm failed");
    assert!(!new.reason.contains("previous version"), "{}", new.reason);
    assert_eq!(reloaded.handler_names().len(), 2);

    // Removed: unregistered.
    std::fs::remove_file(&steps).expect("remove");
    let (reloaded, _) = reloaded.reload(&dir.config(false)).await.expect("reload");
    assert_eq!(reloaded.handler_names(), vec!["example:noop".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_running_during_a_reload_finishes_on_the_version_it_started_with() {
    let dir = PluginDir::new();
    let steps = dir.add(guest_artifacts::EXAMPLE_STEPS);
    let (host, _) = dir.load().await;
    let url = format!("sqlite://{}", dir.root.path().join("lockstep.db").display());
    let engine = Engine::open(&url, Arc::new(host), EngineConfig::default())
        .await
        .expect("engine");
    let tenant = TenantId("local".into());
    let job = spec::parse_job_str(
        r#"
name = "long"
[[stages]]
name = "work"
tasks = [{ handler = "example:steps", input = { steps = 30, step_ms = 50 } }]
"#,
        Format::Toml,
        &Default::default(),
    )
    .expect("job parses");
    let job = engine.submit(&tenant, job).await.expect("submit").job_id;
    let pool = engine.start_workers(WorkerConfig::default());
    eventually("the task runs", || async {
        let p = engine.progress(&tenant, job).await.expect("progress");
        p.counts
            .iter()
            .any(|(s, n)| *s == TaskState::Running && *n == 1)
            .then_some(())
    })
    .await;

    std::fs::remove_file(&steps).expect("remove the plugin");
    reload::reload(&engine, &dir.config(false)).await;
    assert_eq!(engine.plugins().handler_names(), Vec::<String>::new());

    let p = engine
        .wait(&tenant, job, Some(Duration::from_secs(120)), |_| {})
        .await
        .expect("wait");
    assert_eq!(p.job.state, JobState::Succeeded);
    let outputs = engine
        .stage_outputs(&tenant, job, "work", 10)
        .await
        .expect("outputs");
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0].1, r#"{"steps":30}"#);
    pool.shutdown().await;
}

/// `lockstep submit` from another process that has the plugin: the task
/// waits in the shared database for a process that can run it.
fn submit_elsewhere(db: &Db, plugins: &Path, job_file: &Path) -> i64 {
    let out = std::process::Command::new(cli_bin())
        .args(["--db", &db.url])
        .arg("--plugins")
        .arg(plugins)
        .arg("--cache-dir")
        .arg(crate::harness::test_cache_dir())
        .arg("submit")
        .arg(job_file)
        .output()
        .expect("run lockstep submit");
    assert!(
        out.status.success(),
        "submit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .split(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no job id in {stdout:?}"))
}

/// The official TypeScript SDK client of `tests/js/list_changed.mjs`,
/// connected to `url`: one JSON line per event it saw.
struct TsListener {
    child: std::process::Child,
    events: std::sync::mpsc::Receiver<serde_json::Value>,
}

impl TsListener {
    fn start(url: &str, token: &str) -> TsListener {
        let tools = crate::interop_tools::node_tools();
        let mut child = tools
            .script(&crate::interop_tools::js_dir().join("list_changed.mjs"))
            .arg(json!({"url": url, "token": token}).to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start the TypeScript SDK client");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, events) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let event = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("the TypeScript client printed {line:?}: {e}"));
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
        TsListener { child, events }
    }

    /// The next event matching `wanted` (events before it are skipped);
    /// panics after 60 s without one.
    fn until(&self, what: &str, wanted: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) if wanted(&event) => return event,
                Ok(_) => continue,
                Err(_) => panic!("the TypeScript client saw no {what} within 60 s"),
            }
        }
    }
}

impl Drop for TsListener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lists(event: &serde_json::Value, tool: &str) -> bool {
    event["tools"]
        .as_array()
        .is_some_and(|t| t.iter().any(|n| n == tool))
}

fn tool_names(tools: &[rmcp::model::Tool]) -> Vec<String> {
    tools.iter().map(|t| t.name.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reloads_its_plugin_folder_while_an_mcp_client_is_connected() {
    let db = Db::new().await;
    let folder = db.dir.path().join("live-plugins");
    std::fs::create_dir(&folder).expect("plugin folder");
    install(guest_artifacts::EXAMPLE_NOOP, &folder, "example_noop.wasm");
    let server = HttpServer::start_with_plugins(&db, &folder, &[]);
    let token = db.create_token("local");
    let client = server.client(&token).await;
    let changes = client.service().tool_list_changes.clone();
    let info = client.peer_info().expect("server info");
    assert_eq!(
        info.capabilities
            .tools
            .as_ref()
            .and_then(|t| t.list_changed),
        Some(true),
        "the server advertises tools.listChanged"
    );
    let tools = client.list_all_tools().await.expect("tools/list");
    assert!(tool_names(&tools).contains(&"example.noop".to_owned()));
    assert!(!tool_names(&tools).contains(&"example.steps".to_owned()));
    // A second, official client: the TypeScript SDK, in its own process.
    let ts = tokio::task::block_in_place(|| TsListener::start(&server.url, &token));
    let ready = tokio::task::block_in_place(|| ts.until("ready", |e| e["event"] == "ready"));
    assert_eq!(ready["listChanged"], true, "{ready}");
    assert!(lists(&ready, "example.noop"), "{ready}");

    // Copied in: usable, and the client hears about it.
    install(
        guest_artifacts::EXAMPLE_STEPS,
        &folder,
        "example_steps.wasm",
    );
    eventually("tools/list_changed after the copy", || async {
        (changes.load(Ordering::SeqCst) >= 1).then_some(())
    })
    .await;
    let tools = client.list_all_tools().await.expect("tools/list");
    assert!(tool_names(&tools).contains(&"example.steps".to_owned()));
    tokio::task::block_in_place(|| {
        ts.until("list_changed with example.steps", |e| {
            e["event"] == "list_changed" && lists(e, "example.steps")
        })
    });
    let out = ok(&client, "example.steps", json!({"steps": 2, "step_ms": 1})).await;
    assert_eq!(out, json!({"steps": 2}));

    // A broken build: the old version keeps serving, and no change is announced.
    let before = changes.load(Ordering::SeqCst);
    install_broken(&folder, "example_steps.wasm");
    // The next change proves the broken build was looked at.
    install(guest_artifacts::EXAMPLE_SUM, &folder, "example_sum.wasm");
    eventually("the next reload", || async {
        (changes.load(Ordering::SeqCst) > before).then_some(())
    })
    .await;
    let out = ok(&client, "example.steps", json!({"steps": 1, "step_ms": 1})).await;
    assert_eq!(out, json!({"steps": 1}));
    let submitted = ok(
        &client,
        "submit_job",
        json!({"job": {"name": "still", "stages": [{"name": "a", "tasks": [{"handler": "example:steps", "input": {"steps": 1}}]}]}}),
    )
    .await;
    let waited = ok(
        &client,
        "wait_job",
        json!({"job_id": submitted["job_id"], "timeout_seconds": 60}),
    )
    .await;
    assert_eq!(waited["job"]["state"], "succeeded", "{waited}");

    // Deleted: unregistered; a task for it waits, and says for what.
    let before = changes.load(Ordering::SeqCst);
    std::fs::remove_file(folder.join("example_steps.wasm")).expect("delete");
    eventually("tools/list_changed after the delete", || async {
        (changes.load(Ordering::SeqCst) > before).then_some(())
    })
    .await;
    let tools = client.list_all_tools().await.expect("tools/list");
    assert!(!tool_names(&tools).contains(&"example.steps".to_owned()));
    tokio::task::block_in_place(|| {
        ts.until("list_changed without example.steps", |e| {
            e["event"] == "list_changed" && !lists(e, "example.steps")
        })
    });
    let refused = call(&client, "example.steps", json!({"steps": 1}))
        .await
        .expect_err("no such tool any more");
    assert_eq!(
        refused,
        Refusal::Protocol {
            code: -32602,
            message: "tool not found".to_owned(),
            data: None
        }
    );

    let job_file = db.dir.path().join("steps.toml");
    std::fs::write(
        &job_file,
        "name = \"waits\"\n[[stages]]\nname = \"a\"\ntasks = [{ handler = \"example:steps\", input = { steps = 1 } }]\n",
    )
    .expect("job file");
    let job = submit_elsewhere(&db, Path::new(guest_artifacts::EXAMPLES_DIR), &job_file);
    let waiting = eventually("waiting_for example:steps", || async {
        let view = ok(&client, "get_job", json!({"job_id": job})).await;
        let waiting = view["waiting_for"].clone();
        waiting
            .as_array()
            .is_some_and(|w| !w.is_empty())
            .then_some(waiting)
    })
    .await;
    assert_eq!(
        waiting,
        json!([{"executor": "wasm", "handler": "example:steps", "registered_here": false}])
    );

    // Back: the waiting task starts without a restart.
    install(
        guest_artifacts::EXAMPLE_STEPS,
        &folder,
        "example_steps.wasm",
    );
    let waited = ok(
        &client,
        "wait_job",
        json!({"job_id": job, "timeout_seconds": 60}),
    )
    .await;
    assert_eq!(waited["job"]["state"], "succeeded", "{waited}");
    let _ = client.cancel().await;
    drop(server);
    let log = server_log(&db);
    assert!(
        log.contains(&format!(
            "plugin {} was not loaded: it is not a valid WebAssembly component",
            folder.join("example_steps.wasm").display()
        )) && log.contains("; the previous version keeps serving"),
        "the server logs why the broken build was not loaded:\n{log}"
    );
}

/// Everything the test's `serve` processes wrote to stderr.
fn server_log(db: &Db) -> String {
    let mut all = String::new();
    for entry in std::fs::read_dir(db.dir.path()).expect("read dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_some_and(|n| n.starts_with("serve-") && n.ends_with(".log")) {
            all.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
        }
    }
    all
}
