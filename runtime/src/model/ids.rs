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

/// Proof of a claim: completion, renewal and release are accepted only while
/// the task is still `running` with exactly this attempt number and this
/// claim's nonce (fencing, Invariant 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaseToken {
    pub task_id: TaskId,
    pub attempt: i32,
    /// The random value a wasm claim stored in the task row. Such a claim
    /// commits without waiting for the disk, so a crash of the database can
    /// lose it and leave its attempt number to be claimed again, by a claim
    /// with another nonce: the lost claim's run is refused. `None` for agent
    /// and command claims, which PostgreSQL commits durably and whose
    /// attempt number names them: an MCP agent's token is
    /// `(task_id, attempt)`.
    pub nonce: Option<i64>,
}
