//! Read-only queries of jobs, stages, tasks and events, written once for
//! both databases. Each filters by tenant through an index; another tenant's
//! id answers [`StoreError::NotFound`]. Reads of several statements that must
//! agree (`get_job`'s counts and states) are run by the caller inside one
//! snapshot (a read transaction).

use super::advance;
use super::codec::{
    job_not_found, parse_event_kind, parse_executor, parse_job_state, parse_on_failure,
    parse_stage_state, parse_task_state, ready_handlers_from_rows, task_not_found,
};
use super::sql::{Db, Sql};
use super::{
    CountJobs, DeadTasks, GetJob, GetTask, JobEvents, JobSpecPart, ListJobs, RATE_WINDOW_MS,
    ReadyHandler, ReadyHandlers, RecentCompletions, StageResults, StoreError,
};
use crate::model::{
    Event, JobId, JobState, JobStatus, JobSummary, Millis, StageStatus, TaskId, TaskRecord,
    TaskState, TenantId,
};
use std::collections::HashMap;

const JOB: Sql = Sql::both(
    "SELECT name, state, created_at, finished_at, error FROM jobs
     WHERE id = $1 AND tenant_id = $2",
);
const STAGES: Sql = Sql::both(
    "SELECT position, name, state, on_failure, total, remaining, opened_at, closed_at
     FROM stages WHERE job_id = $1 AND tenant_id = $2 ORDER BY position",
);
// Tenant checked on the job row, so the tasks side is a scan of the covering
// (job_id, stage_position, state) index alone, which on SQLite holds no
// running task (migration 0009; PostgreSQL's does since 0017, and passes
// them over by their `state`). Running tasks are not counted: a stage's
// `total` is its task count (spawns add to it in their own transaction), so
// in one snapshot running = total − every other state. A second branch for them through
// `tasks_running_leases` cost PostgreSQL a third of `get_job`'s time, most of
// it planning (README, issue 13).
const COUNTS: Sql = Sql::both(
    "SELECT t.stage_position, t.state, count(*)
     FROM jobs j JOIN tasks t ON t.job_id = j.id
     WHERE j.id = $1 AND j.tenant_id = $2 AND t.state <> 'running'
     GROUP BY t.stage_position, t.state",
);

/// A job with its stages and task counts by state. Run it in a snapshot.
pub(crate) async fn get_job(db: &mut Db<'_>, p: &GetJob) -> Result<JobStatus, StoreError> {
    let job: Option<JobRow> = db
        .fetch_optional(db.query(&JOB).bind(p.job.0).bind(&p.tenant.0))
        .await?;
    let job = job.ok_or_else(|| job_not_found(p.job))?;
    let stages: Vec<StageRow> = db
        .fetch_all(db.query(&STAGES).bind(p.job.0).bind(&p.tenant.0))
        .await?;
    let counts: Vec<(i32, String, i64)> = db
        .fetch_all(db.query(&COUNTS).bind(p.job.0).bind(&p.tenant.0))
        .await?;

    let mut by_stage: HashMap<(i32, TaskState), i64> = HashMap::new();
    let mut counted: HashMap<i32, i64> = HashMap::new();
    for (position, state, n) in counts {
        by_stage.insert((position, parse_task_state(&state)?), n);
        *counted.entry(position).or_default() += n;
    }
    for s in &stages {
        let running = s.total - counted.get(&s.position).copied().unwrap_or(0);
        if running < 0 {
            return Err(StoreError::Corrupt(format!(
                "stage {} of job {} total: {} is fewer than the {} tasks stored in it",
                s.position,
                p.job.0,
                s.total,
                counted.get(&s.position).copied().unwrap_or(0),
            )));
        }
        by_stage.insert((s.position, TaskState::Running), running);
    }
    let stages = stages
        .into_iter()
        .map(|s| {
            Ok(StageStatus {
                position: s.position,
                state: parse_stage_state(&s.state)?,
                on_failure: parse_on_failure(&s.on_failure)?,
                total: s.total,
                remaining: s.remaining,
                counts: TaskState::ALL
                    .iter()
                    .map(|t| (*t, by_stage.get(&(s.position, *t)).copied().unwrap_or(0)))
                    .collect(),
                opened_at: s.opened_at,
                closed_at: s.closed_at,
                name: s.name,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(JobStatus {
        job_id: p.job,
        tenant: p.tenant.clone(),
        name: job.name,
        state: parse_job_state(&job.state)?,
        created_at: job.created_at,
        finished_at: job.finished_at,
        error: job.error,
        stages,
    })
}

#[derive(sqlx::FromRow)]
struct JobRow {
    name: String,
    state: String,
    created_at: i64,
    finished_at: Option<i64>,
    error: Option<String>,
}

#[derive(sqlx::FromRow)]
struct StageRow {
    position: i32,
    name: String,
    state: String,
    on_failure: String,
    total: i64,
    remaining: i64,
    opened_at: Option<i64>,
    closed_at: Option<i64>,
}

/// An event row as `JOB_EVENTS` and `TASK_EVENTS` select it.
#[derive(sqlx::FromRow)]
pub(crate) struct EventRow {
    pub id: i64,
    pub task_id: Option<i64>,
    pub kind: String,
    pub stage_position: Option<i32>,
    pub detail: Option<String>,
    pub at: i64,
    pub attempt: Option<i32>,
    pub worker: Option<String>,
    pub claimed_at: Option<i64>,
}

impl EventRow {
    pub(crate) fn into_event(self, job: JobId) -> Result<Event, StoreError> {
        Ok(Event {
            id: self.id,
            job_id: job,
            task_id: self.task_id.map(TaskId),
            kind: parse_event_kind(&self.kind)?,
            stage_position: self.stage_position,
            detail: self.detail,
            at: self.at,
            attempt: self.attempt,
            worker: self.worker,
            claimed_at: self.claimed_at,
        })
    }
}

const LIST_JOBS: Sql = Sql::both(
    "SELECT id, name, state, created_at, finished_at FROM jobs
     WHERE tenant_id = $1
       AND ($2 IS NULL OR state = $2)
       AND ($3 IS NULL OR name = $3)
       AND ($4 IS NULL OR created_at >= $4)
       AND ($5 IS NULL OR created_at < $5)
       AND ($6 IS NULL OR id < $6)
     ORDER BY id DESC
     LIMIT $7",
);

pub(crate) async fn list_jobs(
    db: &mut Db<'_>,
    p: &ListJobs,
) -> Result<Vec<JobSummary>, StoreError> {
    let rows: Vec<(i64, String, String, i64, Option<i64>)> = db
        .fetch_all(
            db.query(&LIST_JOBS)
                .bind(&p.tenant.0)
                .bind(p.state.map(JobState::as_str))
                .bind(p.name.as_deref())
                .bind(p.created_after)
                .bind(p.created_before)
                .bind(p.before_id.map(|j| j.0))
                .bind(i64::from(p.limit)),
        )
        .await?;
    rows.into_iter()
        .map(|(id, name, state, created_at, finished_at)| {
            Ok(JobSummary {
                job_id: JobId(id),
                name,
                state: parse_job_state(&state)?,
                created_at,
                finished_at,
            })
        })
        .collect()
}

const COUNT_JOBS: Sql = Sql::both(
    "SELECT state, count(*) FROM jobs
     WHERE tenant_id = $1
       AND ($2 IS NULL OR name = $2)
       AND ($3 IS NULL OR created_at >= $3)
       AND ($4 IS NULL OR created_at < $4)
     GROUP BY state",
);

pub(crate) async fn count_jobs(
    db: &mut Db<'_>,
    p: &CountJobs,
) -> Result<Vec<(JobState, i64)>, StoreError> {
    let rows: Vec<(String, i64)> = db
        .fetch_all(
            db.query(&COUNT_JOBS)
                .bind(&p.tenant.0)
                .bind(p.name.as_deref())
                .bind(p.created_after)
                .bind(p.created_before),
        )
        .await?;
    let mut counts: Vec<(JobState, i64)> = JobState::ALL.iter().map(|s| (*s, 0)).collect();
    for (state, n) in rows {
        let state = parse_job_state(&state)?;
        if let Some(slot) = counts.iter_mut().find(|(s, _)| *s == state) {
            slot.1 = n;
        }
    }
    Ok(counts)
}

/// The columns [`TaskRow`] reads, for `FROM tasks t JOIN stages s` (a macro
/// so that statements stay string constants).
macro_rules! task_columns {
    () => {
        "t.id, t.job_id, t.stage_position, s.name AS stage_name, t.handler, t.executor,
         t.key, t.state, t.attempt, t.max_attempts, t.input_json, t.output_json, t.error,
         t.parent_task_id, t.agent_json, t.lease_expires_at, t.worker, t.claimed_at,
         t.run_after, t.created_at, t.finished_at"
    };
}
pub(crate) use task_columns;

/// A task row as [`task_columns`] selects it.
#[derive(sqlx::FromRow)]
pub(crate) struct TaskRow {
    id: i64,
    job_id: i64,
    stage_position: i32,
    stage_name: String,
    handler: String,
    executor: String,
    key: Option<String>,
    state: String,
    attempt: i32,
    max_attempts: i32,
    input_json: String,
    output_json: Option<String>,
    error: Option<String>,
    parent_task_id: Option<i64>,
    agent_json: Option<String>,
    lease_expires_at: Option<i64>,
    worker: Option<String>,
    claimed_at: Option<i64>,
    run_after: i64,
    created_at: i64,
    finished_at: Option<i64>,
}

impl TaskRow {
    pub(crate) fn into_record(self) -> Result<TaskRecord, StoreError> {
        Ok(TaskRecord {
            task_id: TaskId(self.id),
            job_id: JobId(self.job_id),
            stage_position: self.stage_position,
            stage_name: self.stage_name,
            handler: self.handler,
            executor: parse_executor(&self.executor)?,
            key: self.key,
            state: parse_task_state(&self.state)?,
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            input_json: self.input_json,
            output_json: self.output_json,
            error: self.error,
            parent_task: self.parent_task_id.map(TaskId),
            agent_json: self.agent_json,
            lease_expires_at: self.lease_expires_at,
            worker: self.worker,
            claimed_at: self.claimed_at,
            run_after: self.run_after,
            created_at: self.created_at,
            finished_at: self.finished_at,
        })
    }
}

const TASK: Sql = Sql::both(concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks t
     JOIN stages s ON s.job_id = t.job_id AND s.position = t.stage_position
     WHERE t.id = $1 AND t.tenant_id = $2"
));

const DEAD_TASKS: Sql = Sql::both(concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks t
     JOIN stages s ON s.job_id = t.job_id AND s.position = t.stage_position
     WHERE t.job_id = $1 AND t.tenant_id = $2 AND t.state = 'dead' AND t.state <> 'running'
     ORDER BY t.id
     LIMIT $3"
));

/// The first dead tasks of a job, by id. An unknown job has none.
pub(crate) async fn dead_tasks(
    db: &mut Db<'_>,
    p: &DeadTasks,
) -> Result<Vec<TaskRecord>, StoreError> {
    let rows: Vec<TaskRow> = db
        .fetch_all(
            db.query(&DEAD_TASKS)
                .bind(p.job.0)
                .bind(&p.tenant.0)
                .bind(i64::from(p.limit)),
        )
        .await?;
    rows.into_iter().map(TaskRow::into_record).collect()
}

pub(crate) async fn get_task(db: &mut Db<'_>, p: &GetTask) -> Result<TaskRecord, StoreError> {
    let row: Option<TaskRow> = db
        .fetch_optional(db.query(&TASK).bind(p.task.0).bind(&p.tenant.0))
        .await?;
    row.ok_or_else(|| task_not_found(p.task))?.into_record()
}

const JOB_EVENTS: Sql = Sql::both(
    "SELECT id, task_id, kind, stage_position, detail, at, attempt, worker, claimed_at
     FROM events
     WHERE job_id = $1 AND tenant_id = $2 AND ($3 IS NULL OR id > $3)
     ORDER BY id
     LIMIT $4",
);

pub(crate) async fn job_events(db: &mut Db<'_>, p: &JobEvents) -> Result<Vec<Event>, StoreError> {
    job_exists(db, &p.tenant, p.job).await?;
    let rows: Vec<EventRow> = db
        .fetch_all(
            db.query(&JOB_EVENTS)
                .bind(p.job.0)
                .bind(&p.tenant.0)
                .bind(p.after_id)
                .bind(i64::from(p.limit)),
        )
        .await?;
    rows.into_iter().map(|e| e.into_event(p.job)).collect()
}

const STAGE_POSITION: Sql =
    Sql::both("SELECT position FROM stages WHERE job_id = $1 AND tenant_id = $2 AND name = $3");
// A page is chosen by the outputs' sizes first, so no more than its byte
// bound is ever read into memory.
const STAGE_OUTPUT_SIZES: Sql = Sql::both(
    "SELECT id, CAST(octet_length(output_json) AS BIGINT) FROM tasks
     WHERE job_id = $1 AND stage_position = $2 AND state = 'succeeded' AND state <> 'running'
       AND tenant_id = $3 AND ($4 IS NULL OR id > $4)
     ORDER BY id
     LIMIT $5",
);

const STAGE_OUTPUTS: Sql = Sql::both(
    "SELECT id, output_json FROM tasks
     WHERE job_id = $1 AND stage_position = $2 AND state = 'succeeded' AND state <> 'running'
       AND tenant_id = $3 AND ($4 IS NULL OR id > $4) AND id <= $6
     ORDER BY id
     LIMIT $5",
);

pub(crate) async fn stage_results(
    db: &mut Db<'_>,
    p: &StageResults,
) -> Result<Vec<(TaskId, String)>, StoreError> {
    job_exists(db, &p.tenant, p.job).await?;
    let position: Option<(i32,)> = db
        .fetch_optional(
            db.query(&STAGE_POSITION)
                .bind(p.job.0)
                .bind(&p.tenant.0)
                .bind(&p.stage_name),
        )
        .await?;
    // Lineage only looks back: a stage that is not earlier than the asking
    // task's own is as unreadable as one that does not exist.
    let position = position
        .map(|(pos,)| pos)
        .filter(|pos| *pos < p.from_stage_position)
        .ok_or_else(|| StoreError::NotFound {
            entity: "earlier stage",
            id: format!("{:?}", p.stage_name),
        })?;
    let sizes: Vec<(i64, Option<i64>)> = db
        .fetch_all(
            db.query(&STAGE_OUTPUT_SIZES)
                .bind(p.job.0)
                .bind(position)
                .bind(&p.tenant.0)
                .bind(p.after.map(|t| t.0))
                .bind(i64::from(p.limit)),
        )
        .await?;
    // Outputs are added until they reach `max_bytes` (at least one, so a
    // reader always moves on).
    let mut total = 0u64;
    let mut last = None;
    for (id, size) in sizes {
        if last.is_some() && total >= p.max_bytes {
            break;
        }
        // A missing output reads as `null`.
        total = total.saturating_add(size.map_or(4, |n| n.max(0) as u64));
        last = Some(id);
    }
    let Some(last) = last else {
        return Ok(Vec::new());
    };
    let rows: Vec<(i64, Option<String>)> = db
        .fetch_all(
            db.query(&STAGE_OUTPUTS)
                .bind(p.job.0)
                .bind(position)
                .bind(&p.tenant.0)
                .bind(p.after.map(|t| t.0))
                .bind(i64::from(p.limit))
                .bind(last),
        )
        .await?;
    // Every completion that succeeds records an output: none is corruption.
    rows.into_iter()
        .map(|(id, output)| match output {
            Some(output) => Ok((TaskId(id), output)),
            None => Err(StoreError::Corrupt(format!(
                "task {id} output_json: a succeeded task has none"
            ))),
        })
        .collect()
}

// A row per stage (migration 0015), not a row per finished task.
const RATE_BUCKETS: Sql = Sql::both(
    "SELECT rate_bucket_at, finished_in_bucket, finished_in_previous_bucket
     FROM stages WHERE job_id = $1 AND tenant_id = $2",
);

pub(crate) async fn recent_completions(
    db: &mut Db<'_>,
    p: &RecentCompletions,
) -> Result<f64, StoreError> {
    job_exists(db, &p.tenant, p.job).await?;
    let buckets: Vec<(i64, i64, i64)> = db
        .fetch_all(db.query(&RATE_BUCKETS).bind(p.job.0).bind(&p.tenant.0))
        .await?;
    Ok(finished_in_window(&buckets, p.now))
}

/// The tasks finished in the [`RATE_WINDOW_MS`] before `now`, from each
/// stage's (bucket start, finished in it, finished in the bucket before):
/// all of the current bucket, and of the previous one the share the window
/// still covers, as if its finishes were spread evenly over it.
fn finished_in_window(buckets: &[(i64, i64, i64)], now: Millis) -> f64 {
    let current = advance::rate_bucket(now);
    let covered = 1.0 - (now - current) as f64 / RATE_WINDOW_MS as f64;
    buckets
        .iter()
        .map(|&(at, this, before)| {
            if at >= current {
                this as f64 + before as f64 * covered
            } else if at == current - RATE_WINDOW_MS {
                this as f64 * covered
            } else {
                0.0
            }
        })
        .sum()
}

const JOB_STATE: Sql = Sql::both("SELECT state FROM jobs WHERE id = $1 AND tenant_id = $2");

pub(crate) async fn job_state(db: &mut Db<'_>, p: &GetJob) -> Result<JobState, StoreError> {
    let state: Option<(String,)> = db
        .fetch_optional(db.query(&JOB_STATE).bind(p.job.0).bind(&p.tenant.0))
        .await?;
    parse_job_state(&state.ok_or_else(|| job_not_found(p.job))?.0)
}

// One statement (this sits on get_job's path). Pending tasks are only in open
// stages; going through them gives the planner an equality on the whole (job,
// stage, state) index even without statistics (PostgreSQL otherwise scanned
// the tenant's pending tasks after a bulk load).
const READY_HANDLERS: Sql = Sql::both(
    "SELECT r.executor, r.handler FROM jobs j
     LEFT JOIN (
         SELECT DISTINCT s.executor, s.handler FROM (
             SELECT t.executor, t.handler FROM stages st
             JOIN tasks t ON t.job_id = st.job_id AND t.stage_position = st.position
                         AND t.state = 'pending'
             WHERE st.job_id = $1 AND st.tenant_id = $2 AND st.state = 'open'
               AND t.run_after <= $3
             LIMIT $4
         ) AS s
     ) AS r ON 1 = 1
     WHERE j.id = $1 AND j.tenant_id = $2
     ORDER BY r.executor, r.handler",
);

pub(crate) async fn ready_handlers(
    db: &mut Db<'_>,
    p: &ReadyHandlers,
) -> Result<Vec<ReadyHandler>, StoreError> {
    let rows: Vec<(Option<String>, Option<String>)> = db
        .fetch_all(
            db.query(&READY_HANDLERS)
                .bind(p.job.0)
                .bind(&p.tenant.0)
                .bind(p.now)
                .bind(i64::from(p.sample)),
        )
        .await?;
    ready_handlers_from_rows(p.job, rows)
}

const JOB_SPEC_PART: Sql =
    Sql::both("SELECT text FROM job_spec_parts WHERE job_id = $1 AND part = $2 AND tenant_id = $3");

pub(crate) async fn job_spec_part(
    db: &mut Db<'_>,
    p: &JobSpecPart,
) -> Result<Option<String>, StoreError> {
    // A part number no part can have is past the last one.
    let text: Option<(String,)> = match i32::try_from(p.part) {
        Ok(part) => {
            db.fetch_optional(
                db.query(&JOB_SPEC_PART)
                    .bind(p.job.0)
                    .bind(part)
                    .bind(&p.tenant.0),
            )
            .await?
        }
        Err(_) => None,
    };
    match text {
        Some((text,)) => Ok(Some(text)),
        // Past the last part, or no such job: only the miss pays to tell.
        None => job_exists(db, &p.tenant, p.job).await.map(|()| None),
    }
}

const JOB_EXISTS: Sql = Sql::both("SELECT 1 FROM jobs WHERE id = $1 AND tenant_id = $2");

/// `NotFound` unless the tenant has this job.
pub(crate) async fn job_exists(
    db: &mut Db<'_>,
    tenant: &TenantId,
    job: JobId,
) -> Result<(), StoreError> {
    let found: Option<(i32,)> = db
        .fetch_optional(db.query(&JOB_EXISTS).bind(job.0).bind(&tenant.0))
        .await?;
    found.map(|_| ()).ok_or_else(|| job_not_found(job))
}

// The job and its stages in one statement; no task is read.
const JOB_COUNTERS: Sql = Sql::both(
    "SELECT j.name, j.state, j.created_at, j.finished_at, j.error,
            s.position, s.name, s.state, s.on_failure, s.total, s.remaining, s.opened_at,
            s.closed_at
     FROM jobs j LEFT JOIN stages s ON s.job_id = j.id
     WHERE j.id = $1 AND j.tenant_id = $2
     ORDER BY s.position",
);

/// One row of [`JOB_COUNTERS`]: the job, and one stage (NULLs when the job
/// has none).
type JobCountersRow = (
    String,
    String,
    i64,
    Option<i64>,
    Option<String>,
    Option<i32>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

/// A job with its stages' counters, without counting its tasks: the cost
/// does not grow with the job.
pub(crate) async fn job_counters(db: &mut Db<'_>, p: &GetJob) -> Result<JobStatus, StoreError> {
    let rows: Vec<JobCountersRow> = db
        .fetch_all(db.query(&JOB_COUNTERS).bind(p.job.0).bind(&p.tenant.0))
        .await?;
    let Some(first) = rows.first() else {
        return Err(job_not_found(p.job));
    };
    let (name, state, created_at, finished_at, error) = (
        first.0.clone(),
        parse_job_state(&first.1)?,
        first.2,
        first.3,
        first.4.clone(),
    );
    let mut stages = Vec::with_capacity(rows.len());
    for row in rows {
        let (Some(position), Some(stage_name), Some(stage_state), Some(on_failure)) =
            (row.5, row.6, row.7, row.8)
        else {
            continue;
        };
        stages.push(StageStatus {
            position,
            name: stage_name,
            state: parse_stage_state(&stage_state)?,
            on_failure: parse_on_failure(&on_failure)?,
            total: row.9.unwrap_or(0),
            remaining: row.10.unwrap_or(0),
            counts: Vec::new(),
            opened_at: row.11,
            closed_at: row.12,
        });
    }
    Ok(JobStatus {
        job_id: p.job,
        tenant: p.tenant.clone(),
        name,
        state,
        created_at,
        finished_at,
        error,
        stages,
    })
}
