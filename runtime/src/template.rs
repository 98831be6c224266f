//! Plugin project templates: what `lockstep plugins new NAME --lang …` writes.
//!
//! Each template is a complete project that builds a lockstep plugin with its
//! language's own registry tools and nothing from the lockstep repository:
//! Rust (cargo, with the guest SDK and the WIT vendored into the project),
//! Python (componentize-py) and JavaScript (componentize-js). Each has one
//! handler with a typed input and a JSON Schema, a test of its own, and a
//! README with the build command. The files live in `runtime/templates/` and
//! are embedded in the binary.
//!
//! **Invariants:** a project is written only into a directory that does not
//! exist or is empty, and nothing is written when the name or the directory
//! is refused; the WIT a project carries is the one this binary links
//! ([`crate::plugin::WIT`]); the tool versions named here are the ones the
//! tests build the templates with.

use std::path::{Path, PathBuf};

/// componentize-py version the Python template is built and tested with.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";
/// componentize-js version the JavaScript template pins and is tested with.
pub const COMPONENTIZE_JS_VERSION: &str = "0.23.0";
/// wit-bindgen version of the vendored Rust SDK (the one `plugins/` uses).
pub const WIT_BINDGEN_VERSION: &str = "0.61.1";
/// Longest project name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// The language of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Rust,
    Python,
    JavaScript,
}

impl Language {
    /// Every language, in the order `--help` lists them.
    pub const ALL: [Language; 3] = [Language::Rust, Language::Python, Language::JavaScript];

    /// The spelling of `--lang`.
    pub fn flag(self) -> &'static str {
        match self {
            Language::Rust => "rust",
            Language::Python => "python",
            Language::JavaScript => "js",
        }
    }

    /// The commands that build the project, run in its directory.
    pub fn build_commands(self, name: &ProjectName) -> Vec<String> {
        match self {
            Language::Rust => vec!["cargo build --release --target wasm32-wasip2".to_owned()],
            Language::Python => vec![format!(
                "componentize-py --wit-path wit --world plugin componentize app -o {}.wasm",
                name.file_stem()
            )],
            Language::JavaScript => vec!["npm install".to_owned(), "npm run build".to_owned()],
        }
    }

    /// Where the built component ends up, relative to the project.
    pub fn component_path(self, name: &ProjectName) -> PathBuf {
        match self {
            Language::Rust => {
                Path::new("target/wasm32-wasip2/release").join(format!("{}.wasm", name.file_stem()))
            }
            Language::Python | Language::JavaScript => {
                PathBuf::from(format!("{}.wasm", name.file_stem()))
            }
        }
    }
}

impl std::str::FromStr for Language {
    type Err = TemplateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Language::ALL
            .into_iter()
            .find(|l| l.flag() == s)
            .ok_or_else(|| TemplateError::Language(s.to_owned()))
    }
}

/// A checked project name: lowercase ASCII letters, digits and `-`, starting
/// with a letter. It names the directory, the package and the handler
/// namespace (`NAME:greet`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectName(String);

impl ProjectName {
    pub fn new(name: &str) -> Result<ProjectName, TemplateError> {
        let bad = |why: &str| TemplateError::Name {
            name: name.escape_debug().to_string(),
            why: why.to_owned(),
        };
        if name.is_empty() {
            return Err(bad("it is empty"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(bad(&format!("it is longer than {MAX_NAME_LEN} bytes")));
        }
        if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(bad("it does not start with a lowercase letter"));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(bad(&format!("it contains {c:?}")));
        }
        if name.ends_with('-') || name.contains("--") {
            return Err(bad("a `-` must stand between two letters or digits"));
        }
        Ok(ProjectName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The handler the template registers.
    pub fn handler(&self) -> String {
        format!("{}:greet", self.0)
    }

    /// The component's file name without `.wasm` (cargo turns `-` into `_`;
    /// the other templates follow, so every language gives the same name).
    pub fn file_stem(&self) -> String {
        self.0.replace('-', "_")
    }
}

/// Why a project was not written.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("--lang {0:?} is not a template language; choose one of: rust, python, js")]
    Language(String),
    #[error(
        "plugin name {name:?} is not usable: {why}; use lowercase letters, digits and `-`, starting with a letter (e.g. `word-count`)"
    )]
    Name { name: String, why: String },
    #[error(
        "{} already exists and is not an empty directory; choose another --dir or remove it",
        .0.display()
    )]
    NotEmpty(PathBuf),
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One file of a template: its path in the project and its text, with
/// `{{placeholders}}`.
struct TemplateFile {
    path: &'static str,
    text: &'static str,
}

macro_rules! template_files {
    ($($path:literal => $source:literal),+ $(,)?) => {
        &[$(TemplateFile { path: $path, text: include_str!($source) }),+]
    };
}

const RUST: &[TemplateFile] = template_files! {
    "Cargo.toml" => "../templates/rust/Cargo.toml.tmpl",
    "Cargo.lock" => "../../plugins/Cargo.lock",
    "src/lib.rs" => "../templates/rust/src/lib.rs",
    "README.md" => "../templates/rust/README.md",
    ".gitignore" => "../templates/rust/gitignore",
    "lockstep-sdk/Cargo.toml" => "../templates/rust/sdk.Cargo.toml.tmpl",
    "lockstep-sdk/src/lib.rs" => "../../plugins/sdk/src/lib.rs",
    "lockstep-sdk/src/context.rs" => "../../plugins/sdk/src/context.rs",
    "lockstep-sdk/src/dispatch.rs" => "../../plugins/sdk/src/dispatch.rs",
    "lockstep-sdk/src/error.rs" => "../../plugins/sdk/src/error.rs",
    "lockstep-sdk/wit/plugin.wit" => "../../wit/plugin.wit",
};

const PYTHON: &[TemplateFile] = template_files! {
    "app.py" => "../templates/python/app.py",
    "greet.py" => "../templates/python/greet.py",
    "test_greet.py" => "../templates/python/test_greet.py",
    "README.md" => "../templates/python/README.md",
    ".gitignore" => "../templates/python/gitignore",
    "wit/plugin.wit" => "../../wit/plugin.wit",
};

const JAVASCRIPT: &[TemplateFile] = template_files! {
    "package.json" => "../templates/js/package.json",
    "src/app.js" => "../templates/js/src/app.js",
    "src/greet.js" => "../templates/js/src/greet.js",
    "test/greet.test.js" => "../templates/js/test/greet.test.js",
    "README.md" => "../templates/js/README.md",
    ".gitignore" => "../templates/js/gitignore",
    "wit/plugin.wit" => "../../wit/plugin.wit",
};

/// In the repository the SDK finds the WIT two directories up; in a project
/// it carries its own copy.
const SDK_WIT_PATH_IN_REPO: &str = r#"path: "../../wit","#;
const SDK_WIT_PATH_VENDORED: &str = r#"path: "wit","#;

/// The files of a project: (path relative to the project, text).
pub fn files(name: &ProjectName, language: Language) -> Vec<(PathBuf, String)> {
    let template = match language {
        Language::Rust => RUST,
        Language::Python => PYTHON,
        Language::JavaScript => JAVASCRIPT,
    };
    template
        .iter()
        .map(|file| {
            let mut text = file.text.to_owned();
            if file.path == "lockstep-sdk/src/lib.rs" {
                text = text.replace(SDK_WIT_PATH_IN_REPO, SDK_WIT_PATH_VENDORED);
            }
            // The SDK's own sources and the WIT are copied as they are.
            if !file.path.starts_with("lockstep-sdk/src/") && !file.path.ends_with(".wit") {
                text = fill(&text, name);
            }
            (PathBuf::from(file.path), text)
        })
        .collect()
}

fn fill(text: &str, name: &ProjectName) -> String {
    text.replace("{{name}}", name.as_str())
        .replace("{{handler}}", &name.handler())
        .replace("{{file_stem}}", &name.file_stem())
        .replace("{{sdk_version}}", env!("CARGO_PKG_VERSION"))
        .replace("{{wit_bindgen_version}}", WIT_BINDGEN_VERSION)
        .replace("{{componentize_py_version}}", COMPONENTIZE_PY_VERSION)
        .replace("{{componentize_js_version}}", COMPONENTIZE_JS_VERSION)
}

/// Write a new project into `dir`, which must not exist or be empty.
/// Returns the files written, relative to `dir`.
pub fn write(
    dir: &Path,
    name: &ProjectName,
    language: Language,
) -> Result<Vec<PathBuf>, TemplateError> {
    let write_error = |path: &Path| {
        let path = path.to_owned();
        move |source| TemplateError::Write { path, source }
    };
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(TemplateError::NotEmpty(dir.to_owned()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(write_error(dir))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(TemplateError::NotEmpty(dir.to_owned()));
        }
        Err(e) => return Err(write_error(dir)(e)),
    }
    let files = files(name, language);
    for (relative, text) in &files {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(write_error(parent))?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
            .map_err(write_error(&path))?;
    }
    Ok(files.into_iter().map(|(p, _)| p).collect())
}
