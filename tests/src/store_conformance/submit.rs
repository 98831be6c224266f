//! Submitting jobs: stages, first tasks, idempotency, empty stages.

use super::fixtures::*;

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

conformance_cases!(
    submit_opens_the_first_stage_and_blocks_the_rest,
    resubmitting_the_same_key_returns_the_existing_job_and_writes_nothing,
    the_same_key_in_another_tenant_is_another_job,
    stages_without_tasks_close_at_once,
    a_job_without_tasks_succeeds_at_submit,
);
