//! Reads of the agent workflow (a job's tasks, a task's dependencies and
//! events, queue depth) and the MCP bearer tokens.
//!
//! Every read filters by tenant through an index, except
//! [`tenant_for_token`], which is how a request's tenant is found (by the
//! token hash's unique index).

use super::reads::{EventRow, task_columns, task_record};
use super::{parse_event_kind, parse_task_state, task_not_found};
use crate::model::{Event, JobId, QueueDepth, TaskId, TaskRecord, TenantId, TokenRecord};
use crate::store::{
    CreateToken, Dependency, GetTask, ListTasks, QueueDepthQuery, RevokeToken, StoreError,
    TaskEvents, TokenLookup, TokenRef,
};
use sqlx::{SqliteConnection, SqlitePool};

pub(super) async fn list_tasks(
    pool: &SqlitePool,
    p: &ListTasks,
) -> Result<Vec<TaskRecord>, StoreError> {
    let mut conn = pool.acquire().await?;
    // One read transaction, so the existence check and the page agree.
    sqlx::query("BEGIN").execute(&mut *conn).await?;
    let result = list_tasks_in(&mut conn, p).await;
    sqlx::query("COMMIT").execute(&mut *conn).await?;
    result
}

async fn list_tasks_in(
    conn: &mut SqliteConnection,
    p: &ListTasks,
) -> Result<Vec<TaskRecord>, StoreError> {
    let exists: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM jobs WHERE id = ?1 AND tenant_id = ?2")
            .bind(p.job.0)
            .bind(&p.tenant.0)
            .fetch_optional(&mut *conn)
            .await?;
    if exists.is_none() {
        return Err(StoreError::NotFound {
            entity: "job",
            id: p.job.0.to_string(),
        });
    }
    let sql = concat!(
        "SELECT ",
        task_columns!(),
        " FROM tasks t
         JOIN stages s ON s.job_id = t.job_id AND s.position = t.stage_position
         WHERE t.job_id = ?1 AND t.tenant_id = ?2 AND (?3 IS NULL OR t.id > ?3)
         ORDER BY t.id
         LIMIT ?4"
    );
    let rows = sqlx::query(sql)
        .bind(p.job.0)
        .bind(&p.tenant.0)
        .bind(p.after.map(|t| t.0))
        .bind(i64::from(p.limit))
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(task_record).collect()
}

/// id, key, state, agent_json, output_json
type DependencyRow = (i64, Option<String>, String, Option<String>, Option<String>);

pub(super) async fn task_dependencies(
    pool: &SqlitePool,
    p: &GetTask,
) -> Result<Vec<Dependency>, StoreError> {
    let exists: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM tasks WHERE id = ?1 AND tenant_id = ?2")
            .bind(p.task.0)
            .bind(&p.tenant.0)
            .fetch_optional(pool)
            .await?;
    if exists.is_none() {
        return Err(task_not_found(p.task));
    }
    let rows: Vec<DependencyRow> = sqlx::query_as(
        "SELECT t.id, t.key, t.state, t.agent_json, t.output_json
         FROM task_deps d JOIN tasks t ON t.id = d.depends_on
         WHERE d.task_id = ?1 AND d.tenant_id = ?2 AND t.tenant_id = ?2
         ORDER BY t.id",
    )
    .bind(p.task.0)
    .bind(&p.tenant.0)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(id, key, state, agent_json, output_json)| {
            Ok(Dependency {
                task_id: TaskId(id),
                key,
                state: parse_task_state(&state)?,
                agent_json,
                output_json,
            })
        })
        .collect()
}

pub(super) async fn task_events(
    pool: &SqlitePool,
    p: &TaskEvents,
) -> Result<Vec<Event>, StoreError> {
    let job: Option<i64> =
        sqlx::query_scalar("SELECT job_id FROM tasks WHERE id = ?1 AND tenant_id = ?2")
            .bind(p.task.0)
            .bind(&p.tenant.0)
            .fetch_optional(pool)
            .await?;
    let job = job.ok_or_else(|| task_not_found(p.task))?;
    let mut rows: Vec<EventRow> = sqlx::query_as(
        "SELECT id, task_id, kind, stage_position, detail, at FROM events
         WHERE task_id = ?1 AND tenant_id = ?2
         ORDER BY id DESC
         LIMIT ?3",
    )
    .bind(p.task.0)
    .bind(&p.tenant.0)
    .bind(i64::from(p.limit))
    .fetch_all(pool)
    .await?;
    rows.reverse();
    rows.into_iter()
        .map(|e| {
            Ok(Event {
                id: e.id,
                job_id: JobId(job),
                task_id: e.task_id.map(TaskId),
                kind: parse_event_kind(&e.kind)?,
                stage_position: e.stage_position,
                detail: e.detail,
                at: e.at,
            })
        })
        .collect()
}

pub(super) async fn queue_depth(
    pool: &SqlitePool,
    p: &QueueDepthQuery,
) -> Result<QueueDepth, StoreError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state, count(*) FROM tasks
         WHERE tenant_id = ?1 AND state IN ('blocked', 'pending', 'running')
         GROUP BY state",
    )
    .bind(&p.tenant.0)
    .fetch_all(pool)
    .await?;
    let count = |s: &str| {
        rows.iter()
            .find(|(state, _)| state == s)
            .map_or(0, |(_, n)| *n)
    };
    Ok(QueueDepth {
        pending: count("pending"),
        running: count("running"),
        blocked: count("blocked"),
    })
}

pub(super) async fn create_token(
    conn: &mut SqliteConnection,
    p: &CreateToken,
) -> Result<i64, StoreError> {
    sqlx::query(
        "INSERT INTO tenants (tenant_id, created_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
    )
    .bind(&p.tenant.0)
    .bind(p.now)
    .execute(&mut *conn)
    .await?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO api_tokens (tenant_id, token_hash, label, created_at)
         VALUES (?1, ?2, ?3, ?4) RETURNING id",
    )
    .bind(&p.tenant.0)
    .bind(&p.token_hash)
    .bind(p.label.as_deref())
    .bind(p.now)
    .fetch_one(&mut *conn)
    .await?;
    Ok(id)
}

type TokenRow = (i64, String, Option<String>, i64);

fn token_record((id, tenant, label, created_at): TokenRow) -> TokenRecord {
    TokenRecord {
        token_id: id,
        tenant: TenantId(tenant),
        label,
        created_at,
    }
}

pub(super) async fn revoke_token(
    conn: &mut SqliteConnection,
    p: &RevokeToken,
) -> Result<Option<TokenRecord>, StoreError> {
    let (id, hash) = match &p.token {
        TokenRef::Id(id) => (Some(*id), None),
        TokenRef::Hash(h) => (None, Some(h.as_str())),
    };
    let row: Option<TokenRow> = sqlx::query_as(
        "UPDATE api_tokens SET revoked_at = ?3
         WHERE revoked_at IS NULL AND (id = ?1 OR token_hash = ?2)
         RETURNING id, tenant_id, label, created_at",
    )
    .bind(id)
    .bind(hash)
    .bind(p.now)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(token_record))
}

pub(super) async fn tenant_for_token(
    pool: &SqlitePool,
    p: &TokenLookup,
) -> Result<Option<TokenRecord>, StoreError> {
    let row: Option<TokenRow> = sqlx::query_as(
        "SELECT id, tenant_id, label, created_at FROM api_tokens
         WHERE token_hash = ?1 AND revoked_at IS NULL",
    )
    .bind(&p.token_hash)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(token_record))
}
