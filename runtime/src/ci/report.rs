//! Reports of a finished run: JUnit XML (`--junit`) and a Markdown summary
//! (`--summary`).
//!
//! JUnit follows the shape common readers (Jenkins, GitLab, GitHub test
//! reporters) accept: `<testsuites>` holding one `<testsuite>` per step,
//! with one `<testcase>` per test of a `rust-test` step or one for the step
//! itself; a failure is `<failure message type>` (a trap or timeout too), a
//! skipped step `<skipped>`, and captured output `<system-out>`.
//!
//! **Invariant:** every text written passes the run's masker, and XML text
//! holds only characters XML 1.0 allows (others become `\u{…}` escapes).

use super::outcome_word;
use crate::engine::pipeline::{Masker, StepStatus};
use crate::model::{JobId, JobState, StepOutcome, TaskState};
use std::collections::HashMap;
use std::fmt::Write as _;

/// Largest `<system-out>` kept per test case.
const MAX_SYSTEM_OUT: usize = 256 * 1024;

/// Text as XML character data or an attribute value.
fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\t' => out.push_str("&#9;"),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || matches!(c as u32, 0xFFFE | 0xFFFF) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Element text: like [`xml`] but newlines kept as they are.
fn xml_text(text: &str) -> String {
    let mut kept: String = text.chars().take(MAX_SYSTEM_OUT).collect();
    if kept.len() < text.len() {
        kept.push_str("\n…(cut)");
    }
    xml(&kept).replace("&#10;", "\n")
}

fn secs(ms: u64) -> String {
    format!("{:.3}", ms as f64 / 1000.0)
}

struct Case {
    name: String,
    classname: String,
    time_ms: u64,
    /// (message, type, body)
    failure: Option<(String, String, String)>,
    skipped: Option<String>,
    output: String,
}

/// The JUnit XML document of a run.
pub(super) fn junit(
    name: &str,
    steps: &[StepStatus],
    logs: &HashMap<i64, Vec<String>>,
    masker: &Masker,
) -> String {
    let mut suites = String::new();
    let (mut all_tests, mut all_failures, mut all_skipped, mut all_ms) = (0, 0, 0, 0u64);
    for s in steps {
        let step_log = logs
            .get(&s.task_id.0)
            .map(|l| l.join("\n"))
            .unwrap_or_default();
        let report = s.report.as_ref();
        let mut cases = Vec::new();
        let tests = report.map(|r| r.tests.as_slice()).unwrap_or_default();
        if tests.is_empty() {
            let summary = super::view::summary_of(s);
            let failed = s.state == TaskState::Dead || s.state == TaskState::Cancelled;
            cases.push(Case {
                name: s.plan.key.clone(),
                classname: name.to_string(),
                time_ms: report.map_or(0, |r| r.duration_ms),
                failure: failed.then(|| {
                    (
                        summary.clone(),
                        report
                            .map_or("cancelled", |r| r.outcome.as_str())
                            .to_string(),
                        step_log.clone(),
                    )
                }),
                skipped: (s.state == TaskState::Skipped).then(|| summary.clone()),
                output: step_log.clone(),
            });
        } else {
            for t in tests {
                let failed = t.outcome != StepOutcome::Passed;
                cases.push(Case {
                    name: t.name.clone(),
                    classname: s.plan.key.clone(),
                    time_ms: t.duration_ms,
                    failure: failed.then(|| {
                        (
                            t.message
                                .clone()
                                .unwrap_or_else(|| t.outcome.as_str().to_string()),
                            t.outcome.as_str().to_string(),
                            t.output.clone(),
                        )
                    }),
                    skipped: None,
                    output: t.output.clone(),
                });
            }
        }
        let failures = cases.iter().filter(|c| c.failure.is_some()).count();
        let skipped = cases.iter().filter(|c| c.skipped.is_some()).count();
        let ms = report.map_or(0, |r| r.duration_ms);
        all_tests += cases.len();
        all_failures += failures;
        all_skipped += skipped;
        all_ms += ms;
        let _ = writeln!(
            suites,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{}\">",
            xml(&masker.mask(&s.plan.key)),
            cases.len(),
            secs(ms)
        );
        for c in cases {
            let _ = write!(
                suites,
                "    <testcase name=\"{}\" classname=\"{}\" time=\"{}\">",
                xml(&masker.mask(&c.name)),
                xml(&masker.mask(&c.classname)),
                secs(c.time_ms)
            );
            if let Some((message, kind, body)) = &c.failure {
                let _ = write!(
                    suites,
                    "\n      <failure message=\"{}\" type=\"{}\">{}</failure>",
                    xml(&masker.mask(message)),
                    xml(kind),
                    xml_text(&masker.mask(body))
                );
            }
            if let Some(message) = &c.skipped {
                let _ = write!(
                    suites,
                    "\n      <skipped message=\"{}\"/>",
                    xml(&masker.mask(message))
                );
            }
            if !c.output.is_empty() {
                let _ = write!(
                    suites,
                    "\n      <system-out>{}</system-out>",
                    xml_text(&masker.mask(&c.output))
                );
            }
            let _ = writeln!(suites, "\n    </testcase>");
        }
        let _ = writeln!(suites, "  </testsuite>");
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"{}\" tests=\"{all_tests}\" failures=\"{all_failures}\" errors=\"0\" skipped=\"{all_skipped}\" time=\"{}\">\n{suites}</testsuites>\n",
        xml(&masker.mask(name)),
        secs(all_ms)
    )
}

/// Markdown: one table row per step.
pub(super) fn summary(
    job: JobId,
    name: &str,
    state: JobState,
    steps: &[StepStatus],
    masker: &Masker,
) -> String {
    let cell = |text: &str| {
        crate::limits::printable(&masker.mask(text))
            .replace('|', "\\|")
            .chars()
            .take(300)
            .collect::<String>()
    };
    let mut md = format!(
        "## Pipeline {} — run {}: {state}\n\n| Step | Outcome | Time | Attempts | Summary |\n|---|---|---|---|---|\n",
        cell(name),
        job.0
    );
    for s in steps {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            cell(&s.plan.key),
            outcome_word(s),
            s.report
                .as_ref()
                .map(|r| super::view::seconds(r.duration_ms))
                .unwrap_or_default(),
            s.attempt,
            cell(&super::view::summary_of(s))
        );
    }
    md
}
