//! Pipeline files (`lockstep-ci.toml`, or JSON) → one job of `command`
//! tasks, a [`StepPlan`] each.
//!
//! Owns the pipeline file language ([`file`]), the rules a pipeline must
//! satisfy and where a broken one points ([`locate`]: `file:line:column`),
//! matrix expansion (axes, `include`, `exclude`, at most
//! [`MAX_MATRIX_JOBS`] per step), `needs` → task dependencies, and how a
//! plan becomes a [`SubmitJob`] (one stage; every step `release_then_fail`,
//! or `continue` when `allow_failure`, so a failure releases its dependents
//! and their `if` decides).
//!
//! **Invariants:** every rule is checked before anything is written, and a
//! broken one is one sentence naming the file, line and step. Besides
//! reading the file, the only I/O is the [`CommandCatalog`]'s check that a
//! component exists and is a `wasi:cli/command`. A step's secrets are names;
//! their values never enter a plan.

mod file;
mod locate;

use super::parse::line_column;
use super::{Format, SpecError, TextLocation};
use crate::limits::{MAX_NAME_BYTES, check_name};
use crate::model::{
    CachePlan, Condition, Executor, MAX_MATRIX_JOBS, MatrixGroup, NewStage, NewTask, OnFailure,
    RetryOn, StepKind, StepPlan, SubmitJob, TenantId,
};
use file::{AxisValue, PipelineFile, StepFile};
use locate::Seg;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Default time a step may run.
pub const DEFAULT_STEP_TIMEOUT_MS: u64 = 10 * 60 * 1000;
/// Default memory of a step.
pub const DEFAULT_STEP_MEMORY_MIB: u64 = 512;
/// Largest memory a step may ask for (16 GiB, the command host's limit).
pub const MAX_STEP_MEMORY_MIB: u64 = 16 * 1024;
/// Most retries a step may ask for.
pub const MAX_RETRY_LIMIT: u32 = 10;
/// Attempts a step keeps beyond its retries for runs lost to a crash of
/// the runner (their leases expire and count an attempt).
pub const CRASH_ATTEMPTS: u32 = 8;
/// Largest pipeline file.
pub const MAX_PIPELINE_BYTES: u64 = 1 << 20;
/// Guest paths a step's cache may not take.
const RESERVED_GUEST_PATHS: [&str; 3] = ["/workspace", "/out", "/artifacts"];

/// Where pipeline components come from, as validation sees them.
pub trait CommandCatalog {
    /// The file of the command component called `name` in the plugin
    /// directories.
    fn named(&self, name: &str) -> Option<PathBuf>;
    /// The plugin directories, for an error that says where it looked.
    fn searched(&self) -> String;
    /// Whether `path` is a loadable `wasi:cli/command`: its hex sha256, or
    /// one sentence saying why not.
    fn check(&self, path: &Path) -> Result<String, String>;
}

/// Where a pipeline's files are.
#[derive(Debug, Clone, Default)]
pub struct PipelineOptions {
    /// Preopened read-only at `/workspace` (default: the file's directory).
    pub workspace: Option<PathBuf>,
    /// Artifacts and caches (default: `.lockstep` in the workspace).
    pub state_dir: Option<PathBuf>,
}

/// A validated pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    pub file: PathBuf,
    pub steps: Vec<StepPlan>,
}

impl Pipeline {
    /// The job that runs it: one stage of `command` tasks.
    pub fn to_job(&self, tenant: TenantId, idempotency_key: String, now: i64) -> SubmitJob {
        steps_job(&self.name, &self.steps, tenant, idempotency_key, now)
    }

    /// A digest of the plans (what makes two runs of a file the same run).
    pub fn digest(&self) -> String {
        plans_digest(&self.steps)
    }
}

/// A digest of step plans, ignoring what was carried over.
pub fn plans_digest(steps: &[StepPlan]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for step in steps {
        let mut plan = step.clone();
        plan.reuse = None;
        h.update(serde_json::to_vec(&plan).unwrap_or_default());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// The job of `steps` (a new run, a resumed one, or a re-run).
pub fn steps_job(
    name: &str,
    steps: &[StepPlan],
    tenant: TenantId,
    idempotency_key: String,
    now: i64,
) -> SubmitJob {
    let tasks = steps
        .iter()
        .map(|step| NewTask {
            handler: step
                .component
                .file_stem()
                .map(|s| {
                    s.to_string_lossy()
                        .chars()
                        .take(MAX_NAME_BYTES / 4)
                        .collect()
                })
                .unwrap_or_else(|| "command".to_string()),
            executor: Executor::Command,
            key: Some(step.key.clone()),
            depends_on: step.needs.clone(),
            input_json: serde_json::to_string(step).unwrap_or_default(),
            max_attempts: (step.retry_limit + 1 + CRASH_ATTEMPTS) as i32,
            // The lease and the step's own deadline bound a run; this is
            // the step's time limit as stored.
            timeout_ms: step.timeout_ms as i64,
            on_failure: if step.allow_failure {
                OnFailure::Continue
            } else {
                OnFailure::ReleaseThenFail
            },
            agent_json: None,
        })
        .collect();
    let spec_json = serde_json::to_string(&serde_json::json!({
        "pipeline": name,
        "steps": steps.iter().map(|s| &s.key).collect::<Vec<_>>(),
    }))
    .unwrap_or_default();
    SubmitJob {
        tenant,
        name: name.to_string(),
        idempotency_key,
        spec_json,
        stages: vec![NewStage {
            name: "steps".to_string(),
            on_failure: OnFailure::ReleaseThenFail,
            max_attempts: None,
            timeout_ms: None,
            tasks,
        }],
        now,
    }
}

/// A broken rule, located.
struct Broken {
    path: Vec<Seg>,
    message: String,
}

fn at(path: Vec<Seg>, message: impl Into<String>) -> Broken {
    Broken {
        path,
        message: message.into(),
    }
}

fn key(name: &str) -> Seg {
    Seg::Key(name.to_string())
}

fn step_field(i: usize, field: &str) -> Vec<Seg> {
    vec![key("steps"), Seg::Index(i), key(field)]
}

fn step_item(i: usize, field: &str, j: usize) -> Vec<Seg> {
    vec![key("steps"), Seg::Index(i), key(field), Seg::Index(j)]
}

/// Read and validate the pipeline file at `path`.
pub fn load_pipeline(
    path: &Path,
    catalog: &dyn CommandCatalog,
    options: &PipelineOptions,
) -> Result<Pipeline, SpecError> {
    let format = Format::from_path(path)?;
    let origin = path.display().to_string();
    let read_error = |source| SpecError::Read {
        path: origin.clone(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_error)?;
    if meta.len() > MAX_PIPELINE_BYTES {
        return Err(SpecError::SpecTooLarge {
            origin: Some(origin.clone()),
            size: Some(meta.len()),
            limit: MAX_PIPELINE_BYTES,
        });
    }
    let bytes = std::fs::read(path).map_err(read_error)?;
    let text = String::from_utf8(bytes).map_err(|_| SpecError::Malformed {
        format,
        location: TextLocation {
            origin: Some(origin.clone()),
            line_column: None,
        },
        message: "the file is not UTF-8 text".to_string(),
    })?;
    let file: PipelineFile = super::parse::parse_typed(&text, format, Some(&origin))?;
    let dir = path
        .canonicalize()
        .map_err(read_error)?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let workspace = match &options.workspace {
        Some(w) => w.canonicalize().map_err(|e| SpecError::Read {
            path: w.display().to_string(),
            source: e,
        })?,
        None => dir.clone(),
    };
    if !workspace.is_dir() {
        return Err(SpecError::invalid(
            "--workspace",
            format!("{} is not a directory", workspace.display()),
        ));
    }
    let state_dir = options
        .state_dir
        .clone()
        .unwrap_or_else(|| workspace.join(".lockstep"));
    let ctx = Resolve {
        dir: &dir,
        workspace: &workspace,
        state_dir: &state_dir,
        catalog,
    };
    let name = file.name.clone().unwrap_or_else(|| {
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "pipeline".to_string())
    });
    let located = |b: Broken| {
        let offset = match format {
            Format::Toml => locate::toml_offset(&text, &b.path),
            Format::Json => locate::json_offset(&text, &b.path),
        };
        SpecError::Malformed {
            format,
            location: TextLocation {
                origin: Some(origin.clone()),
                line_column: offset.map(|o| line_column(&text, o)),
            },
            message: b.message,
        }
    };
    if let Err(e) = check_name(&name, MAX_NAME_BYTES) {
        return Err(located(at(vec![key("name")], format!("name {e}"))));
    }
    let steps = resolve(&file, &ctx).map_err(located)?;
    Ok(Pipeline {
        name,
        file: path.to_path_buf(),
        steps,
    })
}

struct Resolve<'a> {
    dir: &'a Path,
    workspace: &'a Path,
    state_dir: &'a Path,
    catalog: &'a dyn CommandCatalog,
}

fn resolve(file: &PipelineFile, ctx: &Resolve<'_>) -> Result<Vec<StepPlan>, Broken> {
    if file.steps.is_empty() {
        return Err(at(
            Vec::new(),
            "the pipeline has no steps; add at least one [[steps]] table with a key and a component",
        ));
    }
    // Step keys first, so `needs` can name a later step.
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, step) in file.steps.iter().enumerate() {
        check_key(&step.key).map_err(|m| at(step_field(i, "key"), m))?;
        if let Some(first) = index.insert(step.key.as_str(), i) {
            return Err(at(
                step_field(i, "key"),
                format!(
                    "step key \"{}\" is used twice (steps {} and {}); keys must be unique",
                    step.key,
                    first + 1,
                    i + 1
                ),
            ));
        }
    }
    for (i, step) in file.steps.iter().enumerate() {
        for (j, need) in step.needs.iter().enumerate() {
            if !index.contains_key(need.as_str()) {
                return Err(at(
                    step_item(i, "needs", j),
                    format!(
                        "step \"{}\" needs \"{}\", which is not a step of this pipeline (steps: {})",
                        step.key,
                        need,
                        file.steps
                            .iter()
                            .map(|s| s.key.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            if need == &step.key {
                return Err(at(
                    step_item(i, "needs", j),
                    format!("step \"{}\" needs itself", step.key),
                ));
            }
        }
    }
    if let Some(cycle) = find_cycle(&file.steps, &index) {
        let first = cycle[0];
        let names: Vec<&str> = cycle
            .iter()
            .chain(std::iter::once(&first))
            .map(|&i| file.steps[i].key.as_str())
            .collect();
        return Err(at(
            step_field(first, "needs"),
            format!(
                "the needs of steps {} form a cycle; remove one of them",
                names.join(" → ")
            ),
        ));
    }
    // Expand every step; `needs` of a matrix step means all its expansions.
    let mut expanded: Vec<Vec<StepPlan>> = Vec::with_capacity(file.steps.len());
    let mut all_keys: BTreeSet<String> = BTreeSet::new();
    for (i, step) in file.steps.iter().enumerate() {
        let plans = resolve_step(i, step, ctx)?;
        for plan in &plans {
            if !all_keys.insert(plan.key.clone()) {
                return Err(at(
                    step_field(i, "matrix"),
                    format!(
                        "step \"{}\" expands to \"{}\", which is already a step key; rename one of them",
                        step.key, plan.key
                    ),
                ));
            }
        }
        expanded.push(plans);
    }
    let keys_of: Vec<Vec<String>> = expanded
        .iter()
        .map(|plans| plans.iter().map(|p| p.key.clone()).collect())
        .collect();
    let mut out = Vec::new();
    for (i, plans) in expanded.into_iter().enumerate() {
        let needs: Vec<String> = file.steps[i]
            .needs
            .iter()
            .flat_map(|n| keys_of[index[n.as_str()]].iter().cloned())
            .collect();
        for mut plan in plans {
            plan.needs = needs.clone();
            out.push(plan);
        }
    }
    Ok(out)
}

fn check_key(key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && key.len() <= 64
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !key.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "step key \"{}\" is not allowed: use 1 to 64 letters, digits, '-', '_' or '.' (not starting with '.')",
            crate::limits::printable(key)
        ))
    }
}

/// A cycle in `needs` as step indexes, if there is one.
fn find_cycle(steps: &[StepFile], index: &HashMap<&str, usize>) -> Option<Vec<usize>> {
    // 0 unvisited, 1 on the path, 2 done.
    let mut mark = vec![0u8; steps.len()];
    let mut path = Vec::new();
    fn visit(
        i: usize,
        steps: &[StepFile],
        index: &HashMap<&str, usize>,
        mark: &mut [u8],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        mark[i] = 1;
        path.push(i);
        for need in &steps[i].needs {
            let j = index[need.as_str()];
            if mark[j] == 1 {
                let start = path.iter().position(|&p| p == j).unwrap_or(0);
                return Some(path[start..].to_vec());
            }
            if mark[j] == 0
                && let Some(c) = visit(j, steps, index, mark, path)
            {
                return Some(c);
            }
        }
        path.pop();
        mark[i] = 2;
        None
    }
    for i in 0..steps.len() {
        if mark[i] == 0
            && let Some(c) = visit(i, steps, index, &mut mark, &mut path)
        {
            return Some(c);
        }
    }
    None
}

fn resolve_step(i: usize, step: &StepFile, ctx: &Resolve<'_>) -> Result<Vec<StepPlan>, Broken> {
    let kind = match step.kind.as_deref() {
        None | Some("command") => StepKind::Command,
        Some("rust-test") => StepKind::RustTest,
        Some(other) => {
            return Err(at(
                step_field(i, "kind"),
                format!(
                    "step \"{}\": kind \"{}\" is not known; use \"command\" or \"rust-test\"",
                    step.key,
                    crate::limits::printable(other)
                ),
            ));
        }
    };
    let component = resolve_component(i, step, ctx)?;
    let component_sha256 = ctx.catalog.check(&component).map_err(|m| {
        at(
            step_field(i, "component"),
            format!("step \"{}\": {m}", step.key),
        )
    })?;
    let condition = match step.condition.as_deref() {
        None | Some("success()") => Condition::Success,
        Some("failure()") => Condition::Failure,
        Some("always()") => Condition::Always,
        Some(other) => {
            return Err(at(
                step_field(i, "if"),
                format!(
                    "step \"{}\": if = \"{}\" is not known; use \"success()\", \"failure()\" or \"always()\"",
                    step.key,
                    crate::limits::printable(other)
                ),
            ));
        }
    };
    let memory_mib = step.memory_mib.unwrap_or(DEFAULT_STEP_MEMORY_MIB);
    if memory_mib == 0 || memory_mib > MAX_STEP_MEMORY_MIB {
        return Err(at(
            step_field(i, "memory_mib"),
            format!(
                "step \"{}\": memory_mib must be between 1 and {MAX_STEP_MEMORY_MIB}",
                step.key
            ),
        ));
    }
    let (retry_on, retry_limit) = match &step.retry {
        None => (Vec::new(), 0),
        Some(r) => {
            let mut on = Vec::new();
            for (j, text) in r.on.iter().enumerate() {
                let parsed = RetryOn::parse(text).ok_or_else(|| {
                    at(
                        vec![key("steps"), Seg::Index(i), key("retry"), key("on"), Seg::Index(j)],
                        format!(
                            "step \"{}\": retry on \"{}\" is not an outcome; use \"trap\", \"timeout\", \"memory\", \"exit:N\" (N not 0) or \"exit:any\"",
                            step.key,
                            crate::limits::printable(text)
                        ),
                    )
                })?;
                on.push(parsed);
            }
            if r.limit > MAX_RETRY_LIMIT {
                return Err(at(
                    vec![key("steps"), Seg::Index(i), key("retry"), key("limit")],
                    format!(
                        "step \"{}\": retry limit {} is more than {MAX_RETRY_LIMIT}",
                        step.key, r.limit
                    ),
                ));
            }
            (on, r.limit)
        }
    };
    for (j, name) in step.secrets.iter().enumerate() {
        if !is_env_name(name) {
            return Err(at(
                step_item(i, "secrets", j),
                format!(
                    "step \"{}\": secret name \"{}\" is not allowed: use letters, digits and '_', not starting with a digit",
                    step.key,
                    crate::limits::printable(name)
                ),
            ));
        }
    }
    for name in step.env.keys() {
        if !is_env_name(name) {
            return Err(at(
                vec![key("steps"), Seg::Index(i), key("env"), key(name)],
                format!(
                    "step \"{}\": env name \"{}\" is not allowed: use letters, digits and '_', not starting with a digit",
                    step.key,
                    crate::limits::printable(name)
                ),
            ));
        }
        if step.secrets.contains(name) {
            return Err(at(
                vec![key("steps"), Seg::Index(i), key("env"), key(name)],
                format!(
                    "step \"{}\": {name} is both in env and in secrets; keep one",
                    step.key
                ),
            ));
        }
    }
    let mut cache = Vec::new();
    for (j, c) in step.cache.iter().enumerate() {
        let here = step_item(i, "cache", j);
        check_cache_key(&c.key).map_err(|m| {
            at(
                here.clone(),
                format!("step \"{}\": cache key {m}", step.key),
            )
        })?;
        for r in &c.restore_keys {
            check_cache_key(r).map_err(|m| {
                at(
                    here.clone(),
                    format!("step \"{}\": restore key {m}", step.key),
                )
            })?;
        }
        let reserved = RESERVED_GUEST_PATHS
            .iter()
            .any(|p| c.path == *p || c.path.starts_with(&format!("{p}/")));
        if !c.path.starts_with('/') || c.path.contains("..") || reserved || c.path == "/" {
            return Err(at(
                here,
                format!(
                    "step \"{}\": cache path \"{}\" must be an absolute guest path outside /workspace, /out and /artifacts, such as \"/cache\"",
                    step.key,
                    crate::limits::printable(&c.path)
                ),
            ));
        }
        cache.push(CachePlan {
            key: c.key.clone(),
            restore_keys: c.restore_keys.clone(),
            path: c.path.clone(),
        });
    }
    let base = StepPlan {
        key: step.key.clone(),
        matrix: BTreeMap::new(),
        group: None,
        kind,
        component,
        component_sha256,
        args: step.args.clone(),
        env: step.env.clone(),
        secrets: step.secrets.clone(),
        needs: Vec::new(),
        condition,
        timeout_ms: step
            .timeout
            .map_or(DEFAULT_STEP_TIMEOUT_MS, |t| t.as_millis()),
        memory_mib,
        retry_on,
        retry_limit,
        allow_failure: step.allow_failure,
        workspace: ctx.workspace.to_path_buf(),
        state_dir: ctx.state_dir.to_path_buf(),
        cache,
        reuse: None,
    };
    let Some(matrix) = &step.matrix else {
        check_templates(i, &base, &BTreeMap::new())?;
        return Ok(vec![base]);
    };
    let combos = expand_matrix(i, step, matrix)?;
    let group = MatrixGroup {
        step: step.key.clone(),
        fail_fast: matrix.fail_fast.unwrap_or(true),
        max_parallel: matrix.max_parallel.unwrap_or(0),
    };
    let mut plans = Vec::with_capacity(combos.len());
    for values in combos {
        let mut plan = base.clone();
        let suffix: Vec<String> = values.values().map(|v| key_part(v)).collect();
        plan.key = format!("{}-{}", step.key, suffix.join("-"));
        if plan.key.len() > MAX_NAME_BYTES {
            return Err(at(
                step_field(i, "matrix"),
                format!(
                    "step \"{}\": the matrix key \"{}…\" is longer than {MAX_NAME_BYTES} bytes; use shorter values",
                    step.key,
                    &plan.key[..40]
                ),
            ));
        }
        check_templates(i, &plan, &values)?;
        plan.args = plan.args.iter().map(|a| substitute(a, &values)).collect();
        plan.env = plan
            .env
            .iter()
            .map(|(k, v)| (k.clone(), substitute(v, &values)))
            .collect();
        plan.matrix = values;
        plan.group = Some(group.clone());
        plans.push(plan);
    }
    Ok(plans)
}

fn resolve_component(i: usize, step: &StepFile, ctx: &Resolve<'_>) -> Result<PathBuf, Broken> {
    let written = &step.component;
    let as_path = written.contains('/') || written.ends_with(".wasm");
    if as_path {
        let path = ctx.dir.join(written);
        if path.is_file() {
            return Ok(path);
        }
        return Err(at(
            step_field(i, "component"),
            format!(
                "step \"{}\": component file {} does not exist (paths are relative to {})",
                step.key,
                path.display(),
                ctx.dir.display()
            ),
        ));
    }
    ctx.catalog.named(written).ok_or_else(|| {
        at(
            step_field(i, "component"),
            format!(
                "step \"{}\": there is no command component named \"{}\" in {} (write a path ending in .wasm for a file next to the pipeline)",
                step.key,
                crate::limits::printable(written),
                ctx.catalog.searched()
            ),
        )
    })
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128
}

/// A matrix value as part of a task key and a path (`/artifacts/<key>`).
fn key_part(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn expand_matrix(
    i: usize,
    step: &StepFile,
    matrix: &file::MatrixFile,
) -> Result<Vec<BTreeMap<String, String>>, Broken> {
    let here = step_field(i, "matrix");
    let mut combos: Vec<BTreeMap<String, String>> = vec![BTreeMap::new()];
    for (axis, values) in &matrix.axes {
        if !is_env_name(axis) {
            return Err(at(
                here,
                format!(
                    "step \"{}\": matrix axis \"{}\" is not allowed: use letters, digits and '_'",
                    step.key,
                    crate::limits::printable(axis)
                ),
            ));
        }
        if values.is_empty() {
            return Err(at(
                here,
                format!(
                    "step \"{}\": matrix axis \"{axis}\" has no values, so the matrix expands to 0 jobs; give it at least one value",
                    step.key
                ),
            ));
        }
        let mut next = Vec::new();
        for combo in &combos {
            for v in values {
                let mut c = combo.clone();
                c.insert(axis.clone(), v.text());
                next.push(c);
                if next.len() > MAX_MATRIX_JOBS * 64 {
                    return Err(too_many(i, step, next.len()));
                }
            }
        }
        combos = next;
    }
    let matches = |combo: &BTreeMap<String, String>, filter: &BTreeMap<String, AxisValue>| {
        filter
            .iter()
            .all(|(k, v)| combo.get(k).is_some_and(|c| *c == v.text()))
    };
    for (j, filter) in matrix.exclude.iter().enumerate() {
        if let Some(axis) = filter.keys().find(|k| !matrix.axes.contains_key(*k)) {
            return Err(at(
                vec![
                    key("steps"),
                    Seg::Index(i),
                    key("matrix"),
                    key("exclude"),
                    Seg::Index(j),
                ],
                format!(
                    "step \"{}\": matrix exclude names \"{}\", which is not an axis",
                    step.key,
                    crate::limits::printable(axis)
                ),
            ));
        }
    }
    if matrix.axes.is_empty() {
        combos.clear();
    }
    combos.retain(|c| !matrix.exclude.iter().any(|f| matches(c, f)));
    for extra in &matrix.include {
        let extra: BTreeMap<String, String> =
            extra.iter().map(|(k, v)| (k.clone(), v.text())).collect();
        if !combos.contains(&extra) {
            combos.push(extra);
        }
    }
    if combos.is_empty() {
        return Err(at(
            here,
            format!(
                "step \"{}\": the matrix expands to 0 jobs (every combination is excluded); remove an exclude or add values",
                step.key
            ),
        ));
    }
    if combos.len() > MAX_MATRIX_JOBS {
        return Err(too_many(i, step, combos.len()));
    }
    Ok(combos)
}

fn too_many(i: usize, step: &StepFile, n: usize) -> Broken {
    at(
        step_field(i, "matrix"),
        format!(
            "step \"{}\": the matrix expands to {n} jobs, more than the {MAX_MATRIX_JOBS} allowed; split the step or exclude combinations",
            step.key
        ),
    )
}

/// `{{ matrix.NAME }}` in arguments and env values must name an axis.
fn check_templates(
    i: usize,
    plan: &StepPlan,
    values: &BTreeMap<String, String>,
) -> Result<(), Broken> {
    let texts = plan.args.iter().chain(plan.env.values());
    for text in texts {
        for expr in template_exprs(text) {
            let ok = expr
                .strip_prefix("matrix.")
                .is_some_and(|axis| values.contains_key(axis));
            if !ok {
                return Err(at(
                    step_field(i, "args"),
                    format!(
                        "step \"{}\": \"{{{{ {} }}}}\" is not known here; arguments and env may use {{{{ matrix.AXIS }}}} of the step's own matrix",
                        plan.key,
                        crate::limits::printable(&expr)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The expressions inside `{{ … }}` in `text`, trimmed.
pub(crate) fn template_exprs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push(after.trim().to_string());
            break;
        };
        out.push(after[..end].trim().to_string());
        rest = &after[end + 2..];
    }
    out
}

fn substitute(text: &str, values: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let expr = after[..end].trim();
        match expr.strip_prefix("matrix.").and_then(|a| values.get(a)) {
            Some(v) => out.push_str(v),
            None => out.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// A cache key: up to 200 bytes of letters, digits, `-_.`, and
/// `{{ hash('PATH') }}` (the sha256 of a workspace file, evaluated when the
/// step runs).
fn check_cache_key(template: &str) -> Result<(), String> {
    let mut literal = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        literal.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| {
            format!(
                "\"{}\" has an unclosed {{{{",
                crate::limits::printable(template)
            )
        })?;
        hash_argument(after[..end].trim()).ok_or_else(|| {
            format!(
                "\"{}\": only {{{{ hash('PATH') }}}} may appear inside {{{{ }}}}",
                crate::limits::printable(template)
            )
        })?;
        rest = &after[end + 2..];
    }
    literal.push_str(rest);
    let ok = template.len() <= 200
        && literal
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok && !template.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "\"{}\" is not allowed: use up to 200 letters, digits, '-', '_', '.' and {{{{ hash('PATH') }}}}",
            crate::limits::printable(template)
        ))
    }
}

/// `hash('PATH')` → `PATH` (a relative path inside the workspace).
pub fn hash_argument(expr: &str) -> Option<&str> {
    let inner = expr.strip_prefix("hash(")?.strip_suffix(')')?.trim();
    let path = inner
        .strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .or_else(|| inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')))?;
    let relative = !path.is_empty()
        && !path.starts_with('/')
        && Path::new(path)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    relative.then_some(path)
}
