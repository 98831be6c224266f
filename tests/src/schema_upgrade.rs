//! Opening a database written by an earlier lockstep: the migrations added
//! since keep what its rows meant. The old database is made by running the
//! repository's own first two migrations and loading a fixture.

use crate::postgres_test_db::with_pg;
use lockstep::model::{
    EventKind, Executor, JobId, JobState, LeaseToken, Millis, TaskId, TaskState, TenantId,
};
use lockstep::store::{
    ClaimBatch, ClaimedTask, CompleteBatch, Completion, CompletionOutcome, GetJob, GetTask,
    RetryTask, Store, TaskEvents, TaskResult,
};
use sqlx::migrate::Migrator;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const FIXTURE: &str = include_str!("../fixtures/schema_0002_continue_stage.sql");
const RUNNING_ATTEMPT: &str = include_str!("../fixtures/schema_0002_running_attempt.sql");
const REVIVED_INTO_WAITING_STAGE: &str =
    include_str!("../fixtures/schema_0002_revived_into_waiting_stage.sql");

/// A directory holding only the migrations up to 0002 of `backend`.
fn migrations_up_to_0002(backend: &str) -> tempfile::TempDir {
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../migrations")
        .join(backend);
    let dir = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir(&from).expect("migrations dir") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if name.starts_with("0001_") || name.starts_with("0002_") {
            std::fs::copy(&path, dir.path().join(&name)).expect("copy migration");
        }
    }
    dir
}

async fn claim(store: &dyn Store) -> Vec<ClaimedTask> {
    store
        .claim_batch(ClaimBatch {
            tenant: Some(TenantId("local".into())),
            executor: Executor::Wasm,
            handlers: None,
            job: None,
            limit: 10,
            lease: Duration::from_secs(60),
            worker: "upgrade-test".into(),
            now: lockstep::engine::now_millis(),
        })
        .await
        .expect("claim")
}

async fn complete(store: &dyn Store, task: &ClaimedTask, result: TaskResult) {
    let outcomes = store
        .complete_batch(CompleteBatch {
            completions: vec![Completion {
                tenant: task.tenant.clone(),
                lease: task.lease,
                result,
                logs: vec![],
            }],
            now: lockstep::engine::now_millis(),
            max_tasks_per_job: lockstep::spec::Limits::default().max_tasks_per_job,
        })
        .await
        .expect("complete");
    assert!(
        matches!(outcomes[..], [CompletionOutcome::Recorded(_)]),
        "{outcomes:?}"
    );
}

/// The fixture's first task dies; under its stage's `continue` (now the
/// task's own, backfilled by migration 0003) its dependent still runs and
/// the job goes on to stage b instead of failing.
async fn the_old_continue_stage_still_continues(store: &dyn Store) {
    let first = claim(store).await;
    assert_eq!(
        first.iter().map(|t| t.lease.task_id).collect::<Vec<_>>(),
        [TaskId(1)]
    );
    complete(
        store,
        &first[0],
        TaskResult::Fatal {
            error: "broken".into(),
            output_json: None,
        },
    )
    .await;
    let second = claim(store).await;
    assert_eq!(
        second.iter().map(|t| t.lease.task_id).collect::<Vec<_>>(),
        [TaskId(2)],
        "the dependent of a dead task under continue is released"
    );
    complete(
        store,
        &second[0],
        TaskResult::Succeeded {
            output_json: "{}".into(),
            spawn: vec![],
        },
    )
    .await;
    let third = claim(store).await;
    assert_eq!(third.len(), 1);
    assert_eq!(
        (third[0].lease.task_id, third[0].stage_name.as_str()),
        (TaskId(3), "b")
    );
    let job = store
        .get_job(GetJob {
            tenant: TenantId("local".into()),
            job: JobId(1),
        })
        .await
        .expect("job");
    assert_eq!(job.state, JobState::Running);
    let dead = job.stages[0]
        .counts
        .iter()
        .find(|(s, _)| *s == TaskState::Dead)
        .map(|(_, n)| *n);
    assert_eq!(dead, Some(1));
}

/// A SQLite database at migration 0002 holding `fixture`, then opened (and
/// so migrated) by this lockstep.
async fn upgraded_sqlite(dir: &tempfile::TempDir, fixture: &'static str) -> Arc<dyn Store> {
    let url = format!("sqlite://{}", dir.path().join("old.db").display());
    let old = migrations_up_to_0002("sqlite");
    {
        let options = <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(&url)
            .expect("url")
            .create_if_missing(true)
            .foreign_keys(true);
        let pool = sqlx::SqlitePool::connect_with(options)
            .await
            .expect("old database");
        Migrator::new(old.path())
            .await
            .expect("old migrations")
            .run(&pool)
            .await
            .expect("migrate to 0002");
        sqlx::raw_sql(fixture)
            .execute(&pool)
            .await
            .expect("fixture");
        pool.close().await;
    }
    lockstep::store::open(&url).await.expect("upgrade")
}

/// The same on PostgreSQL, in the database at `url`.
async fn upgraded_postgres(url: &str, fixture: &'static str) -> Arc<dyn Store> {
    let old = migrations_up_to_0002("postgres");
    let pool = sqlx::PgPool::connect(url).await.expect("old database");
    Migrator::new(old.path())
        .await
        .expect("old migrations")
        .run(&pool)
        .await
        .expect("migrate to 0002");
    sqlx::raw_sql(fixture)
        .execute(&pool)
        .await
        .expect("fixture");
    pool.close().await;
    lockstep::store::open(url).await.expect("upgrade")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_database_from_0002_keeps_a_continue_stages_meaning() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = upgraded_sqlite(&dir, FIXTURE).await;
    the_old_continue_stage_still_continues(store.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_database_from_0002_keeps_a_continue_stages_meaning() {
    with_pg(|db| async move {
        let store = upgraded_postgres(&db.url, FIXTURE).await;
        the_old_continue_stage_still_continues(store.as_ref()).await;
    })
    .await;
}

/// An attempt claimed before migration 0009 (its claim an event, the row
/// without a claim time) ends after it: the old `task_claimed` event still
/// reads as one, and the end carries the attempt and worker the row knew
/// (Invariant 42), with no claim time.
async fn an_attempt_claimed_before_0009_ends_after_it(store: &dyn Store) {
    let local = TenantId("local".into());
    let task = TaskId(1);
    let row = store
        .get_task(GetTask {
            tenant: local.clone(),
            task,
        })
        .await
        .expect("task");
    assert_eq!(
        (
            row.state,
            row.attempt,
            row.worker.as_deref(),
            row.claimed_at
        ),
        (TaskState::Running, 1, Some("old-worker"), None)
    );
    let now = lockstep::engine::now_millis();
    let outcomes = store
        .complete_batch(CompleteBatch {
            completions: vec![Completion {
                tenant: local.clone(),
                // Claimed before migration 0010: no nonce in the row, none
                // in the token.
                lease: LeaseToken {
                    task_id: task,
                    attempt: 1,
                    nonce: None,
                },
                result: TaskResult::Succeeded {
                    output_json: "{}".into(),
                    spawn: vec![],
                },
                logs: vec![],
            }],
            now,
            max_tasks_per_job: lockstep::spec::Limits::default().max_tasks_per_job,
        })
        .await
        .expect("complete");
    assert_eq!(
        outcomes,
        [CompletionOutcome::Recorded(TaskState::Succeeded)]
    );
    type Told = (
        EventKind,
        Option<String>,
        Millis,
        Option<i32>,
        Option<String>,
        Option<Millis>,
    );
    let told: Vec<Told> = store
        .task_events(TaskEvents {
            tenant: local,
            task,
            limit: 10,
        })
        .await
        .expect("task events")
        .into_iter()
        .map(|e| (e.kind, e.detail, e.at, e.attempt, e.worker, e.claimed_at))
        .collect();
    assert_eq!(
        told,
        [
            (
                EventKind::TaskClaimed,
                Some("attempt 1 by old-worker".to_string()),
                5,
                None,
                None,
                None
            ),
            (
                EventKind::TaskSucceeded,
                None,
                now,
                Some(1),
                Some("old-worker".to_string()),
                None
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_attempt_claimed_before_0009_ends_after_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = upgraded_sqlite(&dir, RUNNING_ATTEMPT).await;
    an_attempt_claimed_before_0009_ends_after_it(store.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_attempt_claimed_before_0009_ends_after_it() {
    with_pg(|db| async move {
        let store = upgraded_postgres(&db.url, RUNNING_ATTEMPT).await;
        an_attempt_claimed_before_0009_ends_after_it(store.as_ref()).await;
    })
    .await;
}

/// A task the old `retry` left pending in a stage that never opened
/// (Invariant 44 did not hold) waits blocked after migration 0013, since the
/// claim no longer checks the stage; retrying the dead task of the stage
/// before it then runs the job to the end in stage order.
async fn a_task_revived_into_a_waiting_stage_waits_after_0013(store: &dyn Store) {
    let local = TenantId("local".into());
    let state = |task| {
        let local = local.clone();
        async move {
            store
                .get_task(GetTask {
                    tenant: local,
                    task: TaskId(task),
                })
                .await
                .expect("task")
                .state
        }
    };
    assert_eq!(state(2).await, TaskState::Blocked);
    assert!(claim(store).await.is_empty(), "stage b has not opened");
    let revived = store
        .retry_task(RetryTask {
            tenant: local.clone(),
            task: TaskId(1),
            now: lockstep::engine::now_millis(),
            by: None,
        })
        .await
        .expect("retry the dead task");
    assert_eq!(revived, TaskState::Pending);
    let mut order = Vec::new();
    loop {
        let claimed = claim(store).await;
        let Some(task) = claimed.first() else { break };
        assert_eq!(claimed.len(), 1, "one stage, one task at a time");
        order.push(task.lease.task_id.0);
        complete(
            store,
            task,
            TaskResult::Succeeded {
                output_json: "{}".into(),
                spawn: vec![],
            },
        )
        .await;
    }
    assert_eq!(order, [1, 2]);
    let job = store
        .job_state(GetJob {
            tenant: local,
            job: JobId(1),
        })
        .await
        .expect("job");
    assert_eq!(job, JobState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_task_revived_into_a_waiting_stage_waits_after_0013() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = upgraded_sqlite(&dir, REVIVED_INTO_WAITING_STAGE).await;
    a_task_revived_into_a_waiting_stage_waits_after_0013(store.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_task_revived_into_a_waiting_stage_waits_after_0013() {
    with_pg(|db| async move {
        let store = upgraded_postgres(&db.url, REVIVED_INTO_WAITING_STAGE).await;
        a_task_revived_into_a_waiting_stage_waits_after_0013(store.as_ref()).await;
    })
    .await;
}
