//! Reads of the agent workflow (a job's tasks, a task's dependencies and
//! events, queue depth) and the MCP bearer tokens, written once for both
//! databases.
//!
//! Every read filters by tenant through an index, except
//! [`tenant_for_token`], which is how a request's tenant is found (by the
//! token hash's unique index). `list_tasks` and `task_dependencies` check
//! existence and read in two statements: the caller runs them in a snapshot.

use super::codec::{parse_column, parse_task_state, task_not_found};
use super::reads::{EventRow, TaskRow, job_exists, task_columns};
use super::sql::{Db, Query, Sql, plan_text};
use super::{
    CreateToken, Dependency, GetTask, ListTasks, QueueDepthQuery, RevokeToken, StoreError,
    TaskEvents, TokenLookup, TokenRef,
};
use crate::model::{
    Event, HandlerDepth, JobId, QueueDepth, TaskId, TaskRecord, TaskState, TenantId, TokenRecord,
};

// PostgreSQL has no index of a job's tasks in id order (migration 0017: a
// second job index cost every task write an entry). The page is the first
// `$4` ids after `$3` of each (stage, state) range of `tasks_job_stage_state`,
// merged: at most stages × states × `$4` entries read, whatever the job's
// size. Each range is read from its start by a row comparison on the index's
// columns, in their order: with equalities instead, the planner saw the
// order as `id` alone and walked `tasks_pkey` for every state of the job
// (125 ms for the first 100 tasks of a 100,000-task job, against 0.7 ms).
// The states come from `TaskState::ALL` (`$5`; SQLite's text, which reads
// `tasks_job_id`, leaves it unused).
macro_rules! pg_list_tasks {
    () => {
        concat!(
            "WITH page AS MATERIALIZED (
                 SELECT first.id FROM stages ps
                 CROSS JOIN unnest($5::text[]) AS st(state)
                 CROSS JOIN LATERAL (
                     SELECT t.id, t.job_id, t.stage_position, t.state FROM tasks t
                     WHERE (t.job_id, t.stage_position, t.state, t.id)
                           > (ps.job_id, ps.position, st.state, COALESCE($3::int8, 0))
                     ORDER BY t.job_id, t.stage_position, t.state, t.id
                     LIMIT $4
                 ) AS first
                 WHERE ps.job_id = $1 AND first.job_id = ps.job_id
                   AND first.stage_position = ps.position AND first.state = st.state
                 ORDER BY first.id
                 LIMIT $4
             )
             SELECT ",
            task_columns!(),
            " FROM page
             JOIN tasks t ON t.id = page.id
             JOIN stages s ON s.job_id = t.job_id AND s.position = t.stage_position
             WHERE t.tenant_id = $2
             ORDER BY t.id"
        )
    };
}
const LIST_TASKS: Sql = Sql::each(
    concat!(
        "SELECT ",
        task_columns!(),
        " FROM tasks t
         JOIN stages s ON s.job_id = t.job_id AND s.position = t.stage_position
         WHERE t.job_id = $1 AND t.tenant_id = $2 AND ($3 IS NULL OR t.id > $3)
         ORDER BY t.id
         LIMIT $4"
    ),
    pg_list_tasks!(),
);
const EXPLAIN_LIST_TASKS: Sql = Sql::postgres_only(concat!("EXPLAIN ", pg_list_tasks!()));

fn bind_list_tasks(query: Query, p: &ListTasks) -> Query {
    query
        .bind(p.job.0)
        .bind(&p.tenant.0)
        .bind(p.after.map(|t| t.0))
        .bind(i64::from(p.limit))
        .bind_names(Some(&TaskState::ALL.map(|s| s.as_str().to_string())))
}

/// How PostgreSQL would read `p`'s page now, one line per plan node (for
/// the test that holds it to `tasks_job_stage_state`).
pub(crate) async fn explain_list_tasks(
    db: &mut Db<'_>,
    p: &ListTasks,
) -> Result<String, StoreError> {
    let lines: Vec<(String,)> = db
        .fetch_all(bind_list_tasks(db.query(&EXPLAIN_LIST_TASKS), p))
        .await?;
    Ok(plan_text(lines))
}

pub(crate) async fn list_tasks(
    db: &mut Db<'_>,
    p: &ListTasks,
) -> Result<Vec<TaskRecord>, StoreError> {
    job_exists(db, &p.tenant, p.job).await?;
    let rows: Vec<TaskRow> = db
        .fetch_all(bind_list_tasks(db.query(&LIST_TASKS), p))
        .await?;
    rows.into_iter().map(TaskRow::into_record).collect()
}

const TASK_EXISTS: Sql = Sql::both("SELECT 1 FROM tasks WHERE id = $1 AND tenant_id = $2");
const DEPENDENCIES: Sql = Sql::both(
    "SELECT t.id, t.key, t.state, t.agent_json, t.output_json
     FROM task_deps d JOIN tasks t ON t.id = d.depends_on
     WHERE d.task_id = $1 AND d.tenant_id = $2 AND t.tenant_id = $2
     ORDER BY t.id",
);

/// id, key, state, agent_json, output_json
type DependencyRow = (i64, Option<String>, String, Option<String>, Option<String>);

pub(crate) async fn task_dependencies(
    db: &mut Db<'_>,
    p: &GetTask,
) -> Result<Vec<Dependency>, StoreError> {
    let exists: Option<(i32,)> = db
        .fetch_optional(db.query(&TASK_EXISTS).bind(p.task.0).bind(&p.tenant.0))
        .await?;
    if exists.is_none() {
        return Err(task_not_found(p.task));
    }
    let rows: Vec<DependencyRow> = db
        .fetch_all(db.query(&DEPENDENCIES).bind(p.task.0).bind(&p.tenant.0))
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

const TASK_JOB: Sql = Sql::both("SELECT job_id FROM tasks WHERE id = $1 AND tenant_id = $2");
const TASK_EVENTS: Sql = Sql::both(
    "SELECT id, task_id, kind, stage_position, detail, at, attempt, worker, claimed_at
     FROM events
     WHERE task_id = $1 AND tenant_id = $2
     ORDER BY id DESC
     LIMIT $3",
);

pub(crate) async fn task_events(db: &mut Db<'_>, p: &TaskEvents) -> Result<Vec<Event>, StoreError> {
    let job: Option<(i64,)> = db
        .fetch_optional(db.query(&TASK_JOB).bind(p.task.0).bind(&p.tenant.0))
        .await?;
    let (job,) = job.ok_or_else(|| task_not_found(p.task))?;
    let mut rows: Vec<EventRow> = db
        .fetch_all(
            db.query(&TASK_EVENTS)
                .bind(p.task.0)
                .bind(&p.tenant.0)
                .bind(i64::from(p.limit)),
        )
        .await?;
    rows.reverse();
    rows.into_iter().map(|e| e.into_event(JobId(job))).collect()
}

// Waiting (blocked, pending) tasks belong to running jobs only: through the
// tenant's running jobs (`jobs_tenant_state_newest`), their stages, and each
// stage's waiting tasks in `tasks_job_stage_state` (migration 0011: no index
// by tenant that a claim would change). Running ones, few (bounded by the
// workers' slots), through the running-lease index. SQLite is held to that
// order by `CROSS JOIN`: left to itself it walks each job's tasks whatever
// their state (every finished one too).
//
// `t.state <> 'running'` is implied by the `IN`, but SQLite uses a partial
// index only when the query states its predicate in so many words.
macro_rules! queue_counts {
    ($columns:literal, $join:literal) => {
        concat!(
            "SELECT ",
            $columns,
            ", count(*)
             FROM jobs j ",
            $join,
            " stages s ON s.job_id = j.id ",
            $join,
            " tasks t ON t.job_id = s.job_id AND t.stage_position = s.position
             WHERE j.tenant_id = $1 AND j.state = 'running'
               AND t.state IN ('blocked', 'pending') AND t.state <> 'running'
             GROUP BY ",
            $columns,
            "
             UNION ALL
             SELECT ",
            $columns,
            ", count(*) FROM tasks t
             WHERE t.state = 'running' AND t.tenant_id = $1
             GROUP BY ",
            $columns
        )
    };
}
const QUEUE_DEPTH: Sql = Sql::each(
    queue_counts!("t.state", "CROSS JOIN"),
    queue_counts!("t.state", "JOIN"),
);

pub(crate) async fn queue_depth(
    db: &mut Db<'_>,
    p: &QueueDepthQuery,
) -> Result<QueueDepth, StoreError> {
    let rows: Vec<(String, i64)> = db
        .fetch_all(db.query(&QUEUE_DEPTH).bind(&p.tenant.0))
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

const QUEUE_BY_HANDLER: Sql = Sql::each(
    concat!(
        queue_counts!("t.executor, t.handler, t.state", "CROSS JOIN"),
        " ORDER BY executor, handler"
    ),
    concat!(
        queue_counts!("t.executor, t.handler, t.state", "JOIN"),
        " ORDER BY executor, handler"
    ),
);

/// Like [`queue_depth`], per executor and handler (through the same partial
/// indexes: finished tasks are not read).
pub(crate) async fn queue_by_handler(
    db: &mut Db<'_>,
    p: &QueueDepthQuery,
) -> Result<Vec<HandlerDepth>, StoreError> {
    let rows: Vec<(String, String, String, i64)> = db
        .fetch_all(db.query(&QUEUE_BY_HANDLER).bind(&p.tenant.0))
        .await?;
    let mut out: Vec<HandlerDepth> = Vec::new();
    for (executor, handler, state, n) in rows {
        let executor = parse_column(&format_args!("handler {handler:?}"), "executor", &executor)?;
        let state = parse_task_state(&state)?;
        let same = out
            .last()
            .is_some_and(|last| last.executor == executor && last.handler == handler);
        if !same {
            out.push(HandlerDepth {
                executor,
                handler,
                depth: QueueDepth {
                    pending: 0,
                    running: 0,
                    blocked: 0,
                },
            });
        }
        if let Some(entry) = out.last_mut() {
            match state {
                TaskState::Pending => entry.depth.pending = n,
                TaskState::Running => entry.depth.running = n,
                _ => entry.depth.blocked = n,
            }
        }
    }
    Ok(out)
}

pub(crate) const INSERT_TENANT: Sql = Sql::both(
    "INSERT INTO tenants (tenant_id, created_at) VALUES ($1, $2)
     ON CONFLICT (tenant_id) DO NOTHING",
);
const INSERT_TOKEN: Sql = Sql::both(
    "INSERT INTO api_tokens (tenant_id, token_hash, label, created_at, role)
     VALUES ($1, $2, $3, $4, $5) RETURNING id",
);

/// Run in a write transaction: the tenant row and the token commit together.
pub(crate) async fn create_token(db: &mut Db<'_>, p: &CreateToken) -> Result<i64, StoreError> {
    db.execute(db.query(&INSERT_TENANT).bind(&p.tenant.0).bind(p.now))
        .await?;
    let (id,): (i64,) = db
        .fetch_one(
            db.query(&INSERT_TOKEN)
                .bind(&p.tenant.0)
                .bind(&p.token_hash)
                .bind(p.label.as_deref())
                .bind(p.now)
                .bind(p.role.as_str()),
        )
        .await?;
    Ok(id)
}

type TokenRow = (i64, String, Option<String>, i64, String);

fn token_record(
    (id, tenant, label, created_at, role): TokenRow,
) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        token_id: id,
        tenant: TenantId(tenant),
        label,
        role: parse_column(&format_args!("token {id}"), "role", &role)?,
        created_at,
    })
}

const REVOKE_TOKEN: Sql = Sql::both(
    "UPDATE api_tokens SET revoked_at = $3
     WHERE revoked_at IS NULL AND (id = $1 OR token_hash = $2)
     RETURNING id, tenant_id, label, created_at, role",
);

pub(crate) async fn revoke_token(
    db: &mut Db<'_>,
    p: &RevokeToken,
) -> Result<Option<TokenRecord>, StoreError> {
    let (id, hash) = match &p.token {
        TokenRef::Id(id) => (Some(*id), None),
        TokenRef::Hash(h) => (None, Some(h.as_str())),
    };
    let row: Option<TokenRow> = db
        .fetch_optional(db.query(&REVOKE_TOKEN).bind(id).bind(hash).bind(p.now))
        .await?;
    row.map(token_record).transpose()
}

const TOKEN: Sql = Sql::both(
    "SELECT id, tenant_id, label, created_at, role FROM api_tokens
     WHERE token_hash = $1 AND revoked_at IS NULL",
);

pub(crate) async fn tenant_for_token(
    db: &mut Db<'_>,
    p: &TokenLookup,
) -> Result<Option<TokenRecord>, StoreError> {
    let row: Option<TokenRow> = db
        .fetch_optional(db.query(&TOKEN).bind(&p.token_hash))
        .await?;
    row.map(token_record).transpose()
}
