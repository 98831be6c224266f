//! Progress of a job: per-stage and overall percentage, task counts by state,
//! throughput over a recent window and an ETA derived from it.
//!
//! Totals grow while stages spawn children, so the percentage is of the tasks
//! known now; the ETA is `remaining / recent rate` and absent while nothing
//! has completed recently.

use crate::model::{JobStatus, StageState, TaskState};
use serde::Serialize;
use std::time::Duration;

/// The window over which throughput is measured (the store counts finished
/// tasks in buckets of its width).
pub const RATE_WINDOW: Duration = crate::store::RATE_WINDOW;

#[derive(Debug, Clone, Serialize)]
pub struct JobProgress {
    pub job: JobStatus,
    /// Terminal tasks (succeeded, dead, cancelled) over all known tasks, 0–100.
    pub percent: f64,
    pub done: i64,
    pub total: i64,
    pub stages: Vec<StageProgress>,
    /// Task counts by state over the whole job.
    pub counts: Vec<(TaskState, i64)>,
    /// Completions per second over the last [`RATE_WINDOW`].
    pub throughput_per_s: f64,
    pub eta_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageProgress {
    pub name: String,
    pub state: StageState,
    pub percent: f64,
    pub done: i64,
    pub total: i64,
}

/// Ready tasks [`super::Engine::waiting_for`] looks at: bounds its cost on
/// huge jobs.
pub const STALL_SAMPLE: u32 = 200;

/// One handler that ready tasks of a stalled job wait for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaitingFor {
    pub executor: crate::model::Executor,
    pub handler: String,
    /// Whether this process has a plugin registering `handler`; `None` for
    /// agent tasks and in a process that loaded no plugins.
    pub registered_here: Option<bool>,
}

fn percent(done: i64, total: i64) -> f64 {
    if total == 0 {
        100.0
    } else {
        (done as f64 * 100.0 / total as f64).clamp(0.0, 100.0)
    }
}

impl JobProgress {
    pub fn from_status(job: JobStatus, recent_completions: f64, window: Duration) -> Self {
        let mut counts: Vec<(TaskState, i64)> = TaskState::ALL.iter().map(|s| (*s, 0)).collect();
        let mut stages = Vec::with_capacity(job.stages.len());
        let (mut done, mut total) = (0i64, 0i64);
        for stage in &job.stages {
            let stage_done = stage.total - stage.remaining;
            done += stage_done;
            total += stage.total;
            for (state, n) in &stage.counts {
                if let Some(slot) = counts.iter_mut().find(|(s, _)| s == state) {
                    slot.1 += n;
                }
            }
            stages.push(StageProgress {
                name: stage.name.clone(),
                state: stage.state,
                percent: percent(stage_done, stage.total),
                done: stage_done,
                total: stage.total,
            });
        }
        let throughput_per_s = recent_completions / window.as_secs_f64();
        let remaining = total - done;
        let eta_seconds = if job.state.is_terminal() {
            Some(0.0)
        } else if throughput_per_s > 0.0 {
            Some(remaining as f64 / throughput_per_s)
        } else {
            None
        };
        JobProgress {
            percent: if job.state.is_terminal() {
                100.0
            } else {
                percent(done, total)
            },
            done,
            total,
            stages,
            counts,
            throughput_per_s,
            eta_seconds,
            job,
        }
    }

    /// One line for terminals: `stage 2/3 process · 512/1000 tasks · 51% · 830/s · ETA 1s`.
    pub fn summary_line(&self) -> String {
        let open = self
            .stages
            .iter()
            .position(|s| s.state == StageState::Open)
            .unwrap_or(self.stages.len().saturating_sub(1));
        let stage_name = self
            .stages
            .get(open)
            .map(|s| s.name.as_str())
            .unwrap_or("-");
        let eta = match self.eta_seconds {
            Some(s) => format!("ETA {s:.0}s"),
            None => "ETA -".to_string(),
        };
        format!(
            "stage {}/{} {} · {}/{} tasks · {:.0}% · {:.0}/s · {}",
            open + 1,
            self.stages.len(),
            stage_name,
            self.done,
            self.total,
            self.percent,
            self.throughput_per_s,
            eta
        )
    }
}
