//! `hostile:read-passwd`: tries to read the host's `/etc/passwd` and to list
//! `/`. With no grant the guest has no file system, so both must fail; the
//! output reports what each attempt observed.

use lockstep_sdk::{Context, TaskError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct Input {
    /// The file to try to read.
    path: String,
}

impl Default for Input {
    fn default() -> Self {
        Input {
            path: "/etc/passwd".to_owned(),
        }
    }
}

/// What one attempt observed: `ok` with what it read, or the error text.
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

fn read_passwd(_ctx: &Context, input: Input) -> Result<Output, TaskError> {
    let read = std::fs::read_to_string(&input.path);
    let list = std::fs::read_dir("/").and_then(|entries| {
        entries
            .map(|entry| entry.map(|entry| entry.file_name().to_string_lossy().into_owned()))
            .collect::<Result<Vec<_>, _>>()
    });
    Ok(Output {
        attempts: vec![
            Attempt {
                action: "read",
                ok: read.is_ok(),
                detail: read.unwrap_or_else(|e| e.to_string()),
                target: input.path,
            },
            Attempt {
                action: "list",
                target: "/".to_owned(),
                ok: list.is_ok(),
                detail: list.map_or_else(|e| e.to_string(), |names| names.join("\n")),
            },
        ],
    })
}

lockstep_sdk::export_handlers! {
    /// Hostile: tries to read `path` (default /etc/passwd) and to list `/`;
    /// outputs {"attempts": [{action, target, ok, detail}]} where detail is
    /// what was read or the error text.
    "hostile:read-passwd" => read_passwd,
}
