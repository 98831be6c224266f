//! How long the text lockstep accepts from outside may be, and which
//! characters it may hold: the one check that job files, MCP arguments,
//! spawned tasks and the command line all use.
//!
//! Two kinds of text:
//! - **names** — job and stage names, task keys and `depends_on` entries,
//!   handler and specialist names, idempotency keys, tenants: identifiers that
//!   are indexed, compared and printed on one line. Bounded in bytes; no
//!   control characters at all (no NUL, no newline, no escape sequence).
//! - **free text** — agent instructions, notes, reasons: anything printable
//!   including newlines and tabs, bounded in bytes; no NUL.
//!
//! **Invariant:** a text accepted here is stored alike by SQLite and
//! PostgreSQL (PostgreSQL `text` cannot hold NUL, SQLite can: without this
//! check the two backends would disagree), and a text refused here is refused
//! before anything is written, with the same sentence on every path.
//!
//! Like `model`, this module imports nothing from the crate, so every layer
//! (including `plugin`) may use it.

use std::fmt;

/// Longest job name, in bytes: room for an agent's plan goal (1,000
/// characters), which becomes its job's name.
pub const MAX_JOB_NAME_BYTES: usize = 4096;

/// Longest stage name, task key (and `depends_on` entry), handler
/// name and specialist, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// Longest idempotency key, in bytes (room for a URL or a few hashes).
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 1024;

/// Longest tenant name, in bytes.
pub const MAX_TENANT_BYTES: usize = 100;

/// Longest agent task title, in bytes.
pub const MAX_TITLE_BYTES: usize = 1024;

/// Longest agent task instructions, in bytes (room for the 64 Ki characters
/// MCP `plan_task` accepts).
pub const MAX_INSTRUCTIONS_BYTES: usize = 256 * 1024;

/// Why a text was refused. Displays as the end of a sentence that starts
/// with what the text is: `stage name` + ` is 300 bytes, longer than …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextError {
    /// Empty, or only whitespace.
    Empty,
    /// More than `max` bytes.
    TooLong { bytes: usize, max: usize },
    /// A character that this kind of text may not hold, at byte `at`.
    Forbidden { character: char, at: usize },
}

impl fmt::Display for TextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TextError::Empty => f.write_str("is empty"),
            TextError::TooLong { bytes, max } => {
                write!(f, "is {bytes} bytes, longer than the {max}-byte limit")
            }
            TextError::Forbidden { character, at } => write!(
                f,
                "contains the control character U+{:04X} at byte {at}; {}",
                u32::from(*character),
                if *character == '\0' {
                    "NUL cannot be stored"
                } else {
                    "names may only hold printable characters"
                }
            ),
        }
    }
}

impl std::error::Error for TextError {}

/// A name: not blank, at most `max` bytes, no control characters.
pub fn check_name(value: &str, max: usize) -> Result<(), TextError> {
    check_length(value, max)?;
    if value.trim().is_empty() {
        return Err(TextError::Empty);
    }
    match value.char_indices().find(|(_, c)| c.is_control()) {
        Some((at, character)) => Err(TextError::Forbidden { character, at }),
        None => Ok(()),
    }
}

/// Free text: at most `max` bytes, no NUL (may be empty; callers that need
/// content check that themselves).
pub fn check_text(value: &str, max: usize) -> Result<(), TextError> {
    check_length(value, max)?;
    match value.find('\0') {
        Some(at) => Err(TextError::Forbidden {
            character: '\0',
            at,
        }),
        None => Ok(()),
    }
}

fn check_length(value: &str, max: usize) -> Result<(), TextError> {
    if value.len() > max {
        return Err(TextError::TooLong {
            bytes: value.len(),
            max,
        });
    }
    Ok(())
}

/// `text` safe to print on a terminal: every control character (ESC, CR,
/// BEL, NUL, …) replaced by its escape (`\u{1b}`), newlines and tabs too, so
/// the text stays on one line and cannot move the cursor or recolour the
/// screen. Text without control characters is returned as is.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}
