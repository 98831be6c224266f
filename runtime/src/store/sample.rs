//! Operator-wide counts for `/metrics`: every tenant's tasks and jobs by
//! state, and the oldest ready task per executor. Like `claim_batch` without
//! a tenant and lease rescue, these read across tenants; they return counts
//! and one timestamp, never a row, an id or a tenant's name, so nothing of
//! one tenant reaches another (Invariant 10 holds for every read that
//! returns rows).

use super::codec::{parse_executor, parse_job_state, parse_task_state};
use super::sql::{Db, Sql};
use super::{StateCounts, StoreError};
use crate::model::{Executor, JobState, Millis, StateTotals, TaskState};

// Reads every task row: SQLite's `tasks_job_stage_state`, which once covered
// `state`, holds no running task since migration 0009 and so cannot answer
// an unfiltered count (the sampler runs it every 5 s, off the hot path).
const TASKS_BY_STATE: Sql = Sql::both("SELECT state, count(*) FROM tasks GROUP BY state");
const JOBS_BY_STATE: Sql = Sql::both("SELECT state, count(*) FROM jobs GROUP BY state");
// The pending partial index (executor, id) holds exactly the candidates.
const OLDEST_READY: Sql = Sql::both(
    "SELECT executor, min(run_after) FROM tasks
     WHERE state = 'pending' AND deps_remaining = 0 AND run_after <= $1
     GROUP BY executor",
);

/// Every state with its count (0 for a state no row is in), in the order of
/// `ALL`. Run it in a snapshot, so the counts are of one moment.
pub(crate) async fn state_counts(
    db: &mut Db<'_>,
    p: &StateCounts,
) -> Result<StateTotals, StoreError> {
    let task_rows: Vec<(String, i64)> = db.fetch_all(db.query(&TASKS_BY_STATE)).await?;
    let job_rows: Vec<(String, i64)> = db.fetch_all(db.query(&JOBS_BY_STATE)).await?;
    let ready_rows: Vec<(String, Option<i64>)> =
        db.fetch_all(db.query(&OLDEST_READY).bind(p.now)).await?;
    let mut tasks: Vec<(TaskState, i64)> = TaskState::ALL.iter().map(|s| (*s, 0)).collect();
    for (state, n) in task_rows {
        let state = parse_task_state(&state)?;
        if let Some(slot) = tasks.iter_mut().find(|(s, _)| *s == state) {
            slot.1 = n;
        }
    }
    let mut jobs: Vec<(JobState, i64)> = JobState::ALL.iter().map(|s| (*s, 0)).collect();
    for (state, n) in job_rows {
        let state = parse_job_state(&state)?;
        if let Some(slot) = jobs.iter_mut().find(|(s, _)| *s == state) {
            slot.1 = n;
        }
    }
    let mut oldest_ready: Vec<(Executor, Millis)> = Vec::new();
    for (executor, at) in ready_rows {
        if let Some(at) = at {
            oldest_ready.push((parse_executor(&executor)?, at));
        }
    }
    oldest_ready.sort_unstable_by_key(|(executor, _)| executor.as_str());
    Ok(StateTotals {
        tasks,
        jobs,
        oldest_ready,
    })
}
