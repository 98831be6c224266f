//! Checks of one named field of a request that is not a job file — a plan,
//! an MCP tool's arguments — and the error that names the field
//! (`subtasks[2].title: is empty`), plus the one translation of a job
//! spec's JSON pointer into such a field path.
//!
//! The byte limits and character rules themselves are [`crate::limits`];
//! these add the field's name, blank-text refusal and a limit in characters.

/// A field that is wrong: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// `job_id`, `subtasks[3].depends_on[0]`, … (the request as a whole: `arguments`).
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A required text: not blank, at most `max` characters.
pub fn text(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.trim().is_empty() {
        return Err(FieldError::new(field, "is empty"));
    }
    bounded(field, value, max)
}

/// An optional text: when present, not blank and at most `max` characters.
pub fn optional_text(field: &str, value: Option<&str>, max: usize) -> Result<(), FieldError> {
    match value {
        Some(v) => text(field, v, max),
        None => Ok(()),
    }
}

/// A required name (specialist, key, kind): not blank, at most `max`
/// characters, no control characters (see [`crate::limits`]).
pub fn name(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    text(field, value, max)?;
    crate::limits::check_name(value, usize::MAX).map_err(|e| FieldError::new(field, e.to_string()))
}

/// An optional name: when present, as [`name`].
pub fn optional_name(field: &str, value: Option<&str>, max: usize) -> Result<(), FieldError> {
    match value {
        Some(v) => name(field, v, max),
        None => Ok(()),
    }
}

/// At most `max` characters (may be empty), and no NUL, which one backend
/// would store and the other refuse (see [`crate::limits`]).
pub fn bounded(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    // Bytes bound characters from above, so most values skip the count.
    if value.len() > max && value.chars().count() > max {
        return Err(FieldError::new(
            field,
            format!("is longer than {max} characters"),
        ));
    }
    crate::limits::check_text(value, usize::MAX).map_err(|e| FieldError::new(field, e.to_string()))
}

/// A JSON pointer into a request (`/stages/1/tasks/0`) as a field path under
/// `root` (`job.stages[1].tasks[0]`; an empty `root` gives `stages[1].tasks[0]`).
pub fn pointer_field(root: &str, pointer: &str) -> String {
    let mut field = root.to_string();
    for part in pointer.split('/').filter(|p| !p.is_empty()) {
        let part = part.replace("~1", "/").replace("~0", "~");
        if part.chars().all(|c| c.is_ascii_digit()) {
            field.push_str(&format!("[{part}]"));
        } else {
            if !field.is_empty() {
                field.push('.');
            }
            field.push_str(&part);
        }
    }
    field
}
