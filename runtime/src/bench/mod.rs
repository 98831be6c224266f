//! Benchmarks behind `lockstep bench …`. Each returns JSON lines (one
//! `serde_json::Value` per measured case) for the CLI to print; speed is
//! measured here, never asserted in tests.

pub mod ci;
pub mod engine_flow;
pub mod lookup;
pub mod mcp;
pub mod mcp_clients;
pub mod metrics;
pub mod plugin;
pub mod ui;

/// Percentile of a sorted sample (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The most resident memory this process has held so far (Linux `VmHWM`),
/// in MiB; `None` where the kernel does not say.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// A short description of this machine for benchmark output: CPUs, model,
/// OS, and the 1, 5 and 15-minute load averages (Linux) when it is taken.
pub fn machine() -> serde_json::Value {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    // The machine may be shared: the load when the figures were taken says
    // how much of it the benchmark had.
    let load: Option<Vec<f64>> = std::fs::read_to_string("/proc/loadavg").ok().map(|s| {
        s.split_whitespace()
            .take(3)
            .filter_map(|n| n.parse().ok())
            .collect()
    });
    serde_json::json!({ "cpus": cpus, "cpu": model, "os": std::env::consts::OS, "load_average": load })
}
