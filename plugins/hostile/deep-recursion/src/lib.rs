//! `hostile:deep-recursion`: recurses without bound until a stack overflows.
//! By default the frames live on the WebAssembly call stack, so the engine's
//! stack limit stops it (wasmtime: "call stack exhausted"); with
//! `shadow_stack` each frame also holds 512 bytes of the guest's in-memory
//! stack, which overflows first (an out-of-bounds memory access). Either way
//! the host must report a failed attempt and keep serving.

use std::hint::black_box;

use lockstep_sdk::{Context, TaskError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, default)]
struct Input {
    /// Stop at this depth and output it (none: never stop).
    depth: Option<u64>,
    /// Put 512 bytes per frame on the guest's in-memory (shadow) stack.
    shadow_stack: bool,
}

#[derive(Serialize)]
struct Output {
    depth: u64,
}

#[inline(never)]
fn on_call_stack(depth: u64, limit: u64) -> u64 {
    if depth >= limit {
        return depth;
    }
    // Calling through an opaque pointer and using the result keeps the
    // optimizer from turning the recursion into a loop.
    let next: fn(u64, u64) -> u64 = black_box(on_call_stack);
    next(depth + 1, limit).max(depth)
}

#[inline(never)]
fn on_shadow_stack(depth: u64, limit: u64) -> u64 {
    if depth >= limit {
        return depth;
    }
    let mut frame = [0u8; 512];
    frame[(depth % 512) as usize] = 1;
    let frame = black_box(frame);
    let reached = on_shadow_stack(depth + 1, limit);
    black_box(&frame);
    reached
}

fn deep_recursion(_ctx: &Context, input: Input) -> Result<Output, TaskError> {
    let limit = black_box(input.depth.unwrap_or(u64::MAX));
    let depth = if input.shadow_stack {
        on_shadow_stack(0, limit)
    } else {
        on_call_stack(0, limit)
    };
    Ok(Output { depth })
}

lockstep_sdk::export_handlers! {
    /// Hostile: recurses until the call stack overflows (with
    /// {"shadow_stack": true}, the guest's in-memory stack); with {"depth": n}
    /// it stops there and outputs {"depth": n}.
    "hostile:deep-recursion" => deep_recursion,
}
