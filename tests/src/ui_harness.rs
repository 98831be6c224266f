//! The dashboard's test fixtures: a real `lockstep serve --http` process with
//! the real example plugins, tokens with roles made by `lockstep token
//! create`, jobs submitted through the engine on the same database, and
//! plain HTTP requests with a cookie, a bearer header and a CSRF token
//! scraped from the page, as a browser would send them.

use crate::harness::{cli_bin, example_plugins};
use crate::mcp_harness::{Db, HttpServer};
use lockstep::engine::{Engine, EngineConfig};
use lockstep::guest_artifacts;
use lockstep::model::{JobId, TaskRecord, TenantId};
use lockstep::spec::{self, Format};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

pub struct Dashboard {
    /// Dropped first (fields drop in order): the server, then its database.
    _server: HttpServer,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// The same database, for fixtures and for reading what actions did.
    pub engine: Arc<Engine>,
    pub db: Db,
}

impl Dashboard {
    /// A fresh database and a `serve --http` on it with the example plugins
    /// and one worker slot (plus `extra` flags).
    pub async fn start(extra: &[&str]) -> Dashboard {
        let db = Db::new().await;
        // Migrates the database before the server and the engine share it.
        token(&db, "bootstrap", "read", "bootstrap");
        let server =
            HttpServer::start_with_plugins(&db, Path::new(guest_artifacts::EXAMPLES_DIR), extra);
        let base = server
            .url
            .strip_suffix("/mcp")
            .expect("serve prints its /mcp URL")
            .to_string();
        let engine = Engine::open(&db.url, example_plugins().await, EngineConfig::default())
            .await
            .expect("open the server's database");
        Dashboard {
            _server: server,
            base,
            engine,
            db,
        }
    }

    /// `lockstep token create --role ROLE --label LABEL` for `tenant`.
    pub fn token(&self, tenant: &str, role: &str, label: &str) -> String {
        token(&self.db, tenant, role, label)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Submit a job (TOML) as `tenant`.
    pub async fn submit(&self, tenant: &str, toml: &str) -> JobId {
        let job =
            spec::parse_job_str(toml, Format::Toml, &Default::default()).expect("test job parses");
        self.submit_spec(tenant, job).await
    }

    pub async fn submit_spec(&self, tenant: &str, job: spec::JobSpec) -> JobId {
        self.engine
            .submit(&TenantId(tenant.to_string()), job)
            .await
            .expect("submit")
            .job_id
    }

    /// The first dead task of `job`, once the server's worker has killed it.
    pub async fn dead_task(&self, tenant: &str, job: JobId) -> TaskRecord {
        let tenant = TenantId(tenant.to_string());
        for _ in 0..600 {
            let dead = self
                .engine
                .dead_tasks(&tenant, job, 1)
                .await
                .expect("dead tasks");
            if let Some(task) = dead.into_iter().next() {
                return task;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("job {} has no dead task after a minute", job.0);
    }
}

/// `lockstep token create` with a role and a label; the token's text.
pub fn token(db: &Db, tenant: &str, role: &str, label: &str) -> String {
    let out = Command::new(cli_bin())
        .args(["--db", &db.url, "--tenant", tenant, "token", "create"])
        .args(["--role", role, "--label", label])
        .output()
        .expect("run lockstep token create");
    assert!(
        out.status.success(),
        "token create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)
        .expect("utf-8 token")
        .trim()
        .to_string();
    assert!(token.starts_with("lst_"), "unexpected token {token:?}");
    token
}

/// An HTTP client that follows no redirects (the tests look at them).
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("HTTP client")
}

/// A GET with the token as a bearer header: status and body.
pub async fn get(url: &str, token: &str) -> (u16, String) {
    let response = http()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("GET");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// The CSRF token a page's forms carry.
pub fn csrf_of(page: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let at = page
        .find(marker)
        .unwrap_or_else(|| panic!("no CSRF field in the page:\n{page}"))
        + marker.len();
    page[at..]
        .split('"')
        .next()
        .expect("a quoted value")
        .to_string()
}

/// The one sentence of a message page.
pub fn message_of(page: &str) -> String {
    let marker = "id=\"message\">";
    let at = page
        .find(marker)
        .unwrap_or_else(|| panic!("not a message page:\n{page}"))
        + marker.len();
    unescape(page[at..].split("</p>").next().expect("a closed paragraph"))
}

/// HTML text as written by maud, unescaped.
pub fn unescape(html: &str) -> String {
    html.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// A form POST with the token as a bearer header and optional extra headers.
pub async fn post(
    url: &str,
    token: &str,
    form: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> (u16, String) {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let mut request = http()
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.expect("POST");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}
