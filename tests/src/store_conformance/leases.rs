//! Lease renewal and the rescue of expired leases.

use super::fixtures::*;

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
        lease: LeaseToken { attempt, ..t.lease },
        lease_for: Duration::from_millis(30_000),
        now: NOW + 100,
        note: None,
        logs: Vec::new(),
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

pub async fn a_released_lease_goes_back_to_pending_with_its_attempt_given_back(store: &dyn Store) {
    submit(
        store,
        spec(
            "release",
            vec![stage("a", vec![with_attempts(task("work"), 1)])],
        ),
    )
    .await;
    let t = claim_one(store).await;
    assert_eq!(t.lease.attempt, 1);
    let release = |tenant: TenantId, attempt| ReleaseLeases {
        leases: vec![(tenant, LeaseToken { attempt, ..t.lease })],
        now: NOW + 5,
    };
    // Fenced: another attempt or another tenant releases nothing.
    assert_eq!(
        store
            .release_leases(release(acme(), 2))
            .await
            .expect("release"),
        0
    );
    assert_eq!(
        store
            .release_leases(release(globex(), 1))
            .await
            .expect("release"),
        0
    );
    assert_eq!(
        get_task(store, t.lease.task_id).await.state,
        TaskState::Running
    );
    assert_eq!(
        store
            .release_leases(release(acme(), 1))
            .await
            .expect("release"),
        1
    );
    let record = get_task(store, t.lease.task_id).await;
    assert_eq!(
        (record.state, record.attempt, record.run_after, record.error),
        (TaskState::Pending, 0, NOW + 5, None)
    );
    assert_eq!(
        store
            .release_leases(release(acme(), 1))
            .await
            .expect("release"),
        0
    );
    // Its one attempt is still whole: claimed again, it is attempt 1.
    let again = store
        .claim_batch(claim_at(1, NOW + 5))
        .await
        .expect("claim");
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].lease.task_id, again[0].lease.attempt),
        (t.lease.task_id, t.lease.attempt)
    );
    // Under another claim: the released token no longer holds it.
    assert_ne!(again[0].lease.nonce, t.lease.nonce);
    complete(store, vec![ok(&again[0])]).await;
    assert_eq!(
        get_task(store, t.lease.task_id).await.state,
        TaskState::Succeeded
    );
}

conformance_cases!(
    an_expired_lease_goes_back_to_pending_and_then_dies,
    renewing_extends_only_a_lease_still_held,
    a_released_lease_goes_back_to_pending_with_its_attempt_given_back,
);
