//! Everything a plan is computed from, read from the host once: the state file, each requested shim's
//! artifact facts, and the containerd config files the edit may look at.

use std::collections::BTreeMap;

use crate::artifact::ArtifactFacts;
use crate::containerd::edit::ConfigFacts;
use crate::settings::Shim;

use super::{Engine, State};

pub struct HostFacts {
    pub state: State,
    /// By shim name, for the shims the plan is about.
    pub artifacts: BTreeMap<String, ArtifactFacts>,
    pub config: ConfigFacts,
}

impl Engine {
    #[tracing::instrument(name = "facts", skip_all)]
    pub async fn facts(&self, shims: &[&Shim]) -> anyhow::Result<HostFacts> {
        let state = State::load(&self.layout.state_path())?;
        let mut artifacts = BTreeMap::new();
        for shim in shims {
            let f = self.store.facts(shim, state.shims.get(&shim.name)).await;
            artifacts.insert(shim.name.clone(), f);
        }
        let config = self.containerd.facts(state.containerd.as_ref()).await?;
        Ok(HostFacts {
            state,
            artifacts,
            config,
        })
    }
}
