//! `hostile:write-readonly`: tries to create a file, append to a file and
//! create a directory in a granted directory. Under a read-only grant every
//! attempt must fail; under a read-write grant they succeed. The output
//! reports what each attempt observed.

use std::io::Write;

use lockstep_sdk::{Context, TaskError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct Input {
    /// Where the granted directory is mounted in the guest.
    dir: String,
    /// An existing file to append to, as the guest sees it.
    existing: Option<String>,
}

impl Default for Input {
    fn default() -> Self {
        Input {
            dir: "/data".to_owned(),
            existing: None,
        }
    }
}

/// What one attempt observed: `ok`, or the error text.
#[derive(Serialize)]
struct Attempt {
    action: &'static str,
    target: String,
    ok: bool,
    detail: String,
}

#[derive(Serialize)]
struct Output {
    attempts: Vec<Attempt>,
}

fn attempt(action: &'static str, target: String, result: std::io::Result<()>) -> Attempt {
    Attempt {
        action,
        target,
        ok: result.is_ok(),
        detail: result.map_or_else(|e| e.to_string(), |()| "done".to_owned()),
    }
}

fn write_readonly(_ctx: &Context, input: Input) -> Result<Output, TaskError> {
    let file = format!("{}/written-by-guest.txt", input.dir);
    let dir = format!("{}/created-by-guest", input.dir);
    let mut attempts = vec![
        attempt(
            "create_file",
            file.clone(),
            std::fs::write(&file, "written by hostile:write-readonly\n"),
        ),
        attempt("create_dir", dir.clone(), std::fs::create_dir(&dir)),
    ];
    if let Some(existing) = input.existing {
        let append = std::fs::OpenOptions::new()
            .append(true)
            .open(&existing)
            .and_then(|mut f| f.write_all(b"appended by hostile:write-readonly\n"));
        attempts.push(attempt("append", existing, append));
    }
    Ok(Output { attempts })
}

lockstep_sdk::export_handlers! {
    /// Hostile: tries to create `<dir>/written-by-guest.txt` and
    /// `<dir>/created-by-guest/` (dir defaults to /data) and to append to
    /// `existing` when given; outputs {"attempts": [{action, target, ok, detail}]}.
    "hostile:write-readonly" => write_readonly,
}
