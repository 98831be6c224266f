//! `hostile:read-env`: lists every environment variable and argument it can
//! see and reads HOME and PATH. With no grant it must see nothing; with an
//! `env` grant, exactly the granted names.

use std::collections::BTreeMap;

use lockstep_sdk::{Context, TaskError};
use serde::Serialize;
use serde_json::Value;

#[derive(Serialize)]
struct Output {
    vars: BTreeMap<String, String>,
    home: Option<String>,
    path: Option<String>,
    args: Vec<String>,
}

fn read_env(_ctx: &Context, _input: Value) -> Result<Output, TaskError> {
    Ok(Output {
        vars: std::env::vars_os()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.to_string_lossy().into_owned(),
                )
            })
            .collect(),
        home: std::env::var("HOME").ok(),
        path: std::env::var("PATH").ok(),
        args: std::env::args_os()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect(),
    })
}

lockstep_sdk::export_handlers! {
    /// Hostile: outputs every environment variable it sees ({"vars": {..}}),
    /// HOME and PATH ({"home", "path"}, null when absent) and its arguments.
    "hostile:read-env" => read_env,
}
