//! `lockstep bench …`: run a benchmark and print JSON lines.
//!
//! Engine benchmarks use a fresh database in a temporary directory unless
//! `--db` is given, so they never touch `lockstep.db`.

use super::{CliResult, Ctx};
use crate::bench;
use crate::cli::output::say;
use crate::engine::{Engine, Execution};
use anyhow::Context as _;
use clap::Subcommand;
use std::sync::Arc;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Instantiate-and-run of example:noop, and start-up time with the
    /// example plugins; with --component, a template component's cold
    /// compile, cached start and per-task time beside the noop's.
    Plugin {
        #[arg(long, default_value_t = 20_000)]
        iterations: u32,
        /// A component built from `lockstep plugins new NAME --lang
        /// python|js|rust` (its `NAME:greet` handler is run with
        /// {"name":"Ada"}); repeatable, e.g. `--component
        /// python=greet-py/greet_py.wasm --component js=greet-js/greet_js.wasm`.
        #[arg(long = "component", value_name = "LABEL=PATH")]
        components: Vec<String>,
        /// Loads of each component against an empty compile cache.
        #[arg(long, default_value_t = 3)]
        cold_loads: u32,
        /// Loads of each component from the warm compile cache.
        #[arg(long, default_value_t = 20)]
        cached_loads: u32,
        /// Timed runs of each component's handler.
        #[arg(long, default_value_t = 500)]
        component_runs: u32,
    },
    /// End-to-end no-op WASM tasks per second, and submit-to-start latency.
    Throughput {
        #[arg(long, default_value_t = 20_000)]
        tasks: u32,
        #[arg(long, default_value_t = 128)]
        workers: usize,
        /// Most tasks claimed in one statement (in this process; `serve`
        /// has its own `--batch`): a claim takes the free slots plus the
        /// tasks the runs are expected to free within 10 ms, up to this
        /// many, and a claim's completions tend to commit together: one
        /// durable commit (one sync of the log on SQLite) per batch.
        #[arg(long, default_value_t = 512)]
        batch: u32,
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
        /// Fan-in jobs run one after another; the stage-advance latency is
        /// reported as p50, p99 and max over them.
        #[arg(long, default_value_t = 1)]
        rounds: u32,
    },
    /// get_job, claim_task and complete_task over MCP (streamable HTTP on
    /// loopback, bearer token) with this many tasks in the database; then,
    /// per tool, its output schema's size and what validating a typical
    /// result against it costs clients.
    Mcp {
        #[arg(long, default_value_t = 100_000)]
        tasks: u64,
        /// Measured calls per case (at most 9,800).
        #[arg(long, default_value_t = 2_000)]
        samples: u32,
        /// Runs of the compiled validator per tool.
        #[arg(long, default_value_t = 10_000)]
        validations: u32,
        /// A Python interpreter with the official MCP SDK installed (PyPI
        /// `mcp`); repeatable, one run each. It calls every tool over stdio
        /// with and without the SDK's output-schema validation.
        #[arg(long = "python", value_name = "PYTHON")]
        pythons: Vec<std::path::PathBuf>,
        /// Timed calls per tool and per mode of each --python run.
        #[arg(long, default_value_t = 100)]
        python_samples: u32,
    },
    /// Per-step overhead of a no-op pipeline step, and tests/s of the sample
    /// test binary one instance per test vs natively (needs cargo).
    Ci {
        #[arg(long, default_value_t = 50)]
        steps: u32,
        /// Rounds of the sample tests, each way.
        #[arg(long, default_value_t = 20)]
        rounds: u32,
        /// Steps (and tests) at once.
        #[arg(long, default_value_t = 2)]
        slots: usize,
    },
    /// Dashboard page render times over HTTP: the jobs list with this many
    /// jobs, and a job page (first and middle page of tasks) of one job
    /// with --tasks tasks.
    Ui {
        #[arg(long, default_value_t = 10_000)]
        jobs: u32,
        #[arg(long, default_value_t = 100_000)]
        tasks: u64,
        /// Measured requests per page.
        #[arg(long, default_value_t = 200)]
        samples: u32,
    },
    /// Status and update of one task in a database holding this many tasks.
    Lookup {
        #[arg(long, default_value_t = 1_000_000)]
        tasks: u64,
    },
    /// What a scrape of /metrics costs (rendering the last sample) and what
    /// the sampler's read of the database's counts costs, with this many tasks in the database.
    Metrics {
        #[arg(long, default_value_t = 100_000)]
        tasks: u64,
        /// Timed scrapes, and as many timed samples.
        #[arg(long, default_value_t = 200)]
        samples: u32,
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

fn print(lines: Vec<serde_json::Value>) -> std::io::Result<()> {
    let machine = bench::machine();
    for mut line in lines {
        if let Some(obj) = line.as_object_mut() {
            obj.insert("machine".into(), machine.clone());
        }
        say!("{line}")?;
    }
    Ok(())
}

/// A benchmark's store and engine, its database URL, and the temporary
/// directory holding the database unless `--db` was given.
struct BenchDb {
    engine: Arc<Engine>,
    url: String,
    _dir: Option<tempfile::TempDir>,
}

/// Store and engine for a benchmark: the given `--db`, or a fresh SQLite file.
async fn bench_db(ctx: &Ctx) -> anyhow::Result<BenchDb> {
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
    Ok(BenchDb {
        engine,
        url,
        _dir: dir,
    })
}

pub async fn bench(ctx: &Ctx, cmd: BenchCommand) -> CliResult {
    match cmd {
        BenchCommand::Plugin {
            iterations,
            components,
            cold_loads,
            cached_loads,
            component_runs,
        } => {
            if iterations == 0 || cold_loads == 0 || cached_loads == 0 || component_runs == 0 {
                return Err(super::Failure::BadInput(anyhow::anyhow!(
                    "--iterations, --cold-loads, --cached-loads and --component-runs must each be at least 1"
                )));
            }
            let components = components
                .iter()
                .map(|c| bench::plugin::Component::parse(c))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|problem| super::Failure::BadInput(anyhow::anyhow!(problem)))?;
            let rounds = bench::plugin::ComponentRounds {
                cold_loads,
                cached_loads,
                runs: component_runs,
            };
            let lines =
                bench::plugin::bench_plugin(&ctx.plugin_config(), iterations, &components, rounds)
                    .await
                    .map_err(|e| match e.downcast::<bench::plugin::ComponentRefused>() {
                        Ok(refused) => super::Failure::BadInput(refused.into()),
                        Err(e) => super::Failure::Other(e),
                    })?;
            print(lines)?;
            for lang in ["python", "js"] {
                if !components.iter().any(|c| c.label == lang) {
                    eprintln!(
                        "bench plugin: the {lang} template is not measured: build it as docs/plugins.md#benchmarks says and pass --component {lang}=PATH"
                    );
                }
            }
        }
        BenchCommand::Throughput {
            tasks,
            workers,
            batch,
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
            // The workers record metrics as a serve process's do.
            crate::telemetry::Exporter::install().map_err(anyhow::Error::new)?;
            let BenchDb { engine, _dir, .. } = bench_db(ctx).await?;
            if processes > 0 {
                if !ctx.db_explicit {
                    return Err(super::Failure::BadInput(anyhow::anyhow!(
                        "--processes needs a shared database: pass --db (e.g. postgres://…)"
                    )));
                }
                let serve = Lockstep::new(ctx, &ctx.db_url)?.serve(workers);
                print(
                    bench::engine_flow::throughput_processes(
                        &engine,
                        &ctx.tenant,
                        tasks,
                        processes,
                        || spawn(&serve),
                    )
                    .await?,
                )?;
                return Ok(());
            }
            print(
                bench::engine_flow::throughput(
                    &engine,
                    &ctx.tenant,
                    tasks,
                    bench::engine_flow::Pool {
                        slots: workers,
                        batch: batch.max(1),
                        execution,
                    },
                )
                .await?,
            )?;
            print(
                bench::engine_flow::submit_to_start(&engine, &ctx.tenant, latency_samples).await?,
            )?;
        }
        BenchCommand::Fanin {
            tasks,
            workers,
            rounds,
        } => {
            if rounds == 0 || tasks == 0 {
                return Err(super::Failure::BadInput(anyhow::anyhow!(
                    "--tasks and --rounds must each be at least 1"
                )));
            }
            let BenchDb { engine, _dir, .. } = bench_db(ctx).await?;
            print(bench::engine_flow::fanin(&engine, &ctx.tenant, tasks, workers, rounds).await?)?;
        }
        BenchCommand::Mcp {
            tasks,
            samples,
            validations,
            pythons,
            python_samples,
        } => {
            bench::mcp::check_sizes(tasks, samples)
                .and_then(|()| {
                    bench::mcp_clients::check_sizes(validations, pythons.len(), python_samples)
                })
                .map_err(|problem| super::Failure::BadInput(anyhow::anyhow!(problem)))?;
            if pythons.is_empty() {
                eprintln!(
                    "bench mcp: the Python SDK is not measured: pass --python with an interpreter that has the `mcp` package installed"
                );
            }
            let db = bench_db(ctx).await?;
            let client_side = bench::mcp_clients::ClientSide {
                validations,
                pythons,
                python_samples,
                stdio_server: Lockstep::new(ctx, &db.url)?.mcp_stdio(),
            };
            print(bench::mcp::mcp(db.engine, &ctx.tenant, tasks, samples, &client_side).await?)?;
        }
        BenchCommand::Ci {
            steps,
            rounds,
            slots,
        } => {
            let plugins = ctx.plugins().await?;
            let cache = crate::plugin::resolve_cache_dir(ctx.cache_dir.as_deref())
                .map_err(|e| super::Failure::BadInput(e.into()))?;
            print(bench::ci::ci(plugins, &cache, steps, rounds, slots).await?)?;
        }
        BenchCommand::Ui {
            jobs,
            tasks,
            samples,
        } => {
            bench::ui::check_sizes(jobs, tasks, samples)
                .map_err(|problem| super::Failure::BadInput(anyhow::anyhow!(problem)))?;
            let db = bench_db(ctx).await?;
            print(bench::ui::ui(db.engine, jobs, tasks, samples).await?)?;
        }
        BenchCommand::Lookup { tasks } => {
            let BenchDb { engine, _dir, .. } = bench_db(ctx).await?;
            print(bench::lookup::lookup(&engine, tasks).await?)?;
        }
        BenchCommand::Metrics { tasks, samples } => {
            if samples == 0 {
                return Err(super::Failure::BadInput(anyhow::anyhow!(
                    "--samples must be at least 1"
                )));
            }
            let exporter = crate::telemetry::Exporter::install().map_err(anyhow::Error::new)?;
            let BenchDb { engine, _dir, .. } = bench_db(ctx).await?;
            print(bench::metrics::metrics(&engine, &exporter, tasks, samples).await?)?;
        }
    }
    Ok(())
}

/// Another lockstep process on a benchmark's database, with this one's
/// tenant, plugins and cache.
struct Lockstep {
    exe: std::path::PathBuf,
    args: Vec<std::ffi::OsString>,
}

impl Lockstep {
    fn new(ctx: &Ctx, db_url: &str) -> anyhow::Result<Lockstep> {
        let exe = std::env::current_exe().context("locating the lockstep binary")?;
        let mut args: Vec<std::ffi::OsString> = vec![
            "--db".into(),
            db_url.into(),
            "--tenant".into(),
            ctx.tenant.0.clone().into(),
        ];
        for dir in &ctx.plugin_dirs {
            args.push("--plugins".into());
            args.push(dir.clone().into());
        }
        if let Some(cache) = &ctx.cache_dir {
            args.push("--cache-dir".into());
            args.push(cache.clone().into());
        }
        Ok(Lockstep { exe, args })
    }

    /// `lockstep serve` with this many worker slots.
    fn serve(mut self, workers: usize) -> Lockstep {
        self.args.extend([
            "serve".into(),
            "--workers".into(),
            workers.to_string().into(),
        ]);
        self
    }

    /// `lockstep mcp` (the benchmark's tasks are agent tasks: one worker slot is plenty).
    fn mcp_stdio(mut self) -> (std::path::PathBuf, Vec<std::ffi::OsString>) {
        self.args
            .extend(["mcp".into(), "--workers".into(), "1".into()]);
        (self.exe, self.args)
    }
}

fn spawn(command: &Lockstep) -> anyhow::Result<std::process::Child> {
    std::process::Command::new(&command.exe)
        .args(&command.args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting a lockstep serve process")
}
