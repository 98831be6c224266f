//! What the task row and the event log say about each attempt (invariant
//! 42): a claim is recorded in the task row; the event that ends the attempt
//! carries its number, worker and claim time; only agent (and command)
//! claims append `task_claimed` as well.

use super::fixtures::*;

/// When the cases claim (tasks are submitted ready at `NOW`) and when they
/// complete: apart, so that the claim time an end event carries cannot be
/// mistaken for the event's own time.
const CLAIMED: Millis = NOW + 1_000;
const DONE: Millis = NOW + 8_000;

fn claim_by(worker: &str, now: Millis) -> ClaimBatch {
    ClaimBatch {
        worker: worker.to_string(),
        ..claim_at(10, now)
    }
}

async fn claim_one_by(store: &dyn Store, worker: &str, now: Millis) -> ClaimedTask {
    let mut claimed = store
        .claim_batch(claim_by(worker, now))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1, "exactly one task is ready");
    claimed.remove(0)
}

async fn complete_at(store: &dyn Store, c: Completion, now: Millis) -> CompletionOutcome {
    let mut out = store
        .complete_batch(CompleteBatch {
            completions: vec![c],
            now,
            max_tasks_per_job: lockstep::spec::Limits::default().max_tasks_per_job,
        })
        .await
        .expect("complete");
    out.remove(0)
}

/// What the row says about the latest attempt: state, attempt, worker,
/// claimed_at.
type RowClaim = (TaskState, i32, Option<String>, Option<Millis>);

async fn row_claim(store: &dyn Store, task: TaskId) -> RowClaim {
    let t = get_task(store, task).await;
    (t.state, t.attempt, t.worker, t.claimed_at)
}

/// A task's event as these cases check it: kind, detail, at, and the
/// attempt, worker and claim time it carries.
type Told = (
    EventKind,
    Option<String>,
    Millis,
    Option<i32>,
    Option<String>,
    Option<Millis>,
);

async fn told(store: &dyn Store, task: TaskId) -> Vec<Told> {
    store
        .task_events(TaskEvents {
            tenant: acme(),
            task,
            limit: 100,
        })
        .await
        .expect("task events")
        .into_iter()
        .map(|e| (e.kind, e.detail, e.at, e.attempt, e.worker, e.claimed_at))
        .collect()
}

fn w(name: &str) -> Option<String> {
    Some(name.to_string())
}

pub async fn a_wasm_claim_is_recorded_in_the_task_row_and_appends_no_event(store: &dyn Store) {
    let job = submit(store, spec("row", vec![stage("a", vec![task("work")])])).await;
    let before = events(store, job).await;
    assert_eq!(
        get_task(store, job_task(store, job).await).await.claimed_at,
        None
    );
    let t = claim_one_by(store, "worker-1", CLAIMED).await;
    assert_eq!(
        row_claim(store, t.lease.task_id).await,
        (TaskState::Running, 1, w("worker-1"), Some(CLAIMED))
    );
    let after = events(store, job).await;
    assert_eq!(
        after.iter().map(|e| (e.id, e.kind)).collect::<Vec<_>>(),
        before.iter().map(|e| (e.id, e.kind)).collect::<Vec<_>>(),
        "a wasm claim appends nothing to the log"
    );
    assert!(told(store, t.lease.task_id).await.is_empty());
    // Running tasks are counted outside `tasks_job_stage_state`, which holds
    // none on SQLite (migration 0009): the job's counts still see this one.
    let stage = &status(store, job).await.stages[0];
    assert_eq!(
        (
            count(stage, TaskState::Pending),
            count(stage, TaskState::Running)
        ),
        (0, 1)
    );
    complete_at(store, ok(&t), DONE).await;
    let stage = &status(store, job).await.stages[0];
    assert_eq!(
        (
            count(stage, TaskState::Running),
            count(stage, TaskState::Succeeded)
        ),
        (0, 1)
    );
}

async fn job_task(store: &dyn Store, job: JobId) -> TaskId {
    let tasks = store
        .list_tasks(ListTasks {
            tenant: acme(),
            job,
            after: None,
            limit: 10,
        })
        .await
        .expect("list tasks");
    assert_eq!(tasks.len(), 1);
    tasks[0].task_id
}

pub async fn a_success_ends_its_attempt_in_one_event_that_carries_the_claim(store: &dyn Store) {
    submit(store, spec("success", vec![stage("a", vec![task("work")])])).await;
    let t = claim_one_by(store, "worker-1", CLAIMED).await;
    assert_eq!(
        complete_at(store, ok(&t), DONE).await,
        CompletionOutcome::Recorded(TaskState::Succeeded)
    );
    assert_eq!(
        told(store, t.lease.task_id).await,
        vec![(
            EventKind::TaskSucceeded,
            None,
            DONE,
            Some(1),
            w("worker-1"),
            Some(CLAIMED)
        )]
    );
    // The row keeps the claim of its last attempt.
    assert_eq!(
        row_claim(store, t.lease.task_id).await,
        (TaskState::Succeeded, 1, w("worker-1"), Some(CLAIMED))
    );
}

pub async fn a_failure_ends_its_attempt_in_one_event_that_carries_the_claim(store: &dyn Store) {
    submit(store, spec("failure", vec![stage("a", vec![task("work")])])).await;
    let t = claim_one_by(store, "worker-1", CLAIMED).await;
    assert_eq!(
        complete_at(store, fatal(&t, "boom"), DONE).await,
        CompletionOutcome::Recorded(TaskState::Dead)
    );
    assert_eq!(
        told(store, t.lease.task_id).await,
        vec![(
            EventKind::TaskDead,
            Some("boom".to_string()),
            DONE,
            Some(1),
            w("worker-1"),
            Some(CLAIMED)
        )]
    );
    assert_eq!(
        row_claim(store, t.lease.task_id).await,
        (TaskState::Dead, 1, w("worker-1"), Some(CLAIMED))
    );
}

pub async fn each_attempt_of_a_retried_task_is_told_by_its_own_end(store: &dyn Store) {
    submit(
        store,
        spec(
            "retried",
            vec![stage("a", vec![with_attempts(task("work"), 3)])],
        ),
    )
    .await;
    let first = claim_one_by(store, "worker-1", CLAIMED).await;
    assert_eq!(
        complete_at(store, retryable(&first, "flaky", 0), DONE).await,
        CompletionOutcome::Recorded(TaskState::Pending)
    );
    // Between attempts the row still names the last one's claim.
    assert_eq!(
        row_claim(store, first.lease.task_id).await,
        (TaskState::Pending, 1, w("worker-1"), Some(CLAIMED))
    );
    let second = claim_one_by(store, "worker-2", DONE + 1).await;
    assert_eq!(second.lease.attempt, 2);
    assert_eq!(
        row_claim(store, second.lease.task_id).await,
        (TaskState::Running, 2, w("worker-2"), Some(DONE + 1))
    );
    assert_eq!(
        complete_at(store, ok(&second), DONE + 5).await,
        CompletionOutcome::Recorded(TaskState::Succeeded)
    );
    assert_eq!(
        told(store, first.lease.task_id).await,
        vec![
            (
                EventKind::TaskRetried,
                Some(format!("flaky (attempt 1 of 3, retry at {DONE})")),
                DONE,
                Some(1),
                w("worker-1"),
                Some(CLAIMED)
            ),
            (
                EventKind::TaskSucceeded,
                None,
                DONE + 5,
                Some(2),
                w("worker-2"),
                Some(DONE + 1)
            ),
        ]
    );
}

pub async fn a_lease_rescue_ends_the_attempt_in_one_event_that_carries_the_claim(
    store: &dyn Store,
) {
    submit(
        store,
        spec(
            "rescued",
            vec![stage("a", vec![with_attempts(task("work"), 2)])],
        ),
    )
    .await;
    let t = claim_one_by(store, "worker-1", CLAIMED).await;
    let expired = CLAIMED + LEASE_MS;
    assert_eq!(
        store
            .rescue_expired_leases(RescueExpiredLeases {
                now: expired,
                retry_after: Duration::from_millis(1_000),
                limit: 10,
            })
            .await
            .expect("rescue"),
        1
    );
    assert_eq!(
        told(store, t.lease.task_id).await,
        vec![(
            EventKind::TaskRetried,
            Some(format!(
                "lease expired during attempt 1 (attempt 1 of 2, retry at {})",
                expired + 1_000
            )),
            expired,
            Some(1),
            w("worker-1"),
            Some(CLAIMED)
        )]
    );
}

pub async fn a_released_claim_leaves_no_claim_in_the_row(store: &dyn Store) {
    submit(
        store,
        spec("released", vec![stage("a", vec![task("work")])]),
    )
    .await;
    let t = claim_one_by(store, "worker-1", CLAIMED).await;
    assert_eq!(
        store
            .release_leases(ReleaseLeases {
                leases: vec![(acme(), t.lease)],
                now: DONE,
            })
            .await
            .expect("release"),
        1
    );
    assert_eq!(
        row_claim(store, t.lease.task_id).await,
        (TaskState::Pending, 0, None, None)
    );
    assert!(told(store, t.lease.task_id).await.is_empty());
}

pub async fn an_agent_claim_is_logged_and_its_end_carries_the_claim(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "agent",
            vec![stage(
                "a",
                vec![NewTask {
                    executor: Executor::Agent,
                    agent_json: Some("{\"title\":\"Plan\"}".to_string()),
                    ..task("agent:planner")
                }],
            )],
        ),
    )
    .await;
    let mut claimed = store
        .claim_batch(ClaimBatch {
            tenant: Some(acme()),
            executor: Executor::Agent,
            handlers: None,
            job: Some(job),
            ..claim_by("agent-7", CLAIMED)
        })
        .await
        .expect("agent claim");
    assert_eq!(claimed.len(), 1);
    let t = claimed.remove(0);
    // No nonce: an MCP agent's token is (task_id, attempt) (Invariant 8).
    assert_eq!(t.lease.nonce, None);
    assert_eq!(
        row_claim(store, t.lease.task_id).await,
        (TaskState::Running, 1, w("agent-7"), Some(CLAIMED))
    );
    let claim_event = (
        EventKind::TaskClaimed,
        Some("attempt 1 by agent-7".to_string()),
        CLAIMED,
        Some(1),
        w("agent-7"),
        Some(CLAIMED),
    );
    assert_eq!(
        told(store, t.lease.task_id).await,
        vec![claim_event.clone()]
    );
    assert_eq!(
        complete_at(store, ok(&t), DONE).await,
        CompletionOutcome::Recorded(TaskState::Succeeded)
    );
    assert_eq!(
        told(store, t.lease.task_id).await,
        vec![
            claim_event,
            (
                EventKind::TaskSucceeded,
                None,
                DONE,
                Some(1),
                w("agent-7"),
                Some(CLAIMED)
            ),
        ]
    );
}

conformance_cases!(
    a_wasm_claim_is_recorded_in_the_task_row_and_appends_no_event,
    a_success_ends_its_attempt_in_one_event_that_carries_the_claim,
    a_failure_ends_its_attempt_in_one_event_that_carries_the_claim,
    each_attempt_of_a_retried_task_is_told_by_its_own_end,
    a_lease_rescue_ends_the_attempt_in_one_event_that_carries_the_claim,
    a_released_claim_leaves_no_claim_in_the_row,
    an_agent_claim_is_logged_and_its_end_carries_the_claim,
);
