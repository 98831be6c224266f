//! `lockstep bench mcp`: latency of MCP tool calls as an agent sees them —
//! a real rmcp client speaking streamable HTTP on loopback to the same
//! router `lockstep serve --http` mounts, bearer token and all, against a
//! database already holding many tasks.
//!
//! Each sample is one `tools/call` round trip: token check, argument
//! validation, the engine call, rendering and both JSON encodings. The
//! per-token rate limit is off (a benchmark is far above any sane rate).

use super::mcp_clients::ClientSide;
use super::percentile;
use crate::engine::Engine;
use crate::mcp::McpConfig;
use crate::mcp::http::{self, HttpConfig};
use crate::model::{JobId, TenantId, TokenRole};
use crate::spec::plan::{MAX_SUBTASKS, Plan, PlannedSubtask};
use anyhow::Context as _;
use rmcp::model::CallToolRequestParams;
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

pub(super) type Client = RunningService<RoleClient, ()>;

/// Calls made before measuring, so connection set-up and first-use costs
/// (statement caches, page cache) are not counted.
const WARM_UP: u32 = 200;

/// Why `--tasks`/`--samples` cannot be run, if they cannot.
pub fn check_sizes(tasks: u64, samples: u32) -> Result<(), String> {
    let max = MAX_SUBTASKS;
    let plan_size = samples as usize + WARM_UP as usize;
    if samples == 0 || plan_size > max {
        return Err(format!(
            "--samples {samples} is out of range: it must be 1 to {} (one plan of {max} tasks holds the samples and {WARM_UP} warm-up calls)",
            max - WARM_UP as usize
        ));
    }
    if (tasks as usize) < plan_size {
        return Err(format!(
            "--tasks {tasks} is too small: it must be at least --samples + {WARM_UP} = {plan_size}"
        ));
    }
    Ok(())
}

/// Fill the database to `tasks` tasks of `tenant` (of which `samples` + 200
/// are one agent plan), serve MCP over HTTP on 127.0.0.1, time `get_job` and
/// `claim_task` + `complete_task` through a real client, then measure what
/// each tool's output schema costs clients ([`super::mcp_clients`]).
pub async fn mcp(
    engine: Arc<Engine>,
    tenant: &TenantId,
    tasks: u64,
    samples: u32,
    client_side: &ClientSide,
) -> anyhow::Result<Vec<Value>> {
    if let Err(problem) = check_sizes(tasks, samples) {
        anyhow::bail!(problem);
    }
    let plan_size = samples + WARM_UP;

    let fill_started = Instant::now();
    let fill_jobs = super::lookup::fill(&engine, tenant, tasks - u64::from(plan_size)).await?;
    let plan = engine
        .plan(
            tenant,
            Plan {
                goal: "bench mcp".into(),
                idempotency_key: None,
                subtasks: (0..plan_size)
                    .map(|i| PlannedSubtask {
                        title: format!("step {i}"),
                        instructions: "Report done.".into(),
                        specialist: None,
                        key: None,
                        depends_on: vec![],
                        max_attempts: None,
                    })
                    .collect(),
            },
        )
        .await
        .context("planning the benchmark's agent job")?;
    let fill_seconds = fill_started.elapsed().as_secs_f64();

    let token = engine
        .create_token(tenant, Some("bench mcp".into()), TokenRole::Admin)
        .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a loopback port for the benchmark server")?;
    let url = format!("http://{}/mcp", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let router = http::router(
        engine.clone(),
        McpConfig::default(),
        &HttpConfig {
            rate_per_second: 0.0,
            ..HttpConfig::default()
        },
        shutdown.clone(),
    );
    let server = tokio::spawn(http::serve(listener, router, shutdown.clone()));

    let client: Client = ()
        .serve(StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri(url.as_str()).auth_header(token.token),
        ))
        .await
        .context("MCP handshake with the benchmark server")?;

    let measured = async {
        let cases = measure(
            &client,
            (JobId(plan.job_id), u64::from(plan_size)),
            fill_jobs.last().copied(),
            samples,
        )
        .await?;
        let schemas = super::mcp_clients::measure(&client, client_side).await?;
        anyhow::Ok((cases, schemas))
    }
    .await;
    let _ = client.cancel().await;
    shutdown.cancel();
    let _ = server.await;
    let mut lines = vec![json!({
        "bench": "mcp", "case": "fill", "tasks": tasks, "seconds": fill_seconds,
    })];
    let (cases, schemas) = measured?;
    lines.extend(
        cases
            .into_iter()
            .map(|(case, job_tasks, micros, note)| summary(case, tasks, job_tasks, &micros, note)),
    );
    lines.extend(schemas);
    Ok(lines)
}

/// One line per case: the case, the size of the job it works on, its
/// samples in microseconds, a note.
type Case = (&'static str, u64, Vec<f64>, &'static str);

async fn measure(
    client: &Client,
    (plan_job, plan_tasks): (JobId, u64),
    big_job: Option<(JobId, u64)>,
    samples: u32,
) -> anyhow::Result<Vec<Case>> {
    let mut cases = Vec::new();

    for _ in 0..WARM_UP {
        call(client, "get_job", json!({ "job_id": plan_job.0 })).await?;
    }
    let mut get_job = Vec::with_capacity(samples as usize);
    for _ in 0..samples {
        let t = Instant::now();
        call(client, "get_job", json!({ "job_id": plan_job.0 })).await?;
        get_job.push(micros(t));
    }
    cases.push((
        "get_job",
        plan_tasks,
        get_job,
        "the agent plan (--samples + 200 tasks)",
    ));

    if let Some((big, big_tasks)) = big_job {
        let mut get_big = Vec::with_capacity(samples as usize);
        for _ in 0..samples.min(500) {
            let t = Instant::now();
            call(client, "get_job", json!({ "job_id": big.0 })).await?;
            get_big.push(micros(t));
        }
        cases.push((
            "get_job_large",
            big_tasks,
            get_big,
            "a filler job of pending tasks: its counts scan the job's index range",
        ));
    }

    // Warm the claim/complete path on tasks that are not measured.
    for _ in 0..WARM_UP {
        let (task, attempt) = claim(client, plan_job).await?;
        complete(client, task, attempt).await?;
    }
    let mut claims = Vec::with_capacity(samples as usize);
    let mut completes = Vec::with_capacity(samples as usize);
    for _ in 0..samples {
        let t = Instant::now();
        let (task, attempt) = claim(client, plan_job).await?;
        claims.push(micros(t));
        let t = Instant::now();
        complete(client, task, attempt).await?;
        completes.push(micros(t));
    }
    cases.push((
        "claim_task",
        plan_tasks,
        claims,
        "takes a lease: one durable write transaction",
    ));
    cases.push((
        "complete_task",
        plan_tasks,
        completes,
        "fenced by the attempt; one durable write transaction",
    ));
    Ok(cases)
}

pub(super) async fn claim(client: &Client, job: JobId) -> anyhow::Result<(i64, i64)> {
    let claimed = call(client, "claim_task", json!({ "job_id": job.0 })).await?;
    let task = &claimed["task"];
    match (task["task_id"].as_i64(), task["attempt"].as_i64()) {
        (Some(id), Some(attempt)) => Ok((id, attempt)),
        _ => anyhow::bail!("claim_task returned no task: {claimed}"),
    }
}

async fn complete(client: &Client, task: i64, attempt: i64) -> anyhow::Result<()> {
    call(
        client,
        "complete_task",
        json!({ "task_id": task, "attempt": attempt, "summary": "done" }),
    )
    .await
    .map(|_| ())
}

/// Call a tool; its structured result, or an error naming the tool's refusal.
pub(super) async fn call(client: &Client, tool: &str, args: Value) -> anyhow::Result<Value> {
    let mut params = CallToolRequestParams::new(tool.to_string());
    params.arguments = args.as_object().cloned();
    let result = client
        .call_tool(params)
        .await
        .with_context(|| format!("{tool} over MCP"))?;
    let content = result.structured_content.unwrap_or(Value::Null);
    if result.is_error == Some(true) {
        anyhow::bail!("{tool} was refused: {content}");
    }
    Ok(content)
}

fn micros(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e6
}

fn summary(case: &str, tasks: u64, job_tasks: u64, micros: &[f64], note: &str) -> Value {
    let mut sorted = micros.to_vec();
    sorted.sort_by(f64::total_cmp);
    json!({
        "bench": "mcp", "case": case, "transport": "streamable-http", "tasks": tasks,
        "job_tasks": job_tasks, "samples": sorted.len(),
        "p50_us": percentile(&sorted, 50.0), "p95_us": percentile(&sorted, 95.0),
        "p99_us": percentile(&sorted, 99.0), "max_us": sorted.last().copied().unwrap_or(0.0),
        "note": note,
    })
}
