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
//! **Invariant 4:** a text accepted here is stored alike by SQLite and
//! PostgreSQL (PostgreSQL `text` cannot hold NUL, SQLite can: without this
//! check the two backends would disagree), and a text refused here is refused
//! before anything is written, with the same sentence on every path.
//!
//! Guest text (what a handler returns, logs or describes) is neither: it is
//! not refused for its characters, since it reports what went wrong. It is
//! bounded with [`cut`] before it is stored, [`storable`] escapes the one
//! character the two databases disagree on (NUL) as it is written, and
//! [`printable`] escapes every control character before it is printed. What
//! a handler hands back is bounded by the `MAX_*` limits below (errors,
//! spawns, JSON depth).
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

/// Longest error text of a task attempt that is stored, in bytes (a guest's
/// own message, a trap with its panic message): longer ones are cut (see
/// [`cut`]) before they reach the database, so a retried task adds at most
/// this much per attempt.
pub const MAX_ERROR_BYTES: usize = 4 * 1024;

/// Most tasks one task may spawn (in one successful run).
pub const MAX_SPAWNS_PER_TASK: usize = 10_000;

/// Most bytes of input (JSON text) the tasks spawned by one task may hold
/// together; each one also meets `--max-input-bytes`.
pub const MAX_SPAWNED_BYTES_PER_TASK: usize = 16 << 20;

/// Deepest nesting of arrays and objects accepted in task inputs and
/// outputs: well inside what the guest SDK's JSON parser reads (serde_json
/// stops at 128), so an accepted value can always be read back.
pub const MAX_JSON_DEPTH: usize = 64;

/// Longest request a handler may send the agent that called it (the WIT
/// `agent` import: the JSON of a `sampling/createMessage` or
/// `elicitation/create` request's params). Checked on the copy the host
/// took, before it is parsed or sent.
pub const MAX_AGENT_REQUEST_BYTES: usize = 1 << 20;

/// Longest answer of an agent handed to the handler that asked (the JSON
/// of the client's result). Checked where the answer is written as JSON,
/// and again by the plugin host before the guest gets it.
pub const MAX_AGENT_ANSWER_BYTES: usize = 1 << 20;

/// `text` bounded to `max_bytes`: text that fits is returned as is, longer
/// text is cut (at a character boundary) and ends in ` [cut: N bytes]`
/// naming its full length, the whole at most `max_bytes` — so cutting again
/// changes nothing. The one way guest text is bounded before it is stored.
pub fn cut(mut text: String, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text;
    }
    let marker = format!(" [cut: {} bytes]", text.len());
    let mut at = max_bytes.saturating_sub(marker.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    text.truncate(at);
    text.push_str(&marker);
    text
}

/// Whether `json` nests arrays and objects at most `max` levels deep.
/// Counts brackets outside string literals without parsing (and without
/// recursion), so a hostile value a million levels deep costs one pass; it
/// does not check that the text is JSON.
pub fn check_json_depth(json: &str, max: usize) -> Result<(), JsonTooDeep> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for b in json.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(JsonTooDeep { max });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// A JSON value nested deeper than the limit. Displays as the end of a
/// sentence: `output` + ` nests arrays and objects more than 64 levels deep`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonTooDeep {
    pub max: usize,
}

impl fmt::Display for JsonTooDeep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "nests arrays and objects more than {} levels deep",
            self.max
        )
    }
}

impl std::error::Error for JsonTooDeep {}

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// A byte count as people read it (`512 bytes`, `3 KiB`, `2.1 MiB`): the
/// value in tenths of the unit as displayed, the unit, and the text.
fn shown_size(bytes: u64) -> (u64, &'static str, String) {
    let (unit, name) = if bytes >= MIB {
        (MIB, "MiB")
    } else if bytes >= KIB {
        (KIB, "KiB")
    } else {
        return (bytes * 10, "bytes", format!("{bytes} bytes"));
    };
    // Tenths of the unit, rounded half up, as the text shows them.
    let tenths = (u128::from(bytes) * 10 + u128::from(unit) / 2) / u128::from(unit);
    let tenths = u64::try_from(tenths).unwrap_or(u64::MAX);
    let text = if bytes.is_multiple_of(unit) {
        format!("{} {name}", bytes / unit)
    } else {
        format!("{}.{} {name}", tenths / 10, tenths % 10)
    };
    (tenths, name, text)
}

/// A size and the limit it exceeds, rounded for people unless rounding would
/// make them look equal (`1.0 MiB, larger than the 1 MiB limit`), in which
/// case both are given in bytes.
pub fn sizes_for_comparison(size: u64, limit: u64) -> (String, String) {
    let (size_tenths, size_unit, size_text) = shown_size(size);
    let (limit_tenths, limit_unit, limit_text) = shown_size(limit);
    if size_unit == limit_unit && size_tenths <= limit_tenths {
        (format!("{size} bytes"), format!("{limit}-byte"))
    } else {
        (size_text, limit_text)
    }
}

/// A byte count as people read it: `512 bytes`, `3 KiB`, `2.1 MiB`.
pub fn show_bytes(bytes: u64) -> String {
    shown_size(bytes).2
}

/// Guest text as the store writes it: each NUL replaced by its escape
/// (`\u{0}`, as [`printable`] writes it). PostgreSQL `text` cannot hold NUL
/// and refuses the whole statement (with it a whole group of completions);
/// SQLite stores it. Escaped, both backends store and return the same text.
/// Other control characters are kept: they are escaped when printed.
pub fn storable(text: String) -> String {
    if !text.contains('\0') {
        return text;
    }
    text.replace('\0', "\\u{0}")
}
