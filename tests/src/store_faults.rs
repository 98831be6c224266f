//! The database under faults, met from the outside: real `lockstep`
//! processes on real SQLite files and PostgreSQL databases — twenty processes
//! racing to create one database, URLs no other process could open, another
//! application's file, a file this user may not write, a server that is not
//! there, a name PostgreSQL cannot store.

use crate::crash_recovery::{assert_finished_exactly_once, fanin_job, spawn_serve, wait_for};
use crate::harness::{Harness, cli_bin, test_cache_dir};
use crate::postgres_test_db::with_pg;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// A scratch directory with an empty plugin directory: these tests submit
/// agent tasks, which need no plugin.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("no-plugins")).expect("plugin dir");
        Scratch { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn sqlite(&self, name: &str) -> String {
        format!("sqlite://{}", self.path(name).display())
    }

    /// `lockstep --db DB ARGS…` in the scratch directory.
    fn command(&self, db: &str, args: &[&str]) -> Command {
        let mut command = Command::new(cli_bin());
        command
            .current_dir(self.dir.path())
            .env_remove("LOCKSTEP_DB")
            .env_remove("DATABASE_URL")
            .args(["--db", db, "--plugins"])
            .arg(self.path("no-plugins"))
            .arg("--cache-dir")
            .arg(test_cache_dir())
            .args(args)
            .stdin(Stdio::null());
        command
    }

    fn run(&self, db: &str, args: &[&str]) -> Output {
        self.command(db, args).output().expect("run lockstep")
    }

    /// A job file of one agent task (no plugin needed) named `name`.
    fn agent_job(&self, name: &str) -> String {
        let path = self.path(&format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "name = \"{name}\"\n[[stages]]\nname = \"s\"\nexecutor = \"agent\"\ntasks = [{{ title = \"t\" }}]\n"
            ),
        )
        .expect("write job file");
        path.display().to_string()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn job_count(scratch: &Scratch, db: &str) -> usize {
    let out = scratch.run(db, &["jobs", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let jobs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("jobs json");
    jobs.len()
}

/// Names of the tables in a SQLite file, read without lockstep.
async fn sqlite_tables(path: &Path) -> Vec<String> {
    use sqlx::{ConnectOptions, Connection};
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .connect()
        .await
        .expect("open the file with sqlx");
    let tables =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&mut conn)
            .await
            .expect("list tables");
    conn.close().await.expect("close");
    tables
}

#[test]
fn urls_no_other_process_could_open_are_refused_with_a_sentence() {
    let scratch = Scratch::new();
    let job = scratch.agent_job("vanishing");
    let memory = "in-memory SQLite database lives and dies with one process";
    let empty = "the URL names no file";
    let uri = "a SQLite URI filename (file:…) carries options of its own";
    for (url, why) in [
        ("sqlite::memory:", memory),
        ("sqlite://:memory:", memory),
        ("sqlite://data.db?mode=memory", memory),
        // Spellings SQLite reads as the same thing.
        ("sqlite://%3Amemory%3A", memory),
        ("sqlite://data.db?mode=%6Demory", memory),
        ("sqlite://file::memory:", uri),
        ("sqlite://file:data.db%3Fmode%3Dmemory", uri),
        ("sqlite://", empty),
        ("sqlite:", empty),
    ] {
        for args in [vec!["submit", job.as_str()], vec!["serve"]] {
            let out = scratch.run(url, &args);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{url} {args:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{url}: {err}");
            assert!(
                err.starts_with(&format!("error: could not open the database {url}: ")),
                "{url}: {err}"
            );
            assert!(err.contains(why), "{url}: {err}");
            assert!(err.contains("sqlite://lockstep.db"), "{url}: {err}");
            assert_eq!(stdout(&out), "", "{url}: nothing may be reported as done");
        }
    }
    let left: Vec<_> = std::fs::read_dir(scratch.dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n != "no-plugins" && n != "vanishing.toml")
        .collect();
    assert_eq!(left, Vec::<String>::new(), "no database file was created");
}

#[test]
fn an_unreachable_postgres_fails_at_once_naming_host_and_port() {
    // A port nothing listens on: bind one, then let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let scratch = Scratch::new();
    let url = format!("postgres://postgres:s3cret@127.0.0.1:{port}/lockstep");
    let out = scratch.run(&url, &["jobs"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err,
        format!(
            "error: could not open the database postgres://postgres:***@127.0.0.1:{port}/lockstep: \
             cannot connect to PostgreSQL at 127.0.0.1:{port}: Connection refused (os error 111)\n"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_applications_sqlite_file_is_refused_and_left_untouched() {
    let scratch = Scratch::new();
    let foreign = scratch.path("app.db");
    {
        use sqlx::{ConnectOptions, Connection};
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&foreign)
            .create_if_missing(true)
            .connect()
            .await
            .expect("create the other application's file");
        sqlx::query("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
            .execute(&mut conn)
            .await
            .expect("create table");
        sqlx::query("INSERT INTO users (name) VALUES ('ada')")
            .execute(&mut conn)
            .await
            .expect("insert");
        conn.close().await.expect("close");
    }
    let before = std::fs::read(&foreign).expect("read the file");
    let job = scratch.agent_job("intruder");
    let db = format!("sqlite://{}", foreign.display());
    for args in [vec!["jobs"], vec!["submit", job.as_str()], vec!["migrate"]] {
        let out = scratch.run(&db, &args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(
            err,
            format!(
                "error: could not open the database {db}: {} is not a lockstep database: it holds another application's tables (users) and none of lockstep's; lockstep adds nothing to it\n",
                foreign.display()
            ),
            "{args:?}"
        );
    }
    // The same file, its name percent-encoded: SQLite opens what the name
    // decodes to, and so is it judged.
    let encoded = format!(
        "sqlite://{}",
        foreign.display().to_string().replace(".db", "%2Edb")
    );
    let out = scratch.run(&encoded, &["submit", &job]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "{} is not a lockstep database: it holds another application's tables (users)",
            foreign.display()
        )),
        "{}",
        stderr(&out)
    );
    assert_eq!(sqlite_tables(&foreign).await, ["users"]);
    assert_eq!(
        std::fs::read(&foreign).expect("read the file"),
        before,
        "not a byte of the file changed"
    );
    // A file that is not SQLite at all.
    let text = scratch.path("notes.db");
    std::fs::write(&text, "these are my notes, not a database\n".repeat(200)).expect("write");
    let db = format!("sqlite://{}", text.display());
    let out = scratch.run(&db, &["jobs"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "error: could not open the database {db}: {} is not a lockstep database: it is not a SQLite database\n",
            text.display()
        )
    );
}

/// Runs `command` as the unprivileged user `nobody` when the tests run as
/// root (for whom file modes are no obstacle), so a mode of 0444 means what
/// it says.
fn as_unprivileged(command: &mut Command) {
    #[allow(unsafe_code)]
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        use std::os::unix::process::CommandExt;
        #[allow(unsafe_code)]
        // SAFETY: the closure runs in the forked child before exec and calls
        // only async-signal-safe functions (setgroups, setgid, setuid).
        unsafe {
            command.pre_exec(|| {
                let nobody = 65534;
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(nobody) != 0
                    || libc::setuid(nobody) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

#[test]
fn a_database_this_user_may_not_write_can_still_be_read() {
    let scratch = Scratch::new();
    let db = scratch.sqlite("shared.db");
    let job = scratch.agent_job("kept");
    let out = scratch.run(&db, &["submit", &job]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    use std::os::unix::fs::PermissionsExt;
    let set_mode = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    // The file and its directory may be read, not written: SQLite cannot
    // create the shared-memory file it reads a WAL database through.
    set_mode(scratch.dir.path(), 0o755);
    set_mode(&scratch.path("shared.db"), 0o444);
    for entry in std::fs::read_dir(scratch.dir.path()).expect("list") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with("shared.db-") {
            set_mode(&path, 0o444);
        }
    }
    let reader = |args: &[&str]| {
        let mut command = scratch.command(&db, args);
        as_unprivileged(&mut command);
        command.output().expect("run lockstep")
    };
    let out = reader(&["jobs", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let jobs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("jobs json");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["name"], "kept");
    let out = reader(&["status", "1", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Writing is refused with a sentence naming the file.
    let other = scratch.agent_job("refused");
    let out = reader(&["submit", &other]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "error: the database {} cannot be written by this process (no write permission, or a read-only file system); commands that only read it work\n",
            scratch.path("shared.db").display()
        )
    );
    set_mode(&scratch.path("shared.db"), 0o644);
    assert_eq!(job_count(&scratch, &db), 1);
}

/// Reading a database this user may not write creates nothing beside it:
/// SQLite would create the `-wal` and `-shm` files it reads WAL through with
/// the database's mode (0444) and the reader as owner, and the database's
/// owner could not write again until someone removed them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_database_this_user_may_not_write_creates_no_files_beside_it() {
    use sqlx::{ConnectOptions, Connection};
    let scratch = Scratch::new();
    let db = scratch.sqlite("kept.db");
    let job = scratch.agent_job("kept");
    let out = scratch.run(&db, &["submit", &job]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Closed as the last process closes it: SQLite folds the WAL into the
    // file and removes `-wal` and `-shm`.
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(scratch.path("kept.db"))
        .connect()
        .await
        .expect("open");
    sqlx::query("SELECT count(*) FROM jobs")
        .fetch_one(&mut conn)
        .await
        .expect("read");
    conn.close().await.expect("close");
    let beside = || {
        let mut names: Vec<String> = std::fs::read_dir(scratch.dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("kept.db"))
            .collect();
        names.sort();
        names
    };
    assert_eq!(beside(), ["kept.db"]);
    use std::os::unix::fs::PermissionsExt;
    // Anyone may write the directory; nobody but root may write the file.
    std::fs::set_permissions(scratch.dir.path(), std::fs::Permissions::from_mode(0o777))
        .expect("chmod dir");
    std::fs::set_permissions(
        scratch.path("kept.db"),
        std::fs::Permissions::from_mode(0o444),
    )
    .expect("chmod file");
    let mut command = scratch.command(&db, &["jobs", "--json"]);
    as_unprivileged(&mut command);
    let out = command.output().expect("run lockstep");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let jobs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("jobs json");
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        beside(),
        ["kept.db"],
        "the reader left files beside the database"
    );
}

/// Starts `n` submits of distinct jobs at once and returns their outputs.
fn racing_submits(scratch: &Scratch, db: &str, n: usize) -> Vec<Output> {
    let jobs: Vec<String> = (0..n)
        .map(|i| scratch.agent_job(&format!("race-{i}")))
        .collect();
    let children: Vec<_> = jobs
        .iter()
        .map(|job| {
            scratch
                .command(db, &["submit", job])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start lockstep submit")
        })
        .collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().expect("wait"))
        .collect()
}

fn assert_all_submitted(outputs: &[Output]) {
    for (i, out) in outputs.iter().enumerate() {
        assert_eq!(
            (out.status.code(), stderr(out)),
            (Some(0), String::new()),
            "submit {i} failed"
        );
    }
}

#[test]
fn twenty_processes_racing_to_create_one_sqlite_file_all_succeed() {
    let scratch = Scratch::new();
    let db = scratch.sqlite("new.db");
    let outputs = racing_submits(&scratch, &db, 20);
    assert_all_submitted(&outputs);
    assert_eq!(job_count(&scratch, &db), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_processes_racing_to_migrate_one_new_postgres_database_all_succeed() {
    with_pg(|db| async move {
        let scratch = Scratch::new();
        let outputs = racing_submits(&scratch, &db.url, 20);
        assert_all_submitted(&outputs);
        assert_eq!(job_count(&scratch, &db.url), 20);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_a_name_is_refused_alike_by_sqlite_and_postgres() {
    with_pg(|pg| async move {
        let scratch = Scratch::new();
        let path = scratch.path("nul.toml");
        std::fs::write(
            &path,
            "name = \"nul\"\n[[stages]]\nname = \"a\\u0000b\"\nexecutor = \"agent\"\ntasks = [{ title = \"t\" }]\n",
        )
        .expect("write job file");
        let job = path.display().to_string();
        for db in [scratch.sqlite("nul.db"), pg.url.clone()] {
            let out = scratch.run(&db, &["submit", &job]);
            assert_eq!(out.status.code(), Some(2), "{db}: {}", stderr(&out));
            assert_eq!(
                stderr(&out),
                format!(
                    "error: {job}: /stages/0/name: stage name contains the control character U+0000 at byte 1; NUL cannot be stored\n"
                ),
                "{db}"
            );
            assert_eq!(job_count(&scratch, &db), 0, "{db}: nothing was written");
        }
    })
    .await;
}

/// A statement that takes longer than sqlx's one-second alert threshold (a
/// large submit; here a query kept waiting on a lock another session holds)
/// prints nothing: sqlx would warn with the statement's whole SQL text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_statement_prints_no_sql_text() {
    with_pg(|pg| async move {
        use sqlx::Connection;
        let scratch = Scratch::new();
        assert_eq!(job_count(&scratch, &pg.url), 0, "migrated, no jobs");
        let mut holder = sqlx::PgConnection::connect(&pg.url)
            .await
            .expect("connect");
        sqlx::query("BEGIN").execute(&mut holder).await.expect("begin");
        sqlx::query("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
            .execute(&mut holder)
            .await
            .expect("lock jobs");
        let child = scratch
            .command(&pg.url, &["jobs"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start lockstep jobs");
        // Wait until its query waits for the lock, then keep it waiting past
        // the threshold.
        let mut watcher = sqlx::PgConnection::connect(&pg.url)
            .await
            .expect("connect");
        let mut waiting = false;
        for _ in 0..600 {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&mut watcher)
            .await
            .expect("pg_stat_activity");
            if n > 0 {
                waiting = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(waiting, "lockstep jobs never waited for the lock");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        sqlx::query("ROLLBACK").execute(&mut holder).await.expect("unlock");
        let out = tokio::task::spawn_blocking(move || child.wait_with_output().expect("wait"))
            .await
            .expect("join");
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(stderr(&out), "");
        let _ = holder.close().await;
        let _ = watcher.close().await;
    })
    .await;
}

/// A real, small file system: a tmpfs mounted for one test (the tests run as
/// root, as CI does; mounting needs it). Unmounted when dropped.
struct SmallDisk {
    mount_point: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let mount_point = tempfile::tempdir().expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(mount_point.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test fills a real disk: it mounts a {size} tmpfs, which needs root (or CAP_SYS_ADMIN): {}",
            stderr(&out)
        );
        SmallDisk { mount_point }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.mount_point.path().join(name)
    }

    /// Fills every free byte with one file, which is returned; removing it
    /// frees the space again.
    fn fill(&self) -> PathBuf {
        let path = self.path("filler");
        let mut file = std::fs::File::create(&path).expect("create the filler");
        for chunk in [1 << 20, 4 << 10, 1] {
            let bytes = vec![0u8; chunk];
            while file.write_all(&bytes).is_ok() {}
        }
        let _ = file.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily: a process of a failed test may still hold a file open.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.mount_point.path())
            .status();
    }
}

/// The text of every `serve` log in `dir`.
fn serve_logs(dir: &Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).expect("list logs") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with("serve-") && name.ends_with(".log") {
            text.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
        }
    }
    text
}

/// A `lockstep serve` killed when the test ends early (a failed assertion),
/// so none outlives its test.
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn take(mut self) -> Child {
        self.0.take().expect("the child is still held")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// SIGTERM, then the exit code (panics if it does not exit within 60 s).
fn terminate(mut child: Child) -> Option<i32> {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on a child we spawned and have not yet reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    for _ in 0..600 {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("lockstep serve did not stop within 60 s of SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_until_space_returns_then_serve_carries_on() {
    let disk = SmallDisk::mount("64m");
    let logs = tempfile::tempdir().expect("log dir");
    let db = format!("sqlite://{}", disk.path("lockstep.db").display());
    let h = Harness::on(db, logs).await;
    let job = h.submit(&fanin_job(10_000)).await;
    let serve = KillOnDrop(Some(spawn_serve(&h, 4)));
    let mut finished = false;
    wait_for(&h, job, |done, terminal| {
        finished = terminal;
        done >= 1_000 || terminal
    })
    .await;
    assert!(!finished, "the job finished before the disk could fill");
    let filler = disk.fill();
    // Writes fail now: wait until serve has met the full disk.
    let mut met = false;
    for _ in 0..1200 {
        if serve_logs(h.dir.path()).contains("database or disk is full") {
            met = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        met,
        "serve never reported the full disk: {}",
        serve_logs(h.dir.path())
    );
    // Keep it full a little longer, then free the space.
    tokio::time::sleep(Duration::from_secs(2)).await;
    std::fs::remove_file(&filler).expect("free the disk");
    wait_for(&h, job, |_, terminal| terminal).await;
    assert_eq!(
        terminate(serve.take()),
        Some(0),
        "{}",
        serve_logs(h.dir.path())
    );
    assert_finished_exactly_once(&h, job, 10_000).await;

    let log = serve_logs(h.dir.path());
    assert!(
        !log.contains("non-zero transaction depth"),
        "the writer was wedged: {log}"
    );
    // Each loop says once that it fails and once that it works again.
    let mut outages = 0;
    for what in [
        "claiming tasks",
        "recording completions",
        "rescuing expired leases",
    ] {
        let failed = log.matches(&format!("{what} failed: ")).count();
        let recovered = log.matches(&format!("{what} works again after ")).count();
        assert_eq!(failed, recovered, "{what}: {log}");
        outages += failed;
    }
    assert!(outages >= 1, "no outage was logged: {log}");
    // The failed commits left the writer inside a transaction: it was
    // replaced (said once; later replacements are counted quietly).
    assert_eq!(
        log.matches("the writer connection is replaced by a new one")
            .count(),
        1,
        "{log}"
    );
    let stopped = log
        .lines()
        .find(|l| l.starts_with("stopped: "))
        .unwrap_or_else(|| panic!("no summary line: {log}"));
    assert!(
        !stopped.ends_with(", 0 failed database calls"),
        "the failures were not counted: {stopped}"
    );
}
