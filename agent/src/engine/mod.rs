//! One reconcile of the host: read facts, plan, carry out the plan. Used by the one-shot commands and
//! by `run`.

pub mod commands;
pub mod configure;
pub mod run;

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::arch::Arch;
use crate::artifact::{ArtifactStore, Installed};
use crate::containerd::change::ConfigPlan;
use crate::containerd::config::RuntimeEntry;
use crate::containerd::inuse::{shims_running, ShimProcess};
use crate::host::lock::HostLock;
use crate::host::state::State;
use crate::host::{HostRoot, InstallLayout};
use crate::plan::{artifact_step, ArtifactStep};
use crate::settings::{Settings, Shim};
use configure::{ConfigOutcome, Containerd};

pub struct Engine {
    pub settings: Settings,
    pub host: HostRoot,
    pub layout: InstallLayout,
    pub arch: Arch,
    store: ArtifactStore,
}

#[derive(Debug, Clone)]
pub struct ShimPlan {
    pub shim: Shim,
    pub step: ArtifactStep,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShimOutcome {
    pub name: String,
    pub result: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Bytes downloaded for this shim (0 when up to date or from the cache).
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApplyReport {
    pub shims: Vec<ShimOutcome>,
    pub config: Option<ConfigOutcome>,
    /// What the operator should know though nothing failed (a link name taken, options this
    /// containerd cannot pass).
    pub notes: Vec<String>,
}

impl ApplyReport {
    pub fn failures(&self) -> Vec<String> {
        self.shims
            .iter()
            .filter_map(|s| s.error.as_ref().map(|e| format!("{}: {e}", s.name)))
            .collect()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RemoveReport {
    pub removed: Vec<String>,
    /// Shims left in place because containers still run on them.
    pub in_use: Vec<(String, Vec<ShimProcess>)>,
    pub config: Option<ConfigOutcome>,
}

pub struct FullPlan {
    pub shims: Vec<ShimPlan>,
    pub config: anyhow::Result<ConfigPlan>,
    pub restart: String,
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
        Ok(Self {
            settings,
            host,
            layout,
            arch,
            store,
        })
    }

    pub fn containerd(&self) -> anyhow::Result<Containerd> {
        Containerd::new(&self.host, &self.layout, &self.settings.containerd)
    }

    pub fn load_state(&self) -> anyhow::Result<State> {
        State::load(&self.layout.state_path())
    }

    pub fn artifact_plan(&self, names: &[String], state: &State) -> anyhow::Result<Vec<ShimPlan>> {
        Ok(self
            .settings
            .select(names)?
            .into_iter()
            .map(|shim| {
                let facts = self.store.facts(shim, state);
                let step = artifact_step(shim, self.arch, &self.settings.artifacts, &facts);
                ShimPlan {
                    shim: shim.clone(),
                    step,
                }
            })
            .collect())
    }

    /// The runtime entry for a shim, from the settings and where its binary is installed.
    fn entry(&self, name: &str, state: &State) -> Option<RuntimeEntry> {
        let rec = state.shims.get(name)?;
        let shim = self.settings.shim(name);
        let owned = state.containerd.as_ref().and_then(|o| o.handlers.get(name));
        Some(RuntimeEntry {
            handler: name.to_owned(),
            runtime_type: shim
                .map(|s| s.runtime_type.clone())
                .or_else(|| owned.map(|o| o.runtime_type.clone()))?,
            binary: rec.binary_path.clone(),
            options: shim.and_then(|s| s.options.clone()),
        })
    }

    fn owned_handlers(state: &State) -> BTreeSet<String> {
        state
            .containerd
            .as_ref()
            .map(|o| o.handlers.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// What apply would do, changing nothing.
    pub async fn plan(&self, names: &[String]) -> anyhow::Result<FullPlan> {
        let state = self.load_state()?;
        let shims = self.artifact_plan(names, &state)?;
        let mut would_have = Self::owned_handlers(&state);
        let mut preview = state.clone();
        for p in &shims {
            if !matches!(p.step, ArtifactStep::Unavailable(_)) {
                would_have.insert(p.shim.name.clone());
                preview.shims.entry(p.shim.name.clone()).or_insert_with(|| {
                    crate::host::state::InstalledShim {
                        name: p.shim.name.clone(),
                        version: p.shim.version.clone(),
                        arch: self.arch,
                        url: String::new(),
                        archive_sha256: String::new(),
                        binary_sha256: String::new(),
                        binary_path: self.layout.host_bin_path(&p.shim.binary),
                        installed_at: String::new(),
                        link: None,
                    }
                });
            }
        }
        let desired: Vec<RuntimeEntry> = would_have
            .iter()
            .filter_map(|h| self.entry(h, &preview))
            .collect();
        let containerd = self.containerd()?;
        let config = containerd.plan(state.containerd.as_ref(), &desired).await;
        let restart = match &config {
            Ok(c) if c.changes() => match &self.settings.containerd.restart {
                crate::settings::RestartMethod::None => {
                    "no (containerd.restart = \"none\")".to_owned()
                }
                _ if containerd.flavor.kind.reloads_itself() => {
                    "no (k0s reloads drop-ins itself)".to_owned()
                }
                _ => format!(
                    "yes ({} unit {})",
                    containerd.flavor.kind.name(),
                    containerd.flavor.unit
                ),
            },
            Ok(_) => "no (config unchanged; only if a handler is found not loaded)".to_owned(),
            Err(_) => "unknown".to_owned(),
        };
        Ok(FullPlan {
            shims,
            config,
            restart,
        })
    }

    /// Install every selected shim that can be, then configure containerd for all installed shims the
    /// agent owns. One shim's failure does not stop the others; the report lists each.
    pub async fn apply(&self, names: &[String]) -> anyhow::Result<ApplyReport> {
        self.layout.ensure_dirs()?;
        let _lock = HostLock::acquire(&self.layout.lock_path())?;
        self.store.clean_staging();
        let mut state = self.load_state()?;
        let containerd = self.containerd()?;
        let plans = self.artifact_plan(names, &state)?;
        let mut outcomes = Vec::new();
        let mut wanted = Self::owned_handlers(&state);
        let before: BTreeSet<String> = state.shims.keys().cloned().collect();
        for p in &plans {
            match self
                .store
                .install(&p.shim, self.arch, &p.step, &mut state)
                .await
            {
                Ok(how) => {
                    if how != Installed::Unchanged {
                        state
                            .save(&self.layout.state_path())
                            .context("saving the state file")?;
                    }
                    wanted.insert(p.shim.name.clone());
                    outcomes.push(ShimOutcome {
                        name: p.shim.name.clone(),
                        result: describe(&how),
                        error: None,
                        bytes: match how {
                            Installed::Downloaded { bytes } => bytes,
                            _ => 0,
                        },
                    });
                }
                Err(e) => {
                    tracing::error!(shim = %p.shim.name, error = %format!("{e:#}"), "shim not installed");
                    outcomes.push(ShimOutcome {
                        name: p.shim.name.clone(),
                        result: "failed".into(),
                        error: Some(format!("{e:#}")),
                        bytes: 0,
                    });
                }
            }
        }
        let mut notes = Vec::new();
        for p in plans.iter().filter(|p| wanted.contains(&p.shim.name)) {
            if let Some(note) = self.sync_link(&p.shim, &mut state)? {
                notes.push(note);
            }
        }
        let desired: Vec<RuntimeEntry> = wanted
            .iter()
            .filter_map(|h| self.entry(h, &state))
            .collect();
        if desired.is_empty() && state.containerd.is_none() {
            return Ok(ApplyReport {
                shims: outcomes,
                config: None,
                notes,
            });
        }
        let result = match containerd.plan(state.containerd.as_ref(), &desired).await {
            Ok(plan) => {
                notes.extend(plan.notes.iter().cloned());
                containerd
                    .carry_out(&plan, &mut state, &self.layout.state_path(), &[])
                    .await
            }
            Err(e) => Err(e),
        };
        for n in &notes {
            tracing::warn!(note = %n, "applied with a note");
        }
        match result {
            Ok(config) => Ok(ApplyReport {
                shims: outcomes,
                config: Some(config),
                notes,
            }),
            Err(e) => {
                // containerd never used the binaries this run added: take them away too, so the node is
                // exactly as before (the verified archives stay in the cache for the next attempt).
                for name in state
                    .shims
                    .keys()
                    .filter(|n| !before.contains(*n))
                    .cloned()
                    .collect::<Vec<_>>()
                {
                    if let Some(rec) = state.shims.remove(&name) {
                        self.remove_binary(&rec)?;
                    }
                }
                state.save(&self.layout.state_path())?;
                Err(e)
            }
        }
    }

    /// Undo what apply did for the named shims (all when none named). A shim whose binary still runs
    /// containers stays, with its config entry, and is reported.
    pub async fn remove(&self, names: &[String]) -> anyhow::Result<RemoveReport> {
        if !self.layout.dir.exists() {
            return Ok(RemoveReport {
                removed: vec![],
                in_use: vec![],
                config: None,
            });
        }
        let _lock = HostLock::acquire(&self.layout.lock_path())?;
        let mut state = self.load_state()?;
        let containerd = self.containerd()?;
        let owned = Self::owned_handlers(&state);
        let known: BTreeSet<String> = state
            .shims
            .keys()
            .cloned()
            .chain(owned.iter().cloned())
            .collect();
        let targets: Vec<String> = if names.is_empty() {
            known.iter().cloned().collect()
        } else {
            for n in names {
                anyhow::ensure!(
                    known.contains(n) || self.settings.shim(n).is_some(),
                    "unknown shim {n:?}"
                );
            }
            names
                .iter()
                .filter(|n| known.contains(*n))
                .cloned()
                .collect()
        };
        let mut removable = Vec::new();
        let mut in_use = Vec::new();
        for name in &targets {
            let running = state
                .shims
                .get(name)
                .map(|r| shims_running(&r.binary_path))
                .unwrap_or_default();
            if running.is_empty() {
                removable.push(name.clone());
            } else {
                tracing::warn!(shim = %name, processes = running.len(), "shim in use by running containers; leaving it installed and configured");
                in_use.push((name.clone(), running));
            }
        }
        let remaining: Vec<RuntimeEntry> = owned
            .iter()
            .filter(|h| !removable.contains(h))
            .filter_map(|h| self.entry(h, &state))
            .collect();
        let mut config = None;
        if state.containerd.is_some() {
            let plan = containerd
                .plan(state.containerd.as_ref(), &remaining)
                .await?;
            config = Some(
                containerd
                    .carry_out(&plan, &mut state, &self.layout.state_path(), &removable)
                    .await?,
            );
        }
        // Binaries go only after containerd no longer points at them.
        for name in &removable {
            if let Some(rec) = state.shims.remove(name) {
                self.remove_binary(&rec)?;
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
        })
    }
}

impl Engine {
    /// Keep the shim's runtime-name link in `containerd.link_dir` as the settings ask: made when set,
    /// removed when unset. Returns a note when the name is taken by a file the agent does not own.
    fn sync_link(&self, shim: &Shim, state: &mut State) -> anyhow::Result<Option<String>> {
        let Some(rec) = state.shims.get(&shim.name).cloned() else {
            return Ok(None);
        };
        let wanted = self.settings.containerd.link_dir.as_ref().and_then(|dir| {
            crate::artifact::link::shim_name_for(&shim.runtime_type).map(|n| dir.join(n))
        });
        if let Some(old) = rec.link.as_ref().filter(|l| Some(*l) != wanted.as_ref()) {
            crate::artifact::link::remove(&self.host, old, &rec.binary_path)?;
            self.record_link(&shim.name, None, state)?;
        }
        let Some(link) = wanted else {
            return Ok(None);
        };
        let dir = link.parent().unwrap_or(std::path::Path::new("/"));
        let name = link.file_name().unwrap_or_default().to_string_lossy();
        match crate::artifact::link::ensure(&self.host, dir, &name, &rec.binary_path)? {
            crate::artifact::link::Linked::Ours(l) => {
                self.record_link(&shim.name, Some(l), state)?;
                Ok(None)
            }
            crate::artifact::link::Linked::Taken(l) => Ok(Some(format!(
                "shim {}: {} exists and is not kwasm-agent's; left as it is (clients naming runtime {} get that file)",
                shim.name,
                l.display(),
                shim.runtime_type
            ))),
        }
    }

    fn record_link(
        &self,
        shim: &str,
        link: Option<std::path::PathBuf>,
        state: &mut State,
    ) -> anyhow::Result<()> {
        if let Some(rec) = state.shims.get_mut(shim) {
            if rec.link != link {
                rec.link = link;
                state.save(&self.layout.state_path())?;
            }
        }
        Ok(())
    }

    /// The link first, so no name ever points at a missing binary.
    fn remove_binary(&self, rec: &crate::host::state::InstalledShim) -> anyhow::Result<()> {
        if let Some(link) = &rec.link {
            crate::artifact::link::remove(&self.host, link, &rec.binary_path)?;
        }
        crate::host::atomic::remove(&self.host.resolve(&rec.binary_path)?)
    }
}

fn describe(how: &Installed) -> String {
    match how {
        Installed::Unchanged => "unchanged".into(),
        Installed::FromCache => "installed from cache".into(),
        Installed::Downloaded { bytes } => format!("installed (downloaded {bytes} bytes)"),
    }
}
