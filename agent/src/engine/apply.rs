//! Carrying out a plan: install each shim that can be (one failing does not stop the others), keep
//! their links, then make containerd's config list every shim the agent owns — restarted and proven,
//! or rolled back with the binaries this run added taken away again.

use std::collections::BTreeSet;

use crate::artifact::Installed;
use crate::containerd::{Outcome, Restart};
use crate::host::lock::HostLock;
use crate::timeline::mark;

use super::plan::owned_handlers;
use super::{Engine, HostFacts, HostPlan, State};

#[derive(Debug, Clone)]
pub struct ShimOutcome {
    pub name: String,
    pub result: ShimResult,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShimResult {
    Unchanged,
    InstalledFromCache,
    Downloaded { bytes: u64 },
    Failed { error: String },
}

impl std::fmt::Display for ShimResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShimResult::Unchanged => write!(f, "unchanged"),
            ShimResult::InstalledFromCache => write!(f, "installed from cache"),
            ShimResult::Downloaded { bytes } => write!(f, "installed (downloaded {bytes} bytes)"),
            ShimResult::Failed { error } => write!(f, "failed: {error}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApplyReport {
    pub shims: Vec<ShimOutcome>,
    pub config: Option<Outcome>,
    /// What the operator should know though nothing failed (a link name taken, options this
    /// containerd cannot pass).
    pub notes: Vec<String>,
    /// The host's state afterwards.
    pub state: State,
}

impl ApplyReport {
    pub fn failures(&self) -> Vec<String> {
        self.shims
            .iter()
            .filter_map(|s| match &s.result {
                ShimResult::Failed { error } => Some(format!("{}: {error}", s.name)),
                _ => None,
            })
            .collect()
    }

    pub fn bytes_downloaded(&self) -> u64 {
        self.shims
            .iter()
            .map(|s| match s.result {
                ShimResult::Downloaded { bytes } => bytes,
                _ => 0,
            })
            .sum()
    }

    pub fn restarted(&self) -> bool {
        matches!(
            self.config.as_ref().map(|c| &c.restart),
            Some(Restart::Restarted(_))
        )
    }
}

impl Engine {
    /// Install the named shims (all in the settings when none is named) and configure containerd for
    /// every shim the agent owns.
    pub async fn apply(&self, names: &[String]) -> anyhow::Result<ApplyReport> {
        let lock = self.lock().await?;
        let requested = self.settings.select(names)?;
        let facts = self.facts(&requested).await?;
        let plan = self.plan(&facts, &requested);
        self.carry_out(&lock, plan, facts).await
    }

    /// Carry out `plan`, computed from `facts` under the same host lock.
    #[tracing::instrument(name = "carry_out", skip_all)]
    pub async fn carry_out(
        &self,
        _held: &HostLock,
        plan: HostPlan,
        facts: HostFacts,
    ) -> anyhow::Result<ApplyReport> {
        self.store.clean_staging();
        self.refuse_early(&plan).await?;
        let HostFacts {
            mut state, config, ..
        } = facts;
        let before: BTreeSet<String> = state.shims.keys().cloned().collect();
        let (shims, installed) = self.install_all(&plan, &mut state).await?;
        let mut notes = self.link_installed(&plan, &installed, &mut state)?;
        self.drop_unused_versions(&mut state).await?;
        mark("links");
        let nothing_owned = installed.is_empty() && state.containerd.is_none();
        if nothing_owned {
            return Ok(ApplyReport {
                shims,
                config: None,
                notes,
                state,
            });
        }
        // The plan's edit assumed every step would work; with some failed, configure the rest.
        let edit = if installed.len() != plan.shims.len() {
            let handlers = owned_handlers(&state)
                .into_iter()
                .chain(installed)
                .collect();
            self.config_edit(&config, &state, &handlers)
        } else {
            plan.config
        };
        let result = match edit {
            Ok(edit) => {
                notes.extend(edit.notes.iter().cloned());
                self.configure(&edit, &[], &mut state).await
            }
            Err(e) => Err(e),
        };
        for n in &notes {
            tracing::warn!(note = %n, "applied with a note");
        }
        match result {
            Ok(outcome) => Ok(ApplyReport {
                shims,
                config: Some(outcome),
                notes,
                state,
            }),
            Err(e) => Err(self.take_back_new_binaries(e, &before, &mut state)),
        }
    }

    /// A config that cannot be changed (unknown version, not TOML, a handler someone else owns) is
    /// known before anything is downloaded: install nothing then. Nor when containerd could not take
    /// a changed config.
    async fn refuse_early(&self, plan: &HostPlan) -> anyhow::Result<()> {
        if let Err(e) = &plan.config {
            if !plan.shims.is_empty() {
                return Err(anyhow::anyhow!("{e:#}"));
            }
        }
        if plan.config.as_ref().is_ok_and(|e| e.changes()) {
            self.containerd.preflight().await?;
        }
        Ok(())
    }

    /// Each installed shim's runtime-name link as the settings ask (`links`); the notes that makes.
    fn link_installed(
        &self,
        plan: &HostPlan,
        installed: &[String],
        state: &mut State,
    ) -> anyhow::Result<Vec<String>> {
        let mut notes = Vec::new();
        for s in plan
            .shims
            .iter()
            .filter(|s| installed.contains(&s.shim.name))
        {
            notes.extend(self.sync_link(&s.shim, state)?);
        }
        Ok(notes)
    }

    /// Install every shim of the plan that can be; one failing does not stop the others. Returns each
    /// one's outcome and the names of those now installed.
    async fn install_all(
        &self,
        plan: &HostPlan,
        state: &mut State,
    ) -> anyhow::Result<(Vec<ShimOutcome>, Vec<String>)> {
        let mut shims = Vec::new();
        let mut installed = Vec::new();
        for s in &plan.shims {
            let name = s.shim.name.clone();
            let result = self
                .store
                .install(&s.shim, self.arch, &s.step, state.shims.get(&name))
                .await;
            let result = match result {
                Ok((how, record)) => {
                    if let Some(r) = record {
                        state.shims.insert(name.clone(), r);
                        state.save(&self.layout.state_path())?;
                    }
                    installed.push(name.clone());
                    match how {
                        Installed::Unchanged => ShimResult::Unchanged,
                        Installed::FromCache => ShimResult::InstalledFromCache,
                        Installed::Downloaded { bytes } => ShimResult::Downloaded { bytes },
                    }
                }
                Err(e) => {
                    tracing::error!(shim = %name, error = %format!("{e:#}"), "shim not installed");
                    ShimResult::Failed {
                        error: format!("{e:#}"),
                    }
                }
            };
            shims.push(ShimOutcome { name, result });
            mark("install");
        }
        Ok((shims, installed))
    }

    /// Carry out the config edit through containerd's transaction (`removing`: handlers that must be
    /// gone afterwards), recording in the state file what the agent owns as it changes.
    pub(super) async fn configure(
        &self,
        edit: &crate::containerd::edit::ConfigEdit,
        removing: &[String],
        state: &mut State,
    ) -> anyhow::Result<Outcome> {
        let previous = state.containerd.clone();
        let state_path = self.layout.state_path();
        self.containerd
            .carry_out(
                edit,
                previous.as_ref(),
                removing,
                &mut |owned| {
                    if state.containerd.as_ref() == owned {
                        return Ok(());
                    }
                    state.containerd = owned.cloned();
                    state.save(&state_path)
                },
                self.restart_gate.as_ref(),
            )
            .await
    }

    /// containerd never used the binaries this run added: take them away, so the node is exactly as
    /// before (the verified archives stay in the cache for the next attempt). `cause` stays the error;
    /// a failure to clean up is added to it, never put in its place.
    fn take_back_new_binaries(
        &self,
        cause: anyhow::Error,
        before: &BTreeSet<String>,
        state: &mut State,
    ) -> anyhow::Error {
        let added: Vec<String> = state
            .shims
            .keys()
            .filter(|n| !before.contains(*n))
            .cloned()
            .collect();
        let mut problems = Vec::new();
        for name in added {
            if let Some(rec) = state.shims.remove(&name) {
                if let Err(e) = self.remove_binary(&rec) {
                    problems.push(format!("removing {}: {e:#}", rec.binary_path.display()));
                }
            }
        }
        // Back to nothing: no state file either, as before the run.
        let saved = if state.shims.is_empty() && state.containerd.is_none() {
            crate::host::atomic::remove(&self.layout.state_path())
        } else {
            state.save(&self.layout.state_path())
        };
        if let Err(e) = saved {
            problems.push(format!("saving the state file: {e:#}"));
        }
        if problems.is_empty() {
            cause
        } else {
            cause.context(format!(
                "the binaries this run installed could not all be taken back ({})",
                problems.join("; ")
            ))
        }
    }
}
