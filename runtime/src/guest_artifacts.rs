//! Absolute paths of the guest plugins that `runtime/build.rs` builds from
//! `plugins/` for `wasm32-wasip2`: the example plugins (copied into the
//! default plugin directory `EXAMPLES_DIR`) and the hostile plugins the
//! sandbox tests run.
//!
//! Invariants: every path names a file that was a WebAssembly component when
//! this crate was built; `EXAMPLES` and `HOSTILE` list every guest program
//! exactly once, sorted by handler name, so tests can iterate them and check
//! that each has a test named after it.

include!(concat!(env!("OUT_DIR"), "/guest_artifacts.rs"));
