//! Claiming, completing, renewing and rescuing tasks.
//!
//! **Invariant (fencing):** a completion is recorded only for a row locked
//! `WHERE state = 'running' AND attempt = $claimed_attempt`; anything else is
//! refused as stale and leaves an event, nothing more.
//! **Invariant (one transaction per batch, set-based):** a batch's task
//! updates, dependents, stage counters, spawned children, advancement and
//! events are a fixed number of statements over arrays, whatever its size.
//! **Lock order:** completed task rows (ascending id), then their dependents
//! (ascending id, one statement), then stage rows, then job rows.

use super::advance;
use super::effects::Effects;
use super::{after, parse_stage_state, parse_task_state};
use crate::model::{EventKind, JobId, LeaseToken, Millis, StageState, TaskId, TaskState, TenantId};
use crate::store::rules::{self, Decision, Held, HeldRow, StageDelta, StageMeta, stage_of};
use crate::store::{
    ClaimBatch, ClaimedTask, CompleteBatch, CompletionOutcome, RenewLease, RescueExpiredLeases,
    StoreError, TaskResult,
};
use sqlx::{PgConnection, PgPool};
use std::collections::{BTreeMap, BTreeSet, HashMap};

// ------------------------------------------------------------ claim

pub(super) async fn claim_batch(
    pool: &PgPool,
    p: &ClaimBatch,
) -> Result<Vec<ClaimedTask>, StoreError> {
    if p.limit == 0 || p.handlers.as_ref().is_some_and(|h| h.is_empty()) {
        return Ok(Vec::new());
    }
    let lease_until = after(p.now, p.lease);
    // One statement: pick with SKIP LOCKED (never waits on another node),
    // claim, and log; the CTEs share one snapshot and commit together.
    let rows: Vec<ClaimedRow> = sqlx::query_as(
        "WITH picked AS (
                 SELECT t.id FROM tasks t
                 JOIN jobs j ON j.id = t.job_id
                 JOIN stages s ON s.job_id = t.job_id AND s.position = t.stage_position
                 WHERE t.state = 'pending' AND t.run_after <= $1
                   AND t.executor = $2 AND ($3::text[] IS NULL OR t.handler = ANY($3))
                   AND t.deps_remaining = 0
                   AND j.state = 'running' AND s.state = 'open'
                   AND ($4::text IS NULL OR t.tenant_id = $4)
                   AND ($5::int8 IS NULL OR t.job_id = $5)
                 ORDER BY t.id
                 LIMIT $6
                 FOR UPDATE OF t SKIP LOCKED
             ),
             claimed AS (
                 UPDATE tasks t
                 SET state = 'running', attempt = t.attempt + 1, lease_expires_at = $7,
                     worker = $8, updated_at = $1
                 WHERE t.id = ANY(ARRAY(SELECT id FROM picked))
                 RETURNING t.id, t.tenant_id, t.job_id, t.stage_position, t.handler, t.attempt,
                           t.input_json, t.timeout_ms, t.max_attempts
             ),
             logged AS (
                 INSERT INTO events (tenant_id, job_id, task_id, kind, stage_position, detail, at)
                 SELECT c.tenant_id, c.job_id, c.id, 'task_claimed', c.stage_position,
                        'attempt ' || c.attempt || ' by ' || $8, $1
                 FROM claimed c ORDER BY c.id
             )
             SELECT c.id, c.tenant_id, c.job_id, c.stage_position, s.name AS stage_name, c.attempt,
                    c.handler, c.input_json, c.timeout_ms, c.max_attempts
             FROM claimed c
             JOIN stages s ON s.job_id = c.job_id AND s.position = c.stage_position
             ORDER BY c.id",
    )
    .bind(p.now)
    .bind(p.executor.as_str())
    .bind(&p.handlers)
    .bind(p.tenant.as_ref().map(|t| t.0.as_str()))
    .bind(p.job.map(|j| j.0))
    .bind(i64::from(p.limit))
    .bind(lease_until)
    .bind(&p.worker)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ClaimedTask {
            tenant: TenantId(r.tenant_id),
            job_id: JobId(r.job_id),
            lease: LeaseToken {
                task_id: TaskId(r.id),
                attempt: r.attempt,
            },
            stage_name: r.stage_name,
            stage_position: r.stage_position,
            handler: r.handler,
            input_json: r.input_json,
            timeout_ms: r.timeout_ms,
            max_attempts: r.max_attempts,
        })
        .collect())
}

#[derive(sqlx::FromRow)]
struct ClaimedRow {
    id: i64,
    tenant_id: String,
    job_id: i64,
    stage_position: i32,
    stage_name: String,
    attempt: i32,
    handler: String,
    input_json: String,
    timeout_ms: i64,
    max_attempts: i32,
}

// ------------------------------------------------------------ renew

pub(super) async fn renew_lease(pool: &PgPool, p: &RenewLease) -> Result<bool, StoreError> {
    // One statement: the renewal and its note (if any) commit together, and
    // the note is written only when the lease was still held.
    let renewed: i64 = sqlx::query_scalar(
        "WITH renewed AS (
                 UPDATE tasks SET lease_expires_at = $4, updated_at = $5
                 WHERE id = $1 AND tenant_id = $2 AND state = 'running' AND attempt = $3
                 RETURNING id, tenant_id, job_id, stage_position
             ),
             noted AS (
                 INSERT INTO events (tenant_id, job_id, task_id, kind, stage_position, detail, at)
                 SELECT tenant_id, job_id, id, 'task_note', stage_position, $6, $5
                 FROM renewed WHERE $6::text IS NOT NULL
             )
             SELECT count(*) FROM renewed",
    )
    .bind(p.lease.task_id.0)
    .bind(&p.tenant.0)
    .bind(p.lease.attempt)
    .bind(after(p.now, p.lease_for))
    .bind(p.now)
    .bind(p.note.as_deref())
    .fetch_one(pool)
    .await?;
    Ok(renewed == 1)
}

// ------------------------------------------------------------ complete

pub(super) async fn complete_batch(
    pool: &PgPool,
    p: &CompleteBatch,
) -> Result<Vec<CompletionOutcome>, StoreError> {
    if p.completions.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = pool.begin().await?;
    let mut fx = Effects::new(p.now);

    // The first completion per task id counts; a duplicate in the same batch
    // is refused like any other stale completion.
    let mut first: HashMap<i64, usize> = HashMap::new();
    for (i, c) in p.completions.iter().enumerate() {
        first.entry(c.lease.task_id.0).or_insert(i);
    }
    let mut order: Vec<usize> = first.values().copied().collect();
    order.sort_unstable_by_key(|&i| p.completions[i].lease.task_id.0);
    let ids: Vec<i64> = order
        .iter()
        .map(|&i| p.completions[i].lease.task_id.0)
        .collect();
    let attempts: Vec<i32> = order
        .iter()
        .map(|&i| p.completions[i].lease.attempt)
        .collect();
    let tenants: Vec<&str> = order
        .iter()
        .map(|&i| p.completions[i].tenant.0.as_str())
        .collect();

    // Task rows first, ascending id, fenced on (running, attempt, tenant).
    let rows: Vec<HeldRow> = sqlx::query_as(
        "SELECT t.id, t.tenant_id, t.job_id, t.stage_position, t.attempt, t.max_attempts,
                t.on_failure
         FROM tasks t
         JOIN unnest($1::int8[], $2::int4[], $3::text[]) AS c(id, attempt, tenant_id)
           ON t.id = c.id AND t.attempt = c.attempt AND t.tenant_id = c.tenant_id
         WHERE t.state = 'running' AND t.id = ANY($1)
         ORDER BY t.id
         FOR NO KEY UPDATE OF t",
    )
    .bind(&ids)
    .bind(&attempts)
    .bind(&tenants)
    .fetch_all(&mut *tx)
    .await?;
    let mut held: HashMap<i64, Held> = rows
        .into_iter()
        .map(|row| Held::from_row(row).map(|h| (h.id, h)))
        .collect::<Result<_, StoreError>>()?;

    let mut items = Vec::new();
    let mut stale = Vec::new();
    for &i in &order {
        let c = &p.completions[i];
        match held.remove(&c.lease.task_id.0) {
            Some(h) => {
                for line in &c.logs {
                    fx.event(
                        &h.tenant,
                        h.job,
                        Some(h.id),
                        EventKind::TaskLog,
                        Some(h.position),
                        Some(line.clone()),
                    );
                }
                items.push((h, c.result.clone()));
            }
            None => stale.push(i),
        }
    }
    // Later duplicates within the batch are refused (and logged) too.
    stale.extend(
        p.completions
            .iter()
            .enumerate()
            .filter(|(i, c)| first.get(&c.lease.task_id.0) != Some(i))
            .map(|(i, _)| i),
    );
    let mut outcomes: HashMap<i64, CompletionOutcome> = record(&mut tx, items, &mut fx).await?;
    refuse_stale(&mut tx, p, &stale, &mut fx).await?;

    fx.write(&mut tx).await?;
    tx.commit().await?;

    Ok(p.completions
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let id = c.lease.task_id.0;
            if first.get(&id) == Some(&i) {
                outcomes.remove(&id).unwrap_or(CompletionOutcome::Stale)
            } else {
                CompletionOutcome::Stale
            }
        })
        .collect())
}

/// Log a `completion_refused` event for each stale completion whose task
/// belongs to the completing tenant (another tenant's id leaves no trace).
async fn refuse_stale(
    conn: &mut PgConnection,
    p: &CompleteBatch,
    stale: &[usize],
    fx: &mut Effects,
) -> Result<(), StoreError> {
    if stale.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = stale
        .iter()
        .map(|&i| p.completions[i].lease.task_id.0)
        .collect();
    let tenants: Vec<&str> = stale
        .iter()
        .map(|&i| p.completions[i].tenant.0.as_str())
        .collect();
    let rows: Vec<(i64, String, i64, i32, String, i32)> = sqlx::query_as(
        "SELECT t.id, t.tenant_id, t.job_id, t.stage_position, t.state, t.attempt
         FROM tasks t
         JOIN unnest($1::int8[], $2::text[]) AS c(id, tenant_id)
           ON t.id = c.id AND t.tenant_id = c.tenant_id
         WHERE t.id = ANY($1)",
    )
    .bind(&ids)
    .bind(&tenants)
    .fetch_all(&mut *conn)
    .await?;
    let found: HashMap<i64, (String, i64, i32, String, i32)> = rows
        .into_iter()
        .map(|(id, tenant, job, pos, state, attempt)| (id, (tenant, job, pos, state, attempt)))
        .collect();
    for &i in stale {
        let c = &p.completions[i];
        if let Some((tenant, job, pos, state, attempt)) = found.get(&c.lease.task_id.0) {
            let detail = format!(
                "stale completion of attempt {} refused: the task is {state} at attempt {attempt}",
                c.lease.attempt
            );
            fx.event(
                tenant,
                *job,
                Some(c.lease.task_id.0),
                EventKind::CompletionRefused,
                Some(*pos),
                Some(detail),
            );
        }
    }
    Ok(())
}

// ------------------------------------------------------------ rescue

pub(super) async fn rescue_expired_leases(
    pool: &PgPool,
    p: &RescueExpiredLeases,
) -> Result<u64, StoreError> {
    if p.limit == 0 {
        return Ok(0);
    }
    let mut tx = pool.begin().await?;
    let mut fx = Effects::new(p.now);
    // SKIP LOCKED: every node may run this at once; each expired row is
    // taken by exactly one of them, and a row being completed right now is
    // left to its completion.
    let rows: Vec<HeldRow> = sqlx::query_as(
        "SELECT id, tenant_id, job_id, stage_position, attempt, max_attempts, on_failure
         FROM tasks
         WHERE state = 'running' AND lease_expires_at <= $1
         ORDER BY id
         LIMIT $2
         FOR NO KEY UPDATE SKIP LOCKED",
    )
    .bind(p.now)
    .bind(i64::from(p.limit))
    .fetch_all(&mut *tx)
    .await?;
    let rescued = rows.len() as u64;
    let items = rows
        .into_iter()
        .map(|row| {
            let held = Held::from_row(row)?;
            let error = format!("lease expired during attempt {}", held.attempt);
            Ok((
                held,
                TaskResult::Retryable {
                    error,
                    retry_after: p.retry_after,
                },
            ))
        })
        .collect::<Result<_, StoreError>>()?;
    record(&mut tx, items, &mut fx).await?;
    fx.write(&mut tx).await?;
    tx.commit().await?;
    Ok(rescued)
}

// ------------------------------------------------------------ recording

/// Record results for task rows this transaction holds locked (running, with
/// the claimed attempt): the common path of `complete_batch` and lease rescue.
/// `items` must be in ascending task id order.
pub(super) async fn record(
    conn: &mut PgConnection,
    items: Vec<(Held, TaskResult)>,
    fx: &mut Effects,
) -> Result<HashMap<i64, CompletionOutcome>, StoreError> {
    if items.is_empty() {
        return Ok(HashMap::new());
    }
    let now = fx.now();
    let stages = load_stages(conn, items.iter().map(|(h, _)| h.job)).await?;

    // Decide in Rust, checked against the transition table.
    let decisions = rules::decide_all(items, &stages, now)?;

    write_tasks(conn, &decisions, now).await?;
    for d in &decisions {
        fx.event(
            &d.held.tenant,
            d.held.job,
            Some(d.held.id),
            d.event.0,
            Some(d.held.position),
            d.event.1.clone(),
        );
    }

    let rules::Consequences {
        released,
        doomed_roots,
        mut deltas,
    } = rules::consequences(&decisions);
    settle_dependents(conn, &released, &doomed_roots, &stages, &mut deltas, fx).await?;

    // Stage rows: the completed tasks' stages and every spawn target.
    rules::count_spawns(&decisions, &mut deltas);
    fx.flush_events(conn).await?;
    let keys: Vec<(i64, i32)> = deltas.keys().copied().collect();
    let locked = advance::lock_stages(conn, &keys).await?;
    insert_children(conn, &decisions, &locked, now, fx).await?;
    advance::apply_deltas(conn, &deltas).await?;
    let drained: Vec<(i64, i32)> = deltas
        .iter()
        .filter(|(_, d)| d.done > 0)
        .map(|(k, _)| *k)
        .collect();
    // A retried task is not announced: it becomes claimable only after its
    // backoff, and the poll loop finds it then.
    advance::close_drained(conn, &drained, fx).await?;

    Ok(decisions
        .into_iter()
        .map(|d| (d.held.id, d.outcome))
        .collect())
}

async fn load_stages(
    conn: &mut PgConnection,
    jobs: impl Iterator<Item = i64>,
) -> Result<HashMap<i64, Vec<StageMeta>>, StoreError> {
    let mut ids: Vec<i64> = jobs.collect();
    ids.sort_unstable();
    ids.dedup();
    let rows: Vec<(i64, i32, String, String)> = sqlx::query_as(
        "SELECT job_id, position, name, state FROM stages
         WHERE job_id = ANY($1) ORDER BY job_id, position",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut out: HashMap<i64, Vec<StageMeta>> = HashMap::new();
    for (job, position, name, state) in rows {
        out.entry(job).or_default().push(StageMeta {
            position,
            name,
            state: parse_stage_state(&state)?,
        });
    }
    Ok(out)
}

async fn write_tasks(
    conn: &mut PgConnection,
    decisions: &[Decision],
    now: Millis,
) -> Result<(), StoreError> {
    let ids: Vec<i64> = decisions.iter().map(|d| d.held.id).collect();
    let states: Vec<&str> = decisions.iter().map(|d| d.to.as_str()).collect();
    let outputs: Vec<Option<&str>> = decisions.iter().map(|d| d.output.as_deref()).collect();
    let errors: Vec<Option<&str>> = decisions.iter().map(|d| d.error.as_deref()).collect();
    let run_afters: Vec<Option<i64>> = decisions.iter().map(|d| d.run_after).collect();
    sqlx::query(
        "UPDATE tasks t
         SET state = u.state, output_json = u.output, error = u.error,
             run_after = COALESCE(u.run_after, t.run_after),
             lease_expires_at = NULL, updated_at = $6,
             finished_at = CASE WHEN u.state IN ('succeeded', 'dead') THEN $6 END
         FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::int8[])
              AS u(id, state, output, error, run_after)
         WHERE t.id = u.id AND t.id = ANY($1)",
    )
    .bind(&ids)
    .bind(&states)
    .bind(&outputs)
    .bind(&errors)
    .bind(&run_afters)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Release (decrement `deps_remaining`, ready at zero) the dependents of
/// `released`, and cancel the transitive dependents of `doomed_roots`. All
/// touched rows are locked in one ascending-id statement.
async fn settle_dependents(
    conn: &mut PgConnection,
    released: &[i64],
    doomed_roots: &[i64],
    stages: &HashMap<i64, Vec<StageMeta>>,
    deltas: &mut BTreeMap<(i64, i32), StageDelta>,
    fx: &mut Effects,
) -> Result<(), StoreError> {
    let doomed: BTreeSet<i64> = if doomed_roots.is_empty() {
        BTreeSet::new()
    } else {
        sqlx::query_scalar::<_, i64>(
            "WITH RECURSIVE doomed(id) AS (
                 SELECT task_id FROM task_deps WHERE depends_on = ANY($1)
                 UNION
                 SELECT d.task_id FROM task_deps d JOIN doomed ON d.depends_on = doomed.id
             )
             SELECT id FROM doomed",
        )
        .bind(doomed_roots)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect()
    };
    let releases: HashMap<i64, i32> = if released.is_empty() {
        HashMap::new()
    } else {
        sqlx::query_as::<_, (i64, i64)>(
            "SELECT task_id, count(*) FROM task_deps WHERE depends_on = ANY($1) GROUP BY task_id",
        )
        .bind(released)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|(id, n)| (id, i32::try_from(n).unwrap_or(i32::MAX)))
        .collect()
    };
    if doomed.is_empty() && releases.is_empty() {
        return Ok(());
    }
    let mut touched: Vec<i64> = doomed
        .iter()
        .copied()
        .chain(releases.keys().copied())
        .collect();
    touched.sort_unstable();
    touched.dedup();
    let rows: Vec<(i64, String, i64, i32, String, i32, String)> = sqlx::query_as(
        "SELECT id, tenant_id, job_id, stage_position, state, deps_remaining, executor
         FROM tasks
         WHERE id = ANY($1) AND state IN ('blocked', 'pending')
         ORDER BY id
         FOR NO KEY UPDATE",
    )
    .bind(&touched)
    .fetch_all(&mut *conn)
    .await?;

    let now = fx.now();
    let mut cancel_ids = Vec::new();
    let (mut upd_ids, mut upd_deps, mut upd_states) = (Vec::new(), Vec::new(), Vec::new());
    for (id, tenant, job, position, state, deps, executor) in rows {
        let state = parse_task_state(&state)?;
        if doomed.contains(&id) {
            state.transition(TaskState::Cancelled)?;
            cancel_ids.push(id);
            deltas.entry((job, position)).or_default().done += 1;
            fx.event(
                &tenant,
                job,
                Some(id),
                EventKind::TaskCancelled,
                Some(position),
                Some("cancelled: a task it depends on died".to_string()),
            );
            continue;
        }
        let Some(&n) = releases.get(&id) else {
            continue;
        };
        if deps == 0 {
            // Already counted (its dependency was retried and finished again).
            continue;
        }
        let left = deps - n.min(deps);
        let open = stage_of(stages, job, position).map(|s| s.state) == Some(StageState::Open);
        let to = if left == 0 && state == TaskState::Blocked && open {
            state.transition(TaskState::Pending)?;
            fx.ready(&executor);
            TaskState::Pending
        } else {
            state
        };
        upd_ids.push(id);
        upd_deps.push(left);
        upd_states.push(to.as_str());
    }
    if !cancel_ids.is_empty() {
        sqlx::query(
            "UPDATE tasks
             SET state = 'cancelled', error = 'cancelled: a task it depends on died',
                 lease_expires_at = NULL, finished_at = $2, updated_at = $2
             WHERE id = ANY($1)",
        )
        .bind(&cancel_ids)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    if !upd_ids.is_empty() {
        sqlx::query(
            "UPDATE tasks t
             SET deps_remaining = u.deps, state = u.state, updated_at = $4,
                 run_after = CASE WHEN u.state = 'pending' AND t.state = 'blocked'
                                  THEN $4 ELSE t.run_after END
             FROM unnest($1::int8[], $2::int4[], $3::text[]) AS u(id, deps, state)
             WHERE t.id = u.id AND t.id = ANY($1)",
        )
        .bind(&upd_ids)
        .bind(&upd_deps)
        .bind(&upd_states)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Insert spawned children into their (locked) target stages: pending when
/// the stage is open, blocked while it waits.
async fn insert_children(
    conn: &mut PgConnection,
    decisions: &[Decision],
    locked: &BTreeMap<(i64, i32), StageState>,
    now: Millis,
    fx: &mut Effects,
) -> Result<(), StoreError> {
    let count: usize = decisions.iter().map(|d| d.spawn.len()).sum();
    if count == 0 {
        return Ok(());
    }
    let mut tenants = Vec::with_capacity(count);
    let mut jobs = Vec::with_capacity(count);
    let mut positions = Vec::with_capacity(count);
    let mut handlers = Vec::with_capacity(count);
    let mut inputs = Vec::with_capacity(count);
    let mut max_attempts = Vec::with_capacity(count);
    let mut timeouts = Vec::with_capacity(count);
    let mut parents = Vec::with_capacity(count);
    let mut states = Vec::with_capacity(count);
    for d in decisions {
        for (target, child) in &d.spawn {
            let stage_state = locked.get(&(d.held.job, *target)).copied().ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "stage {target} of job {} vanished while spawning into it",
                    d.held.job
                ))
            })?;
            let state = if stage_state == StageState::Open {
                fx.ready("wasm");
                TaskState::Pending
            } else {
                TaskState::Blocked
            };
            tenants.push(d.held.tenant.as_str());
            jobs.push(d.held.job);
            positions.push(*target);
            handlers.push(child.handler.as_str());
            inputs.push(child.input_json.as_str());
            max_attempts.push(child.max_attempts);
            timeouts.push(child.timeout_ms);
            parents.push(d.held.id);
            states.push(state.as_str());
        }
    }
    sqlx::query(
        "INSERT INTO tasks (tenant_id, job_id, stage_position, handler, executor, state,
                            max_attempts, timeout_ms, run_after, input_json, parent_task_id,
                            on_failure, created_at, updated_at)
         SELECT c.tenant_id, c.job_id, c.position, c.handler, 'wasm', c.state,
                coalesce(s.max_attempts, c.max_attempts), coalesce(s.timeout_ms, c.timeout_ms),
                $10, c.input, c.parent, s.on_failure, $10, $10
         FROM unnest($1::text[], $2::int8[], $3::int4[], $4::text[], $5::text[], $6::int4[],
                     $7::int8[], $8::int8[], $9::text[])
              WITH ORDINALITY AS c(tenant_id, job_id, position, handler, input, max_attempts,
                                   timeout_ms, parent, state, ord)
         JOIN stages s ON s.job_id = c.job_id AND s.position = c.position
         ORDER BY c.ord",
    )
    .bind(&tenants)
    .bind(&jobs)
    .bind(&positions)
    .bind(&handlers)
    .bind(&inputs)
    .bind(&max_attempts)
    .bind(&timeouts)
    .bind(&parents)
    .bind(&states)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
