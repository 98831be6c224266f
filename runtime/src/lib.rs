//! lockstep: a durable orchestration runtime whose task handlers are sandboxed
//! WebAssembly components.

pub mod bench;
pub mod guest_artifacts;
pub mod plugin;
pub mod state;
pub mod store;
