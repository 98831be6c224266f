//! Who is looking: the token (from the login cookie or a bearer header) and
//! what it may do, the Host and Origin checks, and CSRF on every POST.
//!
//! The login form posts a token; the answer sets it as an `HttpOnly`,
//! `SameSite=Strict` cookie scoped to `/ui`, so page scripts cannot read it
//! and other sites cannot send it. Every request authenticates afresh
//! (a revoked token stops working at its next request). A viewer's CSRF
//! token is derived from its token (SHA-256 with a fixed prefix): pages
//! carry it in their forms, every POST must send it back, and it reveals
//! nothing of the token. The login form itself is protected by a random
//! nonce sent both as a cookie and as a form field (double submit).
//! Invariants 38 and 39 (see `ui/mod.rs`) are kept here.

use super::{PageError, UiAuth, UiState, render};
use crate::engine::tokens::TOKEN_PREFIX;
// The same readings of a request as MCP's door: one bearer-token reader, one
// list of loopback origins.
use crate::mcp::http::{LOOPBACK_ORIGINS, bearer_token};
use crate::model::{TenantId, TokenRole};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Host names served by default.
const LOOPBACK_HOSTS: [&str; 4] = ["localhost", "127.0.0.1", "::1", "[::1]"];

/// The cookie holding the viewer's token.
pub(crate) const TOKEN_COOKIE: &str = "lockstep_token";
/// The cookie holding the login form's nonce.
const LOGIN_COOKIE: &str = "lockstep_login";
/// The form field (or `X-CSRF-Token` header) carrying the CSRF token.
pub(crate) const CSRF_FIELD: &str = "csrf";

/// The authenticated viewer of one request.
#[derive(Debug, Clone)]
pub(crate) struct Viewer {
    pub tenant: TenantId,
    pub role: TokenRole,
    /// The token's label (or `token N`): recorded with every action.
    pub name: String,
    /// What this viewer's POSTs must carry.
    pub csrf: String,
}

impl Viewer {
    pub(crate) fn is_admin(&self) -> bool {
        self.role == TokenRole::Admin
    }

    /// Refuse an action a `read` token may not take.
    pub(crate) fn require_admin(&self, action: &str) -> Result<(), PageError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(PageError::forbidden(format!(
                "{} is a read token: it may view but not {action}; sign in with an admin token (`lockstep token create --role admin`)",
                self.name
            )))
        }
    }
}

/// The CSRF token of a viewer authenticated by `token`.
pub fn csrf_token(token: &str) -> String {
    hex::encode(Sha256::digest(
        format!("lockstep ui csrf\n{token}").as_bytes(),
    ))
}

/// 256 random bits, hex-encoded.
pub(crate) fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// Equal without an early exit (the comparison time says nothing of where
/// a guess went wrong).
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The value of cookie `name`, if sent.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// The host name of a Host header value (`name`, `name:port`, `[v6]:port`).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().map_or(host, |h| {
            // Keep the brackets' content as the allowed lists spell it.
            &host[..h.len() + 2]
        });
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(name, _)| name)
}

fn host_allowed(state: &UiState, host: &str) -> bool {
    let name = host_name(host);
    LOOPBACK_HOSTS
        .iter()
        .any(|h| h.eq_ignore_ascii_case(name) || h.eq_ignore_ascii_case(host))
        || state
            .config
            .allowed_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host) || h.eq_ignore_ascii_case(name))
}

/// `origin` matches `pattern` (`scheme://host:port`, or `…:*` for any port).
fn origin_matches(origin: &str, pattern: &str) -> bool {
    if origin.eq_ignore_ascii_case(pattern) {
        return true;
    }
    let Some(base) = pattern.strip_suffix(":*") else {
        return false;
    };
    if origin.eq_ignore_ascii_case(base) {
        return true;
    }
    let same_base = origin
        .get(..base.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(base));
    same_base
        && origin[base.len()..]
            .strip_prefix(':')
            .is_some_and(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
}

fn origin_allowed(state: &UiState, origin: &str, host: &str) -> bool {
    // The page's own origin (its Host was checked first).
    let own = [format!("http://{host}"), format!("https://{host}")];
    own.iter().any(|o| o.eq_ignore_ascii_case(origin))
        || LOOPBACK_ORIGINS.iter().any(|p| origin_matches(origin, p))
        || state
            .config
            .allowed_origins
            .iter()
            .any(|p| origin_matches(origin, p))
}

/// Headers every dashboard answer carries: no framing, no inline script,
/// nothing cached.
fn harden(response: &mut Response) {
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name: header::HeaderName, value: &'static str| {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "same-origin");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::CACHE_CONTROL, "no-store");
}

/// In front of every `/ui` route: Host, then Origin, then the viewer
/// (attached as a [`Viewer`]), then CSRF on POSTs.
pub(crate) async fn guard(
    State(state): State<Arc<UiState>>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = match admit(&state, request).await {
        Ok(request) => next.run(request).await,
        Err(refusal) => refusal,
    };
    harden(&mut response);
    response
}

async fn admit(state: &UiState, mut request: Request) -> Result<Request, Response> {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| request.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    if !host_allowed(state, &host) {
        return Err(PageError::forbidden(format!(
            "this server does not serve the host name {host:?}; start it with --allow-host {} to allow it",
            host_name(&host)
        ))
        .into_response());
    }
    let is_post = request.method() == Method::POST;
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("(not text)");
        if !origin_allowed(state, origin, &host) {
            return Err(PageError::forbidden(format!(
                "requests from pages of {origin} are refused; start the server with --allow-origin {origin} to allow them"
            ))
            .into_response());
        }
    }
    let path = request.uri().path().to_string();
    if path.starts_with("/ui/assets/") {
        return Ok(request);
    }
    if path == "/ui/login" {
        if is_post {
            let nonce = cookie(request.headers(), LOGIN_COOKIE).map(str::to_string);
            let (request, form) = read_form(request).await?;
            let sent = field(&form, CSRF_FIELD);
            let fresh = matches!((&nonce, sent), (Some(n), Some(s)) if same(n, s));
            if !fresh {
                return Err(PageError::forbidden(
                    "the login form has expired or did not come from this server; open /ui/login and sign in again",
                )
                .into_response());
            }
            return Ok(request);
        }
        return Ok(request);
    }
    let viewer = match viewer(state, request.headers()).await {
        Ok(Some(viewer)) => viewer,
        Ok(None) => {
            return Err(if is_post {
                PageError::new(
                    StatusCode::UNAUTHORIZED,
                    "sign in first: this action needs a token (open /ui/login)",
                )
                .into_response()
            } else {
                login_redirect(cookie(request.headers(), TOKEN_COOKIE).is_some())
            });
        }
        Err(e) => return Err(e.into_response()),
    };
    if is_post {
        let header_csrf = request
            .headers()
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let (rebuilt, form) = read_form(request).await?;
        request = rebuilt;
        let sent = header_csrf.as_deref().or_else(|| field(&form, CSRF_FIELD));
        if !sent.is_some_and(|s| same(s, &viewer.csrf)) {
            return Err(PageError::forbidden(
                "this form is missing its CSRF token or carries another session's; reload the page and try again",
            )
            .into_response());
        }
    }
    request.extensions_mut().insert(viewer);
    Ok(request)
}

/// The viewer of a request: the bearer header first, then the cookie.
/// `Ok(None)` when neither holds a live token.
async fn viewer(state: &UiState, headers: &HeaderMap) -> Result<Option<Viewer>, PageError> {
    if let UiAuth::LoopbackOnly(tenant) = &state.config.auth {
        return Ok(Some(Viewer {
            tenant: tenant.clone(),
            role: TokenRole::Admin,
            name: "loopback".to_string(),
            csrf: csrf_token(&state.loopback_secret),
        }));
    }
    let Some(token) = bearer_token(headers).or_else(|| cookie(headers, TOKEN_COOKIE)) else {
        return Ok(None);
    };
    if !token.starts_with(TOKEN_PREFIX) {
        return Ok(None);
    }
    let Some(record) = state.engine.authenticate(token).await? else {
        return Ok(None);
    };
    Ok(Some(Viewer {
        name: record.name(),
        tenant: record.tenant,
        role: record.role,
        csrf: csrf_token(token),
    }))
}

fn login_redirect(clear_cookie: bool) -> Response {
    let mut response = (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, HeaderValue::from_static("/ui/login"))],
    )
        .into_response();
    if clear_cookie {
        response.headers_mut().insert(
            header::SET_COOKIE,
            HeaderValue::from_static(
                "lockstep_token=; HttpOnly; SameSite=Strict; Path=/ui; Max-Age=0",
            ),
        );
    }
    response
}

/// A form body, read (bounded by the route's body limit) and parsed; the
/// request is rebuilt with the same bytes for its handler.
async fn read_form(request: Request) -> Result<(Request, Vec<(String, String)>), Response> {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, super::MAX_FORM_BYTES)
        .await
        .map_err(|_| {
            PageError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the form is larger than {} bytes", super::MAX_FORM_BYTES),
            )
            .into_response()
        })?;
    let form = parse_form(&bytes);
    Ok((Request::from_parts(parts, Body::from(bytes)), form))
}

/// `application/x-www-form-urlencoded` (or a query string) as pairs.
pub(crate) fn parse_form(bytes: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(bytes).into_owned().collect()
}

/// The first value of `name`.
pub(crate) fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `GET /ui/login`: the form, with a fresh nonce as cookie and field.
pub(crate) async fn login_form(State(state): State<Arc<UiState>>) -> Response {
    login_page(&state, StatusCode::OK, None)
}

fn login_page(state: &UiState, status: StatusCode, message: Option<&str>) -> Response {
    let nonce = random_secret();
    let no_auth = matches!(state.config.auth, UiAuth::LoopbackOnly(_));
    let mut response = render::html(status, render::login_page(&nonce, message, no_auth));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{LOGIN_COOKIE}={nonce}; HttpOnly; SameSite=Strict; Path=/ui/login"
    )) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

/// `POST /ui/login`: a live token becomes the session cookie.
pub(crate) async fn login(State(state): State<Arc<UiState>>, body: axum::body::Bytes) -> Response {
    let form = parse_form(&body);
    let token = field(&form, "token").map(str::trim).unwrap_or_default();
    if token.is_empty() {
        return login_page(
            &state,
            StatusCode::BAD_REQUEST,
            Some("enter a token from `lockstep token create`"),
        );
    }
    let live = if token.starts_with(TOKEN_PREFIX) {
        match state.engine.authenticate(token).await {
            Ok(record) => record.is_some(),
            Err(e) => return PageError::from(e).into_response(),
        }
    } else {
        false
    };
    if !live {
        return login_page(
            &state,
            StatusCode::UNAUTHORIZED,
            Some("that is not a live token: it was mistyped, revoked, or never created"),
        );
    }
    let mut response = (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, HeaderValue::from_static("/ui/jobs"))],
    )
        .into_response();
    // The token's text is `lst_` and hex: nothing a cookie must encode.
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{TOKEN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/ui"
    )) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "lockstep_login=; HttpOnly; SameSite=Strict; Path=/ui/login; Max-Age=0",
        ),
    );
    response
}

/// `POST /ui/logout`: the cookie is dropped.
pub(crate) async fn logout() -> Response {
    login_redirect(true)
}
