//! The suite's own promise (Invariant 14): every method of the `Store` trait
//! is called by at least one case, so a method added to the trait without a
//! case fails here, naming it.
//!
//! Read from the sources: the methods are the `fn`s inside `pub trait Store
//! { … }` of `runtime/src/store/mod.rs`; a call is `.name(` in a file of this
//! suite other than this one (cases, and the fixtures they share: a fixture
//! no case uses is dead code, which the build refuses).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The names of the `fn`s declared in the body of `pub trait Store`.
fn store_methods(source: &str) -> Vec<String> {
    let start = source
        .find("pub trait Store:")
        .expect("runtime/src/store/mod.rs declares `pub trait Store:`");
    let open = start
        + source[start..]
            .find('{')
            .expect("the Store trait has a body");
    // The body ends at the brace that closes the one at `open`.
    let mut depth = 0usize;
    let mut end = None;
    for (i, c) in source[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    end = Some(open + i);
                    break;
                }
            }
            _ => {}
        }
    }
    let body = &source[open..end.expect("the Store trait's body is closed")];
    let mut methods = Vec::new();
    for line in body.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let Some(at) = line.find("fn ") else { continue };
        let name: String = line[at + 3..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            methods.push(name);
        }
    }
    methods
}

#[test]
fn every_store_method_is_called_by_a_case() {
    let root = repo_root();
    let trait_source = std::fs::read_to_string(root.join("runtime/src/store/mod.rs"))
        .expect("read runtime/src/store/mod.rs");
    let methods = store_methods(&trait_source);
    // A reading that broke would find few methods, and pass for the wrong
    // reason: the trait's first and last methods must be among them.
    for expected in ["migrate", "submit_job", "tenant_for_token", "counters"] {
        assert!(
            methods.iter().any(|m| m == expected),
            "Store::{expected} was not read from the trait: {methods:?}"
        );
    }

    let suite = root.join("tests/src/store_conformance");
    let mut cases = String::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&suite)
        .expect("list the conformance suite")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| {
            path.extension().is_some_and(|e| e == "rs")
                && path.file_name().is_some_and(|n| n != "coverage.rs")
        })
        .collect();
    files.sort();
    for file in &files {
        cases.push_str(&std::fs::read_to_string(file).expect("read a conformance file"));
        cases.push('\n');
    }

    let uncalled: BTreeSet<&str> = methods
        .iter()
        .map(String::as_str)
        .filter(|m| !cases.contains(&format!(".{m}(")))
        .collect();
    assert!(
        uncalled.is_empty(),
        "no case of tests/src/store_conformance/ calls Store::{}; add a case for each (in the \
         area module it belongs to) that checks what the method promises, on both backends",
        uncalled
            .iter()
            .copied()
            .collect::<Vec<_>>()
            .join(", Store::")
    );
}
