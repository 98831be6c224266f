//! The plugin host: loads every plugin of the configured directories into a
//! registry of handlers, and runs one task at a time per call in a fresh
//! sandbox.
//!
//! **Invariants:**
//! - Loading: each plugin is compiled (through the cache), linked against
//!   the `plugin` world plus WASI 0.2 once (`PluginPre`), instantiated once
//!   to call `describe()`, and its schemas are compiled. A plugin that fails
//!   any step is reported with its path and reason and the others still load
//!   (unless `strict`); two plugins claiming one name fail the whole load.
//! - Running: every attempt gets a new `Store` (fresh memory, fresh WASI
//!   context from the grants, memory limiter, epoch deadline), so nothing
//!   leaks between tasks; concurrency is bounded per plugin (its grant) and
//!   per host ([`sandbox::MAX_INSTANCES`]) by waiting, never by failing.
//! - A guest can only fail its own attempt: traps, deadlines, memory and
//!   stack exhaustion come back as a [`RunFailure`].

use super::bindings::exports::lockstep::plugin::handler::TaskError;
use super::bindings::lockstep::plugin::types;
use super::bindings::{Plugin, PluginPre};
use super::cache::{CacheStats, CompileCache};
use super::context::{LoadContext, TaskContext};
use super::failure::{Observed, RunFailure, classify};
use super::grants::{Grants, format_duration};
use super::instance_state::RunState;
use super::registry::{
    HandlerEntry, HandlerInfo, InputError, Registry, UnknownHandler, compile_schema,
};
use super::{PluginError, discovery, sandbox};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, Store, UpdateDeadline};

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
}

impl HostConfig {
    pub fn new(dirs: Vec<PathBuf>, cache_dir: Option<PathBuf>, strict: bool) -> Self {
        Self {
            dirs,
            cache_dir,
            strict,
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
    pub(crate) grants: Grants,
    /// Granted env vars with their values, read once at load.
    env: Vec<(String, String)>,
    network: Arc<[SocketAddr]>,
    pre: PluginPre<RunState>,
    concurrency: Semaphore,
}

/// The loaded plugins and their handlers. Cheap to share (`Arc`); every
/// method takes `&self`.
pub struct PluginHost {
    dirs: Vec<PathBuf>,
    pub(crate) plugins: Vec<LoadedPlugin>,
    pub(crate) registry: Registry,
    /// Handler-less `wasi:cli/command` components of the plugin
    /// directories, by file stem (pipelines name them).
    commands: BTreeMap<String, PathBuf>,
    instance_slots: Semaphore,
    /// Kept so the epoch ticker keeps ticking while the host lives.
    _engine: Option<Engine>,
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
    Plugin(Box<LoadedPlugin>, Vec<(HandlerInfo, jsonschema::Validator)>),
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
            instance_slots: Semaphore::new(sandbox::MAX_INSTANCES as usize),
            _engine: None,
        }
    }

    /// Scan the configured directories and load every plugin found.
    pub async fn load(config: HostConfig) -> Result<(PluginHost, LoadReport), PluginError> {
        let dirs = discovery::resolve_plugin_dirs(&config.dirs);
        let cache_dir = discovery::resolve_cache_dir(config.cache_dir.as_deref())?;
        let files = discovery::scan(&dirs)?;
        Self::load_files(dirs, cache_dir, files, config.strict).await
    }

    /// Load one plugin file the way a scan would load it (`plugins check`).
    pub async fn load_file(
        path: &Path,
        cache_dir: Option<&Path>,
    ) -> Result<(PluginHost, LoadReport), PluginError> {
        let cache_dir = discovery::resolve_cache_dir(cache_dir)?;
        Self::load_files(Vec::new(), cache_dir, vec![path.to_owned()], false).await
    }

    async fn load_files(
        dirs: Vec<PathBuf>,
        cache_dir: PathBuf,
        files: Vec<PathBuf>,
        strict: bool,
    ) -> Result<(PluginHost, LoadReport), PluginError> {
        let mut report = LoadReport {
            dirs: dirs.clone(),
            cache_dir: cache_dir.clone(),
            ..LoadReport::default()
        };

        // Grants first: the engine's memory slots must fit the largest one.
        let mut candidates = Vec::with_capacity(files.len());
        for path in files {
            match Grants::load_for(&path) {
                Ok(grants) => candidates.push((path, grants)),
                Err(e) => report.failures.push(LoadFailure {
                    path,
                    reason: e.to_string(),
                }),
            }
        }
        let largest_memory = candidates
            .iter()
            .map(|(_, g)| g.memory_bytes())
            .max()
            .unwrap_or(Grants::default().memory_bytes());

        let engine = sandbox::build_engine(largest_memory)
            .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        sandbox::start_epoch_ticks(&engine).map_err(PluginError::Engine)?;
        let cache = CompileCache::new(&cache_dir, &engine);
        let linker = plugin_linker(&engine)?;

        let mut host = PluginHost {
            dirs,
            plugins: Vec::new(),
            registry: Registry::default(),
            commands: BTreeMap::new(),
            instance_slots: Semaphore::new(sandbox::MAX_INSTANCES as usize),
            _engine: Some(engine.clone()),
        };
        for (path, grants) in candidates {
            match host
                .load_plugin(&engine, &cache, &linker, &path, grants, &mut report.cache)
                .await
            {
                Ok(Loaded::Command) => {
                    let name = command_name(&path);
                    if let Some(first) = host.commands.get(&name) {
                        return Err(PluginError::DuplicateCommand {
                            name,
                            first: first.clone(),
                            second: path,
                        });
                    }
                    host.commands.insert(name, path.clone());
                    report.commands.push(path);
                }
                Ok(Loaded::Plugin(plugin, infos)) => {
                    let index = host.plugins.len();
                    host.plugins.push(*plugin);
                    for (info, validator) in infos {
                        let name = info.name.clone();
                        let entry = HandlerEntry {
                            info,
                            validator,
                            plugin: index,
                        };
                        let plugins = &host.plugins;
                        host.registry
                            .insert(entry, |i| plugins[i].path.clone())
                            .map_err(|first| PluginError::DuplicateHandler {
                                name,
                                first,
                                second: path.clone(),
                            })?;
                    }
                    report.loaded.push(path);
                }
                Err(reason) => report.failures.push(LoadFailure { path, reason }),
            }
        }
        if strict && !report.failures.is_empty() {
            return Err(PluginError::Strict(report.failures));
        }
        Ok((host, report))
    }

    /// Load one plugin: compile, link, describe, check schemas. A
    /// `wasi:cli/command` component is recognised and only named.
    async fn load_plugin(
        &self,
        engine: &Engine,
        cache: &CompileCache,
        linker: &Linker<RunState>,
        path: &Path,
        grants: Grants,
        stats: &mut CacheStats,
    ) -> Result<Loaded, String> {
        let wasm = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
        let sha256 = super::cache::sha256_hex(&wasm);
        let (component, outcome) = cache
            .component(engine, &wasm, &sha256)
            .map_err(|e| format!("it is not a valid WebAssembly component: {e:#}"))?;
        stats.count(outcome);
        let pre = match linker.instantiate_pre(&component).and_then(PluginPre::new) {
            Ok(pre) => pre,
            Err(_) if super::command::exports_run(engine, &component) => {
                return Ok(Loaded::Command);
            }
            Err(e) => {
                return Err(format!(
                    "it does not fit the lockstep:plugin world (wit/plugin.wit): {e:#}"
                ));
            }
        };
        let plugin = LoadedPlugin {
            path: path.to_owned(),
            sha256,
            env: grants.env_values(),
            network: grants.network.iter().copied().collect(),
            concurrency: Semaphore::new(grants.concurrency as usize),
            grants,
            pre,
        };

        let file = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let cx = Arc::new(LoadContext {
            plugin: path.display().to_string(),
        });
        let infos = self
            .describe(&plugin, &file, cx)
            .await
            .map_err(describe_failure)?;
        if infos.is_empty() {
            return Err("describe() returned no handlers".to_owned());
        }
        let mut checked: Vec<(HandlerInfo, jsonschema::Validator)> = Vec::new();
        for info in infos {
            check_handler_name(&info.name)?;
            if checked.iter().any(|(c, _)| c.name == info.name) {
                return Err(format!("describe() lists handler {:?} twice", info.name));
            }
            let (schema, validator) =
                compile_schema(&info.name, &info.input_schema).map_err(|e| e.to_string())?;
            checked.push((
                HandlerInfo {
                    name: info.name,
                    description: info.description,
                    input_schema: schema,
                },
                validator,
            ));
        }
        Ok(Loaded::Plugin(Box::new(plugin), checked))
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
            Ok(outcome) => {
                if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&outcome.output) {
                    return Err(RunFailure::Fatal(format!(
                        "handler {handler} returned output that is not valid JSON: {e}"
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
            Err(TaskError::Retryable(message)) => Err(RunFailure::Retryable(message)),
            Err(TaskError::Fatal(message)) => Err(RunFailure::Fatal(message)),
        }
    }

    /// Call `describe()` in a fresh sandbox of `plugin`.
    async fn describe(
        &self,
        plugin: &LoadedPlugin,
        label: &str,
        cx: Arc<dyn TaskContext>,
    ) -> Result<Vec<types::HandlerInfo>, RunFailure> {
        let timeout = plugin.grants.timeout();
        let _slot = self.instance_slot(label).await?;
        let mut store = new_store(plugin, label, cx, timeout)?;
        let call = async {
            let instance = plugin
                .pre
                .instantiate_async(&mut store)
                .await
                .map_err(CallError::Instantiate)?;
            instance
                .lockstep_plugin_handler()
                .call_describe(&mut store)
                .await
                .map_err(CallError::Call)
        };
        let result = tokio::time::timeout(timeout, call).await;
        settle(&mut store, label, timeout, result)
    }

    async fn instance_slot(
        &self,
        handler: &str,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, RunFailure> {
        self.instance_slots
            .acquire()
            .await
            .map_err(|_| RunFailure::Setup {
                handler: handler.to_owned(),
                reason: "the plugin host is shutting down".to_owned(),
            })
    }
}

/// What every plugin is linked against: the WASI 0.2 interfaces (with a
/// context that grants nothing by default) and the `plugin` world's imports.
pub(crate) fn plugin_linker(engine: &Engine) -> Result<Linker<RunState>, PluginError> {
    let mut linker = Linker::<RunState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .and_then(|()| Plugin::add_to_linker::<_, HasSelf<RunState>>(&mut linker, |s| s))
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

/// Why `describe()` failed, as a load failure reason.
fn describe_failure(failure: RunFailure) -> String {
    match failure {
        RunFailure::Trap { reason, .. } => format!("describe() trapped: {reason}"),
        RunFailure::Deadline { timeout, .. } => format!(
            "describe() did not return within {}",
            format_duration(timeout)
        ),
        RunFailure::OutOfMemory { limit_bytes, .. } => format!(
            "describe() ran out of memory (limit {} MiB)",
            limit_bytes >> 20
        ),
        RunFailure::StackOverflow { .. } => "describe() overflowed its stack".to_owned(),
        RunFailure::Setup { reason, .. } => {
            format!("its sandbox could not be set up: {reason}")
        }
        other => format!("describe() failed: {other}"),
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
