//! `hostile:infinite-loop`: spins forever without yielding or checking for
//! cancellation. Only the host's epoch deadline can stop it.

use std::hint::black_box;

use lockstep_sdk::{Context, TaskError};
use serde_json::Value;

fn infinite_loop(_ctx: &Context, _input: Value) -> Result<Value, TaskError> {
    let mut spins = 0u64;
    loop {
        // black_box keeps the optimizer from proving anything about the loop.
        spins = black_box(spins.wrapping_add(1));
    }
}

lockstep_sdk::export_handlers! {
    /// Hostile: spins forever; the host must stop it at its deadline.
    "hostile:infinite-loop" => infinite_loop,
}
