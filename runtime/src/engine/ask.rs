//! Who a running task's `agent` import (`agent.sample`, `agent.elicit`)
//! asks: the MCP session whose handler tool call waits on the task's job. A
//! tool call reserves a link before it submits its job
//! ([`AgentLinks::reserve`]) and attaches its session to the job it got
//! ([`Reservation::attach`]) for as long as it waits; the task's context
//! ([`super::task_context`]) looks its job up here. Like [`super::live`],
//! this is one process's memory: nothing is stored.
//!
//! **Invariant 41:** a question is answered, refused or ended, never left
//! waiting on nobody: a task with no attached agent (submitted by `lockstep
//! submit`, `submit_job` or a spawn, run by another process, or running
//! after its tool call ended) gets `no-agent` at once; the one wait is for
//! the attaching tool calls whose submit had begun when the task asked (so
//! a task cannot ask between its job's commit and its attachment and be
//! told nobody is there), and each ends as its submit returns. A link is
//! its tenant's job only; the tool call's end (answer, cancellation, the
//! session's end) detaches it, and a question then in flight ends as
//! `failed`. How long an attached agent may take is bounded by the task's
//! own time limit (the plugin host stops the attempt at its deadline).

use crate::model::{JobId, TenantId};
use crate::plugin::{AskError, AskKind};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// An agent a task may ask: an MCP session, as the front door wraps it.
#[async_trait::async_trait]
pub trait Agent: Send + Sync {
    /// Send `request` (the JSON of the MCP request's params) and return the
    /// client's result as JSON, at most
    /// [`crate::limits::MAX_AGENT_ANSWER_BYTES`].
    async fn ask(&self, kind: AskKind, request: &str) -> Result<String, AskError>;

    /// Let the client drop its connection and reconnect after `retry`.
    async fn release_connection(&self, retry: Duration) -> Result<(), AskError>;
}

/// The agents attached to this process's jobs.
#[derive(Default)]
pub struct AgentLinks {
    links: Mutex<Links>,
    /// Signalled when a reservation is attached or dropped.
    changed: Notify,
}

#[derive(Default)]
struct Links {
    next: u64,
    /// Reservations whose submit has not returned yet.
    submitting: BTreeSet<u64>,
    attached: HashMap<(TenantId, JobId), Link>,
}

#[derive(Clone)]
struct Link {
    agent: Arc<dyn Agent>,
    /// Cancelled when the tool call ends.
    ended: CancellationToken,
}

impl AgentLinks {
    fn lock(&self) -> MutexGuard<'_, Links> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Announce a submit whose job will get an agent: call before the
    /// submit, attach after it (or drop, when it failed).
    pub fn reserve(self: &Arc<Self>) -> Reservation {
        let mut links = self.lock();
        let id = links.next;
        links.next += 1;
        links.submitting.insert(id);
        Reservation {
            links: Arc::clone(self),
            id,
        }
    }

    /// The link of `tenant`'s `job`, once the submits that may attach it
    /// have returned (Invariant 41); `what` names the import in the error.
    async fn link(&self, tenant: &TenantId, job: JobId, what: &str) -> Result<Link, AskError> {
        let key = (tenant.clone(), job);
        // Reservations made after the task asked cannot be its job's.
        let mut horizon = None;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            {
                let links = self.lock();
                if let Some(link) = links.attached.get(&key) {
                    return Ok(link.clone());
                }
                let horizon = *horizon.get_or_insert(links.next);
                if links.submitting.range(..horizon).next().is_none() {
                    return Err(AskError::NoAgent(format!(
                        "no agent is attached to this task: {what} reaches only the MCP agent whose handler tool call waits on the task in the process that runs it, and none waits on job {}",
                        job.0
                    )));
                }
                changed.as_mut().enable();
            }
            changed.await;
        }
    }

    /// Ask the agent attached to `tenant`'s `job` (Invariant 41).
    pub(crate) async fn ask(
        &self,
        tenant: &TenantId,
        job: JobId,
        kind: AskKind,
        request: &str,
    ) -> Result<String, AskError> {
        let link = self.link(tenant, job, kind.import()).await?;
        tokio::select! {
            answer = link.agent.ask(kind, request) => answer,
            () = link.ended.cancelled() => Err(AskError::Failed(format!(
                "the MCP tool call waiting on this task ended before its agent answered {}",
                kind.method()
            ))),
        }
    }

    /// Let the client of the agent attached to `tenant`'s `job` reconnect
    /// after `retry`.
    pub(crate) async fn release_connection(
        &self,
        tenant: &TenantId,
        job: JobId,
        retry: Duration,
    ) -> Result<(), AskError> {
        let link = self.link(tenant, job, "agent.release-connection").await?;
        tokio::select! {
            released = link.agent.release_connection(retry) => released,
            () = link.ended.cancelled() => Err(AskError::Failed(
                "the MCP tool call waiting on this task ended before its connection was released".to_owned(),
            )),
        }
    }
}

/// A submit that will attach an agent to its job; dropping it unattached
/// (the submit failed) lets waiting questions go on.
pub struct Reservation {
    links: Arc<AgentLinks>,
    id: u64,
}

impl Reservation {
    /// Attach `agent` to `tenant`'s `job` until the returned [`Attachment`]
    /// is dropped.
    pub fn attach(self, tenant: TenantId, job: JobId, agent: Arc<dyn Agent>) -> Attachment {
        let ended = CancellationToken::new();
        let key = (tenant, job);
        self.links.lock().attached.insert(
            key.clone(),
            Link {
                agent,
                ended: ended.clone(),
            },
        );
        // Dropping `self` ends the reservation (after the link exists) and
        // wakes the questions that waited for it.
        Attachment {
            links: Arc::clone(&self.links),
            key,
            ended,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.links.lock().submitting.remove(&self.id);
        self.links.changed.notify_waiters();
    }
}

/// An agent attached to a job: detached, and its questions in flight
/// ended, when dropped.
pub struct Attachment {
    links: Arc<AgentLinks>,
    key: (TenantId, JobId),
    ended: CancellationToken,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        self.links.lock().attached.remove(&self.key);
        self.ended.cancel();
    }
}
