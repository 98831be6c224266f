//! The tools: one method each, registered with rmcp's tool router. Every
//! tool runs as the calling tenant ([`Caller`]), calls the engine, and
//! answers with the engine's view (`engine::views`) as structured content
//! plus the view's one line of text.
//!
//! **Invariants 23 and 30:** a tool never sees another tenant (every
//! engine call takes the caller's tenant) and answers only with views.

use super::args::*;
use super::failure::ToolFailure;
use super::params::{ArgError, Parameters};
use super::{Caller, LockstepMcp};
use crate::engine::agent::{AgentClaim, AgentError, AgentOutput, Artifact};
use crate::engine::views::*;
use crate::engine::{EngineError, JobFilter};
use crate::model::{JobId, LeaseToken, TaskId};
use crate::spec::plan::Plan;
use rmcp::handler::server::tool::schema_for_output;
use rmcp::model::{CallToolResult, ContentBlock, ProgressNotificationParam};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, tool, tool_router};
use std::time::Duration;

type ToolResult = Result<CallToolResult, ErrorData>;

/// A view as the structured result, with its one-line text.
fn ok<T: View>(view: &T) -> ToolResult {
    let value = match serde_json::to_value(view) {
        Ok(v) => v,
        Err(e) => return ToolFailure::internal("render", &e).into_response(),
    };
    let mut result = CallToolResult::success(vec![ContentBlock::text(view.line())]);
    result.structured_content = Some(value);
    Ok(result)
}

/// An engine call's answer: its view, or the failure as MCP reports it.
fn answer<T: View>(tool: &str, result: Result<T, EngineError>) -> ToolResult {
    match result {
        Ok(view) => ok(&view),
        Err(e) => ToolFailure::from_engine(tool, e).into_response(),
    }
}

/// An agent workflow call's answer.
fn agent_answer<T: View>(tool: &str, result: Result<T, AgentError>) -> ToolResult {
    match result {
        Ok(view) => ok(&view),
        Err(e) => ToolFailure::from_agent(tool, e).into_response(),
    }
}

/// The lease a task tool's `task_id` and `attempt` stand for: an agent
/// task's claim is durable and carries no nonce, so these two name it.
fn lease(task_id: i64, attempt: i32) -> LeaseToken {
    LeaseToken {
        task_id: TaskId(task_id),
        attempt,
        nonce: None,
    }
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
        match HandlerList::new(&self.engine.plugins().describe_all()) {
            Ok(list) => ok(&list),
            Err(e) => ToolFailure::internal("list_handlers", &e).into_response(),
        }
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
        let submitted = self.engine.submit(&caller.tenant, job).await;
        answer("submit_job", submitted.map(Submitted::from))
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
            &self.engine.plugins(),
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
        ok(&PipelineStarted {
            job_id: start.job.0,
            resumed: start.resumed,
            steps: pipeline.steps.iter().map(|s| s.key.clone()).collect(),
            pipeline: pipeline.name.clone(),
        })
    }

    #[tool(
        description = "Show a job: its state, per-stage progress and task counts, percent done, ETA and error.",
        annotations(read_only_hint = true),
        output_schema = schema_for_output::<JobView>()
    )]
    async fn get_job(&self, caller: Caller, Parameters(args): Parameters<JobIdArgs>) -> ToolResult {
        let view = self.engine.job_view(&caller.tenant, JobId(args.job_id));
        answer("get_job", view.await)
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
                ok(&JobPage {
                    jobs: jobs.iter().map(JobListEntry::from).collect(),
                    next_cursor,
                })
            }
            Err(e) => ToolFailure::from_engine("list_jobs", e).into_response(),
        }
    }

    #[tool(
        description = "Wait for a job to finish, sending progress notifications while it runs (and, after logging/setLevel, its handlers' log lines at or above that level). Returns when the job finishes or after timeout_seconds (default 30) with its current state; call again to keep waiting.",
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
            // The job's log lines up to `p`: a finished job's are all stored
            // (with each task's completion), so none arrive after the result.
            super::logging::forward(
                &self.engine,
                &caller.tenant,
                job,
                &self.logging,
                &context.peer,
            )
            .await;
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
                return ok(&WaitResult {
                    finished,
                    timed_out: !finished,
                    job: view,
                    timeout_seconds: timeout.as_secs_f64(),
                });
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
        let job = JobId(args.job_id);
        let state = self
            .engine
            .cancel_as(&caller.tenant, job, Some(caller.name.clone()))
            .await;
        answer("cancel_job", state.map(|s| JobStateView::new(job, s)))
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
        let view = self.engine.task_view(&caller.tenant, TaskId(args.task_id));
        answer("get_task", view.await)
    }

    #[tool(
        description = "Retry a dead or cancelled task: it goes back to the queue with another attempt (blocked until its stage opens and its dependencies finish) and its job is reopened; a failed or cancelled job resumes from the task's stage, and the later stages' cancelled tasks come back with it.",
        output_schema = schema_for_output::<TaskStateView>()
    )]
    async fn retry_task(
        &self,
        caller: Caller,
        Parameters(args): Parameters<TaskIdArgs>,
    ) -> ToolResult {
        let task = TaskId(args.task_id);
        let state = self
            .engine
            .retry_as(&caller.tenant, task, Some(caller.name.clone()))
            .await;
        answer("retry_task", state.map(|s| TaskStateView::new(task, s)))
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
        ok(&health)
    }

    #[tool(
        description = "Plan multi-step work: a goal and its subtasks (title, instructions, optional specialist, optional key, depends_on other subtasks' keys or titles). The plan is stored durably as a job of agent tasks; a subtask becomes claimable (claim_task) as soon as the subtasks it depends on are completed. Returns the job id and every subtask's task id and state.",
        output_schema = schema_for_output::<PlanView>()
    )]
    async fn plan_task(&self, caller: Caller, Parameters(plan): Parameters<Plan>) -> ToolResult {
        agent_answer("plan_task", self.engine.plan(&caller.tenant, plan).await)
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
        let task = self.engine.claim_agent_task(&caller.tenant, claim).await;
        agent_answer("claim_task", task.map(ClaimResult::from))
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
        let renewed = self.engine.update_agent_task(
            &caller.tenant,
            lease(args.task_id, args.attempt),
            Some(args.note),
            self.config.agent_lease,
        );
        agent_answer("update_task", renewed.await)
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
        let lease = lease(args.task_id, args.attempt);
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
        let done = self
            .engine
            .complete_agent_task(&caller.tenant, lease, output);
        agent_answer("complete_task", done.await)
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
        let lease = lease(args.task_id, args.attempt);
        let done = self
            .engine
            .fail_agent_task(&caller.tenant, lease, args.reason, args.retryable);
        agent_answer("fail_task", done.await)
    }
}
