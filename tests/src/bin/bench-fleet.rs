//! The light fleet run for BENCHMARKS.md: many real agents (`restart = "none"`, each with its own
//! host root and no containerd) against one API stand-in. Measures, counted at the stand-in: API
//! requests per node to provision (annotating every node at once), the peak request rate, requests per
//! idle node per watch, and the watches held open — then extrapolates to 5,000 nodes.
//!
//! Usage: bench-fleet [AGENTS]   (default 200); prints `key value` lines.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use kwasm_tests::agent::agent;
use kwasm_tests::archive::{fake_binary, release, sha256};
use kwasm_tests::artifact_server::{ArtifactServer, Behavior};
use kwasm_tests::kube_api::{free_port, KubeApi};
use kwasm_tests::sandbox::{artifact_settings, Sandbox, ShimSpec};

const BIN: &str = "containerd-shim-kwfleet-v2";
/// Watches end this often here (a real API server: 30-60 min); the agent asks for 1 h.
const WATCH_CAP_S: u64 = 20;

struct Agent {
    _sb: Sandbox,
    child: Child,
    port: u16,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    api.control(&format!("/_test/watch-cap?seconds={WATCH_CAP_S}"), "");
    let server = ArtifactServer::start();
    let archive = release(BIN, &fake_binary("fleet", 50_000));
    server.route("/shim.tar.gz", vec![Behavior::Serve(archive.clone())]);
    let shim = ShimSpec::new("kwfleet", BIN).platform(
        "amd64",
        &server.url("/shim.tar.gz"),
        Some(&sha256(&archive)),
    );
    let agents: Vec<Agent> = (0..n)
        .map(|i| {
            let name = format!("n{i}");
            api.add_node(&name, "amd64");
            let sb = Sandbox::new();
            let port = free_port();
            sb.write_settings(&artifact_settings(
                &format!("\n[agent]\nlisten = \"127.0.0.1:{port}\"\n\n[fleet]\nmax_concurrent_restarts = \"10%\"\nlease_namespace = \"kwasm\"\n"),
                std::slice::from_ref(&shim),
            ));
            let child = agent(&[
                "run",
                "--config",
                sb.settings.to_str().unwrap(),
                "--host-root",
                sb.root.to_str().unwrap(),
            ])
            .env("NODE_NAME", &name)
            .env("KUBECONFIG", &api.kubeconfig)
            .env("KWASM_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
            Agent {
                _sb: sb,
                child,
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
    let watches = api.control("/_test/watches", "")["open"]
        .as_u64()
        .unwrap_or(0);
    let rss: u64 = agents.iter().map(|a| rss_kib(a.child.id())).sum::<u64>() / n as u64;

    api.control("/_test/clear-requests", "");
    let started = Instant::now();
    api.kubectl_ok(&["annotate", "node", "--all", "kwasm.sh/kwasm-node=true"]);
    let annotate_s = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(600);
    while provisioned(&api) < n {
        assert!(Instant::now() < deadline, "the fleet never finished");
        std::thread::sleep(Duration::from_millis(200));
    }
    let took = started.elapsed().as_secs_f64();
    let reqs = agent_requests(&api);
    let per_node = reqs.len() as f64 / n as f64;
    let peak = peak_per_second(&reqs);
    let span = time_span(&reqs);

    // Idle: a few watch lifetimes with nothing to do.
    api.control("/_test/clear-requests", "");
    let idle_window = 3 * WATCH_CAP_S + 2;
    std::thread::sleep(Duration::from_secs(idle_window));
    let idle = agent_requests(&api);
    let renewals = idle.iter().filter(|r| kind(r) == "GET-nodes-watch").count();
    let per_renewal = idle.len() as f64 / renewals.max(1) as f64;

    println!("agents {n}");
    println!("watches_open {watches}");
    println!("agent_rss_kib_mean {rss}");
    println!("annotate_s {annotate_s:.2}");
    println!("provision_s {took:.2}");
    println!("provision_requests_per_node {per_node:.2}");
    for (k, c) in count_kinds(&reqs) {
        println!("provision_requests {k} {:.2}", c as f64 / n as f64);
    }
    println!("provision_span_s {span:.2}");
    println!("provision_peak_requests_per_s {peak}");
    println!("idle_window_s {idle_window}");
    for (k, c) in count_kinds(&idle) {
        println!("idle_requests {k} {:.2}", c as f64 / n as f64);
    }
    println!("idle_requests_per_watch_renewal {per_renewal:.2}");
    // 5,000 nodes. Every node makes the same few requests to provision, so the total scales with the
    // nodes; their rate follows the trigger's (kubectl patches one node after another, a node pool
    // adds nodes as they boot): `per_node` requests for each node triggered. An idle agent's only
    // request is its watch renewal, which a real API server forces every 30 to 60 minutes.
    println!(
        "extrapolated_5000_provision_requests {:.0}",
        per_node * 5000.0
    );
    println!(
        "extrapolated_5000_idle_requests_per_hour_at_most {:.0}",
        per_renewal * 2.0 * 5000.0
    );
}

fn count_kinds(reqs: &[serde_json::Value]) -> std::collections::BTreeMap<String, usize> {
    let mut kinds = std::collections::BTreeMap::new();
    for r in reqs {
        *kinds.entry(kind(r)).or_default() += 1;
    }
    kinds
}

fn time_span(reqs: &[serde_json::Value]) -> f64 {
    let ts: Vec<f64> = reqs.iter().filter_map(|r| r["t"].as_f64()).collect();
    let lo = ts.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ts.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if ts.is_empty() {
        0.0
    } else {
        hi - lo
    }
}

fn ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = write!(
        s,
        "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
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

/// Requests made by the agents (not by kubectl or this benchmark).
fn agent_requests(api: &KubeApi) -> Vec<serde_json::Value> {
    api.requests()
        .into_iter()
        .filter(|r| {
            let ua = r["user_agent"].as_str().unwrap_or("");
            !ua.starts_with("kubectl") && !r["path"].as_str().unwrap_or("").starts_with("/_test")
        })
        .collect()
}

fn kind(r: &serde_json::Value) -> String {
    let path = r["path"].as_str().unwrap_or("");
    let what = if path.contains("/events") {
        "events"
    } else if path.contains("/leases") {
        "leases"
    } else if path.contains("/nodes") {
        if r["query"]["watch"].as_str().is_some() {
            "nodes-watch"
        } else {
            "nodes"
        }
    } else {
        "discovery"
    };
    format!("{}-{what}", r["method"].as_str().unwrap_or("?"))
}

fn peak_per_second(reqs: &[serde_json::Value]) -> usize {
    let mut per: std::collections::BTreeMap<i64, usize> = Default::default();
    for r in reqs {
        if let Some(t) = r["t"].as_f64() {
            *per.entry(t as i64).or_default() += 1;
        }
    }
    per.values().copied().max().unwrap_or(0)
}
