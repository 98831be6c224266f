//! Read-only queries. Each filters by tenant through an index; another
//! tenant's id answers [`StoreError::NotFound`]. Multi-statement reads run in
//! one read transaction (a WAL snapshot) so counts and states agree.

use super::{
    job_not_found, parse_event_kind, parse_executor, parse_job_state, parse_on_failure,
    parse_stage_state, parse_task_state, ready_handlers_from_rows, task_not_found,
};
use crate::model::{
    Event, JobId, JobState, JobStatus, JobSummary, StageStatus, TaskId, TaskRecord, TaskState,
    TenantId,
};
use crate::store::{
    GetJob, GetTask, JobEvents, ListJobs, ReadyHandler, ReadyHandlers, RecentCompletions,
    StageResults, StoreError,
};
use sqlx::SqlitePool;
use std::collections::HashMap;

pub(super) async fn get_job(pool: &SqlitePool, p: &GetJob) -> Result<JobStatus, StoreError> {
    let mut tx = pool.begin().await?;
    let job: Option<JobRow> = sqlx::query_as(
        "SELECT name, state, created_at, finished_at, error FROM jobs
         WHERE id = ?1 AND tenant_id = ?2",
    )
    .bind(p.job.0)
    .bind(&p.tenant.0)
    .fetch_optional(&mut *tx)
    .await?;
    let job = job.ok_or_else(|| job_not_found(p.job))?;
    let stages: Vec<StageRow> = sqlx::query_as(
        "SELECT position, name, state, on_failure, total, remaining, opened_at, closed_at
             FROM stages WHERE job_id = ?1 AND tenant_id = ?2 ORDER BY position",
    )
    .bind(p.job.0)
    .bind(&p.tenant.0)
    .fetch_all(&mut *tx)
    .await?;
    let counts: Vec<(i32, String, i64)> = sqlx::query_as(
        // Tenant checked on the job row, so the tasks side is a scan of the
        // covering (job_id, stage_position, state) index alone.
        "SELECT t.stage_position, t.state, count(*)
             FROM jobs j JOIN tasks t ON t.job_id = j.id
         WHERE j.id = ?1 AND j.tenant_id = ?2
         GROUP BY t.stage_position, t.state",
    )
    .bind(p.job.0)
    .bind(&p.tenant.0)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;

    let mut by_stage: HashMap<(i32, TaskState), i64> = HashMap::new();
    for (position, state, n) in counts {
        by_stage.insert((position, parse_task_state(&state)?), n);
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

#[derive(sqlx::FromRow)]
pub(super) struct EventRow {
    pub id: i64,
    pub task_id: Option<i64>,
    pub kind: String,
    pub stage_position: Option<i32>,
    pub detail: Option<String>,
    pub at: i64,
}

pub(super) async fn list_jobs(
    pool: &SqlitePool,
    p: &ListJobs,
) -> Result<Vec<JobSummary>, StoreError> {
    let rows: Vec<(i64, String, String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT id, name, state, created_at, finished_at FROM jobs
         WHERE tenant_id = ?1
           AND (?2 IS NULL OR state = ?2)
           AND (?3 IS NULL OR name = ?3)
           AND (?4 IS NULL OR created_at >= ?4)
           AND (?5 IS NULL OR created_at < ?5)
           AND (?6 IS NULL OR id < ?6)
         ORDER BY id DESC
         LIMIT ?7",
    )
    .bind(&p.tenant.0)
    .bind(p.state.map(JobState::as_str))
    .bind(p.name.as_deref())
    .bind(p.created_after)
    .bind(p.created_before)
    .bind(p.before_id.map(|j| j.0))
    .bind(i64::from(p.limit))
    .fetch_all(pool)
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

/// The columns [`task_record`] reads, for `FROM tasks t JOIN stages s`
/// (a macro so queries stay string literals).
macro_rules! task_columns {
    () => {
        "t.id, t.job_id, t.stage_position, s.name AS stage_name, t.handler, t.executor,
         t.key, t.state, t.attempt, t.max_attempts, t.input_json, t.output_json, t.error,
         t.parent_task_id, t.agent_json, t.lease_expires_at, t.run_after, t.created_at,
         t.finished_at"
    };
}
pub(super) use task_columns;

pub(super) async fn get_task(pool: &SqlitePool, p: &GetTask) -> Result<TaskRecord, StoreError> {
    let sql = concat!(
        "SELECT ",
        task_columns!(),
        " FROM tasks t
         JOIN stages s ON s.job_id = t.job_id AND s.position = t.stage_position
         WHERE t.id = ?1 AND t.tenant_id = ?2"
    );
    let row = sqlx::query(sql)
        .bind(p.task.0)
        .bind(&p.tenant.0)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| task_not_found(p.task))?;
    task_record(&row)
}

/// A [`TaskRecord`] from a row selected with [`task_columns`].
pub(super) fn task_record(row: &sqlx::sqlite::SqliteRow) -> Result<TaskRecord, StoreError> {
    use sqlx::Row;
    Ok(TaskRecord {
        task_id: TaskId(row.try_get("id")?),
        job_id: JobId(row.try_get("job_id")?),
        stage_position: row.try_get("stage_position")?,
        stage_name: row.try_get("stage_name")?,
        handler: row.try_get("handler")?,
        executor: parse_executor(row.try_get("executor")?)?,
        key: row.try_get("key")?,
        state: parse_task_state(row.try_get("state")?)?,
        attempt: row.try_get("attempt")?,
        max_attempts: row.try_get("max_attempts")?,
        input_json: row.try_get("input_json")?,
        output_json: row.try_get("output_json")?,
        error: row.try_get("error")?,
        parent_task: row.try_get::<Option<i64>, _>("parent_task_id")?.map(TaskId),
        agent_json: row.try_get("agent_json")?,
        lease_expires_at: row.try_get("lease_expires_at")?,
        run_after: row.try_get("run_after")?,
        created_at: row.try_get("created_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

pub(super) async fn job_events(pool: &SqlitePool, p: &JobEvents) -> Result<Vec<Event>, StoreError> {
    job_exists(pool, &p.tenant, p.job).await?;
    let rows: Vec<EventRow> = sqlx::query_as(
        "SELECT id, task_id, kind, stage_position, detail, at FROM events
         WHERE job_id = ?1 AND tenant_id = ?2 AND (?3 IS NULL OR id > ?3)
         ORDER BY id
         LIMIT ?4",
    )
    .bind(p.job.0)
    .bind(&p.tenant.0)
    .bind(p.after_id)
    .bind(i64::from(p.limit))
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|e| {
            Ok(Event {
                id: e.id,
                job_id: p.job,
                task_id: e.task_id.map(TaskId),
                kind: parse_event_kind(&e.kind)?,
                stage_position: e.stage_position,
                detail: e.detail,
                at: e.at,
            })
        })
        .collect()
}

pub(super) async fn stage_results(
    pool: &SqlitePool,
    p: &StageResults,
) -> Result<Vec<(TaskId, String)>, StoreError> {
    job_exists(pool, &p.tenant, p.job).await?;
    let position: Option<i32> = sqlx::query_scalar(
        "SELECT position FROM stages WHERE job_id = ?1 AND tenant_id = ?2 AND name = ?3",
    )
    .bind(p.job.0)
    .bind(&p.tenant.0)
    .bind(&p.stage_name)
    .fetch_optional(pool)
    .await?;
    // Lineage only looks back: a stage that is not earlier than the asking
    // task's own is as unreadable as one that does not exist.
    let position = position
        .filter(|pos| *pos < p.from_stage_position)
        .ok_or_else(|| StoreError::NotFound {
            entity: "earlier stage",
            id: format!("{:?}", p.stage_name),
        })?;
    let rows: Vec<(i64, Option<String>)> = sqlx::query_as(
        "SELECT id, output_json FROM tasks
         WHERE job_id = ?1 AND stage_position = ?2 AND state = 'succeeded'
           AND tenant_id = ?3 AND (?4 IS NULL OR id > ?4)
         ORDER BY id
         LIMIT ?5",
    )
    .bind(p.job.0)
    .bind(position)
    .bind(&p.tenant.0)
    .bind(p.after.map(|t| t.0))
    .bind(i64::from(p.limit))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, output)| (TaskId(id), output.unwrap_or_else(|| "null".to_string())))
        .collect())
}

pub(super) async fn recent_completions(
    pool: &SqlitePool,
    p: &RecentCompletions,
) -> Result<i64, StoreError> {
    job_exists(pool, &p.tenant, p.job).await?;
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tasks
         WHERE job_id = ?1 AND tenant_id = ?2 AND finished_at >= ?3
           AND state IN ('succeeded', 'dead')",
    )
    .bind(p.job.0)
    .bind(&p.tenant.0)
    .bind(p.since)
    .fetch_one(pool)
    .await?;
    Ok(n)
}

pub(super) async fn job_state(pool: &SqlitePool, p: &GetJob) -> Result<JobState, StoreError> {
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM jobs WHERE id = ?1 AND tenant_id = ?2")
            .bind(p.job.0)
            .bind(&p.tenant.0)
            .fetch_optional(pool)
            .await?;
    parse_job_state(&state.ok_or_else(|| job_not_found(p.job))?)
}

pub(super) async fn ready_handlers(
    pool: &SqlitePool,
    p: &ReadyHandlers,
) -> Result<Vec<ReadyHandler>, StoreError> {
    // One statement (this sits on get_job's path). Pending
    // tasks are only in open stages; going through them gives the planner an
    // equality on the whole (job, stage, state) index even without statistics
    // (Postgres otherwise scanned the tenant's pending tasks after a bulk load).
    let rows: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT r.executor, r.handler FROM jobs j
         LEFT JOIN (
             SELECT DISTINCT s.executor, s.handler FROM (
                 SELECT t.executor, t.handler FROM stages st
                 JOIN tasks t ON t.job_id = st.job_id AND t.stage_position = st.position
                             AND t.state = 'pending'
                 WHERE st.job_id = ?1 AND st.tenant_id = ?2 AND st.state = 'open'
                   AND t.run_after <= ?3
                 LIMIT ?4
             ) AS s
         ) AS r ON 1 = 1
         WHERE j.id = ?1 AND j.tenant_id = ?2
         ORDER BY r.executor, r.handler",
    )
    .bind(p.job.0)
    .bind(&p.tenant.0)
    .bind(p.now)
    .bind(i64::from(p.sample))
    .fetch_all(pool)
    .await?;
    ready_handlers_from_rows(p.job, rows)
}

async fn job_exists(pool: &SqlitePool, tenant: &TenantId, job: JobId) -> Result<(), StoreError> {
    let found: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM jobs WHERE id = ?1 AND tenant_id = ?2")
            .bind(job.0)
            .bind(&tenant.0)
            .fetch_optional(pool)
            .await?;
    found.map(|_| ()).ok_or_else(|| job_not_found(job))
}
