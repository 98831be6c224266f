//! `lockstep bench lookup`: status and update of one task in a database
//! holding many tasks — every request path must stay an index lookup, so the
//! latency must not grow with the table.

use super::percentile;
use crate::engine::now_millis;
use crate::model::{Executor, JobId, OnFailure, TaskId, TaskState, TenantId};
use crate::store::{
    ClaimBatch, CompleteBatch, Completion, GetTask, NewStage, NewTask, Store, SubmitJob, TaskResult,
};
use serde_json::json;
use std::time::{Duration, Instant};

/// Tasks per submitted job while filling the database.
const JOB_SIZE: u64 = 50_000;

/// Submit `tasks` pending WASM tasks for `tenant` in jobs of 50,000 (no
/// worker runs them), so that reads and writes are measured against a full
/// table. Returns the jobs and their sizes, first to last.
pub(super) async fn fill(
    store: &dyn Store,
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
        let task = NewTask {
            handler: "bench:lookup".into(),
            executor: Executor::Wasm,
            key: None,
            depends_on: vec![],
            on_failure: OnFailure::FailJob,
            input_json: "{}".into(),
            max_attempts: 5,
            timeout_ms: 30_000,
            agent_json: None,
        };
        let submitted = store
            .submit_job(SubmitJob {
                tenant: tenant.clone(),
                name: format!("bench-fill-{n}"),
                idempotency_key: format!("bench-fill-{n}-{}", now_millis()),
                spec_json: "{}".into(),
                stages: vec![NewStage {
                    name: "fill".into(),
                    on_failure: OnFailure::FailJob,
                    max_attempts: None,
                    timeout_ms: None,
                    tasks: vec![task; size as usize],
                }],
                now: now_millis(),
            })
            .await?;
        jobs.push((submitted.job_id, size));
    }
    Ok(jobs)
}

/// Fill the store with `tasks` pending tasks (in jobs of 50,000), then time
/// `get_task` of random tasks and a claim + fenced completion of one task.
pub async fn lookup(store: &dyn Store, tasks: u64) -> anyhow::Result<Vec<serde_json::Value>> {
    let tenant = TenantId("bench".into());
    let fill_started = Instant::now();
    fill(store, &tenant, tasks).await?;
    let fill_seconds = fill_started.elapsed().as_secs_f64();

    // Status: get_task of tasks spread over the whole table.
    let samples = 2_000u64;
    let mut status = Vec::with_capacity(samples as usize);
    for i in 0..samples {
        let id = 1 + (i * 7_919) % tasks.max(1);
        let t = Instant::now();
        let rec = store
            .get_task(GetTask {
                tenant: tenant.clone(),
                task: TaskId(id as i64),
            })
            .await?;
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
        let claimed = store
            .claim_batch(ClaimBatch {
                tenant: Some(tenant.clone()),
                executor: Executor::Wasm,
                handlers: None,
                job: None,
                limit: 1,
                lease: Duration::from_secs(60),
                worker: "bench".into(),
                now: now_millis(),
            })
            .await?;
        let Some(task) = claimed.into_iter().next() else {
            break;
        };
        store
            .complete_batch(CompleteBatch {
                completions: vec![Completion {
                    tenant: tenant.clone(),
                    lease: task.lease,
                    result: TaskResult::Succeeded {
                        output_json: "{}".into(),
                        spawn: vec![],
                    },
                    logs: vec![],
                }],
                now: now_millis(),
            })
            .await?;
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
            "note": "each is two durable write transactions (claim, fenced completion)",
        }),
    ])
}
