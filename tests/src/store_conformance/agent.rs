//! Reads of the agent workflow: a job's tasks page by page, what a task
//! depends on, one task's events, a tenant's queue depth, and progress notes
//! written with a lease renewal.

use super::fixtures::*;

fn list(job: JobId, after: Option<TaskId>, limit: u32) -> ListTasks {
    ListTasks {
        tenant: acme(),
        job,
        after,
        limit,
    }
}

pub async fn list_tasks_pages_a_jobs_tasks_in_id_order(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "plan",
            vec![
                stage(
                    "design",
                    vec![agent_task("spec", &[], "Write the spec"), task("work")],
                ),
                stage("build", vec![task("work")]),
            ],
        ),
    )
    .await;
    // Another job's tasks never show up in this job's pages.
    submit(store, spec("other", vec![stage("a", vec![task("work")])])).await;

    let first = store.list_tasks(list(job, None, 2)).await.expect("page 1");
    assert_eq!(first.len(), 2);
    let spec_task = &first[0];
    assert_eq!(spec_task.job_id, job);
    assert_eq!(
        (
            spec_task.stage_position,
            spec_task.stage_name.as_str(),
            spec_task.handler.as_str(),
            spec_task.executor,
            spec_task.key.as_deref(),
            spec_task.state,
        ),
        (
            0,
            "design",
            "agent:planner",
            Executor::Agent,
            Some("spec"),
            TaskState::Pending
        )
    );
    assert_eq!(
        spec_task.agent_json.as_deref(),
        Some("{\"title\":\"Write the spec\"}")
    );
    assert_eq!(
        (first[1].executor, first[1].agent_json.as_deref()),
        (Executor::Wasm, None)
    );
    assert!(first[0].task_id < first[1].task_id);

    let second = store
        .list_tasks(list(job, Some(first[1].task_id), 2))
        .await
        .expect("page 2");
    assert_eq!(second.len(), 1);
    assert_eq!(
        (second[0].stage_name.as_str(), second[0].state),
        ("build", TaskState::Blocked)
    );
    let past_the_end = store
        .list_tasks(list(job, Some(second[0].task_id), 2))
        .await
        .expect("page 3");
    assert!(past_the_end.is_empty());

    let e = store
        .list_tasks(list(JobId(job.0 + 1000), None, 2))
        .await
        .expect_err("unknown job");
    assert_eq!(e.to_string(), format!("job {} not found", job.0 + 1000));
}

/// A page runs across tasks of every state in id order: PostgreSQL reads it
/// as the first ids of each (stage, state) range, merged.
pub async fn list_tasks_pages_across_states_and_stages_in_id_order(store: &dyn Store) {
    let job = submit(store, wide_then_one("mixed", 4)).await;
    let claimed = claim(store, 2).await;
    complete(store, vec![ok(&claimed[0])]).await;

    let mut seen = Vec::new();
    let mut after = None;
    for limit in [2, 2, 2] {
        let page = store
            .list_tasks(list(job, after, limit))
            .await
            .expect("a page");
        after = page.last().map(|t| t.task_id).or(after);
        seen.push(
            page.iter()
                .map(|t| (t.stage_position, t.state))
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(
        seen,
        vec![
            vec![(0, TaskState::Succeeded), (0, TaskState::Running)],
            vec![(0, TaskState::Pending), (0, TaskState::Pending)],
            vec![(1, TaskState::Blocked)],
        ]
    );
    let all = store.list_tasks(list(job, None, 10)).await.expect("all");
    let ids: Vec<TaskId> = all.iter().map(|t| t.task_id).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!((ids.len(), ids), (5, sorted));
    assert_eq!(all[0].task_id, claimed[0].lease.task_id);
    assert_eq!(all[1].task_id, claimed[1].lease.task_id);
}

pub async fn task_dependencies_name_each_dependency_with_its_state_and_output(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "deps",
            vec![stage(
                "a",
                vec![
                    keyed("work", Some("x"), &[]),
                    keyed("work", Some("y"), &[]),
                    keyed("work", Some("z"), &["y", "x"]),
                ],
            )],
        ),
    )
    .await;
    let tasks = store.list_tasks(list(job, None, 10)).await.expect("tasks");
    let (x, y, z) = (tasks[0].task_id, tasks[1].task_id, tasks[2].task_id);
    let claimed = claim(store, 1).await;
    assert_eq!(claimed[0].lease.task_id, x);
    complete(store, vec![ok(&claimed[0])]).await;

    let deps = store
        .task_dependencies(GetTask {
            tenant: acme(),
            task: z,
        })
        .await
        .expect("dependencies");
    assert_eq!(deps.len(), 2, "{deps:?}");
    assert_eq!(
        (
            deps[0].task_id,
            deps[0].key.as_deref(),
            deps[0].state,
            deps[0].output_json.clone()
        ),
        (
            x,
            Some("x"),
            TaskState::Succeeded,
            Some(format!("{{\"task\":{}}}", x.0))
        )
    );
    assert_eq!(
        (
            deps[1].task_id,
            deps[1].key.as_deref(),
            deps[1].state,
            deps[1].output_json.clone()
        ),
        (y, Some("y"), TaskState::Pending, None)
    );
    let none = store
        .task_dependencies(GetTask {
            tenant: acme(),
            task: y,
        })
        .await
        .expect("no dependencies");
    assert!(none.is_empty());
}

pub async fn task_events_are_the_newest_of_one_task_oldest_first(store: &dyn Store) {
    let job = submit(
        store,
        spec("events", vec![stage("a", vec![task("work"), task("work")])]),
    )
    .await;
    let claimed = claim(store, 2).await;
    let t = &claimed[0];
    let mut done = ok(t);
    done.logs = vec!["step 1".to_string(), "step 2".to_string()];
    complete(store, vec![done, ok(&claimed[1])]).await;

    let all = store
        .task_events(TaskEvents {
            tenant: acme(),
            task: t.lease.task_id,
            limit: 100,
        })
        .await
        .expect("all events");
    assert_eq!(
        kinds(&all),
        vec![
            EventKind::TaskLog,
            EventKind::TaskLog,
            EventKind::TaskSucceeded
        ]
    );
    assert!(all.iter().all(|e| e.task_id == Some(t.lease.task_id)));
    assert!(all.iter().all(|e| e.job_id == job));
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));

    let newest = store
        .task_events(TaskEvents {
            tenant: acme(),
            task: t.lease.task_id,
            limit: 2,
        })
        .await
        .expect("newest events");
    assert_eq!(
        newest
            .iter()
            .map(|e| (e.kind, e.detail.clone()))
            .collect::<Vec<_>>(),
        vec![
            (EventKind::TaskLog, Some("step 2".to_string())),
            (EventKind::TaskSucceeded, None)
        ]
    );
}

pub async fn a_renewal_note_is_recorded_only_while_the_lease_is_held(store: &dyn Store) {
    submit(store, spec("notes", vec![stage("a", vec![task("work")])])).await;
    let t = claim_one(store).await;
    let renew = |attempt, note: &str| RenewLease {
        tenant: acme(),
        lease: LeaseToken { attempt, ..t.lease },
        lease_for: Duration::from_millis(LEASE_MS as u64),
        now: NOW + 10,
        note: Some(note.to_string()),
        logs: Vec::new(),
    };
    assert!(
        store
            .renew_lease(renew(1, "halfway there"))
            .await
            .expect("renew")
    );
    assert!(
        !store
            .renew_lease(renew(7, "from a stale attempt"))
            .await
            .expect("stale renew")
    );
    let notes: Vec<(EventKind, Option<String>, Millis)> = store
        .task_events(TaskEvents {
            tenant: acme(),
            task: t.lease.task_id,
            limit: 10,
        })
        .await
        .expect("events")
        .into_iter()
        .filter(|e| e.kind == EventKind::TaskNote)
        .map(|e| (e.kind, e.detail, e.at))
        .collect();
    assert_eq!(
        notes,
        vec![(
            EventKind::TaskNote,
            Some("halfway there".to_string()),
            NOW + 10
        )]
    );
}

pub async fn queue_depth_counts_one_tenants_ready_running_and_blocked_tasks(store: &dyn Store) {
    submit(
        store,
        spec(
            "depth",
            vec![
                stage(
                    "a",
                    vec![
                        keyed("work", Some("x"), &[]),
                        keyed("work", Some("y"), &[]),
                        keyed("work", Some("z"), &["x"]),
                    ],
                ),
                stage("b", vec![task("work"), task("work")]),
            ],
        ),
    )
    .await;
    // Another tenant's work is not counted.
    submit(
        store,
        spec_for(globex(), "theirs", vec![stage("a", vec![task("work")])]),
    )
    .await;
    let claimed = store
        .claim_batch(ClaimBatch {
            tenant: Some(acme()),
            ..claim_at(1, NOW)
        })
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    let depth = |tenant| store.queue_depth(QueueDepthQuery { tenant });
    assert_eq!(
        depth(acme()).await.expect("depth"),
        QueueDepth {
            pending: 1,
            running: 1,
            blocked: 3
        }
    );
    let by_handler = store
        .queue_by_handler(QueueDepthQuery { tenant: acme() })
        .await
        .expect("depth by handler");
    assert_eq!(
        by_handler,
        vec![HandlerDepth {
            executor: Executor::Wasm,
            handler: "work".to_string(),
            depth: QueueDepth {
                pending: 1,
                running: 1,
                blocked: 3
            }
        }]
    );
    complete(store, vec![ok(&claimed[0])]).await;
    assert_eq!(
        depth(acme()).await.expect("depth"),
        QueueDepth {
            pending: 2,
            running: 0,
            blocked: 2
        }
    );
    assert_eq!(
        store
            .queue_by_handler(QueueDepthQuery {
                tenant: TenantId("nobody".to_string())
            })
            .await
            .expect("depth by handler of an unknown tenant"),
        vec![]
    );
    assert_eq!(
        depth(TenantId("nobody".to_string()))
            .await
            .expect("depth of an unknown tenant"),
        QueueDepth {
            pending: 0,
            running: 0,
            blocked: 0
        }
    );
}

conformance_cases!(
    list_tasks_pages_a_jobs_tasks_in_id_order,
    list_tasks_pages_across_states_and_stages_in_id_order,
    task_dependencies_name_each_dependency_with_its_state_and_output,
    task_events_are_the_newest_of_one_task_oldest_first,
    a_renewal_note_is_recorded_only_while_the_lease_is_held,
    queue_depth_counts_one_tenants_ready_running_and_blocked_tasks,
);
