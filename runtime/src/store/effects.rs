//! What a write transaction appends before it commits: event rows, ready
//! notifications and finished jobs.
//!
//! Collected while the transaction runs and written at its end, set-based
//! (one insert for all events, in the order they happened). Jobs are
//! finished last, after every task and stage row, their rows locked in
//! ascending id order on PostgreSQL (the job step of the lock order).

use super::StoreError;
use super::codec::parse_job_state;
use super::postgres::READY_CHANNEL;
use super::sql::{Batch, Db, Sql};
use crate::model::{EventKind, Executor, JobState, Millis};

use std::collections::{BTreeMap, BTreeSet};

/// An attempt as its end event records it.
pub(crate) struct Attempt<'a> {
    pub tenant: &'a str,
    pub job: i64,
    pub task: i64,
    pub position: i32,
    pub attempt: i32,
    pub worker: Option<&'a str>,
    pub claimed_at: Option<Millis>,
}

pub(crate) struct Effects {
    now: Millis,
    tenants: Vec<String>,
    jobs: Vec<i64>,
    tasks: Vec<Option<i64>>,
    kinds: Vec<&'static str>,
    positions: Vec<Option<i32>>,
    details: Vec<Option<String>>,
    /// The attempt an attempt's end is about (Invariant 42); `None` on
    /// every other event.
    attempts: Vec<Option<i32>>,
    workers: Vec<Option<String>>,
    claimed_ats: Vec<Option<Millis>>,
    /// Executors that have new ready tasks ("wasm", "agent"), not yet
    /// notified.
    ready: BTreeSet<&'static str>,
    /// Jobs whose last stage closed or that failed: job id → (tenant, target, error).
    finishes: BTreeMap<i64, (String, JobState, Option<String>)>,
}

pub(crate) const INSERT_EVENTS: Sql = Sql::each(
    "INSERT INTO events (tenant_id, job_id, task_id, kind, stage_position, detail, at,
                         attempt, worker, claimed_at)
     SELECT e.value ->> 0, e.value ->> 1, e.value ->> 2, e.value ->> 3, e.value ->> 4,
            e.value ->> 5, $2, e.value ->> 6, e.value ->> 7, e.value ->> 8
     FROM jsonb_each($1) AS e
     ORDER BY e.key",
    "WITH inserted AS (
         INSERT INTO events (tenant_id, job_id, task_id, kind, stage_position, detail, at,
                             attempt, worker, claimed_at)
         SELECT e.tenant_id, e.job_id, e.task_id, e.kind, e.stage_position, e.detail, $10,
                e.attempt, e.worker, e.claimed_at
         FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[], $5::int4[], $6::text[],
                     $7::int4[], $8::text[], $9::int8[])
              WITH ORDINALITY AS e(tenant_id, job_id, task_id, kind, stage_position, detail,
                                   attempt, worker, claimed_at, ord)
         ORDER BY e.ord
     )
     SELECT pg_notify($11, r) FROM unnest($12::text[]) AS r",
);
pub(crate) const JOB_STATES: Sql = Sql::each(
    "SELECT id, state FROM jobs WHERE id IN (SELECT value FROM json_each($1)) ORDER BY id",
    "SELECT id, state FROM jobs WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
);
pub(crate) const FINISH_JOB: Sql = Sql::both(
    "UPDATE jobs SET state = $2, error = $3, finished_at = $4, updated_at = $4 WHERE id = $1",
);
// Delivered at commit, and only if the transaction commits, wherever in it
// they were sent: INSERT_EVENTS sends the ones known by then in its own round
// trip (its SQLite text leaves those parameters unused), this statement the
// rest. SQLite has no other process to wake: its engine wakes its own
// workers.
pub(crate) const NOTIFY_READY: Sql =
    Sql::postgres_only("SELECT pg_notify($1, r) FROM unnest($2::text[]) AS r");

impl Effects {
    pub(crate) fn new(now: Millis) -> Effects {
        Effects {
            now,
            tenants: Vec::new(),
            jobs: Vec::new(),
            tasks: Vec::new(),
            kinds: Vec::new(),
            positions: Vec::new(),
            details: Vec::new(),
            attempts: Vec::new(),
            workers: Vec::new(),
            claimed_ats: Vec::new(),
            ready: BTreeSet::new(),
            finishes: BTreeMap::new(),
        }
    }

    pub(crate) fn now(&self) -> Millis {
        self.now
    }

    pub(crate) fn event(
        &mut self,
        tenant: &str,
        job: i64,
        task: Option<i64>,
        kind: EventKind,
        stage_position: Option<i32>,
        detail: Option<String>,
    ) {
        self.tenants.push(tenant.to_string());
        self.jobs.push(job);
        self.tasks.push(task);
        self.kinds.push(kind.as_str());
        self.positions.push(stage_position);
        // Details carry guest text (log lines, errors, notes).
        self.details.push(detail.map(crate::limits::storable));
        self.attempts.push(None);
        self.workers.push(None);
        self.claimed_ats.push(None);
    }

    /// The event that ends an attempt, carrying the attempt's number, worker
    /// and claim time: with it the log tells every attempt's story without a
    /// claim event per task (Invariant 42).
    pub(crate) fn attempt_event(
        &mut self,
        a: &Attempt<'_>,
        kind: EventKind,
        detail: Option<String>,
    ) {
        self.event(
            a.tenant,
            a.job,
            Some(a.task),
            kind,
            Some(a.position),
            detail,
        );
        let last = self.kinds.len() - 1;
        self.attempts[last] = Some(a.attempt);
        self.workers[last] = a.worker.map(str::to_string);
        self.claimed_ats[last] = a.claimed_at;
    }

    /// Tasks for this executor became ready. Workers run wasm and command
    /// tasks, agents claim agent tasks: one wake-up payload each.
    pub(crate) fn ready(&mut self, executor: Executor) {
        self.ready.insert(match executor {
            Executor::Agent => "agent",
            Executor::Wasm | Executor::Command => "wasm",
        });
    }

    /// The job's last stage closed (`Succeeded`) or a stage closed with dead
    /// tasks under `fail_job` (`Failed`). Failure wins over success.
    pub(crate) fn finish_job(
        &mut self,
        tenant: &str,
        job: i64,
        to: JobState,
        error: Option<String>,
    ) {
        match self.finishes.get(&job) {
            Some((_, JobState::Failed, _)) => {}
            _ => {
                self.finishes.insert(job, (tenant.to_string(), to, error));
            }
        }
    }

    /// Finish jobs, append events and send notifications. Call once, just
    /// before commit.
    pub(crate) async fn write(mut self, db: &mut Db<'_>) -> Result<(), StoreError> {
        self.finish_jobs(db).await?;
        self.flush_events(db).await?;
        if !self.ready.is_empty() {
            let ready = self.take_ready();
            db.execute(
                db.query(&NOTIFY_READY)
                    .bind(READY_CHANNEL)
                    .bind_names(Some(&ready)),
            )
            .await?;
        }
        Ok(())
    }

    fn take_ready(&mut self) -> Vec<String> {
        std::mem::take(&mut self.ready)
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    /// Append the events collected so far (and send the wake-ups collected so
    /// far with them). Completions call this before they lock stage rows, so
    /// a hot stage row is held for less time.
    pub(crate) async fn flush_events(&mut self, db: &mut Db<'_>) -> Result<(), StoreError> {
        if self.kinds.is_empty() {
            return Ok(());
        }
        let ready = self.take_ready();
        let tenants = std::mem::take(&mut self.tenants);
        let details = std::mem::take(&mut self.details);
        let workers = std::mem::take(&mut self.workers);
        let batch = Batch::new()
            .text(tenants.iter().map(String::as_str).collect())
            .int8(std::mem::take(&mut self.jobs))
            .opt_int8(std::mem::take(&mut self.tasks))
            .text(std::mem::take(&mut self.kinds))
            .opt_int4(std::mem::take(&mut self.positions))
            .opt_text(details.iter().map(Option::as_deref).collect())
            .opt_int4(std::mem::take(&mut self.attempts))
            .opt_text(workers.iter().map(Option::as_deref).collect())
            .opt_int8(std::mem::take(&mut self.claimed_ats));
        db.execute(
            db.query(&INSERT_EVENTS)
                .bind_batch(&batch)
                .bind(self.now)
                .bind(READY_CHANNEL)
                .bind_names(Some(&ready)),
        )
        .await?;
        Ok(())
    }

    async fn finish_jobs(&mut self, db: &mut Db<'_>) -> Result<(), StoreError> {
        if self.finishes.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = self.finishes.keys().copied().collect();
        let rows: Vec<(i64, String)> = db.fetch_all(db.query(&JOB_STATES).bind_ids(&ids)).await?;
        let finishes = std::mem::take(&mut self.finishes);
        for (id, state) in rows {
            let Some((tenant, to, error)) = finishes.get(&id) else {
                continue;
            };
            let from = parse_job_state(&state)?;
            if !from.can_become(*to) {
                // Only reachable when an operator cancelled the job while its
                // last stage was closing; the cancellation stands.
                tracing::warn!(job = id, %from, %to, "job not finished: it is no longer running");
                continue;
            }
            db.execute(
                db.query(&FINISH_JOB)
                    .bind(id)
                    .bind(to.as_str())
                    .bind(error.as_deref())
                    .bind(self.now),
            )
            .await?;
            let detail = match error {
                Some(e) => format!("{to}: {e}"),
                None => to.to_string(),
            };
            self.event(tenant, id, None, EventKind::JobFinished, None, Some(detail));
        }
        Ok(())
    }
}
