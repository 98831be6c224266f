//! What `lockstep plugins list` and `lockstep exec` show: the registered
//! handlers with their plugin file, hash, grants and input schema, and one
//! task run outside any job.
//!
//! **Invariant:** read-only views of a loaded host; `exec` validates the
//! input against the handler's schema before anything runs, exactly as a
//! submitted task would be.

use super::context::TaskContext;
use super::failure::RunFailure;
use super::grants::Grants;
use super::host::{PluginHost, RunOutcome, RunRequest};
use super::registry::{InputError, McpPrompt, McpResource};
use crate::limits::printable;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// One registered handler, for `plugins list` (`--json` serializes this).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HandlerListing {
    pub name: String,
    pub description: String,
    /// The plugin file providing it.
    pub plugin: PathBuf,
    /// sha256 of the plugin file (hex).
    pub sha256: String,
    /// Key id of the trusted minisign key whose signature verified.
    pub signer: Option<String>,
    /// What the operator granted the plugin.
    pub grants: Grants,
    /// One-line form of `grants`.
    pub grants_summary: String,
    pub input_schema: serde_json::Value,
    /// The MCP tool its component declared for it (WIT `mcp`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_tool: Option<super::registry::McpTool>,
}

impl HandlerListing {
    /// The first 12 hex digits of the plugin's sha256.
    pub fn sha256_short(&self) -> &str {
        self.sha256.get(..12).unwrap_or(&self.sha256)
    }

    /// The human form: name and description, then plugin, grants and the
    /// input schema (compact JSON), indented. What the plugin wrote has its
    /// control characters escaped, so a description cannot rewrite the
    /// operator's terminal.
    pub fn render_text(&self) -> String {
        let schema = serde_json::to_string(&self.input_schema)
            .unwrap_or_else(|_| "(unprintable)".to_owned());
        let signed = match &self.signer {
            Some(key) => format!(", signed by key {key}"),
            None => String::new(),
        };
        format!(
            "{} — {}\n  plugin: {} (sha256 {}{signed})\n  grants: {}\n  input:  {}",
            printable(&self.name),
            printable(&self.description),
            printable(&self.plugin.display().to_string()),
            self.sha256_short(),
            printable(&self.grants_summary),
            printable(&schema)
        )
    }
}

/// Why `exec` produced no output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Run(#[from] RunFailure),
}

impl PluginHost {
    /// Every registered handler, sorted by name.
    pub fn describe_all(&self) -> Vec<HandlerListing> {
        self.registry
            .handlers
            .values()
            .map(|entry| {
                let plugin = &self.plugins[entry.plugin];
                HandlerListing {
                    name: entry.info.name.clone(),
                    description: entry.info.description.clone(),
                    plugin: plugin.path.clone(),
                    sha256: plugin.sha256.clone(),
                    signer: plugin.signer.clone(),
                    grants: plugin.grants.clone(),
                    grants_summary: plugin.grants.summary(),
                    input_schema: entry.info.input_schema.clone(),
                    mcp_tool: entry.info.mcp_tool.clone(),
                }
            })
            .collect()
    }

    /// The resources (and templates) the plugins' `mcp-catalog` exports
    /// offer, in scan order.
    pub fn mcp_resources(&self) -> Vec<McpResource> {
        self.plugins
            .iter()
            .flat_map(|p| p.catalog.resources.iter().cloned())
            .collect()
    }

    /// The prompts the plugins' `mcp-catalog` exports offer, in scan order.
    pub fn mcp_prompts(&self) -> Vec<McpPrompt> {
        self.plugins
            .iter()
            .flat_map(|p| p.catalog.prompts.iter().cloned())
            .collect()
    }

    /// Run `handler` once outside any job to answer an MCP request (a
    /// resource read, a prompt), like `exec`; its log lines go to this
    /// process's log at debug level.
    pub async fn answer(
        &self,
        handler: &str,
        input: &serde_json::Value,
    ) -> Result<RunOutcome, ExecError> {
        let cx = Arc::new(super::context::LoadContext {
            plugin: format!("handler {handler}"),
        });
        self.exec(handler, input, 1, cx).await
    }

    /// Run one task of `handler` outside any job (job and task id 0, stage
    /// `exec`), with the time limit of the plugin's grant. Log lines go to
    /// `cx`; pass [`super::StandaloneContext`] to print them to stderr.
    pub async fn exec(
        &self,
        handler: &str,
        input: &serde_json::Value,
        attempt: u32,
        cx: Arc<dyn TaskContext>,
    ) -> Result<RunOutcome, ExecError> {
        self.validate_input(handler, input)?;
        let req = RunRequest {
            handler: handler.to_owned(),
            job_id: 0,
            task_id: 0,
            stage: "exec".to_owned(),
            attempt,
            input_json: input.to_string(),
            timeout: Duration::MAX,
        };
        Ok(self.run(req, cx).await?)
    }
}

/// The limits every plugin meets, one per line, for `--help` (the same
/// numbers as docs/plugins.md, from the constants that enforce them).
pub fn limits_help() -> String {
    use super::context::STAGE_RESULTS_PAGE_BYTES;
    use super::discovery::{MAX_GRANTS_FILE_BYTES, MAX_PLUGIN_FILE_BYTES};
    use super::grants::{DEFAULT_MAX_OUTPUT_BYTES, MAX_OUTPUT_BYTES};
    use super::host::{
        DESCRIBE_TIMEOUT, MAX_DESCRIBE_BYTES, MAX_DESCRIPTION_BYTES, MAX_HANDLERS_PER_PLUGIN,
        MAX_SCHEMA_BYTES,
    };
    use crate::limits::{
        MAX_ERROR_BYTES, MAX_JSON_DEPTH, MAX_SPAWNED_BYTES_PER_TASK, MAX_SPAWNS_PER_TASK,
        show_bytes,
    };
    let b = |n: u64| show_bytes(n);
    format!(
        "Limits every plugin meets (docs/plugins.md, \"Limits\"):\n  \
         files: regular *.wasm files (or symlinks to them) of at most {}; grants files of at most {}\n  \
         describe(): returns within {}s (or the grant's timeout if shorter), at most {} handlers, \
         descriptions of {}, input schemas of {}, {} in all; a failure is remembered in the cache directory\n  \
         a handler name another plugin registered first: the newcomer is not loaded\n  \
         outputs: at most {} (grant max_output_bytes, up to {}), JSON nested at most {} deep\n  \
         spawns: at most {} per task, each input within --max-input-bytes, {} together\n  \
         error texts: cut to {}; log lines: 100 per attempt of {}; stage-results pages: 1000 outputs or {}",
        b(MAX_PLUGIN_FILE_BYTES),
        b(MAX_GRANTS_FILE_BYTES),
        DESCRIBE_TIMEOUT.as_secs(),
        MAX_HANDLERS_PER_PLUGIN,
        b(MAX_DESCRIPTION_BYTES as u64),
        b(MAX_SCHEMA_BYTES as u64),
        b(MAX_DESCRIBE_BYTES as u64),
        b(u64::from(DEFAULT_MAX_OUTPUT_BYTES)),
        b(u64::from(MAX_OUTPUT_BYTES)),
        MAX_JSON_DEPTH,
        MAX_SPAWNS_PER_TASK,
        b(MAX_SPAWNED_BYTES_PER_TASK as u64),
        b(MAX_ERROR_BYTES as u64),
        b(super::MAX_LOG_MESSAGE as u64),
        b(STAGE_RESULTS_PAGE_BYTES),
    )
}
