//! Where a part of a pipeline file is: the line and column of a path such
//! as `steps[2].needs[0]`, so a rule broken after parsing still points at
//! the text (serde reports positions only for malformed text).
//!
//! TOML is re-read with `toml`'s spanned document; JSON with a small scanner
//! that follows the path through objects and arrays. A path that is not in
//! the text (a default) locates its nearest written parent.

use toml::de::{DeTable, DeValue};

/// One step of a path into the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

/// Byte offset of `path` (or its nearest written parent) in TOML `text`.
pub(super) fn toml_offset(text: &str, path: &[Seg]) -> Option<usize> {
    let doc = DeTable::parse(text).ok()?;
    let mut offset = None;
    let mut table = Some(doc.get_ref());
    let mut value: Option<&DeValue<'_>> = None;
    for seg in path {
        match seg {
            Seg::Key(name) => {
                let current = match (table, value) {
                    (Some(t), _) => t,
                    (None, Some(DeValue::Table(t))) => t,
                    _ => break,
                };
                let Some((key, found)) = current.iter().find(|(k, _)| k.get_ref() == name) else {
                    break;
                };
                offset = Some(key.span().start);
                table = None;
                value = Some(found.get_ref());
            }
            Seg::Index(i) => {
                let Some(DeValue::Array(items)) = value else {
                    break;
                };
                let Some(item) = items.get(*i) else {
                    break;
                };
                offset = Some(item.span().start);
                table = None;
                value = Some(item.get_ref());
            }
        }
    }
    offset
}

/// Byte offset of `path` (or its nearest written parent) in JSON `text`.
pub(super) fn json_offset(text: &str, path: &[Seg]) -> Option<usize> {
    let mut scanner = Json {
        bytes: text.as_bytes(),
        at: 0,
    };
    scanner.skip_ws();
    let mut offset = None;
    for seg in path {
        match seg {
            Seg::Key(name) => {
                if scanner.peek() != Some(b'{') {
                    break;
                }
                scanner.at += 1;
                let mut found = false;
                loop {
                    scanner.skip_ws();
                    if scanner.peek() != Some(b'"') {
                        break;
                    }
                    let key_at = scanner.at;
                    let key = scanner.string()?;
                    scanner.skip_ws();
                    if scanner.peek() != Some(b':') {
                        return offset;
                    }
                    scanner.at += 1;
                    scanner.skip_ws();
                    if key == *name {
                        offset = Some(key_at);
                        found = true;
                        break;
                    }
                    scanner.value()?;
                    scanner.skip_ws();
                    if scanner.peek() == Some(b',') {
                        scanner.at += 1;
                    }
                }
                if !found {
                    break;
                }
            }
            Seg::Index(i) => {
                if scanner.peek() != Some(b'[') {
                    break;
                }
                scanner.at += 1;
                let mut found = false;
                for n in 0.. {
                    scanner.skip_ws();
                    if matches!(scanner.peek(), Some(b']') | None) {
                        break;
                    }
                    if n == *i {
                        offset = Some(scanner.at);
                        found = true;
                        break;
                    }
                    scanner.value()?;
                    scanner.skip_ws();
                    if scanner.peek() == Some(b',') {
                        scanner.at += 1;
                    }
                }
                if !found {
                    break;
                }
            }
        }
    }
    offset
}

struct Json<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Json<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// A string starting at `"`; returns its raw text (escapes kept).
    fn string(&mut self) -> Option<String> {
        let start = self.at + 1;
        self.at += 1;
        while let Some(b) = self.peek() {
            match b {
                b'\\' => self.at += 2,
                b'"' => {
                    let raw = std::str::from_utf8(&self.bytes[start..self.at]).ok()?;
                    self.at += 1;
                    return Some(raw.to_owned());
                }
                _ => self.at += 1,
            }
        }
        None
    }

    /// Skips one value.
    fn value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'{' | b'[' => {
                let mut depth = 0usize;
                while let Some(b) = self.peek() {
                    match b {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.at += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.at += 1;
                }
                None
            }
            _ => {
                while let Some(b) = self.peek() {
                    if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.at += 1;
                }
                Some(())
            }
        }
    }
}
