//! The step runner: claims the `command` tasks of one run in this process,
//! runs each ([`super::step`]) and records its end, until the run is over.
//!
//! It also returns expired leases to `pending` (a runner killed mid-step
//! leaves its steps `running`; the next runner takes them over once their
//! leases run out) and limits the steps of one matrix to its
//! `max_parallel`.
//!
//! **Invariant:** no database transaction is open while a step runs (claim,
//! run and the fenced completion are separate, as for every task).

use super::secrets::Secrets;
use super::step::{self, StepContext};
use crate::engine::{Engine, now_millis};
use crate::model::{Executor, JobId, TenantId};
use crate::plugin::{CommandHost, OutputLimits};
use crate::store::{ClaimBatch, GetJob, RescueExpiredLeases};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

/// How a runner runs steps.
#[derive(Debug, Clone)]
pub struct StepRunConfig {
    /// Steps run at once (and tests of a `rust-test` step at once).
    pub slots: usize,
    /// Lease of a claimed step; renewed every third of it.
    pub lease: Duration,
    /// How often streamed log lines are written while a step runs.
    pub flush_every: Duration,
    pub worker_id: String,
    pub secrets: Secrets,
    pub output: OutputLimits,
}

impl Default for StepRunConfig {
    fn default() -> Self {
        StepRunConfig {
            slots: std::thread::available_parallelism().map_or(2, |n| n.get()),
            lease: Duration::from_secs(10),
            flush_every: Duration::from_millis(200),
            worker_id: format!("ci-pid-{}", std::process::id()),
            secrets: Secrets::default(),
            output: OutputLimits::default(),
        }
    }
}

/// A runner working on one run; [`StepRunner::finished`] waits for it.
pub struct StepRunner {
    handle: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl StepRunner {
    /// Wait until the run is over (or the runner was stopped) and every
    /// started step is recorded.
    pub async fn finished(self) {
        let _ = self.handle.await;
    }

    /// Stop claiming; steps already running finish and are recorded.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.handle.await;
    }
}

impl Engine {
    /// Run the steps of `job` in this process until it is over.
    pub fn run_steps(
        self: &Arc<Self>,
        tenant: TenantId,
        job: JobId,
        commands: Arc<CommandHost>,
        config: StepRunConfig,
    ) -> StepRunner {
        let (stop, stop_rx) = watch::channel(false);
        let engine = self.clone();
        let handle = tokio::spawn(async move {
            run(engine, tenant, job, commands, config, stop_rx).await;
        });
        StepRunner { handle, stop }
    }
}

async fn run(
    engine: Arc<Engine>,
    tenant: TenantId,
    job: JobId,
    commands: Arc<CommandHost>,
    config: StepRunConfig,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(config.slots.max(1)));
    let groups: Arc<Mutex<HashMap<String, Arc<Semaphore>>>> = Arc::default();
    let masker = config.secrets.masker();
    let mut running = tokio::task::JoinSet::new();
    let mut last_rescue = tokio::time::Instant::now() - Duration::from_secs(60);
    loop {
        if *stop.borrow() {
            break;
        }
        if last_rescue.elapsed() >= Duration::from_secs(1) {
            last_rescue = tokio::time::Instant::now();
            let rescued = engine
                .store()
                .rescue_expired_leases(RescueExpiredLeases {
                    now: now_millis(),
                    retry_after: Duration::ZERO,
                    limit: 1000,
                })
                .await;
            match rescued {
                Ok(n) if n > 0 => crate::engine::metrics::leases_rescued(n),
                Ok(_) => {}
                Err(e) => {
                    crate::engine::metrics::store_retry("rescue");
                    tracing::warn!("rescuing expired step leases failed: {e}");
                }
            }
        }
        let free = slots.available_permits();
        let claimed = if free == 0 {
            Vec::new()
        } else {
            match engine
                .store()
                .claim_batch(ClaimBatch {
                    tenant: Some(tenant.clone()),
                    executor: Executor::Command,
                    handlers: None,
                    job: Some(job),
                    limit: free as u32,
                    lease: config.lease,
                    worker: config.worker_id.clone(),
                    now: now_millis(),
                })
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("claiming steps failed: {e}; trying again");
                    Vec::new()
                }
            }
        };
        for task in claimed.iter().cloned() {
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                break;
            };
            let cx = StepContext {
                engine: engine.clone(),
                commands: commands.clone(),
                config: config.clone(),
                masker: masker.clone(),
                groups: groups.clone(),
            };
            running.spawn(async move {
                step::run_step(&cx, task).await;
                drop(permit);
            });
        }
        while running.try_join_next().is_some() {}
        if claimed.is_empty() {
            let state = engine
                .store()
                .job_state(GetJob {
                    tenant: tenant.clone(),
                    job,
                })
                .await;
            if matches!(state, Ok(s) if s.is_terminal()) && running.is_empty() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {},
                _ = engine.wake().notified() => {},
                _ = running.join_next(), if !running.is_empty() => {},
                _ = stop.changed() => {},
            }
        }
    }
    while running.join_next().await.is_some() {}
}
