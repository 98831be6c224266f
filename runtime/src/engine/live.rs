//! What running tasks report as it happens: each log line and progress
//! report of a handler, broadcast to the listeners of this process (an MCP
//! handler tool call forwards its task's as `notifications/message` and
//! `notifications/progress`). The store keeps the lines too, with the
//! attempt's completion (`task_context`); this is only the live copy.
//!
//! **Invariants:** a report is sent only while someone listens, and never
//! waits: a listener that falls more than [`CAPACITY`] reports behind loses
//! the oldest and is told how many. Only tasks run by this process's
//! workers are heard; every report names its tenant, job and task, so a
//! listener keeps only its own.

use crate::model::{JobId, TaskId, TenantId};
use crate::plugin::LogLevel;
use tokio::sync::broadcast;

/// Reports kept for the slowest listener before it loses the oldest.
pub const CAPACITY: usize = 4096;

/// One report of a running task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveReport {
    pub tenant: TenantId,
    pub job: JobId,
    pub task: TaskId,
    pub what: Live,
}

/// What a running task reported (guest text, bounded by the plugin host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Live {
    Log {
        level: LogLevel,
        message: String,
    },
    Progress {
        done: u64,
        total: u64,
        message: String,
    },
}

/// The sending side, shared by every task this process runs.
#[derive(Debug, Clone)]
pub struct LiveReports(broadcast::Sender<LiveReport>);

impl Default for LiveReports {
    fn default() -> Self {
        LiveReports(broadcast::Sender::new(CAPACITY))
    }
}

impl LiveReports {
    /// Send `report` to whoever listens now; nothing when no one does.
    pub fn send(&self, report: impl FnOnce() -> LiveReport) {
        if self.0.receiver_count() > 0 {
            // An error only means the last listener left meanwhile.
            let _ = self.0.send(report());
        }
    }

    /// Listen from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<LiveReport> {
        self.0.subscribe()
    }
}
