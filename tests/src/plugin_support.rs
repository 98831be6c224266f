//! Shared set-up for the plugin host tests: real plugin files copied into a
//! fresh directory per test, grants written beside them, a per-test compile
//! cache, and a task context that records what the guest logged.

use lockstep::plugin::{
    HostConfig, LoadReport, LogLevel, NO_JOB_CONTEXT, PluginHost, RunFailure, RunOutcome,
    RunRequest, TaskContext,
};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A plugin directory and a compile cache, both fresh and private to a test.
pub struct PluginDir {
    pub root: tempfile::TempDir,
}

impl PluginDir {
    pub fn new() -> PluginDir {
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(root.path().join("plugins")).expect("plugins dir");
        PluginDir { root }
    }

    /// The directory the host scans.
    pub fn plugins(&self) -> PathBuf {
        self.root.path().join("plugins")
    }

    /// The compile cache of this test.
    pub fn cache(&self) -> PathBuf {
        self.root.path().join("cache")
    }

    /// Copy a built guest into the plugin directory as `<file_name>`.
    pub fn add_as(&self, artifact: &str, file_name: &str) -> PathBuf {
        let to = self.plugins().join(file_name);
        std::fs::copy(artifact, &to).expect("copy plugin");
        to
    }

    /// Copy a built guest into the plugin directory under its own file name.
    pub fn add(&self, artifact: &str) -> PathBuf {
        let name = Path::new(artifact)
            .file_name()
            .expect("artifact has a file name")
            .to_string_lossy()
            .into_owned();
        self.add_as(artifact, &name)
    }

    /// Write `<stem>.toml` beside `<stem>.wasm`.
    pub fn grant(&self, wasm: &Path, toml: &str) {
        std::fs::write(wasm.with_extension("toml"), toml).expect("write grants");
    }

    /// A directory outside the plugin directory, for grants and escapes.
    pub fn mkdir(&self, name: &str) -> PathBuf {
        let dir = self.root.path().join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    pub fn config(&self, strict: bool) -> HostConfig {
        HostConfig::new(vec![self.plugins()], Some(self.cache()), strict)
    }

    pub async fn load(&self) -> (PluginHost, LoadReport) {
        PluginHost::load(self.config(false))
            .await
            .expect("the plugin directory loads")
    }
}

/// One logged line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub level: LogLevel,
    pub message: String,
}

/// A [`TaskContext`] outside any job that keeps every log line, so tests can
/// read what the guest logged and printed. Its job counts as cancelled from
/// the check after `cancel_after` checks, when that is set.
#[derive(Debug, Default)]
pub struct RecordingContext {
    lines: Mutex<Vec<Logged>>,
    cancel_after: Option<u32>,
    checks: std::sync::atomic::AtomicU32,
}

impl RecordingContext {
    pub fn new() -> Arc<RecordingContext> {
        Arc::new(RecordingContext::default())
    }

    /// A context whose job is cancelled once the guest has asked `checks` times.
    pub fn cancelled_after(checks: u32) -> Arc<RecordingContext> {
        Arc::new(RecordingContext {
            cancel_after: Some(checks),
            ..RecordingContext::default()
        })
    }

    /// How many times the guest asked whether its job was cancelled.
    pub fn checks(&self) -> u32 {
        self.checks.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn lines(&self) -> Vec<Logged> {
        self.lines.lock().expect("log lock").clone()
    }
}

#[async_trait::async_trait]
impl TaskContext for RecordingContext {
    fn log(&self, level: LogLevel, message: &str) {
        self.lines.lock().expect("log lock").push(Logged {
            level,
            message: message.to_owned(),
        });
    }

    fn progress(&self, done: u64, total: u64, message: &str) {
        self.log(
            LogLevel::Info,
            &format!("progress {done}/{total}: {message}"),
        );
    }

    async fn stage_results(
        &self,
        _stage: &str,
        _after: Option<u64>,
        _limit: u32,
    ) -> Result<Vec<(u64, String)>, String> {
        Err(NO_JOB_CONTEXT.to_owned())
    }

    async fn cancelled(&self) -> bool {
        let before = self
            .checks
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.cancel_after.is_some_and(|n| before >= n)
    }
}

/// A [`TaskContext`] outside any job whose agent answers every question
/// with `answer`, counting the questions that reach it.
pub struct AnsweringContext {
    pub answer: String,
    pub asked: std::sync::atomic::AtomicU32,
}

impl AnsweringContext {
    pub fn new(answer: String) -> Arc<AnsweringContext> {
        Arc::new(AnsweringContext {
            answer,
            asked: std::sync::atomic::AtomicU32::new(0),
        })
    }
}

#[async_trait::async_trait]
impl TaskContext for AnsweringContext {
    fn log(&self, _level: LogLevel, _message: &str) {}

    fn progress(&self, _done: u64, _total: u64, _message: &str) {}

    async fn stage_results(
        &self,
        _stage: &str,
        _after: Option<u64>,
        _limit: u32,
    ) -> Result<Vec<(u64, String)>, String> {
        Err(NO_JOB_CONTEXT.to_owned())
    }

    async fn cancelled(&self) -> bool {
        false
    }

    async fn ask(
        &self,
        _kind: lockstep::plugin::AskKind,
        _request: &str,
    ) -> Result<String, lockstep::plugin::AskError> {
        self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(self.answer.clone())
    }
}

/// A first attempt of `handler` with `input`, outside any job, with the
/// grant's time limit.
pub fn request(handler: &str, input: serde_json::Value) -> RunRequest {
    RunRequest {
        handler: handler.to_owned(),
        job_id: 1,
        task_id: 1,
        stage: "test".to_owned(),
        attempt: 1,
        input_json: input.to_string(),
        timeout: Duration::MAX,
    }
}

/// Run `handler` once with a fresh recording context.
pub async fn run(
    host: &PluginHost,
    handler: &str,
    input: serde_json::Value,
) -> (Result<RunOutcome, RunFailure>, Arc<RecordingContext>) {
    let cx = RecordingContext::new();
    let result = host.run(request(handler, input), cx.clone()).await;
    (result, cx)
}

/// The host still serves: example:noop runs and echoes its input.
pub async fn assert_still_serving(host: &PluginHost) {
    let (result, _) = run(
        host,
        "example:noop",
        serde_json::json!({"still": "serving"}),
    )
    .await;
    let outcome = result.expect("example:noop runs after the hostile run");
    assert_eq!(outcome.output, r#"{"still":"serving"}"#);
}

/// A [`TaskContext`] for a task whose job has one earlier stage, `stage`,
/// holding `outputs` (task id, output JSON) in task id order: lineage reads
/// page through them exactly as the engine's store does.
pub struct LineageContext {
    pub stage: String,
    pub outputs: Vec<(u64, String)>,
    /// The `limit` of every stage-results call, in order.
    pub page_sizes: Mutex<Vec<u32>>,
}

#[async_trait::async_trait]
impl TaskContext for LineageContext {
    fn log(&self, _level: LogLevel, _message: &str) {}

    fn progress(&self, _done: u64, _total: u64, _message: &str) {}

    async fn stage_results(
        &self,
        stage: &str,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<(u64, String)>, String> {
        self.page_sizes.lock().expect("lock").push(limit);
        if stage != self.stage {
            return Err(format!(
                "stage {stage:?} is not an earlier stage of this job"
            ));
        }
        Ok(self
            .outputs
            .iter()
            .filter(|(id, _)| after.is_none_or(|a| *id > a))
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn cancelled(&self) -> bool {
        false
    }
}

/// One `{action, target, ok, detail}` entry of a hostile plugin's output.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Attempt {
    pub action: String,
    pub target: String,
    pub ok: bool,
    pub detail: String,
}

/// The `attempts` a hostile plugin reported.
pub fn attempts(outcome: &RunOutcome) -> Vec<Attempt> {
    #[derive(serde::Deserialize)]
    struct Output {
        attempts: Vec<Attempt>,
    }
    serde_json::from_str::<Output>(&outcome.output)
        .expect("the output lists attempts")
        .attempts
}
