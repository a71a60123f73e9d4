//! The catalog controller's metrics (`prometheus-client`, OpenMetrics on /metrics beside its probes):
//! for each Shim the nodes that should have it, and of those how many are ready on its version,
//! failed, or still waiting — what `kubectl get shims` shows, for dashboards and alerts; and whether
//! this replica leads. Only the leader's Shim figures move.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::status::Tally;
use crate::lease::election::Heartbeat;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShimState {
    shim: String,
    /// wanted (should have it), ready, failed, waiting (neither yet).
    state: &'static str,
}

pub struct CatalogMetrics {
    registry: Registry,
    nodes: Family<ShimState, Gauge>,
    pub leading: Gauge,
    pub status_writes: Counter,
    heartbeat: Arc<Heartbeat>,
}

impl CatalogMetrics {
    pub fn new(heartbeat: Arc<Heartbeat>) -> Self {
        let (nodes, leading, status_writes) =
            (Family::default(), Gauge::default(), Counter::default());
        let mut registry = Registry::with_prefix("kwasm_catalog");
        registry.register("shim_nodes", "Nodes that should have each Shim, and of those: ready on its version, failed, waiting.", nodes.clone());
        registry.register(
            "leading",
            "1 while this replica is the active catalog controller.",
            leading.clone(),
        );
        registry.register(
            "status_writes",
            "Shim status writes made.",
            status_writes.clone(),
        );
        Self {
            registry,
            nodes,
            leading,
            status_writes,
            heartbeat,
        }
    }

    /// The Shims as this sync counted them (a Shim that went is gone from here too).
    pub fn shims<'a>(&self, tallies: impl IntoIterator<Item = (&'a str, &'a Tally)>) {
        self.nodes.clear();
        for (shim, t) in tallies {
            let waiting = t.nodes.saturating_sub(t.ready + t.failed);
            for (state, n) in [
                ("wanted", t.nodes),
                ("ready", t.ready),
                ("failed", t.failed),
                ("waiting", waiting),
            ] {
                self.nodes
                    .get_or_create(&ShimState {
                        shim: shim.to_owned(),
                        state,
                    })
                    .set(i64::from(n));
            }
        }
    }
}

impl crate::health::Probe for CatalogMetrics {
    fn not_live(&self) -> Option<String> {
        self.heartbeat.not_live()
    }

    fn not_ready(&self) -> Option<String> {
        self.heartbeat.not_ready()
    }

    fn metrics(&self) -> Option<String> {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        Some(s)
    }
}
