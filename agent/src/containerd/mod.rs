//! containerd on this host: which one it is (flavor), the facts its config edit is computed from, the
//! edit itself (pure), writing it, restarting containerd, proving through CRI that the handlers loaded,
//! and putting everything back when containerd does not come back healthy.

pub mod candidate;
pub mod config;
pub mod cri;
pub mod edit;
pub mod effective;
mod facts;
pub mod flavor;
pub mod gate;
pub mod inuse;
pub mod ownership;
pub mod restart;
pub mod template;
mod transaction;
mod write;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::host::exec::HostExec;
use crate::host::{HostRoot, InstallLayout};
use crate::settings::ContainerdSettings;
use config::ContainerdVersion;
use cri::CriStatus;
use flavor::Flavor;
pub use transaction::{Outcome, Restart};

pub struct Containerd {
    host: HostRoot,
    layout: InstallLayout,
    settings: ContainerdSettings,
    exec: HostExec,
    pub flavor: Flavor,
    in_use: inuse::InUse,
    /// `containerd --version` by binary identity: asked once, not on every reconcile.
    version: Mutex<Option<(BinaryId, Option<ContainerdVersion>)>>,
}

/// A file as it is on disk now: a changed binary (package upgrade) has another identity.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BinaryId {
    path: PathBuf,
    len: u64,
    modified: std::time::SystemTime,
}

impl Containerd {
    pub fn new(
        host: &HostRoot,
        layout: &InstallLayout,
        settings: &ContainerdSettings,
    ) -> anyhow::Result<Self> {
        let flavor = flavor::detect(host, settings)?;
        let in_use = inuse::InUse::new(settings.in_use, host, host.resolve(&flavor.socket)?);
        Ok(Self {
            in_use,
            host: host.clone(),
            layout: layout.clone(),
            settings: settings.clone(),
            exec: HostExec::new(host),
            flavor,
            version: Mutex::new(None),
        })
    }

    /// The socket as the agent reaches it.
    pub fn socket(&self) -> anyhow::Result<PathBuf> {
        self.host.resolve(&self.flavor.socket)
    }

    /// The containers still running on a shim (see `inuse`).
    pub async fn shim_users(&self, q: &inuse::ShimQuery) -> anyhow::Result<Vec<inuse::ShimUser>> {
        self.in_use.users(q).await
    }

    pub async fn cri_status(&self) -> anyhow::Result<CriStatus> {
        cri::status(&self.socket()?).await
    }

    /// Before anything is written: a restart this host may need must be one that keeps containers
    /// (a systemd unit with `KillMode=process`).
    pub async fn preflight(&self) -> anyhow::Result<()> {
        if self.flavor.kind.reloads_itself() {
            return Ok(());
        }
        self.restarter()
            .check(&self.settings.restart, &self.flavor.unit)
            .await
    }

    fn restarter(&self) -> restart::Restarter<'_> {
        restart::Restarter {
            exec: &self.exec,
            host: &self.host,
            alternatives: &self.flavor.unit_alternatives,
            timeout: self.settings.timeout,
        }
    }

    pub fn restart_method(&self) -> &crate::settings::RestartMethod {
        &self.settings.restart
    }

    /// Where the original of a host file the agent changes is kept.
    fn backup_path(&self, host_path: &Path) -> PathBuf {
        let name = host_path
            .to_string_lossy()
            .trim_start_matches('/')
            .replace('/', "%");
        self.layout.backup_dir().join(name)
    }
}
