//! `lockstep serve`: workers, and with `--http ADDR` MCP over streamable
//! HTTP at `/mcp`, Prometheus metrics at `/metrics` and the dashboard at
//! `/ui` (bearer tokens), until interrupted.

use super::mcp::McpOptions;
use super::{CliResult, Ctx};
use crate::engine::WorkerConfig;
use crate::mcp::http::{self, HttpConfig};
use clap::Args;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Tasks run concurrently by this process.
    #[arg(long, default_value_t = 64)]
    workers: usize,
    /// Most tasks claimed in one statement: a claim takes the free run
    /// slots plus the tasks the runs are expected to free within 10 ms, up
    /// to this many. Also how many claimed tasks beyond --workers may wait
    /// for a run slot or for their results to be recorded (so the next
    /// batch runs while the last one commits).
    #[arg(long, default_value_t = 256)]
    batch: u32,
    /// Lease taken by each claim, in seconds; a task whose process dies is
    /// re-run after this long.
    #[arg(long, default_value_t = 60.0)]
    lease_secs: f64,
    /// On Ctrl-C or SIGTERM, how long running tasks may take to finish, in
    /// seconds; then they are interrupted (a retryable failure) and their
    /// results committed. Tasks still waiting for a plugin slot are handed
    /// back at once, unrun. A second signal stops at once: running tasks
    /// are then abandoned and rescued when their leases expire.
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    shutdown_grace: f64,
    /// Also serve MCP over streamable HTTP at http://ADDR/mcp and the dashboard at
    /// http://ADDR/ui (e.g. 127.0.0.1:7300). Every request needs a bearer token from
    /// `lockstep token create` (the dashboard's login form sets it as a cookie).
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// Serve --http without tokens: every request acts as --tenant. Only on
    /// a loopback address (127.0.0.1, [::1], localhost), for MCP clients and
    /// test suites on this machine that cannot send a token.
    #[arg(long, requires = "http")]
    no_auth: bool,
    /// Host header value to accept besides localhost/127.0.0.1/::1 (repeatable),
    /// e.g. the server's DNS name when binding a public address.
    #[arg(long = "allow-host", value_name = "HOST")]
    allow_hosts: Vec<String>,
    /// Browser Origin allowed to call (repeatable), e.g. https://app.example.com:443;
    /// requests with any other Origin header are refused.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    allow_origins: Vec<String>,
    /// MCP requests per second allowed per token (0: no limit).
    #[arg(long, default_value_t = 50.0)]
    rate_limit: f64,
    /// MCP requests a token may send in a burst before --rate-limit applies.
    #[arg(long, default_value_t = 100)]
    rate_burst: u32,
    /// Largest MCP request body, in bytes.
    #[arg(long, default_value_t = http::DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Bearer token Prometheus must send to read http://ADDR/metrics (at least 16
    /// printable characters); without it /metrics is open to whoever reaches --http.
    #[arg(
        long,
        env = "LOCKSTEP_METRICS_TOKEN",
        requires = "http",
        value_name = "TOKEN"
    )]
    metrics_token: Option<String>,
    #[command(flatten)]
    mcp: McpOptions,
}

pub async fn serve(ctx: &Ctx, args: ServeArgs) -> CliResult {
    if !(args.lease_secs > 0.0 && args.lease_secs.is_finite()) {
        return Err(super::Failure::BadInput(anyhow::anyhow!(
            "--lease-secs must be a positive number of seconds, got {}",
            args.lease_secs
        )));
    }
    if !(args.rate_limit >= 0.0 && args.rate_limit.is_finite()) {
        return Err(super::Failure::BadInput(anyhow::anyhow!(
            "--rate-limit must be a number of requests per second (0 for none), got {}",
            args.rate_limit
        )));
    }
    if args.no_auth && !args.allow_hosts.is_empty() {
        return Err(super::Failure::BadInput(anyhow::anyhow!(
            "--no-auth serves only this machine, so it takes no --allow-host; drop --allow-host, or drop --no-auth and use a token from `lockstep token create`"
        )));
    }
    if !(args.shutdown_grace >= 0.0 && args.shutdown_grace.is_finite()) {
        return Err(super::Failure::BadInput(anyhow::anyhow!(
            "--shutdown-grace must be a number of seconds (0 or more), got {}",
            args.shutdown_grace
        )));
    }
    if let Some(token) = &args.metrics_token {
        crate::telemetry::check_token(token)
            .map_err(|e| super::Failure::BadInput(anyhow::anyhow!(e)))?;
    }
    let grace = Duration::from_secs_f64(args.shutdown_grace);
    let mcp_config = args.mcp.config_for(ctx)?;
    // Bind before starting anything, so a taken port or a public address
    // without tokens is a clean error and nothing has been opened.
    let refuse = |e: String| super::Failure::BadInput(anyhow::anyhow!(e));
    let listener = match &args.http {
        Some(addr) => {
            if args.no_auth {
                // Every address the name stands for, before anything listens on it…
                let resolved = tokio::net::lookup_host(addr.as_str()).await.map_err(|e| {
                    refuse(format!("--http {addr} is not an address to listen on: {e}"))
                })?;
                for candidate in resolved {
                    http::check_loopback(candidate).map_err(refuse)?;
                }
            }
            let listener = http::bind(addr).await.map_err(anyhow::Error::new)?;
            if args.no_auth {
                // …and the one it listens on.
                let local = listener.local_addr().map_err(anyhow::Error::new)?;
                http::check_loopback(local).map_err(refuse)?;
            }
            Some(listener)
        }
        None => None,
    };
    // Every serve process records what it does; --http serves it at /metrics.
    let exporter = crate::telemetry::Exporter::install().map_err(anyhow::Error::new)?;
    let engine = ctx.engine().await?;
    let _watcher = super::watch_plugins(&engine, ctx);
    let lease = Duration::from_secs_f64(args.lease_secs);
    let config = WorkerConfig {
        slots: args.workers.max(1),
        batch: args.batch.max(1),
        lease,
        rescue_every: if args.http.is_some() {
            args.mcp.rescue_every(lease)
        } else {
            (lease / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
        },
        ..WorkerConfig::default()
    };
    let budget = config.recording_budget();
    let pool = engine.start_workers(config);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut http_server = None;
    if let Some(listener) = listener {
        let http_config = HttpConfig {
            auth: if args.no_auth {
                http::Auth::LoopbackOnly(ctx.tenant.clone())
            } else {
                http::Auth::Tokens
            },
            allowed_hosts: args.allow_hosts.clone(),
            allowed_origins: args.allow_origins.clone(),
            rate_per_second: args.rate_limit,
            burst: args.rate_burst,
            max_body_bytes: args.max_body_bytes,
        };
        let local = listener.local_addr().map_err(anyhow::Error::new)?;
        let dashboard = crate::ui::UiConfig {
            auth: match &http_config.auth {
                http::Auth::Tokens => crate::ui::UiAuth::Tokens,
                http::Auth::LoopbackOnly(tenant) => crate::ui::UiAuth::LoopbackOnly(tenant.clone()),
            },
            allowed_hosts: args.allow_hosts.clone(),
            allowed_origins: args.allow_origins.clone(),
            shutdown: shutdown.clone(),
            worker_slots: Some(args.workers.max(1)),
        };
        let router = http::router(engine.clone(), mcp_config, &http_config, shutdown.clone())
            .merge(crate::telemetry::router(
                engine.clone(),
                exporter.clone(),
                args.metrics_token.clone(),
            ))
            .merge(crate::ui::router(engine.clone(), dashboard));
        eprintln!("lockstep serve: MCP listening on http://{local}/mcp");
        eprintln!("lockstep serve: dashboard at http://{local}/ui");
        eprintln!(
            "lockstep serve: Prometheus metrics at http://{local}{} ({})",
            crate::telemetry::METRICS_PATH,
            if args.metrics_token.is_some() {
                "bearer token of --metrics-token required"
            } else {
                "open to whoever reaches this address; set --metrics-token to require one"
            }
        );
        if args.no_auth {
            eprintln!(
                "lockstep serve: --no-auth: every MCP request acts as tenant {:?} without a token",
                ctx.tenant.0
            );
        }
        http_server = Some(tokio::spawn(http::serve(
            listener,
            router,
            shutdown.clone(),
        )));
    }
    eprintln!(
        "lockstep serve: {} handlers, {} worker slots (at most {budget} claimed tasks not yet recorded), pid {}; Ctrl-C to stop",
        engine.plugins().handler_names().len(),
        args.workers.max(1),
        std::process::id()
    );
    shutdown_signal().await;
    // Listen for the second signal before saying how to send it.
    let second = tokio::spawn(shutdown_signal());
    eprintln!(
        "stopping: no new tasks; tasks waiting for a plugin slot go back to the queue now, running ones get up to {} (--shutdown-grace); signal again to stop at once",
        seconds(grace)
    );
    shutdown.cancel();
    let stats = pool.stats.clone();
    let stop = async {
        if let Some(server) = http_server {
            let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        }
        pool.stop(Some(grace)).await;
    };
    tokio::select! {
        () = stop => {}
        _ = second => {
            eprintln!(
                "stopped at once: tasks still running were abandoned; their leases expire within {} and any lockstep process runs them again",
                seconds(lease)
            );
            // Nothing more may run: not even the runtime's orderly shutdown,
            // which would wait for the abandoned runs.
            std::process::exit(130);
        }
    }
    let count = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    eprintln!(
        "stopped: {} claimed, {} completed, {} handed back unrun, {} interrupted after the grace period, {} refused as stale, {} leases rescued, {} failed database calls",
        count(&stats.claimed),
        count(&stats.completed),
        count(&stats.released),
        count(&stats.interrupted),
        count(&stats.stale),
        count(&stats.rescued),
        count(&stats.commit_errors) + count(&stats.database_errors)
    );
    Ok(())
}

/// A duration as `30 s` or `1.5 s`.
fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

pub(super) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
