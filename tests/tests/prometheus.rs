//! A real Prometheus (Debian's, scripts/prometheus.sh) scrapes a real agent and the catalog
//! controller, with the relabelling the chart's PodMonitor asks for and the chart's own alert rules
//! (both as Helm renders them); a node given a shim whose download does not match its pinned digest
//! makes the provisioning-failed alerts fire — asked of Prometheus's API — and they resolve once the
//! download is right again.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use kwasm_tests::agent::{eventually, http_get, RunningAgent, RunningCatalog};
use kwasm_tests::artifact_server::Behavior;
use kwasm_tests::helm::{python, template};
use kwasm_tests::kube_api::{free_port, KubeApi, CATALOG_SA};
use kwasm_tests::node_host::NodeHost;

struct Prometheus {
    child: Child,
    port: u16,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The PodMonitor's relabelings as a scrape config's (the Operator turns camelCase keys into
/// Prometheus's own).
fn relabel_configs(endpoint: &serde_json::Value) -> serde_json::Value {
    let key = |k: &str| match k {
        "sourceLabels" => "source_labels".to_owned(),
        "targetLabel" => "target_label".to_owned(),
        other => other.to_owned(),
    };
    let rules = endpoint["relabelings"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    serde_json::Value::Array(
        rules
            .iter()
            .map(|r| {
                let o = r.as_object().unwrap();
                serde_json::Value::Object(o.iter().map(|(k, v)| (key(k), v.clone())).collect())
            })
            .collect(),
    )
}

fn start_prometheus(
    dir: &Path,
    docs: &[serde_json::Value],
    agent: u16,
    catalog: u16,
) -> Prometheus {
    let of = |kind: &str| docs.iter().find(|d| d["kind"] == kind).cloned().unwrap();
    let (monitor, rule) = (of("PodMonitor"), of("PrometheusRule"));
    let endpoints = monitor["spec"]["podMetricsEndpoints"].as_array().unwrap();
    let port_of = |name: &str| {
        endpoints
            .iter()
            .find(|e| e["port"] == name)
            .unwrap()
            .clone()
    };
    let (agents, catalogs) = (port_of("metrics"), port_of("health"));
    // The targets as the Operator's pod discovery would give them: the pod's node among the
    // discovered labels, for the PodMonitor's relabelings to read.
    let config = serde_json::json!({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.json"],
        "scrape_configs": [
            {"job_name": "kwasm-agent", "metrics_path": agents["path"],
             "static_configs": [{"targets": [format!("127.0.0.1:{agent}")], "labels": {"__meta_kubernetes_pod_node_name": "n1"}}],
             "relabel_configs": relabel_configs(&agents)},
            {"job_name": "kwasm-catalog", "metrics_path": catalogs["path"],
             "static_configs": [{"targets": [format!("127.0.0.1:{catalog}")]}],
             "relabel_configs": relabel_configs(&catalogs)},
        ]
    });
    std::fs::write(dir.join("prometheus.json"), config.to_string()).unwrap();
    let groups = serde_json::json!({"groups": rule["spec"]["groups"]});
    std::fs::write(dir.join("rules.json"), groups.to_string()).unwrap();
    let port = free_port();
    let bin = kwasm_tests::built::prometheus_dir().join("prometheus");
    let child = Command::new(bin)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.json").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus");
    let p = Prometheus { child, port };
    eventually("Prometheus ready", || {
        http_get(port, "/-/ready").filter(|(c, _)| *c == 200)
    });
    p
}

impl Prometheus {
    fn api(&self, path: &str) -> serde_json::Value {
        let (code, body) = http_get(self.port, path).expect("Prometheus answers");
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The firing alerts: (name, labels).
    fn firing(&self) -> Vec<(String, serde_json::Value)> {
        let alerts = self.api("/api/v1/alerts");
        alerts["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["state"] == "firing")
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap_or("").to_owned(),
                    a["labels"].clone(),
                )
            })
            .collect()
    }

    /// A PromQL query's first value.
    fn query(&self, promql: &str) -> Option<f64> {
        let q: String = url::form_urlencoded::byte_serialize(promql.as_bytes()).collect();
        let r = self.api(&format!("/api/v1/query?query={q}"));
        r["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

#[test]
fn prometheus_scrapes_the_agent_and_the_provisioning_failed_alerts_fire_then_resolve() {
    let Some(python) = python() else { return };
    let values = serde_json::json!({
        "catalog": {"shimObjects": true},
        "metrics": {"podMonitor": {"enabled": true, "interval": "1s"},
                    "prometheusRule": {"enabled": true, "failedFor": "2s"}}});
    let docs = template(&python, values);
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    api.add_node("n1", "amd64");
    let port = free_port();
    let host = NodeHost::with(|_| {
        format!("[agent]\nlisten = \"127.0.0.1:{port}\"\nresync = \"2s\"\nmax_backoff = \"2s\"\n")
    });
    // What the server hands out is not what the settings pinned.
    let mut wrong = host.archive.clone();
    wrong.extend_from_slice(b"tampered");
    host.server
        .route("/kwtest.tar.gz", vec![Behavior::Serve(wrong)]);
    let shim = format!(
        "apiVersion: kwasm.sh/v1alpha1\nkind: Shim\nmetadata:\n  name: kwtest\nspec:\n  runtimeType: io.containerd.kwtest.v2\n  binary: containerd-shim-kwtest-v2\n  version: v1.0.0\n  platforms:\n    - arch: amd64\n      url: {}\n      sha256: \"{}\"\n",
        host.server.url("/kwtest.tar.gz"),
        kwasm_tests::archive::sha256(&host.archive)
    );
    api.kubectl_stdin(&["apply", "-f", "-"], &shim);
    let catalog_port = free_port();
    let settings = dir.path().join("catalog.toml");
    std::fs::write(&settings, format!("[catalog]\nlease_namespace = \"kube-system\"\nstatus_interval = \"200ms\"\nlisten = \"127.0.0.1:{catalog_port}\"\n")).unwrap();
    let kubeconfig = api.service_account_kubeconfig(CATALOG_SA, "catalog-0", None);
    let _catalog = RunningCatalog::start(
        &settings,
        &kubeconfig,
        "catalog-0",
        dir.path().join("catalog.log"),
    );
    let agent = RunningAgent::start(&host, &api.agent_kubeconfig("n1"), "n1", port);
    agent.wait_ready();
    let prom = start_prometheus(dir.path(), &docs, port, catalog_port);
    api.kubectl_ok(&["annotate", "node", "n1", "kwasm.sh/kwasm-node=true"]);

    let firing = eventually("the provisioning-failed alerts to fire", || {
        let f = prom.firing();
        let names: Vec<&str> = f.iter().map(|(n, _)| n.as_str()).collect();
        (names.contains(&"KwasmNodeFailed") && names.contains(&"KwasmShimNodesFailed")).then_some(f)
    });
    let node_failed = &firing
        .iter()
        .find(|(n, _)| n == "KwasmNodeFailed")
        .unwrap()
        .1;
    assert_eq!(
        node_failed["node"], "n1",
        "the PodMonitor's relabelling names the node: {node_failed}"
    );
    let failures = prom.query("sum(kwasm_reconcile_failures_total{reason=\"ProvisionFailed\"})");
    assert!(
        failures.unwrap_or(0.0) >= 1.0,
        "failures by step and reason: {failures:?}"
    );

    // The download is right again: the node provisions, the alerts resolve.
    host.server.route(
        "/kwtest.tar.gz",
        vec![Behavior::Serve(host.archive.clone())],
    );
    let started = Instant::now();
    eventually("the alerts to resolve", || {
        prom.firing().is_empty().then_some(())
    });
    eprintln!(
        "resolved {:.1}s after the fix",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(api.provisioned_label("n1").as_deref(), Some("true"));
    let scraped = prom.query("sum(kwasm_reconcile_duration_seconds_count{node=\"n1\"})");
    assert!(
        scraped.unwrap_or(0.0) >= 2.0,
        "reconcile durations scraped: {scraped:?}"
    );
    let loaded = prom.query("kwasm_shim_info{node=\"n1\",shim=\"kwtest\",loaded=\"1\"}");
    assert_eq!(loaded, Some(1.0));
    let ready = prom.query("kwasm_catalog_shim_nodes{shim=\"kwtest\",state=\"ready\"}");
    assert_eq!(ready, Some(1.0));
    let restart = prom.query("sum(kwasm_restart_cri_unavailable_seconds_count{node=\"n1\"})");
    assert_eq!(restart, Some(1.0), "one restart's CRI-unavailable window");
}
