//! The tools: one method each, registered with rmcp's tool router. Every
//! tool runs as the calling tenant ([`Caller`]), calls the engine, and
//! answers with a structured result plus one line of text.
//!
//! **Invariant:** a tool never touches the store's SQL and never sees another
//! tenant: every engine call takes the caller's tenant.

use super::args::*;
use super::failure::ToolFailure;
use super::params::{ArgError, Parameters};
use super::views::*;
use super::{Caller, LockstepMcp};
use crate::engine::JobFilter;
use crate::engine::agent::{AgentClaim, AgentOutput, Artifact, Plan, PlannedSubtask};
use crate::model::{JobId, LeaseToken, TaskId};
use rmcp::handler::server::tool::schema_for_output;
use rmcp::model::{CallToolResult, ContentBlock, ProgressNotificationParam};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, tool, tool_router};
use serde::Serialize;
use std::time::Duration;

type ToolResult = Result<CallToolResult, ErrorData>;

/// A structured result with its one-line text.
fn ok<T: Serialize>(view: &T, line: String) -> ToolResult {
    let value = match serde_json::to_value(view) {
        Ok(v) => v,
        Err(e) => return ToolFailure::internal("render", &e).into_response(),
    };
    let mut result = CallToolResult::success(vec![ContentBlock::text(line)]);
    result.structured_content = Some(value);
    Ok(result)
}

/// How often wait_job looks at the job.
const WAIT_POLL: Duration = Duration::from_millis(200);

#[tool_router(router = tool_router, vis = "pub(super)")]
impl LockstepMcp {
    #[tool(
        description = "List the registered WASM task handlers with their descriptions and input JSON Schemas. Use the names as `handler` in submit_job.",
        annotations(read_only_hint = true),
        output_schema = schema_for_output::<HandlerList>()
    )]
    async fn list_handlers(
        &self,
        _caller: Caller,
        Parameters(_): Parameters<NoArgs>,
    ) -> ToolResult {
        let handlers: Vec<serde_json::Value> = self
            .engine
            .plugins()
            .describe_all()
            .iter()
            .filter_map(|h| serde_json::to_value(h).ok())
            .collect();
        let names: Vec<String> = handlers
            .iter()
            .filter_map(|h| h.get("name").and_then(|n| n.as_str()).map(str::to_string))
            .collect();
        let line = if names.is_empty() {
            "no handlers are registered".to_string()
        } else {
            format!("{} handlers: {}", names.len(), names.join(", "))
        };
        ok(&HandlerList { handlers }, line)
    }

    #[tool(
        description = "Submit a job: named stages that run one after another, each with tasks for registered handlers (see list_handlers). Tasks may name a `key` and `depends_on` other keys of the same stage. Returns the job id; submitting the same job (or idempotency key) again returns the existing job with created=false. Watch it with get_job or wait_job.",
        output_schema = schema_for_output::<Submitted>()
    )]
    async fn submit_job(
        &self,
        caller: Caller,
        Parameters(args): Parameters<SubmitJobArgs>,
    ) -> ToolResult {
        let mut job = args.job;
        if args.idempotency_key.is_some() {
            job.idempotency_key = args.idempotency_key;
        }
        match self.engine.submit(&caller.tenant, job).await {
            Ok(s) => {
                let line = if s.created {
                    format!("submitted job {}", s.job_id.0)
                } else {
                    format!(
                        "job {} already existed with this idempotency key; nothing new was submitted",
                        s.job_id.0
                    )
                };
                ok(
                    &Submitted {
                        job_id: s.job_id.0,
                        created: s.created,
                    },
                    line,
                )
            }
            Err(e) => ToolFailure::from_engine("submit_job", e).into_response(),
        }
    }

    #[tool(
        description = "Run a CI pipeline file (lockstep-ci.toml) from the server's pipelines root: its sandboxed steps run in this server, and the run is a job (watch it with get_job or wait_job; it succeeds when every step passed). Returns the job id at once. An unfinished run of the same pipeline is resumed instead of started again.",
        output_schema = schema_for_output::<PipelineStarted>()
    )]
    async fn run_pipeline(
        &self,
        caller: Caller,
        Parameters(args): Parameters<RunPipelineArgs>,
    ) -> ToolResult {
        let Some(access) = &self.config.pipelines else {
            return ToolFailure::Refused {
                code: "not_enabled",
                message: "this server runs no pipelines: its operator can start it with --pipelines-root DIR".to_string(),
            }
            .into_response();
        };
        let path = access
            .resolve(&args.path)
            .map_err(|m| ArgError::new("path", m).into_error_data())?;
        let pipeline = crate::engine::pipeline::load(
            self.engine.plugins(),
            &access.commands,
            &path,
            &crate::spec::pipeline::PipelineOptions::default(),
        )
        .map_err(|e| ArgError::new("path", e.to_string()).into_error_data())?;
        let needed: Vec<(String, String)> = pipeline
            .steps
            .iter()
            .flat_map(|s| s.secrets.iter().map(|n| (n.clone(), s.key.clone())))
            .collect();
        let secrets =
            match crate::engine::pipeline::Secrets::load(&needed, None, &|n| std::env::var(n).ok())
            {
                Ok(s) => s,
                Err(e) => {
                    return ToolFailure::Refused {
                        code: "secret_unavailable",
                        message: e.to_string(),
                    }
                    .into_response();
                }
            };
        let start = match self.engine.start_pipeline(&caller.tenant, &pipeline).await {
            Ok(s) => s,
            Err(e) => return ToolFailure::from_engine("run_pipeline", e).into_response(),
        };
        // The runner works on in this process; it ends with the run.
        drop(self.engine.run_steps(
            caller.tenant.clone(),
            start.job,
            access.commands.clone(),
            crate::engine::pipeline::StepRunConfig {
                secrets,
                ..Default::default()
            },
        ));
        let view = PipelineStarted {
            job_id: start.job.0,
            resumed: start.resumed,
            steps: pipeline.steps.iter().map(|s| s.key.clone()).collect(),
        };
        let line = format!(
            "{} run {} of pipeline {:?}: {} steps",
            if start.resumed { "resumed" } else { "started" },
            start.job.0,
            pipeline.name,
            view.steps.len()
        );
        ok(&view, line)
    }

    #[tool(
        description = "Show a job: its state, per-stage progress and task counts, percent done, ETA and error.",
        annotations(read_only_hint = true),
        output_schema = schema_for_output::<JobView>()
    )]
    async fn get_job(&self, caller: Caller, Parameters(args): Parameters<JobIdArgs>) -> ToolResult {
        match self
            .engine
            .progress_and_waiting(&caller.tenant, JobId(args.job_id))
            .await
        {
            Ok((p, waiting)) => {
                let view = JobView::from_progress(&p).waiting_for(waiting);
                let line = view.line();
                ok(&view, line)
            }
            Err(e) => ToolFailure::from_engine("get_job", e).into_response(),
        }
    }

    #[tool(
        description = "List your jobs, newest first, optionally filtered by state, exact name or creation time. Pass next_cursor back as cursor for the next page.",
        annotations(read_only_hint = true),
        output_schema = schema_for_output::<JobPage>()
    )]
    async fn list_jobs(
        &self,
        caller: Caller,
        Parameters(args): Parameters<ListJobsArgs>,
    ) -> ToolResult {
        let limit = args.limit.unwrap_or(20);
        let before = args.cursor_job().map_err(ArgError::into_error_data)?;
        let filter = JobFilter {
            state: args.state.map(Into::into),
            name: args.name.clone(),
            created_after: args.created_after,
            created_before: args.created_before,
            before: before.map(JobId),
            limit,
        };
        match self.engine.list_jobs(&caller.tenant, filter).await {
            Ok(jobs) => {
                let next_cursor = (jobs.len() == limit as usize)
                    .then(|| jobs.last().map(|j| format!("before:{}", j.job_id.0)))
                    .flatten();
                let page = JobPage {
                    jobs: jobs.iter().map(JobListEntry::from).collect(),
                    next_cursor,
                };
                let line = match page.jobs.len() {
                    0 => "no jobs match".to_string(),
                    n => format!(
                        "{n} jobs: {}{}",
                        page.jobs
                            .iter()
                            .take(10)
                            .map(|j| format!("{} {:?} {}", j.job_id, j.name, j.state))
                            .collect::<Vec<_>>()
                            .join("; "),
                        if n > 10 { "; …" } else { "" }
                    ),
                };
                ok(&page, line)
            }
            Err(e) => ToolFailure::from_engine("list_jobs", e).into_response(),
        }
    }

    #[tool(
        description = "Wait for a job to finish, sending progress notifications while it runs. Returns when the job finishes or after timeout_seconds (default 30) with its current state; call again to keep waiting.",
        annotations(read_only_hint = true),
        output_schema = schema_for_output::<WaitResult>()
    )]
    async fn wait_job(
        &self,
        caller: Caller,
        context: RequestContext<RoleServer>,
        Parameters(args): Parameters<WaitJobArgs>,
    ) -> ToolResult {
        let job = JobId(args.job_id);
        let timeout = Duration::from_secs_f64(args.timeout_seconds.unwrap_or(30.0));
        let deadline = tokio::time::Instant::now() + timeout;
        let token = context.meta.get_progress_token();
        let mut reported: Option<(i64, i64)> = None;
        let mut progress_value = 0.0f64;
        loop {
            let p = match self.engine.progress(&caller.tenant, job).await {
                Ok(p) => p,
                Err(e) => return ToolFailure::from_engine("wait_job", e).into_response(),
            };
            let finished = p.job.state.is_terminal();
            if let Some(token) = &token
                && reported != Some((p.done, p.total))
            {
                // Progress must increase with every notification, even when a retry lowers `done`.
                progress_value = if reported.is_none() {
                    p.done as f64
                } else {
                    (p.done as f64).max(progress_value + 0.001)
                };
                reported = Some((p.done, p.total));
                let note = ProgressNotificationParam::new(token.clone(), progress_value)
                    .with_total(p.total.max(p.done) as f64)
                    .with_message(p.summary_line());
                if let Err(e) = context.peer.notify_progress(note).await {
                    tracing::debug!(error = %e, "progress notification not delivered");
                }
            }
            let now = tokio::time::Instant::now();
            if finished || now >= deadline {
                let mut view = JobView::from_progress(&p);
                if !finished {
                    // Best effort: the state is the answer; this only explains it.
                    if let Ok(waiting) = self.engine.waiting_for(&caller.tenant, &p).await {
                        view = view.waiting_for(waiting);
                    }
                }
                let line = if finished {
                    format!("finished: {}", view.line())
                } else {
                    format!(
                        "still running after {:.0}s: {}",
                        timeout.as_secs_f64(),
                        view.line()
                    )
                };
                return ok(
                    &WaitResult {
                        finished,
                        timed_out: !finished,
                        job: view,
                    },
                    line,
                );
            }
            let nap = WAIT_POLL.min(deadline - now);
            tokio::select! {
                _ = tokio::time::sleep(nap) => {},
                _ = context.ct.cancelled() => {
                    return Err(ErrorData::internal_error("wait_job was cancelled by the client", None));
                }
            }
        }
    }

    #[tool(
        description = "Cancel a job: tasks that have not finished are cancelled and the job becomes cancelled. Running tasks are told to stop.",
        annotations(destructive_hint = true, idempotent_hint = true),
        output_schema = schema_for_output::<JobStateView>()
    )]
    async fn cancel_job(
        &self,
        caller: Caller,
        Parameters(args): Parameters<JobIdArgs>,
    ) -> ToolResult {
        match self.engine.cancel(&caller.tenant, JobId(args.job_id)).await {
            Ok(state) => ok(
                &JobStateView {
                    job_id: args.job_id,
                    state: state.to_string(),
                },
                format!("job {} is {state}", args.job_id),
            ),
            Err(e) => ToolFailure::from_engine("cancel_job", e).into_response(),
        }
    }

    #[tool(
        description = "Show one task: its input, output, error, attempts, lease, and recent events (claims, progress notes, failures).",
        annotations(read_only_hint = true),
        output_schema = schema_for_output::<TaskView>()
    )]
    async fn get_task(
        &self,
        caller: Caller,
        Parameters(args): Parameters<TaskIdArgs>,
    ) -> ToolResult {
        let task = match self.engine.task(&caller.tenant, TaskId(args.task_id)).await {
            Ok(t) => t,
            Err(e) => return ToolFailure::from_engine("get_task", e).into_response(),
        };
        let events = self
            .engine
            .task_events(&caller.tenant, task.task_id, 20)
            .await;
        let events = match events {
            Ok(ev) => ev,
            Err(e) => return ToolFailure::from_engine("get_task", e).into_response(),
        };
        let view = TaskView::new(&task, &events);
        let line = view.line();
        ok(&view, line)
    }

    #[tool(
        description = "Retry a dead or cancelled task: it goes back to the queue with fresh attempts and its job is reopened.",
        output_schema = schema_for_output::<TaskStateView>()
    )]
    async fn retry_task(
        &self,
        caller: Caller,
        Parameters(args): Parameters<TaskIdArgs>,
    ) -> ToolResult {
        match self
            .engine
            .retry(&caller.tenant, TaskId(args.task_id))
            .await
        {
            Ok(state) => ok(
                &TaskStateView {
                    task_id: args.task_id,
                    state: state.to_string(),
                },
                format!("task {} is {state} again", args.task_id),
            ),
            Err(e) => ToolFailure::from_engine("retry_task", e).into_response(),
        }
    }

    #[tool(
        description = "Check the server: database reachable, plugins loaded, your queue depth, version.",
        annotations(read_only_hint = true),
        output_schema = schema_for_output::<Health>()
    )]
    async fn health_check(&self, caller: Caller, Parameters(_): Parameters<NoArgs>) -> ToolResult {
        let handlers = self.engine.plugins().handler_names();
        let depth = self.engine.queue_depth(&caller.tenant).await;
        let version = env!("CARGO_PKG_VERSION").to_string();
        let health = match depth {
            Ok(d) => Health {
                ok: true,
                database: "reachable".to_string(),
                version,
                plugins_loaded: handlers.len(),
                handlers,
                queue_pending: d.pending,
                queue_running: d.running,
                queue_blocked: d.blocked,
            },
            Err(e) => {
                let correlation_id = super::failure::log_internal("health_check", &e);
                Health {
                    ok: false,
                    database: format!("unreachable (correlation id {correlation_id})"),
                    version,
                    plugins_loaded: handlers.len(),
                    handlers,
                    queue_pending: 0,
                    queue_running: 0,
                    queue_blocked: 0,
                }
            }
        };
        let line = format!(
            "{}: database {}, {} handlers, {} pending / {} running / {} blocked tasks, version {}",
            if health.ok { "healthy" } else { "unhealthy" },
            health.database,
            health.plugins_loaded,
            health.queue_pending,
            health.queue_running,
            health.queue_blocked,
            health.version
        );
        ok(&health, line)
    }

    #[tool(
        description = "Plan multi-step work: a goal and its subtasks (title, instructions, optional specialist, optional key, depends_on other subtasks' keys or titles). The plan is stored durably as a job of agent tasks; a subtask becomes claimable (claim_task) as soon as the subtasks it depends on are completed. Returns the job id and every subtask's task id and state.",
        output_schema = schema_for_output::<PlanView>()
    )]
    async fn plan_task(
        &self,
        caller: Caller,
        Parameters(args): Parameters<PlanTaskArgs>,
    ) -> ToolResult {
        let plan = Plan {
            goal: args.goal,
            idempotency_key: args.idempotency_key,
            subtasks: args
                .subtasks
                .into_iter()
                .map(|s| PlannedSubtask {
                    title: s.title,
                    instructions: s.instructions,
                    specialist: s.specialist,
                    key: s.key,
                    depends_on: s.depends_on,
                    max_attempts: s.max_attempts,
                })
                .collect(),
        };
        match self.engine.plan(&caller.tenant, plan).await {
            Ok(planned) => {
                let view = PlanView::from(&planned);
                let ready = view.tasks.iter().filter(|t| t.state == "pending").count();
                let line = format!(
                    "{} plan {} with {} subtasks ({ready} ready to claim now)",
                    if view.created {
                        "stored"
                    } else {
                        "found the existing"
                    },
                    view.job_id,
                    view.tasks.len()
                );
                ok(&view, line)
            }
            Err(e) => ToolFailure::from_agent("plan_task", e).into_response(),
        }
    }

    #[tool(
        description = "Claim the next ready agent task (optionally of one job or for one specialist). Returns its instructions, the summaries of the tasks it depends on, and the attempt number that proves the claim. Then work on it, call update_task to report progress and keep the lease, and finish with complete_task or fail_task. claimed=false means nothing is ready now.",
        output_schema = schema_for_output::<ClaimResult>()
    )]
    async fn claim_task(
        &self,
        caller: Caller,
        Parameters(args): Parameters<ClaimTaskArgs>,
    ) -> ToolResult {
        let claim = AgentClaim {
            job: args.job_id.map(JobId),
            specialist: args.specialist,
            lease: self.config.agent_lease,
            worker: caller.name.clone(),
        };
        match self.engine.claim_agent_task(&caller.tenant, claim).await {
            Ok(Some(task)) => {
                let view = ClaimedTaskView::from(&task);
                let line = format!(
                    "claimed task {} attempt {}: {:?} ({} dependency summaries attached)",
                    view.task_id,
                    view.attempt,
                    view.title,
                    view.dependencies.len()
                );
                ok(
                    &ClaimResult {
                        claimed: true,
                        task: Some(view),
                    },
                    line,
                )
            }
            Ok(None) => ok(
                &ClaimResult {
                    claimed: false,
                    task: None,
                },
                "no agent task is ready to claim right now".to_string(),
            ),
            Err(e) => ToolFailure::from_agent("claim_task", e).into_response(),
        }
    }

    #[tool(
        description = "Report progress on a claimed task (a short note, kept in its event log) and extend its lease. Call it at least every few minutes while working, or the task may be given to another agent.",
        output_schema = schema_for_output::<LeaseView>()
    )]
    async fn update_task(
        &self,
        caller: Caller,
        Parameters(args): Parameters<UpdateTaskArgs>,
    ) -> ToolResult {
        let lease = LeaseToken {
            task_id: TaskId(args.task_id),
            attempt: args.attempt,
        };
        match self
            .engine
            .update_agent_task(
                &caller.tenant,
                lease,
                Some(args.note),
                self.config.agent_lease,
            )
            .await
        {
            Ok(until) => ok(
                &LeaseView {
                    task_id: args.task_id,
                    attempt: args.attempt,
                    lease_expires_at: until,
                },
                format!(
                    "noted; task {} attempt {} is yours for another {}s",
                    args.task_id,
                    args.attempt,
                    self.config.agent_lease.as_secs()
                ),
            ),
            Err(e) => ToolFailure::from_agent("update_task", e).into_response(),
        }
    }

    #[tool(
        description = "Complete a claimed task with a summary (passed to the tasks that depend on it), optional details, artifacts (path + kind) and next action. Refused when the claim's attempt is no longer current (the lease expired and the task was claimed again).",
        output_schema = schema_for_output::<FinishedView>()
    )]
    async fn complete_task(
        &self,
        caller: Caller,
        Parameters(args): Parameters<CompleteTaskArgs>,
    ) -> ToolResult {
        let lease = LeaseToken {
            task_id: TaskId(args.task_id),
            attempt: args.attempt,
        };
        let output = AgentOutput {
            summary: args.summary,
            details: args.details,
            artifacts: args
                .artifacts
                .into_iter()
                .map(|a| Artifact {
                    path: a.path,
                    kind: a.kind,
                })
                .collect(),
            next_action: args.next_action,
        };
        match self
            .engine
            .complete_agent_task(&caller.tenant, lease, output)
            .await
        {
            Ok(done) => ok(
                &FinishedView {
                    task_id: done.task_id.0,
                    job_id: done.job_id.0,
                    state: done.state.to_string(),
                    job_state: done.job_state.to_string(),
                },
                format!(
                    "task {} is {}; job {} is {}",
                    done.task_id.0, done.state, done.job_id.0, done.job_state
                ),
            ),
            Err(e) => ToolFailure::from_agent("complete_task", e).into_response(),
        }
    }

    #[tool(
        description = "Give up a claimed task with a reason. retryable=true puts it back in the queue for another attempt (until its attempts are used up); false marks it dead, which cancels the subtasks that depend on it.",
        output_schema = schema_for_output::<FinishedView>()
    )]
    async fn fail_task(
        &self,
        caller: Caller,
        Parameters(args): Parameters<FailTaskArgs>,
    ) -> ToolResult {
        let lease = LeaseToken {
            task_id: TaskId(args.task_id),
            attempt: args.attempt,
        };
        match self
            .engine
            .fail_agent_task(&caller.tenant, lease, args.reason, args.retryable)
            .await
        {
            Ok(done) => ok(
                &FinishedView {
                    task_id: done.task_id.0,
                    job_id: done.job_id.0,
                    state: done.state.to_string(),
                    job_state: done.job_state.to_string(),
                },
                format!(
                    "task {} is {}; job {} is {}",
                    done.task_id.0, done.state, done.job_id.0, done.job_state
                ),
            ),
            Err(e) => ToolFailure::from_agent("fail_task", e).into_response(),
        }
    }
}
