//! How a process logs: `--log-format human` (the default: one line per
//! event, colour only on a terminal) or `json` (one JSON object per line,
//! every field of the event at the top level — the worker's events carry
//! `job_id`, `task_id`, `handler`, `attempt`), both on stderr and filtered
//! by `--log`.

/// The shape of log lines on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event for a person; colour only when stderr is a terminal.
    #[default]
    Human,
    /// One JSON object per line (timestamp, level, target, message and the
    /// event's fields), for log collectors.
    Json,
}

/// Check a `--log` filter (tracing's env-filter syntax) while the command
/// line is parsed, so an unreadable one is refused with exit code 2 instead
/// of being replaced by another level without a word.
pub fn parse_filter(filter: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(filter)
        .map(|_| filter.to_string())
        .map_err(|e| format!("{e}; expected a level (error, warn, info, debug, trace) or TARGET=LEVEL pairs, e.g. lockstep=debug"))
}

/// Install the process's log subscriber: `filter` in tracing's env-filter
/// syntax, already checked by [`parse_filter`]. A filter that still cannot
/// be read is said on stderr and nothing is logged.
pub fn init(filter: &str, format: LogFormat) {
    let filter = match tracing_subscriber::EnvFilter::try_new(filter) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("error: the log filter {filter:?} cannot be read: {e}; logging is off");
            tracing_subscriber::EnvFilter::new("off")
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder
            // Colours only for a person at a terminal: a log file or a pipe
            // gets plain text.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}
