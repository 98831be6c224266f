//! Pipelines: CI runs as lockstep jobs of `command` tasks.
//!
//! `spec::pipeline` turns a pipeline file into [`StepPlan`]s; this module
//! submits them as one job (or finds the unfinished run of the same plans
//! and resumes it), runs their tasks in this process ([`runner`], [`step`],
//! [`rust_test`]), keeps their files ([`artifacts`]) and keeps secrets out of
//! everything written ([`secrets`]). The `ci` front door and the MCP tool call
//! the methods below.
//!
//! **Invariants:** a step's result is recorded only through the fenced
//! completion, like every task's; a run resumed after a crash re-runs only
//! the steps that had not finished (their leases expire and they are
//! claimed again); a re-run is a new job whose carried-over steps finish
//! with their earlier output, unrun.

pub mod artifacts;
pub mod runner;
pub mod rust_test;
pub mod secrets;
pub mod step;

use super::{Engine, EngineError, now_millis};
use crate::model::{
    JobId, JobState, Reuse, StepPlan, StepReport, TaskId, TaskRecord, TaskState, TenantId,
};
use crate::plugin::{CommandHost, PluginHost};
use crate::spec::SpecError;
use crate::spec::pipeline::{
    CommandCatalog, Pipeline, PipelineOptions, load_pipeline, plans_digest, steps_job,
};
use crate::store::ListJobs;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub use runner::{StepRunConfig, StepRunner};
pub use secrets::{Masker, SecretError, Secrets};

/// Components as pipeline validation sees them: named ones from the plugin
/// directories, every one checked by the command host.
struct Components<'a> {
    plugins: &'a PluginHost,
    commands: &'a CommandHost,
}

impl CommandCatalog for Components<'_> {
    fn named(&self, name: &str) -> Option<PathBuf> {
        self.plugins.command_path(name).map(Path::to_path_buf)
    }

    fn searched(&self) -> String {
        self.plugins.dirs_display()
    }

    fn check(&self, path: &Path) -> Result<String, String> {
        self.commands
            .load(path)
            .map(|c| c.sha256().to_string())
            .map_err(|e| e.to_string())
    }
}

/// One step of a run as read back.
#[derive(Debug, Clone)]
pub struct StepStatus {
    pub task_id: TaskId,
    pub state: TaskState,
    pub attempt: i32,
    pub plan: StepPlan,
    /// What it reported when it ended (also for a failed step).
    pub report: Option<StepReport>,
    pub error: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

impl StepStatus {
    fn from_record(t: TaskRecord) -> Result<StepStatus, EngineError> {
        let plan: StepPlan = serde_json::from_str(&t.input_json).map_err(|e| {
            EngineError::Refused(format!(
                "task {} is not a pipeline step ({e}); is job {} a pipeline run?",
                t.task_id.0, t.job_id.0
            ))
        })?;
        let report = t
            .output_json
            .as_deref()
            .and_then(|o| serde_json::from_str::<StepReport>(o).ok());
        Ok(StepStatus {
            task_id: t.task_id,
            state: t.state,
            attempt: t.attempt,
            plan,
            report,
            error: t.error,
            created_at: t.created_at,
            finished_at: t.finished_at,
        })
    }
}

/// Whether a run was submitted or found unfinished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineStart {
    pub job: JobId,
    /// An unfinished run of the same plans was found and goes on.
    pub resumed: bool,
}

/// Read and validate a pipeline file: components are looked up in the
/// plugin directories of `plugins` and checked by `commands`. Nothing is
/// written (the front doors call this before they open a database).
pub fn load(
    plugins: &PluginHost,
    commands: &CommandHost,
    path: &Path,
    options: &PipelineOptions,
) -> Result<Pipeline, SpecError> {
    load_pipeline(path, &Components { plugins, commands }, options)
}

impl Engine {
    /// Submit a run of `pipeline`, or resume the unfinished run of exactly
    /// these plans (a run whose runner was killed).
    pub async fn start_pipeline(
        &self,
        tenant: &TenantId,
        pipeline: &Pipeline,
    ) -> Result<PipelineStart, EngineError> {
        let digest = pipeline.digest();
        let running = self
            .store()
            .list_jobs(ListJobs {
                tenant: tenant.clone(),
                state: Some(JobState::Running),
                name: Some(pipeline.name.clone()),
                created_after: None,
                created_before: None,
                before_id: None,
                limit: 20,
            })
            .await?;
        for job in running {
            let Ok(steps) = self.pipeline_steps(tenant, job.job_id).await else {
                continue;
            };
            let plans: Vec<StepPlan> = steps.into_iter().map(|s| s.plan).collect();
            if plans_digest(&plans) == digest {
                return Ok(PipelineStart {
                    job: job.job_id,
                    resumed: true,
                });
            }
        }
        let now = now_millis();
        let key = format!(
            "ci-{}-{now}-{}",
            &digest[..16],
            uuid::Uuid::new_v4().simple()
        );
        let submitted = self
            .insert(pipeline.to_job(tenant.clone(), key, now))
            .await?;
        Ok(PipelineStart {
            job: submitted.job_id,
            resumed: false,
        })
    }

    /// Every step of a run, in task order.
    pub async fn pipeline_steps(
        &self,
        tenant: &TenantId,
        job: JobId,
    ) -> Result<Vec<StepStatus>, EngineError> {
        let out = self
            .job_tasks(tenant, job)
            .await?
            .into_iter()
            .map(StepStatus::from_record)
            .collect::<Result<Vec<_>, _>>()?;
        if out.is_empty() {
            // Either no such job, or a job without tasks: not a run.
            self.task_free_job(tenant, job).await?;
        }
        Ok(out)
    }

    async fn task_free_job(&self, tenant: &TenantId, job: JobId) -> Result<(), EngineError> {
        self.progress(tenant, job).await?;
        Err(EngineError::Refused(format!(
            "job {} has no steps; it is not a pipeline run",
            job.0
        )))
    }

    /// A new run of `job`'s steps: all of them, or (`failed_only`) the
    /// failed and cancelled ones and every step that needs them, the others
    /// carried over with their outputs and artifacts.
    pub async fn rerun_pipeline(
        &self,
        tenant: &TenantId,
        job: JobId,
        failed_only: bool,
    ) -> Result<JobId, EngineError> {
        let status = self.progress(tenant, job).await?;
        if !status.job.state.is_terminal() {
            return Err(EngineError::Refused(format!(
                "run {} is still {}; wait for it to end (or cancel it) before re-running it",
                job.0, status.job.state
            )));
        }
        let steps = self.pipeline_steps(tenant, job).await?;
        let mut rerun: BTreeSet<String> = steps
            .iter()
            .filter(|s| !failed_only || matches!(s.state, TaskState::Dead | TaskState::Cancelled))
            .map(|s| s.plan.key.clone())
            .collect();
        if rerun.is_empty() {
            return Err(EngineError::Refused(format!(
                "run {} has no failed steps; use ci rerun {} without --failed to run every step again",
                job.0, job.0
            )));
        }
        // Everything downstream of a re-run step runs again too.
        loop {
            let before = rerun.len();
            for s in &steps {
                if s.plan.needs.iter().any(|n| rerun.contains(n)) {
                    rerun.insert(s.plan.key.clone());
                }
            }
            if rerun.len() == before {
                break;
            }
        }
        let plans: Vec<StepPlan> = steps
            .into_iter()
            .map(|s| {
                let mut plan = s.plan;
                if rerun.contains(&plan.key) {
                    plan.reuse = None;
                } else {
                    let run = plan.reuse.as_ref().map_or(job.0, |r| r.run);
                    plan.reuse = Some(Reuse {
                        run,
                        state: s.state,
                        output_json: s.report.and_then(|r| serde_json::to_string(&r).ok()),
                    });
                }
                plan
            })
            .collect();
        let now = now_millis();
        let submitted = self
            .insert(steps_job(
                &status.job.name,
                &plans,
                tenant.clone(),
                format!("ci-rerun-{}-{now}-{}", job.0, uuid::Uuid::new_v4().simple()),
                now,
            ))
            .await?;
        Ok(submitted.job_id)
    }
}
