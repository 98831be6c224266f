//! Job commands: demo, run, submit, status, jobs, events, cancel, retry, task.

use super::{CliResult, Ctx, Failure};
use crate::cli::output::{self, say, say_part};
use crate::engine::views::{JobEventView, JobListEntry, Submitted, View};
use crate::engine::{Engine, JobFilter, JobProgress, WorkerConfig};
use crate::limits::printable;
use crate::model::{EventKind, Executor, JobId, JobState, TaskId, TaskState};
use crate::spec;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many tasks the fan-out stage spawns (1 to 10000, the most one task may spawn).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=crate::limits::MAX_SPAWNS_PER_TASK as i64))]
    count: u32,
    /// Tasks run concurrently.
    #[arg(long, default_value_t = 64)]
    workers: usize,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Job file (.toml or .json).
    file: PathBuf,
    /// Tasks run concurrently.
    #[arg(long, default_value_t = 64)]
    workers: usize,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Job file (.toml or .json).
    file: PathBuf,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    job: i64,
    #[arg(long)]
    json: bool,
    /// Print the job's spec as submitted instead: the canonical JSON of its
    /// job file (submitting that file again names the same job).
    #[arg(long, conflicts_with = "json")]
    spec: bool,
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Only jobs in this state: running, succeeded, failed, cancelled.
    #[arg(long)]
    state: Option<String>,
    #[arg(long, default_value_t = 50)]
    limit: u32,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    job: i64,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    job: i64,
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    task: i64,
}

#[derive(Debug, Args)]
pub struct TaskArgs {
    task: i64,
    #[arg(long)]
    json: bool,
}

/// The demo job: stage 1 fans out into a dynamic stage of `count` no-op
/// tasks (and counts the words of a granted file), stage 3 sums what stage 2
/// produced through `stage-results`.
fn demo_job(count: u32, with_wordcount: bool) -> String {
    let key = format!("demo-{}", crate::engine::now_millis());
    let wordcount = if with_wordcount {
        ",\n  { handler = \"example:wordcount\", input = { path = \"/data/words.txt\" } }"
    } else {
        ""
    };
    format!(
        r#"name = "demo"
idempotency_key = "{key}"

[[stages]]
name = "analyze"
tasks = [
  {{ handler = "example:fanout", input = {{ count = {count}, stage = "process", handler = "example:noop" }} }}{wordcount}
]

[[stages]]
name = "process"   # filled by the tasks example:fanout spawns

[[stages]]
name = "aggregate"
tasks = [{{ handler = "example:sum", input = {{ from = "process", field = "value" }} }}]
"#
    )
}

pub async fn demo(ctx: &Ctx, args: DemoArgs) -> CliResult {
    let engine = ctx.engine().await?;
    let names = engine.plugins().handler_names();
    for needed in ["example:fanout", "example:noop", "example:sum"] {
        if !names.iter().any(|n| n == needed) {
            return Err(Failure::BadInput(anyhow::anyhow!(
                "the demo needs the example plugins, but {needed} is not registered (registered: {}); build them with `cargo build` from the repository root or pass --plugins DIR",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )));
        }
    }
    let with_wordcount = names.iter().any(|n| n == "example:wordcount");
    let text = demo_job(args.count, with_wordcount);
    let job = spec::parse_job_str(&text, spec::Format::Toml, &Default::default())
        .map_err(|e| Failure::Other(e.into()))?;
    say!(
        "lockstep demo: {} plugins loaded; stage analyze fans out {} tasks into stage process, stage aggregate sums them",
        names.len(),
        args.count
    )?;
    let submitted = engine.submit(&ctx.tenant, job).await?;
    let progress = execute(&engine, ctx, submitted.job_id, args.workers).await?;
    print_outcome(&engine, ctx, &progress).await?;
    if with_wordcount {
        // The other task of the first stage counted the words of a file the
        // operator granted to example:wordcount (plugins/example-wordcount.toml).
        print_stage_outputs(&engine, ctx, submitted.job_id, "analyze", 2).await?;
    }
    let expected = u64::from(args.count) * (u64::from(args.count) + 1) / 2;
    say!("expected sum 1+…+{} = {expected}", args.count)?;
    say!(
        "inspect it: lockstep status {id}   lockstep events {id}   lockstep jobs",
        id = submitted.job_id.0
    )?;
    finish(&progress)
}

pub async fn run(ctx: &Ctx, args: RunArgs) -> CliResult {
    let (engine, submitted) = submit_checked(ctx, &args.file).await?;
    if !submitted.created {
        say!(
            "job {} already exists with this idempotency key; following it",
            submitted.job_id.0
        )?;
    }
    let progress = execute(&engine, ctx, submitted.job_id, args.workers).await?;
    print_outcome(&engine, ctx, &progress).await?;
    finish(&progress)
}

fn finish(progress: &JobProgress) -> CliResult {
    match progress.job.state {
        JobState::Succeeded => Ok(()),
        other => Err(Failure::JobFailed(format!(
            "job {} {other}{}",
            progress.job.job_id.0,
            progress
                .job
                .error
                .as_deref()
                .map(|e| format!(": {}", printable(e)))
                .unwrap_or_default()
        ))),
    }
}

/// Run workers in this process until the job is finished, with a live bar.
async fn execute(
    engine: &Arc<Engine>,
    ctx: &Ctx,
    job: JobId,
    workers: usize,
) -> Result<JobProgress, Failure> {
    let pool = engine.start_workers(WorkerConfig {
        slots: workers.max(1),
        ..WorkerConfig::default()
    });
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let result = engine
        .wait(&ctx.tenant, job, None, |p| {
            bar.set_length(p.total.max(1) as u64);
            bar.set_position(p.done.max(0) as u64);
            bar.set_message(p.summary_line());
        })
        .await;
    bar.finish_and_clear();
    pool.shutdown().await;
    Ok(result?)
}

async fn print_outcome(engine: &Engine, ctx: &Ctx, p: &JobProgress) -> CliResult {
    say!(
        "job {} {} — {} tasks, {} stages",
        p.job.job_id.0,
        p.job.state,
        p.total,
        p.stages.len()
    )?;
    print_stages(p)?;
    print_dead_tasks(engine, ctx, p).await?;
    // Show the output of the last stage's tasks (the result of the job).
    if let Some(last) = p.job.stages.last() {
        print_stage_outputs(engine, ctx, p.job.job_id, &last.name, 5).await?;
    }
    Ok(())
}

/// Most dead tasks a finished run lists; `lockstep task ID` shows any one.
const DEAD_TASKS_SHOWN: u32 = 10;
/// Longest error shown per dead task, in characters.
const ERROR_CHARS_SHOWN: usize = 300;

/// The dead tasks of a finished job with their errors, so nobody has to go
/// looking: at most [`DEAD_TASKS_SHOWN`], each error cut to
/// [`ERROR_CHARS_SHOWN`] characters and escaped (it is guest text).
async fn print_dead_tasks(engine: &Engine, ctx: &Ctx, p: &JobProgress) -> CliResult {
    let dead: i64 = p
        .job
        .stages
        .iter()
        .flat_map(|s| &s.counts)
        .filter(|(state, _)| *state == TaskState::Dead)
        .map(|(_, n)| n)
        .sum();
    if dead == 0 {
        return Ok(());
    }
    let tasks = engine
        .dead_tasks(&ctx.tenant, p.job.job_id, DEAD_TASKS_SHOWN)
        .await?;
    say!("dead tasks ({dead}):")?;
    for task in &tasks {
        let error = task.error.as_deref().unwrap_or("(no error recorded)");
        let mut shown: String = printable(error).chars().take(ERROR_CHARS_SHOWN).collect();
        if printable(error).chars().count() > ERROR_CHARS_SHOWN {
            shown.push('…');
        }
        say!(
            "  task {} (stage {}, {}, attempt {} of {}): {shown}",
            task.task_id.0,
            printable(&task.stage_name),
            printable(&task.handler),
            task.attempt,
            task.max_attempts
        )?;
    }
    let more = dead - tasks.len() as i64;
    if more > 0 {
        say!("  … and {more} more")?;
    }
    if let Some(first) = tasks.first() {
        say!(
            "  whole record: lockstep task {id}   run it again: lockstep retry {id}",
            id = first.task_id.0
        )?;
    }
    Ok(())
}

async fn print_stage_outputs(
    engine: &Engine,
    ctx: &Ctx,
    job: JobId,
    stage: &str,
    limit: u32,
) -> CliResult {
    for (task, output) in engine.stage_outputs(&ctx.tenant, job, stage, limit).await? {
        say!(
            "result of task {} ({stage}): {}",
            task.0,
            printable(&output)
        )?;
    }
    Ok(())
}

fn print_stages(p: &JobProgress) -> std::io::Result<()> {
    for (stage, detail) in p.stages.iter().zip(&p.job.stages) {
        let counts: Vec<String> = detail
            .counts
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        say!(
            "  {:<12} {:<8} {:>5.1}%  {}/{}  {}",
            stage.name,
            stage.state.as_str(),
            stage.percent,
            stage.done,
            stage.total,
            counts.join(", ")
        )?;
    }
    Ok(())
}

/// Check the job file, then open the database and submit it: a refused
/// file writes nothing, not even a new database file.
async fn submit_checked(
    ctx: &Ctx,
    file: &std::path::Path,
) -> Result<(Arc<Engine>, crate::model::Submitted), Failure> {
    let plugins = ctx.plugins().await?;
    let job = Engine::load_job_file(&plugins, &ctx.config.limits, &ctx.tenant, file)?;
    let engine = ctx.open(plugins).await?;
    let submitted = engine.insert(job).await?;
    Ok((engine, submitted))
}

pub async fn submit(ctx: &Ctx, args: SubmitArgs) -> CliResult {
    let (_, submitted) = submit_checked(ctx, &args.file).await?;
    if args.json {
        output::json_line(&Submitted::from(submitted))?;
    } else if submitted.created {
        say!("job {} submitted", submitted.job_id.0)?;
    } else {
        say!(
            "job {} already exists with this idempotency key (not created again)",
            submitted.job_id.0
        )?;
    }
    Ok(())
}

pub async fn status(ctx: &Ctx, args: StatusArgs) -> CliResult {
    let engine = ctx.reader().await?;
    if args.spec {
        let mut parts = std::pin::pin!(engine.spec(&ctx.tenant, JobId(args.job)).await?);
        while let Some(text) = futures_util::StreamExt::next(&mut parts).await {
            say_part!("{}", output::terminal_json(&text?))?;
        }
        say!("")?;
        return Ok(());
    }
    if args.json {
        // The view MCP's get_job returns.
        let view = engine.job_view(&ctx.tenant, JobId(args.job)).await?;
        output::json_pretty(&view)?;
        return Ok(());
    }
    let (p, waiting) = engine
        .progress_and_waiting(&ctx.tenant, JobId(args.job))
        .await?;
    say!("job {} {:?}: {}", p.job.job_id.0, p.job.name, p.job.state)?;
    say!("  {}", p.summary_line())?;
    print_stages(&p)?;
    if let Some(err) = &p.job.error {
        say!("  error: {}", printable(err))?;
    }
    let wasm: Vec<&str> = waiting
        .iter()
        .filter(|w| w.executor == Executor::Wasm)
        .map(|w| w.handler.as_str())
        .collect();
    if !wasm.is_empty() {
        say!(
            "  waiting: no task is running; ready tasks need a worker (`lockstep serve`) with {}",
            wasm.join(", ")
        )?;
    }
    if waiting.iter().any(|w| w.executor == Executor::Agent) {
        say!("  waiting: agent tasks are ready for an agent to take with claim_task over MCP")?;
    }
    Ok(())
}

pub async fn list(ctx: &Ctx, args: JobsArgs) -> CliResult {
    let state = match &args.state {
        Some(s) => Some(
            s.parse::<JobState>()
                .map_err(|e| Failure::BadInput(anyhow::anyhow!("--state: {e}")))?,
        ),
        None => None,
    };
    let engine = ctx.reader().await?;
    let jobs = engine
        .list_jobs(
            &ctx.tenant,
            JobFilter {
                state,
                limit: args.limit,
                ..JobFilter::default()
            },
        )
        .await?;
    if args.json {
        // The entries of MCP's list_jobs page.
        let entries: Vec<JobListEntry> = jobs.iter().map(JobListEntry::from).collect();
        output::json_pretty(&entries)?;
        return Ok(());
    }
    if jobs.is_empty() {
        say!("no jobs")?;
    }
    for j in jobs {
        say!("{:>6}  {:<10} {}", j.job_id.0, j.state.as_str(), j.name)?;
    }
    Ok(())
}

pub async fn events(ctx: &Ctx, args: EventsArgs) -> CliResult {
    let engine = ctx.reader().await?;
    let mut after = None;
    loop {
        let page = engine
            .events(&ctx.tenant, JobId(args.job), after, 1000)
            .await?;
        if page.is_empty() {
            break;
        }
        after = page.last().map(|e| e.id);
        for e in &page {
            let view = JobEventView::from(e);
            if args.json {
                output::json_line(&view)?;
            } else {
                say!("{}", view.line())?;
            }
        }
    }
    Ok(())
}

pub async fn cancel(ctx: &Ctx, args: CancelArgs) -> CliResult {
    let engine = ctx.reader().await?;
    let state = engine.cancel(&ctx.tenant, JobId(args.job)).await?;
    say!("job {} {state}", args.job)?;
    Ok(())
}

pub async fn retry(ctx: &Ctx, args: RetryArgs) -> CliResult {
    let engine = ctx.reader().await?;
    let state = engine.retry(&ctx.tenant, TaskId(args.task)).await?;
    if state == TaskState::Blocked {
        say!(
            "task {} blocked: a worker (lockstep serve) will run it once its stage opens and \
             its dependencies finish",
            args.task
        )?;
    } else {
        say!(
            "task {} {state}; a worker (lockstep serve) will run it",
            args.task
        )?;
    }
    Ok(())
}

pub async fn task(ctx: &Ctx, args: TaskArgs) -> CliResult {
    let engine = ctx.reader().await?;
    if args.json {
        // The view MCP's get_task returns.
        let view = engine.task_view(&ctx.tenant, TaskId(args.task)).await?;
        output::json_pretty(&view)?;
        return Ok(());
    }
    let t = engine.task(&ctx.tenant, TaskId(args.task)).await?;
    say!(
        "task {} of job {} (stage {}): {}",
        t.task_id.0,
        t.job_id.0,
        t.stage_name,
        t.state
    )?;
    say!("  handler  {}", t.handler)?;
    say!("  attempt  {}/{}", t.attempt, t.max_attempts)?;
    say!("  input    {}", printable(&t.input_json))?;
    if let Some(o) = &t.output_json {
        say!("  output   {}", printable(o))?;
    }
    if let Some(e) = &t.error {
        say!("  error    {}", printable(e))?;
    }
    // What the handler logged, newest attempts last (`lockstep events` has all).
    let events = engine
        .task_events(&ctx.tenant, TaskId(args.task), TASK_LOG_LINES)
        .await?;
    for e in events.iter().filter(|e| e.kind == EventKind::TaskLog) {
        say!(
            "  log      {}",
            printable(e.detail.as_deref().unwrap_or_default())
        )?;
    }
    Ok(())
}

/// Recent events `lockstep task` reads for its log lines.
const TASK_LOG_LINES: u32 = 50;
