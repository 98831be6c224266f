//! Builds the guest plugins (`plugins/`, a separate workspace) for
//! `wasm32-wasip2` so that `cargo build`, `cargo run` and `cargo test` from the
//! repository root always have real, current plugins — the way wasmtime's
//! `crates/test-programs/artifacts/build.rs` builds its test programs.
//!
//! What it guarantees:
//! - every crate in `plugins/examples/<name>` (package `example-<name>`,
//!   handler `example:<name>`) and `plugins/hostile/<name>` (package
//!   `hostile-<name>`, handler `hostile:<name>`) is built in release mode into
//!   `plugins/target`, and each result is checked to be a component, not a
//!   core module;
//! - the examples are copied to `plugins/example-<name>.wasm`, so the default
//!   plugin directory `./plugins` works from the repository root;
//! - `$OUT_DIR/guest_artifacts.rs` names every built guest by absolute path
//!   (included by `runtime/src/guest_artifacts.rs`).
//!
//! The nested cargo gets a clean environment: flags, wrappers, profiles and
//! target settings of the outer build say nothing about how to build guests.
//! It shares the outer jobserver (`CARGO_MAKEFLAGS`), so it does not
//! oversubscribe the machine.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::SystemTime;

const TARGET: &str = "wasm32-wasip2";

/// Guest groups: folder under `plugins/`, package/handler prefix, and whether
/// the results are copied into the default plugin directory.
const GROUPS: &[(&str, &str, bool)] =
    &[("examples", "example", true), ("hostile", "hostile", false)];

/// Written (back-dated) after a successful build; watching it makes a
/// deleted `plugins/target` rebuild the guests.
const STAMP: &str = "lockstep-guests.stamp";

fn main() -> ExitCode {
    match build() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            println!("cargo::error={message}");
            ExitCode::FAILURE
        }
    }
}

/// One guest program.
struct Guest {
    /// e.g. `example:noop`
    handler: String,
    /// e.g. `EXAMPLE_NOOP`
    constant: String,
    /// The component as cargo built it, in `plugins/target`.
    built: PathBuf,
    /// Where the host should load it from.
    path: PathBuf,
    /// True when `path` is a copy in the default plugin directory.
    copied: bool,
}

fn build() -> Result<(), String> {
    let manifest_dir = env_path("CARGO_MANIFEST_DIR")?;
    let out_dir = env_path("OUT_DIR")?;
    let repo = manifest_dir
        .parent()
        .ok_or("runtime/ has no parent directory")?
        .to_path_buf();
    let plugins = repo.join("plugins");
    let target_dir = plugins.join("target");

    // Inputs only: the build writes `.wasm` files into `plugins/` itself.
    let inputs = [
        repo.join("wit"),
        plugins.join("Cargo.toml"),
        plugins.join("Cargo.lock"),
        plugins.join("sdk"),
        plugins.join("examples"),
        plugins.join("hostile"),
    ];
    for input in &inputs {
        println!("cargo::rerun-if-changed={}", input.display());
    }
    // The generated constants are absolute paths: a checkout at another path
    // (a moved clone, a second worktree sharing the target dir) must rerun.
    println!("cargo::rerun-if-env-changed=CARGO_MANIFEST_DIR");
    println!(
        "cargo::rerun-if-changed={}",
        target_dir.join(STAMP).display()
    );

    ensure_target_installed()?;
    let guests = discover(&plugins, &target_dir)?;
    run_nested_cargo(&plugins, &target_dir)?;

    // Outputs get the mtime of the newest input, so cargo does not see them as
    // changed since this script started (which would rerun it on every build),
    // yet a deleted output is missing and reruns it.
    let inputs_mtime = newest_mtime(&inputs)?;
    for guest in &guests {
        check_component(&guest.built)?;
        if guest.copied {
            copy_if_changed(&guest.built, &guest.path)?;
            set_mtime(&guest.path, inputs_mtime)?;
            println!("cargo::rerun-if-changed={}", guest.path.display());
        }
    }
    let stamp = target_dir.join(STAMP);
    fs::write(&stamp, "guests built by runtime/build.rs\n")
        .map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
    set_mtime(&stamp, inputs_mtime)?;

    write_if_changed(
        &out_dir.join("guest_artifacts.rs"),
        &generate(&plugins, &guests)?,
    )
}

fn env_path(name: &str) -> Result<PathBuf, String> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .ok_or_else(|| format!("cargo did not set {name} for the build script"))
}

/// Makes sure the standard library for `wasm32-wasip2` is installed, adding
/// it with rustup when it is not (rustup does not do that by itself).
fn ensure_target_installed() -> Result<(), String> {
    let run_this = "the Rust target wasm32-wasip2 is not installed: run `rustup target add wasm32-wasip2` and build again";
    if target_installed()? {
        return Ok(());
    }
    // RUSTUP_TOOLCHAIN (set by the rustup proxy) makes this add the target to
    // the toolchain that is building us.
    let added = Command::new("rustup")
        .args(["target", "add", TARGET])
        .output()
        .map(|out| out.status.success())
        .unwrap_or(false);
    if added && target_installed()? {
        Ok(())
    } else {
        Err(run_this.to_owned())
    }
}

fn target_installed() -> Result<bool, String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| {
            format!(
                "cannot run {} --print sysroot: {e}",
                rustc.to_string_lossy()
            )
        })?;
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Ok(Path::new(&sysroot)
        .join("lib/rustlib")
        .join(TARGET)
        .join("lib")
        .is_dir())
}

/// Lists the guest crates. Folder names fix package names, handler names and
/// file names, so the host's tests can find every guest without a registry.
fn discover(plugins: &Path, target_dir: &Path) -> Result<Vec<Guest>, String> {
    let release = target_dir.join(TARGET).join("release");
    let mut guests = Vec::new();
    for &(folder, prefix, copied) in GROUPS {
        let group_dir = plugins.join(folder);
        let mut names = Vec::new();
        let entries = fs::read_dir(&group_dir)
            .map_err(|e| format!("cannot list {}: {e}", group_dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot list {}: {e}", group_dir.display()))?;
            if entry.path().join("Cargo.toml").is_file() {
                let name = entry.file_name().into_string().map_err(|name| {
                    format!(
                        "guest folder {name:?} in {} is not UTF-8",
                        group_dir.display()
                    )
                })?;
                names.push(name);
            }
        }
        names.sort();
        for name in names {
            let package = format!("{prefix}-{name}");
            let manifest = group_dir.join(&name).join("Cargo.toml");
            let text = fs::read_to_string(&manifest)
                .map_err(|e| format!("cannot read {}: {e}", manifest.display()))?;
            if !text.contains(&format!("name = \"{package}\"")) {
                return Err(format!(
                    "{} must declare `name = \"{package}\"`: guest packages are named after their folder",
                    manifest.display()
                ));
            }
            let built = release.join(format!("{}.wasm", package.replace('-', "_")));
            let path = if copied {
                plugins.join(format!("{package}.wasm"))
            } else {
                built.clone()
            };
            guests.push(Guest {
                handler: format!("{prefix}:{name}"),
                constant: package.replace('-', "_").to_uppercase(),
                built,
                path,
                copied,
            });
        }
    }
    Ok(guests)
}

/// `cargo build --release --target wasm32-wasip2` in `plugins/`, quiet unless
/// it fails.
fn run_nested_cargo(plugins: &Path, target_dir: &Path) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(plugins)
        .args(["build", "--release", "--workspace", "--color", "never"])
        .args(["--target", TARGET])
        .env("CARGO_TARGET_DIR", target_dir);
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let leaks = matches!(
            key,
            "RUSTFLAGS"
                | "CARGO_ENCODED_RUSTFLAGS"
                | "RUSTDOCFLAGS"
                | "CARGO_ENCODED_RUSTDOCFLAGS"
                | "RUSTC_WORKSPACE_WRAPPER"
                | "CARGO_INCREMENTAL"
                | "CARGO_BUILD_TARGET"
                | "CARGO_BUILD_TARGET_DIR"
                | "CARGO_BUILD_RUSTFLAGS"
                | "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER"
        ) || key.starts_with("CARGO_PROFILE_")
            || (key.starts_with("CARGO_TARGET_") && key != "CARGO_TARGET_DIR")
            || key.starts_with("__CARGO");
        if leaks {
            cmd.env_remove(key);
        }
    }
    let out = cmd.output().map_err(|e| {
        format!(
            "cannot run cargo to build the guest plugins in {}: {e}",
            plugins.display()
        )
    })?;
    if out.status.success() {
        return Ok(());
    }
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        println!("cargo::warning={line}");
    }
    Err(format!(
        "building the guest plugins failed (`cargo build --release --target {TARGET}` in {}); its output is in the warnings above",
        plugins.display()
    ))
}

/// A component starts with `\0asm`, a version, and layer 1; a core module has
/// layer 0. The host loads only components.
fn check_component(path: &Path) -> Result<(), String> {
    let bytes = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    match bytes.get(..8) {
        Some([0x00, b'a', b's', b'm', _, _, 0x01, 0x00]) => Ok(()),
        Some([0x00, b'a', b's', b'm', _, _, 0x00, 0x00]) => Err(format!(
            "{} is a core WebAssembly module, not a component: build it for {TARGET} with a cdylib crate type",
            path.display()
        )),
        _ => Err(format!("{} is not a WebAssembly binary", path.display())),
    }
}

fn copy_if_changed(from: &Path, to: &Path) -> Result<(), String> {
    let bytes = fs::read(from).map_err(|e| format!("cannot read {}: {e}", from.display()))?;
    if fs::read(to).ok().as_deref() == Some(bytes.as_slice()) {
        return Ok(());
    }
    // Write beside and rename, so a host scanning `plugins/` never sees half a file.
    let partial = to.with_extension("wasm.partial");
    fs::write(&partial, &bytes).map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
    fs::rename(&partial, to).map_err(|e| format!("cannot move {} into place: {e}", to.display()))
}

fn write_if_changed(path: &Path, text: &str) -> Result<(), String> {
    if fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(());
    }
    fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn newest_mtime(paths: &[PathBuf]) -> Result<SystemTime, String> {
    let mut newest = SystemTime::UNIX_EPOCH;
    for path in paths {
        let meta =
            fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let modified = meta
            .modified()
            .map_err(|e| format!("cannot read the mtime of {}: {e}", path.display()))?;
        newest = newest.max(modified);
        if meta.is_dir() {
            let entries =
                fs::read_dir(path).map_err(|e| format!("cannot list {}: {e}", path.display()))?;
            let children = entries
                .map(|entry| entry.map(|entry| entry.path()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("cannot list {}: {e}", path.display()))?;
            newest = newest.max(newest_mtime(&children)?);
        }
    }
    Ok(newest)
}

fn set_mtime(path: &Path, mtime: SystemTime) -> Result<(), String> {
    fs::File::options()
        .write(true)
        .open(path)
        .and_then(|file| file.set_modified(mtime))
        .map_err(|e| format!("cannot set the mtime of {}: {e}", path.display()))
}

fn utf8(path: &Path) -> Result<&str, String> {
    path.to_str()
        .ok_or_else(|| format!("{} is not a UTF-8 path", path.display()))
}

/// The Rust source of `guest_artifacts.rs`.
fn generate(plugins: &Path, guests: &[Guest]) -> Result<String, String> {
    let mut code = String::new();
    let _ = writeln!(
        code,
        "/// The default plugin directory with the built example plugins (`<repo>/plugins`).\n\
         pub const EXAMPLES_DIR: &str = {:?};\n",
        utf8(plugins)?
    );
    for guest in guests {
        let _ = writeln!(
            code,
            "/// The `{}` component.\npub const {}: &str = {:?};\n",
            guest.handler,
            guest.constant,
            utf8(&guest.path)?
        );
    }
    for (list, copied, what) in [
        (
            "EXAMPLES",
            true,
            "example plugin (copied into `EXAMPLES_DIR`)",
        ),
        (
            "HOSTILE",
            false,
            "hostile plugin (left in `plugins/target`)",
        ),
    ] {
        let _ = writeln!(
            code,
            "/// (handler name, absolute path) of every {what}.\npub const {list}: &[(&str, &str)] = &["
        );
        for guest in guests.iter().filter(|guest| guest.copied == copied) {
            let _ = writeln!(code, "    ({:?}, {}),", guest.handler, guest.constant);
        }
        let _ = writeln!(code, "];\n");
    }
    Ok(code)
}
