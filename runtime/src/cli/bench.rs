//! `lockstep bench …`: run a benchmark and print JSON lines.
//!
//! Engine benchmarks use a fresh database in a temporary directory unless
//! `--db` is given, so they never touch `lockstep.db`.

use super::{CliResult, Ctx};
use crate::bench;
use crate::engine::{Engine, Execution};
use anyhow::Context as _;
use clap::Subcommand;
use std::sync::Arc;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Instantiate-and-run of example:noop, and start-up time with the example plugins.
    Plugin {
        #[arg(long, default_value_t = 20_000)]
        iterations: u32,
    },
    /// End-to-end no-op WASM tasks per second, and submit-to-start latency.
    Throughput {
        #[arg(long, default_value_t = 20_000)]
        tasks: u32,
        #[arg(long, default_value_t = 128)]
        workers: usize,
        #[arg(long, default_value_t = 50)]
        latency_samples: u32,
        /// Run the workers in this many `lockstep serve` processes instead of
        /// in this one (needs --db; meant for PostgreSQL).
        #[arg(long, default_value_t = 0)]
        processes: u32,
        /// What runs each task: `wasm`, the example:noop plugin in its
        /// sandbox; or `host-noop`, no run at all (the same claim, lease and
        /// completion path), to tell the store's cost from the sandbox's.
        #[arg(long, value_enum, default_value_t = BenchHandler::Wasm)]
        handler: BenchHandler,
    },
    /// A fan-out into a dynamic stage and a fan-in aggregate; stage-advance latency.
    Fanin {
        #[arg(long, default_value_t = 10_000)]
        tasks: u32,
        #[arg(long, default_value_t = 128)]
        workers: usize,
    },
    /// get_job, claim_task and complete_task over MCP (streamable HTTP on
    /// loopback, bearer token) with this many tasks in the database.
    Mcp {
        #[arg(long, default_value_t = 100_000)]
        tasks: u64,
        /// Measured calls per case (at most 9,800).
        #[arg(long, default_value_t = 2_000)]
        samples: u32,
    },
    /// Status and update of one task in a database holding this many tasks.
    Lookup {
        #[arg(long, default_value_t = 1_000_000)]
        tasks: u64,
    },
}

/// What runs the tasks of `bench throughput`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchHandler {
    /// The example:noop plugin in a fresh sandbox per task.
    Wasm,
    /// No run at all: each claimed task succeeds at once.
    HostNoop,
}

fn print(lines: Vec<serde_json::Value>) {
    let machine = bench::machine();
    for mut line in lines {
        if let Some(obj) = line.as_object_mut() {
            obj.insert("machine".into(), machine.clone());
        }
        println!("{line}");
    }
}

/// Store and engine for a benchmark: the given `--db`, or a fresh SQLite file.
async fn bench_engine(ctx: &Ctx) -> anyhow::Result<(Arc<Engine>, Option<tempfile::TempDir>)> {
    let (url, dir) = if ctx.db_explicit {
        (ctx.db_url.clone(), None)
    } else {
        let dir = tempfile::tempdir()
            .context("creating a temporary directory for the benchmark database")?;
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        (url, Some(dir))
    };
    let plugins = ctx.plugins().await?;
    let engine = Engine::open(&url, plugins, ctx.config.clone())
        .await
        .with_context(|| format!("could not open the database {url}"))?;
    Ok((engine, dir))
}

pub async fn bench(ctx: &Ctx, cmd: BenchCommand) -> CliResult {
    match cmd {
        BenchCommand::Plugin { iterations } => {
            print(bench::plugin::bench_plugin(&ctx.plugin_config(), iterations).await?);
        }
        BenchCommand::Throughput {
            tasks,
            workers,
            latency_samples,
            processes,
            handler,
        } => {
            let execution = match handler {
                BenchHandler::Wasm => Execution::Sandbox,
                BenchHandler::HostNoop => Execution::HostNoop,
            };
            if processes > 0 && execution == Execution::HostNoop {
                return Err(super::Failure::BadInput(anyhow::anyhow!(
                    "--handler host-noop runs the workers in this process: leave out --processes"
                )));
            }
            let (engine, _dir) = bench_engine(ctx).await?;
            if processes > 0 {
                if !ctx.db_explicit {
                    return Err(super::Failure::BadInput(anyhow::anyhow!(
                        "--processes needs a shared database: pass --db (e.g. postgres://…)"
                    )));
                }
                let serve = ServeCommand::new(ctx, workers)?;
                print(
                    bench::engine_flow::throughput_processes(
                        &engine,
                        &ctx.tenant,
                        tasks,
                        processes,
                        || serve.spawn(),
                    )
                    .await?,
                );
                return Ok(());
            }
            print(
                bench::engine_flow::throughput(&engine, &ctx.tenant, tasks, workers, execution)
                    .await?,
            );
            print(
                bench::engine_flow::submit_to_start(&engine, &ctx.tenant, latency_samples).await?,
            );
        }
        BenchCommand::Fanin { tasks, workers } => {
            let (engine, _dir) = bench_engine(ctx).await?;
            print(bench::engine_flow::fanin(&engine, &ctx.tenant, tasks, workers).await?);
        }
        BenchCommand::Mcp { tasks, samples } => {
            bench::mcp::check_sizes(tasks, samples)
                .map_err(|problem| super::Failure::BadInput(anyhow::anyhow!(problem)))?;
            let (engine, _dir) = bench_engine(ctx).await?;
            print(bench::mcp::mcp(engine, &ctx.tenant, tasks, samples).await?);
        }
        BenchCommand::Lookup { tasks } => {
            let (engine, _dir) = bench_engine(ctx).await?;
            print(bench::lookup::lookup(&engine, tasks).await?);
        }
    }
    Ok(())
}

/// How to start one `lockstep serve` worker process like this one.
struct ServeCommand {
    exe: std::path::PathBuf,
    args: Vec<std::ffi::OsString>,
}

impl ServeCommand {
    fn new(ctx: &Ctx, workers: usize) -> anyhow::Result<ServeCommand> {
        let exe = std::env::current_exe().context("locating the lockstep binary")?;
        let mut args: Vec<std::ffi::OsString> = vec!["--db".into(), ctx.db_url.clone().into()];
        for dir in &ctx.plugin_dirs {
            args.push("--plugins".into());
            args.push(dir.clone().into());
        }
        if let Some(cache) = &ctx.cache_dir {
            args.push("--cache-dir".into());
            args.push(cache.clone().into());
        }
        args.extend([
            "serve".into(),
            "--workers".into(),
            workers.to_string().into(),
        ]);
        Ok(ServeCommand { exe, args })
    }

    fn spawn(&self) -> anyhow::Result<std::process::Child> {
        std::process::Command::new(&self.exe)
            .args(&self.args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting a lockstep serve process")
    }
}
