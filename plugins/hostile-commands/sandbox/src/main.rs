//! `hostile-command-sandbox`: a deliberately hostile CI step for the sandbox
//! tests. Its one argument picks what it tries:
//!
//! - `read-passwd`: read the host's `/etc/passwd`, directly and through
//!   `/workspace/../..`, and list `/`; prints what each attempt saw.
//! - `write-outside`: write into `/workspace`, `/`, `/tmp` and `/out/..`;
//!   prints what each attempt saw.
//! - `loop`: spin forever in wasm code (stopped by the epoch deadline).
//! - `sleep`: park forever in a host call (stopped by the wall clock).
//! - `alloc`: grow memory until refused, touching every page.
//! - `flood`: print lines to stdout forever.
//!
//! An attempt that succeeds prints `ESCAPED: …`, which tests look for.

use std::hint::black_box;

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    match mode.as_str() {
        "read-passwd" => read_passwd(),
        "write-outside" => write_outside(),
        "loop" => {
            let mut n: u64 = 0;
            loop {
                n = black_box(n.wrapping_add(1));
            }
        }
        "sleep" => loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        },
        "alloc" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                let mut block = vec![0u8; 8 << 20];
                for i in (0..block.len()).step_by(4096) {
                    block[i] = 1;
                }
                hoard.push(black_box(block));
                println!("holding {} MiB", hoard.len() * 8);
            }
        }
        "flood" => {
            let mut i: u64 = 0;
            loop {
                i += 1;
                println!("flood line {i} ........................................................");
            }
        }
        other => {
            eprintln!("unknown mode {other:?}");
            std::process::exit(2);
        }
    }
}

fn report(action: &str, target: &str, result: Result<String, std::io::Error>) {
    match result {
        Ok(seen) => println!("ESCAPED: {action} {target}: {seen}"),
        Err(e) => println!("blocked: {action} {target}: {e}"),
    }
}

fn read_passwd() {
    for path in [
        "/etc/passwd",
        "/workspace/../../etc/passwd",
        "../etc/passwd",
    ] {
        report("read", path, std::fs::read_to_string(path));
    }
    let listing = std::fs::read_dir("/").and_then(|entries| {
        entries
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<Vec<_>, _>>()
    });
    report("list", "/", listing.map(|names| names.join(",")));
}

fn write_outside() {
    for path in [
        "/workspace/planted.txt",
        "/planted.txt",
        "/tmp/planted.txt",
        "/out/../planted.txt",
    ] {
        report(
            "write",
            path,
            std::fs::write(path, "planted by a hostile step\n").map(|()| "written".to_owned()),
        );
    }
}
