//! Stage counters and advancement: the one place a stage closes and the next
//! one opens.
//!
//! **Invariant (exactly one advancement):** a stage closes only through
//! `UPDATE stages SET state = 'done' … WHERE state = 'open' AND remaining = 0
//! RETURNING`, run by the transaction that changed the counter while holding
//! the stage row lock; the row lock serializes the decrements, so exactly one
//! transaction sees the counter reach zero and gets the row back.
//!
//! **Lock order:** stage rows are locked here in ascending (job, position)
//! order, after the caller has locked every task row it completes. The task
//! rows locked afterwards — the blocked tasks of the stage being opened, or
//! the tasks of later stages of a job that failed — belong to stages that no
//! task of which can be running, and only the transaction that closed the
//! stage before them reaches them, so nobody holding them can be waiting for
//! us.

use super::effects::Effects;
use super::parse_stage_state;
use crate::model::{EventKind, JobState, StageState, TaskState};
use crate::store::StoreError;
use sqlx::PgConnection;
use std::collections::BTreeMap;

pub(super) use crate::store::rules::StageDelta;

/// Lock the given stage rows in ascending (job, position) order and return
/// their current states.
pub(super) async fn lock_stages(
    conn: &mut PgConnection,
    keys: &[(i64, i32)],
) -> Result<BTreeMap<(i64, i32), StageState>, StoreError> {
    let mut sorted = keys.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let (jobs, positions): (Vec<i64>, Vec<i32>) = sorted.into_iter().unzip();
    let rows: Vec<(i64, i32, String)> = sqlx::query_as(
        "SELECT s.job_id, s.position, s.state
         FROM stages s
         JOIN unnest($1::int8[], $2::int4[]) AS k(job_id, position)
           ON s.job_id = k.job_id AND s.position = k.position
         WHERE s.job_id = ANY($1)
         ORDER BY s.job_id, s.position
         FOR NO KEY UPDATE OF s",
    )
    .bind(&jobs)
    .bind(&positions)
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|(j, p, s)| Ok(((j, p), parse_stage_state(&s)?)))
        .collect()
}

/// Apply counter deltas to stage rows the caller has locked with
/// [`lock_stages`].
pub(super) async fn apply_deltas(
    conn: &mut PgConnection,
    deltas: &BTreeMap<(i64, i32), StageDelta>,
) -> Result<(), StoreError> {
    if deltas.is_empty() {
        return Ok(());
    }
    let mut jobs = Vec::with_capacity(deltas.len());
    let mut positions = Vec::with_capacity(deltas.len());
    let mut adds = Vec::with_capacity(deltas.len());
    let mut dones = Vec::with_capacity(deltas.len());
    for (&(j, p), d) in deltas {
        jobs.push(j);
        positions.push(p);
        adds.push(d.add);
        dones.push(d.done);
    }
    sqlx::query(
        "UPDATE stages s
         SET total = s.total + d.add, remaining = s.remaining + d.add - d.done
         FROM unnest($1::int8[], $2::int4[], $3::int8[], $4::int8[]) AS d(job_id, position, add, done)
         WHERE s.job_id = d.job_id AND s.position = d.position AND s.job_id = ANY($1)",
    )
    .bind(&jobs)
    .bind(&positions)
    .bind(&adds)
    .bind(&dones)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Close every given stage whose counter is at zero (each closes exactly
/// once, here) and advance its job. The rows must be locked by the caller.
pub(super) async fn close_drained(
    conn: &mut PgConnection,
    keys: &[(i64, i32)],
    fx: &mut Effects,
) -> Result<(), StoreError> {
    if keys.is_empty() {
        return Ok(());
    }
    let (jobs, positions): (Vec<i64>, Vec<i32>) = keys.iter().copied().unzip();
    let mut closed: Vec<(i64, i32)> = sqlx::query_as(
        "UPDATE stages s SET state = 'done', closed_at = $3
         FROM unnest($1::int8[], $2::int4[]) AS k(job_id, position)
         WHERE s.job_id = k.job_id AND s.position = k.position AND s.job_id = ANY($1)
           AND s.state = 'open' AND s.remaining = 0
         RETURNING s.job_id, s.position",
    )
    .bind(&jobs)
    .bind(&positions)
    .bind(fx.now())
    .fetch_all(&mut *conn)
    .await?;
    closed.sort_unstable();
    for (job, position) in closed {
        after_stage_closed(conn, job, position, fx).await?;
    }
    Ok(())
}

/// A stage of `job` has just closed (this transaction set it `done`): fail
/// the job if the stage ended with dead tasks under `fail_job` (each task's
/// own setting), otherwise open the next stage — closing it at once when it
/// has no tasks, and so on — or finish the job when none is left.
pub(super) async fn after_stage_closed(
    conn: &mut PgConnection,
    job: i64,
    mut position: i32,
    fx: &mut Effects,
) -> Result<(), StoreError> {
    loop {
        // Only deaths of tasks under `fail_job` (their own setting) fail the job.
        let (tenant, name, dead): (String, String, i64) = sqlx::query_as(
            "SELECT s.tenant_id, s.name,
                    (SELECT count(*) FROM tasks t
                     WHERE t.job_id = s.job_id AND t.stage_position = s.position
                       AND t.state = 'dead' AND t.on_failure = 'fail_job')
             FROM stages s WHERE s.job_id = $1 AND s.position = $2",
        )
        .bind(job)
        .bind(position)
        .fetch_one(&mut *conn)
        .await?;
        fx.event(
            &tenant,
            job,
            None,
            EventKind::StageClosed,
            Some(position),
            Some(name.clone()),
        );
        if dead > 0 {
            let reason = format!("stage {name:?} finished with {dead} dead task(s)");
            cancel_later_tasks(conn, &tenant, job, position, &reason, fx).await?;
            fx.finish_job(&tenant, job, JobState::Failed, Some(reason));
            return Ok(());
        }
        let next: Option<(i32, String, String)> = sqlx::query_as(
            "SELECT position, name, state FROM stages
             WHERE job_id = $1 AND position > $2 AND state <> 'done'
             ORDER BY position LIMIT 1",
        )
        .bind(job)
        .bind(position)
        .fetch_optional(&mut *conn)
        .await?;
        let Some((next_position, next_name, next_state)) = next else {
            fx.finish_job(&tenant, job, JobState::Succeeded, None);
            return Ok(());
        };
        if parse_stage_state(&next_state)? != StageState::Waiting {
            // Already open: only after `retry` reopened an earlier stage.
            return Ok(());
        }
        let remaining: i64 = sqlx::query_scalar(
            "UPDATE stages SET state = 'open', opened_at = $3
             WHERE job_id = $1 AND position = $2 AND state = 'waiting'
             RETURNING remaining",
        )
        .bind(job)
        .bind(next_position)
        .bind(fx.now())
        .fetch_one(&mut *conn)
        .await?;
        fx.event(
            &tenant,
            job,
            None,
            EventKind::StageOpened,
            Some(next_position),
            Some(next_name),
        );
        debug_assert!(TaskState::Blocked.can_become(TaskState::Pending));
        let ready: Vec<String> = sqlx::query_scalar(
            "WITH ready AS (
                 SELECT id FROM tasks
                 WHERE job_id = $1 AND stage_position = $2
                   AND state = 'blocked' AND deps_remaining = 0
                 ORDER BY id
                 FOR NO KEY UPDATE
             )
             UPDATE tasks t SET state = 'pending', run_after = $3, updated_at = $3
             WHERE t.id = ANY(ARRAY(SELECT id FROM ready))
             RETURNING t.executor",
        )
        .bind(job)
        .bind(next_position)
        .bind(fx.now())
        .fetch_all(&mut *conn)
        .await?;
        for executor in &ready {
            fx.ready(executor);
        }
        if remaining > 0 {
            return Ok(());
        }
        // A stage with no tasks completes at once.
        sqlx::query(
            "UPDATE stages SET state = 'done', closed_at = $3
             WHERE job_id = $1 AND position = $2 AND state = 'open' AND remaining = 0",
        )
        .bind(job)
        .bind(next_position)
        .bind(fx.now())
        .execute(&mut *conn)
        .await?;
        position = next_position;
    }
}

/// The job failed at stage `position`: cancel every unfinished task of the
/// stages after it (each cancellation counted off its stage).
async fn cancel_later_tasks(
    conn: &mut PgConnection,
    tenant: &str,
    job: i64,
    position: i32,
    reason: &str,
    fx: &mut Effects,
) -> Result<(), StoreError> {
    let error = format!("cancelled: the job failed ({reason})");
    let cancelled: Vec<(i64, i32)> = sqlx::query_as(
        "WITH doomed AS (
             SELECT id FROM tasks
             WHERE job_id = $1 AND stage_position > $2
               AND state IN ('blocked', 'pending', 'running')
             ORDER BY id
             FOR NO KEY UPDATE
         )
         UPDATE tasks t
         SET state = 'cancelled', error = $3, lease_expires_at = NULL,
             finished_at = $4, updated_at = $4
         WHERE t.id = ANY(ARRAY(SELECT id FROM doomed))
         RETURNING t.id, t.stage_position",
    )
    .bind(job)
    .bind(position)
    .bind(&error)
    .bind(fx.now())
    .fetch_all(&mut *conn)
    .await?;
    if cancelled.is_empty() {
        return Ok(());
    }
    let mut deltas: BTreeMap<(i64, i32), StageDelta> = BTreeMap::new();
    for &(task, stage) in &cancelled {
        deltas.entry((job, stage)).or_default().done += 1;
        fx.event(
            tenant,
            job,
            Some(task),
            EventKind::TaskCancelled,
            Some(stage),
            Some(error.clone()),
        );
    }
    let keys: Vec<(i64, i32)> = deltas.keys().copied().collect();
    lock_stages(conn, &keys).await?;
    apply_deltas(conn, &deltas).await
}
