//! kwasm-agent: installs verified WebAssembly containerd shims on a node, wires them into containerd,
//! and undoes it exactly. The contracts are in docs/ (commands, settings, the Node).
//!
//! The layers, each using only those below it (`tests/tests/layering.rs` walks the imports):
//! 1. `cli`: the one-shot commands, and the entry to the two controllers;
//! 2. `controller` (the node controller, `run`) and `catalog` (the Shim objects' controller,
//!    `catalog`), side by side: neither uses the other;
//! 3. `node_contract` (the keys, labels and status document on a Node, shared by both controllers),
//!    `crd` (Shim objects as catalog entries), `lease` (holding a Lease), `kube_client`, `health`
//!    (the probes' HTTP server);
//! 4. `engine`: the host engine — facts → one plan → carry out → prove — built on
//! 5. `artifact` (verified binaries) and `containerd` (config, restart, CRI proof), built on
//! 6. `host` (host root, atomic writes, lock, host commands), `settings`, `arch`, `backoff`, `clock`,
//!    `timeline`, `telemetry`.

pub mod arch;
pub mod artifact;
pub mod backoff;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod containerd;
pub mod controller;
pub mod crd;
pub mod engine;
pub mod health;
pub mod host;
pub mod kube_client;
pub mod lease;
pub mod node_contract;
pub mod settings;
pub mod telemetry;
pub mod timeline;

/// The chart's alerts read what the two controllers export (a test of the pair, above both).
#[cfg(test)]
mod chart_alerts {
    /// Every metric the chart's alert rules read is one an agent or the catalog controller exports.
    #[test]
    fn the_charts_alerts_read_metrics_that_exist() {
        let chart = include_str!("../../manifests/helm/kwasm-agent/templates/monitoring.yaml");
        let node = crate::controller::metrics::Metrics::default().render();
        let heartbeat = std::sync::Arc::new(crate::lease::election::Heartbeat::new(
            std::time::Duration::from_secs(15),
        ));
        let catalog = crate::catalog::metrics::CatalogMetrics::new(heartbeat);
        catalog.shims([("spin", &crate::catalog::status::Tally::default())]);
        let catalog = crate::health::Probe::metrics(&catalog).unwrap();
        let names = regex::Regex::new(r"\bkwasm_[a-z_]+").unwrap();
        let mut read = 0;
        for line in chart
            .lines()
            .filter(|l| l.trim_start().starts_with("expr:"))
        {
            for name in names.find_iter(line).map(|m| m.as_str()) {
                let typed = format!("# TYPE {} ", name.trim_end_matches("_total"));
                assert!(
                    node.contains(&typed) || catalog.contains(&typed),
                    "an alert reads {name}, which nothing exports"
                );
                read += 1;
            }
        }
        assert!(read >= 6, "{read}");
    }
}
