//! The plugin host: loads every plugin of the configured directories into a
//! registry of handlers, and runs one task at a time per call in a fresh
//! sandbox.
//!
//! **Invariants:**
//! - Loading (Invariant 31): the plugins of a scan load concurrently. Each is read (a
//!   regular file, size-capped), compiled (through the cache), linked
//!   against the `plugin` world plus WASI 0.2 once (`PluginPre`),
//!   instantiated once to call `describe()` under its own short deadline
//!   ([`DESCRIBE_TIMEOUT`]) and byte budget, and its handler list is checked
//!   (count, sizes, names, duplicates, schemas); a component that exports
//!   the optional `mcp` interface is instantiated once more, the same way,
//!   for `tools()`, and one that exports `mcp-catalog` for `resources()`
//!   and `prompts()`; each is checked against those handlers. A plugin that fails any step
//!   is reported with its path and reason and the others still load (unless
//!   `strict`); a failed `describe()` is remembered by the compile cache.
//!   Trust ([`super::trust`]) is checked on the read bytes before they
//!   compile. Registration is in scan order: a plugin claiming a name an earlier one
//!   registered is refused as a whole and reported, and the host serves the
//!   rest.
//! - Reloading ([`PluginHost::reload`]) builds a new host beside the old
//!   one, on the same engine: unchanged plugins are the same `Arc`, a
//!   plugin that fails to reload keeps its previous version, and a task
//!   that started on the old host finishes on it (it holds the old `Arc`).
//! - Running: every attempt gets a new `Store` (fresh memory, fresh WASI
//!   context from the grants, memory limiter, epoch deadline), so nothing
//!   leaks between tasks; concurrency is bounded per plugin (its grant) and
//!   per host ([`sandbox::MAX_INSTANCES`]) by waiting, never by failing.
//! - A guest can only fail its own attempt: traps, deadlines, memory and
//!   stack exhaustion come back as a [`RunFailure`].
//! - What a guest hands back is bounded before the host copies it (Invariant 32): every
//!   call's results and host-call arguments together are limited to the
//!   store's hostcall budget ([`run_budget`]), then the output is checked
//!   against its grant (`max_output_bytes`), JSON nesting
//!   ([`limits::MAX_JSON_DEPTH`]) and validity, spawns against
//!   [`limits::MAX_SPAWNS_PER_TASK`] and [`limits::MAX_SPAWNED_BYTES_PER_TASK`],
//!   and error texts are cut to [`limits::MAX_ERROR_BYTES`].

use super::bindings::exports::lockstep::plugin::handler::TaskError;
use super::bindings::lockstep::plugin::types;
use super::bindings::mcp::exports::lockstep::plugin::mcp::{
    GuestIndices as McpIndices, ResultFormat, Tool as McpWitTool,
};
use super::bindings::mcp::exports::lockstep::plugin::mcp_catalog::{
    Argument as WitArgument, GuestIndices as CatalogIndices, Prompt as WitPrompt,
    Resource as WitResource,
};
use super::bindings::{MCP_CATALOG_EXPORT, MCP_EXPORT, Plugin, PluginPre};
use super::cache::{CacheOutcome, CacheStats, CompileCache};
use super::context::{LoadContext, TaskContext};
use super::failure::{Observed, RunFailure, classify};
use super::grants::{Grants, format_duration};
use super::instance_state::RunState;
use super::registry::{
    HandlerEntry, HandlerInfo, InputError, McpArgument, McpPrompt, McpResource, McpResult, McpTool,
    Registry, UnknownHandler, compile_schema,
};
use super::trust::{Trust, TrustPolicy};
use super::{PluginError, discovery, sandbox};
use crate::limits;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, Store, UpdateDeadline};

/// The longest a plugin's `describe()` may take at load (or its grant's
/// timeout, when that is shorter): registration must not wait for a task's
/// deadline, which a grant may set to a day.
pub const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Most handlers one plugin may provide.
pub const MAX_HANDLERS_PER_PLUGIN: usize = 1_000;

/// Longest handler description, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 4 * 1024;

/// Longest input schema (JSON text) of one handler, in bytes.
pub const MAX_SCHEMA_BYTES: usize = 256 * 1024;

/// Most bytes `describe()` may hand the host in all.
pub const MAX_DESCRIBE_BYTES: usize = 16 << 20;

/// How to load a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConfig {
    /// Directories to scan; empty means the default
    /// ([`discovery::resolve_plugin_dirs`]).
    pub dirs: Vec<PathBuf>,
    /// Compile cache directory; `None` means the default
    /// ([`discovery::resolve_cache_dir`]).
    pub cache_dir: Option<PathBuf>,
    /// Make any plugin that fails to load fatal.
    pub strict: bool,
    /// Lock, signature and key requirements ([`super::trust`]).
    pub trust: TrustPolicy,
}

impl HostConfig {
    pub fn new(dirs: Vec<PathBuf>, cache_dir: Option<PathBuf>, strict: bool) -> Self {
        Self {
            dirs,
            cache_dir,
            strict,
            trust: TrustPolicy::default(),
        }
    }
}

/// A plugin that was not loaded, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("plugin {} was not loaded: {reason}", .path.display())]
pub struct LoadFailure {
    pub path: PathBuf,
    pub reason: String,
}

/// What a load did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LoadReport {
    /// The directories scanned, in order.
    pub dirs: Vec<PathBuf>,
    /// The compile cache used.
    pub cache_dir: PathBuf,
    /// Plugins loaded, in scan order.
    pub loaded: Vec<PathBuf>,
    /// Plugins not loaded, in scan order.
    pub failures: Vec<LoadFailure>,
    /// `wasi:cli/command` components found (CI steps, test binaries),
    /// registered by file stem, in scan order.
    pub commands: Vec<PathBuf>,
    /// How the compiled components were obtained.
    pub cache: CacheStats,
}

/// One task to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRequest {
    pub handler: String,
    pub job_id: u64,
    pub task_id: u64,
    pub stage: String,
    /// 1 on the first attempt.
    pub attempt: u32,
    /// The task input as JSON text.
    pub input_json: String,
    /// The time this attempt may take; the plugin's grant caps it
    /// (`Duration::MAX` means "whatever the grant allows").
    pub timeout: Duration,
}

/// A task a handler asked to add to a later stage of its job (checked by
/// the engine: stage order, handler, input schema).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Spawn {
    pub stage: String,
    pub handler: String,
    /// Input as JSON text, as the handler wrote it.
    pub input: String,
}

/// What a successful run produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunOutcome {
    /// The output as JSON text; the host checked that it is JSON.
    pub output: String,
    pub spawn: Vec<Spawn>,
}

/// One loaded plugin.
pub(crate) struct LoadedPlugin {
    pub(crate) path: PathBuf,
    pub(crate) sha256: String,
    /// Key id of the trusted key that signed it, when verified.
    pub(crate) signer: Option<String>,
    pub(crate) grants: Grants,
    /// Granted env vars with their values, read once at load.
    env: Vec<(String, String)>,
    network: Arc<[SocketAddr]>,
    pre: PluginPre<RunState>,
    concurrency: Semaphore,
    /// What `describe()` said, with the compiled input schemas.
    handlers: Vec<(HandlerInfo, Arc<jsonschema::Validator>)>,
    /// The resources and prompts its `mcp-catalog` export offers.
    pub(crate) catalog: Catalog,
}

/// The loaded plugins and their handlers. Cheap to share (`Arc`); every
/// method takes `&self`.
pub struct PluginHost {
    dirs: Vec<PathBuf>,
    /// Shared with the hosts reloaded from this one, so a plugin that did
    /// not change (or failed to reload) keeps serving as the same instance.
    pub(crate) plugins: Vec<Arc<LoadedPlugin>>,
    pub(crate) registry: Registry,
    /// Handler-less `wasi:cli/command` components of the plugin
    /// directories, by file stem (pipelines name them).
    commands: BTreeMap<String, PathBuf>,
    /// Shared by every host reloaded from this one: the engine's instance
    /// pool is one, whichever version a running task started on.
    instance_slots: Arc<Semaphore>,
    /// The engine every plugin was compiled for, with the largest memory its
    /// pool's slots hold (a reload reuses both when its grants fit). Kept
    /// so the epoch ticker keeps ticking while the host lives.
    engine: Option<(Engine, u64)>,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("dirs", &self.dirs)
            .field("handlers", &self.handler_names())
            .finish_non_exhaustive()
    }
}

/// What one file of a plugin directory turned out to be.
enum Loaded {
    Plugin(Arc<LoadedPlugin>),
    Command,
}

/// A command component's name: its file stem.
fn command_name(path: &Path) -> String {
    path.file_stem().map_or_else(
        || path.display().to_string(),
        |s| s.to_string_lossy().into_owned(),
    )
}

/// Why a call into a guest did not return a value.
enum CallError {
    /// Building the instance failed (a trap in its start code, or the host
    /// could not provide an instance).
    Instantiate(wasmtime::Error),
    /// The export trapped or failed.
    Call(wasmtime::Error),
}

impl PluginHost {
    /// A host with no plugins (for commands that only read stored state).
    pub fn empty() -> PluginHost {
        PluginHost {
            dirs: Vec::new(),
            plugins: Vec::new(),
            registry: Registry::default(),
            commands: BTreeMap::new(),
            instance_slots: Arc::new(Semaphore::new(sandbox::MAX_INSTANCES as usize)),
            engine: None,
        }
    }

    /// Scan the configured directories and load every plugin found.
    pub async fn load(config: HostConfig) -> Result<(PluginHost, LoadReport), PluginError> {
        let dirs = discovery::resolve_plugin_dirs(&config.dirs);
        let cache_dir = discovery::resolve_cache_dir(config.cache_dir.as_deref())?;
        let files = discovery::scan(&dirs)?;
        let trust = Trust::load(&config.trust, &dirs)?;
        Self::load_files(dirs, cache_dir, files, config.strict, trust, None).await
    }

    /// Load `config` again after its plugin directories changed, as a new
    /// host that shares this one's engine: a plugin whose file, grants and
    /// trust did not change is carried over as it is, and a plugin that
    /// fails to load where this host has one at the same path keeps that
    /// version serving (its failure is reported, ending in "the previous
    /// version keeps serving"). `strict` is ignored: a reload never stops a
    /// serving process.
    pub async fn reload(
        &self,
        config: &HostConfig,
    ) -> Result<(PluginHost, LoadReport), PluginError> {
        let dirs = discovery::resolve_plugin_dirs(&config.dirs);
        let cache_dir = discovery::resolve_cache_dir(config.cache_dir.as_deref())?;
        let files = discovery::scan(&dirs)?;
        let trust = Trust::load(&config.trust, &dirs)?;
        Self::load_files(dirs, cache_dir, files, false, trust, Some(self)).await
    }

    /// True when `other` holds the very same loaded plugins and commands:
    /// a reload carries unchanged plugins over as the same `Arc`, so equal
    /// identities mean nothing was loaded anew.
    pub fn same_plugins_as(&self, other: &PluginHost) -> bool {
        self.plugins.len() == other.plugins.len()
            && self
                .plugins
                .iter()
                .zip(&other.plugins)
                .all(|(a, b)| Arc::ptr_eq(a, b))
            && self.commands == other.commands
    }

    /// The plugin loaded from `path`, if any.
    fn plugin_at(&self, path: &Path) -> Option<&Arc<LoadedPlugin>> {
        self.plugins.iter().find(|p| p.path == path)
    }

    /// Load one plugin file the way a scan would load it (`plugins check`).
    pub async fn load_file(
        path: &Path,
        cache_dir: Option<&Path>,
    ) -> Result<(PluginHost, LoadReport), PluginError> {
        let cache_dir = discovery::resolve_cache_dir(cache_dir)?;
        Self::load_files(
            Vec::new(),
            cache_dir,
            vec![path.to_owned()],
            false,
            Trust::none(),
            None,
        )
        .await
    }

    async fn load_files(
        dirs: Vec<PathBuf>,
        cache_dir: PathBuf,
        files: Vec<PathBuf>,
        strict: bool,
        trust: Trust,
        previous: Option<&PluginHost>,
    ) -> Result<(PluginHost, LoadReport), PluginError> {
        let mut report = LoadReport {
            dirs: dirs.clone(),
            cache_dir: cache_dir.clone(),
            ..LoadReport::default()
        };

        // Every file's result, in scan order.
        let mut results: Vec<Option<(PathBuf, Result<Loaded, String>)>> =
            (0..files.len()).map(|_| None).collect();
        // Grants first: the engine's memory slots must fit the largest one.
        let mut candidates = Vec::with_capacity(files.len());
        for (index, path) in files.into_iter().enumerate() {
            match Grants::load_for(&path) {
                Ok(grants) => candidates.push((index, path, grants)),
                Err(e) => results[index] = Some((path, Err(e.to_string()))),
            }
        }
        let largest_memory = candidates
            .iter()
            .map(|(_, _, g)| g.memory_bytes())
            .max()
            .unwrap_or(Grants::default().memory_bytes());

        // A reload keeps the engine (and so its plugins) when the grants
        // still fit its memory slots; otherwise it starts over.
        let reused = previous.filter(|p| {
            p.engine
                .as_ref()
                .is_some_and(|(_, slot)| *slot >= largest_memory)
        });
        let (engine, slot, instance_slots) =
            match reused.and_then(|p| p.engine.clone().map(|e| (e, p))) {
                Some(((engine, slot), p)) => (engine, slot, p.instance_slots.clone()),
                None => {
                    let engine = sandbox::build_engine(largest_memory)
                        .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
                    sandbox::start_epoch_ticks(&engine).map_err(PluginError::Engine)?;
                    let slots = Arc::new(Semaphore::new(sandbox::MAX_INSTANCES as usize));
                    (engine, largest_memory, slots)
                }
            };
        let cache = CompileCache::new(&cache_dir, &engine);
        let linker = plugin_linker(&engine)?;
        let trust = Arc::new(trust);

        let mut host = PluginHost {
            dirs,
            plugins: Vec::new(),
            registry: Registry::default(),
            commands: BTreeMap::new(),
            instance_slots,
            engine: Some((engine.clone(), slot)),
        };

        // Every plugin at once: a describe() that hangs costs its deadline
        // once, not once per plugin scanned after it.
        let linker = Arc::new(linker);
        let mut loads = tokio::task::JoinSet::new();
        for (index, path, grants) in candidates {
            let job = LoadJob {
                engine: engine.clone(),
                cache: cache.clone(),
                linker: linker.clone(),
                slots: host.instance_slots.clone(),
                trust: trust.clone(),
                previous: reused.and_then(|p| p.plugin_at(&path)).cloned(),
            };
            loads.spawn(async move {
                let (outcome, loaded) = job.load(&path, grants).await;
                (index, path, outcome, loaded)
            });
        }
        while let Some(joined) = loads.join_next().await {
            let (index, path, outcome, loaded) = joined.map_err(|e| {
                PluginError::Engine(format!("loading a plugin failed unexpectedly: {e}"))
            })?;
            if let Some(outcome) = outcome {
                report.cache.count(outcome);
            }
            results[index] = Some((path, loaded));
        }

        // Register in scan order, so which of two plugins claiming one name
        // is refused never depends on timing.
        for (path, loaded) in results.into_iter().flatten() {
            match loaded {
                Ok(Loaded::Command) => {
                    let name = command_name(&path);
                    if let Some(first) = host.commands.get(&name) {
                        report.failures.push(LoadFailure {
                            reason: format!(
                                "command component {name:?} is already provided by {}; this one was not loaded (remove or rename one of them)",
                                first.display()
                            ),
                            path,
                        });
                        continue;
                    }
                    host.commands.insert(name, path.clone());
                    report.commands.push(path);
                }
                Ok(Loaded::Plugin(plugin)) => match host.register(plugin) {
                    Ok(()) => report.loaded.push(path),
                    Err(reason) => report.failures.push(LoadFailure { path, reason }),
                },
                Err(reason) => match reused.and_then(|p| p.plugin_at(&path)) {
                    // A reload: the version that served keeps serving.
                    Some(old) => {
                        let reason = match host.register(old.clone()) {
                            Ok(()) => format!("{reason}; the previous version keeps serving"),
                            Err(taken) => format!("{reason}; {taken}"),
                        };
                        report.failures.push(LoadFailure { path, reason });
                    }
                    None => report.failures.push(LoadFailure { path, reason }),
                },
            }
        }
        if strict && !report.failures.is_empty() {
            return Err(PluginError::Strict(report.failures));
        }
        Ok((host, report))
    }

    /// Add `plugin` and its handlers, unless a plugin registered earlier
    /// provides one of its names (then the reason it was refused).
    fn register(&mut self, plugin: Arc<LoadedPlugin>) -> Result<(), String> {
        let taken = plugin.handlers.iter().find_map(|(info, _)| {
            self.registry
                .owner(&info.name)
                .map(|owner| (info.name.clone(), self.plugins[owner].path.clone()))
        });
        if let Some((name, first)) = taken {
            return Err(format!(
                "it provides handler {name:?}, which {} already provides; this plugin was not loaded (remove or rename one of them)",
                first.display()
            ));
        }
        let index = self.plugins.len();
        for (info, validator) in &plugin.handlers {
            self.registry.insert(HandlerEntry {
                info: info.clone(),
                validator: validator.clone(),
                plugin: index,
            });
        }
        self.plugins.push(plugin);
        Ok(())
    }

    /// Names of the `wasi:cli/command` components found in the plugin
    /// directories (file stems), sorted.
    pub fn command_names(&self) -> Vec<String> {
        self.commands.keys().cloned().collect()
    }

    /// The file of the command component named `name`, if one was found.
    pub fn command_path(&self, name: &str) -> Option<&Path> {
        self.commands.get(name).map(PathBuf::as_path)
    }

    /// Registered handler names, sorted.
    pub fn handler_names(&self) -> Vec<String> {
        self.registry.handlers.keys().cloned().collect()
    }

    /// What `name` said about itself.
    pub fn handler_info(&self, name: &str) -> Result<&HandlerInfo, UnknownHandler> {
        self.registry.get(name).map(|e| &e.info)
    }

    /// The grants of the plugin providing `name` (max attempts, timeout, …).
    pub fn grants(&self, name: &str) -> Result<&Grants, UnknownHandler> {
        self.registry
            .get(name)
            .map(|e| &self.plugins[e.plugin].grants)
    }

    /// The error for a lookup of `name`, if it is not registered.
    pub fn check_handler(&self, name: &str) -> Result<(), UnknownHandler> {
        self.registry.get(name).map(drop)
    }

    /// Check a task input against `handler`'s input schema; the error names
    /// the failing field as a JSON pointer.
    pub fn validate_input(
        &self,
        handler: &str,
        input: &serde_json::Value,
    ) -> Result<(), InputError> {
        self.registry.validate(handler, input)
    }

    /// The scanned directories, for messages ("no plugins found in …").
    pub fn dirs_display(&self) -> String {
        if self.dirs.is_empty() {
            return "(no plugin directories)".to_owned();
        }
        self.dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Run one task in a fresh sandbox.
    pub async fn run(
        &self,
        req: RunRequest,
        cx: Arc<dyn TaskContext>,
    ) -> Result<RunOutcome, RunFailure> {
        let entry = self.registry.get(&req.handler)?;
        let plugin = &self.plugins[entry.plugin];
        let _permit = plugin
            .concurrency
            .acquire()
            .await
            .map_err(|_| RunFailure::Setup {
                handler: req.handler.clone(),
                reason: "the plugin host is shutting down".to_owned(),
            })?;
        let timeout = req.timeout.min(plugin.grants.timeout());
        let task = types::Task {
            handler: req.handler,
            job_id: req.job_id,
            task_id: req.task_id,
            stage: req.stage,
            attempt: req.attempt,
            input: req.input_json,
        };
        let handler = task.handler.clone();

        let _slot = self.instance_slot(&handler).await?;
        if !cx.start() {
            return Err(RunFailure::Setup {
                handler,
                reason: "handed back before it started: its worker is stopping".to_owned(),
            });
        }
        let mut store = new_store(plugin, &handler, cx, timeout)?;
        store.set_hostcall_fuel(run_budget(&plugin.grants));
        let call = async {
            let instance = plugin
                .pre
                .instantiate_async(&mut store)
                .await
                .map_err(CallError::Instantiate)?;
            instance
                .lockstep_plugin_handler()
                .call_run(&mut store, &task)
                .await
                .map_err(CallError::Call)
        };
        let result = tokio::time::timeout(timeout, call).await;
        match settle(&mut store, &handler, timeout, result)? {
            Ok(outcome) => checked_outcome(&handler, &plugin.grants, outcome),
            Err(TaskError::Retryable(message)) => Err(RunFailure::Retryable(limits::cut(
                message,
                limits::MAX_ERROR_BYTES,
            ))),
            Err(TaskError::Fatal(message)) => Err(RunFailure::Fatal(limits::cut(
                message,
                limits::MAX_ERROR_BYTES,
            ))),
        }
    }

    async fn instance_slot(
        &self,
        handler: &str,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, RunFailure> {
        self.instance_slots
            .acquire()
            .await
            .map_err(|_| shutting_down(handler))
    }
}

fn shutting_down(handler: &str) -> RunFailure {
    RunFailure::Setup {
        handler: handler.to_owned(),
        reason: "the plugin host is shutting down".to_owned(),
    }
}

/// The bytes one call into a run may hand the host (its results, or the
/// arguments of one host call): the output its grant allows, the spawned
/// inputs a task may carry with their stage and handler names, and room for
/// the list itself. Checked by wasmtime before it copies anything.
pub fn run_budget(grants: &Grants) -> usize {
    let per_spawn = 2 * limits::MAX_NAME_BYTES + 3 * std::mem::size_of::<String>();
    grants.max_output_bytes as usize
        + limits::MAX_SPAWNED_BYTES_PER_TASK
        + limits::MAX_SPAWNS_PER_TASK * per_spawn
        + 64 * 1024
}

/// A run's outcome as the host accepts it: output within its grant, JSON
/// nested at most [`limits::MAX_JSON_DEPTH`] deep, spawns within the
/// per-task limits. Anything else fails the task for good: the same input
/// would give the same outcome again.
fn checked_outcome(
    handler: &str,
    grants: &Grants,
    outcome: types::Outcome,
) -> Result<RunOutcome, RunFailure> {
    let max = u64::from(grants.max_output_bytes);
    let size = outcome.output.len() as u64;
    if size > max {
        let (size, limit) = limits::sizes_for_comparison(size, max);
        return Err(RunFailure::Fatal(format!(
            "handler {handler} returned an output of {size}, larger than the {limit} limit of its plugin (raise it with max_output_bytes in the plugin's grants file)"
        )));
    }
    if let Err(e) = limits::check_json_depth(&outcome.output, limits::MAX_JSON_DEPTH) {
        return Err(RunFailure::Fatal(format!(
            "handler {handler} returned output that {e}"
        )));
    }
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&outcome.output) {
        return Err(RunFailure::Fatal(format!(
            "handler {handler} returned output that is not valid JSON: {e}"
        )));
    }
    if outcome.spawn.len() > limits::MAX_SPAWNS_PER_TASK {
        return Err(RunFailure::Fatal(format!(
            "handler {handler} spawned {} tasks, more than the {} one task may spawn; split the work over several tasks",
            outcome.spawn.len(),
            limits::MAX_SPAWNS_PER_TASK
        )));
    }
    let spawned: u64 = outcome.spawn.iter().map(|s| s.input.len() as u64).sum();
    let max_spawned = limits::MAX_SPAWNED_BYTES_PER_TASK as u64;
    if spawned > max_spawned {
        let (size, limit) = limits::sizes_for_comparison(spawned, max_spawned);
        return Err(RunFailure::Fatal(format!(
            "handler {handler} spawned tasks whose inputs total {size}, more than the {limit} one task may spawn; split the work over several tasks"
        )));
    }
    Ok(RunOutcome {
        output: outcome.output,
        spawn: outcome
            .spawn
            .into_iter()
            .map(|s| Spawn {
                stage: s.stage,
                handler: s.handler,
                input: s.input,
            })
            .collect(),
    })
}

/// What loading one plugin file needs; each load runs as its own task.
struct LoadJob {
    engine: Engine,
    cache: CompileCache,
    linker: Arc<Linker<RunState>>,
    slots: Arc<Semaphore>,
    trust: Arc<Trust>,
    /// On a reload, the plugin this path had: carried over if unchanged.
    previous: Option<Arc<LoadedPlugin>>,
}

impl LoadJob {
    /// Load one plugin file: read, compile, link, describe, check. A
    /// `wasi:cli/command` component is recognised and only named. Returns
    /// how the compile cache served it, when it got that far.
    async fn load(
        &self,
        path: &Path,
        grants: Grants,
    ) -> (Option<CacheOutcome>, Result<Loaded, String>) {
        let wasm = match discovery::read_regular_file(path, discovery::MAX_PLUGIN_FILE_BYTES) {
            Ok(wasm) => wasm,
            Err(e) => return (None, Err(e.to_string())),
        };
        if let Some(problem) = super::check::header_problem(&wasm) {
            return (None, Err(problem));
        }
        let sha256 = super::cache::sha256_hex(&wasm);
        // Before compiling: untrusted bytes never reach the compiler.
        let admitted = match self.trust.admit(path, &wasm, &sha256) {
            Ok(admitted) => admitted,
            Err(reason) => return (None, Err(reason)),
        };
        // A reload carries over what did not change, as the same instance.
        if let Some(old) = self.previous.as_ref().filter(|old| {
            old.sha256 == sha256 && old.grants == grants && old.signer == admitted.signer
        }) {
            return (None, Ok(Loaded::Plugin(old.clone())));
        }
        let describe_timeout = grants.timeout().min(DESCRIBE_TIMEOUT);
        let settings = format!("m{}-t{}", grants.memory_mib, describe_timeout.as_millis());
        if let Some(reason) = self.cache.remembered_failure(&sha256, &settings) {
            let entry = self.cache.failure_path(&sha256, &settings);
            return (
                None,
                Err(format!(
                    "{reason} (remembered from an earlier load; delete {} to try again)",
                    entry.display()
                )),
            );
        }
        let (component, outcome) = match self.cache.component(&self.engine, &wasm, &sha256) {
            Ok(compiled) => compiled,
            Err(e) => {
                return (
                    None,
                    Err(format!("it is not a valid WebAssembly component: {e:#}")),
                );
            }
        };
        drop(wasm);
        let pre = match self
            .linker
            .instantiate_pre(&component)
            .and_then(PluginPre::new)
        {
            Ok(pre) => pre,
            Err(_) if super::command::exports_run(&self.engine, &component) => {
                return (Some(outcome), Ok(Loaded::Command));
            }
            Err(e) => {
                return (
                    Some(outcome),
                    Err(format!(
                        "it does not fit the lockstep:plugin world (wit/plugin.wit): {e:#}"
                    )),
                );
            }
        };
        let mut plugin = LoadedPlugin {
            path: path.to_owned(),
            sha256,
            signer: admitted.signer,
            env: grants.env_values(),
            network: grants.network.iter().copied().collect(),
            concurrency: Semaphore::new(grants.concurrency as usize),
            grants,
            pre,
            handlers: Vec::new(),
            catalog: Catalog::default(),
        };
        let file = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        match self
            .describe(&plugin, &component, &file, describe_timeout)
            .await
        {
            Ok((checked, catalog)) => {
                plugin.handlers = checked
                    .into_iter()
                    .map(|(info, validator)| (info, Arc::new(validator)))
                    .collect();
                plugin.catalog = catalog;
                (Some(outcome), Ok(Loaded::Plugin(Arc::new(plugin))))
            }
            Err(Refusal { reason, its_own }) => {
                let reason = limits::cut(reason, limits::MAX_ERROR_BYTES);
                if its_own {
                    self.cache
                        .remember_failure(&plugin.sha256, &settings, &reason);
                }
                (Some(outcome), Err(reason))
            }
        }
    }
}

/// Why a plugin's self-description was refused, and whether that is the
/// plugin's own doing (remembered by the compile cache) or not (a sandbox
/// that could not be set up: a granted directory vanished, the host
/// stopping).
struct Refusal {
    reason: String,
    its_own: bool,
}

impl Refusal {
    fn plugin(reason: String) -> Refusal {
        Refusal {
            reason,
            its_own: true,
        }
    }

    fn call(function: &str, failure: RunFailure) -> Refusal {
        Refusal {
            its_own: !matches!(failure, RunFailure::Setup { .. }),
            reason: call_failure(function, failure),
        }
    }
}

impl LoadJob {
    /// What `plugin` says about itself: `describe()`, checked, and the MCP
    /// tools its optional `mcp` export declares (`tools()`), checked
    /// against those handlers. Each call gets a fresh sandbox, its own
    /// deadline and [`MAX_DESCRIBE_BYTES`] of results.
    async fn describe(
        &self,
        plugin: &LoadedPlugin,
        component: &wasmtime::component::Component,
        label: &str,
        timeout: Duration,
    ) -> Result<(Vec<(HandlerInfo, jsonschema::Validator)>, Catalog), Refusal> {
        let cx: Arc<dyn TaskContext> = Arc::new(LoadContext {
            plugin: plugin.path.display().to_string(),
        });
        let infos = self
            .call(
                plugin,
                label,
                &cx,
                timeout,
                "describe()",
                |store, instance| {
                    Box::pin(async move {
                        Plugin::new(&mut *store, &instance)?
                            .lockstep_plugin_handler()
                            .call_describe(&mut *store)
                            .await
                    })
                },
            )
            .await?;
        let mut checked = checked_handlers(infos).map_err(Refusal::plugin)?;
        if component.get_export_index(None, MCP_EXPORT).is_some() {
            let mcp =
                McpIndices::new(plugin.pre.instance_pre()).map_err(|e| misfit(MCP_EXPORT, &e))?;
            let tools = self
                .call(
                    plugin,
                    label,
                    &cx,
                    timeout,
                    "mcp tools()",
                    move |store, instance| {
                        Box::pin(async move {
                            mcp.load(&mut *store, &instance)?
                                .call_tools(&mut *store)
                                .await
                        })
                    },
                )
                .await?;
            declare_tools(&mut checked, tools).map_err(Refusal::plugin)?;
        }
        let mut catalog = Catalog::default();
        if component
            .get_export_index(None, MCP_CATALOG_EXPORT)
            .is_some()
        {
            let listing = CatalogIndices::new(plugin.pre.instance_pre())
                .map_err(|e| misfit(MCP_CATALOG_EXPORT, &e))?;
            let again = listing.clone();
            let resources = self
                .call(
                    plugin,
                    label,
                    &cx,
                    timeout,
                    "mcp-catalog resources()",
                    move |store, instance| {
                        Box::pin(async move {
                            listing
                                .load(&mut *store, &instance)?
                                .call_resources(&mut *store)
                                .await
                        })
                    },
                )
                .await?;
            let prompts = self
                .call(
                    plugin,
                    label,
                    &cx,
                    timeout,
                    "mcp-catalog prompts()",
                    move |store, instance| {
                        Box::pin(async move {
                            again
                                .load(&mut *store, &instance)?
                                .call_prompts(&mut *store)
                                .await
                        })
                    },
                )
                .await?;
            catalog = checked_catalog(&checked, resources, prompts).map_err(Refusal::plugin)?;
        }
        Ok((checked, catalog))
    }

    /// [`call_at_load`] for `function`, its failure as a load refusal.
    async fn call<R>(
        &self,
        plugin: &LoadedPlugin,
        label: &str,
        cx: &Arc<dyn TaskContext>,
        timeout: Duration,
        function: &str,
        call: impl for<'s> FnOnce(
            &'s mut Store<RunState>,
            wasmtime::component::Instance,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = wasmtime::Result<R>> + Send + 's>,
        >,
    ) -> Result<R, Refusal> {
        call_at_load(plugin, label, cx.clone(), &self.slots, timeout, call)
            .await
            .map_err(|f| Refusal::call(function, f))
    }
}

/// The refusal of an MCP export whose functions do not match the WIT.
fn misfit(export: &str, e: &wasmtime::Error) -> Refusal {
    Refusal::plugin(format!(
        "its {export} export does not fit wit/plugin.wit: {e:#}"
    ))
}

/// The resources and prompts a plugin's `mcp-catalog` export offers.
#[derive(Debug, Clone, Default)]
pub(crate) struct Catalog {
    pub(crate) resources: Vec<McpResource>,
    pub(crate) prompts: Vec<McpPrompt>,
}

/// Longest resource URI (or URI template), in bytes.
pub const MAX_URI_BYTES: usize = 2048;

/// The catalog as the host keeps it, checked: every entry names a handler
/// `describe()` listed; URIs are at most [`MAX_URI_BYTES`], printable, not
/// `lockstep://`, well-formed templates, and unique; names are plain and
/// prompt names unique; at most [`MAX_HANDLERS_PER_PLUGIN`] of each.
fn checked_catalog(
    handlers: &[(HandlerInfo, jsonschema::Validator)],
    resources: Vec<WitResource>,
    prompts: Vec<WitPrompt>,
) -> Result<Catalog, String> {
    let known = |what: &str, handler: &str| {
        if handlers.iter().any(|(h, _)| h.name == handler) {
            Ok(())
        } else {
            Err(format!(
                "mcp-catalog {what} is read by handler {handler:?}, which describe() does not list"
            ))
        }
    };
    for (what, count) in [
        ("resources()", resources.len()),
        ("prompts()", prompts.len()),
    ] {
        if count > MAX_HANDLERS_PER_PLUGIN {
            return Err(format!(
                "mcp-catalog {what} lists {count} entries, more than the {MAX_HANDLERS_PER_PLUGIN} one plugin may offer"
            ));
        }
    }
    let argument = |a: WitArgument| McpArgument {
        name: a.name,
        description: a.description,
        required: a.required,
        values: a.values,
    };
    let mut uris = HashSet::new();
    let mut checked = Catalog::default();
    for r in resources {
        let shown = limits::cut(r.uri.clone(), 200);
        let what = format!("resource {shown:?}");
        if r.uri.is_empty()
            || r.uri.len() > MAX_URI_BYTES
            || r.uri.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(format!(
                "mcp-catalog {what} has a URI that is empty, longer than {MAX_URI_BYTES} bytes, or holds spaces or control characters"
            ));
        }
        if r.uri.starts_with("lockstep://") {
            return Err(format!(
                "mcp-catalog {what} is a lockstep:// URI; those name lockstep's own jobs and tasks"
            ));
        }
        if let Err(why) = super::registry::template_parts(&r.uri) {
            return Err(format!("mcp-catalog {what} is not a URI template: {why}"));
        }
        if r.name.is_empty() || r.name.len() > 128 || r.name.chars().any(char::is_control) {
            return Err(format!(
                "mcp-catalog {what} has a name that is empty, longer than 128 bytes or holds control characters"
            ));
        }
        if !uris.insert(r.uri.clone()) {
            return Err(format!("mcp-catalog resources() lists {shown:?} twice"));
        }
        known(&what, &r.handler)?;
        checked.resources.push(McpResource {
            uri: r.uri,
            name: r.name,
            description: r.description,
            mime_type: r.mime_type,
            variables: r.variables.into_iter().map(argument).collect(),
            handler: r.handler,
        });
    }
    let mut names = HashSet::new();
    for p in prompts {
        check_mcp_name("mcp-catalog prompts() lists prompt", &p.name)?;
        if !names.insert(p.name.clone()) {
            return Err(format!(
                "mcp-catalog prompts() lists prompt {:?} twice",
                p.name
            ));
        }
        known(&format!("prompt {:?}", p.name), &p.handler)?;
        checked.prompts.push(McpPrompt {
            name: p.name,
            description: p.description,
            arguments: p.arguments.into_iter().map(argument).collect(),
            handler: p.handler,
        });
    }
    Ok(checked)
}

/// One call into a fresh instance of `plugin` at load (`describe()`,
/// `mcp.tools()`), with its own deadline and [`MAX_DESCRIBE_BYTES`] of
/// results.
async fn call_at_load<R>(
    plugin: &LoadedPlugin,
    label: &str,
    cx: Arc<dyn TaskContext>,
    slots: &Semaphore,
    timeout: Duration,
    call: impl for<'s> FnOnce(
        &'s mut Store<RunState>,
        wasmtime::component::Instance,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = wasmtime::Result<R>> + Send + 's>,
    >,
) -> Result<R, RunFailure> {
    let _slot = slots.acquire().await.map_err(|_| shutting_down(label))?;
    let mut store = new_store(plugin, label, cx, timeout)?;
    store.set_hostcall_fuel(MAX_DESCRIBE_BYTES);
    let run = async {
        let instance = plugin
            .pre
            .instance_pre()
            .instantiate_async(&mut store)
            .await
            .map_err(CallError::Instantiate)?;
        call(&mut store, instance).await.map_err(CallError::Call)
    };
    let result = tokio::time::timeout(timeout, run).await;
    settle(&mut store, label, timeout, result)
}

/// Attach the tools `mcp.tools()` declared to the handlers they run: each
/// names a handler of this plugin at most once, with a valid name no other
/// of its tools has.
fn declare_tools(
    handlers: &mut [(HandlerInfo, jsonschema::Validator)],
    tools: Vec<McpWitTool>,
) -> Result<(), String> {
    if tools.len() > MAX_HANDLERS_PER_PLUGIN {
        return Err(format!(
            "mcp tools() lists {} tools, more than the {MAX_HANDLERS_PER_PLUGIN} one plugin may provide",
            tools.len()
        ));
    }
    let mut names = HashSet::with_capacity(tools.len());
    for tool in tools {
        check_mcp_name("mcp tools() lists tool", &tool.name)?;
        if !names.insert(tool.name.clone()) {
            return Err(format!("mcp tools() lists tool {:?} twice", tool.name));
        }
        let Some((info, _)) = handlers.iter_mut().find(|(h, _)| h.name == tool.handler) else {
            return Err(format!(
                "mcp tools() offers handler {:?} as tool {:?}, but describe() lists no such handler",
                tool.handler, tool.name
            ));
        };
        if let Some(first) = &info.mcp_tool {
            return Err(format!(
                "mcp tools() offers handler {:?} twice (as {:?} and {:?}); offer each handler once",
                info.name, first.name, tool.name
            ));
        }
        info.mcp_tool = Some(McpTool {
            name: tool.name,
            result: match tool.format {
                ResultFormat::Json => McpResult::Json,
                ResultFormat::Content => McpResult::Content,
            },
        });
    }
    Ok(())
}

/// MCP tool (SEP-986) and prompt names: 1 to 64 of `A-Z a-z 0-9 _ - . /`;
/// `listed` says where the name comes from (`mcp tools() lists tool`).
fn check_mcp_name(listed: &str, name: &str) -> Result<(), String> {
    let shown = limits::cut(name.to_owned(), 100);
    if name.is_empty() || name.len() > 64 {
        return Err(format!(
            "{listed} {shown:?}, whose name is not 1 to 64 characters long"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')))
    {
        return Err(format!(
            "{listed} {shown:?}, whose name contains {c:?}; MCP names use only `A-Z a-z 0-9 _ - . /`"
        ));
    }
    Ok(())
}

/// The handlers a `describe()` listed, checked: at most
/// [`MAX_HANDLERS_PER_PLUGIN`], each with a plain unique name, a description
/// of at most [`MAX_DESCRIPTION_BYTES`] and an input schema of at most
/// [`MAX_SCHEMA_BYTES`] that compiles.
fn checked_handlers(
    infos: Vec<types::HandlerInfo>,
) -> Result<Vec<(HandlerInfo, jsonschema::Validator)>, String> {
    if infos.is_empty() {
        return Err("describe() returned no handlers".to_owned());
    }
    if infos.len() > MAX_HANDLERS_PER_PLUGIN {
        return Err(format!(
            "describe() lists {} handlers, more than the {MAX_HANDLERS_PER_PLUGIN} one plugin may provide",
            infos.len()
        ));
    }
    let mut names = HashSet::with_capacity(infos.len());
    let mut checked = Vec::with_capacity(infos.len());
    for info in infos {
        check_handler_name(&info.name)?;
        if !names.insert(info.name.clone()) {
            return Err(format!("describe() lists handler {:?} twice", info.name));
        }
        for (what, text, max) in [
            ("a description", &info.description, MAX_DESCRIPTION_BYTES),
            ("an input schema", &info.input_schema, MAX_SCHEMA_BYTES),
        ] {
            if text.len() > max {
                let (size, limit) = limits::sizes_for_comparison(text.len() as u64, max as u64);
                return Err(format!(
                    "describe() gives handler {:?} {what} of {size}, longer than the {limit} limit",
                    info.name
                ));
            }
        }
        let (schema, validator) =
            compile_schema(&info.name, &info.input_schema).map_err(|e| e.to_string())?;
        checked.push((
            HandlerInfo {
                name: info.name,
                description: info.description,
                input_schema: schema,
                mcp_tool: None,
            },
            validator,
        ));
    }
    Ok(checked)
}

/// What every plugin is linked against: the WASI 0.2 interfaces (with a
/// context that grants nothing by default), the `plugin` world's imports
/// and the `mcp-plugin` world's `agent` import.
pub(crate) fn plugin_linker(engine: &Engine) -> Result<Linker<RunState>, PluginError> {
    let mut linker = Linker::<RunState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .and_then(|()| Plugin::add_to_linker::<_, HasSelf<RunState>>(&mut linker, |s| s))
        .and_then(|()| {
            super::bindings::mcp::lockstep::plugin::agent::add_to_linker::<_, HasSelf<RunState>>(
                &mut linker,
                |s| s,
            )
        })
        .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
    Ok(linker)
}

/// A fresh store for one call into `plugin`, with its limits and deadline.
fn new_store(
    plugin: &LoadedPlugin,
    handler: &str,
    cx: Arc<dyn TaskContext>,
    timeout: Duration,
) -> Result<Store<RunState>, RunFailure> {
    let state =
        RunState::new(&plugin.grants, &plugin.env, &plugin.network, cx, timeout).map_err(|e| {
            RunFailure::Setup {
                handler: handler.to_owned(),
                reason: e.0,
            }
        })?;
    let mut store = Store::new(plugin.pre.engine(), state);
    store.limiter(|s| &mut s.limiter);
    // Every epoch tick: yield to the async runtime, or stop the guest once
    // its time is up.
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut cx| {
        let state = cx.data_mut();
        if state.started.elapsed() >= state.timeout {
            state.deadline_hit = true;
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    Ok(store)
}

/// Turn the end of a call into its result: captured output becomes log
/// lines, failures are classified.
fn settle<R>(
    store: &mut Store<RunState>,
    handler: &str,
    timeout: Duration,
    result: Result<Result<R, CallError>, tokio::time::error::Elapsed>,
) -> Result<R, RunFailure> {
    let stderr = store.data_mut().flush_output();
    let state = store.data();
    let (err, instantiating) = match result {
        Ok(Ok(value)) => return Ok(value),
        // The guest was blocked in a host call (a sleep, say) when its time
        // ran out: epoch interruption only fires in wasm code.
        Err(_elapsed) => {
            return Err(RunFailure::Deadline {
                handler: handler.to_owned(),
                timeout,
            });
        }
        Ok(Err(CallError::Instantiate(e))) => (e, true),
        Ok(Err(CallError::Call(e))) => (e, false),
    };
    // wasmtime refused to copy more than the store's hostcall budget.
    if format!("{err:#}").contains("fuel allocated for hostcalls has been exhausted") {
        return Err(RunFailure::TooMuchData {
            handler: handler.to_owned(),
            limit_bytes: store.hostcall_fuel() as u64,
        });
    }
    let observed = Observed {
        handler,
        deadline_hit: state.deadline_hit,
        timeout,
        memory_refused: state.limiter.refused,
        memory_limit: state.limiter.limit_bytes(),
        stderr: &stderr,
    };
    let failure = classify(&err, &observed);
    // An instantiation error that is not the guest's doing (no trap, no
    // limit hit) is the host's: say so rather than blame the guest.
    if instantiating
        && err.downcast_ref::<wasmtime::Trap>().is_none()
        && matches!(failure, RunFailure::Trap { .. })
    {
        return Err(RunFailure::Setup {
            handler: handler.to_owned(),
            reason: format!("{err:#}"),
        });
    }
    Err(failure)
}

/// Why a call at load (`describe()`, `mcp tools()`) failed, as a load
/// failure reason.
fn call_failure(function: &str, failure: RunFailure) -> String {
    match failure {
        RunFailure::Trap { reason, .. } => format!("{function} trapped: {reason}"),
        RunFailure::Deadline { timeout, .. } => format!(
            "{function} did not return within {}",
            format_duration(timeout)
        ),
        RunFailure::OutOfMemory { limit_bytes, .. } => format!(
            "{function} ran out of memory (limit {} MiB)",
            limit_bytes >> 20
        ),
        RunFailure::StackOverflow { .. } => format!("{function} overflowed its stack"),
        RunFailure::TooMuchData { limit_bytes, .. } => format!(
            "{function} returned more than {} and was stopped",
            limits::show_bytes(limit_bytes)
        ),
        RunFailure::Setup { reason, .. } => {
            format!("its sandbox could not be set up: {reason}")
        }
        other => format!("{function} failed: {other}"),
    }
}

/// Handler names are shown in lists, logs and job files: keep them plain.
fn check_handler_name(name: &str) -> Result<(), String> {
    const MAX: usize = 128;
    if name.is_empty() {
        return Err("describe() lists a handler with an empty name".to_owned());
    }
    if name.len() > MAX {
        return Err(format!(
            "describe() lists a handler name longer than {MAX} bytes"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '"' || *c == ',')
    {
        return Err(format!(
            "describe() lists handler {name:?}, whose name contains {c:?}; use letters, digits and `:-_./`"
        ));
    }
    Ok(())
}
