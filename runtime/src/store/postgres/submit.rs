//! Submitting a job: job, stages, tasks and dependencies in one transaction.
//!
//! **Invariant (idempotent submit):** `INSERT … ON CONFLICT (tenant_id,
//! idempotency_key) DO NOTHING` decides; a resubmission reads the existing id
//! afterwards and writes nothing. Never lookup-then-insert.

use super::advance;
use super::effects::Effects;

use crate::model::{EventKind, JobId, JobState, SubmitJob, Submitted};
use crate::store::StoreError;
use sqlx::PgPool;
use std::collections::HashMap;

pub(super) async fn submit_job(pool: &PgPool, p: &SubmitJob) -> Result<Submitted, StoreError> {
    let mut tx = pool.begin().await?;
    let now = p.now;
    let tenant = p.tenant.0.as_str();

    sqlx::query(
        "INSERT INTO tenants (tenant_id, created_at) VALUES ($1, $2)
         ON CONFLICT (tenant_id) DO NOTHING",
    )
    .bind(tenant)
    .bind(now)
    .execute(&mut *tx)
    .await?;

    let inserted: Option<i64> = sqlx::query_scalar(
        "INSERT INTO jobs (tenant_id, name, idempotency_key, spec_json, state, created_at, updated_at)
         VALUES ($1, $2, $3, $4, 'running', $5, $5)
         ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
         RETURNING id",
    )
    .bind(tenant)
    .bind(&p.name)
    .bind(&p.idempotency_key)
    .bind(&p.spec_json)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(job) = inserted else {
        // The conflicting row is committed (ON CONFLICT waited for it), so
        // this statement's fresh snapshot sees it.
        let existing: i64 =
            sqlx::query_scalar("SELECT id FROM jobs WHERE tenant_id = $1 AND idempotency_key = $2")
                .bind(tenant)
                .bind(&p.idempotency_key)
                .fetch_one(&mut *tx)
                .await?;
        tx.rollback().await?;
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
    let stage_count = p.stages.len();
    let positions: Vec<i32> = (0..stage_count)
        .map(|i| i32::try_from(i).unwrap_or(i32::MAX))
        .collect();
    let names: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
    let states: Vec<&str> = (0..stage_count)
        .map(|i| if i == 0 { "open" } else { "waiting" })
        .collect();
    let on_failures: Vec<&str> = p.stages.iter().map(|s| s.on_failure.as_str()).collect();
    let totals: Vec<i64> = p
        .stages
        .iter()
        .map(|s| i64::try_from(s.tasks.len()).unwrap_or(i64::MAX))
        .collect();
    let max_attempts: Vec<Option<i32>> = p.stages.iter().map(|s| s.max_attempts).collect();
    let timeouts: Vec<Option<i64>> = p.stages.iter().map(|s| s.timeout_ms).collect();
    sqlx::query(
        "INSERT INTO stages (job_id, position, tenant_id, name, state, on_failure, total,
                             remaining, opened_at, max_attempts, timeout_ms)
         SELECT $1, s.position, $2, s.name, s.state, s.on_failure, s.total, s.total,
                CASE WHEN s.position = 0 THEN $3 END, s.max_attempts, s.timeout_ms
         FROM unnest($4::int4[], $5::text[], $6::text[], $7::text[], $8::int8[], $9::int4[],
                     $10::int8[])
              AS s(position, name, state, on_failure, total, max_attempts, timeout_ms)",
    )
    .bind(job)
    .bind(tenant)
    .bind(now)
    .bind(&positions)
    .bind(&names)
    .bind(&states)
    .bind(&on_failures)
    .bind(&totals)
    .bind(&max_attempts)
    .bind(&timeouts)
    .execute(&mut *tx)
    .await?;

    // Task ids are taken up front so dependencies can name them, in spec
    // order (ascending ids follow stage order).
    let task_count: usize = p.stages.iter().map(|s| s.tasks.len()).sum();
    let mut ids: Vec<i64> = if task_count == 0 {
        Vec::new()
    } else {
        sqlx::query_scalar(
            "SELECT nextval(pg_get_serial_sequence('tasks', 'id')) FROM generate_series(1, $1)",
        )
        .bind(i64::try_from(task_count).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?
    };
    ids.sort_unstable();

    let mut by_key: HashMap<&str, i64> = HashMap::new();
    let mut next = ids.iter().copied();
    let mut flat = Vec::with_capacity(task_count);
    for (position, stage) in positions.iter().zip(&p.stages) {
        for task in &stage.tasks {
            let id = next.next().ok_or_else(|| {
                StoreError::Corrupt("the task id sequence returned too few values".to_string())
            })?;
            if let Some(key) = task.key.as_deref() {
                by_key.insert(key, id);
            }
            flat.push((id, *position, task));
        }
    }

    let (mut dep_task, mut dep_on) = (Vec::new(), Vec::new());
    let mut t_ids = Vec::with_capacity(task_count);
    let mut t_positions = Vec::with_capacity(task_count);
    let mut t_handlers = Vec::with_capacity(task_count);
    let mut t_executors = Vec::with_capacity(task_count);
    let mut t_keys = Vec::with_capacity(task_count);
    let mut t_states = Vec::with_capacity(task_count);
    let mut t_max = Vec::with_capacity(task_count);
    let mut t_timeouts = Vec::with_capacity(task_count);
    let mut t_inputs = Vec::with_capacity(task_count);
    let mut t_deps = Vec::with_capacity(task_count);
    let mut t_agent = Vec::with_capacity(task_count);
    let mut t_on_failure = Vec::with_capacity(task_count);
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
        if !waiting {
            fx.ready(task.executor.as_str());
        }
        for dep in &deps {
            dep_task.push(*id);
            dep_on.push(*dep);
        }
        t_ids.push(*id);
        t_positions.push(*position);
        t_handlers.push(task.handler.as_str());
        t_executors.push(task.executor.as_str());
        t_keys.push(task.key.as_deref());
        t_states.push(if waiting { "blocked" } else { "pending" });
        t_max.push(task.max_attempts);
        t_timeouts.push(task.timeout_ms);
        t_inputs.push(task.input_json.as_str());
        t_deps.push(i32::try_from(deps.len()).unwrap_or(i32::MAX));
        t_agent.push(task.agent_json.as_deref());
        t_on_failure.push(task.on_failure.as_str());
    }
    if task_count > 0 {
        sqlx::query(
            "INSERT INTO tasks (id, tenant_id, job_id, stage_position, handler, executor, key,
                                state, max_attempts, timeout_ms, run_after, input_json,
                                deps_remaining, agent_json, on_failure, created_at, updated_at)
             SELECT t.id, $1, $2, t.position, t.handler, t.executor, t.key, t.state,
                    t.max_attempts, t.timeout_ms, $3, t.input, t.deps, t.agent, t.on_failure,
                    $3, $3
             FROM unnest($4::int8[], $5::int4[], $6::text[], $7::text[], $8::text[], $9::text[],
                         $10::int4[], $11::int8[], $12::text[], $13::int4[], $14::text[],
                         $15::text[])
                  AS t(id, position, handler, executor, key, state, max_attempts, timeout_ms,
                       input, deps, agent, on_failure)",
        )
        .bind(tenant)
        .bind(job)
        .bind(now)
        .bind(&t_ids)
        .bind(&t_positions)
        .bind(&t_handlers)
        .bind(&t_executors)
        .bind(&t_keys)
        .bind(&t_states)
        .bind(&t_max)
        .bind(&t_timeouts)
        .bind(&t_inputs)
        .bind(&t_deps)
        .bind(&t_agent)
        .bind(&t_on_failure)
        .execute(&mut *tx)
        .await?;
    }
    if !dep_task.is_empty() {
        sqlx::query(
            "INSERT INTO task_deps (task_id, depends_on, tenant_id)
             SELECT d.task_id, d.depends_on, $3
             FROM unnest($1::int8[], $2::int8[]) AS d(task_id, depends_on)",
        )
        .bind(&dep_task)
        .bind(&dep_on)
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    }

    if stage_count == 0 {
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
        advance::close_drained(&mut tx, &[(job, 0)], &mut fx).await?;
    }
    fx.write(&mut tx).await?;
    tx.commit().await?;
    Ok(Submitted {
        job_id: JobId(job),
        created: true,
    })
}
