//! A job's canonical spec as the store keeps it (`job_spec_parts`): in parts
//! of at most `SPEC_PART_BYTES`, cut at character boundaries, numbered in
//! order, whose concatenation is the spec — so neither database ever holds
//! a copy of a large spec whole. Read back by raw SQL, as nothing in
//! lockstep reads it.

use crate::postgres_test_db::with_pg;
use lockstep::model::{Executor, NewStage, NewTask, OnFailure, SubmitJob, TenantId};
use lockstep::store::{SPEC_PART_BYTES, Store};
use sqlx::{ConnectOptions, Connection};

/// A spec of 2.5 parts (a JSON string) whose every character is two bytes
/// ("é") after a one-byte opening quote: a cut at a part's byte limit would
/// split a character.
fn large_spec() -> String {
    format!("\"{}\"", "é".repeat(SPEC_PART_BYTES + SPEC_PART_BYTES / 4))
}

fn job(spec_json: String) -> SubmitJob {
    SubmitJob {
        tenant: TenantId("acme".into()),
        name: "large spec".into(),
        idempotency_key: "large spec".into(),
        spec_json,
        stages: vec![NewStage {
            name: "a".into(),
            on_failure: OnFailure::FailJob,
            max_attempts: None,
            timeout_ms: None,
            tasks: vec![NewTask {
                handler: "work".into(),
                executor: Executor::Wasm,
                key: None,
                depends_on: Vec::new(),
                input_json: "{}".into(),
                max_attempts: 1,
                timeout_ms: 1_000,
                on_failure: OnFailure::FailJob,
                agent_json: None,
            }],
        }],
        now: 1_800_000_000_000,
    }
}

/// A job's parts with their numbers, in order (the same text on both).
const READ_PARTS: &str = "SELECT part, text FROM job_spec_parts WHERE job_id = $1 ORDER BY part";

/// The parts as read back, in `part` order, with their numbers.
fn assert_stored_in_parts(spec: &str, parts: &[(i32, String)]) {
    let numbers: Vec<i32> = parts.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, vec![0, 1, 2]);
    // Every part but the last is as long as whole characters allow.
    assert_eq!(parts[0].1.len(), SPEC_PART_BYTES - 1);
    assert_eq!(parts[1].1.len(), SPEC_PART_BYTES);
    let whole: String = parts.iter().map(|(_, text)| text.as_str()).collect();
    assert_eq!(whole.len(), spec.len());
    assert!(whole == spec, "the parts concatenate to the spec");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_stores_a_large_spec_in_parts_cut_between_characters() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("spec.db");
    let store = lockstep::store::sqlite::SqliteStore::open(
        &format!("sqlite://{}", path.display()),
        lockstep::store::sqlite::SqliteOptions::default(),
    )
    .await
    .expect("open sqlite store");
    let spec = large_spec();
    let job_id = store
        .submit_job(job(spec.clone()))
        .await
        .expect("submit")
        .job_id;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .connect()
        .await
        .expect("open the file with sqlx");
    let parts: Vec<(i32, String)> = sqlx::query_as(READ_PARTS)
        .bind(job_id.0)
        .fetch_all(&mut conn)
        .await
        .expect("read the parts");
    assert_stored_in_parts(&spec, &parts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stores_a_large_spec_in_parts_cut_between_characters() {
    with_pg(|db| async move {
        let store = db.open_store().await;
        let spec = large_spec();
        let job_id = store
            .submit_job(job(spec.clone()))
            .await
            .expect("submit")
            .job_id;
        let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
        let parts: Vec<(i32, String)> =
            sqlx::query_as("SELECT part, text FROM job_spec_parts WHERE job_id = $1 ORDER BY part")
                .bind(job_id.0)
                .fetch_all(&mut conn)
                .await
                .expect("read the parts");
        assert_stored_in_parts(&spec, &parts);
    })
    .await;
}
