//! Job files: parsing TOML/JSON job specs and validating them into a
//! [`SubmitJob`](crate::model::SubmitJob) ready for the store; and the other
//! requests that become jobs: plans ([`plan`]), checked field by field
//! ([`field`]).
//!
//! Owns the job file language ([`JobSpec`] and friends, whose JSON Schema
//! [`job_spec_json_schema`] publishes), where errors point (line and column
//! for malformed text, a JSON pointer such as `/stages/1/tasks/3/depends_on/0`
//! for anything else), and the rules a job must satisfy before anything is
//! written: unique stage names and task keys, dependencies only inside a
//! stage and without cycles, registered handlers, inputs that match their
//! handler's schema, and size limits.
//!
//! **Invariant 5:** these are pure functions — the only I/O is reading the job
//! file in [`parse_job_file`]; no database is touched (the store inserts the
//! result in one transaction). A [`SubmitJob`](crate::model::SubmitJob) is
//! only ever produced by [`validate`], so every job the store sees passed
//! every rule above. Every error is one sentence saying what is wrong, where,
//! and, where there is a choice, what to do.

mod canonical;
mod catalog;
pub mod field;
mod model;
mod parse;
pub mod pipeline;
pub mod plan;
mod validate;

pub use canonical::{canonical_json, canonical_spec_json, default_idempotency_key};
pub use catalog::{HandlerCatalog, InvalidSchema, SchemaCatalog};
pub use field::FieldError;
pub use model::{JobSpec, MAX_TIMEOUT_MS, StageSpec, TaskInput, TaskSpec, Timeout};
pub use parse::{Format, parse_job_file, parse_job_str, parse_job_value};
pub use validate::{
    AGENT_HANDLER, DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT_MS, load_job_file, validate,
    validate_owned,
};

use crate::limits::show_bytes;
pub(crate) use crate::limits::sizes_for_comparison;
use std::fmt;

/// Size limits enforced at submit. Operators raise them with the CLI flags
/// named in the errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest task input, as compact JSON (`--max-input-bytes`).
    pub max_input_bytes: u64,
    /// Most tasks a job may hold, spawned ones included (`--max-tasks-per-job`).
    pub max_tasks_per_job: u64,
    /// Largest job file or job text (`--max-spec-bytes`).
    pub max_spec_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_input_bytes: 1 << 20,
            max_tasks_per_job: 100_000,
            max_spec_bytes: 64 << 20,
        }
    }
}

/// Where in a text an error is: a file name and/or a line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextLocation {
    /// The file as the user named it; `None` for text that came from no file.
    pub origin: Option<String>,
    /// 1-based line and column (in characters), when known.
    pub line_column: Option<(usize, usize)>,
}

impl fmt::Display for TextLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.origin, self.line_column) {
            (Some(origin), Some((line, column))) => write!(f, "{origin}:{line}:{column}"),
            (Some(origin), None) => f.write_str(origin),
            (None, Some((line, column))) => write!(f, "line {line}, column {column}"),
            (None, None) => f.write_str("job spec"),
        }
    }
}

/// Why a job spec was refused. Every variant displays as one sentence that
/// says where the problem is.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The job file could not be read.
    #[error("cannot read job file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file name does not say whether it is TOML or JSON.
    #[error("{path}: job files must end in .toml or .json")]
    UnsupportedExtension { path: String },
    /// The job text is larger than [`Limits::max_spec_bytes`]; `size` is
    /// unknown for a stream (only that it is larger).
    #[error("{}", too_large_message(origin.as_deref(), *size, *limit))]
    SpecTooLarge {
        origin: Option<String>,
        size: Option<u64>,
        limit: u64,
    },
    /// The text is not valid TOML/JSON, or does not have the shape of a job
    /// spec (unknown field, wrong type, missing field).
    #[error("{location}: {message}")]
    Malformed {
        format: Format,
        location: TextLocation,
        message: String,
    },
    /// The spec is well-formed but breaks a rule; `pointer` is a JSON pointer
    /// into the spec (e.g. `/stages/1/tasks/3/depends_on/0`; empty for the
    /// spec as a whole).
    #[error("{}: {message}", if pointer.is_empty() { "job spec" } else { pointer })]
    Invalid { pointer: String, message: String },
    /// A rule broken by the spec in a named file.
    #[error("{path}: {source}")]
    InFile {
        path: String,
        #[source]
        source: Box<SpecError>,
    },
}

impl SpecError {
    pub(crate) fn invalid(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError::Invalid {
            pointer: pointer.into(),
            message: message.into(),
        }
    }
}

fn too_large_message(origin: Option<&str>, size: Option<u64>, limit: u64) -> String {
    let what = match origin {
        Some(origin) => format!("{origin}: job file"),
        None => "job spec".to_string(),
    };
    let size = match size {
        Some(size) => {
            let (size, limit) = sizes_for_comparison(size, limit);
            format!("is {size}, larger than the {limit} limit")
        }
        None => format!("is larger than the {} limit", show_bytes(limit)),
    };
    format!("{what} {size} (raise it with --max-spec-bytes)")
}

/// The JSON Schema of a job spec, as published by the MCP server for
/// `submit_job`.
pub fn job_spec_json_schema() -> serde_json::Value {
    serde_json::Value::from(schemars::schema_for!(JobSpec))
}
