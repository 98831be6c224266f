//! `lockstep bench metrics`: what a Prometheus scrape of `/metrics` costs
//! a `serve` process — rendering the text format from the last sample — and
//! what the sample it renders costs the database (every tenant's tasks and
//! jobs by state, the oldest ready task; read by the `telemetry::Sampler`
//! on its timer, not by the scrape), with many tasks in the database and
//! the series a real run leaves.
//!
//! The database is filled with pending agent tasks (as `bench lookup`
//! does), then a job of no-op tasks runs through this process's workers so
//! the per-handler counters and histograms exist, then both are timed.

use super::percentile;
use crate::engine::{Engine, WorkerConfig};
use crate::model::{JobState, TenantId};
use crate::spec::{self, Format};
use crate::telemetry::{Exporter, Sampler};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

/// No-op tasks run first, so the per-handler series exist.
const RUN_TASKS: u32 = 2_000;

/// Fill the database with `tasks` pending tasks, run a no-op job, then time
/// `samples` scrapes (as `GET /metrics` answers them) and `samples` samples
/// of the database.
pub async fn metrics(
    engine: &Arc<Engine>,
    exporter: &Exporter,
    tasks: u64,
    samples: u32,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let tenant = TenantId("bench".into());
    super::lookup::fill(engine, &tenant, tasks).await?;
    let mut body =
        String::from("name = \"bench-metrics\"\n[[stages]]\nname = \"work\"\ntasks = [\n");
    for i in 0..RUN_TASKS {
        body.push_str(&format!(
            "  {{ handler = \"example:noop\", input = {{ value = {i} }} }},\n"
        ));
    }
    body.push_str("]\n");
    let job = spec::parse_job_str(&body, Format::Toml, &Default::default())?;
    let job = engine.submit(&tenant, job).await?.job_id;
    let pool = engine.start_workers(WorkerConfig::default());
    let done = engine.wait(&tenant, job, None, |_| {}).await?;
    pool.shutdown().await;
    anyhow::ensure!(
        done.job.state == JobState::Succeeded,
        "the no-op job ended {}",
        done.job.state
    );

    let sampler = Sampler::start(engine.clone());
    sampler.latest().await.map_err(anyhow::Error::msg)?;
    let mut scrape = Vec::with_capacity(samples as usize);
    let mut sample = Vec::with_capacity(samples as usize);
    let mut bytes = 0;
    let mut lines = 0;
    for _ in 0..samples {
        let t = Instant::now();
        let text = exporter
            .render(&sampler)
            .await
            .map_err(anyhow::Error::msg)?;
        scrape.push(t.elapsed().as_secs_f64() * 1e3);
        bytes = text.len();
        lines = text.lines().filter(|l| !l.starts_with('#')).count();
        let t = Instant::now();
        engine.sample_metrics().await?;
        sample.push(t.elapsed().as_secs_f64() * 1e3);
    }
    drop(sampler);
    for v in [&mut scrape, &mut sample] {
        v.sort_by(f64::total_cmp);
    }
    let total = tasks + u64::from(RUN_TASKS);
    Ok(vec![
        json!({
            "bench": "metrics", "case": "scrape", "tasks": total,
            "samples": scrape.len(), "p50_ms": percentile(&scrape, 50.0),
            "p99_ms": percentile(&scrape, 99.0), "bytes": bytes, "samples_rendered": lines,
            "note": "what GET /metrics does: render every series, the database's counts as last sampled",
        }),
        json!({
            "bench": "metrics", "case": "sample_database", "tasks": total,
            "samples": sample.len(), "p50_ms": percentile(&sample, 50.0),
            "p99_ms": percentile(&sample, 99.0),
            "note": "what the sampler reads every 5 s (or 10 times its own duration, if longer): every tenant's tasks and jobs by state and the oldest ready task, one read snapshot",
        }),
    ])
}
