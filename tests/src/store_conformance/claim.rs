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

/// A claim from one job takes that job's ready tasks in id order, and only
/// those its filters allow, however many tasks of other jobs wait before
/// them (it reads the job's open stages, not the queue of every job).
pub async fn claim_can_be_limited_to_one_job(store: &dyn Store) {
    let one = submit(
        store,
        spec(
            "one",
            vec![stage("a", vec![task("work"), task("work"), task("work")])],
        ),
    )
    .await;
    let two = submit(
        store,
        spec(
            "two",
            vec![stage(
                "a",
                vec![
                    keyed("work", Some("first"), &[]),
                    task("elsewhere"),
                    task("work"),
                    keyed("work", Some("after-first"), &["first"]),
                    task("work"),
                ],
            )],
        ),
    )
    .await;
    let from = |job: JobId, tenant: Option<TenantId>, limit: u32| ClaimBatch {
        job: Some(job),
        tenant,
        ..claim_at(limit, NOW)
    };
    let ids = |claimed: &[ClaimedTask]| -> Vec<i64> {
        claimed.iter().map(|c| c.lease.task_id.0).collect()
    };
    let tasks_of_two: Vec<i64> = store
        .list_tasks(ListTasks {
            tenant: acme(),
            job: two,
            after: None,
            limit: 10,
        })
        .await
        .expect("list the tasks of job two")
        .iter()
        .map(|t| t.task_id.0)
        .collect();
    assert_eq!(tasks_of_two.len(), 5);

    let foreign = store
        .claim_batch(from(two, Some(globex()), 10))
        .await
        .expect("claim as another tenant");
    assert!(foreign.is_empty(), "another tenant claimed {foreign:?}");

    let first = store
        .claim_batch(from(two, Some(acme()), 2))
        .await
        .expect("claim");
    assert_eq!(ids(&first), vec![tasks_of_two[0], tasks_of_two[2]]);
    assert!(first.iter().all(|c| c.job_id == two && c.handler == "work"));

    // The dependent task waits for `first`; `elsewhere` is not asked for.
    let rest = store.claim_batch(from(two, None, 10)).await.expect("claim");
    assert_eq!(ids(&rest), vec![tasks_of_two[4]]);
    assert!(
        store
            .claim_batch(from(two, None, 10))
            .await
            .expect("claim")
            .is_empty()
    );

    // Job one's tasks were never taken by the claims from job two.
    let of_one = store.claim_batch(from(one, None, 10)).await.expect("claim");
    assert_eq!(of_one.len(), 3);
    assert!(of_one.iter().all(|c| c.job_id == one));
}

/// An agent's claim from no particular job takes the oldest ready agent
/// tasks of its own tenant, in id order, whatever other tenants have pending
/// before them (it reads the tenant's pending agent tasks, not every
/// tenant's).
pub async fn an_agent_claim_without_a_job_takes_its_tenants_oldest_ready_agent_tasks(
    store: &dyn Store,
) {
    let agent = |key: &str, depends_on: &[&str]| agent_task(key, depends_on, "Step");
    let theirs = submit(
        store,
        spec_for(
            globex(),
            "theirs",
            vec![stage("a", vec![agent("x", &[]), agent("y", &[])])],
        ),
    )
    .await;
    let first = submit(
        store,
        spec(
            "first",
            vec![stage(
                "a",
                vec![
                    task("work"),
                    agent("one", &[]),
                    agent("after-one", &["one"]),
                    agent("two", &[]),
                ],
            )],
        ),
    )
    .await;
    let second = submit(
        store,
        spec("second", vec![stage("a", vec![agent("three", &[])])]),
    )
    .await;
    let for_tenant = |tenant: TenantId, limit: u32| ClaimBatch {
        tenant: Some(tenant),
        executor: Executor::Agent,
        handlers: None,
        ..claim_at(limit, NOW)
    };

    let ours = store
        .claim_batch(for_tenant(acme(), 10))
        .await
        .expect("claim as acme");
    let got: Vec<(JobId, i64)> = ours.iter().map(|c| (c.job_id, c.lease.task_id.0)).collect();
    assert_eq!(got.len(), 3, "acme's ready agent tasks: {got:?}");
    assert_eq!(
        got.iter().map(|(job, _)| *job).collect::<Vec<_>>(),
        vec![first, first, second]
    );
    assert!(got.windows(2).all(|w| w[0].1 < w[1].1), "id order: {got:?}");
    assert!(
        ours.iter()
            .all(|c| c.tenant == acme() && c.handler == "agent:planner")
    );

    let other = store
        .claim_batch(for_tenant(globex(), 1))
        .await
        .expect("claim as globex");
    assert_eq!(other.len(), 1);
    assert_eq!(
        (other[0].job_id, other[0].tenant.clone()),
        (theirs, globex())
    );
}

conformance_cases!(
    claim_marks_tasks_running_under_a_lease_and_records_the_claim_in_the_row,
    claim_takes_only_the_given_handlers,
    claim_can_be_limited_to_one_job,
    an_agent_claim_without_a_job_takes_its_tenants_oldest_ready_agent_tasks,
);
