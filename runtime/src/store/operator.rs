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
use super::{CancelJob, RetryTask, StageNotReached, StoreError};
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
    advance::apply_deltas(db, &deltas, p.now).await?;

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
const STAGE_STATE: Sql =
    Sql::both("SELECT state, name FROM stages WHERE job_id = $1 AND position = $2");

/// How many of a task's dependencies are unfinished, counted afresh: a task
/// revived before (or after) the tasks it depends on waits for them like any
/// blocked task. `$task` names the dependent task's id.
macro_rules! unmet_dependencies {
    ($task:literal) => {
        concat!(
            "(SELECT count(*) FROM task_deps d
              JOIN tasks dependency ON dependency.id = d.depends_on
              WHERE d.task_id = ",
            $task,
            " AND NOT (dependency.state IN ('succeeded', 'skipped')
                       OR (dependency.on_failure IN ('continue', 'release_then_fail')
                           AND dependency.state IN ('dead', 'cancelled'))))"
        )
    };
}

const UNMET_DEPENDENCIES: Sql = Sql::both(concat!("SELECT ", unmet_dependencies!("$1")));

// A failed or cancelled job resumes from the revived task's stage: the
// stages after it never ran (or ran no further than their cancellation), so
// their cancelled tasks come back blocked, to be made pending when their
// stage opens. Attempts keep counting up (fencing); each gets one more.
const BRING_BACK_LATER_TASKS: Sql = Sql::each(
    "UPDATE tasks
     SET state = 'blocked', output_json = NULL, error = NULL, lease_expires_at = NULL,
         worker = NULL, finished_at = NULL, run_after = $3, updated_at = $3,
         max_attempts = CASE WHEN max_attempts > attempt THEN max_attempts ELSE attempt + 1 END
     WHERE job_id = $1 AND stage_position > $2 AND state = 'cancelled'
     RETURNING id, stage_position",
    "WITH revived AS (
         SELECT id FROM tasks
         WHERE job_id = $1 AND stage_position > $2 AND state = 'cancelled'
         ORDER BY id
         FOR NO KEY UPDATE
     )
     UPDATE tasks t
     SET state = 'blocked', output_json = NULL, error = NULL, lease_expires_at = NULL,
         worker = NULL, finished_at = NULL, run_after = $3, updated_at = $3,
         max_attempts = CASE WHEN t.max_attempts > t.attempt THEN t.max_attempts
                             ELSE t.attempt + 1 END
     WHERE t.id = ANY(ARRAY(SELECT id FROM revived))
     RETURNING t.id, t.stage_position",
);
// After BRING_BACK_LATER_TASKS, so that tasks brought back count as unmet
// for the tasks that depend on them.
const COUNT_LATER_DEPENDENCIES: Sql = Sql::both(concat!(
    "UPDATE tasks SET deps_remaining = ",
    unmet_dependencies!("tasks.id"),
    " WHERE job_id = $1 AND stage_position > $2 AND state = 'blocked'"
));
// Every later stage waits again, counting its unfinished tasks afresh: one
// that had closed (with dead tasks, say) is decided again when the job gets
// there. Ascending position (the lock order), after the revived task's own
// stage.
const RESET_LATER_STAGES: Sql = Sql::each(
    "UPDATE stages
     SET state = 'waiting', opened_at = NULL, closed_at = NULL,
         remaining = (SELECT count(*) FROM tasks t
                      WHERE t.job_id = stages.job_id AND t.stage_position = stages.position
                        AND t.state IN ('blocked', 'pending', 'running'))
     WHERE job_id = $1 AND position > $2",
    "WITH locked AS MATERIALIZED (
         SELECT position FROM stages
         WHERE job_id = $1 AND position > $2
         ORDER BY position
         FOR NO KEY UPDATE
     )
     UPDATE stages s
     SET state = 'waiting', opened_at = NULL, closed_at = NULL,
         remaining = (SELECT count(*) FROM tasks t
                      WHERE t.job_id = s.job_id AND t.stage_position = s.position
                        AND t.state IN ('blocked', 'pending', 'running'))
     WHERE s.job_id = $1 AND s.position = ANY(ARRAY(SELECT position FROM locked))",
);
const REVIVE_TASK: Sql = Sql::both(
    "UPDATE tasks
     SET state = $5, deps_remaining = $2, max_attempts = $3, run_after = $4,
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

/// `lockstep retry`: revive a dead or cancelled task (Invariant 44). It
/// is pending again when its stage is open and its dependencies are met,
/// blocked otherwise (its stage opening or its dependencies finishing make
/// it pending, as for any blocked task), and counted back into its stage,
/// which reopens if it had closed. A failed or cancelled job runs again
/// from the task's stage: every later stage waits again and its cancelled
/// tasks come back. A task in a stage that such a job never reached is
/// refused ([`StageNotReached`]): nothing would ever open its stage.
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
    let resumes = job_state != JobState::Running;
    let mut brought_back = Vec::new();
    if resumes {
        job_state.transition(JobState::Running)?;
        let (stage_state, stage): (String, String) = db
            .fetch_one(db.query(&STAGE_STATE).bind(job).bind(position))
            .await?;
        if parse_stage_state(&stage_state)? == StageState::Waiting {
            return Err(StageNotReached {
                task: p.task.0,
                job,
                job_state,
                stage,
            }
            .into());
        }
        brought_back = db
            .fetch_all(
                db.query(&BRING_BACK_LATER_TASKS)
                    .bind(job)
                    .bind(position)
                    .bind(p.now),
            )
            .await?;
        if !brought_back.is_empty() {
            db.execute(db.query(&COUNT_LATER_DEPENDENCIES).bind(job).bind(position))
                .await?;
        }
    }

    let (unmet,): (i64,) = db
        .fetch_one(db.query(&UNMET_DEPENDENCIES).bind(p.task.0))
        .await?;

    // Stage rows: count the task back in (a closed stage reopens), then
    // reset the later ones of a resuming job.
    let locked = advance::lock_stages(db, &[(job, position)]).await?;
    let stage_state = locked
        .get(&(job, position))
        .copied()
        .ok_or_else(|| StoreError::Corrupt(format!("task {} has no stage {position}", p.task.0)))?;
    let (new_state, name): (String, String) = db
        .fetch_one(db.query(&COUNT_BACK_IN).bind(job).bind(position))
        .await?;
    if resumes {
        db.execute(db.query(&RESET_LATER_STAGES).bind(job).bind(position))
            .await?;
    }
    let ready = unmet == 0 && parse_stage_state(&new_state)? == StageState::Open;
    let to = from.transition(if ready {
        TaskState::Pending
    } else {
        TaskState::Blocked
    })?;

    // The task row was locked first; it is written now that its stage's
    // state is known under the stage's lock.
    // A revived task gets at least one more attempt; fencing needs the
    // attempt number to keep counting up, so it is never reset.
    let max_attempts = max_attempts.max(attempt.saturating_add(1));
    db.execute(
        db.query(&REVIVE_TASK)
            .bind(p.task.0)
            .bind(i32::try_from(unmet).unwrap_or(i32::MAX))
            .bind(max_attempts)
            .bind(p.now)
            .bind(to.as_str()),
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
            Some(by) => format!("{from} -> {to}, by {by}"),
            None => format!("{from} -> {to}"),
        }),
    );
    for &(task, stage) in &brought_back {
        fx.event(
            tenant,
            job,
            Some(task),
            EventKind::TaskRevived,
            Some(stage),
            Some(format!(
                "cancelled -> blocked (its job resumes with the retry of task {})",
                p.task.0
            )),
        );
    }
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
    if ready {
        fx.ready(parse_column(
            &format_args!("task {}", p.task.0),
            "executor",
            &executor,
        )?);
    }

    // Job row last.
    let (current,): (String,) = db.fetch_one(db.query(&LOCK_JOB).bind(job)).await?;
    let current = parse_job_state(&current)?;
    if current.is_terminal() != resumes {
        // It finished, or another retry resumed it, after it was read:
        // what was written for the state read does not fit (later stages
        // not brought back, or reset under a resumed job). Run again.
        return Err(StoreError::Raced(format!("job {job}")));
    }
    if resumes {
        current.transition(JobState::Running)?;
        db.execute(db.query(&REOPEN_JOB).bind(job).bind(p.now))
            .await?;
        let detail = match brought_back.len() {
            0 => format!("{current} -> running (retry of task {})", p.task.0),
            n => format!(
                "{current} -> running (retry of task {}; {n} cancelled task(s) of later stages \
                 come back)",
                p.task.0
            ),
        };
        fx.event(
            tenant,
            job,
            None,
            EventKind::JobReopened,
            None,
            Some(detail),
        );
    }
    fx.write(db).await?;
    Ok(to)
}
