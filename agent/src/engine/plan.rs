//! The one plan: for the requested shims, each one's artifact step, the containerd config edit that
//! makes every shim the agent will own configured, and whether containerd would restart. Computed
//! from `HostFacts` without I/O; `kwasm-agent plan` prints it, `apply` carries it out, and the node
//! controller reads drift from it.

use std::collections::BTreeSet;

use crate::artifact::step;
use crate::artifact::{ArtifactStep, InstalledShim};
use crate::containerd::config::RuntimeEntry;
use crate::containerd::edit::{self, ConfigEdit, ConfigFacts};
use crate::containerd::restart::{self, Action};
use crate::settings::Shim;

use super::{Engine, HostFacts, State};

pub struct ShimStep {
    pub shim: Shim,
    pub step: ArtifactStep,
}

pub struct HostPlan {
    pub shims: Vec<ShimStep>,
    /// The edit that configures every shim the agent owns or will install (as if every step works).
    pub config: anyhow::Result<ConfigEdit>,
    pub restart: Action,
}

impl HostPlan {
    /// Shims that cannot be installed on this node, with the reason.
    pub fn unavailable(&self) -> Vec<(&str, &str)> {
        self.shims
            .iter()
            .filter_map(|s| match &s.step {
                ArtifactStep::Unavailable(why) => Some((s.shim.name.as_str(), why.as_str())),
                _ => None,
            })
            .collect()
    }

    /// Does carrying it out change anything on the host?
    pub fn changes(&self) -> bool {
        self.shims.iter().any(|s| s.step != ArtifactStep::UpToDate)
            || self.config.as_ref().map(|c| c.changes()).unwrap_or(true)
    }
}

impl Engine {
    pub fn plan(&self, facts: &HostFacts, requested: &[&Shim]) -> HostPlan {
        let shims: Vec<ShimStep> = requested
            .iter()
            .map(|shim| {
                let found = facts.artifacts.get(&shim.name).cloned().unwrap_or_default();
                ShimStep {
                    shim: (*shim).clone(),
                    step: step::decide(shim, self.arch, &self.settings.artifacts, &found),
                }
            })
            .collect();
        // Where the binaries will be once the steps are carried out.
        let mut preview = facts.state.clone();
        for s in shims
            .iter()
            .filter(|s| !matches!(s.step, ArtifactStep::Unavailable(_)))
        {
            preview
                .shims
                .entry(s.shim.name.clone())
                .or_insert_with(|| self.not_yet_installed(&s.shim));
        }
        let installing: Vec<String> = shims
            .iter()
            .filter(|s| !matches!(s.step, ArtifactStep::Unavailable(_)))
            .map(|s| s.shim.name.clone())
            .collect();
        let handlers = owned_handlers(&preview)
            .into_iter()
            .chain(installing)
            .collect();
        let config = self.config_edit(&facts.config, &preview, &handlers);
        let restart = restart::decide(
            &self.settings.containerd.restart,
            self.containerd.flavor.kind,
            &self.containerd.flavor.unit,
            config.as_ref().map(|c| c.changes()).unwrap_or(false),
            None,
        );
        HostPlan {
            shims,
            config,
            restart,
        }
    }

    /// The edit after which exactly `handlers` are the agent's runtimes in containerd's config (owned
    /// ones not among them are taken out), with the binaries `state` records.
    pub(super) fn config_edit(
        &self,
        config: &ConfigFacts,
        state: &State,
        handlers: &BTreeSet<String>,
    ) -> anyhow::Result<ConfigEdit> {
        let desired: Vec<RuntimeEntry> = handlers
            .iter()
            .filter_map(|h| self.runtime_entry(h, state))
            .collect();
        edit::compute(
            &self.containerd.flavor,
            config,
            state.containerd.as_ref(),
            &desired,
        )
    }

    /// The runtime table's content for a handler: its binary from the state, its options from the
    /// settings (or, for a shim no longer in the settings, what the agent recorded when it wrote it).
    pub(super) fn runtime_entry(&self, handler: &str, state: &State) -> Option<RuntimeEntry> {
        let rec = state.shims.get(handler)?;
        let shim = self.settings.shim(handler);
        let owned = state
            .containerd
            .as_ref()
            .and_then(|o| o.handlers.get(handler));
        Some(RuntimeEntry {
            handler: handler.to_owned(),
            runtime_type: shim
                .map(|s| s.runtime_type.clone())
                .or_else(|| owned.map(|o| o.runtime_type.clone()))?,
            binary: rec.binary_path.clone(),
            options: shim.and_then(|s| s.options.clone()),
        })
    }

    fn not_yet_installed(&self, shim: &Shim) -> InstalledShim {
        InstalledShim {
            name: shim.name.clone(),
            version: shim.version.clone(),
            arch: self.arch,
            url: String::new(),
            archive_sha256: String::new(),
            binary_sha256: String::new(),
            binary_path: self.layout.host_bin_path(&shim.binary),
            installed_at: String::new(),
            link: None,
            version_path: None,
            retired: vec![],
            signature: None,
        }
    }
}

pub fn owned_handlers(state: &State) -> BTreeSet<String> {
    state
        .containerd
        .as_ref()
        .map(|o| o.handlers.keys().cloned().collect())
        .unwrap_or_default()
}
