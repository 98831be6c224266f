//! One claimed step, from its `if` to its recorded end.
//!
//! In order: a carried-over step ends with its earlier output; a step whose
//! `if` is false (or whose matrix sibling failed under `fail_fast`) is
//! skipped; otherwise its directories are prepared (`/workspace` read-only,
//! a fresh writable `/out`, each needed step's artifact read-only at
//! `/artifacts/<key>`, its caches restored), the component runs with the
//! step's args, env and secrets, its output is masked, cut into lines and
//! written as `task_log` events while it runs, and its end becomes a
//! [`StepReport`]: `succeeded`, a retry (when `retry.on` names the outcome
//! and attempts are left), or `dead` with the report as its output.
//!
//! **Invariant:** every line, error and report leaves this module through
//! the run's [`Masker`]; secret values exist only in the guest's env.

use super::artifacts::{StateDir, copy_tree, evaluate_cache_key};
use super::runner::StepRunConfig;
use super::rust_test;
use super::secrets::Masker;
use crate::engine::{Engine, now_millis};
use crate::limits::printable;
use crate::model::{
    CacheReport, Condition, Executor, RetryOn, StepKind, StepOutcome, StepPlan, StepReport,
    TaskState,
};
use crate::plugin::{
    CommandEnd, CommandHost, Invocation, LoadedCommand, Preopen, StreamKind, output_channel,
};
use crate::store::{ClaimedTask, CompleteBatch, Completion, GetTask, RenewLease, TaskResult};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Longest log line stored (longer ones are cut and marked).
pub const MAX_LOG_LINE_BYTES: usize = 4096;
/// Most log lines stored per attempt of a step.
pub const MAX_LOG_LINES: usize = 20_000;

/// What every step of one runner shares.
pub(super) struct StepContext {
    pub engine: Arc<Engine>,
    pub commands: Arc<CommandHost>,
    pub config: StepRunConfig,
    pub masker: Masker,
    /// `max_parallel` of each matrix, by step key.
    pub groups: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

/// Log lines of a running step, waiting to be written.
#[derive(Default)]
pub(super) struct LogBuffer {
    lines: Vec<String>,
    stored: usize,
    dropped: usize,
}

impl LogBuffer {
    pub fn push(&mut self, stream: StreamKind, text: &str) {
        if self.stored >= MAX_LOG_LINES {
            self.dropped += 1;
            return;
        }
        self.stored += 1;
        let mut line = printable(text).into_owned();
        if line.len() > MAX_LOG_LINE_BYTES {
            let mut cut = MAX_LOG_LINE_BYTES;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push_str(" …(line cut)");
        }
        self.lines.push(format!("{}: {line}", stream.as_str()));
    }

    fn take(&mut self) -> Vec<String> {
        std::mem::take(&mut self.lines)
    }

    fn finish(&mut self) -> Vec<String> {
        if self.dropped > 0 {
            self.lines.push(format!(
                "lockstep: {} more lines were not stored (a step keeps at most {MAX_LOG_LINES})",
                self.dropped
            ));
            self.dropped = 0;
        }
        self.take()
    }
}

/// A stream's bytes → masked, complete lines in a [`LogBuffer`].
pub(super) struct LineSplitter {
    stream: StreamKind,
    masker: super::secrets::StreamMasker,
    partial: Vec<u8>,
}

impl LineSplitter {
    pub fn new(stream: StreamKind, masker: &Masker) -> LineSplitter {
        LineSplitter {
            stream,
            masker: masker.stream(),
            partial: Vec::new(),
        }
    }

    pub fn push(&mut self, bytes: &[u8], logs: &Mutex<LogBuffer>) {
        let masked = self.masker.push(bytes);
        self.lines(&masked, logs);
    }

    pub fn finish(&mut self, logs: &Mutex<LogBuffer>) {
        let rest = self.masker.finish();
        self.lines(&rest, logs);
        if !self.partial.is_empty() {
            let line = String::from_utf8_lossy(&self.partial).into_owned();
            lock(logs).push(self.stream, &line);
            self.partial.clear();
        }
    }

    fn lines(&mut self, bytes: &[u8], logs: &Mutex<LogBuffer>) {
        for &b in bytes {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.partial).into_owned();
                lock(logs).push(self.stream, line.trim_end_matches('\r'));
                self.partial.clear();
            } else if self.partial.len() < MAX_LOG_LINE_BYTES * 2 {
                self.partial.push(b);
            }
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Run one claimed step and record its end.
pub(super) async fn run_step(cx: &StepContext, task: ClaimedTask) {
    let logs = Arc::new(Mutex::new(LogBuffer::default()));
    let (stop_renewer, stopped) = tokio::sync::oneshot::channel::<()>();
    let renewer = spawn_renewer(cx, &task, logs.clone(), stopped);
    let result = match serde_json::from_str::<StepPlan>(&task.input_json) {
        Ok(plan) => decide(cx, &task, &plan, &logs).await,
        Err(e) => TaskResult::Fatal {
            error: format!("the task's input is not a pipeline step: {e}"),
            output_json: None,
        },
    };
    // Stopped between two writes, never inside one: no line is lost.
    let _ = stop_renewer.send(());
    let _ = renewer.await;
    let mut lines = lock(&logs).finish();
    for line in &mut lines {
        *line = cx.masker.mask(line);
    }
    let completion = Completion {
        tenant: task.tenant.clone(),
        lease: task.lease,
        result,
        logs: lines,
    };
    let attempt = crate::engine::metrics::Attempt {
        handler: crate::engine::metrics::handler_label(Executor::Command, &task.handler),
        job: task.job_id,
        took: None,
    };
    let mut wait = Duration::from_millis(50);
    for _ in 0..20 {
        match cx
            .engine
            .store()
            .complete_batch(CompleteBatch {
                completions: vec![completion.clone()],
                now: now_millis(),
                max_tasks_per_job: cx.engine.config().limits.max_tasks_per_job,
            })
            .await
        {
            Ok(outcomes) => {
                crate::engine::metrics::recorded(
                    std::slice::from_ref(&completion),
                    std::slice::from_ref(&attempt),
                    &outcomes,
                );
                cx.engine.wake().notify_waiters();
                return;
            }
            Err(e) => {
                crate::engine::metrics::store_retry("completion");
                tracing::warn!(task = task.lease.task_id.0, "recording a step failed: {e}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Writes the step's log lines as they come and keeps its lease.
fn spawn_renewer(
    cx: &StepContext,
    task: &ClaimedTask,
    logs: Arc<Mutex<LogBuffer>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<()> {
    let engine = cx.engine.clone();
    let masker = cx.masker.clone();
    let lease = cx.config.lease;
    let every = cx.config.flush_every.min(lease / 3);
    let (tenant, token) = (task.tenant.clone(), task.lease);
    tokio::spawn(async move {
        let mut last_renew = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {},
                _ = &mut stop => return,
            }
            let lines: Vec<String> = lock(&logs)
                .take()
                .into_iter()
                .map(|l| masker.mask(&l))
                .collect();
            if lines.is_empty() && last_renew.elapsed() < lease / 3 {
                continue;
            }
            last_renew = Instant::now();
            let held = engine
                .store()
                .renew_lease(RenewLease {
                    tenant: tenant.clone(),
                    lease: token,
                    lease_for: lease,
                    now: now_millis(),
                    note: None,
                    logs: lines,
                })
                .await;
            if let Ok(false) = held {
                tracing::warn!(
                    task = token.task_id.0,
                    "a step's lease was lost while it ran; its result will be refused"
                );
                return;
            }
        }
    })
}

/// What the steps a step needs ended as.
struct Needs {
    /// Keys of needed steps that failed (not soft failures).
    failed: Vec<String>,
    /// Keys of needed steps that did not succeed (failed, skipped, cancelled).
    not_succeeded: Vec<String>,
    /// Artifacts of needed steps: (key, address).
    artifacts: Vec<(String, String)>,
    /// A failure happened upstream (a need failed, or was skipped because
    /// of one).
    upstream_failure: bool,
}

async fn read_needs(cx: &StepContext, task: &ClaimedTask) -> Result<Needs, String> {
    let deps = cx
        .engine
        .store()
        .task_dependencies(GetTask {
            tenant: task.tenant.clone(),
            task: task.lease.task_id,
        })
        .await
        .map_err(|e| format!("reading the steps it needs failed: {e}"))?;
    let mut needs = Needs {
        failed: Vec::new(),
        not_succeeded: Vec::new(),
        artifacts: Vec::new(),
        upstream_failure: false,
    };
    for d in deps {
        let key = d.key.clone().unwrap_or_else(|| d.task_id.0.to_string());
        let report = d
            .output_json
            .as_deref()
            .and_then(|o| serde_json::from_str::<StepReport>(o).ok());
        let soft = report.as_ref().is_some_and(|r| r.soft_failure);
        match d.state {
            TaskState::Succeeded => {}
            TaskState::Dead if soft => {}
            TaskState::Dead | TaskState::Cancelled => {
                needs.failed.push(key.clone());
                needs.not_succeeded.push(key.clone());
                needs.upstream_failure = true;
            }
            _ => {
                needs.not_succeeded.push(key.clone());
                if report.as_ref().is_some_and(|r| r.upstream_failure) {
                    needs.upstream_failure = true;
                }
            }
        }
        if let Some(address) = report.and_then(|r| r.artifact) {
            needs.artifacts.push((key, address));
        }
    }
    Ok(needs)
}

fn report(outcome: StepOutcome, summary: String) -> StepReport {
    StepReport {
        outcome,
        summary,
        exit_code: None,
        soft_failure: false,
        artifact: None,
        cache: Vec::new(),
        tests: Vec::new(),
        duration_ms: 0,
        reused_from: None,
        upstream_failure: false,
    }
}

fn json(report: &StepReport, masker: &Masker) -> String {
    masker.mask(&serde_json::to_string(report).unwrap_or_else(|_| "{}".to_string()))
}

async fn decide(
    cx: &StepContext,
    task: &ClaimedTask,
    plan: &StepPlan,
    logs: &Arc<Mutex<LogBuffer>>,
) -> TaskResult {
    if let Some(reuse) = &plan.reuse {
        let mut carried = reuse
            .output_json
            .as_deref()
            .and_then(|o| serde_json::from_str::<StepReport>(o).ok())
            .unwrap_or_else(|| report(StepOutcome::Passed, "carried over".to_string()));
        carried.reused_from = Some(reuse.run);
        let output_json = json(&carried, &cx.masker);
        return if reuse.state == TaskState::Skipped {
            TaskResult::Skipped { output_json }
        } else {
            TaskResult::Succeeded {
                output_json,
                spawn: Vec::new(),
            }
        };
    }
    let needs = match read_needs(cx, task).await {
        Ok(n) => n,
        Err(error) => {
            return TaskResult::Retryable {
                error,
                retry_after: Duration::from_millis(200),
            };
        }
    };
    let run = match plan.condition {
        Condition::Always => true,
        Condition::Success => needs.not_succeeded.is_empty() && !needs.upstream_failure,
        Condition::Failure => needs.upstream_failure,
    };
    if !run {
        let why = match plan.condition {
            Condition::Success if !needs.failed.is_empty() => {
                format!("needed step {} failed", needs.failed.join(", "))
            }
            Condition::Success => format!(
                "needed step {} did not succeed",
                needs.not_succeeded.join(", ")
            ),
            _ => "no needed step failed".to_string(),
        };
        let mut r = report(
            StepOutcome::Skipped,
            format!("skipped: if {} is false ({why})", plan.condition.as_call()),
        );
        r.upstream_failure = needs.upstream_failure;
        return TaskResult::Skipped {
            output_json: json(&r, &cx.masker),
        };
    }
    if let Some(group) = &plan.group {
        if group.fail_fast
            && let Some(failed) = failed_sibling(cx, task, plan).await
        {
            let mut r = report(
                StepOutcome::Skipped,
                format!("skipped: matrix sibling {failed} failed (fail_fast)"),
            );
            r.upstream_failure = needs.upstream_failure;
            return TaskResult::Skipped {
                output_json: json(&r, &cx.masker),
            };
        }
        if group.max_parallel > 0 {
            let gate = {
                let mut groups = lock(&cx.groups);
                groups
                    .entry(group.step.clone())
                    .or_insert_with(|| Arc::new(Semaphore::new(group.max_parallel as usize)))
                    .clone()
            };
            let _permit = gate.acquire_owned().await;
            return execute(cx, task, plan, &needs, logs).await;
        }
    }
    execute(cx, task, plan, &needs, logs).await
}

/// A matrix sibling of `plan` that failed, if any.
async fn failed_sibling(cx: &StepContext, task: &ClaimedTask, plan: &StepPlan) -> Option<String> {
    let group = plan.group.as_ref()?;
    let tasks = cx.engine.job_tasks(&task.tenant, task.job_id).await.ok()?;
    for t in tasks {
        if t.state != TaskState::Dead || t.task_id == task.lease.task_id {
            continue;
        }
        let Ok(other) = serde_json::from_str::<StepPlan>(&t.input_json) else {
            continue;
        };
        let soft = t
            .output_json
            .as_deref()
            .and_then(|o| serde_json::from_str::<StepReport>(o).ok())
            .is_some_and(|r| r.soft_failure);
        if !soft && other.group.as_ref().is_some_and(|g| g.step == group.step) {
            return Some(other.key);
        }
    }
    None
}

/// The directories, env and run of a step that runs.
async fn execute(
    cx: &StepContext,
    task: &ClaimedTask,
    plan: &StepPlan,
    needs: &Needs,
    logs: &Arc<Mutex<LogBuffer>>,
) -> TaskResult {
    let started = Instant::now();
    let state = StateDir::new(&plan.state_dir);
    let setup_failed = |summary: String| {
        let mut r = report(StepOutcome::Setup, summary.clone());
        r.soft_failure = plan.allow_failure;
        r.duration_ms = started.elapsed().as_millis() as u64;
        TaskResult::Fatal {
            error: cx.masker.mask(&summary),
            output_json: Some(json(&r, &cx.masker)),
        }
    };
    let command = match load_component(&cx.commands, plan) {
        Ok(c) => c,
        Err(e) => return setup_failed(e),
    };
    let out = match state.scratch("out") {
        Ok(d) => d,
        Err(e) => {
            return setup_failed(format!(
                "could not create its /out under {}: {e}",
                plan.state_dir.display()
            ));
        }
    };
    let mut dirs = vec![
        Preopen {
            host: plan.workspace.clone(),
            guest: "/workspace".to_string(),
            writable: false,
        },
        Preopen {
            host: out.clone(),
            guest: "/out".to_string(),
            writable: true,
        },
    ];
    for (key, address) in &needs.artifacts {
        let host = state.artifact(address);
        if host.is_dir() {
            dirs.push(Preopen {
                host,
                guest: format!("/artifacts/{key}"),
                writable: false,
            });
        }
    }
    // Caches: (evaluated key, scratch dir, restored key).
    let mut caches: Vec<(String, PathBuf, Option<String>)> = Vec::new();
    for c in &plan.cache {
        let key = match evaluate_cache_key(&c.key, &plan.workspace) {
            Ok(k) => k,
            Err(e) => return setup_failed(e),
        };
        let dir = match state.scratch("cache") {
            Ok(d) => d,
            Err(e) => return setup_failed(format!("could not create a cache directory: {e}")),
        };
        let restored = state.find_cache(&key, &c.restore_keys);
        if let Some((_, entry)) = &restored
            && let Err(e) = copy_tree(entry, &dir)
        {
            return setup_failed(format!("could not restore cache {key}: {e}"));
        }
        if let Some((name, _)) = &restored {
            lock(logs).push(
                StreamKind::Stdout,
                &format!("lockstep: cache {} restored from {name}", c.path),
            );
        }
        dirs.push(Preopen {
            host: dir.clone(),
            guest: c.path.clone(),
            writable: true,
        });
        caches.push((key, dir, restored.map(|(name, _)| name)));
    }
    let mut env: Vec<(String, String)> = plan
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for name in &plan.secrets {
        match cx.config.secrets.get(name) {
            Some(value) => env.push((name.clone(), value.to_string())),
            None => {
                return setup_failed(format!(
                    "secret {name} was not given to this runner (LOCKSTEP_SECRET_{name} or --secrets FILE)"
                ));
            }
        }
    }
    let invocation = Invocation {
        program: plan.key.clone(),
        args: plan.args.clone(),
        env,
        dirs,
        memory_bytes: plan.memory_mib << 20,
        timeout: Duration::from_millis(plan.timeout_ms.max(1)),
    };
    let mut r = match plan.kind {
        StepKind::Command => run_command(cx, &command, &invocation, logs).await,
        StepKind::RustTest => rust_test::run_tests(cx, &command, &invocation, logs).await,
    };
    r.duration_ms = started.elapsed().as_millis() as u64;
    match state.keep_artifact(&out) {
        Ok(address) => r.artifact = address,
        Err(e) => lock(logs).push(
            StreamKind::Stderr,
            &format!("lockstep: its /out could not be kept: {e}"),
        ),
    }
    for (key, dir, restored) in caches {
        let exact = restored.as_deref() == Some(key.as_str());
        let saved = if r.outcome == StepOutcome::Passed && !exact {
            state.save_cache(&key, &dir).unwrap_or(false)
        } else {
            let _ = std::fs::remove_dir_all(&dir);
            false
        };
        r.cache.push(CacheReport {
            key,
            restored,
            saved,
        });
    }
    if r.outcome == StepOutcome::Passed {
        return TaskResult::Succeeded {
            output_json: json(&r, &cx.masker),
            spawn: Vec::new(),
        };
    }
    let retry = plan.retry_on.iter().any(|on| match (on, r.outcome) {
        (RetryOn::Trap, StepOutcome::Trap)
        | (RetryOn::Timeout, StepOutcome::Timeout)
        | (RetryOn::Memory, StepOutcome::Memory) => true,
        (RetryOn::AnyExit, StepOutcome::Failed) => r.exit_code.is_some(),
        (RetryOn::Exit(n), StepOutcome::Failed) => r.exit_code == Some(*n),
        _ => false,
    });
    let attempt = u32::try_from(task.lease.attempt).unwrap_or(u32::MAX);
    if retry && attempt <= plan.retry_limit {
        return TaskResult::Retryable {
            error: cx.masker.mask(&format!(
                "{} (retrying: attempt {attempt} of {})",
                r.summary,
                plan.retry_limit + 1
            )),
            retry_after: Duration::from_millis(100),
        };
    }
    r.soft_failure = plan.allow_failure;
    TaskResult::Fatal {
        error: cx.masker.mask(&r.summary),
        output_json: Some(json(&r, &cx.masker)),
    }
}

fn load_component(commands: &CommandHost, plan: &StepPlan) -> Result<LoadedCommand, String> {
    let loaded = commands.load(&plan.component).map_err(|e| e.to_string())?;
    if loaded.sha256() != plan.component_sha256 {
        return Err(format!(
            "component {} changed since the run was submitted (sha256 {} now, {} then); start a new run",
            plan.component.display(),
            &loaded.sha256()[..12],
            &plan.component_sha256[..plan.component_sha256.len().min(12)]
        ));
    }
    Ok(loaded)
}

/// Run a command step once, streaming its output into `logs`.
async fn run_command(
    cx: &StepContext,
    command: &LoadedCommand,
    invocation: &Invocation,
    logs: &Arc<Mutex<LogBuffer>>,
) -> StepReport {
    let mut splitters = [
        LineSplitter::new(StreamKind::Stdout, &cx.masker),
        LineSplitter::new(StreamKind::Stderr, &cx.masker),
    ];
    let (end, dropped) = run_streamed(cx, command, invocation, |stream, bytes| {
        let i = match stream {
            StreamKind::Stdout => 0,
            StreamKind::Stderr => 1,
        };
        splitters[i].push(bytes, logs);
    })
    .await;
    for s in &mut splitters {
        s.finish(logs);
    }
    if dropped > 0 {
        lock(logs).push(
            StreamKind::Stderr,
            &format!("lockstep: {dropped} bytes of output past the limit were dropped"),
        );
    }
    end_report(&end)
}

/// Run `command`, handing every chunk it writes (unmasked) to `on_chunk`
/// while it runs; returns how it ended and the bytes dropped past the
/// output bound.
pub(super) async fn run_streamed(
    cx: &StepContext,
    command: &LoadedCommand,
    invocation: &Invocation,
    mut on_chunk: impl FnMut(StreamKind, &[u8]),
) -> (CommandEnd, u64) {
    let (sender, mut receiver) = output_channel(cx.config.output);
    let run = cx.commands.run(command, invocation, sender);
    tokio::pin!(run);
    let mut end = None;
    loop {
        tokio::select! {
            chunk = receiver.recv() => match chunk {
                Some(chunk) => on_chunk(chunk.stream, &chunk.bytes),
                None => break,
            },
            e = &mut run, if end.is_none() => end = Some(e),
        }
    }
    let end = match end {
        Some(e) => e,
        None => run.await,
    };
    let dropped = receiver.dropped(StreamKind::Stdout) + receiver.dropped(StreamKind::Stderr);
    (end, dropped)
}

/// The report of a command's end.
pub(super) fn end_report(end: &CommandEnd) -> StepReport {
    let (outcome, exit_code) = match end {
        CommandEnd::Exited(0) => (StepOutcome::Passed, Some(0)),
        CommandEnd::Exited(code) => (StepOutcome::Failed, Some(*code)),
        CommandEnd::Trap { .. } => (StepOutcome::Trap, None),
        CommandEnd::Timeout { .. } => (StepOutcome::Timeout, None),
        CommandEnd::OutOfMemory { .. } => (StepOutcome::Memory, None),
        CommandEnd::Setup { .. } => (StepOutcome::Setup, None),
    };
    let mut r = report(outcome, end.to_string());
    r.exit_code = exit_code;
    r
}
