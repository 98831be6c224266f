//! The vocabulary every layer speaks: ids, timestamps, the lease token, who
//! executes a task, what a death does, event kinds, the states and their one
//! transition table, how each of these is spelled as text, and the plain data
//! that passes between layers (a validated job; a CI step's plan and report;
//! jobs, tasks and events as read back).
//!
//! `spec`, `store`, `engine`, `plugin` and the front doors depend on this
//! module; it depends on none of them (only serde and thiserror), so a type
//! here can never drag a layer's concerns into another.

mod event;
mod ids;
mod name;
mod record;
mod state;
mod step;
mod submit;
mod task;

pub use event::EventKind;
pub use ids::{JobId, LeaseToken, Millis, TaskId, TenantId};
pub use name::UnknownName;
pub use record::{
    Event, HandlerDepth, JobStatus, JobSummary, QueueDepth, StageStatus, StateTotals, TaskRecord,
    TokenRecord, TokenRole,
};
pub use state::{IllegalTransition, JobState, StageState, TaskState};
pub use step::{
    CachePlan, CacheReport, Condition, MAX_MATRIX_JOBS, MatrixGroup, RetryOn, Reuse, StepKind,
    StepOutcome, StepPlan, StepReport, TestReport,
};
pub use submit::{NewStage, NewTask, SubmitJob, Submitted};
pub use task::{Executor, OnFailure};
