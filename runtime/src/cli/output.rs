//! What the CLI writes to standard output, and what happens when nobody
//! reads it any more. `lockstep jobs | head -1` closes the pipe early: Rust
//! ignores SIGPIPE, so `println!` would panic there. Every line goes through
//! [`say!`] instead, which returns the write's error; a closed reader
//! ([`std::io::ErrorKind::BrokenPipe`]) ends the command quietly with exit
//! code 0, as `head` asked for no more (see `Failure::ReaderGone`).

use std::io::Write as _;

/// Write one line to standard output.
pub(crate) fn line(args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)?;
    out.write_all(b"\n")
}

/// Write text to standard output without adding a newline.
pub(crate) fn part(args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    std::io::stdout().lock().write_fmt(args)
}

/// Whether an error is, or was caused by, a reader that closed its end.
pub(crate) fn is_reader_gone(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `println!` that returns the write's error instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::output::line(::std::format_args!($($arg)*))
    };
}

/// `print!` that returns the write's error instead of panicking.
macro_rules! say_part {
    ($($arg:tt)*) => {
        $crate::cli::output::part(::std::format_args!($($arg)*))
    };
}

pub(crate) use {say, say_part};
