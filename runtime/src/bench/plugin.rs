//! Plugin host benchmarks (`lockstep bench plugin`): the cost of one
//! instantiate-and-run of `example:noop` in a fresh sandbox, the start-up
//! time of a host loading the example plugins from a warm compile cache,
//! and, for each component given with `--component LABEL=PATH` (a project of
//! `lockstep plugins new --lang python|js|rust`, built by its own toolchain),
//! its cold compile, its cached start and one run of its `NAME:greet`
//! handler beside `example:noop`'s.
//!
//! Invariant: measures only; the first load (which may compile) and a
//! warm-up of runs are excluded from the figures, except in the cold
//! compile, which is measured against an empty compile cache each time.

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
/// Runs of a template component before measuring (each is a fresh instance
/// of a multi-MB component, so fewer than the noop's).
const COMPONENT_WARM_UP_RUNS: u32 = 20;
/// The input every template's `NAME:greet` handler accepts.
const GREET_INPUT: &str = r#"{"name":"Ada"}"#;

/// A component to measure beside `example:noop` (`--component LABEL=PATH`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    /// What the figures are called (`python`, `js`, `rust`).
    pub label: String,
    pub path: PathBuf,
}

/// How many times each component is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComponentRounds {
    /// Loads against an empty compile cache (a compile each).
    pub cold_loads: u32,
    /// Loads from the warm compile cache.
    pub cached_loads: u32,
    /// Timed runs of its handler.
    pub runs: u32,
}

/// A component given on the command line that cannot be measured: the
/// user's input was wrong (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("--component {label}={}: {reason}", .path.display())]
pub struct ComponentRefused {
    pub label: String,
    pub path: PathBuf,
    pub reason: String,
}

impl Component {
    /// Parse `LABEL=PATH`, as `--component` takes it; the error is the
    /// sentence to print.
    pub fn parse(text: &str) -> Result<Component, String> {
        let Some((label, path)) = text.split_once('=') else {
            return Err(format!(
                "--component {:?} is not LABEL=PATH; e.g. --component python=greet-py/greet_py.wasm",
                crate::limits::printable(text)
            ));
        };
        let valid = !label.is_empty()
            && label.len() <= 32
            && label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid {
            return Err(format!(
                "--component: the label {:?} is not usable; use 1 to 32 lowercase letters, digits and `-` (e.g. python)",
                crate::limits::printable(label)
            ));
        }
        if path.is_empty() {
            return Err(format!(
                "--component {label}= names no file; give the component's path"
            ));
        }
        Ok(Component {
            label: label.to_owned(),
            path: PathBuf::from(path),
        })
    }

    fn refused(&self, reason: impl Into<String>) -> anyhow::Error {
        ComponentRefused {
            label: self.label.clone(),
            path: self.path.clone(),
            reason: reason.into(),
        }
        .into()
    }
}

/// Measure `iterations` runs of `example:noop`, [`LOADS`] start-ups, and
/// each of `components` ([`bench_component`]). With no plugin directories in
/// `config`, the example plugins built with this binary are used.
pub async fn bench_plugin(
    config: &HostConfig,
    iterations: u32,
    components: &[Component],
    rounds: ComponentRounds,
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

    let noop_median_us = percentile(&runs, 50.0);
    let mut lines = vec![
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
    ];
    for component in components {
        lines.push(bench_component(component, rounds, noop_median_us).await?);
    }
    Ok(lines)
}

/// One template component: `cold_loads` loads each against a fresh, empty
/// compile cache (the engine, the compile, `describe()`), `cached_loads`
/// loads from the cache the last one filled, and `runs` runs of its
/// `NAME:greet` handler with `{"name":"Ada"}`, each in a fresh sandbox as a
/// task runs, compared with `example:noop`'s median.
pub async fn bench_component(
    component: &Component,
    rounds: ComponentRounds,
    noop_median_us: f64,
) -> anyhow::Result<serde_json::Value> {
    let bytes = std::fs::metadata(&component.path)
        .map_err(|e| component.refused(format!("cannot read it: {e}")))?
        .len();
    let caches = tempfile::tempdir().context("creating a temporary compile cache directory")?;

    let mut cold = Vec::with_capacity(rounds.cold_loads as usize);
    let mut cache_dir = caches.path().join("cold-0");
    for round in 0..rounds.cold_loads.max(1) {
        cache_dir = caches.path().join(format!("cold-{round}"));
        std::fs::create_dir(&cache_dir).context("creating a compile cache directory")?;
        let start = Instant::now();
        let (host, report) = PluginHost::load_file(&component.path, Some(&cache_dir))
            .await
            .map_err(|e| component.refused(e.to_string()))?;
        let elapsed = start.elapsed().as_secs_f64() * 1e3;
        if let Some(failure) = report.failures.first() {
            return Err(component.refused(failure.reason.clone()));
        }
        if report.loaded.is_empty() {
            return Err(
                component.refused("it is a wasi:cli/command program, not a plugin with handlers")
            );
        }
        if report.cache.misses != 1 {
            anyhow::bail!(
                "the cold load of {} did not compile: {:?}",
                component.path.display(),
                report.cache
            );
        }
        drop(host);
        cold.push(elapsed);
    }
    cold.sort_by(f64::total_cmp);

    let mut cached = Vec::with_capacity(rounds.cached_loads as usize);
    let mut last = None;
    for _ in 0..rounds.cached_loads.max(1) {
        let start = Instant::now();
        let (host, report) = PluginHost::load_file(&component.path, Some(&cache_dir))
            .await
            .map_err(|e| component.refused(e.to_string()))?;
        cached.push(start.elapsed().as_secs_f64() * 1e3);
        if report.cache.hits != 1 {
            anyhow::bail!(
                "the cached load of {} missed the compile cache: {:?}",
                component.path.display(),
                report.cache
            );
        }
        last = Some(host);
    }
    cached.sort_by(f64::total_cmp);
    let host = last.context("no cached load was made")?;

    let names = host.handler_names();
    let handler = names
        .iter()
        .find(|n| n.ends_with(":greet"))
        .cloned()
        .ok_or_else(|| {
            component.refused(format!(
                "it has no handler NAME:greet, so it is not a project of `lockstep plugins new` (its handlers: {})",
                names.join(", ")
            ))
        })?;
    let cx = Arc::new(StandaloneContext);
    let request = || RunRequest {
        handler: handler.clone(),
        job_id: 1,
        task_id: 1,
        stage: "bench".to_owned(),
        attempt: 1,
        input_json: GREET_INPUT.to_owned(),
        timeout: Duration::MAX,
    };
    let mut output = String::new();
    for _ in 0..COMPONENT_WARM_UP_RUNS {
        output = host
            .run(request(), cx.clone())
            .await
            .map_err(|e| component.refused(format!("{handler} failed during warm-up: {e}")))?
            .output;
    }
    let mut runs = Vec::with_capacity(rounds.runs as usize);
    for _ in 0..rounds.runs.max(1) {
        let start = Instant::now();
        host.run(request(), cx.clone())
            .await
            .map_err(|e| component.refused(format!("{handler} failed: {e}")))?;
        runs.push(start.elapsed().as_secs_f64() * 1e6);
    }
    runs.sort_by(f64::total_cmp);
    let median = percentile(&runs, 50.0);
    let output: serde_json::Value = serde_json::from_str(&output)
        .map_err(|e| component.refused(format!("{handler} answered no JSON: {e}")))?;

    Ok(json!({
        "bench": "plugin",
        "case": "component",
        "label": component.label,
        "file": component.path.display().to_string(),
        "bytes": bytes,
        "handler": handler,
        "output": output,
        "cold_loads": cold.len(),
        "cold_load_median_ms": round2(percentile(&cold, 50.0)),
        "cold_load_max_ms": round2(cold.last().copied().unwrap_or_default()),
        "cached_loads": cached.len(),
        "cached_start_median_ms": round2(percentile(&cached, 50.0)),
        "cached_start_p90_ms": round2(percentile(&cached, 90.0)),
        "runs": runs.len(),
        "run_median_us": round2(median),
        "run_p99_us": round2(percentile(&runs, 99.0)),
        "noop_run_median_us": round2(noop_median_us),
        "run_vs_noop": round2(median / noop_median_us.max(f64::MIN_POSITIVE)),
    }))
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
