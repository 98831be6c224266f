//! What one sandboxed run owns: the wasmtime `Store` data of a single
//! instantiate-and-call, built fresh for every attempt and dropped after it.
//!
//! **Invariants:**
//! - The WASI context grants only what the plugin's [`Grants`] say: no
//!   preopens, env, args, stdin or network unless granted; stdout/stderr go
//!   to bounded captures; name lookup is always off; sockets may only bind
//!   the wildcard address implicitly and connect to / exchange datagrams with
//!   allow-listed `ip:port`s.
//! - Linear memory across all memories of the instance never exceeds the
//!   grant: the limiter refuses growth past it and remembers that it did, so
//!   a guest that then dies is reported as out of memory.
//! - Guest-controlled sizes reaching the task context are bounded (log line
//!   length, log lines per run, stage-results page size, an `agent` request
//!   at [`limits::MAX_AGENT_REQUEST_BYTES`]), and a stage-results `after`
//!   that is no task id is refused.
//! - What reaches the guest from an agent is bounded too: an answer longer
//!   than [`limits::MAX_AGENT_ANSWER_BYTES`] is an error, whatever the task
//!   context let through, and an error text is cut to
//!   [`limits::MAX_ERROR_BYTES`].

use super::bindings::lockstep::plugin::{context, types};
use super::bindings::mcp::lockstep::plugin::agent;
use super::context::{
    AskError, AskKind, LogLevel, MAX_RELEASE_RETRY, STAGE_RESULTS_PAGE_MAX, TaskContext,
};
use super::grants::{DirMode, Grants};
use super::guest_output::CapturedOutput;
use crate::limits::{self, cut};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// Longest log message kept (longer ones are cut, with a marker).
pub const MAX_LOG_MESSAGE: usize = 4 * 1024;

/// Log lines (guest `log` calls plus captured output lines) kept per run.
/// The engine records them in the database with the run's result, so this is
/// also what one attempt can add there.
pub const MAX_LOG_LINES: usize = 100;

/// Refuses memory growth past the grant, across all memories of the store.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    limit: usize,
    in_use: usize,
    /// Set once a growth was refused because of the limit.
    pub(crate) refused: bool,
}

impl MemoryLimiter {
    pub(crate) fn new(limit_bytes: u64) -> Self {
        Self {
            limit: usize::try_from(limit_bytes).unwrap_or(usize::MAX),
            in_use: 0,
            refused: false,
        }
    }
}

impl MemoryLimiter {
    pub(crate) fn limit_bytes(&self) -> u64 {
        self.limit as u64
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current);
        let after = self.in_use.saturating_add(growth);
        if after > self.limit {
            self.refused = true;
            return Ok(false);
        }
        self.in_use = after;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= super::sandbox::TABLE_ELEMENTS)
    }
}

/// The store data of one run.
pub(crate) struct RunState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    cx: Arc<dyn TaskContext>,
    pub(crate) stdout: CapturedOutput,
    pub(crate) stderr: CapturedOutput,
    log_lines: usize,
    log_lines_dropped: usize,
    /// When the attempt started and how long it may take.
    pub(crate) started: Instant,
    pub(crate) timeout: Duration,
    /// Set by the epoch callback when it stopped the guest at its deadline.
    pub(crate) deadline_hit: bool,
}

/// A sandbox could not be set up (a granted directory vanished, say).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct SetupError(pub String);

impl RunState {
    /// A fresh sandbox for one run of a plugin with these grants.
    pub(crate) fn new(
        grants: &Grants,
        env: &[(String, String)],
        network: &Arc<[SocketAddr]>,
        cx: Arc<dyn TaskContext>,
        timeout: Duration,
    ) -> Result<Self, SetupError> {
        let stdout = CapturedOutput::new();
        let stderr = CapturedOutput::new();
        let mut b = WasiCtxBuilder::new();
        // stdin stays closed, args and env empty unless granted below.
        b.stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_ip_name_lookup(false);
        for (name, value) in env {
            b.env(name, value);
        }
        for dir in &grants.dirs {
            let perms = match dir.mode {
                DirMode::ReadOnly => FsPerms::ReadOnly,
                DirMode::ReadWrite => FsPerms::ReadWrite,
            };
            b.preopened_dir(&dir.host, &dir.guest, perms).map_err(|e| {
                SetupError(format!(
                    "granted directory {} cannot be opened: {e}",
                    dir.host.display()
                ))
            })?;
        }
        let networked = !network.is_empty();
        b.allow_tcp(networked).allow_udp(networked);
        if networked {
            let allowed = Arc::clone(network);
            b.socket_addr_check(move |addr, use_| {
                let ok = socket_use_allowed(&allowed, addr, use_);
                Box::pin(async move { ok })
            });
        }
        Ok(Self {
            wasi: b.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(grants.memory_bytes()),
            cx,
            stdout,
            stderr,
            log_lines: 0,
            log_lines_dropped: 0,
            started: Instant::now(),
            timeout,
            deadline_hit: false,
        })
    }

    /// After the run: turn captured stdout/stderr into log lines of the task
    /// (stdout as `info`, stderr as `warn`) and report anything dropped.
    /// Returns the captured stderr lines (panic messages live there).
    pub(crate) fn flush_output(&mut self) -> Vec<String> {
        let (out_lines, out_dropped) = self.stdout.take_lines();
        let (err_lines, err_dropped) = self.stderr.take_lines();
        for line in &out_lines {
            self.emit(LogLevel::Info, format!("stdout: {line}"));
        }
        for line in &err_lines {
            self.emit(LogLevel::Warn, format!("stderr: {line}"));
        }
        for (stream, dropped) in [("stdout", out_dropped), ("stderr", err_dropped)] {
            if dropped > 0 {
                let limit = super::guest_output::CAPTURE_LIMIT / 1024;
                self.cx.log(
                    LogLevel::Warn,
                    &format!("{stream}: {dropped} more bytes dropped (limit {limit} KiB)"),
                );
            }
        }
        if self.log_lines_dropped > 0 {
            let dropped = std::mem::take(&mut self.log_lines_dropped);
            self.cx.log(
                LogLevel::Warn,
                &format!("{dropped} more log lines dropped (limit {MAX_LOG_LINES} per run)"),
            );
        }
        err_lines
    }

    fn emit(&mut self, level: LogLevel, message: String) {
        if self.log_lines >= MAX_LOG_LINES {
            self.log_lines_dropped += 1;
            return;
        }
        self.log_lines += 1;
        self.cx.log(level, &cut(message, MAX_LOG_MESSAGE));
    }
}

/// The network policy: implicit wildcard binds (needed by `connect` and
/// `send`) are allowed, and connections and datagrams only to allow-listed
/// addresses; explicit binds, listening and accepting are refused.
fn socket_use_allowed(allowed: &[SocketAddr], addr: SocketAddr, use_: SocketAddrUse) -> bool {
    match use_ {
        SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => {
            addr.ip().is_unspecified() && addr.port() == 0
        }
        SocketAddrUse::TcpConnect | SocketAddrUse::UdpSend | SocketAddrUse::UdpReceive => {
            allowed.contains(&addr)
        }
        SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => false,
    }
}

impl WasiView for RunState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for RunState {}

impl context::Host for RunState {
    async fn log(&mut self, level: types::LogLevel, message: String) {
        let level = match level {
            types::LogLevel::Trace => LogLevel::Trace,
            types::LogLevel::Debug => LogLevel::Debug,
            types::LogLevel::Info => LogLevel::Info,
            types::LogLevel::Warn => LogLevel::Warn,
            types::LogLevel::Error => LogLevel::Error,
        };
        self.emit(level, message);
    }

    async fn progress(&mut self, done: u64, total: u64, message: String) {
        self.cx
            .progress(done, total, &cut(message, MAX_LOG_MESSAGE));
    }

    async fn stage_results(
        &mut self,
        stage: String,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<(u64, String)>, String> {
        // Task ids are positive i64s: a larger `after` names no task (and
        // must not wrap around to the first page).
        if let Some(after) = after
            && i64::try_from(after).is_err()
        {
            return Err(format!(
                "after {after} is not a task id: task ids are at most {}",
                i64::MAX
            ));
        }
        let limit = limit.min(STAGE_RESULTS_PAGE_MAX);
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.cx.stage_results(&stage, after, limit).await
    }

    async fn cancelled(&mut self) -> bool {
        self.cx.cancelled().await
    }
}

/// One `agent` question: the request bounded before anything reads it, the
/// answer and any error text bounded before the guest gets them. (A free
/// function holding only `cx`: the sandbox's state is not `Sync`.)
async fn ask(
    cx: Arc<dyn TaskContext>,
    kind: AskKind,
    request: String,
) -> Result<String, agent::AskError> {
    if request.len() > limits::MAX_AGENT_REQUEST_BYTES {
        let (size, limit) = limits::sizes_for_comparison(
            request.len() as u64,
            limits::MAX_AGENT_REQUEST_BYTES as u64,
        );
        return Err(agent::AskError::InvalidRequest(format!(
            "the {} request is {size}, larger than the {limit} limit",
            kind.method()
        )));
    }
    let answer = cx.ask(kind, &request).await.map_err(guest_error)?;
    if answer.len() > limits::MAX_AGENT_ANSWER_BYTES {
        let (size, limit) = limits::sizes_for_comparison(
            answer.len() as u64,
            limits::MAX_AGENT_ANSWER_BYTES as u64,
        );
        return Err(agent::AskError::Failed(format!(
            "the agent's answer to {} is {size}, larger than the {limit} limit",
            kind.method()
        )));
    }
    Ok(answer)
}

/// An [`AskError`] as the guest gets it, its text cut.
fn guest_error(e: AskError) -> agent::AskError {
    let bounded = |text: String| cut(text, limits::MAX_ERROR_BYTES);
    match e {
        AskError::NoAgent(m) => agent::AskError::NoAgent(bounded(m)),
        AskError::Unsupported(m) => agent::AskError::Unsupported(bounded(m)),
        AskError::InvalidRequest(m) => agent::AskError::InvalidRequest(bounded(m)),
        AskError::Failed(m) => agent::AskError::Failed(bounded(m)),
    }
}

impl agent::Host for RunState {
    async fn sample(&mut self, request: String) -> Result<String, agent::AskError> {
        ask(self.cx.clone(), AskKind::Sample, request).await
    }

    async fn elicit(&mut self, request: String) -> Result<String, agent::AskError> {
        ask(self.cx.clone(), AskKind::Elicit, request).await
    }

    async fn release_connection(&mut self, retry_ms: u32) -> Result<(), agent::AskError> {
        let retry = Duration::from_millis(u64::from(retry_ms)).min(MAX_RELEASE_RETRY);
        self.cx.release_connection(retry).await.map_err(guest_error)
    }
}
