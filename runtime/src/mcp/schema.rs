//! The JSON Schemas the tools publish: portable to every client's validator,
//! and cheap to validate.
//!
//! schemars describes the Rust types exactly; clients need less and refuse
//! some of it. Every published schema is rewritten once, when the tool
//! router is built ([`publish`]):
//! - local `$ref`s are inlined and `$defs` dropped, so no client resolves
//!   references;
//! - a `true` subschema (a `serde_json::Value` field) becomes `{}`: the MCP
//!   schema types subschemas as objects, and the TypeScript SDK refuses the
//!   whole `tools/list` otherwise. `additionalProperties: false` stays;
//! - formats JSON Schema does not define (`int64`, `uint`, `double`, …) are
//!   dropped;
//! - an **output** schema types the top level of a result and describes
//!   each nested object by the keys it always carries (`required`), not by a
//!   subschema per field: the Python SDK before 2.0 checks the whole schema
//!   against the meta-schema on every call, at 0.3–0.5 ms per subschema
//!   (`lockstep bench mcp --python …` measures it per tool).
//!
//! A handler tool's input schema is the plugin author's: published
//! [`intact`], with only its boolean subschemas rewritten (the 2020-12
//! keywords MCP servers must preserve, SEP-1613).
//!
//! **Invariant 25:** every published schema holds only object subschemas
//! (booleans only as `additionalProperties`); the built-in tools' schemas
//! also hold only standard formats and no `$ref`; every output schema is
//! `type: object` at its root.

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::JsonObject;
use serde_json::{Map, Value};
use std::sync::Arc;

/// The formats JSON Schema 2020-12 defines; any other is dropped.
const STANDARD_FORMATS: [&str; 19] = [
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uuid",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

/// Keywords whose value is a map of names to subschemas.
const SCHEMA_MAPS: [&str; 3] = ["properties", "patternProperties", "dependentSchemas"];
/// Keywords whose value is one subschema.
const SCHEMA_ONE: [&str; 9] = [
    "items",
    "additionalProperties",
    "unevaluatedProperties",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
];
/// Keywords whose value is a list of subschemas.
const SCHEMA_LISTS: [&str; 4] = ["anyOf", "oneOf", "allOf", "prefixItems"];

/// Rewrite every tool's schemas in `router` as described above.
pub fn publish<S>(router: &mut ToolRouter<S>) {
    for route in router.map.values_mut() {
        route.attr.input_schema = Arc::new(portable(&route.attr.input_schema));
        if let Some(output) = &route.attr.output_schema {
            route.attr.output_schema = Some(Arc::new(flat_output(output)));
        }
    }
}

/// `schema` with references inlined, `true` subschemas as `{}` and only
/// standard formats.
pub fn portable(schema: &JsonObject) -> JsonObject {
    let definitions = schema
        .get("$defs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut root = schema.clone();
    root.remove("$defs");
    let mut inlining = Vec::new();
    rewrite_object(&mut root, &definitions, &mut inlining);
    root
}

/// The portable schema of a result, its nested objects described by their
/// keys only.
pub fn flat_output(schema: &JsonObject) -> JsonObject {
    let mut root = portable(schema);
    if let Some(Value::Object(properties)) = root.get_mut("properties") {
        for property in properties.values_mut() {
            if let Value::Object(property) = property {
                *property = keys_only(property);
            }
        }
    }
    root
}

/// A nested schema reduced to its type, its description and the keys it
/// always carries; an array keeps its items reduced the same way.
fn keys_only(schema: &Map<String, Value>) -> Map<String, Value> {
    let schema = without_null_branch(schema);
    let mut reduced = Map::new();
    for key in ["type", "description", "enum", "const", "required"] {
        if let Some(v) = schema.get(key) {
            reduced.insert(key.to_string(), v.clone());
        }
    }
    if let Some(Value::Object(items)) = schema.get("items") {
        let items = keys_only(items);
        if !items.is_empty() {
            reduced.insert("items".into(), Value::Object(items));
        }
    }
    reduced
}

/// `anyOf: [S, {"type": "null"}]` (an optional struct) as S with `null`
/// added to its type, so the reduction sees one schema.
fn without_null_branch(schema: &Map<String, Value>) -> Map<String, Value> {
    let Some(Value::Array(branches)) = schema.get("anyOf") else {
        return schema.clone();
    };
    let is_null = |b: &Value| b.get("type") == Some(&Value::String("null".into()));
    let (nulls, others): (Vec<&Value>, Vec<&Value>) = branches.iter().partition(|b| is_null(b));
    let [Value::Object(only)] = others.as_slice() else {
        return schema.clone();
    };
    if nulls.len() != 1 {
        return schema.clone();
    }
    let mut merged = only.clone();
    let types = match merged.remove("type") {
        Some(Value::String(t)) => vec![Value::String(t), Value::String("null".into())],
        Some(Value::Array(mut ts)) => {
            ts.push(Value::String("null".into()));
            ts
        }
        _ => vec![Value::String("object".into()), Value::String("null".into())],
    };
    merged.insert("type".into(), Value::Array(types));
    for (key, value) in schema {
        if key != "anyOf" {
            merged.entry(key.clone()).or_insert_with(|| value.clone());
        }
    }
    merged
}

fn rewrite_object(
    schema: &mut Map<String, Value>,
    definitions: &Map<String, Value>,
    inlining: &mut Vec<String>,
) {
    if let Some(Value::String(reference)) = schema.get("$ref").cloned() {
        let name = reference.strip_prefix("#/$defs/").unwrap_or_default();
        match definitions.get(name) {
            // A recursive type cannot be inlined; its inner occurrence accepts any value.
            Some(Value::Object(target)) if !inlining.iter().any(|n| n == name) => {
                let mut target = target.clone();
                inlining.push(name.to_string());
                rewrite_object(&mut target, definitions, inlining);
                inlining.pop();
                schema.remove("$ref");
                for (key, value) in target {
                    schema.entry(key).or_insert(value);
                }
            }
            _ => {
                schema.remove("$ref");
            }
        }
    }
    if let Some(Value::String(format)) = schema.get("format")
        && !STANDARD_FORMATS.contains(&format.as_str())
    {
        schema.remove("format");
    }
    each_subschema(schema, &[], &mut |sub| {
        objects_only(sub);
        if let Value::Object(object) = sub {
            rewrite_object(object, definitions, inlining);
        }
    });
}

/// Call `f` on every direct subschema of `schema` (those under `maps`
/// beside [`SCHEMA_MAPS`] included), except `additionalProperties: false`
/// or `true`: the one boolean every client reads.
fn each_subschema(schema: &mut Map<String, Value>, maps: &[&str], f: &mut dyn FnMut(&mut Value)) {
    for key in SCHEMA_MAPS.iter().chain(maps) {
        if let Some(Value::Object(map)) = schema.get_mut(*key) {
            map.values_mut().for_each(&mut *f);
        }
    }
    for key in SCHEMA_ONE {
        match schema.get_mut(key) {
            Some(Value::Bool(_)) if key == "additionalProperties" => {}
            Some(sub) => f(sub),
            None => {}
        }
    }
    for key in SCHEMA_LISTS {
        if let Some(Value::Array(list)) = schema.get_mut(key) {
            list.iter_mut().for_each(&mut *f);
        }
    }
}

/// A boolean subschema as its object form: `true` is `{}`, `false` is
/// `{"not": {}}`; they accept the same values.
fn objects_only(sub: &mut Value) {
    match sub {
        Value::Bool(true) => *sub = Value::Object(Map::new()),
        Value::Bool(false) => *sub = serde_json::json!({ "not": {} }),
        _ => {}
    }
}

/// A handler's input schema as it is published: intact — every keyword,
/// `$schema`, `$defs`, `$ref`, `$anchor` and formats included — but for
/// boolean subschemas, written as their object forms, at any depth.
pub fn intact(schema: &JsonObject) -> JsonObject {
    fn walk(schema: &mut Map<String, Value>) {
        each_subschema(schema, &["$defs", "definitions"], &mut |sub| {
            objects_only(sub);
            if let Value::Object(object) = sub {
                walk(object);
            }
        });
    }
    let mut root = schema.clone();
    walk(&mut root);
    root
}
