//! Handing claimed tasks back unrun, written once for both databases: a
//! worker that stops before a claimed task's handler started (the task still
//! waited for a plugin slot) returns it to `pending`, ready at once, and
//! gives back the attempt its claim took — nothing ran, so nothing is
//! charged or recorded.
//!
//! **Invariant 8:** fenced like a completion (`state = 'running' AND attempt =
//! the claimed attempt` and the claim's nonce): a lease that expired and was
//! taken over releases nothing.

use super::sql::{Db, Sql};
use super::{ReleaseLeases, StoreError};

const RELEASE: Sql = Sql::both(
    "UPDATE tasks
     SET state = 'pending', attempt = attempt - 1, lease_expires_at = NULL, worker = NULL,
         claimed_at = NULL, claim_nonce = NULL, run_after = $4, updated_at = $4
     WHERE id = $1 AND tenant_id = $2 AND state = 'running' AND attempt = $3
       AND claim_nonce IS NOT DISTINCT FROM $5",
);

/// Wakes idle workers of other processes (delivered at commit); SQLite's
/// engine wakes its own.
const NOTIFY_READY: Sql = Sql::postgres_only("SELECT pg_notify($1, $2)");

pub(crate) async fn release_leases(db: &mut Db<'_>, p: &ReleaseLeases) -> Result<u64, StoreError> {
    let mut released = 0;
    // One statement per lease: releases happen only when a worker stops,
    // at most one claim batch of them.
    for (tenant, lease) in &p.leases {
        released += db
            .execute(
                db.query(&RELEASE)
                    .bind(lease.task_id.0)
                    .bind(&tenant.0)
                    .bind(lease.attempt)
                    .bind(p.now)
                    .bind(lease.nonce),
            )
            .await?;
    }
    if released > 0 {
        db.execute(
            db.query(&NOTIFY_READY)
                .bind(super::postgres::READY_CHANNEL)
                .bind(crate::model::Executor::Wasm.as_str()),
        )
        .await?;
    }
    Ok(released)
}
