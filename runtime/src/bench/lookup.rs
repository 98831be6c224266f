//! `lockstep bench lookup`: status and update of one task in a database
//! holding many tasks — every request path must stay an index lookup, so the
//! latency must not grow with the table.
//!
//! Everything goes through the engine, as a front door's calls do: the fill
//! is submitted as ordinary (validated) jobs, status is `Engine::task`, and an
//! update is an agent's claim and fenced completion.

use super::percentile;
use crate::engine::agent::{AgentClaim, AgentOutput};
use crate::engine::{Engine, now_millis};
use crate::model::{Executor, JobId, LeaseToken, TaskId, TaskState, TenantId};
use crate::spec::{JobSpec, StageSpec, TaskSpec};
use serde_json::json;
use std::time::{Duration, Instant};

/// Tasks per submitted job while filling the database.
const JOB_SIZE: u64 = 50_000;

/// The specialist of the fill's agent tasks: no agent asks for it, so only a
/// benchmark that claims any task takes them.
const FILL_SPECIALIST: &str = "bench:fill";

/// One job of `size` pending agent tasks in one stage, `fill`.
pub(super) fn fill_job(n: u64, size: u64) -> JobSpec {
    let task = TaskSpec {
        executor: Some(Executor::Agent),
        title: Some("fill".into()),
        instructions: Some("Benchmark filler; nothing to do.".into()),
        specialist: Some(FILL_SPECIALIST.into()),
        handler: None,
        ..TaskSpec::wasm("", json!({}))
    };
    JobSpec {
        name: format!("bench-fill-{n}"),
        idempotency_key: Some(format!("bench-fill-{n}-{}", now_millis())),
        stages: vec![StageSpec {
            name: "fill".into(),
            tasks: vec![task; size as usize],
            on_failure: None,
            max_attempts: None,
            timeout: None,
            executor: None,
        }],
    }
}

/// Submit `tasks` pending agent tasks for `tenant` in jobs of 50,000 (nobody
/// claims them), so that reads and writes are measured against a full
/// table. Returns the jobs and their sizes, first to last.
pub(super) async fn fill(
    engine: &Engine,
    tenant: &TenantId,
    tasks: u64,
) -> anyhow::Result<Vec<(JobId, u64)>> {
    let mut jobs = Vec::new();
    let mut remaining = tasks;
    let mut n = 0;
    while remaining > 0 {
        let size = remaining.min(JOB_SIZE);
        remaining -= size;
        n += 1;
        let submitted = engine.submit(tenant, fill_job(n, size)).await?;
        jobs.push((submitted.job_id, size));
    }
    Ok(jobs)
}

/// Fill the database with `tasks` pending tasks (in jobs of 50,000), then
/// time `Engine::task` of tasks spread over the table and a claim + fenced
/// completion of one task.
pub async fn lookup(engine: &Engine, tasks: u64) -> anyhow::Result<Vec<serde_json::Value>> {
    let tenant = TenantId("bench".into());
    let fill_started = Instant::now();
    fill(engine, &tenant, tasks).await?;
    let fill_seconds = fill_started.elapsed().as_secs_f64();

    // Status: one task read, of tasks spread over the whole table.
    let samples = 2_000u64;
    let mut status = Vec::with_capacity(samples as usize);
    for i in 0..samples {
        let id = 1 + (i * 7_919) % tasks.max(1);
        let t = Instant::now();
        let rec = engine.task(&tenant, TaskId(id as i64)).await?;
        status.push(t.elapsed().as_secs_f64() * 1e6);
        anyhow::ensure!(
            rec.state == TaskState::Pending,
            "unexpected state {}",
            rec.state
        );
    }
    status.sort_by(f64::total_cmp);

    // Update: claim one task and complete it, fenced, one at a time.
    let mut update = Vec::with_capacity(500);
    for _ in 0..500 {
        let t = Instant::now();
        let claim = AgentClaim {
            job: None,
            specialist: Some(FILL_SPECIALIST.into()),
            lease: Duration::from_secs(60),
            worker: "bench".into(),
        };
        let Some(task) = engine.claim_agent_task(&tenant, claim).await? else {
            break;
        };
        let lease = LeaseToken {
            task_id: TaskId(task.task_id),
            attempt: task.attempt,
            nonce: None,
        };
        let output = AgentOutput {
            summary: "done".into(),
            details: None,
            artifacts: vec![],
            next_action: None,
        };
        engine.complete_agent_task(&tenant, lease, output).await?;
        update.push(t.elapsed().as_secs_f64() * 1e6);
    }
    update.sort_by(f64::total_cmp);
    Ok(vec![
        json!({ "bench": "lookup", "case": "fill", "tasks": tasks, "seconds": fill_seconds }),
        json!({
            "bench": "lookup", "case": "get_task", "tasks": tasks, "samples": status.len(),
            "p50_us": percentile(&status, 50.0), "p99_us": percentile(&status, 99.0),
        }),
        json!({
            "bench": "lookup", "case": "claim_and_complete_one", "tasks": tasks,
            "samples": update.len(),
            "p50_us": percentile(&update, 50.0), "p99_us": percentile(&update, 99.0),
            "note": "an agent's claim and fenced completion through the engine: two durable write transactions and the reads around them",
        }),
    ])
}
