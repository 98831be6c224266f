//! Builds the guest plugins (`plugins/`, a separate workspace) for
//! `wasm32-wasip2` so that `cargo build`, `cargo run` and `cargo test` from the
//! repository root always have real, current plugins — the way wasmtime's
//! `crates/test-programs/artifacts/build.rs` builds its test programs.
//!
//! What it guarantees:
//! - every crate in `plugins/examples/<name>` (package `example-<name>`,
//!   handler `example:<name>`), `plugins/hostile/<name>` (package
//!   `hostile-<name>`, handler `hostile:<name>`) and `plugins/fixtures/<name>`
//!   (package `fixture-<name>`) is built in release mode into
//!   `plugins/target`, and each result is checked to be a component, not a
//!   core module;
//! - so is every `wasi:cli/command` program (a binary crate) in
//!   `plugins/commands/<name>` (package `command-<name>`) and
//!   `plugins/hostile-commands/<name>` (package `hostile-command-<name>`);
//! - every crate in `plugins/rust-tests/<name>` (package `rust-test-<name>`)
//!   is built by `cargo test --no-run --target wasm32-wasip2`, the way users
//!   build the test binaries of `kind = "rust-test"` CI steps (profile
//!   `test`, kept small in `plugins/Cargo.toml`);
//! - the examples, the sample commands and the test binaries are copied to
//!   `plugins/<package>.wasm`, so the default plugin directory `./plugins`
//!   works from the repository root (commands are found there by name);
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

/// What a guest crate builds into.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A `cdylib` exporting the `lockstep:plugin` handler world.
    Handler,
    /// A binary crate: a `wasi:cli/command` component.
    Command,
    /// A library whose unit tests `cargo test --no-run` builds into a
    /// `wasi:cli/command` test binary.
    TestBinary,
}

/// A folder of guest crates under `plugins/`.
struct Group {
    folder: &'static str,
    /// Package prefix (`<prefix>-<folder name>`) and handler prefix.
    prefix: &'static str,
    kind: Kind,
    /// Whether the results are copied into the default plugin directory.
    copied: bool,
    /// The `guest_artifacts` list naming every guest of the group.
    list: &'static str,
    /// What the list holds, for its doc comment.
    what: &'static str,
}

const GROUPS: &[Group] = &[
    Group {
        folder: "examples",
        prefix: "example",
        kind: Kind::Handler,
        copied: true,
        list: "EXAMPLES",
        what: "example plugin (copied into `EXAMPLES_DIR`)",
    },
    Group {
        folder: "hostile",
        prefix: "hostile",
        kind: Kind::Handler,
        copied: false,
        list: "HOSTILE",
        what: "hostile plugin (left in `plugins/target`)",
    },
    Group {
        folder: "fixtures",
        prefix: "fixture",
        kind: Kind::Handler,
        copied: false,
        list: "FIXTURES",
        what: "fixture plugin for interop tests (left in `plugins/target`)",
    },
    Group {
        folder: "commands",
        prefix: "command",
        kind: Kind::Command,
        copied: true,
        list: "COMMANDS",
        what: "sample `wasi:cli/command` CI step (copied into `EXAMPLES_DIR`)",
    },
    Group {
        folder: "hostile-commands",
        prefix: "hostile-command",
        kind: Kind::Command,
        copied: false,
        list: "HOSTILE_COMMANDS",
        what: "hostile `wasi:cli/command` CI step (left in `plugins/target`)",
    },
    Group {
        folder: "rust-tests",
        prefix: "rust-test",
        kind: Kind::TestBinary,
        copied: true,
        list: "RUST_TESTS",
        what: "`cargo test --no-run` test binary (copied into `EXAMPLES_DIR`)",
    },
];

/// Written (back-dated) after a successful build; watching it makes a
/// deleted `plugins/target` rebuild the guests.
const STAMP: &str = "lockstep-guests.stamp";

fn main() -> ExitCode {
    match build() {
        Ok(()) => ExitCode::SUCCESS,
        // Exiting successfully after `cargo::error` makes cargo fail the build
        // with the message as one `error:` line; a failing exit would dump
        // the script's raw stdout instead.
        Err(message) => {
            println!("cargo::error={message}");
            ExitCode::SUCCESS
        }
    }
}

/// One guest program.
struct Guest {
    /// e.g. `example:noop` (for commands and test binaries, a label)
    handler: String,
    /// e.g. `example-noop`
    package: String,
    kind: Kind,
    /// The group's `guest_artifacts` list.
    list: &'static str,
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

    // Cargo hashes path packages relative to their workspace root, so two
    // checkouts sharing one CARGO_TARGET_DIR share this script's fingerprint
    // and output, and the generated paths name one checkout. Cargo compares
    // rerun-if-env-changed values in its own environment, where the shell's
    // PWD (unlike CARGO_MANIFEST_DIR, which only this script sees) tells the
    // checkouts apart; building from another directory of the same checkout
    // only costs a rerun.
    println!("cargo::rerun-if-env-changed=PWD");

    // Inputs only: the build writes `.wasm` files into `plugins/` itself.
    // `migrations/` is here for the crate, not the guests: `sqlx::migrate!`
    // embeds it, and on stable Rust cannot tell Cargo so, so without this a
    // new migration file left an incremental build without it.
    let inputs = [
        repo.join("migrations"),
        repo.join("wit"),
        plugins.join("Cargo.toml"),
        plugins.join("Cargo.lock"),
        plugins.join("sdk"),
        plugins.join("examples"),
        plugins.join("hostile"),
        plugins.join("fixtures"),
        plugins.join("commands"),
        plugins.join("hostile-commands"),
        plugins.join("rust-tests"),
    ];
    for input in &inputs {
        println!("cargo::rerun-if-changed={}", input.display());
    }
    println!(
        "cargo::rerun-if-changed={}",
        target_dir.join(STAMP).display()
    );

    ensure_target_installed()?;
    let mut guests = discover(&plugins, &target_dir)?;
    let test_crates: Vec<String> = guests
        .iter()
        .filter(|g| g.kind == Kind::TestBinary)
        .map(|g| g.package.clone())
        .collect();
    let mut build = vec!["build", "--release", "--workspace"];
    for package in &test_crates {
        build.extend(["--exclude", package]);
    }
    run_nested_cargo(&plugins, &target_dir, &build)?;
    if !test_crates.is_empty() {
        let mut test = vec!["test", "--no-run", "--message-format", "json"];
        for package in &test_crates {
            test.extend(["--package", package]);
        }
        let messages = run_nested_cargo(&plugins, &target_dir, &test)?;
        for guest in guests.iter_mut().filter(|g| g.kind == Kind::TestBinary) {
            guest.built = test_executable(&messages, &guest.package)?;
        }
    }

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
    for group in GROUPS {
        let group_dir = plugins.join(group.folder);
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
            let package = format!("{}-{name}", group.prefix);
            let manifest = group_dir.join(&name).join("Cargo.toml");
            let text = fs::read_to_string(&manifest)
                .map_err(|e| format!("cannot read {}: {e}", manifest.display()))?;
            if !text.contains(&format!("name = \"{package}\"")) {
                return Err(format!(
                    "{} must declare `name = \"{package}\"`: guest packages are named after their folder",
                    manifest.display()
                ));
            }
            // A cdylib's file name has underscores, a binary's keeps its
            // package name; a test binary's is only known after the build.
            let built = match group.kind {
                Kind::Handler => release.join(format!("{}.wasm", package.replace('-', "_"))),
                Kind::Command => release.join(format!("{package}.wasm")),
                Kind::TestBinary => PathBuf::new(),
            };
            let path = if group.copied {
                plugins.join(format!("{package}.wasm"))
            } else {
                built.clone()
            };
            guests.push(Guest {
                handler: format!("{}:{name}", group.prefix),
                constant: package.replace('-', "_").to_uppercase(),
                package,
                kind: group.kind,
                list: group.list,
                built,
                path,
                copied: group.copied,
            });
        }
    }
    Ok(guests)
}

/// The test binary cargo built for `package`, from the JSON messages of
/// `cargo test --no-run --message-format json`: the one artifact of the
/// package with an `executable`.
fn test_executable(messages: &str, package: &str) -> Result<PathBuf, String> {
    // Package ids name the package as `…#<package>@<version>` (or
    // `…/<package>#<version>`); match the name followed by `@` or `#`.
    let owned = |line: &str| {
        [format!("#{package}@"), format!("/{package}#")]
            .iter()
            .any(|needle| line.contains(needle.as_str()))
    };
    let mut found = Vec::new();
    for line in messages.lines().filter(|l| owned(l)) {
        let Some(start) = line.find("\"executable\":\"") else {
            continue;
        };
        let rest = &line[start + "\"executable\":\"".len()..];
        let Some(end) = rest.find('"') else { continue };
        found.push(PathBuf::from(&rest[..end]));
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!(
            "`cargo test --no-run` built no test binary for {package}: give it unit tests in src/lib.rs"
        )),
        _ => Err(format!(
            "`cargo test --no-run` built {} test binaries for {package}; a rust-test fixture must have exactly one (unit tests in src/lib.rs, no tests/ folder)",
            found.len()
        )),
    }
}

/// `cargo <args> --target wasm32-wasip2` in `plugins/`, quiet unless it
/// fails. Returns its standard output.
fn run_nested_cargo(plugins: &Path, target_dir: &Path, args: &[&str]) -> Result<String, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(plugins)
        .args(args)
        .args(["--color", "never", "--target", TARGET])
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
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        println!("cargo::warning={line}");
    }
    Err(format!(
        "building the guest plugins failed (`cargo {} --target {TARGET}` in {}); its output is in the warnings above",
        args.join(" "),
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
    for group in GROUPS {
        let _ = writeln!(
            code,
            "/// (name, absolute path) of every {}.\npub const {}: &[(&str, &str)] = &[",
            group.what, group.list
        );
        for guest in guests.iter().filter(|guest| guest.list == group.list) {
            let _ = writeln!(code, "    ({:?}, {}),", guest.handler, guest.constant);
        }
        let _ = writeln!(code, "];\n");
    }
    Ok(code)
}
