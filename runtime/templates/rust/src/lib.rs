//! `{{name}}`: a lockstep task handler.
//!
//! Build: `cargo build --release --target wasm32-wasip2`; the component is
//! `target/wasm32-wasip2/release/{{file_stem}}.wasm`. Test: `cargo test`.

use lockstep_sdk::{Context, LogLevel, TaskError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The task input. Its doc comments become the descriptions in the input
/// schema, which the host checks every input against before storing a task.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Who to greet.
    pub name: String,
    /// How many times (1 to 100, default 1).
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 100))]
    pub times: u32,
}

fn one() -> u32 {
    1
}

/// The task output.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct Output {
    pub greeting: String,
}

/// The work itself, apart from the host services so `cargo test` can call it.
pub fn greeting(input: &Input) -> Result<Output, TaskError> {
    if input.name.trim().is_empty() {
        // Fatal: retrying cannot fix it. TaskError::retryable is for
        // transient failures; the host retries those with backoff.
        return Err(TaskError::fatal("name is empty; give someone to greet"));
    }
    let times = input.times.clamp(1, 100) as usize;
    Ok(Output {
        greeting: vec![format!("hello, {}", input.name); times].join(" "),
    })
}

fn greet(ctx: &Context, input: Input) -> Result<Output, TaskError> {
    ctx.log(LogLevel::Info, &format!("attempt {}", ctx.attempt()));
    greeting(&input)
}

lockstep_sdk::export_handlers! {
    /// Greets someone by name, `times` times.
    "{{handler}}" => greet,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greets_as_often_as_asked() {
        let input = Input {
            name: "Ada".to_owned(),
            times: 2,
        };
        assert_eq!(
            greeting(&input),
            Ok(Output {
                greeting: "hello, Ada hello, Ada".to_owned()
            })
        );
    }

    #[test]
    fn an_empty_name_is_fatal() {
        let input = Input {
            name: " ".to_owned(),
            times: 1,
        };
        assert_eq!(
            greeting(&input),
            Err(TaskError::fatal("name is empty; give someone to greet"))
        );
    }

    #[test]
    fn the_schema_requires_a_name() {
        let schema = lockstep_sdk::serde_json::to_value(schemars::schema_for!(Input))
            .expect("a schema is JSON");
        assert_eq!(schema["required"], lockstep_sdk::serde_json::json!(["name"]));
    }
}
