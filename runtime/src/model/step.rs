//! A CI step as `spec::pipeline` resolves it and the engine's step runner
//! runs it: the input of a `command` task. Everything a step needs is here
//! (absolute paths, expanded matrix values, the names — never the values —
//! of its secrets), so a run resumes or re-runs from the database alone.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// When a step runs, judged from the steps it `needs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// Every needed step succeeded (a soft failure counts as success).
    #[default]
    Success,
    /// Some needed step failed.
    Failure,
    /// Whatever happened before.
    Always,
}

impl Condition {
    /// As written in a pipeline file: `success()`, `failure()`, `always()`.
    pub fn as_call(self) -> &'static str {
        match self {
            Condition::Success => "success()",
            Condition::Failure => "failure()",
            Condition::Always => "always()",
        }
    }
}

/// What a step's component is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// A `wasi:cli/command` program run once.
    #[default]
    Command,
    /// A Rust test binary (`cargo test --no-run --target wasm32-wasip2`):
    /// its tests are listed and each runs in a fresh instance.
    RustTest,
}

/// How a run of a step ended, as `retry.on` names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryOn {
    Trap,
    Timeout,
    Memory,
    /// Exited with this status.
    Exit(i32),
    /// Exited with any non-zero status.
    AnyExit,
}

impl RetryOn {
    /// `trap`, `timeout`, `memory`, `exit:N` or `exit:any`.
    pub fn parse(text: &str) -> Option<RetryOn> {
        match text {
            "trap" => Some(RetryOn::Trap),
            "timeout" => Some(RetryOn::Timeout),
            "memory" => Some(RetryOn::Memory),
            "exit:any" => Some(RetryOn::AnyExit),
            _ => text
                .strip_prefix("exit:")
                .and_then(|n| n.parse::<i32>().ok())
                .filter(|n| *n != 0)
                .map(RetryOn::Exit),
        }
    }
}

/// A cache a step restores before it runs and saves after it succeeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachePlan {
    /// The key template (`deps-{{ hash('Cargo.lock') }}`), evaluated
    /// against the workspace when the step runs.
    pub key: String,
    /// Prefixes tried, in order, when no entry has the exact key.
    pub restore_keys: Vec<String>,
    /// Where the guest sees it (an absolute guest path).
    pub path: String,
}

/// The matrix a step was expanded from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatrixGroup {
    /// The step's key in the file; every expansion shares it.
    pub step: String,
    /// A failed expansion skips its siblings that have not started.
    pub fail_fast: bool,
    /// At most this many expansions run at once (0: no limit).
    pub max_parallel: u32,
}

/// A finished step carried over from an earlier run (`ci rerun --failed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reuse {
    /// The run (job id) it finished in.
    pub run: i64,
    /// `succeeded` or `skipped`.
    pub state: super::TaskState,
    pub output_json: Option<String>,
}

/// One step of a pipeline run: the input JSON of its `command` task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepPlan {
    /// The task key: the step's key, or for a matrix expansion the step's
    /// key and its values (`test-linux-stable`).
    pub key: String,
    /// Matrix values of this expansion (empty without a matrix).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub matrix: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<MatrixGroup>,
    pub kind: StepKind,
    /// The component file (absolute).
    pub component: PathBuf,
    /// Hex sha256 of the component when the pipeline was submitted.
    pub component_sha256: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Names of host secrets put into the guest's env.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Task keys this step waits for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    pub condition: Condition,
    pub timeout_ms: u64,
    pub memory_mib: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry_on: Vec<RetryOn>,
    /// Extra attempts allowed for outcomes in `retry_on`.
    pub retry_limit: u32,
    /// A failure does not fail the pipeline (soft fail).
    pub allow_failure: bool,
    /// Preopened read-only at `/workspace`.
    pub workspace: PathBuf,
    /// Where artifacts and caches live.
    pub state_dir: PathBuf,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache: Vec<CachePlan>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reuse: Option<Reuse>,
}

/// Most expansions one matrix may produce.
pub const MAX_MATRIX_JOBS: usize = 256;

/// How a step (or one test of a `rust-test` step) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    /// Exited with status 0 (every test passed).
    Passed,
    /// Exited with a non-zero status (a test failed).
    Failed,
    Trap,
    Timeout,
    Memory,
    /// The sandbox could not be set up.
    Setup,
    /// Its `if` was false, or `fail_fast` stopped it.
    Skipped,
}

impl StepOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            StepOutcome::Passed => "passed",
            StepOutcome::Failed => "failed",
            StepOutcome::Trap => "trap",
            StepOutcome::Timeout => "timeout",
            StepOutcome::Memory => "memory",
            StepOutcome::Setup => "setup",
            StepOutcome::Skipped => "skipped",
        }
    }
}

/// One test of a `rust-test` step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestReport {
    pub name: String,
    pub outcome: StepOutcome,
    /// The panic message or why it stopped (masked, bounded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// What it printed (masked, bounded).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output: String,
    pub duration_ms: u64,
}

/// What a cache did for a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheReport {
    /// The evaluated key.
    pub key: String,
    /// The entry restored (the key itself, or one found by a restore key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored: Option<String>,
    /// Whether the step's cache directory was saved under the key.
    pub saved: bool,
}

/// The output of a step's task (also kept when the step failed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepReport {
    pub outcome: StepOutcome,
    /// One sentence: how the run ended, or why it did not run.
    pub summary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// It failed, but `allow_failure` made it a soft failure.
    #[serde(default)]
    pub soft_failure: bool,
    /// The content address of its `/out` (`sha256-…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache: Vec<CacheReport>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tests: Vec<TestReport>,
    pub duration_ms: u64,
    /// It was skipped because a failure happened upstream (so `failure()`
    /// further down still sees it).
    #[serde(default)]
    pub upstream_failure: bool,
    /// Carried over from this earlier run instead of running again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused_from: Option<i64>,
}
