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
//! **Run slots, the recording budget and claiming ahead.** A claim takes,
//! per task, a unit of the recording budget ([`WorkerConfig::recording_budget`]:
//! the run slots plus one claim batch), given back only when the task's
//! completion has committed (or was given up on). So claimed-but-unrecorded
//! tasks stay bounded: when recording falls behind, claiming waits
//! (backpressure, issue 13), and no load can leave thousands of finished
//! tasks waiting for a commit while their leases run out.
//!
//! A claimed task then waits for a run slot (`--workers`, the sandboxes
//! running at once), given back when its handler returns. A claim takes the
//! free run slots plus, ahead of them, as many tasks as the runs are
//! expected to free within [`WorkerConfig::claim_ahead`] at the pace they
//! ended lately ([`RunPace`]): while short tasks pour through, one claim
//! takes a whole batch and the slots refill from it as runs end (at 128
//! slots claims took ~85 tasks without it, ~210 with it, and the pool ran
//! +22% tasks/s on SQLite with WASM, +37% with the host no-op, issue 13);
//! long tasks end slowly, so a pool claims little more than its free slots
//! and leaves the rest to other processes. A waiting task's lease is renewed from its claim on, as a
//! running one's is, and a stopping pool hands it back unrun (Invariant 20).
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

/// [`WorkerConfig::claim_ahead`] by default: a claimed task waits about
/// this long for a run slot, at most.
pub const CLAIM_AHEAD: Duration = Duration::from_millis(10);

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
    /// How far ahead of the free run slots a claim takes tasks: as many as
    /// the runs are expected to free in this time at their recent pace
    /// (module doc). Zero claims only for free slots.
    pub claim_ahead: Duration,
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
            claim_ahead: CLAIM_AHEAD,
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
    /// Most claimed tasks waiting for a run slot at once.
    pub peak_waiting: AtomicU64,
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
    // Run slots: taken by a claimed task when its run starts, given back
    // when the run ends.
    let slots = Arc::new(Semaphore::new(config.slots.max(1)));
    // Recording budget: taken by a claim, given back when the completion is
    // recorded (or given up on) — the bound on claimed-but-unrecorded tasks.
    let budget = Arc::new(Semaphore::new(config.recording_budget()));
    // Claimed tasks waiting for a run slot.
    let waiting = Arc::new(AtomicUsize::new(0));
    let pace = Arc::new(RunPace::default());
    let mut ahead = ClaimAhead::new(config.claim_ahead);
    // Backends that can push wake-ups (Postgres LISTEN/NOTIFY) shorten the
    // idle wait; polling stays the fallback because a signal can be lost.
    let ready = engine.store().ready_signal();
    let mut runs = tokio::task::JoinSet::new();
    let mut db_backoff = Duration::from_millis(50);
    let mut outage = Outage::new("claiming tasks");
    'claiming: loop {
        if *stop.borrow() != Phase::Running {
            break;
        }
        // Budget first: when recording falls behind, claiming waits here.
        let mut owed = tokio::select! {
            p = budget.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.changed() => break,
        };
        // Then as many tasks as will find a run slot soon (module doc): the
        // free slots and the runs expected to end shortly, less the tasks
        // already waiting. None: wait for a run to end.
        let wanted = loop {
            // Made before the count is read: a run that ends after it still
            // ends the wait below.
            let ended = pace.ended.notified();
            let soon = slots.available_permits()
                + ahead.expected_ends(pace.count(), tokio::time::Instant::now());
            let wanted = soon.saturating_sub(waiting.load(Ordering::Acquire));
            if wanted > 0 {
                break wanted;
            }
            tokio::select! {
                _ = ended => {},
                _ = stop.changed() => break 'claiming,
            }
        };
        // Every unit of budget the claim needs beyond the one held, in one
        // step (only this loop takes budget, so it succeeds).
        let more = budget
            .available_permits()
            .min(wanted - 1)
            .min((config.batch.max(1) as usize) - 1);
        if more > 0
            && let Ok(b) = budget.clone().try_acquire_many_owned(more as u32)
        {
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
                limit: owed.num_permits() as u32,
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
                drop(owed);
                tokio::select! {
                    _ = tokio::time::sleep(db_backoff) => {},
                    _ = stop.changed() => break,
                }
                db_backoff = (db_backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if claimed.is_empty() {
            drop(owed);
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
        let claimed_at = tokio::time::Instant::now();
        stats
            .claimed
            .fetch_add(claimed.len() as u64, Ordering::Relaxed);
        stats.claim_batches.fetch_add(1, Ordering::Relaxed);
        super::metrics::claimed(
            now_millis(),
            claimed.iter().map(|t| (t.handler.as_str(), t.ready_at)),
        );
        let now_waiting = waiting.fetch_add(claimed.len(), Ordering::AcqRel) + claimed.len();
        stats
            .peak_waiting
            .fetch_max(now_waiting as u64, Ordering::Relaxed);
        // One unit of budget per claimed task; the rest goes back at once,
        // as one.
        for task in claimed {
            let limit = "a claim returns at most as many tasks as its LIMIT, the budget taken";
            let unrecorded = owed.split(1).expect(limit);
            let run = Run {
                engine: engine.clone(),
                plugins: plugins.clone(),
                lease: config.lease,
                execution: config.execution,
                phase: stop.clone(),
                // Renewed from the claim on, while the task waits for a
                // run slot and while it runs.
                renew: lease_renewal(claimed_at, config.lease),
            };
            let slots = slots.clone();
            let run_slots = config.slots.max(1);
            let waiting = waiting.clone();
            let pace = pace.clone();
            let stats = stats.clone();
            let done = done.clone();
            let ends = running.clone();
            ends.fetch_add(1, Ordering::AcqRel);
            // Boxed: the task's cell then holds a pointer, not the run's
            // whole future, which tokio would otherwise copy in and out.
            runs.spawn(Box::pin(async move {
                let mut run = run;
                let slot = run.wait_for_slot(&slots, &task).await;
                waiting.fetch_sub(1, Ordering::AcqRel);
                let ended = match slot {
                    Some(slot) => {
                        let now_running = run_slots - slots.available_permits();
                        stats
                            .peak_runs
                            .fetch_max(now_running as u64, Ordering::Relaxed);
                        let ended = run.run(task).await;
                        // The run slot goes back with the run's end.
                        drop(slot);
                        ended
                    }
                    None => Done::Released(task.tenant, task.lease),
                };
                pace.ended_one();
                // The budget goes with the end to the completer, which
                // gives it back once that end is recorded.
                ends.fetch_sub(1, Ordering::AcqRel);
                let _ = done.send((ended, unrecorded));
            }));
        }
        // Reap finished runs so the set does not grow without bound.
        while runs.try_join_next().is_some() {}
    }
    // Let in-flight runs finish; their results still commit.
    while runs.join_next().await.is_some() {}
}

/// How many runs of this pool have ended, and a wake-up for a claimer
/// waiting for the next end.
#[derive(Default)]
struct RunPace {
    count: AtomicU64,
    ended: tokio::sync::Notify,
}

impl RunPace {
    fn ended_one(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
        // One claimer waits: a permit stored while it is not waiting wakes
        // its next wait at once, so an end is never missed.
        self.ended.notify_one();
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }
}

/// How many runs are expected to end within [`WorkerConfig::claim_ahead`]:
/// the pace runs ended at over the last [`PACE_SPAN`], from counts the
/// claimer notes each time it asks.
struct ClaimAhead {
    within: Duration,
    /// (when, runs ended by then), oldest first, spanning about [`PACE_SPAN`].
    seen: std::collections::VecDeque<(tokio::time::Instant, u64)>,
}

/// How far back [`ClaimAhead`] looks for the pace of run ends.
const PACE_SPAN: Duration = Duration::from_millis(100);

impl ClaimAhead {
    fn new(within: Duration) -> ClaimAhead {
        ClaimAhead {
            within,
            seen: std::collections::VecDeque::new(),
        }
    }

    fn expected_ends(&mut self, ended: u64, now: tokio::time::Instant) -> usize {
        // Keep the newest count at least PACE_SPAN old as the base.
        while self
            .seen
            .get(1)
            .is_some_and(|&(at, _)| now.duration_since(at) >= PACE_SPAN)
        {
            self.seen.pop_front();
        }
        let expected = match self.seen.front() {
            Some(&(at, then)) if now > at => {
                let per_second =
                    ended.saturating_sub(then) as f64 / now.duration_since(at).as_secs_f64();
                (per_second * self.within.as_secs_f64()) as usize
            }
            _ => 0,
        };
        // Many asks within one span add nothing the base does not know.
        if self
            .seen
            .back()
            .is_none_or(|&(at, _)| now.duration_since(at) >= PACE_SPAN / 16)
        {
            self.seen.push_back((now, ended));
        }
        expected
    }
}

/// A lease's renewals, every third of the lease from the claim on: a task
/// renewed from then keeps its lease however long it waits and runs.
fn lease_renewal(claimed_at: tokio::time::Instant, lease: Duration) -> tokio::time::Interval {
    let every = (lease / 3).max(Duration::from_millis(1));
    tokio::time::interval_at(claimed_at + every, every)
}

/// What a claimed task needs to wait for its run slot and to run.
struct Run {
    engine: Arc<Engine>,
    plugins: Arc<crate::plugin::PluginHost>,
    lease: Duration,
    execution: Execution,
    phase: watch::Receiver<Phase>,
    renew: tokio::time::Interval,
}

impl Run {
    /// A run slot for `task`, renewing its lease while it waits; `None` when
    /// the pool stops first (the task is handed back unrun).
    async fn wait_for_slot(
        &mut self,
        slots: &Arc<Semaphore>,
        task: &ClaimedTask,
    ) -> Option<OwnedSemaphorePermit> {
        let mut phase_open = true;
        loop {
            if *self.phase.borrow_and_update() != Phase::Running {
                return None;
            }
            tokio::select! {
                // The slot first: a free one is taken before anything else.
                biased;
                slot = slots.clone().acquire_owned() => return slot.ok(),
                changed = self.phase.changed(), if phase_open => phase_open = changed.is_ok(),
                _ = self.renew.tick() => renew_lease(&self.engine, task, self.lease).await,
            }
        }
    }

    async fn run(self, task: ClaimedTask) -> Done {
        match self.execution {
            Execution::Sandbox => {
                run_task(
                    &self.engine,
                    &self.plugins,
                    task,
                    self.lease,
                    self.phase,
                    self.renew,
                )
                .await
            }
            Execution::HostNoop => {
                let ran = Attempt {
                    handler: task.handler.clone(),
                    job: task.job_id,
                    took: Some(Duration::ZERO),
                };
                Done::Completed(host_noop(task), ran)
            }
        }
    }
}

/// Renew `task`'s lease, waiting for a run slot or running; a lease
/// already lost is said once, here (its result will be refused).
async fn renew_lease(engine: &Engine, task: &ClaimedTask, lease: Duration) {
    let held = engine
        .store()
        .renew_lease(RenewLease {
            tenant: task.tenant.clone(),
            lease: task.lease,
            lease_for: lease,
            now: now_millis(),
            note: None,
            logs: Vec::new(),
        })
        .await;
    if let Ok(false) = held {
        tracing::warn!(
            task = task.lease.task_id.0,
            "lease lost before the run ended; its result will be refused"
        );
    }
}

async fn run_task(
    engine: &Arc<Engine>,
    plugins: &crate::plugin::PluginHost,
    mut task: ClaimedTask,
    lease: Duration,
    mut phase: watch::Receiver<Phase>,
    mut renew: tokio::time::Interval,
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
            // Renew the lease while a long run goes on, so it is not rescued from under us.
            _ = renew.tick() => renew_lease(engine, &task, lease).await,
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
