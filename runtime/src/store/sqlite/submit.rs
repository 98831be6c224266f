//! Submitting a job: job, stages, tasks and dependencies in one transaction.
//!
//! **Invariant (idempotent submit):** `INSERT … ON CONFLICT (tenant_id,
//! idempotency_key) DO NOTHING` decides; a resubmission reads the existing id
//! afterwards and writes nothing (the caller rolls back). Never
//! lookup-then-insert.

use super::effects::Effects;
use super::{advance, json_array};
use crate::model::{EventKind, JobId, JobState, SubmitJob, Submitted};
use crate::store::StoreError;
use sqlx::SqliteConnection;
use std::collections::HashMap;

pub(super) async fn submit_job(
    conn: &mut SqliteConnection,
    p: &SubmitJob,
) -> Result<Submitted, StoreError> {
    let now = p.now;
    let tenant = p.tenant.0.as_str();

    sqlx::query(
        "INSERT INTO tenants (tenant_id, created_at) VALUES (?1, ?2)
         ON CONFLICT (tenant_id) DO NOTHING",
    )
    .bind(tenant)
    .bind(now)
    .execute(&mut *conn)
    .await?;

    let inserted: Option<i64> = sqlx::query_scalar(
        "INSERT INTO jobs (tenant_id, name, idempotency_key, spec_json, state, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?5)
         ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
         RETURNING id",
    )
    .bind(tenant)
    .bind(&p.name)
    .bind(&p.idempotency_key)
    .bind(&p.spec_json)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(job) = inserted else {
        let existing: i64 =
            sqlx::query_scalar("SELECT id FROM jobs WHERE tenant_id = ?1 AND idempotency_key = ?2")
                .bind(tenant)
                .bind(&p.idempotency_key)
                .fetch_one(&mut *conn)
                .await?;
        return Ok(Submitted {
            job_id: JobId(existing),
            created: false,
        });
    };

    let mut fx = Effects::new(now);
    fx.event(
        tenant,
        job,
        None,
        EventKind::Submitted,
        None,
        Some(p.name.clone()),
    );

    // Stages: the first is open, the rest wait.
    let stages: Vec<serde_json::Value> = p
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            serde_json::json!([
                i,
                s.name,
                if i == 0 { "open" } else { "waiting" },
                s.on_failure.as_str(),
                s.tasks.len(),
                s.max_attempts,
                s.timeout_ms,
            ])
        })
        .collect();
    sqlx::query(
        "INSERT INTO stages (job_id, position, tenant_id, name, state, on_failure, total,
                             remaining, opened_at, max_attempts, timeout_ms)
         SELECT ?1, s.value ->> 0, ?2, s.value ->> 1, s.value ->> 2, s.value ->> 3,
                s.value ->> 4, s.value ->> 4,
                CASE WHEN s.value ->> 0 = 0 THEN ?3 END, s.value ->> 5, s.value ->> 6
         FROM json_each(?4) AS s",
    )
    .bind(job)
    .bind(tenant)
    .bind(now)
    .bind(json_array(&stages))
    .execute(&mut *conn)
    .await?;

    // Task ids are taken up front so dependencies can name them: this
    // transaction holds the write lock, so max(id)+1.. are ours.
    let first_id: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) + 1 FROM tasks")
        .fetch_one(&mut *conn)
        .await?;
    let mut by_key: HashMap<&str, i64> = HashMap::new();
    let mut flat = Vec::new();
    let mut next_id = first_id;
    for (position, stage) in (0..).zip(&p.stages) {
        for task in &stage.tasks {
            if let Some(key) = task.key.as_deref() {
                by_key.insert(key, next_id);
            }
            flat.push((next_id, position, task));
            next_id += 1;
        }
    }

    let mut deps_rows: Vec<(i64, i64)> = Vec::new();
    let mut task_rows = Vec::with_capacity(flat.len());
    for (id, position, task) in &flat {
        let mut deps: Vec<i64> = Vec::with_capacity(task.depends_on.len());
        for key in &task.depends_on {
            let dep = by_key
                .get(key.as_str())
                .copied()
                .ok_or_else(|| StoreError::NotFound {
                    entity: "dependency key",
                    id: format!("{key:?}"),
                })?;
            deps.push(dep);
        }
        deps.sort_unstable();
        deps.dedup();
        let waiting = *position != 0 || !deps.is_empty();
        for dep in &deps {
            deps_rows.push((*id, *dep));
        }
        task_rows.push(serde_json::json!([
            id,
            position,
            task.handler,
            task.executor.as_str(),
            task.key,
            if waiting { "blocked" } else { "pending" },
            task.max_attempts,
            task.timeout_ms,
            task.input_json,
            deps.len(),
            task.agent_json,
            task.on_failure.as_str(),
        ]));
    }
    if !task_rows.is_empty() {
        sqlx::query(
            "INSERT INTO tasks (id, tenant_id, job_id, stage_position, handler, executor, key,
                                state, max_attempts, timeout_ms, run_after, input_json,
                                deps_remaining, agent_json, on_failure, created_at, updated_at)
             SELECT t.value ->> 0, ?1, ?2, t.value ->> 1, t.value ->> 2, t.value ->> 3,
                    t.value ->> 4, t.value ->> 5, t.value ->> 6, t.value ->> 7, ?3,
                    t.value ->> 8, t.value ->> 9, t.value ->> 10, t.value ->> 11, ?3, ?3
             FROM json_each(?4) AS t",
        )
        .bind(tenant)
        .bind(job)
        .bind(now)
        .bind(json_array(&task_rows))
        .execute(&mut *conn)
        .await?;
    }
    if !deps_rows.is_empty() {
        sqlx::query(
            "INSERT INTO task_deps (task_id, depends_on, tenant_id)
             SELECT d.value ->> 0, d.value ->> 1, ?2 FROM json_each(?1) AS d",
        )
        .bind(json_array(&deps_rows))
        .bind(tenant)
        .execute(&mut *conn)
        .await?;
    }

    if p.stages.is_empty() {
        fx.finish_job(tenant, job, JobState::Succeeded, None);
    } else {
        fx.event(
            tenant,
            job,
            None,
            EventKind::StageOpened,
            Some(0),
            Some(p.stages[0].name.clone()),
        );
        // A first stage without tasks completes at once (and so on).
        advance::close_drained(conn, &[(job, 0)], &mut fx).await?;
    }
    fx.write(conn).await?;
    Ok(Submitted {
        job_id: JobId(job),
        created: true,
    })
}
