//! `run_pipeline`: which pipeline files an MCP client may run.
//!
//! The operator names one directory (`--pipelines-root DIR`); a client names
//! a file inside it. A path that leaves the root — `..`, an absolute path
//! elsewhere, a symlink pointing out — is refused with the field named, and
//! nothing runs. Steps run in the server process, with the secrets of the
//! server's environment.
//!
//! **Invariant:** a resolved pipeline file is inside the canonical root.

use crate::plugin::CommandHost;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The pipelines a server may run and what runs their steps.
#[derive(Clone)]
pub struct PipelineAccess {
    root: PathBuf,
    pub commands: Arc<CommandHost>,
}

impl std::fmt::Debug for PipelineAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineAccess")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl PipelineAccess {
    /// Pipelines under `root` (which must be a directory).
    pub fn new(root: &Path, commands: Arc<CommandHost>) -> Result<PipelineAccess, String> {
        let root = root
            .canonicalize()
            .map_err(|e| format!("--pipelines-root {} cannot be used: {e}", root.display()))?;
        if !root.is_dir() {
            return Err(format!(
                "--pipelines-root {} is not a directory",
                root.display()
            ));
        }
        Ok(PipelineAccess { root, commands })
    }

    /// The file `path` names, relative to the root; one sentence when it is
    /// not a file inside the root.
    pub fn resolve(&self, path: &str) -> Result<PathBuf, String> {
        let joined = self.root.join(path);
        let resolved = joined
            .canonicalize()
            .map_err(|_| format!("there is no pipeline file {path:?} under the pipelines root"))?;
        if !resolved.starts_with(&self.root) {
            return Err(format!(
                "{path:?} is outside the pipelines root; name a file inside it, relative to it"
            ));
        }
        if !resolved.is_file() {
            return Err(format!("{path:?} is not a file"));
        }
        Ok(resolved)
    }
}
