//! The SSE stream of each request over streamable HTTP, so a handler tool
//! call can release its stream while its task works (SEP-1699, the WIT
//! `agent.release-connection`): rmcp's `LocalSessionManager`, with the
//! stream each request answers on recorded by session and request id, and
//! each resumption (`GET` with `Last-Event-ID`) signalled to the call it
//! resumes.
//!
//! **Invariants:** a released stream is closed by rmcp with a `retry`
//! field and keeps its cache, so the client resumes it with `Last-Event-ID`
//! and gets what it missed; a call whose stream was released sends its
//! answer only once the client resumed, or after [`RESUME_WAIT`] (rmcp drops
//! a stream's cache with its answer, so an answer sent before the client
//! came back would be lost to it; the job's result stays stored either
//! way). A stream is released at most once; its record lives while its
//! HTTP response does, or, once released, until its call ends.

use rmcp::model::{ClientJsonRpcMessage, RequestId};
use rmcp::transport::streamable_http_server::session::EventStore;
use rmcp::transport::streamable_http_server::session::local::{
    LocalSessionHandle, LocalSessionManager, LocalSessionManagerError,
};
use rmcp::transport::streamable_http_server::{
    RestoreOutcome, SessionId, SessionManager, session::ServerSseMessage,
};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

/// How long a call whose stream was released holds its answer for the
/// client to resume.
pub const RESUME_WAIT: Duration = Duration::from_secs(60);

/// Streams by session and rmcp's HTTP request id.
type Streams = Arc<Mutex<HashMap<(SessionId, u64), Arc<CallStream>>>>;

/// rmcp's local sessions, with each request's stream recorded.
#[derive(Default)]
pub struct Sessions {
    inner: LocalSessionManager,
    streams: Streams,
}

/// One request's SSE stream.
pub struct CallStream {
    handle: LocalSessionHandle,
    http_request_id: u64,
    request: RequestId,
    released: AtomicBool,
    /// Set once the client resumed the released stream.
    resumed: tokio::sync::watch::Sender<bool>,
}

/// Why a stream was not released.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("the tool call's stream was already released")]
    AlreadyReleased,
    #[error("the tool call's stream could not be closed: {0}")]
    Session(String),
}

impl CallStream {
    /// Close the stream, telling the client to come back after `retry`.
    pub async fn release(&self, retry: Duration) -> Result<(), ReleaseError> {
        if self.released.swap(true, Ordering::AcqRel) {
            return Err(ReleaseError::AlreadyReleased);
        }
        self.handle
            .close_sse_stream(self.http_request_id, Some(retry))
            .await
            .map_err(|e| ReleaseError::Session(e.to_string()))
    }

    /// Once the stream was released: wait until the client resumed it, at
    /// most [`RESUME_WAIT`]. At once when it was not released.
    pub async fn resumed(&self) {
        if !self.released.load(Ordering::Acquire) {
            return;
        }
        let mut resumed = self.resumed.subscribe();
        let _ = tokio::time::timeout(RESUME_WAIT, resumed.wait_for(|r| *r)).await;
    }
}

/// The record of a call's stream, for as long as the call holds it: a
/// released stream outlives its HTTP response until then.
pub struct HeldStream {
    streams: Streams,
    key: (SessionId, u64),
    pub stream: Arc<CallStream>,
}

impl Drop for HeldStream {
    fn drop(&mut self) {
        lock(&self.streams).remove(&self.key);
    }
}

fn lock(streams: &Streams) -> MutexGuard<'_, HashMap<(SessionId, u64), Arc<CallStream>>> {
    streams.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sessions {
    /// The stream that answers `request` of `session`, while it is open.
    pub fn stream(&self, session: &SessionId, request: &RequestId) -> Option<HeldStream> {
        let streams = lock(&self.streams);
        let (key, stream) = streams
            .iter()
            .find(|((s, _), stream)| s == session && &stream.request == request)?;
        Some(HeldStream {
            streams: Arc::clone(&self.streams),
            key: key.clone(),
            stream: Arc::clone(stream),
        })
    }

    async fn handle(&self, id: &SessionId) -> Result<LocalSessionHandle, LocalSessionManagerError> {
        self.inner
            .sessions
            .read()
            .await
            .get(id)
            .cloned()
            .ok_or_else(|| LocalSessionManagerError::SessionNotFound(id.clone()))
    }
}

/// A request's SSE stream as rmcp serves it; its record goes with it,
/// unless it was released.
struct Recorded {
    inner: tokio::sync::mpsc::Receiver<ServerSseMessage>,
    streams: Streams,
    key: Option<(SessionId, u64)>,
}

impl futures_util::Stream for Recorded {
    type Item = ServerSseMessage;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_recv(cx)
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else {
            return;
        };
        let mut streams = lock(&self.streams);
        if streams
            .get(&key)
            .is_some_and(|s| !s.released.load(Ordering::Acquire))
        {
            streams.remove(&key);
        }
    }
}

impl SessionManager for Sessions {
    type Error = LocalSessionManagerError;
    type Transport = <LocalSessionManager as SessionManager>::Transport;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        self.inner.create_session().await
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<rmcp::model::ServerJsonRpcMessage, Self::Error> {
        self.inner.initialize_session(id, message).await
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        self.inner.has_session(id).await
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        self.inner.close_session(id).await
    }

    /// What `LocalSessionManager::create_stream` does, recording the stream.
    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<
        impl futures_util::Stream<Item = ServerSseMessage> + Send + Sync + 'static,
        Self::Error,
    > {
        let handle = self.handle(id).await?;
        let receiver = handle.establish_request_wise_channel().await?;
        let http_request_id = receiver.http_request_id;
        let key = match (&message, http_request_id) {
            (ClientJsonRpcMessage::Request(request), Some(http_request_id)) => {
                let key = (id.clone(), http_request_id);
                lock(&self.streams).insert(
                    key.clone(),
                    Arc::new(CallStream {
                        handle: handle.clone(),
                        http_request_id,
                        request: request.id.clone(),
                        released: AtomicBool::new(false),
                        resumed: tokio::sync::watch::Sender::new(false),
                    }),
                );
                Some(key)
            }
            _ => None,
        };
        let recorded = Recorded {
            inner: receiver.inner,
            streams: Arc::clone(&self.streams),
            key,
        };
        handle.push_message(message, http_request_id).await?;
        Ok(recorded)
    }

    async fn accept_message(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<(), Self::Error> {
        self.inner.accept_message(id, message).await
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<
        impl futures_util::Stream<Item = ServerSseMessage> + Send + Sync + 'static,
        Self::Error,
    > {
        self.inner.create_standalone_stream(id).await
    }

    /// What `LocalSessionManager::resume` does, telling a released stream's
    /// call that its client is back.
    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<
        impl futures_util::Stream<Item = ServerSseMessage> + Send + Sync + 'static,
        Self::Error,
    > {
        // rmcp's request-stream event ids are `<index>/<http request id>`.
        let http_request_id = last_event_id
            .split_once('/')
            .and_then(|(_, id)| id.parse::<u64>().ok());
        let stream = self.inner.resume(id, last_event_id).await?;
        if let Some(http_request_id) = http_request_id
            && let Some(call) = lock(&self.streams).get(&(id.clone(), http_request_id))
        {
            call.resumed.send_replace(true);
        }
        Ok(stream)
    }

    async fn restore_session(
        &self,
        id: SessionId,
    ) -> Result<RestoreOutcome<Self::Transport>, Self::Error> {
        self.inner.restore_session(id).await
    }

    fn event_store(&self) -> Option<Arc<dyn EventStore>> {
        self.inner.event_store()
    }
}
