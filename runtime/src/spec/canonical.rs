//! Canonical JSON for job specs and the default idempotency key.
//!
//! Invariant: two specs that mean the same job have byte-identical canonical
//! JSON, whatever the format (TOML or JSON), key order, whitespace or timeout
//! spelling (`"30s"` vs `30000`) they were written in. Objects are written
//! with their keys sorted by their UTF-8 bytes, no insignificant whitespace,
//! and numbers as serde_json prints them. The sort is done here rather than
//! relying on `serde_json::Map`'s order, which changes to insertion order
//! when any crate in the build enables serde_json's `preserve_order`.

use super::model::{JobSpec, StageSpec};
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
    // Measured first, then written into a string of that size: a growing
    // string of a large spec would hold up to twice its size (and, with an
    // allocator that copies on growth, briefly three times).
    let mut len = 0;
    write_spec(spec, true, &mut |text| len += text.len())?;
    let mut out = String::with_capacity(len);
    write_spec(spec, true, &mut |text| out.push_str(text))?;
    Ok(out)
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
    let mut hash = Sha256::new();
    write_spec(spec, false, &mut |text| hash.update(text.as_bytes()))?;
    Ok(hex::encode(hash.finalize()))
}

/// The default idempotency key of a spec whose canonical JSON without its
/// `idempotency_key` is `canonical`.
pub(crate) fn idempotency_key_of(canonical: &str) -> String {
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

/// Write the canonical JSON of `spec` (without its `idempotency_key` unless
/// `with_key`) to `out`, a task at a time: the text is what
/// [`canonical_json`] of the whole spec's JSON value would be, but neither
/// that value nor (when `out` does not keep it) the text is ever whole in
/// memory, which for a job of a million tasks would be gigabytes.
fn write_spec(
    spec: &JobSpec,
    with_key: bool,
    out: &mut dyn FnMut(&str),
) -> Result<(), serde_json::Error> {
    // The spec's own fields, with its stages written below one at a time.
    let head = JobSpec {
        name: spec.name.clone(),
        idempotency_key: if with_key {
            spec.idempotency_key.clone()
        } else {
            None
        },
        stages: Vec::new(),
    };
    write_object(serde_json::to_value(&head)?, "stages", out, &mut |out| {
        write_array(&spec.stages, out, &mut |stage, out| {
            let head = StageSpec {
                name: stage.name.clone(),
                tasks: Vec::new(),
                on_failure: stage.on_failure,
                max_attempts: stage.max_attempts,
                timeout: stage.timeout,
                executor: stage.executor,
            };
            write_object(serde_json::to_value(&head)?, "tasks", out, &mut |out| {
                write_array(&stage.tasks, out, &mut |task, out| {
                    out(&canonical_json(&serde_json::to_value(task)?));
                    Ok(())
                })
            })
        })
    })
}

/// Where canonical text goes, a piece at a time.
type Sink<'a> = dyn FnMut(&str) + 'a;
/// Writes one part of the canonical text to a sink.
type WriteInto<'a> = dyn FnMut(&mut Sink<'_>) -> Result<(), serde_json::Error> + 'a;
/// Writes one item of an array to a sink.
type WriteItem<'a, T> = dyn FnMut(&T, &mut Sink<'_>) -> Result<(), serde_json::Error> + 'a;

/// `value` (an object) in canonical form, its member `lazy` written by
/// `write_lazy` in its place among the sorted keys.
fn write_object(
    value: Value,
    lazy: &str,
    out: &mut dyn FnMut(&str),
    write_lazy: &mut WriteInto<'_>,
) -> Result<(), serde_json::Error> {
    let Value::Object(map) = value else {
        out(&canonical_json(&value));
        return Ok(());
    };
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out("{");
    for (i, (key, item)) in entries.into_iter().enumerate() {
        if i > 0 {
            out(",");
        }
        let mut text = String::new();
        write_string(key, &mut text);
        text.push(':');
        out(&text);
        if key == lazy {
            write_lazy(out)?;
        } else {
            out(&canonical_json(item));
        }
    }
    out("}");
    Ok(())
}

fn write_array<T>(
    items: &[T],
    out: &mut dyn FnMut(&str),
    write_item: &mut WriteItem<'_, T>,
) -> Result<(), serde_json::Error> {
    out("[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out(",");
        }
        write_item(item, out)?;
    }
    out("]");
    Ok(())
}
