//! Where plugins and the compile cache live, and which files are plugins.
//!
//! **Invariants:** plugin directories come from `--plugins` (repeatable),
//! else `LOCKSTEP_PLUGINS` (a path list, `:`-separated on Unix), else
//! `./plugins`; the cache directory from `--cache-dir`, else
//! `LOCKSTEP_CACHE_DIR`, else `$XDG_CACHE_HOME/lockstep`, else
//! `~/.cache/lockstep`. A scan is non-recursive, takes every `*.wasm` file,
//! and is sorted (directories in the order given, files by name), so which
//! of two plugins claiming one name is "first" never depends on the file
//! system. A directory named twice is scanned once.
//!
//! **Invariant:** no file of a plugin directory can stall or bloat a load:
//! plugin and grants files are read only when they are regular files (a
//! symlink is followed to one; FIFOs, devices and sockets are refused
//! without being opened for long: the open does not block and the opened
//! file is checked again), and only up to [`MAX_PLUGIN_FILE_BYTES`] /
//! [`MAX_GRANTS_FILE_BYTES`]. A refusal names the kind of file, never its
//! contents.
//! A directory others can write to is refused ([`super::trust::check_dir`]).

use super::PluginError;
use std::ffi::OsString;
use std::io::Read as _;
use std::path::{Path, PathBuf};

/// Largest plugin file loaded (a componentize-py component is ~40 MiB).
pub const MAX_PLUGIN_FILE_BYTES: u64 = 256 << 20;
/// Largest grants file read.
pub const MAX_GRANTS_FILE_BYTES: u64 = 1 << 20;

/// Why a file of a plugin directory was not read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read it: {0}")]
    Io(#[from] std::io::Error),
    #[error("it is {0}, not a regular file; only regular files (or symlinks to them) are read")]
    NotRegular(&'static str),
    #[error("{}", too_large(*.size, *.max))]
    TooLarge { size: u64, max: u64 },
}

fn too_large(size: u64, max: u64) -> String {
    let (size, limit) = crate::limits::sizes_for_comparison(size, max);
    format!("it is {size}, larger than the {limit} limit")
}

/// What kind of non-regular file `t` is, for messages.
fn kind_of(t: &std::fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt as _;
    if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("not a file")
    }
}

/// The bytes of the regular file at `path` (symlinks followed), at most
/// `max`. A FIFO or device is refused before it is read: the open does not
/// block, and the opened file is checked again in case it was swapped.
pub fn read_regular_file(path: &Path, max: u64) -> Result<Vec<u8>, FileError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let check = |meta: &std::fs::Metadata| -> Result<(), FileError> {
        if let Some(kind) = kind_of(&meta.file_type()) {
            return Err(FileError::NotRegular(kind));
        }
        if meta.len() > max {
            return Err(FileError::TooLarge {
                size: meta.len(),
                max,
            });
        }
        Ok(())
    };
    check(&std::fs::metadata(path)?)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    check(&meta)?;
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(FileError::TooLarge {
            size: bytes.len() as u64,
            max,
        });
    }
    Ok(bytes)
}

/// Env var holding the plugin directories (a path list).
pub const PLUGINS_ENV: &str = "LOCKSTEP_PLUGINS";
/// Env var holding the compile cache directory.
pub const CACHE_DIR_ENV: &str = "LOCKSTEP_CACHE_DIR";
/// The plugin directory when nothing else is configured.
pub const DEFAULT_PLUGIN_DIR: &str = "plugins";

/// The plugin directories to scan: `cli` if any were given, else the
/// `LOCKSTEP_PLUGINS` path list, else `./plugins`.
pub fn resolve_plugin_dirs(cli: &[PathBuf]) -> Vec<PathBuf> {
    resolve_plugin_dirs_from(cli, std::env::var_os(PLUGINS_ENV))
}

/// [`resolve_plugin_dirs`] with the env value passed in.
pub fn resolve_plugin_dirs_from(cli: &[PathBuf], env: Option<OsString>) -> Vec<PathBuf> {
    if !cli.is_empty() {
        return cli.to_vec();
    }
    if let Some(list) = env.filter(|v| !v.is_empty()) {
        let dirs: Vec<PathBuf> = std::env::split_paths(&list)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        if !dirs.is_empty() {
            return dirs;
        }
    }
    vec![PathBuf::from(DEFAULT_PLUGIN_DIR)]
}

/// The compile cache directory: `cli` if given, else `LOCKSTEP_CACHE_DIR`,
/// else `$XDG_CACHE_HOME/lockstep`, else `$HOME/.cache/lockstep`.
pub fn resolve_cache_dir(cli: Option<&Path>) -> Result<PathBuf, PluginError> {
    resolve_cache_dir_from(
        cli,
        std::env::var_os(CACHE_DIR_ENV),
        std::env::var_os("XDG_CACHE_HOME"),
        std::env::var_os("HOME"),
    )
}

/// [`resolve_cache_dir`] with the env values passed in.
pub fn resolve_cache_dir_from(
    cli: Option<&Path>,
    lockstep_cache_dir: Option<OsString>,
    xdg_cache_home: Option<OsString>,
    home: Option<OsString>,
) -> Result<PathBuf, PluginError> {
    if let Some(dir) = cli {
        return Ok(dir.to_owned());
    }
    let set = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set(lockstep_cache_dir) {
        return Ok(dir);
    }
    // The XDG spec says a relative XDG_CACHE_HOME is invalid and ignored.
    if let Some(dir) = set(xdg_cache_home).filter(|d| d.is_absolute()) {
        return Ok(dir.join("lockstep"));
    }
    if let Some(home) = set(home) {
        return Ok(home.join(".cache").join("lockstep"));
    }
    Err(PluginError::NoCacheDir)
}

/// Every `*.wasm` file directly inside `dirs`, in scan order.
pub fn scan(dirs: &[PathBuf]) -> Result<Vec<PathBuf>, PluginError> {
    let mut seen_dirs = Vec::new();
    let mut files = Vec::new();
    for dir in dirs {
        let canonical = std::fs::canonicalize(dir).map_err(|source| PluginError::PluginDir {
            path: dir.clone(),
            source,
        })?;
        if seen_dirs.contains(&canonical) {
            continue;
        }
        seen_dirs.push(canonical);
        super::trust::check_dir(dir)?;
        let entries = std::fs::read_dir(dir).map_err(|source| PluginError::PluginDir {
            path: dir.clone(),
            source,
        })?;
        let mut here = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| PluginError::PluginDir {
                path: dir.clone(),
                source,
            })?;
            let path = entry.path();
            let is_wasm = path.extension().is_some_and(|e| e == "wasm");
            // `metadata` follows symlinks: a link to a plugin is a plugin, and
            // a dangling one is kept so its load failure is reported.
            if is_wasm && !std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
                here.push(path);
            }
        }
        here.sort();
        files.extend(here);
    }
    Ok(files)
}
