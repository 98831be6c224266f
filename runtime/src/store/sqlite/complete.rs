//! Claiming, completing, renewing and rescuing tasks.
//!
//! **Invariant (fencing):** a completion is recorded only for a row that is
//! `state = 'running' AND attempt = claimed attempt` inside the write
//! transaction; anything else is refused as stale and leaves an event,
//! nothing more.
//! **Invariant (one transaction per batch, set-based):** a batch's task
//! updates, dependents, stage counters, spawned children, advancement and
//! events are a fixed number of statements over JSON arrays, whatever its
//! size.

use super::effects::Effects;
use super::{advance, after, json_array, parse_stage_state, parse_task_state};
use crate::model::{EventKind, JobId, LeaseToken, Millis, StageState, TaskId, TaskState, TenantId};
use crate::store::rules::{self, Decision, Held, HeldRow, StageDelta, StageMeta, stage_of};
use crate::store::{
    ClaimBatch, ClaimedTask, CompleteBatch, CompletionOutcome, RenewLease, RescueExpiredLeases,
    StoreError, TaskResult,
};
use sqlx::SqliteConnection;
use std::collections::{BTreeMap, BTreeSet, HashMap};

// ------------------------------------------------------------ claim

pub(super) async fn claim_batch(
    conn: &mut SqliteConnection,
    p: &ClaimBatch,
) -> Result<Vec<ClaimedTask>, StoreError> {
    let lease_until = after(p.now, p.lease);
    let handlers = p.handlers.as_ref().map(|h| json_array(h));
    // The pending partial index, walked in id order, is the plan; the stage
    // and job checks are primary-key lookups per candidate.
    let mut rows: Vec<ClaimedRow> = sqlx::query_as(
        "UPDATE tasks
         SET state = 'running', attempt = attempt + 1, lease_expires_at = ?7,
             worker = ?8, updated_at = ?1
         WHERE id IN (
             SELECT t.id FROM tasks t INDEXED BY tasks_claimable
             JOIN stages s ON s.job_id = t.job_id AND s.position = t.stage_position
             JOIN jobs j ON j.id = t.job_id
             WHERE t.state = 'pending' AND t.executor = ?2 AND t.run_after <= ?1
               AND t.deps_remaining = 0
               AND (?3 IS NULL OR t.handler IN (SELECT value FROM json_each(?3)))
               AND s.state = 'open' AND j.state = 'running'
               AND (?4 IS NULL OR t.tenant_id = ?4)
               AND (?5 IS NULL OR t.job_id = ?5)
             ORDER BY t.id
             LIMIT ?6
         )
         RETURNING id, tenant_id, job_id, stage_position, handler, attempt, input_json,
                   timeout_ms, max_attempts",
    )
    .bind(p.now)
    .bind(p.executor.as_str())
    .bind(handlers)
    .bind(p.tenant.as_ref().map(|t| t.0.as_str()))
    .bind(p.job.map(|j| j.0))
    .bind(i64::from(p.limit))
    .bind(lease_until)
    .bind(&p.worker)
    .fetch_all(&mut *conn)
    .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    rows.sort_unstable_by_key(|r| r.id);
    let mut stage_keys: Vec<(i64, i32)> =
        rows.iter().map(|r| (r.job_id, r.stage_position)).collect();
    stage_keys.sort_unstable();
    stage_keys.dedup();
    let names: HashMap<(i64, i32), String> = sqlx::query_as::<_, (i64, i32, String)>(
        "SELECT s.job_id, s.position, s.name
         FROM json_each(?1) AS k
         CROSS JOIN stages s ON s.job_id = k.value ->> 0 AND s.position = k.value ->> 1",
    )
    .bind(json_array(&stage_keys))
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|(j, p, n)| ((j, p), n))
    .collect();

    let mut fx = Effects::new(p.now);
    for r in &rows {
        fx.event(
            &r.tenant_id,
            r.job_id,
            Some(r.id),
            EventKind::TaskClaimed,
            Some(r.stage_position),
            Some(format!("attempt {} by {}", r.attempt, p.worker)),
        );
    }
    fx.write(conn).await?;
    Ok(rows
        .into_iter()
        .map(|r| ClaimedTask {
            stage_name: names
                .get(&(r.job_id, r.stage_position))
                .cloned()
                .unwrap_or_default(),
            tenant: TenantId(r.tenant_id),
            job_id: JobId(r.job_id),
            lease: LeaseToken {
                task_id: TaskId(r.id),
                attempt: r.attempt,
            },
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
    attempt: i32,
    handler: String,
    input_json: String,
    timeout_ms: i64,
    max_attempts: i32,
}

// ------------------------------------------------------------ renew

pub(super) async fn renew_lease(
    conn: &mut SqliteConnection,
    p: &RenewLease,
) -> Result<bool, StoreError> {
    let updated = sqlx::query(
        "UPDATE tasks SET lease_expires_at = ?4, updated_at = ?5
         WHERE id = ?1 AND tenant_id = ?2 AND state = 'running' AND attempt = ?3",
    )
    .bind(p.lease.task_id.0)
    .bind(&p.tenant.0)
    .bind(p.lease.attempt)
    .bind(after(p.now, p.lease_for))
    .bind(p.now)
    .execute(&mut *conn)
    .await?;
    let held = updated.rows_affected() == 1;
    // The note is written only with a held lease, in the renewal's transaction.
    if held && let Some(note) = &p.note {
        sqlx::query(
            "INSERT INTO events (tenant_id, job_id, task_id, kind, stage_position, detail, at)
             SELECT tenant_id, job_id, id, 'task_note', stage_position, ?2, ?3
             FROM tasks WHERE id = ?1",
        )
        .bind(p.lease.task_id.0)
        .bind(note)
        .bind(p.now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(held)
}

// ------------------------------------------------------------ complete

pub(super) async fn complete_batch(
    conn: &mut SqliteConnection,
    p: &CompleteBatch,
) -> Result<Vec<CompletionOutcome>, StoreError> {
    let mut fx = Effects::new(p.now);

    // The first completion per task id counts; a duplicate in the same batch
    // is refused like any other stale completion.
    let mut first: HashMap<i64, usize> = HashMap::new();
    for (i, c) in p.completions.iter().enumerate() {
        first.entry(c.lease.task_id.0).or_insert(i);
    }
    let mut order: Vec<usize> = first.values().copied().collect();
    order.sort_unstable_by_key(|&i| p.completions[i].lease.task_id.0);
    let keys: Vec<(i64, i32, &str)> = order
        .iter()
        .map(|&i| {
            let c = &p.completions[i];
            (c.lease.task_id.0, c.lease.attempt, c.tenant.0.as_str())
        })
        .collect();

    // Fenced on (running, attempt, tenant).
    let rows: Vec<HeldRow> = sqlx::query_as(
        "SELECT t.id, t.tenant_id, t.job_id, t.stage_position, t.attempt, t.max_attempts,
                t.on_failure
         FROM json_each(?1) AS c
         CROSS JOIN tasks t ON t.id = c.value ->> 0
         WHERE t.attempt = c.value ->> 1 AND t.tenant_id = c.value ->> 2
           AND t.state = 'running'",
    )
    .bind(json_array(&keys))
    .fetch_all(&mut *conn)
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
    let mut outcomes = record(conn, items, &mut fx).await?;
    refuse_stale(conn, p, &stale, &mut fx).await?;
    fx.write(conn).await?;

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
    conn: &mut SqliteConnection,
    p: &CompleteBatch,
    stale: &[usize],
    fx: &mut Effects,
) -> Result<(), StoreError> {
    if stale.is_empty() {
        return Ok(());
    }
    let keys: Vec<(i64, &str)> = stale
        .iter()
        .map(|&i| {
            (
                p.completions[i].lease.task_id.0,
                p.completions[i].tenant.0.as_str(),
            )
        })
        .collect();
    let rows: Vec<(i64, String, i64, i32, String, i32)> = sqlx::query_as(
        "SELECT t.id, t.tenant_id, t.job_id, t.stage_position, t.state, t.attempt
         FROM json_each(?1) AS c
         CROSS JOIN tasks t ON t.id = c.value ->> 0
         WHERE t.tenant_id = c.value ->> 1",
    )
    .bind(json_array(&keys))
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
    conn: &mut SqliteConnection,
    p: &RescueExpiredLeases,
) -> Result<u64, StoreError> {
    let mut fx = Effects::new(p.now);
    let rows: Vec<HeldRow> = sqlx::query_as(
        "SELECT id, tenant_id, job_id, stage_position, attempt, max_attempts, on_failure
         FROM tasks
         WHERE state = 'running' AND lease_expires_at <= ?1
         ORDER BY id
         LIMIT ?2",
    )
    .bind(p.now)
    .bind(i64::from(p.limit))
    .fetch_all(&mut *conn)
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
    record(conn, items, &mut fx).await?;
    fx.write(conn).await?;
    Ok(rescued)
}

// ------------------------------------------------------------ recording

/// Record results for running tasks whose attempt this transaction checked:
/// the common path of `complete_batch` and lease rescue. `items` must be in
/// ascending task id order.
async fn record(
    conn: &mut SqliteConnection,
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
    let keys: Vec<(i64, i32)> = deltas.keys().copied().collect();
    let stage_states = advance::stage_states(conn, &keys).await?;
    insert_children(conn, &decisions, &stage_states, now).await?;
    advance::apply_deltas(conn, &deltas).await?;
    let drained: Vec<(i64, i32)> = deltas
        .iter()
        .filter(|(_, d)| d.done > 0)
        .map(|(k, _)| *k)
        .collect();
    advance::close_drained(conn, &drained, fx).await?;

    Ok(decisions
        .into_iter()
        .map(|d| (d.held.id, d.outcome))
        .collect())
}

async fn load_stages(
    conn: &mut SqliteConnection,
    jobs: impl Iterator<Item = i64>,
) -> Result<HashMap<i64, Vec<StageMeta>>, StoreError> {
    let mut ids: Vec<i64> = jobs.collect();
    ids.sort_unstable();
    ids.dedup();
    let rows: Vec<(i64, i32, String, String)> = sqlx::query_as(
        "SELECT s.job_id, s.position, s.name, s.state
         FROM json_each(?1) AS k
         CROSS JOIN stages s ON s.job_id = k.value
         ORDER BY s.job_id, s.position",
    )
    .bind(json_array(&ids))
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
    conn: &mut SqliteConnection,
    decisions: &[Decision],
    now: Millis,
) -> Result<(), StoreError> {
    // (id, state, output, error, run_after) per task.
    type Row<'a> = (i64, &'a str, Option<&'a str>, Option<&'a str>, Option<i64>);
    let rows: Vec<Row<'_>> = decisions
        .iter()
        .map(|d| {
            (
                d.held.id,
                d.to.as_str(),
                d.output.as_deref(),
                d.error.as_deref(),
                d.run_after,
            )
        })
        .collect();
    sqlx::query(
        "UPDATE tasks AS t
         SET state = u.value ->> 1, output_json = u.value ->> 2, error = u.value ->> 3,
             run_after = COALESCE(u.value ->> 4, t.run_after),
             lease_expires_at = NULL, updated_at = ?2,
             finished_at = CASE WHEN u.value ->> 1 IN ('succeeded', 'dead') THEN ?2 END
         FROM json_each(?1) AS u
         WHERE t.id = u.value ->> 0",
    )
    .bind(json_array(&rows))
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Release (decrement `deps_remaining`, ready at zero) the dependents of
/// `released`, and cancel the transitive dependents of `doomed_roots`.
async fn settle_dependents(
    conn: &mut SqliteConnection,
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
                 SELECT d.task_id FROM json_each(?1) AS r
                 CROSS JOIN task_deps d ON d.depends_on = r.value
                 UNION
                 SELECT d.task_id FROM doomed CROSS JOIN task_deps d ON d.depends_on = doomed.id
             )
             SELECT id FROM doomed",
        )
        .bind(json_array(doomed_roots))
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect()
    };
    let releases: HashMap<i64, i32> = if released.is_empty() {
        HashMap::new()
    } else {
        sqlx::query_as::<_, (i64, i64)>(
            "SELECT d.task_id, count(*) FROM json_each(?1) AS r
             CROSS JOIN task_deps d ON d.depends_on = r.value
             GROUP BY d.task_id",
        )
        .bind(json_array(released))
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
    let rows: Vec<(i64, String, i64, i32, String, i32)> = sqlx::query_as(
        "SELECT t.id, t.tenant_id, t.job_id, t.stage_position, t.state, t.deps_remaining
         FROM json_each(?1) AS k
         CROSS JOIN tasks t ON t.id = k.value
         WHERE t.state IN ('blocked', 'pending')
         ORDER BY t.id",
    )
    .bind(json_array(&touched))
    .fetch_all(&mut *conn)
    .await?;

    let now = fx.now();
    let mut cancel_ids = Vec::new();
    let mut updates: Vec<(i64, i32, &'static str)> = Vec::new();
    for (id, tenant, job, position, state, deps) in rows {
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
            state.transition(TaskState::Pending)?
        } else {
            state
        };
        updates.push((id, left, to.as_str()));
    }
    if !cancel_ids.is_empty() {
        sqlx::query(
            "UPDATE tasks
             SET state = 'cancelled', error = 'cancelled: a task it depends on died',
                 lease_expires_at = NULL, finished_at = ?2, updated_at = ?2
             WHERE id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json_array(&cancel_ids))
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    if !updates.is_empty() {
        sqlx::query(
            "UPDATE tasks AS t
             SET deps_remaining = u.value ->> 1, state = u.value ->> 2, updated_at = ?2,
                 run_after = CASE WHEN u.value ->> 2 = 'pending' AND t.state = 'blocked'
                                  THEN ?2 ELSE t.run_after END
             FROM json_each(?1) AS u
             WHERE t.id = u.value ->> 0",
        )
        .bind(json_array(&updates))
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Insert spawned children into their target stages: pending when the stage
/// is open, blocked while it waits.
async fn insert_children(
    conn: &mut SqliteConnection,
    decisions: &[Decision],
    stage_states: &BTreeMap<(i64, i32), StageState>,
    now: Millis,
) -> Result<(), StoreError> {
    let count: usize = decisions.iter().map(|d| d.spawn.len()).sum();
    if count == 0 {
        return Ok(());
    }
    let mut rows = Vec::with_capacity(count);
    for d in decisions {
        for (target, child) in &d.spawn {
            let stage_state = stage_states
                .get(&(d.held.job, *target))
                .copied()
                .ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "stage {target} of job {} vanished while spawning into it",
                        d.held.job
                    ))
                })?;
            let state = if stage_state == StageState::Open {
                TaskState::Pending
            } else {
                TaskState::Blocked
            };
            rows.push(serde_json::json!([
                d.held.tenant,
                d.held.job,
                target,
                child.handler,
                child.input_json,
                child.max_attempts,
                child.timeout_ms,
                d.held.id,
                state.as_str(),
            ]));
        }
    }
    sqlx::query(
        "INSERT INTO tasks (tenant_id, job_id, stage_position, handler, executor, state,
                            max_attempts, timeout_ms, run_after, input_json, parent_task_id,
                            on_failure, created_at, updated_at)
         SELECT c.value ->> 0, c.value ->> 1, c.value ->> 2, c.value ->> 3, 'wasm', c.value ->> 8,
                coalesce(s.max_attempts, c.value ->> 5), coalesce(s.timeout_ms, c.value ->> 6),
                ?2, c.value ->> 4, c.value ->> 7, s.on_failure, ?2, ?2
         FROM json_each(?1) AS c
         CROSS JOIN stages s ON s.job_id = c.value ->> 1 AND s.position = c.value ->> 2
         ORDER BY c.key",
    )
    .bind(json_array(&rows))
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
