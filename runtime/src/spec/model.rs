//! The job file language: the serde model of a job spec, as written in TOML
//! or JSON (CLI) or sent as JSON (MCP `submit_job`).
//!
//! Invariants: every struct denies unknown fields, so a misspelt option is an
//! error rather than a silently ignored default; a task `input` is any JSON
//! value built from finite numbers, strings, booleans, arrays and objects
//! (TOML datetimes become their RFC 3339 text); a `timeout` is a positive
//! number of milliseconds no larger than [`MAX_TIMEOUT_MS`]. Everything else
//! (names, keys, dependencies, handlers, limits) is checked by
//! [`super::validate`].

use super::canonical::canonical_json;
use crate::model::{Executor, OnFailure};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;

/// Longest accepted timeout: 30 days. Bounded so `now + timeout` can never
/// overflow a millisecond timestamp.
pub const MAX_TIMEOUT_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// A job: named stages that run one after another; tasks inside a stage run
/// concurrently unless ordered by `depends_on`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Human-readable job name (shown by `status` and `list_jobs`).
    pub name: String,
    /// Resubmitting with the same key returns the existing job instead of
    /// creating another. Default: the SHA-256 of the canonical spec, so an
    /// identical resubmission is recognised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Stages in execution order; each opens when the previous one closed.
    pub stages: Vec<StageSpec>,
}

/// A stage: a barrier. Its tasks start when it opens; it closes when every
/// task in it (including tasks spawned into it by earlier stages) is finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// Unique within the job; handlers spawn tasks into a stage by this name.
    pub name: String,
    /// Tasks present at submit. May be empty for a stage filled by tasks
    /// spawned from an earlier stage.
    #[serde(default)]
    pub tasks: Vec<TaskSpec>,
    /// What a dead task does to the job: `fail_job` (default) or `continue`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "on_failure_schema")]
    pub on_failure: Option<OnFailure>,
    /// Default attempts for this stage's tasks (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_attempts: Option<u32>,
    /// Default per-attempt time limit for this stage's tasks (default 30 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Timeout>,
    /// Default executor for this stage's tasks: `wasm` (default) or `agent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "executor_schema")]
    pub executor: Option<Executor>,
}

/// One task: a WASM handler invocation, or an agent subtask claimed over MCP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Registered handler name (e.g. `example:fanout`); required for `wasm`
    /// tasks, not allowed for `agent` tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// The handler's input; must match the handler's input schema. Default `{}`.
    #[serde(
        default = "TaskInput::empty_object",
        deserialize_with = "deserialize_task_input"
    )]
    #[schemars(with = "serde_json::Value")]
    pub input: TaskInput,
    /// Name other tasks use in `depends_on`; unique within the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Keys of tasks in the same stage that must succeed before this one runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Attempts before the task is dead (default: the stage's, else 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_attempts: Option<u32>,
    /// Per-attempt time limit (default: the stage's, else 30 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Timeout>,
    /// What this task's death does (default: the stage's `on_failure`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "on_failure_schema")]
    pub on_failure: Option<OnFailure>,
    /// `wasm` (default: the stage's) or `agent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "executor_schema")]
    pub executor: Option<Executor>,
    /// Agent tasks: a short title (required for agent tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Agent tasks: what to do, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// Agent tasks: which kind of agent should claim it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub specialist: Option<String>,
}

impl TaskSpec {
    /// A WASM task with the given handler and input and every option unset.
    pub fn wasm(handler: impl Into<String>, input: serde_json::Value) -> Self {
        TaskSpec {
            handler: Some(handler.into()),
            input: TaskInput::new(&input),
            key: None,
            depends_on: Vec::new(),
            max_attempts: None,
            timeout: None,
            on_failure: None,
            executor: None,
            title: None,
            instructions: None,
            specialist: None,
        }
    }
}

/// A task's input: any JSON value, held as its canonical JSON text (sorted
/// keys, compact). Parsed, a small object is a map node of about 0.6 KB; a
/// job of a million tasks held that way would not fit in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInput(Box<str>);

impl TaskInput {
    /// The input `value`.
    pub fn new(value: &serde_json::Value) -> Self {
        TaskInput(canonical_json(value).into_boxed_str())
    }

    /// `{}`, the default input.
    pub fn empty_object() -> Self {
        TaskInput("{}".into())
    }

    /// The canonical JSON text (what the task's handler receives).
    pub fn as_json(&self) -> &str {
        &self.0
    }

    /// The canonical JSON text, owned.
    pub fn into_json(self) -> String {
        self.0.into_string()
    }

    /// The input as a JSON value. Fails only for an input nested deeper
    /// than the JSON parser goes (128 levels), which validation refuses.
    pub fn to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_str(&self.0)
    }
}

impl Serialize for TaskInput {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_value()
            .map_err(serde::ser::Error::custom)?
            .serialize(serializer)
    }
}

fn on_failure_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "string", "enum": ["fail_job", "continue"] })
}

fn executor_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "string", "enum": ["wasm", "agent"] })
}

// ---------------------------------------------------------------- timeout

/// A per-attempt time limit in milliseconds. Written as an integer number of
/// milliseconds or as a string with a unit: `"500ms"`, `"30s"`, `"2m"`, `"1h"`.
/// Serialized as milliseconds, so `"30s"` and `30000` are the same spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timeout {
    millis: u64,
}

impl Timeout {
    /// A timeout of `millis` milliseconds; `None` when zero or above
    /// [`MAX_TIMEOUT_MS`].
    pub fn from_millis(millis: u64) -> Option<Self> {
        (millis > 0 && millis <= MAX_TIMEOUT_MS).then_some(Timeout { millis })
    }

    pub fn as_millis(self) -> u64 {
        self.millis
    }

    /// Parses `"500ms"`, `"30s"`, `"2m"`, `"1h"` (a whole number and a unit).
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = || {
            format!(
                "invalid timeout \"{text}\": write a whole number of milliseconds or a duration like \"500ms\", \"30s\", \"2m\" or \"1h\""
            )
        };
        let digits_end = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(invalid)?;
        let (digits, unit) = text.split_at(digits_end);
        if digits.is_empty() {
            return Err(invalid());
        }
        let factor: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(invalid()),
        };
        let millis = digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(factor))
            .unwrap_or(u64::MAX);
        Self::checked(millis)
    }

    fn checked(millis: u64) -> Result<Self, String> {
        if millis == 0 {
            return Err("timeout must be greater than zero".to_string());
        }
        Self::from_millis(millis).ok_or_else(|| {
            format!("timeout is longer than the 30-day maximum ({MAX_TIMEOUT_MS} ms)")
        })
    }
}

impl Serialize for Timeout {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.millis)
    }
}

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TimeoutVisitor;
        impl Visitor<'_> for TimeoutVisitor {
            type Value = Timeout;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number of milliseconds or a duration string like \"30s\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Timeout, E> {
                Timeout::checked(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Timeout, E> {
                if v < 0 {
                    return Err(E::custom("timeout must be greater than zero"));
                }
                Timeout::checked(v.unsigned_abs()).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Timeout, E> {
                Timeout::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(TimeoutVisitor)
    }
}

impl JsonSchema for Timeout {
    fn schema_name() -> Cow<'static, str> {
        "Timeout".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Milliseconds, or a whole number with a unit: \"500ms\", \"30s\", \"2m\", \"1h\".",
            "oneOf": [
                { "type": "integer", "minimum": 1, "maximum": MAX_TIMEOUT_MS },
                { "type": "string", "pattern": "^[0-9]+(ms|s|m|h)$" }
            ]
        })
    }
}

// ---------------------------------------------------------------- input

/// The key under which the `toml` deserializer presents a datetime as a
/// one-entry map. Matching it lets a TOML datetime in an input become its
/// RFC 3339 text instead of an odd object.
const TOML_DATETIME_FIELD: &str = "$__toml_private_datetime";

/// Deserializes a task input (see [`deserialize_input`]) into its text.
fn deserialize_task_input<'de, D: Deserializer<'de>>(d: D) -> Result<TaskInput, D::Error> {
    deserialize_input(d).map(|value| TaskInput::new(&value))
}

/// Deserializes a task input into a JSON value from any self-describing
/// format, refusing NaN and infinities (JSON cannot carry them; serde_json
/// would quietly turn them into `null`).
fn deserialize_input<'de, D: Deserializer<'de>>(d: D) -> Result<serde_json::Value, D::Error> {
    d.deserialize_any(InputVisitor)
}

struct InputVisitor;

impl<'de> Visitor<'de> for InputVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        serde_json::Number::from_f64(v)
            .map(serde_json::Value::Number)
            .ok_or_else(|| {
                E::custom(format!(
                    "{v} is not a finite number; JSON inputs cannot hold it"
                ))
            })
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        deserialize_input(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element_seed(InputSeed)? {
            items.push(item);
        }
        Ok(serde_json::Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == TOML_DATETIME_FIELD && object.is_empty() {
                let text: String = map.next_value()?;
                return Ok(serde_json::Value::String(text));
            }
            if object.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "duplicate key \"{key}\" in input"
                )));
            }
            let value = map.next_value_seed(InputSeed)?;
            object.insert(key, value);
        }
        Ok(serde_json::Value::Object(object))
    }
}

struct InputSeed;

impl<'de> de::DeserializeSeed<'de> for InputSeed {
    type Value = serde_json::Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        deserialize_input(d)
    }
}
