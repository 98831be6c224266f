//! The store as a whole: migrating an up-to-date database is a no-op, and a
//! backend that pushes ready signals sends one when work becomes ready.

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

conformance_cases!(
    migrating_an_up_to_date_database_changes_nothing,
    a_ready_signal_follows_a_submit_that_makes_tasks_ready,
);
