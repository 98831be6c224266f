//! Task dependencies inside a stage: release, cancellation, `on_failure`.

use super::fixtures::*;

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

conformance_cases!(
    a_task_is_ready_once_its_own_dependencies_have_succeeded,
    a_dead_dependency_cancels_exactly_its_transitive_dependents,
    under_continue_a_dead_dependency_releases_its_dependents,
    a_tasks_own_continue_in_a_fail_job_stage_releases_its_dependents,
    a_tasks_own_fail_job_in_a_continue_stage_fails_the_job,
);
