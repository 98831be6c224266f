//! `hostile:open-socket`: tries outbound TCP, a DNS lookup and a listening
//! socket. With no network grant all must fail; with an allow-list, only the
//! listed host:port may connect. The output reports what each attempt saw.

use std::net::{TcpListener, TcpStream, ToSocketAddrs};

use lockstep_sdk::{Context, TaskError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct Input {
    /// host:port to connect to (an IP address, so no lookup is needed).
    addr: String,
    /// Name to resolve through DNS.
    host: String,
    /// Local address to listen on.
    listen: String,
}

impl Default for Input {
    fn default() -> Self {
        Input {
            addr: "127.0.0.1:5432".to_owned(),
            host: "localhost".to_owned(),
            listen: "127.0.0.1:0".to_owned(),
        }
    }
}

/// What one attempt observed: `ok` with a description, or the error text.
#[derive(Serialize)]
struct Attempt {
    action: &'static str,
    target: String,
    ok: bool,
    detail: String,
}

#[derive(Serialize)]
struct Output {
    attempts: Vec<Attempt>,
}

fn attempt(action: &'static str, target: String, result: std::io::Result<String>) -> Attempt {
    Attempt {
        action,
        target,
        ok: result.is_ok(),
        detail: result.unwrap_or_else(|e| e.to_string()),
    }
}

fn open_socket(_ctx: &Context, input: Input) -> Result<Output, TaskError> {
    let connect = TcpStream::connect(&input.addr)
        .and_then(|stream| stream.peer_addr())
        .map(|peer| format!("connected to {peer}"));
    let lookup = (input.host.as_str(), 80).to_socket_addrs().map(|addrs| {
        addrs
            .map(|a| a.ip().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    });
    let listen = TcpListener::bind(&input.listen)
        .and_then(|listener| listener.local_addr())
        .map(|local| format!("listening on {local}"));
    Ok(Output {
        attempts: vec![
            attempt("connect", input.addr, connect),
            attempt("lookup", input.host, lookup),
            attempt("listen", input.listen, listen),
        ],
    })
}

lockstep_sdk::export_handlers! {
    /// Hostile: tries a TCP connection to `addr` (default 127.0.0.1:5432), a
    /// DNS lookup of `host` (default localhost) and listening on `listen`;
    /// outputs {"attempts": [{action, target, ok, detail}]}.
    "hostile:open-socket" => open_socket,
}
