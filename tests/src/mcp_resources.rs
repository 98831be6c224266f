//! The MCP server beyond tools, as a real client (rmcp) meets it: jobs and
//! tasks as resources of their tenant, the `plan_work` and `run_handler`
//! prompts and the completion of their arguments, and `logging/setLevel`
//! with the log lines of the jobs a session waits on.

use crate::mcp_harness::*;
use rmcp::ServiceError;
use rmcp::model::{
    ArgumentInfo, CompleteRequestParams, GetPromptRequestParams, ReadResourceRequestParams,
    Reference,
};
use serde_json::{Value, json};

/// The JSON-RPC error of a request that failed: code, message, data.
fn protocol_error<T: std::fmt::Debug>(result: Result<T, ServiceError>) -> (i32, String, Value) {
    match result {
        Err(ServiceError::McpError(e)) => (
            e.code.0,
            e.message.to_string(),
            e.data.unwrap_or(Value::Null),
        ),
        other => panic!("expected a JSON-RPC error, got {other:?}"),
    }
}

/// The URI templates `resources/templates/list` names, in order.
async fn template_uris(client: &Client) -> Vec<String> {
    let templates = client
        .list_resource_templates(None)
        .await
        .expect("templates");
    templates
        .resource_templates
        .into_iter()
        .map(|t| t.uri_template)
        .collect()
}

async fn read(client: &Client, uri: &str) -> Result<Value, ServiceError> {
    client
        .read_resource(ReadResourceRequestParams::new(uri))
        .await
        .map(|r| serde_json::to_value(r).expect("result JSON"))
}

/// The view a resource holds, parsed from its one text content.
async fn view(client: &Client, uri: &str) -> Value {
    let result = read(client, uri).await.expect("read the resource");
    let contents = result["contents"].as_array().expect("contents");
    assert_eq!(contents.len(), 1, "{result}");
    assert_eq!(contents[0]["uri"], uri);
    assert_eq!(contents[0]["mimeType"], "application/json");
    serde_json::from_str(contents[0]["text"].as_str().expect("text")).expect("a JSON view")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_and_tasks_are_resources_of_their_own_tenant() {
    let db = Db::new().await;
    let acme = db.create_token("acme");
    let other = db.create_token("other");
    let server = HttpServer::start(&db, &[]);
    let client = server.client(&acme).await;

    // An empty tenant lists no resources, and still has the two templates.
    let listed = client.list_resources(None).await.expect("list");
    assert!(listed.resources.is_empty(), "{listed:?}");
    let uris = template_uris(&client).await;
    assert_eq!(
        uris,
        ["lockstep://jobs/{job_id}", "lockstep://tasks/{task_id}"]
    );

    let first = plan(
        &client,
        "Ship email login",
        &[("design", "Design the schema", &[])],
    )
    .await;
    let second = plan(
        &client,
        "Write the docs",
        &[("docs", "Write docs/login.md", &[])],
    )
    .await;
    let listed =
        serde_json::to_value(client.list_resources(None).await.expect("list")).expect("JSON");
    assert_eq!(
        listed["resources"],
        json!([
            {
                "uri": "lockstep://jobs/2", "name": "job-2", "title": "Write the docs",
                "description": "job 2 (running): Write the docs", "mimeType": "application/json"
            },
            {
                "uri": "lockstep://jobs/1", "name": "job-1", "title": "Ship email login",
                "description": "job 1 (running): Ship email login", "mimeType": "application/json"
            }
        ])
    );
    assert_eq!(listed.get("nextCursor"), None);

    // Reading a job or a task gives what get_job / get_task give.
    let job = view(&client, "lockstep://jobs/1").await;
    assert_eq!(job, ok(&client, "get_job", json!({ "job_id": 1 })).await);
    assert_eq!(job["job_id"], first["job_id"]);
    let task_id = task_id(&second, "docs");
    let task = view(&client, &format!("lockstep://tasks/{task_id}")).await;
    assert_eq!(task["task_id"], task_id);
    assert_eq!(task["title"], "Write docs/login.md");

    // Not found, malformed and foreign URIs.
    let (code, message, _) = protocol_error(read(&client, "lockstep://jobs/999").await);
    assert_eq!((code, message.as_str()), (-32002, "job 999 not found"));
    let (code, message, data) = protocol_error(read(&client, "lockstep://jobs/seven").await);
    assert_eq!(code, -32602);
    assert_eq!(
        message,
        "invalid argument uri: \"seven\" is not a job id; use lockstep://jobs/{job_id}"
    );
    assert_eq!(data["field"], "uri");
    let (code, message, _) = protocol_error(read(&client, "test://static-text").await);
    assert_eq!(code, -32002);
    assert_eq!(
        message,
        "lockstep has no resource test://static-text; its resources are lockstep://jobs/{job_id} and lockstep://tasks/{task_id}"
    );

    // Another tenant sees none of them (Invariant 23).
    let stranger = server.client(&other).await;
    assert!(
        stranger
            .list_resources(None)
            .await
            .expect("list")
            .resources
            .is_empty()
    );
    let (code, message, _) = protocol_error(read(&stranger, "lockstep://jobs/1").await);
    assert_eq!((code, message.as_str()), (-32002, "job 1 not found"));
    let (code, _, _) =
        protocol_error(read(&stranger, &format!("lockstep://tasks/{task_id}")).await);
    assert_eq!(code, -32002);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_list_pages_through_every_job_newest_first() {
    let db = Db::new().await;
    let server = StdioServer::start(&db, "local", &[]).await;
    let client = &server.client;
    for i in 0..101 {
        plan(client, &format!("goal {i}"), &[("only", "Do it", &[])]).await;
    }
    let first = client.list_resources(None).await.expect("first page");
    assert_eq!(first.resources.len(), 100);
    assert_eq!(first.resources[0].uri, "lockstep://jobs/101");
    assert_eq!(first.resources[99].uri, "lockstep://jobs/2");
    let cursor = first.next_cursor.clone().expect("a next page");
    let second = client
        .list_resources(Some(
            rmcp::model::PaginatedRequestParams::default().with_cursor(Some(cursor.to_string())),
        ))
        .await
        .expect("second page");
    let uris: Vec<&str> = second.resources.iter().map(|r| r.uri.as_str()).collect();
    assert_eq!(uris, ["lockstep://jobs/1"]);
    assert_eq!(second.next_cursor, None);
    let (code, message, data) = protocol_error(
        client
            .list_resources(Some(
                rmcp::model::PaginatedRequestParams::default().with_cursor(Some("page 2".into())),
            ))
            .await,
    );
    assert_eq!(code, -32602);
    assert_eq!(
        message,
        "invalid argument cursor: is not a cursor this server gave; pass a nextCursor back as it came"
    );
    assert_eq!(data["field"], "cursor");
}

fn arguments(value: Value) -> rmcp::model::JsonObject {
    value.as_object().expect("an object").clone()
}

/// `prompts/list` as JSON, and the prompts' names in order.
async fn listed_prompts(client: &Client) -> (Value, Vec<String>) {
    let listed =
        serde_json::to_value(client.list_all_prompts().await.expect("prompts")).expect("JSON");
    let names = listed
        .as_array()
        .expect("prompts")
        .iter()
        .map(|p| p["name"].as_str().expect("a name").to_owned())
        .collect();
    (listed, names)
}

async fn prompt(client: &Client, name: &str, args: Value) -> Result<Value, ServiceError> {
    client
        .get_prompt(GetPromptRequestParams::new(name).with_arguments(arguments(args)))
        .await
        .map(|r| serde_json::to_value(r).expect("JSON"))
}

/// The text of a prompt's one user message.
fn message_text(result: &Value) -> &str {
    let messages = result["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 1, "{result}");
    assert_eq!(messages[0]["role"], "user");
    messages[0]["content"]["text"].as_str().expect("text")
}

async fn complete(
    client: &Client,
    r#ref: Reference,
    argument: &str,
    value: &str,
) -> Result<Value, ServiceError> {
    client
        .complete(CompleteRequestParams::new(
            r#ref,
            ArgumentInfo::new(argument, value),
        ))
        .await
        .map(|r| serde_json::to_value(r.completion).expect("JSON"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_guide_planning_and_running_a_handler_and_complete_their_arguments() {
    let db = Db::new().await;
    let server = StdioServer::with_examples(&db).await;
    let client = &server.client;

    let (listed, names) = listed_prompts(client).await;
    assert_eq!(names, ["plan_work", "run_handler"]);
    assert_eq!(
        listed[0]["arguments"][0],
        json!({
            "name": "goal", "description": "What to achieve (it becomes the plan's name).", "required": true
        })
    );

    // plan_work: the goal and the context in a guide to the agent workflow.
    let guide = prompt(
        client,
        "plan_work",
        json!({ "goal": "Ship email login", "context": "Postgres 15." }),
    )
    .await
    .expect("plan_work");
    assert_eq!(guide["description"], "Plan and carry out: Ship email login");
    let text = message_text(&guide);
    assert!(text.contains("\nGoal: Ship email login\n"), "{text}");
    assert!(
        text.contains("\nWhat is known already:\nPostgres 15.\n"),
        "{text}"
    );
    for tool in [
        "plan_task",
        "claim_task",
        "update_task",
        "complete_task",
        "fail_task",
        "wait_job",
    ] {
        assert!(text.contains(&format!("`{tool}`")), "{tool}: {text}");
    }

    // run_handler: what the handler does, its schema, and its own tool.
    let run = prompt(
        client,
        "run_handler",
        json!({ "handler": "example:fanout" }),
    )
    .await
    .expect("run_handler");
    let text = message_text(&run);
    assert!(
        text.starts_with("Run the lockstep handler `example:fanout`.\n"),
        "{text}"
    );
    assert!(
        text.contains("call the tool `example.fanout` with the input as its arguments"),
        "{text}"
    );
    assert!(
        text.contains("\"count\""),
        "the input schema is shown: {text}"
    );
    assert!(text.contains("`submit_job`"), "{text}");

    // Arguments are checked like a tool's, naming the argument.
    let cases = [
        (
            "plan_work",
            json!({}),
            "invalid argument arguments.goal: is missing",
        ),
        (
            "plan_work",
            json!({ "goal": " " }),
            "invalid argument arguments.goal: is empty",
        ),
        (
            "plan_work",
            json!({ "goal": "x", "owner": "me" }),
            "invalid argument arguments.owner: is not an argument of this prompt; it takes goal, context",
        ),
        (
            "run_handler",
            json!({ "handler": "example:nope" }),
            "invalid argument arguments.handler: unknown handler \"example:nope\"; registered handlers: example:fanout, example:flaky, example:noop, example:steps, example:sum, example:wordcount",
        ),
        (
            "test_simple_prompt",
            json!({}),
            "invalid argument name: lockstep has no prompt \"test_simple_prompt\"; its prompts are plan_work, run_handler",
        ),
    ];
    for (name, args, expected) in cases {
        let (code, message, _) = protocol_error(prompt(client, name, args.clone()).await);
        assert_eq!(
            (code, message.as_str()),
            (-32602, expected),
            "{name} {args}"
        );
    }

    // Completion: handler names, job ids, nothing for free text.
    let handlers = complete(
        client,
        Reference::for_prompt("run_handler"),
        "handler",
        "example:s",
    )
    .await
    .expect("complete");
    assert_eq!(
        handlers,
        json!({ "values": ["example:steps", "example:sum"], "total": 2, "hasMore": false })
    );
    let goal = complete(client, Reference::for_prompt("plan_work"), "goal", "Sh")
        .await
        .expect("complete");
    assert_eq!(goal, json!({ "values": [], "total": 0, "hasMore": false }));
    for i in 1..=12 {
        plan(client, &format!("goal {i}"), &[("only", "Do it", &[])]).await;
    }
    let jobs = complete(
        client,
        Reference::for_resource("lockstep://jobs/{job_id}"),
        "job_id",
        "1",
    )
    .await
    .expect("complete");
    assert_eq!(
        jobs,
        json!({ "values": ["12", "11", "10", "1"], "total": 4, "hasMore": false })
    );
    let (code, message, _) = protocol_error(
        complete(
            client,
            Reference::for_prompt("test_prompt_with_arguments"),
            "arg1",
            "par",
        )
        .await,
    );
    assert_eq!(
        (code, message.as_str()),
        (
            -32602,
            "invalid argument ref.name: lockstep has no prompt \"test_prompt_with_arguments\"; its prompts are plan_work, run_handler"
        )
    );
    let (code, message, _) =
        protocol_error(complete(client, Reference::for_prompt("run_handler"), "name", "x").await);
    assert_eq!(
        (code, message.as_str()),
        (
            -32602,
            "invalid argument argument.name: \"name\" is not an argument here; it takes handler"
        )
    );
}

#[allow(deprecated)]
async fn set_level(client: &Client, level: rmcp::model::LoggingLevel) {
    client
        .set_level(rmcp::model::SetLevelRequestParams::new(level))
        .await
        .expect("logging/setLevel");
}

/// Submit a job of one `example:steps` task and wait for it over MCP.
async fn steps_job(client: &Client, key: &str) -> i64 {
    let submitted = ok(
        client,
        "submit_job",
        json!({
            "job": { "name": key, "stages": [{ "name": "s", "tasks": [{ "handler": "example:steps", "input": { "steps": 2, "step_ms": 1 } }] }] },
            "idempotency_key": key,
        }),
    )
    .await;
    let job = submitted["job_id"].as_i64().expect("job id");
    let waited = ok(
        client,
        "wait_job",
        json!({ "job_id": job, "timeout_seconds": 120 }),
    )
    .await;
    assert_eq!(waited["job"]["state"], "succeeded", "{waited}");
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(deprecated)]
async fn a_session_that_sets_a_log_level_hears_the_log_lines_of_the_jobs_it_waits_on() {
    use rmcp::model::LoggingLevel;
    let db = Db::new().await;
    let server = StdioServer::with_examples(&db).await;
    let client = &server.client;
    let logs = client.service().logs.clone();

    // No level set: no log messages. A level above the line's: none either.
    steps_job(client, "quiet").await;
    set_level(client, LoggingLevel::Warning).await;
    steps_job(client, "warnings-only").await;

    // At info, the handler's last progress report (an info line) arrives,
    // once, however often the job is waited on.
    set_level(client, LoggingLevel::Info).await;
    let job = steps_job(client, "chatty").await;
    let line = json!({
        "level": "info",
        "logger": "lockstep",
        "data": { "job_id": job, "task_id": job, "message": "progress 2/2: working" },
    });
    eventually("the log line arrives", || async {
        (!logs.lock().expect("logs").is_empty()).then_some(())
    })
    .await;
    ok(
        client,
        "wait_job",
        json!({ "job_id": job, "timeout_seconds": 1 }),
    )
    .await;
    // A later notification would arrive after this call's result: wait for
    // another job's line to be sure nothing more came for this one.
    let next = steps_job(client, "chatty-2").await;
    eventually("the second job's line arrives", || async {
        (logs.lock().expect("logs").len() >= 2).then_some(())
    })
    .await;
    let mut second = line.clone();
    second["data"]["job_id"] = json!(next);
    second["data"]["task_id"] = json!(next);
    assert_eq!(*logs.lock().expect("logs"), [line, second]);
}

// ------------------------------------------- a plugin's resources and prompts

/// A stdio server with only the conformance fixture plugin, whose
/// `mcp-catalog` export offers resources, a template and prompts.
async fn fixture_server(db: &Db) -> (crate::plugin_support::PluginDir, StdioServer) {
    let dir = crate::plugin_support::PluginDir::new();
    dir.add(lockstep::guest_artifacts::FIXTURE_MCP_CONFORMANCE);
    let server = StdioServer::start_with_plugins(db, "local", &dir.plugins(), &[]).await;
    (dir, server)
}

const RED_PIXEL_PNG: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_offers_resources_and_templates_its_handlers_read() {
    let db = Db::new().await;
    let (_dir, server) = fixture_server(&db).await;
    let client = &server.client;

    let listed =
        serde_json::to_value(client.list_resources(None).await.expect("list")).expect("JSON");
    let uris: Vec<&Value> = listed["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| &r["uri"])
        .collect();
    assert_eq!(
        uris,
        [
            &json!("test://static-text"),
            &json!("test://static-binary"),
            &json!("test://watched-resource")
        ]
    );
    assert_eq!(listed["resources"][1]["mimeType"], "image/png");
    let templates = template_uris(client).await;
    assert_eq!(
        templates,
        [
            "lockstep://jobs/{job_id}",
            "lockstep://tasks/{task_id}",
            "test://template/{id}/data"
        ]
    );

    assert_eq!(
        read(client, "test://static-text")
            .await
            .expect("static text"),
        json!({ "contents": [{
            "uri": "test://static-text",
            "mimeType": "text/plain",
            "text": "This is the content of the static text resource."
        }] })
    );
    assert_eq!(
        read(client, "test://static-binary")
            .await
            .expect("static binary"),
        json!({ "contents": [{
            "uri": "test://static-binary",
            "mimeType": "image/png",
            "blob": RED_PIXEL_PNG
        }] })
    );
    let data = read(client, "test://template/123/data")
        .await
        .expect("template");
    assert_eq!(data["contents"][0]["uri"], "test://template/123/data");
    assert_eq!(data["contents"][0]["mimeType"], "application/json");
    assert_eq!(
        serde_json::from_str::<Value>(data["contents"][0]["text"].as_str().expect("text"))
            .expect("JSON"),
        json!({ "id": "123", "templateTest": true, "data": "Data for ID: 123" })
    );
    // A variable is one non-empty path segment; nothing else names a resource.
    for uri in [
        "test://template/1/2/data",
        "test://template//data",
        "test://template/123/data/more",
        "test://static-text2",
    ] {
        let (code, message, _) = protocol_error(read(client, uri).await);
        assert_eq!(code, -32002, "{uri}: {message}");
    }
    // The variable's declared values complete.
    let completed = complete(
        client,
        Reference::for_resource("test://template/{id}/data"),
        "id",
        "12",
    )
    .await
    .expect("complete id");
    assert_eq!(completed["values"], json!(["123", "124"]));
    let (code, message, _) = protocol_error(
        complete(
            client,
            Reference::for_resource("test://template/{id}/data"),
            "nope",
            "",
        )
        .await,
    );
    assert_eq!(code, -32602);
    assert_eq!(
        message,
        "invalid argument argument.name: \"nope\" is not an argument here; it takes id"
    );
    // Reads run the handlers outside any job: nothing was stored.
    assert_eq!(ok(client, "list_jobs", json!({})).await["jobs"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_offers_prompts_its_handlers_render_with_checked_arguments() {
    let db = Db::new().await;
    let (_dir, server) = fixture_server(&db).await;
    let client = &server.client;

    let (listed, names) = listed_prompts(client).await;
    assert_eq!(
        names,
        [
            "plan_work",
            "run_handler",
            "test_simple_prompt",
            "test_prompt_with_arguments",
            "test_prompt_with_embedded_resource",
            "test_prompt_with_image",
        ]
    );
    assert_eq!(
        listed[3]["arguments"],
        json!([
            { "name": "arg1", "description": "The arg1 argument.", "required": true },
            { "name": "arg2", "description": "The arg2 argument.", "required": true },
        ])
    );

    let got = prompt(
        client,
        "test_prompt_with_arguments",
        json!({ "arg1": "Ada", "arg2": "Grace" }),
    )
    .await
    .expect("get");
    assert_eq!(
        message_text(&got),
        "Prompt with arguments: arg1='Ada', arg2='Grace'"
    );
    let image = prompt(client, "test_prompt_with_image", json!({}))
        .await
        .expect("image prompt");
    assert_eq!(
        image["messages"],
        json!([
            { "role": "user", "content": { "type": "image", "data": RED_PIXEL_PNG, "mimeType": "image/png" } },
            { "role": "user", "content": { "type": "text", "text": "Please analyze the image above." } },
        ])
    );

    // Arguments are checked before the handler runs.
    for (args, field, reason) in [
        (json!({ "arg1": "Ada" }), "arguments.arg2", "is missing"),
        (
            json!({ "arg1": "Ada", "arg2": 7 }),
            "arguments.arg2",
            "is not a string",
        ),
        (
            json!({ "arg1": "Ada", "arg2": "G", "arg3": "x" }),
            "arguments.arg3",
            "is not an argument of this prompt; it takes arg1, arg2",
        ),
    ] {
        let (code, message, data) =
            protocol_error(prompt(client, "test_prompt_with_arguments", args.clone()).await);
        assert_eq!(code, -32602, "{args}");
        assert_eq!(
            message,
            format!("invalid argument {field}: {reason}"),
            "{args}"
        );
        assert_eq!(data["field"], field);
    }
    let (code, message, _) = protocol_error(prompt(client, "test_nope", json!({})).await);
    assert_eq!(code, -32602);
    assert_eq!(
        message,
        "invalid argument name: lockstep has no prompt \"test_nope\"; its prompts are plan_work, run_handler, test_simple_prompt, test_prompt_with_arguments, test_prompt_with_embedded_resource, test_prompt_with_image"
    );

    // An argument's declared values complete.
    let completed = complete(
        client,
        Reference::for_prompt("test_prompt_with_arguments"),
        "arg1",
        "par",
    )
    .await
    .expect("complete arg1");
    assert_eq!(completed["values"], json!(["paris", "park", "party"]));
    let none = complete(
        client,
        Reference::for_prompt("test_prompt_with_arguments"),
        "arg2",
        "",
    )
    .await
    .expect("complete arg2");
    assert_eq!(none["values"], json!([]));
    assert_eq!(ok(client, "list_jobs", json!({})).await["jobs"], json!([]));
}

// ------------------------------------------------------- resources/subscribe

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(deprecated)]
async fn a_session_follows_a_job_and_hears_each_time_it_changes() {
    use rmcp::model::{SubscribeRequestParams, UnsubscribeRequestParams};
    let db = Db::new().await;
    let (_dir, server) = fixture_server(&db).await;
    let client = &server.client;
    let updates = client.service().resource_updates.clone();
    let subscribe = |uri: &str| client.subscribe(SubscribeRequestParams::new(uri));

    let first = plan(client, "followed", &[("a", "A", &[]), ("b", "B", &[])]).await;
    let first_job = first["job_id"].as_i64().expect("job");
    let first_uri = format!("lockstep://jobs/{first_job}");
    subscribe(&first_uri).await.expect("subscribe to a job");
    // A plugin's resource can be followed (it never changes by itself).
    subscribe("test://watched-resource")
        .await
        .expect("subscribe to a plugin resource");
    // Nothing else can.
    for uri in [
        "lockstep://jobs/999",
        "test://nothing",
        "lockstep://tasks/999",
    ] {
        let (code, message, _) = protocol_error(subscribe(uri).await);
        assert_eq!(code, -32002, "{uri}: {message}");
    }

    // Claiming a task changes the job: the session hears it, once.
    let task = claim(client, first_job).await.expect("a ready task");
    eventually("the job's update", || async {
        (!updates.lock().expect("updates").is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        *updates.lock().expect("updates"),
        std::slice::from_ref(&first_uri)
    );

    // After unsubscribing, its changes are not sent; a second job's are.
    client
        .unsubscribe(UnsubscribeRequestParams::new(&first_uri))
        .await
        .expect("unsubscribe");
    crate::mcp_harness::complete(client, &task, "done").await;
    let second = plan(client, "second", &[("a", "A", &[])]).await;
    let second_uri = format!("lockstep://jobs/{}", second["job_id"]);
    subscribe(&second_uri)
        .await
        .expect("subscribe to the second");
    claim(client, second["job_id"].as_i64().expect("job"))
        .await
        .expect("a task");
    eventually("the second job's update", || async {
        (updates.lock().expect("updates").len() >= 2).then_some(())
    })
    .await;
    assert_eq!(*updates.lock().expect("updates"), [first_uri, second_uri]);
}
