//! The `model` vocabulary: every enum has one spelling, the same in rows,
//! JSON and printed text, and an unknown name is an error that lists the
//! known ones.

use lockstep::model::{EventKind, Executor, JobState, OnFailure, StageState, TaskState};
use serde::Serialize;
use std::fmt::Display;
use std::str::FromStr;

/// `as_str`, `Display`, serde and `FromStr` agree for every value of `T`.
fn spelled_once<T>(all: &[T])
where
    T: Copy + PartialEq + std::fmt::Debug + Display + Serialize + FromStr,
    T::Err: std::fmt::Debug,
{
    for value in all {
        let text = value.to_string();
        assert_eq!(
            serde_json::to_value(value).expect("serialize"),
            serde_json::Value::String(text.clone()),
            "serde and Display spell {value:?} differently"
        );
        assert_eq!(text.parse::<T>().expect("parse back"), *value);
    }
}

#[test]
fn every_vocabulary_enum_has_one_spelling() {
    spelled_once(&TaskState::ALL);
    spelled_once(&JobState::ALL);
    spelled_once(&StageState::ALL);
    spelled_once(&Executor::ALL);
    spelled_once(&OnFailure::ALL);
    spelled_once(&EventKind::ALL);
    assert_eq!(TaskState::ALL.len(), 7);
    assert_eq!(JobState::ALL.len(), 4);
    assert_eq!(EventKind::ALL.len(), 17);
}

#[test]
fn an_unknown_name_lists_the_known_ones() {
    let err = "runing".parse::<TaskState>().expect_err("unknown");
    assert_eq!(
        err.to_string(),
        "unknown task state \"runing\" (expected one of: blocked, pending, running, succeeded, dead, cancelled, skipped)"
    );
    let err = "docker".parse::<Executor>().expect_err("unknown");
    assert_eq!(
        err.to_string(),
        "unknown executor \"docker\" (expected one of: wasm, agent, command)"
    );
    let err = "skip".parse::<OnFailure>().expect_err("unknown");
    assert_eq!(
        err.to_string(),
        "unknown on_failure \"skip\" (expected one of: fail_job, continue, release_then_fail)"
    );
}

#[test]
fn the_transition_table_allows_exactly_the_documented_moves() {
    use TaskState::*;
    let allowed: Vec<(TaskState, TaskState)> = TaskState::ALL
        .iter()
        .flat_map(|from| TaskState::ALL.iter().map(move |to| (*from, *to)))
        .filter(|(from, to)| from.can_become(*to))
        .collect();
    assert_eq!(
        allowed,
        vec![
            (Blocked, Pending),
            (Blocked, Cancelled),
            (Pending, Running),
            (Pending, Cancelled),
            (Running, Pending),
            (Running, Succeeded),
            (Running, Dead),
            (Running, Cancelled),
            (Running, Skipped),
            (Dead, Blocked),
            (Dead, Pending),
            (Cancelled, Blocked),
            (Cancelled, Pending),
            (Skipped, Pending),
        ]
    );
    assert_eq!(
        Succeeded
            .transition(Pending)
            .expect_err("illegal")
            .to_string(),
        "illegal task transition: succeeded -> pending"
    );
    for state in TaskState::ALL {
        assert_eq!(
            state.is_terminal(),
            TaskState::ALL
                .iter()
                .all(|to| !state.can_become(*to) || matches!(to, Pending | Blocked)),
            "{state}: terminal states may only be revived"
        );
    }
}
