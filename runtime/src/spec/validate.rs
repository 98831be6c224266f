//! The rules a parsed [`JobSpec`] must satisfy, and its translation into a
//! [`SubmitJob`] with every default filled in.
//!
//! Rules (each failure is a [`SpecError::Invalid`] whose pointer names the
//! offending field): every name, key, title and idempotency key meets
//! [`crate::limits`] (not blank, bounded in bytes, no control characters —
//! so no NUL, which one backend would store and the other refuse); at least
//! one stage; no more tasks than [`Limits::max_tasks_per_job`]; stage names
//! unique; task keys unique within the job; `depends_on` names a keyed task
//! of the *same* stage, not the task itself, once, and without cycles; every
//! WASM task names a registered handler and an input that matches its schema
//! and fits [`Limits::max_input_bytes`]; agent tasks have a title and no
//! handler. Job-wide rules (name, stage count, task limit, stage names, task
//! keys) are checked first, then each task in file order, so one run reports
//! one error, the same one every time.

use super::canonical::{canonical_json, canonical_spec_json, idempotency_key_of};
use super::catalog::HandlerCatalog;
use super::model::{JobSpec, StageSpec, TaskSpec};
use super::parse::parse_job_file;
use super::{Limits, SpecError, sizes_for_comparison};
use crate::limits;
use crate::model::{Executor, Millis, NewStage, NewTask, SubmitJob, TenantId};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// Attempts per task unless the task or its stage says otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Per-attempt time limit unless the task or its stage says otherwise.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Handler name stored for agent tasks that name no specialist; an agent
/// task with a specialist stores the specialist's name, so claims can filter
/// by it like workers filter by handler.
pub const AGENT_HANDLER: &str = "agent";

/// Lists longer than this (registered handlers, keys of a stage) are cut in
/// error messages: a job may hold 100,000 keys.
const MAX_LISTED_NAMES: usize = 20;

/// Parses and validates a job file. Errors from validation are prefixed with
/// the file name.
pub fn load_job_file(
    path: &Path,
    catalog: &dyn HandlerCatalog,
    limits: &Limits,
    tenant: TenantId,
    now: Millis,
) -> Result<SubmitJob, SpecError> {
    let spec = parse_job_file(path, limits)?;
    validate_owned(spec, catalog, limits, tenant, now).map_err(|e| SpecError::InFile {
        path: path.display().to_string(),
        source: Box::new(e),
    })
}

/// Checks every rule (see the module docs) and produces the job to insert.
/// `tenant` and `now` are the submitter and the submit time the store records.
pub fn validate(
    spec: &JobSpec,
    catalog: &dyn HandlerCatalog,
    limits: &Limits,
    tenant: TenantId,
    now: Millis,
) -> Result<SubmitJob, SpecError> {
    check(spec, catalog, limits)?;
    let (idempotency_key, spec_json) = identity(spec)?;
    let mut stages = Vec::with_capacity(spec.stages.len());
    for (s, stage) in spec.stages.iter().enumerate() {
        let mut tasks = Vec::with_capacity(stage.tasks.len());
        for (t, task) in stage.tasks.iter().enumerate() {
            tasks.push(new_task(stage, task.clone(), s, t)?);
        }
        stages.push(new_stage(stage, tasks));
    }
    Ok(SubmitJob {
        tenant,
        name: spec.name.clone(),
        idempotency_key,
        spec_json,
        stages,
        now,
    })
}

/// [`validate`], consuming the spec: each task's texts move into the job to
/// insert, and each stage's tasks are converted in place, in the spec's own
/// allocation, so a job of a million tasks is never held twice.
pub fn validate_owned(
    mut spec: JobSpec,
    catalog: &dyn HandlerCatalog,
    limits: &Limits,
    tenant: TenantId,
    now: Millis,
) -> Result<SubmitJob, SpecError> {
    check(&spec, catalog, limits)?;
    let (idempotency_key, spec_json) = identity(&spec)?;
    let mut stages = Vec::with_capacity(spec.stages.len());
    for (s, stage) in spec.stages.iter_mut().enumerate() {
        let specs = std::mem::take(&mut stage.tasks);
        // `Vec<TaskSpec>` into `Vec<NewTask>` through `map` and `collect`
        // reuses the source's allocation (std's in-place collection), which
        // needs a `NewTask` no larger than a `TaskSpec`: asserted below.
        let mut tasks = specs
            .into_iter()
            .enumerate()
            .map(|(t, task)| new_task(stage, task, s, t))
            .collect::<Result<Vec<NewTask>, SpecError>>()?;
        // The rows are smaller than the specs were: give the rest back.
        tasks.shrink_to_fit();
        stages.push(new_stage(stage, tasks));
    }
    Ok(SubmitJob {
        tenant,
        name: std::mem::take(&mut spec.name),
        idempotency_key,
        spec_json,
        stages,
        now,
    })
}

// A larger `NewTask` would make `validate_owned` allocate a second list.
const _: () = assert!(
    std::mem::size_of::<NewTask>() <= std::mem::size_of::<TaskSpec>()
        && std::mem::align_of::<NewTask>() == std::mem::align_of::<TaskSpec>()
);

/// The idempotency key (the spec's, else its hash) and the canonical spec.
fn identity(spec: &JobSpec) -> Result<(String, String), SpecError> {
    let spec_json = canonical_spec_json(spec)
        .map_err(|e| SpecError::invalid("", format!("the spec cannot be written as JSON: {e}")))?;
    // A spec without a key of its own is the text its default key hashes
    // (`default_idempotency_key`): one pass over a large spec, not two.
    let idempotency_key = match &spec.idempotency_key {
        Some(key) => key.clone(),
        None => idempotency_key_of(&spec_json),
    };
    Ok((idempotency_key, spec_json))
}

/// Every rule, job-wide ones first, then each task in file order, so the
/// error is the same one every time.
fn check(spec: &JobSpec, catalog: &dyn HandlerCatalog, limits: &Limits) -> Result<(), SpecError> {
    check_name("/name", "job name", &spec.name, limits::MAX_JOB_NAME_BYTES)?;
    if let Some(key) = &spec.idempotency_key {
        if key.trim().is_empty() {
            return Err(SpecError::invalid(
                "/idempotency_key",
                "idempotency key is empty; omit it to use the hash of the spec",
            ));
        }
        check_name(
            "/idempotency_key",
            "idempotency key",
            key,
            limits::MAX_IDEMPOTENCY_KEY_BYTES,
        )?;
    }
    if spec.stages.is_empty() {
        return Err(SpecError::invalid(
            "/stages",
            "a job needs at least one stage",
        ));
    }
    let task_count: u64 = spec.stages.iter().map(|s| s.tasks.len() as u64).sum();
    if task_count > limits.max_tasks_per_job {
        return Err(SpecError::invalid(
            "/stages",
            format!(
                "job has {task_count} tasks, more than the {}-task limit (raise it with --max-tasks-per-job)",
                limits.max_tasks_per_job
            ),
        ));
    }

    check_stage_names(spec)?;
    let registered: BTreeSet<String> = catalog.names().into_iter().collect();
    let keys = collect_keys(spec)?;

    for (s, stage) in spec.stages.iter().enumerate() {
        let stage_pointer = format!("/stages/{s}");
        check_max_attempts(stage.max_attempts, &format!("{stage_pointer}/max_attempts"))?;
        for (t, task) in stage.tasks.iter().enumerate() {
            let pointer = format!("{stage_pointer}/tasks/{t}");
            let executor = task.executor.or(stage.executor).unwrap_or_default();
            let handler = match executor {
                Executor::Wasm => wasm_handler(task, &pointer, &registered)?,
                Executor::Agent => agent_handler(task, &pointer)?,
                Executor::Command => {
                    return Err(SpecError::invalid(
                        format!("{pointer}/executor"),
                        "executor \"command\" tasks are CI pipeline steps: run a pipeline file with `lockstep ci run` (or the run_pipeline MCP tool)",
                    ));
                }
            };
            let input_json = task.input.as_json();
            check_input_size(input_json, &pointer, limits)?;
            limits::check_json_depth(input_json, limits::MAX_JSON_DEPTH).map_err(|e| {
                SpecError::invalid(format!("{pointer}/input"), format!("input {e}"))
            })?;
            if executor == Executor::Wasm {
                // Parsed for the schema check only, then dropped: the spec
                // holds inputs as text (see `TaskInput`).
                let input = task.input.to_value().map_err(|e| {
                    SpecError::invalid(format!("{pointer}/input"), format!("input {e}"))
                })?;
                catalog.validate_input(&handler, &input).map_err(|reason| {
                    SpecError::invalid(
                        format!("{pointer}/input"),
                        format!(
                            "input does not match the schema of handler {}: {reason}",
                            quoted(&handler)
                        ),
                    )
                })?;
            }
            check_max_attempts(task.max_attempts, &format!("{pointer}/max_attempts"))?;
            check_dependencies(task, s, &pointer, spec, &keys)?;
        }
        check_cycles(&stage.tasks, &stage_pointer)?;
    }
    Ok(())
}

/// The task to insert, every default filled in, from a task [`check`]
/// passed (task `t` of stage `s`).
fn new_task(stage: &StageSpec, task: TaskSpec, s: usize, t: usize) -> Result<NewTask, SpecError> {
    let executor = task.executor.or(stage.executor).unwrap_or_default();
    let agent_json = (executor == Executor::Agent).then(|| agent_json(&task));
    let handler = match (executor, task.handler) {
        (Executor::Agent, _) => task.specialist.unwrap_or_else(|| AGENT_HANDLER.to_string()),
        (_, Some(handler)) => handler,
        (_, None) => {
            return Err(SpecError::invalid(
                format!("/stages/{s}/tasks/{t}"),
                "task has no handler",
            ));
        }
    };
    let max_attempts = task
        .max_attempts
        .or(stage.max_attempts)
        .unwrap_or(DEFAULT_MAX_ATTEMPTS);
    let timeout_ms = task
        .timeout
        .or(stage.timeout)
        .map_or(DEFAULT_TIMEOUT_MS, |t| t.as_millis());
    Ok(NewTask {
        handler,
        executor,
        key: task.key,
        depends_on: task.depends_on,
        input_json: task.input.into_json(),
        // Both bounded by their checks (max_attempts <= i32::MAX, timeout <=
        // MAX_TIMEOUT_MS), so the conversions cannot saturate.
        max_attempts: i32::try_from(max_attempts).unwrap_or(i32::MAX),
        timeout_ms: i64::try_from(timeout_ms).unwrap_or(i64::MAX),
        on_failure: task.on_failure.or(stage.on_failure).unwrap_or_default(),
        agent_json,
    })
}

fn new_stage(stage: &StageSpec, tasks: Vec<NewTask>) -> NewStage {
    NewStage {
        name: stage.name.clone(),
        on_failure: stage.on_failure.unwrap_or_default(),
        // Bounded by the same checks as a task's (see above).
        max_attempts: stage
            .max_attempts
            .map(|n| i32::try_from(n).unwrap_or(i32::MAX)),
        timeout_ms: stage
            .timeout
            .map(|t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX)),
        tasks,
    }
}

fn check_stage_names(spec: &JobSpec) -> Result<(), SpecError> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (s, stage) in spec.stages.iter().enumerate() {
        let pointer = format!("/stages/{s}/name");
        check_name(&pointer, "stage name", &stage.name, limits::MAX_NAME_BYTES)?;
        if let Some(first) = seen.insert(&stage.name, s) {
            return Err(SpecError::invalid(
                pointer,
                format!(
                    "duplicate stage name {}; /stages/{first}/name already uses it",
                    quoted(&stage.name)
                ),
            ));
        }
    }
    Ok(())
}

/// Where each task key is declared: key → (stage index, task index).
type KeyIndex<'a> = HashMap<&'a str, (usize, usize)>;

fn collect_keys(spec: &JobSpec) -> Result<KeyIndex<'_>, SpecError> {
    let mut keys = KeyIndex::new();
    for (s, stage) in spec.stages.iter().enumerate() {
        for (t, task) in stage.tasks.iter().enumerate() {
            let Some(key) = &task.key else { continue };
            let pointer = format!("/stages/{s}/tasks/{t}/key");
            check_name(&pointer, "task key", key, limits::MAX_NAME_BYTES)?;
            if let Some((fs, ft)) = keys.insert(key, (s, t)) {
                return Err(SpecError::invalid(
                    pointer,
                    format!(
                        "duplicate task key {}; /stages/{fs}/tasks/{ft}/key already uses it",
                        quoted(key)
                    ),
                ));
            }
        }
    }
    Ok(keys)
}

fn wasm_handler(
    task: &TaskSpec,
    pointer: &str,
    registered: &BTreeSet<String>,
) -> Result<String, SpecError> {
    for (field, value) in [
        ("title", &task.title),
        ("instructions", &task.instructions),
        ("specialist", &task.specialist),
    ] {
        if value.is_some() {
            return Err(SpecError::invalid(
                format!("{pointer}/{field}"),
                format!("only agent tasks take a {field}; set executor = \"agent\" or remove it"),
            ));
        }
    }
    let Some(handler) = &task.handler else {
        return Err(SpecError::invalid(
            pointer,
            format!("task has no handler; {}", registered_list(registered)),
        ));
    };
    check_name(
        &format!("{pointer}/handler"),
        "handler name",
        handler,
        limits::MAX_NAME_BYTES,
    )?;
    if !registered.contains(handler) {
        return Err(SpecError::invalid(
            format!("{pointer}/handler"),
            format!(
                "unknown handler {}; {}",
                quoted(handler),
                registered_list(registered)
            ),
        ));
    }
    Ok(handler.clone())
}

fn registered_list(registered: &BTreeSet<String>) -> String {
    if registered.is_empty() {
        "none registered".to_string()
    } else {
        format!(
            "registered handlers: {}",
            name_list(registered.iter().map(String::as_str))
        )
    }
}

fn agent_handler(task: &TaskSpec, pointer: &str) -> Result<String, SpecError> {
    if task.handler.is_some() {
        return Err(SpecError::invalid(
            format!("{pointer}/handler"),
            "agent tasks take no handler; name a specialist instead",
        ));
    }
    let Some(title) = &task.title else {
        return Err(SpecError::invalid(
            pointer,
            "agent task has no title; give it a short title",
        ));
    };
    check_name(
        &format!("{pointer}/title"),
        "agent task title",
        title,
        limits::MAX_TITLE_BYTES,
    )?;
    if let Some(instructions) = &task.instructions {
        limits::check_text(instructions, limits::MAX_INSTRUCTIONS_BYTES).map_err(|e| {
            SpecError::invalid(
                format!("{pointer}/instructions"),
                format!("instructions {e}"),
            )
        })?;
    }
    match &task.specialist {
        Some(specialist) if specialist.trim().is_empty() => Err(SpecError::invalid(
            format!("{pointer}/specialist"),
            "specialist is empty; name one or remove the field",
        )),
        Some(specialist) => {
            check_name(
                &format!("{pointer}/specialist"),
                "specialist",
                specialist,
                limits::MAX_NAME_BYTES,
            )?;
            Ok(specialist.clone())
        }
        None => Ok(AGENT_HANDLER.to_string()),
    }
}

fn agent_json(task: &TaskSpec) -> String {
    let mut fields = serde_json::Map::new();
    for (name, value) in [
        ("title", &task.title),
        ("instructions", &task.instructions),
        ("specialist", &task.specialist),
    ] {
        if let Some(value) = value {
            fields.insert(name.to_string(), serde_json::Value::String(value.clone()));
        }
    }
    canonical_json(&serde_json::Value::Object(fields))
}

fn check_input_size(input_json: &str, pointer: &str, limits: &Limits) -> Result<(), SpecError> {
    let size = input_json.len() as u64;
    if size > limits.max_input_bytes {
        let (size, limit) = sizes_for_comparison(size, limits.max_input_bytes);
        return Err(SpecError::invalid(
            format!("{pointer}/input"),
            format!(
                "input is {size}, larger than the {limit} limit (raise it with --max-input-bytes)"
            ),
        ));
    }
    Ok(())
}

fn check_max_attempts(value: Option<u32>, pointer: &str) -> Result<(), SpecError> {
    match value {
        Some(0) => Err(SpecError::invalid(
            pointer,
            "max_attempts must be at least 1",
        )),
        Some(n) if i32::try_from(n).is_err() => Err(SpecError::invalid(
            pointer,
            format!("max_attempts must be at most {}", i32::MAX),
        )),
        _ => Ok(()),
    }
}

fn check_dependencies(
    task: &TaskSpec,
    stage: usize,
    pointer: &str,
    spec: &JobSpec,
    keys: &KeyIndex<'_>,
) -> Result<(), SpecError> {
    let stage_name = &spec.stages[stage].name;
    let mut seen = BTreeSet::new();
    for (d, dep) in task.depends_on.iter().enumerate() {
        let dep_pointer = format!("{pointer}/depends_on/{d}");
        check_name(&dep_pointer, "task key", dep, limits::MAX_NAME_BYTES)?;
        if task.key.as_deref() == Some(dep.as_str()) {
            return Err(SpecError::invalid(
                dep_pointer,
                format!("task {} depends on itself", quoted(dep)),
            ));
        }
        if !seen.insert(dep.as_str()) {
            return Err(SpecError::invalid(
                dep_pointer,
                format!("{} is listed twice in depends_on", quoted(dep)),
            ));
        }
        match keys.get(dep.as_str()) {
            Some((s, _)) if *s == stage => {}
            Some((s, t)) => {
                return Err(SpecError::invalid(
                    dep_pointer,
                    format!(
                        "{} is a task of stage {} (/stages/{s}/tasks/{t}), but this task is in stage {}; depends_on may only name tasks of the same stage (a later stage already waits for every earlier one)",
                        quoted(dep),
                        quoted(&spec.stages[*s].name),
                        quoted(stage_name)
                    ),
                ));
            }
            None => {
                let stage_keys: BTreeSet<&str> = spec.stages[stage]
                    .tasks
                    .iter()
                    .filter_map(|t| t.key.as_deref())
                    .collect();
                let known = if stage_keys.is_empty() {
                    format!("stage {} has no keyed tasks", quoted(stage_name))
                } else {
                    format!(
                        "keys in stage {}: {}",
                        quoted(stage_name),
                        name_list(stage_keys.iter().copied())
                    )
                };
                return Err(SpecError::invalid(
                    dep_pointer,
                    format!("unknown task key {}; {known}", quoted(dep)),
                ));
            }
        }
    }
    Ok(())
}

/// Rejects a dependency cycle among the tasks of one stage, naming it as
/// `a -> b -> a` (each task waits for the next), starting from the task of
/// the cycle that comes first in the file. Iterative, so a chain of 100,000
/// dependencies cannot overflow the stack. Assumes every `depends_on` entry
/// was already resolved to a keyed task of this stage.
fn check_cycles(tasks: &[TaskSpec], stage_pointer: &str) -> Result<(), SpecError> {
    let index: HashMap<&str, usize> = tasks
        .iter()
        .enumerate()
        .filter_map(|(t, task)| task.key.as_deref().map(|k| (k, t)))
        .collect();
    let edges: Vec<Vec<usize>> = tasks
        .iter()
        .map(|task| {
            task.depends_on
                .iter()
                .filter_map(|d| index.get(d.as_str()).copied())
                .collect()
        })
        .collect();

    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Unvisited,
        OnPath,
        Done,
    }
    let mut mark = vec![Mark::Unvisited; tasks.len()];
    for root in 0..tasks.len() {
        if mark[root] != Mark::Unvisited {
            continue;
        }
        // (task, next edge to follow); the stack is the current path.
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        mark[root] = Mark::OnPath;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&dep) = edges[node].get(*next) {
                *next += 1;
                match mark[dep] {
                    Mark::Unvisited => {
                        mark[dep] = Mark::OnPath;
                        stack.push((dep, 0));
                    }
                    Mark::OnPath => {
                        let start = stack.iter().position(|&(n, _)| n == dep).unwrap_or(0);
                        let cycle: Vec<usize> = stack[start..].iter().map(|&(n, _)| n).collect();
                        return Err(cycle_error(tasks, &cycle, stage_pointer));
                    }
                    Mark::Done => {}
                }
            } else {
                mark[node] = Mark::Done;
                stack.pop();
            }
        }
    }
    Ok(())
}

fn cycle_error(tasks: &[TaskSpec], cycle: &[usize], stage_pointer: &str) -> SpecError {
    // Rotate so the cycle starts at its task that comes first in the file.
    let first = cycle
        .iter()
        .enumerate()
        .min_by_key(|&(_, &t)| t)
        .map_or(0, |(i, _)| i);
    let mut path: Vec<&str> = cycle[first..]
        .iter()
        .chain(&cycle[..first])
        .map(|&t| tasks[t].key.as_deref().unwrap_or("?"))
        .collect();
    path.push(path[0]);
    SpecError::invalid(
        format!("{stage_pointer}/tasks/{}/depends_on", cycle[first]),
        format!(
            "dependency cycle {}; remove one of these dependencies",
            path.join(" -> ")
        ),
    )
}

/// `what` (a name, key or title of the spec at `pointer`) against the rules
/// of [`limits::check_name`]: `stage name is 300 bytes, longer than …`.
fn check_name(pointer: &str, what: &str, value: &str, max: usize) -> Result<(), SpecError> {
    limits::check_name(value, max).map_err(|e| SpecError::invalid(pointer, format!("{what} {e}")))
}

/// A name from the spec as quoted in an error, cut to a readable length: a
/// hostile spec may use a megabyte-long key or handler name.
fn quoted(name: &str) -> String {
    format!("\"{}\"", shortened(name))
}

fn shortened(name: &str) -> String {
    const MAX_CHARS: usize = 80;
    match name.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &name[..cut]),
        None => name.to_string(),
    }
}

fn name_list<'a>(names: impl ExactSizeIterator<Item = &'a str>) -> String {
    let total = names.len();
    let mut text = names
        .take(MAX_LISTED_NAMES)
        .map(shortened)
        .collect::<Vec<_>>()
        .join(", ");
    if total > MAX_LISTED_NAMES {
        text.push_str(&format!(", … ({} more)", total - MAX_LISTED_NAMES));
    }
    text
}
