//! The dashboard over plain HTTP against a real `lockstep serve --http`:
//! sign-in, roles, CSRF, Host and Origin checks, tenancy by URL, and the
//! message pages bad input gets. Every refused request is checked to have
//! changed nothing.

use crate::ui_harness::*;
use lockstep::model::{EventKind, JobState, TaskState, TenantId};

const DIES: &str = "name = \"dies\"\n[[stages]]\nname = \"s\"\ntasks = [{ handler = \"example:flaky\", input = { fail_times = 1 }, max_attempts = 1 }]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_read_only_posts_are_refused_and_an_admin_retry_is_recorded_with_its_name() {
    let ui = Dashboard::start(&[]).await;
    let admin = ui.token("acme", "admin", "ops-admin");
    let reader = ui.token("acme", "read", "auditor");
    let job = ui.submit("acme", DIES).await;
    let dead = ui.dead_task("acme", job).await;
    let task_url = ui.url(&format!("/ui/tasks/{}", dead.task_id.0));
    let retry_url = format!("{task_url}/retry");

    let (status, admin_page) = get(&task_url, &admin).await;
    assert_eq!(status, 200, "{admin_page}");
    assert!(admin_page.contains("id=\"retry\""), "{admin_page}");
    let admin_csrf = csrf_of(&admin_page);
    let (status, read_page) = get(&task_url, &reader).await;
    assert_eq!(status, 200);
    assert!(!read_page.contains("id=\"retry\""), "{read_page}");
    assert!(read_page.contains("id=\"read-only\""), "{read_page}");
    let read_csrf = csrf_of(&read_page);
    assert_ne!(admin_csrf, read_csrf);

    let refusals = [
        // No CSRF token.
        post(&retry_url, &admin, &[], &[]).await,
        // Someone else's.
        post(&retry_url, &admin, &[("csrf", &read_csrf)], &[]).await,
        // Made up.
        post(&retry_url, &admin, &[("csrf", "0000")], &[]).await,
        // From another site's page.
        post(
            &retry_url,
            &admin,
            &[("csrf", &admin_csrf)],
            &[("origin", "https://evil.example")],
        )
        .await,
        // Through a name this server does not serve (DNS rebinding).
        post(
            &retry_url,
            &admin,
            &[("csrf", &admin_csrf)],
            &[("host", "evil.example")],
        )
        .await,
        // A read token with its own valid CSRF token.
        post(&retry_url, &reader, &[("csrf", &read_csrf)], &[]).await,
    ];
    let statuses: Vec<u16> = refusals.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [403, 403, 403, 403, 403, 403]);
    assert_eq!(
        message_of(&refusals[0].1),
        "this form is missing its CSRF token or carries another session's; reload the page and try again"
    );
    assert_eq!(
        message_of(&refusals[3].1),
        "requests from pages of https://evil.example are refused; start the server with --allow-origin https://evil.example to allow them"
    );
    assert_eq!(
        message_of(&refusals[4].1),
        "this server does not serve the host name \"evil.example\"; start it with --allow-host evil.example to allow it"
    );
    assert_eq!(
        message_of(&refusals[5].1),
        "auditor is a read token: it may view but not retry tasks; sign in with an admin token (`lockstep token create --role admin`)"
    );
    let tenant = TenantId("acme".into());
    let still = ui.engine.task(&tenant, dead.task_id).await.expect("task");
    assert_eq!(
        still.state,
        TaskState::Dead,
        "a refused POST changed the task"
    );
    let revived = |events: &[lockstep::model::Event]| {
        events
            .iter()
            .filter(|e| e.kind == EventKind::TaskRevived)
            .map(|e| e.detail.clone().unwrap_or_default())
            .collect::<Vec<_>>()
    };
    let events = ui
        .engine
        .events(&tenant, job, None, 1000)
        .await
        .expect("events");
    assert!(revived(&events).is_empty());

    // The page's own origin and token: accepted, and the job runs again.
    let (status, _) = post(
        &retry_url,
        &admin,
        &[("csrf", &admin_csrf)],
        &[("origin", &ui.base)],
    )
    .await;
    assert_eq!(status, 303);
    let events = ui
        .engine
        .events(&tenant, job, None, 1000)
        .await
        .expect("events");
    assert_eq!(revived(&events), ["dead -> pending, by ops-admin"]);
    let done = ui
        .engine
        .wait(
            &tenant,
            job,
            Some(std::time::Duration::from_secs(60)),
            |_| {},
        )
        .await
        .expect("wait");
    assert_eq!(done.job.state, JobState::Succeeded);

    // The task's attempts, each told by its end event (Invariant 42): the
    // first died, the second (after the retry) succeeded, both with their
    // worker.
    let (status, page) = get(&task_url, &admin).await;
    assert_eq!(status, 200);
    let table = page
        .split("<table id=\"attempts\">")
        .nth(1)
        .and_then(|rest| rest.split("</table>").next())
        .unwrap_or_else(|| panic!("no attempts table: {page}"));
    let rows: Vec<&str> = table.split("<tr>").skip(2).collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(rows[0].starts_with("<td class=\"num\">1</td>"), "{table}");
    assert!(rows[0].contains("<td>task_dead</td>"), "{table}");
    assert!(rows[1].starts_with("<td class=\"num\">2</td>"), "{table}");
    assert!(rows[1].contains("<td>task_succeeded</td>"), "{table}");
    let worker = ui
        .engine
        .task(&tenant, dead.task_id)
        .await
        .expect("task")
        .worker
        .expect("the row names its worker");
    assert!(rows.iter().all(|r| r.contains(&worker)), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_job_and_task_are_not_found_by_url() {
    let ui = Dashboard::start(&[]).await;
    let acme = ui.token("acme", "admin", "acme-admin");
    let globex = ui.token("globex", "admin", "globex-admin");
    let job = ui.submit("acme", DIES).await;
    let dead = ui.dead_task("acme", job).await;

    let (status, own) = get(&ui.url(&format!("/ui/jobs/{}", job.0)), &acme).await;
    assert_eq!(status, 200, "{own}");
    let (status, page) = get(&ui.url(&format!("/ui/jobs/{}", job.0)), &globex).await;
    assert_eq!(status, 404);
    assert_eq!(message_of(&page), format!("job {} not found", job.0));
    let (status, page) = get(&ui.url(&format!("/ui/tasks/{}", dead.task_id.0)), &globex).await;
    assert_eq!(status, 404);
    assert_eq!(
        message_of(&page),
        format!("task {} not found", dead.task_id.0)
    );
    let (status, page) = get(&ui.url(&format!("/ui/jobs/{}/live", job.0)), &globex).await;
    assert_eq!(status, 404, "{page}");
    let (status, page) = get(&ui.url(&format!("/ui/jobs/{}/spec", job.0)), &globex).await;
    assert_eq!(status, 404, "{page}");
    assert_eq!(message_of(&page), format!("job {} not found", job.0));
    let (status, list) = get(&ui.url("/ui/jobs"), &globex).await;
    assert_eq!(status, 200);
    assert!(list.contains("id=\"no-jobs\""), "{list}");
    assert!(!list.contains("dies"), "{list}");

    // Globex's own valid CSRF token does not reach acme's task either.
    let globex_csrf = csrf_of(&list);
    let (status, page) = post(
        &ui.url(&format!("/ui/tasks/{}/retry", dead.task_id.0)),
        &globex,
        &[("csrf", &globex_csrf)],
        &[],
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        message_of(&page),
        format!("task {} not found", dead.task_id.0)
    );
    let (status, page) = post(
        &ui.url(&format!("/ui/jobs/{}/cancel", job.0)),
        &globex,
        &[("csrf", &globex_csrf)],
        &[],
    )
    .await;
    assert_eq!(status, 404, "{page}");
    let tenant = TenantId("acme".into());
    let still = ui.engine.task(&tenant, dead.task_id).await.expect("task");
    assert_eq!(still.state, TaskState::Dead);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_filters_and_ids_get_one_sentence_and_a_4xx_status() {
    let ui = Dashboard::start(&[]).await;
    let token = ui.token("acme", "read", "viewer");
    let cases: [(&str, u16, &str); 8] = [
        (
            "/ui/jobs?state=bogus",
            400,
            "filter state: unknown job state \"bogus\" (expected one of: running, succeeded, failed, cancelled)",
        ),
        (
            "/ui/jobs?colour=red",
            400,
            "the jobs list takes no parameter \"colour\"; it takes state, name, created_after, created_before, before",
        ),
        (
            "/ui/jobs?created_after=yesterday",
            400,
            "filter created_after: \"yesterday\" is not a time: write YYYY-MM-DD or YYYY-MM-DDTHH:MM (UTC), e.g. 2026-12-03T14:05",
        ),
        (
            "/ui/jobs?before=-4",
            400,
            "before: job id \"-4\" is not a positive whole number; take ids from the jobs list",
        ),
        (
            "/ui/jobs/abc",
            400,
            "job id \"abc\" is not a positive whole number; take ids from the jobs list",
        ),
        ("/ui/jobs/999999", 404, "job 999999 not found"),
        ("/ui/tasks/424242", 404, "task 424242 not found"),
        (
            "/ui/nowhere",
            404,
            "there is no dashboard page at /ui/nowhere; start from /ui/jobs",
        ),
    ];
    for (path, status, message) in cases {
        let (got, page) = get(&ui.url(path), &token).await;
        assert_eq!(
            (got, message_of(&page)),
            (status, message.to_string()),
            "{path}"
        );
    }
    // A well-formed filter that matches nothing is an empty list, not an error.
    let (status, page) = get(
        &ui.url(
            "/ui/jobs?state=failed&name=x&created_after=2026-01-01&created_before=2026-12-31T23:59",
        ),
        &token,
    )
    .await;
    assert_eq!(status, 200);
    assert!(page.contains("id=\"no-jobs\""), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_sets_an_http_only_strict_cookie_and_a_bad_token_is_refused() {
    let ui = Dashboard::start(&[]).await;
    let token = ui.token("acme", "read", "viewer");
    let client = http();

    // Without a token, pages send the browser to the login form.
    let response = client.get(ui.url("/ui/jobs")).send().await.expect("GET");
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/ui/login");
    // Paths outside /ui are not the dashboard's: no sign-in redirect there.
    let outside = client
        .get(ui.url("/favicon.ico"))
        .send()
        .await
        .expect("GET");
    assert_eq!(outside.status(), 404);

    let form = client.get(ui.url("/ui/login")).send().await.expect("GET");
    assert_eq!(form.status(), 200);
    let nonce_cookie = form.headers()["set-cookie"]
        .to_str()
        .expect("cookie text")
        .to_string();
    let nonce = nonce_cookie
        .strip_prefix("lockstep_login=")
        .and_then(|rest| rest.split(';').next())
        .expect("the login nonce cookie")
        .to_string();
    let page = form.text().await.expect("body");
    assert_eq!(csrf_of(&page), nonce);
    let sign_in = |fields: Vec<(&'static str, String)>, cookie: Option<String>| {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let mut request = client
            .post(ui.url("/ui/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(c) = cookie {
            request = request.header("cookie", c);
        }
        request.send()
    };
    // No nonce cookie: a login posted from elsewhere.
    let forged = sign_in(
        vec![("csrf", nonce.clone()), ("token", token.clone())],
        None,
    )
    .await
    .expect("POST");
    assert_eq!(forged.status(), 403);
    assert!(forged.headers().get("set-cookie").is_none());
    let cookie = format!("lockstep_login={nonce}");
    let wrong = sign_in(
        vec![("csrf", nonce.clone()), ("token", "lst_00".to_string())],
        Some(cookie.clone()),
    )
    .await
    .expect("POST");
    assert_eq!(wrong.status(), 401);
    assert_eq!(
        message_of(&wrong.text().await.expect("body")),
        "that is not a live token: it was mistyped, revoked, or never created"
    );
    let ok = sign_in(
        vec![("csrf", nonce.clone()), ("token", token.clone())],
        Some(cookie),
    )
    .await
    .expect("POST");
    assert_eq!(ok.status(), 303);
    assert_eq!(ok.headers()["location"], "/ui/jobs");
    let session = ok
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().expect("cookie text").to_string())
        .find(|c| c.starts_with("lockstep_token="))
        .expect("the session cookie");
    assert_eq!(
        session,
        format!("lockstep_token={token}; HttpOnly; SameSite=Strict; Path=/ui")
    );
    // The cookie alone now opens the pages, and they say who is looking.
    let page = client
        .get(ui.url("/ui/jobs"))
        .header("cookie", format!("lockstep_token={token}"))
        .send()
        .await
        .expect("GET");
    assert_eq!(page.status(), 200);
    assert_eq!(
        page.headers()["content-security-policy"],
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    let text = page.text().await.expect("body");
    assert!(text.contains("viewer · tenant acme · read"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_as_submitted_is_served_as_json_a_part_at_a_time() {
    let ui = Dashboard::start(&[]).await;
    let reader = ui.token("acme", "read", "auditor");
    // Over 1 MiB of spec: stored, and served, in two parts.
    let tasks: Vec<String> = (0..20_000)
        .map(|i| {
            format!(r#"{{"handler":"example:noop","input":{{"value":{i},"pad":"{i:0>32}"}}}}"#)
        })
        .collect();
    let text = format!(
        r#"{{"name":"wide","stages":[{{"name":"s","tasks":[{}]}}]}}"#,
        tasks.join(",")
    );
    let spec =
        lockstep::spec::parse_job_str(&text, lockstep::spec::Format::Json, &Default::default())
            .expect("test job parses");
    let canonical = lockstep::spec::canonical_spec_json(&spec).expect("canonical spec");
    assert!(canonical.len() > lockstep::store::SPEC_PART_BYTES);
    let job = ui.submit_spec("acme", spec).await;

    let (status, page) = get(&ui.url(&format!("/ui/jobs/{}", job.0)), &reader).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains(&format!("id=\"job-spec\" href=\"/ui/jobs/{}/spec\"", job.0)),
        "{page}"
    );
    let response = http()
        .get(ui.url(&format!("/ui/jobs/{}/spec", job.0)))
        .bearer_auth(&reader)
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().ok(),
        Some("application/json")
    );
    let body = response.text().await.expect("body");
    assert_eq!(body.len(), canonical.len());
    assert!(body == canonical, "the body is the canonical spec");
}
