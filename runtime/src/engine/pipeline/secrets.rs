//! Pipeline secrets: where their values come from, and the masker that keeps
//! them out of everything lockstep writes or prints.
//!
//! Values come from the host at run time only: `LOCKSTEP_SECRET_<NAME>` in
//! the environment, or a `--secrets FILE` of `NAME=value` lines that no group
//! or other user may read. A value shorter than [`MIN_SECRET_CHARS`] is
//! refused: masking it would blank out ordinary text, and not masking it
//! would leak it.
//!
//! [`Masker`] replaces each value, its base64 forms (standard and URL-safe,
//! at every byte alignment, so a secret inside a longer encoded text is
//! caught too) and its percent-encoded forms with `***`, using one
//! Aho-Corasick automaton. [`StreamMasker`] does the same over a stream cut
//! into arbitrary chunks: it holds back the last `longest pattern - 1`
//! bytes, so a value split across two chunks is still found.
//!
//! **Invariant 34:** every path from a guest to the database, an event, a
//! step's output, the terminal or a report goes through a masker built from
//! the run's secrets. **Limits** (docs/ci.md): a value transformed any other
//! way (reversed, split by the guest, hashed, compressed) is not recognised.

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Shortest secret value accepted.
pub const MIN_SECRET_CHARS: usize = 6;
/// Longest secret value accepted.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;
/// Prefix of the environment variables secrets are read from.
pub const SECRET_ENV_PREFIX: &str = "LOCKSTEP_SECRET_";
/// What a masked value is replaced with.
pub const MASK: &str = "***";

/// A secret that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error(
        "secret {name} is needed by step \"{step}\" but not set; export {SECRET_ENV_PREFIX}{name} or add {name}=VALUE to a --secrets file"
    )]
    Missing { name: String, step: String },
    #[error(
        "secret {name} is {chars} characters long; secrets must have at least {MIN_SECRET_CHARS} (a shorter value cannot be masked safely)"
    )]
    TooShort { name: String, chars: usize },
    #[error("secret {name} is longer than {MAX_SECRET_BYTES} bytes")]
    TooLong { name: String },
    #[error("secret {name} holds a line break or NUL; secrets must be one line")]
    Multiline { name: String },
    #[error("secrets file {path} can be read by other users (mode {mode:o}); run chmod 600 {path}")]
    FileReadable { path: String, mode: u32 },
    #[error("cannot read secrets file {path}: {reason}")]
    FileUnreadable { path: String, reason: String },
    #[error(
        "secrets file {path}, line {line}: expected NAME=VALUE with NAME made of letters, digits and '_'"
    )]
    FileSyntax { path: String, line: usize },
}

/// Secret values by name, held in memory only.
#[derive(Clone, Default)]
pub struct Secrets {
    values: BTreeMap<String, String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: a debug print must not leak a value.
        f.debug_struct("Secrets")
            .field("names", &self.values.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Secrets {
    /// The secrets named by `needed` ((name, step) pairs): from the
    /// `--secrets` file when it has them, else from the environment.
    pub fn load(
        needed: &[(String, String)],
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Secrets, SecretError> {
        let from_file = match file {
            Some(path) => read_file(path)?,
            None => BTreeMap::new(),
        };
        let mut values = BTreeMap::new();
        for (name, step) in needed {
            if values.contains_key(name) {
                continue;
            }
            let value = from_file
                .get(name)
                .cloned()
                .or_else(|| env(&format!("{SECRET_ENV_PREFIX}{name}")))
                .ok_or_else(|| SecretError::Missing {
                    name: name.clone(),
                    step: step.clone(),
                })?;
            check_value(name, &value)?;
            values.insert(name.clone(), value);
        }
        Ok(Secrets { values })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// A masker for every value held.
    pub fn masker(&self) -> Masker {
        Masker::new(self.values.values().map(String::as_str))
    }
}

fn check_value(name: &str, value: &str) -> Result<(), SecretError> {
    let chars = value.chars().count();
    if chars < MIN_SECRET_CHARS {
        return Err(SecretError::TooShort {
            name: name.to_string(),
            chars,
        });
    }
    if value.len() > MAX_SECRET_BYTES {
        return Err(SecretError::TooLong {
            name: name.to_string(),
        });
    }
    if value.contains(['\n', '\r', '\0']) {
        return Err(SecretError::Multiline {
            name: name.to_string(),
        });
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<BTreeMap<String, String>, SecretError> {
    let shown = path.display().to_string();
    let unreadable = |e: std::io::Error| SecretError::FileUnreadable {
        path: shown.clone(),
        reason: e.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretError::FileReadable { path: shown, mode });
        }
    }
    if meta.len() > 1 << 20 {
        return Err(SecretError::FileUnreadable {
            path: shown,
            reason: "it is larger than 1 MiB".to_string(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(unreadable)?;
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let (name, value) = line.split_once('=').ok_or(SecretError::FileSyntax {
            path: shown.clone(),
            line: i + 1,
        })?;
        let name = name.trim();
        let ok = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(SecretError::FileSyntax {
                path: shown.clone(),
                line: i + 1,
            });
        }
        out.insert(name.to_string(), value.to_string());
    }
    Ok(out)
}

/// Replaces secret values and their encoded forms with [`MASK`]. Cheap to
/// clone (the automaton is shared).
#[derive(Clone, Default)]
pub struct Masker {
    automaton: Option<Arc<AhoCorasick>>,
    longest: usize,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masker")
            .field("active", &self.automaton.is_some())
            .finish()
    }
}

impl Masker {
    /// A masker for these values (none: it changes nothing).
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Masker {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        for value in values {
            patterns.extend(encoded_forms(value.as_bytes()));
        }
        patterns.retain(|p| p.len() >= 4);
        patterns.sort();
        patterns.dedup();
        if patterns.is_empty() {
            return Masker::default();
        }
        let longest = patterns.iter().map(Vec::len).max().unwrap_or(0);
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .ok()
            .map(Arc::new);
        Masker { automaton, longest }
    }

    /// `bytes` with every match replaced.
    pub fn mask_bytes(&self, bytes: &[u8]) -> Vec<u8> {
        let Some(ac) = &self.automaton else {
            return bytes.to_vec();
        };
        let mut out = Vec::with_capacity(bytes.len());
        let mut last = 0;
        for m in ac.find_iter(bytes) {
            out.extend_from_slice(&bytes[last..m.start()]);
            out.extend_from_slice(MASK.as_bytes());
            last = m.end();
        }
        out.extend_from_slice(&bytes[last..]);
        out
    }

    /// `text` with every match replaced.
    pub fn mask(&self, text: &str) -> String {
        if self.automaton.is_none() {
            return text.to_string();
        }
        String::from_utf8_lossy(&self.mask_bytes(text.as_bytes())).into_owned()
    }

    /// A streaming masker over one stream.
    pub fn stream(&self) -> StreamMasker {
        StreamMasker {
            masker: self.clone(),
            pending: Vec::new(),
        }
    }
}

/// Masks a stream that arrives in chunks (see the module docs).
pub struct StreamMasker {
    masker: Masker,
    pending: Vec<u8>,
}

impl StreamMasker {
    /// Masked bytes that are safe to pass on; the tail that could still
    /// begin a match is kept for the next chunk.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(chunk);
        let Some(ac) = self.masker.automaton.clone() else {
            return std::mem::take(&mut self.pending);
        };
        let keep = self.masker.longest.saturating_sub(1);
        let safe = self.pending.len().saturating_sub(keep);
        let mut out = Vec::with_capacity(self.pending.len());
        let mut emitted = 0;
        for m in ac.find_iter(&self.pending) {
            if m.start() >= safe {
                break;
            }
            out.extend_from_slice(&self.pending[emitted..m.start()]);
            out.extend_from_slice(MASK.as_bytes());
            emitted = m.end();
        }
        let cut = safe.max(emitted);
        out.extend_from_slice(&self.pending[emitted.min(cut)..cut]);
        self.pending.drain(..cut);
        out
    }

    /// The rest, masked, at the end of the stream.
    pub fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.pending);
        self.masker.mask_bytes(&rest)
    }
}

/// The value, its base64 forms at every alignment and its percent-encodings.
fn encoded_forms(value: &[u8]) -> Vec<Vec<u8>> {
    let mut forms = vec![value.to_vec()];
    let engines = [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::URL_SAFE,
    ];
    for engine in engines {
        forms.push(engine.encode(value).into_bytes());
        forms.push(
            engine
                .encode(value)
                .trim_end_matches('=')
                .as_bytes()
                .to_vec(),
        );
        // Inside a longer encoded text the value starts 0, 1 or 2 bytes into
        // a 3-byte group; the characters that depend on its bytes alone are
        // the same whatever surrounds it.
        for shift in 1..3usize {
            let mut padded = vec![0u8; shift];
            padded.extend_from_slice(value);
            let encoded = engine.encode(&padded);
            let first = (8 * shift).div_ceil(6);
            let last = (8 * (shift + value.len())) / 6;
            if last > first {
                forms.push(encoded.as_bytes()[first..last].to_vec());
            }
        }
        let last = (8 * value.len()) / 6;
        forms.push(engine.encode(value).as_bytes()[..last].to_vec());
    }
    for upper in [true, false] {
        for plus_for_space in [false, true] {
            let mut out = String::new();
            for &b in value {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    out.push(b as char);
                } else if b == b' ' && plus_for_space {
                    out.push('+');
                } else if upper {
                    out.push_str(&format!("%{b:02X}"));
                } else {
                    out.push_str(&format!("%{b:02x}"));
                }
            }
            forms.push(out.into_bytes());
        }
    }
    forms
}
