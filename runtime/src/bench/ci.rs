//! `lockstep bench ci`: what a pipeline step costs, and how fast a Rust
//! test binary runs one fresh instance per test.
//!
//! - `step_overhead`: a pipeline of independent no-op steps (`command-script`
//!   with no arguments) run end to end through the engine — validation,
//!   submit, claim, sandbox, `/out`, completion — per step; beside it, one
//!   bare run of the same component in the command host.
//! - `rust_tests`: the sample crate's test binary (`rust-test-sample`), the
//!   tests that can run natively too (not the one that hangs nor the one
//!   that aborts), each in a fresh instance; and the same tests run natively
//!   by the binary `cargo test` builds for this machine, in one process, as
//!   `cargo test` runs them. Both in one run of the benchmark, as a ratio.
//!
//! Invariant: measures only; compiling (the components, the native test
//! binary) and a warm-up run are excluded from the figures.

use super::percentile;
use crate::engine::pipeline::StepRunConfig;
// Flags of other programs (libtest, cargo), spelled without a literal.
use crate::engine::pipeline::rust_test::libtest as flag;
use crate::engine::{Engine, EngineConfig};
use crate::guest_artifacts;
use crate::model::TenantId;
use crate::plugin::{CommandHost, Invocation, PluginHost, output_channel};
use crate::spec::pipeline::PipelineOptions;
use anyhow::Context as _;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tests of the sample crate that end the same way natively and in wasm.
const PORTABLE_TESTS: [&str; 5] = [
    "tests::adds_numbers",
    "tests::fails_with_a_message",
    "tests::panics_on_purpose",
    "tests::reads_a_workspace_file",
    "tests::writes_an_artifact",
];

/// Run both cases: `steps` no-op steps, and the sample tests `rounds` times.
pub async fn ci(
    plugins: Arc<PluginHost>,
    cache_dir: &Path,
    steps: u32,
    rounds: u32,
    slots: usize,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let commands = Arc::new(CommandHost::new(cache_dir).context("starting the command host")?);
    let mut out = vec![step_overhead(plugins, commands.clone(), steps, slots).await?];
    out.push(rust_tests(&commands, rounds, slots).await?);
    Ok(out)
}

async fn step_overhead(
    plugins: Arc<PluginHost>,
    commands: Arc<CommandHost>,
    steps: u32,
    slots: usize,
) -> anyhow::Result<serde_json::Value> {
    let dir = tempfile::tempdir().context("a temporary workspace")?;
    let mut text = String::from("name = \"bench\"\n");
    for i in 0..steps {
        text.push_str(&format!(
            "[[steps]]\nkey = \"s{i}\"\ncomponent = \"{}\"\n",
            guest_artifacts::COMMAND_SCRIPT
        ));
    }
    let file = dir.path().join("lockstep-ci.toml");
    std::fs::write(&file, text).context("writing the benchmark pipeline")?;
    let db = format!("sqlite://{}", dir.path().join("bench.db").display());
    let engine = Engine::open(&db, plugins.clone(), EngineConfig::default()).await?;
    let tenant = TenantId("bench".into());
    let options = PipelineOptions::default();
    let pipeline = crate::engine::pipeline::load(&plugins, &commands, &file, &options)?;
    let started = Instant::now();
    let run = engine.start_pipeline(&tenant, &pipeline).await?;
    let config = StepRunConfig {
        slots,
        ..StepRunConfig::default()
    };
    engine
        .run_steps(tenant.clone(), run.job, commands.clone(), config)
        .finished()
        .await;
    let total = started.elapsed();
    let state = engine.progress(&tenant, run.job).await?.job.state;

    // One bare run of the same component, for comparison.
    let command = commands.load(Path::new(guest_artifacts::COMMAND_SCRIPT))?;
    let invocation = Invocation {
        program: "noop".into(),
        args: Vec::new(),
        env: Vec::new(),
        dirs: Vec::new(),
        memory_bytes: 64 << 20,
        timeout: Duration::from_secs(30),
    };
    let mut bare = Vec::new();
    for i in 0..(steps + 20) {
        let (sender, mut receiver) = output_channel(Default::default());
        let t = Instant::now();
        let (end, _) = tokio::join!(commands.run(&command, &invocation, sender), async {
            while receiver.recv().await.is_some() {}
        });
        anyhow::ensure!(end.succeeded(), "the no-op step {end}");
        if i >= 20 {
            bare.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    bare.sort_by(f64::total_cmp);
    Ok(json!({
        "bench": "ci",
        "case": "step_overhead",
        "steps": steps,
        "slots": slots,
        "run_state": state.to_string(),
        "total_s": total.as_secs_f64(),
        "per_step_ms": total.as_secs_f64() * 1000.0 / f64::from(steps.max(1)),
        "steps_per_s": f64::from(steps) / total.as_secs_f64(),
        "bare_run_ms_p50": percentile(&bare, 50.0),
        "bare_run_ms_p99": percentile(&bare, 99.0),
    }))
}

async fn rust_tests(
    commands: &CommandHost,
    rounds: u32,
    slots: usize,
) -> anyhow::Result<serde_json::Value> {
    let binary = commands.load(Path::new(guest_artifacts::RUST_TEST_SAMPLE))?;
    let workspace = tempfile::tempdir().context("a temporary workspace")?;
    std::fs::create_dir_all(workspace.path().join("data"))?;
    std::fs::write(
        workspace.path().join("data/greeting.txt"),
        "hello from the workspace\n",
    )?;
    let out = tempfile::tempdir().context("a temporary /out")?;
    let invocation = |name: &str| Invocation {
        program: "rust-test-sample".into(),
        args: vec![name.to_string(), flag("exact"), flag("nocapture")],
        env: Vec::new(),
        dirs: vec![
            crate::plugin::Preopen {
                host: workspace.path().to_path_buf(),
                guest: "/workspace".into(),
                writable: false,
            },
            crate::plugin::Preopen {
                host: out.path().to_path_buf(),
                guest: "/out".into(),
                writable: true,
            },
        ],
        memory_bytes: 256 << 20,
        timeout: Duration::from_secs(30),
    };
    let gate = Arc::new(tokio::sync::Semaphore::new(slots.max(1)));
    let run_all = || async {
        let runs = PORTABLE_TESTS.iter().map(|name| {
            let gate = gate.clone();
            let inv = invocation(name);
            let binary = &binary;
            async move {
                let _permit = gate.acquire_owned().await;
                let (sender, mut receiver) = output_channel(Default::default());
                let (end, _) = tokio::join!(commands.run(binary, &inv, sender), async {
                    while receiver.recv().await.is_some() {}
                });
                end
            }
        });
        futures_util::future::join_all(runs).await
    };
    // Warm-up, and proof the tests ran: adds_numbers passes, the two that
    // panic trap, reads_a_workspace_file passes, writes_an_artifact passes.
    let ends: Vec<bool> = run_all().await.iter().map(|e| e.succeeded()).collect();
    anyhow::ensure!(
        ends == [true, false, false, true, true],
        "the sample tests did not end as expected (passed: {ends:?})"
    );
    let started = Instant::now();
    for _ in 0..rounds {
        run_all().await;
    }
    let wasm_s = started.elapsed().as_secs_f64();
    let tests = (PORTABLE_TESTS.len() as u32 * rounds) as f64;

    let native = native_test_binary().await?;
    let native_run = || {
        let mut c = std::process::Command::new(&native);
        for name in ["tests::hangs_forever", "tests::traps_without_a_panic"] {
            c.arg(flag("skip")).arg(name);
        }
        c.arg(flag("quiet"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
    };
    native_run().context("running the native test binary")?;
    let started = Instant::now();
    for _ in 0..rounds {
        native_run().context("running the native test binary")?;
    }
    let native_s = started.elapsed().as_secs_f64();
    let wasm_rate = tests / wasm_s;
    let native_rate = tests / native_s;
    Ok(json!({
        "bench": "ci",
        "case": "rust_tests",
        "tests_per_round": PORTABLE_TESTS.len(),
        "rounds": rounds,
        "slots": slots,
        "wasm_one_instance_per_test_tests_per_s": wasm_rate,
        "native_cargo_test_tests_per_s": native_rate,
        "native_over_wasm": native_rate / wasm_rate,
    }))
}

/// Build the sample crate's tests for this machine (not measured) and
/// return the test binary's path.
async fn native_test_binary() -> anyhow::Result<PathBuf> {
    let manifest =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/rust-tests/sample/Cargo.toml");
    let target = std::env::temp_dir().join("lockstep-bench-native-tests");
    let output = tokio::process::Command::new("cargo")
        .arg("test")
        .arg(flag("no-run"))
        .arg(flag("manifest-path"))
        .arg(&manifest)
        .arg(flag("target-dir"))
        .arg(&target)
        .arg(flag("message-format"))
        .arg("json")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .await
        .context("running cargo to build the native tests (is cargo on PATH?)")?;
    anyhow::ensure!(
        output.status.success(),
        "building the sample tests natively failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["profile"]["test"] == true)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo built no test executable for the sample crate")
}
