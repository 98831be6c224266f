//! Stored values lockstep cannot read, written by raw SQL into a real SQLite
//! file and then met through real `lockstep` processes: each read or write
//! that meets one fails with an error naming the row and the column, never
//! a default standing in for the value (ARCHITECTURE.md, Invariant 15).

use crate::harness::{cli_bin, test_cache_dir};
use lockstep::guest_artifacts;
use sqlx::{ConnectOptions, Connection};
use std::process::{Command, Output};

struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn db_path(&self) -> std::path::PathBuf {
        self.dir.path().join("corrupt.db")
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(cli_bin())
            .current_dir(self.dir.path())
            .env_remove("LOCKSTEP_DB")
            .env_remove("DATABASE_URL")
            .arg("--db")
            .arg(format!("sqlite://{}", self.db_path().display()))
            .args(["--plugins", guest_artifacts::EXAMPLES_DIR])
            .arg("--cache-dir")
            .arg(test_cache_dir())
            .args(args)
            .output()
            .expect("run lockstep")
    }

    fn job(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write job file");
        path.display().to_string()
    }

    /// Run `sql` on the file without lockstep, CHECK constraints off (as a
    /// damaged file or a careless hand would leave it).
    async fn corrupt(&self, sql: &str) {
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(self.db_path())
            .connect()
            .await
            .expect("open the file with sqlx");
        sqlx::query("PRAGMA ignore_check_constraints = ON")
            .execute(&mut conn)
            .await
            .expect("pragma");
        let done = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&mut conn)
            .await
            .expect("corrupting update");
        assert_eq!(done.rows_affected(), 1, "{sql}");
        conn.close().await.expect("close");
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit code 1 and exactly `error: stored data is corrupt: {what}…` on stderr.
fn assert_corrupt(o: &Output, what: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with(&format!("error: stored data is corrupt: {what}")),
        "expected the row and column {what:?} named, got: {err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

const AGENT_JOB: &str = "name = \"brief\"\n[[stages]]\nname = \"s\"\nexecutor = \"agent\"\ntasks = [{ title = \"Write it\" }]\n";

#[tokio::test]
async fn a_task_whose_brief_input_or_output_is_not_readable_names_the_task_and_column() {
    let s = Scratch::new();
    let job = s.job("brief.toml", AGENT_JOB);
    assert_eq!(s.run(&["submit", &job]).status.code(), Some(0));
    let out = s.run(&["task", "1", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).expect("task json");
    assert_eq!(view["title"], "Write it", "{view}");

    // A brief whose title is not text: before, an empty brief was shown.
    s.corrupt(r#"UPDATE tasks SET agent_json = '{"title": 7}' WHERE id = 1"#)
        .await;
    assert_corrupt(
        &s.run(&["task", "1", "--json"]),
        "task 1 agent_json cannot be read: invalid type: integer `7`, expected a string",
    );

    // An input that is not JSON: before, it was shown as a string.
    s.corrupt(
        r#"UPDATE tasks SET agent_json = '{"title": "Write it"}', input_json = 'not json' WHERE id = 1"#,
    )
    .await;
    assert_corrupt(
        &s.run(&["task", "1", "--json"]),
        "task 1 input_json cannot be read: expected ident",
    );

    // Likewise an output.
    s.corrupt(r#"UPDATE tasks SET input_json = '{}', output_json = '{"summary"' WHERE id = 1"#)
        .await;
    assert_corrupt(
        &s.run(&["task", "1", "--json"]),
        "task 1 output_json cannot be read: EOF while parsing an object",
    );
}

#[tokio::test]
async fn a_stage_total_below_its_stored_tasks_is_corrupt_not_a_negative_count() {
    let s = Scratch::new();
    let job = s.job("brief.toml", AGENT_JOB);
    assert_eq!(s.run(&["submit", &job]).status.code(), Some(0));
    // `get_job` counts running tasks as the stage's total less every other
    // state: a total that undercounts would show -1 running.
    s.corrupt("UPDATE stages SET total = 0 WHERE job_id = 1 AND position = 0")
        .await;
    assert_corrupt(
        &s.run(&["status", "1", "--json"]),
        "stage 0 of job 1 total: 0 is fewer than the 1 tasks stored in it",
    );
}

#[tokio::test]
async fn an_unknown_executor_fails_the_retry_naming_the_task_instead_of_waking_wasm_workers() {
    let s = Scratch::new();
    let job = s.job("brief.toml", AGENT_JOB);
    assert_eq!(s.run(&["submit", &job]).status.code(), Some(0));
    let out = s.run(&["cancel", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    s.corrupt("UPDATE tasks SET executor = 'bogus' WHERE id = 1")
        .await;
    // Before, the wake-up treated any executor it did not know as "wasm" and
    // the retry went through.
    assert_corrupt(
        &s.run(&["retry", "1"]),
        "task 1 executor: unknown executor \"bogus\" (expected one of: wasm, agent, command)",
    );
    // Nothing was written: the job is still cancelled.
    let out = s.run(&["status", "1", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(status["state"], "cancelled", "{status}");
}

#[tokio::test]
async fn a_succeeded_task_without_output_is_corrupt_not_null() {
    let s = Scratch::new();
    let job = s.job(
        "one.toml",
        "name = \"one\"\n[[stages]]\nname = \"s\"\ntasks = [{ handler = \"example:noop\", input = { value = 3 } }]\n",
    );
    let out = s.run(&["run", &job]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("result of task 1 (s): {\"value\":3}"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    s.corrupt("UPDATE tasks SET output_json = NULL WHERE id = 1")
        .await;
    // Following the same job again reads the stage's outputs: before, the
    // missing output was printed as `null`.
    assert_corrupt(
        &s.run(&["run", &job]),
        "task 1 output_json: a succeeded task has none",
    );
}
