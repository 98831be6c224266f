//! `hostile:describe`: misbehaves when the host asks it to describe itself,
//! in the way the file `/config/mode` (a directory the test grants) names:
//! - `hang`: never returns;
//! - `claim:NAME`: claims the handler name NAME (one another plugin has);
//! - `handlers:N`: lists N handlers;
//! - `description-bytes:N`: gives its handler a description of N bytes;
//! - anything else (or no file): describes itself as `hostile:describe`.
//!
//! The host must give up on it, refuse it, and keep serving the others.

use std::hint::black_box;

use lockstep_sdk::__private::{Guest, HandlerInfo, Outcome, Task, WitTaskError};

struct Describe;

fn handler(name: String, description: String) -> HandlerInfo {
    HandlerInfo {
        name,
        description,
        input_schema: "{}".to_owned(),
    }
}

fn count(mode: &str, prefix: &str) -> Option<usize> {
    mode.strip_prefix(prefix)?.trim().parse().ok()
}

impl Guest for Describe {
    fn describe() -> Vec<HandlerInfo> {
        let mode = std::fs::read_to_string("/config/mode").unwrap_or_default();
        let mode = mode.trim();
        if mode == "hang" {
            let mut spins = 0u64;
            loop {
                spins = black_box(spins.wrapping_add(1));
            }
        }
        if let Some(name) = mode.strip_prefix("claim:") {
            return vec![handler(
                name.to_owned(),
                "Hostile: claims a taken name.".to_owned(),
            )];
        }
        if let Some(n) = count(mode, "handlers:") {
            return (0..n)
                .map(|i| {
                    handler(
                        format!("hostile:describe-{i}"),
                        "Hostile: one of many.".to_owned(),
                    )
                })
                .collect();
        }
        if let Some(n) = count(mode, "description-bytes:") {
            return vec![handler("hostile:describe".to_owned(), "d".repeat(n))];
        }
        vec![handler(
            "hostile:describe".to_owned(),
            "Hostile: misbehaves in describe() as /config/mode says.".to_owned(),
        )]
    }

    fn run(_task: Task) -> Result<Outcome, WitTaskError> {
        Ok(Outcome {
            output: "{}".to_owned(),
            spawn: Vec::new(),
        })
    }
}

lockstep_sdk::bindings::__lockstep_export_plugin!(Describe with_types_in lockstep_sdk::bindings);
