//! Operator actions: cancelling jobs and retrying tasks.

use super::fixtures::*;

pub async fn cancelling_a_job_cancels_every_unfinished_task(store: &dyn Store) {
    let job = submit(store, two_then_one("cancel")).await;
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
    let job = submit(store, two_then_one("too-early")).await;
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

fn revive(task: TaskId) -> RetryTask {
    RetryTask {
        tenant: acme(),
        task,
        now: NOW,
        by: None,
    }
}

/// Each stage's (state, remaining).
fn stage_counters(s: &JobStatus) -> Vec<(StageState, i64)> {
    s.stages.iter().map(|s| (s.state, s.remaining)).collect()
}

/// Stage `a` (task 1, one attempt), stage `b` (tasks 2 and 3, 3 depending on
/// 2), stage `c` (task 4); task 1 dies, so the job fails and tasks 2–4 are
/// cancelled.
async fn job_failed_at_its_first_stage(store: &dyn Store) -> JobId {
    let job = submit(
        store,
        spec(
            "resume",
            vec![
                stage("a", vec![with_attempts(task("work"), 1)]),
                stage(
                    "b",
                    vec![
                        keyed("work", Some("first"), &[]),
                        keyed("work", Some("second"), &["first"]),
                    ],
                ),
                stage("c", vec![task("work")]),
            ],
        ),
    )
    .await;
    let t = claim_one(store).await;
    assert_eq!(t.lease.task_id, TaskId(1));
    complete(store, vec![fatal(&t, "broken")]).await;
    let s = status(store, job).await;
    assert_eq!(s.state, JobState::Failed);
    assert_eq!(
        stage_counters(&s),
        [
            (StageState::Done, 0),
            (StageState::Waiting, 0),
            (StageState::Waiting, 0)
        ]
    );
    for task in 2..=4 {
        assert_eq!(
            get_task(store, TaskId(task)).await.state,
            TaskState::Cancelled
        );
    }
    job
}

pub async fn retrying_the_dead_task_of_a_failed_job_brings_back_the_later_stages(
    store: &dyn Store,
) {
    let job = job_failed_at_its_first_stage(store).await;
    let state = store.retry_task(revive(TaskId(1))).await.expect("retry");
    assert_eq!(state, TaskState::Pending);
    let s = status(store, job).await;
    assert_eq!(s.state, JobState::Running);
    assert_eq!(
        stage_counters(&s),
        [
            (StageState::Open, 1),
            (StageState::Waiting, 2),
            (StageState::Waiting, 1)
        ]
    );
    for task in 2..=4 {
        let record = get_task(store, TaskId(task)).await;
        assert_eq!((record.state, record.error), (TaskState::Blocked, None));
    }
    let log = events(store, job).await;
    let revived: Vec<_> = of_kind(&log, EventKind::TaskRevived)
        .iter()
        .map(|e| (e.task_id, e.detail.clone().unwrap_or_default()))
        .collect();
    assert_eq!(
        revived,
        [
            (Some(TaskId(1)), "dead -> pending".to_string()),
            (
                Some(TaskId(2)),
                "cancelled -> blocked (its job resumes with the retry of task 1)".to_string()
            ),
            (
                Some(TaskId(3)),
                "cancelled -> blocked (its job resumes with the retry of task 1)".to_string()
            ),
            (
                Some(TaskId(4)),
                "cancelled -> blocked (its job resumes with the retry of task 1)".to_string()
            ),
        ]
    );
    let reopened = of_kind(&log, EventKind::JobReopened);
    assert_eq!(
        reopened[0].detail.as_deref(),
        Some("failed -> running (retry of task 1; 3 cancelled task(s) of later stages come back)")
    );

    // The job runs to the end in stage order, dependencies respected.
    let mut order = Vec::new();
    loop {
        let batch = claim(store, 10).await;
        if batch.is_empty() {
            break;
        }
        order.push(batch.iter().map(|t| t.lease.task_id.0).collect::<Vec<_>>());
        complete(store, batch.iter().map(ok).collect()).await;
    }
    assert_eq!(order, [vec![1], vec![2], vec![3], vec![4]]);
    let s = status(store, job).await;
    assert_eq!(s.state, JobState::Succeeded);
    assert_eq!(
        stage_counters(&s),
        [
            (StageState::Done, 0),
            (StageState::Done, 0),
            (StageState::Done, 0)
        ]
    );
}

pub async fn retrying_a_task_of_a_stage_the_job_never_reached_is_refused(store: &dyn Store) {
    let job = job_failed_at_its_first_stage(store).await;
    let before = events(store, job).await.len();
    let err = store
        .retry_task(revive(TaskId(4)))
        .await
        .expect_err("stage c never opened");
    assert_eq!(
        err.to_string(),
        "task 4 cannot be retried on its own: job 1 stopped (failed) before its stage \"c\" \
         opened; retry a dead or cancelled task of the stage where the job stopped, and the \
         cancelled tasks of the later stages come back with it"
    );
    // Nothing was written.
    assert_eq!(events(store, job).await.len(), before);
    assert_eq!(job_state(store, job).await, JobState::Failed);
    assert_eq!(get_task(store, TaskId(4)).await.state, TaskState::Cancelled);
}

/// Claim and complete the ready tasks one at a time: they must come in
/// `order`, and the job then has succeeded.
async fn runs_to_success_one_at_a_time(store: &dyn Store, job: JobId, order: &[i64]) {
    for &id in order {
        let t = claim_one(store).await;
        assert_eq!(t.lease.task_id, TaskId(id));
        complete(store, vec![ok(&t)]).await;
    }
    assert_eq!(job_state(store, job).await, JobState::Succeeded);
}

/// Stage `a` (tasks 1 and 2, one attempt each), stage `b` (task 3); both
/// of `a`'s tasks die, so the job fails and task 3 is cancelled.
async fn job_failed_with_two_dead_tasks(store: &dyn Store) -> JobId {
    let job = submit(
        store,
        spec(
            "two-dead",
            vec![
                stage(
                    "a",
                    vec![
                        with_attempts(task("work"), 1),
                        with_attempts(task("work"), 1),
                    ],
                ),
                stage("b", vec![task("work")]),
            ],
        ),
    )
    .await;
    let both = claim(store, 2).await;
    complete(store, both.iter().map(|t| fatal(t, "broken")).collect()).await;
    assert_eq!(job_state(store, job).await, JobState::Failed);
    job
}

pub async fn a_failed_job_fails_again_while_a_dead_task_of_its_stage_is_not_retried(
    store: &dyn Store,
) {
    let job = job_failed_with_two_dead_tasks(store).await;

    store.retry_task(revive(TaskId(1))).await.expect("retry 1");
    assert_eq!(get_task(store, TaskId(3)).await.state, TaskState::Blocked);
    let again = claim_one(store).await;
    assert_eq!(again.lease.task_id, TaskId(1));
    complete(store, vec![ok(&again)]).await;
    // Task 2 is still dead: the stage closes with it and the job fails again.
    let s = status(store, job).await;
    assert_eq!(s.state, JobState::Failed);
    assert_eq!(
        stage_counters(&s),
        [(StageState::Done, 0), (StageState::Waiting, 0)]
    );
    assert_eq!(get_task(store, TaskId(3)).await.state, TaskState::Cancelled);

    store.retry_task(revive(TaskId(2))).await.expect("retry 2");
    runs_to_success_one_at_a_time(store, job, &[2, 3]).await;
}

pub async fn retrying_a_task_of_a_cancelled_job_resumes_it(store: &dyn Store) {
    let job = submit(store, two_then_one("resume-cancelled")).await;
    let first = claim_one(store).await;
    assert_eq!(first.lease.task_id, TaskId(1));
    complete(store, vec![ok(&first)]).await;
    store
        .cancel_job(CancelJob {
            tenant: acme(),
            job,
            now: NOW,
            by: None,
        })
        .await
        .expect("cancel");

    assert_eq!(
        store.retry_task(revive(TaskId(2))).await.expect("retry"),
        TaskState::Pending
    );
    let s = status(store, job).await;
    assert_eq!(s.state, JobState::Running);
    assert_eq!(
        stage_counters(&s),
        [(StageState::Open, 1), (StageState::Waiting, 1)]
    );
    assert_eq!(get_task(store, TaskId(3)).await.state, TaskState::Blocked);
    runs_to_success_one_at_a_time(store, job, &[2, 3]).await;
}

pub async fn a_task_revived_before_its_dependency_waits_blocked(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "dependency",
            vec![stage(
                "a",
                vec![
                    with_attempts(keyed("work", Some("root"), &[]), 1),
                    keyed("work", Some("leaf"), &["root"]),
                    keyed("work", Some("other"), &[]),
                ],
            )],
        ),
    )
    .await;
    let root = claim_one(store).await;
    assert_eq!(root.lease.task_id, TaskId(1));
    complete(store, vec![fatal(&root, "broken")]).await;
    assert_eq!(get_task(store, TaskId(2)).await.state, TaskState::Cancelled);
    assert_eq!(job_state(store, job).await, JobState::Running);

    // The job still runs (task 3 is pending): the leaf waits for its root.
    assert_eq!(
        store
            .retry_task(revive(TaskId(2)))
            .await
            .expect("retry leaf"),
        TaskState::Blocked
    );
    let other = claim(store, 10).await;
    assert_eq!(
        other.iter().map(|t| t.lease.task_id).collect::<Vec<_>>(),
        [TaskId(3)],
        "a blocked task is never claimed"
    );
    assert_eq!(
        store
            .retry_task(revive(TaskId(1)))
            .await
            .expect("retry root"),
        TaskState::Pending
    );
    let root = claim_one(store).await;
    assert_eq!(root.lease.task_id, TaskId(1));
    complete(store, vec![ok(&root), ok(&other[0])]).await;
    let leaf = claim_one(store).await;
    assert_eq!(leaf.lease.task_id, TaskId(2));
    complete(store, vec![ok(&leaf)]).await;
    assert_eq!(job_state(store, job).await, JobState::Succeeded);
}

pub async fn concurrent_retries_of_a_failed_jobs_dead_tasks_resume_it_once(store: &dyn Store) {
    let job = job_failed_with_two_dead_tasks(store).await;

    // Both retries read the job failed; whichever locks second finds it
    // resumed and counts its task in without resuming it again.
    let (first, second) = tokio::join!(
        store.retry_task(revive(TaskId(1))),
        store.retry_task(revive(TaskId(2)))
    );
    assert_eq!(first.expect("retry 1"), TaskState::Pending);
    assert_eq!(second.expect("retry 2"), TaskState::Pending);
    let s = status(store, job).await;
    assert_eq!(s.state, JobState::Running);
    assert_eq!(
        stage_counters(&s),
        [(StageState::Open, 2), (StageState::Waiting, 1)]
    );
    let log = events(store, job).await;
    assert_eq!(of_kind(&log, EventKind::JobReopened).len(), 1);
    assert_eq!(of_kind(&log, EventKind::TaskRevived).len(), 3);

    let again = claim(store, 10).await;
    assert_eq!(
        again.iter().map(|t| t.lease.task_id).collect::<Vec<_>>(),
        [TaskId(1), TaskId(2)]
    );
    complete(store, again.iter().map(ok).collect()).await;
    let last = claim_one(store).await;
    assert_eq!(last.lease.task_id, TaskId(3));
    complete(store, vec![ok(&last)]).await;
    assert_eq!(job_state(store, job).await, JobState::Succeeded);
}

conformance_cases!(
    cancelling_a_job_cancels_every_unfinished_task,
    cancelling_a_finished_job_is_an_illegal_transition,
    retrying_a_dead_task_reopens_its_stage_and_job,
    retrying_a_succeeded_task_is_an_illegal_transition,
    retrying_a_task_still_on_its_way_is_an_illegal_transition,
    retrying_the_dead_task_of_a_failed_job_brings_back_the_later_stages,
    retrying_a_task_of_a_stage_the_job_never_reached_is_refused,
    a_failed_job_fails_again_while_a_dead_task_of_its_stage_is_not_retried,
    retrying_a_task_of_a_cancelled_job_resumes_it,
    a_task_revived_before_its_dependency_waits_blocked,
    concurrent_retries_of_a_failed_jobs_dead_tasks_resume_it_once,
);
