//! The `lockstep ci` front door: pipelines of `wasi:cli/command` steps.
//!
//! `ci run FILE` validates the pipeline (nothing is written when it is
//! wrong: one sentence, exit 2), submits it as a job — or resumes the
//! unfinished run of the same plans — runs its steps in this process with a
//! live view ([`view`]), writes the reports asked for ([`report`]: JUnit,
//! Markdown) and exits 0 when every step passed (soft failures included),
//! 1 when the pipeline failed. `ci status`, `ci logs` and `ci rerun` read
//! and re-run stored runs.
//!
//! **Invariant 29:** a front door: it calls the engine (and the plugin host to
//! load components) and never the store.
//! **Invariant 35:** everything it prints or writes passes the run's secret
//! masker and `limits::printable`.

use crate::cli::output::say;
mod report;
mod view;

use crate::cli::{CliResult, Ctx, Failure};
use crate::engine::Engine;
use crate::engine::pipeline::{self, Secrets, StepRunConfig, StepStatus};
use crate::limits::printable;
use crate::model::{EventKind, JobId, JobState, TaskState};
use crate::plugin::CommandHost;
use crate::spec::pipeline::PipelineOptions;
use anyhow::Context as _;
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum CiCommand {
    /// Run a pipeline file (default lockstep-ci.toml) with a live view; exit 1 if it fails.
    Run(RunArgs),
    /// Show the steps of a run: state, outcome, duration, attempts.
    Status(StatusArgs),
    /// Print the log lines of a run, or of one step.
    Logs(LogsArgs),
    /// Run a finished run again as a new run: every step, or only the failed ones.
    Rerun(RerunArgs),
}

/// Where reports go and how steps run (shared by `run` and `rerun`).
#[derive(Debug, Args)]
pub struct RunOptions {
    /// Write a JUnit XML report here.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Write a Markdown summary here.
    #[arg(long, value_name = "FILE")]
    summary: Option<PathBuf>,
    /// Secrets as NAME=VALUE lines (the file must not be readable by group or others).
    #[arg(long, value_name = "FILE")]
    secrets: Option<PathBuf>,
    /// Steps run at once (and tests of a rust-test step at once).
    #[arg(long)]
    slots: Option<usize>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Pipeline file (.toml or .json).
    #[arg(default_value = "lockstep-ci.toml")]
    file: PathBuf,
    /// Directory preopened read-only at /workspace (default: the file's directory).
    #[arg(long, value_name = "DIR")]
    workspace: Option<PathBuf>,
    /// Where artifacts and caches are kept (default: .lockstep in the workspace).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    #[command(flatten)]
    options: RunOptions,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    run: i64,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    run: i64,
    /// Only this step (its key).
    step: Option<String>,
    /// Keep printing new lines until the run ends.
    #[arg(long)]
    follow: bool,
}

#[derive(Debug, Args)]
pub struct RerunArgs {
    run: i64,
    /// Only the failed and cancelled steps and the steps that need them;
    /// the others keep their outputs and artifacts.
    #[arg(long)]
    failed: bool,
    #[command(flatten)]
    options: RunOptions,
}

pub(crate) async fn ci(ctx: &Ctx, command: CiCommand) -> CliResult {
    match command {
        CiCommand::Run(a) => run(ctx, a).await,
        CiCommand::Status(a) => status(ctx, a).await,
        CiCommand::Logs(a) => logs(ctx, a).await,
        CiCommand::Rerun(a) => rerun(ctx, a).await,
    }
}

fn bad(e: impl std::fmt::Display) -> Failure {
    Failure::BadInput(anyhow::anyhow!("{e}"))
}

fn command_host(ctx: &Ctx) -> Result<Arc<CommandHost>, Failure> {
    let cache = crate::plugin::resolve_cache_dir(ctx.cache_dir()).map_err(bad)?;
    let host = CommandHost::new(&cache).map_err(|e| Failure::Other(e.into()))?;
    Ok(Arc::new(host))
}

/// The secrets the steps name, from `--secrets` or the environment.
fn secrets_for(steps: &[crate::model::StepPlan], file: Option<&Path>) -> Result<Secrets, Failure> {
    let needed: Vec<(String, String)> = steps
        .iter()
        .flat_map(|s| s.secrets.iter().map(|n| (n.clone(), s.key.clone())))
        .collect();
    Secrets::load(&needed, file, &|name| std::env::var(name).ok()).map_err(bad)
}

async fn run(ctx: &Ctx, args: RunArgs) -> CliResult {
    let plugins = ctx.plugins().await?;
    let commands = command_host(ctx)?;
    let options = PipelineOptions {
        workspace: args.workspace.clone(),
        state_dir: args.state_dir.clone(),
    };
    // Every check before the database is opened: nothing is written.
    let pipeline = pipeline::load(&plugins, &commands, &args.file, &options).map_err(bad)?;
    let secrets = secrets_for(&pipeline.steps, args.options.secrets.as_deref())?;
    let engine = ctx.open(plugins).await?;
    let start = engine.start_pipeline(&ctx.tenant, &pipeline).await?;
    if start.resumed {
        say!(
            "resuming run {} of {} (it did not finish; finished steps are kept)",
            start.job.0,
            printable(&pipeline.name)
        )?;
    } else {
        say!(
            "run {}: pipeline {}, {} steps",
            start.job.0,
            printable(&pipeline.name),
            pipeline.steps.len()
        )?;
    }
    execute(ctx, &engine, commands, start.job, secrets, &args.options).await
}

async fn rerun(ctx: &Ctx, args: RerunArgs) -> CliResult {
    let engine = ctx.engine().await?;
    let old = JobId(args.run);
    let steps = engine.pipeline_steps(&ctx.tenant, old).await?;
    let plans: Vec<_> = steps.into_iter().map(|s| s.plan).collect();
    let secrets = secrets_for(&plans, args.options.secrets.as_deref())?;
    let commands = command_host(ctx)?;
    let job = engine.rerun_pipeline(&ctx.tenant, old, args.failed).await?;
    say!(
        "run {}: {} of run {}",
        job.0,
        if args.failed {
            "the failed steps (and the steps that need them)"
        } else {
            "every step"
        },
        old.0
    )?;
    execute(ctx, &engine, commands, job, secrets, &args.options).await
}

/// Run the steps of `job` here with a live view, then report.
async fn execute(
    ctx: &Ctx,
    engine: &Arc<Engine>,
    commands: Arc<CommandHost>,
    job: JobId,
    secrets: Secrets,
    options: &RunOptions,
) -> CliResult {
    let masker = secrets.masker();
    let mut config = StepRunConfig {
        secrets,
        ..StepRunConfig::default()
    };
    if let Some(slots) = options.slots {
        config.slots = slots.max(1);
    }
    let runner = engine.run_steps(ctx.tenant.clone(), job, commands, config);
    let started = std::time::Instant::now();
    view::follow(engine, &ctx.tenant, job, &masker).await?;
    runner.finished().await;
    let steps = engine.pipeline_steps(&ctx.tenant, job).await?;
    let progress = engine.progress(&ctx.tenant, job).await?;
    if let Some(path) = &options.junit {
        let logs = step_logs(engine, ctx, job).await?;
        let xml = report::junit(&progress.job.name, &steps, &logs, &masker);
        std::fs::write(path, xml)
            .with_context(|| format!("could not write the JUnit report {}", path.display()))?;
    }
    if let Some(path) = &options.summary {
        let md = report::summary(job, &progress.job.name, progress.job.state, &steps, &masker);
        std::fs::write(path, md)
            .with_context(|| format!("could not write the summary {}", path.display()))?;
    }
    let line = view::final_line(job, progress.job.state, &steps, started.elapsed());
    match progress.job.state {
        JobState::Succeeded => {
            say!("{line}")?;
            Ok(())
        }
        _ => Err(Failure::JobFailed(line)),
    }
}

/// Every log line of a run, by task id.
async fn step_logs(
    engine: &Engine,
    ctx: &Ctx,
    job: JobId,
) -> Result<std::collections::HashMap<i64, Vec<String>>, Failure> {
    let mut out: std::collections::HashMap<i64, Vec<String>> = Default::default();
    let mut after = None;
    loop {
        let page = engine.events(&ctx.tenant, job, after, 5000).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for e in page {
            if e.kind == EventKind::TaskLog
                && let (Some(task), Some(detail)) = (e.task_id, e.detail)
            {
                out.entry(task.0).or_default().push(detail);
            }
        }
    }
    Ok(out)
}

async fn status(ctx: &Ctx, args: StatusArgs) -> CliResult {
    let engine = ctx.reader().await?;
    let job = JobId(args.run);
    let progress = engine.progress(&ctx.tenant, job).await?;
    let steps = engine.pipeline_steps(&ctx.tenant, job).await?;
    if args.json {
        let rows: Vec<serde_json::Value> = steps
            .iter()
            .map(|s| {
                serde_json::json!({
                    "key": s.plan.key,
                    "task_id": s.task_id.0,
                    "state": s.state,
                    "attempt": s.attempt,
                    "report": s.report,
                    "error": s.error,
                })
            })
            .collect();
        let doc = serde_json::json!({
            "run": job.0,
            "name": progress.job.name,
            "state": progress.job.state,
            "steps": rows,
        });
        crate::cli::output::json_pretty(&doc)?;
        return Ok(());
    }
    say!(
        "run {} ({}): {}",
        job.0,
        printable(&progress.job.name),
        progress.job.state
    )?;
    let width = steps
        .iter()
        .map(|s| s.plan.key.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    say!(
        "{:<width$}  {:<9}  {:>8}  {:>7}  SUMMARY",
        "STEP",
        "STATE",
        "TIME",
        "ATTEMPT"
    )?;
    for s in &steps {
        say!(
            "{:<width$}  {:<9}  {:>8}  {:>7}  {}",
            printable(&s.plan.key),
            view::state_word(s),
            s.report
                .as_ref()
                .map(|r| view::seconds(r.duration_ms))
                .unwrap_or_default(),
            s.attempt,
            printable(&view::summary_of(s))
        )?;
    }
    Ok(())
}

async fn logs(ctx: &Ctx, args: LogsArgs) -> CliResult {
    let engine = ctx.reader().await?;
    let job = JobId(args.run);
    let steps = engine.pipeline_steps(&ctx.tenant, job).await?;
    let keys: std::collections::HashMap<i64, String> = steps
        .iter()
        .map(|s| (s.task_id.0, s.plan.key.clone()))
        .collect();
    let only = match &args.step {
        Some(step) => Some(
            steps
                .iter()
                .find(|s| &s.plan.key == step)
                .map(|s| s.task_id.0)
                .ok_or_else(|| {
                    bad(format!(
                        "run {} has no step {:?} (steps: {})",
                        job.0,
                        printable(step),
                        steps
                            .iter()
                            .map(|s| s.plan.key.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?,
        ),
        None => None,
    };
    let mut after = None;
    loop {
        let page = engine.events(&ctx.tenant, job, after, 5000).await?;
        let done = page.is_empty();
        if let Some(last) = page.last() {
            after = Some(last.id);
        }
        for e in page {
            let (Some(task), Some(detail)) = (e.task_id, e.detail.as_deref()) else {
                continue;
            };
            if e.kind != EventKind::TaskLog || only.is_some_and(|t| t != task.0) {
                continue;
            }
            if only.is_some() {
                say!("{}", printable(detail))?;
            } else {
                let key = keys.get(&task.0).map_or("?", String::as_str);
                say!("[{}] {}", printable(key), printable(detail))?;
            }
        }
        if !done {
            continue;
        }
        if !args.follow {
            break;
        }
        let state = engine.progress(&ctx.tenant, job).await?.job.state;
        if state.is_terminal() {
            // One more page: lines recorded with the last completion.
            let page = engine.events(&ctx.tenant, job, after, 1).await?;
            if page.is_empty() {
                break;
            }
            continue;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Unused states are never shown; a step is one of these words.
pub(crate) fn outcome_word(s: &StepStatus) -> &'static str {
    match s.state {
        TaskState::Succeeded => "passed",
        TaskState::Skipped => "skipped",
        TaskState::Dead if s.report.as_ref().is_some_and(|r| r.soft_failure) => "soft-fail",
        TaskState::Dead => "failed",
        TaskState::Cancelled => "cancelled",
        TaskState::Running => "running",
        TaskState::Pending => "pending",
        TaskState::Blocked => "waiting",
    }
}
