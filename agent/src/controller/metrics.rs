//! The node controller's metrics, through the Prometheus project's own Rust client
//! (`prometheus-client`, OpenMetrics text on /metrics): what an operator's dashboards and the chart's
//! alerts read. Names carry their unit (`_seconds`, `_bytes`) and counters `_total`; every label has
//! a bounded set of values (the code's own step names and Event reasons, the node's shims).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Failure {
    /// The last step that finished before the failure (the timeline's own names).
    step: String,
    /// The Event reason the failure was reported with (`ProvisionFailed`, `RemoveBlocked`, …), or
    /// `Error` when none was (the API unreachable, say).
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShimInfo {
    pub shim: String,
    pub version: String,
    /// 1 once containerd's CRI plugin reports the handler loaded.
    pub loaded: String,
}

pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    reconcile_seconds: Histogram,
    failures: Family<Failure, Counter>,
    /// The reason of the failure being reported, until the reconcile ends and counts it.
    failure_reason: std::sync::Mutex<Option<&'static str>>,
    restart_cri_unavailable_seconds: Histogram,
    download_seconds: Histogram,
    permit_wait_seconds: Histogram,
    downloaded_bytes: Counter,
    restarts: Counter,
    drift_repairs: Counter,
    last_success: Gauge,
    ready_gauge: Gauge,
    failed_gauge: Gauge,
    waiting_gauge: Gauge,
    shims: Family<ShimInfo, Gauge>,
    pub grantor: super::grantor_metrics::GrantorMetrics,
    /// Connected to the API server and holding the Node (readiness).
    pub ready: AtomicBool,
    /// Waiting for a cluster-wide restart permit ([fleet]).
    pub waiting_for_restart: AtomicBool,
    /// The last reconcile failed (the Node's phase reads Failed until one succeeds).
    pub failed: AtomicBool,
    pub last_success_unix: AtomicU64,
}

/// 5 ms to 10 min: a no-op look takes milliseconds, a first download of a large shim minutes.
fn seconds_buckets() -> impl Iterator<Item = f64> {
    [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
        600.0,
    ]
    .into_iter()
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("kwasm"),
            reconciles: Counter::default(),
            reconcile_seconds: Histogram::new(seconds_buckets()),
            failures: Family::default(),
            failure_reason: Default::default(),
            restart_cri_unavailable_seconds: Histogram::new(seconds_buckets()),
            download_seconds: Histogram::new(seconds_buckets()),
            permit_wait_seconds: Histogram::new(seconds_buckets()),
            downloaded_bytes: Counter::default(),
            restarts: Counter::default(),
            drift_repairs: Counter::default(),
            last_success: Gauge::default(),
            ready_gauge: Gauge::default(),
            failed_gauge: Gauge::default(),
            waiting_gauge: Gauge::default(),
            shims: Family::default(),
            grantor: Default::default(),
            ready: AtomicBool::new(false),
            waiting_for_restart: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            last_success_unix: AtomicU64::new(0),
        };
        m.register();
        m
    }
}

impl Metrics {
    fn register(&mut self) {
        let r = &mut self.registry;
        r.register("reconciles", "Reconciles run.", self.reconciles.clone());
        r.register_with_unit(
            "reconcile_duration",
            "How long each reconcile took.",
            Unit::Seconds,
            self.reconcile_seconds.clone(),
        );
        r.register(
            "reconcile_failures",
            "Reconciles that failed, by the last step that finished and the reason reported.",
            self.failures.clone(),
        );
        r.register_with_unit(
            "restart_cri_unavailable",
            "Each containerd restart: from the restart command until the CRI plugin answered with the handlers loaded.",
            Unit::Seconds,
            self.restart_cri_unavailable_seconds.clone(),
        );
        r.register_with_unit(
            "artifact_download",
            "Each shim download, its SHA-256 verified as it streams.",
            Unit::Seconds,
            self.download_seconds.clone(),
        );
        r.register_with_unit(
            "restart_permit_wait",
            "Each wait for a cluster-wide restart permit ([fleet]): from asking to holding it.",
            Unit::Seconds,
            self.permit_wait_seconds.clone(),
        );
        r.register_with_unit(
            "downloaded",
            "Artifact bytes downloaded.",
            Unit::Bytes,
            self.downloaded_bytes.clone(),
        );
        r.register(
            "containerd_restarts",
            "containerd restarts made by the agent.",
            self.restarts.clone(),
        );
        r.register(
            "drift_repairs",
            "Times the node had drifted from its provisioned state and the agent re-applied it.",
            self.drift_repairs.clone(),
        );
        r.register(
            "last_success_timestamp_seconds",
            "Unix time of the last successful reconcile (0: none yet).",
            self.last_success.clone(),
        );
        r.register(
            "ready",
            "1 when the agent watches its Node.",
            self.ready_gauge.clone(),
        );
        r.register(
            "failed",
            "1 while the last reconcile failed (it is retried with backoff).",
            self.failed_gauge.clone(),
        );
        r.register(
            "waiting_for_restart_permit",
            "1 while the agent waits for a cluster-wide restart permit.",
            self.waiting_gauge.clone(),
        );
        r.register("shim_info", "The shims installed on this node: version, and whether containerd loaded the handler (1 each).", self.shims.clone());
        self.grantor.register(r.sub_registry_with_prefix("grantor"));
    }

    /// What a carried-out plan downloaded and whether it restarted containerd.
    pub fn count_apply(&self, report: &crate::engine::ApplyReport) {
        self.downloaded_bytes.inc_by(report.bytes_downloaded());
        if report.restarted() {
            self.restarts.inc();
        }
    }

    pub fn drift_repaired(&self) {
        self.drift_repairs.inc();
    }

    /// The reason the failure is being reported with (the reconcile's end counts it).
    pub fn failure_reason(&self, reason: &'static str) {
        *self.failure_reason.lock().unwrap() = Some(reason);
    }

    /// One reconcile: its timeline's steps feed the histograms; a failure is counted by step and
    /// reason.
    pub fn reconciled(&self, took: Duration, timeline: &crate::timeline::Timeline, failed: bool) {
        self.reconciles.inc();
        self.reconcile_seconds.observe(took.as_secs_f64());
        let sum = |steps: &[&str]| {
            steps
                .iter()
                .filter_map(|s| timeline.took(s))
                .reduce(|a, b| a + b)
        };
        if let Some(window) = sum(&["restart", "cri-wait"]) {
            self.restart_cri_unavailable_seconds
                .observe(window.as_secs_f64());
        }
        if let Some(d) = timeline.took("download") {
            self.download_seconds.observe(d.as_secs_f64());
        }
        if let Some(d) = timeline.took("restart-permit") {
            self.permit_wait_seconds.observe(d.as_secs_f64());
        }
        let reason = self.failure_reason.lock().unwrap().take();
        if failed {
            self.failed.store(true, Relaxed);
            let labels = Failure {
                step: timeline.last_finished().to_owned(),
                reason: reason.unwrap_or("Error").to_owned(),
            };
            self.failures.get_or_create(&labels).inc();
        }
    }

    /// The shims this node has now (what `status` shows).
    pub fn shims_installed(&self, shims: impl IntoIterator<Item = ShimInfo>) {
        self.shims.clear();
        for s in shims {
            self.shims.get_or_create(&s).set(1);
        }
    }

    pub fn render(&self) -> String {
        self.last_success
            .set(self.last_success_unix.load(Relaxed) as i64);
        self.ready_gauge.set(i64::from(self.ready.load(Relaxed)));
        self.failed_gauge.set(i64::from(self.failed.load(Relaxed)));
        self.waiting_gauge
            .set(i64::from(self.waiting_for_restart.load(Relaxed)));
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
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
    use super::*;

    #[test]
    fn renders_openmetrics_with_units_histograms_and_bounded_labels() {
        let m = Metrics::default();
        let t = m.render();
        assert!(
            t.contains("# TYPE kwasm_reconciles counter\nkwasm_reconciles_total 0\n"),
            "{t}"
        );
        assert!(t.contains("kwasm_ready 0"), "{t}");
        assert!(t.ends_with("# EOF\n"), "{t}");
        m.failure_reason("ProvisionFailed");
        m.reconciled(Duration::from_millis(30), &Default::default(), true);
        m.reconciled(Duration::from_millis(2), &Default::default(), false);
        let t = m.render();
        assert!(
            t.contains("# TYPE kwasm_reconcile_duration_seconds histogram"),
            "{t}"
        );
        assert!(
            t.contains("kwasm_reconcile_duration_seconds_count 2"),
            "{t}"
        );
        assert!(
            t.contains("kwasm_reconcile_duration_seconds_bucket{le=\"0.005\"} 1"),
            "{t}"
        );
        assert!(
            t.contains(
                "kwasm_reconcile_failures_total{step=\"start\",reason=\"ProvisionFailed\"} 1"
            ),
            "{t}"
        );
        m.shims_installed([ShimInfo {
            shim: "spin".into(),
            version: "v0.23.0".into(),
            loaded: "1".into(),
        }]);
        assert!(m
            .render()
            .contains("kwasm_shim_info{shim=\"spin\",version=\"v0.23.0\",loaded=\"1\"} 1"));
    }
}
