//! Submitting a job: job, stages, tasks and dependencies in one transaction.
//!
//! **Invariant (idempotent submit):** `INSERT … ON CONFLICT (tenant_id,
//! idempotency_key) DO NOTHING` decides; a resubmission reads the existing id
//! afterwards and writes nothing. Never lookup-then-insert.
//!
//! Tasks go in set-based, [`TASKS_PER_STATEMENT`] rows per statement, in spec
//! order (so ids ascend with stage order); a job's ids are read back only
//! when it has dependencies to record.

use super::StoreError;
use super::advance;
use super::agent::INSERT_TENANT;
use super::effects::Effects;
use super::sql::{Batch, Db, Query, Sql};
use crate::model::{EventKind, JobId, JobState, NewTask, SubmitJob, Submitted};

use std::collections::{BTreeSet, HashMap};

/// Rows bound into one insert statement.
const TASKS_PER_STATEMENT: usize = 5_000;

/// A submit of at least this many tasks refreshes PostgreSQL's statistics of
/// the tables a claim joins before it commits.
const ANALYZE_FROM_TASKS: usize = 10_000;
// Planned on statistics that predate a large job (none at all before the
// first autovacuum, which may be off or a minute away), the claim walked every
// pending task of the job and sorted them for each batch: 0.7 s a claim at a
// million tasks; with statistics of `tasks` alone, the planner still guessed
// that the job and stage conditions leave few rows, and scanned all of
// `tasks` (0.45 s a claim). In the transaction, the statistics count its own
// rows and become visible with them. SQLite's planner needs none.
const ANALYZE_TASKS: Sql = Sql::postgres_only("ANALYZE tasks, jobs, stages");

const INSERT_JOB: Sql = Sql::both(
    "INSERT INTO jobs (tenant_id, name, idempotency_key, state, created_at, updated_at)
     VALUES ($1, $2, $3, 'running', $4, $4)
     ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
     RETURNING id",
);
// The spec is megabytes for a large job: kept out of the `jobs` row, which
// the hot path reads, and written in parts (migration 0016 on SQLite, 0018 on
// PostgreSQL), so no database copy of it is ever whole in memory.
const INSERT_JOB_SPEC_PART: Sql =
    Sql::both("INSERT INTO job_spec_parts (job_id, part, tenant_id, text) VALUES ($1, $2, $3, $4)");
/// Largest part of a job's canonical spec written in one row.
pub const SPEC_PART_BYTES: usize = 1 << 20;
// The conflicting row is committed (ON CONFLICT waited for it), so this
// statement sees it.
const EXISTING_JOB: Sql =
    Sql::both("SELECT id FROM jobs WHERE tenant_id = $1 AND idempotency_key = $2");
const INSERT_STAGES: Sql = Sql::each(
    "INSERT INTO stages (job_id, position, tenant_id, name, state, on_failure, total,
                         remaining, opened_at, max_attempts, timeout_ms)
     SELECT $1, s.value ->> 0, $2, s.value ->> 1, s.value ->> 2, s.value ->> 3,
            s.value ->> 4, s.value ->> 4,
            CASE WHEN s.value ->> 0 = 0 THEN $3 END, s.value ->> 5, s.value ->> 6
     FROM jsonb_each($4) AS s",
    "INSERT INTO stages (job_id, position, tenant_id, name, state, on_failure, total,
                         remaining, opened_at, max_attempts, timeout_ms)
     SELECT $1, s.position, $2, s.name, s.state, s.on_failure, s.total, s.total,
            CASE WHEN s.position = 0 THEN $3 END, s.max_attempts, s.timeout_ms
     FROM unnest($4::int4[], $5::text[], $6::text[], $7::text[], $8::int8[], $9::int4[],
                 $10::int8[])
          AS s(position, name, state, on_failure, total, max_attempts, timeout_ms)",
);
/// The task insert of each database, as macros so that the variant that
/// returns the new ids stays a string constant too.
macro_rules! insert_tasks_sqlite {
    () => {
        "INSERT INTO tasks (tenant_id, job_id, stage_position, handler, executor, key, state,
                            max_attempts, timeout_ms, run_after, input_json, deps_remaining,
                            agent_json, on_failure, created_at, updated_at)
         SELECT $1, $2, t.value ->> 0, t.value ->> 1, t.value ->> 2, t.value ->> 3,
                t.value ->> 4, t.value ->> 5, t.value ->> 6, $3, t.value ->> 7, t.value ->> 8,
                t.value ->> 9, t.value ->> 10, $3, $3
         FROM jsonb_each($4) AS t
         ORDER BY t.key"
    };
}
macro_rules! insert_tasks_postgres {
    () => {
        "INSERT INTO tasks (tenant_id, job_id, stage_position, handler, executor, key, state,
                            max_attempts, timeout_ms, run_after, input_json, deps_remaining,
                            agent_json, on_failure, created_at, updated_at)
         SELECT $1, $2, t.position, t.handler, t.executor, t.key, t.state, t.max_attempts,
                t.timeout_ms, $3, t.input, t.deps, t.agent, t.on_failure, $3, $3
         FROM unnest($4::int4[], $5::text[], $6::text[], $7::text[], $8::text[], $9::int4[],
                     $10::int8[], $11::text[], $12::int4[], $13::text[], $14::text[])
              WITH ORDINALITY
              AS t(position, handler, executor, key, state, max_attempts, timeout_ms, input,
                   deps, agent, on_failure, ord)
         ORDER BY t.ord"
    };
}
const INSERT_TASKS: Sql = Sql::each(insert_tasks_sqlite!(), insert_tasks_postgres!());
// Ids ascend in insertion order on both databases (SQLite: max + 1 under the
// write lock; PostgreSQL: this session's sequence values), so the returned
// ids, sorted, are the rows' ids in order.
const INSERT_TASKS_RETURNING_IDS: Sql = Sql::each(
    concat!(insert_tasks_sqlite!(), " RETURNING id"),
    concat!(insert_tasks_postgres!(), " RETURNING id"),
);
const INSERT_DEPENDENCIES: Sql = Sql::each(
    "INSERT INTO task_deps (task_id, depends_on, tenant_id)
     SELECT d.value ->> 0, d.value ->> 1, $1 FROM jsonb_each($2) AS d",
    "INSERT INTO task_deps (task_id, depends_on, tenant_id)
     SELECT d.task_id, d.depends_on, $1
     FROM unnest($2::int8[], $3::int8[]) AS d(task_id, depends_on)",
);

/// Insert the job, or find the one with the same idempotency key (then
/// nothing is written).
pub(crate) async fn submit_job(db: &mut Db<'_>, p: &SubmitJob) -> Result<Submitted, StoreError> {
    let now = p.now;
    let tenant = p.tenant.0.as_str();
    db.execute(db.query(&INSERT_TENANT).bind(tenant).bind(now))
        .await?;
    let inserted: Option<(i64,)> = db
        .fetch_optional(
            db.query(&INSERT_JOB)
                .bind(tenant)
                .bind(&p.name)
                .bind(&p.idempotency_key)
                .bind(now),
        )
        .await?;
    let Some((job,)) = inserted else {
        let (existing,): (i64,) = db
            .fetch_one(
                db.query(&EXISTING_JOB)
                    .bind(tenant)
                    .bind(&p.idempotency_key),
            )
            .await?;
        return Ok(Submitted {
            job_id: JobId(existing),
            created: false,
        });
    };

    for (part, text) in (0_i32..).zip(spec_parts(&p.spec_json, SPEC_PART_BYTES)) {
        db.execute(
            db.query(&INSERT_JOB_SPEC_PART)
                .bind(job)
                .bind(part)
                .bind(tenant)
                .bind(text),
        )
        .await?;
    }

    let mut fx = Effects::new(now);
    fx.event(
        tenant,
        job,
        None,
        EventKind::Submitted,
        None,
        Some(p.name.clone()),
    );

    // Stages: the first is open, the rest wait.
    let positions: Vec<i32> = (0..p.stages.len())
        .map(|i| i32::try_from(i).unwrap_or(i32::MAX))
        .collect();
    let stages = Batch::new()
        .int4(positions.clone())
        .text(p.stages.iter().map(|s| s.name.as_str()).collect())
        .text(
            positions
                .iter()
                .map(|&i| if i == 0 { "open" } else { "waiting" })
                .collect(),
        )
        .text(p.stages.iter().map(|s| s.on_failure.as_str()).collect())
        .int8(
            p.stages
                .iter()
                .map(|s| i64::try_from(s.tasks.len()).unwrap_or(i64::MAX))
                .collect(),
        )
        .opt_int4(p.stages.iter().map(|s| s.max_attempts).collect())
        .opt_int8(p.stages.iter().map(|s| s.timeout_ms).collect());
    db.execute(
        db.query(&INSERT_STAGES)
            .bind(job)
            .bind(tenant)
            .bind(now)
            .bind_batch(&stages),
    )
    .await?;

    insert_tasks(db, p, job, &mut fx).await?;
    if p.stages.iter().map(|s| s.tasks.len()).sum::<usize>() >= ANALYZE_FROM_TASKS {
        db.execute(db.query(&ANALYZE_TASKS)).await?;
    }

    if p.stages.is_empty() {
        fx.finish_job(tenant, job, JobState::Succeeded, None);
    } else {
        fx.event(
            tenant,
            job,
            None,
            EventKind::StageOpened,
            Some(0),
            Some(p.stages[0].name.clone()),
        );
        // A first stage without tasks completes at once (and so on).
        advance::close_drained(db, &[(job, 0)], &mut fx).await?;
    }
    fx.write(db).await?;
    Ok(Submitted {
        job_id: JobId(job),
        created: true,
    })
}

/// `text` in pieces of at most `max_bytes` (at least 4: a character fits),
/// cut at character boundaries, in order; none for empty text.
fn spec_parts(text: &str, max_bytes: usize) -> Vec<&str> {
    let mut parts = Vec::with_capacity(text.len().div_ceil(max_bytes.max(1)));
    let mut rest = text;
    while !rest.is_empty() {
        let (part, tail) = rest.split_at(rest.floor_char_boundary(max_bytes.max(4)));
        parts.push(part);
        rest = tail;
    }
    parts
}

/// The job's tasks, a statement per [`TASKS_PER_STATEMENT`], then their
/// dependencies. Ids are read back only when the job has dependencies.
async fn insert_tasks(
    db: &mut Db<'_>,
    p: &SubmitJob,
    job: i64,
    fx: &mut Effects,
) -> Result<(), StoreError> {
    let with_dependencies = p
        .stages
        .iter()
        .flat_map(|s| &s.tasks)
        .any(|t| !t.depends_on.is_empty());
    // (stage position, task) in spec order. Collected first: an iterator of
    // closures held across the awaits below would make this future not Send.
    let mut tasks: Vec<(i32, &NewTask)> = Vec::new();
    for (position, stage) in (0..).zip(&p.stages) {
        for task in &stage.tasks {
            tasks.push((position, task));
        }
    }
    // Only for jobs with dependencies: keyed tasks' ids, and each dependent
    // task's id with the keys it waits for.
    let mut by_key: HashMap<&str, i64> = HashMap::new();
    let mut dependents: Vec<(i64, Vec<&str>)> = Vec::new();
    let mut chunk: Vec<(i32, &NewTask, i32)> = Vec::with_capacity(TASKS_PER_STATEMENT);
    for rows in tasks.chunks(TASKS_PER_STATEMENT) {
        chunk.clear();
        for &(position, task) in rows {
            let deps: BTreeSet<&str> = task.depends_on.iter().map(String::as_str).collect();
            if position == 0 && deps.is_empty() {
                fx.ready(task.executor);
            }
            chunk.push((
                position,
                task,
                i32::try_from(deps.len()).unwrap_or(i32::MAX),
            ));
        }
        if !with_dependencies {
            db.execute(task_rows(db, &INSERT_TASKS, p, job, &chunk))
                .await?;
            continue;
        }
        let mut ids: Vec<(i64,)> = db
            .fetch_all(task_rows(db, &INSERT_TASKS_RETURNING_IDS, p, job, &chunk))
            .await?;
        ids.sort_unstable();
        if ids.len() != chunk.len() {
            return Err(StoreError::Corrupt(format!(
                "inserting {} tasks returned {} ids",
                chunk.len(),
                ids.len()
            )));
        }
        for ((id,), (_, task, _)) in ids.into_iter().zip(&chunk) {
            if let Some(key) = task.key.as_deref() {
                by_key.insert(key, id);
            }
            if !task.depends_on.is_empty() {
                let mut keys: Vec<&str> = task.depends_on.iter().map(String::as_str).collect();
                keys.sort_unstable();
                keys.dedup();
                dependents.push((id, keys));
            }
        }
    }
    let mut pairs: Vec<(i64, i64)> = Vec::new();
    for (task, keys) in &dependents {
        for key in keys {
            let dep = by_key
                .get(key)
                .copied()
                .ok_or_else(|| StoreError::NotFound {
                    entity: "dependency key",
                    id: format!("{key:?}"),
                })?;
            pairs.push((*task, dep));
        }
    }
    for pairs in pairs.chunks(TASKS_PER_STATEMENT) {
        let (tasks, deps): (Vec<i64>, Vec<i64>) = pairs.iter().copied().unzip();
        db.execute(
            db.query(&INSERT_DEPENDENCIES)
                .bind(p.tenant.0.as_str())
                .bind_batch(&Batch::new().int8(tasks).int8(deps)),
        )
        .await?;
    }
    Ok(())
}

/// `statement` (an insert of tasks) bound to (stage position, task,
/// unfinished dependencies) rows.
fn task_rows(
    db: &Db<'_>,
    statement: &Sql,
    p: &SubmitJob,
    job: i64,
    rows: &[(i32, &NewTask, i32)],
) -> Query {
    let batch = Batch::new()
        .int4(rows.iter().map(|r| r.0).collect())
        .text(rows.iter().map(|r| r.1.handler.as_str()).collect())
        .text(rows.iter().map(|r| r.1.executor.as_str()).collect())
        .opt_text(rows.iter().map(|r| r.1.key.as_deref()).collect())
        .text(
            rows.iter()
                .map(|r| {
                    if r.0 != 0 || r.2 > 0 {
                        "blocked"
                    } else {
                        "pending"
                    }
                })
                .collect(),
        )
        .int4(rows.iter().map(|r| r.1.max_attempts).collect())
        .int8(rows.iter().map(|r| r.1.timeout_ms).collect())
        .text(rows.iter().map(|r| r.1.input_json.as_str()).collect())
        .int4(rows.iter().map(|r| r.2).collect())
        .opt_text(rows.iter().map(|r| r.1.agent_json.as_deref()).collect())
        .text(rows.iter().map(|r| r.1.on_failure.as_str()).collect());
    db.query(statement)
        .bind(p.tenant.0.as_str())
        .bind(job)
        .bind(p.now)
        .bind_batch(&batch)
}
