//! The record of a shim binary the agent installed: what it is, where it came from, where it lives.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::arch::Arch;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstalledShim {
    pub name: String,
    pub version: String,
    pub arch: Arch,
    pub url: String,
    pub archive_sha256: String,
    pub binary_sha256: String,
    /// As the host sees it (what containerd's config points at): a symlink to the current version.
    pub binary_path: PathBuf,
    /// The current version's file (`versions/<id>/<binary>`), as the host sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_path: Option<PathBuf>,
    /// Earlier versions' files still on disk because processes ran them; removed once none does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<PathBuf>,
    pub installed_at: String,
    /// The agent's link to the binary in `containerd.link_dir` (host path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<PathBuf>,
    /// The `verify` requirement the binary was checked against (`Verify::requirement`), and who
    /// signed it; None: installed on its SHA-256 pin alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignatureRecord {
    pub requirement: String,
    pub signer: String,
}

impl InstalledShim {
    /// Every file of this shim a process may be running: the link, the current and retired versions.
    pub fn executables(&self) -> Vec<PathBuf> {
        std::iter::once(self.binary_path.clone())
            .chain(self.version_path.clone())
            .chain(self.retired.iter().cloned())
            .collect()
    }
}
