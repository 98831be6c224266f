//! Plugin authoring as a third-party author meets it: `lockstep plugins new`
//! projects generated outside the repository, built with the real toolchains
//! from the package registries (cargo, componentize-py from PyPI,
//! componentize-js from npm) by running the recipes of docs/plugins.md line
//! by line, dropped into a plugin directory and run in a job; and `plugins
//! check` / `plugins wit` on good and bad files.
//!
//! The toolchains are installed by `.ci/plugin-toolchains` into
//! `target/plugin-toolchains` (once; later runs reuse them). A failed install
//! fails the test with the installer's output: nothing here is skipped.

use crate::harness::{cli_bin, test_cache_dir};
use lockstep::guest_artifacts;
use lockstep::template::{COMPONENTIZE_JS_VERSION, COMPONENTIZE_PY_VERSION, WIT_BINDGEN_VERSION};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn toolchains_dir() -> PathBuf {
    repo_root().join("target").join("plugin-toolchains")
}

/// Installs (once per process, and cached on disk) the Python toolchain and
/// the npm cache directory. Panics with the installer's output on failure.
fn install_toolchains() -> PathBuf {
    static INSTALLED: Mutex<bool> = Mutex::new(false);
    let mut installed = INSTALLED.lock().unwrap_or_else(|p| p.into_inner());
    let dir = toolchains_dir();
    if !*installed {
        let out = Command::new("bash")
            .arg(repo_root().join(".ci/plugin-toolchains"))
            .arg(&dir)
            .arg(COMPONENTIZE_PY_VERSION)
            .output()
            .expect("run .ci/plugin-toolchains");
        assert!(
            out.status.success(),
            "installing the plugin toolchains from the package registries failed:\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        *installed = true;
    }
    dir
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A scratch directory outside the repository, with `bin/lockstep` (the CLI
/// under test) for the recipes to call.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Workspace {
        let dir = tempfile::tempdir().expect("temp dir");
        let canonical = dir.path().canonicalize().expect("canonical temp dir");
        let repo = repo_root().canonicalize().expect("canonical repo");
        assert!(
            !canonical.starts_with(&repo),
            "the scratch directory {} is inside the repository {}",
            canonical.display(),
            repo.display()
        );
        std::fs::create_dir(dir.path().join("bin")).expect("bin dir");
        std::os::unix::fs::symlink(cli_bin(), dir.path().join("bin").join("lockstep"))
            .expect("link lockstep");
        std::fs::create_dir(dir.path().join("plugins")).expect("plugins dir");
        Workspace { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// PATH for the recipes: our `lockstep`, then the toolchains, then the
    /// machine's.
    fn search_path(&self, extra: &[PathBuf]) -> std::ffi::OsString {
        let mut dirs = vec![self.path().join("bin")];
        dirs.extend_from_slice(extra);
        dirs.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        std::env::join_paths(dirs).expect("PATH")
    }

    /// Run `script` with `sh -eux` in the workspace; panic with its output
    /// if it fails.
    fn sh(&self, script: &str, path: &std::ffi::OsString, npm_cache: &Path) -> String {
        let mut cmd = Command::new("sh");
        cmd.arg("-eux")
            .arg("-c")
            .arg(script)
            .current_dir(self.path())
            .env("PATH", path)
            .env("LOCKSTEP_CACHE_DIR", test_cache_dir())
            .env("npm_config_cache", npm_cache)
            .env("npm_config_audit", "false")
            .env("npm_config_fund", "false")
            .env("npm_config_update_notifier", "false")
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1");
        clean_cargo_env(&mut cmd);
        let out = cmd.output().expect("run sh");
        let all = format!("{}\n{}", text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "recipe failed:\n{script}\n---\n{all}");
        all
    }

    fn lockstep(&self, args: &[&str]) -> Output {
        Command::new(cli_bin())
            .current_dir(self.path())
            .arg("--db")
            .arg(format!(
                "sqlite://{}",
                self.path().join("lockstep.db").display()
            ))
            .arg("--plugins")
            .arg(self.path().join("plugins"))
            .arg("--cache-dir")
            .arg(test_cache_dir())
            .args(args)
            .output()
            .expect("run lockstep")
    }
}

/// The outer `cargo test` sets variables that would change how a nested
/// cargo builds (flags, profiles, target dir); a plugin author has none.
fn clean_cargo_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let leaks = (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || matches!(
                key,
                "RUSTFLAGS"
                    | "RUSTDOCFLAGS"
                    | "RUSTC"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
            );
        if leaks {
            cmd.env_remove(key);
        }
    }
}

/// The ```sh block after `<!-- recipe: LANG -->` in docs/plugins.md: every
/// recipe there is run as written (Invariant 2).
fn recipe(lang: &str) -> String {
    let docs = std::fs::read_to_string(repo_root().join("docs/plugins.md")).expect("read docs");
    let marker = format!("<!-- recipe: {lang} -->");
    let after = docs
        .split_once(&marker)
        .unwrap_or_else(|| panic!("docs/plugins.md has no {marker}"))
        .1;
    let body = after
        .trim_start()
        .strip_prefix("```sh\n")
        .unwrap_or_else(|| panic!("{marker} is not followed by a ```sh block"));
    let end = body.find("```").expect("the recipe block ends");
    body[..end].to_owned()
}

/// Run the built component in a job, once with a good input and once with an
/// empty name, which the template's handler refuses as fatal.
fn run_in_jobs(ws: &Workspace, component: &Path, handler: &str) {
    let name = component.file_name().expect("file name");
    std::fs::copy(component, ws.path().join("plugins").join(name)).expect("copy the component");

    let listed = ws.lockstep(&["plugins", "list", "--json"]);
    assert_eq!(listed.status.code(), Some(0), "{}", text(&listed.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("list json");
    assert_eq!(listed[0]["name"], handler, "{listed}");
    assert_eq!(
        listed[0]["input_schema"]["required"],
        serde_json::json!(["name"]),
        "{listed}"
    );

    let good = ws.path().join("good.toml");
    std::fs::write(
        &good,
        format!(
            "name = \"greeting\"\n[[stages]]\nname = \"hello\"\ntasks = [{{ handler = \"{handler}\", input = {{ name = \"Ada\", times = 2 }} }}]\n"
        ),
    )
    .expect("write job");
    let run = ws.lockstep(&["run", good.to_str().expect("utf-8 path")]);
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}\n{}",
        text(&run.stdout),
        text(&run.stderr)
    );
    let task = task_json(ws, 1);
    assert_eq!(task["state"], "succeeded", "{task}");
    // `task --json` is the get_task view: the output is a JSON value.
    assert_eq!(
        task["output"],
        serde_json::json!({"greeting": "hello, Ada hello, Ada"})
    );

    let bad = ws.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "name = \"nobody\"\n[[stages]]\nname = \"hello\"\ntasks = [{{ handler = \"{handler}\", input = {{ name = \" \" }} }}]\n"
        ),
    )
    .expect("write job");
    let run = ws.lockstep(&["run", bad.to_str().expect("utf-8 path")]);
    assert_eq!(run.status.code(), Some(1), "{}", text(&run.stderr));
    let task = task_json(ws, 2);
    assert_eq!(task["state"], "dead", "{task}");
    // Fatal: dead on its first attempt, with the handler's own sentence.
    assert_eq!(task["attempt"], 1, "{task}");
    assert_eq!(
        task["error"], "name is empty; give someone to greet",
        "{task}"
    );
}

fn task_json(ws: &Workspace, id: u32) -> serde_json::Value {
    let out = ws.lockstep(&["task", &id.to_string(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("task json")
}

/// `plugins check` on a built component: valid, with exactly its handler.
fn assert_checks(ws: &Workspace, component: &Path, handler: &str) {
    let out = ws.lockstep(&[
        "plugins",
        "check",
        "--json",
        component.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check json");
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    assert_eq!(report["handlers"][0]["name"], handler, "{report}");
    assert_eq!(report["handlers"].as_array().map(Vec::len), Some(1));
}

/// `bench plugin` with the built component: its line has every field, the
/// counts asked for, and the handler's real output (timings are not asserted).
fn assert_benches(ws: &Workspace, label: &str, component: &Path, handler: &str) {
    let out = Command::new(cli_bin())
        .current_dir(ws.path())
        .arg("--plugins")
        .arg(guest_artifacts::EXAMPLES_DIR)
        .arg("--cache-dir")
        .arg(test_cache_dir())
        .args(["bench", "plugin", "--iterations", "10"])
        .args([
            "--cold-loads",
            "1",
            "--cached-loads",
            "2",
            "--component-runs",
            "3",
        ])
        .arg("--component")
        .arg(format!("{label}={}", component.display()))
        .output()
        .expect("run lockstep bench plugin");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let cases: Vec<&str> = lines
        .iter()
        .map(|l| l["case"].as_str().expect("case"))
        .collect();
    assert_eq!(cases, ["noop_run", "startup_warm_cache", "component"]);
    let line = lines[2].as_object().expect("an object");
    let mut fields: Vec<&str> = line.keys().map(String::as_str).collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "bench",
            "bytes",
            "cached_loads",
            "cached_start_median_ms",
            "cached_start_p90_ms",
            "case",
            "cold_load_max_ms",
            "cold_load_median_ms",
            "cold_loads",
            "file",
            "handler",
            "label",
            "machine",
            "noop_run_median_us",
            "output",
            "run_median_us",
            "run_p99_us",
            "run_vs_noop",
            "runs",
        ]
    );
    let bytes = std::fs::metadata(component).expect("component").len();
    assert_eq!(line["bench"], "plugin");
    assert_eq!(line["label"], label);
    assert_eq!(line["file"], component.display().to_string());
    assert_eq!(line["bytes"], bytes);
    assert_eq!(line["handler"], handler);
    assert_eq!(
        line["output"],
        serde_json::json!({ "greeting": "hello, Ada" })
    );
    assert_eq!(
        (&line["cold_loads"], &line["cached_loads"], &line["runs"]),
        (
            &serde_json::json!(1),
            &serde_json::json!(2),
            &serde_json::json!(3)
        )
    );
    for field in [
        "cold_load_median_ms",
        "cold_load_max_ms",
        "cached_start_median_ms",
        "cached_start_p90_ms",
        "run_median_us",
        "run_p99_us",
        "noop_run_median_us",
        "run_vs_noop",
    ] {
        assert!(
            line[field].as_f64().is_some_and(|v| v > 0.0),
            "{field}: {}",
            lines[2]
        );
    }
    // Only the other template is named as not measured.
    let other = if label == "python" { "js" } else { "python" };
    let stderr = text(&out.stderr);
    let note = |lang: &str| {
        format!(
            "bench plugin: the {lang} template is not measured: build it as docs/plugins.md#benchmarks says and pass --component {lang}=PATH\n"
        )
    };
    assert!(stderr.contains(&note(other)), "{stderr}");
    assert!(!stderr.contains(&note(label)), "{stderr}");
}

#[test]
fn rust_template_builds_outside_the_repo_with_cargo_and_runs_in_a_job() {
    let ws = Workspace::new();
    // Share compiled dependencies between runs (target/template-builds); the
    // recipe itself is run as written.
    let shared = repo_root()
        .join("target")
        .join("template-builds")
        .join("rust");
    std::fs::create_dir_all(&shared).expect("shared target dir");
    let script = recipe("rust").replacen(
        "cd greet-rs\n",
        &format!("cd greet-rs\nln -s '{}' target\n", shared.display()),
        1,
    );
    let path = ws.search_path(&[]);
    let log = ws.sh(&script, &path, &toolchains_dir().join("npm-cache"));
    assert!(log.contains("test result: ok. 3 passed"), "{log}");
    assert!(log.contains("a plugin this host loads"), "{log}");
    let component = ws
        .path()
        .join("greet-rs/target/wasm32-wasip2/release/greet_rs.wasm");
    assert_checks(&ws, &component, "greet-rs:greet");
    run_in_jobs(&ws, &component, "greet-rs:greet");
}

#[test]
fn python_template_builds_outside_the_repo_with_componentize_py_and_runs_in_a_job() {
    let toolchains = install_toolchains();
    let ws = Workspace::new();
    let path = ws.search_path(&[toolchains.join("python").join("bin")]);
    let log = ws.sh(&recipe("python"), &path, &toolchains.join("npm-cache"));
    assert!(log.contains("Ran 3 tests"), "{log}");
    assert!(log.contains("a plugin this host loads"), "{log}");
    let component = ws.path().join("greet-py/greet_py.wasm");
    assert_checks(&ws, &component, "greet-py:greet");
    run_in_jobs(&ws, &component, "greet-py:greet");
    assert_benches(&ws, "python", &component, "greet-py:greet");
}

#[test]
fn js_template_builds_outside_the_repo_with_componentize_js_and_runs_in_a_job() {
    let toolchains = install_toolchains();
    let ws = Workspace::new();
    let path = ws.search_path(&[]);
    let npm_cache = toolchains.join("npm-cache");
    let log = ws.sh(&recipe("js"), &path, &npm_cache);
    assert!(log.contains("# pass 3"), "{log}");
    assert!(log.contains("a plugin this host loads"), "{log}");
    let component = ws.path().join("greet-js/greet_js.wasm");
    assert_checks(&ws, &component, "greet-js:greet");
    run_in_jobs(&ws, &component, "greet-js:greet");
    assert_benches(&ws, "js", &component, "greet-js:greet");

    // The same source built without `--disable http fetch-event` imports
    // wasi:http, which the host does not link: check names it.
    ws.sh(
        "cd greet-js && npx componentize-js src/app.js --wit wit --world-name plugin -o with_http.wasm",
        &path,
        &npm_cache,
    );
    let out = ws.lockstep(&["plugins", "check", "greet-js/with_http.wasm"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(
            "  problem: it imports wasi:http/types@0.2.10, which the host does not link; with componentize-js, build with `--disable http fetch-event`\n"
        ),
        "{stdout}"
    );
    assert_eq!(
        text(&out.stderr),
        "error: greet-js/with_http.wasm is not a plugin this host loads\n"
    );
}

#[test]
fn template_versions_match_what_the_repository_builds_with() {
    let plugins_manifest = std::fs::read_to_string(repo_root().join("plugins/Cargo.toml"))
        .expect("plugins/Cargo.toml");
    assert!(
        plugins_manifest.contains(&format!(
            "wit-bindgen = {{ version = \"{WIT_BINDGEN_VERSION}\""
        )),
        "the vendored SDK's wit-bindgen ({WIT_BINDGEN_VERSION}) differs from plugins/Cargo.toml"
    );
    let docs = std::fs::read_to_string(repo_root().join("docs/plugins.md")).expect("docs");
    assert!(docs.contains(&format!("componentize-py=={COMPONENTIZE_PY_VERSION}")));
    assert!(docs.contains(&format!("componentize-js {COMPONENTIZE_JS_VERSION}")));
}

#[test]
fn plugins_new_refuses_bad_names_languages_and_non_empty_directories() {
    let ws = Workspace::new();
    let cases: [(&[&str], &str); 4] = [
        (
            &["plugins", "new", "Greet", "--lang", "rust"],
            "error: plugin name \"Greet\" is not usable: it does not start with a lowercase letter; use lowercase letters, digits and `-`, starting with a letter (e.g. `word-count`)\n",
        ),
        (
            &["plugins", "new", "a_b", "--lang", "rust"],
            "error: plugin name \"a_b\" is not usable: it contains '_'; use lowercase letters, digits and `-`, starting with a letter (e.g. `word-count`)\n",
        ),
        (
            &["plugins", "new", "greet", "--lang", "cobol"],
            "error: --lang \"cobol\" is not a template language; choose one of: rust, python, js\n",
        ),
        (
            &[
                "plugins",
                "new",
                "greet",
                "--lang",
                "js",
                "--dir",
                "plugins/..",
            ],
            "error: plugins/.. already exists and is not an empty directory; choose another --dir or remove it\n",
        ),
    ];
    for (args, expected) in cases {
        let out = ws.lockstep(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(text(&out.stderr), expected, "{args:?}");
        assert_eq!(text(&out.stdout), "", "{args:?}");
    }
    // Nothing was written besides what the workspace holds.
    let mut entries: Vec<String> = std::fs::read_dir(ws.path())
        .expect("read workspace")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, ["bin", "plugins"]);
}

#[test]
fn plugins_new_writes_the_wit_this_host_links_and_plugins_wit_prints_it() {
    let ws = Workspace::new();
    let out = ws.lockstep(&["plugins", "wit"]);
    assert_eq!(out.status.code(), Some(0));
    let wit = std::fs::read_to_string(repo_root().join("wit/plugin.wit")).expect("wit");
    assert_eq!(text(&out.stdout), wit);

    let out = ws.lockstep(&["plugins", "new", "w", "--lang", "python", "--dir", "p"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(ws.path().join("p/wit/plugin.wit")).expect("wit"),
        wit
    );
    let app = std::fs::read_to_string(ws.path().join("p/app.py")).expect("app.py");
    assert!(app.contains("HANDLER = \"w:greet\""), "{app}");
    assert!(!app.contains("{{"), "a placeholder was left: {app}");

    let out = ws.lockstep(&["plugins", "new", "r", "--lang", "rust", "--dir", "r"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let sdk = std::fs::read_to_string(ws.path().join("r/lockstep-sdk/src/lib.rs")).expect("sdk");
    assert!(
        sdk.contains(r#"path: "wit","#),
        "the vendored SDK must read its own WIT"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("r/lockstep-sdk/wit/plugin.wit")).expect("wit"),
        wit
    );
}

#[test]
fn plugins_check_explains_what_is_not_a_plugin() {
    let ws = Workspace::new();
    std::fs::write(ws.path().join("core.wasm"), b"\0asm\x01\0\0\0").expect("write");
    std::fs::write(ws.path().join("text.wasm"), b"hello").expect("write");
    let cases = [
        (
            "core.wasm",
            "  problem: it is a core WebAssembly module, not a component; build for wasm32-wasip2 (or wrap it with `wasm-tools component new`)\n",
        ),
        (
            "text.wasm",
            "  problem: it is not WebAssembly (no `\\0asm` header); a plugin is a WASI 0.2 component\n",
        ),
        (
            "missing.wasm",
            "  problem: cannot read it: No such file or directory (os error 2)\n",
        ),
    ];
    for (file, problem) in cases {
        let out = ws.lockstep(&["plugins", "check", file]);
        assert_eq!(out.status.code(), Some(1), "{file}");
        let stdout = text(&out.stdout);
        assert!(
            stdout.starts_with(&format!("{file}: NOT a plugin this host loads\n{problem}")),
            "{stdout}"
        );
    }

    // A real plugin: every import linked, its handler and schema listed.
    let noop = Path::new(guest_artifacts::EXAMPLES_DIR).join("example-noop.wasm");
    let out = ws.lockstep(&["plugins", "check", "--json", noop.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["handlers"][0]["name"], "example:noop");
    assert_eq!(
        report["exports"],
        serde_json::json!(["lockstep:plugin/handler@0.1.0"])
    );
    let imports = report["imports"].as_array().expect("imports");
    assert!(imports.iter().all(|i| i["linked"] == true), "{report}");
    // Built against WASI 0.2.6; the host links 0.2.12, which satisfies it.
    assert!(
        imports.iter().any(|i| i["name"] == "wasi:io/poll@0.2.6"),
        "{report}"
    );
}
