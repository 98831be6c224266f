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

/// CPU time this process's threads have run so far, in nanoseconds, by
/// kind of thread: `sqlite` (sqlx's SQLite connection threads: the writer
/// and the readers), `tokio` (the runtime's workers) and `other` (Linux
/// `/proc/self/task/*/schedstat`; empty where the kernel does not say).
/// Threads that ended meanwhile are not counted.
pub fn cpu_by_thread() -> std::collections::BTreeMap<&'static str, u64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("schedstat")),
        ) else {
            continue;
        };
        let Some(ns) = stat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let kind = if comm.starts_with("sqlx-sqlite") {
            "sqlite"
        } else if comm.starts_with("tokio-r") {
            "tokio"
        } else {
            "other"
        };
        *out.entry(kind).or_insert(0) += ns;
    }
    out
}

/// µs of CPU per task between two [`cpu_by_thread`] readings, by kind of
/// thread and in all.
pub fn cpu_us_per_task(
    before: &std::collections::BTreeMap<&'static str, u64>,
    after: &std::collections::BTreeMap<&'static str, u64>,
    tasks: u64,
) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    let mut all = 0u64;
    for (kind, ns) in after {
        let spent = ns.saturating_sub(before.get(kind).copied().unwrap_or(0));
        all += spent;
        out.insert(
            (*kind).to_string(),
            serde_json::json!(spent as f64 / 1000.0 / tasks.max(1) as f64),
        );
    }
    out.insert(
        "all".to_string(),
        serde_json::json!(all as f64 / 1000.0 / tasks.max(1) as f64),
    );
    serde_json::Value::Object(out)
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
