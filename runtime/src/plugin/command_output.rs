//! Streamed stdout / stderr of a `wasi:cli/command` run.
//!
//! Each stream is a WASI output stream that hands the guest's bytes, in the
//! order written, to one bounded channel the caller reads while the program
//! runs (CI steps show live logs and record them as they come).
//!
//! **Invariants:**
//! - Backpressure, never a trap: when the channel is full the stream offers
//!   the guest a zero-byte permit and its `ready` waits for room, so a slow
//!   reader slows the guest down instead of failing its write. (The run's
//!   wall-clock timeout still stops a guest that waits forever.)
//! - A byte bound per stream: past [`OutputLimits::bytes_per_stream`] bytes
//!   the stream keeps accepting writes (a Rust `println!` that fails would
//!   panic) but drops them and counts how many it dropped.
//! - The host never holds more than `chunks` chunks of at most
//!   [`WRITE_PERMIT`] bytes per run in the channel.

use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Largest single write the guest is offered (the WASI stream permit).
pub const WRITE_PERMIT: usize = 16 * 1024;

/// Which stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Stdout,
    Stderr,
}

impl StreamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Stdout => "stdout",
            StreamKind::Stderr => "stderr",
        }
    }
}

/// Bytes a guest wrote to one stream, in order.
#[derive(Debug, Clone)]
pub struct OutputChunk {
    pub stream: StreamKind,
    pub bytes: Bytes,
}

/// Bounds of one run's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    /// Bytes kept per stream; the rest are dropped and counted.
    pub bytes_per_stream: u64,
    /// Chunks buffered between the guest and the reader.
    pub chunks: usize,
}

impl Default for OutputLimits {
    fn default() -> Self {
        OutputLimits {
            bytes_per_stream: 8 << 20,
            chunks: 64,
        }
    }
}

/// The writing side of one run's output, given to the command host.
#[derive(Debug, Clone)]
pub struct OutputSender {
    tx: mpsc::Sender<OutputChunk>,
    limits: OutputLimits,
    dropped: Arc<[AtomicU64; 2]>,
}

/// The reading side: chunks in the order the guest wrote them, until the run
/// ends (then `recv` returns `None` once the rest is read).
#[derive(Debug)]
pub struct OutputReceiver {
    rx: mpsc::Receiver<OutputChunk>,
    dropped: Arc<[AtomicU64; 2]>,
}

/// A fresh output channel for one run.
pub fn output_channel(limits: OutputLimits) -> (OutputSender, OutputReceiver) {
    let (tx, rx) = mpsc::channel(limits.chunks.max(1));
    let dropped = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    (
        OutputSender {
            tx,
            limits,
            dropped: dropped.clone(),
        },
        OutputReceiver { rx, dropped },
    )
}

impl OutputReceiver {
    /// The next chunk, or `None` when the run has ended and everything was read.
    pub async fn recv(&mut self) -> Option<OutputChunk> {
        self.rx.recv().await
    }

    /// Bytes dropped past the bound of `stream` so far.
    pub fn dropped(&self, stream: StreamKind) -> u64 {
        self.dropped[index(stream)].load(Ordering::Relaxed)
    }
}

fn index(stream: StreamKind) -> usize {
    match stream {
        StreamKind::Stdout => 0,
        StreamKind::Stderr => 1,
    }
}

impl OutputSender {
    pub(crate) fn stream(&self, kind: StreamKind) -> GuestStream {
        GuestStream {
            tx: self.tx.clone(),
            kind,
            limit: self.limits.bytes_per_stream,
            written: 0,
            dropped: self.dropped.clone(),
        }
    }
}

/// One guest stream (the WASI `output-stream` behind stdout or stderr).
#[derive(Debug, Clone)]
pub(crate) struct GuestStream {
    tx: mpsc::Sender<OutputChunk>,
    kind: StreamKind,
    limit: u64,
    /// Bytes accepted into the channel so far.
    written: u64,
    dropped: Arc<[AtomicU64; 2]>,
}

impl GuestStream {
    fn over_limit(&self) -> bool {
        self.written >= self.limit
    }

    fn drop_bytes(&self, n: usize) {
        self.dropped[index(self.kind)].fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl IsTerminal for GuestStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(AsyncGuestStream::new(self.clone()))
    }
}

#[async_trait::async_trait]
impl Pollable for GuestStream {
    async fn ready(&mut self) {
        if self.over_limit() || self.tx.is_closed() {
            return;
        }
        // Wait for room; the permit is handed back at once and `write`
        // takes the slot (one writer per stream, and the other stream's
        // writer can only make this wait again, never fail).
        let _ = self.tx.reserve().await;
    }
}

#[async_trait::async_trait]
impl OutputStream for GuestStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        if self.over_limit() || self.tx.is_closed() {
            self.drop_bytes(bytes.len());
            return Ok(());
        }
        let room = usize::try_from(self.limit - self.written).unwrap_or(usize::MAX);
        let mut bytes = bytes;
        if bytes.len() > room {
            self.drop_bytes(bytes.len() - room);
            bytes.truncate(room);
        }
        let n = bytes.len();
        match self.tx.try_send(OutputChunk {
            stream: self.kind,
            bytes,
        }) {
            Ok(()) => self.written += n as u64,
            // The other stream took the slot between `check_write` and this
            // write, or the reader is gone: drop rather than fail the guest.
            Err(_) => self.drop_bytes(n),
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        if self.over_limit() || self.tx.is_closed() {
            return Ok(WRITE_PERMIT);
        }
        Ok(if self.tx.capacity() == 0 {
            0
        } else {
            WRITE_PERMIT
        })
    }
}

/// The same stream for hosts that write through tokio (wasi p3 paths).
struct AsyncGuestStream {
    inner: GuestStream,
    sender: tokio_util::sync::PollSender<OutputChunk>,
}

impl AsyncGuestStream {
    fn new(inner: GuestStream) -> Self {
        let sender = tokio_util::sync::PollSender::new(inner.tx.clone());
        AsyncGuestStream { inner, sender }
    }
}

impl tokio::io::AsyncWrite for AsyncGuestStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        let this = &mut *self;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.inner.over_limit() {
            this.inner.drop_bytes(buf.len());
            return Poll::Ready(Ok(buf.len()));
        }
        match this.sender.poll_reserve(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(_)) => {
                this.inner.drop_bytes(buf.len());
                Poll::Ready(Ok(buf.len()))
            }
            Poll::Ready(Ok(())) => {
                let room =
                    usize::try_from(this.inner.limit - this.inner.written).unwrap_or(usize::MAX);
                let n = buf.len().min(WRITE_PERMIT).min(room);
                let chunk = OutputChunk {
                    stream: this.inner.kind,
                    bytes: Bytes::copy_from_slice(&buf[..n]),
                };
                match this.sender.send_item(chunk) {
                    Ok(()) => this.inner.written += n as u64,
                    Err(_) => this.inner.drop_bytes(n),
                }
                Poll::Ready(Ok(n))
            }
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
