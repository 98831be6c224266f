//! `resources/subscribe` and `resources/unsubscribe`: the resources a
//! session follows. While it follows any of lockstep's own (a job or a
//! task), a watcher looks at them every [`POLL`] and sends
//! `notifications/resources/updated` with the URI when one changed: a job's
//! state or task counts, a task's state or attempt. A plugin's resource is
//! computed by its handler when read, so the server cannot know when it
//! would read differently: subscribing to one is accepted (it names a
//! resource) and sends nothing.
//!
//! **Invariants:**
//! - Only a URI that names a resource the caller may read can be followed
//!   (another tenant's job is "not found", Invariant 23); the tenant is the
//!   subscribing request's, and every look runs as it.
//! - A session follows at most [`MAX_SUBSCRIPTIONS`] URIs; unsubscribing
//!   from one it does not follow succeeds and changes nothing.
//! - The watcher holds no lock across an engine call and ends with its
//!   session.

use super::Caller;
use super::params::ArgError;
use super::resources::Target;
use crate::engine::Engine;
use crate::model::TenantId;
use rmcp::model::ResourceUpdatedNotificationParam;
use rmcp::service::Peer;
use rmcp::{ErrorData, RoleServer};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the watcher looks at the followed jobs and tasks.
pub const POLL: Duration = Duration::from_secs(1);
/// Most URIs one session follows.
pub const MAX_SUBSCRIPTIONS: usize = 1_000;

/// One session's followed resources.
#[derive(Debug, Default)]
pub struct Session {
    followed: Mutex<BTreeMap<String, Followed>>,
    watching: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Clone)]
struct Followed {
    tenant: TenantId,
    /// lockstep's own job or task; `None` for a plugin's resource.
    target: Option<Target>,
    /// What it looked like last time (`None` before the first look).
    seen: Option<String>,
}

impl Session {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Followed>> {
        self.followed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Follow `uri` for `caller`: it must name a resource the caller can read.
pub async fn subscribe(
    engine: &Arc<Engine>,
    caller: &Caller,
    session: &Arc<Session>,
    peer: &Peer<RoleServer>,
    uri: &str,
) -> Result<(), ErrorData> {
    let (target, seen) = if uri.starts_with(super::resources::SCHEME) {
        let target = super::resources::parse(uri)?;
        // Not found (another tenant's, or no such id) is -32002, as a read's.
        let seen = look(engine, &caller.tenant, target)
            .await
            .map_err(|e| match e {
                crate::engine::EngineError::NotFound { .. } => {
                    ErrorData::resource_not_found(e.to_string(), None)
                }
                other => super::failure::internal_error("resources/subscribe", &other),
            })?;
        (Some(target), Some(seen))
    } else if super::catalog::names_resource(engine, uri) {
        (None, None)
    } else {
        return Err(super::resources::no_resource(uri));
    };
    {
        let mut followed = session.lock();
        if !followed.contains_key(uri) && followed.len() >= MAX_SUBSCRIPTIONS {
            return Err(ArgError::new(
                "uri",
                format!(
                    "this session already follows {MAX_SUBSCRIPTIONS} resources, the most it may; unsubscribe from one first"
                ),
            )
            .into_error_data());
        }
        followed.insert(
            uri.to_owned(),
            Followed {
                tenant: caller.tenant.clone(),
                target,
                seen,
            },
        );
    }
    if target.is_some()
        && !session
            .watching
            .swap(true, std::sync::atomic::Ordering::AcqRel)
    {
        tokio::spawn(watch(engine.clone(), session.clone(), peer.clone()));
    }
    Ok(())
}

/// Stop following `uri`.
pub fn unsubscribe(session: &Session, uri: &str) {
    session.lock().remove(uri);
}

/// What a job or task looks like, for telling a change.
async fn look(
    engine: &Engine,
    tenant: &TenantId,
    target: Target,
) -> Result<String, crate::engine::EngineError> {
    Ok(match target {
        Target::Job(job) => {
            let p = engine.progress(tenant, job).await?;
            format!("{:?} {:?}", p.job.state, p.counts)
        }
        Target::Task(task) => {
            let t = engine.task_view(tenant, task).await?;
            format!("{} {}", t.state, t.attempt)
        }
    })
}

/// Every [`POLL`], look at the followed jobs and tasks and tell the peer
/// which changed; ends when the session does.
async fn watch(engine: Arc<Engine>, session: Arc<Session>, peer: Peer<RoleServer>) {
    loop {
        tokio::time::sleep(POLL).await;
        if peer.is_transport_closed() {
            return;
        }
        let followed: Vec<(String, Followed)> = session
            .lock()
            .iter()
            .filter(|(_, f)| f.target.is_some())
            .map(|(uri, f)| (uri.clone(), f.clone()))
            .collect();
        for (uri, f) in followed {
            let Some(target) = f.target else { continue };
            let now = match look(&engine, &f.tenant, target).await {
                Ok(now) => now,
                Err(e) => {
                    tracing::debug!(error = %e, uri, "a followed resource was not read");
                    continue;
                }
            };
            let changed = f.seen.as_ref().is_some_and(|seen| *seen != now);
            // Unsubscribed since the list was taken: not a change to send.
            match session.lock().get_mut(&uri) {
                Some(entry) => entry.seen = Some(now),
                None => continue,
            }
            if changed
                && peer
                    .notify_resource_updated(ResourceUpdatedNotificationParam::new(uri))
                    .await
                    .is_err()
            {
                return;
            }
        }
    }
}
