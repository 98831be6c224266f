//! Stage counters and advancement: the one place a stage closes and the next
//! one opens.
//!
//! **Invariant 9 (exactly one advancement):** a stage closes only through
//! `UPDATE stages SET state = 'done' … WHERE state = 'open' AND remaining = 0
//! RETURNING`, run by the transaction that changed the counter. On SQLite one
//! write transaction runs at a time; on PostgreSQL the transaction holds the
//! stage row lock ([`apply_deltas`], [`lock_stages`]), which serializes the
//! decrements. Either
//! way exactly one transaction sees the counter reach zero and gets the row
//! back.
//!
//! **Lock order (PostgreSQL):** stage rows are locked here in ascending (job,
//! position) order, after the caller has locked every task row it completes.
//! The task rows locked afterwards — the blocked tasks of the stage being
//! opened, or the tasks of later stages of a job that failed — belong to
//! stages none of whose tasks can be running, and only the transaction that
//! closed the stage before them reaches them, so nobody holding them can be
//! waiting for us.

use super::codec::{parse_column, parse_stage_state};
use super::effects::Effects;
use super::rules::StageDelta;
use super::sql::{Batch, Db, Sql};
use super::{RATE_WINDOW_MS, StoreError};
use crate::model::{EventKind, JobState, Millis, StageState, TaskState};
use std::collections::{BTreeMap, BTreeSet};

const LOCK_STAGES: Sql = Sql::each(
    "SELECT s.job_id, s.position, s.state
     FROM jsonb_each($1) AS k
     CROSS JOIN stages s ON s.job_id = k.value ->> 0 AND s.position = k.value ->> 1",
    "SELECT s.job_id, s.position, s.state
     FROM stages s
     JOIN unnest($1::int8[], $2::int4[]) AS k(job_id, position)
       ON s.job_id = k.job_id AND s.position = k.position
     WHERE s.job_id = ANY($1)
     ORDER BY s.job_id, s.position
     FOR NO KEY UPDATE OF s",
);

fn stage_keys(keys: &[(i64, i32)]) -> Batch<'static> {
    let (jobs, positions): (Vec<i64>, Vec<i32>) = keys.iter().copied().unzip();
    Batch::new().int8(jobs).int4(positions)
}

/// Lock the given stage rows (PostgreSQL: in ascending (job, position)
/// order) and return their current states.
pub(crate) async fn lock_stages(
    db: &mut Db<'_>,
    keys: &[(i64, i32)],
) -> Result<BTreeMap<(i64, i32), StageState>, StoreError> {
    let mut sorted = keys.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let rows: Vec<(i64, i32, String)> = db
        .fetch_all(db.query(&LOCK_STAGES).bind_batch(&stage_keys(&sorted)))
        .await?;
    rows.into_iter()
        .map(|(j, p, s)| Ok(((j, p), parse_stage_state(&s)?)))
        .collect()
}

// One statement locks the rows (PostgreSQL: the `locked` InitPlan takes
// every lock, in ascending key order, before the update touches a row) and
// counts: a hot stage row is held from here to the commit, so its lock should
// cost as few round trips as possible.
//
// It also counts the finished tasks into the stage's rate buckets (migration
// 0015): `$bucket` is the start of the bucket `now` falls in, `$width` the
// bucket's width. A row whose bucket is older moves on to this one (its
// count becoming the previous bucket's when it was the one just before); a
// batch whose `now` is older than the row's bucket (a slower transaction of
// another process) counts into the row's bucket.
#[rustfmt::skip]
macro_rules! count_into_rate_buckets {
    ($finished:literal, $bucket:literal, $width:literal) => {
        concat!(
            "finished_in_previous_bucket = CASE
                 WHEN s.rate_bucket_at >= ", $bucket, " THEN s.finished_in_previous_bucket
                 WHEN s.rate_bucket_at = ", $bucket, " - ", $width, " THEN s.finished_in_bucket
                 ELSE 0 END,
             finished_in_bucket = CASE
                 WHEN s.rate_bucket_at >= ", $bucket, " THEN s.finished_in_bucket
                 ELSE 0 END + ", $finished, ",
             rate_bucket_at = CASE
                 WHEN s.rate_bucket_at >= ", $bucket, " THEN s.rate_bucket_at
                 ELSE ", $bucket, " END"
        )
    };
}
pub(crate) const APPLY_DELTAS: Sql = Sql::each(
    concat!(
        "UPDATE stages AS s
         SET total = s.total + (d.value ->> 2),
             remaining = s.remaining + (d.value ->> 2) - (d.value ->> 3), ",
        count_into_rate_buckets!("(d.value ->> 4)", "$2", "$3"),
        "
         FROM jsonb_each($1) AS d
         WHERE s.job_id = d.value ->> 0 AND s.position = d.value ->> 1
         RETURNING job_id, position, state, remaining"
    ),
    concat!(
        "WITH locked AS MATERIALIZED (
         SELECT s.job_id FROM stages s
         JOIN unnest($1::int8[], $2::int4[]) AS k(job_id, position)
           ON s.job_id = k.job_id AND s.position = k.position
         WHERE s.job_id = ANY($1)
         ORDER BY s.job_id, s.position
         FOR NO KEY UPDATE OF s
     )
     UPDATE stages s
     SET total = s.total + d.add, remaining = s.remaining + d.add - d.done, ",
        count_into_rate_buckets!("d.finished", "$6", "$7"),
        "
     FROM unnest($1::int8[], $2::int4[], $3::int8[], $4::int8[], $5::int8[])
          AS d(job_id, position, add, done, finished)
     WHERE s.job_id = d.job_id AND s.position = d.position
       AND s.job_id = ANY(ARRAY(SELECT job_id FROM locked))
     RETURNING s.job_id, s.position, s.state, s.remaining"
    ),
);

/// The start of the rate bucket `now` falls in.
pub(crate) fn rate_bucket(now: Millis) -> Millis {
    now - now.rem_euclid(RATE_WINDOW_MS)
}

/// A stage row as [`apply_deltas`] left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counted {
    pub state: StageState,
    pub remaining: i64,
}

/// Lock the stage rows of `deltas` (PostgreSQL: in ascending (job,
/// position) order) and apply their counter deltas, in one statement, the
/// finished tasks counted into the rate bucket of `now`; the rows' states
/// and what remains of them. Their states are unchanged by it:
/// [`close_drained`] closes the ones left at zero.
pub(crate) async fn apply_deltas(
    db: &mut Db<'_>,
    deltas: &BTreeMap<(i64, i32), StageDelta>,
    now: Millis,
) -> Result<BTreeMap<(i64, i32), Counted>, StoreError> {
    if deltas.is_empty() {
        return Ok(BTreeMap::new());
    }
    let mut jobs = Vec::with_capacity(deltas.len());
    let mut positions = Vec::with_capacity(deltas.len());
    let mut adds = Vec::with_capacity(deltas.len());
    let mut dones = Vec::with_capacity(deltas.len());
    let mut finished = Vec::with_capacity(deltas.len());
    for (&(j, p), d) in deltas {
        jobs.push(j);
        positions.push(p);
        adds.push(d.add);
        dones.push(d.done);
        finished.push(d.finished);
    }
    let batch = Batch::new()
        .int8(jobs)
        .int4(positions)
        .int8(adds)
        .int8(dones)
        .int8(finished);
    let rows: Vec<(i64, i32, String, i64)> = db
        .fetch_all(
            db.query(&APPLY_DELTAS)
                .bind_batch(&batch)
                .bind(rate_bucket(now))
                .bind(RATE_WINDOW_MS),
        )
        .await?;
    rows.into_iter()
        .map(|(job, position, state, remaining)| {
            Ok((
                (job, position),
                Counted {
                    state: parse_stage_state(&state)?,
                    remaining,
                },
            ))
        })
        .collect()
}

/// The stages of `counted` whose counter is at zero while they are open:
/// the ones [`close_drained`] closes.
pub(crate) fn drained(counted: &BTreeMap<(i64, i32), Counted>) -> Vec<(i64, i32)> {
    counted
        .iter()
        .filter(|(_, c)| c.remaining == 0 && c.state == StageState::Open)
        .map(|(key, _)| *key)
        .collect()
}

// What `after_stage_closed` needs of a stage it closed comes back with the
// close, in the same round trip: its tenant and name, its dead tasks (only
// deaths under `fail_job` or `release_then_fail`, their own setting, fail
// the job) and the next stage not yet done.
macro_rules! closed_stage_columns {
    () => {
        "stages.job_id AS job_id, stages.position AS position,
         stages.tenant_id AS tenant_id, stages.name AS name,
         (SELECT count(*) FROM tasks t
          WHERE t.job_id = stages.job_id AND t.stage_position = stages.position
            AND t.state = 'dead' AND t.state <> 'running'
            AND t.on_failure IN ('fail_job', 'release_then_fail'))
             AS dead,
         (SELECT min(n.position) FROM stages n
          WHERE n.job_id = stages.job_id AND n.position > stages.position
            AND n.state <> 'done') AS next_position"
    };
}

pub(crate) const CLOSE_DRAINED: Sql = Sql::each(
    concat!(
        "UPDATE stages SET state = 'done', closed_at = $2
         FROM jsonb_each($1) AS k
         WHERE stages.job_id = k.value ->> 0 AND stages.position = k.value ->> 1
           AND stages.state = 'open' AND stages.remaining = 0
         RETURNING ",
        closed_stage_columns!()
    ),
    concat!(
        "UPDATE stages SET state = 'done', closed_at = $3
         FROM unnest($1::int8[], $2::int4[]) AS k(job_id, position)
         WHERE stages.job_id = k.job_id AND stages.position = k.position
           AND stages.job_id = ANY($1)
           AND stages.state = 'open' AND stages.remaining = 0
         RETURNING ",
        closed_stage_columns!()
    ),
);

/// A stage as the statement that closed it returns it.
#[derive(sqlx::FromRow)]
struct ClosedStage {
    job_id: i64,
    position: i32,
    tenant_id: String,
    name: String,
    dead: i64,
    next_position: Option<i32>,
}

/// What [`close_drained`] did to the stages after the ones it closed: for
/// the children spawned in the same transaction, inserted after it.
#[derive(Debug, Default)]
pub(crate) struct Advanced {
    /// The stages it opened (and left open).
    pub opened: BTreeSet<(i64, i32)>,
    /// The jobs it failed, by id.
    pub failed: BTreeMap<i64, FailedJob>,
}

/// A job failed at the close of one of its stages.
#[derive(Debug)]
pub(crate) struct FailedJob {
    pub tenant: String,
    /// The stage that closed with dead tasks.
    pub position: i32,
    pub reason: String,
}

/// Close every given stage whose counter is at zero (each closes exactly
/// once, here) and advance its job. The rows must be locked by the caller.
pub(crate) async fn close_drained(
    db: &mut Db<'_>,
    keys: &[(i64, i32)],
    fx: &mut Effects,
) -> Result<Advanced, StoreError> {
    let mut advanced = Advanced::default();
    if keys.is_empty() {
        return Ok(advanced);
    }
    let mut closed: Vec<ClosedStage> = db
        .fetch_all(
            db.query(&CLOSE_DRAINED)
                .bind_batch(&stage_keys(keys))
                .bind(fx.now()),
        )
        .await?;
    closed.sort_unstable_by_key(|c| (c.job_id, c.position));
    for stage in closed {
        after_stage_closed(db, stage, &mut advanced, fx).await?;
    }
    Ok(advanced)
}

// On PostgreSQL the opened stage's blocked tasks become pending in the same
// statement, which returns the executors that got ready tasks for the
// wake-up (locking the stage row, then its task rows: see the module doc);
// SQLite runs READY_OPENED_STAGE after it and needs no wake-up (its engine
// wakes its own workers).
pub(crate) const OPEN_STAGE: Sql = Sql::each(
    "UPDATE stages SET state = 'open', opened_at = $3
     WHERE job_id = $1 AND position = $2 AND state = 'waiting'
     RETURNING name, remaining, NULL",
    "WITH opened AS (
         UPDATE stages SET state = 'open', opened_at = $3
         WHERE job_id = $1 AND position = $2 AND state = 'waiting'
         RETURNING name, remaining
     ),
     ready AS (
         SELECT id FROM tasks
         WHERE job_id = $1 AND stage_position = $2
           AND state = 'blocked' AND state <> 'running' AND deps_remaining = 0
           AND EXISTS (SELECT 1 FROM opened)
         ORDER BY id
         FOR NO KEY UPDATE
     ),
     readied AS (
         UPDATE tasks t SET state = 'pending', run_after = $3, updated_at = $3
         WHERE t.id = ANY(ARRAY(SELECT id FROM ready))
         RETURNING t.executor
     )
     SELECT o.name, o.remaining,
            (SELECT string_agg(DISTINCT r.executor, ',') FROM readied r)
     FROM opened o",
);
const READY_OPENED_STAGE: Sql = Sql::sqlite_only(
    "UPDATE tasks SET state = 'pending', run_after = $3, updated_at = $3
     WHERE job_id = $1 AND stage_position = $2 AND state = 'blocked' AND state <> 'running'
       AND deps_remaining = 0",
);
pub(crate) const CLOSE_EMPTY_STAGE: Sql = Sql::both(concat!(
    "UPDATE stages SET state = 'done', closed_at = $3
     WHERE job_id = $1 AND position = $2 AND state = 'open' AND remaining = 0
     RETURNING ",
    closed_stage_columns!()
));

/// A stage has just closed (this transaction set it `done`): fail the job
/// if the stage ended with dead tasks under `fail_job` (each task's own
/// setting), otherwise open the next stage — closing it at once when it has
/// no tasks, and so on — or finish the job when none is left.
async fn after_stage_closed(
    db: &mut Db<'_>,
    mut closed: ClosedStage,
    advanced: &mut Advanced,
    fx: &mut Effects,
) -> Result<(), StoreError> {
    loop {
        let ClosedStage {
            job_id: job,
            position,
            tenant_id: tenant,
            name,
            dead,
            next_position,
        } = closed;
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
            cancel_later_tasks(db, &tenant, job, position, &reason, fx).await?;
            fx.finish_job(&tenant, job, JobState::Failed, Some(reason.clone()));
            advanced.failed.insert(
                job,
                FailedJob {
                    tenant,
                    position,
                    reason,
                },
            );
            return Ok(());
        }
        let Some(next) = next_position else {
            fx.finish_job(&tenant, job, JobState::Succeeded, None);
            return Ok(());
        };
        debug_assert!(TaskState::Blocked.can_become(TaskState::Pending));
        let opened: Option<(String, i64, Option<String>)> = db
            .fetch_optional(db.query(&OPEN_STAGE).bind(job).bind(next).bind(fx.now()))
            .await?;
        // Not waiting: already open, only after `retry` reopened an earlier
        // stage.
        let Some((next_name, remaining, ready)) = opened else {
            return Ok(());
        };
        fx.event(
            &tenant,
            job,
            None,
            EventKind::StageOpened,
            Some(next),
            Some(next_name),
        );
        db.execute(
            db.query(&READY_OPENED_STAGE)
                .bind(job)
                .bind(next)
                .bind(fx.now()),
        )
        .await?;
        for executor in ready.iter().flat_map(|r| r.split(',')) {
            fx.ready(parse_column(
                &format_args!("a task of stage {next} of job {job}"),
                "executor",
                executor,
            )?);
        }
        if remaining > 0 {
            advanced.opened.insert((job, next));
            return Ok(());
        }
        // A stage with no tasks completes at once.
        closed = db
            .fetch_one(
                db.query(&CLOSE_EMPTY_STAGE)
                    .bind(job)
                    .bind(next)
                    .bind(fx.now()),
            )
            .await?;
    }
}

// Running tasks are not in SQLite's `tasks_job_stage_state` (migration 0009),
// so there this reads the job's tasks through `tasks_job_id`; PostgreSQL's
// holds them (migration 0017). Only when a job fails.
pub(crate) const CANCEL_LATER_TASKS: Sql = Sql::each(
    "UPDATE tasks
     SET state = 'cancelled', error = $3, lease_expires_at = NULL,
         finished_at = $4, updated_at = $4
     WHERE job_id = $1 AND stage_position > $2
       AND state IN ('blocked', 'pending', 'running')
     RETURNING id, stage_position",
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
);

/// The job failed at stage `position`: cancel every unfinished task of the
/// stages after it (each cancellation counted off its stage). Run again for
/// the children a spawn inserted after the failure ([`Advanced::failed`]).
pub(crate) async fn cancel_later_tasks(
    db: &mut Db<'_>,
    tenant: &str,
    job: i64,
    position: i32,
    reason: &str,
    fx: &mut Effects,
) -> Result<(), StoreError> {
    let error = format!("cancelled: the job failed ({reason})");
    let mut cancelled: Vec<(i64, i32)> = db
        .fetch_all(
            db.query(&CANCEL_LATER_TASKS)
                .bind(job)
                .bind(position)
                .bind(&error)
                .bind(fx.now()),
        )
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
    // The stages after a failed one are not open: none closes here.
    apply_deltas(db, &deltas, fx.now()).await?;
    Ok(())
}
