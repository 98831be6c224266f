//! `hostile:escape-dotdot`: given a granted directory (default `/data`),
//! tries to climb out of it with `..` paths. Every attempt must fail; the
//! output reports what each one observed.

use lockstep_sdk::{Context, TaskError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct Input {
    /// Where the granted directory is mounted in the guest.
    dir: String,
    /// Name of a file the test placed beside (outside) the granted directory.
    secret: String,
}

impl Default for Input {
    fn default() -> Self {
        Input {
            dir: "/data".to_owned(),
            secret: "secret".to_owned(),
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

fn read(target: String) -> Attempt {
    let result = std::fs::read_to_string(&target);
    Attempt {
        action: "read",
        target,
        ok: result.is_ok(),
        detail: result.unwrap_or_else(|e| e.to_string()),
    }
}

fn list(target: String) -> Attempt {
    let result = std::fs::read_dir(&target).and_then(|entries| {
        entries
            .map(|entry| entry.map(|entry| entry.file_name().to_string_lossy().into_owned()))
            .collect::<Result<Vec<_>, _>>()
    });
    Attempt {
        action: "list",
        target,
        ok: result.is_ok(),
        detail: result.map_or_else(|e| e.to_string(), |names| names.join("\n")),
    }
}

fn escape_dotdot(_ctx: &Context, input: Input) -> Result<Output, TaskError> {
    let Input { dir, secret } = input;
    Ok(Output {
        attempts: vec![
            read(format!("{dir}/../{secret}")),
            read(format!("{dir}/./../{secret}")),
            read(format!("../{secret}")),
            read(format!("{dir}/../../etc/passwd")),
            list(format!("{dir}/..")),
            list("..".to_owned()),
        ],
    })
}

lockstep_sdk::export_handlers! {
    /// Hostile: tries to read `<dir>/../<secret>` and similar `..` paths and
    /// to list the parent of the granted `dir` (default /data); outputs
    /// {"attempts": [{action, target, ok, detail}]}.
    "hostile:escape-dotdot" => escape_dotdot,
}
