//! `lockstep ci` as a user meets it: real pipeline files, the real sample
//! and hostile command components and the sample test binary built from
//! `plugins/`, real `lockstep` processes (killed with SIGKILL for the resume
//! test), a real SQLite file read back through the engine.

use crate::harness::{cli_bin, test_cache_dir};
use lockstep::engine::pipeline::StepStatus;
use lockstep::engine::{Engine, EngineConfig};
use lockstep::guest_artifacts;
use lockstep::model::{Event, EventKind, JobId, JobState, StepOutcome, TaskState, TenantId};
use lockstep::plugin::PluginHost;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

/// A workspace with a pipeline file, a database beside it.
struct Ci {
    dir: tempfile::TempDir,
}

impl Ci {
    fn new() -> Ci {
        let ci = Ci {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        std::fs::create_dir_all(ci.workspace()).expect("workspace");
        ci
    }

    fn workspace(&self) -> PathBuf {
        self.dir.path().join("ws")
    }

    fn db_path(&self) -> PathBuf {
        self.dir.path().join("ci.db")
    }

    fn db(&self) -> String {
        format!("sqlite://{}", self.db_path().display())
    }

    /// Write a file in the workspace; returns its path.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.workspace().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, text).expect("write");
        path
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(cli_bin());
        c.current_dir(self.dir.path())
            .args([
                "--db",
                &self.db(),
                "--plugins",
                guest_artifacts::EXAMPLES_DIR,
            ])
            .arg("--cache-dir")
            .arg(test_cache_dir())
            .args(args)
            .env_remove("LOCKSTEP_DB")
            .env_remove("DATABASE_URL");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run lockstep")
    }

    /// `ci run` of a pipeline file in the workspace.
    fn ci_run(&self, file: &str, extra: &[&str]) -> Output {
        let path = self.workspace().join(file);
        let path = path.to_str().expect("utf-8 path");
        let mut args = vec!["ci", "run", path];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    async fn engine(&self) -> Arc<Engine> {
        Engine::open(
            &self.db(),
            Arc::new(PluginHost::empty()),
            EngineConfig::default(),
        )
        .await
        .expect("open the run's database")
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The run id printed first by `ci run` / `ci rerun` (`run N: …`).
fn run_id(o: &Output) -> JobId {
    let out = stdout(o);
    let first = out.lines().next().unwrap_or_default();
    let id = first
        .strip_prefix("run ")
        .or_else(|| first.strip_prefix("resuming run "))
        .and_then(|r| r.split([':', ' ']).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no run id in {}", text(o)));
    JobId(id)
}

fn tenant() -> TenantId {
    TenantId("local".to_string())
}

async fn steps(ci: &Ci, run: JobId) -> HashMap<String, StepStatus> {
    ci.engine()
        .await
        .pipeline_steps(&tenant(), run)
        .await
        .expect("steps of the run")
        .into_iter()
        .map(|s| (s.plan.key.clone(), s))
        .collect()
}

async fn events(ci: &Ci, run: JobId) -> Vec<Event> {
    crate::harness::all_events(&*ci.engine().await, &tenant(), run).await
}

fn state_of(steps: &HashMap<String, StepStatus>, key: &str) -> TaskState {
    steps
        .get(key)
        .unwrap_or_else(|| panic!("no step {key}: {:?}", steps.keys().collect::<Vec<_>>()))
        .state
}

/// Position in the event log of the first event of `kind` for step `key`.
fn first(
    events: &[Event],
    steps: &HashMap<String, StepStatus>,
    key: &str,
    kind: EventKind,
) -> usize {
    let task = steps[key].task_id;
    events
        .iter()
        .position(|e| e.task_id == Some(task) && e.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} event for {key}"))
}

fn logs_of(events: &[Event], steps: &HashMap<String, StepStatus>, key: &str) -> Vec<String> {
    let task = steps[key].task_id;
    events
        .iter()
        .filter(|e| e.task_id == Some(task) && e.kind == EventKind::TaskLog)
        .filter_map(|e| e.detail.clone())
        .collect()
}

// ------------------------------------------------------------ order and outcomes

const ORDER: &str = r#"
name = "order"

[[steps]]
key = "build"
component = "command-script"
args = ["echo:building", "write:/out/bin.txt=the binary"]

[[steps]]
key = "test"
component = "command-script"
needs = ["build"]
matrix = { os = ["linux", "mac", "windows"], exclude = [{ os = "mac" }] }
args = ["echo:testing on {{ matrix.os }}", "read:/artifacts/build/bin.txt"]

[[steps]]
key = "lint"
component = "command-script"
needs = ["build"]
allow_failure = true
args = ["fail:style problems"]

[[steps]]
key = "deploy"
component = "command-script"
needs = ["test", "lint"]
args = ["echo:deploying", "fail:the deploy broke"]

[[steps]]
key = "notify"
component = "command-script"
needs = ["deploy"]
if = "always()"
args = ["echo:notified"]

[[steps]]
key = "publish"
component = "command-script"
needs = ["deploy"]
args = ["echo:published"]

[[steps]]
key = "cleanup"
component = "command-script"
needs = ["deploy"]
if = "failure()"
args = ["echo:cleaning up"]
"#;

#[tokio::test]
async fn a_pipeline_runs_its_dag_matrix_always_and_soft_failure_in_order() {
    let ci = Ci::new();
    ci.write("lockstep-ci.toml", ORDER);
    let out = ci.ci_run("lockstep-ci.toml", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let run = run_id(&out);
    let steps = steps(&ci, run).await;
    let mut keys: Vec<&str> = steps.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "build",
            "cleanup",
            "deploy",
            "lint",
            "notify",
            "publish",
            "test-linux",
            "test-windows"
        ],
        "the matrix expands to linux and windows (mac is excluded)"
    );
    for (key, state) in [
        ("build", TaskState::Succeeded),
        ("test-linux", TaskState::Succeeded),
        ("test-windows", TaskState::Succeeded),
        ("lint", TaskState::Dead),
        ("deploy", TaskState::Dead),
        ("notify", TaskState::Succeeded),
        ("publish", TaskState::Skipped),
        ("cleanup", TaskState::Succeeded),
    ] {
        assert_eq!(state_of(&steps, key), state, "{key}: {}", text(&out));
    }
    let lint = steps["lint"].report.as_ref().expect("lint report");
    assert!(lint.soft_failure, "lint failed softly");
    assert_eq!(lint.exit_code, Some(1));
    let deploy = steps["deploy"].report.as_ref().expect("deploy report");
    assert!(!deploy.soft_failure);
    assert_eq!(deploy.summary, "exited with status 1");
    let publish = steps["publish"].report.as_ref().expect("publish report");
    assert_eq!(publish.outcome, StepOutcome::Skipped);
    assert_eq!(
        publish.summary,
        "skipped: if success() is false (needed step deploy failed)"
    );

    let events = events(&ci, run).await;
    let claimed = |k| first(&events, &steps, k, EventKind::TaskClaimed);
    let ended = |k, kind| first(&events, &steps, k, kind);
    for test in ["test-linux", "test-windows", "lint"] {
        assert!(ended("build", EventKind::TaskSucceeded) < claimed(test));
    }
    assert!(ended("test-linux", EventKind::TaskSucceeded) < claimed("deploy"));
    assert!(ended("test-windows", EventKind::TaskSucceeded) < claimed("deploy"));
    assert!(ended("lint", EventKind::TaskDead) < claimed("deploy"));
    assert!(ended("deploy", EventKind::TaskDead) < claimed("notify"));
    assert_eq!(
        logs_of(&events, &steps, "test-windows"),
        ["stdout: testing on windows", "stdout: the binary"],
        "the matrix value is substituted and build's artifact is read"
    );
    assert_eq!(logs_of(&events, &steps, "notify"), ["stdout: notified"]);
    assert!(
        logs_of(&events, &steps, "publish").is_empty(),
        "publish never ran"
    );
    assert_eq!(
        logs_of(&events, &steps, "deploy"),
        ["stdout: deploying", "stderr: error: the deploy broke"]
    );
    let printed = stdout(&out);
    assert!(printed.contains("[deploy] failed in "), "{printed}");
    assert!(printed.contains("[lint] soft-fail in "), "{printed}");
    let last = String::from_utf8_lossy(&out.stderr);
    let last = last.trim_end();
    assert!(
        last.starts_with(&format!(
            "run {} failed: 5 passed, 1 soft-fail, 1 failed, 1 skipped in ",
            run.0
        )) && last.ends_with("s (failed: deploy)"),
        "{}",
        text(&out)
    );

    // Without the hard failure the same shape passes: a soft failure does
    // not fail the pipeline.
    let soft = ORDER.replace("\"fail:the deploy broke\"", "\"echo:deployed\"");
    ci.write("soft.toml", &soft);
    let out = ci.ci_run("soft.toml", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let steps = steps_of_output(&ci, &out).await;
    assert_eq!(state_of(&steps, "lint"), TaskState::Dead);
    assert_eq!(state_of(&steps, "publish"), TaskState::Succeeded);
    assert_eq!(state_of(&steps, "cleanup"), TaskState::Skipped);
    assert_eq!(
        ci.engine()
            .await
            .progress(&tenant(), run_id(&out))
            .await
            .expect("progress")
            .job
            .state,
        JobState::Succeeded
    );
}

async fn steps_of_output(ci: &Ci, out: &Output) -> HashMap<String, StepStatus> {
    steps(ci, run_id(out)).await
}

// ------------------------------------------------------------ bad pipeline files

/// Exit 2, one line on stderr, no database and no state directory.
fn assert_refused(ci: &Ci, out: &Output) -> String {
    assert_eq!(out.status.code(), Some(2), "{}", text(out));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(!ci.db_path().exists(), "nothing is written: {err}");
    assert!(
        !ci.workspace().join(".lockstep").exists(),
        "no state dir: {err}"
    );
    err.trim_end().to_string()
}

#[test]
fn bad_pipeline_files_are_one_sentence_with_file_and_line_exit_2_and_nothing_written() {
    let ci = Ci::new();
    let file = ci.workspace().join("lockstep-ci.toml");
    let f = file.display().to_string();
    let case = |toml: &str| {
        ci.write("lockstep-ci.toml", toml);
        assert_refused(&ci, &ci.ci_run("lockstep-ci.toml", &[]))
    };

    let cycle = case(
        "[[steps]]\nkey = \"a\"\ncomponent = \"command-script\"\nneeds = [\"c\"]\n\n\
         [[steps]]\nkey = \"b\"\ncomponent = \"command-script\"\nneeds = [\"a\"]\n\n\
         [[steps]]\nkey = \"c\"\ncomponent = \"command-script\"\nneeds = [\"b\"]\n",
    );
    assert_eq!(
        cycle,
        format!(
            "error: {f}:4:1: the needs of steps a → c → b → a form a cycle; remove one of them"
        )
    );

    let unknown = case("[[steps]]\nkey = \"a\"\ncomponent = \"command-script\"\nnedds = [\"b\"]\n");
    assert!(
        unknown.starts_with(&format!(
            "error: {f}:4:1: unknown field \"nedds\", expected one of"
        )),
        "{unknown}"
    );

    let missing_file = case("[[steps]]\nkey = \"a\"\ncomponent = \"steps/lint.wasm\"\n");
    assert_eq!(
        missing_file,
        format!(
            "error: {f}:3:1: step \"a\": component file {}/steps/lint.wasm does not exist (paths are relative to {})",
            ci.workspace().canonicalize().expect("canonical").display(),
            ci.workspace().canonicalize().expect("canonical").display()
        )
    );

    let missing_name = case("[[steps]]\nkey = \"a\"\ncomponent = \"command-nope\"\n");
    assert!(
        missing_name.starts_with(&format!(
            "error: {f}:3:1: step \"a\": there is no command component named \"command-nope\" in "
        )),
        "{missing_name}"
    );

    let handler = case(&format!(
        "[[steps]]\nkey = \"a\"\ncomponent = \"{}/example-noop.wasm\"\n",
        guest_artifacts::EXAMPLES_DIR
    ));
    assert!(
        handler.contains("cannot be used as a command: it is not a wasi:cli/command component"),
        "{handler}"
    );

    let none = case(
        "[[steps]]\nkey = \"t\"\ncomponent = \"command-script\"\n\
         matrix = { os = [\"a\", \"b\"], exclude = [{ os = \"a\" }, { os = \"b\" }] }\n",
    );
    assert_eq!(
        none,
        format!(
            "error: {f}:4:1: step \"t\": the matrix expands to 0 jobs (every combination is excluded); remove an exclude or add values"
        )
    );

    let values: Vec<String> = (0..17).map(|i| format!("\"v{i}\"")).collect();
    let values = values.join(", ");
    let huge = case(&format!(
        "[[steps]]\nkey = \"t\"\ncomponent = \"command-script\"\nmatrix = {{ a = [{values}], b = [{values}] }}\n"
    ));
    assert_eq!(
        huge,
        format!(
            "error: {f}:4:1: step \"t\": the matrix expands to 289 jobs, more than the 256 allowed; split the step or exclude combinations"
        )
    );

    let unknown_need =
        case("[[steps]]\nkey = \"a\"\ncomponent = \"command-script\"\nneeds = [\"bild\"]\n");
    assert_eq!(
        unknown_need,
        format!(
            "error: {f}:4:10: step \"a\" needs \"bild\", which is not a step of this pipeline (steps: a)"
        )
    );

    let condition =
        case("[[steps]]\nkey = \"a\"\ncomponent = \"command-script\"\nif = \"sometimes()\"\n");
    assert_eq!(
        condition,
        format!(
            "error: {f}:4:1: step \"a\": if = \"sometimes()\" is not known; use \"success()\", \"failure()\" or \"always()\""
        )
    );

    // JSON files point at the line too.
    std::fs::write(
        ci.workspace().join("p.json"),
        "{\n  \"steps\": [\n    {\"key\": \"a\", \"component\": \"command-script\",\n     \"needs\": [\"a\"]}\n  ]\n}\n",
    )
    .expect("write json");
    let json = assert_refused(&ci, &ci.ci_run("p.json", &[]));
    assert_eq!(
        json,
        format!(
            "error: {}/p.json:4:16: step \"a\" needs itself",
            ci.workspace().display()
        )
    );
}

// ------------------------------------------------------------ secrets

/// The secret, and the forms a step prints it in.
const SECRET: &str = "hunter2-Sup3r/Secret+Value";

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn percent(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn assert_no_secret(what: &str, haystack: &[u8]) {
    let forms = [
        SECRET.to_string(),
        base64(SECRET.as_bytes()),
        percent(SECRET),
    ];
    for form in &forms {
        assert!(
            !haystack.windows(form.len()).any(|w| w == form.as_bytes()),
            "{what} holds the secret as {form:?}"
        );
    }
}

const SECRETS: &str = r#"
name = "secrets"

[[steps]]
key = "login"
component = "command-script"
secrets = ["API_TOKEN"]
args = ["env:API_TOKEN", "b64env:API_TOKEN", "urlenv:API_TOKEN", "failenv:API_TOKEN"]
"#;

#[tokio::test]
async fn a_secret_printed_plainly_encoded_and_in_an_error_is_masked_everywhere() {
    let ci = Ci::new();
    ci.write("lockstep-ci.toml", SECRETS);
    let junit = ci.dir.path().join("junit.xml");
    let summary = ci.dir.path().join("summary.md");
    let path = ci.workspace().join("lockstep-ci.toml");
    let out = ci
        .command(&[
            "ci",
            "run",
            path.to_str().expect("utf-8"),
            "--junit",
            junit.to_str().expect("utf-8"),
            "--summary",
            summary.to_str().expect("utf-8"),
        ])
        .env("LOCKSTEP_SECRET_API_TOKEN", SECRET)
        .output()
        .expect("ci run");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let run = run_id(&out);
    let steps = steps(&ci, run).await;
    let events = events(&ci, run).await;
    // The step did print it, four times: each is masked.
    assert_eq!(
        logs_of(&events, &steps, "login"),
        [
            "stdout: ***",
            "stdout: ***",
            "stdout: ***",
            "stderr: error: login with *** refused"
        ]
    );
    assert_no_secret("the terminal (stdout)", &out.stdout);
    assert_no_secret("the terminal (stderr)", &out.stderr);
    let rerun_logs = ci.run(&["ci", "logs", &run.0.to_string()]);
    assert_eq!(rerun_logs.status.code(), Some(0), "{}", text(&rerun_logs));
    assert!(stdout(&rerun_logs).contains("[login] stderr: error: login with *** refused"));
    assert_no_secret("ci logs", &rerun_logs.stdout);
    let lockstep_events = ci.run(&["events", &run.0.to_string()]);
    assert_eq!(
        lockstep_events.status.code(),
        Some(0),
        "{}",
        text(&lockstep_events)
    );
    assert_no_secret("lockstep events", &lockstep_events.stdout);
    let status = ci.run(&["ci", "status", &run.0.to_string(), "--json"]);
    assert_no_secret("ci status", &status.stdout);
    let xml = std::fs::read(&junit).expect("junit written");
    assert!(String::from_utf8_lossy(&xml).contains("login with *** refused"));
    assert_no_secret("the JUnit file", &xml);
    assert_no_secret(
        "the summary",
        &std::fs::read(&summary).expect("summary written"),
    );
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", ci.db_path().display()));
        if let Ok(bytes) = std::fs::read(&file) {
            assert_no_secret(&format!("{}", file.display()), &bytes);
        }
    }
}

#[test]
fn secrets_that_are_short_missing_or_in_a_readable_file_are_refused() {
    let ci = Ci::new();
    ci.write("lockstep-ci.toml", SECRETS);
    let path = ci.workspace().join("lockstep-ci.toml");
    let path = path.to_str().expect("utf-8");
    let short = ci
        .command(&["ci", "run", path])
        .env("LOCKSTEP_SECRET_API_TOKEN", "abc")
        .output()
        .expect("ci run");
    assert_eq!(
        assert_refused(&ci, &short),
        "error: secret API_TOKEN is 3 characters long; secrets must have at least 6 (a shorter value cannot be masked safely)"
    );
    let missing = ci
        .command(&["ci", "run", path])
        .env_remove("LOCKSTEP_SECRET_API_TOKEN")
        .output()
        .expect("ci run");
    assert_eq!(
        assert_refused(&ci, &missing),
        "error: secret API_TOKEN is needed by step \"login\" but not set; export LOCKSTEP_SECRET_API_TOKEN or add API_TOKEN=VALUE to a --secrets file"
    );
    let file = ci.dir.path().join("secrets.env");
    std::fs::write(&file, format!("API_TOKEN={SECRET}\n")).expect("write secrets");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let readable = ci
        .command(&[
            "ci",
            "run",
            path,
            "--secrets",
            file.to_str().expect("utf-8"),
        ])
        .env_remove("LOCKSTEP_SECRET_API_TOKEN")
        .output()
        .expect("ci run");
    assert_eq!(
        assert_refused(&ci, &readable),
        format!(
            "error: secrets file {} can be read by other users (mode 644); run chmod 600 {}",
            file.display(),
            file.display()
        )
    );
    // The same file, private, is used.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let used = ci
        .command(&[
            "ci",
            "run",
            path,
            "--secrets",
            file.to_str().expect("utf-8"),
        ])
        .env_remove("LOCKSTEP_SECRET_API_TOKEN")
        .output()
        .expect("ci run");
    assert_eq!(used.status.code(), Some(1), "{}", text(&used));
    assert!(
        stdout(&used).contains("[login] stderr: error: login with *** refused"),
        "{}",
        text(&used)
    );
    assert_no_secret("the terminal", &used.stdout);
}

// ------------------------------------------------------------ artifacts and cache

#[tokio::test]
async fn an_artifact_of_one_step_is_read_by_the_next_and_a_cache_is_restored_by_key() {
    let ci = Ci::new();
    ci.write("Cargo.lock", "version = 4\n");
    ci.write(
        "build.toml",
        r#"
[[steps]]
key = "a"
component = "command-script"
args = ["write:/out/report/result.txt=made by step a"]

[[steps]]
key = "b"
component = "command-script"
needs = ["a"]
args = ["read:/artifacts/a/report/result.txt", "exists:/artifacts/a/../../workspace"]

[[steps]]
key = "deps"
component = "command-script"
cache = [{ key = "deps-{{ hash('Cargo.lock') }}", restore_keys = ["deps-"], path = "/cache" }]
args = ["exists:/cache/deps.txt", "write:/cache/deps.txt=deps built by the first run"]
"#,
    );
    let out = ci.ci_run("build.toml", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let run = run_id(&out);
    let steps1 = steps(&ci, run).await;
    let events1 = events(&ci, run).await;
    assert_eq!(
        logs_of(&events1, &steps1, "b"),
        [
            "stdout: made by step a",
            "stdout: /artifacts/a/../../workspace missing"
        ]
    );
    let a = steps1["a"].report.as_ref().expect("report of a");
    let address = a.artifact.clone().expect("a kept an artifact");
    assert!(address.starts_with("sha256-"), "{address}");
    let kept = ci
        .workspace()
        .join(".lockstep/artifacts")
        .join(&address)
        .join("report/result.txt");
    assert_eq!(
        std::fs::read_to_string(&kept).expect("the artifact is on disk"),
        "made by step a\n"
    );
    let lock_hash = {
        let out = Command::new("sha256sum")
            .arg(ci.workspace().join("Cargo.lock"))
            .output()
            .expect("sha256sum");
        stdout(&out)
            .split_whitespace()
            .next()
            .expect("hash")
            .to_string()
    };
    let key = format!("deps-{lock_hash}");
    let deps = steps1["deps"].report.as_ref().expect("deps report");
    assert_eq!(deps.cache.len(), 1);
    assert_eq!(deps.cache[0].key, key);
    assert_eq!(deps.cache[0].restored, None);
    assert!(deps.cache[0].saved);
    assert_eq!(
        logs_of(&events1, &steps1, "deps"),
        [
            "stdout: /cache/deps.txt missing",
            "stdout: wrote /cache/deps.txt"
        ]
    );

    // The same key: the second run reads what the first saved.
    ci.write(
        "read-cache.toml",
        r#"
[[steps]]
key = "deps"
component = "command-script"
cache = [{ key = "deps-{{ hash('Cargo.lock') }}", restore_keys = ["deps-"], path = "/cache" }]
args = ["read:/cache/deps.txt"]
"#,
    );
    let out = ci.ci_run("read-cache.toml", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let run2 = run_id(&out);
    let (steps2, events2) = (steps(&ci, run2).await, events(&ci, run2).await);
    assert_eq!(
        logs_of(&events2, &steps2, "deps"),
        [
            "stdout: lockstep: cache /cache restored from ".to_string() + &key,
            "stdout: deps built by the first run".to_string()
        ]
    );
    let report = steps2["deps"].report.as_ref().expect("report");
    assert_eq!(report.cache[0].restored.as_deref(), Some(key.as_str()));
    assert!(!report.cache[0].saved, "an entry is written once per key");

    // A changed lock file: a new key, restored from the newest "deps-" entry.
    ci.write("Cargo.lock", "version = 4\n# changed\n");
    let out = ci.ci_run("read-cache.toml", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let steps3 = steps(&ci, run_id(&out)).await;
    let report = steps3["deps"].report.as_ref().expect("report");
    assert_ne!(report.cache[0].key, key);
    assert_eq!(report.cache[0].restored.as_deref(), Some(key.as_str()));
    assert!(report.cache[0].saved, "saved under the new key");
    assert!(
        ci.workspace()
            .join(".lockstep/cache")
            .join(&report.cache[0].key)
            .join("deps.txt")
            .is_file()
    );
}

// ------------------------------------------------------------ crash, resume, rerun

fn claims(events: &[Event], steps: &HashMap<String, StepStatus>, key: &str) -> usize {
    let task = steps[key].task_id;
    events
        .iter()
        .filter(|e| e.task_id == Some(task) && e.kind == EventKind::TaskClaimed)
        .count()
}

#[tokio::test]
async fn a_runner_killed_mid_pipeline_resumes_without_rerunning_finished_steps() {
    let ci = Ci::new();
    ci.write(
        "lockstep-ci.toml",
        r#"
name = "resume"

[[steps]]
key = "first"
component = "command-script"
args = ["echo:first ran"]

[[steps]]
key = "slow"
component = "command-script"
needs = ["first"]
args = ["echo:slow started", "sleep:3000", "echo:slow done"]

[[steps]]
key = "last"
component = "command-script"
needs = ["slow"]
args = ["echo:last ran"]
"#,
    );
    let path = ci.workspace().join("lockstep-ci.toml");
    let mut child = ci
        .command(&["ci", "run", path.to_str().expect("utf-8")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start ci run");
    // Wait until `slow` has started (its first line is stored), then SIGKILL.
    let mut run = None;
    for _ in 0..600 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if !ci.db_path().exists() {
            continue;
        }
        let engine = ci.engine().await;
        let jobs = engine
            .list_jobs(
                &tenant(),
                lockstep::engine::JobFilter {
                    limit: 10,
                    ..Default::default()
                },
            )
            .await
            .expect("jobs");
        let Some(job) = jobs.first() else { continue };
        let Ok(steps) = engine.pipeline_steps(&tenant(), job.job_id).await else {
            continue;
        };
        let slow = steps.iter().find(|s| s.plan.key == "slow").expect("slow");
        let started = crate::harness::all_events(&engine, &tenant(), job.job_id)
            .await
            .iter()
            .any(|e| {
                e.task_id == Some(slow.task_id)
                    && e.detail.as_deref() == Some("stdout: slow started")
            });
        if started {
            run = Some(job.job_id);
            break;
        }
    }
    let run = run.expect("slow started");
    child.kill().expect("SIGKILL the runner");
    let killed = child.wait_with_output().expect("reap");
    assert_eq!(
        killed.status.code(),
        None,
        "killed by a signal: {}",
        text(&killed)
    );
    let before = steps(&ci, run).await;
    assert_eq!(state_of(&before, "first"), TaskState::Succeeded);
    assert_eq!(state_of(&before, "slow"), TaskState::Running);
    assert_eq!(state_of(&before, "last"), TaskState::Blocked);

    let out = ci.ci_run("lockstep-ci.toml", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).starts_with(&format!("resuming run {} of resume", run.0)),
        "{}",
        text(&out)
    );
    let after = steps(&ci, run).await;
    let events = events(&ci, run).await;
    for key in ["first", "slow", "last"] {
        assert_eq!(state_of(&after, key), TaskState::Succeeded, "{key}");
    }
    assert_eq!(
        claims(&events, &after, "first"),
        1,
        "first is not run again"
    );
    assert_eq!(claims(&events, &after, "slow"), 2, "slow runs again");
    assert_eq!(claims(&events, &after, "last"), 1);
    assert_eq!(
        logs_of(&events, &after, "first"),
        ["stdout: first ran"],
        "first's output once"
    );
}

#[tokio::test]
async fn rerun_failed_runs_exactly_the_failed_steps_and_their_dependents() {
    let ci = Ci::new();
    ci.write(
        "lockstep-ci.toml",
        r#"
name = "rerun"

[[steps]]
key = "build"
component = "command-script"
args = ["write:/out/bin.txt=built once"]

[[steps]]
key = "check"
component = "command-script"
needs = ["build"]
args = ["read:/artifacts/build/bin.txt", "read:/workspace/flag.txt"]

[[steps]]
key = "package"
component = "command-script"
needs = ["check"]
args = ["echo:packaged"]

[[steps]]
key = "docs"
component = "command-script"
args = ["echo:docs built"]
"#,
    );
    let out = ci.ci_run("lockstep-ci.toml", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let first = run_id(&out);
    let s1 = steps(&ci, first).await;
    assert_eq!(state_of(&s1, "check"), TaskState::Dead);
    assert_eq!(state_of(&s1, "package"), TaskState::Skipped);

    ci.write("flag.txt", "the flag is set");
    let out = ci.run(&["ci", "rerun", &first.0.to_string(), "--failed"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let second = run_id(&out);
    assert_ne!(second, first);
    let s2 = steps(&ci, second).await;
    let events = events(&ci, second).await;
    for key in ["build", "check", "package", "docs"] {
        assert_eq!(state_of(&s2, key), TaskState::Succeeded, "{key}");
    }
    let reused = |key: &str| s2[key].report.as_ref().and_then(|r| r.reused_from);
    assert_eq!(reused("build"), Some(first.0), "build is carried over");
    assert_eq!(reused("docs"), Some(first.0), "docs is carried over");
    assert_eq!(reused("check"), None, "check runs again");
    assert_eq!(
        reused("package"),
        None,
        "package needs check: it runs again"
    );
    assert!(
        logs_of(&events, &s2, "build").is_empty(),
        "build did not run"
    );
    assert!(logs_of(&events, &s2, "docs").is_empty(), "docs did not run");
    assert_eq!(
        logs_of(&events, &s2, "check"),
        ["stdout: built once", "stdout: the flag is set"],
        "check reads build's artifact from the first run"
    );
    assert_eq!(logs_of(&events, &s2, "package"), ["stdout: packaged"]);

    let again = ci.run(&["ci", "rerun", &second.0.to_string(), "--failed"]);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    assert_eq!(
        String::from_utf8_lossy(&again.stderr).trim_end(),
        format!(
            "error: run {} has no failed steps; use ci rerun {} without --failed to run every step again",
            second.0, second.0
        )
    );
}

// ------------------------------------------------------------ hostile steps

#[tokio::test]
async fn hostile_steps_are_contained_each_with_a_clear_outcome() {
    let ci = Ci::new();
    ci.write("secret-plan.txt", "only for the workspace\n");
    let hostile = guest_artifacts::HOSTILE_COMMAND_SANDBOX;
    ci.write(
        "lockstep-ci.toml",
        &format!(
            r#"
[[steps]]
key = "read-passwd"
component = "{hostile}"
args = ["read-passwd"]

[[steps]]
key = "write-outside"
component = "{hostile}"
args = ["write-outside"]

[[steps]]
key = "loop"
component = "{hostile}"
args = ["loop"]
timeout = "1s"

[[steps]]
key = "sleep"
component = "{hostile}"
args = ["sleep"]
timeout = "1s"

[[steps]]
key = "alloc"
component = "{hostile}"
args = ["alloc"]
memory_mib = 48

[[steps]]
key = "flood"
component = "{hostile}"
args = ["flood"]
timeout = "2s"

[[steps]]
key = "std-exit"
component = "{hostile}"
args = ["no-such-mode"]
"#
        ),
    );
    let out = ci.ci_run("lockstep-ci.toml", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let run = run_id(&out);
    let steps = steps(&ci, run).await;
    let events = events(&ci, run).await;
    let outcome = |key: &str| steps[key].report.as_ref().expect("report").outcome;
    assert_eq!(outcome("read-passwd"), StepOutcome::Passed);
    assert_eq!(outcome("write-outside"), StepOutcome::Passed);
    assert_eq!(outcome("loop"), StepOutcome::Timeout);
    assert_eq!(outcome("sleep"), StepOutcome::Timeout);
    assert_eq!(outcome("alloc"), StepOutcome::Memory);
    assert_eq!(outcome("flood"), StepOutcome::Timeout);
    // Rust's std::process::exit(2) on wasm32-wasip2 reaches the host as
    // status 1 (docs/ci.md says so; exit-with-code carries the status).
    let std_exit = steps["std-exit"].report.as_ref().expect("report");
    assert_eq!(std_exit.outcome, StepOutcome::Failed);
    assert_eq!(std_exit.exit_code, Some(1));
    assert_eq!(
        steps["loop"].report.as_ref().expect("report").summary,
        "timed out after 1s and was stopped"
    );
    assert_eq!(
        steps["alloc"].report.as_ref().expect("report").summary,
        "ran out of memory: it tried to grow past its 48 MiB limit and was stopped"
    );
    for key in ["read-passwd", "write-outside"] {
        let lines = logs_of(&events, &steps, key);
        assert!(lines.len() >= 3, "{key}: {lines:?}");
        assert!(
            lines.iter().all(|l| l.starts_with("stdout: blocked: ")),
            "{key}: {lines:?}"
        );
    }
    assert!(!ci.workspace().join("planted.txt").exists());
    assert!(!Path::new("/planted.txt").exists());
    let flood = logs_of(&events, &steps, "flood");
    assert!(flood.len() <= 20_001, "a step keeps at most 20,000 lines");
    assert!(flood.len() > 100, "the flood was streamed: {}", flood.len());
}

// ------------------------------------------------------------ rust-test steps

/// A small XML reader: elements with their attributes and text, checked
/// for well-formedness (balanced tags, quoted attributes, known entities).
#[derive(Debug, Default, Clone)]
struct Element {
    name: String,
    attrs: HashMap<String, String>,
    children: Vec<Element>,
    text: String,
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let end = rest[i..].find(';').expect("entity ends with ;") + i;
        let entity = &rest[i + 1..end];
        out.push(match entity {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            e if e.starts_with('#') => {
                char::from_u32(e[1..].parse().expect("numeric entity")).expect("a character")
            }
            e => panic!("unknown entity &{e};"),
        });
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn parse_xml(doc: &str) -> Element {
    let body = doc
        .strip_prefix("<?xml version=\"1.0\" encoding=\"UTF-8\"?>")
        .expect("an XML declaration");
    let mut stack: Vec<Element> = vec![Element::default()];
    let mut rest = body;
    while let Some(open) = rest.find('<') {
        let text = &rest[..open];
        assert!(!text.contains('>'), "stray > in {text:?}");
        stack
            .last_mut()
            .expect("open element")
            .text
            .push_str(&unescape(text));
        let close = rest[open..].find('>').expect("tag ends") + open;
        let tag = &rest[open + 1..close];
        rest = &rest[close + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            let done = stack.pop().expect("an element to close");
            assert_eq!(done.name, name, "mismatched closing tag");
            stack.last_mut().expect("parent").children.push(done);
            continue;
        }
        let self_closing = tag.ends_with('/');
        let tag = tag.trim_end_matches('/');
        let (name, mut attrs_text) = tag.split_once(' ').unwrap_or((tag, ""));
        let mut element = Element {
            name: name.to_string(),
            ..Element::default()
        };
        loop {
            attrs_text = attrs_text.trim_start();
            if attrs_text.is_empty() {
                break;
            }
            let (key, after) = attrs_text.split_once("=\"").expect("attribute=\"value\"");
            let end = after.find('"').expect("closing quote");
            assert!(!after[..end].contains('<'), "< in an attribute");
            element
                .attrs
                .insert(key.to_string(), unescape(&after[..end]));
            attrs_text = &after[end + 1..];
        }
        if self_closing {
            stack.last_mut().expect("parent").children.push(element);
        } else {
            stack.push(element);
        }
    }
    assert!(rest.trim().is_empty(), "text after the root: {rest:?}");
    assert_eq!(stack.len(), 1, "unclosed elements");
    let mut root = stack.pop().expect("document");
    assert_eq!(root.children.len(), 1, "one root element");
    root.children.remove(0)
}

#[tokio::test]
async fn a_rust_test_step_reports_every_test_alone_and_junit_has_the_shape_readers_expect() {
    let ci = Ci::new();
    ci.write("data/greeting.txt", "hello from the workspace, and more\n");
    ci.write(
        "lockstep-ci.toml",
        r#"
name = "unit"

[[steps]]
key = "unit"
kind = "rust-test"
component = "rust-test-sample"
timeout = "3s"
"#,
    );
    let junit = ci.dir.path().join("junit.xml");
    let out = ci.ci_run(
        "lockstep-ci.toml",
        &["--junit", junit.to_str().expect("utf-8")],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let run = run_id(&out);
    let steps = steps(&ci, run).await;
    let report = steps["unit"].report.as_ref().expect("report");
    let tests: HashMap<&str, _> = report.tests.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut names: Vec<&str> = tests.keys().copied().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "tests::adds_numbers",
            "tests::fails_with_a_message",
            "tests::hangs_forever",
            "tests::panics_on_purpose",
            "tests::reads_a_workspace_file",
            "tests::traps_without_a_panic",
            "tests::writes_an_artifact"
        ]
    );
    for (name, outcome) in [
        ("tests::adds_numbers", StepOutcome::Passed),
        ("tests::fails_with_a_message", StepOutcome::Failed),
        ("tests::hangs_forever", StepOutcome::Timeout),
        ("tests::panics_on_purpose", StepOutcome::Failed),
        ("tests::reads_a_workspace_file", StepOutcome::Passed),
        ("tests::traps_without_a_panic", StepOutcome::Trap),
        ("tests::writes_an_artifact", StepOutcome::Passed),
    ] {
        assert_eq!(tests[name].outcome, outcome, "{name}: {:?}", tests[name]);
    }
    let message = tests["tests::fails_with_a_message"]
        .message
        .as_deref()
        .expect("a panic message");
    assert!(
        message.contains("two and two should make five"),
        "{message}"
    );
    assert!(
        message.contains("(at rust-tests/sample/src/lib.rs:"),
        "{message}"
    );
    assert!(
        tests["tests::panics_on_purpose"]
            .message
            .as_deref()
            .is_some_and(|m| m.contains("index out of bounds")),
        "{:?}",
        tests["tests::panics_on_purpose"]
    );
    assert_eq!(
        tests["tests::hangs_forever"].message.as_deref(),
        Some("timed out after 3s and was stopped")
    );
    assert_eq!(
        report.summary,
        "3 of 7 tests passed; not passed: tests::fails_with_a_message, tests::hangs_forever, tests::panics_on_purpose, tests::traps_without_a_panic"
    );
    let artifact = report.artifact.as_deref().expect("/out kept");
    assert_eq!(
        std::fs::read_to_string(
            ci.workspace()
                .join(".lockstep/artifacts")
                .join(artifact)
                .join("report.txt")
        )
        .expect("report.txt in the artifact"),
        "written by writes_an_artifact\n"
    );

    let xml = std::fs::read_to_string(&junit).expect("junit written");
    let root = parse_xml(&xml);
    assert_eq!(root.name, "testsuites");
    assert_eq!(root.attrs["tests"], "7");
    assert_eq!(root.attrs["failures"], "4");
    assert_eq!(root.children.len(), 1);
    let suite = &root.children[0];
    assert_eq!(suite.name, "testsuite");
    assert_eq!(suite.attrs["name"], "unit");
    assert_eq!(suite.attrs["tests"], "7");
    assert_eq!(suite.attrs["failures"], "4");
    for key in ["errors", "skipped", "time"] {
        assert!(suite.attrs.contains_key(key), "testsuite has {key}");
    }
    let cases: HashMap<&str, &Element> = suite
        .children
        .iter()
        .map(|c| {
            assert_eq!(c.name, "testcase");
            assert_eq!(c.attrs["classname"], "unit");
            assert!(c.attrs["time"].parse::<f64>().is_ok());
            (c.attrs["name"].as_str(), c)
        })
        .collect();
    assert_eq!(cases.len(), 7);
    let failing = cases["tests::fails_with_a_message"];
    let failure = failing
        .children
        .iter()
        .find(|c| c.name == "failure")
        .expect("a <failure>");
    assert!(failure.attrs["message"].contains("two and two should make five"));
    assert_eq!(failure.attrs["type"], "failed");
    let out = failing
        .children
        .iter()
        .find(|c| c.name == "system-out")
        .expect("<system-out>");
    assert!(out.text.contains("panicked at"), "{}", out.text);
    assert!(
        cases["tests::adds_numbers"]
            .children
            .iter()
            .all(|c| c.name != "failure")
    );
    assert_eq!(
        cases["tests::hangs_forever"].children[0].attrs["type"],
        "timeout"
    );
    assert_eq!(
        cases["tests::traps_without_a_panic"].children[0].attrs["type"],
        "trap"
    );
}

// ------------------------------------------------------------ MCP

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_runs_a_pipeline_over_mcp_only_from_the_pipelines_root() {
    use crate::mcp_harness::{Db, Refusal, StdioServer, call, ok};
    use serde_json::json;
    let db = Db::new().await;
    let root = db.dir.path().join("pipelines");
    std::fs::create_dir_all(&root).expect("root");
    let pipeline = "name = \"gate\"\n[[steps]]\nkey = \"check\"\ncomponent = \"command-script\"\nargs = [\"echo:checked over mcp\"]\n";
    std::fs::write(root.join("lockstep-ci.toml"), pipeline).expect("write");
    std::fs::write(db.dir.path().join("outside.toml"), pipeline).expect("write");
    let plugins = Path::new(guest_artifacts::EXAMPLES_DIR);
    let root_arg = root.to_str().expect("utf-8").to_string();
    let server =
        StdioServer::start_with_plugins(&db, "local", plugins, &["--pipelines-root", &root_arg])
            .await;
    let c = &server.client;
    let started = ok(c, "run_pipeline", json!({ "path": "lockstep-ci.toml" })).await;
    assert_eq!(started["resumed"], false);
    assert_eq!(started["steps"], json!(["check"]));
    let job = started["job_id"].as_i64().expect("job id");
    let waited = ok(
        c,
        "wait_job",
        json!({ "job_id": job, "timeout_seconds": 120 }),
    )
    .await;
    assert_eq!(waited["job"]["state"], "succeeded", "{waited}");
    let view = ok(c, "get_job", json!({ "job_id": job })).await;
    assert_eq!(view["name"], "gate");
    assert_eq!(view["state"], "succeeded");
    assert_eq!(view["total"], 1);

    for path in [
        "../outside.toml",
        root.join("../outside.toml").to_str().expect("utf-8"),
    ] {
        match call(c, "run_pipeline", json!({ "path": path })).await {
            Err(refusal @ Refusal::Protocol { code: -32602, .. }) => {
                assert_eq!(refusal.field().as_deref(), Some("path"));
                assert!(
                    refusal.message().ends_with(
                        "is outside the pipelines root; name a file inside it, relative to it"
                    ),
                    "{}",
                    refusal.message()
                );
            }
            other => panic!("{path}: expected invalid_params naming path, got {other:?}"),
        }
    }
    let jobs = ok(c, "list_jobs", json!({})).await;
    assert_eq!(
        jobs["jobs"].as_array().expect("jobs").len(),
        1,
        "nothing else ran"
    );

    // A server without --pipelines-root runs none.
    let plain = StdioServer::start_with_plugins(&db, "local", plugins, &[]).await;
    match call(
        &plain.client,
        "run_pipeline",
        json!({ "path": "lockstep-ci.toml" }),
    )
    .await
    {
        Err(Refusal::Tool { code, message }) => {
            assert_eq!(code, "not_enabled");
            assert_eq!(
                message,
                "this server runs no pipelines: its operator can start it with --pipelines-root DIR"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

// ------------------------------------------------------------ the example

#[tokio::test]
async fn the_example_pipeline_runs_with_the_components_cargo_builds() {
    let ci = Ci::new();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ci/lockstep-ci.toml");
    let state = ci.dir.path().join("state");
    let out = ci.run(&[
        "ci",
        "run",
        example.to_str().expect("utf-8"),
        "--state-dir",
        state.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let run = run_id(&out);
    let steps = steps(&ci, run).await;
    let mut keys: Vec<&str> = steps.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "deps",
            "hash",
            "lint",
            "report",
            "smoke-linux",
            "smoke-windows",
            "unit",
            "verify"
        ]
    );
    for key in [
        "hash",
        "verify",
        "smoke-linux",
        "smoke-windows",
        "deps",
        "lint",
        "report",
    ] {
        assert_eq!(
            state_of(&steps, key),
            TaskState::Succeeded,
            "{key}: {}",
            text(&out)
        );
    }
    let unit = steps["unit"].report.as_ref().expect("unit report");
    assert!(
        unit.soft_failure,
        "the sample's failing tests fail the step softly"
    );
    assert_eq!(unit.tests.len(), 7);
    let events = events(&ci, run).await;
    assert_eq!(
        logs_of(&events, &steps, "smoke-windows"),
        ["stdout: smoke test on windows", "stdout: windows"]
    );
}

// ------------------------------------------------------------ bench ci

#[test]
fn bench_ci_prints_the_step_overhead_and_the_wasm_over_native_test_rate() {
    let ci = Ci::new();
    let out = ci.run(&["bench", "ci", "--steps", "3", "--rounds", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{}", text(&out));
    let overhead = &lines[0];
    assert_eq!(overhead["bench"], "ci");
    assert_eq!(overhead["case"], "step_overhead");
    assert_eq!(overhead["steps"], 3);
    assert_eq!(overhead["run_state"], "succeeded");
    for field in [
        "per_step_ms",
        "steps_per_s",
        "bare_run_ms_p50",
        "bare_run_ms_p99",
    ] {
        assert!(
            overhead[field].as_f64().is_some_and(|v| v > 0.0),
            "{field}: {overhead}"
        );
    }
    let tests = &lines[1];
    assert_eq!(tests["case"], "rust_tests");
    assert_eq!(tests["tests_per_round"], 5);
    for field in [
        "wasm_one_instance_per_test_tests_per_s",
        "native_cargo_test_tests_per_s",
        "native_over_wasm",
    ] {
        assert!(
            tests[field].as_f64().is_some_and(|v| v > 0.0),
            "{field}: {tests}"
        );
    }
    assert!(overhead["machine"]["cpus"].as_u64().is_some());
}
