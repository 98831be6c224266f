//! What a write transaction appends before it commits: event rows and
//! finished jobs. Collected while the transaction runs and written at its
//! end, set-based (one `INSERT … SELECT FROM json_each` for all events), in
//! the order they happened.

use super::{json_array, parse_job_state};
use crate::model::{EventKind, JobState, Millis};
use crate::store::StoreError;
use serde::Serialize;
use sqlx::SqliteConnection;
use std::collections::BTreeMap;

#[derive(Serialize)]
struct EventRow {
    tenant: String,
    job: i64,
    task: Option<i64>,
    kind: &'static str,
    stage: Option<i32>,
    detail: Option<String>,
}

pub(super) struct Effects {
    now: Millis,
    events: Vec<EventRow>,
    /// Jobs whose last stage closed or that failed: job id → (tenant, target, error).
    finishes: BTreeMap<i64, (String, JobState, Option<String>)>,
}

impl Effects {
    pub(super) fn new(now: Millis) -> Effects {
        Effects {
            now,
            events: Vec::new(),
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
        self.events.push(EventRow {
            tenant: tenant.to_string(),
            job,
            task,
            kind: kind.as_str(),
            stage: stage_position,
            detail,
        });
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

    /// Finish jobs and append events. Call once, just before commit.
    pub(super) async fn write(mut self, conn: &mut SqliteConnection) -> Result<(), StoreError> {
        self.finish_jobs(conn).await?;
        if !self.events.is_empty() {
            sqlx::query(
                "INSERT INTO events (tenant_id, job_id, task_id, kind, stage_position, detail, at)
                 SELECT e.value ->> 'tenant', e.value ->> 'job', e.value ->> 'task',
                        e.value ->> 'kind', e.value ->> 'stage', e.value ->> 'detail', ?2
                 FROM json_each(?1) AS e
                 ORDER BY e.key",
            )
            .bind(json_array(&self.events))
            .bind(self.now)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    async fn finish_jobs(&mut self, conn: &mut SqliteConnection) -> Result<(), StoreError> {
        let finishes = std::mem::take(&mut self.finishes);
        for (id, (tenant, to, error)) in finishes {
            let state: String = sqlx::query_scalar("SELECT state FROM jobs WHERE id = ?1")
                .bind(id)
                .fetch_one(&mut *conn)
                .await?;
            let from = parse_job_state(&state)?;
            if !from.can_become(to) {
                // Only reachable when an operator cancelled the job while its
                // last stage was closing; the cancellation stands.
                tracing::warn!(job = id, %from, %to, "job not finished: it is no longer running");
                continue;
            }
            sqlx::query(
                "UPDATE jobs SET state = ?2, error = ?3, finished_at = ?4, updated_at = ?4
                 WHERE id = ?1",
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
            self.event(
                &tenant,
                id,
                None,
                EventKind::JobFinished,
                None,
                Some(detail),
            );
        }
        Ok(())
    }
}
