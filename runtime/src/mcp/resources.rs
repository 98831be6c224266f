//! Jobs and tasks as MCP resources: `resources/list` pages through the
//! caller's jobs, newest first, as `lockstep://jobs/{job_id}`; two resource
//! templates name any job or task (`lockstep://jobs/{job_id}`,
//! `lockstep://tasks/{task_id}`); `resources/read` answers with the same
//! view `get_job` / `get_task` return, as JSON. The plugins' resources and
//! templates ([`super::catalog`]) are listed and read beside them.
//!
//! **Invariants 23 and 30:** every read runs as the caller's tenant (another
//! tenant's job is "not found") and answers only with engine views.

use super::Caller;
use super::params::ArgError;
use crate::engine::views::View;
use crate::engine::{Engine, EngineError, JobFilter};
use crate::model::{JobId, TaskId};
use rmcp::ErrorData;
use rmcp::model::{
    ListResourceTemplatesResult, ListResourcesResult, ReadResourceResult, Resource,
    ResourceContents, ResourceTemplate,
};

/// A job's resource URI template.
pub const JOB_TEMPLATE: &str = "lockstep://jobs/{job_id}";
/// A task's resource URI template.
pub const TASK_TEMPLATE: &str = "lockstep://tasks/{task_id}";
/// The scheme of lockstep's own resources (a plugin may not offer it).
pub(super) const SCHEME: &str = "lockstep://";
const JOBS: &str = "lockstep://jobs/";
const TASKS: &str = "lockstep://tasks/";
/// Jobs per `resources/list` page.
pub const PAGE: u32 = 100;
const JSON: &str = "application/json";

/// What a lockstep URI names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Job(JobId),
    Task(TaskId),
}

/// The job or task `uri` names. Another scheme or path is not found
/// (-32002); a lockstep URI whose id is not a positive number is an invalid
/// `uri`.
pub fn parse(uri: &str) -> Result<Target, ErrorData> {
    let (rest, job) = match (uri.strip_prefix(JOBS), uri.strip_prefix(TASKS)) {
        (Some(rest), _) => (rest, true),
        (_, Some(rest)) => (rest, false),
        _ => return Err(no_resource(uri)),
    };
    let id = rest
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0 && rest.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            ArgError::new(
                "uri",
                format!(
                    "{:?} is not a {} id; use {}",
                    rest,
                    if job { "job" } else { "task" },
                    if job { JOB_TEMPLATE } else { TASK_TEMPLATE }
                ),
            )
            .into_error_data()
        })?;
    Ok(if job {
        Target::Job(JobId(id))
    } else {
        Target::Task(TaskId(id))
    })
}

/// The error for a URI that names no resource: -32002.
pub fn no_resource(uri: &str) -> ErrorData {
    ErrorData::resource_not_found(
        format!(
            "lockstep has no resource {}; its resources are {JOB_TEMPLATE} and {TASK_TEMPLATE}",
            super::params::clip(&crate::limits::printable(uri), 200)
        ),
        Some(serde_json::json!({ "uri": super::params::clip(uri, 200) })),
    )
}

/// A job's URI.
pub fn job_uri(job: JobId) -> String {
    format!("{JOBS}{}", job.0)
}

/// One page of the caller's jobs, newest first; `cursor` is the previous
/// page's `nextCursor` (`before:ID`).
pub async fn list(
    engine: &Engine,
    caller: &Caller,
    cursor: Option<&str>,
) -> Result<ListResourcesResult, ErrorData> {
    let before = match cursor {
        None => None,
        Some(c) => Some(
            c.strip_prefix("before:")
                .and_then(|id| id.parse::<i64>().ok())
                .filter(|id| *id > 0)
                .map(JobId)
                .ok_or_else(|| {
                    ArgError::new(
                        "cursor",
                        "is not a cursor this server gave; pass a nextCursor back as it came",
                    )
                    .into_error_data()
                })?,
        ),
    };
    let filter = JobFilter {
        state: None,
        name: None,
        created_after: None,
        created_before: None,
        before,
        limit: PAGE,
    };
    let jobs = engine
        .list_jobs(&caller.tenant, filter)
        .await
        .map_err(|e| failure("resources/list", e))?;
    let next = (jobs.len() == PAGE as usize)
        .then(|| jobs.last().map(|j| format!("before:{}", j.job_id.0)))
        .flatten();
    // The plugins' resources head the first page.
    let mut resources = match cursor {
        None => super::catalog::listed_resources(engine),
        Some(_) => Vec::new(),
    };
    resources.extend(jobs.iter().map(|j| {
        let name = crate::limits::printable(&j.name);
        Resource::new(job_uri(j.job_id), format!("job-{}", j.job_id.0))
            .with_title(super::params::clip(&name, 200))
            .with_description(format!(
                "job {} ({}): {}",
                j.job_id.0,
                j.state,
                super::params::clip(&name, 200)
            ))
            .with_mime_type(JSON)
    }));
    let mut page = ListResourcesResult::with_all_items(resources);
    page.next_cursor = next;
    Ok(page)
}

/// lockstep's two templates, then the plugins'.
pub fn templates(engine: &Engine) -> ListResourceTemplatesResult {
    let mut templates = vec![
        ResourceTemplate::new(JOB_TEMPLATE, "job")
            .with_title("A job")
            .with_description(
                "A job's state, per-stage progress, task counts, percent done, ETA and error (what get_job returns).",
            )
            .with_mime_type(JSON),
        ResourceTemplate::new(TASK_TEMPLATE, "task")
            .with_title("A task")
            .with_description(
                "A task's input, output, error, attempts, lease and recent events (what get_task returns).",
            )
            .with_mime_type(JSON),
    ];
    templates.extend(super::catalog::listed_templates(engine));
    ListResourceTemplatesResult::with_all_items(templates)
}

/// The view `uri` names, as JSON text.
pub async fn read(
    engine: &Engine,
    caller: &Caller,
    uri: &str,
) -> Result<ReadResourceResult, ErrorData> {
    if !uri.starts_with(SCHEME)
        && let Some(read) = super::catalog::read(engine, uri).await
    {
        return read;
    }
    let text = match parse(uri)? {
        Target::Job(job) => render(engine.job_view(&caller.tenant, job).await)?,
        Target::Task(task) => render(engine.task_view(&caller.tenant, task).await)?,
    };
    Ok(ReadResourceResult::new(vec![
        ResourceContents::text(text, uri).with_mime_type(JSON),
    ]))
}

fn render<T: View>(view: Result<T, EngineError>) -> Result<String, ErrorData> {
    let view = view.map_err(|e| failure("resources/read", e))?;
    serde_json::to_string_pretty(&view).map_err(|e| internal("resources/read", &e))
}

/// An engine error as a resource request's error: not found is -32002.
fn failure(what: &str, e: EngineError) -> ErrorData {
    match e {
        EngineError::NotFound { .. } => ErrorData::resource_not_found(e.to_string(), None),
        other => internal(what, &other),
    }
}

fn internal(what: &str, e: &dyn std::fmt::Display) -> ErrorData {
    super::failure::internal_error(what, e)
}
