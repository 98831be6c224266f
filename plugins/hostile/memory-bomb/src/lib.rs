//! `hostile:memory-bomb`: allocates and touches memory 1 MiB at a time without
//! bound. By default allocation failure aborts (a trap), which the host must
//! report as a failed attempt at its memory limit; with `graceful` it stops at
//! the first refused allocation and reports how far it got.

use std::hint::black_box;

use lockstep_sdk::{Context, TaskError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

const MIB: usize = 1 << 20;
const PAGE: usize = 4096;

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, default)]
struct Input {
    /// Stop at the first refused allocation and report, instead of trapping.
    graceful: bool,
}

#[derive(Serialize)]
struct Output {
    allocated_mib: usize,
    error: String,
}

fn memory_bomb(_ctx: &Context, input: Input) -> Result<Output, TaskError> {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = Vec::new();
        if input.graceful {
            if let Err(e) = chunk.try_reserve_exact(MIB) {
                return Ok(Output {
                    allocated_mib: hoard.len(),
                    error: e.to_string(),
                });
            }
        } else {
            chunk.reserve_exact(MIB);
        }
        chunk.resize(MIB, 0);
        // Touch every page so the memory is really used, not just reserved.
        for offset in (0..MIB).step_by(PAGE) {
            chunk[offset] = 0xA5;
        }
        hoard.push(black_box(chunk));
    }
}

lockstep_sdk::export_handlers! {
    /// Hostile: allocates and touches memory 1 MiB at a time without bound;
    /// with {"graceful": true} it outputs {"allocated_mib", "error"} at the
    /// first refused allocation instead of trapping.
    "hostile:memory-bomb" => memory_bomb,
}
