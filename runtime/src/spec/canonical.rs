//! Canonical JSON for job specs and the default idempotency key.
//!
//! Invariant: two specs that mean the same job have byte-identical canonical
//! JSON, whatever the format (TOML or JSON), key order, whitespace or timeout
//! spelling (`"30s"` vs `30000`) they were written in. Objects are written
//! with their keys sorted by their UTF-8 bytes, no insignificant whitespace,
//! and numbers as serde_json prints them. The sort is done here rather than
//! relying on `serde_json::Map`'s order, which changes to insertion order
//! when any crate in the build enables serde_json's `preserve_order`.

use super::model::JobSpec;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Writes `value` as canonical JSON (sorted keys, compact).
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::String(text) => write_string(text, out),
        // Scalars print the same in any order; serde_json's writer is canonical for them.
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn write_string(text: &str, out: &mut String) {
    out.push_str(&Value::String(text.to_owned()).to_string());
}

/// The canonical JSON of a whole spec (as stored in `SubmitJob::spec_json`).
pub fn canonical_spec_json(spec: &JobSpec) -> Result<String, serde_json::Error> {
    Ok(canonical_json(&serde_json::to_value(spec)?))
}

/// The default idempotency key: lowercase hex SHA-256 of the canonical JSON
/// of the spec without its `idempotency_key`.
///
/// Canonical because the key must identify the *job*, not its spelling:
/// resubmitting the same job reformatted, with keys reordered, converted
/// from TOML to JSON, or with `"30s"` written as `30000`, must be recognised
/// as the same submission, while any change to what the job does (a name,
/// an input value, a dependency) gives a different key.
pub fn default_idempotency_key(spec: &JobSpec) -> Result<String, serde_json::Error> {
    let mut value = serde_json::to_value(spec)?;
    if let Value::Object(map) = &mut value {
        map.remove("idempotency_key");
    }
    Ok(hex::encode(Sha256::digest(
        canonical_json(&value).as_bytes(),
    )))
}
