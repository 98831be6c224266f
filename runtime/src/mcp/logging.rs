//! MCP logging (`logging/setLevel`, `notifications/message`): what a session
//! hears of the handlers whose jobs it waits on, and of the task a handler
//! tool call runs (live, see [`super::handler_tools`]).
//!
//! A session that set a level hears, while `wait_job` waits on a job, the
//! lines that job's handlers logged (stored as `task_log` events with the
//! task's completion) at or above that level, each line once per session.
//! A session that never set a level hears none: the lines stay readable
//! with `get_task` and `lockstep events` either way.
//!
//! Forwarding is bounded per poll ([`PAGES_PER_POLL`]
//! pages of events) and per job and session ([`MAX_LINES_PER_JOB`] lines,
//! then one warning saying where the rest are); a line is guest text, so it
//! is sent with its control characters escaped and cut to
//! [`MAX_LINE_BYTES`].

// MCP logging is deprecated by SEP-2577 for the 2026-07-28 protocol; it is
// the current protocol for every 2025 revision clients use today.
#![allow(deprecated)]

use crate::engine::Engine;
use crate::model::{EventKind, JobId, TaskId, TenantId};
use rmcp::RoleServer;
use rmcp::model::{LoggingLevel, LoggingMessageNotificationParam};
use rmcp::service::Peer;
use std::collections::HashMap;
use std::sync::Mutex;

/// Events read per page while looking for log lines.
const PAGE: u32 = 200;
/// Pages read per `wait_job` poll: the work one poll may do.
const PAGES_PER_POLL: u32 = 5;
/// Lines of one job one session is sent; then a warning, and no more.
pub const MAX_LINES_PER_JOB: u32 = 1_000;
/// Longest line sent, in bytes (a stored line may be longer).
pub const MAX_LINE_BYTES: usize = 4 * 1024;
/// Jobs a session remembers having forwarded lines of.
const MAX_JOBS_REMEMBERED: usize = 1_000;
/// The `logger` of every message.
pub const LOGGER: &str = "lockstep";

/// One session's logging state: the level it asked for, and how far it has
/// been sent each job's lines.
#[derive(Debug, Default)]
pub struct Session {
    level: Mutex<Option<LoggingLevel>>,
    jobs: Mutex<HashMap<i64, Forwarded>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Forwarded {
    /// The last event id read.
    after: Option<i64>,
    /// Lines sent.
    sent: u32,
}

impl Session {
    pub fn set_level(&self, level: LoggingLevel) {
        *self.level.lock().unwrap_or_else(|p| p.into_inner()) = Some(level);
    }

    pub fn level(&self) -> Option<LoggingLevel> {
        *self.level.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forwarded(&self, job: JobId) -> Forwarded {
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&job.0)
            .copied()
            .unwrap_or_default()
    }

    fn remember(&self, job: JobId, state: Forwarded) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if jobs.len() >= MAX_JOBS_REMEMBERED && !jobs.contains_key(&job.0) {
            // Forget the oldest job: its lines may be sent again, never lost.
            if let Some(&oldest) = jobs.keys().min() {
                jobs.remove(&oldest);
            }
        }
        jobs.insert(job.0, state);
    }
}

/// Severity order of the MCP levels, lowest first.
fn rank(level: LoggingLevel) -> u8 {
    match level {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

/// The MCP level of a stored log line and its message: the host stores a
/// handler's `log(level, msg)` as `"{level}: {msg}"` (trace and debug are
/// MCP's debug, warn its warning); any other line (the last progress
/// report) is info.
pub fn line_level(line: &str) -> (LoggingLevel, &str) {
    let levels = [
        ("trace: ", LoggingLevel::Debug),
        ("debug: ", LoggingLevel::Debug),
        ("info: ", LoggingLevel::Info),
        ("warn: ", LoggingLevel::Warning),
        ("error: ", LoggingLevel::Error),
    ];
    levels
        .iter()
        .find_map(|(prefix, level)| line.strip_prefix(prefix).map(|rest| (*level, rest)))
        .unwrap_or((LoggingLevel::Info, line))
}

/// The MCP level of a handler's `log(level, …)`: trace and debug are
/// MCP's debug, warn its warning.
pub fn guest_level(level: crate::plugin::LogLevel) -> LoggingLevel {
    use crate::plugin::LogLevel;
    match level {
        LogLevel::Trace | LogLevel::Debug => LoggingLevel::Debug,
        LogLevel::Info => LoggingLevel::Info,
        LogLevel::Warn => LoggingLevel::Warning,
        LogLevel::Error => LoggingLevel::Error,
    }
}

/// Send `session` one line of `job` (guest text: escaped and cut to
/// [`MAX_LINE_BYTES`]) as `notifications/message`, if it set a level at or
/// below `level`. False only when the peer is gone.
pub async fn send_line(
    session: &Session,
    peer: &Peer<RoleServer>,
    level: LoggingLevel,
    job: JobId,
    task: Option<TaskId>,
    message: &str,
) -> bool {
    if session
        .level()
        .is_none_or(|minimum| rank(level) < rank(minimum))
    {
        return true;
    }
    let text = crate::limits::printable(message);
    let mut data = serde_json::json!({
        "job_id": job.0,
        "message": super::params::clip(&text, MAX_LINE_BYTES),
    });
    if let Some(task) = task {
        data["task_id"] = task.0.into();
    }
    let note = LoggingMessageNotificationParam::new(level, data).with_logger(LOGGER);
    peer.notify_logging_message(note).await.is_ok()
}

/// Send `session` the log lines of `job` it has not been sent yet, at or
/// above its level; nothing when it set no level. Read failures and a
/// closed peer end this poll's forwarding quietly: logging never fails the
/// tool call it rides on.
pub async fn forward(
    engine: &Engine,
    tenant: &TenantId,
    job: JobId,
    session: &Session,
    peer: &Peer<RoleServer>,
) {
    let Some(minimum) = session.level() else {
        return;
    };
    let mut state = session.forwarded(job);
    if state.sent > MAX_LINES_PER_JOB {
        return;
    }
    'pages: for _ in 0..PAGES_PER_POLL {
        let events = match engine.events(tenant, job, state.after, PAGE).await {
            Ok(events) => events,
            Err(e) => {
                tracing::debug!(error = %e, job = job.0, "log lines not read");
                break;
            }
        };
        let full = events.len() == PAGE as usize;
        for event in events {
            state.after = Some(event.id);
            if event.kind != EventKind::TaskLog {
                continue;
            }
            let line = event.detail.as_deref().unwrap_or_default();
            let (level, message) = line_level(line);
            if rank(level) < rank(minimum) {
                continue;
            }
            state.sent += 1;
            let delivered = if state.sent > MAX_LINES_PER_JOB {
                let warning = format!(
                    "job {} logged more than the {MAX_LINES_PER_JOB} lines a session is sent; read the rest with get_task or `lockstep events {}`",
                    job.0, job.0
                );
                send_line(session, peer, LoggingLevel::Warning, job, None, &warning).await
            } else {
                send_line(session, peer, level, job, event.task_id, message).await
            };
            if !delivered {
                break 'pages;
            }
            if state.sent > MAX_LINES_PER_JOB {
                break 'pages;
            }
        }
        if !full {
            break;
        }
    }
    session.remember(job, state);
}
