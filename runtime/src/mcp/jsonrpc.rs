//! What a malformed JSON-RPC message gets back, on either transport.
//!
//! JSON-RPC 2.0 §5.1: text that is not JSON is a parse error (-32700); JSON
//! that is not one request, notification or response is an invalid request
//! (-32600); a request of a known method whose `params` do not fit it is
//! invalid params (-32602). The answer carries the message's `id` when it
//! has a usable one, `null` otherwise. Errors of the HTTP transport itself
//! (wrong media type, unknown session, refused origin) are answered in the
//! same shape with the codes the TypeScript SDK's server uses: -32000, and
//! -32001 for an unknown session.
//!
//! **Invariant:** an answer never quotes more than a bounded part of the
//! message it answers.

use serde_json::{Value, json};

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const INVALID_PARAMS: i64 = -32602;
/// A transport-level refusal (media type, method, origin, body size).
pub const TRANSPORT_ERROR: i64 = -32000;
/// `Mcp-Session-Id` names no live session.
pub const SESSION_NOT_FOUND: i64 = -32001;

/// Why a message that did not decode was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Malformed {
    /// The message's id, or `null`.
    pub id: Value,
    pub code: i64,
    pub message: String,
    /// A notification: over stdio it gets no answer at all.
    pub notification: bool,
}

impl Malformed {
    /// The JSON-RPC error response.
    pub fn response(&self) -> Value {
        error_response(self.id.clone(), self.code, &self.message)
    }
}

/// A JSON-RPC error response.
pub fn error_response(id: Value, code: i64, message: &str) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } })
}

/// Why `bytes`, which did not decode as an MCP message, is refused.
pub fn classify(bytes: &[u8]) -> Malformed {
    let refuse = |id: Value, code: i64, message: String, notification: bool| Malformed {
        id,
        code,
        message,
        notification,
    };
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            return refuse(
                Value::Null,
                PARSE_ERROR,
                format!(
                    "Parse error: the message is not JSON ({} at line {} column {})",
                    describe(&e),
                    e.line(),
                    e.column()
                ),
                false,
            );
        }
    };
    let Value::Object(object) = value else {
        return refuse(
            Value::Null,
            INVALID_REQUEST,
            "Invalid Request: a JSON-RPC message is one JSON object (batches are not supported)"
                .into(),
            false,
        );
    };
    let id = match object.get("id") {
        Some(id @ (Value::String(_) | Value::Number(_))) => Some(id.clone()),
        _ => None,
    };
    if object.get("jsonrpc") != Some(&Value::String("2.0".into())) {
        return refuse(
            id.unwrap_or(Value::Null),
            INVALID_REQUEST,
            "Invalid Request: \"jsonrpc\" must be \"2.0\"".into(),
            false,
        );
    }
    if object.get("id").is_some() && id.is_none() {
        return refuse(
            Value::Null,
            INVALID_REQUEST,
            "Invalid Request: \"id\" must be a string or a number".into(),
            false,
        );
    }
    match object.get("method") {
        Some(Value::String(method)) => {
            let method = short(method, 64);
            match id {
                Some(id) => refuse(
                    id,
                    INVALID_PARAMS,
                    format!("Invalid params: the params of {method} do not match its schema"),
                    false,
                ),
                None => refuse(
                    Value::Null,
                    INVALID_PARAMS,
                    format!(
                        "Invalid params: the params of notification {method} do not match its schema"
                    ),
                    true,
                ),
            }
        }
        Some(_) => refuse(
            id.unwrap_or(Value::Null),
            INVALID_REQUEST,
            "Invalid Request: \"method\" must be a string".into(),
            false,
        ),
        None if object.contains_key("result") || object.contains_key("error") => refuse(
            id.unwrap_or(Value::Null),
            INVALID_REQUEST,
            "Invalid Request: the response does not match any request of this server".into(),
            false,
        ),
        None => refuse(
            id.unwrap_or(Value::Null),
            INVALID_REQUEST,
            "Invalid Request: a JSON-RPC message has a \"method\" (request or notification) or a \"result\" or \"error\" (response)".into(),
            false,
        ),
    }
}

/// A serde_json error without its position (reported separately).
fn describe(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let text = text
        .rsplit_once(" at line ")
        .map_or(text.as_str(), |(head, _)| head);
    short(text, 120)
}

/// At most `max` characters of `text`, marked when cut.
fn short(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max).collect();
    cut.push('…');
    cut
}
