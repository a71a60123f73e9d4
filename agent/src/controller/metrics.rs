//! Prometheus counters of the node controller, rendered in the text exposition format on /metrics.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    pub reconciles: AtomicU64,
    /// Failed reconciles by the last step that finished before the failure (a bounded set of the
    /// code's own step names, as controller-rs labels failures by error kind).
    failures: Mutex<BTreeMap<&'static str, u64>>,
    pub duration_micros: AtomicU64,
    pub bytes_downloaded: AtomicU64,
    pub restarts: AtomicU64,
    pub last_success_unix: AtomicU64,
    /// Connected to the API server and holding the Node.
    pub ready: AtomicBool,
    /// Waiting for a cluster-wide restart slot ([fleet]).
    pub waiting_for_restart: AtomicBool,
    /// The last reconcile failed (the Node's phase reads Failed until one succeeds).
    pub failed: AtomicBool,
    /// Times the node was found drifted from what the agent provisioned, and re-applied.
    pub drift_repairs: AtomicU64,
}

impl Metrics {
    /// What a carried-out plan downloaded and whether it restarted containerd.
    pub fn count_apply(&self, report: &crate::engine::ApplyReport) {
        self.bytes_downloaded
            .fetch_add(report.bytes_downloaded(), Relaxed);
        if report.restarted() {
            self.restarts.fetch_add(1, Relaxed);
        }
    }

    pub fn count_failure(&self, after_step: &'static str) {
        self.failed.store(true, Relaxed);
        if let Ok(mut f) = self.failures.lock() {
            *f.entry(after_step).or_default() += 1;
        }
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        for (name, kind, help, value) in self.unlabelled() {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        let failures = self.failures.lock().map(|f| f.clone()).unwrap_or_default();
        let by_step: Vec<String> = failures
            .iter()
            .map(|(step, n)| format!("kwasm_reconcile_failures_total{{after_step=\"{step}\"}} {n}"))
            .collect();
        let _ = writeln!(
            s,
            "# HELP kwasm_reconcile_failures_total Reconciles that failed, by the last step that finished before the failure.\n# TYPE kwasm_reconcile_failures_total counter{}",
            by_step.iter().map(|l| format!("\n{l}")).collect::<String>()
        );
        s
    }

    /// The metrics without labels: (name, type, help, value).
    fn unlabelled(&self) -> [(&'static str, &'static str, &'static str, String); 9] {
        [
            (
                "kwasm_reconciles_total",
                "counter",
                "Reconciles run.",
                self.reconciles.load(Relaxed).to_string(),
            ),
            (
                "kwasm_reconcile_duration_seconds_total",
                "counter",
                "Time spent reconciling (divide by kwasm_reconciles_total for the mean).",
                format!("{:.6}", self.duration_micros.load(Relaxed) as f64 / 1e6),
            ),
            (
                "kwasm_bytes_downloaded_total",
                "counter",
                "Artifact bytes downloaded.",
                self.bytes_downloaded.load(Relaxed).to_string(),
            ),
            (
                "kwasm_containerd_restarts_total",
                "counter",
                "containerd restarts made by the agent.",
                self.restarts.load(Relaxed).to_string(),
            ),
            (
                "kwasm_last_success_timestamp_seconds",
                "gauge",
                "Unix time of the last successful reconcile (0: none yet).",
                self.last_success_unix.load(Relaxed).to_string(),
            ),
            (
                "kwasm_ready",
                "gauge",
                "1 when the agent watches its Node.",
                u8::from(self.ready.load(Relaxed)).to_string(),
            ),
            (
                "kwasm_failed",
                "gauge",
                "1 while the last reconcile failed (it is retried with backoff).",
                u8::from(self.failed.load(Relaxed)).to_string(),
            ),
            (
                "kwasm_drift_repairs_total",
                "counter",
                "Times the node had drifted from its provisioned state and the agent re-applied it.",
                self.drift_repairs.load(Relaxed).to_string(),
            ),
            (
                "kwasm_waiting_for_restart_slot",
                "gauge",
                "1 while the agent waits for a cluster-wide containerd restart slot.",
                u8::from(self.waiting_for_restart.load(Relaxed)).to_string(),
            ),
        ]
    }
}

impl crate::health::Probe for Metrics {
    fn not_live(&self) -> Option<String> {
        None
    }

    fn not_ready(&self) -> Option<String> {
        (!self.ready.load(Relaxed)).then(|| "not watching the node yet".to_owned())
    }

    fn metrics(&self) -> Option<String> {
        Some(self.render())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_prometheus_text() {
        let m = super::Metrics::default();
        m.reconciles.store(3, std::sync::atomic::Ordering::Relaxed);
        let t = m.render();
        assert!(
            t.contains("# TYPE kwasm_reconciles_total counter\nkwasm_reconciles_total 3\n"),
            "{t}"
        );
        assert!(t.contains("kwasm_ready 0"));
        m.count_failure("facts-again");
        m.count_failure("facts-again");
        m.count_failure("restart-slot");
        let t = m.render();
        assert!(
            t.contains("# TYPE kwasm_reconcile_failures_total counter\nkwasm_reconcile_failures_total{after_step=\"facts-again\"} 2\nkwasm_reconcile_failures_total{after_step=\"restart-slot\"} 1\n"),
            "{t}"
        );
    }
}
