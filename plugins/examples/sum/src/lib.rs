//! `example:sum`: reads every output of an earlier stage through the
//! `stage-results` lineage import, a page of 1,000 at a time, and sums one
//! numeric field. The sum stays an integer while every value is one.

use lockstep_sdk::{Context, TaskError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Input {
    /// The earlier stage whose outputs to sum.
    from: String,
    /// The numeric field of each output to add up.
    #[serde(default = "default_field")]
    field: String,
}

fn default_field() -> String {
    "value".to_owned()
}

#[derive(Serialize)]
struct Output {
    count: u64,
    sum: Number,
}

/// An exact integer total until a value is fractional or the total overflows.
enum Total {
    Int(i64),
    Float(f64),
}

impl Total {
    fn add(self, value: &Number) -> Total {
        match (self, value.as_i64()) {
            (Total::Int(total), Some(value)) => match total.checked_add(value) {
                Some(total) => Total::Int(total),
                None => Total::Float(total as f64 + value as f64),
            },
            (Total::Int(total), None) => Total::Float(total as f64 + number_f64(value)),
            (Total::Float(total), _) => Total::Float(total + number_f64(value)),
        }
    }

    fn into_number(self) -> Result<Number, TaskError> {
        match self {
            Total::Int(total) => Ok(total.into()),
            Total::Float(total) => Number::from_f64(total)
                .ok_or_else(|| TaskError::fatal(format!("the sum {total} is not a finite number"))),
        }
    }
}

fn number_f64(value: &Number) -> f64 {
    // Every serde_json number converts to f64 (large u64 values lose precision).
    value.as_f64().unwrap_or(f64::NAN)
}

fn sum(ctx: &Context, input: Input) -> Result<Output, TaskError> {
    let mut count = 0u64;
    let mut total = Total::Int(0);
    for result in ctx.stage_results::<Value>(&input.from).page_size(1000) {
        let result = result?;
        let Some(Value::Number(value)) = result.output.get(&input.field) else {
            return Err(TaskError::fatal(format!(
                "the output of task {} in stage `{}` has no numeric field `{}`",
                result.task_id, input.from, input.field
            )));
        };
        total = total.add(value);
        count += 1;
    }
    Ok(Output {
        count,
        sum: total.into_number()?,
    })
}

lockstep_sdk::export_handlers! {
    /// Sums the numeric `field` (default "value") of every output of the
    /// earlier stage `from`; outputs {"count": n, "sum": s}. An output without
    /// that numeric field is a fatal error naming its task.
    "example:sum" => sum,
}
