//! `lockstep bench mcp`, client side: what each tool's output schema costs
//! the clients agents are built on. Clients validate every successful
//! result against the tool's output schema; for every tool this measures
//! - the schema's size as `tools/list` publishes it;
//! - a compiled validator (the `jsonschema` crate, compiled once and reused,
//!   as the TypeScript SDK does with Ajv) on a typical result;
//! - the official Python SDK (PyPI `mcp`, one run per `--python` interpreter
//!   that has it installed): `call_tool` over stdio against `lockstep mcp`
//!   with and without the SDK's output-schema validation, and that
//!   validation alone on the same result (`mcp_python_sdk.py`).
//!
//! Typical results come from typical calls: a plan like docs/mcp.md's
//! example with its first subtask done, claims of subtasks with one
//! dependency summary, completions with details and an artifact. A tool that
//! changes state gets fresh state for every call (its own claimed task, job
//! or cancelled task), all prepared over MCP before anything is timed.

use super::mcp::{Client, call};
use super::percentile;
use crate::model::JobId;
use anyhow::Context as _;
use serde_json::{Value, json};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Instant;

/// Calls of each tool the Python SDK makes before it is timed.
pub const PYTHON_WARM_UP: usize = 4;

/// Largest plan the preparation makes, in subtasks.
const MAX_POOL: usize = crate::spec::plan::MAX_SUBTASKS;

/// What to measure on the client side.
#[derive(Debug, Clone)]
pub struct ClientSide {
    /// Compiled-validator runs per tool.
    pub validations: u32,
    /// Python interpreters with the `mcp` package installed.
    pub pythons: Vec<PathBuf>,
    /// Timed `call_tool`s per tool and per mode (validated, not validated).
    pub python_samples: u32,
    /// `lockstep … mcp` on the benchmark's database and tenant, which the
    /// Python SDK starts as its stdio server.
    pub stdio_server: (PathBuf, Vec<OsString>),
}

impl ClientSide {
    /// Calls of each tool one Python run makes.
    fn python_calls(&self) -> usize {
        2 * self.python_samples as usize + PYTHON_WARM_UP
    }

    /// Calls of each tool the benchmark needs: one for the Rust side, then
    /// each Python run's.
    fn calls_per_tool(&self) -> usize {
        1 + self.pythons.len() * self.python_calls()
    }
}

/// Why these client-side sizes cannot be run, if they cannot.
pub fn check_sizes(validations: u32, pythons: usize, python_samples: u32) -> Result<(), String> {
    if validations == 0 || validations > 1_000_000 {
        return Err(format!(
            "--validations {validations} is out of range: it must be 1 to 1000000"
        ));
    }
    // The completions and failures of every run are claimed from one plan.
    let per_run = 2 * python_samples as usize + PYTHON_WARM_UP;
    let pool = 2 * (1 + pythons * per_run) + 1;
    if python_samples == 0 || pool > MAX_POOL {
        let most = ((MAX_POOL - 3) / 2 / pythons.max(1) - PYTHON_WARM_UP) / 2;
        return Err(format!(
            "--python-samples {python_samples} is out of range: with {} --python it must be 1 to {most} (the calls of every run are prepared in plans of at most {MAX_POOL} subtasks)",
            pythons.max(1)
        ));
    }
    Ok(())
}

/// One JSON line per listed tool (see the module doc).
pub async fn measure(client: &Client, side: &ClientSide) -> anyhow::Result<Vec<Value>> {
    let listed = client
        .list_all_tools()
        .await
        .context("tools/list over MCP")?;
    let calls = typical_calls(client, side.calls_per_tool()).await?;

    let mut lines = Vec::new();
    let mut python_runs: Vec<Vec<Value>> = Vec::new();
    for (index, python) in side.pythons.iter().enumerate() {
        let start = 1 + index * side.python_calls();
        let tools: Vec<Value> = calls
            .iter()
            .map(|(tool, calls)| {
                json!({ "tool": tool, "calls": calls[start..start + side.python_calls()] })
            })
            .collect();
        python_runs.push(python_sdk(python, side, tools).await?);
    }

    // Each handler is a tool too (`mcp::handler_tools`); those publish no
    // output schema, so there is nothing of theirs to measure here.
    for tool in listed.iter().filter(|t| t.output_schema.is_some()) {
        let name = tool.name.to_string();
        let schema = tool
            .output_schema
            .as_ref()
            .map(|s| Value::Object((**s).clone()));
        let schema_bytes = schema
            .as_ref()
            .map(|s| s.to_string().len())
            .unwrap_or_default();
        let mut line = json!({
            "bench": "mcp", "case": "output_schema", "tool": name,
            "schema_bytes": schema_bytes,
        });
        let typical = calls.iter().find(|(t, _)| *t == name);
        match (typical, &schema) {
            (Some((tool, calls)), Some(schema)) => {
                let result = call(client, tool, calls[0].clone()).await?;
                line["result_bytes"] = json!(result.to_string().len());
                line["compiled"] = compiled(tool, schema, &result, side.validations)?;
                line["python_sdk"] = Value::Array(
                    python_runs
                        .iter()
                        .filter_map(|run| run.iter().find(|r| r["tool"] == name).cloned())
                        .collect(),
                );
            }
            (None, _) => {
                line["note"] = json!("the benchmark makes no typical call of this tool");
            }
            (_, None) => line["note"] = json!("the tool publishes no output schema"),
        }
        lines.push(line);
    }
    Ok(lines)
}

/// A validator compiled once from `schema`, run `runs` times on `result`.
fn compiled(tool: &str, schema: &Value, result: &Value, runs: u32) -> anyhow::Result<Value> {
    let started = Instant::now();
    let validator = jsonschema::validator_for(schema)
        .map_err(|e| anyhow::anyhow!("the output schema of {tool} does not compile: {e}"))?;
    let compile_us = micros(started);
    if let Err(e) = validator.validate(result) {
        anyhow::bail!("the typical result of {tool} does not match its output schema: {e}");
    }
    let mut samples = Vec::with_capacity(runs as usize);
    for _ in 0..runs {
        let started = Instant::now();
        let valid = validator.is_valid(std::hint::black_box(result));
        samples.push(micros(started));
        std::hint::black_box(valid);
    }
    samples.sort_by(f64::total_cmp);
    Ok(json!({
        "validator": "jsonschema crate, compiled once",
        "compile_us": compile_us,
        "samples": samples.len(),
        "p50_us": percentile(&samples, 50.0),
        "p99_us": percentile(&samples, 99.0),
    }))
}

fn micros(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e6
}

/// Run `mcp_python_sdk.py` with `python`; its line per tool.
async fn python_sdk(
    python: &PathBuf,
    side: &ClientSide,
    tools: Vec<Value>,
) -> anyhow::Result<Vec<Value>> {
    let dir = tempfile::tempdir().context("a temporary directory for the Python SDK run")?;
    let script = dir.path().join("mcp_python_sdk.py");
    std::fs::write(&script, include_str!("mcp_python_sdk.py"))
        .context("writing the Python SDK script")?;
    let stderr = dir.path().join("server.log");
    let (program, args) = &side.stdio_server;
    let spec = json!({
        "command": program,
        "args": args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>(),
        "stderr": stderr,
        "warm_up": PYTHON_WARM_UP,
        "validations": 2 * side.python_samples,
        "tools": tools,
    });
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).context("writing the Python SDK run's spec")?;
    let out = tokio::process::Command::new(python)
        .arg(&script)
        .arg(&spec_path)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !out.status.success() {
        let server = std::fs::read_to_string(&stderr).unwrap_or_default();
        anyhow::bail!(
            "the Python SDK run with {} failed ({}): {}\nlockstep mcp said: {}",
            python.display(),
            out.status,
            crate::limits::printable(String::from_utf8_lossy(&out.stderr).trim()),
            crate::limits::printable(server.trim())
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str(l).with_context(|| {
                format!("{} printed a line that is not JSON: {l}", python.display())
            })
        })
        .collect()
}

/// For every tool it knows, `count` arguments whose results are typical;
/// a tool that changes state gets fresh state for each.
async fn typical_calls(
    client: &Client,
    count: usize,
) -> anyhow::Result<Vec<(&'static str, Vec<Value>)>> {
    let nonce = crate::engine::now_millis();
    let repeat = |args: Value| vec![args; count];
    let job_id = |v: &Value| v["job_id"].as_i64().context("a job id");

    // The plan of docs/mcp.md's example, its first subtask done.
    let plan_args = json!({
        "goal": "Add email login",
        "idempotency_key": format!("bench-plan-{nonce}"),
        "subtasks": [
            { "key": "schema", "title": "Design the schema", "instructions": "Add a users table with email and password hash; email is unique." },
            { "key": "reqs", "title": "Collect requirements", "instructions": "Read the tickets tagged login and list what they ask for." },
            { "key": "migration", "title": "Write the migration", "instructions": "Write the SQL migration for the schema.", "depends_on": ["schema"] },
            { "key": "api", "title": "Write the API", "instructions": "POST /login and POST /logout.", "depends_on": ["schema", "reqs"], "specialist": "backend" },
            { "key": "docs", "title": "Write the docs", "instructions": "Document the endpoints.", "depends_on": ["migration", "api"] },
        ],
    });
    let plan = job_id(&call(client, "plan_task", plan_args.clone()).await?)?;
    let (schema_task, attempt) = claim(client, plan).await?;
    call(client, "update_task", json!({ "task_id": schema_task, "attempt": attempt, "note": "drafted users(id, email, password_hash)" })).await?;
    call(client, "complete_task", completion(schema_task, attempt)).await?;

    // Claims: subtasks that depend on one finished subtask.
    let claims = job_id(&plan_pool(client, "claims", count + 1, true).await?)?;
    let (base, attempt) = claim(client, claims).await?;
    call(client, "complete_task", completion(base, attempt)).await?;

    // Updates (all on one task), completions and failures of claimed tasks.
    let work = job_id(&plan_pool(client, "work", 2 * count + 1, false).await?)?;
    let mut claimed = Vec::with_capacity(2 * count + 1);
    for _ in 0..2 * count + 1 {
        claimed.push(claim(client, work).await?);
    }
    let (updated, updated_attempt) = claimed[0];

    // Cancellations: one running plan each. Retries: tasks of a cancelled plan.
    let mut cancels = Vec::with_capacity(count);
    for i in 0..count {
        let one = plan_pool(client, &format!("cancel {i}"), 1, false).await?;
        cancels.push(json!({ "job_id": job_id(&one)? }));
    }
    let retries = plan_pool(client, "retries", count, false).await?;
    call(client, "cancel_job", json!({ "job_id": job_id(&retries)? })).await?;
    let retry_tasks: Vec<Value> = retries["tasks"]
        .as_array()
        .context("the plan's tasks")?
        .iter()
        .map(|t| json!({ "task_id": t["task_id"] }))
        .collect();

    // A finished job, for wait_job to return at once.
    let finished = job_id(&plan_pool(client, "finished", 1, false).await?)?;
    let (task, attempt) = claim(client, finished).await?;
    call(client, "complete_task", completion(task, attempt)).await?;

    let submitted = json!({
        "job": {
            "name": "review the login change",
            "stages": [{ "name": "review", "executor": "agent", "tasks": [
                { "title": "Review the diff", "instructions": "Read the change and list problems." },
                { "title": "Check the tests", "instructions": "Run the tests and report failures." },
            ] }],
        },
        "idempotency_key": format!("bench-submit-{nonce}"),
    });

    Ok(vec![
        ("health_check", repeat(json!({}))),
        ("list_handlers", repeat(json!({}))),
        ("submit_job", repeat(submitted)),
        ("get_job", repeat(json!({ "job_id": plan }))),
        ("list_jobs", repeat(json!({ "limit": 20 }))),
        ("wait_job", repeat(json!({ "job_id": finished, "timeout_seconds": 1 }))),
        ("cancel_job", cancels),
        ("get_task", repeat(json!({ "task_id": schema_task }))),
        ("retry_task", retry_tasks),
        ("plan_task", repeat(plan_args)),
        ("claim_task", repeat(json!({ "job_id": claims }))),
        (
            "update_task",
            (0..count)
                .map(|i| json!({ "task_id": updated, "attempt": updated_attempt, "note": format!("step {i} of the migration written") }))
                .collect(),
        ),
        (
            "complete_task",
            claimed[1..=count]
                .iter()
                .map(|&(task, attempt)| completion(task, attempt))
                .collect(),
        ),
        (
            "fail_task",
            claimed[count + 1..]
                .iter()
                .map(|&(task, attempt)| json!({ "task_id": task, "attempt": attempt, "reason": "the migration failed: column email already exists", "retryable": true }))
                .collect(),
        ),
    ])
}

/// A plan of `size` subtasks; with `dependent`, all but the first depend on the first.
async fn plan_pool(
    client: &Client,
    name: &str,
    size: usize,
    dependent: bool,
) -> anyhow::Result<Value> {
    let subtasks: Vec<Value> = (0..size)
        .map(|i| {
            let mut subtask = json!({
                "key": format!("step-{i}"),
                "title": format!("Step {i} of {name}"),
                "instructions": "Do this step and report what changed.",
            });
            if dependent && i > 0 {
                subtask["depends_on"] = json!(["step-0"]);
            }
            subtask
        })
        .collect();
    call(
        client,
        "plan_task",
        json!({ "goal": format!("bench mcp: {name}"), "subtasks": subtasks }),
    )
    .await
}

/// The arguments of a typical completion.
fn completion(task: i64, attempt: i64) -> Value {
    json!({
        "task_id": task,
        "attempt": attempt,
        "summary": "users(id, email unique, password_hash); index on email",
        "details": "CREATE TABLE users (\n  id BIGINT PRIMARY KEY,\n  email TEXT NOT NULL UNIQUE,\n  password_hash TEXT NOT NULL\n);",
        "artifacts": [{ "path": "db/schema.sql", "kind": "file" }],
        "next_action": "write migration 0007",
    })
}

async fn claim(client: &Client, job: i64) -> anyhow::Result<(i64, i64)> {
    super::mcp::claim(client, JobId(job)).await
}
