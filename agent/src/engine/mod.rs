//! One reconcile of the host: read facts, plan, carry out the plan. Used by the one-shot commands and
//! by `run`.

pub mod commands;

use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::arch::Arch;
use crate::artifact::{ArtifactStore, Installed};
use crate::host::lock::HostLock;
use crate::host::state::State;
use crate::host::{HostRoot, InstallLayout};
use crate::plan::{artifact_step, ArtifactStep};
use crate::settings::{Settings, Shim};

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

    pub fn load_state(&self) -> anyhow::Result<State> {
        State::load(&self.layout.state_path())
    }

    pub fn plan(&self, names: &[String], state: &State) -> anyhow::Result<Vec<ShimPlan>> {
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

    /// Installs every selected shim that can be; one shim's failure does not stop the others, and the
    /// error lists every shim that failed.
    pub async fn apply(&self, names: &[String]) -> anyhow::Result<Vec<ShimOutcome>> {
        self.layout.ensure_dirs()?;
        let _lock = HostLock::acquire(&self.layout.lock_path())?;
        self.store.clean_staging();
        let mut state = self.load_state()?;
        let plans = self.plan(names, &state)?;
        let mut outcomes = Vec::new();
        for p in &plans {
            let outcome = match self
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
                    ShimOutcome {
                        name: p.shim.name.clone(),
                        result: describe(&how),
                        error: None,
                    }
                }
                Err(e) => {
                    tracing::error!(shim = %p.shim.name, error = %format!("{e:#}"), "shim not installed");
                    ShimOutcome {
                        name: p.shim.name.clone(),
                        result: "failed".into(),
                        error: Some(format!("{e:#}")),
                    }
                }
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }
}

fn describe(how: &Installed) -> String {
    match how {
        Installed::Unchanged => "unchanged".into(),
        Installed::FromCache => "installed from cache".into(),
        Installed::Downloaded { bytes } => format!("installed (downloaded {bytes} bytes)"),
    }
}
