//! What the agent owns on this host, in `<install_dir>/state.json`. Each step writes the state *after*
//! the step it describes is durable, so a crash between the two leaves the host with something the state
//! does not claim yet — which the next run finds and converges, never the opposite.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::artifact::InstalledShim;
use crate::containerd::ownership::ConfigOwnership;

const FORMAT: u32 = 1;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub format: u32,
    #[serde(default)]
    pub shims: BTreeMap<String, InstalledShim>,
    /// The edits the agent made to containerd's configuration, to be undone exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containerd: Option<ConfigOwnership>,
}

impl State {
    pub fn load(path: &Path) -> anyhow::Result<State> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let s: State = serde_json::from_slice(&bytes).with_context(|| {
                    format!(
                        "state file {} is not valid; move it aside to start over",
                        path.display()
                    )
                })?;
                anyhow::ensure!(
                    s.format == FORMAT,
                    "state file {} has format {}, this agent understands {FORMAT}",
                    path.display(),
                    s.format
                );
                Ok(s)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State {
                format: FORMAT,
                ..Default::default()
            }),
            Err(e) => Err(e).with_context(|| format!("reading state file {}", path.display())),
        }
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut s = self.clone();
        s.format = FORMAT;
        let mut bytes = serde_json::to_vec_pretty(&s)?;
        bytes.push(b'\n');
        crate::host::atomic::write(path, &bytes, 0o644)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Arch;
    use crate::clock::now_rfc3339;

    #[test]
    fn missing_file_is_empty_state_and_roundtrips() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        let mut s = State::load(&p).unwrap();
        assert!(s.shims.is_empty());
        s.shims.insert(
            "spin".into(),
            InstalledShim {
                name: "spin".into(),
                version: "v1".into(),
                arch: Arch::Amd64,
                url: "https://x".into(),
                archive_sha256: "a".repeat(64),
                binary_sha256: "b".repeat(64),
                binary_path: "/opt/kwasm/bin/x".into(),
                installed_at: now_rfc3339(),
                link: None,
                version_path: None,
                retired: vec![],
                signature: None,
            },
        );
        s.save(&p).unwrap();
        assert_eq!(
            State::load(&p).unwrap(),
            State {
                format: FORMAT,
                ..s
            }
        );
    }

    #[test]
    fn corrupt_state_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        std::fs::write(&p, b"{").unwrap();
        assert!(State::load(&p)
            .unwrap_err()
            .to_string()
            .contains("not valid"));
    }
}
