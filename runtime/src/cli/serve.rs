//! `lockstep serve`: workers (and, later, MCP over HTTP) until interrupted.

use super::{CliResult, Ctx};
use crate::engine::WorkerConfig;
use clap::Args;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Tasks run concurrently by this process.
    #[arg(long, default_value_t = 64)]
    workers: usize,
    /// Most tasks claimed in one statement.
    #[arg(long, default_value_t = 256)]
    batch: u32,
    /// Lease taken by each claim, in seconds; a task whose process dies is
    /// re-run after this long.
    #[arg(long, default_value_t = 60.0)]
    lease_secs: f64,
}

pub async fn serve(ctx: &Ctx, args: ServeArgs) -> CliResult {
    if !(args.lease_secs > 0.0 && args.lease_secs.is_finite()) {
        return Err(super::Failure::BadInput(anyhow::anyhow!(
            "--lease-secs must be a positive number of seconds, got {}",
            args.lease_secs
        )));
    }
    let engine = ctx.engine().await?;
    let lease = Duration::from_secs_f64(args.lease_secs);
    let pool = engine.start_workers(WorkerConfig {
        slots: args.workers.max(1),
        batch: args.batch.max(1),
        lease,
        rescue_every: (lease / 4).clamp(Duration::from_millis(100), Duration::from_secs(5)),
        ..WorkerConfig::default()
    });
    eprintln!(
        "lockstep serve: {} handlers, {} worker slots, pid {}; Ctrl-C to stop",
        engine.plugins().handler_names().len(),
        args.workers,
        std::process::id()
    );
    shutdown_signal().await;
    eprintln!("stopping: letting running tasks finish");
    let stats = pool.stats.clone();
    pool.shutdown().await;
    eprintln!(
        "stopped: {} claimed, {} completed, {} refused as stale, {} leases rescued",
        stats.claimed.load(Ordering::Relaxed),
        stats.completed.load(Ordering::Relaxed),
        stats.stale.load(Ordering::Relaxed),
        stats.rescued.load(Ordering::Relaxed)
    );
    Ok(())
}

async fn shutdown_signal() {
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
