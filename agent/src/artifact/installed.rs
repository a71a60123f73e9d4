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
    /// As the host sees it (what containerd's config points at).
    pub binary_path: PathBuf,
    pub installed_at: String,
    /// The agent's link to the binary in `containerd.link_dir` (host path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<PathBuf>,
}
