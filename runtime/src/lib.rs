//! lockstep: a durable orchestration runtime whose task handlers are sandboxed
//! WebAssembly components.

pub mod spec;
pub mod state;
pub mod store;
