//! Live updates as server-sent events, swapped into the page by htmx's SSE
//! extension: the jobs list's progress cells (one event per job whose cell
//! changed, named `job-ID`) and a running job's summary (`summary`).
//!
//! Each stream reads the engine every [`TICK`] as the viewer's tenant and
//! sends a fragment only when its HTML changed, so an idle page costs one
//! read per tick and no bytes. Streams end with the server's shutdown.

use super::access::Viewer;
use super::pages::{job_summary, parse_id, progress_cell};
use super::{JOBS_PER_PAGE, PageError, UiState};
use crate::engine::views::JobView;
use crate::model::{JobId, Millis};
use axum::Extension;
use axum::extract::{Path, RawQuery, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use futures_util::StreamExt as _;
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How often a stream reads the engine.
pub const TICK: Duration = Duration::from_secs(1);
/// The window over which the jobs list measures each job's rate for its ETA.
const RATE_WINDOW: Duration = Duration::from_secs(10);

type Events = Sse<
    axum::response::sse::KeepAliveStream<
        futures_util::stream::BoxStream<'static, Result<Event, Infallible>>,
    >,
>;

fn sse(stream: impl Stream<Item = Event> + Send + 'static, state: &UiState) -> Events {
    let stop = state.config.shutdown.clone();
    let stream = stream
        .take_until(async move { stop.cancelled_owned().await })
        .map(Ok)
        .boxed();
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// `GET /ui/jobs/live?ids=3,2,1`: progress cells of the listed jobs.
pub(crate) async fn jobs(
    State(state): State<Arc<UiState>>,
    Extension(viewer): Extension<Viewer>,
    RawQuery(query): RawQuery,
) -> Result<Events, PageError> {
    let pairs = super::access::parse_form(query.unwrap_or_default().as_bytes());
    let mut ids = Vec::new();
    for (k, v) in &pairs {
        if k != "ids" {
            return Err(PageError::bad_request(format!(
                "the jobs stream takes only ids, not {:?}",
                super::render::cell_text(k)
            )));
        }
        for id in v.split(',').filter(|s| !s.is_empty()) {
            ids.push(JobId(parse_id("job", id)?));
        }
    }
    if ids.len() > JOBS_PER_PAGE as usize {
        return Err(PageError::bad_request(format!(
            "the jobs stream follows at most {JOBS_PER_PAGE} jobs, not {}",
            ids.len()
        )));
    }
    struct Seen {
        html: String,
        samples: VecDeque<(Instant, i64)>,
    }
    let engine = state.engine.clone();
    let tenant = viewer.tenant.clone();
    let seen: HashMap<JobId, Seen> = HashMap::new();
    let stream = futures_util::stream::unfold(
        (engine, tenant, ids, seen, true),
        |(engine, tenant, ids, mut seen, first)| async move {
            if !first {
                tokio::time::sleep(TICK).await;
            }
            let now = Instant::now();
            let reads = ids.iter().map(|id| engine.progress_counters(&tenant, *id));
            let results = futures_util::future::join_all(reads).await;
            let mut events = Vec::new();
            for (id, result) in ids.iter().zip(results) {
                // A job of another tenant, or gone: nothing to show.
                let Ok(p) = result else { continue };
                let entry = seen.entry(*id).or_insert_with(|| Seen {
                    html: String::new(),
                    samples: VecDeque::new(),
                });
                while entry
                    .samples
                    .front()
                    .is_some_and(|(at, _)| now.duration_since(*at) > RATE_WINDOW)
                {
                    entry.samples.pop_front();
                }
                let eta = entry.samples.front().and_then(|(at, done)| {
                    let secs = now.duration_since(*at).as_secs_f64();
                    let rate = (p.done - done) as f64 / secs;
                    (secs > 0.0 && rate > 0.0).then(|| (p.total - p.done) as f64 / rate)
                });
                entry.samples.push_back((now, p.done));
                let html = progress_cell(&p, eta).into_string();
                if html != entry.html {
                    events.push(Event::default().event(format!("job-{}", id.0)).data(&html));
                    entry.html = html;
                }
            }
            Some((
                futures_util::stream::iter(events),
                (engine, tenant, ids, seen, false),
            ))
        },
    )
    .flatten();
    Ok(sse(stream, &state))
}

/// `GET /ui/jobs/{id}/live`: the job page's summary while the job runs.
pub(crate) async fn job(
    State(state): State<Arc<UiState>>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
) -> Result<Events, PageError> {
    let job = JobId(parse_id("job", &id)?);
    // Unknown (or another tenant's) jobs are refused before streaming.
    state.engine.progress_counters(&viewer.tenant, job).await?;
    let engine = state.engine.clone();
    let stream = futures_util::stream::unfold(
        (engine, viewer, String::new(), None::<Millis>),
        move |(engine, viewer, last, finished)| async move {
            // A finished job is sent once more, then the stream only keeps alive.
            if finished.is_some() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(TICK).await;
            let (p, waiting) = match engine.progress_and_waiting(&viewer.tenant, job).await {
                Ok(read) => read,
                Err(_) => return Some((None, (engine, viewer, last, finished))),
            };
            let view = JobView::from_progress(&p).waiting_for(waiting);
            let html = job_summary(&viewer, &view, &p).into_string();
            let finished = p.job.finished_at;
            if html == last {
                return Some((None, (engine, viewer, last, finished)));
            }
            let event = Event::default().event("summary").data(&html);
            Some((Some(event), (engine, viewer, html, finished)))
        },
    )
    .filter_map(|e| async move { e });
    Ok(sse(stream, &state))
}
