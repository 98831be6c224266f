//! Benchmarks behind `lockstep bench …`. Each returns JSON lines (one
//! `serde_json::Value` per measured case) for the CLI to print; speed is
//! measured here, never asserted in tests.

pub mod plugin;

/// Percentile of a sorted sample (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
