//! The API boundary (ARCHITECTURE.md, "API Boundary", Invariant 29): the front doors —
//! `cli`, `mcp`, `bench`, and `ci` and the dashboard (`ui`/`dashboard`) when
//! they exist — call the engine and nothing below it. This reads their
//! sources and names every file and line that reaches into `store`.

use std::path::{Path, PathBuf};

/// Modules under `runtime/src` that are front doors.
const FRONT_DOORS: [&str; 7] = ["cli", "mcp", "bench", "ci", "ui", "dashboard", "telemetry"];

fn runtime_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime/src")
}

/// The `.rs` files of one front door: `name.rs` and everything under `name/`.
fn sources_of(src: &Path, door: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let single = src.join(format!("{door}.rs"));
    if single.is_file() {
        files.push(single);
    }
    let mut dirs = vec![src.join(door)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("read a front-door directory").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// How many `super::` lead from this file's module to the crate root.
fn depth(src: &Path, file: &Path) -> usize {
    let relative = file.strip_prefix(src).expect("file under runtime/src");
    let parts = relative.components().count();
    let is_mod_file = file
        .file_name()
        .is_some_and(|n| n == "mod.rs" || n == "lib.rs");
    if is_mod_file { parts - 1 } else { parts }
}

/// Rust tokens that matter for paths, with their line numbers: identifiers,
/// `::`, and single punctuation. Comments and string literals are skipped (a
/// doc link or a message is not an import).
fn tokens(text: &str) -> Vec<(usize, String)> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                line += usize::from(chars[i] == '\n');
                i += 1;
            }
            i += 2;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                line += usize::from(chars[i] == '\n');
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push((line, chars[start..i].iter().collect()));
        } else if c == ':' && next == Some(':') {
            out.push((line, "::".to_string()));
            i += 2;
        } else {
            out.push((line, c.to_string()));
            i += 1;
        }
    }
    out
}

/// Every line of `text` that names the store module: `crate::store`,
/// `lockstep::store`, `super::…::store` with enough `super` to reach the
/// crate root, or `store` as an item of a `use crate::{…}` group. `depth` is
/// how many `super::` lead from the file's module to the crate root. Returns
/// (line number, line).
fn store_references(text: &str, depth: usize) -> Vec<(usize, String)> {
    let tokens = tokens(text);
    let word = |i: usize| tokens.get(i).map(|(_, t)| t.as_str());
    // The token index after a path root (`crate`, `lockstep`, or `depth`
    // times `super`) that starts at `i` and is followed by `::`.
    let after_root = |i: usize| -> Option<usize> {
        if i > 0 && word(i - 1) == Some("::") {
            return None; // `x::crate` is not a root
        }
        match word(i)? {
            "crate" | "lockstep" => (word(i + 1) == Some("::")).then_some(i + 2),
            "super" if depth > 0 => {
                let mut at = i;
                for _ in 0..depth {
                    if word(at) != Some("super") || word(at + 1) != Some("::") {
                        return None;
                    }
                    at += 2;
                }
                Some(at)
            }
            _ => None,
        }
    };
    let mut lines = std::collections::BTreeSet::new();
    for i in 0..tokens.len() {
        let Some(at) = after_root(i) else { continue };
        if word(at) == Some("store") {
            lines.insert(tokens[at].0);
        } else if word(at) == Some("{") {
            // A group at the crate root: an item `store` is the store module.
            let mut nesting = 0;
            let mut j = at;
            while let Some(t) = word(j) {
                match t {
                    "{" => nesting += 1,
                    "}" => nesting -= 1,
                    "store" if nesting == 1 && matches!(word(j - 1), Some("{" | ",")) => {
                        lines.insert(tokens[j].0);
                    }
                    _ => {}
                }
                if nesting == 0 {
                    break;
                }
                j += 1;
            }
        }
    }
    let source: Vec<&str> = text.lines().collect();
    lines
        .into_iter()
        .map(|line| (line, source[line - 1].trim().to_string()))
        .collect()
}

#[test]
fn front_doors_reach_the_store_only_through_the_engine() {
    let src = runtime_src();
    let mut violations = Vec::new();
    let mut scanned = 0;
    for door in FRONT_DOORS {
        for file in sources_of(&src, door) {
            scanned += 1;
            let text = std::fs::read_to_string(&file).expect("read a front-door source");
            for (line, code) in store_references(&text, depth(&src, &file)) {
                let shown = file.strip_prefix(&src).expect("under src").display();
                violations.push(format!("runtime/src/{shown}:{line}: {code}"));
            }
        }
    }
    // cli, mcp and bench exist today: an empty scan would pass vacuously.
    assert!(scanned >= 15, "only {scanned} front-door files found");
    assert!(
        violations.is_empty(),
        "front doors must call the engine, not the store (ARCHITECTURE.md, API Boundary); \
         these lines reach into `store`:\n{}",
        violations.join("\n")
    );
}

/// The scan itself finds every spelling of a store import (so the test
/// above can fail), and no false one.
#[test]
fn the_boundary_scan_names_each_spelling_of_a_store_import() {
    let text = "\
use crate::engine::Engine;
use crate::store::ListJobs;
use crate::{engine, store};
use crate::{
    model::JobId,
    store::{self, Store},
};
// crate::store in a comment is not an import
let s = crate::store::open(url);
use super::super::store::TaskRecord;
use lockstep::store as persistence;
use crate::storefront::Shop;
let restore = x.store();
let text = \"crate::store\";
use crate::{engine::{store, Engine}};
";
    let found: Vec<usize> = store_references(text, 2)
        .into_iter()
        .map(|(line, _)| line)
        .collect();
    assert_eq!(found, vec![2, 3, 6, 9, 10, 11]);
    // From a file one module deep, `super::super` is not the crate root.
    assert_eq!(
        store_references("use super::super::store::X;\nuse super::store;", 1)
            .into_iter()
            .map(|(line, _)| line)
            .collect::<Vec<_>>(),
        vec![2]
    );
}
