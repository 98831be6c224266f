//! Behaviour particular to the PostgreSQL store: many workers and nodes on
//! one database, deadlock retries, connection loss, LISTEN/NOTIFY wake-ups.
//! (The shared store semantics are checked by `store_conformance`.)

use crate::postgres_test_db::with_pg;
use lockstep::model::{
    EventKind, Executor, JobId, JobState, Millis, NewStage, NewTask, OnFailure, SubmitJob,
    TaskState, TenantId,
};
use lockstep::store::postgres::PgStore;
use lockstep::store::{
    ClaimBatch, ClaimedTask, CompleteBatch, Completion, CompletionOutcome, GetJob, GetTask,
    JobEvents, ListTasks, RescueExpiredLeases, SpawnTask, StageResults, Store, TaskResult,
};
use sqlx::{Connection, PgConnection};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// A logical clock: the store takes `now` from its caller.
const NOW: Millis = 1_800_000_000_000;

fn tenant() -> TenantId {
    TenantId("acme".to_string())
}

fn task(handler: &str, key: Option<&str>, depends_on: &[&str]) -> NewTask {
    NewTask {
        handler: handler.to_string(),
        executor: Executor::Wasm,
        key: key.map(str::to_string),
        depends_on: depends_on.iter().map(|s| s.to_string()).collect(),
        input_json: "{}".to_string(),
        max_attempts: 3,
        timeout_ms: 30_000,
        agent_json: None,
        on_failure: lockstep::model::OnFailure::FailJob,
    }
}

fn stage(name: &str, tasks: Vec<NewTask>) -> NewStage {
    NewStage {
        name: name.to_string(),
        on_failure: OnFailure::FailJob,
        max_attempts: None,
        timeout_ms: None,
        tasks,
    }
}

fn job(key: &str, stages: Vec<NewStage>) -> SubmitJob {
    SubmitJob {
        tenant: tenant(),
        name: key.to_string(),
        idempotency_key: key.to_string(),
        spec_json: "{}".to_string(),
        stages,
        now: NOW,
    }
}

fn claim(limit: u32, worker: &str, now: Millis) -> ClaimBatch {
    ClaimBatch {
        tenant: None,
        executor: Executor::Wasm,
        handlers: Some(vec![
            "work".to_string(),
            "fanout".to_string(),
            "join".to_string(),
        ]),
        job: None,
        limit,
        lease: Duration::from_secs(60),
        worker: worker.to_string(),
        now,
    }
}

fn success(t: &ClaimedTask, spawn: Vec<SpawnTask>) -> Completion {
    Completion {
        tenant: t.tenant.clone(),
        lease: t.lease,
        result: TaskResult::Succeeded {
            output_json: format!("{{\"task\":{}}}", t.lease.task_id.0),
            spawn,
        },
        logs: vec![],
    }
}

async fn all_events(store: &dyn Store, job: JobId) -> Vec<lockstep::model::Event> {
    let mut out = Vec::new();
    loop {
        let page = store
            .job_events(JobEvents {
                tenant: tenant(),
                job,
                after_id: out.last().map(|e: &lockstep::model::Event| e.id),
                limit: 1000,
            })
            .await
            .expect("job events");
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

fn count(events: &[lockstep::model::Event], kind: EventKind) -> usize {
    events.iter().filter(|e| e.kind == kind).count()
}

/// Per stage position, how many events of `kind` name it.
fn per_stage(events: &[lockstep::model::Event], kind: EventKind) -> BTreeMap<i32, usize> {
    let mut m = BTreeMap::new();
    for e in events.iter().filter(|e| e.kind == kind) {
        *m.entry(e.stage_position.unwrap_or(-1)).or_insert(0) += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_fan_in_opens_each_stage_exactly_once_without_deadlocks() {
    with_pg(|db| async move {
        let store = Arc::new(db.open_store().await);
        const LEAVES: usize = 100;
        const SPAWNED: usize = 2_000;
        let leaf_keys: Vec<String> = (0..LEAVES).map(|i| format!("leaf-{i}")).collect();
        let leaf_refs: Vec<&str> = leaf_keys.iter().map(String::as_str).collect();
        let mut first = vec![
            task("fanout", None, &[]),
            task("join", Some("join"), &leaf_refs),
        ];
        first.extend(leaf_refs.iter().map(|k| task("work", Some(k), &[])));
        let submitted = store
            .submit_job(job(
                "fan-in",
                vec![
                    stage("analyze", first),
                    stage("process", vec![]),
                    stage("aggregate", vec![task("work", None, &[])]),
                ],
            ))
            .await
            .expect("submit");
        let job_id = submitted.job_id;

        // Eight workers claim and complete in batches until the job ends, on
        // a logical clock that ticks at every call: claim times then order
        // the claims (Invariant 42: a claim's time is in its attempt's end).
        let clock = Arc::new(std::sync::atomic::AtomicI64::new(NOW));
        let tick =
            |c: &std::sync::atomic::AtomicI64| c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut workers = Vec::new();
        for w in 0..8 {
            let store = store.clone();
            let clock = clock.clone();
            workers.push(tokio::spawn(async move {
                let name = format!("worker-{w}");
                loop {
                    let claimed = store
                        .claim_batch(claim(16, &name, tick(&clock)))
                        .await
                        .expect("claim");
                    if claimed.is_empty() {
                        let state = store
                            .job_state(GetJob {
                                tenant: tenant(),
                                job: job_id,
                            })
                            .await
                            .expect("job state");
                        if state != JobState::Running {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    let completions: Vec<Completion> = claimed
                        .iter()
                        .rev()
                        .map(|t| {
                            let spawn = if t.handler == "fanout" {
                                (0..SPAWNED)
                                    .map(|i| SpawnTask {
                                        stage_name: "process".to_string(),
                                        handler: "work".to_string(),
                                        input_json: format!("{{\"i\":{i}}}"),
                                        max_attempts: 3,
                                        timeout_ms: 30_000,
                                    })
                                    .collect()
                            } else {
                                Vec::new()
                            };
                            success(t, spawn)
                        })
                        .collect();
                    let outcomes = store
                        .complete_batch(CompleteBatch {
                            completions,
                            now: tick(&clock),
                            max_tasks_per_job: lockstep::spec::Limits::default().max_tasks_per_job,
                        })
                        .await
                        .expect("complete");
                    assert!(
                        outcomes
                            .iter()
                            .all(|o| *o == CompletionOutcome::Recorded(TaskState::Succeeded)),
                        "every completion is recorded: {outcomes:?}"
                    );
                }
            }));
        }
        for w in workers {
            w.await.expect("worker");
        }

        assert_eq!(
            store
                .job_state(GetJob {
                    tenant: tenant(),
                    job: job_id
                })
                .await
                .expect("state"),
            JobState::Succeeded
        );
        let events = all_events(store.as_ref(), job_id).await;
        let once: BTreeMap<i32, usize> = [(0, 1), (1, 1), (2, 1)].into_iter().collect();
        assert_eq!(per_stage(&events, EventKind::StageOpened), once);
        assert_eq!(per_stage(&events, EventKind::StageClosed), once);
        assert_eq!(count(&events, EventKind::JobFinished), 1);
        assert_eq!(
            count(&events, EventKind::TaskSucceeded),
            1 + 1 + LEAVES + SPAWNED + 1
        );
        // Each success names its one attempt and its worker; no claim was
        // logged on its own.
        assert_eq!(count(&events, EventKind::TaskClaimed), 0);
        assert!(
            events
                .iter()
                .filter(|e| e.kind == EventKind::TaskSucceeded)
                .all(|e| e.attempt == Some(1)
                    && e.worker
                        .as_deref()
                        .is_some_and(|w| w.starts_with("worker-"))
                    && e.claimed_at.is_some_and(|c| c < e.at)),
            "every success carries its claim"
        );

        // The join started only after every leaf succeeded.
        let join_claimed = events
            .iter()
            .filter(|e| e.kind == EventKind::TaskSucceeded && e.stage_position == Some(0))
            .map(|e| (e.task_id, e.claimed_at.expect("claim time")))
            .collect::<BTreeMap<_, _>>();
        let succeeded_at = events
            .iter()
            .filter(|e| e.kind == EventKind::TaskSucceeded)
            .map(|e| (e.task_id, e.id))
            .collect::<BTreeMap<_, _>>();
        let status = store
            .get_job(GetJob {
                tenant: tenant(),
                job: job_id,
            })
            .await
            .expect("status");
        assert_eq!(status.stages[1].total, SPAWNED as i64);
        assert_eq!(status.stages[1].remaining, 0);
        let join_task = {
            let mut found = None;
            for task_id in join_claimed.keys() {
                let t = store
                    .get_task(GetTask {
                        tenant: tenant(),
                        task: task_id.expect("task id"),
                    })
                    .await
                    .expect("task");
                if t.handler == "join" {
                    found = Some(t.task_id);
                }
            }
            found.expect("the join task was claimed")
        };
        let leaves_done_by = events
            .iter()
            .filter(|e| {
                e.kind == EventKind::TaskSucceeded
                    && e.stage_position == Some(0)
                    && e.task_id != Some(join_task)
            })
            .map(|e| (e.id, e.at))
            .fold(None, |m: Option<(i64, Millis)>, (id, at)| {
                Some(m.map_or((id, at), |(i, a)| (i.max(id), a.max(at))))
            })
            .expect("leaf successes");
        assert!(join_claimed[&Some(join_task)] > leaves_done_by.1);
        assert!(succeeded_at[&Some(join_task)] > leaves_done_by.0);

        // The aggregate stage reads exactly the spawned outputs, a page at a time.
        let mut seen = BTreeSet::new();
        let mut after = None;
        loop {
            let page = store
                .stage_results(StageResults {
                    tenant: tenant(),
                    job: job_id,
                    from_stage_position: 2,
                    stage_name: "process".to_string(),
                    after,
                    limit: 300,
                    max_bytes: u64::MAX,
                })
                .await
                .expect("stage results");
            let Some(last) = page.last() else { break };
            after = Some(last.0);
            for (id, output) in &page {
                assert_eq!(output, &format!("{{\"task\":{}}}", id.0));
                assert!(seen.insert(*id), "task {} listed twice", id.0);
            }
        }
        assert_eq!(seen.len(), SPAWNED);
        assert_eq!(store.deadlock_retries(), 0);
    })
    .await;
}

/// Every pooled connection holds the statements that advance a job from
/// one stage to the next already prepared — the one that ran the
/// migrations too — so no stage-closing transaction parses them (a round
/// trip each on a fan-in's critical path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_every_pooled_connection_has_the_advancing_statements_prepared() {
    with_pg(|db| async move {
        let store = db.open_store().await;
        // The connection that migrated, and two opened after it.
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(store.pool().acquire().await.expect("acquire"));
        }
        for conn in &mut held {
            let prepared: Vec<(String,)> = sqlx::query_as(
                "SELECT left(regexp_replace(statement, '\\s+', ' ', 'g'), 40) FROM pg_prepared_statements
                 WHERE statement LIKE 'UPDATE stages SET state = ''done''%'
                    OR statement LIKE 'WITH opened AS%'
                 ORDER BY 1",
            )
            .fetch_all(&mut **conn)
            .await
            .expect("read the prepared statements");
            let prepared: Vec<String> = prepared.into_iter().map(|(s,)| s).collect();
            assert_eq!(
                prepared,
                [
                    "UPDATE stages SET state = 'done', closed",
                    "UPDATE stages SET state = 'done', closed",
                    "WITH opened AS ( UPDATE stages SET state",
                ],
            );
        }
    })
    .await;
}

/// A transaction of plain successes plans its statements once per
/// connection (generic plans, kept as the tables grow), so each must find
/// its rows through an index even when planned on a new, empty database, and
/// none may walk a whole index to join it. Without the sequential scans it
/// rules out while planning, SUCCEED_FENCED's and OPEN_STAGE's plans here
/// scan `tasks` (checked by hand against this test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_plain_success_statements_plan_to_indexes_on_an_empty_database() {
    with_pg(|db| async move {
        let store = db.open_store().await;
        let plans = store
            .plain_success_statement_plans()
            .await
            .expect("explain the statements");
        let names: Vec<&str> = plans.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            [
                "SUCCEED_FENCED",
                "STALE_TASKS",
                "JOB_STAGES",
                "RELEASES",
                "HOLD_DEPENDENTS",
                "CANCEL_DEPENDENTS",
                "RELEASE_DEPENDENTS",
                "APPLY_DELTAS",
                "CLOSE_DRAINED",
                "OPEN_STAGE",
                "CLOSE_EMPTY_STAGE",
                "CANCEL_LATER_TASKS",
                "INSERT_EVENTS",
                "JOB_STATES",
                "FINISH_JOB",
                "NOTIFY_READY",
            ]
        );
        for (name, plan) in &plans {
            assert!(
                !plan.contains("Seq Scan") && !plan.contains("Merge Join"),
                "{name} plans a sequential scan or a merge join:\n{plan}"
            );
        }
        let fenced = &plans[0].1;
        assert!(
            fenced.contains("Index Scan using tasks_pkey on tasks"),
            "{fenced}"
        );
    })
    .await;
}

/// A store whose pool holds one connection: every statement runs on it.
async fn store_of_one_connection(url: &str) -> PgStore {
    PgStore::open_with(
        url,
        lockstep::store::postgres::PgOptions {
            max_connections: 1,
            acquire_timeout: Duration::from_secs(30),
        },
    )
    .await
    .expect("open the store")
}

/// A batch of plain successes runs its statements on the plans its
/// connection keeps (generic plans), and a batch with another result plans
/// with its values: counted by PostgreSQL per prepared statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_plain_successes_reuse_their_plans_and_other_results_plan_anew() {
    with_pg(|db| async move {
        // One connection, so that every statement below runs on it.
        let store = store_of_one_connection(&db.url).await;
        store
            .submit_job(job(
                "plans",
                vec![stage(
                    "a",
                    (0..3).map(|_| task("work", None, &[])).collect(),
                )],
            ))
            .await
            .expect("submit");
        let t = store.claim_batch(claim(3, "w", NOW)).await.expect("claim");
        assert_eq!(t.len(), 3);
        let batch = |c: Completion| CompleteBatch {
            completions: vec![c],
            now: NOW + 1,
            max_tasks_per_job: lockstep::spec::Limits::default().max_tasks_per_job,
        };
        for claimed in &t[..2] {
            store
                .complete_batch(batch(success(claimed, vec![])))
                .await
                .expect("complete");
        }
        let retried = Completion {
            tenant: t[2].tenant.clone(),
            lease: t[2].lease,
            result: TaskResult::Retryable {
                error: "again".to_string(),
                retry_after: Duration::from_secs(1),
            },
            logs: vec![],
        };
        store.complete_batch(batch(retried)).await.expect("complete");

        let mut conn = store.pool().acquire().await.expect("acquire");
        let plans: (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT
               coalesce(sum(generic_plans) FILTER (WHERE statement LIKE 'WITH held AS MATERIALIZED%'), 0)::int8,
               coalesce(sum(custom_plans) FILTER (WHERE statement LIKE 'WITH held AS MATERIALIZED%'), 0)::int8,
               coalesce(sum(generic_plans) FILTER (WHERE statement LIKE 'SELECT t.id, t.tenant_id, t.job_id, t.stage_position, t.attempt%'), 0)::int8,
               coalesce(sum(custom_plans) FILTER (WHERE statement LIKE 'SELECT t.id, t.tenant_id, t.job_id, t.stage_position, t.attempt%'), 0)::int8
             FROM pg_prepared_statements",
        )
        .fetch_one(&mut *conn)
        .await
        .expect("read the prepared statements");
        // The fenced success ran twice on a kept plan; the retry's read of
        // its running row was planned for its values.
        assert_eq!(plans, (2, 0, 0, 1));
    })
    .await;
}

/// The statements that close a stage and open the next are planned, as a
/// transaction of plain successes plans them, when a pooled connection
/// opens: the close of a fan-in runs on a kept plan instead of planning
/// (0.3–0.5 ms of bind each) on its critical path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_new_connection_keeps_plans_for_closing_and_opening_stages() {
    with_pg(|db| async move {
        // One connection, so that every statement below runs on it.
        let store = store_of_one_connection(&db.url).await;
        async fn plans(store: &PgStore) -> Vec<(String, i64, i64)> {
            let mut conn = store.pool().acquire().await.expect("acquire");
            sqlx::query_as(
                "SELECT CASE
                          WHEN statement LIKE 'UPDATE stages SET state = ''done''%unnest%' THEN 'close drained'
                          WHEN statement LIKE 'UPDATE stages SET state = ''done''%' THEN 'close empty'
                          ELSE 'open' END,
                        generic_plans, custom_plans
                 FROM pg_prepared_statements
                 WHERE statement LIKE 'UPDATE stages SET state = ''done''%'
                    OR statement LIKE 'WITH opened AS%'
                 ORDER BY 1",
            )
            .fetch_all(&mut *conn)
            .await
            .expect("read the prepared statements")
        }
        let planned = |close_drained: (i64, i64), open: i64| {
            vec![
                ("close drained".to_string(), close_drained.0, close_drained.1),
                ("close empty".to_string(), 1, 0),
                ("open".to_string(), open, 0),
            ]
        };
        assert_eq!(
            plans(&store).await,
            planned((1, 0), 1),
            "planned once on connect"
        );

        store
            .submit_job(job(
                "kept-plans",
                vec![
                    stage("a", vec![task("work", None, &[])]),
                    stage("b", vec![task("work", None, &[])]),
                ],
            ))
            .await
            .expect("submit");
        let a = store.claim_batch(claim(1, "w", NOW)).await.expect("claim");
        assert_eq!(a.len(), 1);
        store
            .complete_batch(CompleteBatch {
                completions: vec![success(&a[0], vec![])],
                now: NOW + 1,
                max_tasks_per_job: lockstep::spec::Limits::default().max_tasks_per_job,
            })
            .await
            .expect("complete");
        // The submit's check for an empty first stage planned the close for
        // its values (not a transaction of plain successes); the plain
        // success closed stage a and opened b on the kept plans.
        assert_eq!(plans(&store).await, planned((2, 1), 2));
        let b = store.claim_batch(claim(1, "w", NOW + 2)).await.expect("claim");
        assert_eq!(b.len(), 1, "stage b opened");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_large_submit_leaves_the_planner_statistics_of_its_tasks() {
    with_pg(|db| async move {
        let store = db.open_store().await;
        let mut conn = PgConnection::connect(&db.url).await.expect("connect");
        // A small job first: it pays for no ANALYZE.
        store
            .submit_job(job(
                "small",
                vec![stage("only", vec![task("work", None, &[])])],
            ))
            .await
            .expect("submit");
        let tasks = (0..10_000).map(|_| task("work", None, &[])).collect();
        store
            .submit_job(job("large", vec![stage("only", tasks)]))
            .await
            .expect("submit");
        // Counted by the submit's own ANALYZE, committed with its rows.
        let (reltuples,): (f32,) =
            sqlx::query_as("SELECT reltuples FROM pg_class WHERE relname = 'tasks'")
                .fetch_one(&mut conn)
                .await
                .expect("read pg_class");
        assert_eq!(reltuples, 10_001.0);
        // Claims after it take the oldest tasks first, as always.
        let claimed = store
            .claim_batch(claim(100, "w", NOW))
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 100);
        assert!(
            claimed
                .windows(2)
                .all(|w| w[0].lease.task_id < w[1].lease.task_id)
        );
    })
    .await;
}

/// Statistics taken while a job was all pending (the submit's own ANALYZE,
/// with autovacuum off or not yet due) stay in place while it runs: the
/// claim must still walk the pending tasks' index, not the primary key past
/// every finished task (which the planner picks when it may reduce the order
/// to `id`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_claims_walk_the_pending_index_on_statistics_of_an_all_pending_job() {
    with_pg(|db| async move {
        let store = db.open_store().await;
        let tasks = (0..10_000).map(|_| task("work", None, &[])).collect();
        store
            .submit_job(job("large", vec![stage("only", tasks)]))
            .await
            .expect("submit");
        // 9,000 tasks run and finish with no ANALYZE since: as claims and
        // completions would leave them, written directly for speed.
        let mut conn = PgConnection::connect(&db.url).await.expect("connect");
        let done = sqlx::query(
            "UPDATE tasks SET state = 'succeeded', attempt = 1, output_json = 'null',
                 finished_at = $1, updated_at = $1
             WHERE id IN (SELECT id FROM tasks ORDER BY id LIMIT 9000)",
        )
        .bind(NOW)
        .execute(&mut conn)
        .await
        .expect("finish 9,000 tasks");
        assert_eq!(done.rows_affected(), 9000);
        sqlx::query("UPDATE stages SET remaining = remaining - 9000")
            .execute(&mut conn)
            .await
            .expect("count them off");

        let plan = store
            .claim_plan(claim(256, "w", NOW))
            .await
            .expect("explain the claim");
        assert_scan(&plan, "tasks_claimable", "executor");
        // The claimed rows are sorted for the answer; the candidates are not.
        assert!(
            !plan.contains("Sort Key: t."),
            "the claim sorts its candidates in:\n{plan}"
        );

        // And it claims the oldest pending tasks, in order.
        let (oldest,): (i64,) = sqlx::query_as("SELECT min(id) FROM tasks WHERE state = 'pending'")
            .fetch_one(&mut conn)
            .await
            .expect("read the oldest pending task");
        let claimed = store
            .claim_batch(claim(100, "w", NOW))
            .await
            .expect("claim");
        let ids: Vec<i64> = claimed.iter().map(|t| t.lease.task_id.0).collect();
        assert_eq!(ids, (oldest..oldest + 100).collect::<Vec<_>>());
    })
    .await;
}

/// A claim connection plans each claim once, when it first runs it — in a
/// new `serve`, on a database whose tables are still empty — and keeps that
/// plan as the tables grow. Planned so, a worker's claim still walks the
/// pending tasks' index (not `tasks` itself), finds its rows again by
/// primary key, and reads each claimed task's stage by its job (not every
/// stage: a join to `stages` was planned as a walk of all of them per claim).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_claim_planned_on_an_empty_database_reads_only_indexes() {
    with_pg(|db| async move {
        let store = db.open_store().await;
        let empty = store
            .claim_plan(claim(128, "w", NOW))
            .await
            .expect("explain the claim on an empty database");
        // Statistics of one job of one stage (the submit's ANALYZE), kept
        // while more jobs come: the planner takes `stages` for one row.
        submit_one_stage(&store, "first", 5).await;
        let mut conn = PgConnection::connect(&db.url).await.expect("connect");
        sqlx::query("ANALYZE tasks, jobs, stages")
            .execute(&mut conn)
            .await
            .expect("statistics of the first job");
        let one_stage = store
            .claim_plan(claim(128, "w", NOW))
            .await
            .expect("explain the claim with statistics of one stage");
        for _ in 0..20 {
            submit_one_stage(&store, "small", 5).await;
        }
        let (_job, _conn) = analyzed_pending_job(&store, &db.url, 3_000).await;
        let analyzed = store
            .claim_plan(claim(128, "w", NOW))
            .await
            .expect("explain the claim with statistics of 3,105 pending tasks");

        for plan in [&empty, &one_stage, &analyzed] {
            assert!(!plan.contains("Seq Scan"), "a sequential scan in:\n{plan}");
            let scans = scans_of_tasks(plan);
            assert_eq!(scans.len(), 2, "two scans of tasks in:\n{plan}");
            assert!(
                scans[0].starts_with("->  Index Scan using tasks_claimable on tasks t "),
                "the claim picks with {:?} in:\n{plan}",
                scans[0]
            );
            let by_key = scans[1].starts_with("->  Index Scan using tasks_pkey on tasks t_1 ")
                || (scans[1].starts_with("->  Bitmap Heap Scan on tasks t_1 ")
                    && plan.contains("Bitmap Index Scan on tasks_pkey"));
            assert!(
                by_key,
                "the claim updates through {:?} in:\n{plan}",
                scans[1]
            );
            let stage_scans: Vec<&str> = plan
                .lines()
                .map(str::trim)
                .filter(|l| l.contains(" on stages s "))
                .collect();
            assert_eq!(stage_scans.len(), 1, "one read of stages in:\n{plan}");
            let condition = line_after(plan, stage_scans[0]);
            assert!(
                condition.starts_with("Index Cond: (job_id = c.job_id)")
                    || condition.starts_with("Index Cond: ((job_id = c.job_id) AND"),
                "the stage of a claimed task is not read by its job ({condition:?}) in:\n{plan}"
            );
        }

        let claimed = store
            .claim_batch(claim(128, "w", NOW))
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 128);
        assert!(claimed.iter().all(|t| t.stage_name == "only"));
    })
    .await;
}

/// The line of `plan` after the one holding `node` (a scan's condition), trimmed.
fn line_after<'a>(plan: &'a str, node: &str) -> &'a str {
    let at = plan.find(node).unwrap_or(0);
    plan[at..].lines().nth(1).unwrap_or("").trim()
}

/// The one scan of `tasks` in `plan` uses `index`, and its index condition
/// bounds `column`.
fn assert_scan(plan: &str, index: &str, column: &str) {
    let scans: Vec<&str> = plan
        .lines()
        .filter(|l| l.contains(" on tasks t "))
        .map(str::trim)
        .collect();
    assert_eq!(scans.len(), 1, "one scan of tasks in:\n{plan}");
    assert!(
        scans[0].starts_with(&format!("->  Index Scan using {index} on tasks t ")),
        "the claim scans {:?} in:\n{plan}",
        scans[0]
    );
    let condition = line_after(plan, scans[0]);
    assert!(
        condition.contains("Index Cond: ((") && condition.contains(&format!("({column} ")),
        "the scan is not limited by {column} ({condition:?}) in:\n{plan}"
    );
}

/// A claim from one job (an MCP agent's `claim_task`, a pipeline's steps)
/// reads that job's pending tasks, and an agent's claim from no job its
/// tenant's pending agent tasks — never the pending index of every job: a
/// large backlog of another job or tenant in front of them costs them
/// nothing. Checked as a claim connection plans it, for any values (the
/// generic plan: the statement's text, not the planner's guess, bounds the
/// scan).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_claim_from_one_job_or_one_tenant_reads_only_its_pending_tasks() {
    with_pg(|db| async move {
        let store = db.open_store().await;
        let agent = || NewTask {
            executor: Executor::Agent,
            agent_json: Some("{\"title\":\"Step\"}".to_string()),
            ..task("agent:planner", None, &[])
        };
        let backlog = (0..10_000).map(|_| agent()).collect();
        store
            .submit_job(SubmitJob {
                tenant: TenantId("backlogged".to_string()),
                ..job("backlog", vec![stage("only", backlog)])
            })
            .await
            .expect("submit the backlog");
        let small = store
            .submit_job(job(
                "small",
                vec![stage("only", (0..3).map(|_| agent()).collect())],
            ))
            .await
            .expect("submit the small job")
            .job_id;
        let from_tenant = ClaimBatch {
            tenant: Some(tenant()),
            executor: Executor::Agent,
            handlers: None,
            ..claim(1, "agent", NOW)
        };
        let from_small = ClaimBatch {
            job: Some(small),
            ..from_tenant.clone()
        };

        for (claim, index, column) in [
            (&from_small, "tasks_job_stage_state", "job_id"),
            (&from_tenant, "tasks_agent_claimable", "tenant_id"),
        ] {
            let plan = store.claim_plan(claim.clone()).await;
            assert_scan(&plan.expect("explain the claim"), index, column);
        }

        let claimed = store.claim_batch(from_small).await.expect("claim");
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].job_id, small);
        let claimed = store.claim_batch(from_tenant).await.expect("claim");
        assert_eq!(claimed.len(), 1);
        assert_eq!(
            (claimed[0].job_id, claimed[0].tenant.clone()),
            (small, tenant())
        );
    })
    .await;
}

/// The plan lines that scan `tasks`, in the plan's order.
fn scans_of_tasks(plan: &str) -> Vec<&str> {
    plan.lines()
        .map(str::trim)
        .filter(|l| l.contains("Scan") && l.contains(" on tasks "))
        .collect()
}

/// A job of `width` `work` tasks in one stage, `only`.
async fn submit_one_stage(store: &PgStore, name: &str, width: usize) -> JobId {
    let tasks = (0..width).map(|_| task("work", None, &[])).collect();
    store
        .submit_job(job(name, vec![stage("only", tasks)]))
        .await
        .expect("submit")
        .job_id
}

/// A job of `width` pending tasks in one stage, and the planner's
/// statistics taken then (all pending, none running), with the connection
/// that took them.
async fn analyzed_pending_job(store: &PgStore, url: &str, width: usize) -> (JobId, PgConnection) {
    let job_id = submit_one_stage(store, "pending", width).await;
    let mut conn = PgConnection::connect(url).await.expect("connect");
    sqlx::query("ANALYZE tasks")
        .execute(&mut conn)
        .await
        .expect("statistics of an all-pending job");
    (job_id, conn)
}

/// A page of a job's tasks is read from the job's index, a bounded number
/// of entries per (stage, state), whatever the planner's statistics say:
/// with the job all pending (its statistics), a page asked for by equalities
/// on job, stage and state was planned as a walk of `tasks_pkey` in id
/// order, filtering every task of the table for each state (125 ms for the
/// first 100 tasks of a 100,000-task job).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_page_of_a_jobs_tasks_reads_the_jobs_index() {
    with_pg(|db| async move {
        let store = db.open_store().await;
        let (job_id, _conn) = analyzed_pending_job(&store, &db.url, 3_000).await;
        let page = |after| ListTasks {
            tenant: tenant(),
            job: job_id,
            after,
            limit: 100,
        };
        let first = store.list_tasks(page(None)).await.expect("first page");
        assert_eq!(first.len(), 100);
        let middle = Some(first[49].task_id);
        for after in [None, middle] {
            let plan = store
                .list_tasks_plan(page(after))
                .await
                .expect("explain the page");
            let scans = scans_of_tasks(&plan);
            assert_eq!(scans.len(), 2, "two scans of tasks in:\n{plan}");
            assert!(
                scans[0].contains("Scan using tasks_job_stage_state on tasks"),
                "the page is not read from the job's index ({:?}) in:\n{plan}",
                scans[0]
            );
            assert!(
                scans[1].contains("Index Scan using tasks_pkey on tasks")
                    && plan.contains("Index Cond: (id = page.id)"),
                "the page's rows are not read by id ({:?}) in:\n{plan}",
                scans[1]
            );
        }
        let second = store.list_tasks(page(middle)).await.expect("a later page");
        assert_eq!(second.len(), 100);
        assert_eq!(second[0].task_id, first[50].task_id);
    })
    .await;
}

/// A completion finds its task rows by primary key, one probe per
/// completion, whatever the planner's statistics say about running tasks:
/// `tasks_running_leases` keeps an entry for every row that ran since the
/// last vacuum, and a plan that reads it (for the whole batch, or once per
/// completion) read thousands of entries for each batch. Statistics here are
/// from before any task ran, the case that read the index once per
/// completion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_completion_finds_its_rows_by_primary_key() {
    with_pg(|db| async move {
        let store = db.open_store().await;
        let (job_id, mut conn) = analyzed_pending_job(&store, &db.url, 2_000).await;
        let claimed = store
            .claim_batch(claim(1_000, "w", NOW))
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 1_000);
        let batch = || CompleteBatch {
            completions: claimed.iter().map(|t| success(t, Vec::new())).collect(),
            now: NOW + 1,
            max_tasks_per_job: lockstep::spec::Limits::default().max_tasks_per_job,
        };

        let plan = store
            .completion_plan(batch())
            .await
            .expect("explain the completion");
        assert!(
            !plan.contains("tasks_running_leases"),
            "a completion reads the running-lease index in:\n{plan}"
        );
        let probes = scans_of_tasks(&plan);
        // SUCCEED_FENCED: one probe per completion, then the update's own
        // scan by the held ids; HOLD_RUNNING: one probe per completion.
        assert_eq!(probes.len(), 3, "three scans of tasks in:\n{plan}");
        for probe in probes {
            assert!(
                probe.contains("Index Scan using tasks_pkey on tasks")
                    || probe.contains("Bitmap Heap Scan on tasks"),
                "a scan of tasks that is not by primary key ({probe:?}) in:\n{plan}"
            );
        }
        assert_eq!(
            plan.matches("Index Cond: (id = k.id)").count(),
            2,
            "each completion is one primary-key probe in:\n{plan}"
        );

        let outcomes = store.complete_batch(batch()).await.expect("complete");
        assert_eq!(outcomes.len(), 1_000);
        assert!(
            outcomes
                .iter()
                .all(|o| *o == CompletionOutcome::Recorded(TaskState::Succeeded)),
            "every completion is recorded: {outcomes:?}"
        );
        let (succeeded,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM tasks WHERE job_id = $1 AND state = 'succeeded'")
                .bind(job_id.0)
                .fetch_one(&mut conn)
                .await
                .expect("count the succeeded tasks");
        assert_eq!(succeeded, 1_000);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_rescue_on_four_nodes_takes_each_expired_lease_exactly_once() {
    with_pg(|db| async move {
        let store = Arc::new(db.open_store().await);
        const TASKS: usize = 300;
        let job_id = submit_one_stage(&store, "leases", TASKS).await;
        let mut claimed = 0;
        while claimed < TASKS {
            let batch = store
                .claim_batch(claim(100, "doomed-node", NOW))
                .await
                .expect("claim");
            assert!(!batch.is_empty());
            claimed += batch.len();
        }

        let later = NOW + 120_000;
        let mut nodes = Vec::new();
        for _ in 0..4 {
            let store = store.clone();
            nodes.push(tokio::spawn(async move {
                let mut rescued = 0;
                loop {
                    let n = store
                        .rescue_expired_leases(RescueExpiredLeases {
                            now: later,
                            retry_after: Duration::from_secs(1),
                            limit: 20,
                        })
                        .await
                        .expect("rescue");
                    if n == 0 {
                        return rescued;
                    }
                    rescued += n;
                }
            }));
        }
        let mut total = 0;
        for n in nodes {
            total += n.await.expect("node");
        }
        assert_eq!(total, TASKS as u64);
        let events = all_events(store.as_ref(), job_id).await;
        assert_eq!(count(&events, EventKind::TaskRetried), TASKS);
        let retried: BTreeSet<_> = events
            .iter()
            .filter(|e| e.kind == EventKind::TaskRetried)
            .map(|e| e.task_id)
            .collect();
        assert_eq!(retried.len(), TASKS);
        let status = store
            .get_job(GetJob {
                tenant: tenant(),
                job: job_id,
            })
            .await
            .expect("status");
        let pending = status.stages[0]
            .counts
            .iter()
            .find(|(s, _)| *s == TaskState::Pending)
            .map(|(_, n)| *n);
        assert_eq!(pending, Some(TASKS as i64));
        assert_eq!(store.deadlock_retries(), 0);
    })
    .await;
}

/// Wait until some backend of `db` other than `except_pid` waits on a lock.
async fn wait_for_lock_waiter(admin: &sqlx::PgPool, db: &str, except_pid: i32) {
    for _ in 0..2_000 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = $1 AND pid <> $2 AND wait_event_type = 'Lock'",
        )
        .bind(db)
        .bind(except_pid)
        .fetch_one(admin)
        .await
        .expect("pg_stat_activity");
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no backend of {db} started waiting for a lock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_deadlock_is_retried_counted_and_the_completion_recorded_once() {
    with_pg(|db| async move {
        // Our own session waits far longer before checking for deadlocks, so
        // PostgreSQL always picks the store's transaction as the victim.
        let store = db.open_store().await;
        let job_id = store
            .submit_job(job(
                "deadlock",
                vec![stage(
                    "only",
                    vec![task("work", None, &[]), task("work", None, &[])],
                )],
            ))
            .await
            .expect("submit")
            .job_id;
        let claimed = store.claim_batch(claim(1, "w", NOW)).await.expect("claim");
        assert_eq!(claimed.len(), 1);
        let t = claimed[0].clone();

        // Someone outside lockstep locks in the opposite order: stage row,
        // then the task row.
        let mut other = PgConnection::connect(&db.url).await.expect("connect");
        sqlx::query("SET deadlock_timeout = '60s'")
            .execute(&mut other)
            .await
            .expect("set");
        let other_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut other)
            .await
            .expect("pid");
        let mut tx = other.begin().await.expect("begin");
        sqlx::query("SELECT 1 FROM stages WHERE job_id = $1 FOR UPDATE")
            .bind(job_id.0)
            .execute(&mut *tx)
            .await
            .expect("lock stage");

        let store = Arc::new(store);
        let completing = {
            let store = store.clone();
            let c = success(&t, Vec::new());
            tokio::spawn(async move {
                store
                    .complete_batch(CompleteBatch {
                        completions: vec![c],
                        now: NOW,
                        max_tasks_per_job: lockstep::spec::Limits::default().max_tasks_per_job,
                    })
                    .await
            })
        };
        wait_for_lock_waiter(&db.admin, &db.name, other_pid).await;
        // Now close the cycle; the store's transaction is aborted with 40P01.
        sqlx::query("UPDATE tasks SET updated_at = updated_at WHERE id = $1")
            .bind(t.lease.task_id.0)
            .execute(&mut *tx)
            .await
            .expect("lock task");
        tx.rollback().await.expect("rollback");

        let outcomes = completing
            .await
            .expect("join")
            .expect("complete after retry");
        assert_eq!(
            outcomes,
            vec![CompletionOutcome::Recorded(TaskState::Succeeded)]
        );
        assert_eq!(store.deadlock_retries(), 1);
        let events = all_events(store.as_ref(), job_id).await;
        assert_eq!(count(&events, EventKind::TaskSucceeded), 1);
        let task = store
            .get_task(GetTask {
                tenant: tenant(),
                task: t.lease.task_id,
            })
            .await
            .expect("task");
        assert_eq!(task.state, TaskState::Succeeded);
        assert_eq!(task.attempt, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_terminated_connections_lose_nothing_and_write_nothing_twice() {
    with_pg(|db| async move {
        let store = Arc::new(db.open_store().await);
        let spec = job(
            "restart",
            vec![stage(
                "only",
                vec![task("work", None, &[]), task("work", None, &[])],
            )],
        );
        let first = store.submit_job(spec.clone()).await.expect("submit");
        assert!(first.created);

        // Between operations: every pooled connection dies; the next call
        // still succeeds and the idempotent submit writes nothing new.
        assert!(db.terminate_backends().await > 0);
        let again = store.submit_job(spec).await.expect("submit after restart");
        assert_eq!(again.job_id, first.job_id);
        assert!(!again.created);

        let claimed = store.claim_batch(claim(2, "w", NOW)).await.expect("claim");
        assert_eq!(claimed.len(), 2);
        db.terminate_backends().await;

        // In the middle of a transaction: the completion has updated its task
        // row and waits for the stage row when its backend is terminated.
        let mut other = PgConnection::connect(&db.url).await.expect("connect");
        let other_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut other)
            .await
            .expect("pid");
        let mut tx = other.begin().await.expect("begin");
        sqlx::query("SELECT 1 FROM stages WHERE job_id = $1 FOR UPDATE")
            .bind(first.job_id.0)
            .execute(&mut *tx)
            .await
            .expect("lock stage");
        let completing = {
            let store = store.clone();
            let c = success(&claimed[0], Vec::new());
            tokio::spawn(async move {
                store
                    .complete_batch(CompleteBatch {
                        completions: vec![c],
                        now: NOW,
                        max_tasks_per_job: lockstep::spec::Limits::default().max_tasks_per_job,
                    })
                    .await
            })
        };
        wait_for_lock_waiter(&db.admin, &db.name, other_pid).await;
        let killed: i64 = sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = $1 AND pid <> $2 AND wait_event_type = 'Lock'",
        )
        .bind(&db.name)
        .bind(other_pid)
        .fetch_one(&db.admin)
        .await
        .expect("terminate");
        assert_eq!(killed, 1);
        let interrupted = completing.await.expect("join");
        assert!(
            matches!(interrupted, Err(lockstep::store::StoreError::Database(_))),
            "an interrupted completion is a database error: {interrupted:?}"
        );
        tx.rollback().await.expect("rollback");

        // Nothing of the interrupted transaction is visible.
        let task = store
            .get_task(GetTask {
                tenant: tenant(),
                task: claimed[0].lease.task_id,
            })
            .await
            .expect("task");
        assert_eq!(task.state, TaskState::Running);
        assert_eq!(task.output_json, None);
        let events = all_events(store.as_ref(), first.job_id).await;
        assert_eq!(count(&events, EventKind::TaskSucceeded), 0);

        // The worker's retry of the same completion goes through, once.
        let all: Vec<Completion> = claimed.iter().map(|t| success(t, Vec::new())).collect();
        let outcomes = store
            .complete_batch(CompleteBatch {
                completions: all.clone(),
                now: NOW,
                max_tasks_per_job: lockstep::spec::Limits::default().max_tasks_per_job,
            })
            .await
            .expect("complete after restart");
        assert_eq!(
            outcomes,
            vec![CompletionOutcome::Recorded(TaskState::Succeeded); 2]
        );
        db.terminate_backends().await;
        let duplicate = store
            .complete_batch(CompleteBatch {
                completions: all,
                now: NOW,
                max_tasks_per_job: lockstep::spec::Limits::default().max_tasks_per_job,
            })
            .await
            .expect("duplicate completion");
        assert_eq!(duplicate, vec![CompletionOutcome::Stale; 2]);

        let events = all_events(store.as_ref(), first.job_id).await;
        assert_eq!(count(&events, EventKind::Submitted), 1);
        assert_eq!(count(&events, EventKind::TaskSucceeded), 2);
        assert_eq!(count(&events, EventKind::CompletionRefused), 2);
        assert_eq!(count(&events, EventKind::JobFinished), 1);
        assert_eq!(
            store
                .job_state(GetJob {
                    tenant: tenant(),
                    job: first.job_id
                })
                .await
                .expect("state"),
            JobState::Succeeded
        );
    })
    .await;
}

/// Wait until the store's LISTEN connection is up.
async fn wait_for_listener(db: &crate::postgres_test_db::TestDb) {
    for _ in 0..2_000 {
        let listening: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN %'",
        )
        .bind(&db.name)
        .fetch_one(&db.admin)
        .await
        .expect("pg_stat_activity");
        if listening > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the store never started listening");
}

/// Swallow wake-ups already delivered (connecting wakes everyone once).
async fn drain(signal: &tokio::sync::Notify) {
    while tokio::time::timeout(Duration::from_millis(100), signal.notified())
        .await
        .is_ok()
    {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_ready_signal_wakes_an_idle_worker_and_survives_a_dropped_connection() {
    with_pg(|db| async move {
        let store: Arc<PgStore> = Arc::new(db.open_store().await);
        let signal = store.ready_signal().expect("postgres has a ready signal");
        wait_for_listener(&db).await;
        drain(&signal).await;

        let woken = signal.notified();
        store
            .submit_job(job(
                "wake-1",
                vec![stage("only", vec![task("work", None, &[])])],
            ))
            .await
            .expect("submit");
        tokio::time::timeout(Duration::from_secs(30), woken)
            .await
            .expect("a submit with a ready task wakes the waiter");

        // Kill the LISTEN connection: it comes back and wakes again.
        db.terminate_backends().await;
        let mut reconnected = false;
        for _ in 0..3_000 {
            if store.listener_reconnects() >= 1 {
                reconnected = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(reconnected, "the LISTEN connection was re-established");
        wait_for_listener(&db).await;
        drain(&signal).await;
        let woken = signal.notified();
        store
            .submit_job(job(
                "wake-2",
                vec![stage("only", vec![task("work", None, &[])])],
            ))
            .await
            .expect("submit after reconnect");
        tokio::time::timeout(Duration::from_secs(30), woken)
            .await
            .expect("notifications flow again after reconnecting");
    })
    .await;
}

/// Backpressure (issue 13): a run slot is given back when its handler
/// returns, a unit of the recording budget (`WorkerConfig::recording_budget`:
/// the run slots plus one claim batch) when its completion commits. With
/// every completion stuck behind a lock, the workers claim exactly their
/// budget's worth of tasks — more than their run slots, since finished runs
/// no longer hold a slot — and no more; once the lock goes, the job finishes
/// with no completion refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_claimed_but_unrecorded_tasks_stop_at_the_recording_budget() {
    with_pg(|db| async move {
        let dir = tempfile::tempdir().expect("temp dir");
        let h = crate::harness::Harness::on(db.url.clone(), dir).await;
        let mut body = String::from(
            "name = \"held\"\nidempotency_key = \"held\"\n[[stages]]\nname = \"work\"\ntasks = [\n",
        );
        for i in 0..40 {
            body.push_str(&format!(
                "  {{ handler = \"example:noop\", input = {{ value = {i} }} }},\n"
            ));
        }
        body.push_str("]\n");
        let job = h.submit(&body).await;

        // Completions lock their task rows, then the stage row: hold the
        // stage row so that every completion waits.
        let mut other = PgConnection::connect(&db.url).await.expect("connect");
        let other_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut other)
            .await
            .expect("pid");
        let mut tx = other.begin().await.expect("begin");
        sqlx::query("SELECT 1 FROM stages WHERE job_id = $1 FOR UPDATE")
            .bind(job.0)
            .execute(&mut *tx)
            .await
            .expect("lock stage");

        let config = lockstep::engine::WorkerConfig {
            slots: 4,
            batch: 3,
            idle_poll: Duration::from_millis(5),
            ..lockstep::engine::WorkerConfig::default()
        };
        // 4 run slots + a batch of 3: the bound this test holds the pool to
        // (PostgreSQL's writes run side by side).
        assert_eq!(config.recording_budget(), 7);
        let pool = h.engine.start_workers(config);
        wait_for_lock_waiter(&db.admin, &db.name, other_pid).await;
        // Time enough for a claimer that ignored the budget to claim the rest.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let by_state = |state: &'static str| {
            let admin_url = db.url.clone();
            async move {
                let mut conn = PgConnection::connect(&admin_url).await.expect("connect");
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE state = $1")
                    .bind(state)
                    .fetch_one(&mut conn)
                    .await
                    .expect("count");
                n
            }
        };
        use std::sync::atomic::Ordering::Relaxed;
        assert_eq!(
            (by_state("running").await, by_state("pending").await),
            (7, 33),
            "claimed but unrecorded: exactly the recording budget"
        );
        assert!(
            pool.stats.peak_runs.load(Relaxed) <= 4,
            "ran beyond the run slots"
        );

        tx.rollback().await.expect("release the stage row");
        let done = h
            .engine
            .wait(&h.tenant, job, Some(Duration::from_secs(120)), |_| {})
            .await
            .expect("wait");
        let stats = pool.stats.clone();
        pool.shutdown().await;
        assert_eq!(done.job.state, JobState::Succeeded);
        assert_eq!(
            (stats.completed.load(Relaxed), stats.stale.load(Relaxed)),
            (40, 0)
        );
        assert!(
            stats.peak_runs.load(Relaxed) <= 4,
            "ran beyond the run slots"
        );
    })
    .await;
}

/// Spawners of one job on two nodes take turns, so the per-job task limit
/// holds exactly across processes: of 40 tasks that each spawn one child
/// into a job with room for 10, exactly 10 spawn and 30 are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_spawners_on_two_nodes_never_take_a_job_past_its_task_limit() {
    with_pg(|db| async move {
        let nodes = [
            Arc::new(db.open_store().await),
            Arc::new(db.open_store().await),
        ];
        let fanouts = (0..40).map(|_| task("fanout", None, &[])).collect();
        let job_id = nodes[0]
            .submit_job(job(
                "limit",
                vec![stage("a", fanouts), stage("b", Vec::new())],
            ))
            .await
            .expect("submit")
            .job_id;
        let claimed = nodes[0]
            .claim_batch(claim(40, "w", NOW))
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 40);
        let mut completers = Vec::new();
        for (i, t) in claimed.into_iter().enumerate() {
            let store = nodes[i % 2].clone();
            completers.push(tokio::spawn(async move {
                let child = SpawnTask {
                    stage_name: "b".to_string(),
                    handler: "work".to_string(),
                    input_json: "{}".to_string(),
                    max_attempts: 1,
                    timeout_ms: 30_000,
                };
                store
                    .complete_batch(CompleteBatch {
                        completions: vec![success(&t, vec![child])],
                        now: NOW,
                        max_tasks_per_job: 50,
                    })
                    .await
                    .expect("complete")
            }));
        }
        let mut spawned = 0;
        let mut refused = 0;
        for c in completers {
            match c.await.expect("completer").as_slice() {
                [CompletionOutcome::Recorded(TaskState::Succeeded)] => spawned += 1,
                [CompletionOutcome::RejectedSpawn(why)] => {
                    assert!(why.contains("more than the 50-task limit"), "{why}");
                    refused += 1;
                }
                other => panic!("unexpected outcome {other:?}"),
            }
        }
        assert_eq!((spawned, refused), (10, 30));
        let status = nodes[1]
            .get_job(GetJob {
                tenant: tenant(),
                job: job_id,
            })
            .await
            .expect("status");
        assert_eq!((status.stages[0].total, status.stages[1].total), (40, 10));
    })
    .await;
}

/// A wasm claim commits without waiting for the WAL flush, so a crash of the
/// server can lose it while its worker (another machine) runs the task. The
/// crash is played here without restarting the shared server: the claimed
/// row is put back as it was before the claim, as recovery from a WAL that
/// ends before the claim's commit would leave it. Another node then claims
/// the task at the same attempt number, and the first node's run, whose
/// token names the right task and attempt, is refused by the claim's nonce
/// (Invariant 8): its renewal and its completion alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_run_of_a_claim_lost_in_a_server_crash_is_refused() {
    with_pg(|db| async move {
        let node_a = db.open_store().await;
        let node_b = db.open_store().await;
        let job_id = node_a
            .submit_job(job(
                "lost",
                vec![stage("only", vec![task("work", None, &[])])],
            ))
            .await
            .expect("submit")
            .job_id;
        type Row = (
            String,
            i32,
            Option<i64>,
            Option<String>,
            Option<i64>,
            Option<i64>,
            i64,
        );
        const ROW: &str =
            "SELECT state, attempt, lease_expires_at, worker, claimed_at, claim_nonce,
                                  updated_at
                           FROM tasks WHERE job_id = $1";
        let before: Row = sqlx::query_as(ROW)
            .bind(job_id.0)
            .fetch_one(node_a.pool())
            .await
            .expect("row before the claim");

        let ghost = node_a
            .claim_batch(claim(1, "node-a", NOW))
            .await
            .expect("claim on a")
            .remove(0);
        assert_eq!(ghost.lease.attempt, 1);
        assert!(ghost.lease.nonce.is_some());

        // The crash: the claim's commit never reached the disk.
        sqlx::query(
            "UPDATE tasks SET state = $2, attempt = $3, lease_expires_at = $4, worker = $5,
                              claimed_at = $6, claim_nonce = $7, updated_at = $8
             WHERE job_id = $1",
        )
        .bind(job_id.0)
        .bind(&before.0)
        .bind(before.1)
        .bind(before.2)
        .bind(&before.3)
        .bind(before.4)
        .bind(before.5)
        .bind(before.6)
        .execute(node_a.pool())
        .await
        .expect("lose the claim");

        let claimed = node_b
            .claim_batch(claim(1, "node-b", NOW + 1_000))
            .await
            .expect("claim on b")
            .remove(0);
        assert_eq!(
            (claimed.lease.task_id, claimed.lease.attempt),
            (ghost.lease.task_id, ghost.lease.attempt)
        );
        assert_ne!(claimed.lease.nonce, ghost.lease.nonce);

        let renewed = node_a
            .renew_lease(lockstep::store::RenewLease {
                tenant: tenant(),
                lease: ghost.lease,
                lease_for: Duration::from_secs(60),
                now: NOW + 2_000,
                note: None,
                logs: vec![],
            })
            .await
            .expect("renew on a");
        assert!(!renewed);
        let complete = |t: &ClaimedTask, now| CompleteBatch {
            completions: vec![success(t, Vec::new())],
            now,
            max_tasks_per_job: lockstep::spec::Limits::default().max_tasks_per_job,
        };
        assert_eq!(
            node_a
                .complete_batch(complete(&ghost, NOW + 3_000))
                .await
                .expect("complete on a"),
            vec![CompletionOutcome::Stale]
        );
        assert_eq!(
            node_b
                .complete_batch(complete(&claimed, NOW + 4_000))
                .await
                .expect("complete on b"),
            vec![CompletionOutcome::Recorded(TaskState::Succeeded)]
        );
        let events = all_events(&node_b, job_id).await;
        let ended: Vec<(EventKind, Option<String>)> = events
            .iter()
            .filter(|e| e.task_id == Some(claimed.lease.task_id))
            .map(|e| (e.kind, e.worker.clone()))
            .collect();
        assert_eq!(
            ended,
            [
                (EventKind::CompletionRefused, None),
                (EventKind::TaskSucceeded, Some("node-b".to_string())),
            ]
        );
        assert_eq!(
            node_b
                .job_state(GetJob {
                    tenant: tenant(),
                    job: job_id,
                })
                .await
                .expect("job state"),
            JobState::Succeeded
        );
    })
    .await;
}
