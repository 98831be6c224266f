//! Prompts, and completion of their arguments: `plan_work`, the agent
//! workflow as a planning guide for one goal, and `run_handler`, how to run
//! one registered handler (its description and input schema, the tools that
//! run it). `completion/complete` suggests registered handler names for
//! `run_handler`'s `handler`, and the ids of the caller's newest jobs for the
//! job resource template ([`super::resources`]). The plugins' prompts, and
//! the values their prompts' arguments and templates' variables declare,
//! come after ([`super::catalog`]).
//!
//! **Invariant 24:** a prompt's arguments are checked like a tool's: a
//! missing, unknown or oversized one is an `invalid_params` error naming it.

use super::Caller;
use super::handler_tools::HandlerTool;
use super::params::ArgError;
use crate::engine::{Engine, JobFilter};
use crate::spec::field;
use crate::spec::plan::{MAX_GOAL_CHARS, MAX_INSTRUCTIONS_CHARS};
use rmcp::ErrorData;
use rmcp::model::{
    CompleteRequestParams, CompleteResult, CompletionInfo, GetPromptResult, JsonObject,
    ListPromptsResult, Prompt, PromptArgument, PromptMessage, Reference, Role,
};

pub const PLAN_WORK: &str = "plan_work";
pub const RUN_HANDLER: &str = "run_handler";

/// lockstep's own prompts.
const OWN: [&str; 2] = [PLAN_WORK, RUN_HANDLER];

/// The prompts, as `prompts/list` shows them: lockstep's, then the plugins'.
pub fn list(engine: &Engine) -> ListPromptsResult {
    let mut prompts = vec![
        Prompt::new(
            PLAN_WORK,
            Some(
                "Plan a goal as durable subtasks with dependencies and work through them with plan_task, claim_task, update_task and complete_task.",
            ),
            Some(vec![
                PromptArgument::new("goal")
                    .with_description("What to achieve (it becomes the plan's name).")
                    .with_required(true),
                PromptArgument::new("context")
                    .with_description("What is known already: constraints, files, decisions.")
                    .with_required(false),
            ]),
        )
        .with_title("Plan work as durable subtasks"),
        Prompt::new(
            RUN_HANDLER,
            Some(
                "How to run one registered handler: what it does, the JSON Schema of its input, and the tools that run it durably.",
            ),
            Some(vec![
                PromptArgument::new("handler")
                    .with_description("A registered handler's name (completion lists them).")
                    .with_required(true),
            ]),
        )
        .with_title("Run a handler"),
    ];
    prompts.extend(super::catalog::listed_prompts(engine, &OWN));
    ListPromptsResult::with_all_items(prompts)
}

/// A prompt name lockstep does not have, given as `field`: invalid params.
fn no_prompt(engine: &Engine, field: &str, name: &str) -> ErrorData {
    let mut names: Vec<String> = OWN.iter().map(|n| n.to_string()).collect();
    names.extend(super::catalog::prompt_names(engine, &OWN));
    ArgError::new(
        field,
        format!(
            "lockstep has no prompt {:?}; its prompts are {}",
            super::params::clip(name, 100),
            names.join(", ")
        ),
    )
    .into_error_data()
}

/// An argument of `arguments` as text, checked for presence and length.
fn argument<'a>(
    arguments: &'a JsonObject,
    name: &str,
    max: usize,
    required: bool,
) -> Result<Option<&'a str>, ErrorData> {
    let field = format!("arguments.{name}");
    match arguments.get(name) {
        None if required => Err(ArgError::new(field, "is missing").into_error_data()),
        None => Ok(None),
        Some(serde_json::Value::String(text)) => {
            field::text(&field, text, max).map_err(ArgError::into_error_data)?;
            Ok(Some(text))
        }
        Some(_) => Err(ArgError::new(field, "is not a string").into_error_data()),
    }
}

/// Refuse arguments a prompt does not take.
fn only(arguments: &JsonObject, known: &[&str]) -> Result<(), ErrorData> {
    match arguments.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(ArgError::new(
            format!("arguments.{unknown}"),
            format!(
                "is not an argument of this prompt; it takes {}",
                known.join(", ")
            ),
        )
        .into_error_data()),
        None => Ok(()),
    }
}

/// `prompts/get`. `handler_tool` maps a handler name to its own tool, if it
/// has one.
pub async fn get(
    engine: &Engine,
    name: &str,
    arguments: Option<&JsonObject>,
    handler_tool: impl Fn(&str) -> Option<HandlerTool>,
) -> Result<GetPromptResult, ErrorData> {
    let empty = JsonObject::new();
    let arguments = arguments.unwrap_or(&empty);
    match name {
        PLAN_WORK => {
            only(arguments, &["goal", "context"])?;
            let goal = argument(arguments, "goal", MAX_GOAL_CHARS, true)?.unwrap_or_default();
            // The goal becomes the plan's name: the name rules apply now, not at plan_task.
            field::name("arguments.goal", goal, MAX_GOAL_CHARS)
                .map_err(ArgError::into_error_data)?;
            let context = argument(arguments, "context", MAX_INSTRUCTIONS_CHARS, false)?;
            Ok(GetPromptResult::new(vec![PromptMessage::new_text(
                Role::User,
                plan_work(goal.trim(), context.map(str::trim)),
            )])
            .with_description(format!("Plan and carry out: {}", goal.trim())))
        }
        RUN_HANDLER => {
            only(arguments, &["handler"])?;
            let handler = argument(arguments, "handler", crate::limits::MAX_NAME_BYTES, true)?
                .unwrap_or_default();
            let plugins = engine.plugins();
            let info = plugins
                .handler_info(handler)
                .map_err(|e| ArgError::new("arguments.handler", e.to_string()).into_error_data())?;
            let schema = serde_json::to_string_pretty(&info.input_schema)
                .map_err(|e| super::failure::internal_error("prompts/get", &e))?;
            let text = run_handler(
                &info.name,
                &crate::limits::printable(&info.description),
                &schema,
                handler_tool(&info.name).as_ref(),
            );
            Ok(
                GetPromptResult::new(vec![PromptMessage::new_text(Role::User, text)])
                    .with_description(format!("Run the handler {}", info.name)),
            )
        }
        other => match super::catalog::get(engine, &OWN, other, Some(arguments)).await {
            Some(got) => got,
            None => Err(no_prompt(engine, "name", other)),
        },
    }
}

fn plan_work(goal: &str, context: Option<&str>) -> String {
    let context = context
        .map(|c| format!("\nWhat is known already:\n{c}\n"))
        .unwrap_or_default();
    format!(
        "Plan this goal and carry it out with lockstep's agent workflow, so that the work is \
stored durably, survives restarts and can be shared between agents.

Goal: {goal}
{context}
1. Break the goal into subtasks small enough to finish in one sitting. Give each a short `key`, \
a `title` and `instructions` that stand alone: whoever claims a subtask sees only its \
instructions and the summaries of the subtasks it depends on. Add a `specialist` (e.g. \
`backend`, `docs`) when only some agents should take it.
2. Set `depends_on` (other subtasks' keys) only where a subtask needs another's result; \
subtasks without dependencies between them can run at the same time.
3. Call `plan_task` with the goal and the subtasks. It answers with the job id and every \
subtask's task id and state.
4. Then loop: `claim_task` with the job id hands you the next ready subtask and an `attempt`; \
do the work; call `update_task` with a short note every few minutes, or the lease expires and \
another agent may take the subtask; finish with `complete_task` (a `summary` the dependent \
subtasks will read, `details`, `artifacts`, `next_action`) or `fail_task` with the reason \
(`retryable: true` if another attempt could succeed).
5. When `claim_task` answers `claimed: false`, nothing is ready: `get_job` or `wait_job` shows \
what the job waits for. The job succeeds when every subtask is complete.
"
    )
}

fn run_handler(name: &str, description: &str, schema: &str, tool: Option<&HandlerTool>) -> String {
    let direct = match tool {
        Some(tool) => format!(
            "- For one task, call the tool `{}` with the input {}: it runs the task as a \
durable job and answers with the handler's output.\n",
            tool.tool.name,
            if tool.direct() {
                "as its arguments"
            } else {
                "as its `input` argument"
            }
        ),
        None => String::new(),
    };
    let job = serde_json::json!({
        "name": format!("{name} run"),
        "stages": [{ "name": "run", "tasks": [{ "handler": name, "input": {} }] }],
    });
    format!(
        "Run the lockstep handler `{name}`.

What it does: {description}

Its input must match this JSON Schema (lockstep checks every input before it stores a task):
```json
{schema}
```

{direct}- For many tasks, or tasks in stages, call `submit_job` with a job such as \
`{job}` (one task per input; each stage starts when the one before it has finished), then \
`wait_job` with the job id until it finishes, and `get_task` for each task's output.
"
    )
}

/// `completion/complete`: suggestions for a prompt's argument or a
/// resource template's variable, at most 100, those starting with what the
/// user typed.
pub async fn complete(
    engine: &Engine,
    caller: &Caller,
    request: &CompleteRequestParams,
) -> Result<CompleteResult, ErrorData> {
    let typed = request.argument.value.as_str();
    let argument = request.argument.name.as_str();
    let unknown_argument = |known: &str| {
        ArgError::new(
            "argument.name",
            format!(
                "{:?} is not an argument here; it takes {known}",
                super::params::clip(argument, 100)
            ),
        )
        .into_error_data()
    };
    let candidates: Vec<String> = match &request.r#ref {
        Reference::Prompt(prompt) => match prompt.name.as_str() {
            PLAN_WORK if matches!(argument, "goal" | "context") => Vec::new(),
            PLAN_WORK => return Err(unknown_argument("goal, context")),
            RUN_HANDLER if argument == "handler" => engine.plugins().handler_names(),
            RUN_HANDLER => return Err(unknown_argument("handler")),
            other => match super::catalog::prompt_values(engine, &OWN, other, argument) {
                Some(Ok(values)) => values,
                Some(Err(known)) => return Err(unknown_argument(&known)),
                None => return Err(no_prompt(engine, "ref.name", other)),
            },
        },
        Reference::Resource(template) => match template.uri.as_str() {
            super::resources::JOB_TEMPLATE if argument == "job_id" => {
                let filter = JobFilter {
                    state: None,
                    name: None,
                    created_after: None,
                    created_before: None,
                    before: None,
                    limit: super::resources::PAGE,
                };
                engine
                    .list_jobs(&caller.tenant, filter)
                    .await
                    .map_err(|e| super::failure::internal_error("completion/complete", &e))?
                    .iter()
                    .map(|j| j.job_id.0.to_string())
                    .collect()
            }
            super::resources::JOB_TEMPLATE => return Err(unknown_argument("job_id")),
            super::resources::TASK_TEMPLATE if argument == "task_id" => Vec::new(),
            super::resources::TASK_TEMPLATE => return Err(unknown_argument("task_id")),
            other
                if let Some(values) = super::catalog::template_values(engine, other, argument) =>
            {
                values.map_err(|known| unknown_argument(&known))?
            }
            other => {
                return Err(ArgError::new(
                    "ref.uri",
                    format!(
                        "lockstep has no resource template {:?}; its templates are {} and {}",
                        super::params::clip(other, 100),
                        super::resources::JOB_TEMPLATE,
                        super::resources::TASK_TEMPLATE
                    ),
                )
                .into_error_data());
            }
        },
        _ => {
            return Err(
                ArgError::new("ref.type", "is neither ref/prompt nor ref/resource")
                    .into_error_data(),
            );
        }
    };
    let matching: Vec<String> = candidates
        .into_iter()
        .filter(|c| c.starts_with(typed))
        .collect();
    let total = matching.len();
    let values: Vec<String> = matching
        .into_iter()
        .take(CompletionInfo::MAX_VALUES)
        .collect();
    let has_more = total > values.len();
    let info = CompletionInfo::with_pagination(values, Some(total as u32), has_more)
        .map_err(|e| super::failure::internal_error("completion/complete", &e))?;
    Ok(CompleteResult::new(info))
}
