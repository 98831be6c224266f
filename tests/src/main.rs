//! lockstep's end-to-end tests: one binary, one module per area. Everything
//! runs against real plugins, real database files and servers, and real
//! processes (Invariant 28).

mod api_boundary;
mod architecture;
mod ci_pipelines;
mod cli;
mod command_host;
mod corrupt_rows;
mod crash_recovery;
mod engine_flow;
mod guest_programs;
mod harness;
mod interop_tools;
mod mcp_agent;
mod mcp_handler_tools;
mod mcp_harness;
mod mcp_http;
mod mcp_official_clients;
mod mcp_protocol;
mod mcp_resources;
mod mcp_tools;
mod model_vocabulary;
mod plugin_host;
mod plugin_oci;
mod plugin_reload;
mod plugin_support;
mod plugin_templates;
mod plugin_trust;
mod postgres_cluster;
mod postgres_store;
mod postgres_test_db;
mod schema_upgrade;
mod serve_stop;
mod spec_files;
mod store_conformance;
mod store_faults;
mod telemetry;
mod ui_browser;
mod ui_harness;
mod ui_http;
