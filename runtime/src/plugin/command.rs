//! `wasi:cli/command` components: the programs CI steps and test binaries
//! are made of. They export `wasi:cli/run` instead of the `lockstep:plugin`
//! handler world, take arguments and an environment, and end with an exit
//! status.
//!
//! [`CommandHost`] loads them (through the compile cache, checked with
//! `CommandPre`: anything that does not export `wasi:cli/run` is refused with
//! a sentence naming the file) and runs one [`Invocation`] at a time per call
//! in a fresh store.
//!
//! **Invariants:**
//! - A run gets exactly what its invocation lists: arguments, env variables,
//!   preopened directories (read-only unless marked writable) and a memory
//!   limit. No stdin, no network, no name lookup, no inherited stdio.
//! - Time is bounded twice: an epoch deadline stops a guest running wasm
//!   code, and a wall-clock timeout around the call stops one parked in a
//!   host call (a sleep, a write waiting for a slow reader).
//! - stdout/stderr are streamed through [`command_output`](super::command_output)
//!   with backpressure and a byte bound; the caller reads them while the
//!   program runs.
//! - Every end of a run is a [`CommandEnd`]: an exit status (`I32Exit`
//!   decoded; `Ok(Err(()))` from `run` is 1), a trap, a timeout, memory
//!   exhaustion, or a sandbox that could not be set up — never a host error.

use super::cache::{CompileCache, sha256_hex};
use super::command_output::{OutputSender, StreamKind};
use super::grants::format_duration;
use super::instance_state::MemoryLimiter;
use super::{PluginError, sandbox};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, Trap, UpdateDeadline};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// Largest memory a command may be given.
pub const MAX_COMMAND_MEMORY_BYTES: u64 = 16 << 30;

/// The interface a command component must export.
const RUN_EXPORT: &str = "wasi:cli/run";

/// A command component, compiled and linked, ready to run many times.
#[derive(Clone)]
pub struct LoadedCommand {
    path: PathBuf,
    sha256: String,
    pre: CommandPre<CommandState>,
}

impl std::fmt::Debug for LoadedCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedCommand")
            .field("path", &self.path)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

impl LoadedCommand {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hex sha256 of the component file as loaded.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

/// A directory a run sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    pub host: PathBuf,
    /// Absolute path inside the guest, e.g. `/workspace`.
    pub guest: String,
    pub writable: bool,
}

/// One run of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// `argv[0]`.
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub dirs: Vec<Preopen>,
    pub memory_bytes: u64,
    pub timeout: Duration,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandEnd {
    /// The program exited with this status (0 is success).
    Exited(i32),
    /// The guest trapped: a Rust panic (its message went to stderr), an
    /// abort, an out-of-bounds access, a stack overflow.
    Trap { reason: String },
    /// It ran past its time and was stopped.
    Timeout { after: Duration },
    /// It tried to grow its memory past the limit and then died.
    OutOfMemory { limit_bytes: u64 },
    /// The sandbox could not be set up (a directory vanished, say); the
    /// program never ran.
    Setup { reason: String },
}

impl CommandEnd {
    pub fn succeeded(&self) -> bool {
        matches!(self, CommandEnd::Exited(0))
    }
}

impl std::fmt::Display for CommandEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandEnd::Exited(code) => write!(f, "exited with status {code}"),
            CommandEnd::Trap { reason } => write!(f, "trapped: {reason}"),
            CommandEnd::Timeout { after } => {
                write!(
                    f,
                    "timed out after {} and was stopped",
                    format_duration(*after)
                )
            }
            CommandEnd::OutOfMemory { limit_bytes } => write!(
                f,
                "ran out of memory: it tried to grow past its {} MiB limit and was stopped",
                limit_bytes >> 20
            ),
            CommandEnd::Setup { reason } => write!(f, "could not be started: {reason}"),
        }
    }
}

/// Why a component cannot be used as a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} cannot be used as a command: {reason}", .path.display())]
pub struct CommandLoadError {
    pub path: PathBuf,
    pub reason: String,
}

/// Loads and runs command components. Cheap to share; every method takes
/// `&self`.
pub struct CommandHost {
    engine: Engine,
    linker: Linker<CommandState>,
    cache: CompileCache,
    /// Components loaded so far, by content hash.
    loaded: Mutex<HashMap<String, LoadedCommand>>,
}

impl std::fmt::Debug for CommandHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandHost").finish_non_exhaustive()
    }
}

impl CommandHost {
    /// A host whose compiled components are cached in `cache_dir`.
    pub fn new(cache_dir: &Path) -> Result<CommandHost, PluginError> {
        let engine = build_engine().map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        sandbox::start_epoch_ticks(&engine).map_err(PluginError::Engine)?;
        let mut linker = Linker::<CommandState>::new(&engine);
        // WASI 0.2.12+ links `exit-with-code`, so a program may exit with
        // any status (`std::process::exit(3)`).
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        Ok(CommandHost {
            cache: CompileCache::new(cache_dir, &engine),
            engine,
            linker,
            loaded: Mutex::new(HashMap::new()),
        })
    }

    /// Load the component at `path`: compile it (or take it from the
    /// cache) and check that it is a `wasi:cli/command`.
    pub fn load(&self, path: &Path) -> Result<LoadedCommand, CommandLoadError> {
        let refuse = |reason: String| CommandLoadError {
            path: path.to_owned(),
            reason,
        };
        let wasm =
            super::discovery::read_regular_file(path, super::discovery::MAX_PLUGIN_FILE_BYTES)
                .map_err(|e| refuse(e.to_string()))?;
        self.load_bytes(path, &wasm)
    }

    /// [`CommandHost::load`] of bytes already read from `path`.
    pub fn load_bytes(&self, path: &Path, wasm: &[u8]) -> Result<LoadedCommand, CommandLoadError> {
        let refuse = |reason: String| CommandLoadError {
            path: path.to_owned(),
            reason,
        };
        let sha256 = sha256_hex(wasm);
        if let Some(hit) = self.lock_loaded().get(&sha256) {
            return Ok(LoadedCommand {
                path: path.to_owned(),
                ..hit.clone()
            });
        }
        let (component, _) = self
            .cache
            .component(&self.engine, wasm, &sha256)
            .map_err(|e| refuse(format!("it is not a valid WebAssembly component: {e:#}")))?;
        if !exports_run(&self.engine, &component) {
            return Err(refuse(format!(
                "it is not a wasi:cli/command component (it does not export {RUN_EXPORT}); build a binary crate for wasm32-wasip2"
            )));
        }
        let pre = self
            .linker
            .instantiate_pre(&component)
            .and_then(CommandPre::new)
            .map_err(|e| refuse(format!("it cannot be linked against WASI 0.2: {e:#}")))?;
        let loaded = LoadedCommand {
            path: path.to_owned(),
            sha256: sha256.clone(),
            pre,
        };
        self.lock_loaded().insert(sha256, loaded.clone());
        Ok(loaded)
    }

    fn lock_loaded(&self) -> std::sync::MutexGuard<'_, HashMap<String, LoadedCommand>> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run `command` once in a fresh store; its stdout/stderr go to `output`
    /// while it runs.
    pub async fn run(
        &self,
        command: &LoadedCommand,
        invocation: &Invocation,
        output: OutputSender,
    ) -> CommandEnd {
        let memory_bytes = invocation.memory_bytes.min(MAX_COMMAND_MEMORY_BYTES);
        let state = match CommandState::new(invocation, &output, memory_bytes) {
            Ok(state) => state,
            Err(reason) => return CommandEnd::Setup { reason },
        };
        // The senders live in the store: dropping it (below) ends the stream.
        drop(output);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
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
        let timeout = invocation.timeout;
        let call = async {
            let instance = command
                .pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| (e, true))?;
            instance
                .wasi_cli_run()
                .call_run(&mut store)
                .await
                .map_err(|e| (e, false))
        };
        let result = tokio::time::timeout(timeout, call).await;
        let state = store.data();
        let end = match result {
            // Parked in a host call when its time ran out.
            Err(_elapsed) => CommandEnd::Timeout { after: timeout },
            Ok(Ok(Ok(()))) => CommandEnd::Exited(0),
            Ok(Ok(Err(()))) => CommandEnd::Exited(1),
            Ok(Err((err, instantiating))) => classify(&err, instantiating, state),
        };
        drop(store);
        end
    }
}

/// Whether the component exports `wasi:cli/run` (any 0.2 version).
pub(crate) fn exports_run(engine: &Engine, component: &Component) -> bool {
    component
        .component_type()
        .exports(engine)
        .any(|(name, _)| name.split('@').next() == Some(RUN_EXPORT))
}

/// How an error from instantiating or running a command ends the run.
fn classify(err: &wasmtime::Error, instantiating: bool, state: &CommandState) -> CommandEnd {
    if let Some(exit) = err.downcast_ref::<I32Exit>() {
        return CommandEnd::Exited(exit.0);
    }
    let trap = err.downcast_ref::<Trap>().copied();
    if state.deadline_hit || trap == Some(Trap::Interrupt) {
        return CommandEnd::Timeout {
            after: state.timeout,
        };
    }
    if state.limiter.refused {
        return CommandEnd::OutOfMemory {
            limit_bytes: state.limiter.limit_bytes(),
        };
    }
    match trap {
        Some(Trap::StackOverflow) => CommandEnd::Trap {
            reason: "stack overflow (too deep recursion)".to_owned(),
        },
        Some(t) => CommandEnd::Trap {
            reason: t.to_string(),
        },
        // Not the guest's doing: the host could not build the instance.
        None if instantiating => CommandEnd::Setup {
            reason: format!("{err:#}"),
        },
        None => CommandEnd::Trap {
            reason: format!("{err:#}"),
        },
    }
}

/// The store data of one command run.
pub(crate) struct CommandState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    started: Instant,
    timeout: Duration,
    deadline_hit: bool,
}

impl CommandState {
    fn new(
        invocation: &Invocation,
        output: &OutputSender,
        memory_bytes: u64,
    ) -> Result<Self, String> {
        let mut b = WasiCtxBuilder::new();
        b.stdout(output.stream(StreamKind::Stdout))
            .stderr(output.stream(StreamKind::Stderr))
            .allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false)
            .arg(&invocation.program)
            .args(&invocation.args);
        for (name, value) in &invocation.env {
            b.env(name, value);
        }
        for dir in &invocation.dirs {
            let perms = if dir.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            b.preopened_dir(&dir.host, &dir.guest, perms).map_err(|e| {
                format!(
                    "directory {} (for {}) cannot be opened: {e}",
                    dir.host.display(),
                    dir.guest
                )
            })?;
        }
        Ok(CommandState {
            wasi: b.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(memory_bytes),
            started: Instant::now(),
            timeout: invocation.timeout,
            deadline_hit: false,
        })
    }
}

impl WasiView for CommandState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The engine commands run in: like the plugins' (async fibers, epoch
/// interruption, a bounded wasm stack) but allocating on demand, since a
/// command's memory limit is its step's, up to
/// [`MAX_COMMAND_MEMORY_BYTES`], and runs are few and long.
fn build_engine() -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .max_wasm_stack(sandbox::MAX_WASM_STACK)
        .async_stack_size(sandbox::ASYNC_STACK_SIZE);
    Engine::new(&config)
}
