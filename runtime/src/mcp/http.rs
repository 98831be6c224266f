//! MCP over streamable HTTP at `/mcp`: bearer-token authentication, the
//! per-token rate limit, and Host/Origin validation in front of rmcp's
//! `StreamableHttpService`.
//!
//! **Invariant:** a request without a live token is answered 401 before any
//! MCP processing, and one over its token's rate 429 with `Retry-After`;
//! neither reaches a tool or writes anything.
//! **Invariant 23:** the tenant of every tool call is the tenant of the token
//! that authenticated that very request (attached as a [`Caller`]), and so
//! is its role: a `read` token calls only read-only tools (Invariant 40).
//! **Invariant:** only the configured Host names (loopback by default) and
//! Origins (pages served from this machine — loopback origins — by default)
//! are served, against DNS rebinding and cross-site requests from browsers.
//! **Invariant:** every refusal past authentication is a JSON-RPC error
//! body ([`super::jsonrpc`]); a malformed message never reaches a tool.
//! **Invariant:** without tokens ([`Auth::LoopbackOnly`]) the server is
//! reachable only from this machine: the listener is loopback and Host
//! names are loopback only.

use super::failure::log_internal;
use super::jsonrpc;
use super::{Caller, LockstepMcp, McpConfig, McpServeError};
use crate::engine::Engine;
use crate::model::{TenantId, TokenRole};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Who may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// A bearer token from `lockstep token create`; its tenant is the caller's.
    Tokens,
    /// No token: every request acts as this tenant. Only for a loopback
    /// listener (see [`check_loopback`]); `lockstep serve --no-auth`.
    LoopbackOnly(TenantId),
}

/// Browser origins served by default: pages from this machine, any port.
pub const LOOPBACK_ORIGINS: [&str; 6] = [
    "http://localhost:*",
    "http://127.0.0.1:*",
    "http://[::1]:*",
    "https://localhost:*",
    "https://127.0.0.1:*",
    "https://[::1]:*",
];

/// Settings of the HTTP transport.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Tokens, or none on loopback.
    pub auth: Auth,
    /// Host names (or host:port) served besides the loopback names.
    pub allowed_hosts: Vec<String>,
    /// Browser origins allowed to call besides [`LOOPBACK_ORIGINS`]
    /// (`https://app.example.com:443`).
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
            auth: Auth::Tokens,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            rate_per_second: 50.0,
            burst: 100,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// Largest request body by default: the largest tool arguments and their envelope.
pub const DEFAULT_MAX_BODY_BYTES: usize = super::DEFAULT_MAX_ARGUMENT_BYTES + super::ENVELOPE_BYTES;

/// Why `addr` may not serve without tokens, if it may not: `--no-auth`
/// needs a listener only this machine can reach.
pub fn check_loopback(addr: std::net::SocketAddr) -> Result<(), String> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "--no-auth serves every request without a token, so it listens only on a loopback address (127.0.0.1, [::1] or localhost), not on {addr}; create a token with `lockstep token create` to serve {}",
            addr.ip()
        ))
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
    auth: Auth,
    limiter: RateLimiter,
}

/// The rate-limit bucket of requests served without a token.
const NO_TOKEN_BUCKET: i64 = 0;

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
    if let Auth::LoopbackOnly(tenant) = &gate.auth {
        if let Err(wait) = gate.limiter.admit(NO_TOKEN_BUCKET) {
            return too_many(wait);
        }
        request.extensions_mut().insert(Caller {
            tenant: tenant.clone(),
            name: "loopback".into(),
            role: TokenRole::Admin,
        });
        return next.run(request).await;
    }
    let token = bearer_token(request.headers()).map(str::to_string);
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
        return too_many(wait);
    }
    request.extensions_mut().insert(Caller {
        tenant: record.tenant,
        name: format!("token-{}", record.token_id),
        role: record.role,
    });
    next.run(request).await
}

/// The token of an `Authorization: Bearer <token>` header, if there is one.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

fn too_many(wait: u64) -> Response {
    let mut response = plain(
        StatusCode::TOO_MANY_REQUESTS,
        &format!("rate limit for this token exceeded; retry after {wait}s"),
    );
    if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

/// A JSON-RPC error response with an HTTP status.
fn json_rpc_error(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// Between authentication and rmcp's service: a POST body that does not
/// decode gets the JSON-RPC error it deserves (rmcp answers `415` with a
/// line of text), every other refusal of the transport is restated as a
/// JSON-RPC error, and ending a session answers `200`.
async fn json_rpc_errors(
    State(max_body_bytes): State<usize>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let mut body_sent = None;
    let request = if method == axum::http::Method::POST && is_json(request.headers()) {
        let (parts, body) = request.into_parts();
        let bytes = match axum::body::to_bytes(body, max_body_bytes).await {
            Ok(bytes) => bytes,
            Err(_) => {
                return json_rpc_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &jsonrpc::error_response(
                        serde_json::Value::Null,
                        jsonrpc::TRANSPORT_ERROR,
                        &format!(
                            "Payload Too Large: the request body exceeds {max_body_bytes} bytes"
                        ),
                    ),
                );
            }
        };
        body_sent = Some(bytes.clone());
        Request::from_parts(parts, Body::from(bytes))
    } else {
        request
    };
    let response = next.run(request).await;
    let status = response.status();
    if method == axum::http::Method::DELETE && status == StatusCode::ACCEPTED {
        let (mut parts, body) = response.into_parts();
        parts.status = StatusCode::OK;
        return Response::from_parts(parts, body);
    }
    // rmcp answers a JSON body that is not an MCP message with 415.
    if status == StatusCode::UNSUPPORTED_MEDIA_TYPE
        && let Some(bytes) = &body_sent
    {
        let malformed = jsonrpc::classify(bytes);
        return json_rpc_error(StatusCode::BAD_REQUEST, &malformed.response());
    }
    if !(status.is_client_error() || status.is_server_error()) || is_json(response.headers()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let code = if status == StatusCode::NOT_FOUND {
        jsonrpc::SESSION_NOT_FOUND
    } else {
        jsonrpc::TRANSPORT_ERROR
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("refused").to_string()
    } else {
        super::params::clip(&text, super::params::MAX_MESSAGE_BYTES)
    };
    let mut rewritten = json_rpc_error(
        status,
        &jsonrpc::error_response(serde_json::Value::Null, code, &message),
    );
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rewritten.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rewritten
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
    let mut origins: Vec<String> = LOOPBACK_ORIGINS.iter().map(|o| o.to_string()).collect();
    origins.extend(http.allowed_origins.iter().cloned());
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(hosts)
        .with_allowed_origins(origins)
        .enforce_origin_validation()
        .with_max_request_body_bytes(http.max_body_bytes)
        .with_cancellation_token(shutdown.child_token());
    let mcp = Arc::new(mcp);
    let service_engine = engine.clone();
    let sessions = Arc::new(super::streams::Sessions::default());
    let service_sessions = sessions.clone();
    let service = StreamableHttpService::new(
        move || {
            Ok(LockstepMcp::remote(
                service_engine.clone(),
                mcp.clone(),
                service_sessions.clone(),
            ))
        },
        sessions,
        config,
    );
    let gate = Arc::new(Gate {
        engine,
        auth: http.auth.clone(),
        limiter: RateLimiter {
            rate: http.rate_per_second,
            burst: f64::from(http.burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        },
    });
    axum::Router::new()
        .nest_service("/mcp", service)
        .layer(middleware::from_fn_with_state(
            http.max_body_bytes,
            json_rpc_errors,
        ))
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
