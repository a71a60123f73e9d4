//! Exactly what the agent added to containerd's configuration, kept in the state file, so `remove` can
//! take away that and nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::config::ConfigVersion;
use super::flavor::Kind;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConfigOwnership {
    pub flavor: Kind,
    pub version: ConfigVersion,
    /// The runtime tables the agent wrote, by handler.
    pub handlers: BTreeMap<String, OwnedRuntime>,
    /// Every file the agent changed or created, by host path.
    pub files: BTreeMap<PathBuf, FileRecord>,
    /// Directories the agent created for its files (a drop-in's `conf.d`), host paths: removed once
    /// empty, so the config directory ends as it began.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub created_dirs: BTreeSet<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OwnedRuntime {
    pub runtime_type: String,
    pub runtime_path: PathBuf,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileRecord {
    /// The file did not exist before the agent wrote it.
    pub created: bool,
    /// Digest of what the agent last wrote: if the file still has it, nobody edited it since, and the
    /// backup of the original can be put back byte for byte.
    pub sha256_written: String,
    /// Only the agent has changed the file since its original was backed up: the backup plus the
    /// agent's edits is the whole story, so putting the backup back loses nobody's work.
    #[serde(default)]
    pub pristine: bool,
    /// An `imports` entry the agent added to this file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import_entry: Option<String>,
    /// The `imports` key itself was created by the agent.
    #[serde(default)]
    pub created_imports_key: bool,
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "k3s" => Kind::K3s,
            "rke2" => Kind::Rke2,
            "k0s" => Kind::K0s,
            "microk8s" => Kind::Microk8s,
            _ => Kind::Containerd,
        })
    }
}
