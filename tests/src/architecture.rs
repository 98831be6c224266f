//! ARCHITECTURE.md held to the code: the Code Map names every module file
//! under `runtime/src` (and no file that is gone), every numbered invariant
//! is cited by its number in a code comment or a test name (and nothing
//! cites a number that is not there), and the layers import only what the
//! Data Flow section says.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn architecture() -> String {
    std::fs::read_to_string(repo_root().join("ARCHITECTURE.md")).expect("read ARCHITECTURE.md")
}

/// The text between the heading `## {name}` and the next `## ` heading.
fn section<'a>(doc: &'a str, name: &str) -> &'a str {
    let heading = format!("\n## {name}\n");
    let start = doc
        .find(&heading)
        .unwrap_or_else(|| panic!("ARCHITECTURE.md has no section {name:?}"))
        + heading.len();
    let end = doc[start..].find("\n## ").map_or(doc.len(), |i| start + i);
    &doc[start..end]
}

/// Every file under `dir` whose name ends in `.rs`, relative to `dir`, with
/// `/` separators; `target` directories are skipped.
fn rust_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("read a source directory").path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "target") {
                    dirs.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(dir).expect("under dir");
                let parts: Vec<String> = relative
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push(parts.join("/"));
            }
        }
    }
    out.sort();
    out
}

/// Backticked spans of `text` (`` `like/this.rs` ``).
fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

#[test]
fn the_code_map_names_every_module_file_under_runtime_src() {
    let doc = architecture();
    let map = section(&doc, "Code Map");
    let named: BTreeSet<&str> = backticked(map).into_iter().collect();
    let files = rust_files(&repo_root().join("runtime/src"));
    assert!(files.len() >= 60, "only {} files found", files.len());
    let missing: Vec<&String> = files
        .iter()
        .filter(|f| !named.contains(f.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md's Code Map does not name these modules (write each as `path/relative/to/runtime/src.rs`):\n{}",
        missing
            .iter()
            .map(|f| format!("runtime/src/{f}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // And it names no file that is gone: a path with a top-level directory
    // of the repository is read from the root, any other from runtime/src.
    let roots = ["runtime/", "tests/", "plugins/", "wit/", "migrations/"];
    let stale: Vec<&str> = named
        .iter()
        .copied()
        .filter(|n| n.ends_with(".rs") && !n.contains(' '))
        .filter(|n| {
            let path = if roots.iter().any(|r| n.starts_with(r)) {
                repo_root().join(n)
            } else {
                repo_root().join("runtime/src").join(n)
            };
            !path.is_file()
        })
        .collect();
    assert!(
        stale.is_empty(),
        "ARCHITECTURE.md's Code Map names files that do not exist: {stale:?}"
    );
}

/// The numbers cited after each `Invariant`/`Invariants` in `text`
/// (`Invariant N`, `Invariants N, M and K`).
fn citations(text: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for (at, _) in text.match_indices("Invariant") {
        let rest = &text[at + "Invariant".len()..];
        let rest = rest.strip_prefix('s').unwrap_or(rest);
        if !rest.starts_with(' ') {
            continue;
        }
        let list: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || matches!(c, ' ' | ',' | 'a' | 'n' | 'd'))
            .collect();
        for word in list.split([' ', ',']) {
            if let Ok(n) = word.parse() {
                out.push(n);
            }
        }
    }
    out
}

/// The numbers cited in the names of functions (`fn invariant_N_…`,
/// `fn …_invariant_N`).
fn test_name_citations(text: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim_start();
        let line = line.strip_prefix("pub ").unwrap_or(line);
        let line = line.strip_prefix("async ").unwrap_or(line);
        let Some(name) = line.strip_prefix("fn ") else {
            continue;
        };
        for (at, _) in name.match_indices("invariant_") {
            let digits: String = name[at + "invariant_".len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(n) = digits.parse() {
                out.push(n);
            }
        }
    }
    out
}

#[test]
fn every_numbered_invariant_is_cited_by_its_number() {
    let doc = architecture();
    // The list: `**Invariant N:**`, each number once, 1 to N with none
    // missing (a new invariant takes the next number wherever it is listed).
    let marker = "**Invariant ";
    let mut numbers: Vec<u32> = doc
        .match_indices(marker)
        .map(|(at, _)| {
            let digits: String = doc[at + marker.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits
                .parse()
                .unwrap_or_else(|_| panic!("an invariant without a number at byte {at}"))
        })
        .collect();
    numbers.sort_unstable();
    let expected: Vec<u32> = (1..=numbers.len() as u32).collect();
    assert_eq!(
        numbers, expected,
        "ARCHITECTURE.md's invariants must be numbered 1 to N, each number once"
    );
    assert!(
        !doc.contains("**Invariant:**"),
        "ARCHITECTURE.md has an invariant without a number"
    );
    // Where each number is cited: code comments under runtime/src, tests/src
    // and plugins/, and test names.
    let root = repo_root();
    let mut cited: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for dir in ["runtime/src", "tests/src", "plugins"] {
        for file in rust_files(&root.join(dir)) {
            let text = std::fs::read_to_string(root.join(dir).join(&file)).expect("read a source");
            let comments: String = text
                .lines()
                .filter_map(|l| l.trim_start().strip_prefix("//"))
                .collect::<Vec<_>>()
                .join("\n");
            let mut found = citations(&comments);
            found.extend(test_name_citations(&text));
            for n in found {
                cited.entry(n).or_default().push(format!("{dir}/{file}"));
            }
        }
    }
    let uncited: Vec<u32> = expected
        .iter()
        .copied()
        .filter(|n| !cited.contains_key(n))
        .collect();
    assert!(
        uncited.is_empty(),
        "these invariants of ARCHITECTURE.md are cited by no code comment or test name (cite them as `Invariant N` where the code relies on them): {uncited:?}"
    );
    let unknown: Vec<String> = cited
        .iter()
        .filter(|(n, _)| !expected.contains(n))
        .map(|(n, files)| format!("{n} in {}", files.join(", ")))
        .collect();
    assert!(
        unknown.is_empty(),
        "these citations name invariants ARCHITECTURE.md does not have: {unknown:?}"
    );
}

/// The citation scanner reads every form the code uses, and no other.
#[test]
fn the_citation_scan_reads_single_and_listed_numbers() {
    let text = format!(
        "{i} 8: fenced\n{i}s 16, 19 and 17: grants\n(see {i} 11).\n{i}: unnumbered\nInvariants:\n",
        i = "Invariant"
    );
    assert_eq!(citations(&text), vec![8, 16, 19, 17, 11]);
    let names = format!(
        "fn {i}3_holds() {{}}\n    async fn x_{i}12() {{}}\n// {i}4 in a comment\n",
        i = "invariant_"
    );
    assert_eq!(test_name_citations(&names), vec![3, 12]);
}

/// Modules of the crate a file's code names through `crate::` (comments
/// skipped): `crate::store::X` and each item of `crate::{spec, model::Y}`.
fn crate_imports(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(at) => &l[..at],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        // `$crate::` (macros) is the same crate, but always `model` here.
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => item_start = true,
                    _ if item_start && depth == 1 && !c.is_whitespace() => {
                        out.insert(ident(&group[i..]));
                        item_start = false;
                    }
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

#[test]
fn layers_import_only_what_the_data_flow_allows() {
    let src = repo_root().join("runtime/src");
    // Module → modules of the crate it may import (ARCHITECTURE.md, Data Flow).
    let allowed: [(&str, &[&str]); 5] = [
        ("model", &[]),
        ("limits", &[]),
        ("plugin", &["model", "limits"]),
        ("spec", &["model", "limits"]),
        ("store", &["model", "limits"]),
    ];
    let mut violations = Vec::new();
    for file in rust_files(&src) {
        let module = file
            .split('/')
            .next()
            .expect("a path")
            .trim_end_matches(".rs");
        let Some((_, may)) = allowed.iter().find(|(m, _)| *m == module) else {
            continue;
        };
        let text = std::fs::read_to_string(src.join(&file)).expect("read a source");
        for import in crate_imports(&text) {
            if import != module && !may.contains(&import.as_str()) {
                violations.push(format!("runtime/src/{file}: crate::{import}"));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "these files import a layer ARCHITECTURE.md's Data Flow says they do not:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_import_scan_reads_paths_and_groups() {
    let text = "use crate::model::{JobId, TaskId};\nuse crate::{limits, spec::plan::Plan};\n// crate::engine in a comment\nlet x = crate::store::open(u);\nmacro_rules! m { () => { $crate::model::X } }\n";
    let found: Vec<String> = crate_imports(text).into_iter().collect();
    assert_eq!(found, ["limits", "model", "spec", "store"]);
}
