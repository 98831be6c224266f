//! Plugin host benchmarks (`lockstep bench plugin`): the cost of one
//! instantiate-and-run of `example:noop` in a fresh sandbox, and the start-up
//! time of a host loading the example plugins from a warm compile cache.
//!
//! Invariant: measures only; the first load (which may compile) and a
//! warm-up of runs are excluded from the figures.

use super::percentile;
use crate::guest_artifacts;
use crate::plugin::{HostConfig, PluginHost, RunRequest, StandaloneContext};
use anyhow::Context as _;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs before measuring, so pools and caches are warm.
const WARM_UP_RUNS: u32 = 500;
/// Host loads measured for the start-up figure.
const LOADS: u32 = 20;

/// Measure `iterations` runs of `example:noop`, and [`LOADS`] start-ups.
/// With no plugin directories in `config`, the example plugins built with
/// this binary are used.
pub async fn bench_plugin(
    config: &HostConfig,
    iterations: u32,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut config = config.clone();
    if config.dirs.is_empty() {
        config.dirs = vec![PathBuf::from(guest_artifacts::EXAMPLES_DIR)];
    }
    let dirs = config
        .dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");

    // The first load fills the compile cache; it is not measured.
    let (host, first) = PluginHost::load(config.clone())
        .await
        .with_context(|| format!("loading the plugins in {dirs}"))?;
    host.check_handler("example:noop")
        .with_context(|| format!("the benchmark needs example:noop in {dirs}"))?;

    let cx = Arc::new(StandaloneContext);
    let request = || RunRequest {
        handler: "example:noop".to_owned(),
        job_id: 1,
        task_id: 1,
        stage: "bench".to_owned(),
        attempt: 1,
        input_json: r#"{"value":1}"#.to_owned(),
        timeout: Duration::MAX,
    };
    for _ in 0..WARM_UP_RUNS {
        host.run(request(), cx.clone())
            .await
            .context("example:noop failed during warm-up")?;
    }
    let mut runs = Vec::with_capacity(iterations as usize);
    for _ in 0..iterations {
        let start = Instant::now();
        host.run(request(), cx.clone())
            .await
            .context("example:noop failed")?;
        runs.push(start.elapsed().as_secs_f64() * 1e6);
    }
    runs.sort_by(f64::total_cmp);
    let mean = runs.iter().sum::<f64>() / runs.len().max(1) as f64;

    let mut loads = Vec::with_capacity(LOADS as usize);
    let mut plugins = 0;
    let mut hits = 0;
    for _ in 0..LOADS {
        let start = Instant::now();
        let (loaded, report) = PluginHost::load(config.clone())
            .await
            .with_context(|| format!("loading the plugins in {dirs}"))?;
        loads.push(start.elapsed().as_secs_f64() * 1e3);
        plugins = report.loaded.len();
        hits = report.cache.hits;
        drop(loaded);
    }
    loads.sort_by(f64::total_cmp);

    Ok(vec![
        json!({
            "bench": "plugin",
            "case": "noop_run",
            "iterations": iterations,
            "median_us": round2(percentile(&runs, 50.0)),
            "p90_us": round2(percentile(&runs, 90.0)),
            "p99_us": round2(percentile(&runs, 99.0)),
            "mean_us": round2(mean),
        }),
        json!({
            "bench": "plugin",
            "case": "startup_warm_cache",
            "loads": LOADS,
            "plugins": plugins,
            "cache_hits": hits,
            "first_load_compiled": first.cache.misses + first.cache.rebuilt,
            "median_ms": round2(percentile(&loads, 50.0)),
            "p90_ms": round2(percentile(&loads, 90.0)),
        }),
    ])
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
