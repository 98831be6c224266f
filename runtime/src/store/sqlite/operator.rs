//! Operator actions: cancelling a job and reviving a dead or cancelled task.
//!
//! Decisions are checked against the transition tables; an illegal one
//! returns [`crate::model::IllegalTransition`] and the transaction is rolled
//! back (dropped), so nothing is written.

use super::effects::Effects;
use super::{
    advance, job_not_found, parse_job_state, parse_stage_state, parse_task_state, task_not_found,
};
use crate::model::{EventKind, JobState, StageState, TaskState};
use crate::store::rules::StageDelta;
use crate::store::{CancelJob, RetryTask, StoreError};
use sqlx::SqliteConnection;
use std::collections::BTreeMap;

const CANCELLED_BY_OPERATOR: &str = "cancelled: the job was cancelled";

pub(super) async fn cancel_job(
    conn: &mut SqliteConnection,
    p: &CancelJob,
) -> Result<JobState, StoreError> {
    let tenant = p.tenant.0.as_str();
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM jobs WHERE id = ?1 AND tenant_id = ?2")
            .bind(p.job.0)
            .bind(tenant)
            .fetch_optional(&mut *conn)
            .await?;
    let state = state.ok_or_else(|| job_not_found(p.job))?;
    parse_job_state(&state)?.transition(JobState::Cancelled)?;

    let mut fx = Effects::new(p.now);
    let mut cancelled: Vec<(i64, i32)> = sqlx::query_as(
        "UPDATE tasks
         SET state = 'cancelled', error = ?2, lease_expires_at = NULL,
             finished_at = ?3, updated_at = ?3
         WHERE job_id = ?1 AND state IN ('blocked', 'pending', 'running')
         RETURNING id, stage_position",
    )
    .bind(p.job.0)
    .bind(CANCELLED_BY_OPERATOR)
    .bind(p.now)
    .fetch_all(&mut *conn)
    .await?;
    cancelled.sort_unstable();
    let mut deltas: BTreeMap<(i64, i32), StageDelta> = BTreeMap::new();
    for (task, position) in cancelled {
        deltas.entry((p.job.0, position)).or_default().done += 1;
        fx.event(
            tenant,
            p.job.0,
            Some(task),
            EventKind::TaskCancelled,
            Some(position),
            Some(CANCELLED_BY_OPERATOR.to_string()),
        );
    }
    advance::apply_deltas(conn, &deltas).await?;
    sqlx::query(
        "UPDATE jobs SET state = 'cancelled', finished_at = ?2, updated_at = ?2 WHERE id = ?1",
    )
    .bind(p.job.0)
    .bind(p.now)
    .execute(&mut *conn)
    .await?;
    fx.event(tenant, p.job.0, None, EventKind::JobCancelled, None, None);
    fx.write(conn).await?;
    Ok(JobState::Cancelled)
}

pub(super) async fn retry_task(
    conn: &mut SqliteConnection,
    p: &RetryTask,
) -> Result<TaskState, StoreError> {
    let tenant = p.tenant.0.as_str();
    let row: Option<(i64, i32, String, i32, i32)> = sqlx::query_as(
        "SELECT job_id, stage_position, state, attempt, max_attempts
         FROM tasks WHERE id = ?1 AND tenant_id = ?2",
    )
    .bind(p.task.0)
    .bind(tenant)
    .fetch_optional(&mut *conn)
    .await?;
    let (job, position, state, attempt, max_attempts) =
        row.ok_or_else(|| task_not_found(p.task))?;
    let from = parse_task_state(&state)?;
    from.transition(TaskState::Pending)?;

    // Refuse before writing when the job cannot run again (it succeeded).
    let job_state: String = sqlx::query_scalar("SELECT state FROM jobs WHERE id = ?1")
        .bind(job)
        .fetch_one(&mut *conn)
        .await?;
    let job_state = parse_job_state(&job_state)?;
    if job_state != JobState::Running {
        job_state.transition(JobState::Running)?;
    }

    // Dependencies are counted afresh: a revived task waits for the tasks it
    // depends on like any blocked task.
    let unmet: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM task_deps d
         JOIN tasks t ON t.id = d.depends_on
         WHERE d.task_id = ?1
           AND NOT (t.state = 'succeeded'
                    OR (t.on_failure = 'continue' AND t.state IN ('dead', 'cancelled')))",
    )
    .bind(p.task.0)
    .fetch_one(&mut *conn)
    .await?;
    // A revived task gets at least one more attempt; fencing needs the
    // attempt number to keep counting up, so it is never reset.
    let max_attempts = max_attempts.max(attempt.saturating_add(1));
    sqlx::query(
        "UPDATE tasks
         SET state = 'pending', deps_remaining = ?2, max_attempts = ?3, run_after = ?4,
             output_json = NULL, error = NULL, lease_expires_at = NULL, worker = NULL,
             finished_at = NULL, updated_at = ?4
         WHERE id = ?1",
    )
    .bind(p.task.0)
    .bind(i32::try_from(unmet).unwrap_or(i32::MAX))
    .bind(max_attempts)
    .bind(p.now)
    .execute(&mut *conn)
    .await?;

    let mut fx = Effects::new(p.now);
    fx.event(
        tenant,
        job,
        Some(p.task.0),
        EventKind::TaskRevived,
        Some(position),
        Some(format!("{from} -> pending")),
    );

    // Stage row: count the task back in; a closed stage reopens.
    let states = advance::stage_states(conn, &[(job, position)]).await?;
    let stage_state = states
        .get(&(job, position))
        .copied()
        .ok_or_else(|| StoreError::Corrupt(format!("task {} has no stage {position}", p.task.0)))?;
    let (new_state, name): (String, String) = sqlx::query_as(
        "UPDATE stages
         SET remaining = remaining + 1,
             state = CASE WHEN state = 'done' THEN 'open' ELSE state END,
             closed_at = CASE WHEN state = 'done' THEN NULL ELSE closed_at END
         WHERE job_id = ?1 AND position = ?2
         RETURNING state, name",
    )
    .bind(job)
    .bind(position)
    .fetch_one(&mut *conn)
    .await?;
    if stage_state == StageState::Done {
        fx.event(
            tenant,
            job,
            None,
            EventKind::StageOpened,
            Some(position),
            Some(format!("{name} (reopened by retry of task {})", p.task.0)),
        );
    }
    let _ = parse_stage_state(&new_state)?;

    if job_state != JobState::Running {
        sqlx::query(
            "UPDATE jobs SET state = 'running', error = NULL, finished_at = NULL, updated_at = ?2
             WHERE id = ?1",
        )
        .bind(job)
        .bind(p.now)
        .execute(&mut *conn)
        .await?;
        fx.event(
            tenant,
            job,
            None,
            EventKind::JobReopened,
            None,
            Some(format!(
                "{job_state} -> running (retry of task {})",
                p.task.0
            )),
        );
    }
    fx.write(conn).await?;
    Ok(TaskState::Pending)
}
