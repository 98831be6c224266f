//! A fresh PostgreSQL database for each test, so tests and runs never see
//! each other's rows.
//!
//! The server is `LOCKSTEP_TEST_POSTGRES` when that holds a `postgres://` URL
//! of a maintenance database, else `postgres://postgres@127.0.0.1:5432/postgres`.
//! When the server is unreachable: with `LOCKSTEP_TEST_POSTGRES` set the test
//! fails loudly; without it, one line says the PostgreSQL tests were skipped
//! and each of them returns.

use lockstep::store::postgres::{PgOptions, PgStore};
use sqlx::AssertSqlSafe;
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::future::Future;
use std::sync::{Arc, Once};
use std::time::Duration;

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

static SKIP_NOTICE: Once = Once::new();

/// The database a test owns; dropped (with its connections) by [`with_pg`].
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub admin: PgPool,
}

fn admin_url() -> (String, bool) {
    match std::env::var("LOCKSTEP_TEST_POSTGRES") {
        Ok(v) if v.starts_with("postgres://") || v.starts_with("postgresql://") => (v, true),
        Ok(_) => (DEFAULT_ADMIN_URL.to_string(), true),
        Err(_) => (DEFAULT_ADMIN_URL.to_string(), false),
    }
}

/// The URL of database `name` on the same server as `admin`.
fn database_url(admin: &str, name: &str) -> String {
    let (base, query) = match admin.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (admin, None),
    };
    let server = match base.rfind('/') {
        Some(i) if i > "postgres://".len() => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}

/// Create a fresh database, or `None` when the server is missing and the
/// tests may be skipped.
pub async fn create() -> Option<TestDb> {
    let (admin_url, required) = admin_url();
    let admin = match PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&admin_url)
        .await
    {
        Ok(pool) => pool,
        Err(error) if required => panic!(
            "LOCKSTEP_TEST_POSTGRES is set but PostgreSQL at {admin_url} is unreachable: {error}"
        ),
        Err(error) => {
            SKIP_NOTICE.call_once(|| {
                println!(
                    "skipping the PostgreSQL store tests: no server at {admin_url} ({error}); \
                     set LOCKSTEP_TEST_POSTGRES to make this a failure"
                );
            });
            return None;
        }
    };
    let name = format!("lockstep_test_{:016x}", rand::random::<u64>());
    // Identifiers cannot be bound as parameters; the name is ours, hex only.
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&admin)
        .await
        .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
    let url = database_url(&admin_url, &name);
    Some(TestDb { name, url, admin })
}

impl TestDb {
    pub async fn open_store(&self) -> PgStore {
        PgStore::open_with(
            &self.url,
            PgOptions {
                max_connections: 10,
                acquire_timeout: Duration::from_secs(30),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("opening the store on {}: {e}", self.url))
    }

    /// Terminate every connection to this database except the caller's
    /// (the admin pool is connected to the maintenance database). Returns how
    /// many were terminated.
    pub async fn terminate_backends(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
             FROM pg_stat_activity
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&self.name)
        .fetch_one(&self.admin)
        .await
        .expect("terminating the test database's backends")
    }

    async fn drop_database(&self) {
        let dropped = sqlx::query(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        )))
        .execute(&self.admin)
        .await;
        if let Err(e) = dropped {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

/// Run `case` against a fresh database (skipped when the server is missing
/// and not required), then drop the database whether the case passed or not.
pub async fn with_pg<F, Fut>(case: F)
where
    F: FnOnce(Arc<TestDb>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(db) = create().await else {
        return;
    };
    let db = Arc::new(db);
    let outcome = tokio::spawn(case(db.clone())).await;
    db.drop_database().await;
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("test task did not finish: {e}"),
        }
    }
}

/// Run a store conformance case against a fresh PostgreSQL store.
pub async fn with_pg_store<F, Fut>(case: F)
where
    F: FnOnce(Arc<PgStore>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    with_pg(|db| async move {
        let store = Arc::new(db.open_store().await);
        case(store).await;
    })
    .await;
}
