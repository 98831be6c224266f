//! PostgreSQL store: many `lockstep` processes on one database.
//!
//! The algorithms are the store's own, written once for both databases
//! (their PostgreSQL statement texts sit beside the SQLite ones); this module
//! opens the pool and says how transactions begin and when they are retried.
//! What is particular to PostgreSQL:
//!
//! - **Claims** take pending rows with `FOR UPDATE SKIP LOCKED` in one
//!   statement, so any number of nodes claim concurrently without waiting on
//!   each other and no row is claimed twice.
//! - **Fixed lock order (Invariant 11).** A write transaction locks
//!   task rows, then stage rows, then job rows, each set in ascending key order
//!   with an explicit `ORDER BY … FOR NO KEY UPDATE` before it updates them.
//!   The stage counter update (`… WHERE state = 'open' AND remaining = 0
//!   RETURNING`) decides the single advancement; no advisory locks, no
//!   "am I last?" reads. Task rows touched after stage rows are only ever
//!   those of a stage the same transaction has just opened or failed, which no
//!   other transaction can hold (see `store::advance`).
//! - **Deadlocks and serialization failures** (SQLSTATE 40P01 / 40001), and
//!   a write that finds a job changed under it ([`StoreError::Raced`]), should
//!   one ever occur, roll back and retry the whole transaction a bounded number
//!   of times; each retry is counted ([`PgStore::deadlock_retries`]) and logged
//!   with `tracing::warn!`, so it cannot hide.
//! - **Wake-ups.** Every transaction that makes tasks ready sends
//!   `pg_notify('lockstep_ready', executor)` before it commits; a background
//!   `LISTEN` connection turns them into a [`tokio::sync::Notify`]
//!   ([`Store::ready_signal`](super::Store::ready_signal)) and reconnects with backoff. Polling stays the
//!   fallback for lost notifications.
//! - **Connection loss** surfaces as [`StoreError::Database`]; every state
//!   change is one transaction, so an interrupted one leaves nothing behind.
//!   The pool hands connections out untested (a test is a round trip per
//!   call): a call that finds its connection dead before its work began
//!   (SQLSTATE class 57P, or the socket gone) runs again on another one, at
//!   most once per pooled connection.
//! - **Plans.** The pool's connections plan each statement with its
//!   parameters (`plan_cache_mode = force_custom_plan`): a generic plan cached
//!   while the tables were empty (an idle `serve` polling) could scan `tasks`
//!   sequentially once they are not. Two kinds of statement are planned once
//!   per connection instead, because their text fixes their plan: a
//!   transaction of plain successes (`complete::PLAN_ONCE_PER_CONNECTION`;
//!   the statements that close a stage and open the next are planned when
//!   the connection opens), and claims, which run on connections of their
//!   own ([`CLAIM_CONNECTIONS`]) whose sessions plan generically with
//!   sequential scans ruled out. Planning a claim for its values took
//!   ~0.3 ms of server time per claim, a quarter of what running it took
//!   (`pg_stat_statements`, README's 12-05 08:08 sitting).
//! - **Claims** are one statement and run without `BEGIN`/`COMMIT`. A wasm
//!   claim's commit does not wait for the WAL flush (`synchronous_commit =
//!   off`, set by the statement for its own transaction): the next durable
//!   commit flushes it, and the nonce it stores in the task row and its
//!   lease token refuses the run of a claim lost in a server crash.

mod listen;

use super::backend::{Backend, SqlStore};
use super::sql::{Conn, Tx};
use super::{ClaimBatch, CompleteBatch, ListTasks, StoreError};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The channel every "tasks became ready" notification is sent on; the
/// payload is the executor (`wasm` or `agent`).
pub const READY_CHANNEL: &str = "lockstep_ready";

/// How many times a transaction that hit a deadlock or serialization failure
/// is run again before the error is returned.
const MAX_TRANSACTION_RETRIES: u32 = 8;

/// Connections a process keeps for claims, besides its pool: one serves
/// its workers' claim loop, the others MCP agents claiming at the same time.
pub const CLAIM_CONNECTIONS: u32 = 2;

/// Connection settings for [`PgStore::open_with`].
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Pool size per process.
    pub max_connections: u32,
    /// How long a call waits for a free connection before failing.
    pub acquire_timeout: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(30),
        }
    }
}

/// The PostgreSQL store.
pub type PgStore = SqlStore<PgBackend>;

/// The PostgreSQL database behind a [`PgStore`].
pub struct PgBackend {
    pool: PgPool,
    /// Connections that run claims only, each planned once per connection
    /// (module doc, "Plans").
    claims: PgPool,
    max_connections: u32,
    url: String,
    deadlock_retries: AtomicU64,
    listener: OnceLock<listen::ReadyListener>,
    /// Set once the migrations have run: connections opened from then on
    /// prepare the rare statements (`prepare_rare_statements`).
    migrated: Arc<AtomicBool>,
}

impl std::fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBackend")
            .field(
                "deadlock_retries",
                &self.deadlock_retries.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

impl SqlStore<PgBackend> {
    /// Connect to `postgres://…` (or `postgresql://…`) and run the migrations.
    pub async fn open(url: &str) -> Result<PgStore, StoreError> {
        PgStore::open_with(url, PgOptions::default()).await
    }

    pub async fn open_with(url: &str, options: PgOptions) -> Result<PgStore, StoreError> {
        let server = PgConnectOptions::from_str(url)?
            // Large submits are single statements by design; sqlx would
            // print their whole SQL as a warning.
            .log_slow_statements(log::LevelFilter::Debug, Duration::from_secs(1));
        // Settings are sent with the startup packet: no round trip of their own.
        let connect = server
            .clone()
            .options([("plan_cache_mode", "force_custom_plan")]);
        let claim_connect = server.options([
            ("plan_cache_mode", "force_generic_plan"),
            ("enable_seqscan", "off"),
        ]);
        // One plain connection first: the pool retries a refused connection
        // until its acquire timeout and then reports only "pool timed out";
        // a single attempt fails at once and says why, naming the server.
        let first = tokio::time::timeout(options.acquire_timeout, connect.connect()).await;
        match first {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
            }
            Ok(Err(sqlx::Error::Io(e))) => {
                return Err(StoreError::Unreachable {
                    address: server_address(&connect),
                    reason: e.to_string(),
                });
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                return Err(StoreError::Unreachable {
                    address: server_address(&connect),
                    reason: format!(
                        "no answer within {} s",
                        options.acquire_timeout.as_secs_f64()
                    ),
                });
            }
        }
        let migrated = Arc::new(AtomicBool::new(false));
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            // A connection killed by a restart or `pg_terminate_backend` is
            // found by the call that uses it (`connection_lost`), not by a
            // round trip before every call.
            .test_before_acquire(false)
            .after_connect({
                let migrated = migrated.clone();
                move |conn, _| {
                    // Before the migrations the tables may not be there yet
                    // (or not as the statements need them): the connections
                    // opened then parse each statement on its first use.
                    let migrated = migrated.load(Ordering::Acquire);
                    Box::pin(async move {
                        if migrated {
                            prepare_rare_statements(conn).await?;
                        }
                        Ok(())
                    })
                }
            })
            // No connection now: every one opens after the migrations, and
            // the plain connection above has told an unreachable server.
            .connect_lazy_with(connect);
        let claims = PgPoolOptions::new()
            .max_connections(CLAIM_CONNECTIONS.min(options.max_connections))
            .acquire_timeout(options.acquire_timeout)
            .test_before_acquire(false)
            .connect_lazy_with(claim_connect);
        SqlStore::with_backend(PgBackend {
            max_connections: options.max_connections,
            pool,
            claims,
            url: url.to_string(),
            deadlock_retries: AtomicU64::new(0),
            listener: OnceLock::new(),
            migrated,
        })
        .await
    }

    /// The plan of the claim `p` as a claim connection runs it: its
    /// generic plan (for any values, with the statistics of now, sequential
    /// scans ruled out), one line per plan node: for the tests that hold
    /// claims to their indexes by their text alone.
    pub async fn claim_plan(&self, p: ClaimBatch) -> Result<String, StoreError> {
        self.on_claim_connection(async |db| super::complete::explain_generic_claim(db, &p).await)
            .await
    }

    /// How PostgreSQL would read the page of tasks `p` now, one line per
    /// plan node: for the test that holds it to the job's index whatever the
    /// planner's statistics say.
    pub async fn list_tasks_plan(&self, p: ListTasks) -> Result<String, StoreError> {
        self.read(|| async |db| super::agent::explain_list_tasks(db, &p).await)
            .await
    }

    /// The plans for the statements that find the task rows of the
    /// completions `p` (with `p`'s values), one line per plan node: for the
    /// test that holds a completion to its rows' primary key whatever the
    /// planner's statistics say.
    pub async fn completion_plan(&self, p: CompleteBatch) -> Result<String, StoreError> {
        self.read(|| async |db| super::complete::explain_completion(db, &p).await)
            .await
    }

    /// The plan of every statement a transaction of plain successes may
    /// run, as such a transaction plans it (generic, for any values;
    /// sequential scans ruled out: `complete::PLAN_ONCE_PER_CONNECTION`), by
    /// statement name, one line per plan node: for the test that holds them
    /// to index plans on a database whose tables are still empty.
    pub async fn plain_success_statement_plans(
        &self,
    ) -> Result<Vec<(&'static str, String)>, StoreError> {
        use sqlx::{AssertSqlSafe, Either, Executor as _, SqlSafeStr as _, TypeInfo as _};
        let settings = super::complete::PLAN_ONCE_PER_CONNECTION
            .postgres_text()
            .ok_or_else(|| {
                StoreError::Corrupt("the plan settings have no PostgreSQL text".into())
            })?;
        // Taken out of the pool and closed after: the named statements
        // prepared here (PREPARE is not undone by a rollback) and the plans
        // cached with them stay with it.
        let mut conn = self.pool().acquire().await?.detach();
        let mut plans = Vec::new();
        for &(name, sql) in super::complete::PLAIN_SUCCESS_STATEMENTS {
            let Some(text) = sql.postgres_text() else {
                continue;
            };
            // The statement is prepared under a name with the parameter
            // types the server infers for it, as the pool's prepared
            // statements are, and explained with every argument NULL: under
            // `force_generic_plan` the plan does not depend on them. Our own
            // statement texts are formatted in, nothing from outside.
            let types: Vec<String> = match conn.describe(text.into_sql_str()).await?.parameters() {
                Some(Either::Left(types)) => types.iter().map(|t| t.name().to_string()).collect(),
                Some(Either::Right(_)) => {
                    return Err(StoreError::Corrupt(format!(
                        "{name}: the server described its parameters without their types"
                    )));
                }
                None => Vec::new(),
            };
            let mut tx = conn.begin().await?;
            sqlx::query(settings).execute(&mut *tx).await?;
            let prepare = if types.is_empty() {
                format!("PREPARE {name} AS {text}")
            } else {
                format!("PREPARE {name} ({}) AS {text}", types.join(", "))
            };
            sqlx::raw_sql(AssertSqlSafe(prepare))
                .execute(&mut *tx)
                .await?;
            let arguments = if types.is_empty() {
                String::new()
            } else {
                format!("({})", vec!["NULL"; types.len()].join(", "))
            };
            let lines: Vec<(String,)> =
                sqlx::query_as(AssertSqlSafe(format!("EXPLAIN EXECUTE {name}{arguments}")))
                    .fetch_all(&mut *tx)
                    .await?;
            tx.rollback().await?;
            let plan: Vec<String> = lines.into_iter().map(|(line,)| line).collect();
            plans.push((name, plan.join("\n")));
        }
        Ok(plans)
    }

    /// The connection pool (for tests and maintenance tools).
    pub fn pool(&self) -> &PgPool {
        &self.backend().pool
    }

    /// How many transactions were rolled back and run again because of a
    /// deadlock (40P01), a serialization failure (40001) or a job changed
    /// under a write ([`StoreError::Raced`]: two `retry`s of one stopped job
    /// at once) since open. The lock order makes deadlocks impossible between
    /// lockstep's own transactions; any other count means something else is
    /// taking locks on our rows.
    pub fn deadlock_retries(&self) -> u64 {
        self.backend().deadlock_retries.load(Ordering::Relaxed)
    }

    /// How many times the LISTEN connection was re-established after it was
    /// lost (0 until [`Store::ready_signal`](super::Store::ready_signal) is
    /// first called).
    pub fn listener_reconnects(&self) -> u64 {
        self.backend().listener.get().map_or(0, |l| l.reconnects())
    }
}

/// Prepare and plan, on a connection opened after the migrations ran, the
/// statements that close a stage and open the next one (CLOSE_DRAINED,
/// OPEN_STAGE, CLOSE_EMPTY_STAGE) and the lone wake-up: each runs about once
/// per stage, so a connection would otherwise parse it (a round trip) and
/// build its plan (0.3–0.5 ms of bind each in a fan-in's statement log) in
/// the transaction that completes a stage's last task, on the way to the
/// next stage's first claim.
///
/// Each runs once, matching no row, as a transaction of plain successes runs
/// it (`complete::PLAN_ONCE_PER_CONNECTION`), in a transaction rolled back:
/// the statement stays prepared and its generic plan cached with it. The
/// values bound are of the types the store binds.
async fn prepare_rare_statements(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    use super::advance::{CLOSE_DRAINED, CLOSE_EMPTY_STAGE, OPEN_STAGE};
    use super::effects::NOTIFY_READY;
    let text = |sql: &super::sql::Sql| {
        sql.postgres_text()
            .ok_or_else(|| sqlx::Error::Protocol("a rare statement has no PostgreSQL text".into()))
    };
    // No job has id -1: every statement below matches nothing.
    const NO_JOB: i64 = -1;
    let mut tx = conn.begin().await?;
    sqlx::query(text(&super::complete::PLAN_ONCE_PER_CONNECTION)?)
        .execute(&mut *tx)
        .await?;
    sqlx::query(text(&CLOSE_DRAINED)?)
        .bind(vec![NO_JOB])
        .bind(vec![0i32])
        .bind(0i64)
        .execute(&mut *tx)
        .await?;
    for sql in [&OPEN_STAGE, &CLOSE_EMPTY_STAGE] {
        sqlx::query(text(sql)?)
            .bind(NO_JOB)
            .bind(0i32)
            .bind(0i64)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(text(&NOTIFY_READY)?)
        .bind(READY_CHANNEL)
        .bind(Vec::<String>::new())
        .execute(&mut *tx)
        .await?;
    tx.rollback().await
}

/// `host:port` (or the socket directory) a connection goes to, for errors.
fn server_address(connect: &PgConnectOptions) -> String {
    format!("{}:{}", connect.get_host(), connect.get_port())
}

/// SQLSTATE 40P01 (deadlock detected) or 40001 (serialization failure).
fn is_lock_conflict(error: &StoreError) -> bool {
    match error {
        StoreError::Database(sqlx::Error::Database(db)) => {
            matches!(db.code().as_deref(), Some("40P01") | Some("40001"))
        }
        _ => false,
    }
}

/// The server closed the connection (SQLSTATE class 57P: terminated by an
/// administrator, a shutdown, a crash) or the socket is gone.
fn is_connection_lost(error: &StoreError) -> bool {
    match error {
        StoreError::Database(sqlx::Error::Io(_)) => true,
        StoreError::Database(sqlx::Error::Database(db)) => {
            db.code().is_some_and(|code| code.starts_with("57P"))
        }
        _ => false,
    }
}

#[async_trait::async_trait]
impl Backend for PgBackend {
    async fn migrate(&self) -> Result<(), StoreError> {
        // sqlx takes a database-wide advisory lock while migrating, so many
        // nodes starting at once apply each migration exactly once.
        // On a connection of their own (a pool of one), closed after them:
        // none that the pool hands out was opened before the tables were as
        // the statements need them, so every pooled one has the rare
        // statements prepared (`prepare_rare_statements`).
        let own = PgPoolOptions::new()
            .max_connections(1)
            .connect_with((*self.pool.connect_options()).clone())
            .await?;
        let migrated = sqlx::migrate!("../migrations/postgres").run(&own).await;
        own.close().await;
        migrated?;
        self.migrated.store(true, Ordering::Release);
        Ok(())
    }

    // Every write transaction's commit waits for the disk. The one write
    // that does not, a wasm claim, is a single statement run without a
    // transaction (`claim_connection`) that turns the wait off for its own
    // commit: workers outlive a crash of the server, and a claim lost to it
    // lets the same attempt number be claimed again while the first run
    // still holds it, which the claim's nonce in the row and the lease token
    // refuses (Invariant 8, `complete::claim_nonce`).
    async fn begin_write(&self) -> Result<Tx, StoreError> {
        Ok(Tx::Postgres(self.pool.begin().await?))
    }

    async fn begin_snapshot(&self) -> Result<Tx, StoreError> {
        Ok(Tx::Postgres(
            self.pool
                .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await?,
        ))
    }

    async fn read(&self) -> Result<Conn, StoreError> {
        Ok(Conn::Postgres(self.pool.acquire().await?))
    }

    async fn claim_connection(&self) -> Result<Option<Conn>, StoreError> {
        Ok(Some(Conn::Postgres(self.claims.acquire().await?)))
    }

    fn connection_lost(&self, error: &StoreError, lost: u32) -> bool {
        // Each dead connection is closed when it goes back to the pool, so
        // after one per pooled connection the next is a new one.
        if lost > self.max_connections || !is_connection_lost(error) {
            return false;
        }
        tracing::debug!(%error, "a pooled PostgreSQL connection was closed by the server; using another");
        true
    }

    fn retry_delay(
        &self,
        operation: &'static str,
        error: &StoreError,
        retries: u32,
    ) -> Option<Duration> {
        let raced = matches!(error, StoreError::Raced(_));
        if retries >= MAX_TRANSACTION_RETRIES || !(raced || is_lock_conflict(error)) {
            return None;
        }
        self.deadlock_retries.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            operation,
            retry = retries + 1,
            %error,
            "postgres transaction hit a deadlock, a serialization failure or a concurrent change; retrying"
        );
        // Back off a little (with jitter) so the competing transaction can
        // finish first.
        let jitter = rand::random_range(0..=10u64);
        Some(Duration::from_millis(5 * u64::from(retries + 1) + jitter))
    }

    fn ready_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        // The listener needs a tokio runtime to run on; without one (a
        // synchronous caller) polling is the only way to find work.
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let listener = self
            .listener
            .get_or_init(|| listen::ReadyListener::start(&runtime, self.url.clone()));
        Some(listener.notify())
    }
}
