//! The operator's grants for one plugin: `<stem>.toml` beside `<stem>.wasm`.
//!
//! Grants come from the operator, never from the plugin. Without a grants
//! file a plugin gets nothing: no directories, no env, no network, 64 MiB of
//! memory, 30 s per attempt, 5 attempts, outputs of at most 1 MiB, and as many
//! concurrent runs as the machine has CPUs. The format (top-level keys first, then any number of
//! `[[dirs]]` tables, as TOML requires):
//!
//! ```toml
//! env = ["LANG"]               # host env vars passed through by name
//! network = ["127.0.0.1:8080"] # outbound ip:port allow-list
//! memory_mib = 64
//! timeout_ms = 30000
//! max_attempts = 5
//! concurrency = 8
//! max_output_bytes = 1048576
//!
//! [[dirs]]
//! host = "data"   # relative to the grants file's directory, or absolute
//! guest = "/data" # absolute path the guest sees
//! mode = "ro"     # "ro" (default) or "rw"
//! ```
//!
//! **Invariants:** unknown keys are errors (a typo must not silently grant
//! less, or more); every error names the file, the line and column, and the
//! field. A granted directory must exist and be a directory when the plugin
//! loads; it is opened through cap-std for every run, so `..` and symlinks
//! cannot leave it.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// Default memory limit per instance.
pub const DEFAULT_MEMORY_MIB: u32 = 64;
/// Default time limit per attempt.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Default number of attempts of a task.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// The largest memory grant accepted (the pooling allocator reserves address
/// space for the largest grant of a host, so keep it a 32-bit memory).
pub const MAX_MEMORY_MIB: u32 = 4_096;
/// The longest time limit accepted (one day).
pub const MAX_TIMEOUT_MS: u64 = 86_400_000;
/// The most concurrent runs one plugin may be granted.
pub const MAX_CONCURRENCY: u32 = 1_024;
/// Default largest task output (JSON text) a handler may return.
pub const DEFAULT_MAX_OUTPUT_BYTES: u32 = 1 << 20;
/// The largest output limit a grant may set: outputs are stored, read back
/// by later stages and copied a few times on the way.
pub const MAX_OUTPUT_BYTES: u32 = 64 << 20;

/// A grants file could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum GrantsError {
    #[error("cannot read grants file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("grants file {path} line {line}, column {column}: {message}{hint}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
        hint: &'static str,
    },
    #[error("grants file {path} line {line}, column {column}: field `{field}` {problem}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        field: String,
        problem: String,
    },
    #[error(
        "grants file {path} line {line}, column {column}: directory {host} (field `{field}`) cannot be opened: {source}; create it or fix the grant"
    )]
    MissingDir {
        path: PathBuf,
        line: usize,
        column: usize,
        field: String,
        host: PathBuf,
        source: std::io::Error,
    },
}

/// Access mode of a granted directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum DirMode {
    /// Read-only: files and directories can be read, nothing can be created,
    /// written, renamed or removed.
    #[default]
    #[serde(rename = "ro")]
    ReadOnly,
    /// Read-write.
    #[serde(rename = "rw")]
    ReadWrite,
}

impl DirMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DirMode::ReadOnly => "ro",
            DirMode::ReadWrite => "rw",
        }
    }
}

/// One granted directory, with its host path resolved to an absolute path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirGrant {
    pub host: PathBuf,
    pub guest: String,
    pub mode: DirMode,
}

/// Everything the operator granted one plugin, with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grants {
    /// The grants file these came from; `None` when there is none.
    pub file: Option<PathBuf>,
    pub dirs: Vec<DirGrant>,
    /// Names of host env vars passed through (only those set at load time
    /// are passed; see [`Grants::env_values`]).
    pub env: Vec<String>,
    pub network: Vec<SocketAddr>,
    pub memory_mib: u32,
    pub timeout_ms: u64,
    pub max_attempts: u32,
    pub concurrency: u32,
    /// Largest output (JSON text) a run may return.
    pub max_output_bytes: u32,
}

impl Default for Grants {
    fn default() -> Self {
        Self {
            file: None,
            dirs: Vec::new(),
            env: Vec::new(),
            network: Vec::new(),
            memory_mib: DEFAULT_MEMORY_MIB,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            concurrency: default_concurrency(),
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        }
    }
}

/// Number of CPUs, the default concurrency of a plugin.
pub fn default_concurrency() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

// Values are `Spanned` so a checked-but-wrong value is reported at its line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantsFile {
    #[serde(default)]
    dirs: Vec<DirEntry>,
    #[serde(default)]
    env: Vec<Spanned<String>>,
    #[serde(default)]
    network: Vec<Spanned<String>>,
    memory_mib: Option<Spanned<u32>>,
    timeout_ms: Option<Spanned<u64>>,
    max_attempts: Option<Spanned<u32>>,
    concurrency: Option<Spanned<u32>>,
    max_output_bytes: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DirEntry {
    host: Spanned<PathBuf>,
    guest: Spanned<String>,
    #[serde(default)]
    mode: DirMode,
}

impl Grants {
    /// The grants file that belongs to a plugin file: `<stem>.toml` in the
    /// same directory.
    pub fn file_for(wasm: &Path) -> PathBuf {
        wasm.with_extension("toml")
    }

    /// Load the grants of the plugin at `wasm`: defaults when there is no
    /// grants file, the parsed and checked file otherwise.
    pub fn load_for(wasm: &Path) -> Result<Grants, GrantsError> {
        use super::discovery::{FileError, MAX_GRANTS_FILE_BYTES, read_regular_file};
        let path = Self::file_for(wasm);
        let read = |source: std::io::Error| GrantsError::Read {
            path: path.clone(),
            source,
        };
        match read_regular_file(&path, MAX_GRANTS_FILE_BYTES) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => Self::parse(&path, &text),
                Err(e) => Err(read(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    e.utf8_error(),
                ))),
            },
            Err(FileError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(Grants::default())
            }
            Err(FileError::Io(e)) => Err(read(e)),
            Err(other) => Err(read(std::io::Error::other(other.to_string()))),
        }
    }

    /// Parse and check the text of the grants file at `path` (relative host
    /// directories are resolved against `path`'s directory).
    pub fn parse(path: &Path, text: &str) -> Result<Grants, GrantsError> {
        let file: GrantsFile = toml::from_str(text).map_err(|e| syntax_error(path, text, &e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let at = |span: std::ops::Range<usize>| line_column(text, span.start);
        let invalid = |span: std::ops::Range<usize>, field: String, problem: String| {
            let (line, column) = at(span);
            GrantsError::Invalid {
                path: path.to_owned(),
                line,
                column,
                field,
                problem,
            }
        };

        let mut dirs = Vec::with_capacity(file.dirs.len());
        for (i, d) in file.dirs.into_iter().enumerate() {
            let guest_span = d.guest.span();
            let guest = d.guest.into_inner();
            if !guest.starts_with('/') {
                return Err(invalid(
                    guest_span,
                    format!("dirs[{i}].guest"),
                    format!("is {guest:?}; it must be an absolute guest path such as \"/data\""),
                ));
            }
            if dirs.iter().any(|g: &DirGrant| g.guest == guest) {
                return Err(invalid(
                    guest_span,
                    format!("dirs[{i}].guest"),
                    format!("grants {guest:?} twice; each guest path may be granted once"),
                ));
            }
            let host_span = d.host.span();
            let host = d.host.into_inner();
            let host = if host.is_absolute() {
                host
            } else {
                base.join(host)
            };
            // Open it the way the sandbox will, so a missing or unreadable
            // directory is a load error naming the path, not a failed run.
            match cap_std::fs::Dir::open_ambient_dir(&host, cap_std::ambient_authority()) {
                Ok(_) => {}
                Err(source) => {
                    let (line, column) = at(host_span);
                    return Err(GrantsError::MissingDir {
                        path: path.to_owned(),
                        line,
                        column,
                        field: format!("dirs[{i}].host"),
                        host,
                        source,
                    });
                }
            }
            let host = std::fs::canonicalize(&host).unwrap_or(host);
            dirs.push(DirGrant {
                host,
                guest,
                mode: d.mode,
            });
        }

        let mut env = Vec::with_capacity(file.env.len());
        for (i, name) in file.env.into_iter().enumerate() {
            let span = name.span();
            let name = name.into_inner();
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(invalid(
                    span,
                    format!("env[{i}]"),
                    format!("is {name:?}, which is not an environment variable name"),
                ));
            }
            env.push(name);
        }

        let mut network = Vec::with_capacity(file.network.len());
        for (i, entry) in file.network.iter().enumerate() {
            match entry.get_ref().parse::<SocketAddr>() {
                Ok(addr) => network.push(addr),
                Err(_) => {
                    return Err(invalid(
                        entry.span(),
                        format!("network[{i}]"),
                        format!(
                            "is {:?}; write an IP address and port such as \"127.0.0.1:8080\" (name lookup is not available to plugins)",
                            entry.get_ref()
                        ),
                    ));
                }
            }
        }

        // A present-but-out-of-range number is reported at its own line.
        let bounded_u32 = |value: &Option<Spanned<u32>>,
                           field: &str,
                           default: u32,
                           min: u32,
                           max: u32,
                           why: &str|
         -> Result<u32, GrantsError> {
            match value {
                None => Ok(default),
                Some(v) if (min..=max).contains(v.get_ref()) => Ok(*v.get_ref()),
                Some(v) => Err(invalid(
                    v.span(),
                    field.to_owned(),
                    format!("is {}; {why}", v.get_ref()),
                )),
            }
        };
        let memory_mib = bounded_u32(
            &file.memory_mib,
            "memory_mib",
            DEFAULT_MEMORY_MIB,
            1,
            MAX_MEMORY_MIB,
            &format!("it must be between 1 and {MAX_MEMORY_MIB}"),
        )?;
        let max_attempts = bounded_u32(
            &file.max_attempts,
            "max_attempts",
            DEFAULT_MAX_ATTEMPTS,
            1,
            u32::MAX,
            "a task needs at least 1 attempt",
        )?;
        let concurrency = bounded_u32(
            &file.concurrency,
            "concurrency",
            default_concurrency(),
            1,
            MAX_CONCURRENCY,
            &format!("it must be between 1 and {MAX_CONCURRENCY}"),
        )?;
        let max_output_bytes = bounded_u32(
            &file.max_output_bytes,
            "max_output_bytes",
            DEFAULT_MAX_OUTPUT_BYTES,
            2,
            MAX_OUTPUT_BYTES,
            &format!("it must be between 2 and {MAX_OUTPUT_BYTES}"),
        )?;
        let timeout_ms = match &file.timeout_ms {
            None => DEFAULT_TIMEOUT_MS,
            Some(v) if (1..=MAX_TIMEOUT_MS).contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                return Err(invalid(
                    v.span(),
                    "timeout_ms".into(),
                    format!(
                        "is {}; it must be between 1 and {MAX_TIMEOUT_MS}",
                        v.get_ref()
                    ),
                ));
            }
        };

        Ok(Grants {
            file: Some(path.to_owned()),
            dirs,
            env,
            network,
            memory_mib,
            timeout_ms,
            max_attempts,
            concurrency,
            max_output_bytes,
        })
    }

    /// The memory limit in bytes.
    pub fn memory_bytes(&self) -> u64 {
        u64::from(self.memory_mib) << 20
    }

    /// The time limit of one attempt.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The granted env vars that are set in the host environment now, with
    /// their values (unset or non-UTF-8 ones are left out).
    pub fn env_values(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .filter_map(|name| std::env::var(name).ok().map(|v| (name.clone(), v)))
            .collect()
    }

    /// A one-line summary for `plugins list`, e.g.
    /// `dirs: /data=ro; env: LANG; network: none; memory 64 MiB; timeout 30s; attempts 5; concurrency 2`.
    pub fn summary(&self) -> String {
        let dirs = if self.dirs.is_empty() {
            "none".to_owned()
        } else {
            self.dirs
                .iter()
                .map(|d| format!("{}={} ({})", d.guest, d.mode.as_str(), d.host.display()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let env = if self.env.is_empty() {
            "none".to_owned()
        } else {
            self.env.join(", ")
        };
        let network = if self.network.is_empty() {
            "none".to_owned()
        } else {
            self.network
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "dirs: {dirs}; env: {env}; network: {network}; memory {} MiB; timeout {}; attempts {}; concurrency {}; output {}",
            self.memory_mib,
            format_duration(self.timeout()),
            self.max_attempts,
            self.concurrency,
            crate::limits::show_bytes(u64::from(self.max_output_bytes))
        )
    }
}

/// `1.5s`, `500ms`, `2s`: how deadlines are named in messages.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms >= 1000 && ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms >= 1000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{ms}ms")
    }
}

/// Turn a TOML error into one sentence naming file, line, column and field.
fn syntax_error(path: &Path, text: &str, e: &toml::de::Error) -> GrantsError {
    let (line, column) = match e.span() {
        Some(span) => line_column(text, span.start),
        None => (1, 1),
    };
    let message = e.message().trim().to_owned();
    // Keys written after a `[[dirs]]` header belong to that table in TOML;
    // the resulting "unknown field" is confusing without saying so.
    let hint = if message.contains("unknown field")
        && [
            "env",
            "network",
            "memory_mib",
            "timeout_ms",
            "max_attempts",
            "concurrency",
            "max_output_bytes",
        ]
        .iter()
        .any(|k| message.contains(&format!("`{k}`")))
        && message.contains("`host`")
    {
        " (top-level keys must come before the first [[dirs]] table)"
    } else {
        ""
    };
    GrantsError::Syntax {
        path: path.to_owned(),
        line,
        column,
        message,
        hint,
    }
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.chars().count(), |nl| {
        before[nl + 1..].chars().count()
    }) + 1;
    (line, column)
}
