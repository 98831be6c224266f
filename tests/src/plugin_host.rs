//! The plugin host: discovery, duplicate names, broken plugins, the compile
//! cache, grants files, input validation, `plugins list` and the
//! unknown-handler error, with the real plugins built by runtime/build.rs.

use crate::plugin_support::{PluginDir, attempts, request, run};
use lockstep::guest_artifacts;
use lockstep::plugin::discovery::{resolve_cache_dir_from, resolve_plugin_dirs_from};
use lockstep::plugin::{
    ExecError, InputError, LoadFailure, PluginError, PluginHost, RunFailure, StandaloneContext,
};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn example_names() -> Vec<String> {
    let mut names: Vec<String> = guest_artifacts::EXAMPLES
        .iter()
        .map(|(name, _)| (*name).to_owned())
        .collect();
    names.sort();
    names
}

fn cache_entries(cache: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(cache)
        .expect("cache dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    entries.sort();
    entries
}

#[tokio::test]
async fn discovers_every_example_handler() {
    let dir = PluginDir::new();
    for (_, path) in guest_artifacts::EXAMPLES {
        dir.add(path);
    }
    let (host, report) = dir.load().await;
    assert_eq!(report.failures, vec![]);
    assert_eq!(report.loaded.len(), guest_artifacts::EXAMPLES.len());
    assert_eq!(host.handler_names(), example_names());
    assert_eq!(
        host.handler_names(),
        vec![
            "example:fanout",
            "example:flaky",
            "example:noop",
            "example:steps",
            "example:sum",
            "example:wordcount"
        ]
    );
}

#[tokio::test]
async fn the_default_examples_directory_holds_every_example() {
    let config = lockstep::plugin::HostConfig::new(
        vec![PathBuf::from(guest_artifacts::EXAMPLES_DIR)],
        Some(PluginDir::new().cache()),
        true,
    );
    let (host, report) = PluginHost::load(config).await.expect("examples load");
    assert_eq!(report.failures, vec![]);
    assert_eq!(host.handler_names(), example_names());
}

#[tokio::test]
async fn discovery_ignores_files_that_are_not_wasm_and_subdirectories() {
    let dir = PluginDir::new();
    dir.add(guest_artifacts::EXAMPLE_NOOP);
    std::fs::write(dir.plugins().join("README.md"), "not a plugin").expect("write");
    std::fs::create_dir(dir.plugins().join("nested.wasm")).expect("mkdir");
    std::fs::copy(
        guest_artifacts::EXAMPLE_FLAKY,
        dir.mkdir("plugins/nested.wasm").join("example-flaky.wasm"),
    )
    .expect("copy");
    let (host, report) = dir.load().await;
    assert_eq!(report.failures, vec![]);
    assert_eq!(host.handler_names(), vec!["example:noop"]);
}

/// A FIFO, a device, a huge file or a link to someone else's file in the
/// plugin directory is refused by kind or size, without being read (a FIFO
/// would block the load for good) and without its bytes in the message.
#[tokio::test]
async fn discovery_reads_only_regular_files_of_bounded_size() {
    let dir = PluginDir::new();
    dir.add(guest_artifacts::EXAMPLE_NOOP);
    let plugins = dir.plugins();
    let fifo = |path: &Path| {
        let made = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .expect("run mkfifo");
        assert!(made.success(), "mkfifo {}", path.display());
    };
    fifo(&plugins.join("fifo.wasm"));
    std::os::unix::fs::symlink("/dev/zero", plugins.join("zero.wasm")).expect("link");
    std::os::unix::fs::symlink("/etc/passwd", plugins.join("passwd.wasm")).expect("link");
    let big = std::fs::File::create(plugins.join("big.wasm")).expect("create");
    big.set_len(300 << 20).expect("sparse file");
    // A plugin whose grants file is a FIFO.
    let granted = dir.add_as(guest_artifacts::EXAMPLE_FLAKY, "y-flaky.wasm");
    fifo(&granted.with_extension("toml"));

    // On a thread of its own, so a load blocked in a read fails the test
    // instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    let config = dir.config(false);
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _ = tx.send(runtime.block_on(PluginHost::load(config)));
    });
    let (host, report) = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the load finishes: no file of the directory blocks it")
        .expect("the plugin directory loads");
    assert_eq!(host.handler_names(), vec!["example:noop"]);
    let not_regular = |kind: &str| {
        format!(
            "it is {kind}, not a regular file; only regular files (or symlinks to them) are read"
        )
    };
    assert_eq!(
        report
            .failures
            .iter()
            .map(|f| (f.path.clone(), f.reason.clone()))
            .collect::<Vec<_>>(),
        vec![
            (
                plugins.join("big.wasm"),
                "it is 300 MiB, larger than the 256 MiB limit".to_owned()
            ),
            (plugins.join("fifo.wasm"), not_regular("a FIFO")),
            (
                plugins.join("passwd.wasm"),
                "it is not WebAssembly (no `\\0asm` header); a plugin is a WASI 0.2 component"
                    .to_owned()
            ),
            (
                granted.clone(),
                format!(
                    "cannot read grants file {}: {}",
                    granted.with_extension("toml").display(),
                    not_regular("a FIFO")
                )
            ),
            (plugins.join("zero.wasm"), not_regular("a character device")),
        ]
    );
}

#[tokio::test]
async fn a_plugin_claiming_a_taken_name_is_refused_and_the_rest_still_serve() {
    let dir = PluginDir::new();
    let first = dir.add_as(guest_artifacts::EXAMPLE_NOOP, "a-noop.wasm");
    let second = dir.add_as(guest_artifacts::EXAMPLE_NOOP, "b-noop.wasm");
    dir.add(guest_artifacts::EXAMPLE_FLAKY);
    let (host, report) = PluginHost::load(dir.config(false))
        .await
        .expect("a duplicate name refuses only the newcomer");
    assert_eq!(
        report.failures,
        vec![LoadFailure {
            path: second.clone(),
            reason: format!(
                "it provides handler \"example:noop\", which {} already provides; this plugin was not loaded (remove or rename one of them)",
                first.display()
            ),
        }]
    );
    assert_eq!(host.handler_names(), vec!["example:flaky", "example:noop"]);
    assert_eq!(host.describe_all()[1].plugin, first);
    let (result, _) = run(&host, "example:noop", json!(1)).await;
    assert_eq!(result.expect("noop still runs").output, "1");
    // Strict mode makes the refusal fatal, like any other failed plugin.
    let err = PluginHost::load(dir.config(true))
        .await
        .expect_err("strict refuses");
    assert!(matches!(err, PluginError::Strict(_)), "{err}");
}

#[tokio::test]
async fn a_corrupt_wasm_is_reported_with_its_path_and_the_rest_still_load() {
    let dir = PluginDir::new();
    dir.add(guest_artifacts::EXAMPLE_NOOP);
    let broken = dir.plugins().join("broken.wasm");
    std::fs::write(&broken, b"\0asm this is not a component").expect("write");
    let (host, report) = dir.load().await;
    assert_eq!(host.handler_names(), vec!["example:noop"]);
    assert_eq!(report.loaded, vec![dir.plugins().join("example-noop.wasm")]);
    assert_eq!(report.failures.len(), 1);
    assert_eq!(report.failures[0].path, broken);
    assert!(
        report.failures[0]
            .reason
            .starts_with("it is not a valid WebAssembly component: "),
        "{}",
        report.failures[0].reason
    );
    assert!(
        report.failures[0]
            .to_string()
            .starts_with(&format!("plugin {} was not loaded: ", broken.display())),
        "{}",
        report.failures[0]
    );
    let (result, _) = run(&host, "example:noop", json!(1)).await;
    assert_eq!(result.expect("noop still runs").output, "1");
}

#[tokio::test]
async fn a_core_module_is_reported_as_not_a_component() {
    let dir = PluginDir::new();
    dir.add(guest_artifacts::EXAMPLE_NOOP);
    // The smallest valid core wasm module: magic and version, no sections.
    let module = dir.plugins().join("core-module.wasm");
    std::fs::write(&module, b"\0asm\x01\0\0\0").expect("write");
    let (host, report) = dir.load().await;
    assert_eq!(host.handler_names(), vec!["example:noop"]);
    assert_eq!(report.failures.len(), 1);
    assert_eq!(report.failures[0].path, module);
    assert_eq!(
        report.failures[0].reason,
        "it is a core WebAssembly module, not a component; build for wasm32-wasip2 (or wrap it with `wasm-tools component new`)"
    );
}

#[tokio::test]
async fn a_component_of_another_world_is_reported_as_not_fitting_the_plugin_world() {
    let dir = PluginDir::new();
    dir.add(guest_artifacts::EXAMPLE_NOOP);
    // The smallest valid component: magic, component version and layer, no
    // sections, so it exports no `handler`.
    let empty = dir.plugins().join("empty-component.wasm");
    std::fs::write(&empty, b"\0asm\x0d\0\x01\0").expect("write");
    let (host, report) = dir.load().await;
    assert_eq!(host.handler_names(), vec!["example:noop"]);
    assert_eq!(report.failures.len(), 1);
    assert_eq!(report.failures[0].path, empty);
    let reason = &report.failures[0].reason;
    assert!(
        reason.starts_with("it does not fit the lockstep:plugin world (wit/plugin.wit): "),
        "{reason}"
    );
    assert!(reason.contains("lockstep:plugin/handler@0.1.0"), "{reason}");
}

#[tokio::test]
async fn strict_mode_makes_a_broken_plugin_fatal() {
    let dir = PluginDir::new();
    dir.add(guest_artifacts::EXAMPLE_NOOP);
    let broken = dir.plugins().join("broken.wasm");
    std::fs::write(&broken, b"garbage").expect("write");
    let err = PluginHost::load(dir.config(true))
        .await
        .expect_err("strict refuses a broken plugin");
    let PluginError::Strict(failures) = &err else {
        panic!("expected a strict failure, got {err}");
    };
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].path, broken);
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("plugin {} was not loaded: ", broken.display())),
        "{text}"
    );
    assert!(text.ends_with(" (strict mode makes this fatal)"), "{text}");
}

#[tokio::test]
async fn a_missing_plugin_directory_is_an_error_naming_it() {
    let dir = PluginDir::new();
    let missing = dir.root.path().join("no-such-dir");
    let config = lockstep::plugin::HostConfig::new(vec![missing.clone()], Some(dir.cache()), false);
    let err = PluginHost::load(config).await.expect_err("missing dir");
    assert_eq!(
        err.to_string(),
        format!(
            "cannot read plugin directory {}: No such file or directory (os error 2); pass --plugins DIR or set LOCKSTEP_PLUGINS",
            missing.display()
        )
    );
}

#[tokio::test]
async fn the_compile_cache_is_reused_on_a_second_load() {
    let dir = PluginDir::new();
    for (_, path) in guest_artifacts::EXAMPLES {
        dir.add(path);
    }
    let n = guest_artifacts::EXAMPLES.len();
    let (_, first) = dir.load().await;
    assert_eq!(
        (first.cache.hits, first.cache.misses, first.cache.rebuilt),
        (0, n, 0)
    );
    assert_eq!(cache_entries(&dir.cache(), ".cwasm").len(), n);
    assert_eq!(cache_entries(&dir.cache(), ".cwasm.sha256").len(), n);
    let (host, second) = dir.load().await;
    assert_eq!(
        (second.cache.hits, second.cache.misses, second.cache.rebuilt),
        (n, 0, 0)
    );
    assert_eq!(host.handler_names(), example_names());
}

#[tokio::test]
async fn a_corrupt_cache_entry_is_rebuilt_and_the_plugin_still_runs() {
    let dir = PluginDir::new();
    dir.add(guest_artifacts::EXAMPLE_NOOP);
    dir.add(guest_artifacts::EXAMPLE_FLAKY);
    dir.load().await;
    let entries = cache_entries(&dir.cache(), ".cwasm");
    assert_eq!(entries.len(), 2);
    // Flip bytes in the middle of one artifact (its checksum stays).
    let mut bytes = std::fs::read(&entries[0]).expect("read");
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 64] {
        *b ^= 0xFF;
    }
    std::fs::write(&entries[0], &bytes).expect("write");

    let (host, report) = dir.load().await;
    assert_eq!(
        (report.cache.hits, report.cache.misses, report.cache.rebuilt),
        (1, 0, 1)
    );
    assert_eq!(report.failures, vec![]);
    let (result, _) = run(&host, "example:noop", json!({"after": "rebuild"})).await;
    assert_eq!(result.expect("noop runs").output, r#"{"after":"rebuild"}"#);
    let (result, _) = run(&host, "example:flaky", json!({"fail_times": 0})).await;
    assert_eq!(result.expect("flaky runs").output, r#"{"attempt":1}"#);

    // The rebuilt entry is trusted again.
    let (_, report) = dir.load().await;
    assert_eq!(
        (report.cache.hits, report.cache.misses, report.cache.rebuilt),
        (2, 0, 0)
    );
}

#[tokio::test]
async fn a_truncated_cache_entry_is_rebuilt() {
    let dir = PluginDir::new();
    dir.add(guest_artifacts::EXAMPLE_NOOP);
    dir.load().await;
    let entry = cache_entries(&dir.cache(), ".cwasm").remove(0);
    let bytes = std::fs::read(&entry).expect("read");
    std::fs::write(&entry, &bytes[..bytes.len() / 3]).expect("truncate");
    let (host, report) = dir.load().await;
    assert_eq!(
        (report.cache.hits, report.cache.misses, report.cache.rebuilt),
        (0, 0, 1)
    );
    let (result, _) = run(&host, "example:noop", json!(2)).await;
    assert_eq!(result.expect("noop runs").output, "2");
}

#[tokio::test]
async fn a_cache_entry_without_its_checksum_is_rebuilt() {
    let dir = PluginDir::new();
    dir.add(guest_artifacts::EXAMPLE_NOOP);
    dir.load().await;
    let checksum = cache_entries(&dir.cache(), ".cwasm.sha256").remove(0);
    std::fs::remove_file(&checksum).expect("remove checksum");
    let (_, report) = dir.load().await;
    assert_eq!(
        (report.cache.hits, report.cache.misses, report.cache.rebuilt),
        (0, 0, 1)
    );
    assert!(checksum.exists(), "the rebuild writes the checksum again");
}

#[tokio::test]
async fn a_cache_entry_whose_checksum_matches_but_does_not_deserialize_is_rebuilt() {
    // Someone wrote garbage and a checksum to match: wasmtime's own header
    // check refuses it, and the host rebuilds instead of failing.
    let dir = PluginDir::new();
    dir.add(guest_artifacts::EXAMPLE_NOOP);
    dir.load().await;
    let entry = cache_entries(&dir.cache(), ".cwasm").remove(0);
    let garbage = b"\x7fELF not a precompiled component".to_vec();
    std::fs::write(&entry, &garbage).expect("write");
    let sum = lockstep::plugin::cache::sha256_hex(&garbage);
    std::fs::write(entry.with_extension("cwasm.sha256"), sum).expect("write checksum");
    let (host, report) = dir.load().await;
    assert_eq!(
        (report.cache.hits, report.cache.misses, report.cache.rebuilt),
        (0, 0, 1)
    );
    let (result, _) = run(&host, "example:noop", json!(3)).await;
    assert_eq!(result.expect("noop runs").output, "3");
}

#[tokio::test]
async fn a_cache_directory_that_cannot_be_written_costs_a_compile_not_a_failed_load() {
    let dir = PluginDir::new();
    dir.add(guest_artifacts::EXAMPLE_NOOP);
    // A file where the cache directory should be.
    std::fs::write(dir.cache(), "not a directory").expect("write");
    for _ in 0..2 {
        let (host, report) = dir.load().await;
        assert_eq!(
            (report.cache.hits, report.cache.misses, report.cache.rebuilt),
            (0, 1, 0)
        );
        let (result, _) = run(&host, "example:noop", json!(4)).await;
        assert_eq!(result.expect("noop runs").output, "4");
    }
}

#[tokio::test]
async fn an_unknown_handler_is_an_error_listing_the_registered_names() {
    let dir = PluginDir::new();
    dir.add(guest_artifacts::EXAMPLE_NOOP);
    dir.add(guest_artifacts::EXAMPLE_FLAKY);
    let (host, _) = dir.load().await;
    let (result, _) = run(&host, "example:nope", json!({})).await;
    let err = result.expect_err("no such handler");
    assert_eq!(
        err.to_string(),
        "unknown handler \"example:nope\"; registered handlers: example:flaky, example:noop"
    );
    assert!(matches!(err, RunFailure::UnknownHandler(_)));
    assert_eq!(
        host.validate_input("example:nope", &json!({}))
            .expect_err("unknown")
            .to_string(),
        "unknown handler \"example:nope\"; registered handlers: example:flaky, example:noop"
    );
}

#[tokio::test]
async fn an_unknown_handler_on_a_host_without_plugins_says_none() {
    let host = PluginHost::empty();
    let err = host
        .run(
            request("example:noop", json!({})),
            Arc::new(StandaloneContext),
        )
        .await
        .expect_err("nothing is registered");
    assert_eq!(
        err.to_string(),
        "unknown handler \"example:noop\"; registered handlers: none"
    );
    let dir = PluginDir::new();
    let (host, report) = dir.load().await;
    assert_eq!(report.loaded, Vec::<PathBuf>::new());
    assert_eq!(
        host.check_handler("x").expect_err("none").to_string(),
        "unknown handler \"x\"; registered handlers: none"
    );
}

#[tokio::test]
async fn input_validation_names_the_failing_field_as_a_json_pointer() {
    let dir = PluginDir::new();
    dir.add(guest_artifacts::EXAMPLE_FANOUT);
    dir.add(guest_artifacts::EXAMPLE_WORDCOUNT);
    let (host, _) = dir.load().await;

    host.validate_input("example:fanout", &json!({"count": 3}))
        .expect("valid input");
    let err = host
        .validate_input("example:fanout", &json!({"count": "many"}))
        .expect_err("count must be an integer");
    let InputError::Invalid {
        handler,
        pointer,
        message,
    } = &err
    else {
        panic!("expected an invalid input, got {err}");
    };
    assert_eq!(
        (handler.as_str(), pointer.as_str()),
        ("example:fanout", "/count")
    );
    assert_eq!(message, "\"many\" is not of type \"integer\"");
    assert_eq!(
        err.to_string(),
        "input for handler example:fanout is invalid at /count: \"many\" is not of type \"integer\""
    );

    let err = host
        .validate_input("example:wordcount", &json!({}))
        .expect_err("path is required");
    let InputError::Invalid {
        pointer, message, ..
    } = &err
    else {
        panic!("expected an invalid input, got {err}");
    };
    assert_eq!(pointer, "/path");
    assert_eq!(message, "\"path\" is a required property");
}

#[tokio::test]
async fn exec_validates_the_input_before_running() {
    let dir = PluginDir::new();
    dir.add(guest_artifacts::EXAMPLE_FANOUT);
    let (host, _) = dir.load().await;
    let err = host
        .exec(
            "example:fanout",
            &json!({"count": -1}),
            1,
            Arc::new(StandaloneContext),
        )
        .await
        .expect_err("negative count");
    assert!(
        matches!(&err, ExecError::Input(InputError::Invalid { pointer, .. }) if pointer == "/count"),
        "{err}"
    );
    let outcome = host
        .exec(
            "example:fanout",
            &json!({"count": 2}),
            1,
            Arc::new(StandaloneContext),
        )
        .await
        .expect("fanout runs");
    assert_eq!(outcome.output, r#"{"spawned":2}"#);
    assert_eq!(outcome.spawn.len(), 2);
}

#[tokio::test]
async fn plugins_list_shows_file_hash_grants_and_schema() {
    let dir = PluginDir::new();
    let wasm = dir.add(guest_artifacts::EXAMPLE_WORDCOUNT);
    let data = dir.mkdir("data");
    dir.grant(
        &wasm,
        &format!(
            "env = [\"LANG\"]\nmemory_mib = 32\ntimeout_ms = 1500\nmax_attempts = 2\nconcurrency = 3\n\n[[dirs]]\nhost = {:?}\nguest = \"/data\"\n",
            data.display().to_string()
        ),
    );
    let (host, _) = dir.load().await;
    let list = host.describe_all();
    assert_eq!(list.len(), 1);
    let h = &list[0];
    assert_eq!(h.name, "example:wordcount");
    assert_eq!(h.plugin, wasm);
    assert_eq!(
        h.sha256,
        lockstep::plugin::cache::sha256_hex(&std::fs::read(&wasm).expect("read"))
    );
    assert_eq!(h.sha256_short(), &h.sha256[..12]);
    let data = std::fs::canonicalize(&data).expect("canonical");
    assert_eq!(
        h.grants_summary,
        format!(
            "dirs: /data=ro ({}); env: LANG; network: none; memory 32 MiB; timeout 1.5s; attempts 2; concurrency 3; output 1 MiB",
            data.display()
        )
    );
    assert_eq!(h.input_schema["required"], json!(["path"]));
    let json = serde_json::to_value(&list).expect("serializes");
    assert_eq!(json[0]["name"], "example:wordcount");
    assert_eq!(json[0]["grants"]["memory_mib"], 32);
    assert_eq!(json[0]["grants"]["dirs"][0]["mode"], "ro");
    let text = h.render_text();
    assert!(
        text.starts_with("example:wordcount — Counts the words"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "\n  plugin: {} (sha256 {})\n",
            wasm.display(),
            h.sha256_short()
        )),
        "{text}"
    );
}

#[tokio::test]
async fn a_grants_file_with_an_unknown_key_fails_that_plugin_naming_file_line_and_field() {
    let dir = PluginDir::new();
    dir.add(guest_artifacts::EXAMPLE_NOOP);
    let flaky = dir.add(guest_artifacts::EXAMPLE_FLAKY);
    dir.grant(&flaky, "memory_mib = 32\nmemroy_mib = 64\n");
    let (host, report) = dir.load().await;
    assert_eq!(host.handler_names(), vec!["example:noop"]);
    assert_eq!(report.failures.len(), 1);
    assert_eq!(report.failures[0].path, flaky);
    assert_eq!(
        report.failures[0].reason,
        format!(
            "grants file {} line 2, column 1: unknown field `memroy_mib`, expected one of `dirs`, `env`, `network`, `memory_mib`, `timeout_ms`, `max_attempts`, `concurrency`, `max_output_bytes`",
            flaky.with_extension("toml").display()
        )
    );
}

#[tokio::test]
async fn a_grants_key_after_a_dirs_table_gets_a_hint() {
    let dir = PluginDir::new();
    let noop = dir.add(guest_artifacts::EXAMPLE_NOOP);
    let data = dir.mkdir("data");
    dir.grant(
        &noop,
        &format!(
            "[[dirs]]\nhost = {:?}\nguest = \"/data\"\nenv = [\"LANG\"]\n",
            data.display().to_string()
        ),
    );
    let (_, report) = dir.load().await;
    assert_eq!(report.failures.len(), 1);
    let reason = &report.failures[0].reason;
    assert!(
        reason.contains("line 4, column 1: unknown field `env`"),
        "{reason}"
    );
    assert!(
        reason.ends_with("(top-level keys must come before the first [[dirs]] table)"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_grant_with_an_out_of_range_value_names_line_and_field() {
    let dir = PluginDir::new();
    let noop = dir.add(guest_artifacts::EXAMPLE_NOOP);
    dir.grant(&noop, "timeout_ms = 1000\nmemory_mib = 0\n");
    let (_, report) = dir.load().await;
    assert_eq!(
        report.failures,
        vec![LoadFailure {
            path: noop.clone(),
            reason: format!(
                "grants file {} line 2, column 14: field `memory_mib` is 0; it must be between 1 and 4096",
                noop.with_extension("toml").display()
            ),
        }]
    );
}

#[tokio::test]
async fn a_grant_of_a_missing_directory_fails_that_plugin_naming_the_path() {
    let dir = PluginDir::new();
    let noop = dir.add(guest_artifacts::EXAMPLE_NOOP);
    dir.grant(
        &noop,
        "[[dirs]]\nhost = \"no-such-data\"\nguest = \"/data\"\n",
    );
    let (host, report) = dir.load().await;
    assert_eq!(host.handler_names(), Vec::<String>::new());
    assert_eq!(
        report.failures[0].reason,
        format!(
            "grants file {} line 2, column 8: directory {} (field `dirs[0].host`) cannot be opened: No such file or directory (os error 2); create it or fix the grant",
            noop.with_extension("toml").display(),
            dir.plugins().join("no-such-data").display()
        )
    );
}

#[tokio::test]
async fn a_network_grant_must_be_an_ip_and_port() {
    let dir = PluginDir::new();
    let noop = dir.add(guest_artifacts::EXAMPLE_NOOP);
    dir.grant(&noop, "network = [\"example.com:80\"]\n");
    let (_, report) = dir.load().await;
    assert_eq!(
        report.failures[0].reason,
        format!(
            "grants file {} line 1, column 12: field `network[0]` is \"example.com:80\"; write an IP address and port such as \"127.0.0.1:8080\" (name lookup is not available to plugins)",
            noop.with_extension("toml").display()
        )
    );
}

#[tokio::test]
async fn a_read_write_grant_allows_writes() {
    let dir = PluginDir::new();
    dir.add(guest_artifacts::EXAMPLE_NOOP);
    let wasm = dir.add(guest_artifacts::HOSTILE_WRITE_READONLY);
    let data = dir.mkdir("data");
    std::fs::write(data.join("existing.txt"), "first line\n").expect("write");
    dir.grant(
        &wasm,
        &format!(
            "[[dirs]]\nhost = {:?}\nguest = \"/data\"\nmode = \"rw\"\n",
            data.display().to_string()
        ),
    );
    let (host, _) = dir.load().await;
    let (result, _) = run(
        &host,
        "hostile:write-readonly",
        json!({"existing": "/data/existing.txt"}),
    )
    .await;
    let attempts = attempts(&result.expect("runs"));
    assert_eq!(
        attempts
            .iter()
            .map(|a| (a.action.as_str(), a.ok, a.detail.as_str()))
            .collect::<Vec<_>>(),
        vec![
            ("create_file", true, "done"),
            ("create_dir", true, "done"),
            ("append", true, "done")
        ]
    );
    assert_eq!(
        std::fs::read_to_string(data.join("written-by-guest.txt")).expect("written"),
        "written by hostile:write-readonly\n"
    );
    assert!(data.join("created-by-guest").is_dir());
    assert_eq!(
        std::fs::read_to_string(data.join("existing.txt")).expect("appended"),
        "first line\nappended by hostile:write-readonly\n"
    );
}

#[tokio::test]
async fn an_env_grant_passes_exactly_the_named_variables() {
    let dir = PluginDir::new();
    let wasm = dir.add(guest_artifacts::HOSTILE_READ_ENV);
    dir.grant(
        &wasm,
        "env = [\"HOME\", \"LOCKSTEP_TEST_SURELY_UNSET_VAR\"]\n",
    );
    let (host, _) = dir.load().await;
    let (result, _) = run(&host, "hostile:read-env", json!({})).await;
    let output: serde_json::Value =
        serde_json::from_str(&result.expect("runs").output).expect("json");
    let home = std::env::var("HOME").expect("tests run with HOME set");
    assert_eq!(
        output,
        json!({"vars": {"HOME": home}, "home": home, "path": null, "args": []})
    );
}

#[tokio::test]
async fn a_network_grant_allows_exactly_the_listed_address() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let allowed = listener.local_addr().expect("addr");
    let other = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let denied = other.local_addr().expect("addr");
    let dir = PluginDir::new();
    let wasm = dir.add(guest_artifacts::HOSTILE_OPEN_SOCKET);
    dir.grant(&wasm, &format!("network = [\"{allowed}\"]\n"));
    let (host, _) = dir.load().await;

    let (result, _) = run(
        &host,
        "hostile:open-socket",
        json!({"addr": allowed.to_string()}),
    )
    .await;
    let seen = attempts(&result.expect("runs"));
    assert_eq!(
        (seen[0].action.as_str(), seen[0].ok, seen[0].detail.clone()),
        ("connect", true, format!("connected to {allowed}"))
    );
    assert!(!seen[1].ok, "name lookup stays off: {:?}", seen[1]);
    assert!(!seen[2].ok, "listening stays off: {:?}", seen[2]);

    let (result, _) = run(
        &host,
        "hostile:open-socket",
        json!({"addr": denied.to_string()}),
    )
    .await;
    let seen = attempts(&result.expect("runs"));
    assert_eq!((seen[0].action.as_str(), seen[0].ok), ("connect", false));
    assert_eq!(seen[0].detail, "Permission denied (os error 2)");
}

#[test]
fn plugin_dirs_come_from_the_flag_then_the_env_then_the_default() {
    let flag = vec![PathBuf::from("/a"), PathBuf::from("/b")];
    assert_eq!(resolve_plugin_dirs_from(&flag, Some("/x:/y".into())), flag);
    assert_eq!(
        resolve_plugin_dirs_from(&[], Some("/x:/y".into())),
        vec![PathBuf::from("/x"), PathBuf::from("/y")]
    );
    assert_eq!(
        resolve_plugin_dirs_from(&[], Some("".into())),
        vec![PathBuf::from("plugins")]
    );
    assert_eq!(
        resolve_plugin_dirs_from(&[], None),
        vec![PathBuf::from("plugins")]
    );
}

#[test]
fn the_cache_dir_comes_from_the_flag_then_env_then_xdg_then_home() {
    let p = |s: &str| Some(std::ffi::OsString::from(s));
    assert_eq!(
        resolve_cache_dir_from(Some(Path::new("/flag")), p("/env"), p("/xdg"), p("/home/u"))
            .expect("dir"),
        PathBuf::from("/flag")
    );
    assert_eq!(
        resolve_cache_dir_from(None, p("/env"), p("/xdg"), p("/home/u")).expect("dir"),
        PathBuf::from("/env")
    );
    assert_eq!(
        resolve_cache_dir_from(None, None, p("/xdg"), p("/home/u")).expect("dir"),
        PathBuf::from("/xdg/lockstep")
    );
    assert_eq!(
        resolve_cache_dir_from(None, None, p("relative"), p("/home/u")).expect("dir"),
        PathBuf::from("/home/u/.cache/lockstep")
    );
    assert_eq!(
        resolve_cache_dir_from(None, None, None, None)
            .expect_err("nothing to go on")
            .to_string(),
        "cannot choose a compile cache directory: neither XDG_CACHE_HOME nor HOME is set; pass --cache-dir DIR or set LOCKSTEP_CACHE_DIR"
    );
}
