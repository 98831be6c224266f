//! `lockstep plugins push` and `pull` against an OCI registry the test runs
//! on loopback: a minimal implementation of the OCI distribution API
//! (manifests by tag and digest, blobs, monolithic uploads) that can be told
//! to serve tampered bytes. A pull by digest and by tag lands the component
//! and its pin (with the resolved digest) in `plugins.lock`, and the host
//! loads it under `--require-lock`; a tampered layer or manifest is refused
//! with both digests named, and nothing is written.

use crate::harness::{cli_bin, test_cache_dir};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use lockstep::guest_artifacts;
use lockstep::plugin::cache::sha256_hex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// What the registry stores, and how it misbehaves when told to.
#[derive(Default)]
struct Contents {
    blobs: Mutex<HashMap<String, Vec<u8>>>,
    /// (repository, tag or digest) → manifest bytes.
    manifests: Mutex<HashMap<(String, String), Vec<u8>>>,
    tamper_layers: AtomicBool,
    tamper_manifests: AtomicBool,
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// Flip one byte in the middle: the same size, other bytes.
fn tampered(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let mid = out.len() / 2;
    out[mid] ^= 0xff;
    out
}

async fn registry(
    State(reg): State<Arc<Contents>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(path) = uri.path().strip_prefix("/v2/") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if let Some((repo, reference)) = path.rsplit_once("/manifests/") {
        let key = (repo.to_owned(), reference.to_owned());
        return match method {
            Method::PUT => {
                let content_type = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                assert_eq!(content_type, "application/vnd.oci.image.manifest.v1+json");
                let d = digest(&body);
                let mut manifests = reg.manifests.lock().expect("lock");
                manifests.insert(key, body.to_vec());
                manifests.insert((repo.to_owned(), d.clone()), body.to_vec());
                (StatusCode::CREATED, [("docker-content-digest", d)]).into_response()
            }
            Method::GET | Method::HEAD => {
                let Some(bytes) = reg.manifests.lock().expect("lock").get(&key).cloned() else {
                    return StatusCode::NOT_FOUND.into_response();
                };
                let d = digest(&bytes);
                let bytes = if reg.tamper_manifests.load(Ordering::SeqCst) {
                    String::from_utf8(bytes)
                        .expect("utf-8 manifest")
                        .replace("\"schemaVersion\":2", "\"schemaVersion\": 2")
                        .into_bytes()
                } else {
                    bytes
                };
                (
                    [
                        (
                            "content-type",
                            "application/vnd.oci.image.manifest.v1+json".to_owned(),
                        ),
                        ("docker-content-digest", d),
                    ],
                    bytes,
                )
                    .into_response()
            }
            _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
        };
    }
    if let Some((repo, _upload)) = path.split_once("/blobs/uploads/") {
        return match method {
            Method::POST => (
                StatusCode::ACCEPTED,
                [(
                    "location",
                    format!("/v2/{repo}/blobs/uploads/{}", rand::random::<u64>()),
                )],
            )
                .into_response(),
            Method::PUT => {
                let wanted = uri
                    .query()
                    .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("digest=")))
                    .map(|d| d.replace("%3A", ":"))
                    .unwrap_or_default();
                if digest(&body) != wanted {
                    return StatusCode::BAD_REQUEST.into_response();
                }
                reg.blobs
                    .lock()
                    .expect("lock")
                    .insert(wanted, body.to_vec());
                StatusCode::CREATED.into_response()
            }
            _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
        };
    }
    if let Some((_repo, d)) = path.rsplit_once("/blobs/") {
        let Some(bytes) = reg.blobs.lock().expect("lock").get(d).cloned() else {
            return StatusCode::NOT_FOUND.into_response();
        };
        if method == Method::HEAD {
            return StatusCode::OK.into_response();
        }
        let big = bytes.len() > 4096;
        let bytes = if big && reg.tamper_layers.load(Ordering::SeqCst) {
            tampered(&bytes)
        } else {
            bytes
        };
        return bytes.into_response();
    }
    StatusCode::NOT_FOUND.into_response()
}

/// A registry on a loopback port, for as long as the test runs.
struct Registry {
    contents: Arc<Contents>,
    host: String,
}

impl Registry {
    async fn start() -> Registry {
        let contents = Arc::new(Contents::default());
        let app = axum::Router::new()
            .fallback(registry)
            .with_state(contents.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let host = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            axum::serve(listener, app).await.expect("registry serves");
        });
        Registry { contents, host }
    }
}

fn lockstep(dir: &Path, args: &[&str]) -> Output {
    std::process::Command::new(cli_bin())
        .arg("--plugins")
        .arg(dir)
        .arg("--cache-dir")
        .arg(test_cache_dir())
        .args(args)
        .output()
        .expect("run lockstep")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn plugin_dir(root: &tempfile::TempDir) -> PathBuf {
    let dir = root.path().join("plugins");
    std::fs::create_dir(&dir).expect("plugin dir");
    dir
}

/// Push example:steps as REPO:v1 with the CLI; returns the manifest digest.
fn push(registry: &Registry, dir: &Path) -> String {
    let reference = format!("oci://{}/lockstep/steps:v1", registry.host);
    let out = lockstep(
        dir,
        &[
            "plugins",
            "push",
            guest_artifacts::EXAMPLE_STEPS,
            &reference,
        ],
    );
    assert!(out.status.success(), "push failed: {}", stderr(&out));
    let printed = stdout(&out);
    let pinned = printed
        .split(&format!("oci://{}/lockstep/steps@", registry.host))
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("push printed no digest: {printed}"))
        .to_owned();
    assert!(pinned.starts_with("sha256:"), "{pinned}");
    pinned
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_pulled_by_digest_is_verified_pinned_and_loads() {
    let registry = Registry::start().await;
    let root = tempfile::tempdir().expect("temp dir");
    let dir = plugin_dir(&root);
    let manifest = tokio::task::block_in_place(|| push(&registry, &dir));

    let reference = format!("oci://{}/lockstep/steps@{manifest}", registry.host);
    let out = tokio::task::block_in_place(|| lockstep(&dir, &["plugins", "pull", &reference]));
    assert!(out.status.success(), "pull failed: {}", stderr(&out));
    let file = dir.join("steps.wasm");
    let wasm = std::fs::read(guest_artifacts::EXAMPLE_STEPS).expect("read steps");
    assert_eq!(std::fs::read(&file).expect("pulled file"), wasm);
    let sha = sha256_hex(&wasm);
    assert_eq!(
        stdout(&out),
        format!(
            "pulled {reference} into {} (sha256 {sha}), pinned in {}\n",
            file.display(),
            dir.join("plugins.lock").display()
        )
    );
    let lock: toml::Value =
        toml::from_str(&std::fs::read_to_string(dir.join("plugins.lock")).expect("lock"))
            .expect("toml");
    let entry = &lock["plugin"][0];
    assert_eq!(entry["file"].as_str(), Some("steps.wasm"));
    assert_eq!(entry["sha256"].as_str(), Some(sha.as_str()));
    assert_eq!(entry["source"].as_str(), Some(reference.as_str()));

    // Pinned, it loads under --require-lock and runs.
    let out = tokio::task::block_in_place(|| {
        lockstep(
            &dir,
            &[
                "--require-lock",
                "--strict",
                "exec",
                "example:steps",
                "--input",
                r#"{"steps": 2, "step_ms": 1}"#,
            ],
        )
    });
    assert!(out.status.success(), "exec failed: {}", stderr(&out));
    assert_eq!(stdout(&out), "{\"steps\":2}\n");
    // No grants came from the registry.
    assert!(!dir.join("steps.toml").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_is_resolved_to_a_digest_and_recorded_in_the_lock() {
    let registry = Registry::start().await;
    let root = tempfile::tempdir().expect("temp dir");
    let dir = plugin_dir(&root);
    let manifest = tokio::task::block_in_place(|| push(&registry, &dir));
    let tagged = format!("oci://{}/lockstep/steps:v1", registry.host);
    let out = tokio::task::block_in_place(|| {
        lockstep(&dir, &["plugins", "pull", &tagged, "--as", "steps-v1.wasm"])
    });
    assert!(out.status.success(), "pull failed: {}", stderr(&out));
    let pinned = format!("oci://{}/lockstep/steps@{manifest}", registry.host);
    assert!(
        stdout(&out).starts_with(&format!(
            "resolved {tagged} to {manifest}\npulled {pinned} into "
        )),
        "{}",
        stdout(&out)
    );
    let lock = std::fs::read_to_string(dir.join("plugins.lock")).expect("lock");
    assert!(lock.contains(&format!("source = \"{pinned}\"")), "{lock}");
    assert!(lock.contains("file = \"steps-v1.wasm\""), "{lock}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_serving_tampered_bytes_is_refused_before_anything_is_written() {
    let registry = Registry::start().await;
    let root = tempfile::tempdir().expect("temp dir");
    let dir = plugin_dir(&root);
    let manifest = tokio::task::block_in_place(|| push(&registry, &dir));
    let reference = format!("oci://{}/lockstep/steps@{manifest}", registry.host);
    let wasm = std::fs::read(guest_artifacts::EXAMPLE_STEPS).expect("read steps");

    registry
        .contents
        .tamper_layers
        .store(true, Ordering::SeqCst);
    let out = tokio::task::block_in_place(|| lockstep(&dir, &["plugins", "pull", &reference]));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "error: the registry served the component layer with digest {}, not the {} it was asked for; refusing it (nothing was written)\n",
            digest(&tampered(&wasm)),
            digest(&wasm)
        )
    );
    let left: Vec<_> = std::fs::read_dir(&dir).expect("read dir").collect();
    assert!(
        left.is_empty(),
        "the plugin directory was written: {left:?}"
    );

    registry
        .contents
        .tamper_layers
        .store(false, Ordering::SeqCst);
    registry
        .contents
        .tamper_manifests
        .store(true, Ordering::SeqCst);
    let out = tokio::task::block_in_place(|| lockstep(&dir, &["plugins", "pull", &reference]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!(
            "error: the registry served the manifest of {reference} with digest sha256:"
        )) && err.ends_with(&format!(
            ", not the {manifest} it was asked for; refusing it (nothing was written)\n"
        )),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&dir).expect("read dir").count(), 0);
}

#[tokio::test]
async fn a_malformed_reference_is_bad_input() {
    let root = tempfile::tempdir().expect("temp dir");
    let dir = plugin_dir(&root);
    let out = lockstep(&dir, &["plugins", "pull", "https://example.com/x"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: \"https://example.com/x\" is not an OCI reference: it does not start with oci://; write oci://HOST/REPO:TAG or oci://HOST/REPO@sha256:DIGEST\n"
    );
    let out = lockstep(&dir, &["plugins", "pull", "oci://ghcr.io/team/greet:1.0"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: oci://ghcr.io/team/greet:1.0: this lockstep links no TLS, so it reaches only registries on this machine (127.0.0.1, [::1], localhost) over plain HTTP; copy the artifact to a local registry and use that\n"
    );
    let out = lockstep(
        &dir,
        &["plugins", "pull", "oci://127.0.0.1:5000/x@sha256:abc"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("a sha256 digest is 64 lower-case hex digits"),
        "{}",
        stderr(&out)
    );
}
