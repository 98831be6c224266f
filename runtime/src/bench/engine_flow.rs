//! End-to-end engine benchmarks: throughput of no-op WASM tasks, submit-to-
//! start latency, and last-completion-to-next-stage latency (fan-in).

use super::percentile;
use crate::engine::{Engine, Execution, WorkerConfig, now_millis};
use crate::model::{EventKind, JobId, TenantId};
use crate::spec::{self, Format};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A benchmark's job file: JSON, which parses in a fraction of TOML's
/// memory (~0.3 KB a task against ~2 KB), so a throughput run's peak RSS is
/// the run's own rather than its submit's. `stages` is the stages' JSON text.
fn job_text(name: &str, stages: &str) -> String {
    format!(
        r#"{{"name":"{name}","idempotency_key":"{name}-{}","stages":{stages}}}"#,
        now_millis()
    )
}

/// A job of one stage holding `tasks` example:noop tasks.
fn noop_job(tasks: u32) -> String {
    // Written as text: a JSON value of a million tasks would itself be
    // hundreds of megabytes.
    let mut stages = String::with_capacity(tasks as usize * 48 + 32);
    stages.push_str(r#"[{"name":"work","tasks":["#);
    for i in 0..tasks {
        if i > 0 {
            stages.push(',');
        }
        stages.push_str(&format!(
            r#"{{"handler":"example:noop","input":{{"value":{i}}}}}"#
        ));
    }
    stages.push_str("]}]");
    job_text("bench-throughput", &stages)
}

/// Submit a benchmark's job under the process's own limits, so
/// `--max-tasks-per-job` and `--max-spec-bytes` let it grow past 100,000
/// tasks (a million-task job is about 50 MB of JSON).
async fn submit(engine: &Engine, tenant: &TenantId, text: &str) -> anyhow::Result<JobId> {
    let job = spec::parse_job_str(text, Format::Json, &engine.config().limits)?;
    Ok(engine.submit(tenant, job).await?.job_id)
}

/// The worker pool a throughput run starts.
#[derive(Debug, Clone, Copy)]
pub struct Pool {
    /// Run slots: tasks run at once, at most (claimed and not yet
    /// recorded: `WorkerConfig::recording_budget`).
    pub slots: usize,
    /// Most tasks claimed in one statement.
    pub batch: u32,
    /// What runs each task.
    pub execution: Execution,
}

/// No-op tasks per second, end to end (claim, run, durable completion); the
/// run is the sandboxed `example:noop`, or with [`Execution::HostNoop`] no
/// run at all, which leaves the store's and the engine's own cost.
pub async fn throughput(
    engine: &Arc<Engine>,
    tenant: &TenantId,
    tasks: u32,
    pool: Pool,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let Pool {
        slots,
        batch,
        execution,
    } = pool;
    let job = submit(engine, tenant, &noop_job(tasks)).await?;
    let before = engine.store_counters();
    let cpu_before = super::cpu_by_thread();
    let started_at = now_millis();
    let config = WorkerConfig {
        slots,
        batch,
        execution,
        ..WorkerConfig::default()
    };
    let budget = config.recording_budget();
    let pool = engine.start_workers(config);
    let done = engine.wait(tenant, job, None, |_| {}).await?;
    let cpu_after = super::cpu_by_thread();
    let store = engine.store_counters();
    let elapsed = finished_after(&done, started_at);
    let stats = pool.stats.clone();
    pool.shutdown().await;
    let per_task = |after: u64, before: u64| after.saturating_sub(before) as f64 / f64::from(tasks);
    let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
    let per_batch = |n: &std::sync::atomic::AtomicU64, batches: &std::sync::atomic::AtomicU64| {
        load(n) as f64 / load(batches).max(1) as f64
    };
    anyhow::ensure!(
        done.job.state == crate::model::JobState::Succeeded,
        "benchmark job ended {}",
        done.job.state
    );
    Ok(vec![json!({
        "bench": "throughput",
        "case": "noop_tasks",
        "handler": match execution {
            Execution::Sandbox => "wasm",
            Execution::HostNoop => "host-noop",
        },
        "tasks": tasks,
        "slots": slots,
        "batch": batch,
        "recording_budget": budget,
        "peak_runs": load(&stats.peak_runs),
        "seconds": elapsed.as_secs_f64(),
        "tasks_per_s": f64::from(tasks) / elapsed.as_secs_f64(),
        // Claims counts attempts: more than `tasks` when some ran twice.
        "claims": load(&stats.claimed),
        "claim_statements": load(&stats.claim_batches),
        "tasks_per_claim": per_batch(&stats.claimed, &stats.claim_batches),
        "tasks_per_commit": per_batch(&stats.completed, &stats.completion_batches),
        // Everything the store ran meanwhile, the waiter's polls included.
        "statements_per_task": per_task(store.statements, before.statements),
        "round_trips_per_task": per_task(store.round_trips, before.round_trips),
        "transactions_per_task": per_task(store.transactions, before.transactions),
        "retried_transactions": store.retried_transactions - before.retried_transactions,
        // Both are 0 when recording keeps up with running.
        "refused_completions": load(&stats.stale),
        "lease_expiries": load(&stats.rescued),
        // CPU of this process while the job ran (the waiter's polls
        // included), per task, by kind of thread.
        "cpu_us_per_task": super::cpu_us_per_task(&cpu_before, &cpu_after, u64::from(tasks)),
        "peak_rss_mib": super::peak_rss_mib(),
    })])
}

/// From `started_at` to the job's own finish time as the store recorded it
/// (1 ms resolution; polling for the end would add up to a poll interval).
fn finished_after(done: &crate::engine::JobProgress, started_at: crate::model::Millis) -> Duration {
    let finished = done.job.finished_at.unwrap_or_else(now_millis);
    Duration::from_millis(u64::try_from(finished - started_at).unwrap_or(0).max(1))
}

/// No-op tasks per second with the workers in `processes` separate
/// `lockstep serve` processes on the same database (started by `spawn`).
/// The clock starts once every process is up and the job is submitted.
pub async fn throughput_processes(
    engine: &Arc<Engine>,
    tenant: &TenantId,
    tasks: u32,
    processes: u32,
    spawn: impl Fn() -> anyhow::Result<std::process::Child>,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut children = Vec::new();
    for _ in 0..processes {
        children.push(spawn()?);
    }
    // Let the processes load their plugins before the clock starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let job = submit(engine, tenant, &noop_job(tasks)).await?;
    let started_at = now_millis();
    let done = engine
        .wait(tenant, job, Some(Duration::from_secs(600)), |_| {})
        .await;
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    let done = done?;
    anyhow::ensure!(
        done.job.state == crate::model::JobState::Succeeded,
        "benchmark job ended {}",
        done.job.state
    );
    let elapsed = finished_after(&done, started_at);
    Ok(vec![json!({
        "bench": "throughput",
        "case": "noop_tasks_processes",
        "tasks": tasks,
        "processes": processes,
        "seconds": elapsed.as_secs_f64(),
        "tasks_per_s": f64::from(tasks) / elapsed.as_secs_f64(),
    })])
}

/// Submit a one-task job to idle workers, many times; the latency is from
/// the submit call to the task's claim (the claim time its end event
/// records, ms).
pub async fn submit_to_start(
    engine: &Arc<Engine>,
    tenant: &TenantId,
    samples: u32,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let pool = engine.start_workers(WorkerConfig::default());
    let mut lat = Vec::with_capacity(samples as usize);
    for i in 0..samples {
        let stages = json!([{ "name": "one", "tasks": [{ "handler": "example:noop" }] }]);
        let text = job_text(&format!("bench-latency-{i}"), &stages.to_string());
        let before = now_millis();
        let job = submit(engine, tenant, &text).await?;
        engine
            .wait(tenant, job, Some(Duration::from_secs(30)), |_| {})
            .await?;
        let events = engine.events(tenant, job, None, 100).await?;
        if let Some(claimed) = events.iter().find_map(|e| e.attempt_claimed_at()) {
            lat.push((claimed - before) as f64);
        }
    }
    pool.shutdown().await;
    lat.sort_by(f64::total_cmp);
    Ok(vec![json!({
        "bench": "throughput",
        "case": "submit_to_start",
        "samples": lat.len(),
        "p50_ms": percentile(&lat, 50.0),
        "p99_ms": percentile(&lat, 99.0),
        "resolution_ms": 1,
    })])
}

/// Fan-in, `rounds` times: stage 1 spawns `tasks` no-op tasks into stage 2;
/// then stage 3 sums them. Reports the jobs' rates and, over the rounds, the
/// gap between the last stage-2 completion and the first stage-3 claim (the
/// stage counter reaching zero, the next stage opening, the wake-up and the
/// claim).
pub async fn fanin(
    engine: &Arc<Engine>,
    tenant: &TenantId,
    tasks: u32,
    slots: usize,
    rounds: u32,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let pool = engine.start_workers(WorkerConfig {
        slots,
        ..WorkerConfig::default()
    });
    let mut gaps = Vec::with_capacity(rounds as usize);
    let mut rates = Vec::with_capacity(rounds as usize);
    let mut seconds = 0.0;
    for round in 0..rounds {
        let measured = fanin_round(engine, tenant, tasks, round).await;
        let (elapsed, gap) = match measured {
            Ok(m) => m,
            Err(e) => {
                pool.shutdown().await;
                return Err(e);
            }
        };
        seconds += elapsed.as_secs_f64();
        rates.push(f64::from(tasks) / elapsed.as_secs_f64());
        gaps.push(gap as f64);
    }
    pool.shutdown().await;
    gaps.sort_by(f64::total_cmp);
    rates.sort_by(f64::total_cmp);
    Ok(vec![json!({
        "bench": "fanin",
        "tasks": tasks,
        "slots": slots,
        "rounds": rounds,
        "seconds": seconds,
        "tasks_per_s_p50": percentile(&rates, 50.0),
        "last_completion_to_next_stage_claim_ms": {
            "p50": percentile(&gaps, 50.0),
            "p99": percentile(&gaps, 99.0),
            "max": gaps.last().copied().unwrap_or(0.0),
        },
        "resolution_ms": 1,
    })])
}

/// One fan-in job, run by the already started workers: how long it took, and
/// the milliseconds from its last stage-2 completion to its first stage-3
/// claim, as the events record them (a claim's time is in the event that
/// ends its attempt).
async fn fanin_round(
    engine: &Arc<Engine>,
    tenant: &TenantId,
    tasks: u32,
    round: u32,
) -> anyhow::Result<(Duration, i64)> {
    let stages = json!([
        {
            "name": "analyze",
            "tasks": [{
                "handler": "example:fanout",
                "input": { "count": tasks, "stage": "process", "handler": "example:noop" },
            }],
        },
        { "name": "process" },
        {
            "name": "aggregate",
            "tasks": [{ "handler": "example:sum", "input": { "from": "process" } }],
        },
    ]);
    let text = job_text(&format!("bench-fanin-{round}"), &stages.to_string());
    let started = Instant::now();
    let job = submit(engine, tenant, &text).await?;
    let done = engine.wait(tenant, job, None, |_| {}).await?;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        done.job.state == crate::model::JobState::Succeeded,
        "fan-in job {} ended {}",
        job.0,
        done.job.state
    );
    let mut last_stage2_done = None;
    let mut first_stage3_claim = None;
    let mut after = None;
    loop {
        let page = engine.events(tenant, job, after, 5000).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for e in &page {
            if (e.kind, e.stage_position) == (EventKind::TaskSucceeded, Some(1)) {
                last_stage2_done = last_stage2_done.max(Some(e.at));
            }
            if e.stage_position == Some(2)
                && let Some(claimed) = e.attempt_claimed_at()
            {
                first_stage3_claim =
                    Some(first_stage3_claim.map_or(claimed, |c: i64| c.min(claimed)));
            }
        }
    }
    match (last_stage2_done, first_stage3_claim) {
        (Some(a), Some(b)) => Ok((elapsed, b - a)),
        _ => anyhow::bail!(
            "fan-in job {} has no stage-2 completion or no stage-3 claim",
            job.0
        ),
    }
}
