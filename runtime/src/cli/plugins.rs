//! `lockstep plugins list` and `lockstep exec`: for operators and plugin authors.

use super::{CliResult, Ctx, Failure};
use crate::plugin::{RunRequest, StandaloneContext};
use anyhow::Context as _;
use clap::{Args, Subcommand};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// List every registered handler with its plugin file, hash, grants and input schema.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Handler name, e.g. example:wordcount.
    handler: String,
    /// Task input as JSON.
    #[arg(long, default_value = "{}")]
    input: String,
    /// Attempt number passed to the handler.
    #[arg(long, default_value_t = 1)]
    attempt: u32,
}

pub async fn plugins(ctx: &Ctx, cmd: PluginsCommand) -> CliResult {
    match cmd {
        PluginsCommand::List { json } => {
            let host = ctx.plugins().await?;
            let list = host.describe_all();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).context("rendering JSON")?
                );
                return Ok(());
            }
            if list.is_empty() {
                println!("no plugins found in {}", host.dirs_display());
            }
            for h in list {
                println!("{}", h.render_text());
            }
            let commands = host.command_names();
            if !commands.is_empty() {
                println!(
                    "command components (wasi:cli/command, for CI steps): {}",
                    commands.join(", ")
                );
            }
            Ok(())
        }
    }
}

pub async fn exec(ctx: &Ctx, args: ExecArgs) -> CliResult {
    let input: serde_json::Value = serde_json::from_str(&args.input)
        .map_err(|e| Failure::BadInput(anyhow::anyhow!("--input is not valid JSON: {e}")))?;
    let host = ctx.plugins().await?;
    host.validate_input(&args.handler, &input)
        .map_err(|e| Failure::BadInput(anyhow::anyhow!("{e}")))?;
    let req = RunRequest {
        handler: args.handler.clone(),
        job_id: 0,
        task_id: 0,
        stage: "exec".to_string(),
        attempt: args.attempt,
        input_json: input.to_string(),
        timeout: Duration::MAX,
    };
    match host.run(req, Arc::new(StandaloneContext)).await {
        Ok(outcome) => {
            println!("{}", outcome.output);
            for s in outcome.spawn {
                eprintln!(
                    "would spawn into stage {:?}: {} {}",
                    s.stage, s.handler, s.input
                );
            }
            Ok(())
        }
        Err(failure) => Err(Failure::JobFailed(format!("task failed: {failure}"))),
    }
}
