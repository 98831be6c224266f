//! The store as a whole: migrating an up-to-date database is a no-op, a
//! backend that pushes ready signals sends one when work becomes ready, the
//! store counts its statements, round trips and transactions, and the
//! bundled SQLite is built as `.cargo/config.toml` says.

use super::fixtures::*;

pub async fn migrating_an_up_to_date_database_changes_nothing(store: &dyn Store) {
    let job = submit(store, spec("kept", vec![stage("a", vec![task("work")])])).await;
    store.migrate().await.expect("migrate again");
    let s = status(store, job).await;
    assert_eq!(
        (s.state, s.stages[0].total, s.stages[0].remaining),
        (JobState::Running, 1, 1)
    );
    assert_eq!(claim(store, 10).await.len(), 1);
}

pub async fn a_ready_signal_follows_a_submit_that_makes_tasks_ready(store: &dyn Store) {
    // SQLite has no channel across processes: its workers are woken by the
    // engine in-process and poll otherwise.
    let Some(signal) = store.ready_signal() else {
        return;
    };
    let wait = Duration::from_secs(30);
    // The first wake-up comes when the listening connection is up.
    tokio::time::timeout(wait, signal.notified())
        .await
        .expect("the ready listener connected");
    // Drop any permit left by that wake-up.
    while tokio::time::timeout(Duration::from_millis(200), signal.notified())
        .await
        .is_ok()
    {}
    let notified = signal.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    submit(store, spec("wake", vec![stage("a", vec![task("work")])])).await;
    tokio::time::timeout(wait, notified)
        .await
        .expect("a ready signal after the submit");
}

pub async fn counters_count_each_statement_and_each_transaction(store: &dyn Store) {
    // A statement is one round trip; a transaction adds its begin and its end.
    let adds_up = |c: lockstep::store::StoreCounters| {
        assert_eq!(
            c.round_trips,
            c.statements + 2 * c.transactions,
            "round trips are statements plus a begin and an end per transaction: {c:?}"
        );
    };
    let opened = store.counters();
    adds_up(opened);

    // A write is exactly one transaction (Invariant 7), holding at least one statement.
    let job = submit(store, spec("counted", vec![stage("a", vec![task("work")])])).await;
    let submitted = store.counters();
    adds_up(submitted);
    assert_eq!(submitted.transactions - opened.transactions, 1);
    assert!(submitted.statements > opened.statements, "{submitted:?}");

    // A read of one statement: one statement, one round trip, no transaction.
    assert_eq!(job_state(store, job).await, JobState::Running);
    let read = store.counters();
    assert_eq!(
        (
            read.statements - submitted.statements,
            read.round_trips - submitted.round_trips,
            read.transactions - submitted.transactions,
        ),
        (1, 1, 0)
    );

    // A claim that asks for nothing runs nothing.
    assert!(
        store
            .claim_batch(claim_at(0, NOW))
            .await
            .expect("claim")
            .is_empty()
    );
    assert_eq!(store.counters(), read);

    // A read of several statements runs in one snapshot: one transaction.
    assert_eq!(status(store, job).await.stages[0].total, 1);
    let snapshot = store.counters();
    adds_up(snapshot);
    assert_eq!(snapshot.transactions - read.transactions, 1);
    // Nothing conflicted, so nothing was run again.
    assert_eq!(snapshot.retried_transactions, 0);
}

conformance_cases!(
    migrating_an_up_to_date_database_changes_nothing,
    a_ready_signal_follows_a_submit_that_makes_tasks_ready,
    counters_count_each_statement_and_each_transaction,
);

/// What each backend says of its writes, which sets how many group commits
/// the workers keep under way (two where one writer runs them one at a time
/// and a sync outside it makes them durable): SQLite's one writer connection
/// runs one write transaction at a time; PostgreSQL runs them side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_writes_one_at_a_time_and_postgres_side_by_side() {
    super::with_sqlite_store(|store| async move {
        assert!(store.writes_one_at_a_time());
    })
    .await;
    crate::postgres_test_db::with_pg_store(|store| async move {
        assert!(!store.writes_one_at_a_time());
    })
    .await;
}

/// The bundled SQLite is built without allocation statistics
/// (`.cargo/config.toml`): kept, they put a process-wide mutex on every
/// allocation the writer makes (3-12% of its CPU per task, issue 13). A build
/// that lost the option would still pass every other test, only slower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundled_sqlite_keeps_no_allocation_statistics() {
    use sqlx::{ConnectOptions, Connection};
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .in_memory(true)
        .connect()
        .await
        .expect("open an in-memory SQLite database");
    let options: Vec<String> = sqlx::query_scalar("PRAGMA compile_options")
        .fetch_all(&mut conn)
        .await
        .expect("read the compile options");
    conn.close().await.expect("close");
    assert!(
        options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
        "SQLite was built with allocation statistics: {options:?}"
    );
}
