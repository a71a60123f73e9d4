//! The host engine: read the host's facts once, compute one plan from them (pure), carry the plan out,
//! prove the result. The one-shot commands use it on their own; the node controller drives it.

mod apply;
mod facts;
mod links;
pub mod plan;
mod remove;
pub mod state;
pub mod status;
mod users;

use std::path::Path;
use std::sync::Arc;

use crate::arch::Arch;
use crate::artifact::ArtifactStore;
use crate::containerd::gate::{RestartGate, Ungated};
use crate::containerd::Containerd;
use crate::host::lock::HostLock;
use crate::host::{HostRoot, InstallLayout};
use crate::settings::Settings;
pub use apply::{ApplyReport, ShimOutcome};
pub use facts::HostFacts;
pub use plan::HostPlan;
pub use remove::RemoveReport;
pub use state::State;

pub struct Engine {
    pub settings: Settings,
    pub host: HostRoot,
    pub layout: InstallLayout,
    pub arch: Arch,
    pub containerd: Containerd,
    store: ArtifactStore,
    /// Entered before containerd may go down: immediate for one-shot commands, paced across the
    /// cluster by the node controller.
    restart_gate: Arc<dyn RestartGate>,
}

impl Engine {
    pub fn new(
        settings: Settings,
        host_root: Option<&Path>,
        arch: Option<Arch>,
    ) -> anyhow::Result<Self> {
        let host = HostRoot::new(host_root.unwrap_or(&settings.host.root));
        anyhow::ensure!(
            host.root().is_dir(),
            "host root {} is not a directory",
            host.root().display()
        );
        let layout = InstallLayout::new(&host, &settings.host.install_dir)?;
        let arch = match arch {
            Some(a) => a,
            None => Arch::of_this_machine()?,
        };
        let store = ArtifactStore::new(&host, layout.clone(), &settings.artifacts)?;
        let containerd = Containerd::new(&host, &layout, &settings.containerd)?;
        Ok(Self {
            settings,
            host,
            layout,
            arch,
            containerd,
            store,
            restart_gate: Arc::new(Ungated),
        })
    }

    pub fn with_restart_gate(mut self, gate: Arc<dyn RestartGate>) -> Self {
        self.restart_gate = gate;
        self
    }

    /// Serialises agents on this host. Held across read facts → plan → carry out, so a plan is never
    /// carried out on facts another agent changed meanwhile.
    pub async fn lock(&self) -> anyhow::Result<HostLock> {
        self.layout.ensure_dirs()?;
        HostLock::acquire(&self.layout.lock_path()).await
    }

    /// The catalog's shims this node can run: those with a platform for its architecture.
    pub fn default_shims(&self) -> Vec<String> {
        self.settings
            .shims
            .iter()
            .filter(|s| s.platform(self.arch).is_some())
            .map(|s| s.name.clone())
            .collect()
    }
}
