//! Turning job text (TOML or JSON) into a [`JobSpec`], with errors that say
//! where: `file:line:column` for text, a JSON pointer for a JSON value.
//!
//! Invariant: the size limit is checked before any parsing, and a file is
//! read through a bounded reader, so an oversized or endless file (a pipe,
//! `/dev/zero`) costs at most `max_spec_bytes + 1` bytes of memory.

use super::model::JobSpec;
use super::{Limits, SpecError, TextLocation};
use std::fmt;
use std::io::Read;
use std::path::Path;

/// The text format of a job spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Json,
}

impl Format {
    /// The format named by a file's extension (`.toml` or `.json`, any case).
    pub fn from_path(path: &Path) -> Result<Format, SpecError> {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match extension.as_deref() {
            Some("toml") => Ok(Format::Toml),
            Some("json") => Ok(Format::Json),
            _ => Err(SpecError::UnsupportedExtension {
                path: path.display().to_string(),
            }),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Toml => "TOML",
            Format::Json => "JSON",
        })
    }
}

/// Reads and parses a job file; the extension picks the format. Errors name
/// the file as given.
pub fn parse_job_file(path: &Path, limits: &Limits) -> Result<JobSpec, SpecError> {
    let format = Format::from_path(path)?;
    let origin = path.display().to_string();
    let read_error = |source| SpecError::Read {
        path: origin.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    // A regular file says how large it is; a stream only that it goes on.
    let file_size = file
        .metadata()
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len());
    let mut bytes = Vec::new();
    file.take(limits.max_spec_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > limits.max_spec_bytes {
        return Err(SpecError::SpecTooLarge {
            origin: Some(origin),
            size: file_size.filter(|&size| size > limits.max_spec_bytes),
            limit: limits.max_spec_bytes,
        });
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let prefix = String::from_utf8_lossy(&e.as_bytes()[..valid]).into_owned();
        SpecError::Malformed {
            format,
            location: TextLocation {
                origin: Some(origin.clone()),
                line_column: Some(line_column(&prefix, valid)),
            },
            message: "the file is not UTF-8 text".to_string(),
        }
    })?;
    parse_text(&text, format, Some(&origin))
}

/// Parses job text in the given format. Errors give the line and column.
pub fn parse_job_str(text: &str, format: Format, limits: &Limits) -> Result<JobSpec, SpecError> {
    check_spec_size(text.len(), limits)?;
    parse_text(text, format, None)
}

/// Reads a job spec from an already parsed JSON value (MCP `submit_job`).
/// Errors give a JSON pointer to the offending field.
pub fn parse_job_value(value: serde_json::Value) -> Result<JobSpec, SpecError> {
    serde_path_to_error::deserialize::<_, JobSpec>(value).map_err(|e| {
        let pointer = json_pointer(e.path());
        SpecError::invalid(pointer, plain_message(&e.into_inner().to_string()))
    })
}

fn check_spec_size(size: usize, limits: &Limits) -> Result<(), SpecError> {
    let size = u64::try_from(size).unwrap_or(u64::MAX);
    if size > limits.max_spec_bytes {
        return Err(SpecError::SpecTooLarge {
            origin: None,
            size: Some(size),
            limit: limits.max_spec_bytes,
        });
    }
    Ok(())
}

fn parse_text(text: &str, format: Format, origin: Option<&str>) -> Result<JobSpec, SpecError> {
    parse_typed(text, format, origin)
}

/// Parses text of any file language of `spec` (job files, pipelines), with
/// `file:line:column` errors.
pub(crate) fn parse_typed<T: serde::de::DeserializeOwned>(
    text: &str,
    format: Format,
    origin: Option<&str>,
) -> Result<T, SpecError> {
    let malformed = |line_column, message: &str| SpecError::Malformed {
        format,
        location: TextLocation {
            origin: origin.map(str::to_owned),
            line_column,
        },
        message: plain_message(message),
    };
    match format {
        Format::Toml => toml::from_str::<T>(text)
            .map_err(|e| malformed(e.span().map(|s| line_column(text, s.start)), e.message())),
        Format::Json => serde_json::from_str::<T>(text).map_err(|e| {
            let full = e.to_string();
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            let message = full.strip_suffix(&suffix).unwrap_or(&full);
            let at = (e.line() > 0).then(|| (e.line(), e.column().max(1)));
            malformed(at, message)
        }),
    }
}

/// 1-based line and character column of byte `offset` in `text`.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// serde's messages quote names in backticks and list the accepted names
/// the same way; people read `unknown field "hander", expected one of
/// handler, input, key` more easily. The first quoted name (the offending
/// one) keeps double quotes; the names listed after "expected" go bare.
fn plain_message(message: &str) -> String {
    // The parsers quote offending text (an unknown field's name) verbatim; a
    // hostile spec could make that a megabyte long.
    const MAX_CHARS: usize = 400;
    let mut message = message.trim_end().trim_end_matches('.');
    if let Some((cut, _)) = message.char_indices().nth(MAX_CHARS) {
        message = &message[..cut];
    }
    let Some((head, expected)) = message.split_once(", expected ") else {
        return message.replace('`', "\"");
    };
    let listing = head.starts_with("unknown field") || head.starts_with("unknown variant");
    let expected = if listing {
        expected.replace('`', "")
    } else {
        expected.replace('`', "\"")
    };
    format!("{}, expected {expected}", head.replace('`', "\""))
}

/// A serde_path_to_error path as a JSON pointer (`/stages/0/tasks/2/input`).
fn json_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut pointer = String::new();
    for segment in path.iter() {
        pointer.push('/');
        match segment {
            Segment::Seq { index } => pointer.push_str(&index.to_string()),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                pointer.push_str(&key.replace('~', "~0").replace('/', "~1"))
            }
            Segment::Unknown => pointer.push('?'),
        }
    }
    pointer
}
