//! Operator actions: cancelling jobs and retrying tasks.

use super::fixtures::*;

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
            by: Some("alice".to_string()),
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
    let cancelled = of_kind(&log, EventKind::JobCancelled);
    assert_eq!(cancelled.len(), 1);
    assert_eq!(cancelled[0].detail.as_deref(), Some("by alice"));
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
            by: None,
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
            by: Some("ops bot".to_string()),
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
    let revived = of_kind(&log, EventKind::TaskRevived);
    assert_eq!(revived.len(), 1);
    assert_eq!(
        revived[0].detail.as_deref(),
        Some("dead -> pending, by ops bot")
    );
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
            by: None,
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

pub async fn retrying_a_task_still_on_its_way_is_an_illegal_transition(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "too-early",
            vec![
                stage("a", vec![task("work"), task("work")]),
                stage("b", vec![task("work")]),
            ],
        ),
    )
    .await;
    let running = claim(store, 1).await.remove(0);
    let counts = serde_json::to_value(status(store, job).await).expect("status as JSON");
    let before = events(store, job).await.len();
    let pending = TaskId(if running.lease.task_id.0 == 1 { 2 } else { 1 });
    let blocked = TaskId(3);
    assert_eq!(get_task(store, pending).await.state, TaskState::Pending);
    assert_eq!(get_task(store, blocked).await.state, TaskState::Blocked);
    for (task, state) in [
        (running.lease.task_id, "running"),
        (pending, "pending"),
        (blocked, "blocked"),
    ] {
        let err = store
            .retry_task(RetryTask {
                tenant: acme(),
                task,
                now: NOW,
                by: None,
            })
            .await
            .expect_err(state);
        assert_eq!(
            err.to_string(),
            format!("illegal task transition: {state} -> pending")
        );
    }
    // Nothing was written: the same counts and events, and the job runs to the end.
    assert_eq!(
        serde_json::to_value(status(store, job).await).expect("status as JSON"),
        counts
    );
    assert_eq!(events(store, job).await.len(), before);
    complete(store, vec![ok(&running)]).await;
    let rest = claim_one(store).await;
    complete(store, vec![ok(&rest)]).await;
    let last = claim_one(store).await;
    assert_eq!(last.lease.task_id, blocked);
    complete(store, vec![ok(&last)]).await;
    assert_eq!(job_state(store, job).await, JobState::Succeeded);
}

conformance_cases!(
    cancelling_a_job_cancels_every_unfinished_task,
    cancelling_a_finished_job_is_an_illegal_transition,
    retrying_a_dead_task_reopens_its_stage_and_job,
    retrying_a_succeeded_task_is_an_illegal_transition,
    retrying_a_task_still_on_its_way_is_an_illegal_transition,
);
