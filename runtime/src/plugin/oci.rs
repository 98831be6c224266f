//! OCI distribution of plugins: `lockstep plugins pull` and `push` speak the
//! OCI distribution API and the CNCF wasm OCI artifact layout (a manifest
//! whose config is `application/vnd.wasm.config.v0+json` and whose one
//! layer is the component, `application/wasm`).
//!
//! **Invariants:**
//! - Every digest is verified before anything is written: the manifest's
//!   bytes against the digest asked for (or, for a tag, the digest it is
//!   recorded under), the config and the layer against the manifest's
//!   descriptors, sizes included. A registry that serves other bytes is
//!   refused with both digests named, and the plugin directory is untouched.
//! - Downloads are bounded ([`MAX_MANIFEST_BYTES`], [`MAX_LAYER_BYTES`]) while
//!   they stream, not after.
//! - Grants are never taken from a registry: a pull writes the component
//!   (and its pin in `plugins.lock`) only; grants stay the operator's file.
//! - This build links no TLS: only registries on loopback (a test's, a
//!   local mirror) are reached, over plain HTTP; any other is refused by
//!   name before a connection is made.

use super::cache::sha256_hex;
use serde::{Deserialize, Serialize};

/// The manifest media type lockstep writes and reads.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The config media type of the CNCF wasm OCI layout.
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The layer media type of a wasm component.
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";
/// Largest manifest or config read.
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;
/// Largest component read (a Python component is about 40 MB).
pub const MAX_LAYER_BYTES: u64 = 512 * 1024 * 1024;

/// `oci://HOST[:PORT]/REPO[:TAG|@sha256:HEX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciRef {
    pub registry: String,
    pub repository: String,
    pub reference: Reference,
}

/// What a reference names inside its repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    /// `sha256:HEX`.
    Digest(String),
}

impl Reference {
    fn as_str(&self) -> &str {
        match self {
            Reference::Tag(t) | Reference::Digest(t) => t,
        }
    }
}

impl std::fmt::Display for OciRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.reference {
            Reference::Tag(tag) => write!(f, "oci://{}/{}:{tag}", self.registry, self.repository),
            Reference::Digest(d) => write!(f, "oci://{}/{}@{d}", self.registry, self.repository),
        }
    }
}

/// Why a pull or push failed.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error(
        "{given:?} is not an OCI reference: {reason}; write oci://HOST/REPO:TAG or oci://HOST/REPO@sha256:DIGEST"
    )]
    BadReference { given: String, reason: String },
    #[error("cannot reach {url}: {reason}")]
    Http { url: String, reason: String },
    #[error("{url} answered {status} to {what}{detail}")]
    Status {
        what: &'static str,
        url: String,
        status: u16,
        detail: String,
    },
    #[error(
        "the registry served {what} with digest {found}, not the {expected} it was asked for; refusing it (nothing was written)"
    )]
    DigestMismatch {
        what: String,
        expected: String,
        found: String,
    },
    #[error(
        "the registry served {what} of {found} bytes, not the {expected} its manifest declares; refusing it (nothing was written)"
    )]
    SizeMismatch {
        what: String,
        expected: u64,
        found: u64,
    },
    #[error("{what} is larger than {limit} bytes; refusing it")]
    TooLarge { what: String, limit: u64 },
    #[error(
        "{reference}: this lockstep links no TLS, so it reaches only registries on this machine (127.0.0.1, [::1], localhost) over plain HTTP; copy the artifact to a local registry and use that"
    )]
    NoTls { reference: String },
    #[error("{reference} is not a wasm component artifact: {reason}")]
    NotWasm { reference: String, reason: String },
}

impl std::str::FromStr for OciRef {
    type Err = OciError;

    fn from_str(given: &str) -> Result<OciRef, OciError> {
        let bad = |reason: &str| OciError::BadReference {
            given: crate::limits::printable(given).into_owned(),
            reason: reason.to_owned(),
        };
        let rest = given
            .strip_prefix("oci://")
            .ok_or_else(|| bad("it does not start with oci://"))?;
        let (registry, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("it names no repository after the registry"))?;
        if registry.is_empty()
            || !registry
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        {
            return Err(bad("the registry is not a host name with an optional port"));
        }
        let (repository, reference) = if let Some((repo, digest)) = path.split_once('@') {
            let hex = digest
                .strip_prefix("sha256:")
                .ok_or_else(|| bad("a digest is sha256:HEX"))?;
            if hex.len() != 64 || !hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
                return Err(bad("a sha256 digest is 64 lower-case hex digits"));
            }
            (repo, Reference::Digest(digest.to_owned()))
        } else {
            // A tag follows the last `:` of the last path segment.
            let last = path.rsplit('/').next().unwrap_or(path);
            match last.rsplit_once(':') {
                Some((_, tag)) => {
                    let repo = &path[..path.len() - tag.len() - 1];
                    (repo, Reference::Tag(tag.to_owned()))
                }
                None => (path, Reference::Tag("latest".to_owned())),
            }
        };
        let repository_ok = !repository.is_empty()
            && repository.split('/').all(|part| {
                !part.is_empty()
                    && part.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
                    })
            });
        if !repository_ok {
            return Err(bad(
                "a repository is lower-case letters, digits, `.`, `_` and `-`, in `/`-separated parts",
            ));
        }
        if let Reference::Tag(tag) = &reference {
            let tag_ok = !tag.is_empty()
                && tag.len() <= 128
                && tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !tag_ok {
                return Err(bad("a tag is up to 128 letters, digits, `.`, `_` and `-`"));
            }
        }
        Ok(OciRef {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            reference,
        })
    }
}

impl OciRef {
    /// The same repository, pinned to `digest`.
    pub fn at_digest(&self, digest: &str) -> OciRef {
        OciRef {
            reference: Reference::Digest(digest.to_owned()),
            ..self.clone()
        }
    }

    /// The last part of the repository: the default plugin file stem.
    pub fn name(&self) -> &str {
        self.repository
            .rsplit('/')
            .next()
            .unwrap_or(&self.repository)
    }

    /// True for a registry on this machine (127.0.0.0/8, [::1], localhost).
    fn on_loopback(&self) -> bool {
        let host = self
            .registry
            .rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map_or(self.registry.as_str(), |(host, _)| host);
        host == "localhost"
            || host == "[::1]"
            || host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// This build links no TLS: only loopback registries, over plain HTTP.
    fn reachable(&self) -> Result<(), OciError> {
        if self.on_loopback() {
            Ok(())
        } else {
            Err(OciError::NoTls {
                reference: self.to_string(),
            })
        }
    }

    fn base(&self) -> String {
        format!("http://{}/v2/{}", self.registry, self.repository)
    }
}

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

/// An OCI image manifest (the fields lockstep reads and writes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// A verified pull.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The component's bytes (their sha256 is `layer.digest`).
    pub wasm: Vec<u8>,
    /// The manifest's digest: what a tag resolved to.
    pub manifest_digest: String,
    /// The pinned reference, `oci://HOST/REPO@sha256:…`.
    pub source: OciRef,
}

fn client() -> Result<reqwest::Client, OciError> {
    reqwest::Client::builder()
        .user_agent(concat!("lockstep/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| OciError::Http {
            url: String::new(),
            reason: e.to_string(),
        })
}

fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// Read a response body, refusing more than `limit` bytes as they arrive.
async fn read_bounded(
    mut response: reqwest::Response,
    what: &str,
    limit: u64,
) -> Result<Vec<u8>, OciError> {
    let url = response.url().to_string();
    if response.content_length().is_some_and(|n| n > limit) {
        return Err(OciError::TooLarge {
            what: what.to_owned(),
            limit,
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| OciError::Http {
        url: url.clone(),
        reason: e.to_string(),
    })? {
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Err(OciError::TooLarge {
                what: what.to_owned(),
                limit,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn get(
    client: &reqwest::Client,
    url: &str,
    accept: &str,
    what: &'static str,
) -> Result<reqwest::Response, OciError> {
    let response = client
        .get(url)
        .header(reqwest::header::ACCEPT, accept)
        .send()
        .await
        .map_err(|e| OciError::Http {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    expect_status(response, &[200], what).await
}

async fn expect_status(
    response: reqwest::Response,
    ok: &[u16],
    what: &'static str,
) -> Result<reqwest::Response, OciError> {
    let status = response.status().as_u16();
    if ok.contains(&status) {
        return Ok(response);
    }
    let url = response.url().to_string();
    let body = read_bounded(response, what, 4096).await.unwrap_or_default();
    let text = crate::limits::printable(String::from_utf8_lossy(&body).trim()).into_owned();
    let detail = if text.is_empty() {
        String::new()
    } else {
        format!(": {}", text.chars().take(300).collect::<String>())
    };
    Err(OciError::Status {
        what,
        url,
        status,
        detail,
    })
}

/// A blob of the repository, verified against `descriptor` (digest and
/// size) before it is returned.
async fn blob(
    client: &reqwest::Client,
    reference: &OciRef,
    descriptor: &Descriptor,
    what: &str,
    limit: u64,
) -> Result<Vec<u8>, OciError> {
    if descriptor.size > limit {
        return Err(OciError::TooLarge {
            what: what.to_owned(),
            limit,
        });
    }
    let url = format!("{}/blobs/{}", reference.base(), descriptor.digest);
    let response = get(client, &url, "*/*", "a blob request").await?;
    let bytes = read_bounded(response, what, descriptor.size).await?;
    let found = digest_of(&bytes);
    if found != descriptor.digest {
        return Err(OciError::DigestMismatch {
            what: what.to_owned(),
            expected: descriptor.digest.clone(),
            found,
        });
    }
    if bytes.len() as u64 != descriptor.size {
        return Err(OciError::SizeMismatch {
            what: what.to_owned(),
            expected: descriptor.size,
            found: bytes.len() as u64,
        });
    }
    Ok(bytes)
}

/// Pull the component `reference` names, verifying every digest.
pub async fn pull(reference: &OciRef) -> Result<Pulled, OciError> {
    reference.reachable()?;
    let client = client()?;
    let url = format!(
        "{}/manifests/{}",
        reference.base(),
        reference.reference.as_str()
    );
    let response = get(&client, &url, MANIFEST_MEDIA_TYPE, "a manifest request").await?;
    let announced = response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = read_bounded(response, "the manifest", MAX_MANIFEST_BYTES).await?;
    let digest = digest_of(&bytes);
    // By digest: the bytes must be those. By tag: the registry's own
    // statement of the digest, when it makes one, must match the bytes.
    let expected = match &reference.reference {
        Reference::Digest(d) => Some(d.clone()),
        Reference::Tag(_) => announced,
    };
    if let Some(expected) = expected
        && expected != digest
    {
        return Err(OciError::DigestMismatch {
            what: format!("the manifest of {reference}"),
            expected,
            found: digest,
        });
    }
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| OciError::NotWasm {
        reference: reference.to_string(),
        reason: format!("its manifest is not an OCI image manifest: {e}"),
    })?;
    let not_wasm = |reason: String| OciError::NotWasm {
        reference: reference.to_string(),
        reason,
    };
    if manifest.config.media_type != WASM_CONFIG_MEDIA_TYPE {
        return Err(not_wasm(format!(
            "its config is {}, not {WASM_CONFIG_MEDIA_TYPE}",
            manifest.config.media_type
        )));
    }
    let [layer] = manifest.layers.as_slice() else {
        return Err(not_wasm(format!(
            "it has {} layers; the wasm OCI layout has exactly one",
            manifest.layers.len()
        )));
    };
    if layer.media_type != WASM_LAYER_MEDIA_TYPE {
        return Err(not_wasm(format!(
            "its layer is {}, not {WASM_LAYER_MEDIA_TYPE}",
            layer.media_type
        )));
    }
    blob(
        &client,
        reference,
        &manifest.config,
        "the config blob",
        MAX_MANIFEST_BYTES,
    )
    .await?;
    let wasm = blob(
        &client,
        reference,
        layer,
        "the component layer",
        MAX_LAYER_BYTES,
    )
    .await?;
    Ok(Pulled {
        wasm,
        source: reference.at_digest(&digest),
        manifest_digest: digest,
    })
}

/// The wasm OCI config of a component.
fn config_for(layer_digest: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [layer_digest],
    }))
    .unwrap_or_default()
}

/// Upload one blob unless the registry has it (monolithic upload).
async fn upload(
    client: &reqwest::Client,
    reference: &OciRef,
    bytes: &[u8],
) -> Result<Descriptor, OciError> {
    let digest = digest_of(bytes);
    let base = reference.base();
    let http = |url: &str| {
        let url = url.to_owned();
        move |e: reqwest::Error| OciError::Http {
            url,
            reason: e.to_string(),
        }
    };
    let head_url = format!("{base}/blobs/{digest}");
    let head = client
        .head(&head_url)
        .send()
        .await
        .map_err(http(&head_url))?;
    if head.status().as_u16() != 200 {
        let start_url = format!("{base}/blobs/uploads/");
        let started = client
            .post(&start_url)
            .send()
            .await
            .map_err(http(&start_url))?;
        let started = expect_status(started, &[202], "an upload request").await?;
        let location = started
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| OciError::Status {
                what: "an upload request",
                url: start_url.clone(),
                status: 202,
                detail: ": without a Location header".to_owned(),
            })?
            .to_owned();
        let mut put_url = started.url().join(&location).map_err(|e| OciError::Http {
            url: location.clone(),
            reason: e.to_string(),
        })?;
        put_url.query_pairs_mut().append_pair("digest", &digest);
        let put_url = put_url.to_string();
        let put = client
            .put(&put_url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .map_err(http(&put_url))?;
        expect_status(put, &[201], "a blob upload").await?;
    }
    Ok(Descriptor {
        media_type: String::new(),
        digest,
        size: bytes.len() as u64,
    })
}

/// Push `wasm` as `reference` (a tag) in the wasm OCI layout; returns the
/// pinned reference of the manifest.
pub async fn push(reference: &OciRef, wasm: &[u8]) -> Result<OciRef, OciError> {
    reference.reachable()?;
    let client = client()?;
    let mut layer = upload(&client, reference, wasm).await?;
    layer.media_type = WASM_LAYER_MEDIA_TYPE.to_owned();
    let mut config = upload(&client, reference, &config_for(&layer.digest)).await?;
    config.media_type = WASM_CONFIG_MEDIA_TYPE.to_owned();
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MANIFEST_MEDIA_TYPE.to_owned()),
        config,
        layers: vec![layer],
    };
    let body = serde_json::to_vec(&manifest).map_err(|e| OciError::Http {
        url: String::new(),
        reason: e.to_string(),
    })?;
    let digest = digest_of(&body);
    let url = format!(
        "{}/manifests/{}",
        reference.base(),
        reference.reference.as_str()
    );
    let put = client
        .put(&url)
        .header(reqwest::header::CONTENT_TYPE, MANIFEST_MEDIA_TYPE)
        .body(body)
        .send()
        .await
        .map_err(|e| OciError::Http {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    expect_status(put, &[201], "a manifest upload").await?;
    Ok(reference.at_digest(&digest))
}
