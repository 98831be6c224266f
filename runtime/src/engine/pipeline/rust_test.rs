//! `kind = "rust-test"` steps: a test binary built by `cargo test --no-run
//! --target wasm32-wasip2`, one fresh instance per test.
//!
//! On wasm a panic aborts the whole program (there is no unwinding), so one
//! failing test would end every test after it and the harness could not say
//! which failed. The step therefore lists the tests (`--list --format
//! terse`), runs each alone (`NAME --exact --nocapture`) in its own instance,
//! up to the runner's slots at once, and classifies each end: exit 0 with the
//! test run is a pass; a trap after `panicked at` is a failure with the panic
//! message; a trap without one is a trap; running past the step's timeout
//! (per test) is a timeout. One test's end never hides another's.
//!
//! **Invariant:** every byte of a test's output is masked before it is kept,
//! and what is kept is bounded ([`MAX_TEST_OUTPUT_BYTES`] per test).

use super::secrets::StreamMasker;
use super::step::{LogBuffer, StepContext, end_report, lock, run_streamed};
use crate::limits::printable;
use crate::model::{StepOutcome, StepReport, TestReport};
use crate::plugin::{CommandEnd, Invocation, LoadedCommand, StreamKind};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Semaphore;

/// Output kept per test (stdout and stderr together).
pub const MAX_TEST_OUTPUT_BYTES: usize = 64 * 1024;
/// Most tests one step runs.
pub const MAX_TESTS: usize = 10_000;

/// A test's output as it arrives: masked per stream, bounded.
struct Captured {
    masks: [StreamMasker; 2],
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Captured {
    fn new(cx: &StepContext) -> Captured {
        Captured {
            masks: [cx.masker.stream(), cx.masker.stream()],
            stdout: Vec::new(),
            stderr: Vec::new(),
        }
    }

    fn push(&mut self, stream: StreamKind, bytes: &[u8]) {
        let (i, buf) = match stream {
            StreamKind::Stdout => (0, &mut self.stdout),
            StreamKind::Stderr => (1, &mut self.stderr),
        };
        let masked = self.masks[i].push(bytes);
        let room = MAX_TEST_OUTPUT_BYTES.saturating_sub(buf.len());
        buf.extend_from_slice(&masked[..masked.len().min(room)]);
    }

    fn finish(mut self) -> (String, String) {
        for (i, buf) in [&mut self.stdout, &mut self.stderr].into_iter().enumerate() {
            let rest = self.masks[i].finish();
            let room = MAX_TEST_OUTPUT_BYTES.saturating_sub(buf.len());
            buf.extend_from_slice(&rest[..rest.len().min(room)]);
        }
        (
            String::from_utf8_lossy(&self.stdout).into_owned(),
            String::from_utf8_lossy(&self.stderr).into_owned(),
        )
    }
}

/// Run `invocation` once and capture its output.
async fn capture(
    cx: &StepContext,
    command: &LoadedCommand,
    invocation: &Invocation,
) -> (CommandEnd, String, String) {
    let mut captured = Captured::new(cx);
    let (end, _) = run_streamed(cx, command, invocation, |stream, bytes| {
        captured.push(stream, bytes);
    })
    .await;
    let (stdout, stderr) = captured.finish();
    (end, stdout, stderr)
}

/// List the tests, run each in a fresh instance, report each.
pub(super) async fn run_tests(
    cx: &StepContext,
    command: &LoadedCommand,
    invocation: &Invocation,
    logs: &Arc<Mutex<LogBuffer>>,
) -> StepReport {
    let mut listing = invocation.clone();
    listing.args = vec![libtest("list"), libtest("format"), "terse".into()];
    let (end, stdout, stderr) = capture(cx, command, &listing).await;
    if !end.succeeded() {
        let mut r = end_report(&end);
        r.outcome = if r.outcome == StepOutcome::Passed {
            StepOutcome::Failed
        } else {
            r.outcome
        };
        r.summary = format!(
            "listing the tests failed: it {end}{}",
            last_line(&stderr)
                .map(|l| format!(" ({})", printable(l)))
                .unwrap_or_default()
        );
        return r;
    }
    let names: Vec<String> = stdout
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_string)
        .take(MAX_TESTS)
        .collect();
    lock(logs).push(
        StreamKind::Stdout,
        &format!("running {} tests, one instance each", names.len()),
    );
    let gate = Arc::new(Semaphore::new(cx.config.slots.max(1)));
    let runs = names.iter().map(|name| {
        let gate = gate.clone();
        let mut one = invocation.clone();
        one.args = vec![name.clone(), libtest("exact"), libtest("nocapture")];
        one.args.extend(invocation.args.iter().cloned());
        async move {
            let _permit = gate.acquire_owned().await;
            let started = Instant::now();
            let (end, stdout, stderr) = capture(cx, command, &one).await;
            let report = classify(name, &end, stdout, stderr, started);
            lock(logs).push(
                StreamKind::Stdout,
                &format!(
                    "test {} ... {}",
                    report.name,
                    match report.outcome {
                        StepOutcome::Passed => "ok",
                        StepOutcome::Failed => "FAILED",
                        StepOutcome::Timeout => "TIMEOUT",
                        StepOutcome::Trap => "TRAP",
                        StepOutcome::Memory => "OUT OF MEMORY",
                        StepOutcome::Setup | StepOutcome::Skipped => "NOT RUN",
                    }
                ),
            );
            report
        }
    });
    let tests: Vec<TestReport> = futures_util::future::join_all(runs).await;
    let passed = tests
        .iter()
        .filter(|t| t.outcome == StepOutcome::Passed)
        .count();
    let not_passed: Vec<&str> = tests
        .iter()
        .filter(|t| t.outcome != StepOutcome::Passed)
        .map(|t| t.name.as_str())
        .collect();
    let outcome = if not_passed.is_empty() {
        StepOutcome::Passed
    } else {
        StepOutcome::Failed
    };
    let summary = if not_passed.is_empty() {
        format!("{passed} of {} tests passed", tests.len())
    } else {
        format!(
            "{passed} of {} tests passed; not passed: {}",
            tests.len(),
            not_passed.join(", ")
        )
    };
    let mut r = end_report(&CommandEnd::Exited(i32::from(!not_passed.is_empty())));
    r.outcome = outcome;
    r.summary = summary;
    r.exit_code = None;
    r.tests = tests;
    r
}

/// A flag of another program (the test binary's harness, cargo), not of
/// lockstep: `--NAME`.
pub(crate) fn libtest(name: &str) -> String {
    format!("--{name}")
}

fn last_line(text: &str) -> Option<&str> {
    text.lines().rev().find(|l| !l.trim().is_empty())
}

/// The panic message in a test's stderr: the lines after `panicked at
/// FILE:LINE:COL:` up to the backtrace note.
fn panic_message(stderr: &str) -> Option<String> {
    let mut lines = stderr.lines();
    let header = lines.find(|l| l.contains("panicked at "))?;
    let location = header
        .split_once("panicked at ")
        .map(|(_, at)| at.trim_end_matches(':').to_string())
        .unwrap_or_default();
    let body: Vec<&str> = lines
        .take_while(|l| !l.starts_with("note: run with `RUST_BACKTRACE"))
        .collect();
    Some(format!("{} (at {location})", body.join("\n").trim_end()))
}

fn classify(
    name: &str,
    end: &CommandEnd,
    stdout: String,
    stderr: String,
    started: Instant,
) -> TestReport {
    let panic = panic_message(&stderr);
    let ran = stdout.contains(&format!("test {name} ..."));
    let (outcome, message) = match end {
        CommandEnd::Exited(0) if ran => (StepOutcome::Passed, None),
        CommandEnd::Exited(0) => (
            StepOutcome::Failed,
            Some(format!(
                "{name} did not run: selecting it by its exact name ran no test"
            )),
        ),
        CommandEnd::Exited(code) => (
            StepOutcome::Failed,
            Some(panic.unwrap_or_else(|| format!("exited with status {code}"))),
        ),
        CommandEnd::Trap { reason } => match panic {
            Some(p) => (StepOutcome::Failed, Some(p)),
            None => (StepOutcome::Trap, Some(format!("trapped: {reason}"))),
        },
        CommandEnd::Timeout { .. } => (StepOutcome::Timeout, Some(end.to_string())),
        CommandEnd::OutOfMemory { .. } => (StepOutcome::Memory, Some(end.to_string())),
        CommandEnd::Setup { .. } => (StepOutcome::Setup, Some(end.to_string())),
    };
    let mut output = stdout;
    if !stderr.is_empty() {
        if !output.is_empty() && !output.ends_with('\n') {
            output.push('\n');
        }
        output.push_str(&stderr);
    }
    TestReport {
        name: name.to_string(),
        outcome,
        message,
        output,
        duration_ms: started.elapsed().as_millis() as u64,
    }
}
