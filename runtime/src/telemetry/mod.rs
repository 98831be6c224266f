//! The operator's view of a process: Prometheus metrics at `/metrics` on
//! the `serve --http` listener, and the log format (`logs`).
//!
//! The engine records what this process does through the `metrics` facade
//! (`engine::metrics`); [`Exporter::install`] makes this process's recorder
//! (`metrics-exporter-prometheus`, without its HTTP server) and [`router`]
//! serves it. The database's counts ([`Engine::sample_metrics`]: every
//! tenant's tasks and jobs by state) are read by a [`Sampler`] on its own
//! timer, started by the first scrape, not by every scrape: counting a
//! million tasks takes a second, and a scrape that waited for it would time
//! out; a scrape renders the last sample, whose time
//! `lockstep_database_sampled_timestamp_seconds` gives.
//!
//! **Invariant:** `/metrics` answers only `GET`; with `--metrics-token`
//! a request without that bearer token gets 401 and nothing is read.

pub mod logs;

use crate::engine::Engine;
use crate::engine::metrics::{Kind, SECONDS_BUCKETS, SERIES};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::watch;

/// Where Prometheus scrapes a `serve --http` process.
pub const METRICS_PATH: &str = "/metrics";

/// The content type of the Prometheus text format.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why the exporter could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot build the Prometheus recorder: {0}")]
    Build(#[from] metrics_exporter_prometheus::BuildError),
    #[error("another metrics recorder is already installed in this process")]
    Installed,
}

/// This process's Prometheus recorder: what `/metrics` renders.
#[derive(Clone)]
pub struct Exporter {
    handle: PrometheusHandle,
}

static EXPORTER: OnceLock<Exporter> = OnceLock::new();

/// How often histogram samples are folded into their buckets between
/// scrapes, so memory does not grow while nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

impl Exporter {
    /// The process's exporter, installed as its `metrics` recorder on first
    /// call (later calls return the same one). Call it inside a Tokio
    /// runtime: it starts the upkeep task.
    pub fn install() -> Result<Exporter, TelemetryError> {
        if let Some(exporter) = EXPORTER.get() {
            return Ok(exporter.clone());
        }
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)?
            .build_recorder();
        let handle = recorder.handle();
        ::metrics::set_global_recorder(recorder).map_err(|_| TelemetryError::Installed)?;
        for (name, kind, help) in SERIES {
            match kind {
                Kind::Counter => ::metrics::describe_counter!(name, help),
                Kind::Gauge => ::metrics::describe_gauge!(name, help),
                Kind::Histogram => ::metrics::describe_histogram!(name, help),
            }
        }
        // Series without labels exist from the start, at 0, so a rate over
        // them is defined before the first event.
        ::metrics::counter!(crate::engine::metrics::LEASE_RESCUED).increment(0);
        ::metrics::counter!(crate::engine::metrics::COMPLETION_FENCED).increment(0);
        let upkeep = handle.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(UPKEEP_EVERY);
            loop {
                every.tick().await;
                upkeep.run_upkeep();
            }
        });
        let exporter = Exporter { handle };
        Ok(EXPORTER.get_or_init(|| exporter).clone())
    }

    /// Every series in the Prometheus text format, the database's counts as
    /// `sampler` last read them (after its first sample); the latest
    /// sample's error if it failed.
    pub async fn render(&self, sampler: &Sampler) -> Result<String, String> {
        sampler.latest().await?;
        Ok(self.handle.render())
    }
}

/// The shortest pause between two samples of the database's counts.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// A sample that took `t` is followed by a pause of at least this many times
/// `t`: on a database so large that counting is slow, sampling keeps to a
/// tenth of one connection's time.
const SAMPLE_SPACING: u32 = 10;

/// Reads the database's counts into the gauges every [`SAMPLE_EVERY`] (or
/// [`SAMPLE_SPACING`] times the last sample's duration, if longer), from
/// [`Sampler::start`] until it is dropped.
pub struct Sampler {
    /// `None` until the first sample ends; then whether the latest failed.
    latest: watch::Receiver<Option<Result<(), String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    /// Take the first sample now and the next ones on the timer. Call it
    /// inside a Tokio runtime.
    pub fn start(engine: Arc<Engine>) -> Sampler {
        let (sender, latest) = watch::channel(None);
        let task = tokio::spawn(async move {
            let mut failing = false;
            loop {
                let started = tokio::time::Instant::now();
                let result = engine.sample_metrics().await.map_err(|e| e.to_string());
                let took = started.elapsed();
                // Log a failure once, and the recovery, not every sample.
                match &result {
                    Err(e) if !failing => {
                        tracing::error!("sampling the database for /metrics failed: {e}");
                    }
                    Ok(()) if failing => {
                        tracing::info!("sampling the database for /metrics works again")
                    }
                    _ => {}
                }
                failing = result.is_err();
                if sender.send(Some(result)).is_err() {
                    return;
                }
                tokio::time::sleep(SAMPLE_EVERY.max(took * SAMPLE_SPACING)).await;
            }
        });
        Sampler { latest, task }
    }

    /// Wait for the first sample; the latest sample's error if it failed.
    pub async fn latest(&self) -> Result<(), String> {
        let mut latest = self.latest.clone();
        let sampled = latest
            .wait_for(Option::is_some)
            .await
            .map_err(|_| "the sampler of the database's counts stopped".to_string())?;
        match sampled.as_ref() {
            Some(result) => result.clone(),
            None => Err("no sample of the database's counts yet".to_string()),
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct MetricsState {
    engine: Arc<Engine>,
    /// Started by the first scrape that passed the token check, so a server
    /// nobody scrapes never counts its tasks.
    sampler: OnceLock<Sampler>,
    exporter: Exporter,
    /// `--metrics-token`: the bearer token a scrape must send, if any.
    token: Option<String>,
}

/// Equal texts, compared in time that depends only on their lengths.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn plain(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response()
}

async fn scrape(State(state): State<Arc<MetricsState>>, request: Request) -> Response {
    if let Some(expected) = &state.token {
        let Some(given) = crate::mcp::http::bearer_token(request.headers()) else {
            let mut response = plain(
                StatusCode::UNAUTHORIZED,
                "missing bearer token: /metrics needs Authorization: Bearer <the --metrics-token of this server>",
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"lockstep-metrics\""),
            );
            return response;
        };
        if !same_secret(given.as_bytes(), expected.as_bytes()) {
            return plain(
                StatusCode::UNAUTHORIZED,
                "wrong bearer token for /metrics (it is this server's --metrics-token)",
            );
        }
    }
    let sampler = state
        .sampler
        .get_or_init(|| Sampler::start(state.engine.clone()));
    match state.exporter.render(sampler).await {
        Ok(text) => (StatusCode::OK, [(header::CONTENT_TYPE, TEXT_FORMAT)], text).into_response(),
        // The sampler logged the error.
        Err(_) => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "cannot read the database now; the error is in the server's log",
        ),
    }
}

/// The `/metrics` route: `GET` only, behind `token` when one is given. Its
/// first scrape starts the route's [`Sampler`], which stops when the route
/// is dropped.
pub fn router(engine: Arc<Engine>, exporter: Exporter, token: Option<String>) -> axum::Router {
    let state = Arc::new(MetricsState {
        engine,
        sampler: OnceLock::new(),
        exporter,
        token,
    });
    axum::Router::new().route(METRICS_PATH, axum::routing::get(scrape).with_state(state))
}

/// Why a `--metrics-token` cannot be used, if it cannot.
pub fn check_token(token: &str) -> Result<(), String> {
    if token.len() < 16 {
        return Err(format!(
            "--metrics-token must be at least 16 characters (it guards /metrics), got {}",
            token.len()
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "--metrics-token must be printable ASCII without spaces (it is sent in an Authorization header)".to_string(),
        );
    }
    Ok(())
}
