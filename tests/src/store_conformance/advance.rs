//! Stage counters and advancement, spawned children, job failure.

use super::fixtures::*;

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

/// A job of three stages: a fan-out task and one other in the first (both
/// claimed, returned in that order), none in the second, one in the third.
async fn fanout_and_other(store: &dyn Store, key: &str) -> (JobId, ClaimedTask, ClaimedTask) {
    let job = submit(
        store,
        spec(
            key,
            vec![
                stage("a", vec![task("fanout"), task("work")]),
                stage("b", vec![]),
                stage("c", vec![task("work")]),
            ],
        ),
    )
    .await;
    let mut a = claim(store, 2).await;
    assert_eq!(a.len(), 2, "both tasks of stage a claimed");
    if a[0].handler != "fanout" {
        a.swap(0, 1);
    }
    let other = a.pop().expect("two claimed");
    let fanout = a.pop().expect("two claimed");
    (job, fanout, other)
}

pub async fn spawned_tasks_are_counted_in_their_stage_before_it_can_open(store: &dyn Store) {
    let (job, fanout, other) = fanout_and_other(store, "spawn").await;
    let (fanout, other) = (&fanout, &other);
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

/// The per-job task limit binds spawned tasks as it binds a submit: in a
/// batch, spawns count in order, and the one that would cross the limit is
/// a fatal error that spawns nothing.
pub async fn spawning_past_the_jobs_task_limit_is_a_fatal_error(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "full",
            vec![
                stage("a", vec![task("fanout"), task("fanout"), task("fanout")]),
                stage("b", vec![]),
            ],
        ),
    )
    .await;
    let a = claim(store, 3).await;
    // The job holds 3 tasks; a limit of 6 leaves room for 3 more.
    let outcomes = store
        .complete_batch(CompleteBatch {
            completions: vec![
                ok_spawning(&a[0], spawn_into("b", 2)),
                ok_spawning(&a[1], spawn_into("b", 2)),
                ok_spawning(&a[2], spawn_into("b", 1)),
            ],
            now: NOW,
            max_tasks_per_job: 6,
        })
        .await
        .expect("complete");
    assert_eq!(
        outcomes,
        vec![
            CompletionOutcome::Recorded(TaskState::Succeeded),
            CompletionOutcome::RejectedSpawn(format!(
                "task {} spawned 2 tasks, which would take job {} to 7 tasks, more than the 6-task limit (raise it with --max-tasks-per-job)",
                a[1].lease.task_id.0, job.0
            )),
            CompletionOutcome::Recorded(TaskState::Succeeded),
        ]
    );
    assert_eq!(
        get_task(store, a[1].lease.task_id).await.state,
        TaskState::Dead
    );
    let s = status(store, job).await;
    assert_eq!((s.stages[0].total, s.stages[1].total), (3, 3));
}

pub async fn a_dead_task_fails_the_job_when_its_stage_closes(store: &dyn Store) {
    let job = submit(store, two_then_one("fails")).await;
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

/// The completion that closes a stage with a dead task and spawns: the job
/// fails, and the children it spawned are cancelled with the job's other
/// later tasks (counted off their stage, one event each), not left blocked.
pub async fn a_spawn_by_the_completion_that_fails_its_job_leaves_its_children_cancelled(
    store: &dyn Store,
) {
    let (job, fanout, other) = fanout_and_other(store, "spawn-fails").await;
    let (fanout, other) = (&fanout, &other);
    complete(store, vec![fatal(other, "broken")]).await;
    assert_eq!(
        complete(store, vec![ok_spawning(fanout, spawn_into("b", 2))]).await,
        vec![CompletionOutcome::Recorded(TaskState::Succeeded)]
    );

    let reason = "stage \"a\" finished with 1 dead task(s)";
    let s = status(store, job).await;
    assert_eq!(
        (s.state, s.error.as_deref()),
        (JobState::Failed, Some(reason))
    );
    let b = &s.stages[1];
    assert_eq!((b.state, b.total, b.remaining), (StageState::Waiting, 2, 0));
    assert_eq!(count(b, TaskState::Cancelled), 2);
    let c = &s.stages[2];
    assert_eq!(
        (c.total, c.remaining, count(c, TaskState::Cancelled)),
        (1, 0, 1)
    );
    assert!(
        claim(store, 10).await.is_empty(),
        "nothing of the failed job runs"
    );
    let log = events(store, job).await;
    let cancelled: Vec<(Option<i32>, Option<&str>)> = of_kind(&log, EventKind::TaskCancelled)
        .iter()
        .map(|e| (e.stage_position, e.detail.as_deref()))
        .collect();
    let detail = format!("cancelled: the job failed ({reason})");
    assert_eq!(
        cancelled,
        vec![
            (Some(2), Some(detail.as_str())),
            (Some(1), Some(detail.as_str())),
            (Some(1), Some(detail.as_str())),
        ]
    );
    for e in of_kind(&log, EventKind::TaskCancelled) {
        let task = get_task(store, e.task_id.expect("a task's event")).await;
        assert_eq!(
            (task.state, task.error.as_deref(), task.finished_at),
            (TaskState::Cancelled, Some(detail.as_str()), Some(NOW))
        );
    }
}

conformance_cases!(
    the_last_completion_closes_the_stage_and_opens_the_next_once,
    spawned_tasks_are_counted_in_their_stage_before_it_can_open,
    spawning_into_the_current_or_an_earlier_stage_is_a_fatal_error,
    spawning_into_an_unknown_stage_is_a_fatal_error,
    spawning_more_than_ten_thousand_tasks_is_a_fatal_error,
    spawning_past_the_jobs_task_limit_is_a_fatal_error,
    a_dead_task_fails_the_job_when_its_stage_closes,
    under_continue_a_dead_task_lets_the_job_go_on,
    spawned_children_take_their_target_stages_on_failure,
    a_spawn_by_the_completion_that_fails_its_job_leaves_its_children_cancelled,
    tasks_spawned_into_a_stage_take_its_own_attempts_and_timeout,
);
