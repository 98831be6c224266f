//! The pages and actions: Jobs (filters, counts by state, progress, bulk
//! retry/cancel), Job (summary, stage timeline, what it waits for, tasks and
//! events a page at a time), Task (input, output, error, attempts, log
//! lines, lineage, retry/cancel), Queues, and Workers & plugins.
//!
//! Every handler reads the engine as the viewer's tenant (Invariant 38);
//! every action takes an `admin` viewer and records its name (Invariant 39).
//! Query parameters are checked before any engine call: an unknown one or a
//! bad value is a 400 page naming it.

use super::access::{Viewer, field, parse_form};
use super::render::{self, badge, block_text, cell_text, csrf, datetime, page, progress};
use super::{EVENTS_PER_PAGE, JOBS_PER_PAGE, PageError, TASK_EVENTS, TASKS_PER_PAGE, UiState};
use crate::engine::views::{JobView, TaskView};
use crate::engine::{JobFilter, JobProgress, now_millis};
use crate::model::{EventKind, JobId, JobState, JobSummary, Millis, TaskId, TaskRecord, TaskState};
use axum::Extension;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::http::Uri;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use std::sync::Arc;

type Page = Result<Response, PageError>;

/// Most jobs one bulk action takes.
pub const MAX_BULK_JOBS: usize = 200;
/// Most dead tasks of one job a bulk retry revives.
pub const MAX_BULK_RETRIES_PER_JOB: u32 = 1000;

/// `GET /ui`: the jobs list.
pub(crate) async fn home() -> Redirect {
    Redirect::to("/ui/jobs")
}

/// Any other `/ui/…` path.
pub(crate) async fn not_found(uri: Uri) -> PageError {
    PageError::new(
        StatusCode::NOT_FOUND,
        format!(
            "there is no dashboard page at {}; start from /ui/jobs",
            uri.path()
        ),
    )
}

/// A numeric id from the path.
pub(crate) fn parse_id(entity: &str, text: &str) -> Result<i64, PageError> {
    text.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| {
            PageError::bad_request(format!(
                "{entity} id {:?} is not a positive whole number; take ids from the jobs list",
                render::cell_text(text)
            ))
        })
}

/// Query pairs, refusing any name not in `known`.
fn query_pairs(
    query: Option<&str>,
    page_name: &str,
    known: &[&str],
) -> Result<Vec<(String, String)>, PageError> {
    let pairs = parse_form(query.unwrap_or_default().as_bytes());
    for (k, _) in &pairs {
        if !known.contains(&k.as_str()) {
            return Err(PageError::bad_request(format!(
                "the {page_name} takes no parameter {:?}; it takes {}",
                cell_text(k),
                known.join(", ")
            )));
        }
    }
    // A form's empty fields mean "not set".
    Ok(pairs.into_iter().filter(|(_, v)| !v.is_empty()).collect())
}

/// The jobs list's filters, as given.
#[derive(Debug, Clone, Default)]
pub(crate) struct JobsQuery {
    pub state: Option<JobState>,
    pub name: Option<String>,
    pub created_after: Option<(String, Millis)>,
    pub created_before: Option<(String, Millis)>,
    pub before: Option<JobId>,
}

impl JobsQuery {
    pub(crate) fn parse(query: Option<&str>) -> Result<JobsQuery, PageError> {
        let pairs = query_pairs(
            query,
            "jobs list",
            &["state", "name", "created_after", "created_before", "before"],
        )?;
        let mut q = JobsQuery::default();
        for (k, v) in pairs {
            match k.as_str() {
                "state" => {
                    q.state = Some(v.parse::<JobState>().map_err(|e| {
                        PageError::bad_request(format!(
                            "filter state: {}",
                            cell_text(&e.to_string())
                        ))
                    })?)
                }
                "name" => {
                    crate::limits::check_name(&v, crate::limits::MAX_NAME_BYTES)
                        .map_err(|e| PageError::bad_request(format!("filter name {e}")))?;
                    q.name = Some(v);
                }
                "created_after" | "created_before" => {
                    let at = render::parse_datetime(&v).map_err(|e| {
                        PageError::bad_request(format!("filter {k}: {}", cell_text(&e)))
                    })?;
                    if k == "created_after" {
                        q.created_after = Some((v, at));
                    } else {
                        q.created_before = Some((v, at));
                    }
                }
                _ => q.before = Some(JobId(parse_id("before: job", &v)?)),
            }
        }
        Ok(q)
    }

    pub(crate) fn filter(&self, limit: u32) -> JobFilter {
        JobFilter {
            state: self.state,
            name: self.name.clone(),
            created_after: self.created_after.as_ref().map(|(_, at)| *at),
            created_before: self.created_before.as_ref().map(|(_, at)| *at),
            before: self.before,
            limit,
        }
    }

    /// The query string of these filters, with `state` and `before` replaced.
    fn link(&self, state: Option<JobState>, before: Option<JobId>) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        if let Some(state) = state {
            s.append_pair("state", state.as_str());
        }
        if let Some(name) = &self.name {
            s.append_pair("name", name);
        }
        if let Some((text, _)) = &self.created_after {
            s.append_pair("created_after", text);
        }
        if let Some((text, _)) = &self.created_before {
            s.append_pair("created_before", text);
        }
        if let Some(before) = before {
            s.append_pair("before", &before.0.to_string());
        }
        let query = s.finish();
        if query.is_empty() {
            "/ui/jobs".to_string()
        } else {
            format!("/ui/jobs?{query}")
        }
    }
}

/// `GET /ui/jobs`.
pub(crate) async fn jobs(
    State(state): State<Arc<UiState>>,
    Extension(viewer): Extension<Viewer>,
    RawQuery(query): RawQuery,
) -> Page {
    let q = JobsQuery::parse(query.as_deref())?;
    let engine = &state.engine;
    let filter = q.filter(JOBS_PER_PAGE + 1);
    let (jobs, counts) = tokio::join!(
        engine.list_jobs(&viewer.tenant, filter.clone()),
        engine.count_jobs(&viewer.tenant, &filter)
    );
    let mut jobs = jobs?;
    let counts = counts?;
    let more = jobs.len() > JOBS_PER_PAGE as usize;
    jobs.truncate(JOBS_PER_PAGE as usize);
    let progress = job_progress(&state, &viewer, &jobs).await?;
    let ids: Vec<String> = jobs.iter().map(|j| j.job_id.0.to_string()).collect();
    let live = format!("/ui/jobs/live?ids={}", ids.join(","));
    let total: i64 = counts.iter().map(|(_, n)| n).sum();
    let body = html! {
        h1 { "Jobs" }
        div.counts #job-counts {
            a href=(q.link(None, None)) { "all " (total) }
            @for (s, n) in &counts {
                a href=(q.link(Some(*s), None)) { (badge(s.as_str())) " " (n) }
            }
        }
        form.filters method="get" action="/ui/jobs" {
            label { "State"
                select name="state" {
                    option value="" { "any" }
                    @for s in JobState::ALL {
                        option value=(s.as_str()) selected[q.state == Some(s)] { (s.as_str()) }
                    }
                }
            }
            label { "Name (exact)" input type="text" name="name" value=[q.name.as_deref()]; }
            label { "Created from (UTC)" input type="text" name="created_after" placeholder="2026-12-03T09:00" value=[q.created_after.as_ref().map(|(t, _)| t.as_str())]; }
            label { "Created before (UTC)" input type="text" name="created_before" placeholder="2026-12-04" value=[q.created_before.as_ref().map(|(t, _)| t.as_str())]; }
            button type="submit" { "Filter" }
            a href="/ui/jobs" { "Clear" }
        }
        div hx-ext="sse" sse-connect=(live) {
            form method="post" action="/ui/jobs/bulk" {
                (csrf(&viewer))
                @if viewer.is_admin() && !jobs.is_empty() {
                    div.actions {
                        span.muted { "Selected jobs:" }
                        button type="submit" name="action" value="retry" { "Retry dead tasks" }
                        button.danger type="submit" name="action" value="cancel" { "Cancel" }
                    }
                }
                table #jobs {
                    thead { tr {
                        @if viewer.is_admin() { th {} }
                        th.num { "Id" } th { "Name" } th { "Progress" } th { "Created" } th { "Finished" }
                    } }
                    tbody {
                        @for (job, p) in jobs.iter().zip(&progress) {
                            tr.job-row data-job=(job.job_id.0) {
                                @if viewer.is_admin() {
                                    td { input type="checkbox" name="job" value=(job.job_id.0) aria-label={ "select job " (job.job_id.0) }; }
                                }
                                td.num { a href={ "/ui/jobs/" (job.job_id.0) } { (job.job_id.0) } }
                                td { a href={ "/ui/jobs/" (job.job_id.0) } { (cell_text(&job.name)) } }
                                td id={ "job-" (job.job_id.0) "-progress" } sse-swap={ "job-" (job.job_id.0) } {
                                    (progress_cell(p, None))
                                }
                                td { (datetime(job.created_at)) }
                                td { @if let Some(at) = job.finished_at { (datetime(at)) } }
                            }
                        }
                    }
                }
            }
        }
        @if jobs.is_empty() { p.muted #no-jobs { "No jobs match these filters." } }
        div.pager {
            @if q.before.is_some() { a href=(q.link(q.state, None)) { "← Newest" } }
            @if more {
                @if let Some(last) = jobs.last() {
                    a #older href=(q.link(q.state, Some(last.job_id))) { "Older →" }
                }
            }
        }
    };
    Ok(render::html(
        StatusCode::OK,
        page("Jobs", Some(&viewer), body),
    ))
}

/// Each job's progress from its stage counters, read side by side.
async fn job_progress(
    state: &UiState,
    viewer: &Viewer,
    jobs: &[JobSummary],
) -> Result<Vec<JobProgress>, PageError> {
    let reads = jobs
        .iter()
        .map(|j| state.engine.progress_counters(&viewer.tenant, j.job_id));
    let mut out = Vec::with_capacity(jobs.len());
    for p in futures_util::future::join_all(reads).await {
        out.push(p?);
    }
    Ok(out)
}

/// A job's state, progress bar and (when known) ETA: the cell the live
/// stream replaces.
pub(crate) fn progress_cell(p: &JobProgress, eta_seconds: Option<f64>) -> Markup {
    html! {
        (badge(p.job.state.as_str()))
        " "
        (progress(p.done, p.total, p.percent))
        @if let Some(eta) = eta_seconds.filter(|_| !p.job.state.is_terminal()) {
            " " span.muted.eta { "ETA " (render::duration((eta * 1000.0) as Millis)) }
        }
    }
}

/// `POST /ui/jobs/bulk`: retry the dead tasks of, or cancel, the selected jobs.
pub(crate) async fn bulk(
    State(state): State<Arc<UiState>>,
    Extension(viewer): Extension<Viewer>,
    body: axum::body::Bytes,
) -> Page {
    let form = parse_form(&body);
    let action = field(&form, "action").unwrap_or_default();
    let what = match action {
        "retry" => "retry tasks",
        "cancel" => "cancel jobs",
        other => {
            return Err(PageError::bad_request(format!(
                "unknown bulk action {:?}: use retry or cancel",
                cell_text(other)
            )));
        }
    };
    viewer.require_admin(what)?;
    let mut ids = Vec::new();
    for (k, v) in &form {
        if k == "job" {
            ids.push(JobId(parse_id("job", v)?));
        }
    }
    if ids.is_empty() {
        return Err(PageError::bad_request(
            "no job was selected: tick the jobs to act on, then press the button",
        ));
    }
    if ids.len() > MAX_BULK_JOBS {
        return Err(PageError::bad_request(format!(
            "{} jobs were selected; one action takes at most {MAX_BULK_JOBS}",
            ids.len()
        )));
    }
    let by = Some(viewer.name.clone());
    let mut results: Vec<(JobId, bool, String)> = Vec::new();
    for job in ids {
        let outcome = if action == "cancel" {
            state
                .engine
                .cancel_as(&viewer.tenant, job, by.clone())
                .await
                .map(|s| format!("job is {s}"))
        } else {
            retry_dead(&state, &viewer, job).await
        };
        match outcome {
            Ok(text) => results.push((job, true, text)),
            Err(e) => {
                let e = PageError::from(e);
                results.push((job, false, e.message));
            }
        }
    }
    let body = html! {
        h1 { "Bulk " (action) }
        table #bulk-results {
            thead { tr { th.num { "Job" } th { "Result" } } }
            tbody {
                @for (job, ok, text) in &results {
                    tr {
                        td.num { a href={ "/ui/jobs/" (job.0) } { (job.0) } }
                        td.error[!ok] { (text) }
                    }
                }
            }
        }
        p { a href="/ui/jobs" { "Back to the jobs" } }
    };
    Ok(render::html(
        StatusCode::OK,
        page("Bulk action", Some(&viewer), body),
    ))
}

async fn retry_dead(
    state: &UiState,
    viewer: &Viewer,
    job: JobId,
) -> Result<String, crate::engine::EngineError> {
    let dead = state
        .engine
        .dead_tasks(&viewer.tenant, job, MAX_BULK_RETRIES_PER_JOB)
        .await?;
    if dead.is_empty() {
        // Tell an unknown job from one with nothing to retry.
        state.engine.progress_counters(&viewer.tenant, job).await?;
        return Ok("no dead task to retry".to_string());
    }
    for task in &dead {
        state
            .engine
            .retry_as(&viewer.tenant, task.task_id, Some(viewer.name.clone()))
            .await?;
    }
    Ok(format!("{} dead tasks retried", dead.len()))
}

/// `GET /ui/jobs/{id}/spec`: the job's spec as submitted (what `lockstep
/// status JOB --spec` prints), as JSON, streamed a stored part at a time
/// ([`crate::engine::Engine::spec`]); another tenant's or an unknown job is
/// the usual "not found" page.
pub(crate) async fn job_spec(
    State(state): State<Arc<UiState>>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
) -> Page {
    let job = JobId(parse_id("job", &id)?);
    let parts = state.engine.spec(&viewer.tenant, job).await?;
    // The status is sent by then: a failure can only cut the body short.
    let body = futures_util::StreamExt::map(parts, |part| {
        part.map(bytes::Bytes::from).map_err(std::io::Error::other)
    });
    let mut response = axum::body::Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    if let Ok(disposition) =
        axum::http::HeaderValue::from_str(&format!("inline; filename=\"job-{}.json\"", job.0))
    {
        headers.insert(axum::http::header::CONTENT_DISPOSITION, disposition);
    }
    Ok(response)
}

/// `GET /ui/jobs/{id}`.
pub(crate) async fn job(
    State(state): State<Arc<UiState>>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Page {
    let job = JobId(parse_id("job", &id)?);
    let pairs = query_pairs(
        query.as_deref(),
        "job page",
        &["tasks_after", "events_after"],
    )?;
    let mut tasks_after = None;
    let mut events_after = None;
    for (k, v) in &pairs {
        if k == "tasks_after" {
            tasks_after = Some(TaskId(parse_id("tasks_after: task", v)?));
        } else {
            events_after = Some(parse_id("events_after: event", v)?);
        }
    }
    let engine = &state.engine;
    let (progress, waiting) = engine.progress_and_waiting(&viewer.tenant, job).await?;
    let view = JobView::from_progress(&progress).waiting_for(waiting);
    let (tasks, events) = tokio::join!(
        engine.job_tasks_page(&viewer.tenant, job, tasks_after, TASKS_PER_PAGE + 1),
        engine.events(&viewer.tenant, job, events_after, EVENTS_PER_PAGE + 1)
    );
    let mut tasks = tasks?;
    let mut events = events?;
    let more_tasks = tasks.len() > TASKS_PER_PAGE as usize;
    tasks.truncate(TASKS_PER_PAGE as usize);
    let more_events = events.len() > EVENTS_PER_PAGE as usize;
    events.truncate(EVENTS_PER_PAGE as usize);
    let link = |tasks_after: Option<i64>, events_after: Option<i64>| {
        let mut s = form_urlencoded::Serializer::new(String::new());
        if let Some(t) = tasks_after {
            s.append_pair("tasks_after", &t.to_string());
        }
        if let Some(e) = events_after {
            s.append_pair("events_after", &e.to_string());
        }
        let q = s.finish();
        if q.is_empty() {
            format!("/ui/jobs/{}", job.0)
        } else {
            format!("/ui/jobs/{}?{q}", job.0)
        }
    };
    let running = progress.job.state == JobState::Running;
    let body = html! {
        h1 { "Job " (job.0) " · " (cell_text(&progress.job.name)) }
        p { a #job-spec href={ "/ui/jobs/" (job.0) "/spec" } { "The job as submitted (JSON)" } }
        @if running {
            div hx-ext="sse" sse-connect={ "/ui/jobs/" (job.0) "/live" } {
                div #job-summary sse-swap="summary" { (job_summary(&viewer, &view, &progress)) }
            }
        } @else {
            div #job-summary { (job_summary(&viewer, &view, &progress)) }
        }
        h2 #tasks-heading { "Tasks" @if let Some(t) = tasks_after { " after " (t.0) } }
        table #tasks {
            thead { tr {
                th.num { "Id" } th { "Stage" } th { "Key" } th { "Handler" } th { "State" }
                th.num { "Attempt" } th { "Error" }
            } }
            tbody {
                @for t in &tasks {
                    tr.task-row {
                        td.num { a href={ "/ui/tasks/" (t.task_id.0) } { (t.task_id.0) } }
                        td { (cell_text(&t.stage_name)) }
                        td { @if let Some(k) = &t.key { (cell_text(k)) } }
                        td { (cell_text(&t.handler)) }
                        td { (badge(t.state.as_str())) }
                        td.num { (t.attempt) "/" (t.max_attempts) }
                        td { @if let Some(e) = &t.error { (cell_text(e)) } }
                    }
                }
            }
        }
        div.pager {
            @if tasks_after.is_some() { a href=(link(None, events_after)) { "← First tasks" } }
            @if more_tasks {
                @if let Some(last) = tasks.last() {
                    a #more-tasks href=(link(Some(last.task_id.0), events_after)) { "More tasks →" }
                }
            }
        }
        h2 { "Events" @if let Some(e) = events_after { " after " (e) } }
        table #events {
            thead { tr { th.num { "Id" } th { "At (UTC)" } th { "Kind" } th.num { "Task" } th { "Detail" } } }
            tbody {
                @for e in &events {
                    tr.event-row {
                        td.num { (e.id) }
                        td { (datetime(e.at)) }
                        td { (e.kind.as_str()) }
                        td.num { @if let Some(t) = e.task_id { a href={ "/ui/tasks/" (t.0) } { (t.0) } } }
                        td { @if let Some(d) = &e.detail { (cell_text(d)) } }
                    }
                }
            }
        }
        div.pager {
            @if events_after.is_some() { a href=(link(tasks_after.map(|t| t.0), None)) { "← First events" } }
            @if more_events {
                @if let Some(last) = events.last() {
                    a #more-events href=(link(tasks_after.map(|t| t.0), Some(last.id))) { "More events →" }
                }
            }
        }
    };
    Ok(render::html(
        StatusCode::OK,
        page(&format!("Job {}", job.0), Some(&viewer), body),
    ))
}

/// The part of the job page the live stream replaces: facts, counts,
/// what it waits for, the stage timeline, and the cancel button.
pub(crate) fn job_summary(viewer: &Viewer, view: &JobView, p: &JobProgress) -> Markup {
    html! {
        dl.facts {
            dt { "State" } dd #job-state { (badge(&view.state)) }
            dt { "Progress" } dd #job-progress { (progress(view.done, view.total, view.percent)) }
            dt { "Throughput" } dd { (format!("{:.1}", view.throughput_per_s)) " tasks/s"
                @if let Some(eta) = view.eta_seconds.filter(|_| view.state == "running") {
                    " · ETA " (render::duration((eta * 1000.0) as Millis))
                }
            }
            dt { "Created" } dd { (datetime(view.created_at)) " UTC" }
            @if let Some(at) = view.finished_at {
                dt { "Finished" } dd { (datetime(at)) " UTC (after " (render::duration(at - view.created_at)) ")" }
            }
            @if let Some(e) = &view.error {
                dt { "Error" } dd.error { (block_text(e)) }
            }
        }
        div.counts #task-counts {
            @for (state, n) in &view.counts {
                span { (badge(state)) " " (n) }
            }
        }
        @if !view.waiting_for.is_empty() {
            div #waiting-for {
                h2 { "Waiting for" }
                ul {
                    @for w in &view.waiting_for {
                        li {
                            (w.executor) " " code { (cell_text(&w.handler)) }
                            @match w.registered_here {
                                Some(false) => { " — no plugin in this server registers it" }
                                Some(true) => { " — registered here, waiting for a free slot" }
                                None => { @if w.executor == "agent" { " — an agent must claim it (claim_task)" } }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Stages" }
        (timeline(p))
        table #stages {
            thead { tr { th { "Stage" } th { "State" } th { "Progress" } th { "Opened" } th { "Took" } } }
            tbody {
                @for (status, stage) in p.job.stages.iter().zip(&view.stages) {
                    tr {
                        td { (cell_text(&stage.name)) }
                        td { (badge(&stage.state)) }
                        td { (progress(stage.done, stage.total, stage.percent)) }
                        td { @if let Some(at) = status.opened_at { (datetime(at)) } }
                        td { @if let (Some(open), Some(close)) = (status.opened_at, status.closed_at) { (render::duration(close - open)) } }
                    }
                }
            }
        }
        @if viewer.is_admin() && view.state == "running" {
            form.actions method="post" action={ "/ui/jobs/" (view.job_id) "/cancel" } {
                (csrf(viewer))
                button.danger #cancel-job type="submit" { "Cancel job" }
            }
        }
    }
}

/// The stages on one time axis, from the job's creation to its end (or now).
fn timeline(p: &JobProgress) -> Markup {
    const WIDTH: f64 = 1000.0;
    const ROW: usize = 22;
    let start = p.job.created_at;
    let end = p.job.finished_at.unwrap_or_else(now_millis).max(start + 1);
    let span = (end - start) as f64;
    let x = |at: Millis| ((at - start).max(0) as f64 / span * WIDTH).min(WIDTH);
    let height = ROW * p.job.stages.len().max(1) + 4;
    html! {
        svg.timeline #timeline viewBox={ "0 0 1000 " (height) } preserveAspectRatio="none" role="img" aria-label="stage timeline" {
            @for (i, s) in p.job.stages.iter().enumerate() {
                @let y = i * ROW + 2;
                @if let Some(open) = s.opened_at {
                    @let x0 = x(open);
                    @let x1 = x(s.closed_at.unwrap_or(end));
                    rect class=(s.state.as_str()) x=(format!("{x0:.1}")) y=(y) width=(format!("{:.1}", (x1 - x0).max(2.0))) height=(ROW - 4) {}
                    text x=(format!("{:.1}", (x0 + 4.0).min(WIDTH - 200.0))) y=(y + 13) { (cell_text(&s.name)) }
                } @else {
                    rect class="waiting" x="0" y=(y) width="1000" height=(ROW - 4) {}
                    text x="4" y=(y + 13) { (cell_text(&s.name)) " (waiting)" }
                }
            }
        }
    }
}

/// `POST /ui/jobs/{id}/cancel`.
pub(crate) async fn cancel_job(
    State(state): State<Arc<UiState>>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
) -> Page {
    let job = JobId(parse_id("job", &id)?);
    viewer.require_admin("cancel jobs")?;
    state
        .engine
        .cancel_as(&viewer.tenant, job, Some(viewer.name.clone()))
        .await?;
    Ok(Redirect::to(&format!("/ui/jobs/{}", job.0)).into_response())
}

/// `GET /ui/tasks/{id}`.
pub(crate) async fn task(
    State(state): State<Arc<UiState>>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
) -> Page {
    let task = TaskId(parse_id("task", &id)?);
    let engine = &state.engine;
    let record = engine.task(&viewer.tenant, task).await?;
    let (events, job) = tokio::join!(
        engine.task_events(&viewer.tenant, task, TASK_EVENTS),
        engine.progress_counters(&viewer.tenant, record.job_id)
    );
    let events = events?;
    let job = job?;
    let view = TaskView::new(&record, &events)?;
    let body = task_body(&viewer, &record, &view, &events, &job);
    Ok(render::html(
        StatusCode::OK,
        page(&format!("Task {}", task.0), Some(&viewer), body),
    ))
}

fn pretty(json: &serde_json::Value) -> String {
    serde_json::to_string_pretty(json).unwrap_or_else(|_| json.to_string())
}

fn task_body(
    viewer: &Viewer,
    record: &TaskRecord,
    view: &TaskView,
    events: &[crate::model::Event],
    job: &JobProgress,
) -> Markup {
    let revivable = matches!(record.state, TaskState::Dead | TaskState::Cancelled);
    let logs: Vec<&crate::model::Event> = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::TaskLog | EventKind::TaskNote))
        .collect();
    html! {
        h1 { "Task " (view.task_id) " · " (cell_text(&view.handler)) }
        dl.facts {
            dt { "State" } dd #task-state { (badge(&view.state)) }
            dt { "Job" } dd { a #job-link href={ "/ui/jobs/" (view.job_id) } { (view.job_id) " · " (cell_text(&job.job.name)) } " " (badge(job.job.state.as_str())) }
            dt { "Stage" } dd { (cell_text(&view.stage)) }
            @if let Some(k) = &view.key { dt { "Key" } dd { (cell_text(k)) } }
            dt { "Executor" } dd { (view.executor) }
            dt { "Attempt" } dd { (view.attempt) " of " (view.max_attempts) }
            @if let Some(t) = &view.title { dt { "Title" } dd { (cell_text(t)) } }
            @if let Some(at) = view.lease_expires_at { dt { "Lease until" } dd { (datetime(at)) " UTC" } }
            dt { "Created" } dd { (datetime(view.created_at)) " UTC" }
            @if let Some(at) = view.finished_at { dt { "Finished" } dd { (datetime(at)) " UTC" } }
            dt { "Lineage" } dd #lineage {
                @match record.parent_task {
                    Some(parent) => { "spawned by task " a #parent-link href={ "/ui/tasks/" (parent.0) } { (parent.0) } }
                    None => { "submitted with the job" }
                }
            }
        }
        @if viewer.is_admin() {
            div.actions {
                @if revivable {
                    form method="post" action={ "/ui/tasks/" (view.task_id) "/retry" } {
                        (csrf(viewer))
                        button #retry type="submit" { "Retry" }
                    }
                }
                @if job.job.state == JobState::Running {
                    form method="post" action={ "/ui/jobs/" (view.job_id) "/cancel" } {
                        (csrf(viewer))
                        button.danger #cancel-job type="submit" { "Cancel job" }
                    }
                }
            }
        } @else {
            p.muted #read-only { "Your token is read-only: it cannot retry or cancel." }
        }
        @if let Some(e) = &view.error {
            h2 { "Error" }
            pre.error #task-error { (block_text(e)) }
        }
        @if let Some(i) = &view.instructions {
            h2 { "Instructions" }
            pre { (block_text(i)) }
        }
        h2 { "Input" }
        pre #task-input { (pretty(&view.input)) }
        @if let Some(o) = &view.output {
            h2 { "Output" }
            pre #task-output { (pretty(o)) }
        }
        h2 { "Attempts" }
        (attempts(record, events))
        h2 { "Log lines" }
        @if logs.is_empty() {
            p.muted #no-logs { "The handler logged nothing." }
        } @else {
            pre #task-logs {
                @for e in &logs {
                    (datetime(e.at)) "  " (block_text(e.detail.as_deref().unwrap_or_default())) "\n"
                }
            }
        }
        h2 { "Events (latest " (TASK_EVENTS) ")" }
        table #task-events {
            thead { tr { th { "At (UTC)" } th { "Kind" } th { "Detail" } } }
            tbody {
                @for e in events {
                    tr {
                        td { (datetime(e.at)) }
                        td { (e.kind.as_str()) }
                        td { @if let Some(d) = &e.detail { (cell_text(d)) } }
                    }
                }
            }
        }
    }
}

/// One row per attempt: when it was claimed, by whom and how it ended
/// (Invariant 42). An ended attempt is told by its end event (attempt,
/// worker, claim time); the running one by the task row. Databases from
/// before migration 0009 logged a `task_claimed` event per claim and ended
/// attempts without claim times: such an end closes the open claim before it.
fn attempts(record: &TaskRecord, events: &[crate::model::Event]) -> Markup {
    struct Attempt {
        number: Option<i32>,
        claimed: Millis,
        worker: Option<String>,
        outcome: Option<(EventKind, Millis, Option<String>)>,
    }
    let open = |rows: &[Attempt], number: Option<i32>| {
        rows.last()
            .filter(|a| a.outcome.is_none() && (a.number.is_none() || a.number == number))
            .is_some()
    };
    let mut rows: Vec<Attempt> = Vec::new();
    // The latest end that named no attempt and closed none (a cancellation).
    let mut unpaired: Option<(EventKind, Millis, Option<String>)> = None;
    for e in events {
        match e.kind {
            EventKind::TaskClaimed => rows.push(Attempt {
                number: e.attempt,
                claimed: e.at,
                worker: e.worker.clone(),
                outcome: None,
            }),
            EventKind::TaskSucceeded
            | EventKind::TaskFailed
            | EventKind::TaskRetried
            | EventKind::TaskDead
            | EventKind::TaskCancelled
            | EventKind::TaskSkipped => {
                let outcome = (e.kind, e.at, e.detail.clone());
                if open(&rows, e.attempt) {
                    if let Some(last) = rows.last_mut() {
                        last.outcome = Some(outcome);
                        last.number = last.number.or(e.attempt);
                        last.worker = last.worker.take().or_else(|| e.worker.clone());
                    }
                } else if let Some(claimed) = e.claimed_at {
                    rows.push(Attempt {
                        number: e.attempt,
                        claimed,
                        worker: e.worker.clone(),
                        outcome: Some(outcome),
                    });
                } else {
                    unpaired = Some(outcome);
                }
            }
            _ => {}
        }
    }
    // The latest attempt, from the row, unless an event told it already.
    let current = Some(record.attempt);
    if let Some(claimed) = record.claimed_at
        && !rows.iter().any(|a| a.number == current)
        && !open(&rows, current)
    {
        let outcome = match record.state {
            TaskState::Running => None,
            _ => unpaired.filter(|(_, at, _)| *at >= claimed),
        };
        rows.push(Attempt {
            number: current,
            claimed,
            worker: record.worker.clone(),
            outcome,
        });
    }
    html! {
        @if rows.is_empty() {
            p.muted { "Not claimed yet." }
        } @else {
            table #attempts {
                thead { tr { th.num { "#" } th { "Claimed (UTC)" } th { "Worker" } th { "Outcome" } th { "Took" } th { "Detail" } } }
                tbody {
                    @for (n, a) in rows.iter().enumerate() {
                        tr {
                            td.num { (a.number.map_or(n as i64 + 1, i64::from)) }
                            td { (datetime(a.claimed)) }
                            td { @if let Some(w) = &a.worker { (cell_text(w)) } }
                            @match &a.outcome {
                                Some((kind, at, detail)) => {
                                    td { (kind.as_str()) }
                                    td { (render::duration(at - a.claimed)) }
                                    td { @if let Some(d) = detail { (cell_text(d)) } }
                                }
                                None => { td { "running" } td {} td {} }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `POST /ui/tasks/{id}/retry`.
pub(crate) async fn retry_task(
    State(state): State<Arc<UiState>>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
) -> Page {
    let task = TaskId(parse_id("task", &id)?);
    viewer.require_admin("retry tasks")?;
    state
        .engine
        .retry_as(&viewer.tenant, task, Some(viewer.name.clone()))
        .await?;
    Ok(Redirect::to(&format!("/ui/tasks/{}", task.0)).into_response())
}

/// `GET /ui/queues`: the tenant's tasks by readiness and jobs by state.
pub(crate) async fn queues(
    State(state): State<Arc<UiState>>,
    Extension(viewer): Extension<Viewer>,
) -> Page {
    let all = JobFilter::default();
    let (depth, by_handler, counts) = tokio::join!(
        state.engine.queue_depth(&viewer.tenant),
        state.engine.queue_by_handler(&viewer.tenant),
        state.engine.count_jobs(&viewer.tenant, &all)
    );
    let depth = depth?;
    let by_handler = by_handler?;
    let counts = counts?;
    let here = state.engine.plugins().handler_names();
    let body = html! {
        h1 { "Queues" }
        table #queue-depth {
            thead { tr { th { "Tasks" } th.num { "Now" } } }
            tbody {
                tr { td { (badge("pending")) " ready to run" } td.num { (depth.pending) } }
                tr { td { (badge("running")) " running" } td.num { (depth.running) } }
                tr { td { (badge("blocked")) " waiting for a dependency or an earlier stage" } td.num { (depth.blocked) } }
            }
        }
        h2 { "By handler" }
        @if by_handler.is_empty() {
            p.muted #no-queues { "No task is waiting or running." }
        } @else {
            table #queue-by-handler {
                thead { tr { th { "Executor" } th { "Handler" } th.num { "Ready" } th.num { "Running" } th.num { "Waiting" } th { "Served here" } } }
                tbody {
                    @for h in &by_handler {
                        tr {
                            td { (h.executor.as_str()) }
                            td { code { (cell_text(&h.handler)) } }
                            td.num { (h.depth.pending) }
                            td.num { (h.depth.running) }
                            td.num { (h.depth.blocked) }
                            td {
                                @if h.executor == crate::model::Executor::Wasm {
                                    @if here.contains(&h.handler) { "yes" } @else { span.error { "no plugin in this server" } }
                                } @else { span.muted { "—" } }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Jobs by state" }
        table #jobs-by-state {
            thead { tr { th { "State" } th.num { "Jobs" } } }
            tbody {
                @for (s, n) in &counts {
                    tr { td { a href={ "/ui/jobs?state=" (s.as_str()) } { (badge(s.as_str())) } } td.num { (n) } }
                }
            }
        }
    };
    Ok(render::html(
        StatusCode::OK,
        page("Queues", Some(&viewer), body),
    ))
}

/// `GET /ui/plugins`: this server's worker slots and its loaded plugins.
pub(crate) async fn plugins(
    State(state): State<Arc<UiState>>,
    Extension(viewer): Extension<Viewer>,
) -> Page {
    let host = state.engine.plugins();
    let listings = host.describe_all();
    let body = html! {
        h1 { "Workers & plugins" }
        h2 { "This server" }
        dl.facts {
            dt { "Process" } dd { "pid " (std::process::id()) }
            @if let Some(slots) = state.config.worker_slots {
                dt { "Worker slots" } dd #worker-slots { (slots) }
            }
            dt { "Plugin directories" } dd { (host.dirs_display()) }
        }
        h2 { "Handlers" }
        table #handlers {
            thead { tr { th { "Handler" } th { "Description" } th { "Plugin" } th { "sha256" } th { "Signed by" } th { "Grants" } th { "Input schema" } } }
            tbody {
                @for h in &listings {
                    tr {
                        td { code { (cell_text(&h.name)) } }
                        td { (cell_text(&h.description)) }
                        td { (h.plugin.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()) }
                        td { code { (h.sha256_short()) } }
                        td { @if let Some(s) = &h.signer { (cell_text(s)) } @else { span.muted { "unsigned" } } }
                        td { (cell_text(&h.grants_summary)) }
                        td { details { summary { "schema" } pre { (pretty(&h.input_schema)) } } }
                    }
                }
            }
        }
        @if listings.is_empty() { p.muted { "No plugin is loaded in this server." } }
    };
    Ok(render::html(
        StatusCode::OK,
        page("Workers & plugins", Some(&viewer), body),
    ))
}
