//! MCP over this process's stdin and stdout: one JSON-RPC message per line.
//!
//! Unlike a plain line codec, a line that does not decode is answered (see
//! [`super::jsonrpc`]) instead of being dropped in silence, and a line
//! longer than the limit is refused without being held in memory.
//!
//! **Invariant:** stdout carries only whole JSON-RPC messages, one per line;
//! the server's answers and the refusals of malformed lines never interleave.

use super::jsonrpc;
use rmcp::RoleServer;
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::Mutex;

/// The stdio transport of `lockstep mcp`.
pub struct StdioTransport<R, W> {
    input: BufReader<R>,
    output: Arc<Mutex<W>>,
    max_line_bytes: usize,
    /// The line read so far. Kept here, not in a future: rmcp may drop a
    /// `receive` future that is waiting, and the bytes it consumed must not
    /// be lost with it.
    line: Vec<u8>,
    /// Bytes of the current line skipped because it is over the limit.
    skipped: usize,
}

impl StdioTransport<tokio::io::Stdin, tokio::io::Stdout> {
    /// The process's own stdin and stdout; lines up to `max_line_bytes`.
    pub fn process(max_line_bytes: usize) -> Self {
        StdioTransport::new(tokio::io::stdin(), tokio::io::stdout(), max_line_bytes)
    }
}

impl<R, W> StdioTransport<R, W>
where
    R: tokio::io::AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    pub fn new(input: R, output: W, max_line_bytes: usize) -> Self {
        StdioTransport {
            input: BufReader::new(input),
            output: Arc::new(Mutex::new(output)),
            max_line_bytes,
            line: Vec::new(),
            skipped: 0,
        }
    }

    /// The next line without its end, `Err(length)` when it was longer than
    /// the limit (and was skipped), `None` at the end of input. Cancel-safe:
    /// everything consumed is in `self` between awaits.
    async fn next_line(&mut self) -> std::io::Result<Option<Result<Vec<u8>, usize>>> {
        loop {
            let available = self.input.fill_buf().await?;
            if available.is_empty() {
                let line = std::mem::take(&mut self.line);
                let skipped = std::mem::take(&mut self.skipped);
                return Ok(match (line.is_empty(), skipped) {
                    (true, 0) => None,
                    (_, 0) => Some(Ok(line)),
                    _ => Some(Err(skipped)),
                });
            }
            let (chunk, end) = match available.iter().position(|b| *b == b'\n') {
                Some(at) => (&available[..at], Some(at + 1)),
                None => (available, None),
            };
            if self.skipped > 0 || self.line.len() + chunk.len() > self.max_line_bytes {
                self.skipped += self.line.len() + chunk.len();
                self.line = Vec::new();
            } else {
                self.line.extend_from_slice(chunk);
            }
            let used = end.unwrap_or(available.len());
            self.input.consume(used);
            if end.is_some() {
                let line = std::mem::take(&mut self.line);
                let skipped = std::mem::take(&mut self.skipped);
                return Ok(Some(if skipped > 0 { Err(skipped) } else { Ok(line) }));
            }
        }
    }
}

async fn write_line<W: AsyncWrite + Unpin, T: serde::Serialize>(
    output: &Mutex<W>,
    message: &T,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut output = output.lock().await;
    output.write_all(&line).await?;
    output.flush().await
}

impl<R, W> Transport<RoleServer> for StdioTransport<R, W>
where
    R: tokio::io::AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let output = self.output.clone();
        async move { write_line(&output, &item).await }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        loop {
            let line = match self.next_line().await {
                Ok(Some(line)) => line,
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!(error = %e, "reading MCP messages from stdin failed");
                    return None;
                }
            };
            let malformed = match line {
                Err(length) => jsonrpc::Malformed {
                    id: serde_json::Value::Null,
                    code: jsonrpc::INVALID_REQUEST,
                    message: format!(
                        "Invalid Request: the message is {length} bytes, more than the {}-byte limit",
                        self.max_line_bytes
                    ),
                    notification: false,
                },
                Ok(line) => {
                    let line = line.strip_suffix(b"\r").unwrap_or(&line);
                    let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    match serde_json::from_slice::<RxJsonRpcMessage<RoleServer>>(line) {
                        Ok(message) => return Some(message),
                        Err(_) => jsonrpc::classify(line),
                    }
                }
            };
            tracing::debug!(code = malformed.code, message = %malformed.message, "malformed MCP message on stdin");
            if !malformed.notification {
                // Written by its own task: a half-written line must not be
                // left behind if rmcp drops this future.
                let output = self.output.clone();
                let response = malformed.response();
                tokio::spawn(async move {
                    if let Err(e) = write_line(&output, &response).await {
                        tracing::warn!(error = %e, "writing to stdout failed");
                    }
                });
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.output.lock().await.flush().await
    }
}
