//! Fleet-safe restarts: many real agents, each with its own containerd and a live container, against
//! one API stand-in. Annotating every node at once must never take more than `max_concurrent_restarts`
//! containerds down together — measured from outside the agents, by each node's restart script — and
//! every node must end ready with its container undisturbed. An agent killed while it holds a restart
//! slot blocks the fleet only until its Lease expires.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kwasm_tests::agent::{eventually, http_get, RunningAgent};
use kwasm_tests::fleet_parts::{first_over, max_overlap, restart_windows as windows};
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
fn timed_restart(host: &NodeHost, seconds: f64) -> PathBuf {
    let log = host.sb.path().join("down-windows.log");
    let wrapper = host.cd.dir.join("timed-restart.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"down $(date +%s%N)\" >> {log}\nsleep {seconds}\n{restart}\nuntil ctr --address {sock} version >/dev/null 2>&1; do sleep 0.005; done\necho \"up $(date +%s%N)\" >> {log}\n",
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
    fleet_of(api, NODES, SLOTS, lease_duration, 0.7)
}

fn fleet_of(
    api: &KubeApi,
    nodes: usize,
    slots: usize,
    lease_duration: &str,
    restart_seconds: f64,
) -> Vec<FleetNode> {
    (0..nodes)
        .map(|i| {
            let settings = |port| {
                format!(
                    "[agent]\nlisten = \"127.0.0.1:{port}\"\nresync = \"2s\"\nmax_backoff = \"2s\"\n\n[fleet]\nmax_concurrent_restarts = {slots}\nlease_namespace = \"kwasm\"\nlease_duration = \"{lease_duration}\"\n"
                )
            };
            let (n, windows) = cluster_node(api, &format!("n{i}"), "live", settings, |h| {
                timed_restart(h, restart_seconds)
            });
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

/// The API requests on Leases (the restart slots and the line), as the stand-in logged them:
/// (seconds since the epoch, method, path, answer).
fn lease_requests(api: &KubeApi) -> Vec<(f64, String, String, u64)> {
    api.requests()
        .iter()
        .filter(|r| r["path"].as_str().unwrap_or("").contains("/leases"))
        .map(|r| {
            (
                r["t"].as_f64().unwrap_or(0.0),
                r["method"].as_str().unwrap_or("").to_owned(),
                r["path"].as_str().unwrap_or("").to_owned(),
                r["code"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// One slot, four nodes, a restart that takes two seconds: while a node restarts, the three others
/// wait without a single request (no polling: each learns from its watch that the slot was handed
/// to it), the slot goes to the nodes in the order they started waiting, and every handover is one
/// write that nobody contends for.
#[test]
fn waiting_nodes_make_no_requests_and_are_served_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    let nodes = fleet_of(&api, 4, 1, "30s", 2.0);
    for n in &nodes {
        n.agent.wait_ready();
    }
    api.kubectl_ok(&["annotate", "node", "--all", "kwasm.sh/kwasm-node=true"]);
    eventually("the fleet to be ready", || {
        all_ready(&api, &nodes).then_some(())
    });

    let mut restarts: Vec<(u128, u128)> = nodes.iter().flat_map(|n| windows(&n.windows)).collect();
    restarts.sort();
    assert_eq!(restarts.len(), 4, "{restarts:?}");
    assert_eq!(max_overlap(&restarts), 1);
    let requests = lease_requests(&api);
    let secs = |ns: u128| ns as f64 / 1e9;
    // From the second restart on, every waiter is in line: nothing but the holder's own requests
    // (none while containerd restarts) may reach the Leases.
    for (down, up) in &restarts[1..] {
        let during: Vec<_> = requests
            .iter()
            .filter(|(t, ..)| *t > secs(*down) + 0.05 && *t < secs(*up) - 0.05)
            .collect();
        assert!(
            during.is_empty(),
            "requests on Leases while a node restarted and the others waited: {during:#?}"
        );
    }
    // Served in the order they joined: the tickets taken out of the line (DELETE) come in the
    // order they were written (POST of the ticket, whose name sorts by that time).
    let ticket = |path: &str| path.rsplit('/').next().unwrap_or("").to_owned();
    let taken: Vec<String> = requests
        .iter()
        .filter(|(_, m, p, c)| m == "DELETE" && *c == 200 && p.contains("kwasm-agent-wait-"))
        .map(|(_, _, p, _)| ticket(p))
        .collect();
    let mut in_order = taken.clone();
    in_order.sort();
    assert_eq!(taken, in_order, "not served oldest first");
    assert_eq!(taken.len(), 3, "three nodes waited: {taken:?}");
    // No stampede: after the first restart began, no request on a Lease was refused for a conflict.
    let conflicts: Vec<_> = requests
        .iter()
        .filter(|(t, .., c)| *c == 409 && *t > secs(restarts[0].0))
        .collect();
    assert!(conflicts.is_empty(), "contended handovers: {conflicts:#?}");
    let mut by_kind = std::collections::BTreeMap::<String, usize>::new();
    for (_, m, p, c) in &requests {
        *by_kind
            .entry(format!(
                "{m} {} {c}",
                if p.contains("kwasm-agent-wait-") {
                    "ticket"
                } else if p.contains("kwasm-agent-restart-") {
                    "slot"
                } else {
                    "list/create"
                }
            ))
            .or_default() += 1;
    }
    eprintln!("requests on Leases for 4 nodes: {by_kind:?}");
    // And nobody is left in line.
    let leases = api.kubectl_ok(&["get", "leases", "-n", "kwasm", "-o", "name"]);
    assert!(!leases.contains("kwasm-agent-wait-"), "{leases}");
}

/// The slot as the stand-in holds it: its holder, if any.
fn slot_holder(api: &KubeApi, name: &str) -> Option<String> {
    let out = api.kubectl(&["get", "lease", "-n", "kwasm", name, "-o", "json"]);
    let lease: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
}

fn tickets(api: &KubeApi) -> Vec<String> {
    api.kubectl_ok(&[
        "get",
        "leases",
        "-n",
        "kwasm",
        "-l",
        "kwasm.sh/restart-waiter",
        "-o",
        "jsonpath={.items[*].spec.holderIdentity}",
    ])
    .split_whitespace()
    .map(str::to_owned)
    .collect()
}

/// A node that finds a slot open while an older node waits takes it only to hand it over — and its
/// watch, which still delivers the version naming it, must not make it restart on that slot too
/// (two nodes down on one slot: the pacing violation once seen in the 400-node benchmark). It waits
/// in line instead, and takes the slot when it is its turn.
#[test]
fn a_node_that_hands_an_open_slot_to_an_older_waiter_waits_its_turn() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    let older = "elsewhere";
    let setup = dir.path().join("line.yaml");
    std::fs::write(
        &setup,
        format!(
            "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: kwasm-agent-restart-0\n  namespace: kwasm\n  labels:\n    kwasm.sh/restart-slot: \"true\"\nspec:\n  leaseDurationSeconds: 30\n---\napiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: kwasm-agent-wait-000000000000001-{older}\n  namespace: kwasm\n  labels:\n    kwasm.sh/restart-waiter: \"true\"\nspec:\n  holderIdentity: {older}\n"
        ),
    )
    .unwrap();
    api.kubectl_ok(&["create", "-f", setup.to_str().unwrap()]);
    let nodes = fleet_of(&api, 1, 1, "30s", 0.3);
    let me = &nodes[0];
    me.agent.wait_ready();
    api.kubectl_ok(&["annotate", "node", &me.name, "kwasm.sh/kwasm-node=true"]);

    eventually("the node to join the line or restart", || {
        (tickets(&api).contains(&me.name) || !windows(&me.windows).is_empty()).then_some(())
    });
    assert_eq!(
        slot_holder(&api, "kwasm-agent-restart-0").as_deref(),
        Some(older),
        "the open slot went to the node that waited longer"
    );
    assert!(
        windows(&me.windows).is_empty(),
        "restarted on a slot it had handed to {older}: {:?}",
        windows(&me.windows)
    );
    assert_eq!(
        tickets(&api),
        vec![me.name.as_str()],
        "in line, behind nobody now"
    );

    // The older node is done: its slot cleared, as its release with nobody else in line would.
    api.kubectl_ok(&[
        "patch",
        "lease",
        "-n",
        "kwasm",
        "kwasm-agent-restart-0",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"holderIdentity":null}}"#,
    ]);
    eventually("the node to be ready", || {
        all_ready(&api, &nodes).then_some(())
    });
    assert_eq!(windows(&me.windows).len(), 1);
    assert!(
        tickets(&api).is_empty(),
        "left the line: {:?}",
        tickets(&api)
    );
    assert_eq!(slot_holder(&api, "kwasm-agent-restart-0"), None, "released");
    // It waited in line, then kept the slot it found open: it no longer says it waits.
    eventually("the agent to stop reporting a wait", || {
        let (_, metrics) = http_get(me.port, "/metrics")?;
        metrics
            .contains("\nkwasm_waiting_for_restart_slot 0")
            .then_some(())
    });
}

#[test]
fn overlap_counts_touching_windows_as_apart() {
    assert_eq!(max_overlap(&[(0, 10), (10, 20), (5, 15)]), 2);
    assert_eq!(max_overlap(&[(0, 10), (20, 30)]), 1);
    assert_eq!(max_overlap(&[]), 0);
    assert_eq!(first_over(&[(0, 10), (10, 20), (5, 15)], 1), Some(5));
    assert_eq!(first_over(&[(0, 10), (10, 20), (5, 15)], 2), None);
    assert_eq!(first_over(&[(0, 10), (10, 20)], 1), None, "touching");
}
