//! Who still runs an installed shim, asked of containerd through `Containerd::shim_users`, and the
//! earlier versions of a shim removed once nothing runs them.

use std::path::PathBuf;
use std::time::SystemTime;

use crate::artifact::InstalledShim;
use crate::containerd::inuse::ShimQuery;
use crate::containerd::ownership::ConfigOwnership;

use super::{Engine, State};

/// The coarsest file time a host filesystem keeps (FAT and some network filesystems: 2 s).
const FILE_TIME_GRANULARITY: std::time::Duration = std::time::Duration::from_secs(2);

impl Engine {
    /// When `bin/<binary>` last changed to point at the current version: containers created since
    /// then run the current one. A file's time is coarser than containerd's clock (a kernel tick,
    /// a whole second on some filesystems) and may read earlier than the switch really was: a
    /// container created just before the switch must not read as created after it, so containers
    /// created within [`FILE_TIME_GRANULARITY`] after it count as running the earlier version too.
    fn surely_current_since(&self, rec: &InstalledShim) -> Option<SystemTime> {
        let link = self.host.resolve(&rec.binary_path).ok()?;
        let switched = std::fs::symlink_metadata(link).ok()?.modified().ok()?;
        Some(switched + FILE_TIME_GRANULARITY)
    }

    /// What identifies a shim's users to `Containerd::shim_users`: the runtime type containerd
    /// records for its containers (from the config the agent wrote, else the settings), and the
    /// files a container or a shim process may name.
    pub(super) fn shim_query(
        &self,
        owned: Option<&ConfigOwnership>,
        rec: &InstalledShim,
        executables: Vec<PathBuf>,
        started_before: Option<SystemTime>,
    ) -> ShimQuery {
        let runtime_type = owned
            .and_then(|o| o.handlers.get(&rec.name))
            .map(|h| h.runtime_type.clone())
            .or_else(|| {
                self.settings
                    .shim(&rec.name)
                    .map(|s| s.runtime_type.clone())
            });
        ShimQuery {
            runtime_type,
            executables,
            started_before,
        }
    }

    /// Earlier versions whose last process has exited go; the rest wait for a later reconcile.
    pub(super) async fn drop_unused_versions(&self, state: &mut State) -> anyhow::Result<()> {
        let mut changed = false;
        let owned = state.containerd.clone();
        for rec in state.shims.values_mut() {
            let mut kept = Vec::new();
            let switched = self.surely_current_since(rec);
            for old in std::mem::take(&mut rec.retired) {
                let q = self.shim_query(owned.as_ref(), rec, vec![old.clone()], switched);
                let running = self.containerd.shim_users(&q).await?;
                if running.is_empty() {
                    self.remove_version(&old)?;
                    tracing::info!(shim = %rec.name, version = %old.display(), "earlier shim version removed: no process runs it");
                    changed = true;
                } else {
                    tracing::info!(shim = %rec.name, version = %old.display(), users = running.len(), "earlier shim version kept while containers run on it");
                    kept.push(old);
                }
            }
            rec.retired = kept;
        }
        if changed {
            state.save(&self.layout.state_path())?;
        }
        Ok(())
    }
}
