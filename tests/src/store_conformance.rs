//! The store conformance suite: what every backend of `lockstep::store::Store`
//! must do, written once as plain async cases over `&dyn Store` and
//! instantiated per backend at the bottom of this file (each backend gets a
//! fresh database per case).
//!
//! Time is a logical clock: the store takes `now` from its caller, so cases
//! never depend on the wall clock.

use lockstep::model::{
    Event, EventKind, Executor, JobId, JobState, JobStatus, Millis, NewStage, NewTask, OnFailure,
    StageState, StageStatus, SubmitJob, TaskId, TaskState, TenantId,
};
use lockstep::store::{
    CancelJob, ClaimBatch, ClaimedTask, CompleteBatch, Completion, CompletionOutcome, GetJob,
    GetTask, JobEvents, ListJobs, ReadyHandler, ReadyHandlers, RecentCompletions, RenewLease,
    RescueExpiredLeases, RetryTask, SpawnTask, StageResults, Store, StoreError, TaskResult,
};
use std::time::Duration;

const NOW: Millis = 1_800_000_000_000;
const LEASE_MS: i64 = 60_000;

// ------------------------------------------------------------ building blocks

fn acme() -> TenantId {
    TenantId("acme".to_string())
}

fn globex() -> TenantId {
    TenantId("globex".to_string())
}

fn task(handler: &str) -> NewTask {
    keyed(handler, None, &[])
}

fn keyed(handler: &str, key: Option<&str>, depends_on: &[&str]) -> NewTask {
    NewTask {
        handler: handler.to_string(),
        executor: Executor::Wasm,
        key: key.map(str::to_string),
        depends_on: depends_on.iter().map(|s| s.to_string()).collect(),
        input_json: format!("{{\"handler\":{handler:?}}}"),
        max_attempts: 3,
        timeout_ms: 30_000,
        agent_json: None,
        on_failure: OnFailure::FailJob,
    }
}

fn with_attempts(mut t: NewTask, max_attempts: i32) -> NewTask {
    t.max_attempts = max_attempts;
    t
}

fn stage(name: &str, tasks: Vec<NewTask>) -> NewStage {
    NewStage {
        name: name.to_string(),
        on_failure: OnFailure::FailJob,
        max_attempts: None,
        timeout_ms: None,
        tasks,
    }
}

/// A stage under `continue`, its tasks too (a task without its own setting
/// takes its stage's; the spec resolves that before the store sees it).
fn continuing(name: &str, tasks: Vec<NewTask>) -> NewStage {
    NewStage {
        on_failure: OnFailure::Continue,
        ..stage(
            name,
            tasks
                .into_iter()
                .map(|t| with_on_failure(t, OnFailure::Continue))
                .collect(),
        )
    }
}

fn with_on_failure(mut t: NewTask, on_failure: OnFailure) -> NewTask {
    t.on_failure = on_failure;
    t
}

fn spec_for(tenant: TenantId, key: &str, stages: Vec<NewStage>) -> SubmitJob {
    SubmitJob {
        tenant,
        name: key.to_string(),
        idempotency_key: key.to_string(),
        spec_json: "{}".to_string(),
        stages,
        now: NOW,
    }
}

fn spec(key: &str, stages: Vec<NewStage>) -> SubmitJob {
    spec_for(acme(), key, stages)
}

async fn submit(store: &dyn Store, s: SubmitJob) -> JobId {
    let submitted = store.submit_job(s).await.expect("submit");
    assert!(submitted.created);
    submitted.job_id
}

fn claim_at(limit: u32, now: Millis) -> ClaimBatch {
    ClaimBatch {
        tenant: None,
        executor: Executor::Wasm,
        handlers: Some(vec!["work".to_string(), "fanout".to_string()]),
        job: None,
        limit,
        lease: Duration::from_millis(LEASE_MS as u64),
        worker: "worker-1".to_string(),
        now,
    }
}

async fn claim(store: &dyn Store, limit: u32) -> Vec<ClaimedTask> {
    store
        .claim_batch(claim_at(limit, NOW))
        .await
        .expect("claim")
}

async fn claim_one(store: &dyn Store) -> ClaimedTask {
    let mut claimed = claim(store, 1).await;
    assert_eq!(claimed.len(), 1, "exactly one task is ready");
    claimed.remove(0)
}

fn ok(t: &ClaimedTask) -> Completion {
    ok_spawning(t, Vec::new())
}

fn ok_spawning(t: &ClaimedTask, spawn: Vec<SpawnTask>) -> Completion {
    Completion {
        tenant: t.tenant.clone(),
        lease: t.lease,
        result: TaskResult::Succeeded {
            output_json: format!("{{\"task\":{}}}", t.lease.task_id.0),
            spawn,
        },
        logs: vec![],
    }
}

fn fatal(t: &ClaimedTask, error: &str) -> Completion {
    Completion {
        tenant: t.tenant.clone(),
        lease: t.lease,
        result: TaskResult::Fatal {
            error: error.to_string(),
        },
        logs: vec![],
    }
}

fn retryable(t: &ClaimedTask, error: &str, after_ms: u64) -> Completion {
    Completion {
        tenant: t.tenant.clone(),
        lease: t.lease,
        result: TaskResult::Retryable {
            error: error.to_string(),
            retry_after: Duration::from_millis(after_ms),
        },
        logs: vec![],
    }
}

fn spawn_into(stage: &str, n: usize) -> Vec<SpawnTask> {
    (0..n)
        .map(|i| SpawnTask {
            stage_name: stage.to_string(),
            handler: "work".to_string(),
            input_json: format!("{{\"i\":{i}}}"),
            max_attempts: 2,
            timeout_ms: 5_000,
        })
        .collect()
}

async fn complete(store: &dyn Store, completions: Vec<Completion>) -> Vec<CompletionOutcome> {
    store
        .complete_batch(CompleteBatch {
            completions,
            now: NOW,
        })
        .await
        .expect("complete")
}

async fn status(store: &dyn Store, job: JobId) -> JobStatus {
    store
        .get_job(GetJob {
            tenant: acme(),
            job,
        })
        .await
        .expect("get job")
}

async fn job_state(store: &dyn Store, job: JobId) -> JobState {
    store
        .job_state(GetJob {
            tenant: acme(),
            job,
        })
        .await
        .expect("job state")
}

async fn get_task(store: &dyn Store, task: TaskId) -> lockstep::model::TaskRecord {
    store
        .get_task(GetTask {
            tenant: acme(),
            task,
        })
        .await
        .expect("get task")
}

fn count(stage: &StageStatus, state: TaskState) -> i64 {
    stage
        .counts
        .iter()
        .find(|(s, _)| *s == state)
        .map_or(0, |(_, n)| *n)
}

async fn events(store: &dyn Store, job: JobId) -> Vec<Event> {
    store
        .job_events(JobEvents {
            tenant: acme(),
            job,
            after_id: None,
            limit: 10_000,
        })
        .await
        .expect("job events")
}

fn kinds(events: &[Event]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind).collect()
}

fn of_kind(events: &[Event], kind: EventKind) -> Vec<&Event> {
    events.iter().filter(|e| e.kind == kind).collect()
}

// ------------------------------------------------------------ submit

pub async fn submit_opens_the_first_stage_and_blocks_the_rest(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "j",
            vec![
                stage(
                    "a",
                    vec![
                        keyed("work", Some("x"), &[]),
                        keyed("work", Some("y"), &["x"]),
                    ],
                ),
                stage("b", vec![task("work")]),
            ],
        ),
    )
    .await;
    let s = status(store, job).await;
    assert_eq!(s.state, JobState::Running);
    assert_eq!(s.name, "j");
    assert_eq!(s.stages.len(), 2);
    let (a, b) = (&s.stages[0], &s.stages[1]);
    assert_eq!(
        (a.name.as_str(), a.state, a.total, a.remaining),
        ("a", StageState::Open, 2, 2)
    );
    assert_eq!(
        (count(a, TaskState::Pending), count(a, TaskState::Blocked)),
        (1, 1)
    );
    assert_eq!(a.opened_at, Some(NOW));
    assert_eq!(
        (b.name.as_str(), b.state, b.total, b.remaining),
        ("b", StageState::Waiting, 1, 1)
    );
    assert_eq!(count(b, TaskState::Blocked), 1);
    assert_eq!(b.opened_at, None);
    assert_eq!(
        kinds(&events(store, job).await),
        vec![EventKind::Submitted, EventKind::StageOpened]
    );
}

pub async fn resubmitting_the_same_key_returns_the_existing_job_and_writes_nothing(
    store: &dyn Store,
) {
    let job = submit(store, spec("same", vec![stage("a", vec![task("work")])])).await;
    let before = events(store, job).await.len();
    let again = store
        .submit_job(spec(
            "same",
            vec![stage("other", vec![task("work"), task("work")])],
        ))
        .await
        .expect("resubmit");
    assert_eq!(again.job_id, job);
    assert!(!again.created);
    assert_eq!(events(store, job).await.len(), before);
    let s = status(store, job).await;
    assert_eq!(s.stages.len(), 1);
    assert_eq!((s.stages[0].name.as_str(), s.stages[0].total), ("a", 1));
    let jobs = store
        .list_jobs(ListJobs {
            tenant: acme(),
            state: None,
            name: None,
            created_after: None,
            created_before: None,
            before_id: None,
            limit: 10,
        })
        .await
        .expect("list");
    assert_eq!(jobs.len(), 1);
}

pub async fn the_same_key_in_another_tenant_is_another_job(store: &dyn Store) {
    let mine = submit(
        store,
        spec("shared-key", vec![stage("a", vec![task("work")])]),
    )
    .await;
    let theirs = submit(
        store,
        spec_for(globex(), "shared-key", vec![stage("a", vec![task("work")])]),
    )
    .await;
    assert_ne!(mine, theirs);
}

pub async fn stages_without_tasks_close_at_once(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "empty-first",
            vec![
                stage("a", vec![]),
                stage("b", vec![]),
                stage("c", vec![task("work")]),
            ],
        ),
    )
    .await;
    let s = status(store, job).await;
    let states: Vec<StageState> = s.stages.iter().map(|st| st.state).collect();
    assert_eq!(
        states,
        vec![StageState::Done, StageState::Done, StageState::Open]
    );
    assert_eq!(count(&s.stages[2], TaskState::Pending), 1);
    let log: Vec<(EventKind, Option<i32>)> = events(store, job)
        .await
        .iter()
        .map(|e| (e.kind, e.stage_position))
        .collect();
    assert_eq!(
        log,
        vec![
            (EventKind::Submitted, None),
            (EventKind::StageOpened, Some(0)),
            (EventKind::StageClosed, Some(0)),
            (EventKind::StageOpened, Some(1)),
            (EventKind::StageClosed, Some(1)),
            (EventKind::StageOpened, Some(2)),
        ]
    );
}

pub async fn a_job_without_tasks_succeeds_at_submit(store: &dyn Store) {
    let job = submit(
        store,
        spec("nothing", vec![stage("a", vec![]), stage("b", vec![])]),
    )
    .await;
    let s = status(store, job).await;
    assert_eq!(s.state, JobState::Succeeded);
    assert_eq!(s.finished_at, Some(NOW));
    let log = events(store, job).await;
    assert_eq!(of_kind(&log, EventKind::JobFinished).len(), 1);
    assert_eq!(log.last().map(|e| e.kind), Some(EventKind::JobFinished));
}

// ------------------------------------------------------------ claim

pub async fn claim_marks_tasks_running_under_a_lease_and_logs_each_claim(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "claim",
            vec![stage("a", vec![task("work"), task("work"), task("work")])],
        ),
    )
    .await;
    let first = claim(store, 2).await;
    assert_eq!(first.len(), 2);
    assert!(
        first[0].lease.task_id < first[1].lease.task_id,
        "claimed in id order"
    );
    for c in &first {
        assert_eq!(c.job_id, job);
        assert_eq!(c.tenant, acme());
        assert_eq!(c.lease.attempt, 1);
        assert_eq!((c.stage_name.as_str(), c.stage_position), ("a", 0));
        assert_eq!(c.handler, "work");
        assert_eq!(c.input_json, "{\"handler\":\"work\"}");
        let t = get_task(store, c.lease.task_id).await;
        assert_eq!(t.state, TaskState::Running);
        assert_eq!(t.attempt, 1);
        assert_eq!(t.lease_expires_at, Some(NOW + LEASE_MS));
    }
    assert_eq!(claim(store, 10).await.len(), 1);
    assert!(claim(store, 10).await.is_empty());
    assert_eq!(
        of_kind(&events(store, job).await, EventKind::TaskClaimed).len(),
        3
    );
}

pub async fn claim_takes_only_the_given_handlers(store: &dyn Store) {
    submit(
        store,
        spec(
            "handlers",
            vec![stage("a", vec![task("elsewhere"), task("work")])],
        ),
    )
    .await;
    let claimed = claim(store, 10).await;
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].handler, "work");
}

pub async fn claim_can_be_limited_to_one_job(store: &dyn Store) {
    submit(store, spec("one", vec![stage("a", vec![task("work")])])).await;
    let two = submit(store, spec("two", vec![stage("a", vec![task("work")])])).await;
    let claimed = store
        .claim_batch(ClaimBatch {
            job: Some(two),
            ..claim_at(10, NOW)
        })
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].job_id, two);
}

// ------------------------------------------------------------ fencing

pub async fn a_completion_for_an_earlier_attempt_is_refused_and_logged(store: &dyn Store) {
    let job = submit(store, spec("fence", vec![stage("a", vec![task("work")])])).await;
    let first = claim_one(store).await;
    let rescued = store
        .rescue_expired_leases(RescueExpiredLeases {
            now: NOW + LEASE_MS + 1,
            retry_after: Duration::ZERO,
            limit: 10,
        })
        .await
        .expect("rescue");
    assert_eq!(rescued, 1);
    let second = store
        .claim_batch(claim_at(1, NOW + LEASE_MS + 1))
        .await
        .expect("reclaim")
        .remove(0);
    assert_eq!(second.lease.attempt, 2);

    assert_eq!(
        complete(store, vec![ok(&first)]).await,
        vec![CompletionOutcome::Stale]
    );
    let t = get_task(store, first.lease.task_id).await;
    assert_eq!(
        (t.state, t.attempt, t.output_json),
        (TaskState::Running, 2, None)
    );
    let refused = events(store, job).await;
    let refused = of_kind(&refused, EventKind::CompletionRefused);
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].task_id, Some(first.lease.task_id));

    assert_eq!(
        complete(store, vec![ok(&second)]).await,
        vec![CompletionOutcome::Recorded(TaskState::Succeeded)]
    );
}

pub async fn a_duplicate_completion_is_refused(store: &dyn Store) {
    let job = submit(
        store,
        spec("dup", vec![stage("a", vec![task("work"), task("work")])]),
    )
    .await;
    let t = claim_one(store).await;
    // Twice in one batch: the first counts.
    assert_eq!(
        complete(store, vec![ok(&t), fatal(&t, "late")]).await,
        vec![
            CompletionOutcome::Recorded(TaskState::Succeeded),
            CompletionOutcome::Stale
        ]
    );
    // And again later.
    assert_eq!(
        complete(store, vec![fatal(&t, "later")]).await,
        vec![CompletionOutcome::Stale]
    );
    let record = get_task(store, t.lease.task_id).await;
    assert_eq!(record.state, TaskState::Succeeded);
    assert_eq!(
        record.output_json,
        Some(format!("{{\"task\":{}}}", t.lease.task_id.0))
    );
    assert_eq!(record.error, None);
    let log = events(store, job).await;
    assert_eq!(of_kind(&log, EventKind::TaskSucceeded).len(), 1);
    assert_eq!(of_kind(&log, EventKind::CompletionRefused).len(), 2);
    assert_eq!(status(store, job).await.stages[0].remaining, 1);
}

pub async fn completing_another_tenants_task_is_refused_without_a_trace(store: &dyn Store) {
    let job = submit(store, spec("mine", vec![stage("a", vec![task("work")])])).await;
    let t = claim_one(store).await;
    let before = events(store, job).await.len();
    let forged = Completion {
        tenant: globex(),
        ..ok(&t)
    };
    assert_eq!(
        complete(store, vec![forged]).await,
        vec![CompletionOutcome::Stale]
    );
    assert_eq!(
        get_task(store, t.lease.task_id).await.state,
        TaskState::Running
    );
    assert_eq!(events(store, job).await.len(), before);
}

pub async fn a_completions_log_lines_precede_its_outcome_and_a_stale_ones_are_dropped(
    store: &dyn Store,
) {
    let job = submit(store, spec("logs", vec![stage("a", vec![task("work")])])).await;
    let t = claim_one(store).await;
    let stale = Completion {
        tenant: globex(),
        logs: vec!["info: from a forged completion".into()],
        ..ok(&t)
    };
    assert_eq!(
        complete(store, vec![stale]).await,
        vec![CompletionOutcome::Stale]
    );
    let done = Completion {
        logs: vec!["info: one".into(), "progress 2/2: two".into()],
        ..ok(&t)
    };
    complete(store, vec![done]).await;
    let lines: Vec<(EventKind, Option<String>)> = events(store, job)
        .await
        .into_iter()
        .filter(|e| e.task_id == Some(t.lease.task_id))
        .filter(|e| e.kind != EventKind::TaskClaimed && e.kind != EventKind::CompletionRefused)
        .map(|e| (e.kind, e.detail))
        .collect();
    assert_eq!(
        lines,
        [
            (EventKind::TaskLog, Some("info: one".to_string())),
            (EventKind::TaskLog, Some("progress 2/2: two".to_string())),
            (EventKind::TaskSucceeded, None),
        ]
    );
}

pub async fn ready_handlers_names_what_a_jobs_ready_tasks_wait_for(store: &dyn Store) {
    let agent = NewTask {
        executor: Executor::Agent,
        ..task("plan")
    };
    let job = submit(
        store,
        spec(
            "waiting-for",
            vec![
                stage("a", vec![task("work"), task("other"), agent]),
                stage("b", vec![task("later")]),
            ],
        ),
    )
    .await;
    let ready = |now: Millis, sample: u32| ReadyHandlers {
        tenant: acme(),
        job,
        now,
        sample,
    };
    let wanted = |pairs: &[(Executor, &str)]| -> Vec<ReadyHandler> {
        pairs
            .iter()
            .map(|(executor, handler)| ReadyHandler {
                executor: *executor,
                handler: handler.to_string(),
            })
            .collect()
    };
    assert_eq!(
        store.ready_handlers(ready(NOW, 100)).await.expect("ready"),
        wanted(&[
            (Executor::Agent, "plan"),
            (Executor::Wasm, "other"),
            (Executor::Wasm, "work")
        ])
    );
    // A task waiting out its retry backoff is not ready yet.
    let work = claim_one(store).await;
    complete(store, vec![retryable(&work, "later", 60_000)]).await;
    assert_eq!(
        store.ready_handlers(ready(NOW, 100)).await.expect("ready"),
        wanted(&[(Executor::Agent, "plan"), (Executor::Wasm, "other")])
    );
    assert_eq!(
        store
            .ready_handlers(ready(NOW + 60_000, 100))
            .await
            .expect("ready")
            .len(),
        3
    );
    // A sample of one ready task names one of the two.
    let one = store.ready_handlers(ready(NOW, 1)).await.expect("ready");
    assert_eq!(one.len(), 1);
    assert!(
        wanted(&[(Executor::Agent, "plan"), (Executor::Wasm, "other")]).contains(&one[0]),
        "{one:?}"
    );
    let other_tenant = ReadyHandlers {
        tenant: globex(),
        ..ready(NOW, 100)
    };
    assert!(matches!(
        store.ready_handlers(other_tenant).await,
        Err(StoreError::NotFound { .. })
    ));
}

// ------------------------------------------------------------ advancement

pub async fn the_last_completion_closes_the_stage_and_opens_the_next_once(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "advance",
            vec![
                stage("a", vec![task("work"), task("work"), task("work")]),
                stage("b", vec![task("work")]),
            ],
        ),
    )
    .await;
    let a = claim(store, 3).await;
    complete(store, vec![ok(&a[0]), ok(&a[1])]).await;
    let s = status(store, job).await;
    assert_eq!(
        (s.stages[0].state, s.stages[0].remaining),
        (StageState::Open, 1)
    );
    assert_eq!(s.stages[1].state, StageState::Waiting);
    assert!(claim(store, 10).await.is_empty(), "stage b is not open yet");

    complete(store, vec![ok(&a[2])]).await;
    let s = status(store, job).await;
    assert_eq!(
        (s.stages[0].state, s.stages[0].closed_at),
        (StageState::Done, Some(NOW))
    );
    assert_eq!(s.stages[1].state, StageState::Open);
    assert_eq!(count(&s.stages[1], TaskState::Pending), 1);

    let b = claim_one(store).await;
    assert_eq!(b.stage_name, "b");
    complete(store, vec![ok(&b)]).await;
    let s = status(store, job).await;
    assert_eq!(s.state, JobState::Succeeded);
    assert_eq!(s.finished_at, Some(NOW));
    let log = events(store, job).await;
    let opened: Vec<Option<i32>> = of_kind(&log, EventKind::StageOpened)
        .iter()
        .map(|e| e.stage_position)
        .collect();
    let closed: Vec<Option<i32>> = of_kind(&log, EventKind::StageClosed)
        .iter()
        .map(|e| e.stage_position)
        .collect();
    assert_eq!(opened, vec![Some(0), Some(1)]);
    assert_eq!(closed, vec![Some(0), Some(1)]);
    assert_eq!(of_kind(&log, EventKind::JobFinished).len(), 1);
}

pub async fn spawned_tasks_are_counted_in_their_stage_before_it_can_open(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "spawn",
            vec![
                stage("a", vec![task("fanout"), task("work")]),
                stage("b", vec![]),
                stage("c", vec![task("work")]),
            ],
        ),
    )
    .await;
    let a = claim(store, 2).await;
    let (fanout, other) = if a[0].handler == "fanout" {
        (&a[0], &a[1])
    } else {
        (&a[1], &a[0])
    };
    assert_eq!(
        complete(store, vec![ok_spawning(fanout, spawn_into("b", 3))]).await,
        vec![CompletionOutcome::Recorded(TaskState::Succeeded)]
    );
    let s = status(store, job).await;
    let b = &s.stages[1];
    assert_eq!((b.state, b.total, b.remaining), (StageState::Waiting, 3, 3));
    assert_eq!(count(b, TaskState::Blocked), 3);

    complete(store, vec![ok(other)]).await;
    let s = status(store, job).await;
    assert_eq!(s.stages[1].state, StageState::Open);
    assert_eq!(count(&s.stages[1], TaskState::Pending), 3);
    let children = claim(store, 10).await;
    assert_eq!(children.len(), 3);
    for (i, child) in children.iter().enumerate() {
        assert_eq!(child.stage_name, "b");
        assert_eq!(child.input_json, format!("{{\"i\":{i}}}"));
        assert_eq!(child.max_attempts, 2);
        assert_eq!(child.timeout_ms, 5_000);
        let record = get_task(store, child.lease.task_id).await;
        assert_eq!(record.parent_task, Some(fanout.lease.task_id));
    }
}

pub async fn spawning_into_the_current_or_an_earlier_stage_is_a_fatal_error(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "backwards",
            vec![
                stage("a", vec![task("work")]),
                stage("b", vec![task("fanout"), task("fanout")]),
            ],
        ),
    )
    .await;
    let a = claim_one(store).await;
    complete(store, vec![ok(&a)]).await;
    let b = claim(store, 2).await;
    let outcomes = complete(
        store,
        vec![
            ok_spawning(&b[0], spawn_into("a", 1)),
            ok_spawning(&b[1], spawn_into("b", 1)),
        ],
    )
    .await;
    assert_eq!(
        outcomes,
        vec![
            CompletionOutcome::RejectedSpawn(format!(
                "task {} spawned into stage \"a\", which is not later than its own stage \"b\"",
                b[0].lease.task_id.0
            )),
            CompletionOutcome::RejectedSpawn(format!(
                "task {} spawned into stage \"b\", which is not later than its own stage \"b\"",
                b[1].lease.task_id.0
            )),
        ]
    );
    let record = get_task(store, b[0].lease.task_id).await;
    assert_eq!(record.state, TaskState::Dead);
    assert_eq!(record.output_json, None);
    let s = status(store, job).await;
    assert_eq!(
        (s.stages[0].total, s.stages[1].total),
        (1, 2),
        "nothing was spawned"
    );
    assert_eq!(s.state, JobState::Failed);
}

pub async fn spawning_into_an_unknown_stage_is_a_fatal_error(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "unknown",
            vec![stage("a", vec![task("fanout")]), stage("b", vec![])],
        ),
    )
    .await;
    let t = claim_one(store).await;
    assert_eq!(
        complete(store, vec![ok_spawning(&t, spawn_into("nope", 1))]).await,
        vec![CompletionOutcome::RejectedSpawn(format!(
            "task {} spawned into unknown stage \"nope\"; the job's stages are: a, b",
            t.lease.task_id.0
        ))]
    );
    assert_eq!(status(store, job).await.stages[1].total, 0);
}

pub async fn spawning_more_than_ten_thousand_tasks_is_a_fatal_error(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "too-many",
            vec![stage("a", vec![task("fanout")]), stage("b", vec![])],
        ),
    )
    .await;
    let t = claim_one(store).await;
    assert_eq!(
        complete(store, vec![ok_spawning(&t, spawn_into("b", 10_001))]).await,
        vec![CompletionOutcome::RejectedSpawn(format!(
            "task {} spawned 10001 tasks, more than the limit of 10000 per task",
            t.lease.task_id.0
        ))]
    );
    assert_eq!(status(store, job).await.stages[1].total, 0);
}

// ------------------------------------------------------------ retries and failure

pub async fn a_retryable_error_returns_the_task_to_pending_after_its_backoff(store: &dyn Store) {
    let job = submit(store, spec("retry", vec![stage("a", vec![task("work")])])).await;
    let t = claim_one(store).await;
    assert_eq!(
        complete(store, vec![retryable(&t, "flaky", 5_000)]).await,
        vec![CompletionOutcome::Recorded(TaskState::Pending)]
    );
    let record = get_task(store, t.lease.task_id).await;
    assert_eq!(record.state, TaskState::Pending);
    assert_eq!(record.error.as_deref(), Some("flaky"));
    assert_eq!(record.run_after, NOW + 5_000);
    assert_eq!(record.lease_expires_at, None);
    assert!(
        store
            .claim_batch(claim_at(1, NOW + 4_999))
            .await
            .expect("claim")
            .is_empty()
    );
    let again = store
        .claim_batch(claim_at(1, NOW + 5_000))
        .await
        .expect("claim");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].lease.attempt, 2);
    assert_eq!(
        of_kind(&events(store, job).await, EventKind::TaskRetried).len(),
        1
    );
    assert_eq!(status(store, job).await.stages[0].remaining, 1);
}

pub async fn a_retryable_error_on_the_last_attempt_is_dead(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "last",
            vec![stage("a", vec![with_attempts(task("work"), 1)])],
        ),
    )
    .await;
    let t = claim_one(store).await;
    assert_eq!(
        complete(store, vec![retryable(&t, "flaky", 5_000)]).await,
        vec![CompletionOutcome::Recorded(TaskState::Dead)]
    );
    let record = get_task(store, t.lease.task_id).await;
    assert_eq!(
        (record.state, record.error.as_deref()),
        (TaskState::Dead, Some("flaky"))
    );
    assert_eq!(record.finished_at, Some(NOW));
    assert_eq!(
        of_kind(&events(store, job).await, EventKind::TaskDead).len(),
        1
    );
}

pub async fn a_dead_task_fails_the_job_when_its_stage_closes(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "fails",
            vec![
                stage("a", vec![task("work"), task("work")]),
                stage("b", vec![task("work")]),
            ],
        ),
    )
    .await;
    let a = claim(store, 2).await;
    assert_eq!(
        complete(store, vec![fatal(&a[0], "broken")]).await,
        vec![CompletionOutcome::Recorded(TaskState::Dead)]
    );
    assert_eq!(
        job_state(store, job).await,
        JobState::Running,
        "the stage is still open"
    );
    complete(store, vec![ok(&a[1])]).await;

    let s = status(store, job).await;
    assert_eq!(s.state, JobState::Failed);
    assert_eq!(
        s.error.as_deref(),
        Some("stage \"a\" finished with 1 dead task(s)")
    );
    assert_eq!(s.stages[1].state, StageState::Waiting);
    assert_eq!((s.stages[1].total, s.stages[1].remaining), (1, 0));
    assert_eq!(count(&s.stages[1], TaskState::Cancelled), 1);
    let log = events(store, job).await;
    assert_eq!(
        of_kind(&log, EventKind::StageOpened).len(),
        1,
        "stage b never opened"
    );
    let finished = of_kind(&log, EventKind::JobFinished);
    assert_eq!(finished.len(), 1);
    assert_eq!(
        finished[0].detail.as_deref(),
        Some("failed: stage \"a\" finished with 1 dead task(s)")
    );
}

pub async fn under_continue_a_dead_task_lets_the_job_go_on(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "goes-on",
            vec![
                continuing("a", vec![task("work")]),
                stage("b", vec![task("work")]),
            ],
        ),
    )
    .await;
    let a = claim_one(store).await;
    complete(store, vec![fatal(&a, "broken")]).await;
    let b = claim_one(store).await;
    assert_eq!(b.stage_name, "b");
    complete(store, vec![ok(&b)]).await;
    assert_eq!(job_state(store, job).await, JobState::Succeeded);
}

// ------------------------------------------------------------ dependencies

pub async fn a_task_is_ready_once_its_own_dependencies_have_succeeded(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "diamond",
            vec![stage(
                "dag",
                vec![
                    keyed("work", Some("d"), &["b", "c"]),
                    keyed("work", Some("a"), &[]),
                    keyed("work", Some("b"), &["a"]),
                    keyed("work", Some("c"), &["a"]),
                ],
            )],
        ),
    )
    .await;
    let a = claim(store, 10).await;
    assert_eq!(a.len(), 1, "only a is ready");
    complete(store, vec![ok(&a[0])]).await;
    let bc = claim(store, 10).await;
    assert_eq!(bc.len(), 2, "b and c run side by side");
    complete(store, vec![ok(&bc[0])]).await;
    assert!(
        claim(store, 10).await.is_empty(),
        "d still waits for the other"
    );
    assert_eq!(
        count(&status(store, job).await.stages[0], TaskState::Blocked),
        1
    );
    complete(store, vec![ok(&bc[1])]).await;
    let d = claim(store, 10).await;
    assert_eq!(d.len(), 1);
    complete(store, vec![ok(&d[0])]).await;
    assert_eq!(job_state(store, job).await, JobState::Succeeded);
}

pub async fn a_dead_dependency_cancels_exactly_its_transitive_dependents(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "chain",
            vec![stage(
                "dag",
                vec![
                    keyed("work", Some("a"), &[]),
                    keyed("work", Some("b"), &["a"]),
                    keyed("work", Some("c"), &["b"]),
                    keyed("work", Some("x"), &[]),
                ],
            )],
        ),
    )
    .await;
    let ready = claim(store, 10).await;
    assert_eq!(ready.len(), 2);
    let (a, x) = (&ready[0], &ready[1]);
    complete(store, vec![fatal(a, "broken")]).await;
    let s = status(store, job).await;
    assert_eq!(count(&s.stages[0], TaskState::Cancelled), 2);
    assert_eq!(
        count(&s.stages[0], TaskState::Running),
        1,
        "x is unaffected"
    );
    assert_eq!(s.stages[0].remaining, 1);
    let b = get_task(store, TaskId(a.lease.task_id.0 + 1)).await;
    assert_eq!(b.state, TaskState::Cancelled);
    assert_eq!(
        b.error.as_deref(),
        Some("cancelled: a task it depends on died")
    );
    assert_eq!(
        of_kind(&events(store, job).await, EventKind::TaskCancelled).len(),
        2
    );
    complete(store, vec![ok(x)]).await;
    assert_eq!(job_state(store, job).await, JobState::Failed);
}

pub async fn under_continue_a_dead_dependency_releases_its_dependents(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "released",
            vec![continuing(
                "dag",
                vec![
                    keyed("work", Some("a"), &[]),
                    keyed("work", Some("b"), &["a"]),
                ],
            )],
        ),
    )
    .await;
    let a = claim_one(store).await;
    complete(store, vec![fatal(&a, "broken")]).await;
    let b = claim_one(store).await;
    complete(store, vec![ok(&b)]).await;
    assert_eq!(job_state(store, job).await, JobState::Succeeded);
}

pub async fn a_tasks_own_continue_in_a_fail_job_stage_releases_its_dependents(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "own-continue",
            vec![stage(
                "dag",
                vec![
                    with_on_failure(keyed("work", Some("a"), &[]), OnFailure::Continue),
                    keyed("work", Some("b"), &["a"]),
                ],
            )],
        ),
    )
    .await;
    let a = claim_one(store).await;
    complete(store, vec![fatal(&a, "broken")]).await;
    let b = claim_one(store).await;
    assert_ne!(b.lease.task_id, a.lease.task_id, "b, released by a's death");
    complete(store, vec![ok(&b)]).await;
    let s = status(store, job).await;
    assert_eq!(s.state, JobState::Succeeded, "{:?}", s.error);
    assert_eq!(count(&s.stages[0], TaskState::Dead), 1);
    assert_eq!(count(&s.stages[0], TaskState::Succeeded), 1);
}

pub async fn a_tasks_own_fail_job_in_a_continue_stage_fails_the_job(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "own-fail-job",
            vec![
                NewStage {
                    on_failure: OnFailure::Continue,
                    ..stage(
                        "dag",
                        vec![
                            keyed("work", Some("a"), &[]),
                            with_on_failure(keyed("work", Some("b"), &["a"]), OnFailure::Continue),
                        ],
                    )
                },
                stage("after", vec![task("work")]),
            ],
        ),
    )
    .await;
    let a = claim_one(store).await;
    complete(store, vec![fatal(&a, "broken")]).await;
    assert!(claim(store, 10).await.is_empty(), "b was cancelled");
    let s = status(store, job).await;
    assert_eq!(s.state, JobState::Failed);
    assert_eq!(
        s.error.as_deref(),
        Some("stage \"dag\" finished with 1 dead task(s)")
    );
    assert_eq!(count(&s.stages[0], TaskState::Cancelled), 1);
    assert_eq!(count(&s.stages[1], TaskState::Cancelled), 1);
}

pub async fn spawned_children_take_their_target_stages_on_failure(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "spawned-continue",
            vec![
                stage("fan", vec![task("work")]),
                continuing("process", vec![]),
                stage("after", vec![task("work")]),
            ],
        ),
    )
    .await;
    let fan = claim_one(store).await;
    complete(store, vec![ok_spawning(&fan, spawn_into("process", 2))]).await;
    let children = claim(store, 10).await;
    assert_eq!(children.len(), 2);
    complete(store, vec![fatal(&children[0], "broken"), ok(&children[1])]).await;
    let after = claim_one(store).await;
    assert_eq!(after.stage_name, "after");
    complete(store, vec![ok(&after)]).await;
    assert_eq!(job_state(store, job).await, JobState::Succeeded);
}

pub async fn tasks_spawned_into_a_stage_take_its_own_attempts_and_timeout(store: &dyn Store) {
    submit(
        store,
        spec(
            "spawned-defaults",
            vec![
                stage("fan", vec![task("work")]),
                NewStage {
                    max_attempts: Some(7),
                    timeout_ms: Some(1_000),
                    ..stage("strict", vec![])
                },
                stage("plain", vec![]),
            ],
        ),
    )
    .await;
    let fan = claim_one(store).await;
    let mut spawn = spawn_into("strict", 1);
    spawn.extend(spawn_into("plain", 1));
    complete(store, vec![ok_spawning(&fan, spawn)]).await;
    let strict = claim_one(store).await;
    assert_eq!(strict.stage_name, "strict");
    assert_eq!((strict.max_attempts, strict.timeout_ms), (7, 1_000));
    complete(store, vec![ok(&strict)]).await;
    let plain = claim_one(store).await;
    assert_eq!(plain.stage_name, "plain");
    // No stage setting: the values the spawn carried (its parent's).
    assert_eq!((plain.max_attempts, plain.timeout_ms), (2, 5_000));
}

// ------------------------------------------------------------ leases

pub async fn an_expired_lease_goes_back_to_pending_and_then_dies(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "leases",
            vec![stage("a", vec![with_attempts(task("work"), 2)])],
        ),
    )
    .await;
    let t = claim_one(store).await;
    let rescue = |now| RescueExpiredLeases {
        now,
        retry_after: Duration::from_millis(1_000),
        limit: 10,
    };
    assert_eq!(
        store
            .rescue_expired_leases(rescue(NOW + LEASE_MS - 1))
            .await
            .expect("rescue"),
        0
    );
    let later = NOW + LEASE_MS + 1;
    assert_eq!(
        store
            .rescue_expired_leases(rescue(later))
            .await
            .expect("rescue"),
        1
    );
    let record = get_task(store, t.lease.task_id).await;
    assert_eq!((record.state, record.attempt), (TaskState::Pending, 1));
    assert_eq!(record.run_after, later + 1_000);
    assert!(
        record
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("lease expired"))
    );

    let again = store
        .claim_batch(claim_at(1, later + 1_000))
        .await
        .expect("claim");
    assert_eq!(again[0].lease.attempt, 2);
    let last = later + 1_000 + LEASE_MS + 1;
    assert_eq!(
        store
            .rescue_expired_leases(rescue(last))
            .await
            .expect("rescue"),
        1
    );
    assert_eq!(
        get_task(store, t.lease.task_id).await.state,
        TaskState::Dead
    );
    assert_eq!(job_state(store, job).await, JobState::Failed);
    let log = events(store, job).await;
    assert_eq!(of_kind(&log, EventKind::TaskRetried).len(), 1);
    assert_eq!(of_kind(&log, EventKind::TaskDead).len(), 1);
}

pub async fn renewing_extends_only_a_lease_still_held(store: &dyn Store) {
    submit(store, spec("renew", vec![stage("a", vec![task("work")])])).await;
    let t = claim_one(store).await;
    let renew = |tenant: TenantId, attempt| RenewLease {
        tenant,
        lease: lockstep::model::LeaseToken {
            task_id: t.lease.task_id,
            attempt,
        },
        lease_for: Duration::from_millis(30_000),
        now: NOW + 100,
        note: None,
    };
    assert!(store.renew_lease(renew(acme(), 1)).await.expect("renew"));
    assert_eq!(
        get_task(store, t.lease.task_id).await.lease_expires_at,
        Some(NOW + 100 + 30_000)
    );
    assert!(!store.renew_lease(renew(acme(), 2)).await.expect("renew"));
    assert!(!store.renew_lease(renew(globex(), 1)).await.expect("renew"));
    complete(store, vec![ok(&t)]).await;
    assert!(!store.renew_lease(renew(acme(), 1)).await.expect("renew"));
}

// ------------------------------------------------------------ lineage

pub async fn stage_results_pages_through_an_earlier_stages_outputs(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "lineage",
            vec![
                stage("a", (0..5).map(|_| task("work")).collect()),
                stage("b", vec![task("work")]),
            ],
        ),
    )
    .await;
    let a = claim(store, 5).await;
    complete(store, a.iter().map(ok).collect()).await;
    let page = |after, limit| StageResults {
        tenant: acme(),
        job,
        from_stage_position: 1,
        stage_name: "a".to_string(),
        after,
        limit,
    };
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let results = store.stage_results(page(after, 2)).await.expect("results");
        assert!(results.len() <= 2);
        let Some(last) = results.last() else { break };
        after = Some(last.0);
        seen.extend(results);
    }
    let expected: Vec<(TaskId, String)> = a
        .iter()
        .map(|t| {
            (
                t.lease.task_id,
                format!("{{\"task\":{}}}", t.lease.task_id.0),
            )
        })
        .collect();
    assert_eq!(seen, expected);

    let own = store
        .stage_results(StageResults {
            stage_name: "b".to_string(),
            ..page(None, 10)
        })
        .await
        .expect_err("a stage may not read its own outputs");
    assert!(matches!(own, StoreError::NotFound { .. }), "{own}");
}

// ------------------------------------------------------------ operator actions

pub async fn cancelling_a_job_cancels_every_unfinished_task(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "cancel",
            vec![
                stage("a", vec![task("work"), task("work")]),
                stage("b", vec![task("work")]),
            ],
        ),
    )
    .await;
    let running = claim_one(store).await;
    let state = store
        .cancel_job(CancelJob {
            tenant: acme(),
            job,
            now: NOW,
        })
        .await
        .expect("cancel");
    assert_eq!(state, JobState::Cancelled);
    let s = status(store, job).await;
    assert_eq!(s.state, JobState::Cancelled);
    assert_eq!(count(&s.stages[0], TaskState::Cancelled), 2);
    assert_eq!(count(&s.stages[1], TaskState::Cancelled), 1);
    assert!(claim(store, 10).await.is_empty());
    assert_eq!(
        complete(store, vec![ok(&running)]).await,
        vec![CompletionOutcome::Stale]
    );
    let log = events(store, job).await;
    assert_eq!(of_kind(&log, EventKind::TaskCancelled).len(), 3);
    assert_eq!(of_kind(&log, EventKind::JobCancelled).len(), 1);
}

pub async fn cancelling_a_finished_job_is_an_illegal_transition(store: &dyn Store) {
    let job = submit(store, spec("done", vec![stage("a", vec![task("work")])])).await;
    let t = claim_one(store).await;
    complete(store, vec![ok(&t)]).await;
    let before = events(store, job).await.len();
    let err = store
        .cancel_job(CancelJob {
            tenant: acme(),
            job,
            now: NOW,
        })
        .await
        .expect_err("finished");
    assert_eq!(
        err.to_string(),
        "illegal job transition: succeeded -> cancelled"
    );
    assert_eq!(job_state(store, job).await, JobState::Succeeded);
    assert_eq!(events(store, job).await.len(), before);
}

pub async fn retrying_a_dead_task_reopens_its_stage_and_job(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "revive",
            vec![stage("a", vec![with_attempts(task("work"), 1)])],
        ),
    )
    .await;
    let t = claim_one(store).await;
    complete(store, vec![fatal(&t, "broken")]).await;
    assert_eq!(job_state(store, job).await, JobState::Failed);

    let state = store
        .retry_task(RetryTask {
            tenant: acme(),
            task: t.lease.task_id,
            now: NOW,
        })
        .await
        .expect("retry");
    assert_eq!(state, TaskState::Pending);
    let s = status(store, job).await;
    assert_eq!(s.state, JobState::Running);
    assert_eq!(s.error, None);
    assert_eq!(
        (s.stages[0].state, s.stages[0].remaining),
        (StageState::Open, 1)
    );
    let record = get_task(store, t.lease.task_id).await;
    assert_eq!((record.state, record.error), (TaskState::Pending, None));
    let log = events(store, job).await;
    assert_eq!(of_kind(&log, EventKind::TaskRevived).len(), 1);
    assert_eq!(of_kind(&log, EventKind::JobReopened).len(), 1);

    let again = claim_one(store).await;
    assert_eq!(again.lease.attempt, 2);
    complete(store, vec![ok(&again)]).await;
    assert_eq!(job_state(store, job).await, JobState::Succeeded);
}

pub async fn retrying_a_succeeded_task_is_an_illegal_transition(store: &dyn Store) {
    let job = submit(
        store,
        spec("no-retry", vec![stage("a", vec![task("work")])]),
    )
    .await;
    let t = claim_one(store).await;
    complete(store, vec![ok(&t)]).await;
    let before = events(store, job).await.len();
    let err = store
        .retry_task(RetryTask {
            tenant: acme(),
            task: t.lease.task_id,
            now: NOW,
        })
        .await
        .expect_err("succeeded");
    assert_eq!(
        err.to_string(),
        "illegal task transition: succeeded -> pending"
    );
    assert_eq!(
        get_task(store, t.lease.task_id).await.state,
        TaskState::Succeeded
    );
    assert_eq!(events(store, job).await.len(), before);
}

// ------------------------------------------------------------ tenancy and reads

pub async fn another_tenant_gets_not_found_for_every_job_and_task(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "private",
            vec![stage("a", vec![task("work")]), stage("b", vec![])],
        ),
    )
    .await;
    let t = claim_one(store).await;
    let job_missing = format!("job {} not found", job.0);
    let task_missing = format!("task {} not found", t.lease.task_id.0);
    let them = globex();
    let e = store
        .get_job(GetJob {
            tenant: them.clone(),
            job,
        })
        .await
        .expect_err("get_job");
    assert_eq!(e.to_string(), job_missing);
    let e = store
        .job_state(GetJob {
            tenant: them.clone(),
            job,
        })
        .await
        .expect_err("job_state");
    assert_eq!(e.to_string(), job_missing);
    let e = store
        .job_events(JobEvents {
            tenant: them.clone(),
            job,
            after_id: None,
            limit: 10,
        })
        .await
        .expect_err("job_events");
    assert_eq!(e.to_string(), job_missing);
    let e = store
        .stage_results(StageResults {
            tenant: them.clone(),
            job,
            from_stage_position: 1,
            stage_name: "a".to_string(),
            after: None,
            limit: 10,
        })
        .await
        .expect_err("stage_results");
    assert_eq!(e.to_string(), job_missing);
    let e = store
        .recent_completions(RecentCompletions {
            tenant: them.clone(),
            job,
            since: 0,
        })
        .await
        .expect_err("recent_completions");
    assert_eq!(e.to_string(), job_missing);
    let e = store
        .cancel_job(CancelJob {
            tenant: them.clone(),
            job,
            now: NOW,
        })
        .await
        .expect_err("cancel_job");
    assert_eq!(e.to_string(), job_missing);
    let e = store
        .get_task(GetTask {
            tenant: them.clone(),
            task: t.lease.task_id,
        })
        .await
        .expect_err("get_task");
    assert_eq!(e.to_string(), task_missing);
    let e = store
        .retry_task(RetryTask {
            tenant: them.clone(),
            task: t.lease.task_id,
            now: NOW,
        })
        .await
        .expect_err("retry_task");
    assert_eq!(e.to_string(), task_missing);
    let listed = store
        .list_jobs(ListJobs {
            tenant: them.clone(),
            state: None,
            name: None,
            created_after: None,
            created_before: None,
            before_id: None,
            limit: 10,
        })
        .await
        .expect("list");
    assert!(listed.is_empty());
    let claimed = store
        .claim_batch(ClaimBatch {
            tenant: Some(them),
            ..claim_at(10, NOW)
        })
        .await
        .expect("claim");
    assert!(claimed.is_empty());
    // Nothing changed for the owner.
    assert_eq!(job_state(store, job).await, JobState::Running);
    assert_eq!(
        get_task(store, t.lease.task_id).await.state,
        TaskState::Running
    );
}

pub async fn list_jobs_pages_newest_first_and_filters(store: &dyn Store) {
    let mut ids = Vec::new();
    for (i, name) in ["x", "y", "x"].iter().enumerate() {
        let mut s = spec(&format!("list-{i}"), vec![stage("a", vec![task("work")])]);
        s.name = name.to_string();
        s.now = NOW + i as i64;
        ids.push(submit(store, s).await);
    }
    store
        .cancel_job(CancelJob {
            tenant: acme(),
            job: ids[1],
            now: NOW,
        })
        .await
        .expect("cancel");
    let list = |state, name: Option<&str>, after, before, before_id, limit| ListJobs {
        tenant: acme(),
        state,
        name: name.map(str::to_string),
        created_after: after,
        created_before: before,
        before_id,
        limit,
    };
    let found = |jobs: Vec<lockstep::model::JobSummary>| -> Vec<JobId> {
        jobs.into_iter().map(|j| j.job_id).collect()
    };
    let page = store
        .list_jobs(list(None, None, None, None, None, 2))
        .await
        .expect("list");
    assert_eq!(found(page), vec![ids[2], ids[1]]);
    let page = store
        .list_jobs(list(None, None, None, None, Some(ids[1]), 2))
        .await
        .expect("list");
    assert_eq!(found(page), vec![ids[0]]);
    let cancelled = store
        .list_jobs(list(Some(JobState::Cancelled), None, None, None, None, 10))
        .await
        .expect("list");
    assert_eq!(found(cancelled), vec![ids[1]]);
    let named = store
        .list_jobs(list(None, Some("x"), None, None, None, 10))
        .await
        .expect("list");
    assert_eq!(found(named), vec![ids[2], ids[0]]);
    let window = store
        .list_jobs(list(None, None, Some(NOW + 1), Some(NOW + 2), None, 10))
        .await
        .expect("list");
    assert_eq!(found(window), vec![ids[1]]);
}

pub async fn get_job_counts_tasks_by_every_state(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "counts",
            vec![stage(
                "a",
                vec![
                    task("work"),
                    task("work"),
                    task("work"),
                    keyed("work", Some("k"), &[]),
                    keyed("work", None, &["k"]),
                ],
            )],
        ),
    )
    .await;
    let claimed = claim(store, 2).await;
    complete(store, vec![ok(&claimed[0])]).await;
    let s = status(store, job).await;
    let counts: Vec<(TaskState, i64)> = s.stages[0].counts.clone();
    assert_eq!(
        counts,
        vec![
            (TaskState::Blocked, 1),
            (TaskState::Pending, 2),
            (TaskState::Running, 1),
            (TaskState::Succeeded, 1),
            (TaskState::Dead, 0),
            (TaskState::Cancelled, 0),
        ]
    );
    assert_eq!((s.stages[0].total, s.stages[0].remaining), (5, 4));
}

pub async fn recent_completions_counts_tasks_finished_since_a_moment(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "rate",
            vec![stage("a", vec![task("work"), task("work"), task("work")])],
        ),
    )
    .await;
    let t = claim(store, 3).await;
    let at = |c: Completion, now| CompleteBatch {
        completions: vec![c],
        now,
    };
    store
        .complete_batch(at(ok(&t[0]), NOW + 10))
        .await
        .expect("complete");
    store
        .complete_batch(at(ok(&t[1]), NOW + 20))
        .await
        .expect("complete");
    store
        .complete_batch(at(fatal(&t[2], "x"), NOW + 30))
        .await
        .expect("complete");
    let since = |since| RecentCompletions {
        tenant: acme(),
        job,
        since,
    };
    assert_eq!(
        store.recent_completions(since(NOW)).await.expect("recent"),
        3
    );
    assert_eq!(
        store
            .recent_completions(since(NOW + 20))
            .await
            .expect("recent"),
        2
    );
    assert_eq!(
        store
            .recent_completions(since(NOW + 31))
            .await
            .expect("recent"),
        0
    );
}

// ------------------------------------------------------------ instances

/// One test per case for a backend: `$runner` gives each case a fresh store.
macro_rules! conformance_cases {
    ($runner:path) => {
        conformance_cases!(@each $runner;
            submit_opens_the_first_stage_and_blocks_the_rest,
            resubmitting_the_same_key_returns_the_existing_job_and_writes_nothing,
            the_same_key_in_another_tenant_is_another_job,
            stages_without_tasks_close_at_once,
            a_job_without_tasks_succeeds_at_submit,
            claim_marks_tasks_running_under_a_lease_and_logs_each_claim,
            claim_takes_only_the_given_handlers,
            claim_can_be_limited_to_one_job,
            a_completion_for_an_earlier_attempt_is_refused_and_logged,
            a_duplicate_completion_is_refused,
            completing_another_tenants_task_is_refused_without_a_trace,
            the_last_completion_closes_the_stage_and_opens_the_next_once,
            spawned_tasks_are_counted_in_their_stage_before_it_can_open,
            spawning_into_the_current_or_an_earlier_stage_is_a_fatal_error,
            spawning_into_an_unknown_stage_is_a_fatal_error,
            spawning_more_than_ten_thousand_tasks_is_a_fatal_error,
            a_retryable_error_returns_the_task_to_pending_after_its_backoff,
            a_retryable_error_on_the_last_attempt_is_dead,
            a_dead_task_fails_the_job_when_its_stage_closes,
            under_continue_a_dead_task_lets_the_job_go_on,
            a_task_is_ready_once_its_own_dependencies_have_succeeded,
            a_dead_dependency_cancels_exactly_its_transitive_dependents,
            under_continue_a_dead_dependency_releases_its_dependents,
            a_tasks_own_continue_in_a_fail_job_stage_releases_its_dependents,
            a_tasks_own_fail_job_in_a_continue_stage_fails_the_job,
            spawned_children_take_their_target_stages_on_failure,
            tasks_spawned_into_a_stage_take_its_own_attempts_and_timeout,
            a_completions_log_lines_precede_its_outcome_and_a_stale_ones_are_dropped,
            ready_handlers_names_what_a_jobs_ready_tasks_wait_for,
            an_expired_lease_goes_back_to_pending_and_then_dies,
            renewing_extends_only_a_lease_still_held,
            stage_results_pages_through_an_earlier_stages_outputs,
            cancelling_a_job_cancels_every_unfinished_task,
            cancelling_a_finished_job_is_an_illegal_transition,
            retrying_a_dead_task_reopens_its_stage_and_job,
            retrying_a_succeeded_task_is_an_illegal_transition,
            another_tenant_gets_not_found_for_every_job_and_task,
            list_jobs_pages_newest_first_and_filters,
            get_job_counts_tasks_by_every_state,
            recent_completions_counts_tasks_finished_since_a_moment,
        );
    };
    (@each $runner:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $runner(|store| async move { super::$case(store.as_ref()).await }).await;
            }
        )*
    };
}

/// Every case against PostgreSQL (a fresh database each; skipped with one
/// line when no server is reachable and `LOCKSTEP_TEST_POSTGRES` is unset).
mod postgres {
    conformance_cases!(crate::postgres_test_db::with_pg_store);
}

/// Every case against SQLite (a fresh database file each).
mod sqlite {
    conformance_cases!(super::with_sqlite_store);
}

async fn with_sqlite_store<F, Fut>(case: F)
where
    F: FnOnce(std::sync::Arc<lockstep::store::sqlite::SqliteStore>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("conformance.db").display());
    let store = lockstep::store::sqlite::SqliteStore::open(
        &url,
        lockstep::store::sqlite::SqliteOptions::default(),
    )
    .await
    .expect("open sqlite store");
    case(std::sync::Arc::new(store)).await;
}
