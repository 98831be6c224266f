//! The `lockstep` command line, built inside the tests crate so the tests can
//! start real CLI and `serve` processes (`CARGO_BIN_EXE_*` is only set for a
//! package's own binaries). It is the product's `cli::main`, nothing else.

fn main() -> std::process::ExitCode {
    lockstep::cli::main()
}
