//! `state_counts`: what `/metrics` samples from the database — every
//! tenant's tasks and jobs by state, and per executor the `run_after` of the
//! oldest task that is ready and unclaimed, read in one snapshot.

use super::fixtures::*;
use lockstep::model::StateTotals;
use lockstep::store::StateCounts;

/// Task counts in the order of `TaskState::ALL`.
fn tasks(
    blocked: i64,
    pending: i64,
    running: i64,
    succeeded: i64,
    dead: i64,
) -> Vec<(TaskState, i64)> {
    vec![
        (TaskState::Blocked, blocked),
        (TaskState::Pending, pending),
        (TaskState::Running, running),
        (TaskState::Succeeded, succeeded),
        (TaskState::Dead, dead),
        (TaskState::Cancelled, 0),
        (TaskState::Skipped, 0),
    ]
}

fn jobs(running: i64) -> Vec<(JobState, i64)> {
    vec![
        (JobState::Running, running),
        (JobState::Succeeded, 0),
        (JobState::Failed, 0),
        (JobState::Cancelled, 0),
    ]
}

async fn counts(store: &dyn Store, now: Millis) -> StateTotals {
    store
        .state_counts(StateCounts { now })
        .await
        .expect("state counts")
}

pub async fn state_counts_count_every_tenant_by_state_and_the_oldest_ready_task(store: &dyn Store) {
    assert_eq!(
        counts(store, NOW).await,
        StateTotals {
            tasks: tasks(0, 0, 0, 0, 0),
            jobs: jobs(0),
            oldest_ready: vec![],
        },
        "an empty database: every state at 0, nothing waits"
    );
    // acme: tasks 1–3 in stage a (3 dies without failing the job), 4 in b.
    submit(
        store,
        spec(
            "sampled",
            vec![
                stage(
                    "a",
                    vec![
                        task("work"),
                        task("work"),
                        with_on_failure(task("work"), OnFailure::Continue),
                    ],
                ),
                stage("b", vec![task("work")]),
            ],
        ),
    )
    .await;
    // globex: task 5, ready since NOW.
    submit(
        store,
        spec_for(globex(), "theirs", vec![stage("a", vec![task("work")])]),
    )
    .await;
    let claimed = claim(store, 3).await;
    assert_eq!(claimed.len(), 3);
    complete(
        store,
        vec![
            ok(&claimed[0]),
            retryable(&claimed[1], "again", 1_000),
            fatal(&claimed[2], "no"),
        ],
    )
    .await;
    // Task 2 waits for its backoff (ready at NOW + 1 s); task 5 is ready.
    assert_eq!(
        counts(store, NOW).await,
        StateTotals {
            tasks: tasks(1, 2, 0, 1, 1),
            jobs: jobs(2),
            oldest_ready: vec![(Executor::Wasm, NOW)],
        },
        "both tenants' tasks are counted; only a task whose run_after passed waits"
    );
    let running = store
        .claim_batch(claim_at(1, NOW + 2_000))
        .await
        .expect("claim");
    assert_eq!(running.len(), 1);
    assert_eq!(
        counts(store, NOW + 2_000).await,
        StateTotals {
            tasks: tasks(1, 1, 1, 1, 1),
            jobs: jobs(2),
            oldest_ready: vec![(Executor::Wasm, NOW)],
        },
        "a claimed task runs; the oldest ready one still waits"
    );
}

conformance_cases!(state_counts_count_every_tenant_by_state_and_the_oldest_ready_task);
