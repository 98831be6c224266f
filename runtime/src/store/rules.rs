//! The backend-independent half of recording a result: what a completion
//! means for its task (succeeded, retried, dead), whether its spawns are
//! allowed, and how stage counters change. Every backend decides with these
//! functions and only writes the decisions in its own SQL, so the SQLite and
//! Postgres stores cannot drift apart on semantics.

use super::codec::{SPAWN_LIMIT, after, parse_on_failure};
use super::effects::Attempt;
use super::{CompletionOutcome, SpawnTask, StoreError, TaskResult};
use crate::model::{
    EventKind, IllegalTransition, LeaseToken, Millis, OnFailure, StageState, TaskState,
};
use std::collections::{BTreeMap, HashMap};

/// A running task whose row this transaction holds locked.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub id: i64,
    pub tenant: String,
    pub job: i64,
    pub position: i32,
    pub attempt: i32,
    pub max_attempts: i32,
    /// What this task's death does: its own setting, fixed when it was created.
    pub on_failure: OnFailure,
    /// Other tasks depend on it (`task_deps` rows are written with their
    /// task and never change): when none do, its end touches no other task.
    pub has_dependents: bool,
    /// Who claimed this attempt and when (the row's record of the claim,
    /// copied into the event that ends the attempt; Invariant 42).
    pub worker: Option<String>,
    pub claimed_at: Option<Millis>,
    /// The claim's nonce (`None` for a durable claim).
    pub nonce: Option<i64>,
}

/// A locked task row as both backends select it: id, tenant, job, stage
/// position, attempt, max_attempts, on_failure, whether tasks depend on it,
/// worker, claimed_at, claim_nonce.
pub(crate) type HeldRow = (
    i64,
    String,
    i64,
    i32,
    i32,
    i32,
    String,
    bool,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

impl Held {
    pub(crate) fn from_row(row: HeldRow) -> Result<Held, StoreError> {
        let (
            id,
            tenant,
            job,
            position,
            attempt,
            max_attempts,
            on_failure,
            has_dependents,
            worker,
            claimed_at,
            nonce,
        ) = row;
        Ok(Held {
            id,
            tenant,
            job,
            position,
            attempt,
            max_attempts,
            on_failure: parse_on_failure(&on_failure)?,
            has_dependents,
            worker,
            claimed_at,
            nonce,
        })
    }

    /// Whether `lease` is this row's claim: the same attempt and nonce
    /// (Invariant 8); the tenant is the caller's to compare.
    pub(crate) fn holds(&self, lease: &LeaseToken) -> bool {
        self.attempt == lease.attempt && self.nonce == lease.nonce
    }

    /// This attempt, as the event that ends it records it.
    pub(crate) fn as_attempt(&self) -> Attempt<'_> {
        Attempt {
            tenant: &self.tenant,
            job: self.job,
            task: self.id,
            position: self.position,
            attempt: self.attempt,
            worker: self.worker.as_deref(),
            claimed_at: self.claimed_at,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct StageMeta {
    pub position: i32,
    pub name: String,
    pub state: StageState,
}

/// What happens to one held task.
pub(crate) struct Decision {
    pub held: Held,
    pub to: TaskState,
    pub output: Option<String>,
    pub error: Option<String>,
    pub run_after: Option<Millis>,
    /// Validated children: (target stage position, spec).
    pub spawn: Vec<(i32, SpawnTask)>,
    pub outcome: CompletionOutcome,
    pub event: (EventKind, Option<String>),
}

pub(crate) fn stage_of(
    stages: &HashMap<i64, Vec<StageMeta>>,
    job: i64,
    position: i32,
) -> Option<&StageMeta> {
    stages.get(&job)?.iter().find(|s| s.position == position)
}

/// Room left under the per-job task limit (`--max-tasks-per-job`) for the
/// jobs of a batch whose tasks spawn: spawns are counted against it in the
/// batch's order, so the limit holds for spawned tasks as it does at submit.
pub(crate) struct JobRoom {
    limit: u64,
    held: HashMap<i64, u64>,
}

impl JobRoom {
    /// `totals`: (job, tasks it holds now) for each job whose tasks spawn.
    pub(crate) fn new(limit: u64, totals: Vec<(i64, i64)>) -> Result<JobRoom, StoreError> {
        let held = totals
            .into_iter()
            .map(|(job, n)| {
                u64::try_from(n)
                    .map(|n| (job, n))
                    .map_err(|_| StoreError::Corrupt(format!("job {job} holds {n} tasks")))
            })
            .collect::<Result<_, _>>()?;
        Ok(JobRoom { limit, held })
    }

    /// Count `n` spawned tasks into `held`'s job, or say why they do not fit.
    fn take(&mut self, held: &Held, n: usize) -> Result<(), String> {
        let now = self.held.get(&held.job).copied().unwrap_or(0);
        let after = now.saturating_add(n as u64);
        if after > self.limit {
            return Err(format!(
                "task {} spawned {n} tasks, which would take job {} to {after} tasks, more than the {}-task limit (raise it with --max-tasks-per-job)",
                held.id, held.job, self.limit
            ));
        }
        self.held.insert(held.job, after);
        Ok(())
    }
}

pub(crate) fn decide(
    held: Held,
    result: TaskResult,
    stages: &[StageMeta],
    room: &mut JobRoom,
    now: Millis,
) -> Decision {
    // A handler's error is guest text: stored alike by both backends.
    let result = match result {
        TaskResult::Retryable { error, retry_after } => TaskResult::Retryable {
            error: crate::limits::storable(error),
            retry_after,
        },
        TaskResult::Fatal { error, output_json } => TaskResult::Fatal {
            error: crate::limits::storable(error),
            output_json,
        },
        other => other,
    };
    match result {
        TaskResult::Succeeded { output_json, spawn } => match validate_spawn(&held, &spawn, stages)
            .and_then(|targets| {
                if !targets.is_empty() {
                    room.take(&held, targets.len())?;
                }
                Ok(targets)
            }) {
            Ok(targets) => {
                let detail = if targets.is_empty() {
                    None
                } else {
                    Some(format!("spawned {} task(s)", targets.len()))
                };
                Decision {
                    held,
                    to: TaskState::Succeeded,
                    output: Some(output_json),
                    error: None,
                    run_after: None,
                    spawn: targets.into_iter().zip(spawn).collect(),
                    outcome: CompletionOutcome::Recorded(TaskState::Succeeded),
                    event: (EventKind::TaskSucceeded, detail),
                }
            }
            Err(reason) => Decision {
                held,
                to: TaskState::Dead,
                output: None,
                error: Some(reason.clone()),
                run_after: None,
                spawn: Vec::new(),
                outcome: CompletionOutcome::RejectedSpawn(reason.clone()),
                event: (EventKind::TaskDead, Some(reason)),
            },
        },
        TaskResult::Retryable { error, retry_after } => {
            if held.attempt >= held.max_attempts {
                let detail = format!(
                    "{error} (attempt {} of {}, no attempts left)",
                    held.attempt, held.max_attempts
                );
                Decision {
                    held,
                    to: TaskState::Dead,
                    output: None,
                    error: Some(error),
                    run_after: None,
                    spawn: Vec::new(),
                    outcome: CompletionOutcome::Recorded(TaskState::Dead),
                    event: (EventKind::TaskDead, Some(detail)),
                }
            } else {
                let run_after = after(now, retry_after);
                let detail = format!(
                    "{error} (attempt {} of {}, retry at {run_after})",
                    held.attempt, held.max_attempts
                );
                Decision {
                    held,
                    to: TaskState::Pending,
                    output: None,
                    error: Some(error),
                    run_after: Some(run_after),
                    spawn: Vec::new(),
                    outcome: CompletionOutcome::Recorded(TaskState::Pending),
                    event: (EventKind::TaskRetried, Some(detail)),
                }
            }
        }
        TaskResult::Fatal { error, output_json } => Decision {
            held,
            to: TaskState::Dead,
            output: output_json,
            error: Some(error.clone()),
            run_after: None,
            spawn: Vec::new(),
            outcome: CompletionOutcome::Recorded(TaskState::Dead),
            event: (EventKind::TaskDead, Some(error)),
        },
        TaskResult::Skipped { output_json } => Decision {
            held,
            to: TaskState::Skipped,
            output: Some(output_json),
            error: None,
            run_after: None,
            spawn: Vec::new(),
            outcome: CompletionOutcome::Recorded(TaskState::Skipped),
            event: (EventKind::TaskSkipped, None),
        },
    }
}

/// The target stage position of each spawned task, or why the spawn is refused.
pub(crate) fn validate_spawn(
    held: &Held,
    spawn: &[SpawnTask],
    stages: &[StageMeta],
) -> Result<Vec<i32>, String> {
    if spawn.len() > SPAWN_LIMIT {
        return Err(format!(
            "task {} spawned {} tasks, more than the limit of {SPAWN_LIMIT} per task",
            held.id,
            spawn.len()
        ));
    }
    let own = stages
        .iter()
        .find(|s| s.position == held.position)
        .map_or("?", |s| s.name.as_str());
    spawn
        .iter()
        .map(|child| {
            match stages.iter().find(|s| s.name == child.stage_name) {
                None => Err(format!(
                    "task {} spawned into unknown stage {:?}; the job's stages are: {}",
                    held.id,
                    child.stage_name,
                    stages
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                Some(s) if s.position <= held.position => Err(format!(
                    "task {} spawned into stage {:?}, which is not later than its own stage {own:?}",
                    held.id, child.stage_name
                )),
                Some(s) => Ok(s.position),
            }
        })
        .collect()
}

/// Per-stage counter change: `add` tasks placed into it (spawned), `done`
/// tasks of it reached a terminal state, `finished` of them by their own
/// run (not cancelled): what the stage's rate buckets count.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct StageDelta {
    pub add: i64,
    pub done: i64,
    pub finished: i64,
}

/// Decide every held task of a batch, each checked against the transition
/// table (`running` to its new state).
pub(crate) fn decide_all(
    items: Vec<(Held, TaskResult)>,
    stages: &HashMap<i64, Vec<StageMeta>>,
    room: &mut JobRoom,
    now: Millis,
) -> Result<Vec<Decision>, IllegalTransition> {
    let mut decisions = Vec::with_capacity(items.len());
    for (held, result) in items {
        let job_stages = stages.get(&held.job).map(Vec::as_slice).unwrap_or(&[]);
        let d = decide(held, result, job_stages, room, now);
        TaskState::Running.transition(d.to)?;
        decisions.push(d);
    }
    Ok(decisions)
}

/// What a batch of decisions does beyond its own rows.
pub(crate) struct Consequences {
    /// Tasks with dependents that release them: successes, skips, and
    /// deaths under `continue` or `release_then_fail`.
    pub released: Vec<i64>,
    /// Deaths under `fail_job`: their transitive dependents are cancelled.
    pub doomed_roots: Vec<i64>,
    /// Stage counters: one `done` per task that reached a terminal state.
    pub deltas: BTreeMap<(i64, i32), StageDelta>,
}

pub(crate) fn consequences(decisions: &[Decision]) -> Consequences {
    let mut released = Vec::new();
    let mut doomed_roots = Vec::new();
    let mut deltas: BTreeMap<(i64, i32), StageDelta> = BTreeMap::new();
    for d in decisions {
        match d.to {
            _ if !d.held.has_dependents => {}
            TaskState::Succeeded | TaskState::Skipped => released.push(d.held.id),
            TaskState::Dead if d.held.on_failure.releases_dependents() => released.push(d.held.id),
            TaskState::Dead => doomed_roots.push(d.held.id),
            _ => {}
        }
        if d.to.is_terminal() {
            let delta = deltas.entry((d.held.job, d.held.position)).or_default();
            delta.done += 1;
            delta.finished += 1;
        }
    }
    Consequences {
        released,
        doomed_roots,
        deltas,
    }
}

/// Count every spawned child into its target stage.
pub(crate) fn count_spawns(decisions: &[Decision], deltas: &mut BTreeMap<(i64, i32), StageDelta>) {
    for d in decisions {
        for (target, _) in &d.spawn {
            deltas.entry((d.held.job, *target)).or_default().add += 1;
        }
    }
}
