//! Tenancy: another tenant's ids answer "not found" everywhere.

use super::fixtures::*;

pub async fn another_tenant_gets_not_found_for_every_job_and_task(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "private",
            vec![stage("a", vec![task("work")]), stage("b", vec![])],
        ),
    )
    .await;
    let t = claim_one(store).await;
    let job_missing = format!("job {} not found", job.0);
    let task_missing = format!("task {} not found", t.lease.task_id.0);
    let them = globex();
    let e = store
        .get_job(GetJob {
            tenant: them.clone(),
            job,
        })
        .await
        .expect_err("get_job");
    assert_eq!(e.to_string(), job_missing);
    let e = store
        .job_state(GetJob {
            tenant: them.clone(),
            job,
        })
        .await
        .expect_err("job_state");
    assert_eq!(e.to_string(), job_missing);
    let e = store
        .job_events(JobEvents {
            tenant: them.clone(),
            job,
            after_id: None,
            limit: 10,
        })
        .await
        .expect_err("job_events");
    assert_eq!(e.to_string(), job_missing);
    let e = store
        .stage_results(StageResults {
            tenant: them.clone(),
            job,
            from_stage_position: 1,
            stage_name: "a".to_string(),
            after: None,
            limit: 10,
            max_bytes: u64::MAX,
        })
        .await
        .expect_err("stage_results");
    assert_eq!(e.to_string(), job_missing);
    let e = store
        .recent_completions(RecentCompletions {
            tenant: them.clone(),
            job,
            now: NOW,
        })
        .await
        .expect_err("recent_completions");
    assert_eq!(e.to_string(), job_missing);
    let e = store
        .cancel_job(CancelJob {
            tenant: them.clone(),
            job,
            now: NOW,
            by: None,
        })
        .await
        .expect_err("cancel_job");
    assert_eq!(e.to_string(), job_missing);
    let e = store
        .get_task(GetTask {
            tenant: them.clone(),
            task: t.lease.task_id,
        })
        .await
        .expect_err("get_task");
    assert_eq!(e.to_string(), task_missing);
    let e = store
        .retry_task(RetryTask {
            tenant: them.clone(),
            task: t.lease.task_id,
            now: NOW,
            by: None,
        })
        .await
        .expect_err("retry_task");
    assert_eq!(e.to_string(), task_missing);
    let e = store
        .list_tasks(ListTasks {
            tenant: them.clone(),
            job,
            after: None,
            limit: 10,
        })
        .await
        .expect_err("list_tasks");
    assert_eq!(e.to_string(), job_missing);
    let e = store
        .task_dependencies(GetTask {
            tenant: them.clone(),
            task: t.lease.task_id,
        })
        .await
        .expect_err("task_dependencies");
    assert_eq!(e.to_string(), task_missing);
    let e = store
        .task_events(TaskEvents {
            tenant: them.clone(),
            task: t.lease.task_id,
            limit: 10,
        })
        .await
        .expect_err("task_events");
    assert_eq!(e.to_string(), task_missing);
    let e = store
        .ready_handlers(ReadyHandlers {
            tenant: them.clone(),
            job,
            now: NOW,
            sample: 10,
        })
        .await
        .expect_err("ready_handlers");
    assert_eq!(e.to_string(), job_missing);
    // Renewing or completing another tenant's lease is refused like a stale one.
    let renewed = store
        .renew_lease(RenewLease {
            tenant: them.clone(),
            lease: t.lease,
            lease_for: Duration::from_secs(600),
            now: NOW,
            note: Some("not yours".to_string()),
            logs: Vec::new(),
        })
        .await
        .expect("renew");
    assert!(!renewed);
    assert_eq!(
        store
            .queue_depth(QueueDepthQuery {
                tenant: them.clone()
            })
            .await
            .expect("queue depth"),
        QueueDepth {
            pending: 0,
            running: 0,
            blocked: 0
        }
    );
    let listed = store
        .list_jobs(ListJobs {
            tenant: them.clone(),
            state: None,
            name: None,
            created_after: None,
            created_before: None,
            before_id: None,
            limit: 10,
        })
        .await
        .expect("list");
    assert!(listed.is_empty());
    let claimed = store
        .claim_batch(ClaimBatch {
            tenant: Some(them),
            ..claim_at(10, NOW)
        })
        .await
        .expect("claim");
    assert!(claimed.is_empty());
    // Nothing changed for the owner.
    assert_eq!(job_state(store, job).await, JobState::Running);
    assert_eq!(
        get_task(store, t.lease.task_id).await.state,
        TaskState::Running
    );
}

conformance_cases!(another_tenant_gets_not_found_for_every_job_and_task,);
