//! Shared set-up for engine and CLI tests: a fresh SQLite file per test, the
//! real example plugins (loaded once per test process), and helpers to run a
//! job to the end and read its event log.

use lockstep::engine::{Engine, EngineConfig, JobProgress, WorkerConfig};
use lockstep::guest_artifacts;
use lockstep::model::{Event, JobId, TenantId};
use lockstep::plugin::{HostConfig, PluginHost};
use lockstep::spec::{self, Format};
use lockstep::store;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

static EXAMPLES: OnceCell<Arc<PluginHost>> = OnceCell::const_new();

/// Compile cache shared by the tests of every run, under `target/` (Cargo's
/// directory for integration tests' files): the examples compile once, and
/// nothing is left behind in the system's temporary directory. Sharing is
/// safe: entries are keyed by content, written by rename and verified before
/// use (`plugin::cache`).
pub fn test_cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("lockstep-test-cache")
}

/// The example plugins, loaded once per test process.
pub async fn example_plugins() -> Arc<PluginHost> {
    EXAMPLES
        .get_or_init(|| async {
            let config = HostConfig::new(
                vec![PathBuf::from(guest_artifacts::EXAMPLES_DIR)],
                Some(test_cache_dir()),
                true,
            );
            let (host, _report) = PluginHost::load(config)
                .await
                .expect("the example plugins built by runtime/build.rs load");
            Arc::new(host)
        })
        .await
        .clone()
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub db_url: String,
    pub engine: Arc<Engine>,
    /// The engine's store, for tests that act below the engine (an agent's
    /// raw claim, a row read back).
    pub store: Arc<dyn store::Store>,
    pub tenant: TenantId,
}

impl Harness {
    /// A fresh database and the example plugins; retries back off 10 ms.
    pub async fn new() -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let db_url = format!("sqlite://{}", dir.path().join("lockstep.db").display());
        Harness::on(db_url, dir).await
    }

    /// The same harness on any database URL (e.g. a fresh Postgres database);
    /// `dir` holds logs and scratch files.
    pub async fn on(db_url: String, dir: tempfile::TempDir) -> Harness {
        let store = store::open(&db_url).await.expect("open sqlite store");
        let config = EngineConfig {
            retry_base: Duration::from_millis(10),
            retry_cap: Duration::from_millis(50),
            ..EngineConfig::default()
        };
        let engine = Engine::new(store.clone(), example_plugins().await, config);
        Harness {
            dir,
            db_url,
            engine,
            store,
            tenant: TenantId("local".into()),
        }
    }

    pub async fn submit(&self, toml: &str) -> JobId {
        let job =
            spec::parse_job_str(toml, Format::Toml, &Default::default()).expect("test job parses");
        self.engine
            .submit(&self.tenant, job)
            .await
            .expect("submit")
            .job_id
    }

    /// Run workers until the job is terminal (at most two minutes).
    pub async fn run_to_end(&self, job: JobId) -> JobProgress {
        let pool = self.engine.start_workers(WorkerConfig {
            slots: 32,
            lease: Duration::from_secs(30),
            ..WorkerConfig::default()
        });
        let p = self
            .engine
            .wait(&self.tenant, job, Some(Duration::from_secs(120)), |_| {})
            .await
            .expect("wait");
        pool.shutdown().await;
        assert!(
            p.job.state.is_terminal(),
            "job did not finish in time: {:?}",
            p.job
        );
        p
    }

    pub async fn events(&self, job: JobId) -> Vec<Event> {
        all_events(&self.engine, &self.tenant, job).await
    }
}

pub async fn all_events(engine: &Engine, tenant: &TenantId, job: JobId) -> Vec<Event> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = engine
            .events(tenant, job, after, 5000)
            .await
            .expect("events");
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        out.extend(page);
    }
    out
}

/// The real `lockstep` CLI binary built for the tests.
pub fn cli_bin() -> &'static str {
    env!("CARGO_BIN_EXE_lockstep-cli-under-test")
}
