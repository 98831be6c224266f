//! Recording results: fencing, duplicates, log lines, retries.

use super::fixtures::*;

pub async fn a_completion_for_an_earlier_attempt_is_refused_and_logged(store: &dyn Store) {
    let job = submit(store, spec("fence", vec![stage("a", vec![task("work")])])).await;
    let first = claim_one(store).await;
    let rescued = store
        .rescue_expired_leases(RescueExpiredLeases {
            now: NOW + LEASE_MS + 1,
            retry_after: Duration::ZERO,
            limit: 10,
        })
        .await
        .expect("rescue");
    assert_eq!(rescued, 1);
    let second = store
        .claim_batch(claim_at(1, NOW + LEASE_MS + 1))
        .await
        .expect("reclaim")
        .remove(0);
    assert_eq!(second.lease.attempt, 2);

    assert_eq!(
        complete(store, vec![ok(&first)]).await,
        vec![CompletionOutcome::Stale]
    );
    let t = get_task(store, first.lease.task_id).await;
    assert_eq!(
        (t.state, t.attempt, t.output_json),
        (TaskState::Running, 2, None)
    );
    let refused = events(store, job).await;
    let refused = of_kind(&refused, EventKind::CompletionRefused);
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].task_id, Some(first.lease.task_id));

    assert_eq!(
        complete(store, vec![ok(&second)]).await,
        vec![CompletionOutcome::Recorded(TaskState::Succeeded)]
    );
}

/// A claim lost in a crash of the database (a wasm claim does not wait for
/// the disk) leaves its task to be claimed again at the same attempt number;
/// a worker that stops hands its claim back the same way. Either way the
/// first claim's token names the right task and attempt, and its nonce is
/// what refuses it: completion, renewal and release alike (Invariant 8).
pub async fn a_token_of_the_right_attempt_under_another_claim_is_refused(store: &dyn Store) {
    let job = submit(store, spec("nonce", vec![stage("a", vec![task("work")])])).await;
    let first = claim_one(store).await;
    let release = |lease: LeaseToken| ReleaseLeases {
        leases: vec![(acme(), lease)],
        now: NOW + 1,
    };
    assert_eq!(
        store
            .release_leases(release(first.lease))
            .await
            .expect("release"),
        1
    );
    let second = store
        .claim_batch(claim_at(1, NOW + 1))
        .await
        .expect("reclaim")
        .remove(0);
    assert_eq!(
        (second.lease.task_id, second.lease.attempt),
        (first.lease.task_id, first.lease.attempt)
    );
    assert!(first.lease.nonce.is_some() && second.lease.nonce.is_some());
    assert_ne!(second.lease.nonce, first.lease.nonce);

    let renew = RenewLease {
        tenant: acme(),
        lease: first.lease,
        lease_for: Duration::from_millis(30_000),
        now: NOW + 2,
        note: None,
        logs: Vec::new(),
    };
    assert!(!store.renew_lease(renew).await.expect("renew"));
    assert_eq!(
        store
            .release_leases(release(first.lease))
            .await
            .expect("release"),
        0
    );
    assert_eq!(
        complete(store, vec![ok(&first)]).await,
        vec![CompletionOutcome::Stale]
    );
    let t = get_task(store, first.lease.task_id).await;
    assert_eq!(
        (t.state, t.attempt, t.lease_expires_at, t.output_json),
        (TaskState::Running, 1, Some(NOW + 1 + LEASE_MS), None)
    );
    let log = events(store, job).await;
    let refused: Vec<Option<&str>> = of_kind(&log, EventKind::CompletionRefused)
        .into_iter()
        .map(|e| e.detail.as_deref())
        .collect();
    assert_eq!(
        refused,
        [Some(
            "stale completion of attempt 1 refused: the task was claimed again and is \
             running that attempt under another claim"
        )]
    );

    assert_eq!(
        complete(store, vec![ok(&second)]).await,
        vec![CompletionOutcome::Recorded(TaskState::Succeeded)]
    );
}

pub async fn a_duplicate_completion_is_refused(store: &dyn Store) {
    let job = submit(
        store,
        spec("dup", vec![stage("a", vec![task("work"), task("work")])]),
    )
    .await;
    let t = claim_one(store).await;
    // Twice in one batch: the first counts.
    assert_eq!(
        complete(store, vec![ok(&t), fatal(&t, "late")]).await,
        vec![
            CompletionOutcome::Recorded(TaskState::Succeeded),
            CompletionOutcome::Stale
        ]
    );
    // And again later.
    assert_eq!(
        complete(store, vec![fatal(&t, "later")]).await,
        vec![CompletionOutcome::Stale]
    );
    let record = get_task(store, t.lease.task_id).await;
    assert_eq!(record.state, TaskState::Succeeded);
    assert_eq!(
        record.output_json,
        Some(format!("{{\"task\":{}}}", t.lease.task_id.0))
    );
    assert_eq!(record.error, None);
    let log = events(store, job).await;
    assert_eq!(of_kind(&log, EventKind::TaskSucceeded).len(), 1);
    assert_eq!(of_kind(&log, EventKind::CompletionRefused).len(), 2);
    assert_eq!(status(store, job).await.stages[0].remaining, 1);
}

pub async fn completing_another_tenants_task_is_refused_without_a_trace(store: &dyn Store) {
    let job = submit(store, spec("mine", vec![stage("a", vec![task("work")])])).await;
    let t = claim_one(store).await;
    let before = events(store, job).await.len();
    let forged = Completion {
        tenant: globex(),
        ..ok(&t)
    };
    assert_eq!(
        complete(store, vec![forged]).await,
        vec![CompletionOutcome::Stale]
    );
    assert_eq!(
        get_task(store, t.lease.task_id).await.state,
        TaskState::Running
    );
    assert_eq!(events(store, job).await.len(), before);
}

pub async fn a_completions_log_lines_precede_its_outcome_and_a_stale_ones_are_dropped(
    store: &dyn Store,
) {
    let job = submit(store, spec("logs", vec![stage("a", vec![task("work")])])).await;
    let t = claim_one(store).await;
    let stale = Completion {
        tenant: globex(),
        logs: vec!["info: from a forged completion".into()],
        ..ok(&t)
    };
    assert_eq!(
        complete(store, vec![stale]).await,
        vec![CompletionOutcome::Stale]
    );
    let done = Completion {
        logs: vec!["info: one".into(), "progress 2/2: two".into()],
        ..ok(&t)
    };
    complete(store, vec![done]).await;
    let lines: Vec<(EventKind, Option<String>)> = events(store, job)
        .await
        .into_iter()
        .filter(|e| e.task_id == Some(t.lease.task_id))
        .filter(|e| e.kind != EventKind::CompletionRefused)
        .map(|e| (e.kind, e.detail))
        .collect();
    assert_eq!(
        lines,
        [
            (EventKind::TaskLog, Some("info: one".to_string())),
            (EventKind::TaskLog, Some("progress 2/2: two".to_string())),
            (EventKind::TaskSucceeded, None),
        ]
    );
}

pub async fn a_retryable_error_returns_the_task_to_pending_after_its_backoff(store: &dyn Store) {
    let job = submit(store, spec("retry", vec![stage("a", vec![task("work")])])).await;
    let t = claim_one(store).await;
    assert_eq!(
        complete(store, vec![retryable(&t, "flaky", 5_000)]).await,
        vec![CompletionOutcome::Recorded(TaskState::Pending)]
    );
    let record = get_task(store, t.lease.task_id).await;
    assert_eq!(record.state, TaskState::Pending);
    assert_eq!(record.error.as_deref(), Some("flaky"));
    assert_eq!(record.run_after, NOW + 5_000);
    assert_eq!(record.lease_expires_at, None);
    assert!(
        store
            .claim_batch(claim_at(1, NOW + 4_999))
            .await
            .expect("claim")
            .is_empty()
    );
    let again = store
        .claim_batch(claim_at(1, NOW + 5_000))
        .await
        .expect("claim");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].lease.attempt, 2);
    assert_eq!(
        of_kind(&events(store, job).await, EventKind::TaskRetried).len(),
        1
    );
    assert_eq!(status(store, job).await.stages[0].remaining, 1);
}

pub async fn a_retryable_error_on_the_last_attempt_is_dead(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "last",
            vec![stage("a", vec![with_attempts(task("work"), 1)])],
        ),
    )
    .await;
    let t = claim_one(store).await;
    assert_eq!(
        complete(store, vec![retryable(&t, "flaky", 5_000)]).await,
        vec![CompletionOutcome::Recorded(TaskState::Dead)]
    );
    let record = get_task(store, t.lease.task_id).await;
    assert_eq!(
        (record.state, record.error.as_deref()),
        (TaskState::Dead, Some("flaky"))
    );
    assert_eq!(record.finished_at, Some(NOW));
    assert_eq!(
        of_kind(&events(store, job).await, EventKind::TaskDead).len(),
        1
    );
}

/// A handler's text may hold NUL, which PostgreSQL `text` cannot store:
/// errors, log lines and notes are stored with each NUL escaped, the same
/// text on every backend, and the completion that carries them commits.
pub async fn guest_text_with_nul_is_stored_escaped_alike(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "nul",
            vec![continuing(
                "a",
                vec![with_attempts(task("work"), 2), task("work")],
            )],
        ),
    )
    .await;
    let mut claimed = claim(store, 2).await;
    claimed.sort_by_key(|t| t.lease.task_id.0);
    let (first, second) = (&claimed[0], &claimed[1]);
    assert!(
        store
            .renew_lease(RenewLease {
                tenant: acme(),
                lease: second.lease,
                lease_for: Duration::from_millis(LEASE_MS as u64),
                now: NOW + 1,
                note: Some("note\0here".to_string()),
                logs: vec!["streamed\0line".to_string()],
            })
            .await
            .expect("renew")
    );
    let mut retried = retryable(first, "retry\0me", 0);
    retried.logs = vec!["info: log\0line".to_string()];
    assert_eq!(
        complete(store, vec![retried, fatal(second, "dead\0end")]).await,
        vec![
            CompletionOutcome::Recorded(TaskState::Pending),
            CompletionOutcome::Recorded(TaskState::Dead),
        ]
    );
    let errors = (
        get_task(store, first.lease.task_id).await.error,
        get_task(store, second.lease.task_id).await.error,
    );
    assert_eq!(
        errors,
        (
            Some("retry\\u{0}me".to_string()),
            Some("dead\\u{0}end".to_string())
        )
    );
    let details: Vec<(EventKind, String)> = events(store, job)
        .await
        .into_iter()
        .filter(|e| e.task_id.is_some())
        .map(|e| (e.kind, e.detail.unwrap_or_default()))
        .collect();
    assert_eq!(
        details,
        [
            (EventKind::TaskNote, "note\\u{0}here".to_string()),
            (EventKind::TaskLog, "streamed\\u{0}line".to_string()),
            (EventKind::TaskLog, "info: log\\u{0}line".to_string()),
            (
                EventKind::TaskRetried,
                format!("retry\\u{{0}}me (attempt 1 of 2, retry at {})", NOW),
            ),
            (EventKind::TaskDead, "dead\\u{0}end".to_string()),
        ]
    );
}

/// An event's kind, task, attempt and worker.
type EndOfAttempt = (EventKind, Option<TaskId>, Option<i32>, Option<String>);

/// One batch mixing plain successes (fenced and written in one statement),
/// another result and a token of the right attempt under another claim:
/// each completion is judged by its own fence, the stale one writes nothing,
/// and the log tells the ended attempts in task order, the refusal after.
pub async fn a_mixed_batch_judges_each_completion_by_its_own_fence(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "mixed",
            vec![continuing(
                "a",
                vec![task("work"), task("work"), task("work"), task("work")],
            )],
        ),
    )
    .await;
    let mut c = claim(store, 4).await;
    c.sort_by_key(|t| t.lease.task_id.0);
    let forged = Completion {
        lease: LeaseToken {
            nonce: c[2].lease.nonce.map(|n| n.wrapping_add(1)),
            ..c[2].lease
        },
        ..ok(&c[2])
    };
    assert_eq!(
        complete(
            store,
            vec![ok(&c[3]), fatal(&c[1], "boom"), forged, ok(&c[0])]
        )
        .await,
        vec![
            CompletionOutcome::Recorded(TaskState::Succeeded),
            CompletionOutcome::Recorded(TaskState::Dead),
            CompletionOutcome::Stale,
            CompletionOutcome::Recorded(TaskState::Succeeded),
        ]
    );
    let mut rows = Vec::new();
    for t in &c {
        let r = get_task(store, t.lease.task_id).await;
        rows.push((
            r.state,
            r.output_json,
            r.error,
            r.finished_at,
            r.lease_expires_at,
        ));
    }
    let output = |t: &ClaimedTask| Some(format!("{{\"task\":{}}}", t.lease.task_id.0));
    assert_eq!(
        rows,
        [
            (TaskState::Succeeded, output(&c[0]), None, Some(NOW), None),
            (
                TaskState::Dead,
                None,
                Some("boom".to_string()),
                Some(NOW),
                None
            ),
            (TaskState::Running, None, None, None, Some(NOW + LEASE_MS)),
            (TaskState::Succeeded, output(&c[3]), None, Some(NOW), None),
        ]
    );
    let log: Vec<EndOfAttempt> = events(store, job)
        .await
        .into_iter()
        .filter(|e| e.task_id.is_some())
        .map(|e| (e.kind, e.task_id, e.attempt, e.worker))
        .collect();
    let worker = Some("worker-1".to_string());
    assert_eq!(
        log,
        [
            (
                EventKind::TaskSucceeded,
                Some(c[0].lease.task_id),
                Some(1),
                worker.clone()
            ),
            (
                EventKind::TaskDead,
                Some(c[1].lease.task_id),
                Some(1),
                worker.clone()
            ),
            (
                EventKind::TaskSucceeded,
                Some(c[3].lease.task_id),
                Some(1),
                worker
            ),
            (
                EventKind::CompletionRefused,
                Some(c[2].lease.task_id),
                None,
                None
            ),
        ]
    );
    assert_eq!(status(store, job).await.stages[0].remaining, 1);
}

conformance_cases!(
    a_completion_for_an_earlier_attempt_is_refused_and_logged,
    a_token_of_the_right_attempt_under_another_claim_is_refused,
    a_duplicate_completion_is_refused,
    completing_another_tenants_task_is_refused_without_a_trace,
    a_completions_log_lines_precede_its_outcome_and_a_stale_ones_are_dropped,
    a_retryable_error_returns_the_task_to_pending_after_its_backoff,
    a_retryable_error_on_the_last_attempt_is_dead,
    guest_text_with_nul_is_stored_escaped_alike,
    a_mixed_batch_judges_each_completion_by_its_own_fence,
);
