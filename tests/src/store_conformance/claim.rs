//! Claiming ready tasks under a lease.

use super::fixtures::*;

pub async fn claim_marks_tasks_running_under_a_lease_and_records_the_claim_in_the_row(
    store: &dyn Store,
) {
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
        assert_eq!(
            (t.worker.as_deref(), t.claimed_at),
            (Some("worker-1"), Some(NOW))
        );
    }
    assert_eq!(claim(store, 10).await.len(), 1);
    assert!(claim(store, 10).await.is_empty());
    // Invariant 42: a wasm claim appends no event; its attempt's end will.
    assert_eq!(
        of_kind(&events(store, job).await, EventKind::TaskClaimed).len(),
        0
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

conformance_cases!(
    claim_marks_tasks_running_under_a_lease_and_records_the_claim_in_the_row,
    claim_takes_only_the_given_handlers,
    claim_can_be_limited_to_one_job,
);
