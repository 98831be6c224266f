//! The MCP wire contract as a raw client meets it, on both transports:
//! malformed JSON-RPC gets a JSON-RPC error (never silence, never a text
//! page), loopback browser origins are served, ending a session answers
//! 200, a dropped event stream is resumed with `Last-Event-ID`, and every
//! tool's schemas use only what every client's validator understands (and
//! output schemas stay flat).

use crate::harness::{cli_bin, test_cache_dir};
use crate::mcp_harness::*;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}"#;

/// A raw POST to /mcp; `content_type` defaults to JSON.
async fn post(
    url: &str,
    body: &str,
    headers: &[(&str, &str)],
    content_type: Option<&str>,
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", content_type.unwrap_or("application/json"))
        .header("accept", "application/json, text/event-stream")
        .body(body.to_string());
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.send().await.expect("HTTP request")
}

/// The JSON-RPC error a malformed request got: status, content type, body.
async fn json_rpc_error(response: reqwest::Response) -> (u16, String, Value) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {text:?}"));
    (status, content_type, body)
}

/// The port of `http://127.0.0.1:PORT/mcp`.
fn port(url: &str) -> u16 {
    url.trim_start_matches("http://127.0.0.1:")
        .trim_end_matches("/mcp")
        .parse()
        .expect("port in the server URL")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_rpc_over_http_gets_a_json_rpc_error() {
    let db = Db::new().await;
    let token = db.create_token("acme");
    let server = HttpServer::start(&db, &[]);
    let auth = format!("Bearer {token}");
    let auth = [("authorization", auth.as_str())];

    let cases: [(&str, Option<&str>, u16, Value, i64); 5] = [
        ("{not json", None, 400, Value::Null, -32700),
        (r#"{"hello": 1}"#, None, 400, Value::Null, -32600),
        ("[]", None, 400, Value::Null, -32600),
        (
            r#"{"jsonrpc":"2.0","id":5,"method":"initialize","params":7}"#,
            None,
            400,
            json!(5),
            -32602,
        ),
        (INITIALIZE, Some("text/plain"), 415, Value::Null, -32000),
    ];
    for (body, content_type, status, id, code) in cases {
        let response = post(&server.url, body, &auth, content_type).await;
        let (got_status, got_type, got) = json_rpc_error(response).await;
        assert_eq!(
            (got_status, got_type.as_str()),
            (status, "application/json"),
            "{body}"
        );
        assert_eq!(got["jsonrpc"], "2.0", "{body}: {got}");
        assert_eq!(got["id"], id, "{body}: {got}");
        assert_eq!(got["error"]["code"], code, "{body}: {got}");
        let message = got["error"]["message"].as_str().expect("message");
        assert!(
            !message.is_empty() && message.len() < 300,
            "{body}: {message:?}"
        );
    }
    // Nothing was planned by any of them, and the server still serves.
    let client = server.client(&token).await;
    assert_eq!(ok(&client, "list_jobs", json!({})).await["jobs"], json!([]));
}

/// Raw stdio: write lines to `lockstep mcp`, read its answers.
struct RawStdio {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl RawStdio {
    fn start(db: &Db) -> RawStdio {
        let mut child = tokio::process::Command::new(cli_bin())
            .args(["--db", &db.url])
            .arg("--plugins")
            .arg(db.no_plugins())
            .arg("--cache-dir")
            .arg(test_cache_dir())
            .arg("mcp")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start lockstep mcp");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        RawStdio {
            child,
            stdin,
            stdout,
        }
    }

    async fn send(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write to lockstep mcp");
        self.stdin.flush().await.expect("flush");
    }

    async fn answer(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(20), self.stdout.next_line())
            .await
            .expect("lockstep mcp answered within 20 s")
            .expect("read stdout")
            .expect("lockstep mcp closed stdout");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_rpc_over_stdio_gets_a_json_rpc_error() {
    let db = Db::new().await;
    let mut raw = RawStdio::start(&db);
    raw.send(INITIALIZE).await;
    assert_eq!(raw.answer().await["id"], 1);
    raw.send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
        .await;

    let cases: [(&str, Value, i64); 4] = [
        ("not json at all", Value::Null, -32700),
        (r#"{"hello": 1}"#, Value::Null, -32600),
        (
            r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":7}"#,
            json!(9),
            -32602,
        ),
        (
            r#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":7}}"#,
            json!("a"),
            -32602,
        ),
    ];
    for (line, id, code) in cases {
        raw.send(line).await;
        let got = raw.answer().await;
        assert_eq!(got["jsonrpc"], "2.0", "{line}: {got}");
        assert_eq!(got["id"], id, "{line}: {got}");
        assert_eq!(got["error"]["code"], code, "{line}: {got}");
    }
    // A line longer than the arguments limit and its envelope is refused
    // without being kept, and the session goes on.
    let long = format!(
        r#"{{"jsonrpc":"2.0","id":11,"method":"ping","params":{{"pad":"{}"}}}}"#,
        "p".repeat(9 * 1024 * 1024)
    );
    raw.send(&long).await;
    let got = raw.answer().await;
    assert_eq!(got["id"], Value::Null, "{got}");
    assert_eq!(got["error"]["code"], -32600, "{got}");
    assert_eq!(
        got["error"]["message"],
        format!(
            "Invalid Request: the message is {} bytes, more than the 8454144-byte limit",
            long.len()
        )
    );
    // A malformed notification gets no answer (JSON-RPC answers no
    // notification); the session goes on.
    raw.send(r#"{"jsonrpc":"2.0","method":"notifications/progress","params":5}"#)
        .await;
    raw.send(r#"{"jsonrpc":"2.0","id":10,"method":"ping"}"#)
        .await;
    assert_eq!(
        raw.answer().await,
        json!({ "jsonrpc": "2.0", "id": 10, "result": {} })
    );
    drop(raw.stdin);
    let status = tokio::time::timeout(Duration::from_secs(20), raw.child.wait())
        .await
        .expect("lockstep mcp exits when stdin closes")
        .expect("wait");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_pages_on_this_machine_may_call_and_others_may_not() {
    let db = Db::new().await;
    let token = db.create_token("acme");
    let server = HttpServer::start(&db, &[]);
    let auth = format!("Bearer {token}");
    let own = format!("http://127.0.0.1:{}", port(&server.url));
    for origin in [
        own.as_str(),
        "http://localhost:6274",
        "http://[::1]:3000",
        "https://localhost",
    ] {
        let r = post(
            &server.url,
            INITIALIZE,
            &[("authorization", &auth), ("origin", origin)],
            None,
        )
        .await;
        assert_eq!(r.status(), 200, "Origin: {origin}");
    }
    for origin in [
        "http://evil.example",
        "http://localhost.evil.example",
        "null",
    ] {
        let r = post(
            &server.url,
            INITIALIZE,
            &[("authorization", &auth), ("origin", origin)],
            None,
        )
        .await;
        assert_eq!(r.status(), 403, "Origin: {origin}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_a_session_answers_200_and_the_session_is_gone() {
    let db = Db::new().await;
    let token = db.create_token("acme");
    let server = HttpServer::start(&db, &[]);
    let auth = format!("Bearer {token}");
    let init = post(&server.url, INITIALIZE, &[("authorization", &auth)], None).await;
    assert_eq!(init.status(), 200);
    let session = init.headers()["mcp-session-id"]
        .to_str()
        .expect("session id")
        .to_string();
    let headers = [
        ("authorization", auth.as_str()),
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-06-18"),
    ];
    let initialized = post(
        &server.url,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        &headers,
        None,
    )
    .await;
    assert_eq!(initialized.status(), 202);

    let mut delete = reqwest::Client::new().delete(&server.url);
    for (k, v) in headers {
        delete = delete.header(k, v);
    }
    let ended = delete.send().await.expect("DELETE");
    assert_eq!(ended.status(), 200);

    let after = post(
        &server.url,
        r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#,
        &headers,
        None,
    )
    .await;
    assert_eq!(after.status(), 404);
}

/// Where in a schema a subschema is expected (by keyword).
const SUBSCHEMA_MAPS: [&str; 4] = [
    "properties",
    "$defs",
    "patternProperties",
    "dependentSchemas",
];
const SUBSCHEMA_ONE: [&str; 9] = [
    "items",
    "additionalProperties",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
    "unevaluatedProperties",
];
const SUBSCHEMA_LISTS: [&str; 4] = ["anyOf", "oneOf", "allOf", "prefixItems"];

/// The formats JSON Schema 2020-12 defines.
const STANDARD_FORMATS: [&str; 19] = [
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uuid",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

/// Everything in `schema` a strict client would refuse: boolean subschemas
/// and formats the standard does not define.
fn unportable(schema: &Value, at: &str, found: &mut Vec<String>) {
    let Some(object) = schema.as_object() else {
        found.push(format!("{at} is {schema}, not a schema object"));
        return;
    };
    if let Some(format) = object.get("format")
        && !STANDARD_FORMATS.contains(&format.as_str().unwrap_or_default())
    {
        found.push(format!("{at}/format is {format}"));
    }
    for key in SUBSCHEMA_MAPS {
        if let Some(map) = object.get(key).and_then(Value::as_object) {
            for (name, sub) in map {
                unportable(sub, &format!("{at}/{key}/{name}"), found);
            }
        }
    }
    for key in SUBSCHEMA_ONE {
        match object.get(key) {
            // `additionalProperties: false` is the one boolean every client reads.
            Some(Value::Bool(_)) if key == "additionalProperties" => {}
            Some(sub) => unportable(sub, &format!("{at}/{key}"), found),
            None => {}
        }
    }
    if object.contains_key("$ref") {
        found.push(format!("{at} has a $ref"));
    }
    for key in SUBSCHEMA_LISTS {
        if let Some(list) = object.get(key).and_then(Value::as_array) {
            for (i, sub) in list.iter().enumerate() {
                unportable(sub, &format!("{at}/{key}/{i}"), found);
            }
        }
    }
}

/// Subschemas of an output schema below its top-level fields: an output
/// schema is flat (a client may validate, and before the Python SDK 2.0
/// check, the whole schema on every call), so a nested object or array
/// item is described by the keys it carries, not by a subschema per key.
fn nested(schema: &Value, at: &str, depth: usize, found: &mut Vec<String>) {
    let Some(object) = schema.as_object() else {
        return;
    };
    for key in SUBSCHEMA_MAPS {
        if let Some(map) = object.get(key).and_then(Value::as_object) {
            if depth > 0 {
                found.push(format!("{at}/{key} nests {} subschemas", map.len()));
            }
            for (name, sub) in map {
                nested(sub, &format!("{at}/{key}/{name}"), depth + 1, found);
            }
        }
    }
    for key in SUBSCHEMA_ONE.iter().chain(&SUBSCHEMA_LISTS) {
        match object.get(*key) {
            Some(Value::Bool(_)) | None => {}
            Some(sub) if *key == "items" && depth == 1 => {
                nested(sub, &format!("{at}/{key}"), depth, found)
            }
            Some(_) => found.push(format!("{at}/{key} is a nested subschema")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_schema_uses_only_what_every_client_understands() {
    let db = Db::new().await;
    let server = StdioServer::start(&db, "local", &[]).await;
    let tools = server.client.list_all_tools().await.expect("tools/list");
    assert_eq!(tools.len(), 15);
    let mut found = Vec::new();
    for tool in &tools {
        let input = Value::Object((*tool.input_schema).clone());
        unportable(&input, &format!("{}.inputSchema", tool.name), &mut found);
        let output = Value::Object(
            tool.output_schema
                .as_deref()
                .cloned()
                .unwrap_or_else(|| panic!("{} has no output schema", tool.name)),
        );
        assert_eq!(output["type"], "object", "{}", tool.name);
        unportable(&output, &format!("{}.outputSchema", tool.name), &mut found);
        nested(
            &output,
            &format!("{}.outputSchema", tool.name),
            0,
            &mut found,
        );
    }
    assert_eq!(found, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_auth_serves_only_loopback_and_acts_as_the_tenant() {
    let db = Db::new().await;
    // Refused before anything listens: an address others can reach, or
    // names besides loopback.
    for (args, expected) in [
        (
            vec!["--http", "0.0.0.0:0", "--no-auth"],
            "error: --no-auth serves every request without a token, so it listens only on a loopback address (127.0.0.1, [::1] or localhost), not on 0.0.0.0:0; create a token with `lockstep token create` to serve 0.0.0.0",
        ),
        (
            vec![
                "--http",
                "127.0.0.1:0",
                "--no-auth",
                "--allow-host",
                "mcp.example.com",
            ],
            "error: --no-auth serves only this machine, so it takes no --allow-host; drop --allow-host, or drop --no-auth and use a token from `lockstep token create`",
        ),
    ] {
        let out = std::process::Command::new(cli_bin())
            .args(["--db", &db.url, "--plugins"])
            .arg(db.no_plugins())
            .arg("serve")
            .args(&args)
            .output()
            .expect("run lockstep serve");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr).trim_end(), expected);
    }
    let out = std::process::Command::new(cli_bin())
        .args(["--db", &db.url, "serve", "--no-auth"])
        .output()
        .expect("run lockstep serve");
    assert_eq!(out.status.code(), Some(2), "--no-auth needs --http");

    // Served without a token, as --tenant: the plan is acme's.
    let server = HttpServer::start(&db, &["--no-auth", "--tenant", "acme"]);
    let init = post(&server.url, INITIALIZE, &[], None).await;
    assert_eq!(init.status(), 200);
    let session = init.headers()["mcp-session-id"]
        .to_str()
        .expect("session id")
        .to_string();
    let headers = [
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-06-18"),
    ];
    let initialized = post(
        &server.url,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        &headers,
        None,
    )
    .await;
    assert_eq!(initialized.status(), 202);
    let planned = post(
        &server.url,
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"plan_task","arguments":{"goal":"no token","subtasks":[{"title":"t","instructions":"i"}]}}}"#,
        &headers,
        None,
    )
    .await;
    assert_eq!(planned.status(), 200);
    let body = planned.text().await.expect("body");
    assert!(body.contains(r#""job_id":1"#), "{body}");
    let acme = StdioServer::start(&db, "acme", &[]).await;
    assert_eq!(
        ok(&acme.client, "get_job", json!({ "job_id": 1 })).await["name"],
        "no token"
    );
    let other = StdioServer::start(&db, "globex", &[]).await;
    assert!(
        call(&other.client, "get_job", json!({ "job_id": 1 }))
            .await
            .is_err()
    );
}

/// The SSE events of `body` read so far: (id, data) per event.
fn sse_events(body: &str) -> Vec<(Option<String>, String)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|event| {
            let mut id = None;
            let mut data = String::new();
            for line in event.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            (id, data)
        })
        .collect()
}

/// Read `response`'s SSE body until an event whose data is the JSON-RPC
/// response to request `id`; every event read, and that response.
async fn read_until_response(
    response: &mut reqwest::Response,
    id: i64,
) -> (Vec<(Option<String>, String)>, Option<Value>) {
    let mut body = String::new();
    loop {
        let events = sse_events(&body);
        let answer = events
            .iter()
            .filter_map(|(_, data)| serde_json::from_str::<Value>(data).ok())
            .find(|v| v["id"] == id);
        if answer.is_some() {
            return (events, answer);
        }
        match tokio::time::timeout(Duration::from_secs(30), response.chunk()).await {
            Ok(Ok(Some(chunk))) => body.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(Ok(None)) => return (events, None),
            Ok(Err(e)) => panic!("reading the event stream: {e}"),
            Err(_) => panic!("no event for 30 s; read so far: {body:?}"),
        }
    }
}

/// The conformance suite's resume check (SEP-1699) needs its fixture tool
/// `test_reconnection`; lockstep's own long call is wait_job. A client
/// whose wait_job stream drops reconnects with `Last-Event-ID` and gets the
/// answer, including a job that finished while it was away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_wait_job_stream_is_resumed_with_last_event_id() {
    let db = Db::new().await;
    let token = db.create_token("acme");
    let server = HttpServer::start(&db, &[]);
    let agent = server.client(&token).await;
    let plan = ok(
        &agent,
        "plan_task",
        json!({ "goal": "g", "subtasks": [{ "title": "only", "instructions": "do it" }] }),
    )
    .await;
    let job = plan["job_id"].as_i64().expect("job id");

    let auth = format!("Bearer {token}");
    let init = post(&server.url, INITIALIZE, &[("authorization", &auth)], None).await;
    let session = init.headers()["mcp-session-id"]
        .to_str()
        .expect("session id")
        .to_string();
    let headers = [
        ("authorization", auth.as_str()),
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-06-18"),
    ];
    let initialized = post(
        &server.url,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        &headers,
        None,
    )
    .await;
    assert_eq!(initialized.status(), 202);

    let wait = json!({ "jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
        "name": "wait_job", "arguments": { "job_id": job, "timeout_seconds": 60 } } });
    let mut stream = post(&server.url, &wait.to_string(), &headers, None).await;
    assert_eq!(stream.status(), 200);
    // The priming event: an id and no data, before anything else.
    let mut body = String::new();
    let primed = loop {
        let chunk = tokio::time::timeout(Duration::from_secs(30), stream.chunk())
            .await
            .expect("the priming event within 30 s")
            .expect("the stream")
            .expect("an event before the stream ends");
        body.push_str(&String::from_utf8_lossy(&chunk));
        if let Some((Some(id), data)) = sse_events(&body).into_iter().next()
            && body.contains("\n\n")
        {
            assert_eq!(data, "", "{body:?}");
            break id;
        }
    };
    drop(stream);

    // While the client is away, the job finishes.
    let claimed = ok(&agent, "claim_task", json!({ "job_id": job })).await;
    let done = ok(
        &agent,
        "complete_task",
        json!({ "task_id": claimed["task"]["task_id"], "attempt": claimed["task"]["attempt"], "summary": "done" }),
    )
    .await;
    assert_eq!(done["job_state"], "succeeded");

    let mut resumed = reqwest::Client::new()
        .get(&server.url)
        .header("accept", "text/event-stream")
        .header("last-event-id", &primed);
    for (k, v) in headers {
        resumed = resumed.header(k, v);
    }
    let mut resumed = resumed.send().await.expect("GET with Last-Event-ID");
    assert_eq!(resumed.status(), 200);
    let (events, answer) = read_until_response(&mut resumed, 7).await;
    let answer = answer.unwrap_or_else(|| panic!("no answer to wait_job: {events:?}"));
    let result = &answer["result"]["structuredContent"];
    assert_eq!(result["finished"], true, "{answer}");
    assert_eq!(result["job"]["state"], "succeeded", "{answer}");
    assert_eq!(result["job"]["done"], 1, "{answer}");
}
