//! Workers: claim ready tasks in batches under a lease, run each in the
//! sandbox, and record results through one completer that commits many
//! completions per transaction (group commit).
//!
//! Three loops per pool: the claimer (fills free slots with one `claim_batch`),
//! the completer (drains finished runs into one `complete_batch`), and the
//! rescuer (returns expired leases — of this or a dead process — to `pending`).
//!
//! **Backpressure:** a slot is taken by a claim and given back only when the
//! task's completion has committed (or was given up on), not when its
//! handler returns. Claimed-but-unrecorded tasks are therefore bounded by the
//! slots: when recording falls behind, claiming waits, and no load can leave
//! thousands of finished tasks waiting for a commit while their leases run
//! out.
//!
//! **Invariant:** no database transaction is open while a handler runs.
//! **Invariant:** a result is recorded only through the fenced completion;
//! if it is refused (stale lease) it is logged and dropped.

use super::backoff::retry_delay;
use super::task_context::JobTaskContext;
use super::{Engine, now_millis};
use crate::model::Executor;
use crate::plugin::RunRequest;
use crate::store::{
    ClaimBatch, ClaimedTask, CompleteBatch, Completion, CompletionOutcome, RenewLease,
    RescueExpiredLeases, SpawnTask, TaskResult,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

/// Most completions committed in one transaction.
const MAX_GROUP_COMMIT: usize = 2048;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Tasks run concurrently by this process.
    pub slots: usize,
    /// Most tasks claimed in one statement.
    pub batch: u32,
    /// Lease taken by a claim; renewed while a run lasts longer than a third of it.
    pub lease: Duration,
    /// Poll interval when no work was found (other processes may add work).
    pub idle_poll: Duration,
    /// How often expired leases are looked for.
    pub rescue_every: Duration,
    /// Name recorded with claims (host:pid by default).
    pub worker_id: String,
    /// What runs a claimed task: its plugin in the sandbox, always, except
    /// in `lockstep bench throughput --handler host-noop`.
    pub execution: Execution,
}

/// What runs a claimed task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Execution {
    /// The task's registered plugin, in a fresh sandbox.
    #[default]
    Sandbox,
    /// Benchmarks only: the same claim, lease and completion path with the
    /// sandbox left out, each task succeeding at once with output `null`, to
    /// tell the store's cost from the sandbox's.
    HostNoop,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            slots: 64,
            batch: 256,
            lease: Duration::from_secs(60),
            idle_poll: Duration::from_millis(50),
            rescue_every: Duration::from_secs(1),
            worker_id: format!("pid-{}", std::process::id()),
            execution: Execution::Sandbox,
        }
    }
}

/// Counters a pool keeps about itself (for logs, `serve` and benchmarks).
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub claimed: AtomicU64,
    /// Claim statements that returned at least one task.
    pub claim_batches: AtomicU64,
    pub completed: AtomicU64,
    /// Group commits of completions.
    pub completion_batches: AtomicU64,
    pub stale: AtomicU64,
    pub rescued: AtomicU64,
    pub commit_errors: AtomicU64,
}

/// Running workers; dropping it does not stop them, `shutdown` does.
pub struct WorkerPool {
    stop: watch::Sender<bool>,
    handles: Vec<JoinHandle<()>>,
    pub stats: Arc<WorkerStats>,
}

impl WorkerPool {
    pub(super) fn start(engine: Arc<Engine>, config: WorkerConfig) -> WorkerPool {
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::new(WorkerStats::default());
        let (done_tx, done_rx) = mpsc::unbounded_channel::<Finished>();
        let completer = tokio::spawn(completer(engine.clone(), done_rx, stats.clone()));
        let claimer = tokio::spawn(claimer(
            engine.clone(),
            config.clone(),
            done_tx,
            stop_rx.clone(),
            stats.clone(),
        ));
        let rescuer = tokio::spawn(rescuer(engine, config, stop_rx, stats.clone()));
        WorkerPool {
            stop,
            handles: vec![claimer, rescuer, completer],
            stats,
        }
    }

    /// Stop claiming, let running tasks finish and their results commit.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for h in self.handles {
            let _ = h.await;
        }
    }
}

/// A run's completion with the slot it holds until the completion commits.
type Finished = (Completion, OwnedSemaphorePermit);

async fn claimer(
    engine: Arc<Engine>,
    config: WorkerConfig,
    done: mpsc::UnboundedSender<Finished>,
    mut stop: watch::Receiver<bool>,
    stats: Arc<WorkerStats>,
) {
    let slots = Arc::new(Semaphore::new(config.slots.max(1)));
    let handlers = engine.plugins().handler_names();
    // Backends that can push wake-ups (Postgres LISTEN/NOTIFY) shorten the
    // idle wait; polling stays the fallback because a signal can be lost.
    let ready = engine.store().ready_signal();
    let mut running = tokio::task::JoinSet::new();
    let mut db_backoff = Duration::from_millis(50);
    loop {
        if *stop.borrow() {
            break;
        }
        // Wait for one free slot, then take every other free one up to a batch.
        let first = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.changed() => break,
        };
        let mut permits = vec![first];
        while permits.len() < config.batch as usize {
            match slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let claimed = engine
            .store()
            .claim_batch(ClaimBatch {
                tenant: None,
                executor: Executor::Wasm,
                handlers: Some(handlers.clone()),
                job: None,
                limit: permits.len() as u32,
                lease: config.lease,
                worker: config.worker_id.clone(),
                now: now_millis(),
            })
            .await;
        let claimed = match claimed {
            Ok(c) => {
                db_backoff = Duration::from_millis(50);
                c
            }
            Err(e) => {
                tracing::warn!(error = %e, "claiming tasks failed; backing off");
                drop(permits);
                tokio::select! {
                    _ = tokio::time::sleep(db_backoff) => {},
                    _ = stop.changed() => break,
                }
                db_backoff = (db_backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if claimed.is_empty() {
            drop(permits);
            let pushed = async {
                match &ready {
                    Some(signal) => signal.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(config.idle_poll) => {},
                _ = engine.wake().notified() => {},
                _ = pushed => {},
                _ = stop.changed() => break,
            }
            continue;
        }
        stats
            .claimed
            .fetch_add(claimed.len() as u64, Ordering::Relaxed);
        stats.claim_batches.fetch_add(1, Ordering::Relaxed);
        for (task, permit) in claimed.into_iter().zip(permits.drain(..)) {
            let engine = engine.clone();
            let done = done.clone();
            let lease = config.lease;
            let execution = config.execution;
            running.spawn(async move {
                let completion = match execution {
                    Execution::Sandbox => run_task(&engine, task, lease).await,
                    Execution::HostNoop => host_noop(task),
                };
                // The slot goes with the completion: the completer frees it
                // once the completion is recorded.
                let _ = done.send((completion, permit));
            });
        }
        // Reap finished runs so the set does not grow without bound.
        while running.try_join_next().is_some() {}
    }
    // Let in-flight runs finish; their results still commit.
    while running.join_next().await.is_some() {}
}

async fn run_task(engine: &Arc<Engine>, task: ClaimedTask, lease: Duration) -> Completion {
    let cx = Arc::new(JobTaskContext::new(
        engine.store().clone(),
        task.tenant.clone(),
        task.job_id,
        task.lease.task_id,
        task.stage_position,
    ));
    let req = RunRequest {
        handler: task.handler.clone(),
        job_id: task.job_id.0 as u64,
        task_id: task.lease.task_id.0 as u64,
        stage: task.stage_name.clone(),
        attempt: task.lease.attempt as u32,
        input_json: task.input_json.clone(),
        timeout: Duration::from_millis(task.timeout_ms.max(1) as u64),
    };
    let run = engine.plugins().run(req, cx.clone());
    tokio::pin!(run);
    // Renew the lease while a long run goes on, so it is not rescued from under us.
    let renew_every = lease / 3;
    let mut renew =
        tokio::time::interval_at(tokio::time::Instant::now() + renew_every, renew_every);
    let result = loop {
        tokio::select! {
            r = &mut run => break r,
            _ = renew.tick() => {
                let held = engine.store().renew_lease(RenewLease {
                    tenant: task.tenant.clone(),
                    lease: task.lease,
                    lease_for: lease,
                    now: now_millis(),
                    note: None,
                }).await;
                if let Ok(false) = held {
                    tracing::warn!(task = task.lease.task_id.0, "lease lost while running; the result will be refused");
                }
            }
        }
    };
    let result = match result {
        Ok(outcome) => match spawns_for(engine, &task, outcome.spawn) {
            Ok(spawn) => TaskResult::Succeeded {
                output_json: outcome.output,
                spawn,
            },
            Err(error) => TaskResult::Fatal { error },
        },
        Err(failure) if !failure.is_retryable() => TaskResult::Fatal {
            error: failure.to_string(),
        },
        Err(failure) => TaskResult::Retryable {
            error: failure.to_string(),
            retry_after: retry_delay(
                task.lease.attempt,
                engine.config().retry_base,
                engine.config().retry_cap,
            ),
        },
    };
    Completion {
        tenant: task.tenant,
        lease: task.lease,
        result,
        logs: cx.take_logs(),
    }
}

/// A claimed task's completion as if its handler returned `null` at once.
fn host_noop(task: ClaimedTask) -> Completion {
    Completion {
        tenant: task.tenant,
        lease: task.lease,
        result: TaskResult::Succeeded {
            output_json: "null".to_string(),
            spawn: Vec::new(),
        },
        logs: Vec::new(),
    }
}

/// Spawned tasks must name a registered handler and match its input schema,
/// or the spawning task fails fatally: a task for an unknown handler would
/// otherwise wait forever.
fn spawns_for(
    engine: &Engine,
    task: &ClaimedTask,
    spawns: Vec<crate::plugin::Spawn>,
) -> Result<Vec<SpawnTask>, String> {
    let plugins = engine.plugins();
    let mut out = Vec::with_capacity(spawns.len());
    for (i, s) in spawns.into_iter().enumerate() {
        let input: serde_json::Value = serde_json::from_str(&s.input)
            .map_err(|e| format!("spawned task {i} has input that is not JSON: {e}"))?;
        plugins.validate_input(&s.handler, &input).map_err(|e| {
            format!(
                "spawned task {i} for handler {:?} was rejected: {e}",
                s.handler
            )
        })?;
        out.push(SpawnTask {
            stage_name: s.stage,
            handler: s.handler,
            input_json: s.input,
            max_attempts: task.max_attempts,
            timeout_ms: task.timeout_ms,
        });
    }
    Ok(out)
}

async fn completer(
    engine: Arc<Engine>,
    mut done: mpsc::UnboundedReceiver<Finished>,
    stats: Arc<WorkerStats>,
) {
    let mut buf = Vec::with_capacity(MAX_GROUP_COMMIT);
    while done.recv_many(&mut buf, MAX_GROUP_COMMIT).await > 0 {
        // The slots are freed when this batch is recorded (or given up on),
        // at the end of this iteration.
        let (batch, _slots): (Vec<Completion>, Vec<OwnedSemaphorePermit>) =
            std::mem::take(&mut buf).into_iter().unzip();
        let n = batch.len() as u64;
        let mut attempt = 0u32;
        loop {
            match engine
                .store()
                .complete_batch(CompleteBatch {
                    completions: batch.clone(),
                    now: now_millis(),
                })
                .await
            {
                Ok(outcomes) => {
                    let stale = outcomes
                        .iter()
                        .filter(|o| matches!(o, CompletionOutcome::Stale))
                        .count() as u64;
                    if stale > 0 {
                        tracing::info!(
                            stale,
                            "late completions refused: their leases had expired and the tasks were taken over"
                        );
                    }
                    stats.stale.fetch_add(stale, Ordering::Relaxed);
                    stats.completed.fetch_add(n - stale, Ordering::Relaxed);
                    stats.completion_batches.fetch_add(1, Ordering::Relaxed);
                    engine.wake().notify_waiters();
                    break;
                }
                Err(e) => {
                    stats.commit_errors.fetch_add(1, Ordering::Relaxed);
                    attempt += 1;
                    // Keep trying: the leases will expire and the tasks be rescued
                    // anyway, but a transient error should not cost a re-run.
                    let wait = Duration::from_millis(50u64 << attempt.min(7));
                    tracing::warn!(error = %e, attempt, "recording completions failed; retrying in {wait:?}");
                    if attempt >= 20 {
                        tracing::error!(
                            completions = n,
                            "giving up on a batch of completions; their tasks will be re-run after their leases expire"
                        );
                        break;
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

async fn rescuer(
    engine: Arc<Engine>,
    config: WorkerConfig,
    mut stop: watch::Receiver<bool>,
    stats: Arc<WorkerStats>,
) {
    loop {
        let rescued = engine
            .store()
            .rescue_expired_leases(RescueExpiredLeases {
                now: now_millis(),
                retry_after: engine.config().retry_base,
                limit: 10_000,
            })
            .await;
        match rescued {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(rescued = n, "expired leases returned to pending");
                stats.rescued.fetch_add(n, Ordering::Relaxed);
                engine.wake().notify_waiters();
            }
            Err(e) => tracing::warn!(error = %e, "rescuing expired leases failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(config.rescue_every) => {},
            _ = stop.changed() => break,
        }
    }
}
