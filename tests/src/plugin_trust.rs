//! Pinned and signed plugins: `plugins.lock` written by `lockstep plugins
//! lock` and enforced by `--require-lock`, minisign signatures verified
//! offline against `--trusted-keys DIR` and required by
//! `--require-signatures`, and plugin directories others could write to.
//! Every refusal is checked word for word, and a refused file is never
//! compiled (the load's cache counters stay at zero).

use crate::harness::cli_bin;
use crate::plugin_support::{PluginDir, run};
use lockstep::guest_artifacts;
use lockstep::plugin::{HostConfig, LoadReport, PluginError, PluginHost, TrustPolicy};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Output;

/// A minisign key pair, its public key written into a trusted-keys
/// directory as `<name>.pub` (when trusted).
struct SigningKey {
    pk: minisign::PublicKey,
    sk: minisign::SecretKey,
    /// The key id as minisign prints it (upper-case hex).
    id: String,
}

impl SigningKey {
    fn new() -> SigningKey {
        let minisign::KeyPair { pk, sk } =
            minisign::KeyPair::generate_unencrypted_keypair().expect("key pair");
        let public = pk.to_box().expect("public key box").to_string();
        // minisign's own comment line names the key id.
        let id = public
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("untrusted comment: minisign public key"))
            .expect("the public key's comment names its id")
            .trim_start_matches(':')
            .trim()
            .to_owned();
        SigningKey { pk, sk, id }
    }

    /// Put the public key into `dir` as `<name>.pub`.
    fn trust_in(&self, dir: &Path, name: &str) {
        let public = self.pk.to_box().expect("public key box").to_string();
        std::fs::write(dir.join(format!("{name}.pub")), public).expect("write public key");
    }

    /// Write `<wasm>.minisig`, a signature of `bytes` (by default the file's own).
    fn sign_as(&self, wasm: &Path, bytes: &[u8]) {
        let signature = minisign::sign(
            Some(&self.pk),
            &self.sk,
            std::io::Cursor::new(bytes),
            Some("lockstep test plugin"),
            None,
        )
        .expect("sign");
        std::fs::write(signature_path(wasm), signature.to_string()).expect("write signature");
    }

    fn sign(&self, wasm: &Path) {
        let bytes = std::fs::read(wasm).expect("read plugin");
        self.sign_as(wasm, &bytes);
    }
}

fn signature_path(wasm: &Path) -> PathBuf {
    let mut name = wasm.as_os_str().to_owned();
    name.push(".minisig");
    PathBuf::from(name)
}

fn sha256_of(path: &Path) -> String {
    lockstep::plugin::cache::sha256_hex(&std::fs::read(path).expect("read"))
}

/// A plugin directory with example:noop, and a trusted-keys directory.
struct Setup {
    dir: PluginDir,
    keys: PathBuf,
    noop: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let dir = PluginDir::new();
        let keys = dir.mkdir("trusted-keys");
        let noop = dir.add(guest_artifacts::EXAMPLE_NOOP);
        Setup { dir, keys, noop }
    }

    fn config(&self, trust: TrustPolicy) -> HostConfig {
        let mut config = self.dir.config(false);
        config.trust = trust;
        config
    }

    fn strict_policy(&self) -> TrustPolicy {
        TrustPolicy {
            require_lock: true,
            trusted_keys: Some(self.keys.clone()),
            require_signatures: true,
        }
    }

    async fn load(&self, trust: TrustPolicy) -> (PluginHost, LoadReport) {
        PluginHost::load(self.config(trust))
            .await
            .expect("the plugin directory loads")
    }

    /// `lockstep ARGS --plugins DIR --cache-dir CACHE`.
    fn lockstep(&self, args: &[&str]) -> Output {
        std::process::Command::new(cli_bin())
            .args(args)
            .arg("--plugins")
            .arg(self.dir.plugins())
            .arg("--cache-dir")
            .arg(self.dir.cache())
            .output()
            .expect("run lockstep")
    }

    /// `plugins lock`, with `--trusted-keys` when any key is trusted.
    fn lock(&self) -> Output {
        let keys = self.keys.display().to_string();
        let trusted = std::fs::read_dir(&self.keys)
            .expect("keys dir")
            .any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "pub")));
        let out = if trusted {
            self.lockstep(&["plugins", "lock", "--trusted-keys", &keys])
        } else {
            self.lockstep(&["plugins", "lock"])
        };
        assert!(
            out.status.success(),
            "plugins lock failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

/// The one refusal of a load, with nothing loaded and nothing compiled.
fn only_refusal(report: &LoadReport, path: &Path) -> String {
    assert!(report.loaded.is_empty(), "loaded: {:?}", report.loaded);
    assert_eq!(report.failures.len(), 1, "failures: {:?}", report.failures);
    assert_eq!(report.failures[0].path, path);
    assert_eq!(
        (report.cache.hits, report.cache.misses, report.cache.rebuilt),
        (0, 0, 0),
        "a refused plugin must not be compiled"
    );
    report.failures[0].reason.clone()
}

#[tokio::test]
async fn signed_and_locked_plugins_load_and_run() {
    let setup = Setup::new();
    let key = SigningKey::new();
    key.trust_in(&setup.keys, "release");
    key.sign(&setup.noop);

    let out = setup.lock();
    let lock_path = setup.dir.plugins().join("plugins.lock");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "pinned 1 plugins (1 signed by a trusted key) in {}\n",
            lock_path.display()
        )
    );
    let lock: toml::Value =
        toml::from_str(&std::fs::read_to_string(&lock_path).expect("read lock")).expect("toml");
    let entries = lock["plugin"].as_array().expect("plugin entries");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["file"].as_str(), Some("example-noop.wasm"));
    assert_eq!(
        entries[0]["sha256"].as_str(),
        Some(sha256_of(&setup.noop).as_str())
    );
    assert_eq!(entries[0]["signer"].as_str(), Some(key.id.as_str()));

    let (host, report) = setup.load(setup.strict_policy()).await;
    assert_eq!(report.failures, Vec::new());
    assert_eq!(report.loaded, vec![setup.noop.clone()]);
    let listing = host.describe_all();
    assert_eq!(listing[0].signer.as_deref(), Some(key.id.as_str()));
    let (result, _) = run(&host, "example:noop", serde_json::json!({"signed": true})).await;
    assert_eq!(
        result.expect("the signed plugin runs").output,
        r#"{"signed":true}"#
    );

    // The CLI loads it the same way.
    let keys = setup.keys.display().to_string();
    let out = setup.lockstep(&[
        "plugins",
        "list",
        "--strict",
        "--require-lock",
        "--require-signatures",
        "--trusted-keys",
        &keys,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("signed by key {}", key.id)),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_plugin_changed_after_locking_is_refused_naming_both_digests() {
    let setup = Setup::new();
    setup.lock();
    let expected = sha256_of(&setup.noop);
    // Someone swaps the bytes under the same name.
    std::fs::copy(guest_artifacts::EXAMPLE_SUM, &setup.noop).expect("replace");
    let found = sha256_of(&setup.noop);
    assert_ne!(expected, found);

    let policy = TrustPolicy {
        require_lock: true,
        ..TrustPolicy::default()
    };
    let (host, report) = setup.load(policy).await;
    let lock_path = setup.dir.plugins().join("plugins.lock");
    assert_eq!(
        only_refusal(&report, &setup.noop),
        format!(
            "it changed after it was locked: {} expects sha256 {expected}, the file has sha256 {found}; if the new file is intended, run `lockstep plugins lock` again",
            lock_path.display()
        )
    );
    assert!(host.handler_names().is_empty());

    // The CLI says it once, naming the file, and --strict makes it fatal.
    let out = setup.lockstep(&["plugins", "list", "--require-lock", "--strict"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: plugin {} was not loaded: it changed after it was locked: {} expects sha256 {expected}, the file has sha256 {found}; if the new file is intended, run `lockstep plugins lock` again (strict mode makes this fatal)\n",
            setup.noop.display(),
            lock_path.display()
        )
    );

    // Without --require-lock the lock is not consulted.
    let (host, report) = setup.load(TrustPolicy::default()).await;
    assert_eq!(report.failures, Vec::new());
    assert_eq!(host.handler_names(), vec!["example:sum".to_owned()]);
}

#[tokio::test]
async fn a_plugin_missing_from_the_lock_and_a_directory_without_one_are_refused() {
    let setup = Setup::new();
    let policy = TrustPolicy {
        require_lock: true,
        ..TrustPolicy::default()
    };
    let err = PluginHost::load(setup.config(policy.clone()))
        .await
        .expect_err("no lock");
    assert!(matches!(err, PluginError::Trust(_)));
    assert_eq!(
        err.to_string(),
        format!(
            "--require-lock: plugin directory {} has no plugins.lock; write one with `lockstep plugins lock`",
            setup.dir.plugins().display()
        )
    );

    setup.lock();
    let added = setup.dir.add(guest_artifacts::EXAMPLE_SUM);
    let (host, report) = setup.load(policy).await;
    assert_eq!(report.loaded, vec![setup.noop.clone()]);
    assert_eq!(report.failures.len(), 1);
    assert_eq!(report.failures[0].path, added);
    assert_eq!(
        report.failures[0].reason,
        format!(
            "it is not pinned in {}, and --require-lock is set; run `lockstep plugins lock` to pin it",
            setup.dir.plugins().join("plugins.lock").display()
        )
    );
    assert_eq!(host.handler_names(), vec!["example:noop".to_owned()]);
}

#[tokio::test]
async fn an_unsigned_plugin_is_refused_when_signatures_are_required() {
    let setup = Setup::new();
    SigningKey::new().trust_in(&setup.keys, "release");
    let policy = TrustPolicy {
        require_signatures: true,
        trusted_keys: Some(setup.keys.clone()),
        ..TrustPolicy::default()
    };
    let (_, report) = setup.load(policy).await;
    assert_eq!(
        only_refusal(&report, &setup.noop),
        "it is unsigned (there is no example-noop.wasm.minisig beside it) and --require-signatures is set; sign it with `minisign -Sm example-noop.wasm`"
    );

    // Trusted keys alone do not require a signature.
    let (host, report) = setup
        .load(TrustPolicy {
            trusted_keys: Some(setup.keys.clone()),
            ..TrustPolicy::default()
        })
        .await;
    assert_eq!(report.failures, Vec::new());
    assert_eq!(host.describe_all()[0].signer, None);
}

#[tokio::test]
async fn a_plugin_signed_by_an_untrusted_key_is_refused() {
    let setup = Setup::new();
    SigningKey::new().trust_in(&setup.keys, "release");
    let stranger = SigningKey::new();
    stranger.sign(&setup.noop);
    let (_, report) = setup.load(setup_policy_signatures(&setup)).await;
    assert_eq!(
        only_refusal(&report, &setup.noop),
        format!(
            "it is signed by key {}, which is not among the trusted keys in {}; add that public key there only if you trust its owner",
            stranger.id,
            setup.keys.display()
        )
    );
}

fn setup_policy_signatures(setup: &Setup) -> TrustPolicy {
    TrustPolicy {
        require_signatures: true,
        trusted_keys: Some(setup.keys.clone()),
        ..TrustPolicy::default()
    }
}

#[tokio::test]
async fn a_wrong_signature_by_a_trusted_key_is_refused_even_when_not_required() {
    let setup = Setup::new();
    let key = SigningKey::new();
    key.trust_in(&setup.keys, "release");
    // A real signature by the trusted key, of other bytes.
    let other = std::fs::read(guest_artifacts::EXAMPLE_SUM).expect("read sum");
    key.sign_as(&setup.noop, &other);
    let expected = format!(
        "its signature example-noop.wasm.minisig does not verify with trusted key {} ({}): the file or its signature changed after signing",
        key.id,
        setup.keys.join("release.pub").display()
    );
    let (_, report) = setup.load(setup_policy_signatures(&setup)).await;
    assert_eq!(only_refusal(&report, &setup.noop), expected);
    // A signature that is there is checked whenever keys are configured.
    let (_, report) = setup
        .load(TrustPolicy {
            trusted_keys: Some(setup.keys.clone()),
            ..TrustPolicy::default()
        })
        .await;
    assert_eq!(only_refusal(&report, &setup.noop), expected);

    // A signature file that is not minisign at all.
    std::fs::write(signature_path(&setup.noop), "not a signature\n").expect("write");
    let (_, report) = setup.load(setup_policy_signatures(&setup)).await;
    let reason = only_refusal(&report, &setup.noop);
    assert!(
        reason.starts_with("its signature example-noop.wasm.minisig is not a minisign signature: "),
        "{reason}"
    );

    // Locking refuses to pin a badly signed plugin, and writes nothing.
    key.sign_as(&setup.noop, &other);
    let keys = setup.keys.display().to_string();
    let out = setup.lockstep(&["plugins", "lock", "--trusted-keys", &keys]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: {} cannot be locked: {expected}\n",
            setup.noop.display()
        )
    );
    assert!(!setup.dir.plugins().join("plugins.lock").exists());
}

#[tokio::test]
async fn signatures_without_trusted_keys_are_a_configuration_error() {
    let setup = Setup::new();
    let err = PluginHost::load(setup.config(TrustPolicy {
        require_signatures: true,
        ..TrustPolicy::default()
    }))
    .await
    .expect_err("no keys");
    assert_eq!(
        err.to_string(),
        "--require-signatures needs --trusted-keys DIR, the public keys of the signers you trust"
    );
    let out = setup.lockstep(&["plugins", "list", "--require-signatures"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: --require-signatures needs --trusted-keys DIR, the public keys of the signers you trust\n"
    );

    // An empty keys directory trusts no one: an error, not a silent pass.
    let err = PluginHost::load(setup.config(setup_policy_signatures(&setup)))
        .await
        .expect_err("empty keys dir");
    assert_eq!(
        err.to_string(),
        format!(
            "the trusted keys directory {} holds no public keys (*.pub); add the minisign public keys of the signers you trust",
            setup.keys.display()
        )
    );
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[tokio::test]
async fn writable_or_foreign_plugin_directories_are_refused_with_the_reason() {
    let setup = Setup::new();
    let dir = setup.dir.plugins();
    for (mode, writable) in [(0o777, "world"), (0o775, "group")] {
        chmod(&dir, mode);
        let err = PluginHost::load(setup.config(TrustPolicy::default()))
            .await
            .expect_err("writable directory");
        assert_eq!(
            err.to_string(),
            format!(
                "plugin directory {} is {writable}-writable (mode {mode:04o}), so others could replace its plugins; run `chmod go-w {}`",
                dir.display(),
                dir.display()
            )
        );
    }
    chmod(&dir, 0o777);
    let out = setup.lockstep(&["plugins", "list"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: plugin directory {} is world-writable (mode 0777), so others could replace its plugins; run `chmod go-w {}`\n",
            dir.display(),
            dir.display()
        )
    );
    chmod(&dir, 0o755);

    // A plugin file others can write is refused on its own.
    chmod(&setup.noop, 0o666);
    let (_, report) = setup.load(TrustPolicy::default()).await;
    assert_eq!(
        only_refusal(&report, &setup.noop),
        format!(
            "the file is world-writable (mode 0666), so others could replace it; run `chmod go-w {}`",
            setup.noop.display()
        )
    );
    chmod(&setup.noop, 0o644);

    // Owned by another user (the tests run as root in CI, which may chown).
    let me = effective_uid();
    let nobody = 65534;
    assert_eq!(
        me, 0,
        "this test changes a directory's owner, which needs root"
    );
    std::os::unix::fs::chown(&dir, Some(nobody), None).expect("chown");
    let err = PluginHost::load(setup.config(TrustPolicy::default()))
        .await
        .expect_err("foreign directory");
    assert_eq!(
        err.to_string(),
        format!(
            "plugin directory {} is owned by uid {nobody}, not by the user running lockstep (uid {me}) or root; keep plugins in a directory you own",
            dir.display()
        )
    );
    std::os::unix::fs::chown(&dir, Some(me), None).expect("chown back");
    let (host, report) = setup.load(TrustPolicy::default()).await;
    assert_eq!(report.failures, Vec::new());
    assert_eq!(host.handler_names(), vec!["example:noop".to_owned()]);
}

/// The owner of a file this process creates: its effective uid.
fn effective_uid() -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    let probe = tempfile::tempfile().expect("temp file");
    probe.metadata().expect("metadata").uid()
}
