//! Faults only a real API server gives, in the middle of a paced rollout of real agents: etcd's
//! history compacted and the API server restarted (every watch resumes from a version etcd no longer
//! has: 410 Gone, a relist), the API server restarted twice, etcd restarted, and a connection gone
//! silent (no FIN: the agent must notice by itself). After each, every node ends provisioned with its
//! container undisturbed, no more containerds were down at once than the pacing allows, and — with
//! the catalog controller running — the Shim's status counts every node.

use std::time::{Duration, Instant};

use kwasm_tests::agent::eventually;
use kwasm_tests::fleet_parts::{
    all_windows, first_over, fleet, fleet_with, patience, permits, spawn_catalog, wait_all_ready,
    FleetNode, FleetSpec,
};
use kwasm_tests::kube_api::KubeApi;
use kwasm_tests::tcp_proxy::TcpProxy;

fn all(nodes: &[FleetNode]) -> Vec<&FleetNode> {
    nodes.iter().collect()
}

fn paced(nodes: &[FleetNode], n: usize) {
    let windows = all_windows(nodes);
    assert_eq!(
        windows.len(),
        nodes.len(),
        "one restart per node: {windows:?}"
    );
    assert_eq!(
        first_over(&windows, n),
        None,
        "more than {n} down at once: {windows:?}"
    );
    for node in nodes {
        node.undisturbed_and_provisioned();
    }
}

/// Every node annotated, and the first permits granted (the rollout under way).
fn rollout_under_way(api: &KubeApi) {
    api.kubectl_ok(&["annotate", "node", "--all", "kwasm.sh/kwasm-node=true"]);
    eventually("a permit granted", || {
        (!permits(api).is_empty()).then_some(())
    });
}

#[test]
fn a_compacted_history_makes_every_watch_relist_and_nothing_is_missed() {
    let dir = tempfile::tempdir().unwrap();
    let mut api = KubeApi::start(dir.path());
    let nodes = fleet(&api, &FleetSpec::new(4, 2));
    for n in &nodes {
        n.agent.wait_ready();
        n.hold(true);
    }
    let shim = format!(
        "apiVersion: kwasm.sh/v1alpha1\nkind: Shim\nmetadata:\n  name: kwtest\nspec:\n  runtimeType: io.containerd.kwtest.v2\n  binary: containerd-shim-kwtest-v2\n  version: v1.0.0\n  platforms:\n    - arch: amd64\n      url: {}\n      sha256: \"{}\"\n",
        nodes[0].host.server.url("/kwtest.tar.gz"),
        kwasm_tests::archive::sha256(&nodes[0].host.archive)
    );
    api.kubectl_stdin(&["apply", "-f", "-"], &shim);
    let _catalog = spawn_catalog(
        &api,
        dir.path(),
        "200ms",
        Some(&dir.path().join("catalog.log")),
    );
    rollout_under_way(&api);
    let revision = api.compact();
    api.restart_server();
    let restarted = kwasm_tests::audit::now();
    for n in &nodes {
        n.hold(false);
    }
    wait_all_ready(&api, &all(&nodes), patience());
    paced(&nodes, 2);
    // Permits given back while the grantor's watch was down were seen gone by its relist, not
    // held until they stopped being renewed (a slot lost for a lease duration).
    for n in &nodes {
        let log = n.agent.log();
        let taken = log
            .lines()
            .find(|l| l.contains("took a restart permit back"));
        assert_eq!(taken, None, "{}: a permit was taken back", n.name);
    }
    let deadline = Instant::now() + patience();
    loop {
        let out = api.kubectl_ok(&[
            "get",
            "shim",
            "kwtest",
            "-o",
            "jsonpath={.status.ready}/{.status.nodes}",
        ]);
        if out == "4/4" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the Shim never counted every node: {out}\n{}\ncatalog:\n{}",
            api.kubectl_ok(&["get", "shim", "kwtest", "-o", "yaml"]),
            std::fs::read_to_string(dir.path().join("catalog.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Their watches could not resume from before revision `revision`: the agents listed again.
    let relisted = api
        .requests()
        .into_iter()
        .filter(|r| {
            r["t"].as_f64() > Some(restarted) && r["verb"] == "list" && r["node"].is_string()
        })
        .count();
    assert!(
        relisted > 0,
        "no agent listed again after etcd compacted to {revision}"
    );
}

#[test]
fn the_api_server_restarted_mid_rollout_loses_no_node_and_keeps_the_pacing() {
    let dir = tempfile::tempdir().unwrap();
    let mut api = KubeApi::start(dir.path());
    let spec = FleetSpec {
        restart_seconds: 1.0,
        ..FleetSpec::new(6, 2)
    };
    let nodes = fleet(&api, &spec);
    for n in &nodes {
        n.agent.wait_ready();
    }
    rollout_under_way(&api);
    api.restart_server();
    eventually("the rollout to go on", || {
        (nodes.iter().filter(|n| n.ready(&api)).count() >= 2).then_some(())
    });
    api.restart_server();
    wait_all_ready(&api, &all(&nodes), patience());
    paced(&nodes, 2);
}

#[test]
fn etcd_restarted_mid_rollout_loses_no_node_and_keeps_the_pacing() {
    let dir = tempfile::tempdir().unwrap();
    let mut api = KubeApi::start(dir.path());
    let nodes = fleet(&api, &FleetSpec::new(4, 2));
    for n in &nodes {
        n.agent.wait_ready();
    }
    rollout_under_way(&api);
    api.restart_etcd();
    wait_all_ready(&api, &all(&nodes), patience());
    paced(&nodes, 2);
}

#[test]
fn a_connection_gone_silent_is_noticed_and_its_watch_made_again() {
    // n1 reaches the server through a relay; while n1 waits for its permit, every connection it has
    // goes silent — no FIN, no reset. Its permit is granted meanwhile: n1 must notice the dead watch
    // by itself (its read timeout, 3 s here; 90 s by default) and watch again.
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    let relay = TcpProxy::start(api.port);
    let spec = FleetSpec {
        agent: "api_read_timeout = \"3s\"",
        ..FleetSpec::new(2, 1)
    };
    let kubeconfig = |i: usize| match i {
        1 => api.agent_kubeconfig_via("n1", relay.port),
        _ => api.agent_kubeconfig("n0"),
    };
    let nodes = fleet_with(&api, &spec, kubeconfig, |_| Vec::new());
    for n in &nodes {
        n.agent.wait_ready();
    }
    nodes[0].hold(true);
    api.kubectl_ok(&["annotate", "node", "n0", "kwasm.sh/kwasm-node=true"]);
    eventually("n0 to hold the permit", || {
        permits(&api)
            .contains(&("n0".into(), "granted".into()))
            .then_some(())
    });
    api.kubectl_ok(&["annotate", "node", "n1", "kwasm.sh/kwasm-node=true"]);
    eventually("n1 to ask", || {
        (nodes[1].phase(&api).as_deref() == Some("WaitingForRestart")).then_some(())
    });
    relay.silence();
    let silenced = Instant::now();
    nodes[0].hold(false);
    wait_all_ready(&api, &all(&nodes), patience());
    let took = silenced.elapsed();
    eprintln!(
        "n1 ready {:.1}s after its connections went silent",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(30), "n1 took {took:?}");
    paced(&nodes, 1);
}
