//! Building blocks every area of the conformance suite shares: tenants,
//! job specs, claims, completions and the reads that check their effects.
//! Time is a logical clock ([`NOW`]): the store takes `now` from its caller,
//! so cases never depend on the wall clock.

pub(crate) use lockstep::model::{
    Event, EventKind, Executor, HandlerDepth, JobId, JobState, JobStatus, LeaseToken, Millis,
    NewStage, NewTask, OnFailure, QueueDepth, StageState, StageStatus, SubmitJob, TaskId,
    TaskRecord, TaskState, TenantId, TokenRecord, TokenRole,
};
pub(crate) use lockstep::store::{
    CancelJob, ClaimBatch, ClaimedTask, CompleteBatch, Completion, CompletionOutcome, CountJobs,
    CreateToken, DeadTasks, GetJob, GetTask, JobEvents, JobSpecPart, ListJobs, ListTasks,
    QueueDepthQuery, ReadyHandler, ReadyHandlers, RecentCompletions, ReleaseLeases, RenewLease,
    RescueExpiredLeases, RetryTask, RevokeToken, SPEC_PART_BYTES, SpawnTask, StageResults, Store,
    StoreError, TaskEvents, TaskResult, TokenLookup, TokenRef,
};
pub(crate) use std::time::Duration;

pub(crate) const NOW: Millis = 1_800_000_000_000;
pub(crate) const LEASE_MS: i64 = 60_000;

pub(crate) fn acme() -> TenantId {
    TenantId("acme".to_string())
}

pub(crate) fn globex() -> TenantId {
    TenantId("globex".to_string())
}

pub(crate) fn task(handler: &str) -> NewTask {
    keyed(handler, None, &[])
}

pub(crate) fn keyed(handler: &str, key: Option<&str>, depends_on: &[&str]) -> NewTask {
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

/// An MCP agent's task (`agent:planner`) with its key, dependencies and title.
pub(crate) fn agent_task(key: &str, depends_on: &[&str], title: &str) -> NewTask {
    NewTask {
        executor: Executor::Agent,
        agent_json: Some(format!("{{\"title\":{title:?}}}")),
        ..keyed("agent:planner", Some(key), depends_on)
    }
}

pub(crate) fn with_attempts(mut t: NewTask, max_attempts: i32) -> NewTask {
    t.max_attempts = max_attempts;
    t
}

pub(crate) fn stage(name: &str, tasks: Vec<NewTask>) -> NewStage {
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
pub(crate) fn continuing(name: &str, tasks: Vec<NewTask>) -> NewStage {
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

pub(crate) fn with_on_failure(mut t: NewTask, on_failure: OnFailure) -> NewTask {
    t.on_failure = on_failure;
    t
}

pub(crate) fn spec_for(tenant: TenantId, key: &str, stages: Vec<NewStage>) -> SubmitJob {
    SubmitJob {
        tenant,
        name: key.to_string(),
        idempotency_key: key.to_string(),
        spec_json: "{}".to_string(),
        stages,
        now: NOW,
    }
}

pub(crate) fn spec(key: &str, stages: Vec<NewStage>) -> SubmitJob {
    spec_for(acme(), key, stages)
}

/// A job of stage `a` (tasks 1 and 2) and stage `b` (task 3), all `work`.
pub(crate) fn two_then_one(key: &str) -> SubmitJob {
    wide_then_one(key, 2)
}

/// A job of stage `a` (`width` tasks) and stage `b` (one task), all `work`.
pub(crate) fn wide_then_one(key: &str, width: usize) -> SubmitJob {
    spec(
        key,
        vec![
            stage("a", (0..width).map(|_| task("work")).collect()),
            stage("b", vec![task("work")]),
        ],
    )
}

pub(crate) async fn submit(store: &dyn Store, s: SubmitJob) -> JobId {
    let submitted = store.submit_job(s).await.expect("submit");
    assert!(submitted.created);
    submitted.job_id
}

pub(crate) fn claim_at(limit: u32, now: Millis) -> ClaimBatch {
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

pub(crate) async fn claim(store: &dyn Store, limit: u32) -> Vec<ClaimedTask> {
    store
        .claim_batch(claim_at(limit, NOW))
        .await
        .expect("claim")
}

pub(crate) async fn claim_one(store: &dyn Store) -> ClaimedTask {
    let mut claimed = claim(store, 1).await;
    assert_eq!(claimed.len(), 1, "exactly one task is ready");
    claimed.remove(0)
}

pub(crate) fn ok(t: &ClaimedTask) -> Completion {
    ok_spawning(t, Vec::new())
}

pub(crate) fn ok_spawning(t: &ClaimedTask, spawn: Vec<SpawnTask>) -> Completion {
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

pub(crate) fn fatal(t: &ClaimedTask, error: &str) -> Completion {
    Completion {
        tenant: t.tenant.clone(),
        lease: t.lease,
        result: TaskResult::Fatal {
            error: error.to_string(),
            output_json: None,
        },
        logs: vec![],
    }
}

pub(crate) fn retryable(t: &ClaimedTask, error: &str, after_ms: u64) -> Completion {
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

pub(crate) fn spawn_into(stage: &str, n: usize) -> Vec<SpawnTask> {
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

pub(crate) async fn complete(
    store: &dyn Store,
    completions: Vec<Completion>,
) -> Vec<CompletionOutcome> {
    store
        .complete_batch(CompleteBatch {
            completions,
            now: NOW,
            max_tasks_per_job: lockstep::spec::Limits::default().max_tasks_per_job,
        })
        .await
        .expect("complete")
}

pub(crate) async fn status(store: &dyn Store, job: JobId) -> JobStatus {
    store
        .get_job(GetJob {
            tenant: acme(),
            job,
        })
        .await
        .expect("get job")
}

pub(crate) async fn job_state(store: &dyn Store, job: JobId) -> JobState {
    store
        .job_state(GetJob {
            tenant: acme(),
            job,
        })
        .await
        .expect("job state")
}

pub(crate) async fn get_task(store: &dyn Store, task: TaskId) -> TaskRecord {
    store
        .get_task(GetTask {
            tenant: acme(),
            task,
        })
        .await
        .expect("get task")
}

pub(crate) fn count(stage: &StageStatus, state: TaskState) -> i64 {
    stage
        .counts
        .iter()
        .find(|(s, _)| *s == state)
        .map_or(0, |(_, n)| *n)
}

pub(crate) async fn events(store: &dyn Store, job: JobId) -> Vec<Event> {
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

pub(crate) fn kinds(events: &[Event]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind).collect()
}

pub(crate) fn of_kind(events: &[Event], kind: EventKind) -> Vec<&Event> {
    events.iter().filter(|e| e.kind == kind).collect()
}
