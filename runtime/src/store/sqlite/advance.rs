//! Stage counters and advancement: the one place a stage closes and the next
//! one opens.
//!
//! **Invariant (exactly one advancement):** a stage closes only through
//! `UPDATE stages SET state = 'done' … WHERE state = 'open' AND remaining = 0
//! RETURNING`, inside the write transaction that changed the counter; SQLite
//! runs one write transaction at a time, so exactly one sees the counter
//! reach zero and gets the row back.

use super::effects::Effects;
use super::{json_array, parse_stage_state};
use crate::model::{EventKind, JobState, StageState, TaskState};
use crate::store::StoreError;
use crate::store::rules::StageDelta;
use sqlx::SqliteConnection;
use std::collections::BTreeMap;

/// The current states of the given stages.
pub(super) async fn stage_states(
    conn: &mut SqliteConnection,
    keys: &[(i64, i32)],
) -> Result<BTreeMap<(i64, i32), StageState>, StoreError> {
    let rows: Vec<(i64, i32, String)> = sqlx::query_as(
        "SELECT s.job_id, s.position, s.state
         FROM json_each(?1) AS k
         CROSS JOIN stages s ON s.job_id = k.value ->> 0 AND s.position = k.value ->> 1",
    )
    .bind(json_array(keys))
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|(j, p, s)| Ok(((j, p), parse_stage_state(&s)?)))
        .collect()
}

/// Apply counter deltas to stage rows.
pub(super) async fn apply_deltas(
    conn: &mut SqliteConnection,
    deltas: &BTreeMap<(i64, i32), StageDelta>,
) -> Result<(), StoreError> {
    if deltas.is_empty() {
        return Ok(());
    }
    let rows: Vec<(i64, i32, i64, i64)> = deltas
        .iter()
        .map(|(&(j, p), d)| (j, p, d.add, d.done))
        .collect();
    sqlx::query(
        "UPDATE stages AS s
         SET total = s.total + (d.value ->> 2),
             remaining = s.remaining + (d.value ->> 2) - (d.value ->> 3)
         FROM json_each(?1) AS d
         WHERE s.job_id = d.value ->> 0 AND s.position = d.value ->> 1",
    )
    .bind(json_array(&rows))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Close every given stage whose counter is at zero (each closes exactly
/// once, here) and advance its job.
pub(super) async fn close_drained(
    conn: &mut SqliteConnection,
    keys: &[(i64, i32)],
    fx: &mut Effects,
) -> Result<(), StoreError> {
    for &(job, position) in keys {
        let closed: Option<i64> = sqlx::query_scalar(
            "UPDATE stages SET state = 'done', closed_at = ?3
             WHERE job_id = ?1 AND position = ?2 AND state = 'open' AND remaining = 0
             RETURNING job_id",
        )
        .bind(job)
        .bind(position)
        .bind(fx.now())
        .fetch_optional(&mut *conn)
        .await?;
        if closed.is_some() {
            after_stage_closed(conn, job, position, fx).await?;
        }
    }
    Ok(())
}

/// A stage of `job` has just closed (this transaction set it `done`): fail
/// the job if the stage ended with dead tasks under `fail_job` (each task's
/// own setting), otherwise open the next stage — closing it at once when it
/// has no tasks, and so on — or finish the job when none is left.
pub(super) async fn after_stage_closed(
    conn: &mut SqliteConnection,
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
             FROM stages s WHERE s.job_id = ?1 AND s.position = ?2",
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
             WHERE job_id = ?1 AND position > ?2 AND state <> 'done'
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
            "UPDATE stages SET state = 'open', opened_at = ?3
             WHERE job_id = ?1 AND position = ?2 AND state = 'waiting'
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
        sqlx::query(
            "UPDATE tasks SET state = 'pending', run_after = ?3, updated_at = ?3
             WHERE job_id = ?1 AND stage_position = ?2
               AND state = 'blocked' AND deps_remaining = 0",
        )
        .bind(job)
        .bind(next_position)
        .bind(fx.now())
        .execute(&mut *conn)
        .await?;
        if remaining > 0 {
            return Ok(());
        }
        // A stage with no tasks completes at once.
        sqlx::query(
            "UPDATE stages SET state = 'done', closed_at = ?3
             WHERE job_id = ?1 AND position = ?2 AND state = 'open' AND remaining = 0",
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
    conn: &mut SqliteConnection,
    tenant: &str,
    job: i64,
    position: i32,
    reason: &str,
    fx: &mut Effects,
) -> Result<(), StoreError> {
    let error = format!("cancelled: the job failed ({reason})");
    let mut cancelled: Vec<(i64, i32)> = sqlx::query_as(
        "UPDATE tasks
         SET state = 'cancelled', error = ?3, lease_expires_at = NULL,
             finished_at = ?4, updated_at = ?4
         WHERE job_id = ?1 AND stage_position > ?2
           AND state IN ('blocked', 'pending', 'running')
         RETURNING id, stage_position",
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
    cancelled.sort_unstable();
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
    apply_deltas(conn, &deltas).await
}
