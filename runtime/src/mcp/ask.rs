//! A handler's questions to the MCP session whose tool call waits on its
//! task (the WIT `agent` import, routed by [`crate::engine::ask`]): its
//! request, the JSON of a `sampling/createMessage` or `elicitation/create`
//! request's params, is checked against the MCP types and sent to the client
//! through the session's peer, on the SSE stream of the tool call it belongs
//! to (rmcp's `OriginatingRequestId`); the client's result goes back as JSON.
//!
//! **Invariants:** a client that did not declare the capability
//! (`sampling`, `elicitation`) in its `initialize` is not asked: the handler
//! gets `unsupported`. A request that is not the MCP params object is
//! `invalid-request` and is not sent. An answer longer than
//! [`limits::MAX_AGENT_ANSWER_BYTES`] as JSON is `failed`. An elicitation the
//! user declined or cancelled is an answer (`{"action": "decline"}`), not an
//! error.

// Sampling is deprecated by SEP-2577 for the 2026-07-28 protocol; it is the
// current protocol of every 2025 revision clients speak today.
#![allow(deprecated)]

use super::streams::{CallStream, ReleaseError};
use crate::engine::ask::Agent;
use crate::limits;
use crate::plugin::{AskError, AskKind};
use rmcp::RoleServer;
use rmcp::model::{
    ClientResult, CreateMessageRequest, CreateMessageRequestParams, ElicitRequest,
    ElicitRequestParams, ProtocolVersion, RequestId, ServerRequest,
};
use rmcp::service::{OriginatingRequestId, Peer, ServiceError};
use std::sync::Arc;
use std::time::Duration;

/// The session of one handler tool call, as the agent its task may ask.
pub struct SessionAgent {
    peer: Peer<RoleServer>,
    /// The `tools/call` request the questions belong to.
    call: RequestId,
    /// Its SSE stream over HTTP; none on stdio.
    stream: Option<Arc<CallStream>>,
}

impl SessionAgent {
    pub fn new(peer: Peer<RoleServer>, call: RequestId, stream: Option<Arc<CallStream>>) -> Self {
        SessionAgent { peer, call, stream }
    }

    /// Whether the client can be asked `kind`: it declared the capability,
    /// on a protocol that lets a server send requests (2026-07-28 does not).
    fn supports(&self, kind: AskKind) -> Result<(), AskError> {
        let declared = self.peer.peer_info().is_some_and(|info| match kind {
            AskKind::Sample => info.capabilities.sampling.is_some(),
            AskKind::Elicit => info.capabilities.elicitation.is_some(),
        });
        if !declared {
            return Err(AskError::Unsupported(format!(
                "the MCP client that called this tool did not declare the `{}` capability, so it cannot answer {}",
                kind.capability(),
                kind.method()
            )));
        }
        if let Some(info) = self.peer.peer_info()
            && info.protocol_version >= ProtocolVersion::V_2026_07_28
        {
            return Err(AskError::Unsupported(format!(
                "the MCP client that called this tool speaks protocol {}, in which a server sends no {} requests",
                info.protocol_version,
                kind.method()
            )));
        }
        Ok(())
    }

    /// `request` as the MCP request `kind` sends, tied to the tool call.
    fn request(&self, kind: AskKind, request: &str) -> Result<ServerRequest, AskError> {
        let invalid = |why: String| {
            AskError::InvalidRequest(format!(
                "the {} request is not its params object: {why}",
                kind.method()
            ))
        };
        let originating = OriginatingRequestId(self.call.clone());
        Ok(match kind {
            AskKind::Sample => {
                let params: CreateMessageRequestParams =
                    serde_json::from_str(request).map_err(|e| invalid(e.to_string()))?;
                params.validate().map_err(invalid)?;
                if (params.tools.is_some() || params.tool_choice.is_some())
                    && !self.peer.supports_sampling_tools()
                {
                    return Err(AskError::Unsupported(
                        "the MCP client that called this tool did not declare the `sampling.tools` capability, so the sampling request may not offer tools".to_owned(),
                    ));
                }
                let mut request = CreateMessageRequest::new(params);
                request.extensions.insert(originating);
                ServerRequest::CreateMessageRequest(request)
            }
            AskKind::Elicit => {
                let params: ElicitRequestParams =
                    serde_json::from_str(request).map_err(|e| invalid(e.to_string()))?;
                let mut request = ElicitRequest::new(params);
                request.extensions.insert(originating);
                ServerRequest::ElicitRequest(request)
            }
        })
    }
}

#[async_trait::async_trait]
impl Agent for SessionAgent {
    async fn ask(&self, kind: AskKind, request: &str) -> Result<String, AskError> {
        self.supports(kind)?;
        let request = self.request(kind, request)?;
        let method = kind.method();
        let result = self.peer.send_request(request).await.map_err(|e| match e {
            ServiceError::McpError(error) => AskError::Failed(format!(
                "the MCP client answered {method} with an error: {}",
                error.message
            )),
            other => AskError::Failed(format!("the MCP client did not answer {method}: {other}")),
        })?;
        let answer = match (kind, result) {
            (AskKind::Sample, ClientResult::CreateMessageResult(result)) => {
                serde_json::to_string(&result)
            }
            (AskKind::Elicit, ClientResult::ElicitResult(result)) => serde_json::to_string(&result),
            _ => {
                return Err(AskError::Failed(format!(
                    "the MCP client answered {method} with the result of another request"
                )));
            }
        }
        .map_err(|e| AskError::Failed(format!("the answer to {method} is not JSON: {e}")))?;
        if answer.len() > limits::MAX_AGENT_ANSWER_BYTES {
            let (size, limit) = limits::sizes_for_comparison(
                answer.len() as u64,
                limits::MAX_AGENT_ANSWER_BYTES as u64,
            );
            return Err(AskError::Failed(format!(
                "the agent's answer to {method} is {size}, larger than the {limit} limit"
            )));
        }
        Ok(answer)
    }

    async fn release_connection(&self, retry: Duration) -> Result<(), AskError> {
        let Some(stream) = &self.stream else {
            return Err(AskError::Unsupported(
                "the MCP client that called this tool is connected over stdio, which has no stream to release".to_owned(),
            ));
        };
        stream.release(retry).await.map_err(|e| match e {
            ReleaseError::AlreadyReleased => AskError::Unsupported(e.to_string()),
            ReleaseError::Session(_) => AskError::Failed(e.to_string()),
        })
    }
}
