//! The `lockstep` command line as a user meets it: real processes, exit codes
//! (0 ok, 1 failed job, 2 bad input), one-sentence errors, nothing written on
//! bad input.

use crate::harness::{cli_bin, test_cache_dir};
use lockstep::guest_artifacts;
use std::path::Path;
use std::process::{Command, Output};

struct Cli {
    dir: tempfile::TempDir,
}

impl Cli {
    fn new() -> Cli {
        Cli {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn db(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("cli.db").display())
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(cli_bin())
            .current_dir(self.dir.path())
            .args([
                "--db",
                &self.db(),
                "--plugins",
                guest_artifacts::EXAMPLES_DIR,
            ])
            .arg("--cache-dir")
            .arg(test_cache_dir())
            .args(args)
            .output()
            .expect("run lockstep")
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write job file");
        path.display().to_string()
    }

    fn job_count(&self) -> usize {
        let out = self.run(&["jobs", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let jobs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("jobs json");
        jobs.len()
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Bad input: exit code 2 and exactly one line on stderr.
fn assert_bad_input(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(2),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    let err = stderr(o);
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "more than one line: {err}"
    );
    err
}

#[test]
fn demo_runs_the_fan_out_and_aggregate_job() {
    let cli = Cli::new();
    let out = cli.run(&["demo", "--count", "100"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("succeeded"), "{text}");
    assert!(text.contains(r#"{"count":100,"sum":5050}"#), "{text}");
    assert!(text.contains("lockstep status"), "{text}");
}

#[test]
fn run_exits_zero_when_the_job_succeeds_and_one_when_it_fails() {
    let cli = Cli::new();
    let ok = cli.write(
        "ok.toml",
        "name = \"ok\"\n[[stages]]\nname = \"s\"\ntasks = [{ handler = \"example:noop\" }]\n",
    );
    let out = cli.run(&["run", &ok]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let bad = cli.write(
        "bad.toml",
        "name = \"bad\"\n[[stages]]\nname = \"s\"\ntasks = [{ handler = \"example:flaky\", input = { fail_times = 9 }, max_attempts = 1 }]\n",
    );
    let out = cli.run(&["run", &bad]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("failed"), "{}", stderr(&out));
}

#[test]
fn malformed_job_file_is_exit_two_with_line_and_column_and_writes_nothing() {
    let cli = Cli::new();
    let file = cli.write("broken.toml", "name = \"x\"\n[[stages]\nname = 1\n");
    let err = assert_bad_input(&cli.run(&["submit", &file]));
    assert!(err.contains("broken.toml:2:"), "{err}");
    assert_eq!(cli.job_count(), 0);
}

#[test]
fn unknown_handler_is_exit_two_and_writes_nothing() {
    let cli = Cli::new();
    let file = cli.write(
        "x.toml",
        "name = \"x\"\n[[stages]]\nname = \"s\"\ntasks = [{ handler = \"nope\" }]\n",
    );
    let err = assert_bad_input(&cli.run(&["submit", &file]));
    assert!(err.contains("unknown handler \"nope\""), "{err}");
    assert_eq!(cli.job_count(), 0);
}

#[test]
fn missing_job_file_is_exit_two() {
    let cli = Cli::new();
    let err = assert_bad_input(&cli.run(&["submit", "does-not-exist.toml"]));
    assert!(err.contains("does-not-exist.toml"), "{err}");
}

#[test]
fn status_of_an_unknown_job_is_exit_two_not_found() {
    let cli = Cli::new();
    let err = assert_bad_input(&cli.run(&["status", "4242"]));
    assert!(err.contains("job 4242 not found"), "{err}");
}

#[test]
fn an_unknown_state_filter_is_exit_two() {
    let cli = Cli::new();
    let err = assert_bad_input(&cli.run(&["jobs", "--state", "sleeping"]));
    assert!(err.contains("sleeping"), "{err}");
}

#[test]
fn submit_twice_returns_the_same_job() {
    let cli = Cli::new();
    let file = cli.write(
        "once.toml",
        "name = \"once\"\n[[stages]]\nname = \"s\"\ntasks = [{ handler = \"example:noop\" }]\n",
    );
    let first = cli.run(&["submit", &file, "--json"]);
    let second = cli.run(&["submit", &file, "--json"]);
    let a: serde_json::Value = serde_json::from_slice(&first.stdout).expect("json");
    let b: serde_json::Value = serde_json::from_slice(&second.stdout).expect("json");
    assert_eq!(a["job_id"], b["job_id"]);
    assert_eq!(
        (a["created"].as_bool(), b["created"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(cli.job_count(), 1);
}

#[test]
fn plugins_list_shows_every_example_handler() {
    let cli = Cli::new();
    let out = cli.run(&["plugins", "list", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    let mut names: Vec<&str> = list.iter().filter_map(|h| h["name"].as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "example:fanout",
            "example:flaky",
            "example:noop",
            "example:steps",
            "example:sum",
            "example:wordcount"
        ]
    );
}

#[test]
fn exec_runs_one_task_and_prints_its_output() {
    let cli = Cli::new();
    let out = cli.run(&["exec", "example:noop", "--input", r#"{"value":7}"#]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), r#"{"value":7}"#);
}

#[test]
fn exec_with_input_that_is_not_json_is_exit_two() {
    let cli = Cli::new();
    let err = assert_bad_input(&cli.run(&["exec", "example:noop", "--input", "{value"]));
    assert!(err.contains("--input is not valid JSON"), "{err}");
}

#[test]
fn the_default_database_is_lockstep_db_in_the_working_directory() {
    let cli = Cli::new();
    let out = Command::new(cli_bin())
        .current_dir(cli.dir.path())
        .arg("migrate")
        .env_remove("LOCKSTEP_DB")
        .env_remove("DATABASE_URL")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(Path::new(&cli.dir.path().join("lockstep.db")).exists());
}

#[test]
fn bench_mcp_prints_one_json_line_per_case_with_every_sample() {
    let cli = Cli::new();
    let sdks = crate::interop_tools::python_sdks();
    let mut args = vec![
        "bench",
        "mcp",
        "--tasks",
        "400",
        "--samples",
        "30",
        "--validations",
        "50",
        "--python-samples",
        "5",
    ];
    for sdk in sdks {
        args.extend(["--python", sdk.python.to_str().expect("a UTF-8 path")]);
    }
    let out = cli.run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let cases: Vec<&str> = lines
        .iter()
        .map(|l| l["case"].as_str().expect("case"))
        .collect();
    // Every line says on what machine, and under what load, it was measured.
    for line in &lines {
        assert_eq!(line["machine"]["cpus"].as_u64().map(|n| n > 0), Some(true));
        let load = line["machine"]["load_average"].as_array().expect("load");
        assert_eq!(load.len(), 3, "{line}");
    }
    assert_eq!(
        cases[..5],
        [
            "fill",
            "get_job",
            "get_job_large",
            "claim_task",
            "complete_task"
        ]
    );
    for line in &lines[1..5] {
        assert_eq!(line["bench"], "mcp");
        assert_eq!(line["tasks"], 400);
        assert_eq!(line["samples"], 30, "{line}");
        assert_eq!(line["transport"], "streamable-http");
        let (p50, p99) = (
            line["p50_us"].as_f64().expect("p50"),
            line["p99_us"].as_f64().expect("p99"),
        );
        assert!(p50 > 0.0 && p50 <= p99, "{line}");
    }
    // The plan holds the 30 samples and 200 warm-up calls; the filler the rest.
    let job_tasks: Vec<i64> = lines[1..5]
        .iter()
        .map(|l| l["job_tasks"].as_i64().expect("job_tasks"))
        .collect();
    assert_eq!(job_tasks, [230, 170, 230, 230]);

    // Then one line per tool: its output schema's size, a compiled
    // validator's runs and each Python SDK's timed calls on a typical result.
    let mut tools: Vec<&str> = lines[5..]
        .iter()
        .map(|l| {
            assert_eq!(l["case"], "output_schema", "{l}");
            l["tool"].as_str().expect("tool")
        })
        .collect();
    tools.sort();
    // Handler tools publish no output schema: the built-in tools only.
    assert_eq!(tools, crate::mcp_official_clients::TOOLS);
    let summary = |s: &serde_json::Value, samples: u64| {
        assert_eq!(s["samples"], samples, "{s}");
        let (p50, p99) = (
            s["p50_us"].as_f64().expect("p50"),
            s["p99_us"].as_f64().expect("p99"),
        );
        assert!(p50 > 0.0 && p50 <= p99, "{s}");
    };
    for line in &lines[5..] {
        let bytes = line["schema_bytes"].as_u64().expect("schema_bytes");
        assert!(bytes > 50, "{line}");
        // run_pipeline starts sandboxed CI steps in the server (it needs a
        // --pipelines-root and component files): the benchmark says it
        // makes no typical call of it.
        if line["tool"] == "run_pipeline" {
            assert_eq!(
                line["note"], "the benchmark makes no typical call of this tool",
                "{line}"
            );
            continue;
        }
        assert!(
            line["result_bytes"].as_u64().expect("result_bytes") > 10,
            "{line}"
        );
        summary(&line["compiled"], 50);
        let python = line["python_sdk"].as_array().expect("python_sdk");
        let versions: Vec<&str> = python
            .iter()
            .map(|run| run["sdk"].as_str().expect("sdk"))
            .collect();
        let expected: Vec<&str> = sdks.iter().map(|s| s.version.as_str()).collect();
        assert_eq!(versions, expected, "{line}");
        for run in python {
            assert_eq!(run["tool"], line["tool"]);
            assert_eq!(run["transport"], "stdio");
            summary(&run["call_validated"], 5);
            summary(&run["call_unvalidated"], 5);
            summary(&run["validate"], 10);
        }
    }

    // The benchmark's own database holds what it did: the plan, every one of
    // its 230 tasks (200 warm-up, 30 samples) completed once, the filler job
    // of the remaining 170 tasks untouched; and each tool's calls of the
    // client side exactly once: 1 by the compiled validator's run and 14
    // (4 warm-up, 5 validated, 5 not) by each of the 2 Python runs, 29 in all.
    let status = |job: &serde_json::Value| {
        let id = job["job_id"].as_i64().expect("job id").to_string();
        let out = cli.run(&["status", &id, "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("status json")
    };
    // The job view's counts by state, in the view's (alphabetical) order.
    let counts = |job: &serde_json::Value| -> Vec<(String, i64)> {
        status(job)["counts"]
            .as_object()
            .expect("counts")
            .iter()
            .filter(|(_, n)| n.as_i64() != Some(0))
            .map(|(state, n)| (state.clone(), n.as_i64().expect("n")))
            .collect()
    };
    let jobs = cli.run(&["jobs", "--json", "--limit", "100"]);
    assert_eq!(jobs.status.code(), Some(0), "{}", stderr(&jobs));
    let jobs: Vec<serde_json::Value> = serde_json::from_slice(&jobs.stdout).expect("jobs json");
    let named = |name: &str| -> Vec<&serde_json::Value> {
        jobs.iter().filter(|j| j["name"] == name).collect()
    };
    let one = |name: &str| -> &serde_json::Value {
        let found = named(name);
        assert_eq!(found.len(), 1, "{name}: {jobs:?}");
        found[0]
    };
    let plan = status(one("bench mcp"));
    assert_eq!(plan["state"], "succeeded", "{plan}");
    let fill = status(one("bench-fill-1"));
    assert_eq!(fill["state"], "running", "{fill}");
    assert_eq!(
        (&fill["stages"][0]["total"], &fill["stages"][0]["done"]),
        (&serde_json::json!(170), &serde_json::json!(0)),
        "{fill}"
    );
    let n = |state: &str, count: i64| (state.to_string(), count);
    // docs/mcp.md's example plan: its first subtask completed, once.
    assert_eq!(
        counts(one("Add email login")),
        [n("blocked", 2), n("pending", 2), n("succeeded", 1)]
    );
    // Claims: the subtask they depend on, and 29 claimed.
    assert_eq!(
        counts(one("bench mcp: claims")),
        [n("running", 29), n("succeeded", 1)]
    );
    // One task updated 29 times, 29 completed, 29 failed (to be retried).
    assert_eq!(
        counts(one("bench mcp: work")),
        [n("pending", 29), n("running", 1), n("succeeded", 29)]
    );
    // 29 plans cancelled; 29 cancelled tasks retried.
    for i in 0..29 {
        assert_eq!(one(&format!("bench mcp: cancel {i}"))["state"], "cancelled");
    }
    assert_eq!(counts(one("bench mcp: retries")), [n("pending", 29)]);
    assert_eq!(counts(one("bench mcp: finished")), [n("succeeded", 1)]);
    // submit_job with one idempotency key 29 times: one job.
    assert_eq!(counts(one("review the login change")), [n("pending", 2)]);
    assert_eq!(jobs.len(), 2 + 6 + 29, "{jobs:?}");
}

#[test]
fn bench_mcp_with_more_samples_than_one_plan_holds_is_exit_two() {
    let cli = Cli::new();
    let out = cli.run(&["bench", "mcp", "--tasks", "100000", "--samples", "9801"]);
    let err = assert_bad_input(&out);
    assert!(
        err.contains("--samples 9801 is out of range: it must be 1 to 9800"),
        "{err}"
    );
    let out = cli.run(&["bench", "mcp", "--tasks", "100", "--samples", "10"]);
    let err = assert_bad_input(&out);
    assert!(
        err.contains("--tasks 100 is too small: it must be at least --samples + 200 = 210"),
        "{err}"
    );
    let out = cli.run(&[
        "bench",
        "mcp",
        "--python",
        "python3",
        "--python",
        "python3",
        "--python-samples",
        "1248",
    ]);
    let err = assert_bad_input(&out);
    assert!(
        err.contains("--python-samples 1248 is out of range: with 2 --python it must be 1 to 1247 (the calls of every run are prepared in plans of at most 10000 subtasks)"),
        "{err}"
    );
    let err = assert_bad_input(&cli.run(&["bench", "mcp", "--validations", "0"]));
    assert!(
        err.contains("--validations 0 is out of range: it must be 1 to 1000000"),
        "{err}"
    );
}

#[test]
fn bench_throughput_host_noop_records_every_task_without_running_its_plugin() {
    let cli = Cli::new();
    let out = cli.run(&[
        "bench",
        "throughput",
        "--tasks",
        "300",
        "--workers",
        "16",
        "--latency-samples",
        "2",
        "--handler",
        "host-noop",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let run = &lines[0];
    assert_eq!(
        (&run["case"], &run["handler"], &run["tasks"]),
        (&"noop_tasks".into(), &"host-noop".into(), &300.into()),
        "{run}"
    );
    // Each task claimed once, recorded once, no lease lost on the way.
    assert_eq!(
        (
            &run["claims"],
            &run["refused_completions"],
            &run["lease_expiries"]
        ),
        (&300.into(), &0.into(), &0.into()),
        "{run}"
    );
    for per_task in ["statements_per_task", "round_trips_per_task"] {
        let n = run[per_task].as_f64().expect(per_task);
        assert!(n > 0.0, "{per_task}: {run}");
    }
    assert!(
        run["peak_rss_mib"].as_f64().expect("peak RSS") > 1.0,
        "{run}"
    );
    // Every task succeeded through the store with the host's `null`, not the
    // plugin's output (example:noop returns its input).
    let outputs = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            let store = lockstep::store::open(&cli.db()).await.expect("open");
            let jobs = store
                .list_jobs(lockstep::store::ListJobs {
                    tenant: lockstep::model::TenantId("local".into()),
                    state: None,
                    name: Some("bench-throughput".into()),
                    created_after: None,
                    created_before: None,
                    before_id: None,
                    limit: 10,
                })
                .await
                .expect("jobs");
            assert_eq!(jobs.len(), 1, "{jobs:?}");
            store
                .stage_results(lockstep::store::StageResults {
                    tenant: lockstep::model::TenantId("local".into()),
                    job: jobs[0].job_id,
                    from_stage_position: i32::MAX,
                    stage_name: "work".into(),
                    after: None,
                    limit: 1000,
                    max_bytes: u64::MAX,
                })
                .await
                .expect("outputs")
        });
    assert_eq!(outputs.len(), 300);
    assert!(outputs.iter().all(|(_, output)| output == "null"));
}

#[test]
fn bench_fanin_reports_the_stage_advance_over_its_rounds() {
    let cli = Cli::new();
    let out = cli.run(&[
        "bench",
        "fanin",
        "--tasks",
        "20",
        "--workers",
        "8",
        "--rounds",
        "3",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(
        (&line["bench"], &line["tasks"], &line["rounds"]),
        (&"fanin".into(), &20.into(), &3.into()),
        "{line}"
    );
    let gap = &line["last_completion_to_next_stage_claim_ms"];
    let ms = |p: &str| gap[p].as_f64().unwrap_or_else(|| panic!("{p}: {line}"));
    assert!(
        0.0 <= ms("p50") && ms("p50") <= ms("p99") && ms("p99") <= ms("max"),
        "{line}"
    );
    // Three fan-in jobs ran to the end, each summing its 20 spawned tasks.
    let jobs = stdout(&cli.run(&["jobs", "--json"]));
    assert_eq!(jobs.matches("bench-fanin-").count(), 3, "{jobs}");
}

#[test]
fn bench_fanin_without_rounds_is_exit_two() {
    let cli = Cli::new();
    let err = assert_bad_input(&cli.run(&["bench", "fanin", "--rounds", "0"]));
    assert!(
        err.contains("--tasks and --rounds must each be at least 1"),
        "{err}"
    );
}

#[test]
fn bench_throughput_host_noop_with_processes_is_exit_two() {
    let cli = Cli::new();
    let out = cli.run(&[
        "bench",
        "throughput",
        "--handler",
        "host-noop",
        "--processes",
        "2",
    ]);
    let err = assert_bad_input(&out);
    assert!(
        err.contains("--handler host-noop runs the workers in this process: leave out --processes"),
        "{err}"
    );
}

#[test]
fn task_shows_what_its_handler_logged() {
    let cli = Cli::new();
    let job = cli.write(
        "steps.toml",
        "name = \"steps\"\n[[stages]]\nname = \"s\"\ntasks = [{ handler = \"example:steps\", input = { steps = 2, step_ms = 1 } }]\n",
    );
    let out = cli.run(&["run", &job]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = cli.run(&["task", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let logs: Vec<String> = stdout(&out)
        .lines()
        .filter(|l| l.starts_with("  log "))
        .map(str::to_string)
        .collect();
    assert_eq!(
        logs,
        ["  log      progress 2/2: working"],
        "{}",
        stdout(&out)
    );
}

#[test]
fn status_of_a_job_nobody_works_on_says_which_worker_it_needs() {
    let cli = Cli::new();
    let job = cli.write(
        "noop.toml",
        "name = \"idle\"\n[[stages]]\nname = \"s\"\ntasks = [{ handler = \"example:noop\" }, { handler = \"example:sum\", input = { from = \"s\" } }]\n",
    );
    let out = cli.run(&["submit", &job]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = cli.run(&["status", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(
            "  waiting: no task is running; ready tasks need a worker (`lockstep serve`) with example:noop, example:sum\n"
        ),
        "{}",
        stdout(&out)
    );
    let out = cli.run(&["status", "1", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(status["state"], "running");
    // A status run loads no plugins, so it cannot say what is registered.
    assert_eq!(
        status["waiting_for"],
        serde_json::json!([
            { "executor": "wasm", "handler": "example:noop", "registered_here": null },
            { "executor": "wasm", "handler": "example:sum", "registered_here": null }
        ])
    );
}

#[test]
fn status_spec_prints_the_job_as_submitted_and_resubmitting_it_names_the_same_job() {
    let cli = Cli::new();
    // A task input holding CSI (U+009B) and DEL, which JSON leaves raw.
    let file = cli.write(
        "spec.toml",
        "name = \"spec\"\n[[stages]]\nname = \"s\"\ntasks = [{ handler = \"example:noop\", input = { note = \"a\\u009bb\\u007f\" } }]\n",
    );
    let out = cli.run(&["submit", &file]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let out = cli.run(&["status", "1", "--spec"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let printed = stdout(&out);
    assert_eq!(printed.lines().count(), 1, "{printed}");
    assert!(
        printed.contains(r#""note":"a\u009bb\u007f""#),
        "escaped for the terminal: {printed}"
    );
    assert!(!printed.contains(['\u{9b}', '\u{7f}']), "{printed}");
    let spec: serde_json::Value = serde_json::from_str(&printed).expect("the spec is JSON");
    assert_eq!(spec["name"], "spec");
    assert_eq!(
        spec["stages"][0]["tasks"][0]["input"]["note"],
        "a\u{9b}b\u{7f}"
    );

    // The printed spec is a job file naming the same job.
    let again = cli.write("spec.json", &printed);
    let out = cli.run(&["submit", &again, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let submitted: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (submitted["job_id"].as_i64(), submitted["created"].as_bool()),
        (Some(1), Some(false))
    );

    // The other JSON outputs escape the same characters.
    let out = cli.run(&["task", "1", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(r#""note": "a\u009bb\u007f""#),
        "{}",
        stdout(&out)
    );

    let err = assert_bad_input(&cli.run(&["status", "2", "--spec"]));
    assert!(err.contains("job 2 not found"), "{err}");
    let out = cli.run(&["status", "1", "--spec", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the argument '--spec' cannot be used with '--json'"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_error_is_printed_once_even_when_it_has_a_cause() {
    let cli = Cli::new();
    let file = cli.write("f.toml", "name = \"\"\n[[stages]]\nname = \"s\"\n");
    let err = assert_bad_input(&cli.run(&["submit", &file]));
    assert_eq!(err, format!("error: {file}: /name: job name is empty\n"));
    let file = cli.write(
        "g.toml",
        "name = \"g\"\n[[stages]]\nname = \"s\"\ntasks = [{ handler = \"nope\" }]\n",
    );
    let err = assert_bad_input(&cli.run(&["submit", &file]));
    assert_eq!(
        err,
        format!(
            "error: {file}: /stages/0/tasks/0/handler: unknown handler \"nope\"; registered handlers: example:fanout, example:flaky, example:noop, example:steps, example:sum, example:wordcount\n"
        )
    );
}

#[test]
fn the_limits_errors_cite_are_real_flags_and_sizes_read_humanly() {
    let cli = Cli::new();
    // A file of 3,000 bytes against a 1 KiB limit: its real size, in KiB.
    let file = cli.write("big.toml", &format!("name = \"{}\"\n", "x".repeat(2989)));
    let err = assert_bad_input(&cli.run(&["--max-spec-bytes", "1024", "submit", &file]));
    assert_eq!(
        err,
        format!(
            "error: {file}: job file is 2.9 KiB, larger than the 1 KiB limit (raise it with --max-spec-bytes)\n"
        )
    );
    let three = cli.write(
        "three.toml",
        "name = \"three\"\n[[stages]]\nname = \"s\"\ntasks = [{ handler = \"example:noop\" }, { handler = \"example:noop\" }, { handler = \"example:noop\" }]\n",
    );
    let err = assert_bad_input(&cli.run(&["--max-tasks-per-job", "2", "submit", &three]));
    assert_eq!(
        err,
        format!(
            "error: {three}: /stages: job has 3 tasks, more than the 2-task limit (raise it with --max-tasks-per-job)\n"
        )
    );
    // Raising the limits lets the same files through.
    let out = cli.run(&["--max-tasks-per-job", "3", "submit", &three]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let help = stdout(&cli.run(&["--help"]));
    for flag in [
        "--max-spec-bytes",
        "--max-tasks-per-job",
        "--max-input-bytes",
    ] {
        assert!(help.contains(flag), "--help does not document {flag}");
    }
    // The fixed limits are in --help too, with the numbers the checks use.
    assert!(
        help.contains(
            "Limits (job files, MCP arguments and the tasks handlers spawn alike): a job name is at most 4096 bytes; \
             stage names, task keys, depends_on entries, handler and specialist names at most 256; \
             an idempotency key 1024; a tenant 100; an agent task's title 1024 and its instructions 262144. \
             Names hold no control characters and no text holds a NUL."
        ),
        "{help}"
    );
    assert_eq!(cli.job_count(), 1);
}

#[test]
fn a_fifty_megabyte_stage_name_is_refused_and_writes_nothing() {
    let cli = Cli::new();
    let name = "s".repeat(50 << 20);
    let file = cli.write(
        "huge.toml",
        &format!("name = \"huge\"\n[[stages]]\nname = \"{name}\"\ntasks = [{{ handler = \"example:noop\" }}]\n"),
    );
    drop(name);
    let err = assert_bad_input(&cli.run(&["submit", &file]));
    assert_eq!(
        err,
        format!(
            "error: {file}: /stages/0/name: stage name is 52428800 bytes, longer than the 256-byte limit\n"
        )
    );
    assert_eq!(cli.job_count(), 0);
}

#[test]
fn a_tenant_name_with_control_characters_is_refused_by_every_command() {
    let cli = Cli::new();
    for args in [vec!["jobs"], vec!["status", "1"]] {
        let mut all = vec!["--tenant", "a\u{1b}[31mb"];
        all.extend(args);
        let err = assert_bad_input(&cli.run(&all));
        assert_eq!(
            err,
            "error: --tenant: the tenant name \"a\\u{1b}[31mb\" contains whitespace or control characters\n"
        );
    }
}

#[test]
fn retry_of_a_task_still_on_its_way_is_exit_two_in_one_sentence() {
    let cli = Cli::new();
    // Submitted without a worker: task 1 is pending, task 2 waits for its stage.
    let file = cli.write(
        "two.toml",
        "name = \"two\"\n[[stages]]\nname = \"a\"\ntasks = [{ handler = \"example:noop\" }]\n[[stages]]\nname = \"b\"\ntasks = [{ handler = \"example:noop\" }]\n",
    );
    let out = cli.run(&["submit", &file]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for (task, state) in [("2", "blocked"), ("1", "pending")] {
        let err = assert_bad_input(&cli.run(&["retry", task]));
        assert_eq!(
            err.trim_end(),
            format!("error: task {task} is {state}: only a dead or cancelled task can be retried")
        );
    }
    // Nothing changed: the job still runs both tasks to the end.
    let out = cli.run(&["run", &file]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = cli.run(&["status", "1", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(status["state"], "succeeded", "{status}");
}

#[test]
fn retry_resumes_a_failed_job_from_the_dead_tasks_stage_and_refuses_a_stage_never_reached() {
    let cli = Cli::new();
    let file = cli.write(
        "resume.toml",
        "name = \"resume\"\n[[stages]]\nname = \"a\"\ntasks = [{ handler = \"example:flaky\", input = { fail_times = 1 }, max_attempts = 1 }]\n[[stages]]\nname = \"b\"\ntasks = [{ handler = \"example:noop\" }]\n",
    );
    let out = cli.run(&["run", &file]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = assert_bad_input(&cli.run(&["retry", "2"]));
    assert_eq!(
        err,
        "error: task 2 cannot be retried on its own: job 1 stopped (failed) before its stage \"b\" \
         opened; retry a dead or cancelled task of the stage where the job stopped, and the \
         cancelled tasks of the later stages come back with it\n"
    );
    let out = cli.run(&["retry", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "task 1 pending; a worker (lockstep serve) will run it\n"
    );
    let out = cli.run(&["status", "1", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(status["state"], "running", "{status}");
    // Task 1 waits for a worker; task 2 is back, blocked until stage b opens.
    let stages: Vec<(&str, i64, i64)> = status["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| {
            (
                s["state"].as_str().unwrap_or("?"),
                s["counts"]["pending"].as_i64().unwrap_or(-1),
                s["counts"]["blocked"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(stages, [("open", 1, 0), ("waiting", 0, 1)], "{status}");
}

#[test]
fn a_failed_run_lists_its_dead_tasks_with_their_errors() {
    let cli = Cli::new();
    let tasks = ["{ handler = \"example:flaky\", input = { fail_times = 9 }, max_attempts = 1 }";
        12]
        .join(", ");
    let file = cli.write(
        "dead.toml",
        &format!("name = \"dead\"\n[[stages]]\nname = \"split\"\ntasks = [{tasks}]\n"),
    );
    let out = cli.run(&["run", &file]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    let listed: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != "dead tasks (12):")
        .collect();
    let mut expected = vec!["dead tasks (12):".to_string()];
    expected.extend((1..=10).map(|id| {
        format!(
            "  task {id} (stage split, example:flaky, attempt 1 of 1): attempt 1 fails on purpose (fail_times = 9)"
        )
    }));
    expected.push("  … and 2 more".to_string());
    expected.push("  whole record: lockstep task 1   run it again: lockstep retry 1".to_string());
    assert_eq!(listed, expected, "{text}");
}

#[test]
fn logs_off_a_terminal_have_no_colour_codes() {
    let cli = Cli::new();
    // Debug logs of this process's own work, written to a pipe.
    let out = cli.run(&["--log", "debug", "jobs"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(!err.trim().is_empty(), "debug logging wrote nothing");
    assert!(!err.contains('\u{1b}'), "colour codes in a log: {err:?}");
}

#[test]
fn an_unreadable_log_filter_is_refused_before_anything_runs() {
    let cli = Cli::new();
    // `loud` is no level: this used to log at `warn` without a word.
    let out = cli.run(&["--log", "lockstep=loud", "jobs"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("error: invalid value 'lockstep=loud' for '--log <LOG>'")
            && first.contains("expected a level (error, warn, info, debug, trace)"),
        "{err}"
    );
    assert!(
        !cli.dir.path().join("cli.db").exists(),
        "a refused command created the database"
    );
}

#[test]
fn a_refused_job_file_writes_nothing_not_even_the_database() {
    let cli = Cli::new();
    let file = cli.write(
        "unknown.toml",
        "name = \"x\"\n[[stages]]\nname = \"s\"\ntasks = [{ handler = \"nobody:here\", input = {} }]\n",
    );
    for command in ["submit", "run"] {
        let out = cli.run(&[command, &file]);
        let err = assert_bad_input(&out);
        assert!(err.contains("nobody:here"), "{command}: {err}");
        // The file is checked before the store opens: a first refused
        // submit used to leave an empty, migrated database behind.
        assert!(
            !cli.dir.path().join("cli.db").exists(),
            "{command}: a refused job file created the database"
        );
    }
}

/// Programs whose flags lockstep's messages quote (build recipes for
/// plugin authors); a literal naming one of them is not about lockstep's flags.
const OTHER_PROGRAMS: [&str; 7] = [
    "cargo ",
    "componentize",
    "jco ",
    "wasm-tools ",
    "npm ",
    "npx ",
    "pip ",
];

/// Every `--flag` written inside a string literal of the runtime's source,
/// except in literals that quote another program's command line.
fn flags_cited_in_messages() -> std::collections::BTreeSet<String> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read source dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime/src"),
        &mut files,
    );
    let mut flags = std::collections::BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read source");
        for line in text.lines() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            // The odd pieces between quotes are string literals.
            for literal in code.split('"').skip(1).step_by(2) {
                if OTHER_PROGRAMS.iter().any(|p| literal.contains(p)) {
                    continue;
                }
                let mut rest = literal;
                while let Some(at) = rest.find("--") {
                    let name: String = rest[at + 2..]
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '-')
                        .collect();
                    if name.len() > 1 && !name.starts_with('-') {
                        flags.insert(format!("--{}", name.trim_end_matches('-')));
                    }
                    rest = &rest[at + 2..];
                }
            }
        }
    }
    flags
}

/// `--help` of the program and of every command under it.
fn every_help(prefix: &mut Vec<String>, out: &mut String) {
    let mut args = prefix.clone();
    args.push("--help".to_string());
    let help = Command::new(cli_bin())
        .args(&args)
        .output()
        .expect("run --help");
    let text = String::from_utf8_lossy(&help.stdout).into_owned();
    out.push_str(&text);
    let commands: Vec<String> = text
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    for command in commands {
        prefix.push(command);
        every_help(prefix, out);
        prefix.pop();
    }
}

#[test]
fn every_flag_a_message_suggests_exists() {
    let mut helps = String::new();
    every_help(&mut Vec::new(), &mut helps);
    let documented: std::collections::BTreeSet<&str> = helps
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--"))
        .collect();
    let cited = flags_cited_in_messages();
    // Not vacuous: the limits' errors cite their flags.
    for flag in [
        "--max-input-bytes",
        "--max-tasks-per-job",
        "--max-spec-bytes",
    ] {
        assert!(cited.contains(flag), "{flag} not found in the messages");
    }
    let missing: Vec<String> = cited
        .into_iter()
        .filter(|f| !documented.contains(f.as_str()))
        .collect();
    assert_eq!(
        missing,
        Vec::<String>::new(),
        "flags cited but not accepted"
    );
}

#[test]
fn bench_plugin_says_which_templates_it_did_not_measure_and_refuses_what_it_cannot() {
    let cli = Cli::new();
    let out = cli.run(&["bench", "plugin", "--iterations", "20"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    for lang in ["python", "js"] {
        assert!(
            err.contains(&format!(
                "bench plugin: the {lang} template is not measured: build it as docs/plugins.md#benchmarks says and pass --component {lang}=PATH\n"
            )),
            "{err}"
        );
    }
    let cases: Vec<String> = stdout(&out)
        .lines()
        .map(|l| {
            let line: serde_json::Value = serde_json::from_str(l).expect("each line is JSON");
            line["case"].as_str().expect("case").to_string()
        })
        .collect();
    assert_eq!(cases, ["noop_run", "startup_warm_cache"]);

    let noop = Path::new(guest_artifacts::EXAMPLES_DIR).join("example-noop.wasm");
    let missing = cli.dir.path().join("missing.wasm");
    let cases = [
        (
            "python".to_string(),
            "error: --component \"python\" is not LABEL=PATH; e.g. --component python=greet-py/greet_py.wasm".to_string(),
        ),
        (
            "Py=greet.wasm".to_string(),
            "error: --component: the label \"Py\" is not usable; use 1 to 32 lowercase letters, digits and `-` (e.g. python)".to_string(),
        ),
        (
            format!("rust={}", noop.display()),
            format!(
                "error: --component rust={}: it has no handler NAME:greet, so it is not a project of `lockstep plugins new` (its handlers: example:noop)",
                noop.display()
            ),
        ),
        (
            format!("js={}", missing.display()),
            format!(
                "error: --component js={}: cannot read it: No such file or directory (os error 2)",
                missing.display()
            ),
        ),
    ];
    for (component, expected) in cases {
        let out = cli.run(&[
            "bench",
            "plugin",
            "--iterations",
            "1",
            "--cached-loads",
            "1",
            "--component",
            &component,
        ]);
        let err = assert_bad_input(&out);
        assert_eq!(err.trim_end(), expected, "{component}");
        assert_eq!(stdout(&out), "", "{component}");
    }
}

/// `lockstep jobs | head -1` closes standard output early. Rust ignores
/// SIGPIPE, so a `println!` there panicked; the command now ends quietly
/// with exit code 0. The pipe's read end is closed before the process
/// starts, so its very first write meets the closed reader.
#[test]
fn a_reader_that_closes_standard_output_ends_the_command_quietly() {
    let cli = Cli::new();
    for args in [
        &["jobs"][..],
        &["plugins", "wit"][..],
        &["demo", "--count", "3"][..],
    ] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = Command::new(cli_bin())
            .current_dir(cli.dir.path())
            .args([
                "--db",
                &cli.db(),
                "--plugins",
                guest_artifacts::EXAMPLES_DIR,
            ])
            .arg("--cache-dir")
            .arg(test_cache_dir())
            .args(args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("run lockstep");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert_eq!(err, "", "{args:?} said something on stderr");
    }
}

/// The benchmark's own job meets the process's limits: `--max-tasks-per-job`
/// reaches it (so a million-task benchmark needs only the flag).
#[test]
fn bench_throughput_meets_the_max_tasks_per_job_flag() {
    let cli = Cli::new();
    let out = cli.run(&[
        "--max-tasks-per-job",
        "10",
        "bench",
        "throughput",
        "--tasks",
        "20",
        "--latency-samples",
        "0",
    ]);
    let err = assert_bad_input(&out);
    assert_eq!(
        err.trim_end(),
        "error: /stages: job has 20 tasks, more than the 10-task limit (raise it with --max-tasks-per-job)"
    );
}
