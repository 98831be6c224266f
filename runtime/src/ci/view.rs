//! The live view of a run: one line per step (state, duration, last log
//! line, a progress bar for `rust-test` steps) redrawn in place on a
//! terminal; on a pipe or a file, one line per event instead (`[step]
//! started`, its log lines, how it ended), so logs of CI systems read well.
//!
//! It follows the run's events, which hold only masked text; it masks again
//! with the run's own masker and escapes control characters before printing.

use super::outcome_word;
use crate::cli::Failure;
use crate::engine::Engine;
use crate::engine::pipeline::{Masker, StepStatus};
use crate::limits::printable;
use crate::model::{EventKind, JobId, JobState, TaskState, TenantId};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// One step as the view shows it.
struct Row {
    key: String,
    word: String,
    started: Option<Instant>,
    took: Option<Duration>,
    last: String,
    tests_total: usize,
    tests_done: usize,
}

/// Seconds with one decimal (`2.3s`).
pub(crate) fn seconds(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

/// The word `ci status` and the view use for a step.
pub(crate) fn state_word(s: &StepStatus) -> &'static str {
    outcome_word(s)
}

/// A step's one-sentence summary: its report, else its error.
pub(crate) fn summary_of(s: &StepStatus) -> String {
    if let Some(r) = &s.report {
        let mut text = r.summary.clone();
        if let Some(run) = r.reused_from {
            text = format!("carried over from run {run}: {text}");
        }
        return text;
    }
    s.error.clone().unwrap_or_default()
}

/// Follow the run until it is over.
pub(super) async fn follow(
    engine: &Engine,
    tenant: &TenantId,
    job: JobId,
    masker: &Masker,
) -> Result<(), Failure> {
    let tty = std::io::stdout().is_terminal();
    let steps = engine.pipeline_steps(tenant, job).await?;
    let order: Vec<i64> = steps.iter().map(|s| s.task_id.0).collect();
    let mut rows: HashMap<i64, Row> = steps
        .iter()
        .map(|s| {
            (
                s.task_id.0,
                Row {
                    key: s.plan.key.clone(),
                    word: outcome_word(s).to_string(),
                    started: None,
                    took: s
                        .report
                        .as_ref()
                        .map(|r| Duration::from_millis(r.duration_ms)),
                    last: String::new(),
                    tests_total: 0,
                    tests_done: 0,
                },
            )
        })
        .collect();
    let mut drawn = 0usize;
    let mut after = None;
    let mut out = std::io::stdout();
    loop {
        let page = engine.events(tenant, job, after, 1000).await?;
        if let Some(last) = page.last() {
            after = Some(last.id);
        }
        let mut ended = Vec::new();
        for e in &page {
            let Some(task) = e.task_id else { continue };
            let Some(row) = rows.get_mut(&task.0) else {
                continue;
            };
            let detail = e
                .detail
                .as_deref()
                .map(|d| printable(&masker.mask(d)).into_owned())
                .unwrap_or_default();
            match e.kind {
                EventKind::TaskClaimed => {
                    row.started = Some(Instant::now());
                    row.word = "running".to_string();
                    if !tty {
                        let _ = writeln!(out, "[{}] started", printable(&row.key));
                    }
                }
                EventKind::TaskLog => {
                    if let Some(n) = detail
                        .strip_prefix("stdout: running ")
                        .and_then(|r| r.split(' ').next())
                        .and_then(|n| n.parse().ok())
                    {
                        row.tests_total = n;
                    }
                    if detail.starts_with("stdout: test ") {
                        row.tests_done += 1;
                    }
                    if !tty {
                        let _ = writeln!(out, "[{}] {detail}", printable(&row.key));
                    }
                    row.last = detail;
                }
                EventKind::TaskRetried => {
                    row.word = "retrying".to_string();
                    if !tty {
                        let _ = writeln!(out, "[{}] retrying: {detail}", printable(&row.key));
                    }
                }
                EventKind::TaskSucceeded
                | EventKind::TaskDead
                | EventKind::TaskSkipped
                | EventKind::TaskCancelled => ended.push(task.0),
                _ => {}
            }
        }
        if !ended.is_empty() {
            let now = engine.pipeline_steps(tenant, job).await?;
            for s in now.iter().filter(|s| ended.contains(&s.task_id.0)) {
                let Some(row) = rows.get_mut(&s.task_id.0) else {
                    continue;
                };
                row.word = outcome_word(s).to_string();
                row.took = s
                    .report
                    .as_ref()
                    .map(|r| Duration::from_millis(r.duration_ms));
                let summary = printable(&masker.mask(&summary_of(s))).into_owned();
                if !tty {
                    let took = row
                        .took
                        .map(|d| format!(" in {}", seconds(d.as_millis() as u64)))
                        .unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "[{}] {}{took}: {summary}",
                        printable(&row.key),
                        row.word
                    );
                }
                row.last = summary;
            }
        }
        if tty {
            drawn = redraw(&mut out, &order, &rows, drawn);
        }
        let _ = out.flush();
        if page.is_empty() {
            let state = engine.progress(tenant, job).await?.job.state;
            if state.is_terminal() {
                // Lines recorded with the last completions are read above.
                let more = engine.events(tenant, job, after, 1).await?;
                if more.is_empty() {
                    break;
                }
                continue;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
    Ok(())
}

fn redraw(out: &mut impl Write, order: &[i64], rows: &HashMap<i64, Row>, drawn: usize) -> usize {
    if drawn > 0 {
        let _ = write!(out, "\x1b[{drawn}A");
    }
    let width = rows
        .values()
        .map(|r| r.key.chars().count())
        .max()
        .unwrap_or(4);
    for id in order {
        let Some(row) = rows.get(id) else { continue };
        let took = match (row.took, row.started) {
            (Some(d), _) => seconds(d.as_millis() as u64),
            (None, Some(s)) => seconds(s.elapsed().as_millis() as u64),
            (None, None) => String::new(),
        };
        let tail = if row.tests_total > 0 && row.word == "running" {
            let filled = row.tests_done * 20 / row.tests_total.max(1);
            format!(
                "[{}{}] {}/{}",
                "#".repeat(filled),
                "-".repeat(20 - filled.min(20)),
                row.tests_done,
                row.tests_total
            )
        } else {
            row.last.chars().take(80).collect()
        };
        let _ = writeln!(
            out,
            "\x1b[2K{:<width$}  {:<9} {:>7}  {}",
            printable(&row.key),
            row.word,
            took,
            tail
        );
    }
    order.len()
}

/// The last line of a run: its state and its steps by outcome.
pub(crate) fn final_line(
    job: JobId,
    state: JobState,
    steps: &[StepStatus],
    elapsed: Duration,
) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for s in steps {
        let word = outcome_word(s);
        match counts.iter_mut().find(|(w, _)| *w == word) {
            Some((_, n)) => *n += 1,
            None => counts.push((word, 1)),
        }
    }
    let parts: Vec<String> = counts.iter().map(|(w, n)| format!("{n} {w}")).collect();
    let verdict = match state {
        JobState::Succeeded => "passed",
        JobState::Failed => "failed",
        JobState::Cancelled => "was cancelled",
        JobState::Running => "is still running",
    };
    let failed: Vec<&str> = steps
        .iter()
        .filter(|s| {
            s.state == TaskState::Dead && !s.report.as_ref().is_some_and(|r| r.soft_failure)
        })
        .map(|s| s.plan.key.as_str())
        .collect();
    let failed = if failed.is_empty() {
        String::new()
    } else {
        format!(" (failed: {})", printable(&failed.join(", ")))
    };
    format!(
        "run {} {verdict}: {} in {}{failed}",
        job.0,
        parts.join(", "),
        seconds(elapsed.as_millis() as u64)
    )
}
