//! `kwasm-agent pin URL`: download a release archive once, take its shim binary out exactly as `apply`
//! would, check its signature when asked, and print the catalog entry with the digest — so operators
//! write catalogs from what was verified rather than copying digests by hand.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};

use super::PinArgs;
use crate::arch::Arch;
use crate::artifact::fetch::{Extract, Fetched, Fetcher};
use crate::artifact::provenance::{Requirement, Signer, Trust};
use crate::artifact::source::Source;
use crate::artifact::unpack::{self, ANY_SHIM};
use crate::settings::{ArtifactSettings, Verify};

/// What was downloaded and proven, printed as TOML and as Helm values.
struct Pinned {
    arch: Arch,
    url: String,
    archive_sha256: String,
    size: u64,
    binary: String,
    binary_sha256: String,
    signer: Option<Signer>,
    verify: Option<Verify>,
}

/// The archive's signature over `binary`, checked as `apply` would with the same `verify` (trust
/// material read from the flags' files).
async fn check_signature(
    v: &Verify,
    binary: &str,
    archive: PathBuf,
    max: u64,
    url: &str,
) -> anyhow::Result<Signer> {
    v.check(binary)
        .map_err(|(field, why)| anyhow!("--{}: {why}", field.replace('_', "-")))?;
    let members = Requirement::members(v, binary);
    let name = binary.to_owned();
    let unpacked = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&archive)?;
        anyhow::Ok(unpack::unpack(
            std::io::BufReader::new(f),
            &name,
            &members,
            &mut std::io::sink(),
            max,
        )?)
    })
    .await??;
    let trust = Trust::load(v, |key, p: &Path| {
        std::fs::read(p)
            .with_context(|| format!("reading --{} {}", key.replace('_', "-"), p.display()))
    })?;
    let req = Requirement {
        verify: v,
        binary,
        trust,
    };
    req.check_now(&unpacked.binary_sha256, &unpacked.members)
        .map_err(|e| anyhow!("{binary} in {url}: signature check failed: {e}"))
}

pub async fn pin(a: PinArgs) -> anyhow::Result<()> {
    let arch = match a.arch {
        Some(arch) => arch,
        None => Arch::in_url(&a.url).ok_or_else(|| {
            anyhow!(
                "cannot tell the architecture from the URL {}; pass --arch",
                a.url
            )
        })?,
    };
    let verify = a.verify();
    let settings = ArtifactSettings {
        allow_http: a.allow_http,
        ..Default::default()
    };
    let dir = tempfile::Builder::new().prefix("kwasm-pin.").tempdir()?;
    let fetched = download(&a, &settings, dir.path()).await?;
    let binary = match (&a.binary, fetched.unpacked.binary_name.as_str()) {
        (Some(b), _) => b.clone(),
        (None, "") => {
            return Err(anyhow!(
                "{} is a bare binary, not an archive: pass --binary with the name to install it as",
                a.url
            ))
        }
        (None, found) => found.to_owned(),
    };
    let signer = match &verify {
        None => None,
        Some(v) => {
            let archive = dir.path().join(&fetched.archive_sha256);
            let max = settings.max_size.as_u64();
            Some(check_signature(v, &binary, archive, max, &a.url).await?)
        }
    };
    let pinned = Pinned {
        arch,
        url: a.url.clone(),
        archive_sha256: fetched.archive_sha256.clone(),
        size: fetched.size,
        binary,
        binary_sha256: fetched.unpacked.binary_sha256.clone(),
        signer,
        verify,
    };
    drop(fetched);
    print!("{}", pinned.toml());
    println!();
    print!("{}", pinned.helm());
    Ok(())
}

/// The artifact at `a.url`, downloaded into `dir` the way the agent downloads it (digest and
/// unpacking as it goes).
async fn download(a: &PinArgs, settings: &ArtifactSettings, dir: &Path) -> anyhow::Result<Fetched> {
    let ca = match &a.ca_bundle {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    let source = Source::resolve(&a.url, settings)?;
    let extract = Extract {
        binary: a.binary.clone().unwrap_or_else(|| ANY_SHIM.to_owned()),
        members: vec![],
        staging_dir: dir.to_owned(),
        dest: dir.join("binary"),
    };
    Fetcher::new(settings, ca.as_deref())?
        .fetch(
            &source,
            None,
            &dir.join("download.part"),
            |d| dir.join(d),
            &extract,
        )
        .await
}

impl Pinned {
    fn comment(&self) -> String {
        let mut s = format!(
            "# {} from {}\n#   archive {} bytes, sha256 {}; binary sha256 {}\n",
            self.binary, self.url, self.size, self.archive_sha256, self.binary_sha256
        );
        match &self.signer {
            Some(who) => s.push_str(&format!("#   signature verified: {who}\n")),
            None => s.push_str("#   signature not checked (pass --identity/--identity-regexp and --issuer, or --public-key)\n"),
        }
        s
    }

    fn verify_fields(&self) -> Vec<(&'static str, &'static str, String)> {
        let Some(v) = &self.verify else {
            return vec![];
        };
        let path = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string());
        [
            ("identity", "identity", v.identity.clone()),
            (
                "identity_regexp",
                "identityRegexp",
                v.identity_regexp.clone(),
            ),
            ("issuer", "issuer", v.issuer.clone()),
            ("signature", "signature", v.signature.clone()),
            ("certificate", "certificate", v.certificate.clone()),
            ("trust_root", "trustRoot", path(&v.trust_root)),
            ("public_key", "publicKey", path(&v.public_key)),
        ]
        .into_iter()
        .filter_map(|(t, h, v)| v.map(|v| (t, h, v)))
        .collect()
    }

    /// The platform entry for the settings file (under the shim's `[[shims]]`).
    fn toml(&self) -> String {
        let mut s = self.comment();
        s.push_str(&format!(
            "# settings file, under the shim's [[shims]] (binary = {:?}):\n",
            self.binary
        ));
        let fields = self.verify_fields();
        if !fields.is_empty() {
            s.push_str("[shims.verify]\n");
            for (key, _, value) in &fields {
                s.push_str(&format!("{key} = {}\n", toml_string(value)));
            }
        }
        s.push_str(&format!(
            "[[shims.platforms]]\narch = {}\nurl = {}\nsha256 = {}\n",
            toml_string(self.arch.as_str()),
            toml_string(&self.url),
            toml_string(&self.archive_sha256)
        ));
        s
    }

    /// The same entry as Helm values (under the shim's item in `shims:`).
    fn helm(&self) -> String {
        let mut s = format!(
            "# Helm values, under the shim's item in `shims:` (binary: {}):\n",
            self.binary
        );
        let fields = self.verify_fields();
        if !fields.is_empty() {
            s.push_str("verify:\n");
            for (_, key, value) in &fields {
                s.push_str(&format!("  {key}: {}\n", yaml_string(value)));
            }
        }
        // Quoted: a digest of only digits would otherwise be read back as a number.
        s.push_str(&format!(
            "platforms:\n  - arch: {}\n    url: {}\n    sha256: \"{}\"\n",
            self.arch,
            yaml_string(&self.url),
            self.archive_sha256
        ));
        s
    }
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A double-quoted YAML scalar; JSON's string syntax is a subset of it.
fn yaml_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_architecture_is_read_from_release_asset_names() {
        for (url, want) in [
            (
                "https://x/containerd-shim-wasmtime-x86_64-linux-musl.tar.gz",
                Some(Arch::Amd64),
            ),
            (
                "https://x/containerd-shim-spin-v2-linux-aarch64.tar.gz",
                Some(Arch::Arm64),
            ),
            ("https://x/shim_linux_amd64.tgz", Some(Arch::Amd64)),
            ("https://x/shim-arm64.tar.gz", Some(Arch::Arm64)),
            ("https://x/shim.tar.gz", None),
        ] {
            assert_eq!(Arch::in_url(url), want, "{url}");
        }
    }
}
