//! Crash safety and multi-process correctness with real `lockstep serve`
//! processes on one SQLite file: SIGKILL at random moments, restart, and the
//! job still finishes exactly once — no task lost, none succeeded twice, no
//! stage opened twice. And SQLite's group commit: a commit is read in this
//! process only once it is durable, and the log it syncs stays one file.

use crate::engine_flow::aggregate_output;
use crate::harness::{Harness, cli_bin, test_cache_dir};
use lockstep::guest_artifacts;
use lockstep::model::{EventKind, JobId, JobState};
use rand::Rng;
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Stage 1 spawns `count` no-op tasks into stage 2 (in fan-out tasks of at
/// most 10,000 each, the spawn limit per task); stage 3 sums them.
pub fn fanin_job(count: u32) -> String {
    let fanouts: Vec<String> = (0..count.div_ceil(10_000))
        .map(|i| {
            let n = (count - i * 10_000).min(10_000);
            format!("{{ handler = \"example:fanout\", input = {{ count = {n}, stage = \"process\", handler = \"example:noop\" }} }}")
        })
        .collect();
    let fanouts = fanouts.join(", ");
    format!(
        r#"
name = "crash-{count}"
[[stages]]
name = "analyze"
tasks = [{fanouts}]
[[stages]]
name = "process"
[[stages]]
name = "aggregate"
tasks = [{{ handler = "example:sum", input = {{ from = "process", field = "value" }} }}]
"#
    )
}

pub fn spawn_serve(h: &Harness, workers: u32) -> Child {
    let log = std::fs::File::create(
        h.dir
            .path()
            .join(format!("serve-{}.log", rand::rng().random::<u32>())),
    )
    .expect("serve log file");
    // Warnings (lock conflicts, lost connections) land in the log for the tests to read.
    Command::new(cli_bin())
        .args(["--db", &h.db_url])
        .args(["--plugins", guest_artifacts::EXAMPLES_DIR])
        .arg("--cache-dir")
        .arg(test_cache_dir())
        .args([
            "serve",
            "--workers",
            &workers.to_string(),
            "--lease-secs",
            "2",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start lockstep serve")
}

pub fn stop(mut child: Child) {
    // SIGTERM: let it finish what it runs; SIGKILL if it does not within 30 s.
    let pid = child.id() as libc::pid_t;
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on a child we spawned and have not yet reaped.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    for _ in 0..300 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The exactly-once guarantees every multi-process run must keep.
pub async fn assert_finished_exactly_once(h: &Harness, job: JobId, count: u32) {
    let done = h.engine.progress(&h.tenant, job).await.expect("progress");
    assert_eq!(done.job.state, JobState::Succeeded, "{:?}", done.job.error);
    assert_eq!(done.job.stages[1].total, i64::from(count));
    let events = h.events(job).await;
    let mut successes: HashMap<i64, u32> = HashMap::new();
    let mut opened = Vec::new();
    for e in &events {
        match e.kind {
            EventKind::TaskSucceeded => {
                *successes.entry(e.task_id.expect("task").0).or_default() += 1;
            }
            EventKind::StageOpened => opened.push(e.stage_position.expect("stage")),
            _ => {}
        }
    }
    let fanouts = count.div_ceil(10_000) as usize;
    assert_eq!(
        successes.len(),
        count as usize + fanouts + 1,
        "every task succeeded"
    );
    assert!(
        successes.values().all(|n| *n == 1),
        "a task was recorded as succeeded twice"
    );
    assert_eq!(opened, vec![0, 1, 2], "each stage opened exactly once");
    // Fan-out i spawns the values 1..=n_i.
    let sum: u64 = (0..fanouts as u32)
        .map(|i| u64::from((count - i * 10_000).min(10_000)))
        .map(|n| n * (n + 1) / 2)
        .sum();
    assert_eq!(
        aggregate_output(h, job).await,
        serde_json::json!({ "count": count, "sum": sum })
    );
}

pub async fn wait_for(h: &Harness, job: JobId, mut until: impl FnMut(i64, bool) -> bool) {
    for _ in 0..6000 {
        let p = h.engine.progress(&h.tenant, job).await.expect("progress");
        if until(p.done, p.job.state.is_terminal()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("job {} made no progress in 120 s", job.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_killed_three_times_mid_job_still_finishes_exactly_once() {
    let h = Harness::new().await;
    let job = h.submit(&fanin_job(10_000)).await;
    let mut rng = rand::rng();
    let mut thresholds: Vec<i64> = (0..3).map(|_| rng.random_range(500..6000)).collect();
    thresholds.sort();
    let mut child = spawn_serve(&h, 4);
    let mut kills = 0;
    for threshold in thresholds {
        let mut finished = false;
        wait_for(&h, job, |done, terminal| {
            finished = terminal;
            done >= threshold || terminal
        })
        .await;
        assert!(
            !finished,
            "the job finished before kill {} could happen",
            kills + 1
        );
        child.kill().expect("SIGKILL lockstep serve");
        child.wait().expect("reap");
        kills += 1;
        child = spawn_serve(&h, 4);
    }
    wait_for(&h, job, |_, terminal| terminal).await;
    stop(child);
    assert_eq!(kills, 3);
    assert_finished_exactly_once(&h, job, 10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_serve_processes_on_one_database_finish_a_job_exactly_once() {
    let h = Harness::new().await;
    let job = h.submit(&fanin_job(5_000)).await;
    let a = spawn_serve(&h, 8);
    let b = spawn_serve(&h, 8);
    wait_for(&h, job, |_, terminal| terminal).await;
    stop(a);
    stop(b);
    assert_finished_exactly_once(&h, job, 5_000).await;
}

/// A one-task job, submitted (a durable write).
async fn submit_one(
    store: &lockstep::store::sqlite::SqliteStore,
    tenant: &lockstep::model::TenantId,
) -> JobId {
    use lockstep::model::{Executor, NewStage, NewTask, OnFailure, SubmitJob};
    use lockstep::store::Store;
    let task = NewTask {
        key: None,
        handler: "work".into(),
        executor: Executor::Wasm,
        input_json: "{}".into(),
        max_attempts: 3,
        timeout_ms: 60_000,
        depends_on: Vec::new(),
        agent_json: None,
        on_failure: OnFailure::FailJob,
    };
    store
        .submit_job(SubmitJob {
            tenant: tenant.clone(),
            name: "durability".into(),
            idempotency_key: "durability".into(),
            spec_json: "{}".into(),
            stages: vec![NewStage {
                name: "only".into(),
                tasks: vec![task],
                on_failure: OnFailure::FailJob,
                max_attempts: None,
                timeout_ms: None,
            }],
            now: 1,
        })
        .await
        .expect("submit")
        .job_id
}

/// Group commit on SQLite: a completion commits without waiting for the
/// disk, then waits for a sync of the log, and so does every read in this
/// process that could see it (a connection of its own — another process —
/// sees it at once); a claim does not wait. Syncs are held back by the
/// store's hook, so each step is an exact state, not a race (Invariant 43).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_commit_is_read_only_after_the_sync_that_makes_it_durable() {
    use lockstep::model::{Executor, TaskState, TenantId};
    use lockstep::store::{
        ClaimBatch, CompleteBatch, Completion, CompletionOutcome, GetJob, GetTask, Store,
        TaskResult,
    };
    use sqlx::Connection as _;
    crate::store_conformance::with_sqlite_store(|store| async move {
        let tenant = TenantId("acme".into());
        let job = submit_one(&store, &tenant).await;
        let held = store.hold_syncs().await;
        let claimed = store
            .claim_batch(ClaimBatch {
                tenant: None,
                executor: Executor::Wasm,
                handlers: None,
                job: None,
                limit: 1,
                lease: Duration::from_secs(60),
                worker: "w".into(),
                now: 2,
            })
            .await
            .expect("a claim returns while syncs are held");
        assert_eq!(claimed.len(), 1);
        let task = claimed[0].lease.task_id;
        let get_task = {
            let (store, tenant) = (store.clone(), tenant.clone());
            move || {
                let (store, tenant) = (store.clone(), tenant.clone());
                async move {
                    store
                        .get_task(GetTask { tenant, task })
                        .await
                        .expect("get task")
                        .state
                }
            }
        };
        assert_eq!(
            get_task().await,
            TaskState::Running,
            "a claim is read without waiting for a sync"
        );
        let complete = tokio::spawn({
            let (store, tenant, lease) = (store.clone(), tenant.clone(), claimed[0].lease);
            async move {
                store
                    .complete_batch(CompleteBatch {
                        completions: vec![Completion {
                            tenant,
                            lease,
                            result: TaskResult::Succeeded {
                                output_json: "1".into(),
                                spawn: Vec::new(),
                            },
                            logs: Vec::new(),
                        }],
                        now: 3,
                        max_tasks_per_job: lockstep::spec::Limits::default().max_tasks_per_job,
                    })
                    .await
                    .expect("complete")
            }
        });
        // Another connection to the file sees the commit once it is written.
        let path = store.path().to_string();
        let mut other = sqlx::SqliteConnection::connect(&format!("sqlite://{path}"))
            .await
            .expect("another connection");
        loop {
            let state: String = sqlx::query_scalar("SELECT state FROM tasks WHERE id = $1")
                .bind(task.0)
                .fetch_one(&mut other)
                .await
                .expect("read the task elsewhere");
            if state == "succeeded" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        other.close().await.expect("close");
        // Reads begun now, one statement and one snapshot, could see it:
        // they wait for the sync, like the completion.
        let read = tokio::spawn(get_task());
        let snapshot = tokio::spawn({
            let (store, tenant) = (store.clone(), tenant.clone());
            async move {
                store
                    .get_job(GetJob { tenant, job })
                    .await
                    .expect("get job")
                    .state
            }
        });
        // Until both reads wait beside the completion — or one returned,
        // which fails below.
        while store.waiting_for_sync() < 3 && !read.is_finished() && !snapshot.is_finished() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(store.waiting_for_sync(), 3);
        assert!(!complete.is_finished(), "the completion waits for its sync");
        assert!(!read.is_finished(), "a read waits for the sync");
        assert!(!snapshot.is_finished(), "a snapshot waits for the sync");
        drop(held);
        assert_eq!(
            complete.await.expect("completion"),
            vec![CompletionOutcome::Recorded(TaskState::Succeeded)]
        );
        assert_eq!(read.await.expect("read"), TaskState::Succeeded);
        assert_eq!(
            snapshot.await.expect("snapshot"),
            lockstep::model::JobState::Succeeded
        );
        assert_eq!(store.waiting_for_sync(), 0);
    })
    .await;
}

/// The group commit syncs the `-wal` file by a handle of its own: SQLite
/// keeps that file (the same inode) through checkpoints and restarts while
/// the database is open, even when a checkpoint truncates it to nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_one_wal_file_through_checkpoints_and_restarts() {
    use lockstep::model::TenantId;
    use lockstep::store::{CreateToken, Store};
    use std::os::unix::fs::MetadataExt as _;
    crate::store_conformance::with_sqlite_store(|store| async move {
        let wal = format!("{}-wal", store.path());
        let inode = || std::fs::metadata(&wal).expect("the -wal file").ino();
        let first = inode();
        let tenant = TenantId("acme".into());
        for round in 0..3 {
            // Enough pages for SQLite's own checkpoint (1000 pages) and the
            // restart of the log after it.
            for n in 0..300 {
                store
                    .create_token(CreateToken {
                        tenant: tenant.clone(),
                        token_hash: format!("{round}-{n}"),
                        label: Some(format!("r{round}-{n}-{}", "x".repeat(3000))),
                        role: lockstep::model::TokenRole::Read,
                        now: 1,
                    })
                    .await
                    .expect("a durable write");
            }
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(store.writer())
                .await
                .expect("checkpoint");
            assert_eq!(std::fs::metadata(&wal).expect("-wal").len(), 0);
            assert_eq!(inode(), first, "round {round}");
        }
    })
    .await;
}

// A sync of the log that fails is never trusted to be made good by a later
// one (the kernel may have dropped the pages it failed to write): the store
// answers every durable write and read with the first failure until a
// restart. The failure is a real one from the operating system: the log's
// name is made a symlink to itself, so looking it up before the sync fails
// (ELOOP); a failing disk (EIO from fdatasync) cannot be had on these
// machines, and it takes the same path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_failed_log_sync_stops_writes_and_reads_until_a_restart() {
    use lockstep::model::{TenantId, TokenRole};
    use lockstep::store::{CreateToken, GetJob, Store, StoreError};
    crate::store_conformance::with_sqlite_store(|store| async move {
        let tenant = TenantId("acme".into());
        let token = |n: u32| CreateToken {
            tenant: tenant.clone(),
            token_hash: format!("hash-{n}"),
            label: None,
            role: TokenRole::Read,
            now: 1,
        };
        let job = submit_one(&store, &tenant).await;
        store.create_token(token(1)).await.expect("a durable write");

        let wal = format!("{}-wal", store.path());
        let aside = format!("{wal}.aside");
        std::fs::rename(&wal, &aside).expect("move the log's name aside");
        std::os::unix::fs::symlink(&wal, &wal).expect("a symlink to itself");
        let expected = format!(
            "the SQLite log {wal} could not be synced to disk (Too many levels of symbolic \
             links (os error 40)): what this process committed since its last good sync may \
             be lost, so it writes and reads no more; restart lockstep, which recovers the \
             database from what reached the disk"
        );
        let failed = store
            .create_token(token(2))
            .await
            .expect_err("the sync of this write fails");
        assert!(
            matches!(failed, StoreError::LogSyncFailed { .. }),
            "{failed:?}"
        );
        assert_eq!(failed.to_string(), expected);

        // The name is back: a sync would succeed now, and must not be asked.
        std::fs::remove_file(&wal).expect("remove the symlink");
        std::fs::rename(&aside, &wal).expect("restore the log's name");
        let again = store
            .create_token(token(3))
            .await
            .expect_err("no durable write after a failed sync");
        assert_eq!(again.to_string(), expected);
        let read = store
            .get_job(GetJob {
                tenant: tenant.clone(),
                job,
            })
            .await
            .expect_err("no read after a failed sync");
        assert_eq!(read.to_string(), expected);

        // A restarted process opens the database and reads it.
        let restarted = lockstep::store::sqlite::SqliteStore::open(
            &format!("sqlite://{}", store.path()),
            lockstep::store::sqlite::SqliteOptions::default(),
        )
        .await
        .expect("reopen after a failed sync");
        let read = restarted
            .get_job(GetJob { tenant, job })
            .await
            .expect("a read after the restart");
        assert_eq!(read.job_id, job);
    })
    .await;
}
