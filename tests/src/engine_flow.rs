//! The engine end to end on SQLite with the real example plugins: task
//! dependencies, fan-out/fan-in exactness, retries, dead tasks, `retry`,
//! cancellation and bad submissions. Orderings are read from the event log:
//! the times it recorded (ms), since a wasm task's claim is no event of its
//! own but a time in its attempt's end (Invariant 42). A dependent's claim
//! time is never before its dependency's end time (the claim reads the clock
//! after the completion that released it took its own), so "after" is `<=`
//! at this resolution.

use crate::harness::Harness;
use lockstep::engine::{EngineError, JobFilter, WorkerConfig};
use lockstep::model::{
    EventKind, Executor, JobId, JobState, LeaseToken, Millis, StageState, TaskId, TaskState,
    TenantId,
};
use lockstep::store::{ClaimBatch, CompleteBatch, Completion, GetTask, TaskResult};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Event times per (kind, task key) for a job, and each task's first claim
/// time, to reason about order.
struct Timeline {
    /// The last event of each kind per task: its time.
    order: HashMap<(EventKind, String), Millis>,
    /// When each task was first claimed: from a claim event, or the claim
    /// time an attempt's end carries.
    claims: HashMap<String, Millis>,
    cancelled: Vec<String>,
    stage_opened: Vec<i32>,
}

async fn timeline(h: &Harness, job: JobId) -> Timeline {
    let events = h.events(job).await;
    let mut keys: HashMap<TaskId, String> = HashMap::new();
    let mut order = HashMap::new();
    let mut claims: HashMap<String, Millis> = HashMap::new();
    let mut cancelled = Vec::new();
    let mut stage_opened = Vec::new();
    for e in &events {
        if e.kind == EventKind::StageOpened {
            stage_opened.push(e.stage_position.expect("stage_opened has a stage"));
        }
        let Some(task) = e.task_id else { continue };
        if let std::collections::hash_map::Entry::Vacant(slot) = keys.entry(task) {
            let rec = h
                .engine
                .task(&h.tenant, task)
                .await
                .expect("task of an event exists");
            slot.insert(rec.key.unwrap_or_else(|| format!("#{}", task.0)));
        }
        let key = keys[&task].clone();
        if e.kind == EventKind::TaskCancelled {
            cancelled.push(key.clone());
        }
        if let Some(at) = e.attempt_claimed_at() {
            let first = claims.entry(key.clone()).or_insert(at);
            *first = (*first).min(at);
        }
        order.insert((e.kind, key), e.at);
    }
    cancelled.sort();
    Timeline {
        order,
        claims,
        cancelled,
        stage_opened,
    }
}

impl Timeline {
    fn at(&self, kind: EventKind, key: &str) -> Millis {
        *self
            .order
            .get(&(kind, key.to_string()))
            .unwrap_or_else(|| panic!("no {kind:?} event for task {key}"))
    }
    fn claimed(&self, key: &str) -> Millis {
        *self
            .claims
            .get(key)
            .unwrap_or_else(|| panic!("task {key} was never claimed"))
    }
    fn succeeded(&self, key: &str) -> Millis {
        self.at(EventKind::TaskSucceeded, key)
    }
}

const DIAMOND: &str = r#"
name = "diamond"
[[stages]]
name = "dag"
tasks = [
  { key = "a", handler = "example:noop", input = { value = 1 } },
  { key = "b", handler = "example:noop", input = { value = 2 }, depends_on = ["a"] },
  { key = "c", handler = "example:noop", input = { value = 3 }, depends_on = ["a"] },
  { key = "d", handler = "example:noop", input = { value = 4 }, depends_on = ["a"] },
  { key = "e", handler = "example:noop", input = { value = 5 }, depends_on = ["b", "c", "d"] },
]
"#;

#[tokio::test]
async fn diamond_runs_each_task_after_its_own_dependencies_and_branches_overlap() {
    let h = Harness::new().await;
    let job = h.submit(DIAMOND).await;
    let done = h.run_to_end(job).await;
    assert_eq!(done.job.state, JobState::Succeeded);
    let t = timeline(&h, job).await;
    for branch in ["b", "c", "d"] {
        assert!(
            t.succeeded("a") <= t.claimed(branch),
            "{branch} started before a succeeded"
        );
        assert!(
            t.succeeded(branch) <= t.claimed("e"),
            "e started before {branch} succeeded"
        );
    }
    // The three branches were all running before any of them finished.
    let last_branch_claim = ["b", "c", "d"]
        .iter()
        .map(|k| t.claimed(k))
        .max()
        .unwrap_or(0);
    let first_branch_done = ["b", "c", "d"]
        .iter()
        .map(|k| t.succeeded(k))
        .min()
        .unwrap_or(0);
    assert!(
        last_branch_claim <= first_branch_done,
        "branches did not overlap"
    );
    assert_eq!(t.stage_opened, vec![0]);
}

#[tokio::test]
async fn a_task_starts_when_its_own_dependencies_succeed_not_when_its_level_does() {
    // c is an agent task nobody claims yet: a level-by-level engine would hold
    // b and d back until c finished; here a -> b -> d run to the end meanwhile.
    let h = Harness::new().await;
    let job = h
        .submit(
            r#"
name = "levels"
[[stages]]
name = "dag"
tasks = [
  { key = "a", handler = "example:noop" },
  { key = "c", executor = "agent", title = "think slowly" },
  { key = "b", handler = "example:noop", depends_on = ["a"] },
  { key = "e", handler = "example:noop", depends_on = ["c"] },
  { key = "d", handler = "example:noop", depends_on = ["b"] },
]
"#,
        )
        .await;
    let pool = h.engine.start_workers(Default::default());
    // Wait until d has succeeded while c is still pending.
    let mut d_done = false;
    for _ in 0..600 {
        let t = timeline(&h, job).await;
        if t.order
            .contains_key(&(EventKind::TaskSucceeded, "d".to_string()))
        {
            d_done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(d_done, "d never ran while c was pending");
    let t = timeline(&h, job).await;
    assert!(!t.claims.contains_key("e"), "e ran before c");
    // Now the agent completes c, and e runs.
    let claimed = h
        .store
        .claim_batch(ClaimBatch {
            tenant: Some(h.tenant.clone()),
            executor: Executor::Agent,
            handlers: None,
            job: Some(job),
            limit: 1,
            lease: Duration::from_secs(30),
            worker: "agent".into(),
            now: lockstep::engine::now_millis(),
        })
        .await
        .expect("claim agent task");
    assert_eq!(claimed.len(), 1);
    h.store
        .complete_batch(CompleteBatch {
            completions: vec![Completion {
                tenant: h.tenant.clone(),
                lease: claimed[0].lease,
                result: TaskResult::Succeeded {
                    output_json: "{}".into(),
                    spawn: vec![],
                },
                logs: vec![],
            }],
            now: lockstep::engine::now_millis(),
            max_tasks_per_job: lockstep::spec::Limits::default().max_tasks_per_job,
        })
        .await
        .expect("complete agent task");
    let done = h
        .engine
        .wait(&h.tenant, job, Some(Duration::from_secs(60)), |_| {})
        .await
        .expect("wait");
    pool.shutdown().await;
    assert_eq!(done.job.state, JobState::Succeeded);
    let t = timeline(&h, job).await;
    assert!(t.succeeded("d") <= t.claimed("e"));
    assert!(t.succeeded("c") <= t.claimed("e"));
}

#[tokio::test]
async fn wide_dag_of_one_to_a_thousand_to_one() {
    let h = Harness::new().await;
    let mut tasks = String::from("  { key = \"start\", handler = \"example:noop\" },\n");
    let mut middle = Vec::new();
    for i in 0..1000 {
        tasks.push_str(&format!(
            "  {{ key = \"m{i}\", handler = \"example:noop\", input = {{ value = {i} }}, depends_on = [\"start\"] }},\n"
        ));
        middle.push(format!("\"m{i}\""));
    }
    tasks.push_str(&format!(
        "  {{ key = \"end\", handler = \"example:noop\", depends_on = [{}] }},\n",
        middle.join(", ")
    ));
    let job = h
        .submit(&format!(
            "name = \"wide\"\n[[stages]]\nname = \"dag\"\ntasks = [\n{tasks}]\n"
        ))
        .await;
    let done = h.run_to_end(job).await;
    assert_eq!(done.job.state, JobState::Succeeded);
    assert_eq!(done.total, 1002);
    let t = timeline(&h, job).await;
    let start_done = t.succeeded("start");
    let end_claim = t.claimed("end");
    let mut first_middle_done = Millis::MAX;
    let mut last_middle_claim = 0;
    for i in 0..1000 {
        let k = format!("m{i}");
        assert!(start_done <= t.claimed(&k));
        assert!(t.succeeded(&k) <= end_claim);
        first_middle_done = first_middle_done.min(t.succeeded(&k));
        last_middle_claim = last_middle_claim.max(t.claimed(&k));
    }
    // Many middle tasks ran at once: the first finished no earlier than
    // several had started.
    let started_before_first_done = (0..1000)
        .filter(|i| t.claimed(&format!("m{i}")) <= first_middle_done)
        .count();
    assert!(
        started_before_first_done > 1,
        "middle tasks ran one at a time"
    );
    assert!(last_middle_claim <= end_claim);
}

#[tokio::test]
async fn a_dead_dependency_cancels_exactly_its_dependents() {
    let h = Harness::new().await;
    let job = h
        .submit(
            r#"
name = "dead-dependency"
[[stages]]
name = "dag"
tasks = [
  { key = "a", handler = "example:flaky", input = { fail_times = 5 }, max_attempts = 1 },
  { key = "b", handler = "example:noop", depends_on = ["a"] },
  { key = "c", handler = "example:noop", depends_on = ["b"] },
  { key = "d", handler = "example:noop" },
]
"#,
        )
        .await;
    let done = h.run_to_end(job).await;
    assert_eq!(done.job.state, JobState::Failed);
    let t = timeline(&h, job).await;
    assert_eq!(t.cancelled, vec!["b".to_string(), "c".to_string()]);
    assert!(
        t.order
            .contains_key(&(EventKind::TaskDead, "a".to_string()))
    );
    assert!(
        t.order
            .contains_key(&(EventKind::TaskSucceeded, "d".to_string()))
    );
    let counts: BTreeMap<TaskState, i64> = done.counts.iter().copied().collect();
    assert_eq!(counts[&TaskState::Dead], 1);
    assert_eq!(counts[&TaskState::Cancelled], 2);
    assert_eq!(counts[&TaskState::Succeeded], 1);
}

#[tokio::test]
async fn on_failure_continue_releases_the_dependents_of_a_dead_task() {
    let h = Harness::new().await;
    let job = h
        .submit(
            r#"
name = "continue"
[[stages]]
name = "dag"
on_failure = "continue"
tasks = [
  { key = "a", handler = "example:flaky", input = { fail_times = 5 }, max_attempts = 1 },
  { key = "b", handler = "example:noop", depends_on = ["a"] },
]
[[stages]]
name = "after"
tasks = [{ key = "z", handler = "example:noop" }]
"#,
        )
        .await;
    let done = h.run_to_end(job).await;
    assert_eq!(done.job.state, JobState::Succeeded);
    let t = timeline(&h, job).await;
    assert!(t.cancelled.is_empty());
    assert!(t.at(EventKind::TaskDead, "a") <= t.claimed("b"));
    assert!(
        t.order
            .contains_key(&(EventKind::TaskSucceeded, "z".to_string()))
    );
    assert_eq!(t.stage_opened, vec![0, 1]);
}

#[tokio::test]
async fn a_cycle_is_rejected_at_submit_and_nothing_is_written() {
    let h = Harness::new().await;
    let job = lockstep::spec::parse_job_str(
        r#"
name = "cycle"
[[stages]]
name = "dag"
tasks = [
  { key = "a", handler = "example:noop", depends_on = ["c"] },
  { key = "b", handler = "example:noop", depends_on = ["a"] },
  { key = "c", handler = "example:noop", depends_on = ["b"] },
]
"#,
        lockstep::spec::Format::Toml,
        &Default::default(),
    )
    .expect("parses");
    let err = h
        .engine
        .submit(&h.tenant, job)
        .await
        .expect_err("cycle rejected");
    assert!(matches!(err, EngineError::Spec(_)));
    assert!(err.to_string().contains("cycle"), "{err}");
    assert_eq!(jobs_of(&h, &h.tenant).await, 0);
}

async fn jobs_of(h: &Harness, tenant: &TenantId) -> usize {
    h.engine
        .list_jobs(
            tenant,
            JobFilter {
                limit: 1000,
                ..JobFilter::default()
            },
        )
        .await
        .expect("list jobs")
        .len()
}

const FANIN: &str = r#"
name = "fanin"
[[stages]]
name = "analyze"
tasks = [{ handler = "example:fanout", input = { count = 10000, stage = "process", handler = "example:noop" } }]
[[stages]]
name = "process"
[[stages]]
name = "aggregate"
tasks = [{ handler = "example:sum", input = { from = "process", field = "value" } }]
"#;

#[tokio::test]
async fn fan_out_of_ten_thousand_fans_in_exactly() {
    let h = Harness::new().await;
    let job = h.submit(FANIN).await;
    let done = h.run_to_end(job).await;
    assert_eq!(done.job.state, JobState::Succeeded, "{:?}", done.job.error);
    let process = &done.job.stages[1];
    assert_eq!(process.total, 10_000);
    let counts: BTreeMap<TaskState, i64> = process.counts.iter().copied().collect();
    assert_eq!(counts[&TaskState::Succeeded], 10_000);
    assert_eq!(
        done.job.stages.iter().map(|s| s.state).collect::<Vec<_>>(),
        vec![StageState::Done; 3]
    );
    let outputs = aggregate_output(&h, job).await;
    assert_eq!(
        outputs,
        serde_json::json!({ "count": 10000, "sum": 50005000 })
    );
    let t = timeline(&h, job).await;
    assert_eq!(
        t.stage_opened,
        vec![0, 1, 2],
        "each stage opened exactly once"
    );
}

/// The output of the job's last stage (one `example:sum` task).
pub async fn aggregate_output(h: &Harness, job: JobId) -> serde_json::Value {
    let events = h.events(job).await;
    let sum_task = events
        .iter()
        .filter(|e| e.kind == EventKind::TaskSucceeded && e.stage_position == Some(2))
        .filter_map(|e| e.task_id)
        .next_back()
        .expect("the aggregate task succeeded");
    let rec = h
        .store
        .get_task(GetTask {
            tenant: h.tenant.clone(),
            task: sum_task,
        })
        .await
        .expect("aggregate task");
    serde_json::from_str(rec.output_json.as_deref().expect("aggregate output")).expect("json")
}

#[tokio::test]
async fn resubmitting_with_the_same_idempotency_key_returns_the_same_job() {
    let h = Harness::new().await;
    let text = "name = \"once\"\nidempotency_key = \"k-1\"\n[[stages]]\nname = \"s\"\ntasks = [{ handler = \"example:noop\" }]\n";
    let parse = || {
        lockstep::spec::parse_job_str(text, lockstep::spec::Format::Toml, &Default::default())
            .expect("parses")
    };
    let first = h.engine.submit(&h.tenant, parse()).await.expect("first");
    let events_before = h.events(first.job_id).await.len();
    let second = h.engine.submit(&h.tenant, parse()).await.expect("second");
    assert!(first.created);
    assert!(!second.created);
    assert_eq!(first.job_id, second.job_id);
    assert_eq!(h.events(first.job_id).await.len(), events_before);
    assert_eq!(jobs_of(&h, &h.tenant).await, 1);
}

#[tokio::test]
async fn flaky_task_is_retried_then_succeeds() {
    let h = Harness::new().await;
    let job = h
        .submit("name = \"flaky\"\n[[stages]]\nname = \"s\"\ntasks = [{ key = \"f\", handler = \"example:flaky\", input = { fail_times = 2 } }]\n")
        .await;
    let done = h.run_to_end(job).await;
    assert_eq!(done.job.state, JobState::Succeeded);
    let events = h.events(job).await;
    let retried = events
        .iter()
        .filter(|e| e.kind == EventKind::TaskRetried)
        .count();
    // Each attempt is told once, by its end, with its number.
    let attempts: Vec<(EventKind, Option<i32>)> = events
        .iter()
        .filter(|e| e.attempt_claimed_at().is_some())
        .map(|e| (e.kind, e.attempt))
        .collect();
    assert_eq!(retried, 2);
    assert_eq!(
        attempts,
        [
            (EventKind::TaskRetried, Some(1)),
            (EventKind::TaskRetried, Some(2)),
            (EventKind::TaskSucceeded, Some(3)),
        ]
    );
    let task = events.iter().find_map(|e| e.task_id).expect("task id");
    let rec = h.engine.task(&h.tenant, task).await.expect("task");
    assert_eq!(rec.attempt, 3);
    assert_eq!(rec.output_json.as_deref(), Some(r#"{"attempt":3}"#));
}

#[tokio::test]
async fn a_task_dies_after_max_attempts_and_retry_revives_it() {
    let h = Harness::new().await;
    let job = h
        .submit("name = \"dies\"\n[[stages]]\nname = \"s\"\ntasks = [{ key = \"f\", handler = \"example:flaky\", input = { fail_times = 2 }, max_attempts = 2 }]\n")
        .await;
    let done = h.run_to_end(job).await;
    assert_eq!(done.job.state, JobState::Failed);
    let events = h.events(job).await;
    let task = events.iter().find_map(|e| e.task_id).expect("task id");
    let rec = h.engine.task(&h.tenant, task).await.expect("task");
    assert_eq!(rec.state, TaskState::Dead);
    assert_eq!(rec.attempt, 2);
    assert!(
        rec.error.as_deref().unwrap_or("").contains("attempt 2"),
        "{:?}",
        rec.error
    );

    assert_eq!(
        h.engine.retry(&h.tenant, task).await.expect("retry"),
        TaskState::Pending
    );
    let reopened = h.engine.progress(&h.tenant, job).await.expect("progress");
    assert_eq!(reopened.job.state, JobState::Running);
    let done = h.run_to_end(job).await;
    assert_eq!(done.job.state, JobState::Succeeded);
    let rec = h.engine.task(&h.tenant, task).await.expect("task");
    assert_eq!(rec.output_json.as_deref(), Some(r#"{"attempt":3}"#));
}

#[tokio::test]
async fn retrying_a_succeeded_task_is_an_illegal_transition() {
    let h = Harness::new().await;
    let job = h
        .submit(
            "name = \"ok\"\n[[stages]]\nname = \"s\"\ntasks = [{ handler = \"example:noop\" }]\n",
        )
        .await;
    h.run_to_end(job).await;
    let task = h
        .events(job)
        .await
        .iter()
        .find_map(|e| e.task_id)
        .expect("task");
    let before = h.events(job).await.len();
    let err = h.engine.retry(&h.tenant, task).await.expect_err("illegal");
    assert_eq!(
        err.to_string(),
        format!(
            "task {} is succeeded: only a dead or cancelled task can be retried",
            task.0
        )
    );
    assert_eq!(h.events(job).await.len(), before);
}

#[tokio::test]
async fn cancelling_a_job_cancels_every_task_that_has_not_finished() {
    let h = Harness::new().await;
    let job = h.submit(FANIN).await;
    assert_eq!(
        h.engine.cancel(&h.tenant, job).await.expect("cancel"),
        JobState::Cancelled
    );
    let done = h.run_to_end(job).await;
    assert_eq!(done.job.state, JobState::Cancelled);
    let counts: BTreeMap<TaskState, i64> = done.counts.iter().copied().collect();
    assert_eq!(counts[&TaskState::Cancelled], 2);
    assert_eq!(counts[&TaskState::Succeeded], 0);
    // Nothing was claimed: no event tells an attempt, no row holds a claim.
    let events = h.events(job).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.attempt_claimed_at().is_some())
            .count(),
        0
    );
    for task in events.iter().filter_map(|e| e.task_id) {
        let rec = h.engine.task(&h.tenant, task).await.expect("task");
        assert_eq!((rec.attempt, rec.claimed_at), (0, None));
    }
    let err = h
        .engine
        .cancel(&h.tenant, job)
        .await
        .expect_err("already cancelled");
    assert_eq!(
        err.to_string(),
        "illegal job transition: cancelled -> cancelled"
    );
}

#[tokio::test]
async fn a_handlers_log_lines_and_last_progress_are_in_its_task_events() {
    let h = Harness::new().await;
    let job = h
        .submit("name = \"logs\"\n[[stages]]\nname = \"s\"\ntasks = [{ handler = \"example:steps\", input = { steps = 3, step_ms = 1 } }]\n")
        .await;
    assert_eq!(h.run_to_end(job).await.job.state, JobState::Succeeded);
    let task_events: Vec<(EventKind, Option<String>)> = h
        .events(job)
        .await
        .into_iter()
        .filter(|e| e.task_id.is_some())
        .map(|e| (e.kind, e.detail))
        .collect();
    assert_eq!(
        task_events,
        [
            (
                EventKind::TaskLog,
                Some("progress 3/3: working".to_string())
            ),
            (EventKind::TaskSucceeded, None),
        ]
    );
}

/// A guest that asks `cancelled()` between steps frees its worker slot once
/// its job is cancelled, long before its time limit: with one slot, the next
/// job runs only if the first task really stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_task_stops_at_its_next_step_when_its_job_is_cancelled() {
    let h = Harness::new().await;
    let pool = h.engine.start_workers(WorkerConfig {
        slots: 1,
        ..WorkerConfig::default()
    });
    let slow = h
        .submit("name = \"slow\"\n[[stages]]\nname = \"s\"\ntasks = [{ handler = \"example:steps\", input = { steps = 100000, step_ms = 10 }, timeout = \"30m\" }]\n")
        .await;
    let mut running = false;
    for _ in 0..1_500 {
        let p = h.engine.progress(&h.tenant, slow).await.expect("progress");
        if p.counts.contains(&(TaskState::Running, 1)) {
            running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(running, "the slow task never started");
    assert_eq!(
        h.engine.cancel(&h.tenant, slow).await.expect("cancel"),
        JobState::Cancelled
    );

    let next = h
        .submit(
            "name = \"next\"\n[[stages]]\nname = \"s\"\ntasks = [{ handler = \"example:noop\" }]\n",
        )
        .await;
    let done = h
        .engine
        .wait(&h.tenant, next, Some(Duration::from_secs(120)), |_| {})
        .await
        .expect("wait");
    pool.shutdown().await;
    assert_eq!(
        done.job.state,
        JobState::Succeeded,
        "the slot was never freed"
    );
    let slow = h.engine.progress(&h.tenant, slow).await.expect("progress");
    assert_eq!(slow.job.state, JobState::Cancelled);
    assert!(
        slow.counts.contains(&(TaskState::Cancelled, 1)),
        "{:?}",
        slow.counts
    );
}

/// `n` example:steps tasks of one `step_ms` step each, in one stage.
fn steps_job(name: &str, n: usize, step_ms: u64) -> String {
    let mut body = format!("name = \"{name}\"\n[[stages]]\nname = \"s\"\ntasks = [\n");
    for _ in 0..n {
        body.push_str(&format!(
            "  {{ handler = \"example:steps\", input = {{ steps = 1, step_ms = {step_ms} }} }},\n"
        ));
    }
    body.push_str("]\n");
    body
}

/// Run slots bound the runs going at once (issue 13): of twelve 100 ms
/// tasks on 4 slots exactly 4 run at a time, though the recording budget
/// (4 slots + a batch of 64) would let more be claimed. That the budget, not
/// the run slots, bounds claimed-but-unrecorded tasks is
/// `postgres_store::postgres_claimed_but_unrecorded_tasks_stop_at_the_recording_budget`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_tasks_run_at_once_than_the_run_slots() {
    let h = Harness::new().await;
    let job = h.submit(&steps_job("slots", 12, 100)).await;
    let config = WorkerConfig {
        slots: 4,
        batch: 64,
        ..WorkerConfig::default()
    };
    assert_eq!(config.recording_budget(), 68);
    let pool = h.engine.start_workers(config);
    let done = h
        .engine
        .wait(&h.tenant, job, Some(Duration::from_secs(120)), |_| {})
        .await
        .expect("wait");
    let stats = pool.stats.clone();
    pool.shutdown().await;
    assert_eq!(done.job.state, JobState::Succeeded);
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(
        (stats.claimed.load(Relaxed), stats.peak_runs.load(Relaxed)),
        (12, 4)
    );
}

/// The attempt of each of `job`'s tasks, in id order.
async fn attempts_of(h: &Harness, job: JobId) -> Vec<i32> {
    let tasks = h
        .engine
        .job_tasks_page(&h.tenant, job, None, 100)
        .await
        .expect("tasks");
    tasks.iter().map(|t| t.attempt).collect()
}

/// Polls `done` every 10 ms; fails saying `what` once `within` has passed.
async fn poll_until(what: &str, within: Duration, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `config` until `until` holds of its stats (checked every 10 ms, for
/// at most a minute), then stops it with no grace limit.
async fn run_until(
    h: &Harness,
    config: WorkerConfig,
    until: impl Fn(&lockstep::engine::WorkerStats) -> bool,
) -> std::sync::Arc<lockstep::engine::WorkerStats> {
    let pool = h.engine.start_workers(config);
    let stats = pool.stats.clone();
    poll_until("the pool never got there", Duration::from_secs(60), || {
        until(&stats)
    })
    .await;
    pool.shutdown().await;
    stats
}

/// Tasks claimed ahead of the run slots (issue 13) keep their leases while
/// they wait: one slot, 150 ms tasks and a 300 ms lease. The first claim
/// takes the one free slot's task; once it ends, the pace of ends (one in
/// 150 ms) over a claim-ahead of 10 s takes the other five at once, and the
/// last of them waits ~600 ms for the slot, twice its lease. Renewed from
/// the claim on, none is rescued or refused, and each runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_claimed_ahead_of_the_run_slots_keep_their_leases_while_they_wait() {
    let h = Harness::new().await;
    let job = h.submit(&steps_job("ahead", 6, 150)).await;
    let config = WorkerConfig {
        slots: 1,
        batch: 64,
        lease: Duration::from_millis(300),
        rescue_every: Duration::from_millis(50),
        claim_ahead: Duration::from_secs(10),
        ..WorkerConfig::default()
    };
    let stats = run_until(&h, config, |s| s.completed.load(Relaxed) == 6).await;
    use std::sync::atomic::Ordering::Relaxed;
    let progress = h.engine.progress(&h.tenant, job).await.expect("progress");
    assert_eq!(progress.job.state, JobState::Succeeded);
    assert_eq!(
        [
            stats.claimed.load(Relaxed),
            stats.claim_batches.load(Relaxed),
            stats.peak_runs.load(Relaxed),
            stats.peak_waiting.load(Relaxed),
            stats.rescued.load(Relaxed),
            stats.stale.load(Relaxed),
        ],
        [6, 2, 1, 5, 0, 0],
        "[claimed, claims, peak runs, peak waiting, rescued, refused]"
    );
    assert_eq!(attempts_of(&h, job).await, vec![1; 6]);
}

/// A stopping pool hands back the tasks it claimed ahead at once, unrun and
/// uncharged (Invariant 20), while its running task goes on: one slot; a
/// 100 ms task, then five of 30 s. The short one's end takes the five at
/// once; the first of them runs and four wait. Stopped then, the pool hands
/// the four back without waiting for the slot (the long run then stops at
/// its next step, its job cancelled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_pool_hands_back_the_tasks_it_claimed_ahead_at_once() {
    use std::sync::atomic::Ordering::Relaxed;
    let h = Harness::new().await;
    let mut body = String::from("name = \"handed-back\"\n[[stages]]\nname = \"s\"\ntasks = [\n");
    body.push_str("  { handler = \"example:steps\", input = { steps = 1, step_ms = 100 } },\n");
    for _ in 0..5 {
        body.push_str(
            "  { handler = \"example:steps\", input = { steps = 300, step_ms = 100 } },\n",
        );
    }
    body.push_str("]\n");
    let job = h.submit(&body).await;
    let pool = h.engine.start_workers(WorkerConfig {
        slots: 1,
        batch: 64,
        claim_ahead: Duration::from_secs(10),
        ..WorkerConfig::default()
    });
    let stats = pool.stats.clone();
    poll_until("never claimed all six", Duration::from_secs(10), || {
        stats.claimed.load(Relaxed) == 6
    })
    .await;
    let stopping = tokio::spawn(pool.stop(None));
    poll_until(
        "the waiting tasks were not handed back while the long one ran",
        Duration::from_secs(10),
        || stats.released.load(Relaxed) == 4,
    )
    .await;
    assert_eq!(stats.completed.load(Relaxed), 1);
    h.engine.cancel(&h.tenant, job).await.expect("cancel");
    stopping.await.expect("stop");
    // The long run's end is refused: its job's cancellation ended the task.
    assert_eq!(
        [
            stats.completed.load(Relaxed),
            stats.released.load(Relaxed),
            stats.stale.load(Relaxed),
        ],
        [1, 4, 1],
        "[completed, handed back, refused]"
    );
    let progress = h.engine.progress(&h.tenant, job).await.expect("progress");
    assert_eq!(progress.job.state, JobState::Cancelled);
    let mut attempts = attempts_of(&h, job).await;
    attempts.sort_unstable();
    assert_eq!(attempts, vec![0, 0, 0, 0, 1, 1]);
}

#[tokio::test]
async fn unknown_handler_is_rejected_with_the_registered_names() {
    let h = Harness::new().await;
    let job = lockstep::spec::parse_job_str(
        "name = \"x\"\n[[stages]]\nname = \"s\"\ntasks = [{ handler = \"example:nope\" }]\n",
        lockstep::spec::Format::Toml,
        &Default::default(),
    )
    .expect("parses");
    let err = h
        .engine
        .submit(&h.tenant, job)
        .await
        .expect_err("rejected")
        .to_string();
    assert!(
        err.contains("unknown handler \"example:nope\"; registered handlers: example:fanout, example:flaky, example:noop, example:steps, example:sum, example:wordcount"),
        "{err}"
    );
    assert_eq!(jobs_of(&h, &h.tenant).await, 0);
}

#[tokio::test]
async fn schema_invalid_input_is_rejected_naming_the_field() {
    let h = Harness::new().await;
    let job = lockstep::spec::parse_job_str(
        "name = \"x\"\n[[stages]]\nname = \"s\"\ntasks = [{ handler = \"example:fanout\", input = { count = \"many\" } }]\n",
        lockstep::spec::Format::Toml,
        &Default::default(),
    )
    .expect("parses");
    let err = h
        .engine
        .submit(&h.tenant, job)
        .await
        .expect_err("rejected")
        .to_string();
    assert!(err.contains("/stages/0/tasks/0/input"), "{err}");
    assert!(err.contains("count"), "{err}");
    assert_eq!(jobs_of(&h, &h.tenant).await, 0);
}

#[tokio::test]
async fn spawning_into_an_earlier_stage_is_a_fatal_task_error() {
    let h = Harness::new().await;
    let job = h
        .submit(
            r#"
name = "backwards"
[[stages]]
name = "first"
tasks = [{ handler = "example:noop" }]
[[stages]]
name = "second"
tasks = [{ key = "back", handler = "example:fanout", input = { count = 3, stage = "first", handler = "example:noop" } }]
"#,
        )
        .await;
    let done = h.run_to_end(job).await;
    assert_eq!(done.job.state, JobState::Failed);
    assert_eq!(
        done.job.stages[0].total, 1,
        "nothing was added to the earlier stage"
    );
    let events = h.events(job).await;
    let task = events
        .iter()
        .find(|e| e.kind == EventKind::TaskDead)
        .and_then(|e| e.task_id)
        .expect("the spawning task died");
    let rec = h.engine.task(&h.tenant, task).await.expect("task");
    assert_eq!(rec.attempt, 1, "fatal: not retried");
    assert!(
        rec.error.as_deref().unwrap_or("").contains("first"),
        "{:?}",
        rec.error
    );
}

#[tokio::test]
async fn spawned_stage_and_handler_names_meet_the_rules_of_submitted_ones() {
    let h = Harness::new().await;
    let long = "s".repeat(300);
    let job = h
        .submit(&format!(
            r#"
name = "spawned-names"
[[stages]]
name = "first"
on_failure = "continue"
tasks = [
  {{ handler = "example:fanout", input = {{ count = 1, stage = "{long}" }} }},
  {{ handler = "example:fanout", input = {{ count = 1, stage = "a\u001b[2Jb" }} }},
  {{ handler = "example:fanout", input = {{ count = 1, stage = "second", handler = "{long}" }} }},
  {{ handler = "example:fanout", input = {{ count = 1, stage = "second", handler = "ex\u0000ample:noop" }} }},
]
[[stages]]
name = "second"
"#
        ))
        .await;
    let done = h.run_to_end(job).await;
    assert_eq!(done.job.stages[1].total, 0, "nothing was spawned");
    let mut errors = Vec::new();
    for id in 1..=4 {
        let task = h.engine.task(&h.tenant, TaskId(id)).await.expect("task");
        assert_eq!((task.state, task.attempt), (TaskState::Dead, 1), "{task:?}");
        errors.push(task.error.unwrap_or_default());
    }
    assert_eq!(
        errors,
        [
            "spawned task 0: stage name is 300 bytes, longer than the 256-byte limit",
            "spawned task 0: stage name contains the control character U+001B at byte 1; names may only hold printable characters",
            "spawned task 0: handler name is 300 bytes, longer than the 256-byte limit",
            "spawned task 0: handler name contains the control character U+0000 at byte 2; NUL cannot be stored",
        ]
    );
}

/// Completions are committed in groups bounded by bytes as well as count:
/// each output is copied several times on its way into the database, so a
/// group of large outputs in one transaction multiplied the host's memory
/// (six 56 MiB outputs: 3.0 GB peak RSS, 1.5 GB grouped).
#[test]
fn completions_are_committed_in_groups_bounded_by_bytes() {
    use lockstep::engine::worker::{GROUP_COMMIT_BYTES, group_by_bytes};
    let completion = |id: i64, bytes: usize| Completion {
        tenant: TenantId("local".into()),
        lease: LeaseToken {
            task_id: TaskId(id),
            attempt: 1,
            nonce: None,
        },
        result: TaskResult::Succeeded {
            output_json: "x".repeat(bytes),
            spawn: Vec::new(),
        },
        logs: Vec::new(),
    };
    let third = GROUP_COMMIT_BYTES / 3;
    let groups = group_by_bytes(
        vec![
            completion(1, third),
            completion(2, third),
            completion(3, third),
            completion(4, third),
            completion(5, 2 * GROUP_COMMIT_BYTES),
            completion(6, 10),
        ],
        GROUP_COMMIT_BYTES,
    );
    let ids: Vec<Vec<i64>> = groups
        .iter()
        .map(|g| g.iter().map(|c| c.lease.task_id.0).collect())
        .collect();
    assert_eq!(ids, vec![vec![1, 2, 3], vec![4], vec![5], vec![6]]);
}
