//! The light fleet run for BENCHMARKS.md: many real agents (`restart = "none"`, each with its own
//! host root and no containerd) against one real API server (tests/kube-apiserver). Measures, from its
//! audit log and metrics: API requests per node to provision (annotating every node at once), the
//! peak request rate, an idle node's requests per hour, and the watches each agent holds — then
//! extrapolates to 5,000 nodes.
//!
//! With `--catalog` the shim is a Shim object the agents follow (`[catalog] shim_objects`), and the
//! catalog controller (`kwasm-agent catalog`) runs beside them: its own requests are counted apart (by
//! its User-Agent) — to provision the fleet, and per node change: a change that moves the Shim's
//! counts (a readiness label flipped), and one that does not (an unrelated label).
//!
//! Usage: bench-fleet [AGENTS] [--catalog]   (default 200); prints `key value` lines.

use std::process::Stdio;
use std::time::{Duration, Instant};

use kwasm_tests::agent::agent;
use kwasm_tests::api_load::{
    component, count_kinds, is_grantor_election, kind, measured_requests, open_watches,
    peak_per_second, ready, rss_kib, time_span,
};
use kwasm_tests::archive::{fake_binary, release, sha256};
use kwasm_tests::artifact_server::{ArtifactServer, Behavior};
use kwasm_tests::fleet_parts::{spawn_catalog, Process};
use kwasm_tests::kube_api::{free_port, KubeApi};
use kwasm_tests::sandbox::{artifact_settings, Sandbox, ShimSpec};

const BIN: &str = "containerd-shim-kwfleet-v2";
/// An idle window this long: long enough for every periodic request (bookmarks are not requests;
/// each watch is renewed once an hour, as the agent asks).
const IDLE_WINDOW_S: u64 = 30;

struct Agent {
    /// First: the agent stops before its sandbox goes.
    child: Process,
    _sb: Sandbox,
    port: u16,
}

/// Node changes measured in `--catalog` mode, of each kind.
const CHANGES: usize = 10;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(200);
    let with_catalog = args.iter().any(|a| a == "--catalog");
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    let server_watches = open_watches(&api);
    let server = ArtifactServer::start();
    let archive = release(BIN, &fake_binary("fleet", 50_000));
    server.route("/shim.tar.gz", vec![Behavior::Serve(archive.clone())]);
    let shim = ShimSpec::new("kwfleet", BIN).platform(
        "amd64",
        &server.url("/shim.tar.gz"),
        Some(&sha256(&archive)),
    );
    let catalog = with_catalog.then(|| start_catalog(&api, dir.path(), &shim));
    let agents = start_agents(&api, n, &shim, with_catalog);
    let watches = open_watches(&api) - server_watches;
    let rss: u64 = agents.iter().map(|a| rss_kib(a.child.id())).sum::<u64>() / n as u64;

    api.clear_requests();
    let started = Instant::now();
    api.kubectl_ok(&["annotate", "node", "--all", "kwasm.sh/kwasm-node=true"]);
    let annotate_s = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(600);
    while provisioned(&api) < n || (with_catalog && shim_status(&api)["nodes"] != n) {
        assert!(Instant::now() < deadline, "the fleet never finished");
        std::thread::sleep(Duration::from_millis(200));
    }
    let took = started.elapsed().as_secs_f64();
    let all = measured_requests(&api);
    let reqs: Vec<_> = all
        .iter()
        .filter(|r| component(r) == "node")
        .cloned()
        .collect();
    let per_node = reqs.len() as f64 / n as f64;
    let catalog_provision = all.iter().filter(|r| component(r) == "catalog").count();

    println!("agents {n}");
    println!("watches_open {watches}");
    println!("watches_per_agent {:.2}", watches as f64 / n as f64);
    println!("agent_rss_kib_mean {rss}");
    println!("annotate_s {annotate_s:.2}");
    println!("provision_s {took:.2}");
    report_provision(&reqs, n);
    if let Some(catalog) = &catalog {
        println!("catalog_provision_requests {catalog_provision}");
        println!(
            "catalog_provision_requests_per_node {:.3}",
            catalog_provision as f64 / n as f64
        );
        measure_node_changes(&api, n, catalog);
    }
    let (per_hour, grantor_per_hour) = measure_idle(&api, n, watches as f64 / n as f64);
    // 5,000 nodes. Every node makes the same few requests to provision, so the total scales with the
    // nodes; their rate follows the trigger's (kubectl patches one node after another, a node pool
    // adds nodes as they boot): `per_node` requests for each node triggered. An idle agent's only
    // requests are its watches' renewals, once an hour each; the grantor renews its Lease for all.
    println!(
        "extrapolated_5000_provision_requests {:.0}",
        per_node * 5000.0
    );
    println!(
        "extrapolated_5000_idle_requests_per_hour {:.0}",
        per_hour * 5000.0 + grantor_per_hour
    );
}

/// The agents' requests to provision the fleet: per node, by kind, and how they spread over time.
fn report_provision(reqs: &[serde_json::Value], n: usize) {
    println!(
        "provision_requests_per_node {:.2}",
        reqs.len() as f64 / n as f64
    );
    for (k, c) in count_kinds(reqs) {
        println!("provision_requests {k} {:.2}", c as f64 / n as f64);
    }
    println!("provision_span_s {:.2}", time_span(reqs));
    println!("provision_peak_requests_per_s {}", peak_per_second(reqs));
}

fn start_agents(api: &KubeApi, n: usize, shim: &ShimSpec, shim_objects: bool) -> Vec<Agent> {
    let catalog = if shim_objects {
        "\n[catalog]\nshim_objects = true\n"
    } else {
        ""
    };
    let agents: Vec<Agent> = (0..n)
        .map(|i| {
            let name = format!("n{i}");
            api.add_node(&name, "amd64");
            let sb = Sandbox::new();
            let port = free_port();
            let shims = if shim_objects { &[][..] } else { std::slice::from_ref(shim) };
            sb.write_settings(&artifact_settings(
                &format!("\n[agent]\nlisten = \"127.0.0.1:{port}\"\n\n[fleet]\nmax_concurrent_restarts = \"10%\"\nlease_namespace = \"kube-system\"\n{catalog}"),
                shims,
            ));
            let child = agent(&[
                "run",
                "--config",
                sb.settings.to_str().unwrap(),
                "--host-root",
                sb.root.to_str().unwrap(),
            ])
            .env("NODE_NAME", &name)
            .env("KUBECONFIG", api.agent_kubeconfig(&name))
            .env("KWASM_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
            Agent {
                child: Process(child),
                _sb: sb,
                port,
            }
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    for a in &agents {
        while !ready(a.port) {
            assert!(Instant::now() < deadline, "an agent never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    agents
}

/// The shim as a Shim object (the CRD is the cluster's), and the catalog controller.
fn start_catalog(api: &KubeApi, dir: &std::path::Path, shim: &ShimSpec) -> Catalog {
    let (_, url, digest) = &shim.platforms[0];
    let object = serde_json::json!({
        "apiVersion": "kwasm.sh/v1alpha1", "kind": "Shim", "metadata": {"name": shim.name},
        "spec": {"runtimeType": shim.runtime_type, "binary": shim.binary, "version": shim.version,
                 "platforms": [{"arch": "amd64", "url": url, "sha256": digest}]}
    });
    let file = dir.join("shim.json");
    std::fs::write(&file, object.to_string()).unwrap();
    api.kubectl_ok(&["apply", "-f", file.to_str().unwrap()]);
    let child = spawn_catalog(api, dir, "1s", None);
    Catalog {
        _process: child,
        handler: shim.name.clone(),
    }
}

struct Catalog {
    _process: Process,
    handler: String,
}

/// The catalog controller's requests per node change: changes that move the Shim's counts (one
/// node's readiness label flipped, the status waited for), and as many that do not (an unrelated
/// label), over a window of a few status intervals each.
fn measure_node_changes(api: &KubeApi, n: usize, catalog: &Catalog) {
    let label = format!("kwasm.sh/shim.{}", catalog.handler);
    let ready_before = shim_status(api)["ready"].as_u64().unwrap_or(0);
    api.clear_requests();
    // Each node in turn shown ready, then not ready again: two changes, each moving the count.
    for i in 0..CHANGES {
        let node = format!("n{}", (i / 2) % n);
        let value = if i % 2 == 0 { "true" } else { "false" };
        api.kubectl_ok(&[
            "label",
            "node",
            &node,
            &format!("{label}={value}"),
            "--overwrite",
        ]);
        let want = ready_before + u64::from(i % 2 == 0);
        let deadline = Instant::now() + Duration::from_secs(30);
        while shim_status(api)["ready"].as_u64() != Some(want) {
            assert!(
                Instant::now() < deadline,
                "the Shim's status never followed: {}\n{}",
                shim_status(api),
                api.kubectl_ok(&["get", "node", &node, "-o", "json"])
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let counted = catalog_requests(api);
    api.clear_requests();
    for i in 0..CHANGES {
        let node = format!("n{}", i % n);
        api.kubectl_ok(&[
            "label",
            "node",
            &node,
            &format!("bench/touch={i}"),
            "--overwrite",
        ]);
    }
    // A measuring window (not a synchronisation): three status intervals after the last change.
    std::thread::sleep(Duration::from_secs(3));
    let unrelated = catalog_requests(api);
    // The leader's Lease renewals and its watches' renewals go by the clock (a third of the lease
    // duration; the server's watch timeout), not by node changes: listed apart.
    let by_clock =
        |r: &&serde_json::Value| kind(r).ends_with("leases") || kind(r).ends_with("-watch");
    let by_change =
        |r: &[serde_json::Value]| r.iter().filter(|r| !by_clock(r)).count() as f64 / CHANGES as f64;
    println!(
        "catalog_requests_per_counted_node_change {:.2}",
        by_change(&counted)
    );
    for (k, c) in count_kinds(&counted) {
        println!("catalog_requests {k} {:.2}", c as f64 / CHANGES as f64);
    }
    println!(
        "catalog_requests_per_unrelated_node_change {:.2}",
        by_change(&unrelated)
    );
}

/// Idle: a window with nothing to do; an agent's requests per hour — what the window shows,
/// scaled, and each of its watches renewed once an hour. The restart grantor's renewals of its
/// Lease are one agent's for the whole fleet: counted apart, not charged to every node.
fn measure_idle(api: &KubeApi, n: usize, watches_per_agent: f64) -> (f64, f64) {
    api.clear_requests();
    std::thread::sleep(Duration::from_secs(IDLE_WINDOW_S));
    let (election, idle): (Vec<_>, Vec<_>) = measured_requests(api)
        .into_iter()
        .filter(|r| component(r) == "node")
        .partition(is_grantor_election);
    println!("idle_window_s {IDLE_WINDOW_S}");
    let grantor_per_hour = election.len() as f64 * 3600.0 / IDLE_WINDOW_S as f64;
    println!("idle_grantor_lease_requests_per_hour {grantor_per_hour:.0}");
    for (k, c) in count_kinds(&idle) {
        println!("idle_requests {k} {:.2}", c as f64 / n as f64);
    }
    let per_hour = idle.len() as f64 / n as f64 * 3600.0 / IDLE_WINDOW_S as f64 + watches_per_agent;
    println!("idle_requests_per_node_per_hour {per_hour:.2}");
    (per_hour, grantor_per_hour)
}

fn shim_status(api: &KubeApi) -> serde_json::Value {
    let out = api.kubectl(&["get", "shim", "kwfleet", "-o", "json"]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()["status"].clone()
}

fn catalog_requests(api: &KubeApi) -> Vec<serde_json::Value> {
    measured_requests(api)
        .into_iter()
        .filter(|r| component(r) == "catalog")
        .collect()
}

/// Nodes whose status annotation says Provisioned (restart = "none": installed and configured; the
/// handlers load at containerd's next start).
fn provisioned(api: &KubeApi) -> usize {
    let v: serde_json::Value =
        serde_json::from_str(&api.kubectl_ok(&["get", "nodes", "-o", "json"])).unwrap();
    v["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|n| {
                    n["metadata"]["annotations"]["kwasm.sh/kwasm-status"]
                        .as_str()
                        .is_some_and(|s| s.contains("\"phase\":\"Provisioned\""))
                })
                .count()
        })
        .unwrap_or(0)
}
