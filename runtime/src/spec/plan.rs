//! Plans: a goal broken into subtasks, as an agent plans it, turned into a
//! job spec of agent tasks. Pure: [`plan_job`] is the one validation of a
//! plan (the MCP `plan_task` arguments are a [`Plan`], checked by it before
//! any engine call, and [`Engine::plan`](crate::engine::Engine::plan) checks
//! it again for callers that build plans in code), and [`plan_field`] is the
//! one translation of a spec error about the plan's job back into the plan's
//! own terms.
//!
//! A plan's job has one stage, [`PLAN_STAGE`]; each subtask is an agent task
//! keyed by its own key or `subtask-N`, and `depends_on` entries name other
//! subtasks by key or by (unique) title.

use super::field::{self, FieldError};
use super::{JobSpec, StageSpec, TaskSpec};
use crate::model::Executor;
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::HashMap;

/// The name of the one stage a plan's job has.
pub const PLAN_STAGE: &str = "subtasks";
/// Longest goal, in characters (it becomes the job's name).
pub const MAX_GOAL_CHARS: usize = 1_000;
/// Most subtasks in one plan.
pub const MAX_SUBTASKS: usize = 10_000;
/// Longest title of a subtask (and `depends_on` entry, which may be a title), in characters.
pub const MAX_TITLE_CHARS: usize = 200;
/// Longest instructions, in characters.
pub const MAX_INSTRUCTIONS_CHARS: usize = 64 * 1024;
/// Longest specialist or key, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// Longest idempotency key of a plan, in characters.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 200;

/// A goal broken into subtasks. The doc comments are the JSON Schema
/// descriptions of MCP's `plan_task` arguments, which this type is.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "PlanTaskArgs")]
pub struct Plan {
    /// What the whole plan achieves, in one sentence (becomes the job's name).
    pub goal: String,
    /// The steps. Each becomes an agent task; a task can be claimed as soon
    /// as every task in its `depends_on` is completed.
    pub subtasks: Vec<PlannedSubtask>,
    /// Planning again with the same key returns the existing plan instead of a
    /// second copy; default: derived from the plan's content.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "SubtaskArg")]
pub struct PlannedSubtask {
    /// Short name of the step, e.g. "Write the migration".
    pub title: String,
    /// What to do, in enough detail for an agent that sees only this and the
    /// summaries of the steps it depends on.
    pub instructions: String,
    /// Which kind of agent should do it (e.g. "backend", "reviewer"); claim_task
    /// can ask for one specialist. Omit for any agent.
    #[serde(default)]
    pub specialist: Option<String>,
    /// A short unique name other subtasks use in depends_on; default `subtask-N`
    /// (N counts from 1 in this list).
    #[serde(default)]
    pub key: Option<String>,
    /// Keys (or exact titles) of the subtasks that must be completed first.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// How many times the step may be claimed before it is given up (default 5).
    #[serde(default)]
    pub max_attempts: Option<u32>,
}

/// A valid plan as a job: the spec to submit, and per subtask (in plan
/// order) its key and the keys it depends on.
#[derive(Debug, Clone)]
pub struct PlanJob {
    pub spec: JobSpec,
    pub keys: Vec<String>,
    pub depends_on: Vec<Vec<String>>,
}

/// The one validation of a plan, and its job. Checks in this order, so one
/// plan always gets the same error: the goal, the number of subtasks, the
/// idempotency key, each subtask's fields, unique keys, then dependencies.
/// The job spec's own rules (cycles, limits) are checked when it is
/// submitted; [`plan_field`] names their errors in plan terms.
pub fn plan_job(plan: &Plan) -> Result<PlanJob, FieldError> {
    field::name("goal", &plan.goal, MAX_GOAL_CHARS)?;
    if plan.subtasks.is_empty() {
        return Err(FieldError::new(
            "subtasks",
            "is empty; a plan needs at least one subtask",
        ));
    }
    if plan.subtasks.len() > MAX_SUBTASKS {
        return Err(FieldError::new(
            "subtasks",
            format!(
                "has {} entries, more than the {MAX_SUBTASKS} limit",
                plan.subtasks.len()
            ),
        ));
    }
    field::optional_name(
        "idempotency_key",
        plan.idempotency_key.as_deref(),
        MAX_IDEMPOTENCY_KEY_CHARS,
    )?;
    for (i, s) in plan.subtasks.iter().enumerate() {
        check_subtask(i, s)?;
    }
    let keys = subtask_keys(&plan.subtasks)?;
    let depends_on = resolve_dependencies(&plan.subtasks, &keys)?;
    let tasks = plan
        .subtasks
        .iter()
        .zip(&keys)
        .zip(&depends_on)
        .map(|((s, key), deps)| TaskSpec {
            handler: None,
            input: super::TaskInput::empty_object(),
            key: Some(key.clone()),
            depends_on: deps.clone(),
            max_attempts: s.max_attempts,
            timeout: None,
            on_failure: None,
            executor: Some(Executor::Agent),
            title: Some(s.title.clone()),
            instructions: Some(s.instructions.clone()),
            specialist: s.specialist.clone(),
        })
        .collect();
    let spec = JobSpec {
        name: plan.goal.trim().to_string(),
        idempotency_key: plan.idempotency_key.clone(),
        stages: vec![StageSpec {
            name: PLAN_STAGE.to_string(),
            tasks,
            on_failure: None,
            max_attempts: None,
            timeout: None,
            executor: Some(Executor::Agent),
        }],
    };
    Ok(PlanJob {
        spec,
        keys,
        depends_on,
    })
}

fn check_subtask(i: usize, s: &PlannedSubtask) -> Result<(), FieldError> {
    field::name(&format!("subtasks[{i}].title"), &s.title, MAX_TITLE_CHARS)?;
    field::text(
        &format!("subtasks[{i}].instructions"),
        &s.instructions,
        MAX_INSTRUCTIONS_CHARS,
    )?;
    field::optional_name(
        &format!("subtasks[{i}].specialist"),
        s.specialist.as_deref(),
        MAX_NAME_CHARS,
    )?;
    field::optional_name(
        &format!("subtasks[{i}].key"),
        s.key.as_deref(),
        MAX_NAME_CHARS,
    )?;
    for (j, d) in s.depends_on.iter().enumerate() {
        field::name(
            &format!("subtasks[{i}].depends_on[{j}]"),
            d,
            MAX_TITLE_CHARS,
        )?;
    }
    if s.max_attempts == Some(0) {
        return Err(FieldError::new(
            format!("subtasks[{i}].max_attempts"),
            "must be at least 1",
        ));
    }
    Ok(())
}

/// A spec error's pointer into the plan's job, as a field of the plan:
/// `/name` → `goal`, `/stages/0/tasks/3/depends_on/1` → `subtasks[3].depends_on[1]`.
pub fn plan_field(pointer: &str) -> String {
    match pointer {
        "/name" => "goal".to_string(),
        "/idempotency_key" => "idempotency_key".to_string(),
        _ => match pointer.strip_prefix("/stages/0/tasks") {
            Some(rest) if !rest.trim_matches('/').is_empty() => {
                field::pointer_field("subtasks", rest)
            }
            _ => "subtasks".to_string(),
        },
    }
}

/// Each subtask's key: its own, or `subtask-N` (1-based) when it has none.
fn subtask_keys(subtasks: &[PlannedSubtask]) -> Result<Vec<String>, FieldError> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut keys = Vec::with_capacity(subtasks.len());
    for (i, s) in subtasks.iter().enumerate() {
        let key = match &s.key {
            Some(k) => k.clone(),
            None => format!("subtask-{}", i + 1),
        };
        if let Some(first) = seen.insert(key.clone(), i) {
            return Err(FieldError::new(
                format!("subtasks[{i}].key"),
                format!("{key:?} is already the key of subtasks[{first}]; keys must be unique"),
            ));
        }
        keys.push(key);
    }
    Ok(keys)
}

/// Each `depends_on` entry as a key: an entry is a key, or else the title of
/// exactly one subtask.
fn resolve_dependencies(
    subtasks: &[PlannedSubtask],
    keys: &[String],
) -> Result<Vec<Vec<String>>, FieldError> {
    let key_set: HashMap<&str, usize> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i))
        .collect();
    let mut by_title: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, s) in subtasks.iter().enumerate() {
        by_title.entry(s.title.trim()).or_default().push(i);
    }
    let mut out = Vec::with_capacity(subtasks.len());
    for (i, s) in subtasks.iter().enumerate() {
        let mut deps = Vec::with_capacity(s.depends_on.len());
        for (j, dep) in s.depends_on.iter().enumerate() {
            let field = format!("subtasks[{i}].depends_on[{j}]");
            let target = match key_set.get(dep.as_str()) {
                Some(&t) => t,
                None => match by_title.get(dep.trim()).map(Vec::as_slice) {
                    Some([t]) => *t,
                    Some(many) => {
                        return Err(FieldError::new(
                            field,
                            format!(
                                "{dep:?} is the title of {} subtasks; give them keys and depend on a key",
                                many.len()
                            ),
                        ));
                    }
                    None => {
                        return Err(FieldError::new(
                            field,
                            format!(
                                "{dep:?} is neither the key nor the title of a subtask in this plan"
                            ),
                        ));
                    }
                },
            };
            if target == i {
                return Err(FieldError::new(field, "a subtask cannot depend on itself"));
            }
            let key = keys[target].clone();
            if deps.contains(&key) {
                return Err(FieldError::new(field, format!("{dep:?} is listed twice")));
            }
            deps.push(key);
        }
        out.push(deps);
    }
    Ok(out)
}
