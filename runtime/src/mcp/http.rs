//! MCP over streamable HTTP at `/mcp`: bearer-token authentication, the
//! per-token rate limit, and Host/Origin validation in front of rmcp's
//! `StreamableHttpService`.
//!
//! **Invariant:** a request without a live token is answered 401 before any
//! MCP processing, and one over its token's rate 429 with `Retry-After`;
//! neither reaches a tool or writes anything.
//! **Invariant:** the tenant of every tool call is the tenant of the token
//! that authenticated that very request (attached as a [`Caller`]).
//! **Invariant:** only the configured Host names (loopback by default) and
//! Origins (none by default) are served, against DNS rebinding and
//! cross-site requests from browsers.

use super::failure::log_internal;
use super::{Caller, LockstepMcp, McpConfig, McpServeError};
use crate::engine::Engine;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Settings of the HTTP transport.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Host names (or host:port) served besides the loopback names.
    pub allowed_hosts: Vec<String>,
    /// Browser origins allowed to call (`https://app.example.com:443`); none by default.
    pub allowed_origins: Vec<String>,
    /// Requests per second per token; 0 disables the limit.
    pub rate_per_second: f64,
    /// Requests a token may make at once before the rate applies.
    pub burst: u32,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            rate_per_second: 50.0,
            burst: 100,
            max_body_bytes: 2 * 1024 * 1024,
        }
    }
}

/// Per-token token buckets.
struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<i64, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// `Err(seconds to wait)` when this token is over its rate.
    fn admit(&self, token_id: i64) -> Result<(), u64> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(token_id).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

struct Gate {
    engine: Arc<Engine>,
    limiter: RateLimiter,
}

fn plain(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response()
}

fn unauthorized(message: &str) -> Response {
    let mut response = plain(StatusCode::UNAUTHORIZED, message);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"lockstep\""),
    );
    response
}

async fn authenticate(State(gate): State<Arc<Gate>>, mut request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .map(str::to_string);
    let Some(token) = token else {
        return unauthorized(
            "missing bearer token: send Authorization: Bearer <token from `lockstep token create`>",
        );
    };
    let record = match gate.engine.authenticate(&token).await {
        Ok(Some(record)) => record,
        Ok(None) => return unauthorized("invalid or revoked token"),
        Err(e) => {
            let id = log_internal("authenticate", &e);
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("cannot check the token now (correlation id {id}); try again"),
            );
        }
    };
    if let Err(wait) = gate.limiter.admit(record.token_id) {
        let mut response = plain(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("rate limit for this token exceeded; retry after {wait}s"),
        );
        if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return response;
    }
    request.extensions_mut().insert(Caller {
        tenant: record.tenant,
        name: format!("token-{}", record.token_id),
    });
    next.run(request).await
}

/// The `/mcp` router: authentication and rate limit in front of rmcp's service.
pub fn router(
    engine: Arc<Engine>,
    mcp: McpConfig,
    http: &HttpConfig,
    shutdown: CancellationToken,
) -> axum::Router {
    let mut hosts: Vec<String> = vec![
        "localhost".into(),
        "127.0.0.1".into(),
        "::1".into(),
        "[::1]".into(),
    ];
    hosts.extend(http.allowed_hosts.iter().cloned());
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(hosts)
        .with_allowed_origins(http.allowed_origins.clone())
        .enforce_origin_validation()
        .with_max_request_body_bytes(http.max_body_bytes)
        .with_cancellation_token(shutdown.child_token());
    let mcp = Arc::new(mcp);
    let service_engine = engine.clone();
    let service = StreamableHttpService::new(
        move || Ok(LockstepMcp::remote(service_engine.clone(), mcp.clone())),
        LocalSessionManager::default().into(),
        config,
    );
    let gate = Arc::new(Gate {
        engine,
        limiter: RateLimiter {
            rate: http.rate_per_second,
            burst: f64::from(http.burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        },
    });
    axum::Router::new()
        .nest_service("/mcp", service)
        .layer(middleware::from_fn_with_state(gate, authenticate))
}

/// Serve `router` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: CancellationToken,
) -> Result<(), McpServeError> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(McpServeError::Http)
}

/// Bind `addr` (e.g. `127.0.0.1:7300`).
pub async fn bind(addr: &str) -> Result<tokio::net::TcpListener, McpServeError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| McpServeError::Bind {
            addr: addr.to_string(),
            source,
        })
}

/// How long a graceful HTTP shutdown may take before the process exits anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
