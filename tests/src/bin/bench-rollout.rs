//! The fleet at AKS's size limit: one real API server (tests/kube-apiserver on its etcd) holding TOTAL
//! Nodes, AGENTS of them run by real agent processes, the rest with only their kubelets, played by
//! the harness (`kubelets`: node Leases renewed every 10 s and status written every 5 min, as kubelet
//! does by default; not in the audit log, but load on the server). The catalog controller runs with
//! the shim as a Shim object. Each agent runs in a mount namespace of its own where `/opt` is its own
//! directory (so every agent installs to the same host path, as on real nodes, and nothing of this
//! machine's `/opt` is touched), edits its own containerd config, and restarts with a command that
//! takes RESTART seconds (logging when "containerd" is down), so restart pacing really engages. Every
//! agent proves its handler through CRI against one real containerd (Debian's) that has it loaded —
//! its restart is the script's, not containerd's: 500 containerds do not fit on this machine.
//!
//! Phases, each measured the same way from the server's audit log (requests by component and kind)
//! and its metrics (response and watch bytes), with the server's and etcd's CPU: idle; a rollout
//! (`kubectl annotate` of the agents' nodes); a Shim upgrade (a new version applied: every node rolls
//! again, paced). Printed: `key value` lines, then `goal …` lines (PASS/FAIL) for the goals.
//!
//! Usage: bench-rollout [--agents N] [--nodes TOTAL] [--pacing P] [--restart SECONDS] [--idle SECONDS]
//!        [--kubelets none]   (defaults: 500 agents, 5000 nodes, pacing 2, 1 s restarts, 30 s idle,
//!        the other nodes' kubelet heartbeats on)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kwasm_tests::agent::agent_bin;
use kwasm_tests::api_load::{
    component, cpu_seconds, is_grantor_election, kind, open_watches, peak_rss_kib, ready,
    response_bytes, rss_kib, watch_bytes, within, GRANTOR_LEASE,
};
use kwasm_tests::archive::{fake_binary, release, sha256};
use kwasm_tests::artifact_server::{ArtifactServer, Behavior};
use kwasm_tests::containerd::Containerd;
use kwasm_tests::fleet_parts::{
    first_over, max_overlap, paced_finish, paced_finish_with, restart_windows, spawn_catalog,
    Process,
};
use kwasm_tests::kube_api::{free_port, KubeApi};
use kwasm_tests::kubelets::{Heartbeats, Kubelets};
use kwasm_tests::sandbox::Sandbox;

const SHIM: &str = "kwfleet";
const BIN: &str = "containerd-shim-kwfleet-v2";

struct Args {
    agents: usize,
    nodes: usize,
    pacing: String,
    restart_s: f64,
    idle_s: u64,
    /// The other nodes' kubelets write their heartbeats (node Leases every 10 s, status every
    /// 5 min) — load on the server, which on this machine shares its cores with the agents.
    kubelets: bool,
}

fn args() -> Args {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let get = |key: &str| {
        raw.iter()
            .position(|a| a == key)
            .and_then(|i| raw.get(i + 1).cloned())
    };
    Args {
        agents: get("--agents").and_then(|v| v.parse().ok()).unwrap_or(500),
        nodes: get("--nodes").and_then(|v| v.parse().ok()).unwrap_or(5000),
        pacing: get("--pacing").unwrap_or_else(|| "2".into()),
        restart_s: get("--restart").and_then(|v| v.parse().ok()).unwrap_or(1.0),
        idle_s: get("--idle").and_then(|v| v.parse().ok()).unwrap_or(30),
        kubelets: get("--kubelets").as_deref() != Some("none"),
    }
}

struct RolloutAgent {
    /// First: the agent stops before its sandbox goes.
    child: Process,
    name: String,
    sb: Sandbox,
    port: u16,
    windows: PathBuf,
}

struct Catalog(Process);

fn main() {
    let a = args();
    let dir = tempfile::Builder::new()
        .prefix("kw.")
        .tempdir_in("/tmp")
        .unwrap();
    let api = KubeApi::start(dir.path());
    // The one real containerd every agent proves its handler against.
    let shared = Sandbox::new();
    let cd = Containerd::start(&shared);
    load_handler(&cd);
    let server = ArtifactServer::start();
    let versions = [shim_version(&server, "v1"), shim_version(&server, "v2")];
    apply_shim(&api, dir.path(), &versions[0]);
    let simulated = a.nodes.saturating_sub(a.agents);
    let sim_names: Vec<String> = (0..simulated).map(|i| format!("sim-{i:05}")).collect();
    api.create_nodes(&sim_names, &serde_json::json!({}));
    // The other nodes' kubelets: their status and Lease heartbeats are load on the server too.
    let beats = Heartbeats::kubelet_defaults();
    let kubelets_since = std::time::Instant::now();
    let kubelets = (a.kubelets).then(|| Kubelets::start(&api, sim_names, beats));
    let catalog = start_catalog(&api, dir.path());
    let agents = start_agents(&api, &a, &cd);
    println!("agents {}", a.agents);
    println!("nodes {}", a.nodes);
    println!("simulated_nodes {simulated}");
    println!("kubelet_heartbeats {}", a.kubelets);
    println!("pacing {}", a.pacing);
    println!("restart_s {}", a.restart_s);
    // Idle begins once the grantor has listed every Node and watches them.
    wait_for_grantor(&api);
    let idle_rss = report_processes("idle_start", &agents, &catalog);
    // The agent that grants restart permits watches every Node: it is expected to be the largest.
    let grantor = api.kubectl(&[
        "get",
        "lease",
        "-n",
        "kube-system",
        GRANTOR_LEASE,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    let holder = String::from_utf8_lossy(&grantor.stdout).trim().to_owned();
    println!(
        "grantor_at_idle_start {}",
        if holder.is_empty() {
            "none yet"
        } else {
            &holder
        }
    );

    let idle = Window::measure(&api, "idle", || {
        std::thread::sleep(Duration::from_secs(a.idle_s))
    });
    idle.report(a.agents);

    let rollout = Window::measure(&api, "rollout", || {
        // Counted while kubectl is still annotating (200 PATCHes take tens of seconds on a busy
        // server): the first nodes are ready before the last is triggered.
        std::thread::scope(|s| {
            s.spawn(|| {
                api.kubectl_ok(&[
                    "annotate",
                    "node",
                    "-l",
                    "bench/agent=true",
                    "kwasm.sh/kwasm-node=true",
                ])
            });
            wait_for(&api, a.agents, "v1");
        });
    });
    rollout.report(a.agents);
    let paced = pacing_report("rollout", &agents, &a, &rollout);
    report_processes("after_rollout", &agents, &catalog);

    let upgrade = Window::measure(&api, "upgrade", || {
        apply_shim(&api, dir.path(), &versions[1]);
        wait_for(&api, a.agents, "v2");
    });
    upgrade.report(a.agents);
    let paced_upgrade = pacing_report("upgrade", &agents, &a, &upgrade);
    report_processes("after_upgrade", &agents, &catalog);
    fan_out(&rollout, &upgrade, a.agents);
    if let Some(k) = &kubelets {
        // What the harness's kubelets managed against what kubelets would have written: a server
        // that cannot keep up with the fleet's heartbeats has its figures taken under less load.
        let due = simulated as f64 / beats.lease_every.as_secs_f64()
            + simulated as f64 / beats.status_every.as_secs_f64();
        let landed = k.writes() as f64 / kubelets_since.elapsed().as_secs_f64();
        println!("kubelet_writes_per_s {landed:.0} of {due:.0} due");
    }
    goals(
        &a,
        &idle,
        &rollout,
        &[paced, paced_upgrade],
        idle_rss,
        &catalog,
    );
    // Every agent's log, for looking into a run (`KWASM_BENCH_LOGS=DIR`).
    if let Some(dir) = std::env::var_os("KWASM_BENCH_LOGS") {
        std::fs::create_dir_all(&dir).unwrap();
        for a in &agents {
            let _ = std::fs::copy(
                a.sb.path().join("agent.log"),
                Path::new(&dir).join(format!("{}.log", a.name)),
            );
        }
    }
    drop(agents);
    drop(catalog);
    drop(cd);
}

struct ShimVersion {
    version: String,
    url: String,
    digest: String,
}

fn shim_version(server: &ArtifactServer, version: &str) -> ShimVersion {
    let archive = release(BIN, &fake_binary(&format!("fleet-{version}"), 50_000));
    let path = format!("/shim-{version}.tar.gz");
    server.route(&path, vec![Behavior::Serve(archive.clone())]);
    ShimVersion {
        version: version.into(),
        url: server.url(&path),
        digest: sha256(&archive),
    }
}

/// The handler every agent writes, as containerd loads it: the shared containerd's config holds it
/// from the start (nothing of it runs; CRI lists it, which is what an agent's proof reads).
fn load_handler(cd: &Containerd) {
    let text = std::fs::read_to_string(&cd.config).unwrap();
    let table = format!(
        "\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{SHIM}]\n  runtime_type = \"/opt/kwasm/bin/{BIN}\"\n"
    );
    std::fs::write(&cd.config, text + &table).unwrap();
    cd.restart();
}

fn apply_shim(api: &KubeApi, dir: &std::path::Path, v: &ShimVersion) {
    let object = serde_json::json!({
        "apiVersion": "kwasm.sh/v1alpha1", "kind": "Shim", "metadata": {"name": SHIM},
        "spec": {"runtimeType": format!("io.containerd.{SHIM}.v2"), "binary": BIN, "version": v.version,
                 "platforms": [{"arch": "amd64", "url": v.url, "sha256": v.digest}]}
    });
    let file = dir.join(format!("shim-{}.json", v.version));
    std::fs::write(&file, object.to_string()).unwrap();
    api.kubectl_ok(&["apply", "-f", file.to_str().unwrap()]);
}

fn start_catalog(api: &KubeApi, dir: &std::path::Path) -> Catalog {
    Catalog(spawn_catalog(
        api,
        dir,
        "5s",
        Some(&dir.join("catalog.log")),
    ))
}

/// The restart command: as long as a real node's restart, logging when "containerd" was down.
fn restart_script(sb: &Sandbox, seconds: f64) -> (PathBuf, PathBuf) {
    let log = sb.path().join("down-windows.log");
    let script = sb.path().join("restart.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"down $(date +%s%N)\" >> {log}\nsleep {seconds}\necho \"up $(date +%s%N)\" >> {log}\n",
            log = log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    (script, log)
}

fn agent_settings(sb: &Sandbox, port: u16, pacing: &str, script: &Path, cd: &Containerd) -> String {
    let pacing = match pacing.ends_with('%') {
        true => format!("{pacing:?}"),
        false => pacing.to_owned(),
    };
    format!(
        "[host]\nroot = \"/\"\ninstall_dir = \"/opt/kwasm\"\n\n[artifacts]\nallow_http = true\n\n[agent]\nlisten = \"127.0.0.1:{port}\"\n\n[fleet]\nmax_concurrent_restarts = {pacing}\nlease_namespace = \"kube-system\"\n\n[catalog]\nshim_objects = true\n\n[containerd]\nconfig = {config:?}\nsocket = {socket:?}\nrestart = [{script:?}]\ntimeout = \"60s\"\n",
        config = sb.host("/etc/containerd/config.toml"),
        socket = cd.socket,
    )
}

/// `kwasm-agent run` in a mount namespace of its own, with `opt` mounted on `/opt`.
fn spawn_agent(sb: &Sandbox, name: &str, api: &KubeApi) -> Child {
    let opt = sb.path().join("opt");
    std::fs::create_dir_all(&opt).unwrap();
    let log = std::fs::File::create(sb.path().join("agent.log")).unwrap();
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "--", "sh", "-c"])
        .arg("mount --bind \"$0\" /opt && exec \"$@\"")
        .arg(&opt)
        .arg(agent_bin())
        .args(["run", "--config"])
        .arg(&sb.settings)
        .env("NODE_NAME", name)
        .env("KUBECONFIG", api.agent_kubeconfig(name))
        .env(
            "KWASM_LOG",
            std::env::var("KWASM_BENCH_LOG_LEVEL").unwrap_or_else(|_| "warn".into()),
        )
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap()
}

fn start_agents(api: &KubeApi, a: &Args, cd: &Containerd) -> Vec<RolloutAgent> {
    let agents: Vec<RolloutAgent> = (0..a.agents)
        .map(|i| {
            let name = format!("n{i:04}");
            api.create_nodes(
                std::slice::from_ref(&name),
                &serde_json::json!({"bench/agent": "true"}),
            );
            let sb = Sandbox::new();
            let port = free_port();
            let (script, windows) = restart_script(&sb, a.restart_s);
            sb.write_settings(&agent_settings(&sb, port, &a.pacing, &script, cd));
            let child = spawn_agent(&sb, &name, api);
            RolloutAgent {
                child: Process(child),
                name: name.clone(),
                sb,
                port,
                windows,
            }
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    for a in &agents {
        while !ready(a.port) {
            assert!(
                Instant::now() < deadline,
                "an agent never became ready: {}",
                std::fs::read_to_string(a.sb.path().join("agent.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    agents
}

/// (when, how many agents' nodes showed the shim ready at the phase's version), sampled each second
/// while a phase waits: the timeline's "ready" line.
static READY_SAMPLES: std::sync::Mutex<Vec<(f64, usize)>> = std::sync::Mutex::new(Vec::new());

/// The most watches open at once, sampled while a phase waits.
static MOST_WATCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Every agent's node shows the shim ready at `version` (its labels, as a scheduler reads them).
fn wait_for(api: &KubeApi, agents: usize, version: &str) {
    let deadline = Instant::now() + Duration::from_secs(3 * 3600);
    let selector =
        format!("bench/agent=true,kwasm.sh/shim.{SHIM}=true,kwasm.sh/version.{SHIM}={version}");
    loop {
        let out = api.kubectl_ok(&["get", "nodes", "-l", &selector, "-o", "name"]);
        MOST_WATCHES.fetch_max(open_watches(api), std::sync::atomic::Ordering::Relaxed);
        let ready = out.lines().count();
        READY_SAMPLES.lock().unwrap().push((epoch(), ready));
        if ready >= agents {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the fleet never reached {version}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Until an agent has been elected grantor and, its list of every Node done, watches them (the one
/// Node watch an agent makes without a field selector).
fn wait_for_grantor(api: &KubeApi) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let watching = api.requests().iter().any(|r| {
            component(r) == "node"
                && kind(r) == "GET-nodes-watch"
                && r["query"]["fieldSelector"].is_null()
        });
        if watching {
            return;
        }
        assert!(Instant::now() < deadline, "no grantor watched the Nodes");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A phase, and what kwasm-agent asked of the API server during it.
struct Window {
    name: &'static str,
    from: f64,
    to: f64,
    requests: Vec<serde_json::Value>,
    /// Every request the audit log shows in the phase (the administrator's too).
    requests_all: Vec<serde_json::Value>,
    /// Bytes the server answered with, all requests (its metrics; watch streams not included).
    response_bytes: u64,
    watch_bytes: BTreeMap<String, u64>,
}

fn epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

impl Window {
    fn measure(api: &KubeApi, name: &'static str, phase: impl FnOnce()) -> Self {
        let before = watch_bytes(api);
        let bytes_before = response_bytes(api);
        let (server, etcd) = api.pids();
        let (server_cpu, etcd_cpu) = (cpu_seconds(server), cpu_seconds(etcd));
        let machine = machine_cpu();
        MOST_WATCHES.store(0, std::sync::atomic::Ordering::Relaxed);
        let from = epoch();
        phase();
        let to = epoch();
        // CPU first: reading the server's metrics (below) costs it CPU of its own.
        let (server_used, etcd_used) = (
            cpu_seconds(server) - server_cpu,
            cpu_seconds(etcd) - etcd_cpu,
        );
        let machine_after = machine_cpu();
        let after = watch_bytes(api);
        let watch_bytes = after
            .iter()
            .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
            .collect();
        let requests_all = within(&api.requests(), from, to);
        let requests = (requests_all.iter())
            .filter(|r| {
                r["user_agent"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("kwasm-agent")
            })
            .cloned()
            .collect();
        println!("{name}_open_watches {}", open_watches(api));
        println!(
            "{name}_most_watches_open {}",
            MOST_WATCHES.load(std::sync::atomic::Ordering::Relaxed)
        );
        // This machine carries every agent's own work (on a cluster, each node's): how busy it was.
        println!(
            "{name}_machine_cpu_busy {:.2}",
            (machine_after.0 - machine.0) / (machine_after.1 - machine.1).max(1.0)
        );
        // The API server and etcd are part of the measure: how busy (1.0 = one core all the time)
        // and how large they were.
        let seconds = (to - from).max(0.001);
        println!("{name}_apiserver_cpu_share {:.2}", server_used / seconds);
        println!("{name}_etcd_cpu_share {:.2}", etcd_used / seconds);
        println!(
            "{name}_apiserver_rss_mib {:.0}",
            rss_kib(server) as f64 / 1024.0
        );
        println!("{name}_etcd_rss_mib {:.0}", rss_kib(etcd) as f64 / 1024.0);
        Self {
            name,
            from,
            to,
            response_bytes: response_bytes(api) - bytes_before,
            requests,
            requests_all,
            watch_bytes,
        }
    }

    fn seconds(&self) -> f64 {
        (self.to - self.from).max(0.001)
    }

    /// Requests that are not a node's own provisioning: what the fleet costs beyond the fixed work
    /// each node does for itself once (`own_provisioning`).
    fn overhead(&self) -> Vec<serde_json::Value> {
        self.requests
            .iter()
            .filter(|r| !(component(r) == "node" && own_provisioning(&kind(r))))
            .cloned()
            .collect()
    }

    fn report(&self, agents: usize) {
        let n = self.name;
        let s = self.seconds();
        println!("{n}_s {s:.1}");
        println!("{n}_requests_per_s {:.2}", self.requests.len() as f64 / s);
        println!(
            "{n}_overhead_requests_per_s {:.2}",
            self.overhead().len() as f64 / s
        );
        println!(
            "{n}_response_bytes_per_s {:.0}",
            self.response_bytes as f64 / s
        );
        let mut by: BTreeMap<(String, String), usize> = BTreeMap::new();
        for r in &self.requests {
            *by.entry((component(r).to_owned(), kind(r))).or_default() += 1;
        }
        for ((who, k), count) in &by {
            println!(
                "{n}_requests {who} {k} {count} per_node {:.2} per_s {:.2}",
                *count as f64 / agents as f64,
                *count as f64 / s,
            );
        }
        for (k, b) in self.watch_bytes.iter().filter(|(_, b)| **b > 0) {
            println!("{n}_watch_bytes_per_s {k} {:.0}", *b as f64 / s);
        }
    }
}

/// A node's own provisioning: reading and patching its Node, its Events, and its restart permit
/// (watching it, confirming and releasing it; the grantor granting and deleting it) — a fixed number
/// of requests per node, however long it waits (`pacing_requests_per_node` shows how many).
fn own_provisioning(kind: &str) -> bool {
    kind == "GET-nodes"
        || kind.starts_with("PATCH-nodes")
        || kind.contains("events")
        || kind.contains("leases")
}

/// (down, up) in ns of every restart the agents' scripts logged within the window.
fn restarts(agents: &[RolloutAgent], w: &Window) -> Vec<(u128, u128)> {
    let (from, to) = ((w.from * 1e9) as u128, (w.to * 1e9) as u128);
    agents
        .iter()
        .flat_map(|a| restart_windows(&a.windows))
        .filter(|(d, u)| *d >= from && *u <= to)
        .collect()
}

/// A pacing violation is a bug in the grantor: say which agents overlapped and what their logs say
/// about permits, before the sandboxes (and their logs) go.
fn explain_overlap(phase: &str, agents: &[RolloutAgent], at: u128) {
    eprintln!("{phase}: too many containerds down at {at} ns; the agents down then:");
    for a in agents {
        let down = restart_windows(&a.windows)
            .into_iter()
            .any(|(d, u)| d <= at && at < u);
        if !down {
            continue;
        }
        let log = std::fs::read_to_string(a.sb.path().join("agent.log")).unwrap_or_default();
        eprintln!("--- {} ---", a.sb.path().display());
        for line in log.lines().filter(|l| {
            l.contains("permit")
                || l.contains("grant")
                || l.contains("WARN")
                || l.contains("restart")
        }) {
            eprintln!("{line}");
        }
    }
}

/// Pacing as the restart scripts saw it: containerds down at once, time to converge against the
/// ideal (every slot busy from the first restart to the last).
struct Paced {
    restarts: usize,
    slots: usize,
    most_down: usize,
    converge_ratio: f64,
    /// Against the ideal given when each node became ready to restart (`paced_finish`); None
    /// when no node was seen getting ready.
    converge_ratio_from_ready: Option<f64>,
    lease_requests_per_node: f64,
}

/// When each agent became ready to restart, seconds, by its permit's name: its first look at its
/// own restart permit (the permit's watch begins as the node asks).
fn ready_to_restart(w: &Window) -> BTreeMap<String, f64> {
    let mut first = BTreeMap::<String, f64>::new();
    for r in &w.requests {
        let selector = r["query"]["fieldSelector"].as_str().unwrap_or("");
        let Some(permit) = selector.strip_prefix("metadata.name=kwasm-agent-permit-") else {
            continue;
        };
        if !kind(r).contains("leases") {
            continue;
        }
        let t = r["t"].as_f64().unwrap_or(f64::INFINITY);
        let at = first.entry(permit.to_owned()).or_insert(t);
        *at = at.min(t);
    }
    first
}

/// When each agent's node was triggered (the administrator's patch of it: `kubectl annotate`).
fn triggered_at(w: &Window) -> Vec<f64> {
    let mut first = BTreeMap::<String, f64>::new();
    for r in &w.requests_all {
        let path = r["path"].as_str().unwrap_or("");
        if r["user"] == "kubernetes-admin"
            && r["verb"] == "patch"
            && path.starts_with("/api/v1/nodes/")
        {
            let t = r["t"].as_f64().unwrap_or(f64::INFINITY);
            let at = first.entry(path.to_owned()).or_insert(t);
            *at = at.min(t);
        }
    }
    first.into_values().collect()
}

/// The phase over time, every quarter second from its start: containerds down (against the limit
/// then), nodes asking and not yet restarting, and nodes ready on the phase's version — written to
/// `$KWASM_BENCH_TIMELINE/<run>-<phase>.csv` when that is set (scripts/bench-rollout.sh plots them).
fn write_timeline(
    phase: &str,
    agents: &[RolloutAgent],
    w: &Window,
    ready: &BTreeMap<String, f64>,
    limit: &dyn Fn(f64) -> usize,
) {
    let Some(dir) = std::env::var_os("KWASM_BENCH_TIMELINE") else {
        return;
    };
    let run = std::env::var("KWASM_BENCH_RUN").unwrap_or_else(|_| "run".into());
    let windows: Vec<(String, Vec<(f64, f64)>)> = agents
        .iter()
        .map(|a| {
            let ns = restart_windows(&a.windows)
                .into_iter()
                .map(|(d, u)| (d as f64 / 1e9, u as f64 / 1e9));
            (
                a.name.clone(),
                ns.filter(|(d, u)| *d >= w.from && *u <= w.to).collect(),
            )
        })
        .collect();
    let samples = READY_SAMPLES.lock().unwrap().clone();
    let mut csv = String::from("seconds,down,waiting,ready,limit\n");
    let mut t = w.from;
    while t <= w.to {
        let down = windows
            .iter()
            .filter(|(_, ws)| ws.iter().any(|(d, u)| *d <= t && t < *u))
            .count();
        let waiting = windows
            .iter()
            .filter(|(node, ws)| {
                let asked = ready.get(node).is_some_and(|r| *r <= t);
                asked && ws.first().is_none_or(|(d, _)| t < *d)
            })
            .count();
        let ready_now = samples
            .iter()
            .rfind(|(at, _)| *at <= t)
            .map_or(0, |(_, n)| *n);
        let limit = limit(t);
        csv += &format!("{:.2},{down},{waiting},{ready_now},{limit}\n", t - w.from);
        if t < w.to && t + 0.25 > w.to {
            // The phase's last moment: the sample that ended it.
            t = w.to;
        } else {
            t += 0.25;
        }
    }
    let path = std::path::Path::new(&dir).join(format!("{run}-{phase}.csv"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(path, csv).unwrap();
}

fn pacing_report(name: &str, agents: &[RolloutAgent], a: &Args, w: &Window) -> Paced {
    let all = restarts(agents, w);
    let slots = match a.pacing.strip_suffix('%') {
        Some(p) => {
            ((a.agents as f64 * p.parse::<f64>().unwrap_or(10.0) / 100.0).ceil() as usize).max(1)
        }
        None => a.pacing.parse().unwrap_or(2),
    };
    let mean_restart =
        all.iter().map(|(d, u)| (u - d) as f64 / 1e9).sum::<f64>() / all.len().max(1) as f64;
    let first_down = all.iter().map(|(d, _)| *d).min().unwrap_or(0) as f64 / 1e9;
    let last_up = all.iter().map(|(_, u)| *u).max().unwrap_or(0) as f64 / 1e9;
    let rounds = a.agents.div_ceil(slots) as f64;
    let ideal = rounds * mean_restart;
    let took = last_up - first_down;
    let by_node = ready_to_restart(w);
    // With a percentage the limit is that share of the nodes triggered so far (what the grantor
    // counts): it grows as the trigger reaches the nodes, which the ideal follows too.
    let percent = a
        .pacing
        .strip_suffix('%')
        .and_then(|p| p.parse::<f64>().ok());
    let triggered = percent.map(|_| triggered_at(w)).unwrap_or_default();
    let limit = |t: f64| match percent {
        Some(p) => {
            (triggered.iter().filter(|at| **at <= t).count() as f64 * p / 100.0).ceil() as usize
        }
        None => slots,
    };
    write_timeline(name, agents, w, &by_node, &limit);
    READY_SAMPLES.lock().unwrap().clear();
    let ready: Vec<f64> = by_node.values().copied().collect();
    let first_ready = ready.iter().copied().fold(f64::INFINITY, f64::min);
    let ideal_from_ready = match percent {
        Some(_) => paced_finish_with(&ready, mean_restart, limit, &triggered),
        None => paced_finish(&ready, slots, mean_restart),
    } - first_ready;
    let lease_requests: Vec<_> = w
        .requests
        .iter()
        .filter(|r| kind(r).contains("leases") && component(r) == "node")
        .collect();
    if let Some(worst) = first_over(&all, slots) {
        explain_overlap(name, agents, worst);
    }
    let paced = Paced {
        restarts: all.len(),
        slots,
        most_down: max_overlap(&all),
        converge_ratio: took / ideal.max(0.001),
        converge_ratio_from_ready: (!ready.is_empty())
            .then(|| (last_up - first_ready) / ideal_from_ready.max(0.001)),
        lease_requests_per_node: lease_requests.len() as f64 / a.agents as f64,
    };
    println!("{name}_restarts {}", all.len());
    handoffs(name, agents, w);
    // The agents' Lease requests by what they were and how they were answered.
    let mut answered = BTreeMap::<String, usize>::new();
    for r in &lease_requests {
        let what = format!("{} {}", kind(r), r["code"]);
        *answered.entry(what).or_default() += 1;
    }
    println!("{name}_lease_requests_by_answer {answered:?}");
    // How the restarts spread: how many began in each second of the phase.
    let first = all.iter().map(|(d, _)| *d).min().unwrap_or(0);
    let mut per_second = vec![0usize; 1];
    for (d, _) in &all {
        let i = ((d - first) / 1_000_000_000) as usize;
        per_second.resize(per_second.len().max(i + 1), 0);
        per_second[i] += 1;
    }
    println!("{name}_restarts_begun_per_second {per_second:?}");
    println!("{name}_slots {slots}");
    println!("{name}_most_down_at_once {}", paced.most_down);
    println!("{name}_mean_restart_s {mean_restart:.3}");
    println!("{name}_first_down_to_last_up_s {took:.1}");
    println!("{name}_ideal_s {ideal:.1}");
    println!("{name}_converge_ratio {:.3}", paced.converge_ratio);
    if let Some(ratio) = paced.converge_ratio_from_ready {
        let last_ready = ready.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        println!(
            "{name}_ready_to_restart_over_s {:.1}",
            last_ready - first_ready
        );
        println!("{name}_ideal_from_ready_s {ideal_from_ready:.1}");
        println!(
            "{name}_first_ready_to_last_up_s {:.1}",
            last_up - first_ready
        );
        println!("{name}_converge_ratio_from_ready {ratio:.3}");
    }
    println!(
        "{name}_lease_requests_per_node {:.2}",
        paced.lease_requests_per_node
    );
    paced
}

/// Memory and CPU of the agents and the catalog controller; the largest agent RSS, KiB.
fn report_processes(when: &str, agents: &[RolloutAgent], catalog: &Catalog) -> u64 {
    let rss: Vec<u64> = agents.iter().map(|a| rss_kib(a.child.id())).collect();
    let mean = rss.iter().sum::<u64>() / rss.len().max(1) as u64;
    let cpu: f64 = agents
        .iter()
        .map(|a| cpu_seconds(a.child.id()))
        .sum::<f64>();
    println!("{when}_agent_rss_kib_mean {mean}");
    // Largest first, with its name (the grantor, which alone lists every Node, is the one to look
    // for), and the next: whether one agent stands out.
    let mut sorted: Vec<(u64, &str)> = rss
        .iter()
        .copied()
        .zip(agents.iter().map(|a| a.name.as_str()))
        .collect();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    if let Some((largest, name)) = sorted.first() {
        println!("{when}_agent_rss_kib_max {largest}");
        println!("{when}_agent_rss_largest {name}");
    }
    if let Some((second, _)) = sorted.get(1) {
        println!("{when}_agent_rss_kib_second_largest {second}");
    }
    println!(
        "{when}_agent_cpu_s_mean {:.3}",
        cpu / agents.len().max(1) as f64
    );
    println!("{when}_catalog_rss_kib {}", rss_kib(catalog.0.id()));
    println!(
        "{when}_catalog_peak_rss_kib {}",
        peak_rss_kib(catalog.0.id())
    );
    println!("{when}_catalog_cpu_s {:.2}", cpu_seconds(catalog.0.id()));
    sorted.first().map_or(0, |(largest, _)| *largest)
}

/// What one Shim status write costs the Shim watches: the bytes the server sent to Shim watches
/// during a phase (its own count, each watch connection's events), over the status writes the
/// catalog made in it and the agents watching.
fn fan_out(rollout: &Window, upgrade: &Window, agents: usize) {
    for w in [rollout, upgrade] {
        let writes = w
            .requests
            .iter()
            .filter(|r| component(r) == "catalog" && kind(r).contains("shims-status"))
            .count();
        let to_agents = w.watch_bytes.get("shims").copied().unwrap_or(0);
        println!("{}_shim_status_writes {writes}", w.name);
        println!(
            "{}_shim_watch_bytes_per_status_write_per_agent {:.0}",
            w.name,
            to_agents as f64 / writes.max(1) as f64 / agents as f64
        );
    }
}

fn goals(
    a: &Args,
    idle: &Window,
    rollout: &Window,
    paced: &[Paced],
    idle_rss_kib: u64,
    catalog: &Catalog,
) {
    let goal = |name: &str, value: f64, limit: f64| {
        let ok = value <= limit;
        println!(
            "goal {name} {value:.3} <= {limit} {}",
            if ok { "PASS" } else { "FAIL" }
        );
    };
    // The overhead at 5,000 nodes: the waiting costs nothing per waiter, so it does not scale
    // with the fleet; the per-node requests scale with the rate nodes finish, which the pacing
    // sets (same slots, same restart time at 5,000 nodes), so the rate measured here holds.
    goal(
        "rollout_overhead_requests_per_s",
        rollout.overhead().len() as f64 / rollout.seconds(),
        10.0,
    );
    // Idle, each agent's requests scale with the agents; the catalog's and the grantor's election
    // (one agent renewing one Lease) do not. An agent's only idle requests should be its three
    // watches' renewals (its Node, the Shims, the grantor's Lease), each an hour long — too rare
    // for this window to count, so they are taken at the most they can be: three per agent per 30
    // minutes (a server's --min-request-timeout, should it end them sooner). Anything else an agent
    // asks while idle is measured and scaled.
    let idle_rate = |which: &dyn Fn(&serde_json::Value) -> bool| {
        idle.requests.iter().filter(|r| which(r)).count() as f64 / idle.seconds()
    };
    let per_agent = idle_rate(&|r| {
        component(r) == "node" && !is_grantor_election(r) && !kind(r).ends_with("-watch")
    });
    let fixed = idle_rate(&|r| component(r) == "catalog" || is_grantor_election(r));
    let renewals = 3.0 * 5000.0 / 1800.0;
    println!("idle_watch_renewals_per_s_at_5000_at_most {renewals:.2}");
    println!("idle_requests_per_s_per_agent {per_agent:.4}");
    println!("idle_requests_per_s_fixed {fixed:.2}");
    goal(
        "idle_requests_per_s_at_5000_nodes",
        per_agent * 5000.0 / a.agents as f64 + fixed + renewals,
        10.0,
    );
    for (i, p) in paced.iter().enumerate() {
        let phase = ["rollout", "upgrade"][i.min(1)];
        if p.restarts == 0 {
            println!("{phase}_needed_no_restart true");
            continue;
        }
        goal(&format!("{phase}_converge_ratio"), p.converge_ratio, 1.1);
        if let Some(ratio) = p.converge_ratio_from_ready {
            goal(&format!("{phase}_converge_ratio_from_ready"), ratio, 1.1);
        }
        // As many down at once as the pacing allows (fewer only if fewer nodes than slots).
        let want = p.slots.min(a.agents);
        println!(
            "goal {phase}_most_down_at_once {} == {want} {}",
            p.most_down,
            if p.most_down == want { "PASS" } else { "FAIL" }
        );
        goal(
            &format!("{phase}_pacing_requests_per_node"),
            p.lease_requests_per_node,
            7.0,
        );
    }
    goal(
        "catalog_rss_mib",
        peak_rss_kib(catalog.0.id()) as f64 / 1024.0,
        64.0,
    );
    goal("idle_agent_rss_mib_max", idle_rss_kib as f64 / 1024.0, 10.0);
}

/// (busy, total) jiffies of every CPU of this machine so far.
fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: f64 = cpu.iter().sum();
    // idle and iowait are the 4th and 5th.
    let idle = cpu.get(3).copied().unwrap_or(0.0) + cpu.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

/// Where a restart's turn goes, medians over the phase's nodes, seconds: the restart done (its
/// script's "up") → the permit given back; given back → the next grant; granted → confirmed by
/// its node; confirmed → the restart begins (its script's "down").
fn handoffs(phase: &str, agents: &[RolloutAgent], w: &Window) {
    let lease_at = |verb: &str, name: &str| -> Vec<f64> {
        (w.requests.iter())
            .filter(|r| r["verb"] == verb && r["name"] == name && kind(r).contains("leases"))
            .filter_map(|r| r["t"].as_f64())
            .collect()
    };
    let posts: Vec<f64> = {
        let mut p: Vec<f64> = (w.requests.iter())
            .filter(|r| {
                r["verb"] == "create"
                    && r["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("kwasm-agent-permit-"))
            })
            .filter_map(|r| r["t"].as_f64())
            .collect();
        p.sort_by(f64::total_cmp);
        p
    };
    let (mut give_back, mut to_next, mut confirm, mut begin) = (vec![], vec![], vec![], vec![]);
    let mut asked = vec![];
    let ready = ready_to_restart(w);
    for a in agents {
        let permit = format!("kwasm-agent-permit-{}", a.name);
        let Some((down, up)) = restart_windows(&a.windows)
            .into_iter()
            .map(|(d, u)| (d as f64 / 1e9, u as f64 / 1e9))
            .find(|(d, _)| *d >= w.from && *d <= w.to)
        else {
            continue;
        };
        let (created, updated, deleted) = (
            lease_at("create", &permit),
            lease_at("update", &permit),
            lease_at("delete", &permit),
        );
        let granted = created
            .iter()
            .copied()
            .filter(|t| *t <= down)
            .fold(f64::NEG_INFINITY, f64::max);
        if let Some(r) = ready.get(&a.name) {
            asked.push(granted - r);
        }
        if let Some(c) = updated
            .iter()
            .copied()
            .filter(|t| *t >= granted && *t <= down)
            .reduce(f64::min)
        {
            confirm.push(c - granted);
            begin.push(down - c);
        }
        if let Some(d) = deleted
            .iter()
            .copied()
            .filter(|t| *t >= up)
            .reduce(f64::min)
        {
            give_back.push(d - up);
            if let Some(next) = posts.iter().copied().find(|t| *t >= d) {
                to_next.push(next - d);
            }
        }
    }
    let pick = |v: &mut Vec<f64>, q: f64| {
        v.sort_by(f64::total_cmp);
        v.get(((v.len() as f64 - 1.0) * q).round().max(0.0) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    for (q, what) in [(0.5, "median"), (0.9, "p90")] {
        println!(
            "{phase}_turn_{what}_s ready_to_granted {:.3} up_to_given_back {:.3} given_back_to_next_grant {:.3} granted_to_confirmed {:.3} confirmed_to_down {:.3}",
            pick(&mut asked, q),
            pick(&mut give_back, q),
            pick(&mut to_next, q),
            pick(&mut confirm, q),
            pick(&mut begin, q)
        );
    }
}
