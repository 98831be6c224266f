//! The `wasi:cli/command` executor of the plugin host: loading (only
//! commands), arguments, env, preopened directories, exit statuses, traps,
//! both timeouts, memory, and stdout/stderr streamed with backpressure and a
//! byte bound. One test per command guest program, named after it.

use crate::plugin_support::PluginDir;
use lockstep::guest_artifacts;
use lockstep::plugin::{
    CommandEnd, CommandHost, Invocation, LoadedCommand, OutputLimits, Preopen, StreamKind,
    output_channel,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What one run printed and how it ended.
#[derive(Debug)]
pub struct Ran {
    pub end: CommandEnd,
    pub stdout: String,
    pub stderr: String,
    pub dropped_stdout: u64,
}

pub fn invocation(args: &[&str]) -> Invocation {
    Invocation {
        program: "step".to_owned(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: Vec::new(),
        dirs: Vec::new(),
        memory_bytes: 64 << 20,
        timeout: Duration::from_secs(30),
    }
}

pub fn host(dir: &PluginDir) -> CommandHost {
    CommandHost::new(&dir.cache()).expect("command host")
}

pub fn load(host: &CommandHost, artifact: &str) -> LoadedCommand {
    host.load(Path::new(artifact))
        .expect("a command component loads")
}

/// Run to the end, reading the output as it comes.
pub async fn run_with(
    host: &CommandHost,
    command: &LoadedCommand,
    invocation: &Invocation,
    limits: OutputLimits,
) -> Ran {
    let (sender, mut receiver) = output_channel(limits);
    let run = host.run(command, invocation, sender);
    let read = async {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(chunk) = receiver.recv().await {
            match chunk.stream {
                StreamKind::Stdout => stdout.extend_from_slice(&chunk.bytes),
                StreamKind::Stderr => stderr.extend_from_slice(&chunk.bytes),
            }
        }
        (stdout, stderr, receiver.dropped(StreamKind::Stdout))
    };
    let (end, (stdout, stderr, dropped_stdout)) = tokio::join!(run, read);
    Ran {
        end,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        dropped_stdout,
    }
}

pub async fn run(host: &CommandHost, command: &LoadedCommand, invocation: &Invocation) -> Ran {
    run_with(host, command, invocation, OutputLimits::default()).await
}

fn workspace(dir: &PluginDir) -> (PathBuf, PathBuf) {
    let workspace = dir.mkdir("workspace");
    std::fs::write(workspace.join("hello.txt"), "hello, workspace\n").expect("write");
    let out = dir.mkdir("out");
    (workspace, out)
}

fn preopens(workspace: &Path, out: &Path) -> Vec<Preopen> {
    vec![
        Preopen {
            host: workspace.to_owned(),
            guest: "/workspace".to_owned(),
            writable: false,
        },
        Preopen {
            host: out.to_owned(),
            guest: "/out".to_owned(),
            writable: true,
        },
    ]
}

#[test]
fn every_command_guest_program_has_a_test_named_after_it() {
    let source = include_str!("command_host.rs");
    for (name, _) in guest_artifacts::COMMANDS
        .iter()
        .chain(guest_artifacts::HOSTILE_COMMANDS.iter())
    {
        let prefix = format!("async fn {}_", name.replace([':', '-'], "_"));
        assert!(
            source.contains(&prefix),
            "no test named after {name} ({prefix}…)"
        );
    }
}

// ------------------------------------------------------------ sample commands

#[tokio::test]
async fn command_script_runs_its_operations_with_args_env_and_directories() {
    let dir = PluginDir::new();
    let host = host(&dir);
    let script = load(&host, guest_artifacts::COMMAND_SCRIPT);
    let (workspace, out) = workspace(&dir);
    let mut inv = invocation(&[
        "echo:one two",
        "env:GREETING",
        "read:/workspace/hello.txt",
        "write:/out/made/it.txt=made by the step",
        "ls:/out/made",
        "stderr:to stderr",
    ]);
    inv.env = vec![("GREETING".to_owned(), "hi there".to_owned())];
    inv.dirs = preopens(&workspace, &out);
    let ran = run(&host, &script, &inv).await;
    assert_eq!(ran.end, CommandEnd::Exited(0));
    assert_eq!(
        ran.stdout,
        "one two\nhi there\nhello, workspace\nwrote /out/made/it.txt\nit.txt\n"
    );
    assert_eq!(ran.stderr, "to stderr\n");
    assert_eq!(
        std::fs::read_to_string(out.join("made/it.txt")).expect("written"),
        "made by the step\n"
    );
}

#[tokio::test]
async fn exit_statuses_are_decoded_from_the_guest() {
    let dir = PluginDir::new();
    let host = host(&dir);
    let script = load(&host, guest_artifacts::COMMAND_SCRIPT);
    for (args, status) in [
        (vec!["echo:fine"], 0),
        (vec!["exit:3"], 3),
        (vec!["exit:0"], 0),
        (vec!["exit:255"], 255),
        (vec!["fail:the build broke"], 1),
        // An operation that cannot be done: the program's own status 2.
        (vec!["read:/nowhere"], 2),
    ] {
        let ran = run(&host, &script, &invocation(&args)).await;
        assert_eq!(ran.end, CommandEnd::Exited(status), "{args:?}: {ran:?}");
    }
    let ran = run(&host, &script, &invocation(&["fail:the build broke"])).await;
    assert_eq!(ran.stderr, "error: the build broke\n");
}

#[tokio::test]
async fn command_hasher_writes_a_manifest_and_checks_it_against_the_workspace() {
    let dir = PluginDir::new();
    let host = host(&dir);
    let hasher = load(&host, guest_artifacts::COMMAND_HASHER);
    let (workspace, out) = workspace(&dir);
    let mut inv = invocation(&["--out", "/out/SHA256SUMS", "/workspace"]);
    inv.dirs = preopens(&workspace, &out);
    let ran = run(&host, &hasher, &inv).await;
    assert_eq!(ran.end, CommandEnd::Exited(0), "{ran:?}");
    let manifest = std::fs::read_to_string(out.join("SHA256SUMS")).expect("manifest");
    let expected_digest = sha256_hex(b"hello, workspace\n");
    assert_eq!(
        manifest,
        format!("{expected_digest}  /workspace/hello.txt\n")
    );

    // Checking passes while the file is unchanged, and fails once it changed.
    let mut check = invocation(&["--check", "/out/SHA256SUMS"]);
    check.dirs = preopens(&workspace, &out);
    let ran = run(&host, &hasher, &check).await;
    assert_eq!(ran.end, CommandEnd::Exited(0), "{ran:?}");
    assert_eq!(
        ran.stdout,
        "/workspace/hello.txt: OK\nall 1 file(s) match\n"
    );
    std::fs::write(workspace.join("hello.txt"), "changed\n").expect("write");
    let ran = run(&host, &hasher, &check).await;
    assert_eq!(ran.end, CommandEnd::Exited(1));
    assert_eq!(
        ran.stdout,
        "/workspace/hello.txt: FAILED (content changed)\n"
    );
    assert_eq!(ran.stderr, "command-hasher: 1 of 1 file(s) did not match\n");
}

fn sha256_hex(bytes: &[u8]) -> String {
    lockstep::plugin::cache::sha256_hex(bytes)
}

#[tokio::test]
async fn a_component_that_is_not_a_command_is_refused_naming_the_file() {
    let dir = PluginDir::new();
    let host = host(&dir);
    let err = host
        .load(Path::new(guest_artifacts::EXAMPLE_NOOP))
        .expect_err("a handler plugin is not a command");
    assert_eq!(
        err.to_string(),
        format!(
            "{} cannot be used as a command: it is not a wasi:cli/command component (it does not export wasi:cli/run); build a binary crate for wasm32-wasip2",
            guest_artifacts::EXAMPLE_NOOP
        )
    );
    let missing = dir.root.path().join("missing.wasm");
    let err = host.load(&missing).expect_err("no file");
    assert_eq!(
        err.to_string(),
        format!(
            "{} cannot be used as a command: cannot read it: No such file or directory (os error 2)",
            missing.display()
        )
    );
}

#[tokio::test]
async fn command_components_in_a_plugin_directory_are_registered_by_name() {
    let dir = PluginDir::new();
    dir.add(guest_artifacts::EXAMPLE_NOOP);
    let script = dir.add(guest_artifacts::COMMAND_SCRIPT);
    let (host, report) = dir.load().await;
    assert_eq!(report.failures, vec![]);
    assert_eq!(report.commands, vec![script.clone()]);
    assert_eq!(host.handler_names(), vec!["example:noop"]);
    assert_eq!(host.command_names(), vec!["command-script"]);
    assert_eq!(host.command_path("command-script"), Some(script.as_path()));
    assert_eq!(host.command_path("example-noop"), None);
}

// ------------------------------------------------------------ streaming

#[tokio::test]
async fn output_is_streamed_while_the_command_runs() {
    let dir = PluginDir::new();
    let host = std::sync::Arc::new(host(&dir));
    let script = load(&host, guest_artifacts::COMMAND_SCRIPT);
    let inv = invocation(&["echo:first", "sleep:1500", "echo:second"]);
    let (sender, mut receiver) = output_channel(OutputLimits::default());
    let running = {
        let host = host.clone();
        tokio::spawn(async move { host.run(&script, &inv, sender).await })
    };
    let first = receiver.recv().await.expect("a first chunk");
    assert_eq!(&first.bytes[..], b"first\n");
    assert!(
        !running.is_finished(),
        "the first line arrived only after the program ended"
    );
    let second = receiver.recv().await.expect("a second chunk");
    assert_eq!(&second.bytes[..], b"second\n");
    assert!(receiver.recv().await.is_none());
    assert_eq!(running.await.expect("join"), CommandEnd::Exited(0));
}

#[tokio::test]
async fn output_past_the_byte_bound_is_dropped_and_counted_without_failing_the_guest() {
    let dir = PluginDir::new();
    let host = host(&dir);
    let script = load(&host, guest_artifacts::COMMAND_SCRIPT);
    let total: u64 = (1..=20_000u64)
        .map(|i| format!("line {i}\n").len() as u64)
        .sum();
    let limits = OutputLimits {
        bytes_per_stream: 10_000,
        chunks: 4,
    };
    let ran = run_with(
        &host,
        &script,
        &invocation(&["lines:20000", "echo:done"]),
        limits,
    )
    .await;
    assert_eq!(ran.end, CommandEnd::Exited(0));
    assert_eq!(ran.stdout.len(), 10_000);
    assert!(ran.stdout.starts_with("line 1\nline 2\n"));
    assert_eq!(ran.dropped_stdout, total + "done\n".len() as u64 - 10_000);
}

#[tokio::test]
async fn a_slow_reader_slows_the_guest_down_and_loses_nothing() {
    let dir = PluginDir::new();
    let host = host(&dir);
    let script = load(&host, guest_artifacts::COMMAND_SCRIPT);
    let inv = invocation(&["lines:3000"]);
    let (sender, mut receiver) = output_channel(OutputLimits {
        bytes_per_stream: 1 << 20,
        chunks: 1,
    });
    let run = host.run(&script, &inv, sender);
    let read = async {
        let mut stdout = Vec::new();
        let mut chunks = 0;
        while let Some(chunk) = receiver.recv().await {
            chunks += 1;
            if chunks % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            stdout.extend_from_slice(&chunk.bytes);
        }
        (stdout, receiver.dropped(StreamKind::Stdout))
    };
    let (end, (stdout, dropped)) = tokio::join!(run, read);
    assert_eq!(end, CommandEnd::Exited(0));
    assert_eq!(dropped, 0);
    let expected: String = (1..=3000).map(|i| format!("line {i}\n")).collect();
    assert_eq!(String::from_utf8(stdout).expect("utf8"), expected);
}

// ------------------------------------------------------------ hostile

#[tokio::test]
async fn hostile_command_sandbox_cannot_read_or_write_outside_its_directories() {
    let dir = PluginDir::new();
    let host = host(&dir);
    let hostile = load(&host, guest_artifacts::HOSTILE_COMMAND_SANDBOX);
    let (workspace, out) = workspace(&dir);

    let mut inv = invocation(&["read-passwd"]);
    inv.dirs = preopens(&workspace, &out);
    let ran = run(&host, &hostile, &inv).await;
    assert_eq!(ran.end, CommandEnd::Exited(0), "{ran:?}");
    assert!(!ran.stdout.contains("ESCAPED"), "{}", ran.stdout);
    assert!(!ran.stdout.contains("root:"), "{}", ran.stdout);
    assert_eq!(ran.stdout.matches("blocked: ").count(), 4, "{}", ran.stdout);

    let mut inv = invocation(&["write-outside"]);
    inv.dirs = preopens(&workspace, &out);
    let ran = run(&host, &hostile, &inv).await;
    assert_eq!(ran.end, CommandEnd::Exited(0), "{ran:?}");
    assert!(!ran.stdout.contains("ESCAPED"), "{}", ran.stdout);
    assert_eq!(
        ran.stdout.matches("blocked: write").count(),
        4,
        "{}",
        ran.stdout
    );
    assert!(!workspace.join("planted.txt").exists());
    assert!(!dir.root.path().join("planted.txt").exists());
    assert_eq!(std::fs::read_dir(&out).expect("ls").count(), 0);
}

#[tokio::test]
async fn hostile_command_sandbox_is_stopped_by_both_timeouts_and_the_memory_limit() {
    let dir = PluginDir::new();
    let host = host(&dir);
    let hostile = load(&host, guest_artifacts::HOSTILE_COMMAND_SANDBOX);

    // Spinning in wasm: the epoch deadline.
    let mut inv = invocation(&["loop"]);
    inv.timeout = Duration::from_millis(300);
    let ran = run(&host, &hostile, &inv).await;
    assert_eq!(
        ran.end,
        CommandEnd::Timeout {
            after: Duration::from_millis(300)
        }
    );
    assert_eq!(ran.end.to_string(), "timed out after 300ms and was stopped");

    // Parked in a host call: the wall clock.
    let mut inv = invocation(&["sleep"]);
    inv.timeout = Duration::from_millis(300);
    let ran = run(&host, &hostile, &inv).await;
    assert_eq!(
        ran.end,
        CommandEnd::Timeout {
            after: Duration::from_millis(300)
        }
    );

    // Growing memory past the limit.
    let mut inv = invocation(&["alloc"]);
    inv.memory_bytes = 32 << 20;
    let ran = run(&host, &hostile, &inv).await;
    assert_eq!(
        ran.end,
        CommandEnd::OutOfMemory {
            limit_bytes: 32 << 20
        },
        "{ran:?}"
    );
    assert_eq!(
        ran.end.to_string(),
        "ran out of memory: it tried to grow past its 32 MiB limit and was stopped"
    );

    // Printing forever: the byte bound holds and the deadline ends it.
    let mut inv = invocation(&["flood"]);
    inv.timeout = Duration::from_millis(500);
    let ran = run_with(
        &host,
        &hostile,
        &inv,
        OutputLimits {
            bytes_per_stream: 64 * 1024,
            chunks: 8,
        },
    )
    .await;
    assert!(
        matches!(ran.end, CommandEnd::Timeout { .. }),
        "{:?}",
        ran.end
    );
    assert_eq!(ran.stdout.len(), 64 * 1024);
    assert!(ran.dropped_stdout > 0);
}

// ------------------------------------------------------------ test binaries

#[tokio::test]
async fn rust_test_sample_lists_its_tests_and_runs_one_by_exact_name() {
    let dir = PluginDir::new();
    let host = host(&dir);
    let tests = load(&host, guest_artifacts::RUST_TEST_SAMPLE);
    let ran = run(&host, &tests, &invocation(&["--list", "--format", "terse"])).await;
    assert_eq!(ran.end, CommandEnd::Exited(0), "{ran:?}");
    assert_eq!(
        ran.stdout,
        "tests::adds_numbers: test\n\
         tests::fails_with_a_message: test\n\
         tests::hangs_forever: test\n\
         tests::panics_on_purpose: test\n\
         tests::reads_a_workspace_file: test\n\
         tests::traps_without_a_panic: test\n\
         tests::writes_an_artifact: test\n"
    );
    let ran = run(
        &host,
        &tests,
        &invocation(&["--exact", "tests::adds_numbers", "--nocapture"]),
    )
    .await;
    assert_eq!(ran.end, CommandEnd::Exited(0), "{ran:?}");
    assert!(
        ran.stdout.contains("test tests::adds_numbers ... ok"),
        "{}",
        ran.stdout
    );

    // A failing test panics, and a panic aborts the whole binary.
    let ran = run(
        &host,
        &tests,
        &invocation(&["--exact", "tests::fails_with_a_message", "--nocapture"]),
    )
    .await;
    assert!(matches!(ran.end, CommandEnd::Trap { .. }), "{ran:?}");
    assert!(
        ran.stderr.contains("two and two should make five"),
        "{}",
        ran.stderr
    );
}
