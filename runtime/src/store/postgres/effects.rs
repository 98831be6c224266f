//! What a write transaction has to append before it commits: event rows,
//! ready notifications and finished jobs.
//!
//! Collected while the transaction runs and written at its end, set-based
//! (one `INSERT … SELECT FROM unnest` for all events), in the order they
//! happened. Jobs are finished last, after every task and stage row, with
//! their rows locked in ascending id order (the job step of the lock order).

use super::{READY_CHANNEL, parse_job_state};
use crate::model::{EventKind, JobState, Millis};
use crate::store::StoreError;
use sqlx::PgConnection;
use std::collections::{BTreeMap, BTreeSet};

pub(super) struct Effects {
    now: Millis,
    tenants: Vec<String>,
    jobs: Vec<i64>,
    tasks: Vec<Option<i64>>,
    kinds: Vec<&'static str>,
    positions: Vec<Option<i32>>,
    details: Vec<Option<String>>,
    /// Executors that have new ready tasks ("wasm", "agent").
    ready: BTreeSet<&'static str>,
    /// Jobs whose last stage closed or that failed: job id → (tenant, target, error).
    finishes: BTreeMap<i64, (String, JobState, Option<String>)>,
}

impl Effects {
    pub(super) fn new(now: Millis) -> Effects {
        Effects {
            now,
            tenants: Vec::new(),
            jobs: Vec::new(),
            tasks: Vec::new(),
            kinds: Vec::new(),
            positions: Vec::new(),
            details: Vec::new(),
            ready: BTreeSet::new(),
            finishes: BTreeMap::new(),
        }
    }

    pub(super) fn now(&self) -> Millis {
        self.now
    }

    pub(super) fn event(
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
        self.details.push(detail);
    }

    /// Tasks for this executor (`"wasm"`/`"agent"`) became ready.
    pub(super) fn ready(&mut self, executor: &str) {
        match executor {
            "agent" => self.ready.insert("agent"),
            _ => self.ready.insert("wasm"),
        };
    }

    /// The job's last stage closed (`Succeeded`) or a stage closed with dead
    /// tasks under `fail_job` (`Failed`). Failure wins over success.
    pub(super) fn finish_job(
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
    pub(super) async fn write(mut self, conn: &mut PgConnection) -> Result<(), StoreError> {
        self.finish_jobs(conn).await?;
        self.flush_events(conn).await?;
        for executor in &self.ready {
            // Delivered at commit, and only if the transaction commits.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(READY_CHANNEL)
                .bind(*executor)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Append the events collected so far. Completions call this before they
    /// lock stage rows, so the hot stage row is held for less time.
    pub(super) async fn flush_events(&mut self, conn: &mut PgConnection) -> Result<(), StoreError> {
        if self.kinds.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO events (tenant_id, job_id, task_id, kind, stage_position, detail, at)
             SELECT e.tenant_id, e.job_id, e.task_id, e.kind, e.stage_position, e.detail, $7
             FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[], $5::int4[], $6::text[])
                  WITH ORDINALITY AS e(tenant_id, job_id, task_id, kind, stage_position, detail, ord)
             ORDER BY e.ord",
        )
        .bind(&self.tenants)
        .bind(&self.jobs)
        .bind(&self.tasks)
        .bind(&self.kinds)
        .bind(&self.positions)
        .bind(&self.details)
        .bind(self.now)
        .execute(&mut *conn)
        .await?;
        self.tenants.clear();
        self.jobs.clear();
        self.tasks.clear();
        self.kinds.clear();
        self.positions.clear();
        self.details.clear();
        Ok(())
    }

    async fn finish_jobs(&mut self, conn: &mut PgConnection) -> Result<(), StoreError> {
        if self.finishes.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = self.finishes.keys().copied().collect();
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT id, state FROM jobs WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
        )
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
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
            sqlx::query(
                "UPDATE jobs SET state = $2, error = $3, finished_at = $4, updated_at = $4
                 WHERE id = $1",
            )
            .bind(id)
            .bind(to.as_str())
            .bind(error.as_deref())
            .bind(self.now)
            .execute(&mut *conn)
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
