//! `command-script`: a sample CI step (a `wasi:cli/command` component) that
//! runs the operations given as its arguments, one per argument, in order:
//!
//! | argument          | what it does                                              |
//! |-------------------|-----------------------------------------------------------|
//! | `echo:TEXT`       | print TEXT to stdout                                      |
//! | `stderr:TEXT`     | print TEXT to stderr                                      |
//! | `env:NAME`        | print the value of env variable NAME                      |
//! | `b64env:NAME`     | print NAME's value base64-encoded (standard alphabet)     |
//! | `urlenv:NAME`     | print NAME's value percent-encoded                        |
//! | `write:PATH=TEXT` | write TEXT (plus a newline) to PATH, creating directories |
//! | `read:PATH`       | print the contents of PATH                                |
//! | `exists:PATH`     | print `PATH exists` or `PATH missing`                     |
//! | `ls:DIR`          | print the entries of DIR, sorted                          |
//! | `lines:N`         | print N numbered lines                                    |
//! | `sleep:MS`        | sleep MS milliseconds                                     |
//! | `fail:TEXT`       | print `error: TEXT` to stderr and exit 1                  |
//! | `failenv:NAME`    | print `error: login with <NAME's value> refused` to stderr and exit 1 |
//! | `exit:N`          | exit with status N                                        |
//!
//! An operation that cannot be done (a missing file, say) prints why to
//! stderr and exits 2. Tests and examples use it as a tiny, predictable
//! build step.

use std::io::Write as _;
use std::process::ExitCode;

// Rust's std reports every non-zero exit status as 1 on wasm32-wasip2 (it
// calls `wasi:cli/exit.exit` with an error); `exit-with-code` (WASI 0.2.12)
// carries the status itself.
wit_bindgen::generate!({
    inline: "
        package wasi:cli@0.2.12;
        interface exit {
            exit: func(status: result);
            exit-with-code: func(status-code: u8);
        }
        world script {
            import exit;
        }
    ",
    world: "script",
});

/// Ends the program with `code` as its exit status.
fn exit_with(code: u8) -> ExitCode {
    if code == 0 {
        return ExitCode::SUCCESS;
    }
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    wasi::cli::exit::exit_with_code(code);
    // `exit-with-code` does not return.
    ExitCode::from(code)
}

fn main() -> ExitCode {
    for arg in std::env::args().skip(1) {
        match op(&arg) {
            Ok(None) => {}
            Ok(Some(code)) => return code,
            Err(message) => {
                eprintln!("command-script: {arg}: {message}");
                return exit_with(2);
            }
        }
    }
    ExitCode::SUCCESS
}

/// Runs one operation; `Some(code)` ends the program with that status.
fn op(arg: &str) -> Result<Option<ExitCode>, String> {
    let (name, value) = arg.split_once(':').unwrap_or((arg, ""));
    let env = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    match name {
        "echo" => println!("{value}"),
        "stderr" => eprintln!("{value}"),
        "env" => println!("{}", env(value)?),
        "b64env" => println!("{}", base64(env(value)?.as_bytes())),
        "urlenv" => println!("{}", percent(env(value)?.as_bytes())),
        "write" => {
            let (path, text) = value.split_once('=').ok_or("write:PATH=TEXT needs `=`")?;
            if let Some(parent) = std::path::Path::new(path).parent() {
                std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
            }
            std::fs::write(path, format!("{text}\n")).map_err(|e| e.to_string())?;
            println!("wrote {path}");
        }
        "read" => print!(
            "{}",
            std::fs::read_to_string(value).map_err(|e| e.to_string())?
        ),
        "exists" => {
            let state = if std::path::Path::new(value).exists() {
                "exists"
            } else {
                "missing"
            };
            println!("{value} {state}");
        }
        "ls" => {
            let mut names: Vec<String> = std::fs::read_dir(value)
                .map_err(|e| e.to_string())?
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            names.sort();
            for name in names {
                println!("{name}");
            }
        }
        "lines" => {
            let n: u64 = value.parse().map_err(|_| "lines:N needs a number")?;
            let mut out = std::io::stdout().lock();
            for i in 1..=n {
                writeln!(out, "line {i}").map_err(|e| e.to_string())?;
            }
        }
        "sleep" => {
            let ms: u64 = value.parse().map_err(|_| "sleep:MS needs a number")?;
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        "fail" => {
            eprintln!("error: {value}");
            return Ok(Some(exit_with(1)));
        }
        "failenv" => {
            eprintln!("error: login with {} refused", env(value)?);
            return Ok(Some(exit_with(1)));
        }
        "exit" => {
            let code: u8 = value.parse().map_err(|_| "exit:N needs a number 0-255")?;
            return Ok(Some(exit_with(code)));
        }
        _ => return Err("unknown operation (see the list in the source)".to_owned()),
    }
    Ok(None)
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn percent(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
