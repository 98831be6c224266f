//! The pipeline file language (`lockstep-ci.toml`, or the same in JSON): the
//! serde model as written. Every table denies unknown keys except a matrix,
//! whose other keys are its axes.

use super::super::Timeout;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PipelineFile {
    /// Shown by `ci status` and `lockstep jobs` (default: the file's
    /// directory name).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub steps: Vec<StepFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StepFile {
    pub key: String,
    /// `command` (default) or `rust-test`.
    #[serde(default)]
    pub kind: Option<String>,
    /// A path relative to the file, or the name of a command component in
    /// the plugin directories.
    pub component: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub needs: Vec<String>,
    #[serde(default, rename = "if")]
    pub condition: Option<String>,
    #[serde(default)]
    pub timeout: Option<Timeout>,
    #[serde(default)]
    pub memory_mib: Option<u64>,
    #[serde(default)]
    pub retry: Option<RetryFile>,
    #[serde(default)]
    pub matrix: Option<MatrixFile>,
    #[serde(default)]
    pub allow_failure: bool,
    #[serde(default)]
    pub cache: Vec<CacheFile>,
    #[serde(default)]
    pub secrets: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RetryFile {
    pub on: Vec<String>,
    pub limit: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CacheFile {
    pub key: String,
    #[serde(default)]
    pub restore_keys: Vec<String>,
    pub path: String,
}

/// A matrix value: written as a string, an integer or a boolean, used as text.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub(super) enum AxisValue {
    Text(String),
    Integer(i64),
    Boolean(bool),
}

impl AxisValue {
    pub fn text(&self) -> String {
        match self {
            AxisValue::Text(s) => s.clone(),
            AxisValue::Integer(n) => n.to_string(),
            AxisValue::Boolean(b) => b.to_string(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct MatrixFile {
    #[serde(default)]
    pub include: Vec<BTreeMap<String, AxisValue>>,
    #[serde(default)]
    pub exclude: Vec<BTreeMap<String, AxisValue>>,
    #[serde(default)]
    pub fail_fast: Option<bool>,
    #[serde(default)]
    pub max_parallel: Option<u32>,
    /// Every other key is an axis: a name and its values.
    #[serde(flatten)]
    pub axes: BTreeMap<String, Vec<AxisValue>>,
}
