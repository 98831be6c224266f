//! lockstep: a durable orchestration runtime whose task handlers are sandboxed
//! WebAssembly components. See ARCHITECTURE.md for the code map.
//!
//! The front doors (`cli`, `mcp`, `ci`, the `ui` dashboard, `bench`) call the `engine`, and only it;
//! the engine validates requests with `spec`, persists with `store` and runs
//! handlers in `plugin`, and answers with its views; `model` and `limits`
//! are the vocabulary and text rules under every layer (ARCHITECTURE.md,
//! "Data Flow").

pub mod bench;
pub mod ci;
pub mod cli;
pub mod engine;
pub mod guest_artifacts;
pub mod limits;
pub mod mcp;
pub mod model;
pub mod plugin;
pub mod spec;
pub mod store;
pub mod telemetry;
pub mod template;
pub mod ui;
