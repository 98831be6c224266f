//! `hostile:escape-symlink`: follows symlinks inside a granted directory that
//! point outside it (the tests create them). Reading through them must fail;
//! the output reports what each attempt observed.

use lockstep_sdk::{Context, TaskError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct Input {
    /// Symlinks inside the granted directory, as the guest sees them.
    paths: Vec<String>,
}

impl Default for Input {
    fn default() -> Self {
        Input {
            paths: vec!["/data/link".to_owned()],
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

fn escape_symlink(_ctx: &Context, input: Input) -> Result<Output, TaskError> {
    let mut attempts = Vec::new();
    for path in input.paths {
        // Where the link points is not a secret; following it is the attack.
        let link = std::fs::read_link(&path);
        attempts.push(Attempt {
            action: "read_link",
            target: path.clone(),
            ok: link.is_ok(),
            detail: link.map_or_else(|e| e.to_string(), |to| to.display().to_string()),
        });
        let read = std::fs::read_to_string(&path);
        attempts.push(Attempt {
            action: "read",
            target: path.clone(),
            ok: read.is_ok(),
            detail: read.unwrap_or_else(|e| e.to_string()),
        });
        let list = std::fs::read_dir(&path).and_then(|entries| {
            entries
                .map(|entry| entry.map(|entry| entry.file_name().to_string_lossy().into_owned()))
                .collect::<Result<Vec<_>, _>>()
        });
        attempts.push(Attempt {
            action: "list",
            target: path,
            ok: list.is_ok(),
            detail: list.map_or_else(|e| e.to_string(), |names| names.join("\n")),
        });
    }
    Ok(Output { attempts })
}

lockstep_sdk::export_handlers! {
    /// Hostile: for each of `paths` (default ["/data/link"]) reads the link,
    /// then tries to read and to list through it; outputs
    /// {"attempts": [{action, target, ok, detail}]}.
    "hostile:escape-symlink" => escape_symlink,
}
