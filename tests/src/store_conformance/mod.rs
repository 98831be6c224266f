//! The store conformance suite: what every backend of `lockstep::store::Store`
//! must do, written once as plain async cases over `&dyn Store` and run
//! against each backend with a fresh database per case (the layout of River's
//! `riverdrivertest`).
//!
//! One module per area; each case is a `pub async fn(&dyn Store)` and each
//! module ends with `conformance_cases!(…)`, which makes one test per case
//! and backend: `store_conformance::<area>::{sqlite,postgres}::<case>`. The
//! building blocks all areas share are in [`fixtures`]. Every method of the
//! `Store` trait is called by at least one case (Invariant 14), which
//! [`coverage`] checks against the trait's source.
//!
//! PostgreSQL cases need a server; `.ci/run` starts the local one and sets
//! `LOCKSTEP_TEST_POSTGRES`, which makes an unreachable server a failure
//! rather than a skip.

/// One test per case and backend; each test gets a fresh store.
macro_rules! conformance_cases {
    ($($case:ident),* $(,)?) => {
        /// The cases against PostgreSQL (a fresh database each).
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    crate::postgres_test_db::with_pg_store(|store| async move {
                        super::$case(store.as_ref()).await
                    })
                    .await;
                }
            )*
        }
        /// The cases against SQLite (a fresh database file each).
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    crate::store_conformance::with_sqlite_store(|store| async move {
                        super::$case(store.as_ref()).await
                    })
                    .await;
                }
            )*
        }
    };
}

mod advance;
mod agent;
mod attempts;
mod ci_steps;
mod claim;
mod complete;
mod coverage;
mod dependencies;
mod fixtures;
mod leases;
mod operator;
mod reads;
mod sampling;
mod schema;
mod submit;
mod tenancy;
mod tokens;

/// Run a case against a fresh SQLite store in a temporary directory.
pub(crate) async fn with_sqlite_store<F, Fut>(case: F)
where
    F: FnOnce(std::sync::Arc<lockstep::store::sqlite::SqliteStore>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("conformance.db").display());
    let store = lockstep::store::sqlite::SqliteStore::open(
        &url,
        lockstep::store::sqlite::SqliteOptions::default(),
    )
    .await
    .expect("open sqlite store");
    case(std::sync::Arc::new(store)).await;
}
