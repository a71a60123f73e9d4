//! Signed shims through the real CLI: archives signed at test time by our own Sigstore-like CA (root →
//! intermediate → ten-minute leaf with a URI SAN and Fulcio's issuer extension) or a plain key, served
//! over loopback HTTP. Each refusal leaves nothing installed and containerd's config untouched.

use std::path::Path;

use base64::Engine;
use kwasm_tests::agent::{agent, output, run_cmd, Run};
use kwasm_tests::archive::{fake_binary, sha256};
use kwasm_tests::artifact_server::{ArtifactServer, Behavior};
use kwasm_tests::sandbox::{artifact_settings, Sandbox, ShimSpec};
use kwasm_tests::sigstore::{signed_release, Ca, Key, LeafSpec, Validity, GITHUB_ISSUER};
use time::{Duration, OffsetDateTime};

const BIN: &str = "containerd-shim-kwsig-v1";
const WORKFLOW: &str =
    "https://github.com/kwasm-test/shims/.github/workflows/release.yml@refs/heads/main";
const ROOTS: &str = "/etc/kwasm-agent/roots.pem";
const KEY: &str = "/etc/kwasm-agent/cosign.pub";

struct Host {
    sb: Sandbox,
    server: ArtifactServer,
    config_before: Vec<u8>,
}

impl Host {
    fn new() -> Self {
        let sb = Sandbox::new();
        let config_before = std::fs::read(sb.host("/etc/containerd/config.toml")).unwrap();
        Self {
            sb,
            server: ArtifactServer::start(),
            config_before,
        }
    }

    fn put(&self, host_path: &str, text: &str) {
        let p = self.sb.host(host_path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// Serves `archive` and writes settings for one shim requiring `verify`.
    fn settings(&self, archive: &[u8], verify: &str, pinned: bool, extra: &str) {
        self.server
            .route("/shim.tar.gz", vec![Behavior::Serve(archive.to_vec())]);
        let digest = sha256(archive);
        let shim = ShimSpec::new("kwsig", BIN).verify(verify).platform(
            "amd64",
            &self.server.url("/shim.tar.gz"),
            pinned.then_some(digest.as_str()),
        );
        self.sb.write_settings(&artifact_settings(extra, &[shim]));
    }

    fn apply(&self) -> Run {
        self.sb.run("apply", &["--arch", "amd64"])
    }

    fn state(&self) -> serde_json::Value {
        std::fs::read(self.sb.host("/opt/kwasm/state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    fn assert_installed(&self, binary: &[u8]) {
        assert_eq!(std::fs::read(self.sb.bin(BIN)).unwrap(), binary);
        assert_eq!(
            self.state()["shims"]["kwsig"]["binary_sha256"],
            sha256(binary)
        );
    }

    /// Refused with a reason naming the shim and `want`; no binary, no staging leftovers, no record,
    /// containerd's config byte-identical.
    fn assert_refused(&self, r: &Run, want: &str) {
        r.failed();
        let reason = r.reason();
        assert!(
            reason.contains("kwsig") && reason.contains(want),
            "wanted {want:?} in: {reason}"
        );
        assert!(
            self.sb.list("/opt/kwasm/bin").is_empty(),
            "{:?}",
            self.sb.list("/opt/kwasm/bin")
        );
        assert!(self.sb.list("/opt/kwasm/versions").is_empty());
        assert!(self.sb.list("/opt/kwasm/cache/staging").is_empty());
        assert!(self.state()["shims"]["kwsig"].is_null(), "{}", self.state());
        assert_eq!(
            std::fs::read(self.sb.host("/etc/containerd/config.toml")).unwrap(),
            self.config_before,
            "containerd's config changed for a refused shim"
        );
    }
}

fn keyless(identity_line: &str) -> String {
    format!("{identity_line}\nissuer = {GITHUB_ISSUER:?}\ntrust_root = {ROOTS:?}")
}

fn exact() -> String {
    keyless(&format!("identity = {WORKFLOW:?}"))
}

/// A host trusting `ca`, serving `binary` signed by a leaf of `ca` for `identity`.
fn signed_case(ca: &Ca, binary: &[u8], leaf: LeafSpec) -> (Host, Vec<u8>) {
    let h = Host::new();
    h.put(ROOTS, &ca.bundle_pem());
    let leaf = ca.leaf_with(leaf);
    let archive = signed_release(BIN, binary, Some(&leaf.sign(binary)), Some(&leaf.cert_pem));
    (h, archive)
}

fn workflow_leaf() -> LeafSpec {
    LeafSpec {
        identity: WORKFLOW.into(),
        ..LeafSpec::default()
    }
}

#[test]
fn a_release_signed_by_the_required_workflow_installs_and_says_who_signed() {
    let ca = Ca::new("kwasm-test-fulcio");
    let binary = fake_binary("signed", 200_000);
    let (h, archive) = signed_case(&ca, &binary, workflow_leaf());
    h.settings(&archive, &exact(), true, "");
    h.apply().ok();
    h.assert_installed(&binary);
    let sig = &h.state()["shims"]["kwsig"]["signature"];
    assert!(
        sig["signer"].as_str().unwrap().starts_with(WORKFLOW),
        "{sig}"
    );
    assert!(sig["requirement"].as_str().unwrap().contains(WORKFLOW));
    let st = run_cmd(
        "status",
        &h.sb.settings,
        &h.sb.root,
        &["--output", "json", "--arch", "amd64"],
    );
    st.ok();
    let v: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert!(v["shims"][0]["signed_by"]
        .as_str()
        .unwrap()
        .starts_with(WORKFLOW));
    // Verified once: the next apply is a no-op, no download.
    h.server.clear_log();
    h.apply().ok();
    assert_eq!(h.server.count("/shim.tar.gz"), 0);
}

#[test]
fn identity_regexp_v1_issuer_extension_and_base64_certificates_are_accepted() {
    let ca = Ca::new("kwasm-test-fulcio");
    let binary = fake_binary("regexp", 100_000);
    let h = Host::new();
    h.put(ROOTS, &ca.bundle_pem());
    let leaf = ca.leaf_with(LeafSpec {
        v1_issuer_extension: true,
        ..workflow_leaf()
    });
    let b64_pem = base64::engine::general_purpose::STANDARD.encode(&leaf.cert_pem);
    let archive = signed_release(BIN, &binary, Some(&leaf.sign(&binary)), Some(&b64_pem));
    h.settings(
        &archive,
        &keyless("identity_regexp = \"^https://github.com/kwasm-test/\""),
        true,
        "",
    );
    h.apply().ok();
    h.assert_installed(&binary);
}

#[test]
fn another_identity_is_refused() {
    let ca = Ca::new("kwasm-test-fulcio");
    let binary = fake_binary("other-identity", 100_000);
    let (h, archive) = signed_case(
        &ca,
        &binary,
        LeafSpec {
            identity:
                "https://github.com/attacker/fork/.github/workflows/release.yml@refs/heads/main"
                    .into(),
            ..LeafSpec::default()
        },
    );
    h.settings(&archive, &exact(), true, "");
    h.assert_refused(&h.apply(), "does not match verify.identity");
    // A regexp that the fork does not match either.
    h.settings(
        &archive,
        &keyless("identity_regexp = \"^https://github.com/kwasm-test/\""),
        true,
        "",
    );
    h.assert_refused(&h.apply(), "does not match verify.identity_regexp");
}

#[test]
fn another_issuer_is_refused() {
    let ca = Ca::new("kwasm-test-fulcio");
    let binary = fake_binary("other-issuer", 100_000);
    let (h, archive) = signed_case(
        &ca,
        &binary,
        LeafSpec {
            issuer: "https://gitlab.example.com".into(),
            ..workflow_leaf()
        },
    );
    h.settings(&archive, &exact(), true, "");
    h.assert_refused(&h.apply(), "does not match verify.issuer");
}

#[test]
fn a_certificate_from_an_untrusted_ca_is_refused() {
    let trusted = Ca::new("kwasm-test-fulcio");
    let rogue = Ca::new("kwasm-test-fulcio"); // same names, other keys
    let binary = fake_binary("rogue", 100_000);
    let (h, archive) = signed_case(&rogue, &binary, workflow_leaf());
    h.put(ROOTS, &trusted.bundle_pem());
    h.settings(&archive, &exact(), true, "");
    h.assert_refused(&h.apply(), "does not chain to the trust root");
    // Shipping the rogue intermediate beside the leaf does not help: it chains to no trusted root.
    let leaf = rogue.leaf_with(workflow_leaf());
    let with_chain = format!("{}{}", leaf.cert_pem, rogue.intermediate_pem());
    let archive = signed_release(BIN, &binary, Some(&leaf.sign(&binary)), Some(&with_chain));
    h.settings(&archive, &exact(), true, "");
    h.assert_refused(&h.apply(), "does not chain to the trust root");
    // And the built-in Sigstore root does not trust our test CA.
    h.settings(
        &archive,
        &format!("identity = {WORKFLOW:?}\nissuer = {GITHUB_ISSUER:?}"),
        true,
        "",
    );
    h.assert_refused(&h.apply(), "Sigstore's public-good Fulcio");
}

#[test]
fn a_tampered_binary_is_refused() {
    let ca = Ca::new("kwasm-test-fulcio");
    let binary = fake_binary("original", 100_000);
    let leaf = ca.leaf_with(workflow_leaf());
    let mut tampered = binary.clone();
    let n = tampered.len();
    tampered[n - 1] ^= 0x5a;
    let h = Host::new();
    h.put(ROOTS, &ca.bundle_pem());
    // The archive's digest is pinned (the tampering happened before the pin was written): only the
    // signature catches it.
    let archive = signed_release(
        BIN,
        &tampered,
        Some(&leaf.sign(&binary)),
        Some(&leaf.cert_pem),
    );
    h.settings(&archive, &exact(), true, "");
    h.assert_refused(&h.apply(), "does not verify over the binary");
}

#[test]
fn a_signature_of_another_file_is_refused() {
    let ca = Ca::new("kwasm-test-fulcio");
    let binary = fake_binary("this", 100_000);
    let leaf = ca.leaf_with(workflow_leaf());
    let h = Host::new();
    h.put(ROOTS, &ca.bundle_pem());
    let archive = signed_release(
        BIN,
        &binary,
        Some(&leaf.sign(b"LICENSE text, not the binary")),
        Some(&leaf.cert_pem),
    );
    h.settings(&archive, &exact(), true, "");
    h.assert_refused(&h.apply(), "does not verify over the binary");
}

#[test]
fn a_leaf_issued_after_its_ca_expired_is_refused() {
    let now = OffsetDateTime::now_utc();
    let ca = Ca::with_validity(
        "kwasm-test-fulcio",
        Validity {
            root: (now - Duration::days(3650), now + Duration::days(3650)),
            intermediate: (now - Duration::days(730), now - Duration::days(365)),
        },
    );
    let binary = fake_binary("late", 100_000);
    let (h, archive) = signed_case(&ca, &binary, workflow_leaf());
    h.settings(&archive, &exact(), true, "");
    h.assert_refused(&h.apply(), "was not valid when it issued the leaf");
}

#[test]
fn a_certificate_not_for_code_signing_is_refused() {
    let ca = Ca::new("kwasm-test-fulcio");
    let binary = fake_binary("no-eku", 100_000);
    let (h, archive) = signed_case(
        &ca,
        &binary,
        LeafSpec {
            code_signing: false,
            ..workflow_leaf()
        },
    );
    h.settings(&archive, &exact(), true, "");
    h.assert_refused(&h.apply(), "not for code signing");
}

#[test]
fn a_missing_signature_or_certificate_is_refused() {
    let ca = Ca::new("kwasm-test-fulcio");
    let binary = fake_binary("unsigned", 100_000);
    let leaf = ca.leaf_with(workflow_leaf());
    let h = Host::new();
    h.put(ROOTS, &ca.bundle_pem());
    let archive = signed_release(BIN, &binary, None, Some(&leaf.cert_pem));
    h.settings(&archive, &exact(), true, "");
    h.assert_refused(&h.apply(), &format!("no signature member \"{BIN}.sig\""));
    let archive = signed_release(BIN, &binary, Some(&leaf.sign(&binary)), None);
    h.settings(&archive, &exact(), true, "");
    h.assert_refused(&h.apply(), &format!("no certificate member \"{BIN}.pem\""));
    let archive = signed_release(BIN, &binary, Some("not base64!"), Some(&leaf.cert_pem));
    h.settings(&archive, &exact(), true, "");
    h.assert_refused(&h.apply(), "is not base64 of a DER ECDSA signature");
}

#[test]
fn key_based_signatures_verify_with_the_key_and_only_that_key() {
    let key = Key::generate();
    let other = Key::generate();
    let binary = fake_binary("keyed", 100_000);
    let h = Host::new();
    h.put(KEY, &key.public_pem());
    let verify = format!("public_key = {KEY:?}");
    let forged = signed_release(BIN, &binary, Some(&other.sign(&binary)), None);
    h.settings(&forged, &verify, true, "");
    h.assert_refused(&h.apply(), "with the key in /etc/kwasm-agent/cosign.pub");
    let good = signed_release(BIN, &binary, Some(&key.sign(&binary)), None);
    h.settings(&good, &verify, true, "");
    h.apply().ok();
    h.assert_installed(&binary);
}

#[test]
fn an_unpinned_platform_installs_on_its_signature_only_when_allowed() {
    let ca = Ca::new("kwasm-test-fulcio");
    let binary = fake_binary("unpinned", 100_000);
    let (h, archive) = signed_case(&ca, &binary, workflow_leaf());
    h.settings(&archive, &exact(), false, "");
    h.assert_refused(&h.apply(), "allow_unpinned_if_signed");
    assert_eq!(
        h.server.count("/shim.tar.gz"),
        0,
        "refused before downloading"
    );
    h.settings(
        &archive,
        &exact(),
        false,
        "allow_unpinned_if_signed = true\n",
    );
    h.apply().ok();
    h.assert_installed(&binary);
    // Unpinned and signed by someone else: refused even then.
    let h2 = Host::new();
    h2.put(ROOTS, &ca.bundle_pem());
    let rogue = Ca::new("rogue");
    let leaf = rogue.leaf_with(workflow_leaf());
    let archive = signed_release(
        BIN,
        &binary,
        Some(&leaf.sign(&binary)),
        Some(&leaf.cert_pem),
    );
    h2.settings(
        &archive,
        &exact(),
        false,
        "allow_unpinned_if_signed = true\n",
    );
    h2.assert_refused(&h2.apply(), "does not chain");
}

#[test]
fn requiring_a_signature_later_checks_the_installed_binary_from_the_cache() {
    let ca = Ca::new("kwasm-test-fulcio");
    let binary = fake_binary("later", 100_000);
    let (h, archive) = signed_case(&ca, &binary, workflow_leaf());
    // First installed on its pin alone…
    h.server
        .route("/shim.tar.gz", vec![Behavior::Serve(archive.clone())]);
    let shim = ShimSpec::new("kwsig", BIN).platform(
        "amd64",
        &h.server.url("/shim.tar.gz"),
        Some(&sha256(&archive)),
    );
    h.sb.write_settings(&artifact_settings("", &[shim]));
    h.apply().ok();
    assert!(h.state()["shims"]["kwsig"]["signature"].is_null());
    // …then the catalog asks for the signature: checked from the cache, no download.
    h.settings(&archive, &exact(), true, "");
    h.server.clear_log();
    h.apply().ok();
    assert_eq!(h.server.count("/shim.tar.gz"), 0);
    assert!(h.state()["shims"]["kwsig"]["signature"]["signer"]
        .as_str()
        .unwrap()
        .starts_with(WORKFLOW));
}

#[test]
fn bad_verify_settings_are_refused_before_anything_runs() {
    let h = Host::new();
    for (verify, key) in [
        (format!("identity = {WORKFLOW:?}"), "verify.issuer"),
        (format!("issuer = {GITHUB_ISSUER:?}"), "verify.identity"),
        (
            format!("identity = {WORKFLOW:?}\nidentity_regexp = \"x\"\nissuer = \"i\""),
            "verify.identity_regexp",
        ),
        (
            "identity_regexp = \"(\"\nissuer = \"i\"".into(),
            "verify.identity_regexp",
        ),
        (
            format!("public_key = {KEY:?}\nidentity = \"x\""),
            "verify.identity",
        ),
        ("public_key = \"cosign.pub\"".into(), "verify.public_key"),
        (
            format!("public_key = {KEY:?}\nsignature = \"../x\""),
            "verify.signature",
        ),
        (
            "identity = \"x\"\nissuer = \"i\"\nidentty = \"typo\"".into(),
            "identty",
        ),
    ] {
        h.settings(b"unused", &verify, true, "");
        let r = h.apply();
        r.failed();
        assert!(r.reason().contains(key), "{verify}: {}", r.reason());
        assert_eq!(h.server.count("/shim.tar.gz"), 0);
    }
}

fn pin(args: &[&str]) -> Run {
    output(agent(&[&["pin"], args].concat()))
}

#[test]
fn pin_prints_a_verified_catalog_entry_that_apply_accepts() {
    let ca = Ca::new("kwasm-test-fulcio");
    let binary = fake_binary("pinned", 150_000);
    let (h, archive) = signed_case(&ca, &binary, workflow_leaf());
    h.server.route(
        "/rel/containerd-shim-kwsig-x86_64-linux-musl.tar.gz",
        vec![Behavior::Serve(archive.clone())],
    );
    let url = h
        .server
        .url("/rel/containerd-shim-kwsig-x86_64-linux-musl.tar.gz");
    let roots = h.sb.host(ROOTS);
    let r = pin(&[
        &url,
        "--allow-http",
        "--identity",
        WORKFLOW,
        "--issuer",
        GITHUB_ISSUER,
        "--trust-root",
        roots.to_str().unwrap(),
    ]);
    r.ok();
    let digest = sha256(&archive);
    assert!(
        r.stdout.contains(&format!("sha256 = \"{digest}\"")),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("arch = \"amd64\""), "{}", r.stdout);
    assert!(
        r.stdout
            .contains(&format!("signature verified: {WORKFLOW}")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(&format!("sha256: \"{digest}\"")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(&format!("binary: {BIN}"))
            || r.stdout.contains(&format!("binary = \"{BIN}\""))
    );

    // The printed TOML, pasted under a [[shims]] header (trust root as the host sees it), installs.
    let toml_part = r.stdout.split("\n\n").next().unwrap();
    let pasted = toml_part.replace(&roots.display().to_string(), ROOTS);
    let settings = format!(
        "{}[[shims]]\nname = \"kwsig\"\nruntime_type = \"io.containerd.kwsig.v1\"\nbinary = {BIN:?}\nversion = \"v1\"\n{pasted}",
        artifact_settings("", &[])
    );
    h.sb.write_settings(&settings);
    h.apply().ok();
    h.assert_installed(&binary);

    // The helm half parses as YAML-ish key/values with the same digest (quoted).
    let helm = r.stdout.split("\n\n").nth(1).unwrap();
    assert!(helm.contains("platforms:\n  - arch: amd64\n"), "{helm}");
    assert!(
        helm.contains(&format!("identity: \"{WORKFLOW}\"")),
        "{helm}"
    );
}

#[test]
fn pin_refuses_a_signature_that_does_not_hold_and_prints_nothing() {
    let ca = Ca::new("kwasm-test-fulcio");
    let binary = fake_binary("pin-bad", 50_000);
    let (h, archive) = signed_case(&ca, &binary, workflow_leaf());
    h.server
        .route("/shim-amd64.tar.gz", vec![Behavior::Serve(archive)]);
    let url = h.server.url("/shim-amd64.tar.gz");
    let roots = h.sb.host(ROOTS);
    let r = pin(&[
        &url,
        "--allow-http",
        "--identity",
        "https://github.com/someone/else/.github/workflows/x.yml@refs/heads/main",
        "--issuer",
        GITHUB_ISSUER,
        "--trust-root",
        roots.to_str().unwrap(),
    ]);
    r.failed();
    assert!(
        r.reason().contains("does not match verify.identity"),
        "{}",
        r.reason()
    );
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    // Without any signature flag it pins the digest and says the signature was not checked.
    let r = pin(&[&url, "--allow-http"]);
    r.ok();
    assert!(r.stdout.contains("signature not checked"), "{}", r.stdout);
    // Plain http needs the flag; an unknown architecture needs --arch.
    assert!(pin(&[&url]).reason().contains("allow_http"));
    let r = pin(&[&h.server.url("/shim.tar.gz"), "--allow-http"]);
    assert!(r.reason().contains("--arch"), "{}", r.reason());
    assert!(
        !Path::new(&h.sb.host("/opt/kwasm")).join("bin").exists()
            || h.sb.list("/opt/kwasm/bin").is_empty()
    );
}
