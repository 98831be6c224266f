//! The `lockstep` binary: everything lives in the library's `cli` module.

fn main() -> std::process::ExitCode {
    lockstep::cli::main()
}
