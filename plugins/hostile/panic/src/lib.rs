//! `hostile:panic`: panics with a known message. The host must report the
//! trap as a failed attempt (the message reaches it through the guest's
//! stderr) and keep serving every other task.

use lockstep_sdk::{Context, TaskError};
use serde_json::Value;

/// The panic message, for tests to look for.
pub const MESSAGE: &str = "hostile:panic panics on purpose";

fn panic(_ctx: &Context, _input: Value) -> Result<Value, TaskError> {
    panic!("{MESSAGE}");
}

lockstep_sdk::export_handlers! {
    /// Panics with the message "hostile:panic panics on purpose".
    "hostile:panic" => panic,
}
