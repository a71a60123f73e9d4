//! What is on this host: installed shims (intact? configured? loaded?) and containerd's health. The
//! data behind `kwasm-agent status`; its JSON form is a documented contract (docs/commands.md).

use serde::Serialize;

use super::{Engine, State};

#[derive(Serialize)]
pub struct StatusReport {
    pub host_root: String,
    pub install_dir: String,
    pub arch: String,
    pub shims: Vec<ShimStatus>,
    pub containerd: ContainerdStatus,
}

#[derive(Serialize)]
pub struct ShimStatus {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub binary_path: String,
    pub binary_sha256: String,
    pub archive_sha256: String,
    pub source: String,
    pub installed_at: String,
    /// The binary on disk still has the digest recorded at install.
    pub binary_intact: bool,
    /// The agent's runtime table for this handler is in containerd's config.
    pub configured: bool,
    /// containerd's CRI plugin lists the handler with this binary (null: containerd not reachable).
    pub loaded: Option<bool>,
    /// The runtime-name link in `containerd.link_dir`, when the agent made one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// Who signed the binary, proven at install (absent: installed on its SHA-256 pin alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
}

#[derive(Serialize)]
pub struct ContainerdStatus {
    pub flavor: String,
    pub config: String,
    pub socket: String,
    pub unit: String,
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub runtime_ready: Option<bool>,
    pub handlers_loaded: Vec<String>,
    pub files_owned: Vec<String>,
}

impl Engine {
    pub async fn status(&self) -> anyhow::Result<StatusReport> {
        let state = State::load(&self.layout.state_path())?;
        let cri = self.containerd.cri_status().await;
        let owned = state.containerd.as_ref();
        let mut shims = Vec::new();
        for r in state.shims.values() {
            let on_disk = match self.host.resolve(&r.binary_path) {
                Ok(p) => self.store.binary_digest(&p).await,
                Err(_) => None,
            };
            shims.push(ShimStatus {
                name: r.name.clone(),
                version: r.version.clone(),
                arch: r.arch.to_string(),
                binary_path: r.binary_path.display().to_string(),
                binary_sha256: r.binary_sha256.clone(),
                archive_sha256: r.archive_sha256.clone(),
                source: r.url.clone(),
                installed_at: r.installed_at.clone(),
                binary_intact: on_disk.as_deref() == Some(r.binary_sha256.as_str()),
                configured: owned.is_some_and(|o| o.handlers.contains_key(&r.name)),
                loaded: cri.as_ref().ok().map(|c| c.lists(&r.name, &r.binary_path)),
                link: r.link.as_ref().map(|l| l.display().to_string()),
                signed_by: r.signature.as_ref().map(|s| s.signer.clone()),
            });
        }
        let flavor = &self.containerd.flavor;
        Ok(StatusReport {
            host_root: self.host.root().display().to_string(),
            install_dir: self.layout.host_dir.display().to_string(),
            arch: self.arch.to_string(),
            shims,
            containerd: ContainerdStatus {
                flavor: flavor.kind.name().into(),
                config: flavor.config.display().to_string(),
                socket: flavor.socket.display().to_string(),
                unit: flavor.unit.clone(),
                reachable: cri.is_ok(),
                error: cri.as_ref().err().map(|e| format!("{e:#}")),
                runtime_ready: cri.as_ref().ok().map(|c| c.runtime_ready),
                handlers_loaded: cri
                    .as_ref()
                    .map(|c| c.handlers.keys().cloned().collect())
                    .unwrap_or_default(),
                files_owned: owned
                    .map(|o| o.files.keys().map(|p| p.display().to_string()).collect())
                    .unwrap_or_default(),
            },
        })
    }
}
