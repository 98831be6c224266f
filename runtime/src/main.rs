//! The `lockstep` binary: everything lives in the library's `cli` module.

/// mimalloc, for Rust's allocations and (feature `override`) SQLite's:
/// 5–15% less CPU per task than glibc's malloc in `bench throughput`, at
/// ~35 MiB more resident memory (README, sitting of 2026-12-05 14:19).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    lockstep::cli::main()
}
