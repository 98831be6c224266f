//! A pipeline's state directory (`.lockstep/` in the workspace, or
//! `--state-dir`): content-addressed artifacts, caches, and scratch space.
//!
//! - `artifacts/sha256-<hex>/`: a step's `/out` once it ended, named by the
//!   digest of its tree (paths and file contents), so the same output is
//!   stored once and a re-run reuses it.
//! - `cache/<key>/`: a cache entry, written once per key (an entry is never
//!   changed after it is saved, as in GitHub Actions).
//! - `tmp/`: a step's writable directories while it runs (on the same
//!   filesystem, so keeping one is a rename).
//!
//! **Invariants:** only regular files and directories are kept (a symlink a
//! guest made is dropped, never followed); an artifact directory is complete
//! before it has its name (built under `tmp/`, then renamed).

use sha2::{Digest, Sha256};
use std::io;
use std::path::{Path, PathBuf};

/// The state directory of a pipeline.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: &Path) -> StateDir {
        StateDir {
            root: root.to_path_buf(),
        }
    }

    /// A fresh, empty scratch directory.
    pub fn scratch(&self, label: &str) -> io::Result<PathBuf> {
        let dir = self
            .root
            .join("tmp")
            .join(format!("{label}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Where the artifact with this address is.
    pub fn artifact(&self, address: &str) -> PathBuf {
        self.root.join("artifacts").join(address)
    }

    /// Keep `out` as an artifact; `None` when it holds nothing. `out` is
    /// gone afterwards.
    pub fn keep_artifact(&self, out: &Path) -> io::Result<Option<String>> {
        prune(out)?;
        if std::fs::read_dir(out)?.next().is_none() {
            std::fs::remove_dir_all(out)?;
            return Ok(None);
        }
        let address = format!("sha256-{}", tree_digest(out)?);
        let target = self.artifact(&address);
        if target.is_dir() {
            std::fs::remove_dir_all(out)?;
        } else {
            std::fs::create_dir_all(self.root.join("artifacts"))?;
            if let Err(e) = std::fs::rename(out, &target) {
                // Another run kept the same tree meanwhile.
                if !target.is_dir() {
                    return Err(e);
                }
                std::fs::remove_dir_all(out)?;
            }
        }
        Ok(Some(address))
    }

    fn cache_entry(&self, key: &str) -> PathBuf {
        self.root.join("cache").join(key)
    }

    /// The entry for `key`, else the newest whose key starts with one of
    /// `restore_keys` (tried in order): its key and directory.
    pub fn find_cache(&self, key: &str, restore_keys: &[String]) -> Option<(String, PathBuf)> {
        let exact = self.cache_entry(key);
        if exact.is_dir() {
            return Some((key.to_string(), exact));
        }
        let entries: Vec<(String, PathBuf, std::time::SystemTime)> =
            std::fs::read_dir(self.root.join("cache"))
                .ok()?
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let name = e.file_name().to_str()?.to_string();
                    let modified = e.metadata().ok()?.modified().ok()?;
                    e.path().is_dir().then(|| (name, e.path(), modified))
                })
                .collect();
        for prefix in restore_keys {
            let newest = entries
                .iter()
                .filter(|(name, _, _)| name.starts_with(prefix.as_str()))
                .max_by_key(|(name, _, modified)| (*modified, name.clone()));
            if let Some((name, path, _)) = newest {
                return Some((name.clone(), path.clone()));
            }
        }
        None
    }

    /// Save `dir` as the entry for `key` unless one exists; `dir` is gone
    /// afterwards. Returns whether it was saved.
    pub fn save_cache(&self, key: &str, dir: &Path) -> io::Result<bool> {
        prune(dir)?;
        let target = self.cache_entry(key);
        if target.is_dir() {
            std::fs::remove_dir_all(dir)?;
            return Ok(false);
        }
        std::fs::create_dir_all(self.root.join("cache"))?;
        match std::fs::rename(dir, &target) {
            Ok(()) => Ok(true),
            Err(_) if target.is_dir() => {
                std::fs::remove_dir_all(dir)?;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

/// Copy the tree at `from` into `to` (regular files and directories only).
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Remove everything but regular files and directories.
fn prune(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            prune(&entry.path())?;
        } else if !kind.is_file() {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// The digest of a tree: every path (sorted) with its kind and, for files,
/// the sha256 of the contents.
fn tree_digest(root: &Path) -> io::Result<String> {
    let mut entries = Vec::new();
    walk(root, root, &mut entries)?;
    entries.sort();
    let mut h = Sha256::new();
    for (path, file_hash) in entries {
        match file_hash {
            Some(hash) => h.update(format!("F {path}\0{hash}\n")),
            None => h.update(format!("D {path}\n")),
        }
    }
    Ok(hex::encode(h.finalize()))
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Option<String>)>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let relative = path
            .strip_prefix(root)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            out.push((relative, None));
            walk(root, &path, out)?;
        } else if kind.is_file() {
            out.push((relative, Some(file_sha256(&path)?)));
        }
    }
    Ok(())
}

/// Hex sha256 of a file's contents, read in blocks.
pub fn file_sha256(path: &Path) -> io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// A cache key template with every `{{ hash('PATH') }}` replaced by the
/// sha256 of that workspace file.
pub fn evaluate_cache_key(template: &str, workspace: &Path) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("cache key {template:?} has an unclosed {{{{"))?;
        let expr = after[..end].trim();
        let path = crate::spec::pipeline::hash_argument(expr)
            .ok_or_else(|| format!("cache key {template:?}: {expr:?} is not hash('PATH')"))?;
        let hash = file_sha256(&workspace.join(path)).map_err(|e| {
            format!("cache key {template:?}: cannot hash workspace file {path}: {e}")
        })?;
        out.push_str(&hash);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}
