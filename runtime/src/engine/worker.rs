//! Workers: claim ready tasks in batches under a lease, run each in the
//! sandbox, and record results through one completer that commits many
//! completions per transaction (group commit).
//!
//! Three loops per pool: the claimer (fills free slots with one `claim_batch`),
//! the completer (drains finished runs into one `complete_batch`), and the
//! rescuer (returns expired leases — of this or a dead process — to `pending`).
//!
//! Stopping ([`WorkerPool::stop`]) is bounded: claiming stops, tasks claimed
//! but still waiting for a plugin slot are handed back at once (unrun and
//! uncharged), running ones get a grace period and are then interrupted (a
//! retryable failure that says so), and every result is committed.
//!
//! **Run slots and the recording budget.** A claim takes, per task, a run
//! slot and a unit of the recording budget. The run slot (`--workers`, the
//! sandboxes running at once) is given back when the handler returns; the
//! unit of budget ([`WorkerConfig::recording_budget`]: the run slots plus
//! one claim batch) only when the task's completion has committed (or was
//! given up on). A claim takes at most as many tasks as there are free run
//! slots *and* free budget. So the next batch runs while the last one's
//! commit syncs, yet claimed-but-unrecorded tasks stay bounded: when
//! recording falls behind, claiming waits (backpressure, issue 13), and no
//! load can leave thousands of finished tasks waiting for a commit while
//! their leases run out.
//!
//! On SQLite, whose writes run one at a time and whose commits are made
//! durable by a sync outside the writer, two group commits may be under way
//! at once: the next one commits while the last one's sync runs, and one
//! sync covers both (measured: +39% tasks/s at 128 slots, issue 13).
//!
//! A group commit waits, at most [`BURST_WAIT`], for the runs still going,
//! so the tasks of one claim commit together (on SQLite each commit syncs the
//! log, a few milliseconds whatever its size), and their budget goes back to
//! the claimer as one.
//!
//! Likewise a claim made while runs still hold most of the slots waits, at
//! most [`CLAIM_GATHER`], for half of them to come back, so that one claim
//! takes many tasks: what surrounds a claim's statement (a transaction, the
//! hand-offs between the writer's thread and the runtime, a group commit for
//! its ends) is paid per claim (at 128 slots claims took ~65 tasks, about
//! half the slots; with the wait ~88 with WASM and ~120 with the host no-op,
//! −13% and −17% CPU per task, issue 13). An idle pool claims at once.
//!
//! A group commit holds at most [`MAX_GROUP_COMMIT`] completions and
//! [`GROUP_COMMIT_BYTES`] of their outputs, errors, spawned inputs and log
//! lines: each is copied a few times on its way into the database, so bytes,
//! not only count, bound what a commit costs in memory.
//!
//! A loop whose database calls fail (a full disk, a lost server) logs the
//! first failure with its cause and the recovery, not every retry.
//!
//! **Invariant 18:** no database transaction is open while a handler runs.
//! **Invariant 8:** a result is recorded only through the fenced completion;
//! if it is refused (stale lease) it is logged and dropped.
//! **Invariant 20:** a task is handed back only if its guest never started.

use super::backoff::retry_delay;
use super::metrics::Attempt;
use super::task_context::JobTaskContext;
use super::{Engine, now_millis};
use crate::limits::{MAX_ERROR_BYTES, MAX_JSON_DEPTH, check_json_depth, cut, sizes_for_comparison};
use crate::model::{Executor, LeaseToken, TenantId};
use crate::plugin::RunRequest;
use crate::store::{
    ClaimBatch, ClaimedTask, CompleteBatch, Completion, CompletionOutcome, ReleaseLeases,
    RenewLease, RescueExpiredLeases, SpawnTask, StoreError, TaskResult,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

/// Most completions committed in one transaction.
const MAX_GROUP_COMMIT: usize = 2048;

/// Most bytes of outputs, errors, spawned inputs and log lines committed in
/// one transaction (a single larger completion is committed alone).
pub const GROUP_COMMIT_BYTES: usize = 8 << 20;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Run slots: tasks run at once by this process. A slot is given back
    /// when its run ends; [`WorkerConfig::recording_budget`] bounds the
    /// claimed tasks whose ends are not recorded yet.
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

impl WorkerConfig {
    /// Most tasks claimed and not yet recorded (running, or run and waiting
    /// for their completion to commit): the run slots plus one claim batch,
    /// so a whole next batch runs while the last one's commit syncs (on
    /// SQLite the sync runs outside the writer, `store/wal_sync.rs`, so the
    /// next claim runs during it too).
    pub fn recording_budget(&self) -> usize {
        self.slots.max(1) + self.batch.max(1) as usize
    }
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
    /// Failed database calls of the claimer and the rescuer.
    pub database_errors: AtomicU64,
    /// Claimed tasks handed back unrun because the pool stopped.
    pub released: AtomicU64,
    /// Running tasks interrupted at the end of the grace period.
    pub interrupted: AtomicU64,
    /// Most runs going at once (never more than the run slots).
    pub peak_runs: AtomicU64,
}

/// Where a pool is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// No new claims; queued tasks go back; running ones may finish.
    Stopping,
    /// The grace period is over: running tasks stop now.
    Interrupting,
}

/// What ended a claimed task's turn in this process.
enum Done {
    /// Its handler ran (or was interrupted): record the result.
    Completed(Completion, Attempt),
    /// Its handler never started: hand the claim back.
    Released(TenantId, LeaseToken),
}

/// A run's end with its unit of the recording budget, held until that end
/// is recorded.
type Finished = (Done, OwnedSemaphorePermit);

/// Running workers; dropping it does not stop them, [`WorkerPool::stop`] does.
pub struct WorkerPool {
    phase: watch::Sender<Phase>,
    handles: Vec<JoinHandle<()>>,
    pub stats: Arc<WorkerStats>,
}

impl WorkerPool {
    pub(super) fn start(engine: Arc<Engine>, config: WorkerConfig) -> WorkerPool {
        let (phase, stop_rx) = watch::channel(Phase::Running);
        let stats = Arc::new(WorkerStats::default());
        let (done_tx, done_rx) = mpsc::unbounded_channel::<Finished>();
        // Claimed tasks whose run has not sent its end yet.
        let running = Arc::new(AtomicUsize::new(0));
        let completer = tokio::spawn(completer(
            engine.clone(),
            done_rx,
            running.clone(),
            stats.clone(),
        ));
        let claimer = tokio::spawn(claimer(
            engine.clone(),
            config.clone(),
            done_tx,
            running,
            stop_rx.clone(),
            stats.clone(),
        ));
        let rescuer = tokio::spawn(rescuer(engine, config, stop_rx, stats.clone()));
        WorkerPool {
            phase,
            handles: vec![claimer, rescuer, completer],
            stats,
        }
    }

    /// Stop claiming, let running tasks finish and their results commit.
    pub async fn shutdown(self) {
        self.stop(None).await;
    }

    /// Stop: no new claims; tasks claimed but waiting for a plugin slot are
    /// handed back at once; running tasks get `grace` (unbounded when
    /// `None`) and are then interrupted, each recorded as a retryable
    /// failure. Returns when every result is committed.
    pub async fn stop(self, grace: Option<Duration>) {
        let _ = self.phase.send(Phase::Stopping);
        let mut handles = self.handles.into_iter();
        // The claimer ends when its last run has ended.
        if let Some(claimer) = handles.next() {
            tokio::pin!(claimer);
            let finished = match grace {
                Some(grace) => tokio::time::timeout(grace, &mut claimer).await.is_ok(),
                None => {
                    let _ = (&mut claimer).await;
                    true
                }
            };
            if !finished {
                let _ = self.phase.send(Phase::Interrupting);
                let _ = claimer.await;
            }
        }
        for handle in handles {
            let _ = handle.await;
        }
    }
}

/// A loop's database failures, logged once per outage: the first failure at
/// error level with its cause, nothing while it keeps failing, one line when
/// it works again — an hour of full disk is two lines, not thousands.
struct Outage {
    what: &'static str,
    failures: u64,
}

impl Outage {
    fn new(what: &'static str) -> Outage {
        Outage { what, failures: 0 }
    }

    fn failed(&mut self, error: &StoreError) {
        self.failures += 1;
        if self.failures == 1 {
            tracing::error!(
                "{} failed: {error}; retrying with backoff (said again when it works)",
                self.what
            );
        }
    }

    fn recovered(&mut self) {
        if self.failures > 0 {
            tracing::warn!(
                "{} works again after {} failed attempts",
                self.what,
                self.failures
            );
            self.failures = 0;
        }
    }
}

async fn claimer(
    engine: Arc<Engine>,
    config: WorkerConfig,
    done: mpsc::UnboundedSender<Finished>,
    running: Arc<AtomicUsize>,
    mut stop: watch::Receiver<Phase>,
    stats: Arc<WorkerStats>,
) {
    // Run slots: taken by a claim, given back when the run ends.
    let slots = Arc::new(Semaphore::new(config.slots.max(1)));
    // Recording budget: taken by a claim, given back when the completion is
    // recorded (or given up on) — the bound on claimed-but-unrecorded tasks.
    let budget = Arc::new(Semaphore::new(config.recording_budget()));
    // Backends that can push wake-ups (Postgres LISTEN/NOTIFY) shorten the
    // idle wait; polling stays the fallback because a signal can be lost.
    let ready = engine.store().ready_signal();
    let mut runs = tokio::task::JoinSet::new();
    let mut db_backoff = Duration::from_millis(50);
    let mut outage = Outage::new("claiming tasks");
    loop {
        if *stop.borrow() != Phase::Running {
            break;
        }
        // Budget first: when recording falls behind, claiming waits here.
        let mut owed = tokio::select! {
            p = budget.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.changed() => break,
        };
        let mut permits = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.changed() => break,
        };
        gather_slots(&slots, &budget, &config, &mut permits, &mut owed).await;
        // Then every other free slot the budget allows, up to a batch, in
        // one step (only this loop takes permits, so both succeed).
        let more = slots
            .available_permits()
            .min(budget.available_permits())
            .min((config.batch as usize).saturating_sub(permits.num_permits()));
        if more > 0
            && let (Ok(s), Ok(b)) = (
                slots.clone().try_acquire_many_owned(more as u32),
                budget.clone().try_acquire_many_owned(more as u32),
            )
        {
            permits.merge(s);
            owed.merge(b);
        }
        // Read per claim: a plugin reload adds or removes handlers.
        // The snapshot a claim is made for is the one its tasks run on:
        // a reload between claim and run cannot strand them (Invariant 36).
        let plugins = engine.plugins();
        let handlers = plugins.handler_names();
        // Made before the claim: a wake-up sent while it runs (a stage
        // opened by a commit that the claim did not see yet) still ends the
        // idle wait below instead of being lost to it.
        let woken = engine.wake().notified();
        let pushed = ready.as_ref().map(|signal| signal.notified());
        let claimed = engine
            .store()
            .claim_batch(ClaimBatch {
                tenant: None,
                executor: Executor::Wasm,
                handlers: Some(handlers),
                job: None,
                limit: permits.num_permits() as u32,
                lease: config.lease,
                worker: config.worker_id.clone(),
                now: now_millis(),
            })
            .await;
        let claimed = match claimed {
            Ok(c) => {
                db_backoff = Duration::from_millis(50);
                outage.recovered();
                c
            }
            Err(e) => {
                stats.database_errors.fetch_add(1, Ordering::Relaxed);
                super::metrics::store_retry("claim");
                outage.failed(&e);
                drop((permits, owed));
                tokio::select! {
                    _ = tokio::time::sleep(db_backoff) => {},
                    _ = stop.changed() => break,
                }
                db_backoff = (db_backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if claimed.is_empty() {
            drop((permits, owed));
            let pushed = async {
                match pushed {
                    Some(signal) => signal.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(config.idle_poll) => {},
                _ = woken => {},
                _ = pushed => {},
                _ = stop.changed() => break,
            }
            continue;
        }
        stats
            .claimed
            .fetch_add(claimed.len() as u64, Ordering::Relaxed);
        stats.claim_batches.fetch_add(1, Ordering::Relaxed);
        super::metrics::claimed(
            now_millis(),
            claimed.iter().map(|t| (t.handler.as_str(), t.ready_at)),
        );
        // One run slot and one unit of budget per claimed task; the rest go
        // back at once, as one.
        for task in claimed {
            let limit = "a claim returns at most as many tasks as its LIMIT, the permits taken";
            let slot = permits.split(1).expect(limit);
            let unrecorded = owed.split(1).expect(limit);
            let engine = engine.clone();
            let done = done.clone();
            let lease = config.lease;
            let execution = config.execution;
            let phase = stop.clone();
            let plugins = plugins.clone();
            let ends = running.clone();
            let now_running = ends.fetch_add(1, Ordering::AcqRel) + 1;
            stats
                .peak_runs
                .fetch_max(now_running as u64, Ordering::Relaxed);
            // Boxed: the task's cell then holds a pointer, not the run's
            // whole future, which tokio would otherwise copy in and out.
            runs.spawn(Box::pin(async move {
                let ended = match execution {
                    Execution::Sandbox => run_task(&engine, &plugins, task, lease, phase).await,
                    Execution::HostNoop => {
                        let ran = Attempt {
                            handler: task.handler.clone(),
                            job: task.job_id,
                            took: Some(Duration::ZERO),
                        };
                        Done::Completed(host_noop(task), ran)
                    }
                };
                // The run slot goes back with the run's end; the budget
                // goes with the end to the completer, which gives it back
                // once that end is recorded.
                ends.fetch_sub(1, Ordering::AcqRel);
                drop(slot);
                let _ = done.send((ended, unrecorded));
            }));
        }
        // Reap finished runs so the set does not grow without bound.
        while runs.try_join_next().is_some() {}
    }
    // Let in-flight runs finish; their results still commit.
    while runs.join_next().await.is_some() {}
}

/// While runs hold more than half the run slots, wait at most
/// [`CLAIM_GATHER`] for half of them to come back, so that the next claim is
/// a large one (module doc). Besides the claimer's own, slots are held only
/// by runs, so an idle pool never waits.
async fn gather_slots(
    slots: &Arc<Semaphore>,
    budget: &Arc<Semaphore>,
    config: &WorkerConfig,
    permits: &mut OwnedSemaphorePermit,
    owed: &mut OwnedSemaphorePermit,
) {
    let half = config.slots.min(config.batch as usize) / 2;
    let wanted = half.saturating_sub(permits.num_permits());
    // Only this loop takes budget, so what is free now is still free after
    // the wait: the slots gathered can always be matched with budget.
    if wanted == 0 || slots.available_permits() >= wanted || budget.available_permits() < wanted {
        return;
    }
    let gathered = tokio::time::timeout(
        CLAIM_GATHER,
        slots.clone().acquire_many_owned(wanted as u32),
    )
    .await;
    if let Ok(Ok(gathered)) = gathered
        && let Ok(more_owed) = budget.clone().try_acquire_many_owned(wanted as u32)
    {
        permits.merge(gathered);
        owed.merge(more_owed);
    }
}

/// How long [`gather_slots`] may hold a claim back.
const CLAIM_GATHER: Duration = Duration::from_millis(1);

async fn run_task(
    engine: &Arc<Engine>,
    plugins: &crate::plugin::PluginHost,
    mut task: ClaimedTask,
    lease: Duration,
    mut phase: watch::Receiver<Phase>,
) -> Done {
    let cx = Arc::new(JobTaskContext::new(
        engine.store().clone(),
        task.tenant.clone(),
        task.job_id,
        task.lease.task_id,
        task.stage_position,
        engine.live().clone(),
        engine.agent_links().clone(),
    ));
    let req = RunRequest {
        handler: task.handler.clone(),
        job_id: task.job_id.0 as u64,
        task_id: task.lease.task_id.0 as u64,
        // Moved, not copied: nothing after the run reads them.
        stage: std::mem::take(&mut task.stage_name),
        attempt: task.lease.attempt as u32,
        input_json: std::mem::take(&mut task.input_json),
        timeout: Duration::from_millis(task.timeout_ms.max(1) as u64),
    };
    let started = std::time::Instant::now();
    let run = plugins.run(req, cx.clone());
    tokio::pin!(run);
    // Renew the lease while a long run goes on, so it is not rescued from under us.
    let renew_every = lease / 3;
    let mut renew =
        tokio::time::interval_at(tokio::time::Instant::now() + renew_every, renew_every);
    let mut handed_back_tried = false;
    // False once the pool is gone without stopping (then nothing changes).
    let mut phase_open = true;
    let result = loop {
        let now = *phase.borrow_and_update();
        // Stopping: hand the task back unless its guest already started.
        if now != Phase::Running && !handed_back_tried {
            handed_back_tried = true;
            if cx.release() {
                return Done::Released(task.tenant, task.lease);
            }
        }
        // The grace period is over: dropping the run stops the guest.
        if now == Phase::Interrupting {
            break None;
        }
        tokio::select! {
            // The run first: a short one ends at its first poll, before the
            // renewal's timer is ever registered with the runtime's wheel.
            biased;
            r = &mut run => break Some(r),
            changed = phase.changed(), if phase_open => phase_open = changed.is_ok(),
            _ = renew.tick() => {
                let held = engine.store().renew_lease(RenewLease {
                    tenant: task.tenant.clone(),
                    lease: task.lease,
                    lease_for: lease,
                    now: now_millis(),
                    note: None,
                    logs: Vec::new(),
                }).await;
                if let Ok(false) = held {
                    tracing::warn!(task = task.lease.task_id.0, "lease lost while running; the result will be refused");
                }
            }
        }
    };
    let took = started.elapsed();
    if let Some(Err(failure)) = &result {
        super::metrics::run_failed(&task.handler, failure);
    }
    let result = match result {
        None => TaskResult::Retryable {
            error: "interrupted: its lockstep process stopped and the attempt did not finish within the grace period (--shutdown-grace)".to_string(),
            retry_after: Duration::ZERO,
        },
        Some(Ok(outcome)) => match spawns_for(engine, &task, outcome.spawn) {
            Ok(spawn) => TaskResult::Succeeded {
                output_json: outcome.output,
                spawn,
            },
            Err(error) => TaskResult::Fatal {
                error,
                output_json: None,
            },
        },
        Some(Err(failure)) if !failure.is_retryable() => TaskResult::Fatal {
            error: cut(failure.to_string(), MAX_ERROR_BYTES),
            output_json: None,
        },
        Some(Err(failure)) => TaskResult::Retryable {
            error: cut(failure.to_string(), MAX_ERROR_BYTES),
            retry_after: retry_delay(
                task.lease.attempt,
                engine.config().retry_base,
                engine.config().retry_cap,
            ),
        },
    };
    Done::Completed(
        Completion {
            tenant: task.tenant,
            lease: task.lease,
            result,
            logs: cx.take_logs(),
        },
        Attempt {
            handler: task.handler,
            job: task.job_id,
            took: Some(took),
        },
    )
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

/// Spawned tasks must meet the rules and limits of submitted ones — stage
/// and handler names as `limits` bounds them, `--max-input-bytes`, JSON
/// nesting — name a registered handler and match its input schema, or the
/// spawning task fails fatally: a task for an unknown handler would otherwise
/// wait forever. Names are checked first, so a hostile name is never quoted
/// back into an error. (The plugin host already bounded how many there are
/// and their bytes in all.)
fn spawns_for(
    engine: &Engine,
    task: &ClaimedTask,
    spawns: Vec<crate::plugin::Spawn>,
) -> Result<Vec<SpawnTask>, String> {
    let plugins = engine.plugins();
    let max_input = engine.config().limits.max_input_bytes;
    let mut out = Vec::with_capacity(spawns.len());
    for (i, s) in spawns.into_iter().enumerate() {
        for (what, name) in [("stage name", &s.stage), ("handler name", &s.handler)] {
            crate::limits::check_name(name, crate::limits::MAX_NAME_BYTES)
                .map_err(|e| format!("spawned task {i}: {what} {e}"))?;
        }
        let size = s.input.len() as u64;
        if size > max_input {
            let (size, limit) = sizes_for_comparison(size, max_input);
            return Err(format!(
                "spawned task {i} has an input of {size}, larger than the {limit} limit (raise it with --max-input-bytes)"
            ));
        }
        check_json_depth(&s.input, MAX_JSON_DEPTH)
            .map_err(|e| format!("spawned task {i} has an input that {e}"))?;
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
    running: Arc<AtomicUsize>,
    stats: Arc<WorkerStats>,
) {
    let mut buf = Vec::with_capacity(MAX_GROUP_COMMIT);
    let outage = Arc::new(std::sync::Mutex::new(Outage::new("recording completions")));
    let in_flight_max = in_flight(engine.store_writes_one_at_a_time());
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        // One commit at a time (PostgreSQL): it ends before the next batch
        // is gathered, so everything that ended during it joins that batch.
        if in_flight_max == 1 {
            while in_flight.join_next().await.is_some() {}
        }
        if done.recv_many(&mut buf, MAX_GROUP_COMMIT).await == 0 {
            break;
        }
        gather_burst(&mut done, &mut buf, &running).await;
        // Two (SQLite): this batch commits as soon as the older of the two
        // under way is durable (measured against waiting for that before
        // gathering: slower, issue 13).
        while in_flight.len() >= in_flight_max {
            in_flight.join_next().await;
        }
        // The budget is given back when this batch is recorded (or given
        // up on), at the end of its commit, all at once: a claimer woken
        // by the first units one by one would claim a few at a time.
        let (ends, owed): (Vec<Done>, Vec<OwnedSemaphorePermit>) =
            std::mem::take(&mut buf).into_iter().unzip();
        let owed = owed.into_iter().reduce(|mut all, one| {
            all.merge(one);
            all
        });
        let engine = engine.clone();
        let stats = stats.clone();
        let outage = outage.clone();
        in_flight.spawn(async move {
            record(&engine, ends, &stats, &outage).await;
            drop(owed);
        });
    }
    while in_flight.join_next().await.is_some() {}
}

/// Group commits under way at once: one, except where commits are made
/// durable by a sync outside the writer (SQLite's group commit), where the
/// next batch commits while the last one's sync runs and one sync covers
/// both.
fn in_flight(writes_one_at_a_time: bool) -> usize {
    if writes_one_at_a_time { 2 } else { 1 }
}

/// Record one batch of ended runs: hand back the unrun, commit the rest.
async fn record(
    engine: &Engine,
    ends: Vec<Done>,
    stats: &WorkerStats,
    outage: &std::sync::Mutex<Outage>,
) {
    let mut batch = Vec::with_capacity(ends.len());
    let mut ran = Vec::with_capacity(ends.len());
    let mut handed_back = Vec::new();
    for ended in ends {
        match ended {
            Done::Completed(completion, attempt) => {
                batch.push(completion);
                ran.push(attempt);
            }
            Done::Released(tenant, lease) => handed_back.push((tenant, lease)),
        }
    }
    if !handed_back.is_empty() {
        release(engine, handed_back, stats).await;
    }
    // Large outputs are committed a few at a time: each is copied
    // several times on its way into the database, so a transaction's
    // bytes, not only its count, bound the memory a commit takes.
    let mut ran = ran.into_iter();
    for chunk in group_by_bytes(batch, GROUP_COMMIT_BYTES) {
        let chunk_ran: Vec<Attempt> = ran.by_ref().take(chunk.len()).collect();
        commit(engine, chunk, &chunk_ran, stats, outage).await;
    }
}

/// The runs of one claim end one after another, microseconds apart: while
/// runs are still going, wait for their ends too (at most [`BURST_WAIT`]),
/// so that they commit together. Each commit costs a sync of the log on
/// SQLite (~4 ms on this project's test machines) whatever its size, and
/// every slot it frees goes back to the claimer at once, so the next claim
/// is as large again.
async fn gather_burst(
    done: &mut mpsc::UnboundedReceiver<Finished>,
    buf: &mut Vec<Finished>,
    running: &AtomicUsize,
) {
    let until = tokio::time::Instant::now() + BURST_WAIT;
    while buf.len() < MAX_GROUP_COMMIT && running.load(Ordering::Acquire) > 0 {
        let more = done.recv_many(buf, MAX_GROUP_COMMIT - buf.len());
        match tokio::time::timeout_at(until, more).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// How long [`gather_burst`] may hold a group commit back.
const BURST_WAIT: Duration = Duration::from_millis(2);

/// `completions` in order, split into groups of at most `max` bytes of
/// outputs, errors, spawned inputs and log lines (a larger completion is a
/// group of its own): what the completer commits per transaction.
pub fn group_by_bytes(completions: Vec<Completion>, max: usize) -> Vec<Vec<Completion>> {
    let mut chunks: Vec<Vec<Completion>> = Vec::new();
    let mut bytes = 0usize;
    for completion in completions {
        let size = completion_bytes(&completion);
        match chunks.last_mut() {
            Some(chunk) if bytes.saturating_add(size) <= max => {
                bytes += size;
                chunk.push(completion);
            }
            _ => {
                bytes = size;
                chunks.push(vec![completion]);
            }
        }
    }
    chunks
}

fn completion_bytes(c: &Completion) -> usize {
    let result = match &c.result {
        TaskResult::Succeeded { output_json, spawn } => {
            output_json.len() + spawn.iter().map(|s| s.input_json.len()).sum::<usize>()
        }
        TaskResult::Retryable { error, .. } => error.len(),
        TaskResult::Fatal { error, output_json } => {
            error.len() + output_json.as_ref().map_or(0, String::len)
        }
        TaskResult::Skipped { output_json } => output_json.len(),
    };
    result + c.logs.iter().map(String::len).sum::<usize>()
}

/// Record one group of completions in one transaction, retrying with
/// backoff while the database fails.
async fn commit(
    engine: &Engine,
    batch: Vec<Completion>,
    ran: &[Attempt],
    stats: &WorkerStats,
    outage: &std::sync::Mutex<Outage>,
) {
    let n = batch.len() as u64;
    let mut attempt = 0u32;
    loop {
        match engine
            .store()
            .complete_batch(CompleteBatch {
                completions: batch.clone(),
                now: now_millis(),
                max_tasks_per_job: engine.config().limits.max_tasks_per_job,
            })
            .await
        {
            Ok(outcomes) => {
                outage.lock().unwrap_or_else(|p| p.into_inner()).recovered();
                super::metrics::recorded(&batch, ran, &outcomes);
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
                let interrupted = batch
                    .iter()
                    .filter(|c| matches!(&c.result, TaskResult::Retryable { error, .. } if error.starts_with("interrupted: ")))
                    .count() as u64;
                stats.interrupted.fetch_add(interrupted, Ordering::Relaxed);
                stats.stale.fetch_add(stale, Ordering::Relaxed);
                stats.completed.fetch_add(n - stale, Ordering::Relaxed);
                stats.completion_batches.fetch_add(1, Ordering::Relaxed);
                engine.wake().notify_waiters();
                break;
            }
            Err(e) => {
                stats.commit_errors.fetch_add(1, Ordering::Relaxed);
                super::metrics::store_retry("completion");
                outage.lock().unwrap_or_else(|p| p.into_inner()).failed(&e);
                attempt += 1;
                // Keep trying: the leases will expire and the tasks be rescued
                // anyway, but a transient error should not cost a re-run.
                let wait = Duration::from_millis(50u64 << attempt.min(7));
                if attempt >= 20 {
                    tracing::error!(
                        completions = n,
                        "giving up on a batch of completions after {attempt} failed attempts; their tasks run again after their leases expire"
                    );
                    break;
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Hand back claimed tasks whose guests never started (a stopping pool).
/// A failure is logged: their leases expire and they are rescued instead.
async fn release(engine: &Engine, leases: Vec<(TenantId, LeaseToken)>, stats: &WorkerStats) {
    let n = leases.len();
    match engine
        .store()
        .release_leases(ReleaseLeases {
            leases,
            now: now_millis(),
        })
        .await
    {
        Ok(released) => {
            stats.released.fetch_add(released, Ordering::Relaxed);
            engine.wake().notify_waiters();
        }
        Err(e) => tracing::error!(
            "handing back {n} unstarted tasks failed: {e}; they run again once their leases expire"
        ),
    }
}

async fn rescuer(
    engine: Arc<Engine>,
    config: WorkerConfig,
    mut stop: watch::Receiver<Phase>,
    stats: Arc<WorkerStats>,
) {
    let mut outage = Outage::new("rescuing expired leases");
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
            Ok(n) => {
                outage.recovered();
                if n > 0 {
                    tracing::info!(rescued = n, "expired leases returned to pending");
                    super::metrics::leases_rescued(n);
                    stats.rescued.fetch_add(n, Ordering::Relaxed);
                    engine.wake().notify_waiters();
                }
            }
            Err(e) => {
                stats.database_errors.fetch_add(1, Ordering::Relaxed);
                super::metrics::store_retry("rescue");
                outage.failed(&e);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(config.rescue_every) => {},
            _ = stop.changed() => break,
        }
    }
}
