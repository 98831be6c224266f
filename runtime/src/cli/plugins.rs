//! `lockstep plugins …` and `lockstep exec`: for operators and plugin authors.

use super::{CliResult, Ctx, Failure};
use crate::cli::output::{self, say, say_part};
use crate::limits::printable;
use crate::plugin::oci::{self, OciError, OciRef};
use crate::plugin::trust::{self, Trust};
use crate::plugin::{CheckReport, RunRequest, StandaloneContext, TrustPolicy, discovery};
use crate::template::{self, Language, ProjectName};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// List every registered handler with its plugin file, hash, grants and input schema.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Write a new plugin project (rust, python or js) that builds outside this repository.
    New {
        /// Project name: lowercase letters, digits and `-`; the handler is NAME:greet.
        name: String,
        /// Language of the project: rust, python or js.
        #[arg(long, value_name = "LANG")]
        lang: String,
        /// Directory to create (must not exist or be empty; default ./NAME).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Print the WIT contract (world `plugin`) that this host links.
    Wit,
    /// Pin every plugin of the plugin directories in DIR/plugins.lock (file, sha256, and the
    /// signer when --trusted-keys verifies its NAME.wasm.minisig); --require-lock enforces it.
    Lock,
    /// Download a plugin from an OCI registry (wasm OCI layout) into the first plugin
    /// directory, verifying every digest, and pin it (with its source) in plugins.lock.
    Pull {
        /// oci://HOST/REPO@sha256:DIGEST, or oci://HOST/REPO:TAG (resolved to a digest).
        reference: String,
        /// File name in the plugin directory (default: the repository's last part + .wasm).
        #[arg(long = "as", value_name = "NAME.wasm")]
        file_name: Option<String>,
    },
    /// Upload FILE.wasm to an OCI registry as oci://HOST/REPO:TAG (wasm OCI layout).
    Push {
        file: PathBuf,
        /// oci://HOST/REPO:TAG
        reference: String,
    },
    /// Say whether FILE.wasm is a plugin this host loads: its exports, the imports it
    /// lacks, its handlers and their input schemas. Exit 1 when it is not.
    Check {
        file: PathBuf,
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
                output::json_pretty(&list)?;
                return Ok(());
            }
            if list.is_empty() {
                say!("no plugins found in {}", host.dirs_display())?;
            }
            for h in list {
                say!("{}", h.render_text())?;
            }
            let commands = host.command_names();
            if !commands.is_empty() {
                say!(
                    "command components (wasi:cli/command, for CI steps): {}",
                    commands.join(", ")
                )?;
            }
            Ok(())
        }
        PluginsCommand::New { name, lang, dir } => new_project(&name, &lang, dir),
        PluginsCommand::Lock => lock(ctx),
        PluginsCommand::Pull {
            reference,
            file_name,
        } => pull(ctx, &reference, file_name).await,
        PluginsCommand::Push { file, reference } => push(&file, &reference).await,
        PluginsCommand::Wit => {
            say_part!("{}", crate::plugin::WIT)?;
            Ok(())
        }
        PluginsCommand::Check { file, json } => {
            let report = crate::plugin::check_file(&file, ctx.cache_dir.as_deref())
                .await
                .map_err(anyhow::Error::new)?;
            if json {
                output::json_pretty(&report)?;
            } else {
                say_part!("{}", render_check(&report))?;
            }
            if report.is_valid() {
                Ok(())
            } else {
                Err(Failure::JobFailed(format!(
                    "error: {} is not a plugin this host loads",
                    file.display()
                )))
            }
        }
    }
}

/// `plugins lock`: write the lock of each plugin directory.
fn lock(ctx: &Ctx) -> CliResult {
    let bad = |e: String| Failure::BadInput(anyhow::anyhow!(e));
    let config = ctx.plugin_config();
    let dirs = crate::plugin::resolve_plugin_dirs(&config.dirs);
    // The lock pins what the host would read; it does not itself require one.
    let policy = TrustPolicy {
        require_lock: false,
        ..config.trust
    };
    let trust = Trust::load(&policy, &dirs).map_err(|e| bad(e.to_string()))?;
    for dir in &dirs {
        let files = discovery::scan(std::slice::from_ref(dir)).map_err(|e| bad(e.to_string()))?;
        let (path, entries) = trust::lock_dir(&trust, dir, &files).map_err(bad)?;
        let signed = entries.iter().filter(|e| e.signer.is_some()).count();
        say!(
            "pinned {} plugins ({signed} signed by a trusted key) in {}",
            entries.len(),
            path.display()
        )?;
    }
    Ok(())
}

/// `plugins pull`: fetch, verify, write, pin.
async fn pull(ctx: &Ctx, given: &str, file_name: Option<String>) -> CliResult {
    let bad = |e: String| Failure::BadInput(anyhow::anyhow!(e));
    let reference: OciRef = given.parse().map_err(|e: OciError| bad(e.to_string()))?;
    let file = file_name.unwrap_or_else(|| format!("{}.wasm", reference.name()));
    let plain = !file.is_empty()
        && file.ends_with(".wasm")
        && !file.starts_with('.')
        && file
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !plain {
        return Err(bad(format!(
            "--as {}: a plugin file name is letters, digits, `.`, `_` and `-`, ending in .wasm",
            crate::limits::printable(&file)
        )));
    }
    let dirs = crate::plugin::resolve_plugin_dirs(&ctx.plugin_config().dirs);
    let dir = dirs.first().cloned().unwrap_or_else(|| PathBuf::from("."));
    trust::check_dir(&dir).map_err(|e| bad(e.to_string()))?;
    let pulled = oci::pull(&reference).await.map_err(|e| match e {
        OciError::BadReference { .. } | OciError::NoTls { .. } => bad(e.to_string()),
        other => Failure::Other(anyhow::Error::new(other)),
    })?;
    let sha256 = crate::plugin::cache::sha256_hex(&pulled.wasm);
    let path = dir.join(&file);
    // Into place atomically: a serving process never sees half a file.
    let tmp = dir.join(format!(".{file}.pull-{}", std::process::id()));
    let written = std::fs::write(&tmp, &pulled.wasm).and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Failure::Other(anyhow::anyhow!(
            "cannot write {}: {e}",
            path.display()
        )));
    }
    let lock = trust::pin(
        &dir,
        trust::LockedPlugin {
            file,
            sha256: sha256.clone(),
            signer: None,
            source: Some(pulled.source.to_string()),
        },
    )
    .map_err(|e| Failure::Other(anyhow::Error::new(e)))?;
    if matches!(reference.reference, oci::Reference::Tag(_)) {
        say!("resolved {reference} to {}", pulled.manifest_digest)?;
    }
    say!(
        "pulled {} into {} (sha256 {sha256}), pinned in {}",
        pulled.source,
        path.display(),
        lock.display()
    )?;
    Ok(())
}

/// `plugins push`: upload a component in the wasm OCI layout.
async fn push(file: &std::path::Path, given: &str) -> CliResult {
    let bad = |e: String| Failure::BadInput(anyhow::anyhow!(e));
    let reference: OciRef = given.parse().map_err(|e: OciError| bad(e.to_string()))?;
    if matches!(reference.reference, oci::Reference::Digest(_)) {
        return Err(bad(format!(
            "{given} names a digest; push to a tag (oci://HOST/REPO:TAG), the digest is computed"
        )));
    }
    let wasm =
        std::fs::read(file).map_err(|e| bad(format!("cannot read {}: {e}", file.display())))?;
    let pinned = oci::push(&reference, &wasm)
        .await
        .map_err(|e| Failure::Other(anyhow::Error::new(e)))?;
    say!("pushed {} as {reference} ({pinned})", file.display())?;
    Ok(())
}

fn new_project(name: &str, lang: &str, dir: Option<PathBuf>) -> CliResult {
    let bad = |e: template::TemplateError| Failure::BadInput(e.into());
    let language: Language = lang.parse().map_err(bad)?;
    let name = ProjectName::new(name).map_err(bad)?;
    let dir = dir.unwrap_or_else(|| PathBuf::from(name.as_str()));
    let files = template::write(&dir, &name, language).map_err(|e| match e {
        template::TemplateError::NotEmpty(_) => bad(e),
        other => Failure::Other(other.into()),
    })?;
    say!(
        "wrote a {} plugin project with handler {} to {} ({} files)",
        language.flag(),
        name.handler(),
        dir.display(),
        files.len()
    )?;
    say!("build it:")?;
    say!("  cd {}", dir.display())?;
    for command in language.build_commands(&name) {
        say!("  {command}")?;
    }
    say!(
        "then check it: lockstep plugins check {}",
        dir.join(language.component_path(&name)).display()
    )?;
    Ok(())
}

/// The human form of a check: a verdict line, then what was found.
fn render_check(report: &CheckReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let verdict = if report.is_valid() {
        "a plugin this host loads"
    } else {
        "NOT a plugin this host loads"
    };
    let _ = writeln!(out, "{}: {verdict}", report.path.display());
    for problem in &report.problems {
        let _ = writeln!(out, "  problem: {}", printable(problem));
    }
    if !report.sha256.is_empty() {
        let _ = writeln!(
            out,
            "  file:    {} bytes, sha256 {}",
            report.bytes, report.sha256
        );
    }
    if !report.exports.is_empty() {
        let _ = writeln!(out, "  exports: {}", report.exports.join(", "));
    }
    for import in &report.imports {
        let status = if import.linked {
            "linked"
        } else {
            "NOT LINKED"
        };
        let _ = writeln!(out, "  import:  {} ({status})", import.name);
    }
    if let Some(needs) = &report.needs {
        let _ = writeln!(
            out,
            "  needs:   {} memories (largest starts at {} KiB), {} tables (largest starts at {} elements)",
            needs.memories,
            needs.largest_initial_memory_bytes / 1024,
            needs.tables,
            needs.largest_initial_table_elements
        );
    }
    for handler in &report.handlers {
        let schema = serde_json::to_string(&handler.input_schema)
            .unwrap_or_else(|_| "(unprintable)".to_owned());
        let _ = writeln!(
            out,
            "  handler: {} — {}
    input: {}",
            printable(&handler.name),
            printable(&handler.description),
            printable(&schema)
        );
    }
    out
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
            say!("{}", printable(&outcome.output))?;
            for s in outcome.spawn {
                eprintln!(
                    "would spawn into stage {:?}: {} {}",
                    s.stage,
                    printable(&s.handler),
                    printable(&s.input)
                );
            }
            Ok(())
        }
        Err(failure) => Err(Failure::JobFailed(format!(
            "task failed: {}",
            printable(&failure.to_string())
        ))),
    }
}
