//! One shim's artifact step — up to date, install from the cache, download, or cannot be installed —
//! decided from the settings and facts read from the host. No I/O here, so every decision is
//! unit-tested and `kwasm-agent plan` prints exactly what `apply` would do.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;

use super::source::Source;
use super::InstalledShim;
use crate::arch::Arch;
use crate::settings::{ArtifactSettings, Shim};

/// What the host holds for one shim.
#[derive(Debug, Clone, Default)]
pub struct ArtifactFacts {
    pub installed: Option<InstalledShim>,
    /// The installed binary's digest, present only when it still matches the state's record.
    pub installed_binary_sha256: Option<String>,
    pub cached_archives: BTreeSet<String>,
    pub host_bin_path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactStep {
    UpToDate,
    FromCache {
        url: String,
        sha256: Option<String>,
    },
    Download {
        url: String,
        sha256: Option<String>,
    },
    /// This shim cannot be installed on this node; the reason says why and what to change.
    Unavailable(String),
}

impl fmt::Display for ArtifactStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArtifactStep::UpToDate => write!(f, "up to date"),
            ArtifactStep::FromCache { sha256, .. } => {
                write!(
                    f,
                    "install from cache (sha256 {})",
                    sha256.as_deref().unwrap_or("?")
                )
            }
            ArtifactStep::Download { url, sha256 } => write!(
                f,
                "download {url} (sha256 {})",
                sha256.as_deref().unwrap_or("not pinned")
            ),
            ArtifactStep::Unavailable(r) => write!(f, "cannot install: {r}"),
        }
    }
}

pub fn decide(
    shim: &Shim,
    arch: Arch,
    settings: &ArtifactSettings,
    facts: &ArtifactFacts,
) -> ArtifactStep {
    let Some(platform) = shim.platform(arch) else {
        let listed: Vec<_> = shim.platforms.iter().map(|p| p.arch.as_str()).collect();
        return ArtifactStep::Unavailable(format!(
            "no platform for architecture {arch} (the settings list: {})",
            if listed.is_empty() {
                "none".to_owned()
            } else {
                listed.join(", ")
            }
        ));
    };
    if let Err(e) = Source::resolve(&platform.url, settings) {
        return ArtifactStep::Unavailable(e.to_string());
    }
    let installed = facts
        .installed
        .as_ref()
        .filter(|r| r.version == shim.version && r.arch == arch);
    let expected = match &platform.sha256 {
        Some(d) => Some(d.to_ascii_lowercase()),
        None if shim.verify.is_some() && settings.allow_unpinned_if_signed => installed
            .filter(|r| r.url == platform.url)
            .map(|r| r.archive_sha256.clone()),
        None if !settings.allow_unverified => {
            return ArtifactStep::Unavailable(format!(
                "platform {arch} has no sha256; pin its digest (`kwasm-agent pin URL` prints it){}, or set artifacts.allow_unverified = true to accept unverified downloads",
                if shim.verify.is_some() {
                    ", or set artifacts.allow_unpinned_if_signed = true to accept any build its verify requirement accepts"
                } else {
                    ""
                }
            ))
        }
        // An unverified artifact already fetched is known by the digest we recorded for its URL.
        None => installed.filter(|r| r.url == platform.url).map(|r| r.archive_sha256.clone()),
    };
    // A binary installed under another signature requirement (or none) is checked again.
    let requirement = shim.verify.as_ref().map(|v| v.requirement());
    let matches_record = installed
        .map(|r| {
            Some(&r.archive_sha256) == expected.as_ref()
                && r.binary_path == facts.host_bin_path
                && facts.installed_binary_sha256.as_ref() == Some(&r.binary_sha256)
                && (requirement.is_none()
                    || requirement.as_ref() == r.signature.as_ref().map(|s| &s.requirement))
        })
        .unwrap_or(false);
    if matches_record {
        return ArtifactStep::UpToDate;
    }
    let url = platform.url.clone();
    match expected {
        Some(d) if facts.cached_archives.contains(&d) => ArtifactStep::FromCache {
            url,
            sha256: Some(d),
        },
        sha256 => ArtifactStep::Download { url, sha256 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Platform;

    const D1: &str = "eec8df96fa3a4fe5dbc57ffb706461692c055299dd6d22dff9444863a2a12281";

    fn shim(sha: Option<&str>) -> Shim {
        Shim {
            name: "spin".into(),
            runtime_type: "io.containerd.spin.v2".into(),
            binary: "containerd-shim-spin-v2".into(),
            version: "v1".into(),
            options: None,
            verify: None,
            platforms: vec![
                Platform {
                    arch: Arch::Amd64,
                    url: "https://x/amd64.tgz".into(),
                    sha256: sha.map(Into::into),
                },
                Platform {
                    arch: Arch::Arm64,
                    url: "https://x/arm64.tgz".into(),
                    sha256: Some("b".repeat(64)),
                },
            ],
        }
    }

    fn record(sha: &str) -> InstalledShim {
        InstalledShim {
            name: "spin".into(),
            version: "v1".into(),
            arch: Arch::Amd64,
            url: "https://x/amd64.tgz".into(),
            archive_sha256: sha.into(),
            binary_sha256: "c".repeat(64),
            binary_path: "/opt/kwasm/bin/containerd-shim-spin-v2".into(),
            installed_at: String::new(),
            link: None,
            version_path: None,
            retired: vec![],
            signature: None,
        }
    }

    fn facts(rec: Option<InstalledShim>, binary_ok: bool, cached: &[&str]) -> ArtifactFacts {
        ArtifactFacts {
            installed_binary_sha256: rec
                .as_ref()
                .filter(|_| binary_ok)
                .map(|r| r.binary_sha256.clone()),
            installed: rec,
            cached_archives: cached.iter().map(|s| s.to_string()).collect(),
            host_bin_path: "/opt/kwasm/bin/containerd-shim-spin-v2".into(),
        }
    }

    #[test]
    fn picks_the_platform_of_the_node() {
        let s = ArtifactSettings::default();
        match decide(&shim(Some(D1)), Arch::Arm64, &s, &facts(None, false, &[])) {
            ArtifactStep::Download { url, .. } => assert_eq!(url, "https://x/arm64.tgz"),
            other => panic!("{other:?}"),
        }
        let mut one = shim(Some(D1));
        one.platforms.truncate(1);
        let step = decide(&one, Arch::Arm64, &s, &facts(None, false, &[]));
        assert!(
            matches!(&step, ArtifactStep::Unavailable(r) if r.contains("arm64") && r.contains("amd64")),
            "{step:?}"
        );
    }

    #[test]
    fn installed_and_intact_is_up_to_date_else_cache_else_download() {
        let s = ArtifactSettings::default();
        let sh = shim(Some(D1));
        assert_eq!(
            decide(&sh, Arch::Amd64, &s, &facts(Some(record(D1)), true, &[D1])),
            ArtifactStep::UpToDate
        );
        // The binary on disk was altered: reinstall from the cache.
        assert!(matches!(
            decide(&sh, Arch::Amd64, &s, &facts(Some(record(D1)), false, &[D1])),
            ArtifactStep::FromCache { .. }
        ));
        // A new pinned digest: download.
        assert!(matches!(
            decide(
                &sh,
                Arch::Amd64,
                &s,
                &facts(Some(record(&"d".repeat(64))), true, &[])
            ),
            ArtifactStep::Download { .. }
        ));
    }

    #[test]
    fn unverified_needs_permission_and_is_remembered() {
        let sh = shim(None);
        let strict = ArtifactSettings::default();
        assert!(matches!(
            decide(&sh, Arch::Amd64, &strict, &facts(None, false, &[])),
            ArtifactStep::Unavailable(r) if r.contains("allow_unverified")
        ));
        let lax = ArtifactSettings {
            allow_unverified: true,
            ..Default::default()
        };
        assert_eq!(
            decide(&sh, Arch::Amd64, &lax, &facts(None, false, &[])),
            ArtifactStep::Download {
                url: "https://x/amd64.tgz".into(),
                sha256: None
            }
        );
        assert_eq!(
            decide(
                &sh,
                Arch::Amd64,
                &lax,
                &facts(Some(record(D1)), true, &[D1])
            ),
            ArtifactStep::UpToDate
        );
    }

    #[test]
    fn plain_http_is_unavailable_without_permission() {
        let mut sh = shim(Some(D1));
        sh.platforms[0].url = "http://127.0.0.1/a.tgz".into();
        assert!(matches!(
            decide(&sh, Arch::Amd64, &ArtifactSettings::default(), &facts(None, false, &[])),
            ArtifactStep::Unavailable(r) if r.contains("allow_http")
        ));
    }

    #[test]
    fn unpinned_but_signed_needs_its_own_permission() {
        let mut sh = shim(None);
        sh.verify = Some(crate::settings::Verify {
            identity: Some("https://github.com/o/r/.github/workflows/r.yml@refs/tags/v1".into()),
            issuer: Some("https://token.actions.githubusercontent.com".into()),
            ..Default::default()
        });
        let strict = ArtifactSettings::default();
        assert!(matches!(
            decide(&sh, Arch::Amd64, &strict, &facts(None, false, &[])),
            ArtifactStep::Unavailable(r) if r.contains("allow_unpinned_if_signed")
        ));
        let signed = ArtifactSettings {
            allow_unpinned_if_signed: true,
            ..Default::default()
        };
        assert_eq!(
            decide(&sh, Arch::Amd64, &signed, &facts(None, false, &[])),
            ArtifactStep::Download {
                url: "https://x/amd64.tgz".into(),
                sha256: None
            }
        );
        // Without verify the permission does not apply.
        assert!(matches!(
            decide(&shim(None), Arch::Amd64, &signed, &facts(None, false, &[])),
            ArtifactStep::Unavailable(_)
        ));
    }

    #[test]
    fn a_new_signature_requirement_checks_the_installed_binary_again() {
        let mut sh = shim(Some(D1));
        let s = ArtifactSettings::default();
        let verify = crate::settings::Verify {
            identity: Some("https://github.com/o/r/.github/workflows/r.yml@refs/tags/v1".into()),
            issuer: Some("https://token.actions.githubusercontent.com".into()),
            ..Default::default()
        };
        sh.verify = Some(verify.clone());
        // Installed before verification was asked for: checked again, from the cache.
        assert!(matches!(
            decide(&sh, Arch::Amd64, &s, &facts(Some(record(D1)), true, &[D1])),
            ArtifactStep::FromCache { .. }
        ));
        let mut rec = record(D1);
        rec.signature = Some(crate::artifact::SignatureRecord {
            requirement: verify.requirement(),
            signer: "someone".into(),
        });
        assert_eq!(
            decide(&sh, Arch::Amd64, &s, &facts(Some(rec.clone()), true, &[D1])),
            ArtifactStep::UpToDate
        );
        // Dropping the requirement keeps what is installed.
        sh.verify = None;
        assert_eq!(
            decide(&sh, Arch::Amd64, &s, &facts(Some(rec), true, &[D1])),
            ArtifactStep::UpToDate
        );
    }
}
