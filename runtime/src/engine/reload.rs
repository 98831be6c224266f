//! Hot reload: a serving process (`serve`, `mcp`) watches its plugin
//! directories and swaps the engine's plugin host when a plugin, its
//! grants, its signature or the directory's lock changes.
//!
//! **Invariants:**
//! - Events are debounced ([`DEBOUNCE`]): a file being copied in is one
//!   reload after it settles, not one per write.
//! - The swap is atomic ([`Engine::replace_plugins`]): new work sees the new
//!   host, tasks already running finish on the one they started with.
//! - A plugin that fails to load keeps its previous version serving
//!   ([`PluginHost::reload`]), and a reload that fails as a whole (a
//!   duplicate handler, a directory that became writable by others) keeps
//!   the current host; either way the reason is logged, never swallowed.
//! - A reload that changed nothing swaps nothing (and so announces nothing).

use super::Engine;
use crate::plugin::HostConfig;
use notify_debouncer_mini::notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_mini::{DebounceEventResult, Debouncer, new_debouncer};
use std::sync::Arc;
use std::time::Duration;

/// How long a plugin directory must be quiet before it is reloaded.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// Watches the plugin directories while it lives.
pub struct PluginWatcher {
    _debouncer: Debouncer<RecommendedWatcher>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PluginWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why the directories cannot be watched.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch the plugin directories for changes: {0}")]
pub struct WatchError(String);

/// Start watching the directories of `config` and reloading `engine`'s
/// plugins when they change.
pub fn watch_plugins(engine: Arc<Engine>, config: HostConfig) -> Result<PluginWatcher, WatchError> {
    let dirs = crate::plugin::resolve_plugin_dirs(&config.dirs);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<DebounceEventResult>();
    let mut debouncer = new_debouncer(DEBOUNCE, move |events: DebounceEventResult| {
        // The receiver is gone only when the watcher is being dropped.
        let _ = tx.send(events);
    })
    .map_err(|e| WatchError(e.to_string()))?;
    for dir in &dirs {
        debouncer
            .watcher()
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| WatchError(format!("{}: {e}", dir.display())))?;
    }
    let task = tokio::spawn(async move {
        while let Some(events) = rx.recv().await {
            let mut batch = vec![events];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            for events in &batch {
                if let Err(e) = events {
                    tracing::warn!("watching the plugin directories: {e}");
                }
            }
            reload(&engine, &config).await;
        }
    });
    Ok(PluginWatcher {
        _debouncer: debouncer,
        task,
    })
}

/// Reload once and swap the host if anything changed.
pub async fn reload(engine: &Engine, config: &HostConfig) {
    let current = engine.plugins();
    let (host, report) = match current.reload(config).await {
        Ok(loaded) => loaded,
        Err(e) => {
            tracing::warn!(
                "the plugin directories changed but were not reloaded: {e}; the loaded plugins keep serving"
            );
            return;
        }
    };
    for failure in &report.failures {
        tracing::warn!("{failure}");
    }
    if host.same_plugins_as(&current) {
        return;
    }
    let before = current.handler_names();
    let after = host.handler_names();
    let added: Vec<&String> = after.iter().filter(|n| !before.contains(n)).collect();
    let removed: Vec<&String> = before.iter().filter(|n| !after.contains(n)).collect();
    tracing::info!(
        "plugins reloaded: {} handlers; added: {}; removed: {}",
        after.len(),
        list(&added),
        list(&removed)
    );
    engine.replace_plugins(Arc::new(host));
}

fn list(names: &[&String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names
            .iter()
            .map(|n| crate::limits::printable(n).into_owned())
            .collect::<Vec<_>>()
            .join(", ")
    }
}
