//! `lockstep bench ui`: how long the dashboard takes to answer its heaviest
//! pages, as a browser asks for them — the jobs list of a tenant with many
//! jobs, and the page of one job with many tasks (its first page of tasks,
//! and one from the middle) — and a Prometheus scrape of `/metrics` on the
//! same database, over HTTP on loopback, through the routers `serve --http`
//! mounts, with a bearer token.
//!
//! Each sample is one GET whose whole body is read: the token check, the
//! engine reads and the rendering. Every answer is checked to be the full
//! page (its number of rows), so a refusal cannot pass for a fast page.

use super::percentile;
use crate::engine::Engine;
use crate::model::{JobId, TenantId, TokenRole};
use crate::ui::{self, UiAuth, UiConfig};
use anyhow::Context as _;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// Requests made before measuring each page.
const WARM_UP: u32 = 20;

/// Why `--jobs`/`--tasks`/`--samples` cannot be run, if they cannot.
pub fn check_sizes(jobs: u32, tasks: u64, samples: u32) -> Result<(), String> {
    if jobs == 0 {
        return Err("--jobs must be at least 1".to_string());
    }
    if !(2..=100_000).contains(&tasks) {
        return Err(format!(
            "--tasks {tasks} is out of range: one job holds 2 to 100000 tasks"
        ));
    }
    if samples == 0 {
        return Err("--samples must be at least 1".to_string());
    }
    Ok(())
}

/// Fill the database with `jobs` one-task jobs and one job of `tasks`
/// tasks for one tenant, serve the dashboard on 127.0.0.1 and time its
/// pages.
pub async fn ui(
    engine: Arc<Engine>,
    jobs: u32,
    tasks: u64,
    samples: u32,
) -> anyhow::Result<Vec<Value>> {
    if let Err(problem) = check_sizes(jobs, tasks, samples) {
        anyhow::bail!(problem);
    }
    let tenant = TenantId("bench-ui".into());
    let fill_started = Instant::now();
    let big = engine
        .submit(&tenant, super::lookup::fill_job(0, tasks))
        .await
        .context("submitting the benchmark's big job")?
        .job_id;
    for n in 1..=jobs {
        engine
            .submit(&tenant, super::lookup::fill_job(u64::from(n), 1))
            .await
            .context("submitting the benchmark's small jobs")?;
    }
    let fill_seconds = fill_started.elapsed().as_secs_f64();

    let token = engine
        .create_token(&tenant, Some("bench ui".into()), TokenRole::Read)
        .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a loopback port for the benchmark server")?;
    let base = format!("http://{}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let router = ui::router(
        engine.clone(),
        UiConfig {
            auth: UiAuth::Tokens,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            shutdown: shutdown.clone(),
            worker_slots: None,
        },
    );
    // /metrics on the same listener, as `serve --http` mounts it.
    let exporter = crate::telemetry::Exporter::install()?;
    let router = router.merge(crate::telemetry::router(engine.clone(), exporter, None));
    let server = tokio::spawn(crate::mcp::http::serve(listener, router, shutdown.clone()));

    let client = reqwest::Client::new();
    let pages: [(&str, String, &str, usize); 4] = [
        (
            "jobs_list",
            format!("{base}/ui/jobs"),
            "class=\"job-row\"",
            ui::JOBS_PER_PAGE as usize,
        ),
        (
            "job_page_first_tasks",
            format!("{base}/ui/jobs/{}", big.0),
            "class=\"task-row\"",
            ui::TASKS_PER_PAGE as usize,
        ),
        (
            "job_page_middle_tasks",
            format!(
                "{base}/ui/jobs/{}?tasks_after={}",
                big.0,
                middle_task(&engine, &tenant, big, tasks).await?
            ),
            "class=\"task-row\"",
            ui::TASKS_PER_PAGE as usize,
        ),
        // Every tenant's tasks and jobs by state, sampled from the database.
        (
            "metrics",
            format!("{base}{}", crate::telemetry::METRICS_PATH),
            "\nlockstep_tasks{state=",
            crate::model::TaskState::ALL.len(),
        ),
    ];
    let measured = async {
        let mut lines = Vec::new();
        for (case, url, row, rows) in &pages {
            let mut times = Vec::with_capacity(samples as usize);
            let mut bytes = 0;
            for i in 0..WARM_UP + samples {
                let started = Instant::now();
                let response = client
                    .get(url)
                    .bearer_auth(&token.token)
                    .send()
                    .await
                    .with_context(|| format!("GET {url}"))?;
                let status = response.status();
                let body = response
                    .text()
                    .await
                    .with_context(|| format!("GET {url}"))?;
                let elapsed = started.elapsed().as_secs_f64() * 1e3;
                anyhow::ensure!(status == 200, "GET {url} answered {status}: {body}");
                let found = body.matches(row).count();
                anyhow::ensure!(found == *rows, "GET {url} showed {found} rows, not {rows}");
                if i >= WARM_UP {
                    times.push(elapsed);
                    bytes = body.len();
                }
            }
            times.sort_by(f64::total_cmp);
            lines.push(json!({
                "bench": "ui",
                "case": case,
                "jobs": u64::from(jobs) + 1,
                "tasks_in_job": tasks,
                "rows": rows,
                "bytes": bytes,
                "samples": samples,
                "p50_ms": percentile(&times, 50.0),
                "p99_ms": percentile(&times, 99.0),
                "max_ms": times.last().copied().unwrap_or(0.0),
            }));
        }
        anyhow::Ok(lines)
    }
    .await;
    shutdown.cancel();
    let _ = server.await;
    let mut lines = vec![json!({
        "bench": "ui", "case": "fill", "jobs": u64::from(jobs) + 1, "tasks_in_job": tasks,
        "seconds": fill_seconds,
    })];
    lines.extend(measured?);
    Ok(lines)
}

/// The id of the task halfway through the big job.
async fn middle_task(
    engine: &Engine,
    tenant: &TenantId,
    job: JobId,
    tasks: u64,
) -> anyhow::Result<i64> {
    let first = engine
        .job_tasks_page(tenant, job, None, 1)
        .await?
        .first()
        .map(|t| t.task_id.0)
        .context("the big job has no tasks")?;
    Ok(first + (tasks / 2) as i64)
}
