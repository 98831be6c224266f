//! The page frame and the small pieces every page uses: the layout with its
//! navigation, message and login pages, times, state badges, progress bars.
//!
//! Markup is built with maud, which escapes every interpolated value; guest
//! text (errors, log lines) is also passed through `limits::printable`, so
//! control characters show as escapes, and cut to a bounded length in lists.

use super::access::{CSRF_FIELD, Viewer};
use crate::model::Millis;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

/// Characters of guest text shown in a table cell before it is cut.
pub(crate) const CELL_CHARS: usize = 160;

pub(crate) fn html(status: StatusCode, body: Markup) -> Response {
    let mut response = (status, body.into_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// A whole page: head (assets), navigation, the viewer and its sign-out
/// button, then `body`.
pub(crate) fn page(title: &str, viewer: Option<&Viewer>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                // No inline styles or eval: the Content-Security-Policy allows neither.
                meta name="htmx-config" content=r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false}"#;
                title { (title) " · lockstep" }
                // No favicon request.
                link rel="icon" href="data:,";
                link rel="stylesheet" href=(super::assets::STYLE_PATH);
                script src=(super::assets::HTMX_PATH) {}
                script src=(super::assets::SSE_PATH) {}
            }
            body {
                header.top {
                    a.brand href="/ui/jobs" { "lockstep" }
                    @if viewer.is_some() {
                        nav {
                            a href="/ui/jobs" { "Jobs" }
                            a href="/ui/queues" { "Queues" }
                            a href="/ui/plugins" { "Workers & plugins" }
                        }
                    }
                    @if let Some(v) = viewer {
                        div.who {
                            span #viewer { (v.name) " · tenant " (v.tenant.0) " · " (v.role) }
                            form method="post" action="/ui/logout" {
                                (csrf(v))
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The hidden field every form of `viewer` carries.
pub(crate) fn csrf(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name=(CSRF_FIELD) value=(viewer.csrf); }
}

/// A refusal or an error: its status and one sentence.
pub(crate) fn message_page(status: StatusCode, message: &str) -> Markup {
    let title = status.canonical_reason().unwrap_or("Error");
    page(
        title,
        None,
        html! {
            h1 { (status.as_u16()) " " (title) }
            p #message { (message) }
            p { a href="/ui/jobs" { "Back to the jobs" } }
        },
    )
}

pub(crate) fn login_page(nonce: &str, message: Option<&str>, no_auth: bool) -> Markup {
    page(
        "Sign in",
        None,
        html! {
            h1 { "Sign in" }
            @if no_auth {
                p { "This server runs with --no-auth: " a href="/ui/jobs" { "open the jobs" } " without a token." }
            }
            @if let Some(m) = message {
                p #message .error { (m) }
            }
            form #login method="post" action="/ui/login" {
                input type="hidden" name=(CSRF_FIELD) value=(nonce);
                label for="token" { "Token (from " code { "lockstep token create" } ")" }
                input #token type="password" name="token" autocomplete="off" required;
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS` (UTC).
pub(crate) fn datetime(ms: Millis) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM` or `YYYY-MM-DDTHH:MM:SS` (a space may
/// stand for the `T`; UTC) as milliseconds since the Unix epoch.
pub(crate) fn parse_datetime(text: &str) -> Result<Millis, String> {
    let bad = || {
        format!(
            "{text:?} is not a time: write YYYY-MM-DD or YYYY-MM-DDTHH:MM (UTC), e.g. 2026-12-03T14:05"
        )
    };
    let text = text.trim();
    let (date, time) = match text.split_once(['T', ' ']) {
        Some((d, t)) => (d, Some(t)),
        None => (text, None),
    };
    let num = |s: &str| -> Result<i64, String> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || s.len() > 4 {
            return Err(bad());
        }
        s.parse().map_err(|_| bad())
    };
    let parts: Vec<&str> = date.split('-').collect();
    let [y, m, d] = parts.as_slice() else {
        return Err(bad());
    };
    let (y, m, d) = (num(y)?, num(m)?, num(d)?);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return Err(bad());
    }
    let (hh, mm, ss) = match time {
        None => (0, 0, 0),
        Some(t) => {
            let parts: Vec<&str> = t.split(':').collect();
            match parts.as_slice() {
                [h, mi] => (num(h)?, num(mi)?, 0),
                [h, mi, s] => (num(h)?, num(mi)?, num(s)?),
                _ => return Err(bad()),
            }
        }
    };
    if hh > 23 || mm > 59 || ss > 59 {
        return Err(bad());
    }
    let days = days_from_civil(y, m, d);
    Ok(((days * 86_400) + hh * 3600 + mm * 60 + ss) * 1000)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's days-from-civil and its inverse (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A span of milliseconds as `850 ms`, `12.3 s`, `4 min 5 s` or `2 h 3 min`.
pub(crate) fn duration(ms: Millis) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{} min {} s", ms / 60_000, ms % 60_000 / 1000)
    } else {
        format!("{} h {} min", ms / 3_600_000, ms % 3_600_000 / 60_000)
    }
}

/// A state as a coloured badge.
pub(crate) fn badge(state: &str) -> Markup {
    html! { span class={ "badge state-" (state) } { (state) } }
}

/// A progress bar with `done/total (percent%)` beside it.
pub(crate) fn progress(done: i64, total: i64, percent: f64) -> Markup {
    html! {
        progress value=(done) max=(total.max(1)) {}
        " "
        span.progress-text { (done) "/" (total) " (" (format!("{percent:.1}")) "%)" }
    }
}

/// Guest text for a cell: control characters escaped, cut to [`CELL_CHARS`].
pub(crate) fn cell_text(text: &str) -> String {
    let printable = crate::limits::printable(text);
    if printable.chars().count() <= CELL_CHARS {
        return printable.into_owned();
    }
    let mut cut: String = printable.chars().take(CELL_CHARS).collect();
    cut.push('…');
    cut
}

/// Guest text shown whole (a task's error, a log line): control characters
/// other than line breaks and tabs escaped.
pub(crate) fn block_text(text: &str) -> String {
    text.split('\n')
        .map(|line| crate::limits::printable(&line.replace('\t', "    ")).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}
