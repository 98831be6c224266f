//! What the CLI writes to standard output, and what happens when nobody
//! reads it any more. `lockstep jobs | head -1` closes the pipe early: Rust
//! ignores SIGPIPE, so `println!` would panic there. Every line goes through
//! [`say!`] instead, which returns the write's error; a closed reader
//! ([`std::io::ErrorKind::BrokenPipe`]) ends the command quietly with exit
//! code 0, as `head` asked for no more (see `Failure::ReaderGone`).

use anyhow::Context as _;
use std::borrow::Cow;
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

/// Write `value` as JSON on one line, safe for a terminal ([`terminal_json`]).
pub(crate) fn json_line(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string(value).context("rendering JSON")?;
    Ok(line(format_args!("{}", terminal_json(&text)))?)
}

/// Write `value` as indented JSON, safe for a terminal ([`terminal_json`]).
pub(crate) fn json_pretty(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("rendering JSON")?;
    Ok(line(format_args!("{}", terminal_json(&text)))?)
}

/// JSON text safe to print on a terminal. serde_json escapes the C0
/// controls inside strings but writes DEL and the C1 controls (U+0080 to
/// U+009F, CSI among them: a terminal may take U+009B as the start of an
/// escape sequence) as they are. Each becomes its `\uXXXX` escape, which
/// means the same character to any JSON reader; JSON has no such character
/// outside its strings, so the text still parses to the same value.
pub(crate) fn terminal_json(text: &str) -> Cow<'_, str> {
    let raw = |c: char| c.is_control() && c > '\u{1f}';
    if !text.chars().any(raw) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if raw(c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
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
