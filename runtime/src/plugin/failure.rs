//! Why a run did not produce an outcome, classified so the engine can decide
//! (retry or not) and an operator can read it in one sentence.
//!
//! **Invariant 17:** every failure of a guest — its own error, a trap, running
//! out of memory or time, a stack overflow — becomes a [`RunFailure`] of
//! that run; none of them takes the host down.

use super::grants::format_duration;
use super::registry::UnknownHandler;
use std::time::Duration;
use wasmtime::Trap;

/// A run that produced no outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunFailure {
    /// The handler reported a transient failure; the message is the
    /// handler's own.
    #[error("{0}")]
    Retryable(String),
    /// The handler reported a permanent failure (its own message), or
    /// returned something the host cannot accept (output that is not JSON).
    #[error("{0}")]
    Fatal(String),
    /// The guest trapped (a Rust panic ends in a trap; its message is in
    /// `reason` when the guest printed it).
    #[error("handler {handler} trapped: {reason}")]
    Trap { handler: String, reason: String },
    /// The attempt ran past its time limit and was stopped.
    #[error("handler {handler} exceeded its {} deadline and was stopped", format_duration(*.timeout))]
    Deadline { handler: String, timeout: Duration },
    /// The guest asked for more memory than granted and then died.
    #[error("handler {handler} ran out of memory: it tried to grow past its {} MiB limit and was stopped", .limit_bytes >> 20)]
    OutOfMemory { handler: String, limit_bytes: u64 },
    /// The guest's wasm stack overflowed (unbounded recursion).
    #[error("handler {handler} overflowed its stack (too deep recursion) and was stopped")]
    StackOverflow { handler: String },
    /// The guest tried to hand the host more bytes in one call (its
    /// results, or one host call's arguments) than the run's budget allows;
    /// nothing was copied.
    #[error(
        "handler {handler} tried to hand the host more than {} in one call and was stopped (outputs are limited by max_output_bytes in its grants file, spawned inputs to {} per task)",
        crate::limits::show_bytes(*.limit_bytes),
        crate::limits::show_bytes(crate::limits::MAX_SPAWNED_BYTES_PER_TASK as u64)
    )]
    TooMuchData { handler: String, limit_bytes: u64 },
    /// No plugin provides the handler.
    #[error(transparent)]
    UnknownHandler(#[from] UnknownHandler),
    /// The host could not set up the sandbox for the run (a granted
    /// directory vanished, the instance pool is closed, …).
    #[error("handler {handler} could not be started: {reason}")]
    Setup { handler: String, reason: String },
}

impl RunFailure {
    /// Whether another attempt may succeed. Guest-reported fatal errors,
    /// invalid or oversized outcomes and unknown handlers are final;
    /// everything else counts as a failed attempt.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            RunFailure::Fatal(_) | RunFailure::UnknownHandler(_) | RunFailure::TooMuchData { .. }
        )
    }
}

/// What the sandbox observed about a call that returned an error.
pub(crate) struct Observed<'a> {
    pub handler: &'a str,
    pub deadline_hit: bool,
    pub timeout: Duration,
    pub memory_refused: bool,
    pub memory_limit: u64,
    pub stderr: &'a [String],
}

/// Classify an error from instantiating or calling a guest.
pub(crate) fn classify(err: &wasmtime::Error, seen: &Observed<'_>) -> RunFailure {
    let handler = seen.handler.to_owned();
    let trap = err.downcast_ref::<Trap>().copied();
    if seen.deadline_hit || trap == Some(Trap::Interrupt) {
        return RunFailure::Deadline {
            handler,
            timeout: seen.timeout,
        };
    }
    if trap == Some(Trap::StackOverflow) {
        return RunFailure::StackOverflow { handler };
    }
    if seen.memory_refused {
        return RunFailure::OutOfMemory {
            handler,
            limit_bytes: seen.memory_limit,
        };
    }
    let what = match trap {
        Some(t) => t.to_string(),
        None => format!("{err:#}"),
    };
    let reason = match panic_message(seen.stderr) {
        Some(panic) => format!("{panic} ({what})"),
        None => what,
    };
    RunFailure::Trap { handler, reason }
}

/// The panic message a Rust guest printed to stderr before aborting:
/// `thread '…' panicked at src/lib.rs:3:5:` followed by the message lines,
/// rendered as `panicked at src/lib.rs:3:5: message`.
pub(crate) fn panic_message(stderr: &[String]) -> Option<String> {
    let start = stderr.iter().position(|l| l.contains("panicked at "))?;
    let head = &stderr[start];
    let location = head[head.find("panicked at ")?..].trim_end_matches(':');
    let message: Vec<&str> = stderr[start + 1..]
        .iter()
        .map(String::as_str)
        .take_while(|l| !l.starts_with("note: ") && !l.starts_with("stack backtrace"))
        .collect();
    if message.is_empty() {
        Some(location.to_owned())
    } else {
        Some(format!("{location}: {}", message.join(" ")))
    }
}
