//! Claiming, completing, renewing and rescuing tasks.
//!
//! **Invariant 8 (fencing):** a completion is recorded only for a row that is
//! `state = 'running'` with the claimed attempt and the completing tenant,
//! read inside the write transaction (locked on PostgreSQL); anything else is
//! refused as stale and leaves an event, nothing more.
//! **Invariant 7 (one transaction per batch, set-based):** a batch's task
//! updates, dependents, stage counters, spawned children, advancement and
//! events are a fixed number of statements, whatever its size.
//! **Lock order (PostgreSQL):** completed task rows (ascending id), then the
//! advisory turn of each job whose tasks spawn (ascending id), then their
//! dependents (ascending id, one statement), then stage rows, then job
//! rows.

use super::advance;
use super::codec::{after, parse_column, parse_stage_state, parse_task_state};
use super::effects::{self, Effects};
use super::rules::{self, Decision, Held, HeldRow, StageDelta, StageMeta, stage_of};
use super::sql::{Batch, Db, Query, Sql, plan_text};
use super::{
    ClaimBatch, ClaimedTask, CompleteBatch, Completion, CompletionOutcome, RenewLease,
    RescueExpiredLeases, StoreError, TaskResult,
};
use crate::model::{
    EventKind, Executor, JobId, LeaseToken, Millis, StageState, TaskId, TaskState, TenantId,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

// ------------------------------------------------------------ claim

/// The PostgreSQL claim's text around the statement that picks its
/// candidates (`picked`): shared by [`CLAIM`], [`CLAIM_IN_JOB`],
/// [`CLAIM_AGENT_IN_TENANT`] and their `EXPLAIN`s. Each claimed task's
/// stage name is read by its key in a subquery, not by a join: the generic
/// plan a claim connection keeps, made with the statistics of an empty
/// database (one stage), joined by walking all of `stages` per claim.
macro_rules! pg_claim {
    (all) => {
        pg_claim!(
            "SELECT t.id FROM tasks t
             WHERE t.state = 'pending' AND t.run_after <= $1
               AND t.executor >= $2 AND t.executor <= $2
               AND ($3::text[] IS NULL OR t.handler = ANY($3))
               AND t.deps_remaining = 0
               AND ($4::text IS NULL OR t.tenant_id = $4)
               AND ($5::int8 IS NULL OR t.job_id = $5)
             ORDER BY t.executor, t.id
             LIMIT $6
             FOR UPDATE OF t SKIP LOCKED"
        )
    };
    (in_job) => {
        pg_claim!(
            "SELECT t.id FROM stages s
             JOIN jobs j ON j.id = s.job_id
             JOIN tasks t ON t.job_id = s.job_id AND t.stage_position = s.position
             WHERE s.job_id = $5 AND s.state = 'open' AND j.state = 'running'
               AND t.state = 'pending' AND t.state <> 'running' AND t.run_after <= $1
               AND t.executor = $2
               AND ($3::text[] IS NULL OR t.handler = ANY($3))
               AND t.deps_remaining = 0
               AND ($4::text IS NULL OR t.tenant_id = $4)
             ORDER BY s.position, t.id
             LIMIT $6
             FOR UPDATE OF t SKIP LOCKED"
        )
    };
    (agent_in_tenant) => {
        pg_claim!(
            "SELECT t.id FROM tasks t
             WHERE t.tenant_id >= $4 AND t.tenant_id <= $4
               AND t.state = 'pending' AND t.executor = 'agent'
               AND t.executor = $2 AND t.run_after <= $1
               AND ($3::text[] IS NULL OR t.handler = ANY($3))
               AND t.deps_remaining = 0
               AND ($5::int8 IS NULL OR t.job_id = $5)
             ORDER BY t.tenant_id, t.id
             LIMIT $6
             FOR UPDATE OF t SKIP LOCKED"
        )
    };
    ($picked:literal) => {
        concat!(
            "WITH picked AS (",
            $picked,
            "),
             claimed AS (
                 UPDATE tasks t
                 SET state = 'running', attempt = t.attempt + 1, lease_expires_at = $7,
                     worker = $8, claimed_at = $1, updated_at = $1, claim_nonce = $9
                 WHERE t.id = ANY(ARRAY(SELECT id FROM picked))
                   AND ($9::int8 IS NULL
                        OR (SELECT set_config('synchronous_commit', 'off', true)) = 'off')
                 RETURNING t.id, t.tenant_id, t.job_id, t.stage_position, t.handler, t.attempt,
                           t.input_json, t.timeout_ms, t.max_attempts, t.run_after
             ),
             logged AS (
                 INSERT INTO events (tenant_id, job_id, task_id, kind, stage_position, detail, at,
                                     attempt, worker, claimed_at)
                 SELECT c.tenant_id, c.job_id, c.id, 'task_claimed', c.stage_position,
                        'attempt ' || c.attempt || ' by ' || $8, $1, c.attempt, $8, $1
                 FROM claimed c WHERE $2 <> 'wasm' ORDER BY c.id
             )
             SELECT c.id, c.tenant_id, c.job_id, c.stage_position,
                    (SELECT s.name FROM stages s
                     WHERE s.job_id = c.job_id AND s.position = c.stage_position) AS stage_name,
                    c.attempt, c.handler, c.input_json, c.timeout_ms, c.max_attempts, c.run_after
             FROM claimed c
             ORDER BY c.id"
        )
    };
}

/// The SQLite claim's text around the statement that picks its candidates,
/// shared by [`CLAIM`], [`CLAIM_IN_JOB`] and [`CLAIM_AGENT_IN_TENANT`].
macro_rules! sqlite_claim {
    ($picked:literal) => {
        concat!(
            "UPDATE tasks
             SET state = 'running', attempt = attempt + 1, lease_expires_at = $7,
                 worker = $8, claimed_at = $1, updated_at = $1, claim_nonce = $9
             WHERE id IN (",
            $picked,
            ")
             RETURNING id, tenant_id, job_id, stage_position,
                       (SELECT s.name FROM stages s
                        WHERE s.job_id = tasks.job_id AND s.position = tasks.stage_position)
                           AS stage_name,
                       attempt, handler, input_json, timeout_ms, max_attempts, run_after"
        )
    };
}

/// Whether claims of `executor`'s tasks append a `task_claimed` event
/// (Invariant 42). Every claim is recorded in the task row (worker,
/// claimed_at, attempt), and the event that ends the attempt carries it. A
/// wasm task's claim logs nothing more: at thousands of claims a second the
/// event row and its two index entries were one of the writer's largest
/// costs per task (README, issue 13). Agent and command tasks are claimed at human pace by a party worth
/// naming in the log as it happens (an agent over MCP; a CI step that the
/// `ci` view shows as started): their claims are logged too. The
/// PostgreSQL text tests the same thing (`$2 <> 'wasm'`).
fn logs_claims(executor: Executor) -> bool {
    executor != Executor::Wasm
}

/// A new claim's nonce, stored in each claimed row and carried by each
/// lease token (Invariant 8): one random value per claim statement (a claim
/// takes each task once), for wasm claims. A claim is committed
/// [`NextCommit`](super::backend::Durability::NextCommit): should a crash lose it, the task's next claim
/// of the same attempt number stores another nonce, and the lost claim's
/// run is refused; any later durable commit (its completion's, say) makes
/// it durable first. On PostgreSQL, whose workers outlive a crash of the
/// server, only a claim with a nonce commits so: its statement turns off
/// the wait for the WAL flush for its own commit (`set_config(…, true)`
/// lasts until the end of the statement's transaction). Agent and command
/// claims carry none and commit durably there: an MCP agent's token is
/// `(task_id, attempt)`, and at human pace the wait costs nothing.
pub(crate) fn claim_nonce(executor: Executor) -> Option<i64> {
    (executor == Executor::Wasm).then(rand::random::<i64>)
}

// The pending partial index, walked in id order, is the plan. A pending
// task is claimable (Invariant 44: its stage is open and its job running),
// so the claim reads no stage or job row per candidate: without them it
// plans in 0.26 ms instead of 0.60 on PostgreSQL and makes two fewer
// primary-key probes per candidate (README, 12-04 22:52 sitting). PostgreSQL picks with
// SKIP LOCKED (never waits on another process) and logs the claims in the
// same statement, so its claim is one statement, run without a transaction
// of its own (`write_claim`); SQLite, one writer at a time, logs them
// with LOG_CLAIMS.
//
// On PostgreSQL the order is `(executor, id)`, which only `tasks_claimable`
// provides, and the executor is matched as a range so the planner cannot
// treat it as a constant and reduce the order to `id` — which `tasks_pkey`
// provides too. With statistics from when the job was all pending (the
// submit's ANALYZE, autovacuum off or not due yet), the planner otherwise
// walks `tasks_pkey` past every finished task on each claim: 10 ms at 9,000
// done, 0.26 s at 300,000.
//
// SQLite's limit is `$6 + 0`, not `$6`: SQLite plans with the value bound
// to a bare `LIMIT ?` and so marks the statement to be compiled again
// whenever that parameter is bound anew — every claim (measured: 0.4 ms of
// the writer's time per claim, ~5% of it at host-noop). An expression is
// evaluated at run time instead, and the plan is fixed by `INDEXED BY`.
const CLAIM: Sql = Sql::each(
    sqlite_claim!(
        "SELECT t.id FROM tasks t INDEXED BY tasks_claimable
         WHERE t.state = 'pending' AND t.executor = $2 AND t.run_after <= $1
           AND t.deps_remaining = 0
           AND ($3 IS NULL OR t.handler IN (SELECT value FROM json_each($3)))
           AND ($4 IS NULL OR t.tenant_id = $4)
           AND ($5 IS NULL OR t.job_id = $5)
         ORDER BY t.id
         LIMIT $6 + 0"
    ),
    pg_claim!(all),
);

// A claim from one job (an MCP agent's `claim_task` with a job, a pipeline
// run's steps) reads only that job's pending tasks: its open stages, each
// one's pending tasks in `tasks_job_stage_state` in id order. Through the
// pending index instead it walked every pending task of that executor with
// a lower id, of every job and tenant, to reach the job's own: 22 ms per
// `claim_task` behind 98,000 pending agent tasks (`bench mcp`). The order is
// the job's earliest open stage first, then id — id order whenever one stage
// is open, as almost always — so the walk stops at the limit, unsorted.
const CLAIM_IN_JOB: Sql = Sql::each(
    sqlite_claim!(
        "SELECT t.id FROM stages s
         CROSS JOIN tasks t INDEXED BY tasks_job_stage_state
             ON t.job_id = s.job_id AND t.stage_position = s.position
         JOIN jobs j ON j.id = s.job_id
         WHERE s.job_id = $5 AND s.state = 'open' AND j.state = 'running'
           AND t.state = 'pending' AND t.state <> 'running' AND t.run_after <= $1
           AND t.executor = $2 AND t.deps_remaining = 0
           AND ($3 IS NULL OR t.handler IN (SELECT value FROM json_each($3)))
           AND ($4 IS NULL OR t.tenant_id = $4)
         ORDER BY s.position, t.id
         LIMIT $6 + 0"
    ),
    pg_claim!(in_job),
);
const LOG_CLAIMS: Sql = Sql::sqlite_only(
    "INSERT INTO events (tenant_id, job_id, task_id, kind, stage_position, detail, at,
                         attempt, worker, claimed_at)
     SELECT t.tenant_id, t.job_id, t.id, 'task_claimed', t.stage_position,
            'attempt ' || t.attempt || ' by ' || $2, $3, t.attempt, $2, $3
     FROM jsonb_each($1) AS k
     CROSS JOIN tasks t ON t.id = k.value
     ORDER BY t.id",
);

#[derive(sqlx::FromRow)]
struct ClaimedRow {
    id: i64,
    tenant_id: String,
    job_id: i64,
    stage_position: i32,
    stage_name: String,
    attempt: i32,
    handler: String,
    input_json: String,
    timeout_ms: i64,
    max_attempts: i32,
    run_after: i64,
}

// An agent's claim from no particular job (`claim_task` without one) reads
// its tenant's pending agent tasks in id order (`tasks_agent_claimable`,
// migration 0012), not every tenant's. The executor is a literal: SQLite
// uses a partial index only when the query states its predicate. On
// PostgreSQL the order is `(tenant_id, id)` with the tenant matched as a
// range, as the claim from every job orders by `(executor, id)` (above):
// ordered by `id` alone, its plan for any values (the generic plan) walked
// `tasks_pkey` past another tenant's backlog.
const CLAIM_AGENT_IN_TENANT: Sql = Sql::each(
    sqlite_claim!(
        "SELECT t.id FROM tasks t INDEXED BY tasks_agent_claimable
         WHERE t.tenant_id = $4 AND t.state = 'pending' AND t.executor = 'agent'
           AND t.executor = $2 AND t.run_after <= $1 AND t.deps_remaining = 0
           AND ($3 IS NULL OR t.handler IN (SELECT value FROM json_each($3)))
           AND ($5 IS NULL OR t.job_id = $5)
         ORDER BY t.id
         LIMIT $6 + 0"
    ),
    pg_claim!(agent_in_tenant),
);

/// One way to claim, and how PostgreSQL plans it (for tests).
struct ClaimStatement {
    claim: &'static Sql,
    /// Prepares the claim as `lockstep_claim_plan`, for its generic plan
    /// (tests).
    prepare: &'static Sql,
}

const FROM_EVERY_JOB: ClaimStatement = ClaimStatement {
    claim: &CLAIM,
    prepare: &Sql::postgres_only(concat!("PREPARE lockstep_claim_plan AS ", pg_claim!(all))),
};
const FROM_ONE_JOB: ClaimStatement = ClaimStatement {
    claim: &CLAIM_IN_JOB,
    prepare: &Sql::postgres_only(concat!(
        "PREPARE lockstep_claim_plan AS ",
        pg_claim!(in_job)
    )),
};
const FROM_AGENT_TENANT: ClaimStatement = ClaimStatement {
    claim: &CLAIM_AGENT_IN_TENANT,
    prepare: &Sql::postgres_only(concat!(
        "PREPARE lockstep_claim_plan AS ",
        pg_claim!(agent_in_tenant)
    )),
};

/// How `p` is claimed: from one job, from one tenant's agent tasks, or from
/// every pending task of its executor.
fn claim_statement(p: &ClaimBatch) -> &'static ClaimStatement {
    match (p.job, p.executor, &p.tenant) {
        (Some(_), _, _) => &FROM_ONE_JOB,
        (None, Executor::Agent, Some(_)) => &FROM_AGENT_TENANT,
        _ => &FROM_EVERY_JOB,
    }
}

fn bind_claim(query: Query, p: &ClaimBatch, nonce: Option<i64>) -> Query {
    query
        .bind(p.now)
        .bind(p.executor.as_str())
        .bind_names(p.handlers.as_deref())
        .bind(p.tenant.as_ref().map(|t| t.0.as_str()))
        .bind(p.job.map(|j| j.0))
        .bind(i64::from(p.limit))
        .bind(after(p.now, p.lease))
        .bind(&p.worker)
        .bind(nonce)
}

// The plan a claim runs with on PostgreSQL: its generic plan, made once per
// claim connection (`store/postgres`, "Plans") for any values, with the
// statistics of then and sequential scans ruled out. The claim's text must
// hold every such plan to its indexes (a claim from one job scans that job's
// tasks whatever the planner guesses), so the tests look at it. A plain
// `EXPLAIN` plans with the bound values, so the claim is prepared under a
// name here, explained with placeholder arguments on a claim connection,
// and deallocated.
const EXPLAIN_PREPARED_CLAIM: Sql =
    Sql::postgres_only("EXPLAIN EXECUTE lockstep_claim_plan(0, '', NULL, NULL, 0, 1, 0, '', NULL)");
const DEALLOCATE_CLAIM: Sql = Sql::postgres_only("DEALLOCATE lockstep_claim_plan");

/// The generic plan of `p`'s claim statement (see above) on `db`, a claim
/// connection, one line per plan node; empty on SQLite, whose claims name
/// their indexes.
pub(crate) async fn explain_generic_claim(
    db: &mut Db<'_>,
    p: &ClaimBatch,
) -> Result<String, StoreError> {
    let prepare = claim_statement(p).prepare;
    db.execute(db.query(prepare)).await?;
    let lines: Result<Vec<(String,)>, StoreError> =
        db.fetch_all(db.query(&EXPLAIN_PREPARED_CLAIM)).await;
    // The connection goes back to the pool as it came.
    db.execute(db.query(&DEALLOCATE_CLAIM)).await?;
    Ok(plan_text(lines?))
}

/// Claim up to `limit` ready tasks in one write, storing `nonce` in each
/// claimed row ([`claim_nonce`]).
pub(crate) async fn claim_batch(
    db: &mut Db<'_>,
    p: &ClaimBatch,
    nonce: Option<i64>,
) -> Result<Vec<ClaimedTask>, StoreError> {
    let claim = claim_statement(p).claim;
    let mut rows: Vec<ClaimedRow> = db.fetch_all(bind_claim(db.query(claim), p, nonce)).await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    rows.sort_unstable_by_key(|r| r.id);
    if logs_claims(p.executor) {
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        db.execute(
            db.query(&LOG_CLAIMS)
                .bind_ids(&ids)
                .bind(&p.worker)
                .bind(p.now),
        )
        .await?;
    }
    Ok(rows
        .into_iter()
        .map(|r| ClaimedTask {
            tenant: TenantId(r.tenant_id),
            job_id: JobId(r.job_id),
            lease: LeaseToken {
                task_id: TaskId(r.id),
                attempt: r.attempt,
                nonce,
            },
            stage_name: r.stage_name,
            stage_position: r.stage_position,
            handler: r.handler,
            input_json: r.input_json,
            timeout_ms: r.timeout_ms,
            max_attempts: r.max_attempts,
            ready_at: r.run_after,
        })
        .collect())
}

// ------------------------------------------------------------ renew

const RENEW: Sql = Sql::both(
    "UPDATE tasks SET lease_expires_at = $4, updated_at = $5
     WHERE id = $1 AND tenant_id = $2 AND state = 'running' AND attempt = $3
       AND claim_nonce IS NOT DISTINCT FROM $6
     RETURNING id, job_id, stage_position",
);
const NOTE: Sql = Sql::both(
    "INSERT INTO events (tenant_id, job_id, task_id, kind, stage_position, detail, at)
     SELECT tenant_id, job_id, id, 'task_note', stage_position, $2, $3
     FROM tasks WHERE id = $1",
);

/// Extend a held lease; a note and log lines are recorded only with a held
/// lease, in the renewal's transaction.
pub(crate) async fn renew_lease(db: &mut Db<'_>, p: &RenewLease) -> Result<bool, StoreError> {
    let renewed: Option<(i64, i64, i32)> = db
        .fetch_optional(
            db.query(&RENEW)
                .bind(p.lease.task_id.0)
                .bind(&p.tenant.0)
                .bind(p.lease.attempt)
                .bind(after(p.now, p.lease_for))
                .bind(p.now)
                .bind(p.lease.nonce),
        )
        .await?;
    let held = renewed.is_some();
    if held && let Some(note) = &p.note {
        db.execute(
            db.query(&NOTE)
                .bind(p.lease.task_id.0)
                .bind(crate::limits::storable(note.clone()))
                .bind(p.now),
        )
        .await?;
    }
    if let Some((task, job, position)) = renewed
        && !p.logs.is_empty()
    {
        let mut fx = Effects::new(p.now);
        for line in &p.logs {
            fx.event(
                &p.tenant.0,
                job,
                Some(task),
                EventKind::TaskLog,
                Some(position),
                Some(line.clone()),
            );
        }
        fx.write(db).await?;
    }
    Ok(held)
}

// ------------------------------------------------------------ complete

// Attempt, nonce and tenant are checked by the caller, on the rows as read
// here.
//
// On PostgreSQL each row is found by primary key alone and locked (a
// `LATERAL` subquery per id, in the order of the array, which the caller
// sorts; `OFFSET 0` keeps the planner from moving the state check into it),
// and its state is checked on the row as locked. See SUCCEED_FENCED for why
// the state is not in the subquery.
macro_rules! pg_hold_running {
    () => {
        "SELECT t.id, t.tenant_id, t.job_id, t.stage_position, t.attempt, t.max_attempts,
                t.on_failure, EXISTS (SELECT 1 FROM task_deps d WHERE d.depends_on = t.id),
                t.worker, t.claimed_at, t.claim_nonce
         FROM unnest($1::int8[]) AS k(id)
         CROSS JOIN LATERAL (
             SELECT * FROM tasks WHERE id = k.id OFFSET 0 FOR NO KEY UPDATE
         ) t
         WHERE t.state = 'running'"
    };
}
const HOLD_RUNNING: Sql = Sql::each(
    "SELECT id, tenant_id, job_id, stage_position, attempt, max_attempts, on_failure,
            EXISTS (SELECT 1 FROM task_deps d WHERE d.depends_on = tasks.id),
            worker, claimed_at, claim_nonce
     FROM tasks
     WHERE id IN (SELECT value FROM json_each($1)) AND state = 'running'
     ORDER BY id",
    pg_hold_running!(),
);

// A plain success (no spawned tasks) needs nothing from its row to be
// decided: it is fenced and written by this one statement, which hands back
// the row as HOLD_RUNNING would read it (every column it returns is one the
// update leaves as it was). Two statements per batch become one, and the rows
// are not sent to the host and back.
//
// On PostgreSQL the rows are first found by primary key alone and locked,
// one by one in the order of the batch (ascending id, as Invariant 11 orders
// them): the `held` CTE, which then checks the fence on each row as locked.
// The update reaches exactly those rows through `ANY(ARRAY(SELECT id FROM
// held))` (run once, before the update reads a row) and takes each output
// from the batch by id (one hash join). `state = 'running'` is never where
// the planner can use it to find rows: it matches `tasks_running_leases`,
// which still holds an entry for every row that was running since the last
// vacuum. Given the chance, the planner read that index for the whole batch
// (15,379 entries and 570 heap pages for 130 completions at the end of a
// 10,000-task stage: 3–10 ms per batch) or, with statistics from before the
// tasks ran, once per completion (385 rows read per completion of 385).
// Joined to the batch by anything but id, it compared every row with the
// whole batch (131,841 comparisons for 514 completions).
macro_rules! pg_succeed_fenced {
    () => {
        "WITH held AS MATERIALIZED (
             SELECT t.id
             FROM unnest($1::int8[], $2::int4[], $3::int8[], $4::text[])
                  AS k(id, attempt, nonce, tenant)
             CROSS JOIN LATERAL (
                 SELECT id, state, attempt, claim_nonce, tenant_id FROM tasks
                 WHERE id = k.id OFFSET 0 FOR NO KEY UPDATE
             ) t
             WHERE t.state = 'running' AND t.attempt = k.attempt
               AND t.claim_nonce IS NOT DISTINCT FROM k.nonce AND t.tenant_id = k.tenant
         )
         UPDATE tasks t
         SET state = 'succeeded', output_json = u.output, error = NULL,
             lease_expires_at = NULL, updated_at = $6, finished_at = $6
         FROM unnest($1::int8[], $5::text[]) AS u(id, output)
         WHERE t.id = ANY(ARRAY(SELECT id FROM held)) AND t.id = u.id
         RETURNING t.id, t.tenant_id, t.job_id, t.stage_position, t.attempt, t.max_attempts,
                   t.on_failure, EXISTS (SELECT 1 FROM task_deps d WHERE d.depends_on = t.id),
                   t.worker, t.claimed_at, t.claim_nonce"
    };
}
const SUCCEED_FENCED: Sql = Sql::each(
    "UPDATE tasks AS t
     SET state = 'succeeded', output_json = u.value ->> 4, error = NULL,
         lease_expires_at = NULL, updated_at = $2, finished_at = $2
     FROM jsonb_each($1) AS u
     WHERE t.id = u.value ->> 0 AND t.state = 'running' AND t.attempt = u.value ->> 1
       AND t.claim_nonce IS u.value ->> 2 AND t.tenant_id = u.value ->> 3
     RETURNING id, tenant_id, job_id, stage_position, attempt, max_attempts, on_failure,
               EXISTS (SELECT 1 FROM task_deps d WHERE d.depends_on = tasks.id),
               worker, claimed_at, claim_nonce",
    pg_succeed_fenced!(),
);

const EXPLAIN_SUCCEED_FENCED: Sql = Sql::postgres_only(concat!("EXPLAIN ", pg_succeed_fenced!()));
const EXPLAIN_HOLD_RUNNING: Sql = Sql::postgres_only(concat!("EXPLAIN ", pg_hold_running!()));

/// SUCCEED_FENCED's batch: the completions' leases, tenants and outputs.
fn succeed_fenced_batch<'a>(completions: &[&'a Completion]) -> Batch<'a> {
    Batch::new()
        .int8(completions.iter().map(|c| c.lease.task_id.0).collect())
        .int4(completions.iter().map(|c| c.lease.attempt).collect())
        .opt_int8(completions.iter().map(|c| c.lease.nonce).collect())
        .text(completions.iter().map(|c| c.tenant.0.as_str()).collect())
        .text(
            completions
                .iter()
                .map(|c| match &c.result {
                    TaskResult::Succeeded { output_json, .. } => output_json.as_str(),
                    _ => "",
                })
                .collect(),
        )
}

/// PostgreSQL's plans for the two statements that find `p`'s task rows
/// (SUCCEED_FENCED and HOLD_RUNNING, each as if the whole batch went
/// through it), with `p`'s values, one line per plan node; empty on SQLite.
pub(crate) async fn explain_completion(
    db: &mut Db<'_>,
    p: &CompleteBatch,
) -> Result<String, StoreError> {
    let all: Vec<&Completion> = p.completions.iter().collect();
    let ids: Vec<i64> = all.iter().map(|c| c.lease.task_id.0).collect();
    let mut lines: Vec<(String,)> = db
        .fetch_all(
            db.query(&EXPLAIN_SUCCEED_FENCED)
                .bind_batch(&succeed_fenced_batch(&all))
                .bind(p.now),
        )
        .await?;
    lines.extend(
        db.fetch_all::<(String,)>(db.query(&EXPLAIN_HOLD_RUNNING).bind_ids(&ids))
            .await?,
    );
    Ok(plan_text(lines))
}

/// Whether `result` is a plain success: it succeeds whatever its row says
/// (no spawns to check against the job's stages and task limit).
fn is_plain_success(result: &TaskResult) -> bool {
    matches!(result, TaskResult::Succeeded { spawn, .. } if spawn.is_empty())
}

// On PostgreSQL a batch of plain successes (the workers' common case) plans
// its statements once per connection, not at every execution: their plans
// are fixed by their text (rows found by key, batches joined by id), and
// planning each with its values (the pool's `force_custom_plan`,
// store/postgres/mod.rs) took 0.1-0.3 ms per statement, ~0.5 ms of every
// completion transaction (statement log of `bench fanin`). Sequential scans
// are ruled out while they are planned: a connection keeps its plans as the
// tables grow, and on an empty database the generic plans of SUCCEED_FENCED
// and OPEN_STAGE scanned `tasks`. Batches with other results (retries,
// deaths, spawns) plan with their values as before: the recursive search of
// a death's dependents, planned for any values, walked all of `task_deps`.
// `postgres_store::postgres_plain_success_statements_plan_to_indexes_on_an_empty_database`
// holds every statement of PLAIN_SUCCESS_STATEMENTS to index plans.
pub(crate) const PLAN_ONCE_PER_CONNECTION: Sql = Sql::postgres_only(
    "SELECT set_config('plan_cache_mode', 'force_generic_plan', true),
            set_config('enable_seqscan', 'off', true)",
);

/// Every statement a transaction of plain successes may run (dependents
/// released, stages closed and opened, jobs finished, late completions
/// refused), by name: planned under [`PLAN_ONCE_PER_CONNECTION`].
pub(crate) const PLAIN_SUCCESS_STATEMENTS: &[(&str, &Sql)] = &[
    ("SUCCEED_FENCED", &SUCCEED_FENCED),
    ("STALE_TASKS", &STALE_TASKS),
    ("JOB_STAGES", &JOB_STAGES),
    ("RELEASES", &RELEASES),
    ("HOLD_DEPENDENTS", &HOLD_DEPENDENTS),
    ("CANCEL_DEPENDENTS", &CANCEL_DEPENDENTS),
    ("RELEASE_DEPENDENTS", &RELEASE_DEPENDENTS),
    ("APPLY_DELTAS", &advance::APPLY_DELTAS),
    ("CLOSE_DRAINED", &advance::CLOSE_DRAINED),
    ("OPEN_STAGE", &advance::OPEN_STAGE),
    ("CLOSE_EMPTY_STAGE", &advance::CLOSE_EMPTY_STAGE),
    ("CANCEL_LATER_TASKS", &advance::CANCEL_LATER_TASKS),
    ("INSERT_EVENTS", &effects::INSERT_EVENTS),
    ("JOB_STATES", &effects::JOB_STATES),
    ("FINISH_JOB", &effects::FINISH_JOB),
    ("NOTIFY_READY", &effects::NOTIFY_READY),
];

pub(crate) async fn complete_batch(
    db: &mut Db<'_>,
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
    let (plain, other): (Vec<usize>, Vec<usize>) = order
        .iter()
        .partition(|&&i| is_plain_success(&p.completions[i].result));
    if other.is_empty() {
        db.execute(db.query(&PLAN_ONCE_PER_CONNECTION)).await?;
    }

    // Task rows first; fenced on (running, attempt, nonce, tenant). Plain
    // successes are fenced and written at once; the rest are read (locked on
    // PostgreSQL) and decided below.
    let mut held: HashMap<i64, Held> = HashMap::with_capacity(order.len());
    let mut written: HashSet<i64> = HashSet::with_capacity(plain.len());
    if !plain.is_empty() {
        let completions: Vec<&Completion> = plain.iter().map(|&i| &p.completions[i]).collect();
        let batch = succeed_fenced_batch(&completions);
        let rows: Vec<HeldRow> = db
            .fetch_all(db.query(&SUCCEED_FENCED).bind_batch(&batch).bind(p.now))
            .await?;
        for row in rows {
            let h = Held::from_row(row)?;
            written.insert(h.id);
            held.insert(h.id, h);
        }
    }
    if !other.is_empty() {
        let ids: Vec<i64> = other
            .iter()
            .map(|&i| p.completions[i].lease.task_id.0)
            .collect();
        let rows: Vec<HeldRow> = db.fetch_all(db.query(&HOLD_RUNNING).bind_ids(&ids)).await?;
        for row in rows {
            let h = Held::from_row(row)?;
            held.insert(h.id, h);
        }
    }

    let mut items = Vec::new();
    let mut stale = Vec::new();
    for &i in &order {
        let c = &p.completions[i];
        let fenced = held
            .remove(&c.lease.task_id.0)
            .filter(|h| h.holds(&c.lease) && h.tenant == c.tenant.0);
        if fenced.is_none() && written.contains(&c.lease.task_id.0) {
            return Err(StoreError::Corrupt(format!(
                "task {} was written as succeeded by a completion whose lease its row does not hold",
                c.lease.task_id.0
            )));
        }
        match fenced {
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
                // A written row's output is stored already: its decision
                // needs only the kind of result, not another copy of it.
                let result = if written.contains(&h.id) {
                    TaskResult::Succeeded {
                        output_json: String::new(),
                        spawn: Vec::new(),
                    }
                } else {
                    c.result.clone()
                };
                items.push((h, result));
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
    let mut outcomes = record(db, items, &written, Some(p.max_tasks_per_job), &mut fx).await?;
    refuse_stale(db, p, &stale, &mut fx).await?;
    fx.write(db).await?;

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

const STALE_TASKS: Sql = Sql::each(
    "SELECT id, tenant_id, job_id, stage_position, state, attempt
     FROM tasks WHERE id IN (SELECT value FROM json_each($1))",
    "SELECT id, tenant_id, job_id, stage_position, state, attempt
     FROM tasks WHERE id = ANY($1)",
);

/// Log a `completion_refused` event for each stale completion whose task
/// belongs to the completing tenant (another tenant's id leaves no trace).
async fn refuse_stale(
    db: &mut Db<'_>,
    p: &CompleteBatch,
    stale: &[usize],
    fx: &mut Effects,
) -> Result<(), StoreError> {
    if stale.is_empty() {
        return Ok(());
    }
    let mut ids: Vec<i64> = stale
        .iter()
        .map(|&i| p.completions[i].lease.task_id.0)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let rows: Vec<(i64, String, i64, i32, String, i32)> =
        db.fetch_all(db.query(&STALE_TASKS).bind_ids(&ids)).await?;
    let found: HashMap<i64, (String, i64, i32, String, i32)> = rows
        .into_iter()
        .map(|(id, tenant, job, pos, state, attempt)| (id, (tenant, job, pos, state, attempt)))
        .collect();
    for &i in stale {
        let c = &p.completions[i];
        let Some((tenant, job, pos, state, attempt)) = found.get(&c.lease.task_id.0) else {
            continue;
        };
        if *tenant != c.tenant.0 {
            continue;
        }
        let detail = if *attempt == c.lease.attempt && state == TaskState::Running.as_str() {
            // The same attempt number under another claim: the token's claim
            // was handed back or lost in a crash, and the task claimed again.
            format!(
                "stale completion of attempt {attempt} refused: the task was claimed again \
                 and is running that attempt under another claim"
            )
        } else {
            format!(
                "stale completion of attempt {} refused: the task is {state} at attempt {attempt}",
                c.lease.attempt
            )
        };
        fx.event(
            tenant,
            *job,
            Some(c.lease.task_id.0),
            EventKind::CompletionRefused,
            Some(*pos),
            Some(detail),
        );
    }
    Ok(())
}

// ------------------------------------------------------------ rescue

// SKIP LOCKED on PostgreSQL: every process may rescue at once; each expired
// row is taken by exactly one of them, and a row being completed right now is
// left to its completion.
const EXPIRED: Sql = Sql::each(
    "SELECT id, tenant_id, job_id, stage_position, attempt, max_attempts, on_failure,
            EXISTS (SELECT 1 FROM task_deps d WHERE d.depends_on = tasks.id),
            worker, claimed_at, claim_nonce
     FROM tasks
     WHERE state = 'running' AND lease_expires_at <= $1
     ORDER BY id
     LIMIT $2",
    "SELECT id, tenant_id, job_id, stage_position, attempt, max_attempts, on_failure,
            EXISTS (SELECT 1 FROM task_deps d WHERE d.depends_on = tasks.id),
            worker, claimed_at, claim_nonce
     FROM tasks
     WHERE state = 'running' AND lease_expires_at <= $1
     ORDER BY id
     LIMIT $2
     FOR NO KEY UPDATE OF tasks SKIP LOCKED",
);

/// Whether any lease has expired: a cheap read before taking the write path.
const ANY_EXPIRED: Sql =
    Sql::both("SELECT id FROM tasks WHERE state = 'running' AND lease_expires_at <= $1 LIMIT 1");

pub(crate) async fn any_expired(db: &mut Db<'_>, now: Millis) -> Result<bool, StoreError> {
    let any: Option<(i64,)> = db.fetch_optional(db.query(&ANY_EXPIRED).bind(now)).await?;
    Ok(any.is_some())
}

pub(crate) async fn rescue_expired_leases(
    db: &mut Db<'_>,
    p: &RescueExpiredLeases,
) -> Result<u64, StoreError> {
    let mut fx = Effects::new(p.now);
    let rows: Vec<HeldRow> = db
        .fetch_all(db.query(&EXPIRED).bind(p.now).bind(i64::from(p.limit)))
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
    // An expired lease is a retry: nothing here spawns.
    record(db, items, &HashSet::new(), None, &mut fx).await?;
    fx.write(db).await?;
    Ok(rescued)
}

// ------------------------------------------------------------ recording

/// Record results for running tasks whose attempt this transaction checked
/// (and on PostgreSQL holds locked): the common path of `complete_batch` and
/// lease rescue. `items` must be in ascending task id order. The rows of
/// `written` already say `succeeded` (SUCCEED_FENCED): they are decided like
/// the rest, and a decision other than success for one of them is an error
/// that rolls the batch back.
async fn record(
    db: &mut Db<'_>,
    items: Vec<(Held, TaskResult)>,
    written: &HashSet<i64>,
    max_tasks_per_job: Option<u64>,
    fx: &mut Effects,
) -> Result<HashMap<i64, CompletionOutcome>, StoreError> {
    if items.is_empty() {
        return Ok(HashMap::new());
    }
    let now = fx.now();
    // Stages are read only for what needs them: spawn targets, and whether
    // a released dependent's stage is open. A batch of tasks that spawn
    // nothing and have no dependents (most) skips the statement.
    let needs_stages = items.iter().any(|(h, r)| {
        h.has_dependents || matches!(r, TaskResult::Succeeded { spawn, .. } if !spawn.is_empty())
    });
    let stages = if needs_stages {
        load_stages(db, items.iter().map(|(h, _)| h.job)).await?
    } else {
        HashMap::new()
    };

    let mut room = job_room(db, &items, max_tasks_per_job).await?;

    // Decide in Rust, checked against the transition table.
    let decisions = rules::decide_all(items, &stages, &mut room, now)?;

    if let Some(d) = decisions
        .iter()
        .find(|d| written.contains(&d.held.id) && d.to != TaskState::Succeeded)
    {
        return Err(StoreError::Corrupt(format!(
            "task {} was written as succeeded but its completion decides {}",
            d.held.id, d.to
        )));
    }
    let unwritten: Vec<&Decision> = decisions
        .iter()
        .filter(|d| !written.contains(&d.held.id))
        .collect();
    write_tasks(db, &unwritten, now).await?;
    for d in &decisions {
        fx.attempt_event(&d.held.as_attempt(), d.event.0, d.event.1.clone());
    }

    let rules::Consequences {
        released,
        doomed_roots,
        mut deltas,
    } = rules::consequences(&decisions);
    settle_dependents(db, &released, &doomed_roots, &stages, &mut deltas, fx).await?;

    // Stage rows: the completed tasks' stages and every spawn target.
    rules::count_spawns(&decisions, &mut deltas);
    fx.flush_events(db).await?;
    let counted = advance::apply_deltas(db, &deltas, now).await?;
    // A retried task is not announced: it becomes claimable only after its
    // backoff, and the poll loop finds it then.
    let advanced = advance::close_drained(db, &advance::drained(&counted), fx).await?;
    // Children are inserted after the stages advanced: those of a stage this
    // transaction opened go in pending, rather than blocked and then each
    // written again by the opening (10,000 rows of a fan-out).
    insert_children(db, &decisions, &counted, &advanced, now, fx).await?;

    Ok(decisions
        .into_iter()
        .map(|d| (d.held.id, d.outcome))
        .collect())
}

// Spawners of one job take turns on PostgreSQL, so that two processes never
// both see the same room under the job's task limit: a transaction-scoped
// advisory lock per job id, taken in id order after the completed task rows
// (which no other transaction waiting for it can hold: they are running, and
// only their own completer locks them) and before any dependent, stage or job
// row. SQLite has one writer at a time.
const TAKE_SPAWN_TURNS: Sql =
    Sql::postgres_only("SELECT pg_advisory_xact_lock(id) FROM unnest($1::int8[]) AS u(id)");

// Read after the turn is taken, so a statement snapshot sees every spawn of
// the job committed before.
const JOB_TASK_TOTALS: Sql = Sql::each(
    "SELECT job_id, sum(total) FROM stages
     WHERE job_id IN (SELECT value FROM json_each($1)) GROUP BY job_id",
    "SELECT job_id, sum(total)::int8 FROM stages WHERE job_id = ANY($1) GROUP BY job_id",
);

/// How many tasks each job of the batch that spawns may still take.
async fn job_room(
    db: &mut Db<'_>,
    items: &[(Held, TaskResult)],
    max_tasks_per_job: Option<u64>,
) -> Result<rules::JobRoom, StoreError> {
    let mut spawning: Vec<i64> = items
        .iter()
        .filter(|(_, r)| matches!(r, TaskResult::Succeeded { spawn, .. } if !spawn.is_empty()))
        .map(|(h, _)| h.job)
        .collect();
    let Some(limit) = max_tasks_per_job else {
        if spawning.is_empty() {
            return rules::JobRoom::new(0, Vec::new());
        }
        return Err(StoreError::Corrupt(
            "a lease rescue carried spawned tasks".to_owned(),
        ));
    };
    if spawning.is_empty() {
        return rules::JobRoom::new(limit, Vec::new());
    }
    spawning.sort_unstable();
    spawning.dedup();
    db.execute(db.query(&TAKE_SPAWN_TURNS).bind_ids(&spawning))
        .await?;
    let totals: Vec<(i64, i64)> = db
        .fetch_all(db.query(&JOB_TASK_TOTALS).bind_ids(&spawning))
        .await?;
    rules::JobRoom::new(limit, totals)
}

const JOB_STAGES: Sql = Sql::each(
    "SELECT job_id, position, name, state FROM stages
     WHERE job_id IN (SELECT value FROM json_each($1)) ORDER BY job_id, position",
    "SELECT job_id, position, name, state FROM stages
     WHERE job_id = ANY($1) ORDER BY job_id, position",
);

async fn load_stages(
    db: &mut Db<'_>,
    jobs: impl Iterator<Item = i64>,
) -> Result<HashMap<i64, Vec<StageMeta>>, StoreError> {
    let mut ids: Vec<i64> = jobs.collect();
    ids.sort_unstable();
    ids.dedup();
    let rows: Vec<(i64, i32, String, String)> =
        db.fetch_all(db.query(&JOB_STAGES).bind_ids(&ids)).await?;
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

const WRITE_TASKS: Sql = Sql::each(
    "UPDATE tasks AS t
     SET state = u.value ->> 1, output_json = u.value ->> 2, error = u.value ->> 3,
         run_after = COALESCE(u.value ->> 4, t.run_after),
         lease_expires_at = NULL, updated_at = $2,
         finished_at = CASE WHEN u.value ->> 1 IN ('succeeded', 'dead', 'skipped') THEN $2 END
     FROM jsonb_each($1) AS u
     WHERE t.id = u.value ->> 0",
    "UPDATE tasks t
     SET state = u.state, output_json = u.output, error = u.error,
         run_after = COALESCE(u.run_after, t.run_after),
         lease_expires_at = NULL, updated_at = $6,
         finished_at = CASE WHEN u.state IN ('succeeded', 'dead', 'skipped') THEN $6::int8 END
     FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::int8[])
          AS u(id, state, output, error, run_after)
     WHERE t.id = u.id AND t.id = ANY($1)",
);

async fn write_tasks(
    db: &mut Db<'_>,
    decisions: &[&Decision],
    now: Millis,
) -> Result<(), StoreError> {
    if decisions.is_empty() {
        return Ok(());
    }
    let batch = Batch::new()
        .int8(decisions.iter().map(|d| d.held.id).collect())
        .text(decisions.iter().map(|d| d.to.as_str()).collect())
        .opt_text(decisions.iter().map(|d| d.output.as_deref()).collect())
        .opt_text(decisions.iter().map(|d| d.error.as_deref()).collect())
        .opt_int8(decisions.iter().map(|d| d.run_after).collect());
    db.execute(db.query(&WRITE_TASKS).bind_batch(&batch).bind(now))
        .await?;
    Ok(())
}

const DOOMED: Sql = Sql::each(
    "WITH RECURSIVE doomed(id) AS (
         SELECT d.task_id FROM jsonb_each($1) AS r
         CROSS JOIN task_deps d ON d.depends_on = r.value
         UNION
         SELECT d.task_id FROM doomed CROSS JOIN task_deps d ON d.depends_on = doomed.id
     )
     SELECT id FROM doomed",
    "WITH RECURSIVE doomed(id) AS (
         SELECT task_id FROM task_deps WHERE depends_on = ANY($1)
         UNION
         SELECT d.task_id FROM task_deps d JOIN doomed ON d.depends_on = doomed.id
     )
     SELECT id FROM doomed",
);
const RELEASES: Sql = Sql::each(
    "SELECT d.task_id, count(*) FROM jsonb_each($1) AS r
     CROSS JOIN task_deps d ON d.depends_on = r.value
     GROUP BY d.task_id",
    "SELECT task_id, count(*) FROM task_deps WHERE depends_on = ANY($1) GROUP BY task_id",
);
const HOLD_DEPENDENTS: Sql = Sql::each(
    "SELECT t.id, t.tenant_id, t.job_id, t.stage_position, t.state, t.deps_remaining,
            t.executor
     FROM jsonb_each($1) AS k
     CROSS JOIN tasks t ON t.id = k.value
     WHERE t.state IN ('blocked', 'pending')
     ORDER BY t.id",
    "SELECT id, tenant_id, job_id, stage_position, state, deps_remaining, executor
     FROM tasks
     WHERE id = ANY($1) AND state IN ('blocked', 'pending')
     ORDER BY id
     FOR NO KEY UPDATE",
);
const CANCEL_DEPENDENTS: Sql = Sql::each(
    "UPDATE tasks
     SET state = 'cancelled', error = 'cancelled: a task it depends on died',
         lease_expires_at = NULL, finished_at = $2, updated_at = $2
     WHERE id IN (SELECT value FROM json_each($1))",
    "UPDATE tasks
     SET state = 'cancelled', error = 'cancelled: a task it depends on died',
         lease_expires_at = NULL, finished_at = $2, updated_at = $2
     WHERE id = ANY($1)",
);
const RELEASE_DEPENDENTS: Sql = Sql::each(
    "UPDATE tasks AS t
     SET deps_remaining = u.value ->> 1, state = u.value ->> 2, updated_at = $2,
         run_after = CASE WHEN u.value ->> 2 = 'pending' AND t.state = 'blocked'
                          THEN $2 ELSE t.run_after END
     FROM jsonb_each($1) AS u
     WHERE t.id = u.value ->> 0",
    "UPDATE tasks t
     SET deps_remaining = u.deps, state = u.state, updated_at = $4,
         run_after = CASE WHEN u.state = 'pending' AND t.state = 'blocked'
                          THEN $4 ELSE t.run_after END
     FROM unnest($1::int8[], $2::int4[], $3::text[]) AS u(id, deps, state)
     WHERE t.id = u.id AND t.id = ANY($1)",
);

/// id, tenant, job, stage position, state, unfinished dependencies, executor
type DependentRow = (i64, String, i64, i32, String, i32, String);

/// Release (decrement `deps_remaining`, ready at zero) the dependents of
/// `released`, and cancel the transitive dependents of `doomed_roots`. All
/// touched rows are read (on PostgreSQL locked) in one ascending-id statement.
async fn settle_dependents(
    db: &mut Db<'_>,
    released: &[i64],
    doomed_roots: &[i64],
    stages: &HashMap<i64, Vec<StageMeta>>,
    deltas: &mut BTreeMap<(i64, i32), StageDelta>,
    fx: &mut Effects,
) -> Result<(), StoreError> {
    let doomed: BTreeSet<i64> = if doomed_roots.is_empty() {
        BTreeSet::new()
    } else {
        let rows: Vec<(i64,)> = db
            .fetch_all(db.query(&DOOMED).bind_ids(doomed_roots))
            .await?;
        rows.into_iter().map(|(id,)| id).collect()
    };
    let releases: HashMap<i64, i32> = if released.is_empty() {
        HashMap::new()
    } else {
        let rows: Vec<(i64, i64)> = db.fetch_all(db.query(&RELEASES).bind_ids(released)).await?;
        rows.into_iter()
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
    let rows: Vec<DependentRow> = db
        .fetch_all(db.query(&HOLD_DEPENDENTS).bind_ids(&touched))
        .await?;

    let now = fx.now();
    let mut cancel_ids = Vec::new();
    let (mut upd_ids, mut upd_deps, mut upd_states) = (Vec::new(), Vec::new(), Vec::new());
    for (id, tenant, job, position, state, deps, executor) in rows {
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
            state.transition(TaskState::Pending)?;
            fx.ready(parse_column(
                &format_args!("task {id}"),
                "executor",
                &executor,
            )?);
            TaskState::Pending
        } else {
            state
        };
        upd_ids.push(id);
        upd_deps.push(left);
        upd_states.push(to.as_str());
    }
    if !cancel_ids.is_empty() {
        db.execute(db.query(&CANCEL_DEPENDENTS).bind_ids(&cancel_ids).bind(now))
            .await?;
    }
    if !upd_ids.is_empty() {
        let batch = Batch::new().int8(upd_ids).int4(upd_deps).text(upd_states);
        db.execute(db.query(&RELEASE_DEPENDENTS).bind_batch(&batch).bind(now))
            .await?;
    }
    Ok(())
}

const INSERT_CHILDREN: Sql = Sql::each(
    "INSERT INTO tasks (tenant_id, job_id, stage_position, handler, executor, state,
                        max_attempts, timeout_ms, run_after, input_json, parent_task_id,
                        on_failure, created_at, updated_at)
     SELECT c.value ->> 0, c.value ->> 1, c.value ->> 2, c.value ->> 3, 'wasm', c.value ->> 8,
            coalesce(s.max_attempts, c.value ->> 5), coalesce(s.timeout_ms, c.value ->> 6),
            $2, c.value ->> 4, c.value ->> 7, s.on_failure, $2, $2
     FROM jsonb_each($1) AS c
     CROSS JOIN stages s ON s.job_id = c.value ->> 1 AND s.position = c.value ->> 2
     ORDER BY c.key",
    "INSERT INTO tasks (tenant_id, job_id, stage_position, handler, executor, state,
                        max_attempts, timeout_ms, run_after, input_json, parent_task_id,
                        on_failure, created_at, updated_at)
     SELECT c.tenant_id, c.job_id, c.position, c.handler, 'wasm', c.state,
            coalesce(s.max_attempts, c.max_attempts), coalesce(s.timeout_ms, c.timeout_ms),
            $10, c.input, c.parent, s.on_failure, $10, $10
     FROM unnest($1::text[], $2::int8[], $3::int4[], $4::text[], $5::text[], $6::int4[],
                 $7::int8[], $8::int8[], $9::text[])
          WITH ORDINALITY AS c(tenant_id, job_id, position, handler, input, max_attempts,
                               timeout_ms, parent, state, ord)
     JOIN stages s ON s.job_id = c.job_id AND s.position = c.position
     ORDER BY c.ord",
);

/// Insert spawned children into their (locked) target stages: pending when
/// the stage is open (or `advanced` opened it), blocked while it waits; and
/// cancelled, like the rest of its later tasks, when `advanced` failed the
/// job.
async fn insert_children(
    db: &mut Db<'_>,
    decisions: &[Decision],
    locked: &BTreeMap<(i64, i32), advance::Counted>,
    advanced: &advance::Advanced,
    now: Millis,
    fx: &mut Effects,
) -> Result<(), StoreError> {
    let count: usize = decisions.iter().map(|d| d.spawn.len()).sum();
    if count == 0 {
        return Ok(());
    }
    let mut tenants = Vec::with_capacity(count);
    let mut jobs = Vec::with_capacity(count);
    let mut positions = Vec::with_capacity(count);
    let mut handlers = Vec::with_capacity(count);
    let mut inputs = Vec::with_capacity(count);
    let mut max_attempts = Vec::with_capacity(count);
    let mut timeouts = Vec::with_capacity(count);
    let mut parents = Vec::with_capacity(count);
    let mut states = Vec::with_capacity(count);
    for d in decisions {
        for (target, child) in &d.spawn {
            let stage_state = locked
                .get(&(d.held.job, *target))
                .map(|c| c.state)
                .ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "stage {target} of job {} vanished while spawning into it",
                        d.held.job
                    ))
                })?;
            let open =
                stage_state == StageState::Open || advanced.opened.contains(&(d.held.job, *target));
            let state = if open {
                // Spawned children are wasm tasks (INSERT_CHILDREN).
                fx.ready(Executor::Wasm);
                TaskState::Pending
            } else {
                TaskState::Blocked
            };
            tenants.push(d.held.tenant.as_str());
            jobs.push(d.held.job);
            positions.push(*target);
            handlers.push(child.handler.as_str());
            inputs.push(child.input_json.as_str());
            max_attempts.push(child.max_attempts);
            timeouts.push(child.timeout_ms);
            parents.push(d.held.id);
            states.push(state.as_str());
        }
    }
    let batch = Batch::new()
        .text(tenants)
        .int8(jobs)
        .int4(positions)
        .text(handlers)
        .text(inputs)
        .int4(max_attempts)
        .int8(timeouts)
        .int8(parents)
        .text(states);
    db.execute(db.query(&INSERT_CHILDREN).bind_batch(&batch).bind(now))
        .await?;
    for (&job, failed) in &advanced.failed {
        if decisions
            .iter()
            .any(|d| d.held.job == job && !d.spawn.is_empty())
        {
            advance::cancel_later_tasks(
                db,
                &failed.tenant,
                job,
                failed.position,
                &failed.reason,
                fx,
            )
            .await?;
        }
    }
    Ok(())
}
