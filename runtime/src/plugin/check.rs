//! `lockstep plugins check FILE.wasm`: whether a file is a plugin this host
//! can load, and why not — before anyone deploys it.
//!
//! The check compiles the file with the host's own engine (through the
//! compile cache, so a later load is a cache hit), lists what it exports and
//! imports, names every import the host does not link, and then loads it
//! exactly as a plugin directory scan would (linking, `describe()`, schema
//! compilation) to list its handlers and their input schemas.
//!
//! **Invariant:** the answer is the host's: a file the check passes loads
//! from a plugin directory with the same grants, and a file it fails is
//! refused there for the reasons listed.

use super::PluginError;
use super::cache::{CompileCache, sha256_hex};
use super::discovery::{MAX_PLUGIN_FILE_BYTES, read_regular_file};
use super::grants::Grants;
use super::host::{PluginHost, plugin_linker};
use super::instance_state::RunState;
use super::registry::HandlerInfo;
use super::sandbox;
use serde::Serialize;
use std::path::{Path, PathBuf};
use wasmtime::component::{Component, Linker};

/// Bytes in a wasm page.
const WASM_PAGE: u64 = 64 * 1024;

/// The interface every plugin must export.
pub const HANDLER_EXPORT: &str = "lockstep:plugin/handler@0.1.0";

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
    /// Names the component exports (interfaces and functions).
    pub exports: Vec<String>,
    /// Names the component imports, each with whether the host links it.
    pub imports: Vec<CheckedImport>,
    /// What instantiating it needs from the host's instance pool.
    pub needs: Option<PoolNeeds>,
    /// The handlers `describe()` listed, with their input schemas.
    pub handlers: Vec<HandlerInfo>,
    /// Why the host would refuse it; empty for a good plugin.
    pub problems: Vec<String>,
}

impl CheckReport {
    /// True when the host would load it.
    pub fn is_valid(&self) -> bool {
        self.problems.is_empty()
    }
}

/// One import of the component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckedImport {
    pub name: String,
    pub linked: bool,
    /// Why the host cannot provide it, when it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The pooling allocator's view of one instance of the component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PoolNeeds {
    pub memories: u32,
    pub tables: u32,
    /// Initial size of its largest memory, in bytes.
    pub largest_initial_memory_bytes: u64,
    /// Initial size of its largest table, in elements.
    pub largest_initial_table_elements: u64,
}

/// Check `path` against this host. `Err` only when the check itself could
/// not run (no cache directory, an engine that cannot be built).
pub async fn check_file(path: &Path, cache_dir: Option<&Path>) -> Result<CheckReport, PluginError> {
    let mut report = CheckReport {
        path: path.to_owned(),
        bytes: 0,
        sha256: String::new(),
        exports: Vec::new(),
        imports: Vec::new(),
        needs: None,
        handlers: Vec::new(),
        problems: Vec::new(),
    };
    let wasm = match read_regular_file(path, MAX_PLUGIN_FILE_BYTES) {
        Ok(wasm) => wasm,
        Err(problem) => {
            report.problems.push(problem.to_string());
            return Ok(report);
        }
    };
    report.bytes = wasm.len() as u64;
    report.sha256 = sha256_hex(&wasm);
    if let Some(problem) = header_problem(&wasm) {
        report.problems.push(problem);
        return Ok(report);
    }

    let cache_dir = super::discovery::resolve_cache_dir(cache_dir)?;
    let engine = sandbox::build_engine(Grants::default().memory_bytes())
        .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
    let cache = CompileCache::new(&cache_dir, &engine);
    let component = match cache.component(&engine, &wasm, &report.sha256) {
        Ok((component, _outcome)) => component,
        Err(e) => {
            report
                .problems
                .push(format!("it is not a valid WebAssembly component: {e:#}"));
            return Ok(report);
        }
    };
    let ty = component.component_type();
    report.exports = ty
        .exports(&engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    if !report.exports.iter().any(|e| e == HANDLER_EXPORT) {
        report.problems.push(format!(
            "it does not export {HANDLER_EXPORT} (it exports: {}); build it against the world `plugin` of `lockstep plugins wit`",
            list_or_nothing(&report.exports)
        ));
    }
    report.needs = component.resources_required().map(|r| PoolNeeds {
        memories: r.num_memories,
        tables: r.num_tables,
        largest_initial_memory_bytes: r.max_initial_memory_size.unwrap_or(0) * WASM_PAGE,
        largest_initial_table_elements: r.max_initial_table_size.unwrap_or(0),
    });

    let linker = plugin_linker(&engine)?;
    let unlinked = unlinked_imports(&linker, &component, &engine);
    for (name, _) in ty.imports(&engine) {
        let reason = unlinked
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, r)| r.clone());
        report.imports.push(CheckedImport {
            name: name.to_owned(),
            linked: reason.is_none(),
            reason,
        });
    }
    for (name, reason) in &unlinked {
        report.problems.push(unlinked_problem(name, reason));
    }
    if !report.problems.is_empty() {
        return Ok(report);
    }

    // Everything links: load it as a plugin directory scan would.
    drop(component);
    let (host, load) = PluginHost::load_file(path, Some(&cache_dir)).await?;
    report
        .problems
        .extend(load.failures.into_iter().map(|f| f.reason));
    report.handlers = host
        .handler_names()
        .iter()
        .filter_map(|name| host.handler_info(name).ok().cloned())
        .collect();
    Ok(report)
}

/// A core module or a file that is no WebAssembly at all, in words.
pub(crate) fn header_problem(wasm: &[u8]) -> Option<String> {
    const MAGIC: &[u8] = b"\0asm";
    if !wasm.starts_with(MAGIC) {
        return Some(
            "it is not WebAssembly (no `\\0asm` header); a plugin is a WASI 0.2 component"
                .to_owned(),
        );
    }
    // Bytes 6 and 7 are the layer: 0 for a core module, 1 for a component.
    if wasm.get(6..8) == Some(&[0, 0]) {
        return Some(
            "it is a core WebAssembly module, not a component; build for wasm32-wasip2 (or wrap it with `wasm-tools component new`)".to_owned(),
        );
    }
    None
}

/// The component's imports the host cannot provide, each with the reason.
///
/// wasmtime names only the first unsatisfied import of a link, so presence
/// is probed name by name: defining an exact name in a copy of the linker
/// fails when the host already defines it, and a versioned import is
/// provided when any semver-compatible version of its interface is defined
/// (wasmtime links `wasi:io/poll@0.2.9` to the host's `wasi:io/poll@0.2.x`).
/// What is present but typed differently shows in a link with the absent
/// imports stubbed out.
fn unlinked_imports(
    linker: &Linker<RunState>,
    component: &Component,
    engine: &wasmtime::Engine,
) -> Vec<(String, String)> {
    let mut unlinked = Vec::new();
    for (name, _) in component.component_type().imports(engine) {
        // A fresh copy per import: a probe that succeeded defined its name.
        let mut probe = linker.clone();
        let mut defined = |exact: &str| {
            probe
                .root()
                .func_new_async(exact, |_, _, _, _| Box::new(async { unlinked_call() }))
                .is_err()
        };
        if !compatible_names(name)
            .iter()
            .any(|candidate| defined(candidate))
        {
            unlinked.push((
                name.to_owned(),
                "no interface of this name and a compatible version is linked".to_owned(),
            ));
        }
    }
    // Every name is there: a link can still fail on a type that differs.
    if unlinked.is_empty()
        && let Err(e) = linker.instantiate_pre(component)
    {
        let name = unsatisfied_import_name(&e).unwrap_or_default();
        unlinked.push((name, format!("{:#}", e.root_cause())));
    }
    unlinked
}

/// The exact names that would satisfy an import of `name` by wasmtime's
/// semver rule: `ns:pkg/iface@0.2.9` is met by any `@0.2.z`, `…@1.2.3` by any
/// `@1.y.z`; an unversioned name only by itself. Versions are probed up to
/// 64 per component, which covers every release of WASI 0.2 and lockstep's.
fn compatible_names(name: &str) -> Vec<String> {
    const MAX: u32 = 64;
    let Some((base, version)) = name.split_once('@') else {
        return vec![name.to_owned()];
    };
    let mut parts = version.split('.');
    let (Some(Ok(major)), Some(Ok(minor))) = (
        parts.next().map(str::parse::<u32>),
        parts.next().map(str::parse::<u32>),
    ) else {
        return vec![name.to_owned()];
    };
    let mut names = vec![name.to_owned()];
    let minors = if major == 0 { minor..minor + 1 } else { 0..MAX };
    for minor in minors {
        for patch in 0..MAX {
            let candidate = format!("{base}@{major}.{minor}.{patch}");
            if candidate != name {
                names.push(candidate);
            }
        }
    }
    names
}

/// The import named by wasmtime's "component imports … `NAME`, but a
/// matching implementation was not found in the linker".
fn unsatisfied_import_name(e: &wasmtime::Error) -> Option<String> {
    e.chain().find_map(|cause| {
        let text = cause.to_string();
        let rest = text.strip_prefix("component imports ")?;
        let start = rest.find('`')? + 1;
        let end = start + rest[start..].find('`')?;
        Some(rest[start..end].to_owned())
    })
}

fn unlinked_call() -> wasmtime::Result<()> {
    wasmtime::bail!("this import is not linked by the lockstep host")
}

/// One sentence on an import the host does not link, with the usual fix.
fn unlinked_problem(name: &str, reason: &str) -> String {
    if name.is_empty() {
        return format!("it cannot be linked against the host: {reason}");
    }
    let hint = if name.starts_with("wasi:http/") {
        "; with componentize-js, build with `--disable http fetch-event`"
    } else if name.starts_with("lockstep:plugin/") {
        "; build it against the WIT of `lockstep plugins wit`"
    } else {
        ""
    };
    format!("it imports {name}, which the host does not link{hint}")
}

fn list_or_nothing(names: &[String]) -> String {
    if names.is_empty() {
        "nothing".to_owned()
    } else {
        names.join(", ")
    }
}
