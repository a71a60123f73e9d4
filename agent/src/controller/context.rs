//! What every step of the node controller shares, passed in rather than held in globals: the
//! settings, the Node and Event clients and the metrics (`Context`), and the host engine, built once
//! the node's architecture is known (`EngineSlot`).

use std::path::PathBuf;
use std::sync::Arc;

use crate::arch::Arch;
use crate::containerd::gate::RestartGate;
use crate::engine::Engine;
use crate::settings::Settings;

use super::events::Events;
use super::metrics::Metrics;
use super::node::NodeClient;

pub struct Context {
    pub settings: Settings,
    pub nodes: NodeClient,
    pub events: Events,
    pub metrics: Arc<Metrics>,
}

/// The host engine, kept across reconciles: its caches (binary digests, containerd's version) are
/// what make an idle resync cheap.
pub struct EngineSlot {
    settings: Settings,
    host_root: Option<PathBuf>,
    arch_override: Option<Arch>,
    /// Paces containerd restarts across the cluster ([fleet]); None: unpaced.
    gate: Option<Arc<dyn RestartGate>>,
    engine: Option<Engine>,
}

impl EngineSlot {
    pub fn new(
        settings: Settings,
        host_root: Option<PathBuf>,
        arch_override: Option<Arch>,
        gate: Option<Arc<dyn RestartGate>>,
    ) -> Self {
        Self {
            settings,
            host_root,
            arch_override,
            gate,
            engine: None,
        }
    }

    /// The catalog this node follows (the file's shims and the Shim objects for it); a different
    /// one builds a new engine at the next `get`.
    pub fn set_shims(&mut self, shims: Vec<crate::settings::Shim>) {
        if self.settings.shims != shims {
            self.settings.shims = shims;
            self.engine = None;
        }
    }

    /// The engine for a node of `node_arch` (the Node's `status.nodeInfo.architecture`; the command
    /// line's `--arch` wins, then this machine's).
    pub fn get(&mut self, node_arch: Option<Arch>) -> anyhow::Result<&Engine> {
        let arch = self.arch_override.or(node_arch);
        let stale = match (&self.engine, arch) {
            (None, _) => true,
            (Some(e), Some(a)) => e.arch != a,
            (Some(_), None) => false,
        };
        if stale {
            let mut engine = Engine::new(self.settings.clone(), self.host_root.as_deref(), arch)?;
            if let Some(gate) = &self.gate {
                engine = engine.with_restart_gate(gate.clone());
            }
            self.engine = Some(engine);
        }
        self.engine
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no host engine"))
    }
}
