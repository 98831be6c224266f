//! The WebAssembly plugin host: finds plugins, compiles them (with an
//! on-disk cache), sandboxes them and runs their handlers.
//!
//! One module per concern:
//! - [`bindings`]: the WIT world `plugin` as Rust types.
//! - [`discovery`]: where plugins and the cache live; which files are plugins.
//! - [`grants`]: the operator's `<stem>.toml` beside `<stem>.wasm`.
//! - [`cache`]: the compile cache (verified, rebuilt when corrupt).
//! - [`sandbox`]: the engine, its pooling limits and the epoch ticker.
//! - [`instance_state`]: what one run owns (WASI context, limiter, deadline).
//! - [`guest_output`]: captured, bounded guest stdout/stderr.
//! - [`context`]: [`TaskContext`], the host services a handler can call
//!   (and [`AskKind`]: what it may ask the agent that called it).
//! - [`registry`]: handler names, schemas, input validation.
//! - [`host`]: [`PluginHost`]: loading and running.
//! - [`failure`]: [`RunFailure`], why a run failed.
//! - [`inspect`]: `plugins list` and `exec`.
//! - [`command`], [`command_output`]: `wasi:cli/command` components (CI
//!   steps, test binaries): loading, running, streamed bounded output.
//! - [`check`]: `plugins check`, whether a file is a plugin this host loads.
//! - [`oci`]: `plugins pull`/`push`, the wasm OCI layout, every digest
//!   verified before a byte is written.
//! - [`trust`]: directory modes, `plugins.lock` pins and minisign signatures,
//!   checked before a file is compiled.
//!
//! **Invariants 16, 19 and 17:** a plugin gets nothing the operator did not
//! grant; there is no fallback handler; a guest can fail only its own attempt.

pub mod bindings;
pub mod cache;
pub mod check;
pub mod command;
pub mod command_output;
pub mod context;
pub mod discovery;
pub mod failure;
pub mod grants;
pub mod guest_output;
pub mod host;
pub mod inspect;
pub(crate) mod instance_state;
pub mod oci;
pub use instance_state::{MAX_LOG_LINES, MAX_LOG_MESSAGE};
pub mod registry;
pub mod sandbox;
pub mod trust;

pub use bindings::WIT;
pub use cache::CacheStats;
pub use check::{CheckReport, check_file};
pub use command::{CommandEnd, CommandHost, CommandLoadError, Invocation, LoadedCommand, Preopen};
pub use command_output::{
    OutputChunk, OutputLimits, OutputReceiver, OutputSender, StreamKind, output_channel,
};
pub use context::{
    AskError, AskKind, LogLevel, MAX_RELEASE_RETRY, NO_JOB_CONTEXT, STAGE_RESULTS_PAGE_BYTES,
    STAGE_RESULTS_PAGE_MAX, StandaloneContext, TaskContext,
};
pub use discovery::{resolve_cache_dir, resolve_plugin_dirs};
pub use failure::RunFailure;
pub use grants::{DirGrant, DirMode, Grants, GrantsError};
pub use host::{
    DESCRIBE_TIMEOUT, HostConfig, LoadFailure, LoadReport, MAX_DESCRIBE_BYTES,
    MAX_DESCRIPTION_BYTES, MAX_HANDLERS_PER_PLUGIN, MAX_SCHEMA_BYTES, PluginHost, RunOutcome,
    RunRequest, Spawn,
};
pub use inspect::{ExecError, HandlerListing};
pub use registry::{
    HandlerInfo, InputError, McpArgument, McpPrompt, McpResource, McpResult, McpTool,
    UnknownHandler,
};
pub use trust::{TrustError, TrustPolicy};

use std::path::PathBuf;

/// A load that failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error(
        "cannot read plugin directory {}: {source}; pass --plugins DIR or set LOCKSTEP_PLUGINS",
        .path.display()
    )]
    PluginDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot choose a compile cache directory: neither XDG_CACHE_HOME nor HOME is set; pass --cache-dir DIR or set LOCKSTEP_CACHE_DIR"
    )]
    NoCacheDir,
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error("{} (strict mode makes this fatal)", join_failures(.0))]
    Strict(Vec<LoadFailure>),
}

fn join_failures(failures: &[LoadFailure]) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
