//! What the grantor shows an operator: whether this agent grants now, the permits granted and the
//! nodes waiting in its line, and the permits it granted and took back. Only the grantor's values
//! move; every other agent reports 0 (sum them across the fleet, or read the leader's).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Default)]
pub struct GrantorMetrics {
    pub leading: Gauge,
    pub granted: Gauge,
    pub waiting: Gauge,
    pub grants: Counter,
    pub taken_back: Counter,
}

impl GrantorMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "leading",
            "1 while this agent is the fleet's restart grantor.",
            self.leading.clone(),
        );
        r.register(
            "permits_granted",
            "Restart permits granted and not yet given back (the grantor's count).",
            self.granted.clone(),
        );
        r.register(
            "nodes_waiting",
            "Nodes asking for a restart permit, in line (the grantor's count).",
            self.waiting.clone(),
        );
        r.register(
            "grants",
            "Restart permits this agent granted as grantor.",
            self.grants.clone(),
        );
        r.register(
            "permits_taken_back",
            "Restart permits taken back: node gone, not renewed, or past the deadline.",
            self.taken_back.clone(),
        );
    }

    /// No longer the grantor: nothing to show.
    pub fn stood_down(&self) {
        self.leading.set(0);
        self.granted.set(0);
        self.waiting.set(0);
    }
}
