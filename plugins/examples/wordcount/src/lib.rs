//! `example:wordcount`: counts the words, lines and bytes of a file. The file
//! must be inside a directory the operator granted (`example-wordcount.toml`);
//! without a grant the guest sees no file system at all. The file is streamed,
//! so its size is not limited by the plugin's memory limit.

use std::fs::File;
use std::io::Read;

use lockstep_sdk::{Context, TaskError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Input {
    /// Path of the file as the plugin sees it, e.g. "/data/words.txt".
    path: String,
}

#[derive(Serialize, Default)]
struct Output {
    words: u64,
    lines: u64,
    bytes: u64,
}

fn wordcount(_ctx: &Context, input: Input) -> Result<Output, TaskError> {
    let cannot_read =
        |e: std::io::Error| TaskError::fatal(format!("cannot read {}: {e}", input.path));
    let mut file = File::open(&input.path).map_err(cannot_read)?;
    let mut counts = Output::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut in_word = false;
    let mut last = b'\n';
    loop {
        let n = file.read(&mut buf).map_err(cannot_read)?;
        if n == 0 {
            break;
        }
        for &byte in &buf[..n] {
            if byte.is_ascii_whitespace() {
                in_word = false;
            } else if !in_word {
                in_word = true;
                counts.words += 1;
            }
            if byte == b'\n' {
                counts.lines += 1;
            }
        }
        counts.bytes += n as u64;
        last = buf[n - 1];
    }
    // A last line without a trailing newline is still a line.
    if last != b'\n' {
        counts.lines += 1;
    }
    Ok(counts)
}

lockstep_sdk::export_handlers! {
    /// Counts the words (runs of non-whitespace), lines and bytes of the file
    /// at `path`, which must lie in a directory granted to this plugin;
    /// outputs {"words": n, "lines": l, "bytes": b}.
    "example:wordcount" => wordcount,
}
