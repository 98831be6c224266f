//! `rust-test-sample`: the test binary of a `kind = "rust-test"` CI step.
//!
//! `runtime/build.rs` builds it with `cargo test --no-run --target
//! wasm32-wasip2`. Its tests cover every outcome the step reports: one
//! passes, one fails with a message, one panics, one hangs past its
//! timeout, one traps without a panic, one reads a workspace file and one
//! writes an artifact. Under wasm a panic aborts the whole binary, which is
//! why the host runs every test in a fresh instance.

/// The greeting `reads_a_workspace_file` expects at the start of
/// `/workspace/data/greeting.txt`.
pub const GREETING: &str = "hello from the workspace";

/// Adds two numbers (something for the passing test to check).
pub fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_numbers() {
        assert_eq!(add(2, 3), 5);
    }

    #[test]
    fn fails_with_a_message() {
        assert_eq!(add(2, 2), 5, "two and two should make five");
    }

    #[test]
    fn panics_on_purpose() {
        let empty: Vec<u32> = Vec::new();
        let index = std::hint::black_box(3);
        println!("about to index an empty vector");
        let _ = empty[index];
    }

    #[test]
    fn hangs_forever() {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }

    #[test]
    fn traps_without_a_panic() {
        std::process::abort();
    }

    #[test]
    fn reads_a_workspace_file() {
        let text = std::fs::read_to_string("/workspace/data/greeting.txt")
            .expect("the workspace is preopened at /workspace");
        assert!(text.starts_with(GREETING), "unexpected greeting {text:?}");
    }

    #[test]
    fn writes_an_artifact() {
        std::fs::write("/out/report.txt", "written by writes_an_artifact\n")
            .expect("/out is writable");
    }
}
