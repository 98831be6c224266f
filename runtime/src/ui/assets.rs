//! The dashboard's static files, embedded in the binary: htmx and its SSE
//! extension (vendored, see `runtime/assets/ui/README.md`) and the style
//! sheet. Paths carry the version, so a browser may cache them for good.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

pub(crate) const HTMX_PATH: &str = "/ui/assets/htmx-2.0.11.min.js";
pub(crate) const SSE_PATH: &str = "/ui/assets/htmx-ext-sse-2.2.4.min.js";
pub(crate) const STYLE_PATH: &str = "/ui/assets/style-1.css";

const HTMX: &str = include_str!("../../assets/ui/htmx-2.0.11.min.js");
const SSE: &str = include_str!("../../assets/ui/htmx-ext-sse-2.2.4.min.js");
const STYLE: &str = include_str!("../../assets/ui/style.css");

/// `GET /ui/assets/{name}`.
pub(crate) async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind) = match format!("/ui/assets/{name}").as_str() {
        HTMX_PATH => (HTMX, "text/javascript; charset=utf-8"),
        SSE_PATH => (SSE, "text/javascript; charset=utf-8"),
        STYLE_PATH => (STYLE, "text/css; charset=utf-8"),
        _ => {
            return super::PageError::new(
                StatusCode::NOT_FOUND,
                format!("there is no dashboard asset named {name:?}"),
            )
            .into_response();
        }
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    response
}
