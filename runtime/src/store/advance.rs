//! Stage counters and advancement: the one place a stage closes and the next
//! one opens.
//!
//! **Counters in shards.** A stage's count of unfinished tasks is the sum of
//! its rows in `stage_counters`, one per shard. A write transaction counts
//! into its own shard ([`count`]: PostgreSQL, the connection's backend pid,
//! which no other live connection has; SQLite, one writer at a time, shard
//! 0), so completions of many processes never wait for each other's commit
//! on one counter row. Task counts only ever go up (a spawn, a retry) while
//! the transaction holds the stage row locked; they go down (a task ends)
//! without it.
//!
//! **Invariant 9 (exactly one advancement, never lost):** a stage closes
//! only through `UPDATE stages SET state = 'done' … WHERE state = 'open' AND
//! <sum of its shards> = 0 RETURNING`, run by a transaction that already
//! holds the stage row locked, so the sum is read from a snapshot taken
//! after every earlier holder committed, and of two closers the second finds
//! it `done`. The sum a snapshot sees (committed shards plus the
//! transaction's own) is the number of the stage's tasks that are not
//! terminal in that snapshot, so when it is 0 no other transaction can have
//! a count-down in flight (it would hold a task row that is still counted)
//! and a count-up in flight holds the stage row. Whoever counts a stage down
//! closes it in the same transaction when its own sum reads 0
//! ([`drained`], [`close_drained`]); when it reads more, a concurrent
//! count-down may be the last one, so after the commit the store reads the
//! sum again in a new snapshot ([`still_drained`]), which sees every
//! committed count-down: of two racing last completers the later committer's
//! read sees 0, and it advances in a transaction of its own
//! ([`advance_stages`]). A crash between a commit and that read is caught by
//! the sweep of open stages of running jobs at 0 that lease rescue runs
//! ([`drained_open_stages`]).
//!
//! **Lock order (PostgreSQL):** stage rows are locked here in ascending (job,
//! position) order, after the caller has locked every task row it completes;
//! a transaction's own counter shard rows come after the stage rows it
//! counts up and before the ones it closes: nobody else ever writes them.
//! The task rows locked afterwards — the blocked tasks of the stage being
//! opened, or the tasks of later stages of a job that failed — belong to
//! stages none of whose tasks can be running, and only the transaction that
//! closed the stage before them reaches them, so nobody holding them can be
//! waiting for us.

use super::StoreError;
use super::codec::{parse_column, parse_stage_state};
use super::effects::Effects;
use super::rules::StageDelta;
use super::sql::{Batch, Db, Sql};
use crate::model::{EventKind, JobState, StageState, TaskState};
use std::collections::BTreeMap;

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

/// A stage's remaining count: the sum of its counter shards, as the
/// statement's snapshot (and its transaction's own writes) see them.
macro_rules! stage_remaining {
    ($stage:literal) => {
        concat!(
            "CAST(coalesce((SELECT sum(sc.remaining) FROM stage_counters sc
                            WHERE sc.job_id = ",
            $stage,
            ".job_id AND sc.position = ",
            $stage,
            ".position), 0) AS BIGINT)"
        )
    };
}
pub(crate) use stage_remaining;

// Spawned children raise their target stages' totals: the rows are locked
// (PostgreSQL: the `locked` InitPlan takes every lock, in ascending key
// order, before the update touches a row), which also keeps the targets'
// states fixed until the children are inserted.
const ADD_TOTALS: Sql = Sql::each(
    "UPDATE stages AS s
     SET total = s.total + (d.value ->> 2)
     FROM jsonb_each($1) AS d
     WHERE s.job_id = d.value ->> 0 AND s.position = d.value ->> 1",
    "WITH locked AS MATERIALIZED (
         SELECT s.job_id FROM stages s
         JOIN unnest($1::int8[], $2::int4[]) AS k(job_id, position)
           ON s.job_id = k.job_id AND s.position = k.position
         WHERE s.job_id = ANY($1)
         ORDER BY s.job_id, s.position
         FOR NO KEY UPDATE OF s
     )
     UPDATE stages s
     SET total = s.total + d.add
     FROM unnest($1::int8[], $2::int4[], $3::int8[]) AS d(job_id, position, add)
     WHERE s.job_id = d.job_id AND s.position = d.position
       AND s.job_id = ANY(ARRAY(SELECT job_id FROM locked))",
);

// Count into this transaction's own shard and read what remains of each
// stage: the own shard as just written plus the others as the statement's
// snapshot sees them (PostgreSQL: a CTE's writes are invisible to the rest
// of its statement, so the own shard is left out of the sum and added from
// RETURNING). No stage row is locked. SQLite has the one shard, 0, whose
// value is the whole count.
const COUNT: Sql = Sql::each(
    "INSERT INTO stage_counters (job_id, position, shard, remaining)
     SELECT d.value ->> 0, d.value ->> 1, 0, d.value ->> 2
     FROM jsonb_each($1) AS d
     WHERE true
     ON CONFLICT (job_id, position, shard)
     DO UPDATE SET remaining = remaining + excluded.remaining
     RETURNING job_id, position,
               (SELECT s.state FROM stages s
                WHERE s.job_id = stage_counters.job_id
                  AND s.position = stage_counters.position),
               remaining",
    "WITH own AS (
         INSERT INTO stage_counters AS c (job_id, position, shard, remaining)
         SELECT d.job_id, d.position, pg_backend_pid(), d.delta
         FROM unnest($1::int8[], $2::int4[], $3::int8[]) AS d(job_id, position, delta)
         ORDER BY d.job_id, d.position
         ON CONFLICT (job_id, position, shard)
         DO UPDATE SET remaining = c.remaining + excluded.remaining
         RETURNING c.job_id, c.position, c.remaining
     )
     SELECT o.job_id, o.position, s.state,
            o.remaining
            + coalesce((SELECT sum(x.remaining) FROM stage_counters x
                        WHERE x.job_id = o.job_id AND x.position = o.position
                          AND x.shard <> pg_backend_pid()), 0)::int8
     FROM own o JOIN stages s ON s.job_id = o.job_id AND s.position = o.position",
);

/// A stage as [`apply_deltas`] or [`count`] left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counted {
    pub state: StageState,
    /// What remains of the stage as this transaction sees it (its own
    /// counts and the committed ones).
    pub remaining: i64,
}

/// Change the remaining counts of stages by `delta` each, in this
/// transaction's own shard; the stages' states and what remains of them as
/// this transaction sees it. A positive delta (tasks counted back in) needs
/// the stage row locked first (Invariant 9).
pub(crate) async fn count(
    db: &mut Db<'_>,
    deltas: &[((i64, i32), i64)],
) -> Result<BTreeMap<(i64, i32), Counted>, StoreError> {
    if deltas.is_empty() {
        return Ok(BTreeMap::new());
    }
    let mut sorted = deltas.to_vec();
    sorted.sort_unstable_by_key(|&(key, _)| key);
    let batch = Batch::new()
        .int8(sorted.iter().map(|&((j, _), _)| j).collect())
        .int4(sorted.iter().map(|&((_, p), _)| p).collect())
        .int8(sorted.iter().map(|&(_, d)| d).collect());
    let rows: Vec<(i64, i32, String, i64)> =
        db.fetch_all(db.query(&COUNT).bind_batch(&batch)).await?;
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

/// Apply counter deltas: lock the stage rows that gain tasks (PostgreSQL:
/// in ascending (job, position) order) and raise their totals, then count
/// every stage's change in this transaction's shard. The stages' states and
/// what remains of them; their states are unchanged by it: [`close_drained`]
/// closes the ones left at zero.
pub(crate) async fn apply_deltas(
    db: &mut Db<'_>,
    deltas: &BTreeMap<(i64, i32), StageDelta>,
) -> Result<BTreeMap<(i64, i32), Counted>, StoreError> {
    if deltas.is_empty() {
        return Ok(BTreeMap::new());
    }
    let (mut jobs, mut positions, mut adds) = (Vec::new(), Vec::new(), Vec::new());
    for (&(j, p), d) in deltas.iter().filter(|(_, d)| d.add > 0) {
        jobs.push(j);
        positions.push(p);
        adds.push(d.add);
    }
    if !jobs.is_empty() {
        let batch = Batch::new().int8(jobs).int4(positions).int8(adds);
        db.execute(db.query(&ADD_TOTALS).bind_batch(&batch)).await?;
    }
    let changes: Vec<((i64, i32), i64)> = deltas
        .iter()
        .map(|(&key, d)| (key, d.add - d.done))
        .collect();
    count(db, &changes).await
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
            AND t.state = 'dead' AND t.on_failure IN ('fail_job', 'release_then_fail'))
             AS dead,
         (SELECT min(n.position) FROM stages n
          WHERE n.job_id = stages.job_id AND n.position > stages.position
            AND n.state <> 'done') AS next_position"
    };
}

const CLOSE_DRAINED: Sql = Sql::each(
    concat!(
        "UPDATE stages SET state = 'done', closed_at = $2
         FROM jsonb_each($1) AS k
         WHERE stages.job_id = k.value ->> 0 AND stages.position = k.value ->> 1
           AND stages.state = 'open' AND ",
        stage_remaining!("stages"),
        " = 0
         RETURNING ",
        closed_stage_columns!()
    ),
    concat!(
        "UPDATE stages SET state = 'done', closed_at = $3
         FROM unnest($1::int8[], $2::int4[]) AS k(job_id, position)
         WHERE stages.job_id = k.job_id AND stages.position = k.position
           AND stages.job_id = ANY($1)
           AND stages.state = 'open' AND ",
        stage_remaining!("stages"),
        " = 0
         RETURNING ",
        closed_stage_columns!()
    ),
);

/// The statements that lock and close a stage and open the next one: each
/// runs about once per stage, so a pooled PostgreSQL connection prepares them when it
/// opens rather than in the transaction that completes a stage's last task
/// (a parse is a round trip of its own, on the way to the next stage's first
/// claim).
pub(crate) const ADVANCING: [&Sql; 4] = [
    &LOCK_STAGES,
    &CLOSE_DRAINED,
    &OPEN_STAGE,
    &CLOSE_EMPTY_STAGE,
];

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

/// Close every given stage that is open with nothing remaining (each closes
/// exactly once, here) and advance its job; the keys of the stages closed.
/// The rows must be locked by the caller, before this statement begins
/// (Invariant 9: its snapshot then sees every count of their earlier
/// holders).
pub(crate) async fn close_drained(
    db: &mut Db<'_>,
    keys: &[(i64, i32)],
    fx: &mut Effects,
) -> Result<Vec<(i64, i32)>, StoreError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut closed: Vec<ClosedStage> = db
        .fetch_all(
            db.query(&CLOSE_DRAINED)
                .bind_batch(&stage_keys(keys))
                .bind(fx.now()),
        )
        .await?;
    closed.sort_unstable_by_key(|c| (c.job_id, c.position));
    let keys = closed.iter().map(|c| (c.job_id, c.position)).collect();
    for stage in closed {
        after_stage_closed(db, stage, fx).await?;
    }
    Ok(keys)
}

// Which of the given stages are open with nothing remaining, in a snapshot
// newer than every commit before it: run after the commit of a transaction
// that counted them down.
const STILL_DRAINED: Sql = Sql::each(
    concat!(
        "SELECT s.job_id, s.position
         FROM jsonb_each($1) AS k
         CROSS JOIN stages s ON s.job_id = k.value ->> 0 AND s.position = k.value ->> 1
         WHERE s.state = 'open' AND ",
        stage_remaining!("s"),
        " = 0"
    ),
    concat!(
        "SELECT s.job_id, s.position
         FROM stages s
         JOIN unnest($1::int8[], $2::int4[]) AS k(job_id, position)
           ON s.job_id = k.job_id AND s.position = k.position
         WHERE s.job_id = ANY($1) AND s.state = 'open' AND ",
        stage_remaining!("s"),
        " = 0"
    ),
);

/// Of the stages a committed transaction counted down and did not close,
/// the ones now open with nothing remaining (Invariant 9: read in a snapshot
/// that sees every committed count).
pub(crate) async fn still_drained(
    db: &mut Db<'_>,
    keys: &[(i64, i32)],
) -> Result<Vec<(i64, i32)>, StoreError> {
    let mut sorted = keys.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    db.fetch_all(db.query(&STILL_DRAINED).bind_batch(&stage_keys(&sorted)))
        .await
}

// Open stages of running jobs with nothing remaining: a stage whose last
// count-down committed and whose advancement has not (yet) followed.
// Stages of cancelled or failed jobs stay as they were left.
const DRAINED_OPEN_STAGES: Sql = Sql::both(concat!(
    "SELECT s.job_id, s.position
     FROM stages s JOIN jobs j ON j.id = s.job_id
     WHERE s.state = 'open' AND j.state = 'running' AND ",
    stage_remaining!("s"),
    " = 0
     ORDER BY s.job_id, s.position
     LIMIT $1"
));

/// Up to `limit` open stages of running jobs with nothing remaining: the
/// ones whose advancement a crash lost between a commit and its re-read
/// (or is under way right now).
pub(crate) async fn drained_open_stages(
    db: &mut Db<'_>,
    limit: i64,
) -> Result<Vec<(i64, i32)>, StoreError> {
    db.fetch_all(db.query(&DRAINED_OPEN_STAGES).bind(limit))
        .await
}

/// Advance the given stages in a transaction of their own: lock their rows,
/// then close those still open with nothing remaining (another transaction
/// may have closed them first) and open what follows.
pub(crate) async fn advance_stages(
    db: &mut Db<'_>,
    keys: &[(i64, i32)],
    now: crate::model::Millis,
) -> Result<usize, StoreError> {
    let mut fx = Effects::new(now);
    let locked: Vec<(i64, i32)> = lock_stages(db, keys).await?.into_keys().collect();
    let closed = close_drained(db, &locked, &mut fx).await?;
    fx.write(db).await?;
    Ok(closed.len())
}

// On PostgreSQL the opened stage's blocked tasks become pending in the same
// statement, which returns the executors that got ready tasks for the
// wake-up (locking the stage row, then its task rows: see the module doc);
// SQLite runs READY_OPENED_STAGE after it and needs no wake-up (its engine
// wakes its own workers).
const OPEN_STAGE: Sql = Sql::each(
    concat!(
        "UPDATE stages SET state = 'open', opened_at = $3
         WHERE job_id = $1 AND position = $2 AND state = 'waiting'
         RETURNING name, ",
        stage_remaining!("stages"),
        ", NULL"
    ),
    concat!(
        "WITH opened AS (
         UPDATE stages SET state = 'open', opened_at = $3
         WHERE job_id = $1 AND position = $2 AND state = 'waiting'
         RETURNING name, ",
        stage_remaining!("stages"),
        " AS remaining
     ),
     ready AS (
         SELECT id FROM tasks
         WHERE job_id = $1 AND stage_position = $2
           AND state = 'blocked' AND deps_remaining = 0
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
     FROM opened o"
    ),
);
const READY_OPENED_STAGE: Sql = Sql::sqlite_only(
    "UPDATE tasks SET state = 'pending', run_after = $3, updated_at = $3
     WHERE job_id = $1 AND stage_position = $2 AND state = 'blocked' AND deps_remaining = 0",
);
// Run right after OPEN_STAGE locked the row; a new statement, so its sum
// is the one to trust (OPEN_STAGE's snapshot may predate the commit of a
// holder of the row it waited for).
const CLOSE_EMPTY_STAGE: Sql = Sql::both(concat!(
    "UPDATE stages SET state = 'done', closed_at = $3
     WHERE job_id = $1 AND position = $2 AND state = 'open' AND ",
    stage_remaining!("stages"),
    " = 0
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
            fx.finish_job(&tenant, job, JobState::Failed, Some(reason));
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
            return Ok(());
        }
        // A stage with no tasks completes at once.
        let Some(empty) = db
            .fetch_optional(
                db.query(&CLOSE_EMPTY_STAGE)
                    .bind(job)
                    .bind(next)
                    .bind(fx.now()),
            )
            .await?
        else {
            return Ok(());
        };
        closed = empty;
    }
}

const CANCEL_LATER_TASKS: Sql = Sql::each(
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
/// stages after it (each cancellation counted off its stage).
async fn cancel_later_tasks(
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
    apply_deltas(db, &deltas).await?;
    Ok(())
}
