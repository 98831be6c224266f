//! lockstep: a durable orchestration runtime whose task handlers are sandboxed
//! WebAssembly components. See ARCHITECTURE.md for the code map.
//!
//! Data flows one way: `spec` → `store` ← `engine` ← `plugin`; the front doors
//! (`cli`, later `mcp` and `ci`) call the engine and never the store's SQL.

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
pub mod template;
