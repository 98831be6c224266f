//! The on-disk compile cache: precompiled components (`.cwasm`) so a plugin
//! is compiled once, not at every start.
//!
//! Layout in the cache directory: `<key>.cwasm` (the artifact) and
//! `<key>.cwasm.sha256` (hex sha256 of the artifact), where `<key>` is
//! `sha256(wasm bytes)` + `-` + a digest of the engine's compatibility hash
//! (compiler, target, tunables, features and the wasmtime version) and this
//! cache's format version.
//!
//! **Invariants:**
//! - An entry is never trusted: its checksum is verified on the exact bytes
//!   that are then deserialized. A missing checksum, a mismatch or a
//!   deserialize error means the entry is rebuilt and overwritten (with a
//!   warning), never used.
//! - Writes are atomic: checksum and artifact are each written to a
//!   temporary file and renamed into place, checksum first, so a process that
//!   finds a new artifact always finds its checksum too; one that comes
//!   between the two renames finds no artifact and compiles (a plain miss).
//!   Artifact first made a concurrent first start warn about a "missing
//!   checksum" for an entry that was only half written.
//! - A cache that cannot be written (read-only directory, full disk) costs
//!   a recompile at the next start, never a failed load.
//!
//! The cache also remembers plugins whose `describe()` failed
//! (`<key>-<settings>.failed`, holding the reason), so a plugin that hangs
//! or traps at registration costs its deadline once, not at every start.
//! The key names the file's content and the settings `describe()` ran under
//! (memory, deadline): a changed file or grant is tried again.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Bump when the layout or the meaning of an entry changes.
const CACHE_FORMAT: &str = "lockstep-cwasm-v1";

/// Hex sha256 of `bytes`: the content hash of plugins and cache entries.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// How one component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// A verified entry was used.
    Hit,
    /// There was no entry; compiled and stored.
    Miss,
    /// There was an entry but it was unusable; compiled and overwritten.
    Rebuilt,
}

/// Counters of one load, reported in the load report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    pub hits: usize,
    pub misses: usize,
    pub rebuilt: usize,
}

impl CacheStats {
    pub(crate) fn count(&mut self, outcome: CacheOutcome) {
        match outcome {
            CacheOutcome::Hit => self.hits += 1,
            CacheOutcome::Miss => self.misses += 1,
            CacheOutcome::Rebuilt => self.rebuilt += 1,
        }
    }
}

/// The compile cache of one engine.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
    engine_key: String,
}

/// Feeds `Hash` output into sha256, so the engine hash is stable across
/// processes (std's `DefaultHasher` makes no such promise).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(first)
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

impl CompileCache {
    /// A cache in `dir` (created when the first entry is stored) for
    /// components of `engine`.
    pub fn new(dir: &Path, engine: &Engine) -> Self {
        let mut hasher = Sha256Hasher(Sha256::new());
        CACHE_FORMAT.hash(&mut hasher);
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = hex::encode(&hasher.0.finalize()[..12]);
        Self {
            dir: dir.to_owned(),
            engine_key,
        }
    }

    /// Where the artifact of a component with this wasm sha256 lives.
    pub fn artifact_path(&self, wasm_sha256: &str) -> PathBuf {
        self.dir
            .join(format!("{wasm_sha256}-{}.cwasm", self.engine_key))
    }

    /// Where the failed `describe()` of a plugin with this content hash,
    /// run under `settings`, is remembered.
    pub fn failure_path(&self, wasm_sha256: &str, settings: &str) -> PathBuf {
        self.dir.join(format!(
            "{wasm_sha256}-{}-{settings}.failed",
            self.engine_key
        ))
    }

    /// The reason an earlier load gave for refusing this plugin, if any.
    pub(crate) fn remembered_failure(&self, wasm_sha256: &str, settings: &str) -> Option<String> {
        let path = self.failure_path(wasm_sha256, settings);
        let bytes = super::discovery::read_regular_file(&path, 64 * 1024).ok()?;
        String::from_utf8(bytes).ok()
    }

    /// Remember why this plugin was refused (best effort: a cache that
    /// cannot be written costs the failure again at the next start).
    pub(crate) fn remember_failure(&self, wasm_sha256: &str, settings: &str, reason: &str) {
        let path = self.failure_path(wasm_sha256, settings);
        let written = std::fs::create_dir_all(&self.dir)
            .and_then(|()| write_atomically(&path, reason.as_bytes()));
        if let Err(e) = written {
            tracing::warn!(
                "cannot remember a failed plugin in {}: {e}; it will be tried again at the next start",
                path.display()
            );
        }
    }

    fn checksum_path(artifact: &Path) -> PathBuf {
        let mut name = artifact.as_os_str().to_owned();
        name.push(".sha256");
        PathBuf::from(name)
    }

    /// The component for `wasm` (whose sha256 is `wasm_sha256`): from a
    /// verified cache entry, or compiled (and stored).
    pub fn component(
        &self,
        engine: &Engine,
        wasm: &[u8],
        wasm_sha256: &str,
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let artifact = self.artifact_path(wasm_sha256);
        let outcome = match self.load_verified(engine, &artifact) {
            Ok(Some(component)) => return Ok((component, CacheOutcome::Hit)),
            Ok(None) => CacheOutcome::Miss,
            Err(reason) => {
                tracing::warn!(
                    "compile cache entry {} is unusable ({reason}); rebuilding it",
                    artifact.display()
                );
                CacheOutcome::Rebuilt
            }
        };
        let component = Component::new(engine, wasm)?;
        match component.serialize() {
            Ok(bytes) => {
                if let Err(e) = self.store(&artifact, &bytes) {
                    tracing::warn!(
                        "cannot write compile cache entry {}: {e}; the plugin will be compiled again at the next start",
                        artifact.display()
                    );
                }
            }
            Err(e) => tracing::warn!("cannot serialize a compiled component: {e}"),
        }
        Ok((component, outcome))
    }

    /// `Ok(None)`: no entry. `Err(reason)`: an entry that must not be used.
    fn load_verified(&self, engine: &Engine, artifact: &Path) -> Result<Option<Component>, String> {
        let bytes = match std::fs::read(artifact) {
            Ok(b) => b,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(format!("cannot read it: {e}")),
        };
        let expected = match std::fs::read_to_string(Self::checksum_path(artifact)) {
            Ok(s) => s.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err("its checksum file is missing".to_owned());
            }
            Err(e) => return Err(format!("cannot read its checksum file: {e}")),
        };
        let actual = sha256_hex(&bytes);
        if actual != expected {
            return Err(format!(
                "checksum mismatch: expected {expected}, found {actual}"
            ));
        }
        // SAFETY: `Component::deserialize` runs native code produced by
        // `Component::serialize`; handing it arbitrary bytes is undefined
        // behaviour. These bytes are exactly the ones whose sha256 was just
        // checked against the checksum this cache wrote after writing the
        // artifact (no re-read between check and use), wasmtime additionally
        // checks its own header (version, engine settings) and refuses
        // mismatches, and the cache directory belongs to the operator who
        // runs lockstep: anyone able to write both files there can already
        // run code as that user.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(engine, &bytes) };
        match component {
            Ok(c) => Ok(Some(c)),
            Err(e) => Err(format!("it does not deserialize: {e}")),
        }
    }

    fn store(&self, artifact: &Path, bytes: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        // Checksum first: see the module's invariants.
        let sum = sha256_hex(bytes);
        write_atomically(&Self::checksum_path(artifact), sum.as_bytes())?;
        write_atomically(artifact, bytes)
    }
}

/// Write `bytes` to a unique temporary file beside `path`, then rename it
/// over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
