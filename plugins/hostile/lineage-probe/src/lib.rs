//! `hostile:lineage-probe`: calls `stage-results` by hand, as a guest not
//! using the SDK may. With `after` it makes one call with that value (say
//! one past `i64::MAX`) and reports how many outputs came back; without, it
//! pages through `stage` with `limit` and reports each page's length, so a
//! test can see how the host sizes pages.

use lockstep_sdk::bindings::lockstep::plugin::context::stage_results;
use lockstep_sdk::{Context, TaskError};
use serde_json::{Value, json};

fn lineage_probe(_ctx: &Context, input: Value) -> Result<Value, TaskError> {
    let stage = input
        .get("stage")
        .and_then(Value::as_str)
        .unwrap_or("first")
        .to_owned();
    let limit = input.get("limit").and_then(Value::as_u64).unwrap_or(1000) as u32;
    if let Some(after) = input.get("after").and_then(Value::as_u64) {
        let page = stage_results(&stage, Some(after), limit).map_err(TaskError::fatal)?;
        return Ok(json!({ "count": page.len() }));
    }
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = stage_results(&stage, after, limit).map_err(TaskError::fatal)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(*last);
        pages.push(page.len());
    }
    Ok(json!({ "pages": pages }))
}

lockstep_sdk::export_handlers! {
    /// Hostile: calls stage-results by hand with any `after` and `limit`.
    "hostile:lineage-probe" => lineage_probe,
}
