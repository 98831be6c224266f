//! `command-hasher`: a sample CI step (a `wasi:cli/command` component).
//!
//! ```text
//! command-hasher [--out FILE] PATH...   hash files (directories recursively),
//!                                       print `<sha256>  <path>` lines and
//!                                       write them to FILE when given
//! command-hasher --check MANIFEST       recompute every hash a manifest lists;
//!                                       exit 1 when any differs or is missing
//! ```
//!
//! It sees only what the step grants: the workspace read-only at
//! `/workspace`, its own writable `/out`, and the `/out` of each step it
//! needs at `/artifacts/<key>`.

use sha2::{Digest, Sha256};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("command-hasher: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> Result<ExitCode, String> {
    match args {
        [] => Err("usage: command-hasher [--out FILE] PATH... | --check MANIFEST".to_owned()),
        [flag, manifest] if flag == "--check" => check(Path::new(manifest)),
        [flag, out, paths @ ..] if flag == "--out" => hash_all(paths, Some(Path::new(out))),
        paths => hash_all(paths, None),
    }
}

fn hash_all(paths: &[String], out: Option<&Path>) -> Result<ExitCode, String> {
    if paths.is_empty() {
        return Err("name at least one file or directory to hash".to_owned());
    }
    let mut files = Vec::new();
    for path in paths {
        collect(Path::new(path), &mut files)?;
    }
    files.sort();
    let mut manifest = String::new();
    for file in &files {
        let digest = hash_file(file)?;
        manifest.push_str(&format!("{digest}  {}\n", file.display()));
    }
    print!("{manifest}");
    println!("hashed {} file(s)", files.len());
    if let Some(out) = out {
        let mut f = std::fs::File::create(out)
            .map_err(|e| format!("cannot create {}: {e}", out.display()))?;
        f.write_all(manifest.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
        println!("wrote {}", out.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn check(manifest: &Path) -> Result<ExitCode, String> {
    let text = std::fs::read_to_string(manifest)
        .map_err(|e| format!("cannot read {}: {e}", manifest.display()))?;
    let mut failed = 0usize;
    let mut checked = 0usize;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Some((expected, path)) = line.split_once("  ") else {
            return Err(format!(
                "{}:{}: expected `<sha256>  <path>`",
                manifest.display(),
                n + 1
            ));
        };
        checked += 1;
        match hash_file(Path::new(path)) {
            Ok(actual) if actual == expected => println!("{path}: OK"),
            Ok(_) => {
                failed += 1;
                println!("{path}: FAILED (content changed)");
            }
            Err(e) => {
                failed += 1;
                println!("{path}: FAILED ({e})");
            }
        }
    }
    if failed > 0 {
        eprintln!("command-hasher: {failed} of {checked} file(s) did not match");
        return Ok(ExitCode::from(1));
    }
    println!("all {checked} file(s) match");
    Ok(ExitCode::SUCCESS)
}

fn collect(path: &Path, files: &mut Vec<PathBuf>) -> Result<(), String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.is_dir() {
        let entries =
            std::fs::read_dir(path).map_err(|e| format!("cannot list {}: {e}", path.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot list {}: {e}", path.display()))?;
            collect(&entry.path(), files)?;
        }
    } else {
        files.push(path.to_owned());
    }
    Ok(())
}

fn hash_file(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let digest = Sha256::digest(&bytes);
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}
