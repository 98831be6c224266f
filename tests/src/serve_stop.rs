//! Stopping `lockstep serve` is bounded: on SIGTERM, tasks claimed but still
//! waiting for a plugin slot go back to the queue unrun and uncharged,
//! running ones get `--shutdown-grace` and are then interrupted (recorded as
//! such), and a second signal stops at once, leaving the leases to be
//! rescued. Real processes, a real plugin (`example:steps`) limited to a few
//! concurrent runs by its grants file.

use crate::harness::{Harness, cli_bin, test_cache_dir};
use lockstep::guest_artifacts;
use lockstep::model::{JobId, TaskId, TaskRecord, TaskState};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A plugin directory holding `example:steps` with `concurrency` runs at once.
fn steps_plugin(dir: &Path, concurrency: u32) -> PathBuf {
    let plugins = dir.join("plugins");
    std::fs::create_dir(&plugins).expect("plugin dir");
    std::fs::copy(
        Path::new(guest_artifacts::EXAMPLES_DIR).join("example-steps.wasm"),
        plugins.join("example-steps.wasm"),
    )
    .expect("copy example-steps.wasm");
    std::fs::write(
        plugins.join("example-steps.toml"),
        format!("concurrency = {concurrency}\ntimeout_ms = 600000\n"),
    )
    .expect("write grants");
    plugins
}

/// A job of `n` `example:steps` tasks of `steps` × 100 ms each.
fn steps_job(n: usize, steps: u32) -> String {
    let task =
        format!("{{ handler = \"example:steps\", input = {{ steps = {steps}, step_ms = 100 }} }}");
    format!(
        "name = \"slow\"\n[[stages]]\nname = \"s\"\ntasks = [{}]\n",
        vec![task; n].join(", ")
    )
}

struct Serve {
    child: Child,
    log: PathBuf,
}

impl Serve {
    /// `lockstep serve` on the harness's database with `plugins`; its
    /// debug log (which shows each task's progress) goes to a file.
    fn start(h: &Harness, plugins: &Path, workers: u32, extra: &[&str]) -> Serve {
        let log = h
            .dir
            .path()
            .join(format!("serve-{}.log", rand::random::<u32>()));
        let child = Command::new(cli_bin())
            .args(["--db", &h.db_url, "--log", "lockstep=debug"])
            .arg("--plugins")
            .arg(plugins)
            .arg("--cache-dir")
            .arg(test_cache_dir())
            .args(["serve", "--workers", &workers.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start lockstep serve");
        Serve { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (at most two minutes) until the log holds `text`.
    async fn wait_for_log(&self, text: &str) {
        for _ in 0..1200 {
            if self.log().contains(text) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("serve never logged {text:?}: {}", self.log());
    }

    fn signal(&self) {
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on a child we spawned and have not yet reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
    }

    /// The exit code; panics if the process does not end within `within`.
    fn exit_code(&mut self, within: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!(
            "lockstep serve did not stop within {within:?}: {}",
            self.log()
        );
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn tasks(h: &Harness, n: i64) -> Vec<TaskRecord> {
    let mut out = Vec::new();
    for id in 1..=n {
        out.push(h.engine.task(&h.tenant, TaskId(id)).await.expect("task"));
    }
    out
}

/// Waits until every one of the job's `n` tasks is claimed.
async fn wait_until_claimed(h: &Harness, job: JobId, n: i64) {
    for _ in 0..1200 {
        let p = h.engine.progress(&h.tenant, job).await.expect("progress");
        let running: i64 = p.job.stages[0]
            .counts
            .iter()
            .filter(|(s, _)| *s == TaskState::Running)
            .map(|(_, c)| c)
            .sum();
        if running == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the tasks were never all claimed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_queued_tasks_back_at_once_and_lets_the_running_one_finish() {
    let h = Harness::new().await;
    let plugins = steps_plugin(h.dir.path(), 1);
    let job = h.submit(&steps_job(6, 30)).await;
    // The default grace (30 s) is ten times what the running task needs.
    let mut serve = Serve::start(&h, &plugins, 6, &[]);
    wait_until_claimed(&h, job, 6).await;
    // One task runs (the plugin's one slot); five wait for it.
    serve.wait_for_log("done=1 ").await;
    serve.signal();
    assert_eq!(serve.exit_code(Duration::from_secs(120)), Some(0));
    let log = serve.log();
    let states: Vec<(TaskState, i32, Option<String>)> = tasks(&h, 6)
        .await
        .into_iter()
        .map(|t| (t.state, t.attempt, t.error))
        .collect();
    let succeeded = states
        .iter()
        .filter(|s| **s == (TaskState::Succeeded, 1, None))
        .count();
    let handed_back = states
        .iter()
        .filter(|s| **s == (TaskState::Pending, 0, None))
        .count();
    assert_eq!((succeeded, handed_back), (1, 5), "{states:?}\n{log}");
    assert!(
        log.contains("stopped: 6 claimed, 1 completed, 5 handed back unrun, 0 interrupted"),
        "{log}"
    );
    // The five run later, as if never claimed.
    let mut again = Serve::start(&h, &plugins, 6, &[]);
    let done = h
        .engine
        .wait(&h.tenant, job, Some(Duration::from_secs(120)), |_| {})
        .await
        .expect("wait");
    assert_eq!(done.job.state, lockstep::model::JobState::Succeeded);
    again.signal();
    assert_eq!(again.exit_code(Duration::from_secs(60)), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_tasks_are_interrupted_and_recorded_when_the_grace_period_ends() {
    let h = Harness::new().await;
    let plugins = steps_plugin(h.dir.path(), 2);
    // Each task would take 60 s.
    let job = h.submit(&steps_job(2, 600)).await;
    let mut serve = Serve::start(&h, &plugins, 2, &["--shutdown-grace", "1"]);
    wait_until_claimed(&h, job, 2).await;
    serve.wait_for_log("task=1 done=1 ").await;
    serve.wait_for_log("task=2 done=1 ").await;
    serve.signal();
    assert_eq!(serve.exit_code(Duration::from_secs(45)), Some(0));
    let log = serve.log();
    assert!(
        log.contains("running ones get up to 1 s (--shutdown-grace)"),
        "{log}"
    );
    assert!(log.contains("0 handed back unrun, 2 interrupted"), "{log}");
    for task in tasks(&h, 2).await {
        assert_eq!((task.state, task.attempt), (TaskState::Pending, 1));
        assert_eq!(
            task.error.as_deref(),
            Some(
                "interrupted: its lockstep process stopped and the attempt did not finish within the grace period (--shutdown-grace)"
            )
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_at_once_and_the_lease_is_rescued() {
    let h = Harness::new().await;
    let plugins = steps_plugin(h.dir.path(), 1);
    let job = h.submit(&steps_job(1, 600)).await;
    let mut serve = Serve::start(&h, &plugins, 1, &["--lease-secs", "2"]);
    wait_until_claimed(&h, job, 1).await;
    serve.wait_for_log("done=1 ").await;
    serve.signal();
    serve.wait_for_log("signal again to stop at once").await;
    serve.signal();
    assert_eq!(serve.exit_code(Duration::from_secs(30)), Some(130));
    assert!(
        serve
            .log()
            .contains("stopped at once: tasks still running were abandoned"),
        "{}",
        serve.log()
    );
    let task = h.engine.task(&h.tenant, TaskId(1)).await.expect("task");
    assert_eq!((task.state, task.attempt), (TaskState::Running, 1));
    // The next process rescues the lease once it expires and runs it again.
    let next = Serve::start(&h, &plugins, 1, &["--lease-secs", "2"]);
    for _ in 0..1200 {
        let task = h.engine.task(&h.tenant, TaskId(1)).await.expect("task");
        if task.attempt == 2 {
            assert_eq!(
                task.error.as_deref(),
                Some("lease expired during attempt 1"),
                "{}",
                next.log()
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the abandoned lease was never rescued: {}", next.log());
}
