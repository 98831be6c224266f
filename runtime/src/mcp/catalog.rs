//! What plugins offer MCP clients besides tools (their WIT `mcp-catalog`
//! export): resources and resource templates, each read by a handler, and
//! prompts, each rendered by a handler. A request runs the handler once
//! outside any job (nothing is stored) and shapes its output: a resource's
//! `{"text"}` or `{"blob"}`, a prompt's array of messages.
//! `super::resources` and `super::prompts` list these beside lockstep's own
//! and hand them the requests lockstep's own do not answer.
//!
//! **Invariants:**
//! - A URI or prompt name means one thing: lockstep's own come first, then
//!   each plugin's in scan order; a later one that repeats a name is left
//!   out (and logged).
//! - Prompt arguments are checked like lockstep's own (Invariant 24):
//!   unknown, missing required, non-string or oversized ones are
//!   `invalid_params` naming the argument, and the handler never runs.
//! - A handler's failure or malformed output is an error saying which
//!   handler and why; its text is guest text, escaped and cut.

use super::params::{ArgError, MAX_MESSAGE_BYTES, clip};
use crate::engine::Engine;
use crate::plugin::{ExecError, McpArgument, McpPrompt, McpResource};
use rmcp::ErrorData;
use rmcp::model::{
    GetPromptResult, JsonObject, Prompt, PromptArgument, PromptMessage, ReadResourceResult,
    Resource, ResourceContents, ResourceTemplate,
};
use std::collections::BTreeSet;

/// Longest prompt argument value, in bytes.
pub const MAX_ARGUMENT_BYTES: usize = 64 * 1024;

/// The plugins' resources and templates whose URI no earlier one has
/// (none can be lockstep's own: a plugin may not offer `lockstep://`).
fn resources(engine: &Engine) -> Vec<McpResource> {
    firsts(engine.plugins().mcp_resources(), &[], "resource", |r| {
        (&r.uri, &r.handler)
    })
}

/// The plugins' prompts whose name is not in `taken` nor an earlier one's.
fn prompts(engine: &Engine, taken: &[&str]) -> Vec<McpPrompt> {
    firsts(engine.plugins().mcp_prompts(), taken, "prompt", |p| {
        (&p.name, &p.handler)
    })
}

/// `items` but those whose name (by `name_of`, with the serving handler)
/// is in `taken` or an earlier item's; each left out is logged.
fn firsts<T>(
    items: Vec<T>,
    taken: &[&str],
    what: &str,
    name_of: impl Fn(&T) -> (&String, &String),
) -> Vec<T> {
    let mut seen: BTreeSet<String> = taken.iter().map(|t| t.to_string()).collect();
    items
        .into_iter()
        .filter(|item| {
            let (name, handler) = name_of(item);
            let first = seen.insert(name.clone());
            if !first {
                tracing::warn!(
                    "{what} {} of handler {} is not offered: lockstep or an earlier plugin offers that name",
                    crate::limits::printable(name),
                    crate::limits::printable(handler)
                );
            }
            first
        })
        .collect()
}

/// The plugins' plain resources, for `resources/list`.
pub fn listed_resources(engine: &Engine) -> Vec<Resource> {
    resources(engine)
        .into_iter()
        .filter(|r| !r.is_template())
        .map(|r| {
            Resource::new(r.uri, r.name)
                .with_description(r.description)
                .with_mime_type(r.mime_type)
        })
        .collect()
}

/// The plugins' resource templates, for `resources/templates/list`.
pub fn listed_templates(engine: &Engine) -> Vec<ResourceTemplate> {
    resources(engine)
        .into_iter()
        .filter(McpResource::is_template)
        .map(|r| {
            ResourceTemplate::new(r.uri, r.name)
                .with_description(r.description)
                .with_mime_type(r.mime_type)
        })
        .collect()
}

/// The plugins' prompts, for `prompts/list`, leaving out names in `taken`.
pub fn listed_prompts(engine: &Engine, taken: &[&str]) -> Vec<Prompt> {
    prompts(engine, taken)
        .into_iter()
        .map(|p| {
            let arguments = p
                .arguments
                .iter()
                .map(|a| {
                    PromptArgument::new(a.name.clone())
                        .with_description(a.description.clone())
                        .with_required(a.required)
                })
                .collect();
            Prompt::new(p.name, Some(p.description), Some(arguments))
        })
        .collect()
}

/// The names of the plugins' prompts (after lockstep's `taken`).
pub fn prompt_names(engine: &Engine, taken: &[&str]) -> Vec<String> {
    prompts(engine, taken).into_iter().map(|p| p.name).collect()
}

/// True when `uri` names a plugin's resource (or matches its template).
pub fn names_resource(engine: &Engine, uri: &str) -> bool {
    resources(engine).iter().any(|r| r.matches(uri).is_some())
}

/// Read `uri` through the plugin resource it names, if one does.
pub async fn read(engine: &Engine, uri: &str) -> Option<Result<ReadResourceResult, ErrorData>> {
    let (resource, variables) = resources(engine)
        .into_iter()
        .find_map(|r| r.matches(uri).map(|v| (r, v)))?;
    let variables: JsonObject = variables
        .into_iter()
        .map(|(k, v)| (k, serde_json::Value::String(v)))
        .collect();
    let input = serde_json::json!({ "uri": uri, "variables": variables });
    Some(
        run(engine, &resource.handler, &input)
            .await
            .and_then(|output| contents(&resource, uri, output)),
    )
}

/// The contents of a resource read: `{"text"}` or `{"blob"}` of the output.
fn contents(
    resource: &McpResource,
    uri: &str,
    output: serde_json::Value,
) -> Result<ReadResourceResult, ErrorData> {
    let item = match (output.get("text"), output.get("blob")) {
        (Some(serde_json::Value::String(text)), None) => ResourceContents::text(text.clone(), uri),
        (None, Some(serde_json::Value::String(blob))) => ResourceContents::blob(blob.clone(), uri),
        _ => {
            return Err(bad_output(
                &resource.handler,
                "a resource's output is {\"text\": \"…\"} or {\"blob\": \"<base64>\"}",
            ));
        }
    };
    Ok(ReadResourceResult::new(vec![
        item.with_mime_type(resource.mime_type.clone()),
    ]))
}

/// Get the plugin prompt `name` with `arguments`, if a plugin offers one
/// of that name (and it is not in `taken`).
pub async fn get(
    engine: &Engine,
    taken: &[&str],
    name: &str,
    arguments: Option<&JsonObject>,
) -> Option<Result<GetPromptResult, ErrorData>> {
    let prompt = prompts(engine, taken)
        .into_iter()
        .find(|p| p.name == name)?;
    Some(render(engine, &prompt, arguments).await)
}

async fn render(
    engine: &Engine,
    prompt: &McpPrompt,
    arguments: Option<&JsonObject>,
) -> Result<GetPromptResult, ErrorData> {
    let empty = JsonObject::new();
    let arguments = arguments.unwrap_or(&empty);
    if let Some(unknown) = arguments
        .keys()
        .find(|k| !prompt.arguments.iter().any(|a| &a.name == *k))
    {
        let known: Vec<&str> = prompt.arguments.iter().map(|a| a.name.as_str()).collect();
        return Err(ArgError::new(
            format!("arguments.{}", clip(unknown, 100)),
            format!(
                "is not an argument of this prompt; it takes {}",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ),
        )
        .into_error_data());
    }
    for argument in &prompt.arguments {
        let field = format!("arguments.{}", argument.name);
        match arguments.get(&argument.name) {
            None if argument.required => {
                return Err(ArgError::new(field, "is missing").into_error_data());
            }
            None => {}
            Some(serde_json::Value::String(text)) => {
                crate::spec::field::text(&field, text, MAX_ARGUMENT_BYTES)
                    .map_err(ArgError::into_error_data)?;
            }
            Some(_) => return Err(ArgError::new(field, "is not a string").into_error_data()),
        }
    }
    let output = run(
        engine,
        &prompt.handler,
        &serde_json::Value::Object(arguments.clone()),
    )
    .await?;
    let messages: Vec<PromptMessage> = match output {
        serde_json::Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(at, item)| {
                serde_json::from_value(item).map_err(|e| {
                    bad_output(
                        &prompt.handler,
                        &format!("message {at} is not a prompt message ({e})"),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(bad_output(
                &prompt.handler,
                "a prompt's output is an array of messages {\"role\", \"content\"}",
            ));
        }
    };
    Ok(GetPromptResult::new(messages).with_description(prompt.description.clone()))
}

/// What completion suggests for `argument` of the plugin prompt `name`
/// (`Some(Err)`: it has no such argument), if a plugin offers the prompt.
pub fn prompt_values(
    engine: &Engine,
    taken: &[&str],
    name: &str,
    argument: &str,
) -> Option<Result<Vec<String>, String>> {
    let prompt = prompts(engine, taken)
        .into_iter()
        .find(|p| p.name == name)?;
    Some(values(&prompt.arguments, argument))
}

/// What completion suggests for `variable` of the plugin resource template
/// `uri`, if a plugin offers it.
pub fn template_values(
    engine: &Engine,
    uri: &str,
    variable: &str,
) -> Option<Result<Vec<String>, String>> {
    let resource = resources(engine)
        .into_iter()
        .find(|r| r.is_template() && r.uri == uri)?;
    Some(values(&resource.variables, variable))
}

/// The values of `name` among `arguments`, or the names it could be.
fn values(arguments: &[McpArgument], name: &str) -> Result<Vec<String>, String> {
    match arguments.iter().find(|a| a.name == name) {
        Some(argument) => Ok(argument.values.clone()),
        None => Err(arguments
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")),
    }
}

/// Run `handler` on `input` outside any job; its output as JSON.
async fn run(
    engine: &Engine,
    handler: &str,
    input: &serde_json::Value,
) -> Result<serde_json::Value, ErrorData> {
    let plugins = engine.plugins();
    let outcome = plugins.answer(handler, input).await.map_err(|e| match e {
        ExecError::Input(e) => ArgError::new("arguments", e.to_string()).into_error_data(),
        ExecError::Run(failure) => ErrorData::internal_error(
            clip(
                &crate::limits::printable(&format!("handler {handler} failed: {failure}")),
                MAX_MESSAGE_BYTES,
            ),
            None,
        ),
    })?;
    serde_json::from_str(&outcome.output)
        .map_err(|e| bad_output(handler, &format!("its output is not JSON ({e})")))
}

fn bad_output(handler: &str, why: &str) -> ErrorData {
    ErrorData::internal_error(
        clip(
            &crate::limits::printable(&format!(
                "handler {handler} returned output lockstep cannot send: {why}"
            )),
            MAX_MESSAGE_BYTES,
        ),
        None,
    )
}
