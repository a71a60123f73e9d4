//! Fleet-safe restarts: many real agents, each with its own containerd and a live container, against
//! one API stand-in. Annotating every node at once must never take more than `max_concurrent_restarts`
//! containerds down together — measured from outside the agents, by each node's restart script — and
//! every node must end ready with its container undisturbed. An agent killed while it holds a restart
//! slot blocks the fleet only until its Lease expires.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kwasm_tests::agent::{eventually, RunningAgent};
use kwasm_tests::kube_api::KubeApi;
use kwasm_tests::node_host::{cluster_node, NodeHost};

const NODES: usize = 8;
const SLOTS: usize = 2;

struct FleetNode {
    name: String,
    host: NodeHost,
    agent: RunningAgent,
    live: i32,
    windows: PathBuf,
    port: u16,
}

/// The node's restart command, wrapped to log when containerd goes down and when it answers again —
/// as `systemctl restart` returns only once a notify-type unit is up — and made as slow as a real
/// node's restart (a sandbox containerd restarts in a tenth of a second), so agents contend for slots.
fn timed_restart(host: &NodeHost) -> PathBuf {
    let log = host.sb.path().join("down-windows.log");
    let wrapper = host.cd.dir.join("timed-restart.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"down $(date +%s%N)\" >> {log}\nsleep 0.7\n{restart}\nuntil ctr --address {sock} version >/dev/null 2>&1; do sleep 0.005; done\necho \"up $(date +%s%N)\" >> {log}\n",
            log = log.display(),
            restart = host.cd.restart_script().display(),
            sock = host.cd.socket.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let settings = std::fs::read_to_string(&host.sb.settings).unwrap().replace(
        host.cd.restart_script().to_str().unwrap(),
        wrapper.to_str().unwrap(),
    );
    host.sb.write_settings(&settings);
    log
}

fn fleet(api: &KubeApi, lease_duration: &str) -> Vec<FleetNode> {
    (0..NODES)
        .map(|i| {
            let settings = |port| {
                format!(
                    "[agent]\nlisten = \"127.0.0.1:{port}\"\nresync = \"2s\"\nmax_backoff = \"2s\"\n\n[fleet]\nmax_concurrent_restarts = {SLOTS}\nlease_namespace = \"kwasm\"\nlease_duration = \"{lease_duration}\"\n"
                )
            };
            let (n, windows) = cluster_node(api, &format!("n{i}"), "live", settings, timed_restart);
            FleetNode {
                name: n.name,
                host: n.host,
                agent: n.agent,
                live: n.live,
                windows,
                port: n.port,
            }
        })
        .collect()
}

/// (down, up) in nanoseconds, per restart of one node.
fn windows(log: &Path) -> Vec<(u128, u128)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut out = Vec::new();
    let mut down = None;
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("down", t)) => down = t.parse().ok(),
            Some(("up", t)) => {
                if let (Some(d), Ok(u)) = (down.take(), t.parse()) {
                    out.push((d, u));
                }
            }
            _ => {}
        }
    }
    out
}

/// The most containerds down at the same instant.
fn max_overlap(all: &[(u128, u128)]) -> usize {
    let mut edges: Vec<(u128, i32)> = all.iter().flat_map(|(d, u)| [(*d, 1), (*u, -1)]).collect();
    // At equal times an "up" comes before a "down": touching windows do not overlap.
    edges.sort_by_key(|(t, delta)| (*t, *delta));
    let (mut now, mut most) = (0i32, 0i32);
    for (_, delta) in edges {
        now += delta;
        most = most.max(now);
    }
    most as usize
}

fn all_ready(api: &KubeApi, nodes: &[FleetNode]) -> bool {
    nodes
        .iter()
        .all(|n| api.provisioned_label(&n.name).as_deref() == Some("true"))
}

#[test]
fn annotating_every_node_at_once_restarts_at_most_n_containerds_together() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    let nodes = fleet(&api, "30s");
    for n in &nodes {
        n.agent.wait_ready();
    }
    let started = Instant::now();
    api.kubectl_ok(&["annotate", "node", "--all", "kwasm.sh/kwasm-node=true"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !all_ready(&api, &nodes) {
        assert!(Instant::now() < deadline, "the fleet never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let total = started.elapsed();

    let all: Vec<(u128, u128)> = nodes.iter().flat_map(|n| windows(&n.windows)).collect();
    assert_eq!(all.len(), NODES, "one restart per node: {all:?}");
    let most = max_overlap(&all);
    assert!(
        most <= SLOTS,
        "{most} containerds were down at once (allowed {SLOTS})"
    );
    assert!(most >= 1);
    for n in &nodes {
        assert_eq!(
            n.host.cd.task_pid("live"),
            Some(n.live),
            "{}'s container was disturbed",
            n.name
        );
        assert!(n.host.config().contains("runtimes.kwtest]"));
    }
    // Paced, not serialised: close to ceil(nodes / slots) restarts one after another, plus the
    // waiting agents' polling (a second or so each round here).
    let longest = all.iter().map(|(d, u)| u - d).max().unwrap_or(0);
    let rounds = NODES.div_ceil(SLOTS) as u128;
    let bound =
        Duration::from_nanos((rounds * (longest + 2_500_000_000)) as u64) + Duration::from_secs(5);
    eprintln!(
        "{NODES} nodes, {SLOTS} slots: ready in {:.2}s; longest restart {:.2}s; at most {most} down at once",
        total.as_secs_f64(),
        longest as f64 / 1e9
    );
    assert!(total < bound, "took {total:?}; expected under {bound:?}");
    // Waiting was said on the Node: at least one agent reported the wait as an Event.
    let waited = nodes.iter().any(|n| {
        api.event_reasons(&n.name)
            .contains(&"WaitingForRestart".to_owned())
    });
    assert!(waited, "no agent said it waited");
    // Every slot is free again.
    let leases = api.kubectl_ok(&["get", "leases", "-n", "kwasm", "-o", "json"]);
    let leases: serde_json::Value = serde_json::from_str(&leases).unwrap();
    for l in leases["items"].as_array().unwrap() {
        assert!(
            l["spec"]["holderIdentity"]
                .as_str()
                .unwrap_or("")
                .is_empty(),
            "a slot is still held: {l}"
        );
    }
}

#[test]
fn an_agent_killed_while_it_holds_a_slot_blocks_the_fleet_only_until_its_lease_expires() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    let mut nodes = fleet(&api, "5s");
    for n in &nodes {
        n.agent.wait_ready();
    }
    api.kubectl_ok(&["annotate", "node", "--all", "kwasm.sh/kwasm-node=true"]);
    // The first holder of a slot dies holding it.
    let holder = eventually("a slot to be held", || {
        let leases = api.kubectl(&["get", "leases", "-n", "kwasm", "-o", "json"]);
        let leases: serde_json::Value = serde_json::from_slice(&leases.stdout).ok()?;
        leases["items"].as_array()?.iter().find_map(|l| {
            l["spec"]["holderIdentity"]
                .as_str()
                .filter(|h| !h.is_empty())
                .map(str::to_owned)
        })
    });
    let killed = nodes.iter().position(|n| n.name == holder).unwrap();
    nodes[killed].agent.kill();
    let killed_at = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    let others = |api: &KubeApi, nodes: &[FleetNode]| {
        nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != killed)
            .all(|(_, n)| api.provisioned_label(&n.name).as_deref() == Some("true"))
    };
    while !others(&api, &nodes) {
        assert!(
            Instant::now() < deadline,
            "the fleet never finished after the holder died"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "the fleet finished {:.1}s after the holder was killed",
        killed_at.elapsed().as_secs_f64()
    );
    // The dead agent's node converges once an agent runs there again.
    let n = &mut nodes[killed];
    n.agent = RunningAgent::start(&n.host, &api.kubeconfig, &n.name, n.port);
    let deadline = Instant::now() + Duration::from_secs(60);
    while api.provisioned_label(&n.name).as_deref() != Some("true") {
        assert!(
            Instant::now() < deadline,
            "the restarted agent never finished; log:\n{}",
            n.agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let all: Vec<(u128, u128)> = nodes.iter().flat_map(|n| windows(&n.windows)).collect();
    assert!(max_overlap(&all) <= SLOTS, "{all:?}");
    for n in &nodes {
        assert_eq!(
            n.host.cd.task_pid("live"),
            Some(n.live),
            "{}'s container was disturbed",
            n.name
        );
    }
}

#[test]
fn overlap_counts_touching_windows_as_apart() {
    assert_eq!(max_overlap(&[(0, 10), (10, 20), (5, 15)]), 2);
    assert_eq!(max_overlap(&[(0, 10), (20, 30)]), 1);
    assert_eq!(max_overlap(&[]), 0);
}
