//! Real MCP servers and a real MCP client (rmcp) for the MCP tests: `lockstep
//! mcp` child processes over stdio, `lockstep serve --http` child processes
//! over streamable HTTP, tokens made with `lockstep token create`.

use crate::harness::{cli_bin, test_cache_dir};
use rmcp::model::{CallToolRequestParams, ProgressNotificationParam};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, RoleClient, ServiceError, ServiceExt};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a client answers the server's sampling and elicitation requests
/// with, as the JSON of MCP results; a client with answers declares the
/// `sampling` and `elicitation` capabilities.
#[derive(Clone)]
pub struct Answers {
    pub sample: Value,
    pub elicit: Value,
    /// The user never answers an elicitation (it stays pending).
    pub never_elicit: bool,
}

/// An MCP client that records the progress, log and resource-update
/// notifications it receives, and counts `notifications/tools/list_changed`;
/// with [`Answers`], it answers sampling and elicitation requests and
/// records each one's params.
#[derive(Clone, Default)]
pub struct Recorder {
    pub answers: Option<Answers>,
    /// `[method, params]` of each server request it answered, as JSON.
    pub asked: Arc<Mutex<Vec<(String, Value)>>>,
    pub progress: Arc<Mutex<Vec<ProgressNotificationParam>>>,
    /// `notifications/message` params, as JSON.
    pub logs: Arc<Mutex<Vec<Value>>>,
    pub tool_list_changes: Arc<std::sync::atomic::AtomicUsize>,
    /// The URIs of `notifications/resources/updated`, in order.
    pub resource_updates: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    /// A client that declares `sampling` and `elicitation` and answers both.
    pub fn answering(answers: Answers) -> Recorder {
        Recorder {
            answers: Some(answers),
            ..Recorder::default()
        }
    }

    /// The answer to `method`, recording its params.
    fn answer<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        params: Value,
        pick: impl Fn(&Answers) -> &Value,
    ) -> Result<T, rmcp::ErrorData> {
        self.asked
            .lock()
            .expect("asked")
            .push((method.to_owned(), params));
        let Some(answers) = &self.answers else {
            return Err(rmcp::ErrorData::invalid_request(
                format!("this client declared no capability for {method}"),
                None,
            ));
        };
        Ok(
            serde_json::from_value(pick(answers).clone())
                .expect("an answer of the MCP result type"),
        )
    }
}

impl ClientHandler for Recorder {
    fn get_info(&self) -> rmcp::model::ClientConfig {
        let mut info = rmcp::model::ClientConfig::default();
        if self.answers.is_some() {
            // The last revision in which a server may send a client requests.
            info.protocol_version = rmcp::model::ProtocolVersion::LATEST_WITH_INITIALIZE;
            info.capabilities.sampling = Some(Default::default());
            info.capabilities.elicitation = Some(Default::default());
        }
        info
    }

    #[allow(deprecated)]
    async fn create_message(
        &self,
        params: rmcp::model::CreateMessageRequestParams,
        _cx: rmcp::service::RequestContext<RoleClient>,
    ) -> Result<rmcp::model::CreateMessageResult, rmcp::ErrorData> {
        let params = serde_json::to_value(params).expect("params are JSON");
        self.answer("sampling/createMessage", params, |a| &a.sample)
    }

    async fn create_elicitation(
        &self,
        params: rmcp::model::ElicitRequestParams,
        _cx: rmcp::service::RequestContext<RoleClient>,
    ) -> Result<rmcp::model::ElicitResult, rmcp::ErrorData> {
        let params = serde_json::to_value(params).expect("params are JSON");
        let answer = self.answer("elicitation/create", params, |a| &a.elicit);
        if self.answers.as_ref().is_some_and(|a| a.never_elicit) {
            std::future::pending::<()>().await;
        }
        answer
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _cx: NotificationContext<RoleClient>,
    ) {
        self.progress.lock().expect("progress log").push(params);
    }

    #[allow(deprecated)]
    async fn on_logging_message(
        &self,
        params: rmcp::model::LoggingMessageNotificationParam,
        _cx: NotificationContext<RoleClient>,
    ) {
        let params = serde_json::to_value(params).expect("log params are JSON");
        self.logs.lock().expect("log list").push(params);
    }

    async fn on_resource_updated(
        &self,
        params: rmcp::model::ResourceUpdatedNotificationParam,
        _cx: NotificationContext<RoleClient>,
    ) {
        self.resource_updates
            .lock()
            .expect("resource updates")
            .push(params.uri);
    }

    async fn on_tool_list_changed(&self, _cx: NotificationContext<RoleClient>) {
        self.tool_list_changes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

pub type Client = RunningService<RoleClient, Recorder>;

/// A fresh database and a temporary directory (logs, an empty plugin
/// directory). SQLite by default; a fresh PostgreSQL database when
/// `LOCKSTEP_TEST_MCP_DB=postgres` (server as in `postgres_test_db`).
pub struct Db {
    pub dir: tempfile::TempDir,
    pub url: String,
    pg: Option<crate::postgres_test_db::TestDb>,
}

impl Db {
    pub async fn new() -> Db {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("no-plugins")).expect("plugin dir");
        if std::env::var("LOCKSTEP_TEST_MCP_DB").as_deref() == Ok("postgres") {
            let pg = crate::postgres_test_db::create()
                .await
                .expect("LOCKSTEP_TEST_MCP_DB=postgres needs a reachable PostgreSQL server");
            return Db {
                dir,
                url: pg.url.clone(),
                pg: Some(pg),
            };
        }
        let url = format!("sqlite://{}", dir.path().join("lockstep.db").display());
        Db { dir, url, pg: None }
    }

    pub fn no_plugins(&self) -> PathBuf {
        self.dir.path().join("no-plugins")
    }

    fn log(&self, name: &str) -> std::fs::File {
        let n: u32 = rand::random();
        std::fs::File::create(self.dir.path().join(format!("{name}-{n}.log"))).expect("log file")
    }

    /// `lockstep token create` for `tenant`; returns the token text.
    pub fn create_token(&self, tenant: &str) -> String {
        self.create_token_with_role(tenant, "admin")
    }

    /// `lockstep token create --role ROLE` for `tenant`; the token's text.
    pub fn create_token_with_role(&self, tenant: &str, role: &str) -> String {
        let out = Command::new(cli_bin())
            .args(["--db", &self.url, "--tenant", tenant, "token", "create"])
            .args(["--role", role])
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

    /// `lockstep token revoke`.
    pub fn revoke_token(&self, token: &str) {
        let out = Command::new(cli_bin())
            .args(["--db", &self.url, "token", "revoke", token])
            .output()
            .expect("run lockstep token revoke");
        assert!(
            out.status.success(),
            "token revoke failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let Some(pg) = self.pg.take() else { return };
        let drop_it = async move {
            let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", pg.name);
            if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&pg.admin)
                .await
            {
                eprintln!("could not drop test database {}: {e}", pg.name);
            }
        };
        // Servers started by the test are gone or going; the drop forces their connections off.
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(drop_it));
    }
}

/// A `lockstep mcp` child process and the client connected to it over stdio.
pub struct StdioServer {
    pub client: Client,
    pub pid: u32,
}

impl StdioServer {
    pub async fn start(db: &Db, tenant: &str, extra: &[&str]) -> StdioServer {
        Self::start_with_plugins(db, tenant, &db.no_plugins(), extra).await
    }

    pub async fn start_with_plugins(
        db: &Db,
        tenant: &str,
        plugins: &Path,
        extra: &[&str],
    ) -> StdioServer {
        Self::start_with_client(db, tenant, plugins, extra, Recorder::default()).await
    }

    /// A server whose client is `client` (one that answers, say).
    pub async fn start_with_client(
        db: &Db,
        tenant: &str,
        plugins: &Path,
        extra: &[&str],
        client: Recorder,
    ) -> StdioServer {
        let mut cmd = tokio::process::Command::new(cli_bin());
        cmd.args(["--db", &db.url, "--tenant", tenant])
            .arg("--plugins")
            .arg(plugins)
            .arg("--cache-dir")
            .arg(test_cache_dir())
            .args(["--log", "lockstep=info"])
            .arg("mcp")
            .args(extra);
        let (transport, _) = TokioChildProcess::builder(cmd)
            .stderr(db.log("mcp"))
            .spawn()
            .expect("start lockstep mcp");
        let pid = transport.id().expect("child pid");
        let client = client
            .serve(transport)
            .await
            .expect("MCP handshake over stdio");
        StdioServer { client, pid }
    }

    /// A server with the example plugins, as tenant `local`.
    pub async fn with_examples(db: &Db) -> StdioServer {
        let examples = Path::new(lockstep::guest_artifacts::EXAMPLES_DIR);
        Self::start_with_plugins(db, "local", examples, &[]).await
    }

    /// SIGKILL the server process (no chance to clean up).
    pub fn kill(&self) {
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on the pid of a child this test spawned.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGKILL);
        }
    }
}

/// A `lockstep serve --http` child process.
pub struct HttpServer {
    child: Child,
    /// `http://127.0.0.1:PORT/mcp`
    pub url: String,
    /// Its stderr, line by line as it comes (also written to a log file).
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl HttpServer {
    pub fn start(db: &Db, extra: &[&str]) -> HttpServer {
        Self::start_with_plugins(db, &db.no_plugins(), extra)
    }

    pub fn start_with_plugins(db: &Db, plugins: &Path, extra: &[&str]) -> HttpServer {
        Self::start_logging(db, plugins, &["--log", "lockstep=info"], "1", extra)
    }

    /// `serve --http` with `log` flags (`--log`, `--log-format`) and this
    /// many worker slots.
    pub fn start_logging(
        db: &Db,
        plugins: &Path,
        log: &[&str],
        workers: &str,
        extra: &[&str],
    ) -> HttpServer {
        let mut child = Command::new(cli_bin())
            .args(["--db", &db.url])
            .arg("--plugins")
            .arg(plugins)
            .arg("--cache-dir")
            .arg(test_cache_dir())
            .args(log)
            .args(["serve", "--workers", workers, "--http", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start lockstep serve --http");
        let stderr = child.stderr.take().expect("serve stderr");
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        let url = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                panic!(
                    "lockstep serve exited before listening; stderr:\n{}",
                    seen.join("\n")
                );
            };
            if let Some(url) = line.split("MCP listening on ").nth(1) {
                break url.trim().to_string();
            }
            seen.push(line);
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        let mut log = db.log("serve");
        let stderr = Arc::new(Mutex::new(seen));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            for line in lines.map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
                sink.lock().expect("stderr lines").push(line);
            }
        });
        HttpServer { child, url, stderr }
    }

    pub async fn client(&self, token: &str) -> Client {
        let transport = StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri(self.url.as_str()).auth_header(token),
        );
        Recorder::default()
            .serve(transport)
            .await
            .expect("MCP handshake over HTTP")
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Why a tool call did not succeed, as the client saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// An MCP protocol error (invalid arguments are code -32602).
    Protocol {
        code: i32,
        message: String,
        data: Option<Value>,
    },
    /// A tool result with `isError: true`.
    Tool { code: String, message: String },
    /// The request did not get through (e.g. HTTP 401).
    Transport(String),
}

impl Refusal {
    pub fn message(&self) -> &str {
        match self {
            Refusal::Protocol { message, .. }
            | Refusal::Tool { message, .. }
            | Refusal::Transport(message) => message,
        }
    }

    /// The field an invalid-arguments error names.
    pub fn field(&self) -> Option<String> {
        match self {
            Refusal::Protocol { data: Some(d), .. } => {
                d.get("field").and_then(Value::as_str).map(str::to_string)
            }
            _ => None,
        }
    }
}

fn arguments(args: Value) -> Option<serde_json::Map<String, Value>> {
    match args {
        Value::Object(map) => Some(map),
        Value::Null => None,
        other => panic!("tool arguments must be an object, got {other}"),
    }
}

/// Call a tool; the structured result, or why it was refused.
pub async fn call(client: &Client, tool: &str, args: Value) -> Result<Value, Refusal> {
    let mut params = CallToolRequestParams::new(tool.to_string());
    params.arguments = arguments(args);
    read_result(client.call_tool(params).await)
}

fn read_result(
    result: Result<rmcp::model::CallToolResult, ServiceError>,
) -> Result<Value, Refusal> {
    match result {
        Ok(r) if r.is_error == Some(true) => {
            // A refusal is not the tool's result: no structured content (a
            // client would validate it against the output schema), its
            // message as text, and {code, message} under _meta.
            assert_eq!(
                r.structured_content, None,
                "a refusal with structured content"
            );
            let error = r
                .meta
                .as_ref()
                .and_then(|m| m.0.get("lockstep/error"))
                .cloned()
                .unwrap_or(Value::Null);
            let message = error["message"].as_str().unwrap_or_default().to_string();
            let text: Vec<&str> = r
                .content
                .iter()
                .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
                .collect();
            assert_eq!(
                text,
                [message.as_str()],
                "the refusal's text is its message"
            );
            Err(Refusal::Tool {
                code: error["code"].as_str().unwrap_or_default().to_string(),
                message,
            })
        }
        Ok(r) => Ok(r
            .structured_content
            .expect("every lockstep tool returns structured content")),
        Err(ServiceError::McpError(e)) => Err(Refusal::Protocol {
            code: e.code.0,
            message: e.message.to_string(),
            data: e.data,
        }),
        Err(other) => Err(Refusal::Transport(format!("{other:?}"))),
    }
}

/// Call a tool that must succeed.
pub async fn ok(client: &Client, tool: &str, args: Value) -> Value {
    match call(client, tool, args.clone()).await {
        Ok(v) => v,
        Err(e) => {
            let shown: String = args.to_string().chars().take(300).collect();
            panic!("{tool} {shown} was refused: {e:?}")
        }
    }
}

/// `plan_task` with subtasks given as (key, title, depends_on).
pub async fn plan(client: &Client, goal: &str, subtasks: &[(&str, &str, &[&str])]) -> Value {
    let subtasks: Vec<Value> = subtasks
        .iter()
        .map(|(key, title, deps)| {
            json!({
                "key": key,
                "title": title,
                "instructions": format!("do {title}"),
                "depends_on": deps,
            })
        })
        .collect();
    ok(
        client,
        "plan_task",
        json!({ "goal": goal, "subtasks": subtasks }),
    )
    .await
}

/// `claim_task` for one job: the claimed task, or `None` when nothing is ready.
pub async fn claim(client: &Client, job: i64) -> Option<Value> {
    let r = ok(client, "claim_task", json!({ "job_id": job })).await;
    if r["claimed"].as_bool() == Some(true) {
        Some(r["task"].clone())
    } else {
        assert!(r["task"].is_null(), "claimed=false must carry no task: {r}");
        None
    }
}

/// `complete_task` for a claimed task with a summary.
pub async fn complete(client: &Client, task: &Value, summary: &str) -> Value {
    ok(
        client,
        "complete_task",
        json!({ "task_id": task["task_id"], "attempt": task["attempt"], "summary": summary }),
    )
    .await
}

/// Retry `f` until it returns `Some` (every 100 ms, at most 60 s).
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..600 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within 60 s");
}

/// The plan's task id for a key.
pub fn task_id(plan: &Value, key: &str) -> i64 {
    plan["tasks"]
        .as_array()
        .expect("plan tasks")
        .iter()
        .find(|t| t["key"] == key)
        .and_then(|t| t["task_id"].as_i64())
        .unwrap_or_else(|| panic!("plan has no task {key}: {plan}"))
}
