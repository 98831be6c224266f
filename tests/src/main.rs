//! lockstep's end-to-end tests: one binary, one module per area.

mod guest_programs;
mod plugin_host;
mod plugin_support;
