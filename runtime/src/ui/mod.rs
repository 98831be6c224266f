//! The dashboard: server-rendered HTML at `/ui` on the `serve --http`
//! listener (beside `/mcp`), with htmx and server-sent events for live
//! updates and its assets embedded in the binary.
//!
//! It is a front door: every page and action calls the engine as the
//! viewer's tenant and shows the engine's values and views (Invariant 29,
//! Invariant 30).
//!
//! **Invariant 38:** every page, fragment and action runs as exactly one
//! tenant, the tenant of the token that authenticated that very request
//! (cookie or bearer header); another tenant's ids answer 404, as unknown
//! ones do.
//! **Invariant 39:** a POST changes something only with the viewer's CSRF
//! token, an allowed Host and Origin, and (for retry and cancel) an `admin`
//! token; everything else is refused before any engine call, and every
//! action is recorded in the job's events with the token's name.
//! **Invariant:** a page holds a bounded number of rows whatever the size of
//! the job (tasks and events are paged), and bad input (a filter, an id) is
//! a page with one sentence and a 4xx status, never a panic.

mod access;
mod assets;
mod live;
mod pages;
mod render;

use crate::engine::{Engine, EngineError};
use crate::model::TenantId;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub use access::csrf_token;

/// Who may use the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UiAuth {
    /// A bearer token from `lockstep token create` (login form or header);
    /// its tenant and role are the viewer's.
    Tokens,
    /// No token (`serve --no-auth`, loopback only): every request is an
    /// admin of this tenant.
    LoopbackOnly(TenantId),
}

/// Settings of the dashboard.
#[derive(Debug, Clone)]
pub struct UiConfig {
    pub auth: UiAuth,
    /// Host names (or host:port) served besides the loopback names.
    pub allowed_hosts: Vec<String>,
    /// Browser origins allowed to POST besides the loopback ones and the
    /// page's own origin.
    pub allowed_origins: Vec<String>,
    /// Live-update streams end when this is cancelled (shutdown).
    pub shutdown: CancellationToken,
    /// Worker slots of this process, shown on the workers page.
    pub worker_slots: Option<usize>,
}

/// Rows of the jobs list per page.
pub const JOBS_PER_PAGE: u32 = 50;
/// Rows of a job's task list per page.
pub const TASKS_PER_PAGE: u32 = 100;
/// Rows of a job's event list per page.
pub const EVENTS_PER_PAGE: u32 = 50;
/// Events read for a task page (its attempts and log lines).
pub const TASK_EVENTS: u32 = 200;
/// Largest form body accepted, in bytes (a bulk action over a page of jobs).
pub const MAX_FORM_BYTES: usize = 64 * 1024;

pub(crate) struct UiState {
    engine: Arc<Engine>,
    config: UiConfig,
    /// CSRF secret of `--no-auth` mode, where no token exists to derive it from.
    loopback_secret: String,
}

/// A refusal or failure, shown as a page with one sentence and its status.
#[derive(Debug)]
pub(crate) struct PageError {
    status: StatusCode,
    message: String,
}

impl PageError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> PageError {
        PageError {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> PageError {
        PageError::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> PageError {
        PageError::new(StatusCode::FORBIDDEN, message)
    }
}

impl From<EngineError> for PageError {
    fn from(e: EngineError) -> PageError {
        match &e {
            EngineError::NotFound { .. } => PageError::new(StatusCode::NOT_FOUND, e.to_string()),
            EngineError::IllegalTransition(_)
            | EngineError::NotRetryable { .. }
            | EngineError::StageNotReached(_)
            | EngineError::Refused(_) => PageError::new(StatusCode::CONFLICT, e.to_string()),
            _ if e.is_bad_input() => PageError::bad_request(e.to_string()),
            _ => {
                // Internal: the operator's log gets the whole error, the page an id.
                let id = uuid::Uuid::new_v4();
                tracing::error!(correlation_id = %id, error = %e, "dashboard request failed");
                PageError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the server could not answer (correlation id {id}); try again"),
                )
            }
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let body = render::message_page(self.status, &self.message);
        render::html(self.status, body)
    }
}

/// The `/ui` routes, to merge into the `serve --http` router.
pub fn router(engine: Arc<Engine>, config: UiConfig) -> axum::Router {
    let state = Arc::new(UiState {
        engine,
        config,
        loopback_secret: access::random_secret(),
    });
    axum::Router::new()
        .route("/ui", get(pages::home))
        .route("/ui/", get(pages::home))
        .route("/ui/login", get(access::login_form).post(access::login))
        .route("/ui/logout", post(access::logout))
        .route("/ui/jobs", get(pages::jobs))
        .route("/ui/jobs/live", get(live::jobs))
        .route("/ui/jobs/bulk", post(pages::bulk))
        .route("/ui/jobs/{id}", get(pages::job))
        .route("/ui/jobs/{id}/live", get(live::job))
        .route("/ui/jobs/{id}/spec", get(pages::job_spec))
        .route("/ui/jobs/{id}/cancel", post(pages::cancel_job))
        .route("/ui/tasks/{id}", get(pages::task))
        .route("/ui/tasks/{id}/retry", post(pages::retry_task))
        .route("/ui/plugins", get(pages::plugins))
        .route("/ui/queues", get(pages::queues))
        .route("/ui/assets/{name}", get(assets::asset))
        .route("/ui/{*rest}", get(pages::not_found).post(pages::not_found))
        // Route layers: paths outside /ui (the merged router's fallback) stay
        // untouched by the dashboard's guard.
        .route_layer(axum::extract::DefaultBodyLimit::max(MAX_FORM_BYTES))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::guard,
        ))
        .with_state(state)
}
