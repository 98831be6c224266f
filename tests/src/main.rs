//! lockstep's end-to-end tests: one binary, one module per area. Everything
//! runs against real plugins, real database files and servers, and real
//! processes.

mod cli;
mod crash_recovery;
mod engine_flow;
mod harness;
mod spec_files;
