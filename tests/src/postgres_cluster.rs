//! Several `lockstep serve` processes on one PostgreSQL database: a 20,000
//! task fan-out finishes exactly once while a node is SIGKILLed, and while
//! every connection is terminated under load. Skipped (with one line) when
//! no server is reachable, unless `LOCKSTEP_TEST_POSTGRES` is set.

use crate::crash_recovery::{assert_finished_exactly_once, fanin_job, spawn_serve, stop, wait_for};
use crate::harness::Harness;
use crate::postgres_test_db::with_pg;
use std::time::Duration;

/// Every serve log of the test: a deadlock retry would be logged there.
fn serve_logs(h: &Harness) -> String {
    let mut all = String::new();
    for entry in std::fs::read_dir(h.dir.path()).expect("test dir").flatten() {
        if entry.file_name().to_string_lossy().starts_with("serve-") {
            all.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_nodes_finish_twenty_thousand_tasks_exactly_once_while_one_is_killed() {
    with_pg(|db| async move {
        let h = Harness::on(db.url.clone(), tempfile::tempdir().expect("dir")).await;
        let job = h.submit(&fanin_job(20_000)).await;
        let mut nodes: Vec<_> = (0..4).map(|_| spawn_serve(&h, 16)).collect();
        let mut finished_early = false;
        wait_for(&h, job, |done, terminal| {
            finished_early = terminal;
            done >= 4_000 || terminal
        })
        .await;
        assert!(
            !finished_early,
            "the job finished before a node could be killed"
        );
        let mut victim = nodes.remove(0);
        victim.kill().expect("SIGKILL one node");
        victim.wait().expect("reap");
        wait_for(&h, job, |_, terminal| terminal).await;
        for node in nodes {
            stop(node);
        }
        assert_finished_exactly_once(&h, job, 20_000).await;
        let logs = serve_logs(&h);
        assert!(
            !logs.contains("deadlock"),
            "a node reported a deadlock:\n{logs}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_every_connection_under_load_still_finishes_exactly_once() {
    with_pg(|db| async move {
        let h = Harness::on(db.url.clone(), tempfile::tempdir().expect("dir")).await;
        let job = h.submit(&fanin_job(5_000)).await;
        let nodes: Vec<_> = (0..2).map(|_| spawn_serve(&h, 8)).collect();
        let mut terminated = 0;
        for threshold in [500, 2_000, 3_500] {
            wait_for(&h, job, |done, terminal| done >= threshold || terminal).await;
            terminated += db.terminate_backends().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        wait_for(&h, job, |_, terminal| terminal).await;
        for node in nodes {
            stop(node);
        }
        assert!(terminated > 0, "no backend was terminated");
        assert_finished_exactly_once(&h, job, 5_000).await;
    })
    .await;
}
