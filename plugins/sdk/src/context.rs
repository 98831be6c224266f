//! [`Context`]: what a running handler knows about its task and what it may
//! ask of the host (spawn, log, progress, lineage, cancellation).
//!
//! Spawned tasks are only collected here; the host commits them together with
//! the task's output, and only if the run succeeds.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::TaskError;
use crate::bindings::lockstep::plugin::context as host;
use crate::bindings::lockstep::plugin::types::{LogLevel, Spawn, Task};

/// The largest page the host hands out from `stage-results`.
const MAX_PAGE: u32 = 1000;

/// The task being run and the host services available to its handler.
pub struct Context {
    handler: String,
    job_id: u64,
    task_id: u64,
    stage: String,
    attempt: u32,
    spawned: RefCell<Vec<Spawn>>,
}

impl Context {
    /// Takes the task's identity; its input has already been decoded.
    pub(crate) fn new(task: Task) -> Self {
        Context {
            handler: task.handler,
            job_id: task.job_id,
            task_id: task.task_id,
            stage: task.stage,
            attempt: task.attempt,
            spawned: RefCell::new(Vec::new()),
        }
    }

    pub(crate) fn into_spawned(self) -> Vec<Spawn> {
        self.spawned.into_inner()
    }

    /// Name of the handler being run (a component may export several).
    pub fn handler(&self) -> &str {
        &self.handler
    }

    /// The job this task belongs to.
    pub fn job_id(&self) -> u64 {
        self.job_id
    }

    /// This task's id, unique across the database.
    pub fn task_id(&self) -> u64 {
        self.task_id
    }

    /// Name of the stage the task runs in.
    pub fn stage(&self) -> &str {
        &self.stage
    }

    /// 1 on the first attempt, 2 on the first retry, and so on.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Adds a task to a *later* stage of the same job, run by `handler` with
    /// `input` (serialized to JSON). The host commits spawned tasks together
    /// with this task's output, only if the run succeeds; spawning into the
    /// current or an earlier stage fails the task fatally. A run may spawn at
    /// most [`crate::MAX_SPAWNS`] tasks, whose inputs meet the host's
    /// `--max-input-bytes` each and 16 MiB together.
    pub fn spawn(
        &self,
        stage: &str,
        handler: &str,
        input: &impl Serialize,
    ) -> Result<(), TaskError> {
        if self.spawned.borrow().len() >= crate::MAX_SPAWNS {
            return Err(TaskError::fatal(format!(
                "a task may spawn at most {} tasks; split the work over several tasks",
                crate::MAX_SPAWNS
            )));
        }
        let input = serde_json::to_string(input).map_err(|e| {
            TaskError::fatal(format!(
                "the input of a task spawned into stage `{stage}` could not be encoded as JSON: {e}"
            ))
        })?;
        self.spawned.borrow_mut().push(Spawn {
            stage: stage.to_owned(),
            handler: handler.to_owned(),
            input,
        });
        Ok(())
    }

    /// Number of tasks spawned so far in this run.
    pub fn spawned_count(&self) -> usize {
        self.spawned.borrow().len()
    }

    /// Records a log line against this task.
    pub fn log(&self, level: LogLevel, message: &str) {
        host::log(level, message);
    }

    /// Reports progress inside a long task: `done` of `total` units.
    pub fn progress(&self, done: u64, total: u64, message: &str) {
        host::progress(done, total, message);
    }

    /// True once this task's job has been cancelled: stop early if you can.
    pub fn cancelled(&self) -> bool {
        host::cancelled()
    }

    /// Reads the outputs of the succeeded tasks of an earlier stage of this
    /// job, in task id order, deserializing each as `T` (use
    /// `serde_json::Value` to take them as they are). The iterator fetches a
    /// page at a time from the host, so a stage with 100,000 outputs never
    /// sits in memory at once.
    ///
    /// Each item is a `Result`: a host refusal (the stage is not earlier than
    /// this one, or does not exist) or an output that is not a `T` is a fatal
    /// [`TaskError`], after which the iterator ends.
    pub fn stage_results<T: DeserializeOwned>(&self, stage: &str) -> StageResults<T> {
        StageResults {
            stage: stage.to_owned(),
            after: None,
            page: VecDeque::new(),
            page_size: MAX_PAGE,
            finished: false,
            output: PhantomData,
        }
    }
}

/// One output of an earlier stage, as yielded by [`Context::stage_results`].
#[derive(Debug, Clone, PartialEq)]
pub struct StageResult<T> {
    /// The task that produced the output.
    pub task_id: u64,
    /// The task's output.
    pub output: T,
}

/// Iterator over an earlier stage's outputs; see [`Context::stage_results`].
pub struct StageResults<T> {
    stage: String,
    after: Option<u64>,
    page: VecDeque<(u64, String)>,
    page_size: u32,
    finished: bool,
    output: PhantomData<fn() -> T>,
}

impl<T> StageResults<T> {
    /// Asks the host for pages of `size` outputs (1 to 1,000; default 1,000).
    pub fn page_size(mut self, size: u32) -> Self {
        self.page_size = size.clamp(1, MAX_PAGE);
        self
    }
}

impl<T: DeserializeOwned> Iterator for StageResults<T> {
    type Item = Result<StageResult<T>, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.page.is_empty() && !self.finished {
            match host::stage_results(&self.stage, self.after, self.page_size) {
                // The contract ends a listing with an empty page, not a short one.
                Ok(page) if page.is_empty() => self.finished = true,
                Ok(page) => self.page = page.into(),
                Err(message) => {
                    self.finished = true;
                    return Some(Err(TaskError::fatal(format!(
                        "reading the results of stage `{}` failed: {message}",
                        self.stage
                    ))));
                }
            }
        }
        let (task_id, output) = self.page.pop_front()?;
        self.after = Some(task_id);
        Some(match serde_json::from_str(&output) {
            Ok(output) => Ok(StageResult { task_id, output }),
            Err(e) => {
                self.finished = true;
                self.page.clear();
                Err(TaskError::fatal(format!(
                    "the output of task {task_id} in stage `{}` is not what this handler expects: {e}",
                    self.stage
                )))
            }
        })
    }
}
