//! The `lockstep` command line: argument parsing, exit codes and rendering.
//!
//! **Invariant 29:** the CLI is a front door: it calls the engine (and, for
//! `plugins`/`exec`, the plugin host) and never touches SQL.
//! **Invariant 27:** bad input is one sentence on stderr and exit code 2, with
//! nothing written; a failed job is exit code 1.

mod bench;
mod jobs;
mod mcp;
pub(crate) mod output;
mod plugins;
mod serve;

use crate::engine::{Engine, EngineConfig, EngineError};
use crate::model::TenantId;
use crate::plugin::{HostConfig, PluginHost, TrustPolicy};
use anyhow::Context as _;
use clap::{Parser, Subcommand};
use output::say;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Debug, Parser)]
#[command(
    name = "lockstep",
    version,
    about = "Durable orchestration whose task handlers are sandboxed WebAssembly components",
    long_about = None,
    after_help = limits_help(),
)]
pub struct Cli {
    /// Database URL: sqlite://PATH (default sqlite://lockstep.db) or postgres://…
    /// (falls back to $DATABASE_URL when neither the flag nor $LOCKSTEP_DB is set).
    #[arg(long, global = true, env = "LOCKSTEP_DB")]
    db: Option<String>,
    /// Plugin directory to scan for *.wasm (repeatable; default ./plugins or $LOCKSTEP_PLUGINS);
    /// the limits plugins meet are listed by `lockstep plugins --help`.
    #[arg(long = "plugins", global = true, value_name = "DIR")]
    plugins: Vec<PathBuf>,
    /// Where compiled plugins are cached (default $XDG_CACHE_HOME/lockstep).
    #[arg(long, global = true, env = "LOCKSTEP_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Tenant whose jobs the command reads and writes.
    #[arg(long, global = true, env = "LOCKSTEP_TENANT", default_value = "local")]
    tenant: String,
    /// Refuse to start when any plugin fails to load.
    #[arg(long, global = true)]
    strict: bool,
    /// Refuse plugins whose sha256 is not the one pinned in their directory's plugins.lock
    /// (written by `lockstep plugins lock`).
    #[arg(long, global = true)]
    require_lock: bool,
    /// Directory of trusted minisign public keys (*.pub); NAME.wasm.minisig signatures are
    /// verified against them.
    #[arg(long, global = true, env = "LOCKSTEP_TRUSTED_KEYS", value_name = "DIR")]
    trusted_keys: Option<PathBuf>,
    /// Refuse plugins without a valid signature by a key of --trusted-keys.
    #[arg(long, global = true)]
    require_signatures: bool,
    /// Largest task input accepted at submit and from a spawning handler, in bytes (as JSON text).
    #[arg(long, global = true, default_value_t = 1024 * 1024)]
    max_input_bytes: u64,
    /// Most tasks a job may hold, counting the tasks its handlers spawn.
    #[arg(long, global = true, default_value_t = 100_000)]
    max_tasks_per_job: u64,
    /// Largest job file or job text accepted, in bytes.
    #[arg(long, global = true, default_value_t = 64 * 1024 * 1024)]
    max_spec_bytes: u64,
    /// Log filter (tracing env-filter syntax), e.g. info or lockstep=debug.
    #[arg(
        long,
        global = true,
        env = "LOCKSTEP_LOG",
        default_value = "warn",
        value_parser = crate::telemetry::logs::parse_filter
    )]
    log: String,
    /// Log lines on stderr: human (one line per event) or json (one JSON object per line,
    /// with job_id and task_id as fields).
    #[arg(
        long,
        global = true,
        env = "LOCKSTEP_LOG_FORMAT",
        value_enum,
        default_value = "human"
    )]
    log_format: crate::telemetry::logs::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the demo job (fan-out into a dynamic stage, then an aggregate) with the example plugins.
    Demo(jobs::DemoArgs),
    /// Submit a job file, execute it in this process with a live progress bar; exit 1 if it fails.
    Run(jobs::RunArgs),
    /// Submit a job file (TOML or JSON) and print its id.
    Submit(jobs::SubmitArgs),
    /// Show a job's state, per-stage progress and errors.
    Status(jobs::StatusArgs),
    /// List jobs, newest first.
    Jobs(jobs::JobsArgs),
    /// Print a job's event log.
    Events(jobs::EventsArgs),
    /// Cancel a job; running tasks see cancelled().
    Cancel(jobs::CancelArgs),
    /// Revive a dead or cancelled task; a failed or cancelled job resumes
    /// from its stage, the later stages' cancelled tasks with it.
    Retry(jobs::RetryArgs),
    /// Show one task: input, output, error, attempts.
    Task(jobs::TaskArgs),
    /// Run workers until interrupted; with --http ADDR also serve MCP over HTTP at /mcp.
    Serve(serve::ServeArgs),
    /// Serve MCP over stdio (for an MCP client that starts lockstep), as --tenant.
    Mcp(mcp::McpArgs),
    /// Bearer tokens for MCP over HTTP.
    #[command(subcommand)]
    Token(mcp::TokenCommand),
    /// Apply database migrations and exit.
    Migrate,
    /// Inspect the plugins found in the plugin directories.
    #[command(subcommand, after_help = crate::plugin::inspect::limits_help())]
    Plugins(plugins::PluginsCommand),
    /// Run one task in the sandbox and print its output (for plugin authors).
    Exec(plugins::ExecArgs),
    /// Benchmarks; each prints JSON lines.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// CI pipelines of sandboxed wasi:cli/command steps (lockstep-ci.toml).
    #[command(subcommand)]
    Ci(crate::ci::CiCommand),
}

/// The fixed limits on names and text, for `--help` (the ones a flag sets
/// are described with their flags).
fn limits_help() -> String {
    use crate::limits::{
        MAX_IDEMPOTENCY_KEY_BYTES, MAX_INSTRUCTIONS_BYTES, MAX_JOB_NAME_BYTES, MAX_NAME_BYTES,
        MAX_TENANT_BYTES, MAX_TITLE_BYTES,
    };
    format!(
        "Limits (job files, MCP arguments and the tasks handlers spawn alike): a job name is at most \
         {MAX_JOB_NAME_BYTES} bytes; stage names, task keys, depends_on entries, handler and specialist \
         names at most {MAX_NAME_BYTES}; an idempotency key {MAX_IDEMPOTENCY_KEY_BYTES}; a tenant \
         {MAX_TENANT_BYTES}; an agent task's title {MAX_TITLE_BYTES} and its instructions \
         {MAX_INSTRUCTIONS_BYTES}. Names hold no control characters and no text holds a NUL. \
         --db must name a database other processes can open (not sqlite::memory:)."
    )
}

/// How a command ended, mapped to the process exit code.
#[derive(Debug)]
pub enum Failure {
    /// The user's input was wrong: exit 2.
    BadInput(anyhow::Error),
    /// A job that was run failed: exit 1.
    JobFailed(String),
    /// Something else went wrong: exit 1.
    Other(anyhow::Error),
    /// Standard output's reader closed its end (`| head`): exit 0, quietly.
    ReaderGone,
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::from(anyhow::Error::new(e))
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        if output::is_reader_gone(&e) {
            return Failure::ReaderGone;
        }
        // Naming the wrong database is the user's input, wherever it surfaced.
        let wrong_database = e.chain().any(|cause| {
            cause
                .downcast_ref::<EngineError>()
                .is_some_and(EngineError::is_bad_input)
        });
        // Trust settings and plugin directories are the operator's input too.
        let untrusted = e.chain().any(|cause| {
            matches!(
                cause.downcast_ref::<crate::plugin::PluginError>(),
                Some(crate::plugin::PluginError::Trust(_))
            )
        });
        if wrong_database || untrusted {
            Failure::BadInput(e)
        } else {
            Failure::Other(e)
        }
    }
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Self {
        if e.is_bad_input() {
            Failure::BadInput(e.into())
        } else {
            Failure::Other(e.into())
        }
    }
}

pub type CliResult = Result<(), Failure>;

/// What every command may need, opened lazily.
pub(crate) struct Ctx {
    db_url: String,
    /// False when `db_url` is the built-in default.
    db_explicit: bool,
    plugin_dirs: Vec<PathBuf>,
    cache_dir: Option<PathBuf>,
    strict: bool,
    trust: TrustPolicy,
    pub tenant: TenantId,
    pub config: EngineConfig,
}

impl Ctx {
    /// An engine on this command's database with these plugins.
    pub(crate) async fn open(&self, plugins: Arc<PluginHost>) -> anyhow::Result<Arc<Engine>> {
        Engine::open(&self.db_url, plugins, self.config.clone())
            .await
            .with_context(|| {
                format!(
                    "could not open the database {}",
                    without_password(&self.db_url)
                )
            })
    }

    /// The `--cache-dir` given, if any.
    pub(crate) fn cache_dir(&self) -> Option<&std::path::Path> {
        self.cache_dir.as_deref()
    }

    pub fn plugin_config(&self) -> HostConfig {
        let mut config = HostConfig::new(
            self.plugin_dirs.clone(),
            self.cache_dir.clone(),
            self.strict,
        );
        config.trust = self.trust.clone();
        config
    }

    pub async fn plugins(&self) -> anyhow::Result<Arc<PluginHost>> {
        let (host, report) = PluginHost::load(self.plugin_config())
            .await
            .map_err(anyhow::Error::new)?;
        // Reasons may quote guest text (a describe() panic message).
        for failure in &report.failures {
            eprintln!(
                "warning: {}",
                crate::limits::printable(&failure.to_string())
            );
        }
        Ok(Arc::new(host))
    }

    pub async fn engine(&self) -> anyhow::Result<Arc<Engine>> {
        let plugins = self.plugins().await?;
        self.open(plugins).await
    }
}

/// Reload the plugins of a serving process when their directories change.
/// A process that cannot watch (the system's inotify limit, say) still
/// serves, and says once that its plugins are not reloaded.
fn watch_plugins(engine: &Arc<Engine>, ctx: &Ctx) -> Option<crate::engine::reload::PluginWatcher> {
    match crate::engine::reload::watch_plugins(engine.clone(), ctx.plugin_config()) {
        Ok(watcher) => Some(watcher),
        Err(e) => {
            tracing::warn!("{e}; plugins are loaded only at start");
            None
        }
    }
}

/// Parse arguments, run the command, and return the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::telemetry::logs::init(&cli.log, cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) | Err(Failure::ReaderGone) => ExitCode::SUCCESS,
        Err(Failure::BadInput(e)) => {
            eprintln!("error: {}", one_sentence(&e));
            ExitCode::from(2)
        }
        Err(Failure::JobFailed(msg)) => {
            eprintln!("{msg}");
            ExitCode::from(1)
        }
        Err(Failure::Other(e)) => {
            eprintln!("error: {}", one_sentence(&e));
            ExitCode::from(1)
        }
    }
}

/// An error chain as one line: `context: cause: root cause`. Many errors
/// already include their source's text in their own (`#[error("…: {0}")]`
/// with `#[source]`); a cause whose text was already said is not said again.
fn one_sentence(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let cause = cause.to_string();
        if cause.is_empty() || text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

/// A database URL as it may be printed: a password in it is replaced by `***`.
pub(crate) fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) if user_info.contains(':') => {
            let user = user_info.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        _ => url.to_string(),
    }
}

async fn dispatch(cli: Cli) -> CliResult {
    // Every command reads or writes as this tenant: refuse a name the store
    // could not hold (or a terminal could not print) before anything runs.
    crate::engine::tokens::check_tenant_name(&cli.tenant)
        .map_err(|e| Failure::BadInput(anyhow::anyhow!("--tenant: {e}")))?;
    let explicit = cli
        .db
        .clone()
        .or_else(|| std::env::var("DATABASE_URL").ok().filter(|s| !s.is_empty()));
    let db_explicit = explicit.is_some();
    let db_url = explicit.unwrap_or_else(|| "sqlite://lockstep.db".to_string());
    let mut config = EngineConfig::default();
    config.limits.max_input_bytes = cli.max_input_bytes;
    config.limits.max_tasks_per_job = cli.max_tasks_per_job;
    config.limits.max_spec_bytes = cli.max_spec_bytes;
    let ctx = Ctx {
        db_url,
        db_explicit,
        plugin_dirs: cli.plugins.clone(),
        cache_dir: cli.cache_dir.clone(),
        strict: cli.strict,
        trust: TrustPolicy {
            require_lock: cli.require_lock,
            trusted_keys: cli.trusted_keys.clone(),
            require_signatures: cli.require_signatures,
        },
        tenant: TenantId(cli.tenant.clone()),
        config,
    };
    match cli.command {
        Command::Demo(a) => jobs::demo(&ctx, a).await,
        Command::Run(a) => jobs::run(&ctx, a).await,
        Command::Submit(a) => jobs::submit(&ctx, a).await,
        Command::Status(a) => jobs::status(&ctx, a).await,
        Command::Jobs(a) => jobs::list(&ctx, a).await,
        Command::Events(a) => jobs::events(&ctx, a).await,
        Command::Cancel(a) => jobs::cancel(&ctx, a).await,
        Command::Retry(a) => jobs::retry(&ctx, a).await,
        Command::Task(a) => jobs::task(&ctx, a).await,
        Command::Serve(a) => serve::serve(&ctx, a).await,
        Command::Mcp(a) => mcp::mcp(&ctx, a).await,
        Command::Token(c) => mcp::token(&ctx, c).await,
        Command::Migrate => {
            ctx.reader().await?;
            say!("migrations applied to {}", without_password(&ctx.db_url))?;
            Ok(())
        }
        Command::Plugins(c) => plugins::plugins(&ctx, c).await,
        Command::Exec(a) => plugins::exec(&ctx, a).await,
        Command::Bench(c) => bench::bench(&ctx, c).await,
        Command::Ci(c) => crate::ci::ci(&ctx, c).await,
    }
}

impl Ctx {
    /// An engine for commands that only read or change stored state: no
    /// plugins are loaded (or compiled), so `status` stays instant.
    pub async fn reader(&self) -> anyhow::Result<Arc<Engine>> {
        self.open(Arc::new(PluginHost::empty())).await
    }
}
