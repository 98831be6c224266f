//! Job files: parsing (TOML and JSON, with line:column errors), validation
//! (JSON-pointer errors), defaults, idempotency keys and the example files.
//! Every test runs the real parsers and a real `SchemaCatalog` compiled from
//! JSON Schemas with the `jsonschema` crate.

use lockstep::model::{Executor, OnFailure, SubmitJob, TenantId};
use lockstep::spec::{
    Format, HandlerCatalog, JobSpec, Limits, SchemaCatalog, SpecError, StageSpec, TaskInput,
    TaskSpec, default_idempotency_key, job_spec_json_schema, load_job_file, parse_job_file,
    parse_job_str, parse_job_value, validate, validate_owned,
};
use serde_json::json;
use std::path::{Path, PathBuf};

const NOW: i64 = 1_700_000_000_000;

/// The example handlers with input schemas shaped like the example plugins'.
fn catalog() -> SchemaCatalog {
    SchemaCatalog::new([
        (
            "example:fanout",
            json!({
                "type": "object",
                "properties": { "count": { "type": "integer", "minimum": 0 } },
                "required": ["count"],
                "additionalProperties": false
            }),
        ),
        (
            "example:sum",
            json!({
                "type": "object",
                "properties": { "from": { "type": "string" } },
                "required": ["from"]
            }),
        ),
        ("example:noop", json!({})),
    ])
    .expect("the test schemas compile")
}

fn tenant() -> TenantId {
    TenantId("local".to_string())
}

fn toml(text: &str) -> Result<JobSpec, SpecError> {
    parse_job_str(text, Format::Toml, &Limits::default())
}

fn json_text(text: &str) -> Result<JobSpec, SpecError> {
    parse_job_str(text, Format::Json, &Limits::default())
}

fn check(spec: &JobSpec) -> Result<SubmitJob, SpecError> {
    validate(spec, &catalog(), &Limits::default(), tenant(), NOW)
}

fn check_toml(text: &str) -> Result<SubmitJob, SpecError> {
    check(&toml(text).expect("the TOML parses"))
}

fn error_text<T: std::fmt::Debug>(result: Result<T, SpecError>) -> String {
    result.expect_err("the spec must be refused").to_string()
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/jobs")
}

const FANOUT_TOML: &str = r#"
name = "tiles"
[[stages]]
name = "analyze"
tasks = [{ handler = "example:fanout", input = { count = 1000 } }]
[[stages]]
name = "process"
[[stages]]
name = "aggregate"
tasks = [{ handler = "example:sum", input = { from = "process" } }]
"#;

// ---------------------------------------------------------------- parsing

#[test]
fn malformed_toml_reports_line_and_column() {
    let text = "name = \"tiles\"\n[[stages]]\nname = analyze\n";
    assert_eq!(
        error_text(toml(text)),
        "line 3, column 8: string values must be quoted, expected literal string"
    );
}

#[test]
fn malformed_json_reports_line_and_column() {
    let text = "{\n  \"name\": \"tiles\",\n  \"stages\": [\n    { \"name\": \"a\", }\n  ]\n}\n";
    assert_eq!(
        error_text(json_text(text)),
        "line 4, column 20: trailing comma"
    );
}

#[test]
fn unknown_field_in_a_file_names_the_file_line_column_and_accepted_fields() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("job.toml");
    std::fs::write(
        &path,
        "name = \"tiles\"\n\n[[stages]]\nname = \"a\"\n\n[[stages.tasks]]\n    hander = \"example:noop\"\n",
    )
    .expect("write job file");
    assert_eq!(
        error_text(parse_job_file(&path, &Limits::default())),
        format!(
            "{}:7:5: unknown field \"hander\", expected one of handler, input, key, depends_on, max_attempts, timeout, on_failure, executor, title, instructions, specialist",
            path.display()
        )
    );
}

#[test]
fn unknown_field_in_json_names_line_and_column() {
    let text = r#"{"name": "tiles", "stages": [{"name": "a", "on_falure": "continue"}]}"#;
    assert_eq!(
        error_text(json_text(text)),
        "line 1, column 54: unknown field \"on_falure\", expected one of name, tasks, on_failure, max_attempts, timeout, executor"
    );
}

#[test]
fn unknown_field_in_a_json_value_is_named_by_json_pointer() {
    let value = json!({"name": "t", "stages": [{"name": "a", "tasks": [{"handler": "example:noop", "imput": {}}]}]});
    assert_eq!(
        error_text(parse_job_value(value)),
        "/stages/0/tasks/0/imput: unknown field \"imput\", expected one of handler, input, key, depends_on, max_attempts, timeout, on_failure, executor, title, instructions, specialist"
    );
}

#[test]
fn unknown_executor_is_rejected_with_the_accepted_values() {
    let text = "name = \"t\"\n[[stages]]\nname = \"a\"\nexecutor = \"wsam\"\n";
    assert_eq!(
        error_text(toml(text)),
        "line 4, column 12: unknown variant \"wsam\", expected one of wasm, agent, command"
    );
}

#[test]
fn command_tasks_belong_to_pipelines_not_job_files() {
    let text = "name = \"t\"\n[[stages]]\nname = \"a\"\ntasks = [{ handler = \"x\", executor = \"command\" }]\n";
    assert_eq!(
        error_text(check_toml(text)),
        "/stages/0/tasks/0/executor: executor \"command\" tasks are CI pipeline steps: run a pipeline file with `lockstep ci run` (or the run_pipeline MCP tool)"
    );
}

#[test]
fn file_extension_other_than_toml_or_json_is_refused() {
    assert_eq!(
        error_text(parse_job_file(Path::new("job.yaml"), &Limits::default())),
        "job.yaml: job files must end in .toml or .json"
    );
}

#[test]
fn job_file_that_is_not_utf8_is_refused_with_its_position() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("job.toml");
    std::fs::write(&path, b"name = \"t\"\n# caf\xe9\n").expect("write job file");
    assert_eq!(
        error_text(parse_job_file(&path, &Limits::default())),
        format!("{}:2:6: the file is not UTF-8 text", path.display())
    );
}

#[test]
fn spec_text_larger_than_the_limit_is_refused_before_parsing() {
    let limits = Limits {
        max_spec_bytes: 1024,
        ..Limits::default()
    };
    let text = format!("name = \"{}\"", "x".repeat(2000));
    assert_eq!(
        error_text(parse_job_str(&text, Format::Toml, &limits)),
        "job spec is 2.0 KiB, larger than the 1 KiB limit (raise it with --max-spec-bytes)"
    );
}

#[test]
fn timeouts_accept_unit_strings_and_integer_milliseconds() {
    let job = check_toml(
        r#"
name = "t"
[[stages]]
name = "a"
timeout = "2m"
tasks = [
  { handler = "example:noop" },
  { handler = "example:noop", timeout = "500ms" },
  { handler = "example:noop", timeout = 1500 },
  { handler = "example:noop", timeout = "1h" },
]
"#,
    )
    .expect("valid");
    let timeouts: Vec<i64> = job.stages[0].tasks.iter().map(|t| t.timeout_ms).collect();
    assert_eq!(timeouts, vec![120_000, 500, 1_500, 3_600_000]);
}

#[test]
fn malformed_timeout_is_refused_with_its_position_and_the_accepted_forms() {
    let text = "name = \"t\"\n[[stages]]\nname = \"a\"\ntimeout = \"30 s\"\n";
    assert_eq!(
        error_text(toml(text)),
        "line 4, column 11: invalid timeout \"30 s\": write a whole number of milliseconds or a duration like \"500ms\", \"30s\", \"2m\" or \"1h\""
    );
}

#[test]
fn zero_timeout_is_refused() {
    let text = r#"{"name": "t", "stages": [{"name": "a", "timeout": 0}]}"#;
    assert_eq!(
        error_text(json_text(text)),
        "line 1, column 51: timeout must be greater than zero"
    );
}

#[test]
fn toml_datetime_in_an_input_becomes_its_text() {
    let job = check_toml(
        "name = \"t\"\n[[stages]]\nname = \"a\"\ntasks = [{ handler = \"example:noop\", input = { at = 2026-11-02T10:00:00Z } }]\n",
    )
    .expect("valid");
    assert_eq!(
        job.stages[0].tasks[0].input_json,
        r#"{"at":"2026-11-02T10:00:00Z"}"#
    );
}

#[test]
fn non_finite_number_in_an_input_is_refused() {
    let text = "name = \"t\"\n[[stages]]\nname = \"a\"\ntasks = [{ handler = \"example:noop\", input = { x = nan } }]\n";
    assert_eq!(
        error_text(toml(text)),
        "line 4, column 52: NaN is not a finite number; JSON inputs cannot hold it"
    );
}

#[test]
fn duplicate_key_in_a_json_input_is_refused() {
    let text = r#"{"name": "t", "stages": [{"name": "a", "tasks": [{"handler": "example:noop", "input": {"n": 1, "n": 2}}]}]}"#;
    assert_eq!(
        error_text(json_text(text)),
        "line 1, column 98: duplicate key \"n\" in input"
    );
}

#[test]
fn deeply_nested_input_is_refused_without_crashing() {
    let depth = 100_000;
    let text = format!(
        "{{\"name\": \"t\", \"stages\": [{{\"name\": \"a\", \"tasks\": [{{\"handler\": \"example:noop\", \"input\": {}{}}}]}}]}}",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    assert_eq!(
        error_text(json_text(&text)),
        "line 1, column 209: recursion limit exceeded"
    );
}

#[test]
fn deeply_nested_toml_input_is_refused_without_crashing() {
    let depth = 100_000;
    let text = format!(
        "name = \"t\"\n[[stages]]\nname = \"a\"\ntasks = [{{ handler = \"example:noop\", input = {{ x = {}{} }} }}]\n",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    assert_eq!(
        error_text(toml(&text)),
        "line 4, column 129: cannot recurse further; max recursion depth met"
    );
}

// ---------------------------------------------------------------- validation

#[test]
fn empty_stages_are_refused() {
    let spec = json_text(r#"{"name": "t", "stages": []}"#).expect("parses");
    assert_eq!(
        error_text(check(&spec)),
        "/stages: a job needs at least one stage"
    );
}

#[test]
fn duplicate_stage_name_is_refused() {
    let err = check_toml(
        "name = \"t\"\n[[stages]]\nname = \"a\"\n[[stages]]\nname = \"b\"\n[[stages]]\nname = \"a\"\n",
    );
    assert_eq!(
        error_text(err),
        "/stages/2/name: duplicate stage name \"a\"; /stages/0/name already uses it"
    );
}

#[test]
fn empty_stage_name_is_refused() {
    let err = check_toml("name = \"t\"\n[[stages]]\nname = \" \"\n");
    assert_eq!(error_text(err), "/stages/0/name: stage name is empty");
}

#[test]
fn duplicate_task_key_across_stages_is_refused() {
    let err = check_toml(
        r#"
name = "t"
[[stages]]
name = "a"
tasks = [{ key = "x", handler = "example:noop" }]
[[stages]]
name = "b"
tasks = [{ key = "y", handler = "example:noop" }, { key = "x", handler = "example:noop" }]
"#,
    );
    assert_eq!(
        error_text(err),
        "/stages/1/tasks/1/key: duplicate task key \"x\"; /stages/0/tasks/0/key already uses it"
    );
}

#[test]
fn unknown_handler_lists_the_registered_handlers_sorted() {
    let err = check_toml(
        r#"
name = "t"
[[stages]]
name = "a"
tasks = [{ handler = "example:noop" }, { handler = "example:noop" }, { handler = "x" }]
"#,
    );
    assert_eq!(
        error_text(err),
        "/stages/0/tasks/2/handler: unknown handler \"x\"; registered handlers: example:fanout, example:noop, example:sum"
    );
}

#[test]
fn unknown_handler_with_no_plugins_says_none_are_registered() {
    let spec = toml("name = \"t\"\n[[stages]]\nname = \"a\"\ntasks = [{ handler = \"x\" }]\n")
        .expect("parses");
    let empty = SchemaCatalog::new(Vec::<(String, serde_json::Value)>::new()).expect("empty");
    assert_eq!(
        error_text(validate(&spec, &empty, &Limits::default(), tenant(), NOW)),
        "/stages/0/tasks/0/handler: unknown handler \"x\"; none registered"
    );
}

#[test]
fn hostile_long_handler_name_is_shortened_in_the_error() {
    // Within the name limit, but too long to quote whole.
    let name = "h".repeat(250);
    let spec = JobSpec {
        name: "t".into(),
        idempotency_key: None,
        stages: vec![stage("a", vec![TaskSpec::wasm(name, json!({}))])],
    };
    assert_eq!(
        error_text(check(&spec)),
        format!(
            "/stages/0/tasks/0/handler: unknown handler \"{}…\"; registered handlers: example:fanout, example:noop, example:sum",
            "h".repeat(80)
        )
    );
}

/// A job with one stage of one task, changed by `edit`.
fn one_task_job(edit: impl FnOnce(&mut JobSpec)) -> JobSpec {
    let mut task = TaskSpec::wasm("example:noop", json!({}));
    task.key = Some("k".into());
    let mut spec = JobSpec {
        name: "j".into(),
        idempotency_key: None,
        stages: vec![stage("s", vec![task])],
    };
    edit(&mut spec);
    spec
}

fn agent_task(title: &str) -> TaskSpec {
    let mut task = TaskSpec::wasm("unused", json!({}));
    task.handler = None;
    task.executor = Some(Executor::Agent);
    task.title = Some(title.into());
    task
}

#[test]
fn names_keys_and_idempotency_keys_are_bounded_in_bytes() {
    let long = |n: usize| "é".repeat(n / 2) + &"x".repeat(n % 2);
    let cases: Vec<(JobSpec, &str)> = vec![
        (
            one_task_job(|j| j.name = long(4097)),
            "/name: job name is 4097 bytes, longer than the 4096-byte limit",
        ),
        (
            one_task_job(|j| j.idempotency_key = Some(long(1025))),
            "/idempotency_key: idempotency key is 1025 bytes, longer than the 1024-byte limit",
        ),
        (
            one_task_job(|j| j.stages[0].name = long(50_000_000)),
            "/stages/0/name: stage name is 50000000 bytes, longer than the 256-byte limit",
        ),
        (
            one_task_job(|j| j.stages[0].tasks[0].key = Some(long(257))),
            "/stages/0/tasks/0/key: task key is 257 bytes, longer than the 256-byte limit",
        ),
        (
            one_task_job(|j| {
                let mut dependent = TaskSpec::wasm("example:noop", json!({}));
                dependent.depends_on = vec![long(300)];
                j.stages[0].tasks.push(dependent);
            }),
            "/stages/0/tasks/1/depends_on/0: task key is 300 bytes, longer than the 256-byte limit",
        ),
        (
            one_task_job(|j| j.stages[0].tasks[0].handler = Some(long(257))),
            "/stages/0/tasks/0/handler: handler name is 257 bytes, longer than the 256-byte limit",
        ),
        (
            one_task_job(|j| j.stages[0].tasks = vec![agent_task(&long(1025))]),
            "/stages/0/tasks/0/title: agent task title is 1025 bytes, longer than the 1024-byte limit",
        ),
        (
            one_task_job(|j| {
                let mut task = agent_task("t");
                task.specialist = Some(long(257));
                j.stages[0].tasks = vec![task];
            }),
            "/stages/0/tasks/0/specialist: specialist is 257 bytes, longer than the 256-byte limit",
        ),
        (
            one_task_job(|j| {
                let mut task = agent_task("t");
                task.instructions = Some(long(256 * 1024 + 1));
                j.stages[0].tasks = vec![task];
            }),
            "/stages/0/tasks/0/instructions: instructions is 262145 bytes, longer than the 262144-byte limit",
        ),
    ];
    for (spec, expected) in cases {
        assert_eq!(error_text(check(&spec)), expected);
    }
    // Exactly at each limit is accepted.
    let at_limits = one_task_job(|j| {
        j.name = long(4096);
        j.idempotency_key = Some(long(1024));
        j.stages[0].name = long(256);
        j.stages[0].tasks[0].key = Some(long(256));
    });
    check(&at_limits).expect("names at their limits are accepted");
}

#[test]
fn control_characters_in_names_and_nul_in_free_text_are_refused() {
    let cases: Vec<(JobSpec, &str)> = vec![
        (
            one_task_job(|j| j.stages[0].name = "a\u{0}b".into()),
            "/stages/0/name: stage name contains the control character U+0000 at byte 1; NUL cannot be stored",
        ),
        (
            one_task_job(|j| j.name = "\u{1b}[2Jjob".into()),
            "/name: job name contains the control character U+001B at byte 0; names may only hold printable characters",
        ),
        (
            one_task_job(|j| j.stages[0].tasks[0].key = Some("line\nbreak".into())),
            "/stages/0/tasks/0/key: task key contains the control character U+000A at byte 4; names may only hold printable characters",
        ),
        (
            one_task_job(|j| j.idempotency_key = Some("k\u{0}".into())),
            "/idempotency_key: idempotency key contains the control character U+0000 at byte 1; NUL cannot be stored",
        ),
        (
            one_task_job(|j| {
                let mut task = agent_task("t");
                task.instructions = Some("step 1\n\u{0}".into());
                j.stages[0].tasks = vec![task];
            }),
            "/stages/0/tasks/0/instructions: instructions contains the control character U+0000 at byte 7; NUL cannot be stored",
        ),
    ];
    for (spec, expected) in cases {
        assert_eq!(error_text(check(&spec)), expected);
    }
    // Free text keeps its newlines and tabs; a NUL inside an input is JSON's
    // escape `\u0000` in the stored text, which both backends hold.
    let fine = one_task_job(|j| {
        let mut task = agent_task("t");
        task.instructions = Some("step 1\n\tstep 2".into());
        task.input = TaskInput::new(&json!({ "text": "a\u{0}b" }));
        j.stages[0].tasks = vec![task];
    });
    let job = check(&fine).expect("free text with newlines is accepted");
    assert!(!job.stages[0].tasks[0].input_json.contains('\0'));
}

#[test]
fn wasm_task_without_handler_is_refused() {
    let err = check_toml("name = \"t\"\n[[stages]]\nname = \"a\"\ntasks = [{ input = {} }]\n");
    assert_eq!(
        error_text(err),
        "/stages/0/tasks/0: task has no handler; registered handlers: example:fanout, example:noop, example:sum"
    );
}

#[test]
fn schema_invalid_input_names_the_task_and_the_failing_field() {
    let err = check_toml(
        r#"
name = "t"
[[stages]]
name = "a"
tasks = [{ handler = "example:fanout", input = { count = "many" } }]
"#,
    );
    assert_eq!(
        error_text(err),
        "/stages/0/tasks/0/input: input does not match the schema of handler \"example:fanout\": /count: \"many\" is not of type \"integer\""
    );
}

#[test]
fn input_missing_a_required_field_is_refused() {
    let err = check_toml(
        "name = \"t\"\n[[stages]]\nname = \"a\"\ntasks = [{ handler = \"example:fanout\" }]\n",
    );
    assert_eq!(
        error_text(err),
        "/stages/0/tasks/0/input: input does not match the schema of handler \"example:fanout\": \"count\" is a required property"
    );
}

#[test]
fn oversized_input_is_refused_with_its_size_and_the_flag_to_raise_the_limit() {
    let big = "x".repeat(2_202_000);
    let spec = JobSpec {
        name: "t".into(),
        idempotency_key: None,
        stages: vec![stage(
            "a",
            vec![TaskSpec::wasm("example:noop", json!({ "blob": big }))],
        )],
    };
    assert_eq!(
        error_text(check(&spec)),
        "/stages/0/tasks/0/input: input is 2.1 MiB, larger than the 1 MiB limit (raise it with --max-input-bytes)"
    );
}

#[test]
fn input_just_over_the_limit_is_reported_in_bytes() {
    // {"b":"…"} is 8 bytes of JSON around the string.
    let spec = JobSpec {
        name: "t".into(),
        idempotency_key: None,
        stages: vec![stage(
            "a",
            vec![TaskSpec::wasm(
                "example:noop",
                json!({ "b": "x".repeat((1 << 20) - 7) }),
            )],
        )],
    };
    assert_eq!(
        error_text(check(&spec)),
        "/stages/0/tasks/0/input: input is 1048577 bytes, larger than the 1048576-byte limit (raise it with --max-input-bytes)"
    );
}

#[test]
fn consuming_validation_makes_the_same_job_as_borrowing_validation() {
    // 70,002 tasks with keys, dependencies, agent tasks and settings of
    // their own, in two stages: order and every default compared, and the
    // rows made in the spec's own memory (a million-task job is not held
    // twice).
    let mut work: Vec<TaskSpec> = (0..70_000)
        .map(|i| {
            let mut task = TaskSpec::wasm("example:fanout", json!({ "count": i % 7 }));
            if i % 1000 == 0 {
                task.key = Some(format!("k{i}"));
            }
            if i % 1000 == 1 {
                task.depends_on = vec![format!("k{}", i - 1)];
                task.max_attempts = Some(9);
            }
            task
        })
        .collect();
    work.push(agent_task("review"));
    let mut specialist = agent_task("deploy");
    specialist.specialist = Some("ops".into());
    work.push(specialist);
    let mut then = stage("then", vec![TaskSpec::wasm("example:noop", json!({}))]);
    then.max_attempts = Some(2);
    let limits = Limits {
        max_tasks_per_job: 100_000,
        ..Limits::default()
    };
    let spec = JobSpec {
        name: "same".into(),
        idempotency_key: None,
        stages: vec![stage("work", work), then],
    };
    let borrowed = validate(&spec, &catalog(), &limits, tenant(), NOW).expect("valid");
    let spec_tasks = spec.stages[0].tasks.as_ptr() as usize;
    let owned = validate_owned(spec, &catalog(), &limits, tenant(), NOW).expect("valid");
    assert_eq!(owned.stages[0].tasks.as_ptr() as usize, spec_tasks);
    assert_eq!(owned.stages[0].tasks.len(), 70_002);
    assert_eq!(owned.stages[0].tasks[1].depends_on, vec!["k0".to_string()]);
    assert_eq!(owned.stages[0].tasks[70_001].handler, "ops");
    assert_eq!(format!("{owned:?}"), format!("{borrowed:?}"));
}

#[test]
fn too_many_tasks_are_refused() {
    let limits = Limits {
        max_tasks_per_job: 3,
        ..Limits::default()
    };
    let tasks = (0..4)
        .map(|_| TaskSpec::wasm("example:noop", json!({})))
        .collect();
    let spec = JobSpec {
        name: "t".into(),
        idempotency_key: None,
        stages: vec![stage("a", tasks)],
    };
    assert_eq!(
        error_text(validate(&spec, &catalog(), &limits, tenant(), NOW)),
        "/stages: job has 4 tasks, more than the 3-task limit (raise it with --max-tasks-per-job)"
    );
}

#[test]
fn zero_max_attempts_is_refused() {
    let err = check_toml(
        "name = \"t\"\n[[stages]]\nname = \"a\"\ntasks = [{ handler = \"example:noop\", max_attempts = 0 }]\n",
    );
    assert_eq!(
        error_text(err),
        "/stages/0/tasks/0/max_attempts: max_attempts must be at least 1"
    );
}

// ---------------------------------------------------------------- dependencies

#[test]
fn dependency_cycle_is_refused_naming_its_path() {
    let err = check_toml(
        r#"
name = "t"
[[stages]]
name = "a"
tasks = [
  { key = "start", handler = "example:noop" },
  { key = "b", handler = "example:noop", depends_on = ["start", "c"] },
  { key = "c", handler = "example:noop", depends_on = ["d"] },
  { key = "d", handler = "example:noop", depends_on = ["b"] },
]
"#,
    );
    assert_eq!(
        error_text(err),
        "/stages/0/tasks/1/depends_on: dependency cycle b -> c -> d -> b; remove one of these dependencies"
    );
}

#[test]
fn two_task_cycle_is_refused() {
    let err = check_toml(
        r#"
name = "t"
[[stages]]
name = "a"
tasks = [
  { key = "a", handler = "example:noop", depends_on = ["b"] },
  { key = "b", handler = "example:noop", depends_on = ["a"] },
]
"#,
    );
    assert_eq!(
        error_text(err),
        "/stages/0/tasks/0/depends_on: dependency cycle a -> b -> a; remove one of these dependencies"
    );
}

#[test]
fn self_dependency_is_refused() {
    let err = check_toml(
        "name = \"t\"\n[[stages]]\nname = \"a\"\ntasks = [{ key = \"a\", handler = \"example:noop\", depends_on = [\"a\"] }]\n",
    );
    assert_eq!(
        error_text(err),
        "/stages/0/tasks/0/depends_on/0: task \"a\" depends on itself"
    );
}

#[test]
fn unknown_depends_on_key_is_refused_listing_the_stage_keys() {
    let err = check_toml(
        r#"
name = "t"
[[stages]]
name = "build"
tasks = [
  { key = "b", handler = "example:noop" },
  { key = "a", handler = "example:noop" },
  { handler = "example:noop", depends_on = ["a", "zz"] },
]
"#,
    );
    assert_eq!(
        error_text(err),
        "/stages/0/tasks/2/depends_on/1: unknown task key \"zz\"; keys in stage \"build\": a, b"
    );
}

#[test]
fn cross_stage_dependency_is_refused_naming_both_stages() {
    let err = check_toml(
        r#"
name = "t"
[[stages]]
name = "analyze"
tasks = [{ key = "scan", handler = "example:noop" }]
[[stages]]
name = "process"
tasks = [{ key = "p", handler = "example:noop" }, { handler = "example:noop", depends_on = ["p", "scan"] }]
"#,
    );
    assert_eq!(
        error_text(err),
        "/stages/1/tasks/1/depends_on/1: \"scan\" is a task of stage \"analyze\" (/stages/0/tasks/0), but this task is in stage \"process\"; depends_on may only name tasks of the same stage (a later stage already waits for every earlier one)"
    );
}

#[test]
fn dependency_listed_twice_is_refused() {
    let err = check_toml(
        r#"
name = "t"
[[stages]]
name = "a"
tasks = [{ key = "a", handler = "example:noop" }, { handler = "example:noop", depends_on = ["a", "a"] }]
"#,
    );
    assert_eq!(
        error_text(err),
        "/stages/0/tasks/1/depends_on/1: \"a\" is listed twice in depends_on"
    );
}

#[test]
fn wide_dag_of_one_thousand_branches_validates_with_its_dependencies() {
    let mut tasks = vec![keyed("root", &[])];
    let branches: Vec<String> = (0..1000).map(|i| format!("branch-{i}")).collect();
    for key in &branches {
        tasks.push(keyed(key, &["root"]));
    }
    let branch_refs: Vec<&str> = branches.iter().map(String::as_str).collect();
    tasks.push(keyed("join", &branch_refs));
    let spec = JobSpec {
        name: "wide".into(),
        idempotency_key: None,
        stages: vec![stage("fan", tasks)],
    };
    let job = check(&spec).expect("valid");
    let tasks = &job.stages[0].tasks;
    assert_eq!(tasks.len(), 1002);
    assert!(tasks[0].depends_on.is_empty());
    assert!(tasks[1..1001].iter().all(|t| t.depends_on == ["root"]));
    assert_eq!(tasks[1001].depends_on, branches);
}

#[test]
fn long_dependency_chain_validates_without_exhausting_the_stack() {
    let keys: Vec<String> = (0..100_000).map(|i| format!("t{i}")).collect();
    let mut tasks = vec![keyed(&keys[0], &[])];
    for pair in keys.windows(2) {
        tasks.push(keyed(&pair[1], &[&pair[0]]));
    }
    // Close the chain into a 100,000-task cycle: it must be found, iteratively.
    tasks[0].depends_on = vec![keys[keys.len() - 1].clone()];
    let spec = JobSpec {
        name: "chain".into(),
        idempotency_key: None,
        stages: vec![stage("a", tasks)],
    };
    let message = error_text(check(&spec));
    assert!(
        message.starts_with(
            "/stages/0/tasks/0/depends_on: dependency cycle t0 -> t99999 -> t99998 -> "
        ),
        "{message}"
    );
    assert!(
        message.ends_with(" -> t1 -> t0; remove one of these dependencies"),
        "{message}"
    );
}

// ---------------------------------------------------------------- agent tasks

#[test]
fn agent_task_stores_its_specialist_as_handler_and_its_words_as_agent_json() {
    let job = check_toml(
        r#"
name = "plan"
[[stages]]
name = "work"
executor = "agent"
tasks = [
  { key = "a", title = "Survey", instructions = "List the modules", specialist = "reader" },
  { key = "b", title = "Write", depends_on = ["a"] },
]
"#,
    )
    .expect("valid");
    let tasks = &job.stages[0].tasks;
    assert_eq!(tasks[0].executor, Executor::Agent);
    assert_eq!(tasks[0].handler, "reader");
    assert_eq!(
        tasks[0].agent_json.as_deref(),
        Some(r#"{"instructions":"List the modules","specialist":"reader","title":"Survey"}"#)
    );
    assert_eq!(tasks[1].handler, "agent");
    assert_eq!(tasks[1].agent_json.as_deref(), Some(r#"{"title":"Write"}"#));
}

#[test]
fn agent_task_without_title_is_refused() {
    let err = check_toml(
        "name = \"t\"\n[[stages]]\nname = \"a\"\ntasks = [{ executor = \"agent\", instructions = \"do it\" }]\n",
    );
    assert_eq!(
        error_text(err),
        "/stages/0/tasks/0: agent task has no title; give it a short title"
    );
}

#[test]
fn wasm_task_with_a_title_is_refused() {
    let err = check_toml(
        "name = \"t\"\n[[stages]]\nname = \"a\"\ntasks = [{ handler = \"example:noop\", title = \"x\" }]\n",
    );
    assert_eq!(
        error_text(err),
        "/stages/0/tasks/0/title: only agent tasks take a title; set executor = \"agent\" or remove it"
    );
}

// ---------------------------------------------------------------- results

#[test]
fn defaults_fill_attempts_timeout_failure_policy_and_executor() {
    let job = check_toml(FANOUT_TOML).expect("valid");
    let task = &job.stages[0].tasks[0];
    assert_eq!(
        (
            task.max_attempts,
            task.timeout_ms,
            task.on_failure,
            task.executor
        ),
        (5, 30_000, OnFailure::FailJob, Executor::Wasm)
    );
    assert_eq!(job.stages[0].on_failure, OnFailure::FailJob);
    assert_eq!(task.input_json, r#"{"count":1000}"#);
    assert_eq!(job.stages[1].tasks.len(), 0);
    assert_eq!(job.tenant, tenant());
    assert_eq!(job.now, NOW);
}

#[test]
fn task_settings_override_stage_settings_which_override_defaults() {
    let job = check_toml(
        r#"
name = "t"
[[stages]]
name = "a"
on_failure = "continue"
max_attempts = 2
timeout = "5s"
tasks = [
  { handler = "example:noop" },
  { handler = "example:noop", max_attempts = 9, timeout = 7, on_failure = "fail_job" },
]
"#,
    )
    .expect("valid");
    let t: Vec<(i32, i64, OnFailure)> = job.stages[0]
        .tasks
        .iter()
        .map(|t| (t.max_attempts, t.timeout_ms, t.on_failure))
        .collect();
    assert_eq!(
        t,
        vec![(2, 5_000, OnFailure::Continue), (9, 7, OnFailure::FailJob)]
    );
    assert_eq!(job.stages[0].on_failure, OnFailure::Continue);
}

#[test]
fn default_idempotency_key_is_stable_across_key_order_whitespace_and_timeout_spelling() {
    let a = json_text(
        r#"{"name":"t","stages":[{"name":"a","timeout":"30s","tasks":[{"handler":"example:fanout","input":{"count":1}}]}]}"#,
    )
    .expect("parses");
    let b = json_text(
        r#"{
            "stages": [ { "tasks": [ { "input": { "count": 1 }, "handler": "example:fanout" } ],
                          "timeout": 30000, "name": "a" } ],
            "name": "t"
        }"#,
    )
    .expect("parses");
    let key_a = check(&a).expect("valid").idempotency_key;
    assert_eq!(key_a.len(), 64);
    assert!(
        key_a
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    assert_eq!(key_a, check(&b).expect("valid").idempotency_key);
    assert_eq!(key_a, default_idempotency_key(&a).expect("writes"));
}

#[test]
fn default_idempotency_key_changes_when_an_input_changes() {
    let one = check_toml(FANOUT_TOML).expect("valid").idempotency_key;
    let other = check_toml(&FANOUT_TOML.replace("count = 1000", "count = 1001"))
        .expect("valid")
        .idempotency_key;
    assert_ne!(one, other);
}

#[test]
fn explicit_idempotency_key_is_used_as_given() {
    let job = check_toml(&format!(
        "idempotency_key = \"2026-11-tiles\"\n{FANOUT_TOML}"
    ))
    .expect("valid");
    assert_eq!(job.idempotency_key, "2026-11-tiles");
}

#[test]
fn toml_and_json_of_the_same_job_produce_the_same_submit_job() {
    let from_toml = check_toml(
        r#"
name = "diamond"
[[stages]]
name = "build"
on_failure = "continue"
tasks = [
  { key = "A", handler = "example:noop", input = { list = [1, 2.5, "x", true], nested = { k = "v" } } },
  { key = "B", handler = "example:noop", depends_on = ["A"], timeout = "2m" },
  { key = "C", handler = "example:noop", depends_on = ["A"], max_attempts = 3 },
  { key = "D", handler = "example:noop", depends_on = ["B", "C"] },
]
[[stages]]
name = "report"
tasks = [{ handler = "example:sum", input = { from = "build" } }]
"#,
    )
    .expect("valid");
    let from_json = check(
        &json_text(
            r#"{
  "name": "diamond",
  "stages": [
    { "name": "build", "on_failure": "continue", "tasks": [
      { "key": "A", "handler": "example:noop", "input": { "nested": { "k": "v" }, "list": [1, 2.5, "x", true] } },
      { "key": "B", "handler": "example:noop", "depends_on": ["A"], "timeout": 120000 },
      { "key": "C", "handler": "example:noop", "depends_on": ["A"], "max_attempts": 3 },
      { "key": "D", "handler": "example:noop", "depends_on": ["B", "C"] } ] },
    { "name": "report", "tasks": [ { "handler": "example:sum", "input": { "from": "build" } } ] }
  ]
}"#,
        )
        .expect("parses"),
    )
    .expect("valid");
    assert_eq!(from_toml.name, from_json.name);
    assert_eq!(from_toml.idempotency_key, from_json.idempotency_key);
    assert_eq!(from_toml.spec_json, from_json.spec_json);
    assert_eq!(from_toml.stages.len(), 2);
    for (t, j) in from_toml.stages.iter().zip(&from_json.stages) {
        assert_eq!((&t.name, t.on_failure), (&j.name, j.on_failure));
        assert_eq!(t.tasks.len(), j.tasks.len());
        for (a, b) in t.tasks.iter().zip(&j.tasks) {
            assert_eq!(
                (&a.handler, a.executor, &a.key, &a.depends_on, &a.input_json),
                (&b.handler, b.executor, &b.key, &b.depends_on, &b.input_json)
            );
            assert_eq!(
                (a.max_attempts, a.timeout_ms, a.on_failure, &a.agent_json),
                (b.max_attempts, b.timeout_ms, b.on_failure, &b.agent_json)
            );
        }
    }
    assert_eq!(
        from_toml.stages[0].tasks[0].input_json,
        r#"{"list":[1,2.5,"x",true],"nested":{"k":"v"}}"#
    );
}

#[test]
fn example_job_files_parse_and_validate() {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(examples_dir()).expect("examples/jobs exists") {
        let path = entry.expect("dir entry").path();
        let job = load_job_file(&path, &catalog(), &Limits::default(), tenant(), NOW)
            .unwrap_or_else(|e| panic!("{} must be valid: {e}", path.display()));
        names.push((
            job.name,
            job.stages.len(),
            job.stages.iter().map(|s| s.tasks.len()).sum::<usize>(),
        ));
    }
    names.sort();
    assert_eq!(
        names,
        vec![("diamond".to_string(), 1, 5), ("tiles".to_string(), 3, 2)]
    );
}

#[test]
fn load_job_file_prefixes_validation_errors_with_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("job.json");
    std::fs::write(&path, r#"{"name": "t", "stages": []}"#).expect("write");
    assert_eq!(
        error_text(load_job_file(
            &path,
            &catalog(),
            &Limits::default(),
            tenant(),
            NOW
        )),
        format!(
            "{}: /stages: a job needs at least one stage",
            path.display()
        )
    );
}

#[test]
fn published_json_schema_accepts_the_examples_and_rejects_unknown_fields() {
    let schema = job_spec_json_schema();
    let jobs = SchemaCatalog::new([("job", schema)]).expect("the job spec schema compiles");
    let fanout = serde_json::to_value(toml(FANOUT_TOML).expect("parses")).expect("to JSON");
    assert_eq!(jobs.validate_input("job", &fanout), Ok(()));
    let with_string_timeout = json!({"name": "t", "stages": [{"name": "a", "timeout": "30s"}]});
    assert_eq!(jobs.validate_input("job", &with_string_timeout), Ok(()));
    let typo = json!({"name": "t", "stages": [{"name": "a", "tasks": [{"hander": "x"}]}]});
    assert_eq!(
        jobs.validate_input("job", &typo),
        Err(
            "/stages/0/tasks/0: Additional properties are not allowed ('hander' was unexpected)"
                .to_string()
        )
    );
}

// ---------------------------------------------------------------- helpers

fn stage(name: &str, tasks: Vec<TaskSpec>) -> StageSpec {
    StageSpec {
        name: name.into(),
        tasks,
        on_failure: None,
        max_attempts: None,
        timeout: None,
        executor: None,
    }
}

fn keyed(key: &str, depends_on: &[&str]) -> TaskSpec {
    let mut task = TaskSpec::wasm("example:noop", json!({}));
    task.key = Some(key.to_string());
    task.depends_on = depends_on.iter().map(|d| d.to_string()).collect();
    task
}

#[test]
fn a_stage_keeps_its_own_attempts_timeout_and_on_failure_for_spawned_tasks() {
    let job = check_toml(
        "name = \"t\"\n\
         [[stages]]\nname = \"fan\"\ntasks = [{ handler = \"example:noop\", on_failure = \"continue\" }]\n\
         [[stages]]\nname = \"process\"\nmax_attempts = 7\ntimeout = \"2s\"\non_failure = \"continue\"\n\
         [[stages]]\nname = \"after\"\n",
    )
    .expect("valid");
    let settings: Vec<_> = job
        .stages
        .iter()
        .map(|s| (s.max_attempts, s.timeout_ms, s.on_failure))
        .collect();
    assert_eq!(
        settings,
        [
            (None, None, OnFailure::FailJob),
            (Some(7), Some(2_000), OnFailure::Continue),
            (None, None, OnFailure::FailJob),
        ]
    );
    // The task's own setting wins over its stage's.
    assert_eq!(job.stages[0].tasks[0].on_failure, OnFailure::Continue);
}
