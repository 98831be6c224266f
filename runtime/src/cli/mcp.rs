//! `lockstep mcp` (MCP over stdio) and `lockstep token create|revoke`
//! (bearer tokens for MCP over HTTP, served by `lockstep serve --http`).
//!
//! **Invariant:** in `lockstep mcp`, stdout carries only MCP messages;
//! everything else goes to stderr.

use super::{CliResult, Ctx, Failure};
use crate::cli::output::say;
use crate::engine::WorkerConfig;
use crate::mcp::{self, McpConfig};
use crate::model::TokenRole;
use anyhow::Context as _;
use clap::{Args, Subcommand};
use std::time::Duration;

/// Options shared by both MCP transports.
#[derive(Debug, Clone, Args)]
pub struct McpOptions {
    /// Lease an agent takes with claim_task, in seconds; update_task renews
    /// it. A task whose agent goes silent for longer is offered again.
    #[arg(long, default_value_t = 900.0)]
    pub agent_lease_secs: f64,
    /// Largest tool arguments accepted, in bytes of JSON.
    #[arg(long, default_value_t = mcp::DEFAULT_MAX_ARGUMENT_BYTES)]
    pub max_argument_bytes: usize,
    /// Directory whose pipeline files the run_pipeline tool may run (steps
    /// run in this server, with the secrets of its environment).
    #[arg(long, value_name = "DIR")]
    pub pipelines_root: Option<std::path::PathBuf>,
}

impl McpOptions {
    pub fn config(&self) -> Result<McpConfig, Failure> {
        if !(self.agent_lease_secs > 0.0
            && self.agent_lease_secs.is_finite()
            && self.agent_lease_secs <= 86_400.0)
        {
            return Err(Failure::BadInput(anyhow::anyhow!(
                "--agent-lease-secs must be a number of seconds between 0 and 86400, got {}",
                self.agent_lease_secs
            )));
        }
        if self.max_argument_bytes == 0 {
            return Err(Failure::BadInput(anyhow::anyhow!(
                "--max-argument-bytes must be at least 1"
            )));
        }
        Ok(McpConfig {
            agent_lease: Duration::from_secs_f64(self.agent_lease_secs),
            max_argument_bytes: self.max_argument_bytes,
            pipelines: None,
        })
    }

    /// The config, with `--pipelines-root` resolved (a command host is made
    /// for it).
    pub fn config_for(&self, ctx: &Ctx) -> Result<McpConfig, Failure> {
        let mut config = self.config()?;
        if let Some(root) = &self.pipelines_root {
            let bad = |e: String| Failure::BadInput(anyhow::anyhow!(e));
            let cache = crate::plugin::resolve_cache_dir(ctx.cache_dir())
                .map_err(|e| bad(e.to_string()))?;
            let commands =
                crate::plugin::CommandHost::new(&cache).map_err(|e| Failure::Other(e.into()))?;
            config.pipelines = Some(
                mcp::pipelines::PipelineAccess::new(root, std::sync::Arc::new(commands))
                    .map_err(bad)?,
            );
        }
        Ok(config)
    }

    /// How often expired leases are looked for, given the agent lease.
    pub fn rescue_every(&self, worker_lease: Duration) -> Duration {
        let shortest = worker_lease.min(Duration::from_secs_f64(self.agent_lease_secs.max(0.001)));
        (shortest / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }
}

#[derive(Debug, Args)]
pub struct McpArgs {
    #[command(flatten)]
    options: McpOptions,
    /// WASM tasks run concurrently by this process (jobs submitted over MCP run here
    /// unless a `lockstep serve` shares the database).
    #[arg(long, default_value_t = 8)]
    workers: usize,
}

/// `lockstep mcp`: serve MCP over stdio as `--tenant`, with workers, until stdin closes.
pub async fn mcp(ctx: &Ctx, args: McpArgs) -> CliResult {
    let config = args.options.config_for(ctx)?;
    let engine = ctx.engine().await?;
    let _watcher = super::watch_plugins(&engine, ctx);
    let worker_lease = Duration::from_secs(60);
    let pool = engine.start_workers(WorkerConfig {
        slots: args.workers.max(1),
        lease: worker_lease,
        rescue_every: args.options.rescue_every(worker_lease),
        ..WorkerConfig::default()
    });
    eprintln!(
        "lockstep mcp: tenant {:?}, {} handlers, pid {}; serving MCP on stdio",
        ctx.tenant.0,
        engine.plugins().handler_names().len(),
        std::process::id()
    );
    let served = tokio::select! {
        r = mcp::serve_stdio(engine.clone(), config, ctx.tenant.clone()) => r,
        _ = super::serve::shutdown_signal() => Ok(()),
    };
    pool.shutdown().await;
    served.context("serving MCP on stdio")?;
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a bearer token for MCP over HTTP and the dashboard acting as --tenant; the
    /// token is printed once.
    Create {
        /// A note to recognise the token by (e.g. who uses it); the dashboard records it
        /// with every action the token takes.
        #[arg(long)]
        label: Option<String>,
        /// What the token may do in the dashboard: `read` (view) or `admin` (also retry
        /// and cancel).
        #[arg(long, default_value = "admin", value_parser = parse_role)]
        role: TokenRole,
    },
    /// Revoke a token, given as its text or its id; it stops working at once.
    Revoke {
        #[arg(value_name = "TOKEN_OR_ID")]
        token: String,
    },
}

pub async fn token(ctx: &Ctx, cmd: TokenCommand) -> CliResult {
    match cmd {
        TokenCommand::Create { label, role } => {
            if let Some(l) = &label {
                if l.chars().count() > 200 {
                    return Err(Failure::BadInput(anyhow::anyhow!(
                        "--label is longer than 200 characters"
                    )));
                }
                crate::limits::check_name(l, usize::MAX)
                    .map_err(|e| Failure::BadInput(anyhow::anyhow!("--label {e}")))?;
            }
            let engine = ctx.reader().await?;
            let issued = engine
                .create_token(&ctx.tenant, label, role)
                .await
                .context("storing the token")?;
            eprintln!(
                "{} token {} for tenant {:?}; it is shown only now — store it in your MCP client's configuration",
                issued.role, issued.token_id, issued.tenant.0
            );
            say!("{}", issued.token)?;
            Ok(())
        }
        TokenCommand::Revoke { token } => {
            let engine = ctx.reader().await?;
            match engine
                .revoke_token(&token)
                .await
                .context("revoking the token")?
            {
                Some(record) => {
                    say!(
                        "revoked token {} of tenant {:?}",
                        record.token_id,
                        record.tenant.0
                    )?;
                    Ok(())
                }
                None => Err(Failure::BadInput(anyhow::anyhow!(
                    "no live token matches {}; give the token text or its id as printed by `token create`",
                    if token.trim().parse::<i64>().is_ok() {
                        token.trim().to_string()
                    } else {
                        "that text".to_string()
                    }
                ))),
            }
        }
    }
}

/// `--role read|admin`, with the known roles named when it is neither.
fn parse_role(text: &str) -> Result<TokenRole, String> {
    text.parse::<TokenRole>().map_err(|e| e.to_string())
}
