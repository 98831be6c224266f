//! Operator actions: cancelling a job and reviving a dead or cancelled task.
//!
//! Both follow the lock order (task rows, then stage rows, then the job row;
//! the locks are taken on PostgreSQL, SQLite runs one writer at a time).
//! `cancel_job` locks a job's unfinished tasks stage by stage, running ones
//! first within a stage, so it always waits for an in-flight completion's
//! task row before it could hold anything that completion still needs.
//! Decisions are checked against the transition tables; an illegal one
//! returns [`crate::state::IllegalTransition`] and the transaction is rolled
//! back, so nothing is written.

use super::advance;
use super::codec::{
    job_not_found, parse_column, parse_job_state, parse_stage_state, parse_task_state,
    task_not_found,
};
use super::effects::Effects;
use super::rules::StageDelta;
use super::sql::{Db, Sql};
use super::{CancelJob, RetryTask, StoreError};
use crate::model::{EventKind, JobState, StageState, TaskState};
use std::collections::BTreeMap;

const CANCELLED_BY_OPERATOR: &str = "cancelled: the job was cancelled";

const TENANT_JOB_STATE: Sql = Sql::both("SELECT state FROM jobs WHERE id = $1 AND tenant_id = $2");
const CANCEL_TASKS: Sql = Sql::each(
    "UPDATE tasks
     SET state = 'cancelled', error = $2, lease_expires_at = NULL,
         finished_at = $3, updated_at = $3
     WHERE job_id = $1 AND state IN ('blocked', 'pending', 'running')
     RETURNING id, stage_position",
    "WITH doomed AS (
         SELECT id FROM tasks
         WHERE job_id = $1 AND state IN ('blocked', 'pending', 'running')
         ORDER BY stage_position, state <> 'running', id
         FOR NO KEY UPDATE
     )
     UPDATE tasks t
     SET state = 'cancelled', error = $2, lease_expires_at = NULL,
         finished_at = $3, updated_at = $3
     WHERE t.id = ANY(ARRAY(SELECT id FROM doomed))
     RETURNING t.id, t.stage_position",
);
// The job row last: its state may have changed since the first read (a stage
// closing concurrently finished it).
const LOCK_JOB: Sql = Sql::each(
    "SELECT state FROM jobs WHERE id = $1",
    "SELECT state FROM jobs WHERE id = $1 FOR NO KEY UPDATE",
);
const CANCEL_JOB: Sql = Sql::both(
    "UPDATE jobs SET state = 'cancelled', finished_at = $2, updated_at = $2 WHERE id = $1",
);

pub(crate) async fn cancel_job(db: &mut Db<'_>, p: &CancelJob) -> Result<JobState, StoreError> {
    let tenant = p.tenant.0.as_str();
    let state: Option<(String,)> = db
        .fetch_optional(db.query(&TENANT_JOB_STATE).bind(p.job.0).bind(tenant))
        .await?;
    let (state,) = state.ok_or_else(|| job_not_found(p.job))?;
    parse_job_state(&state)?.transition(JobState::Cancelled)?;

    let mut fx = Effects::new(p.now);
    let mut cancelled: Vec<(i64, i32)> = db
        .fetch_all(
            db.query(&CANCEL_TASKS)
                .bind(p.job.0)
                .bind(CANCELLED_BY_OPERATOR)
                .bind(p.now),
        )
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
    advance::apply_deltas(db, &deltas).await?;

    let (state,): (String,) = db.fetch_one(db.query(&LOCK_JOB).bind(p.job.0)).await?;
    parse_job_state(&state)?.transition(JobState::Cancelled)?;
    db.execute(db.query(&CANCEL_JOB).bind(p.job.0).bind(p.now))
        .await?;
    fx.event(
        tenant,
        p.job.0,
        None,
        EventKind::JobCancelled,
        None,
        p.by.as_ref().map(|by| format!("by {by}")),
    );
    fx.write(db).await?;
    Ok(JobState::Cancelled)
}

const LOCK_TASK: Sql = Sql::each(
    "SELECT job_id, stage_position, state, executor, attempt, max_attempts
     FROM tasks WHERE id = $1 AND tenant_id = $2",
    "SELECT job_id, stage_position, state, executor, attempt, max_attempts
     FROM tasks WHERE id = $1 AND tenant_id = $2
     FOR NO KEY UPDATE",
);
const JOB_STATE: Sql = Sql::both("SELECT state FROM jobs WHERE id = $1");
// Dependencies are counted afresh: a task revived before (or after) the tasks
// it depends on waits for them like any blocked task; the claim only takes
// pending tasks with no unfinished dependency.
const UNMET_DEPENDENCIES: Sql = Sql::both(
    "SELECT count(*) FROM task_deps d
     JOIN tasks t ON t.id = d.depends_on
     WHERE d.task_id = $1
       AND NOT (t.state IN ('succeeded', 'skipped')
                OR (t.on_failure IN ('continue', 'release_then_fail')
                    AND t.state IN ('dead', 'cancelled')))",
);
const REVIVE_TASK: Sql = Sql::both(
    "UPDATE tasks
     SET state = 'pending', deps_remaining = $2, max_attempts = $3, run_after = $4,
         output_json = NULL, error = NULL, lease_expires_at = NULL, worker = NULL,
         finished_at = NULL, updated_at = $4
     WHERE id = $1",
);
const COUNT_BACK_IN: Sql = Sql::both(
    "UPDATE stages
     SET remaining = remaining + 1,
         state = CASE WHEN state = 'done' THEN 'open' ELSE state END,
         closed_at = CASE WHEN state = 'done' THEN NULL ELSE closed_at END
     WHERE job_id = $1 AND position = $2
     RETURNING state, name",
);
const REOPEN_JOB: Sql = Sql::both(
    "UPDATE jobs SET state = 'running', error = NULL, finished_at = NULL, updated_at = $2
     WHERE id = $1",
);

pub(crate) async fn retry_task(db: &mut Db<'_>, p: &RetryTask) -> Result<TaskState, StoreError> {
    let tenant = p.tenant.0.as_str();
    let row: Option<(i64, i32, String, String, i32, i32)> = db
        .fetch_optional(db.query(&LOCK_TASK).bind(p.task.0).bind(tenant))
        .await?;
    let (job, position, state, executor, attempt, max_attempts) =
        row.ok_or_else(|| task_not_found(p.task))?;
    let from = parse_task_state(&state)?;
    from.revive()?;

    // Refuse before writing when the job cannot run again (it succeeded).
    let (job_state,): (String,) = db.fetch_one(db.query(&JOB_STATE).bind(job)).await?;
    let job_state = parse_job_state(&job_state)?;
    if job_state != JobState::Running {
        job_state.transition(JobState::Running)?;
    }

    let (unmet,): (i64,) = db
        .fetch_one(db.query(&UNMET_DEPENDENCIES).bind(p.task.0))
        .await?;
    // A revived task gets at least one more attempt; fencing needs the
    // attempt number to keep counting up, so it is never reset.
    let max_attempts = max_attempts.max(attempt.saturating_add(1));
    db.execute(
        db.query(&REVIVE_TASK)
            .bind(p.task.0)
            .bind(i32::try_from(unmet).unwrap_or(i32::MAX))
            .bind(max_attempts)
            .bind(p.now),
    )
    .await?;

    let mut fx = Effects::new(p.now);
    fx.event(
        tenant,
        job,
        Some(p.task.0),
        EventKind::TaskRevived,
        Some(position),
        Some(match &p.by {
            Some(by) => format!("{from} -> pending, by {by}"),
            None => format!("{from} -> pending"),
        }),
    );

    // Stage row: count the task back in; a closed stage reopens.
    let locked = advance::lock_stages(db, &[(job, position)]).await?;
    let stage_state = locked
        .get(&(job, position))
        .copied()
        .ok_or_else(|| StoreError::Corrupt(format!("task {} has no stage {position}", p.task.0)))?;
    let (new_state, name): (String, String) = db
        .fetch_one(db.query(&COUNT_BACK_IN).bind(job).bind(position))
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
    if unmet == 0 && parse_stage_state(&new_state)? == StageState::Open {
        fx.ready(parse_column(
            &format_args!("task {}", p.task.0),
            "executor",
            &executor,
        )?);
    }

    // Job row last.
    let (current,): (String,) = db.fetch_one(db.query(&LOCK_JOB).bind(job)).await?;
    let current = parse_job_state(&current)?;
    if current != JobState::Running {
        current.transition(JobState::Running)?;
        db.execute(db.query(&REOPEN_JOB).bind(job).bind(p.now))
            .await?;
        fx.event(
            tenant,
            job,
            None,
            EventKind::JobReopened,
            None,
            Some(format!("{current} -> running (retry of task {})", p.task.0)),
        );
    }
    fx.write(db).await?;
    Ok(TaskState::Pending)
}
