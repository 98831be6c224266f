//! Identifiers, timestamps and the proof of a claim.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch; every timestamp in lockstep uses it.
pub type Millis = i64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub i64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(pub i64);

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(pub String);

/// Proof of a claim: completion is accepted only while the task is still
/// `running` with exactly this attempt number (fencing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaseToken {
    pub task_id: TaskId,
    pub attempt: i32,
}
