//! Reads of jobs, stages and tasks: status, lists, lineage, progress.

use super::fixtures::*;

pub async fn ready_handlers_names_what_a_jobs_ready_tasks_wait_for(store: &dyn Store) {
    let agent = NewTask {
        executor: Executor::Agent,
        ..task("plan")
    };
    let job = submit(
        store,
        spec(
            "waiting-for",
            vec![
                stage("a", vec![task("work"), task("other"), agent]),
                stage("b", vec![task("later")]),
            ],
        ),
    )
    .await;
    let ready = |now: Millis, sample: u32| ReadyHandlers {
        tenant: acme(),
        job,
        now,
        sample,
    };
    let wanted = |pairs: &[(Executor, &str)]| -> Vec<ReadyHandler> {
        pairs
            .iter()
            .map(|(executor, handler)| ReadyHandler {
                executor: *executor,
                handler: handler.to_string(),
            })
            .collect()
    };
    assert_eq!(
        store.ready_handlers(ready(NOW, 100)).await.expect("ready"),
        wanted(&[
            (Executor::Agent, "plan"),
            (Executor::Wasm, "other"),
            (Executor::Wasm, "work")
        ])
    );
    // A task waiting out its retry backoff is not ready yet.
    let work = claim_one(store).await;
    complete(store, vec![retryable(&work, "later", 60_000)]).await;
    assert_eq!(
        store.ready_handlers(ready(NOW, 100)).await.expect("ready"),
        wanted(&[(Executor::Agent, "plan"), (Executor::Wasm, "other")])
    );
    assert_eq!(
        store
            .ready_handlers(ready(NOW + 60_000, 100))
            .await
            .expect("ready")
            .len(),
        3
    );
    // A sample of one ready task names one of the two.
    let one = store.ready_handlers(ready(NOW, 1)).await.expect("ready");
    assert_eq!(one.len(), 1);
    assert!(
        wanted(&[(Executor::Agent, "plan"), (Executor::Wasm, "other")]).contains(&one[0]),
        "{one:?}"
    );
    let other_tenant = ReadyHandlers {
        tenant: globex(),
        ..ready(NOW, 100)
    };
    assert!(matches!(
        store.ready_handlers(other_tenant).await,
        Err(StoreError::NotFound { .. })
    ));
}

pub async fn stage_results_pages_through_an_earlier_stages_outputs(store: &dyn Store) {
    let job = submit(store, wide_then_one("lineage", 5)).await;
    let a = claim(store, 5).await;
    complete(store, a.iter().map(ok).collect()).await;
    let page = |after, limit| StageResults {
        tenant: acme(),
        job,
        from_stage_position: 1,
        stage_name: "a".to_string(),
        after,
        limit,
        max_bytes: u64::MAX,
    };
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let results = store.stage_results(page(after, 2)).await.expect("results");
        assert!(results.len() <= 2);
        let Some(last) = results.last() else { break };
        after = Some(last.0);
        seen.extend(results);
    }
    let expected: Vec<(TaskId, String)> = a
        .iter()
        .map(|t| {
            (
                t.lease.task_id,
                format!("{{\"task\":{}}}", t.lease.task_id.0),
            )
        })
        .collect();
    assert_eq!(seen, expected);

    // Pages are bounded by bytes too: outputs are added until they reach
    // max_bytes, and a page holds at least one.
    let bounded = |after, max_bytes| StageResults {
        max_bytes,
        ..page(after, 5)
    };
    let one = store
        .stage_results(bounded(None, 1))
        .await
        .expect("results");
    assert_eq!(one, expected[..1]);
    let two_outputs = (expected[0].1.len() + expected[1].1.len()) as u64;
    let two = store
        .stage_results(bounded(None, two_outputs))
        .await
        .expect("results");
    assert_eq!(two, expected[..2]);
    let three = store
        .stage_results(bounded(None, two_outputs + 1))
        .await
        .expect("results");
    assert_eq!(three, expected[..3]);
    let rest = store
        .stage_results(bounded(Some(expected[2].0), two_outputs))
        .await
        .expect("results");
    assert_eq!(rest, expected[3..]);

    let own = store
        .stage_results(StageResults {
            stage_name: "b".to_string(),
            ..page(None, 10)
        })
        .await
        .expect_err("a stage may not read its own outputs");
    assert!(matches!(own, StoreError::NotFound { .. }), "{own}");
}

pub async fn list_jobs_pages_newest_first_and_filters(store: &dyn Store) {
    let mut ids = Vec::new();
    for (i, name) in ["x", "y", "x"].iter().enumerate() {
        let mut s = spec(&format!("list-{i}"), vec![stage("a", vec![task("work")])]);
        s.name = name.to_string();
        s.now = NOW + i as i64;
        ids.push(submit(store, s).await);
    }
    store
        .cancel_job(CancelJob {
            tenant: acme(),
            job: ids[1],
            now: NOW,
            by: None,
        })
        .await
        .expect("cancel");
    let list = |state, name: Option<&str>, after, before, before_id, limit| ListJobs {
        tenant: acme(),
        state,
        name: name.map(str::to_string),
        created_after: after,
        created_before: before,
        before_id,
        limit,
    };
    let found = |jobs: Vec<lockstep::model::JobSummary>| -> Vec<JobId> {
        jobs.into_iter().map(|j| j.job_id).collect()
    };
    let page = store
        .list_jobs(list(None, None, None, None, None, 2))
        .await
        .expect("list");
    assert_eq!(found(page), vec![ids[2], ids[1]]);
    let page = store
        .list_jobs(list(None, None, None, None, Some(ids[1]), 2))
        .await
        .expect("list");
    assert_eq!(found(page), vec![ids[0]]);
    let cancelled = store
        .list_jobs(list(Some(JobState::Cancelled), None, None, None, None, 10))
        .await
        .expect("list");
    assert_eq!(found(cancelled), vec![ids[1]]);
    let named = store
        .list_jobs(list(None, Some("x"), None, None, None, 10))
        .await
        .expect("list");
    assert_eq!(found(named), vec![ids[2], ids[0]]);
    let window = store
        .list_jobs(list(None, None, Some(NOW + 1), Some(NOW + 2), None, 10))
        .await
        .expect("list");
    assert_eq!(found(window), vec![ids[1]]);

    let counts = |name: Option<&str>, after| CountJobs {
        tenant: acme(),
        name: name.map(str::to_string),
        created_after: after,
        created_before: None,
    };
    let all = store.count_jobs(counts(None, None)).await.expect("count");
    assert_eq!(
        all,
        vec![
            (JobState::Running, 2),
            (JobState::Succeeded, 0),
            (JobState::Failed, 0),
            (JobState::Cancelled, 1)
        ]
    );
    let x_later = store
        .count_jobs(counts(Some("x"), Some(NOW + 1)))
        .await
        .expect("count");
    assert_eq!(
        x_later.iter().map(|(_, n)| n).sum::<i64>(),
        1,
        "{x_later:?}"
    );
    // Another tenant counts none of them.
    let theirs = store
        .count_jobs(CountJobs {
            tenant: globex(),
            ..counts(None, None)
        })
        .await
        .expect("count");
    assert!(theirs.iter().all(|(_, n)| *n == 0), "{theirs:?}");
}

pub async fn get_job_counts_tasks_by_every_state(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "counts",
            vec![stage(
                "a",
                vec![
                    task("work"),
                    task("work"),
                    task("work"),
                    keyed("work", Some("k"), &[]),
                    keyed("work", None, &["k"]),
                ],
            )],
        ),
    )
    .await;
    let claimed = claim(store, 2).await;
    complete(store, vec![ok(&claimed[0])]).await;
    let s = status(store, job).await;
    let counts: Vec<(TaskState, i64)> = s.stages[0].counts.clone();
    assert_eq!(
        counts,
        vec![
            (TaskState::Blocked, 1),
            (TaskState::Pending, 2),
            (TaskState::Running, 1),
            (TaskState::Succeeded, 1),
            (TaskState::Dead, 0),
            (TaskState::Cancelled, 0),
            (TaskState::Skipped, 0),
        ]
    );
    assert_eq!((s.stages[0].total, s.stages[0].remaining), (5, 4));
}

/// The last ten seconds' finishes, from the stage rows' two buckets
/// (migration 0015). `NOW` starts a bucket.
pub async fn recent_completions_estimates_the_last_window_from_stage_buckets(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "rate",
            vec![stage("a", (0..6).map(|_| task("work")).collect())],
        ),
    )
    .await;
    let t = claim(store, 6).await;
    assert_eq!(t.len(), 6);
    let at = |c: Completion, now| CompleteBatch {
        completions: vec![c],
        now,
        max_tasks_per_job: lockstep::spec::Limits::default().max_tasks_per_job,
    };
    let recent = async |now| {
        store
            .recent_completions(RecentCompletions {
                tenant: acme(),
                job,
                now,
            })
            .await
            .expect("recent")
    };
    assert_eq!(recent(NOW).await, 0.0);
    for (completion, now) in [
        (ok(&t[0]), NOW + 10),
        (ok(&t[1]), NOW + 20),
        (fatal(&t[2], "x"), NOW + 30),
        // Retried, not finished: not counted.
        (retryable(&t[3], "again", 1_000), NOW + 40),
    ] {
        store
            .complete_batch(at(completion, now))
            .await
            .expect("complete");
    }
    assert_eq!(recent(NOW + 5_000).await, 3.0);
    // Half of the previous bucket is still in the window.
    assert_eq!(recent(NOW + 15_000).await, 1.5);
    // The next bucket: the stage's count moves back one.
    store
        .complete_batch(at(ok(&t[4]), NOW + 12_000))
        .await
        .expect("complete");
    // A batch stamped before the row's bucket (a slower transaction of
    // another process) counts into the row's bucket.
    store
        .complete_batch(at(ok(&t[5]), NOW + 9_000))
        .await
        .expect("complete");
    assert_eq!(recent(NOW + 12_500).await, 2.0 + 3.0 * 0.75);
    assert_eq!(recent(NOW + 25_000).await, 2.0 * 0.5);
    assert_eq!(recent(NOW + 30_000).await, 0.0);
}

pub async fn job_state_follows_a_job_to_its_end(store: &dyn Store) {
    let done = submit(store, spec("done", vec![stage("a", vec![task("work")])])).await;
    let stopped = submit(store, spec("stopped", vec![stage("a", vec![task("work")])])).await;
    assert_eq!(job_state(store, done).await, JobState::Running);
    let t = claim(store, 10)
        .await
        .into_iter()
        .find(|t| t.job_id == done)
        .expect("a task of the first job");
    complete(store, vec![ok(&t)]).await;
    assert_eq!(job_state(store, done).await, JobState::Succeeded);
    store
        .cancel_job(CancelJob {
            tenant: acme(),
            job: stopped,
            now: NOW,
            by: None,
        })
        .await
        .expect("cancel");
    assert_eq!(job_state(store, stopped).await, JobState::Cancelled);
    let unknown = JobId(stopped.0 + 1000);
    let e = store
        .job_state(GetJob {
            tenant: acme(),
            job: unknown,
        })
        .await
        .expect_err("unknown job");
    assert_eq!(e.to_string(), format!("job {} not found", unknown.0));
}

pub async fn job_counters_read_the_stage_counters_without_counting_tasks(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "counters",
            vec![
                stage("a", vec![task("work"), task("work"), task("work")]),
                stage("b", vec![task("work")]),
            ],
        ),
    )
    .await;
    let t = claim_one(store).await;
    complete(store, vec![ok(&t)]).await;
    let read = |tenant| store.job_counters(GetJob { tenant, job });
    let s = read(acme()).await.expect("counters");
    assert_eq!(
        (s.job_id, s.name.as_str(), s.state),
        (job, "counters", JobState::Running)
    );
    let stages: Vec<(&str, StageState, i64, i64, usize)> = s
        .stages
        .iter()
        .map(|st| {
            (
                st.name.as_str(),
                st.state,
                st.total,
                st.remaining,
                st.counts.len(),
            )
        })
        .collect();
    assert_eq!(
        stages,
        vec![
            ("a", StageState::Open, 3, 2, 0),
            ("b", StageState::Waiting, 1, 1, 0)
        ]
    );
    let e = read(globex()).await.expect_err("another tenant");
    assert_eq!(e.to_string(), format!("job {} not found", job.0));
}

pub async fn dead_tasks_lists_a_jobs_dead_tasks_with_their_errors(store: &dyn Store) {
    let job = submit(
        store,
        spec(
            "dead",
            vec![stage(
                "a",
                vec![
                    with_attempts(task("work"), 1),
                    with_attempts(task("work"), 1),
                    with_attempts(task("work"), 1),
                ],
            )],
        ),
    )
    .await;
    let t = claim(store, 3).await;
    assert_eq!(t.len(), 3);
    complete(
        store,
        vec![
            fatal(&t[0], "first boom"),
            ok(&t[1]),
            fatal(&t[2], "second boom"),
        ],
    )
    .await;
    let dead = |tenant: TenantId, job: JobId, limit| DeadTasks { tenant, job, limit };
    let all = store
        .dead_tasks(dead(acme(), job, 10))
        .await
        .expect("dead tasks");
    let seen: Vec<(TaskId, TaskState, Option<&str>, &str)> = all
        .iter()
        .map(|r| {
            (
                r.task_id,
                r.state,
                r.error.as_deref(),
                r.stage_name.as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (t[0].lease.task_id, TaskState::Dead, Some("first boom"), "a"),
            (
                t[2].lease.task_id,
                TaskState::Dead,
                Some("second boom"),
                "a"
            ),
        ]
    );
    let first = store
        .dead_tasks(dead(acme(), job, 1))
        .await
        .expect("dead tasks");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].task_id, t[0].lease.task_id);
    // Another tenant's job, or no job, has none.
    assert!(
        store
            .dead_tasks(dead(globex(), job, 10))
            .await
            .expect("dead tasks")
            .is_empty()
    );
    assert!(
        store
            .dead_tasks(dead(acme(), JobId(job.0 + 1000), 10))
            .await
            .expect("dead tasks")
            .is_empty()
    );
}

/// Part `part` of the job's spec as `tenant` reads it.
async fn spec_part(
    store: &dyn Store,
    tenant: TenantId,
    job: JobId,
    part: u32,
) -> Result<Option<String>, StoreError> {
    store.job_spec_part(JobSpecPart { tenant, job, part }).await
}

/// The canonical spec is kept in parts of at most `SPEC_PART_BYTES`, cut
/// between characters, numbered in order, whose concatenation is the spec,
/// so neither database ever holds a large spec whole; it reads back the same
/// way, a part at a time.
pub async fn job_spec_part_reads_a_large_spec_back_in_parts_cut_between_characters(
    store: &dyn Store,
) {
    // 2.5 parts of two-byte characters after a one-byte quote: a cut at a
    // part's byte limit would split a character.
    let spec_json = format!("\"{}\"", "é".repeat(SPEC_PART_BYTES + SPEC_PART_BYTES / 4));
    let mut job = spec("large spec", vec![stage("a", vec![task("work")])]);
    job.spec_json = spec_json.clone();
    let job = submit(store, job).await;

    let mut parts = Vec::new();
    while let Some(text) = spec_part(store, acme(), job, parts.len() as u32)
        .await
        .expect("a part")
    {
        parts.push(text);
    }
    let lengths: Vec<usize> = parts.iter().map(String::len).collect();
    // Every part but the last as long as whole characters allow.
    assert_eq!(
        lengths,
        vec![
            SPEC_PART_BYTES - 1,
            SPEC_PART_BYTES,
            spec_json.len() - 2 * SPEC_PART_BYTES + 1
        ]
    );
    assert!(
        parts.concat() == spec_json,
        "the parts concatenate to the spec"
    );
    assert_eq!(
        spec_part(store, acme(), job, u32::MAX)
            .await
            .expect("past the end"),
        None
    );

    // A small spec is one part; another tenant's job and an unknown job are
    // not found, past their end as at their start.
    let small = submit(store, two_then_one("small spec")).await;
    assert_eq!(
        spec_part(store, acme(), small, 0).await.expect("part 0"),
        Some("{}".to_string())
    );
    assert_eq!(
        spec_part(store, acme(), small, 1).await.expect("part 1"),
        None
    );
    for (tenant, job, part) in [
        (globex(), small, 0),
        (globex(), small, 1),
        (acme(), JobId(job.0 + 1000), 0),
    ] {
        let err = spec_part(store, tenant, job, part)
            .await
            .expect_err("not found");
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
        assert_eq!(err.to_string(), format!("job {} not found", job.0));
    }
}

conformance_cases!(
    job_spec_part_reads_a_large_spec_back_in_parts_cut_between_characters,
    dead_tasks_lists_a_jobs_dead_tasks_with_their_errors,
    ready_handlers_names_what_a_jobs_ready_tasks_wait_for,
    stage_results_pages_through_an_earlier_stages_outputs,
    list_jobs_pages_newest_first_and_filters,
    get_job_counts_tasks_by_every_state,
    recent_completions_estimates_the_last_window_from_stage_buckets,
    job_state_follows_a_job_to_its_end,
    job_counters_read_the_stage_counters_without_counting_tasks,
);
