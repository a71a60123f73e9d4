//! Undoing what apply did: the config entries the agent added (exactly those, in reverse order),
//! containerd restarted and proven, then the binaries and their links. A shim whose binary still runs
//! containers stays, with its config entry, and is reported.

use std::collections::BTreeSet;

use crate::containerd::inuse::ShimUser;
use crate::containerd::Outcome;
use crate::host::lock::HostLock;

use super::plan::owned_handlers;
use super::{Engine, State};

#[derive(Debug, Clone)]
pub struct RemoveReport {
    pub removed: Vec<String>,
    /// Shims left in place because containers still run on them.
    pub in_use: Vec<(String, Vec<ShimUser>)>,
    pub config: Option<Outcome>,
    pub state: State,
}

impl Engine {
    /// Remove the named shims (every shim the agent owns when none is named).
    pub async fn remove(&self, names: &[String]) -> anyhow::Result<RemoveReport> {
        if !self.layout.dir.exists() {
            return Ok(RemoveReport {
                removed: vec![],
                in_use: vec![],
                config: None,
                state: State::default(),
            });
        }
        let lock = self.lock().await?;
        self.remove_locked(&lock, names).await
    }

    /// `remove`, for a caller that already holds the host lock.
    #[tracing::instrument(name = "remove", skip_all)]
    pub async fn remove_locked(
        &self,
        _held: &HostLock,
        names: &[String],
    ) -> anyhow::Result<RemoveReport> {
        let facts = self.facts(&[]).await?;
        let mut state = facts.state;
        let owned = owned_handlers(&state);
        let known: BTreeSet<String> = state
            .shims
            .keys()
            .cloned()
            .chain(owned.iter().cloned())
            .collect();
        for n in names {
            anyhow::ensure!(
                known.contains(n) || self.settings.shim(n).is_some(),
                "unknown shim {n:?}"
            );
        }
        let targets: Vec<String> = if names.is_empty() {
            known.iter().cloned().collect()
        } else {
            names
                .iter()
                .filter(|n| known.contains(*n))
                .cloned()
                .collect()
        };
        let (removable, in_use) = self.split_in_use(&targets, &state).await?;
        let remaining: BTreeSet<String> = owned
            .iter()
            .filter(|h| !removable.contains(h))
            .cloned()
            .collect();
        let mut config = None;
        if state.containerd.is_some() {
            let edit = self.config_edit(&facts.config, &state, &remaining)?;
            if edit.changes() {
                self.containerd.preflight().await?;
            }
            config = Some(self.configure(&edit, &removable, &mut state).await?);
        }
        // Binaries go only after containerd no longer points at them.
        for name in &removable {
            if let Some(rec) = state.shims.remove(name) {
                self.remove_binary(&rec)?;
                crate::timeline::mark("remove-binary");
                tracing::info!(shim = %name, path = %rec.binary_path.display(), "shim binary removed");
            }
            state.save(&self.layout.state_path())?;
        }
        if state.shims.is_empty() && state.containerd.is_none() {
            crate::host::atomic::remove(&self.layout.state_path())?;
        }
        Ok(RemoveReport {
            removed: removable,
            in_use,
            config,
            state,
        })
    }

    /// Which targets no container runs on (removable), and which are in use, by whom.
    #[allow(clippy::type_complexity)]
    async fn split_in_use(
        &self,
        targets: &[String],
        state: &State,
    ) -> anyhow::Result<(Vec<String>, Vec<(String, Vec<ShimUser>)>)> {
        let mut removable = Vec::new();
        let mut in_use = Vec::new();
        for name in targets {
            let running = match state.shims.get(name) {
                Some(r) => {
                    let q = self.shim_query(state.containerd.as_ref(), r, r.executables(), None);
                    self.containerd.shim_users(&q).await?
                }
                None => Vec::new(),
            };
            if running.is_empty() {
                removable.push(name.clone());
            } else {
                tracing::warn!(shim = %name, users = running.len(), "shim in use by running containers; leaving it installed and configured");
                in_use.push((name.clone(), running));
            }
        }
        Ok((removable, in_use))
    }
}
