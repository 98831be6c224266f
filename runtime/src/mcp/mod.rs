//! The MCP front door: lockstep's engine served as MCP tools (rmcp) over
//! stdio (`lockstep mcp`) and streamable HTTP (`lockstep serve --http`).
//!
//! Tools cover handlers, jobs, tasks and the agent workflow (plan → claim →
//! update → complete/fail, see [`crate::engine::agent`]); jobs and tasks are
//! also resources ([`resources`]) a session can follow ([`subscriptions`]),
//! two prompts guide an agent ([`prompts`]), plugins add tools, resources
//! and prompts ([`handler_tools`], [`catalog`]), and a session that sets a
//! log level hears the log lines of the jobs it waits on ([`logging`]).
//! Every request runs as one tenant: the
//! `--tenant` of a stdio server, or the tenant of the bearer token on HTTP
//! ([`http`]).
//!
//! **Invariant 29:** this module calls the engine and never touches SQL; every
//! write goes through the engine's one-transaction-per-change store calls, so
//! a tool that answers "created" has committed.
//! **Invariant 24:** a call that fails validation (argument size, types,
//! [`params::Check`]) reaches no engine method.
//! **Invariant 23:** a tool's tenant comes from the transport (stdio flag or
//! token), never from its arguments.

pub mod args;
pub mod ask;
pub mod catalog;
pub mod failure;
pub mod handler_tools;
pub mod http;
pub mod jsonrpc;
pub mod logging;
pub mod params;
pub mod pipelines;
pub mod prompts;
pub mod resources;
pub mod schema;
mod stdio;
pub mod streams;
pub mod subscriptions;
mod tools;

use crate::engine::Engine;
use crate::model::{TenantId, TokenRole};
use failure::ToolFailure;
use params::ArgError;
use rmcp::handler::server::common::FromContextPart;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, Implementation, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt, tool_handler};
use std::sync::Arc;
use std::time::Duration;

/// What the server tells a model when it connects.
const INSTRUCTIONS: &str = "lockstep is a durable job orchestrator. Jobs: list_handlers, then \
submit_job, and watch with get_job or wait_job. Multi-step agent work: plan_task stores a goal \
and its subtasks with dependencies; claim_task hands you the next ready subtask with the \
summaries of the subtasks it depends on; report progress with update_task; finish with \
complete_task (or fail_task), passing the task_id and attempt from claim_task. Everything is \
stored durably and survives restarts.";

/// Largest tool arguments accepted by default, in bytes of JSON: room for
/// the largest single field (`complete_task`'s `details`, 1 Mi characters)
/// however its characters are encoded (up to 6 bytes each as JSON escapes).
pub const DEFAULT_MAX_ARGUMENT_BYTES: usize = 8 * 1024 * 1024;

/// Room for the JSON-RPC envelope around the arguments of one call.
pub const ENVELOPE_BYTES: usize = 64 * 1024;

/// The requests of the MCP specification a client may send.
const MCP_METHODS: [&str; 17] = [
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "completion/complete",
    "logging/setLevel",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "tasks/get",
    "tasks/list",
    "tasks/result",
    "tasks/cancel",
];

/// Settings of an MCP server (either transport).
#[derive(Debug, Clone)]
pub struct McpConfig {
    /// Lease taken by `claim_task` and renewed by `update_task`.
    pub agent_lease: Duration,
    /// Largest tool arguments accepted, as JSON bytes.
    pub max_argument_bytes: usize,
    /// Pipelines `run_pipeline` may run (`--pipelines-root`); `None`: none.
    pub pipelines: Option<pipelines::PipelineAccess>,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig {
            agent_lease: Duration::from_secs(15 * 60),
            max_argument_bytes: DEFAULT_MAX_ARGUMENT_BYTES,
            pipelines: None,
        }
    }
}

/// Who is calling: the tenant every engine call is scoped to, and what the
/// caller may do.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: TenantId,
    /// Recorded with claims (`mcp-stdio` or `token-N`).
    pub name: String,
    /// `read` may call only read-only tools; the stdio server's and a
    /// `--no-auth` server's caller is the operator (`admin`).
    pub role: TokenRole,
}

/// The MCP server of one session: the engine, the caller's tenant for
/// stdio, the tools, and the session's logging state.
#[derive(Clone)]
pub struct LockstepMcp {
    engine: Arc<Engine>,
    config: Arc<McpConfig>,
    /// The stdio server's tenant; `None` on HTTP, where each request's token decides.
    local: Option<Caller>,
    tool_router: ToolRouter<Self>,
    /// One per session: the HTTP service makes a server per session.
    logging: Arc<logging::Session>,
    /// The resources the session follows; one per session, like `logging`.
    subscriptions: Arc<subscriptions::Session>,
    /// The HTTP server's sessions and their requests' SSE streams; `None`
    /// on stdio.
    sessions: Option<Arc<streams::Sessions>>,
}

impl LockstepMcp {
    /// A server whose calls all run as `tenant` (stdio).
    pub fn local(engine: Arc<Engine>, config: Arc<McpConfig>, tenant: TenantId) -> Self {
        let caller = Caller {
            tenant,
            name: format!("mcp-stdio-{}", std::process::id()),
            role: TokenRole::Admin,
        };
        LockstepMcp {
            engine,
            config,
            local: Some(caller),
            tool_router: Self::tools(),
            logging: Arc::default(),
            subscriptions: Arc::default(),
            sessions: None,
        }
    }

    /// A server whose calls run as the tenant the HTTP layer attached to
    /// each request, in one of `sessions`.
    pub fn remote(
        engine: Arc<Engine>,
        config: Arc<McpConfig>,
        sessions: Arc<streams::Sessions>,
    ) -> Self {
        LockstepMcp {
            engine,
            config,
            local: None,
            tool_router: Self::tools(),
            logging: Arc::default(),
            subscriptions: Arc::default(),
            sessions: Some(sessions),
        }
    }

    /// The built-in tools with their published (portable, flat) schemas;
    /// built once per process. More tools join by merging routes into this
    /// router.
    fn tools() -> ToolRouter<Self> {
        static TOOLS: std::sync::LazyLock<ToolRouter<LockstepMcp>> =
            std::sync::LazyLock::new(|| {
                let mut router = LockstepMcp::tool_router();
                schema::publish(&mut router);
                router
            });
        TOOLS.clone()
    }
}

impl LockstepMcp {
    /// Who sent a request: the tenant of its bearer token (attached by the
    /// authentication layer; a request without one never gets here), or the
    /// stdio server's `--tenant`.
    fn caller(&self, context: &RequestContext<RoleServer>) -> Result<Caller, ErrorData> {
        let caller = match context.extensions.get::<axum::http::request::Parts>() {
            Some(parts) => parts.extensions.get::<Caller>().cloned(),
            None => self.local.clone(),
        };
        caller.ok_or_else(|| {
            ErrorData::invalid_request("this request carries no valid bearer token", None)
        })
    }

    /// The SSE stream an HTTP request answers on (none on stdio).
    fn stream(&self, context: &RequestContext<RoleServer>) -> Option<streams::HeldStream> {
        let sessions = self.sessions.as_ref()?;
        let parts = context.extensions.get::<axum::http::request::Parts>()?;
        let session = parts.headers.get("mcp-session-id")?.to_str().ok()?;
        sessions.stream(&session.into(), &context.id)
    }

    /// The metrics label of tool `name`: a built-in tool's name, or
    /// `unknown` (a name that is not a built-in tool is not a label).
    fn label<'a>(&self, name: &'a str) -> &'a str {
        if self.tool_router.has_route(name) {
            name
        } else {
            "unknown"
        }
    }

    /// The refusal of a call of tool `name` by a `read` caller, unless the
    /// tool only reads (its `readOnlyHint`). Handler tools run jobs: they
    /// write. A name that is no tool is left to the call to refuse.
    fn refuse_for_role(&self, caller: &Caller, name: &str) -> Option<ToolFailure> {
        if caller.role != TokenRole::Read {
            return None;
        }
        let read_only = |t: &rmcp::model::Tool| {
            t.annotations
                .as_ref()
                .and_then(|a| a.read_only_hint)
                .unwrap_or(false)
        };
        match self.get_tool(name) {
            Some(tool) if !read_only(&tool) => {
                let mut allowed: Vec<String> = self
                    .tool_router
                    .list_all()
                    .into_iter()
                    .filter(|t| read_only(t))
                    .map(|t| t.name.to_string())
                    .collect();
                allowed.sort();
                Some(ToolFailure::Refused {
                    code: "forbidden",
                    message: format!(
                        "{} is a read token: it may call only the read-only tools ({}), not {}; call it with an admin token (`lockstep token create --role admin`)",
                        caller.name,
                        allowed.join(", "),
                        params::clip(name, 100)
                    ),
                })
            }
            _ => None,
        }
    }

    /// The tool of a registered handler, if it has one ([`handler_tools`]).
    fn handler_tool(&self, handler: &str) -> Option<handler_tools::HandlerTool> {
        let builtin = self.tool_router.list_all();
        handler_tools::handler_tools(&self.engine.plugins(), &builtin)
            .into_values()
            .find(|h| h.handler == handler)
    }
}

impl FromContextPart<ToolCallContext<'_, LockstepMcp>> for Caller {
    fn from_context_part(cx: &mut ToolCallContext<'_, LockstepMcp>) -> Result<Self, ErrorData> {
        cx.service.caller(&cx.request_context)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for LockstepMcp {
    // MCP logging is deprecated by SEP-2577 for the 2026-07-28 protocol; it
    // is the current protocol of every 2025 revision clients speak today.
    #[allow(deprecated)]
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_logging()
                .enable_completions()
                .enable_prompts()
                .enable_resources()
                .enable_resources_subscribe()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("lockstep", env!("CARGO_PKG_VERSION")))
        .with_instructions(INSTRUCTIONS)
    }

    /// A request of an MCP method whose params did not decode reaches here
    /// as a "custom" request: it is invalid params (-32602), not an unknown
    /// method (-32601, rmcp's default).
    async fn on_custom_request(
        &self,
        request: rmcp::model::CustomRequest,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CustomResult, ErrorData> {
        let method = params::clip(&request.method, 100);
        if MCP_METHODS.contains(&request.method.as_str()) {
            Err(ErrorData::invalid_params(
                format!("the params of {method} do not match its schema"),
                None,
            ))
        } else {
            Err(ErrorData::new(
                rmcp::model::ErrorCode::METHOD_NOT_FOUND,
                format!("lockstep serves no method {method}"),
                None,
            ))
        }
    }

    /// The session's minimum level for `notifications/message` ([`logging`]).
    #[allow(deprecated)]
    async fn set_level(
        &self,
        request: rmcp::model::SetLevelRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.caller(&context)?;
        self.logging.set_level(request.level);
        Ok(())
    }

    async fn list_resources(
        &self,
        request: Option<rmcp::model::PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListResourcesResult, ErrorData> {
        let caller = self.caller(&context)?;
        let cursor = request.as_ref().and_then(|r| r.cursor.as_deref());
        resources::list(&self.engine, &caller, cursor).await
    }

    /// Follow a resource ([`subscriptions`]).
    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: rmcp::model::SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let caller = self.caller(&context)?;
        subscriptions::subscribe(
            &self.engine,
            &caller,
            &self.subscriptions,
            &context.peer,
            &request.uri,
        )
        .await
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: rmcp::model::UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.caller(&context)?;
        subscriptions::unsubscribe(&self.subscriptions, &request.uri);
        Ok(())
    }

    async fn list_resource_templates(
        &self,
        _request: Option<rmcp::model::PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListResourceTemplatesResult, ErrorData> {
        self.caller(&context)?;
        Ok(resources::templates(&self.engine))
    }

    async fn read_resource(
        &self,
        request: rmcp::model::ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ReadResourceResponse, ErrorData> {
        let caller = self.caller(&context)?;
        resources::read(&self.engine, &caller, &request.uri)
            .await
            .map(Into::into)
    }

    async fn list_prompts(
        &self,
        _request: Option<rmcp::model::PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListPromptsResult, ErrorData> {
        self.caller(&context)?;
        Ok(prompts::list(&self.engine))
    }

    async fn get_prompt(
        &self,
        request: rmcp::model::GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::GetPromptResponse, ErrorData> {
        self.caller(&context)?;
        prompts::get(
            &self.engine,
            &request.name,
            request.arguments.as_ref(),
            |h| self.handler_tool(h),
        )
        .await
        .map(Into::into)
    }

    async fn complete(
        &self,
        request: rmcp::model::CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CompleteResult, ErrorData> {
        let caller = self.caller(&context)?;
        prompts::complete(&self.engine, &caller, &request).await
    }

    /// The built-in tools, then every registered handler as a tool of its
    /// own ([`handler_tools`]), read from the current plugins.
    async fn list_tools(
        &self,
        _request: Option<rmcp::model::PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListToolsResult, ErrorData> {
        let mut tools = self.tool_router.list_all();
        let handlers = handler_tools::handler_tools(&self.engine.plugins(), &tools);
        tools.extend(handlers.into_values().map(|h| h.tool));
        Ok(rmcp::model::ListToolsResult::with_all_items(tools))
    }

    fn get_tool(&self, name: &str) -> Option<rmcp::model::Tool> {
        self.tool_router.get(name).cloned().or_else(|| {
            let builtin = self.tool_router.list_all();
            handler_tools::handler_tools(&self.engine.plugins(), &builtin)
                .remove(name)
                .map(|h| h.tool)
        })
    }

    /// Every session hears `notifications/tools/list_changed` when a plugin
    /// reload changed the handlers, until it disconnects.
    async fn on_initialized(&self, context: rmcp::service::NotificationContext<RoleServer>) {
        let mut changes = self.engine.plugin_changes();
        let peer = context.peer;
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                if peer.is_transport_closed() || peer.notify_tool_list_changed().await.is_err() {
                    break;
                }
            }
        });
    }

    /// Clients of the session-less protocol (2026-07-28) ask for
    /// `tools/list_changed` through `subscriptions/listen`; that is the one
    /// notification lockstep offers there.
    fn accepted_subscription_filter(
        &self,
        requested: &rmcp::model::SubscriptionFilter,
    ) -> Option<rmcp::model::SubscriptionFilter> {
        let mut accepted = rmcp::model::SubscriptionFilter::new();
        accepted.tools_list_changed = requested.tools_list_changed;
        Some(accepted)
    }

    async fn listen(&self, context: rmcp::service::SubscriptionContext) -> Result<(), ErrorData> {
        let mut changes = self.engine.plugin_changes();
        loop {
            tokio::select! {
                () = context.cancelled() => return Ok(()),
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let notification = rmcp::model::ServerNotification::ToolListChangedNotification(
                        rmcp::model::ToolListChangedNotification::default(),
                    );
                    if context.sink().send(notification).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if let Some(args) = &request.arguments {
            // Serialized length bounds what the tool may allocate decoding it.
            let size = serde_json::to_vec(args)
                .map(|v| v.len())
                .unwrap_or(usize::MAX);
            if size > self.config.max_argument_bytes {
                return Err(ArgError::new(
                    "arguments",
                    format!(
                        "are {size} bytes of JSON, more than the {}-byte limit",
                        self.config.max_argument_bytes
                    ),
                )
                .into_error_data());
            }
        }
        let tool = request.name.clone();
        let started = std::time::Instant::now();
        let caller = self.caller(&context)?;
        if let Some(refusal) = self.refuse_for_role(&caller, &tool) {
            crate::engine::metrics::mcp_call(self.label(&tool), "refused", started.elapsed());
            return refusal.into_response().map(Into::into);
        }
        if !self.tool_router.has_route(&tool) {
            let builtin = self.tool_router.list_all();
            if let Some(handler) =
                handler_tools::handler_tools(&self.engine.plugins(), &builtin).remove(tool.as_ref())
            {
                let arguments = request.arguments.clone().unwrap_or_default();
                let listener = handler_tools::Listener {
                    peer: &context.peer,
                    call: context.id.clone(),
                    stream: self.stream(&context),
                    progress_token: context.meta.get_progress_token(),
                    logging: &self.logging,
                    cancelled: context.ct.clone(),
                };
                let result =
                    handler_tools::call(&self.engine, &caller, &handler, arguments, &listener)
                        .await;
                tracing::debug!(tool = %tool, elapsed_us = started.elapsed().as_micros() as u64, ok = result.is_ok(), "handler tool call");
                let outcome = match &result {
                    Ok(r) if r.is_error == Some(true) => "refused",
                    Ok(_) => "ok",
                    Err(_) => "error",
                };
                crate::engine::metrics::mcp_call(&tool, outcome, started.elapsed());
                return result.map(Into::into);
            }
        }
        let label = self.label(&tool);
        let tcc = ToolCallContext::new(self, request, context);
        let result = self.tool_router.call(tcc).await;
        tracing::debug!(tool = %tool, elapsed_us = started.elapsed().as_micros() as u64, ok = result.is_ok(), "tool call");
        let outcome = match &result {
            Ok(r) if call_refused(r) => "refused",
            Ok(_) => "ok",
            Err(_) => "error",
        };
        crate::engine::metrics::mcp_call(label, outcome, started.elapsed());
        result
    }
}

/// A tool result that is a refusal (`isError`: bad state, not found, …).
fn call_refused(response: &CallToolResponse) -> bool {
    matches!(response, CallToolResponse::Complete(r) if r.is_error == Some(true))
}

/// Serve MCP over this process's stdin/stdout until the client disconnects.
pub async fn serve_stdio(
    engine: Arc<Engine>,
    config: McpConfig,
    tenant: TenantId,
) -> Result<(), McpServeError> {
    let max_line_bytes = config.max_argument_bytes.saturating_add(ENVELOPE_BYTES);
    let server = LockstepMcp::local(engine, Arc::new(config), tenant);
    let running = server
        .serve(stdio::StdioTransport::process(max_line_bytes))
        .await
        .map_err(|e| McpServeError::Start(e.to_string()))?;
    running
        .waiting()
        .await
        .map_err(|e| McpServeError::Stopped(e.to_string()))?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum McpServeError {
    #[error("the MCP session could not start: {0}")]
    Start(String),
    #[error("the MCP session ended with an error: {0}")]
    Stopped(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
}
