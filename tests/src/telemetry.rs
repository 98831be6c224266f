//! The operator's view of a real `lockstep serve --http` process: `/metrics`
//! read with a Prometheus text-format parser (`prometheus-parse`) matches
//! the database exactly after a job with retries, a dead task and a trap,
//! behind `--metrics-token`; and `--log-format json` writes one JSON object
//! per line carrying the job and task ids (Invariant 37).

use crate::harness::{all_events, cli_bin, test_cache_dir};
use crate::mcp_harness::{Client, Db, HttpServer, Refusal, call};
use lockstep::engine::{Engine, EngineConfig};
use lockstep::guest_artifacts;
use lockstep::model::{EventKind, JobId, TaskState, TenantId};
use lockstep::plugin::PluginHost;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const METRICS_TOKEN: &str = "scrape-me-0123456789";

/// A `lockstep serve --http` child logging JSON at debug level.
struct Served {
    server: HttpServer,
    /// `http://127.0.0.1:PORT`
    base: String,
}

impl Served {
    fn start(db: &Db, plugins: &Path, extra: &[&str]) -> Served {
        let mut args = vec!["--no-auth"];
        args.extend_from_slice(extra);
        let server = HttpServer::start_logging(
            db,
            plugins,
            &["--log", "lockstep=debug", "--log-format", "json"],
            "4",
            &args,
        );
        let base = server.url.trim_end_matches("/mcp").to_string();
        Served { server, base }
    }

    fn lines(&self) -> Vec<String> {
        self.server.stderr.lock().expect("stderr lines").clone()
    }

    async fn mcp(&self) -> Client {
        // --no-auth: the header is not looked at.
        self.server.client("no-token").await
    }

    async fn get_metrics(&self, token: Option<&str>) -> reqwest::Response {
        let mut request = reqwest::Client::new().get(format!("{}/metrics", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("GET /metrics")
    }
}

/// `example:noop`, `example:flaky` and `hostile:panic` in one directory.
fn plugin_dir(dir: &Path) -> std::path::PathBuf {
    let plugins = dir.join("plugins");
    std::fs::create_dir(&plugins).expect("plugin dir");
    for wasm in [
        guest_artifacts::EXAMPLE_NOOP,
        guest_artifacts::EXAMPLE_FLAKY,
        guest_artifacts::HOSTILE_PANIC,
    ] {
        let name = Path::new(wasm).file_name().expect("a file name");
        std::fs::copy(wasm, plugins.join(name)).expect("copy a plugin");
    }
    plugins
}

/// Five no-ops, a flaky task that fails once, one that fails both its
/// attempts and a panicking one with a single attempt; the failures do not
/// fail the job.
const JOB: &str = r#"
name = "observed"
[[stages]]
name = "work"
on_failure = "continue"
tasks = [
  { handler = "example:noop", input = { n = 1 } },
  { handler = "example:noop", input = { n = 2 } },
  { handler = "example:noop", input = { n = 3 } },
  { handler = "example:noop", input = { n = 4 } },
  { handler = "example:noop", input = { n = 5 } },
  { handler = "example:flaky", input = { fail_times = 1 }, max_attempts = 3 },
  { handler = "example:flaky", input = { fail_times = 9 }, max_attempts = 2 },
  { handler = "hostile:panic", input = {}, max_attempts = 1 },
]
"#;

/// `lockstep submit` as another process; the job id.
fn submit(db_url: &str, plugins: &Path, dir: &Path) -> JobId {
    let file = dir.join("job.toml");
    std::fs::write(&file, JOB).expect("write job");
    let out = Command::new(cli_bin())
        .args(["--db", db_url])
        .arg("--plugins")
        .arg(plugins)
        .arg("--cache-dir")
        .arg(test_cache_dir())
        .arg("submit")
        .arg(&file)
        .output()
        .expect("run lockstep submit");
    assert!(
        out.status.success(),
        "submit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let id = text
        .split(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| panic!("no job id in {text:?}"));
    JobId(id.parse().expect("a job id"))
}

/// Every sample of the scrape: (name, sorted labels) → value.
type Samples = BTreeMap<(String, Vec<(String, String)>), f64>;

fn parse(text: &str) -> Samples {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("/metrics parses as the Prometheus text format");
    let mut samples = Samples::new();
    for sample in scrape.samples {
        let mut labels: Vec<(String, String)> = sample
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.sort();
        let value = match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(buckets) => {
                // The +Inf bucket: every observation.
                buckets
                    .iter()
                    .find(|b| b.less_than == f64::INFINITY)
                    .map_or(0.0, |b| b.count)
            }
            prometheus_parse::Value::Summary(_) => panic!("{} is a summary", sample.metric),
        };
        samples.insert((sample.metric, labels), value);
    }
    samples
}

fn value(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.sort();
    *samples
        .get(&(name.to_string(), labels.clone()))
        .unwrap_or_else(|| {
            panic!(
                "no sample {name}{labels:?}; the scrape has: {:?}",
                samples.keys().collect::<Vec<_>>()
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_the_database_and_json_logs_carry_ids_after_a_real_job() {
    let db = Db::new().await;
    let db_url = db.url.clone();
    let dir = db.dir.path();
    let plugins = plugin_dir(dir);
    let served = Served::start(&db, &plugins, &["--metrics-token", METRICS_TOKEN]);

    // The token guards /metrics: none, or a wrong one, is refused.
    let refused = served.get_metrics(None).await;
    assert_eq!(refused.status(), 401);
    assert_eq!(
        refused.text().await.expect("body"),
        "missing bearer token: /metrics needs Authorization: Bearer <the --metrics-token of this server>\n"
    );
    let wrong = served.get_metrics(Some("scrape-me-9876543210")).await;
    assert_eq!(wrong.status(), 401);

    let job = submit(&db_url, &plugins, dir);
    let engine = Engine::open(
        &db_url,
        Arc::new(PluginHost::empty()),
        EngineConfig::default(),
    )
    .await
    .expect("open the database");
    let tenant = TenantId("local".into());
    let done = engine
        .wait(&tenant, job, Some(Duration::from_secs(120)), |_| {})
        .await
        .expect("wait for the job");
    assert!(done.job.state.is_terminal(), "{:?}", done.job);

    // Three MCP calls: one answered, one refused, one for no tool at all.
    let client = served.mcp().await;
    call(&client, "get_job", json!({ "job_id": job.0 }))
        .await
        .expect("get_job");
    assert!(matches!(
        call(&client, "get_job", json!({ "job_id": job.0 + 1000 })).await,
        Err(Refusal::Tool { .. })
    ));
    assert!(matches!(
        call(&client, "no_such_tool", json!({})).await,
        Err(Refusal::Protocol { .. })
    ));
    client.cancel().await.expect("close the MCP session");

    let response = served.get_metrics(Some(METRICS_TOKEN)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.expect("body");
    for name in [
        "lockstep_tasks_total",
        "lockstep_tasks",
        "lockstep_jobs",
        "lockstep_task_duration_seconds",
        "lockstep_task_wait_seconds",
        "lockstep_lease_rescued_total",
        "lockstep_completion_fenced_total",
        "lockstep_plugin_traps_total",
        "lockstep_mcp_requests_total",
        "lockstep_mcp_request_duration_seconds",
        "lockstep_oldest_ready_task_age_seconds",
        "lockstep_database_sampled_timestamp_seconds",
    ] {
        assert!(
            text.contains(&format!("# HELP {name} ")) && text.contains(&format!("# TYPE {name} ")),
            "{name} has no HELP or TYPE line:\n{text}"
        );
    }
    let samples = parse(&text);

    // The database's truth: each task's handler, and its events.
    let events = all_events(&engine, &tenant, job).await;
    let mut handler_of = BTreeMap::new();
    let mut truth: BTreeMap<(String, &str), f64> = BTreeMap::new();
    for event in &events {
        let outcome = match event.kind {
            EventKind::TaskSucceeded => "succeeded",
            EventKind::TaskRetried => "retried",
            EventKind::TaskDead => "dead",
            _ => continue,
        };
        let task = event.task_id.expect("a task event names its task");
        if let std::collections::btree_map::Entry::Vacant(entry) = handler_of.entry(task) {
            let record = engine.task(&tenant, task).await.expect("task");
            entry.insert(record.handler);
        }
        *truth
            .entry((handler_of[&task].clone(), outcome))
            .or_default() += 1.0;
    }
    // What the job's tasks did, as the plugins promise.
    let expected: BTreeMap<(String, &str), f64> = [
        (("example:noop".to_string(), "succeeded"), 5.0),
        (("example:flaky".to_string(), "retried"), 2.0),
        (("example:flaky".to_string(), "succeeded"), 1.0),
        (("example:flaky".to_string(), "dead"), 1.0),
        (("hostile:panic".to_string(), "dead"), 1.0),
    ]
    .into_iter()
    .collect();
    assert_eq!(truth, expected, "the database's events");
    for ((handler, outcome), n) in &truth {
        assert_eq!(
            value(
                &samples,
                "lockstep_tasks_total",
                &[("handler", handler), ("outcome", outcome)]
            ),
            *n,
            "lockstep_tasks_total{{handler={handler:?},outcome={outcome:?}}}"
        );
        // Every attempt this process ran was timed.
        assert_eq!(
            value(
                &samples,
                "lockstep_task_duration_seconds",
                &[("handler", handler), ("outcome", outcome)]
            ),
            *n
        );
    }
    let series: usize = samples
        .keys()
        .filter(|(name, _)| name == "lockstep_tasks_total")
        .count();
    assert_eq!(series, truth.len(), "no outcome the database does not have");
    // Each attempt was claimed once: 5 + 3 + 2 + 1 = its wait observed.
    for (handler, claims) in [
        ("example:noop", 5.0),
        ("example:flaky", 4.0),
        ("hostile:panic", 1.0),
    ] {
        assert_eq!(
            value(
                &samples,
                "lockstep_task_wait_seconds",
                &[("handler", handler)]
            ),
            claims
        );
    }
    assert_eq!(
        value(
            &samples,
            "lockstep_plugin_traps_total",
            &[("handler", "hostile:panic"), ("kind", "trap")]
        ),
        1.0
    );
    assert_eq!(value(&samples, "lockstep_lease_rescued_total", &[]), 0.0);
    assert_eq!(
        value(&samples, "lockstep_completion_fenced_total", &[]),
        0.0
    );

    // The sampled gauges are the database's states: the first scrape that
    // passed the token check started the sampler, after the job had ended
    // (the refused scrapes above read nothing).
    let sampled_at = value(&samples, "lockstep_database_sampled_timestamp_seconds", &[]);
    let finished = done.job.finished_at.expect("the job's end time") as f64 / 1000.0;
    assert!(
        sampled_at >= finished,
        "sampled at {sampled_at}, before the job finished at {finished}"
    );
    let progress = engine.progress(&tenant, job).await.expect("progress");
    for state in TaskState::ALL {
        let n = progress
            .counts
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n);
        assert_eq!(
            value(&samples, "lockstep_tasks", &[("state", state.as_str())]),
            n as f64,
            "lockstep_tasks{{state={state}}}"
        );
    }
    assert_eq!(
        value(&samples, "lockstep_tasks", &[("state", "succeeded")]),
        6.0
    );
    assert_eq!(value(&samples, "lockstep_tasks", &[("state", "dead")]), 2.0);
    assert_eq!(
        value(
            &samples,
            "lockstep_jobs",
            &[("state", done.job.state.as_str())]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "lockstep_oldest_ready_task_age_seconds",
            &[("executor", "wasm")]
        ),
        0.0,
        "nothing waits"
    );

    // MCP calls by tool and outcome; an unknown name is not a label.
    for (tool, outcome) in [
        ("get_job", "ok"),
        ("get_job", "refused"),
        ("unknown", "error"),
    ] {
        assert_eq!(
            value(
                &samples,
                "lockstep_mcp_requests_total",
                &[("tool", tool), ("outcome", outcome)]
            ),
            1.0,
            "{tool} {outcome}"
        );
    }
    assert!(
        !text.contains("no_such_tool"),
        "a caller's tool name became a label"
    );

    // --log-format json: every log line is one JSON object; the worker's
    // events name the job and the task.
    let lines = served.lines();
    let mut task_events: Vec<Value> = Vec::new();
    for line in &lines {
        if line.starts_with("lockstep serve: ") {
            continue; // the process's own status lines, not log events
        }
        let event: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
        assert!(event.is_object(), "{line}");
        for field in ["timestamp", "level", "target", "message"] {
            assert!(event.get(field).is_some(), "no {field} in {line}");
        }
        if event.get("task_id").is_some() {
            task_events.push(event);
        }
    }
    let tasks_of_job: std::collections::BTreeSet<i64> = handler_of.keys().map(|t| t.0).collect();
    let mut messages: BTreeMap<String, usize> = BTreeMap::new();
    for event in &task_events {
        if event["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("task "))
        {
            assert_eq!(event["job_id"], json!(job.0), "{event}");
            let task = event["task_id"].as_i64().expect("task_id is a number");
            assert!(tasks_of_job.contains(&task), "{event}");
            assert!(
                event["handler"].is_string() && event["attempt"].is_i64(),
                "{event}"
            );
            *messages
                .entry(event["message"].as_str().unwrap_or_default().to_string())
                .or_default() += 1;
        }
    }
    assert_eq!(
        messages,
        [
            ("task succeeded".to_string(), 6),
            ("task attempt failed; it will be retried".to_string(), 2),
            ("task dead".to_string(), 2),
        ]
        .into_iter()
        .collect(),
        "one log event per recorded attempt: {task_events:?}"
    );
    let dead = task_events
        .iter()
        .find(|e| e["message"] == "task dead" && e["handler"] == "hostile:panic")
        .expect("the panic's death is logged");
    assert!(
        dead["error"]
            .as_str()
            .is_some_and(|e| e.contains("handler hostile:panic trapped: panicked at ")),
        "{dead}"
    );
}

#[test]
fn a_short_metrics_token_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("lockstep.db");
    let out = Command::new(cli_bin())
        .arg("--db")
        .arg(format!("sqlite://{}", db.display()))
        .args(["serve", "--http", "127.0.0.1:0", "--metrics-token", "short"])
        .output()
        .expect("run lockstep serve");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: --metrics-token must be at least 16 characters (it guards /metrics), got 5\n"
    );
    assert!(!db.exists(), "nothing was written");
}
