//! What CI pipelines need from the store: `command` tasks claimed only by
//! command claims, the `skipped` state, `on_failure = release_then_fail`,
//! outputs kept with a fatal result, and log lines streamed with a held
//! lease.

use super::fixtures::*;

fn step(key: &str, needs: &[&str], on_failure: OnFailure) -> NewTask {
    NewTask {
        executor: Executor::Command,
        on_failure,
        ..keyed("command-script", Some(key), needs)
    }
}

fn command_claim(job: JobId, limit: u32) -> ClaimBatch {
    ClaimBatch {
        executor: Executor::Command,
        handlers: None,
        job: Some(job),
        ..claim_at(limit, NOW)
    }
}

async fn claim_steps(store: &dyn Store, job: JobId) -> Vec<ClaimedTask> {
    store
        .claim_batch(command_claim(job, 10))
        .await
        .expect("claim steps")
}

fn result(t: &ClaimedTask, result: TaskResult) -> Completion {
    Completion {
        tenant: t.tenant.clone(),
        lease: t.lease,
        result,
        logs: vec![],
    }
}

pub async fn command_tasks_are_claimed_only_by_command_claims(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "mixed",
            vec![stage(
                "steps",
                vec![step("lint", &[], OnFailure::ReleaseThenFail), task("work")],
            )],
        ),
    )
    .await;
    let wasm = claim(store, 10).await;
    assert_eq!(wasm.len(), 1);
    assert_eq!(wasm[0].handler, "work");
    let steps = claim_steps(store, job).await;
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].handler, "command-script");
    let record = get_task(store, steps[0].lease.task_id).await;
    assert_eq!(record.executor, Executor::Command);
    // A wasm claim, which need not wait for the disk, carries a nonce; a
    // command claim (durable on PostgreSQL) carries none (Invariant 8).
    assert!(wasm[0].lease.nonce.is_some());
    assert_eq!(steps[0].lease.nonce, None);
}

pub async fn a_skipped_task_keeps_its_output_and_releases_its_dependents(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "skip",
            vec![stage(
                "steps",
                vec![
                    step("a", &[], OnFailure::ReleaseThenFail),
                    step("b", &["a"], OnFailure::ReleaseThenFail),
                ],
            )],
        ),
    )
    .await;
    let a = claim_steps(store, job).await;
    assert_eq!(a.len(), 1, "b waits for a");
    let outcomes = complete(
        store,
        vec![result(
            &a[0],
            TaskResult::Skipped {
                output_json: r#"{"outcome":"skipped"}"#.to_string(),
            },
        )],
    )
    .await;
    assert_eq!(
        outcomes,
        vec![CompletionOutcome::Recorded(TaskState::Skipped)]
    );
    let record = get_task(store, a[0].lease.task_id).await;
    assert_eq!(record.state, TaskState::Skipped);
    assert_eq!(
        record.output_json.as_deref(),
        Some(r#"{"outcome":"skipped"}"#)
    );
    assert_eq!(record.finished_at, Some(NOW));
    assert_eq!(
        of_kind(&events(store, job).await, EventKind::TaskSkipped).len(),
        1
    );
    let b = claim_steps(store, job).await;
    assert_eq!(b.len(), 1, "a skipped dependency releases b");
    complete(store, vec![ok(&b[0])]).await;
    let s = status(store, job).await;
    assert_eq!(s.state, JobState::Succeeded);
    assert_eq!(count(&s.stages[0], TaskState::Skipped), 1);
    assert_eq!(count(&s.stages[0], TaskState::Succeeded), 1);
}

pub async fn a_death_under_release_then_fail_releases_dependents_and_fails_the_job(
    store: &dyn Store,
) {
    let job = submit(
        store,
        spec(
            "release",
            vec![
                stage(
                    "steps",
                    vec![
                        step("build", &[], OnFailure::ReleaseThenFail),
                        step("report", &["build"], OnFailure::ReleaseThenFail),
                        step("soft", &[], OnFailure::Continue),
                    ],
                ),
                stage("after", vec![task("work")]),
            ],
        ),
    )
    .await;
    let ready = claim_steps(store, job).await;
    assert_eq!(ready.len(), 2, "build and soft");
    let (build, soft) = (&ready[0], &ready[1]);
    complete(
        store,
        vec![
            result(
                build,
                TaskResult::Fatal {
                    error: "exited with status 1".to_string(),
                    output_json: Some(r#"{"outcome":"failed"}"#.to_string()),
                },
            ),
            result(
                soft,
                TaskResult::Fatal {
                    error: "allowed to fail".to_string(),
                    output_json: None,
                },
            ),
        ],
    )
    .await;
    let dead = get_task(store, build.lease.task_id).await;
    assert_eq!(dead.state, TaskState::Dead);
    assert_eq!(dead.output_json.as_deref(), Some(r#"{"outcome":"failed"}"#));
    assert_eq!(dead.error.as_deref(), Some("exited with status 1"));
    assert_eq!(job_state(store, job).await, JobState::Running);
    let report = claim_steps(store, job).await;
    assert_eq!(report.len(), 1, "the failed build releases report");
    complete(store, vec![ok(&report[0])]).await;
    let s = status(store, job).await;
    assert_eq!(s.state, JobState::Failed);
    assert_eq!(
        s.error.as_deref(),
        Some("stage \"steps\" finished with 1 dead task(s)"),
        "only the release_then_fail death fails the job, not the continue one"
    );
    assert_eq!(count(&s.stages[1], TaskState::Cancelled), 1);
}

pub async fn a_revived_task_counts_skipped_and_released_dependencies_as_met(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "revive",
            vec![stage(
                "steps",
                vec![
                    step("a", &[], OnFailure::ReleaseThenFail),
                    step("b", &[], OnFailure::ReleaseThenFail),
                    step("c", &["a", "b"], OnFailure::ReleaseThenFail),
                ],
            )],
        ),
    )
    .await;
    let ready = claim_steps(store, job).await;
    complete(
        store,
        vec![
            result(
                &ready[0],
                TaskResult::Skipped {
                    output_json: "{}".to_string(),
                },
            ),
            result(
                &ready[1],
                TaskResult::Fatal {
                    error: "failed".to_string(),
                    output_json: None,
                },
            ),
        ],
    )
    .await;
    let c = claim_steps(store, job).await;
    assert_eq!(c.len(), 1);
    complete(
        store,
        vec![result(
            &c[0],
            TaskResult::Fatal {
                error: "failed too".to_string(),
                output_json: None,
            },
        )],
    )
    .await;
    assert_eq!(job_state(store, job).await, JobState::Failed);
    let revived = store
        .retry_task(RetryTask {
            tenant: acme(),
            task: c[0].lease.task_id,
            now: NOW + 1,
            by: None,
        })
        .await
        .expect("retry");
    assert_eq!(revived, TaskState::Pending);
    let again = store
        .claim_batch(ClaimBatch {
            now: NOW + 1,
            ..command_claim(job, 10)
        })
        .await
        .expect("claim the revived step");
    assert_eq!(
        again.len(),
        1,
        "a skipped dependency and a released death count as met"
    );
    assert_eq!(again[0].lease.task_id, c[0].lease.task_id);
}

pub async fn log_lines_of_a_renewal_are_recorded_in_order_only_with_a_held_lease(
    store: &dyn Store,
) {
    let job = submit(
        store,
        spec(
            "stream",
            vec![stage(
                "steps",
                vec![step("a", &[], OnFailure::ReleaseThenFail)],
            )],
        ),
    )
    .await;
    let t = claim_steps(store, job).await.remove(0);
    let renew = |attempt, logs: &[&str]| RenewLease {
        tenant: acme(),
        lease: LeaseToken { attempt, ..t.lease },
        lease_for: Duration::from_millis(LEASE_MS as u64),
        now: NOW + 5,
        note: None,
        logs: logs.iter().map(|l| l.to_string()).collect(),
    };
    assert!(
        store
            .renew_lease(renew(
                t.lease.attempt,
                &["stdout: one", "stdout: two", "stderr: three"]
            ))
            .await
            .expect("renew")
    );
    assert!(
        !store
            .renew_lease(renew(t.lease.attempt + 1, &["stdout: not held"]))
            .await
            .expect("renew")
    );
    let logged: Vec<(Option<TaskId>, Option<String>)> =
        of_kind(&events(store, job).await, EventKind::TaskLog)
            .into_iter()
            .map(|e| (e.task_id, e.detail.clone()))
            .collect();
    assert_eq!(
        logged,
        vec![
            (Some(t.lease.task_id), Some("stdout: one".to_string())),
            (Some(t.lease.task_id), Some("stdout: two".to_string())),
            (Some(t.lease.task_id), Some("stderr: three".to_string())),
        ]
    );
}

conformance_cases!(
    command_tasks_are_claimed_only_by_command_claims,
    a_skipped_task_keeps_its_output_and_releases_its_dependents,
    a_death_under_release_then_fail_releases_dependents_and_fails_the_job,
    a_revived_task_counts_skipped_and_released_dependencies_as_met,
    log_lines_of_a_renewal_are_recorded_in_order_only_with_a_held_lease,
);
