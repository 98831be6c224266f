//! Which plugin files the operator trusts, decided before anything is
//! compiled: the plugin directories' owners and modes, the pins of
//! `plugins.lock`, and minisign (ed25519) signatures checked offline against
//! the public keys in `--trusted-keys DIR`.
//!
//! **Invariants:**
//! - A plugin directory (and each plugin file) that is group- or
//!   world-writable, or owned by a user other than the one running lockstep
//!   (or root), is refused with the reason: whoever can write there could
//!   swap a plugin under the operator.
//! - Digests and signatures are checked on the exact bytes that are then
//!   compiled (Invariant 33) ([`Trust::admit`] takes them, it does not re-read the file).
//! - With `--require-lock` a file whose sha256 differs from its pin in its
//!   directory's `plugins.lock`, or that has no pin, is refused; with
//!   `--require-signatures` an unsigned file, one signed by a key that is
//!   not trusted, and one whose signature does not verify are refused.
//!   Without those flags the lock is not consulted and a signature that is
//!   present is still verified when trusted keys are configured: a wrong
//!   signature is never ignored.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// The lock file of a plugin directory.
pub const LOCK_FILE: &str = "plugins.lock";
/// Appended to a plugin's file name to name its detached signature.
pub const SIGNATURE_SUFFIX: &str = ".minisig";
/// The format version written into `plugins.lock`.
const LOCK_VERSION: u32 = 1;

/// What the operator asked to be enforced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustPolicy {
    /// Refuse plugins not pinned, or pinned to another digest, in their
    /// directory's `plugins.lock`.
    pub require_lock: bool,
    /// A directory of minisign public keys (`*.pub`).
    pub trusted_keys: Option<PathBuf>,
    /// Refuse plugins without a signature by a trusted key.
    pub require_signatures: bool,
}

/// A trust problem that stops a load as a whole.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(
        "plugin directory {} is {writable}-writable (mode {mode:04o}), so others could replace its plugins; run `chmod go-w {}`",
        .path.display(),
        .path.display()
    )]
    WritableDir {
        path: PathBuf,
        writable: &'static str,
        mode: u32,
    },
    #[error(
        "plugin directory {} is owned by uid {owner}, not by the user running lockstep (uid {me}) or root; keep plugins in a directory you own",
        .path.display()
    )]
    ForeignDir { path: PathBuf, owner: u32, me: u32 },
    #[error(
        "--require-lock: plugin directory {} has no {LOCK_FILE}; write one with `lockstep plugins lock`",
        .dir.display()
    )]
    NoLock { dir: PathBuf },
    #[error("cannot read {}: {reason}; write it again with `lockstep plugins lock`", .path.display())]
    BadLock { path: PathBuf, reason: String },
    #[error("cannot read plugin directory {}: {source}", .path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the trusted keys directory {}: {source}", .path.display())]
    KeysDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("trusted key {} is not a minisign public key: {reason}", .path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error(
        "the trusted keys directory {} holds no public keys (*.pub); add the minisign public keys of the signers you trust",
        .path.display()
    )]
    NoKeys { path: PathBuf },
    #[error(
        "--require-signatures needs --trusted-keys DIR, the public keys of the signers you trust"
    )]
    SignaturesWithoutKeys,
    #[error("cannot write {}: {source}", .path.display())]
    WriteLock {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One pinned plugin of a `plugins.lock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPlugin {
    /// The file name, inside the lock's directory.
    pub file: String,
    /// Hex sha256 of the file.
    pub sha256: String,
    /// Key id of the trusted minisign key whose signature verified, when
    /// the plugin was signed and keys were configured at lock time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// Where the file came from (`oci://HOST/REPO@sha256:…`), when pulled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// The contents of a `plugins.lock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    pub version: u32,
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<LockedPlugin>,
}

impl LockFile {
    /// The lock of `dir`, `None` when it has none.
    pub fn read(dir: &Path) -> Result<Option<LockFile>, TrustError> {
        let path = dir.join(LOCK_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(TrustError::BadLock {
                    path,
                    reason: e.to_string(),
                });
            }
        };
        let lock: LockFile = toml::from_str(&text).map_err(|e| TrustError::BadLock {
            path: path.clone(),
            reason: e.message().to_owned(),
        })?;
        if lock.version != LOCK_VERSION {
            return Err(TrustError::BadLock {
                path,
                reason: format!(
                    "it is version {}, this lockstep reads version {LOCK_VERSION}",
                    lock.version
                ),
            });
        }
        Ok(Some(lock))
    }

    /// Write this lock into `dir` (atomically: a temporary file renamed
    /// into place), entries sorted by file name.
    pub fn write(mut self, dir: &Path) -> Result<PathBuf, TrustError> {
        let path = dir.join(LOCK_FILE);
        self.plugins.sort_by(|a, b| a.file.cmp(&b.file));
        let body = toml::to_string(&self).map_err(|e| TrustError::WriteLock {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        let text = format!(
            "# Written by `lockstep plugins lock`: the plugins of this directory, pinned by\n\
             # sha256. With --require-lock, a plugin that differs or is missing here is refused.\n\
             {body}"
        );
        let tmp = dir.join(format!(".{LOCK_FILE}.tmp-{}", std::process::id()));
        let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(source) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(TrustError::WriteLock { path, source });
        }
        Ok(path)
    }

    /// A lock of one version with these entries.
    pub fn new(plugins: Vec<LockedPlugin>) -> LockFile {
        LockFile {
            version: LOCK_VERSION,
            plugins,
        }
    }

    fn entry(&self, file: &str) -> Option<&LockedPlugin> {
        self.plugins.iter().find(|p| p.file == file)
    }
}

/// Refuse a plugin directory others could write to.
pub fn check_dir(dir: &Path) -> Result<(), TrustError> {
    let meta = std::fs::metadata(dir).map_err(|source| TrustError::Unreadable {
        path: dir.to_owned(),
        source,
    })?;
    match owner_or_mode_problem(&meta) {
        None => Ok(()),
        Some(Problem::Writable(writable)) => Err(TrustError::WritableDir {
            path: dir.to_owned(),
            writable,
            mode: meta.mode() & 0o7777,
        }),
        Some(Problem::Foreign { owner, me }) => Err(TrustError::ForeignDir {
            path: dir.to_owned(),
            owner,
            me,
        }),
    }
}

enum Problem {
    Writable(&'static str),
    Foreign { owner: u32, me: u32 },
}

fn owner_or_mode_problem(meta: &std::fs::Metadata) -> Option<Problem> {
    let mode = meta.mode();
    if mode & 0o002 != 0 {
        return Some(Problem::Writable("world"));
    }
    if mode & 0o020 != 0 {
        return Some(Problem::Writable("group"));
    }
    let me = rustix::process::geteuid().as_raw();
    let owner = meta.uid();
    if owner != me && owner != 0 {
        return Some(Problem::Foreign { owner, me });
    }
    None
}

/// A trusted public key.
struct TrustedKey {
    id: String,
    file: PathBuf,
    key: minisign_verify::PublicKey,
}

/// What was proven about a plugin that was admitted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admitted {
    /// Key id of the trusted key whose signature verified.
    pub signer: Option<String>,
}

/// The operator's trust decisions for one load.
pub struct Trust {
    policy: TrustPolicy,
    keys: Vec<TrustedKey>,
    /// Locks by directory, read when `--require-lock` is set.
    locks: BTreeMap<PathBuf, LockFile>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("policy", &self.policy)
            .field("keys", &self.keys.iter().map(|k| &k.id).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Trust {
    /// Nothing enforced beyond directory modes (`plugins check`, tests).
    pub fn none() -> Trust {
        Trust {
            policy: TrustPolicy::default(),
            keys: Vec::new(),
            locks: BTreeMap::new(),
        }
    }

    /// Read the keys and, with `--require-lock`, the lock of every one of
    /// `dirs` (each must have one).
    pub fn load(policy: &TrustPolicy, dirs: &[PathBuf]) -> Result<Trust, TrustError> {
        if policy.require_signatures && policy.trusted_keys.is_none() {
            return Err(TrustError::SignaturesWithoutKeys);
        }
        let keys = match &policy.trusted_keys {
            Some(dir) => read_keys(dir)?,
            None => Vec::new(),
        };
        let mut locks = BTreeMap::new();
        if policy.require_lock {
            for dir in dirs {
                let lock =
                    LockFile::read(dir)?.ok_or_else(|| TrustError::NoLock { dir: dir.clone() })?;
                locks.insert(dir.clone(), lock);
            }
        }
        Ok(Trust {
            policy: policy.clone(),
            keys,
            locks,
        })
    }

    /// Whether `wasm` (the bytes of `path`, whose sha256 is `sha256`) may be
    /// compiled; the reason, as the end of a sentence, when not.
    pub fn admit(&self, path: &Path, wasm: &[u8], sha256: &str) -> Result<Admitted, String> {
        let meta = std::fs::metadata(path).map_err(|e| format!("cannot read it: {e}"))?;
        match owner_or_mode_problem(&meta) {
            None => {}
            Some(Problem::Writable(writable)) => {
                return Err(format!(
                    "the file is {writable}-writable (mode {:04o}), so others could replace it; run `chmod go-w {}`",
                    meta.mode() & 0o7777,
                    path.display()
                ));
            }
            Some(Problem::Foreign { owner, me }) => {
                return Err(format!(
                    "the file is owned by uid {owner}, not by the user running lockstep (uid {me}) or root"
                ));
            }
        }
        if self.policy.require_lock {
            self.check_pin(path, sha256)?;
        }
        let signer = self.check_signature(path, wasm)?;
        Ok(Admitted { signer })
    }

    fn check_pin(&self, path: &Path, sha256: &str) -> Result<(), String> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let file = file_name(path);
        let lock_path = dir.join(LOCK_FILE);
        let Some(lock) = self.locks.get(dir) else {
            return Err(format!(
                "--require-lock is set and {} was not read; run `lockstep plugins lock`",
                lock_path.display()
            ));
        };
        match lock.entry(&file) {
            None => Err(format!(
                "it is not pinned in {}, and --require-lock is set; run `lockstep plugins lock` to pin it",
                lock_path.display()
            )),
            Some(pin) if pin.sha256 != sha256 => Err(format!(
                "it changed after it was locked: {} expects sha256 {}, the file has sha256 {sha256}; if the new file is intended, run `lockstep plugins lock` again",
                lock_path.display(),
                pin.sha256
            )),
            Some(_) => Ok(()),
        }
    }

    /// The signer of `path`'s signature, verified against the trusted keys;
    /// `None` for an unsigned file when signatures are not required.
    pub fn check_signature(&self, path: &Path, wasm: &[u8]) -> Result<Option<String>, String> {
        let Some(keys_dir) = &self.policy.trusted_keys else {
            return Ok(None);
        };
        let sig_path = signature_path(path);
        let text = match std::fs::read_to_string(&sig_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.policy.require_signatures {
                    return Err(format!(
                        "it is unsigned (there is no {} beside it) and --require-signatures is set; sign it with `minisign -Sm {}`",
                        file_name(&sig_path),
                        file_name(path)
                    ));
                }
                return Ok(None);
            }
            Err(e) => return Err(format!("cannot read {}: {e}", sig_path.display())),
        };
        let not_minisign = |reason: String| {
            format!(
                "its signature {} is not a minisign signature: {reason}",
                file_name(&sig_path)
            )
        };
        let key_id = box_key_id(&text).map_err(not_minisign)?;
        let signature =
            minisign_verify::Signature::decode(&text).map_err(|e| not_minisign(e.to_string()))?;
        let Some(key) = self.keys.iter().find(|k| k.id == key_id) else {
            return Err(format!(
                "it is signed by key {key_id}, which is not among the trusted keys in {}; add that public key there only if you trust its owner",
                keys_dir.display()
            ));
        };
        key.key.verify(wasm, &signature, false).map_err(|_| {
            format!(
                "its signature {} does not verify with trusted key {key_id} ({}): the file or its signature changed after signing",
                file_name(&sig_path),
                key.file.display()
            )
        })?;
        Ok(Some(key_id))
    }
}

/// `NAME.wasm` → `NAME.wasm.minisig`.
pub fn signature_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(SIGNATURE_SUFFIX);
    PathBuf::from(name)
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The key id of a minisign box (public key or signature): bytes 2..10 of
/// its first base64 line after the untrusted comment, shown as minisign
/// shows it (the little-endian number in upper-case hex).
fn box_key_id(text: &str) -> Result<String, String> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
        .ok_or_else(|| "it has no key line".to_owned())?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(line)
        .map_err(|e| format!("its key line is not base64: {e}"))?;
    let id: [u8; 8] = bytes
        .get(2..10)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| "its key line is too short".to_owned())?;
    Ok(format!("{:016X}", u64::from_le_bytes(id)))
}

/// The minisign public keys (`*.pub`) of `dir`, sorted by file name.
fn read_keys(dir: &Path) -> Result<Vec<TrustedKey>, TrustError> {
    let io = |source| TrustError::KeysDir {
        path: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().is_some_and(|e| e == "pub") {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(TrustError::NoKeys {
            path: dir.to_owned(),
        });
    }
    let mut keys = Vec::with_capacity(files.len());
    for file in files {
        let bad = |reason: String| TrustError::BadKey {
            path: file.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&file).map_err(|e| bad(e.to_string()))?;
        let id = box_key_id(&text).map_err(bad)?;
        let key = minisign_verify::PublicKey::decode(&text).map_err(|e| bad(e.to_string()))?;
        keys.push(TrustedKey { id, file, key });
    }
    Ok(keys)
}

/// Pin one plugin in `dir`'s `plugins.lock` (created when missing),
/// replacing an entry for the same file and keeping the others.
pub fn pin(dir: &Path, entry: LockedPlugin) -> Result<PathBuf, TrustError> {
    let mut lock = LockFile::read(dir)?.unwrap_or_else(|| LockFile::new(Vec::new()));
    lock.plugins.retain(|p| p.file != entry.file);
    lock.plugins.push(entry);
    lock.write(dir)
}

/// Pin every plugin file of `dir` (as a scan finds them) in its
/// `plugins.lock`, verifying signatures against `trust`'s keys; keeps the
/// `source` of entries whose file did not change. Returns the lock's path
/// and the entries written.
pub fn lock_dir(
    trust: &Trust,
    dir: &Path,
    files: &[PathBuf],
) -> Result<(PathBuf, Vec<LockedPlugin>), String> {
    check_dir(dir).map_err(|e| e.to_string())?;
    let previous = LockFile::read(dir).map_err(|e| e.to_string())?;
    let mut entries = Vec::with_capacity(files.len());
    for path in files {
        let wasm =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let sha256 = super::cache::sha256_hex(&wasm);
        let signer = trust
            .check_signature(path, &wasm)
            .map_err(|reason| format!("{} cannot be locked: {reason}", path.display()))?;
        let file = file_name(path);
        let source = previous
            .as_ref()
            .and_then(|lock| lock.entry(&file))
            .filter(|old| old.sha256 == sha256)
            .and_then(|old| old.source.clone());
        entries.push(LockedPlugin {
            file,
            sha256,
            signer,
            source,
        });
    }
    let path = LockFile::new(entries.clone())
        .write(dir)
        .map_err(|e| e.to_string())?;
    Ok((path, entries))
}
