//! The dashboard in a real headless Chromium, driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`; `.ci/run` installs them)
//! against a real `lockstep serve --http` with the real example plugins.
//!
//! Each test writes a screenshot of every page it visits under
//! `target/ui-screenshots/`; `docs/ui-jobs.png` is one of them. Nothing here
//! measures time: waits poll the page until it shows what is expected, and
//! the assertions count rows and read texts.

use crate::ui_harness::*;
use base64::Engine as _;
use lockstep::model::{JobState, TaskState, TenantId};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A chromedriver process (in its own process group, with the Chromium it
/// starts) and one browser session, spoken to in the W3C WebDriver
/// protocol: JSON over HTTP, a handful of commands.
struct Browser {
    driver: Child,
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`
    session: String,
    _profile: tempfile::TempDir,
}

/// The key under which WebDriver names an element.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let driver = {
            use std::os::unix::process::CommandExt as _;
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // Its own group: dropping the Browser kills Chromium with it.
                .process_group(0)
                .spawn()
                .expect(
                    "start chromedriver: install Debian's chromium and chromium-driver (.ci/run does)",
                )
        };
        let profile = tempfile::tempdir().expect("browser profile dir");
        let mut browser = Browser {
            driver,
            http: reqwest::Client::new(),
            session: String::new(),
            _profile: profile,
        };
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1200,900",
                    format!("--user-data-dir={}", browser._profile.path().display()),
                ]
            }
        } } });
        let url = format!("http://127.0.0.1:{port}");
        let mut last = String::new();
        for _ in 0..200 {
            match browser
                .call("POST", &format!("{url}/session"), &capabilities)
                .await
            {
                Ok(value) => {
                    let id = value["sessionId"]
                        .as_str()
                        .unwrap_or_else(|| panic!("no session id in {value}"));
                    browser.session = format!("{url}/session/{id}");
                    return browser;
                }
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not start a Chromium session: {last}");
    }

    /// One WebDriver command: its `value`, or the error it answered.
    async fn call(&self, method: &str, url: &str, body: &Value) -> Result<Value, String> {
        let request = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self
                .http
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string()),
        };
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        let text = response.text().await.map_err(|e| e.to_string())?;
        let answer: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
        if !status.is_success() {
            return Err(format!("{status}: {}", answer["value"]));
        }
        Ok(answer["value"].clone())
    }

    async fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.session);
        self.call(method, &url, &body)
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path} failed: {e}"))
    }

    async fn goto(&self, url: &str) {
        self.command("POST", "/url", json!({ "url": url })).await;
    }

    /// The elements matching a CSS selector (their WebDriver ids).
    async fn find_all(&self, css: &str) -> Vec<String> {
        let found = self
            .command(
                "POST",
                "/elements",
                json!({ "using": "css selector", "value": css }),
            )
            .await;
        found
            .as_array()
            .map(|all| {
                all.iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn find(&self, css: &str) -> String {
        self.find_all(css)
            .await
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no {css} on the page"))
    }

    /// The rendered text of the first element matching `css`, read in one
    /// step (live updates replace elements: a reference could go stale).
    async fn text(&self, css: &str) -> String {
        let text = self
            .command(
                "POST",
                "/execute/sync",
                json!({
                    "script": "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
                    "args": [css],
                }),
            )
            .await;
        text.as_str()
            .unwrap_or_else(|| panic!("no {css} on the page"))
            .trim()
            .to_string()
    }

    async fn attribute(&self, element: &str, name: &str) -> String {
        let value = self
            .command(
                "GET",
                &format!("/element/{element}/attribute/{name}"),
                Value::Null,
            )
            .await;
        value.as_str().unwrap_or_default().to_string()
    }

    async fn count(&self, css: &str) -> usize {
        self.find_all(css).await.len()
    }

    async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.command("POST", &format!("/element/{element}/click"), json!({}))
            .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.command(
            "POST",
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    /// Sign in through the login form.
    async fn sign_in(&self, base: &str, token: &str) {
        self.goto(&format!("{base}/ui/login")).await;
        self.type_into("#token", token).await;
        self.click("#login button[type=submit]").await;
        self.wait_for_text("#viewer", "tenant").await;
    }

    /// Poll until `css`'s text contains `wanted` (at most a minute);
    /// returns the text.
    async fn wait_for_text(&self, css: &str, wanted: &str) -> String {
        let mut seen = String::new();
        for _ in 0..600 {
            if !self.find_all(css).await.is_empty() {
                let text = self.text(css).await;
                if text.contains(wanted) {
                    return text;
                }
                seen = text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let url = self.command("GET", "/url", Value::Null).await;
        let source = self.command("GET", "/source", Value::Null).await;
        panic!("{css} never showed {wanted:?}; last seen {seen:?} on {url}:\n{source}");
    }

    /// Run a script in the page (a returned promise is awaited).
    async fn script(&self, js: &str) -> Value {
        self.command("POST", "/execute/sync", json!({ "script": js, "args": [] }))
            .await
    }

    /// A PNG of the window, kept under target/ui-screenshots/NAME.png.
    async fn screenshot(&self, name: &str) {
        let encoded = self.command("GET", "/screenshot", Value::Null).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().expect("base64 text"))
            .expect("a base64 PNG");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    }

    /// End the session (Chromium quits).
    async fn close(self) {
        let _ = self.call("DELETE", &self.session, &Value::Null).await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on the process group of a child this test spawned.
        unsafe {
            libc::kill(-(self.driver.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}

/// `target/ui-screenshots`.
fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("..")
        .join("ui-screenshots")
}

/// Tasks that take a while each, so a job's progress can be watched.
fn slow_job(name: &str, tasks: usize) -> String {
    let task = "{ handler = \"example:steps\", input = { steps = 5, step_ms = 60 } }";
    format!(
        "name = \"{name}\"\n[[stages]]\nname = \"work\"\ntasks = [{}]\n",
        vec![task; tasks].join(", ")
    )
}

const DIES: &str = "name = \"dies-once\"\n[[stages]]\nname = \"s\"\ntasks = [{ handler = \"example:flaky\", input = { fail_times = 1 }, max_attempts = 1 }]\n";

/// Sign in with an admin token; the jobs list shows a running job whose
/// progress advances without a reload; a dead task's page shows its error
/// and its log line; Retry revives it and the job finishes (the job page
/// follows it live), with the retry recorded under the token's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_watches_progress_live_and_revives_a_dead_task() {
    let ui = Dashboard::start(&[]).await;
    let admin = ui.token("acme", "admin", "ops-admin");
    let dies = ui.submit("acme", DIES).await;
    let dead = ui.dead_task("acme", dies).await;
    let live = ui.submit("acme", &slow_job("live-progress", 40)).await;

    let browser = Browser::start().await;
    browser.sign_in(&ui.base, &admin).await;
    assert_eq!(
        browser.text("#viewer").await,
        "ops-admin · tenant acme · admin"
    );
    // The list, newest first: the running job above the failed one.
    let mut rows = Vec::new();
    for row in browser.find_all("tr.job-row").await {
        rows.push(browser.attribute(&row, "data-job").await);
    }
    assert_eq!(rows, [live.0.to_string(), dies.0.to_string()]);
    assert!(
        browser
            .text(&format!("#job-{}-progress", dies.0))
            .await
            .starts_with("failed"),
    );

    // Progress advances in place: the same document (a marker set on it
    // survives) shows a higher count of finished tasks.
    browser
        .script("window.lockstepMarker = 'no reload'; return true")
        .await;
    let cell = format!("#job-{}-progress .progress-text", live.0);
    let done_of = |text: &str| -> i64 {
        text.split('/')
            .next()
            .and_then(|d| d.trim().parse().ok())
            .unwrap_or_else(|| panic!("not a progress text: {text:?}"))
    };
    let first = done_of(&browser.text(&cell).await);
    let mut advanced = first;
    for _ in 0..600 {
        advanced = done_of(&browser.text(&cell).await);
        if advanced >= first + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(advanced >= first + 2, "progress stayed at {advanced}");
    assert_eq!(
        browser.script("return window.lockstepMarker").await,
        json!("no reload")
    );
    browser.screenshot("jobs").await;

    // The dead task: its error and the line it logged before failing.
    browser
        .goto(&ui.url(&format!("/ui/tasks/{}", dead.task_id.0)))
        .await;
    assert_eq!(browser.text("#task-state").await, "dead");
    assert_eq!(
        browser.text("#task-error").await,
        "attempt 1 fails on purpose (fail_times = 1)"
    );
    assert!(
        browser
            .text("#task-logs")
            .await
            .ends_with("warn: attempt 1 of 1 planned failures"),
    );
    browser.screenshot("task-dead").await;
    browser.click("#retry").await;
    // Back on the task page, which now lists the revival. (Waiting for any
    // `#task-state` was met by the page the click left, and the form's
    // redirect could then land after the next navigation.)
    browser.wait_for_text("#task-events", "task_revived").await;

    // The job page follows the revived job to its end without a reload.
    browser.goto(&ui.url(&format!("/ui/jobs/{}", dies.0))).await;
    browser.wait_for_text("#job-state", "succeeded").await;
    let tenant = TenantId("acme".into());
    let task = ui.engine.task(&tenant, dead.task_id).await.expect("task");
    assert_eq!(
        (task.state, task.output_json.as_deref()),
        (TaskState::Succeeded, Some(r#"{"attempt":2}"#))
    );
    browser.goto(&ui.url(&format!("/ui/jobs/{}", dies.0))).await;
    let events = browser.text("#events").await;
    assert!(events.contains("dead -> pending, by ops-admin"), "{events}");
    browser.screenshot("job").await;
    browser.goto(&ui.url("/ui/queues")).await;
    browser.screenshot("queues").await;
    browser.goto(&ui.url("/ui/plugins")).await;
    assert_eq!(browser.count("#handlers tbody tr").await, 6);
    browser.screenshot("plugins").await;
    browser.close().await;
}

/// A read token sees no Retry button, and a POST forged from its page
/// (without, or with its own, CSRF token) is refused; another tenant's
/// admin cannot open the job by its URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_token_cannot_act_and_another_tenant_cannot_look() {
    let ui = Dashboard::start(&[]).await;
    let reader = ui.token("acme", "read", "auditor");
    let globex = ui.token("globex", "admin", "globex-admin");
    let job = ui.submit("acme", DIES).await;
    let dead = ui.dead_task("acme", job).await;

    let browser = Browser::start().await;
    browser.sign_in(&ui.base, &reader).await;
    browser
        .goto(&ui.url(&format!("/ui/tasks/{}", dead.task_id.0)))
        .await;
    assert_eq!(browser.text("#task-state").await, "dead");
    assert_eq!(browser.count("#retry").await, 0);
    assert_eq!(
        browser.text("#read-only").await,
        "Your token is read-only: it cannot retry or cancel."
    );
    browser.screenshot("task-read-only").await;
    // Fetches from the page itself, with the session cookie.
    let forged = browser
        .script(&format!(
            r#"const csrf = document.querySelector('input[name=csrf]').value;
               const send = body => fetch('/ui/tasks/{id}/retry', {{method: 'POST',
                 headers: {{'content-type': 'application/x-www-form-urlencoded'}}, body}})
                 .then(r => r.status);
               return Promise.all([send(''), send('csrf=forged'), send('csrf=' + csrf)]);"#,
            id = dead.task_id.0
        ))
        .await;
    assert_eq!(forged, json!([403, 403, 403]));
    let tenant = TenantId("acme".into());
    let still = ui.engine.task(&tenant, dead.task_id).await.expect("task");
    assert_eq!(still.state, TaskState::Dead);

    // Sign out, then in as globex: acme's job is not found.
    browser.click("header form button[type=submit]").await;
    browser.sign_in(&ui.base, &globex).await;
    assert_eq!(browser.count("tr.job-row").await, 0);
    browser.goto(&ui.url(&format!("/ui/jobs/{}", job.0))).await;
    assert_eq!(browser.text("h1").await, "404 Not Found");
    assert_eq!(
        browser.text("#message").await,
        format!("job {} not found", job.0)
    );
    let progress = ui.engine.progress(&tenant, job).await.expect("progress");
    assert_eq!(progress.job.state, JobState::Failed);
    browser.close().await;
}

/// A job of 100,000 tasks opens with one page of task rows and one of
/// events; the next page follows on from the last row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_100000_tasks_renders_a_bounded_page_of_rows() {
    let ui = Dashboard::start(&[]).await;
    let admin = ui.token("acme", "admin", "ops-admin");
    // Stage two waits behind an agent task nobody claims, so nothing runs.
    let tasks: Vec<serde_json::Value> = (0..99_999)
        .map(|_| serde_json::json!({ "handler": "example:noop" }))
        .collect();
    let json = serde_json::json!({
        "name": "huge",
        "stages": [
            { "name": "gate", "tasks": [{ "executor": "agent", "title": "hold the gate" }] },
            { "name": "bulk", "tasks": tasks },
        ]
    });
    let spec = lockstep::spec::parse_job_str(
        &json.to_string(),
        lockstep::spec::Format::Json,
        &Default::default(),
    )
    .expect("the job parses");
    let job = ui.submit_spec("acme", spec).await;

    let browser = Browser::start().await;
    browser.sign_in(&ui.base, &admin).await;
    browser.goto(&ui.url(&format!("/ui/jobs/{}", job.0))).await;
    assert_eq!(
        browser.text("#job-progress .progress-text").await,
        "0/100000 (0.0%)"
    );
    assert_eq!(browser.count("tr.task-row").await, 100);
    assert_eq!(browser.count("tr.event-row").await, 2);
    let first_page_last = browser.text("tr.task-row:last-child td:first-child").await;
    browser.screenshot("job-100000-tasks").await;
    browser.click("#more-tasks").await;
    browser.wait_for_text("#tasks-heading", "after").await;
    assert_eq!(browser.count("tr.task-row").await, 100);
    let next_first: i64 = browser
        .text("tr.task-row:first-child td:first-child")
        .await
        .parse()
        .expect("a task id");
    let last: i64 = first_page_last.parse().expect("a task id");
    assert_eq!(next_first, last + 1);
    browser.close().await;
}
