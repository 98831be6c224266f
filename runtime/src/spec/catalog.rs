//! Which handlers exist and what input each accepts, as seen by validation.
//!
//! [`HandlerCatalog`] is the one question `spec` asks the outside world; the
//! plugin host answers it from the handlers its plugins described.
//! [`SchemaCatalog`] answers it from (name, JSON Schema) pairs with the
//! `jsonschema` crate. Invariant: a `SchemaCatalog` holds only schemas that
//! compiled, and never fetches a remote `$ref` (the crate is built without
//! its resolvers), so validating an input does no I/O.

use serde_json::Value;
use std::collections::BTreeMap;

/// The registered handlers and their input schemas.
pub trait HandlerCatalog {
    /// Every registered handler name.
    fn names(&self) -> Vec<String>;
    /// Checks `input` against `handler`'s input schema. The error is one
    /// line: the JSON pointer of the failing field inside the input, `": "`
    /// and the reason (e.g. `/count: "many" is not of type "integer"`), or
    /// only the reason when the input as a whole fails.
    fn validate_input(&self, handler: &str, input: &Value) -> Result<(), String>;
}

/// A handler's input schema that does not compile.
#[derive(Debug, thiserror::Error)]
#[error("input schema of handler \"{handler}\" is invalid: {reason}")]
pub struct InvalidSchema {
    pub handler: String,
    pub reason: String,
}

/// A [`HandlerCatalog`] built from JSON Schemas.
pub struct SchemaCatalog {
    handlers: BTreeMap<String, jsonschema::Validator>,
}

/// Longest reason kept from a schema error: the `jsonschema` messages embed
/// the offending value, which may be a megabyte of hostile input.
const MAX_REASON_CHARS: usize = 200;

impl SchemaCatalog {
    /// Compiles each handler's schema. A later entry with the same name
    /// replaces an earlier one (the plugin host rejects duplicates before this).
    pub fn new<I, S>(handlers: I) -> Result<Self, InvalidSchema>
    where
        I: IntoIterator<Item = (S, Value)>,
        S: Into<String>,
    {
        let mut compiled = BTreeMap::new();
        for (name, schema) in handlers {
            let name = name.into();
            let validator = jsonschema::validator_for(&schema).map_err(|e| InvalidSchema {
                handler: name.clone(),
                reason: truncate(e.to_string()),
            })?;
            compiled.insert(name, validator);
        }
        Ok(SchemaCatalog { handlers: compiled })
    }
}

impl HandlerCatalog for SchemaCatalog {
    fn names(&self) -> Vec<String> {
        self.handlers.keys().cloned().collect()
    }

    fn validate_input(&self, handler: &str, input: &Value) -> Result<(), String> {
        let Some(validator) = self.handlers.get(handler) else {
            return Err(format!("handler \"{handler}\" is not registered"));
        };
        match validator.validate(input) {
            Ok(()) => Ok(()),
            Err(error) => {
                let reason = truncate(error.to_string());
                match error.instance_path().as_str() {
                    "" => Err(reason),
                    pointer => Err(format!("{pointer}: {reason}")),
                }
            }
        }
    }
}

fn truncate(mut text: String) -> String {
    if let Some((cut, _)) = text.char_indices().nth(MAX_REASON_CHARS) {
        text.truncate(cut);
        text.push('…');
    }
    text
}
