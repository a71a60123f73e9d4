//! Restart pacing by one grantor, tried the ways it could break, on a real API server (with the
//! chart's RBAC and admission policies) and real agents, each with its own containerd and a live
//! container. Containerds down at once are counted from outside the agents, by each node's restart
//! script; every test also checks every node ends provisioned with its container undisturbed.

use std::time::{Duration, Instant};

use kwasm_tests::agent::eventually;
use kwasm_tests::fleet_parts::{
    all_windows, first_over, fleet, fleet_with, grantor, max_overlap, patience, permits,
    wait_all_ready, FleetNode, FleetSpec,
};
use kwasm_tests::kube_api::{KubeApi, NAMESPACE};

fn all(nodes: &[FleetNode]) -> Vec<&FleetNode> {
    nodes.iter().collect()
}

/// No more than `n` down at once over the whole test, and each node restarted exactly once.
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

#[test]
fn annotating_every_node_at_once_restarts_a_percentage_of_them_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    // What the previous version's pacing leaves in the namespace: gone once a grantor decides.
    for (name, label) in [
        ("kwasm-agent-restart-0", "kwasm.sh/restart-slot=true"),
        ("kwasm-agent-wait-1-n9", "kwasm.sh/restart-waiter=true"),
    ] {
        let lease = format!("{{\"apiVersion\":\"coordination.k8s.io/v1\",\"kind\":\"Lease\",\"metadata\":{{\"name\":\"{name}\",\"namespace\":\"{NAMESPACE}\",\"labels\":{{\"{}\":\"{}\"}}}}}}", label.split('=').next().unwrap(), label.split('=').nth(1).unwrap());
        api.kubectl_stdin(&["create", "-f", "-"], &lease);
    }
    let spec = FleetSpec {
        pacing: "\"25%\"".into(),
        ..FleetSpec::new(8, 0)
    };
    let nodes = fleet(&api, &spec);
    for n in &nodes {
        n.agent.wait_ready();
    }
    let started = Instant::now();
    api.kubectl_ok(&["annotate", "node", "--all", "kwasm.sh/kwasm-node=true"]);
    wait_all_ready(&api, &all(&nodes), patience());
    let took = started.elapsed();
    paced(&nodes, 2);
    let windows = all_windows(&nodes);
    assert_eq!(
        max_overlap(&windows),
        2,
        "25% of 8 is 2 at once: {windows:?}"
    );
    // Paced, not serialised: four rounds of the longest restart, and a little.
    let longest = windows.iter().map(|(d, u)| u - d).max().unwrap() as f64 / 1e9;
    eprintln!(
        "8 nodes, 25%: ready in {:.2}s; longest restart {longest:.2}s",
        took.as_secs_f64()
    );
    assert!(
        took.as_secs_f64() < 4.0 * (longest + 1.5) + 5.0,
        "took {took:?}"
    );
    eventually("every permit given back and deleted", || {
        permits(&api).is_empty().then_some(())
    });
    let left = api.kubectl_ok(&[
        "get",
        "leases",
        "-n",
        NAMESPACE,
        "-l",
        "kwasm.sh/restart-slot",
        "-o",
        "name",
    ]) + &api.kubectl_ok(&[
        "get",
        "leases",
        "-n",
        NAMESPACE,
        "-l",
        "kwasm.sh/restart-waiter",
        "-o",
        "name",
    ]);
    assert_eq!(
        left, "",
        "the previous version's slots and tickets are still there"
    );
}

#[test]
fn the_oldest_asker_goes_first_and_waiting_nodes_make_no_requests() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    let nodes = fleet(&api, &FleetSpec::new(4, 1));
    for n in &nodes {
        n.agent.wait_ready();
    }
    // n0 asks first and holds the one permit, its restart held back; then n1, n2, n3 ask, in turn.
    nodes[0].hold(true);
    api.kubectl_ok(&["annotate", "node", "n0", "kwasm.sh/kwasm-node=true"]);
    eventually("n0 to hold the permit", || {
        permits(&api)
            .contains(&("n0".into(), "granted".into()))
            .then_some(())
    });
    for n in &nodes[1..] {
        api.kubectl_ok(&["annotate", "node", &n.name, "kwasm.sh/kwasm-node=true"]);
        eventually(&format!("{} to ask", n.name), || {
            (n.phase(&api).as_deref() == Some("WaitingForRestart")).then_some(())
        });
    }
    for n in &nodes[1..] {
        eventually(&format!("{} to say it waits", n.name), || {
            api.event_reasons(&n.name)
                .contains(&"WaitingForRestart".into())
                .then_some(())
        });
    }
    // A measuring window, not a synchronisation: three nodes waiting, for two seconds.
    api.clear_requests();
    std::thread::sleep(Duration::from_secs(2));
    let waiting: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| ["n1", "n2", "n3"].iter().any(|n| r["node"] == *n))
        .collect();
    assert!(
        waiting.is_empty(),
        "waiting nodes made requests: {waiting:#?}"
    );
    nodes[0].hold(false);
    wait_all_ready(&api, &all(&nodes), patience());
    paced(&nodes, 1);
    let mut order: Vec<(u128, &str)> = nodes
        .iter()
        .map(|n| {
            (
                kwasm_tests::fleet_parts::restart_windows(&n.windows)[0].0,
                n.name.as_str(),
            )
        })
        .collect();
    order.sort();
    let order: Vec<&str> = order.into_iter().map(|(_, n)| n).collect();
    assert_eq!(
        order,
        ["n0", "n1", "n2", "n3"],
        "served in the order they asked"
    );
}

#[test]
fn a_grantor_killed_mid_rollout_is_replaced_and_the_pacing_holds() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    let spec = FleetSpec {
        lease_duration: "5s",
        restart_seconds: 1.0,
        ..FleetSpec::new(6, 2)
    };
    let mut nodes = fleet(&api, &spec);
    for n in &nodes {
        n.agent.wait_ready();
    }
    api.kubectl_ok(&["annotate", "node", "--all", "kwasm.sh/kwasm-node=true"]);
    let first = eventually("a grantor granting", || {
        let g = grantor(&api)?;
        (!permits(&api).is_empty()).then_some(g)
    });
    let killed = nodes.iter().position(|n| n.name == first).unwrap();
    nodes[killed].kill_agent();
    let others: Vec<&FleetNode> = (nodes.iter().enumerate())
        .filter(|(i, _)| *i != killed)
        .map(|(_, n)| n)
        .collect();
    wait_all_ready(&api, &others, patience());
    let next = grantor(&api).unwrap();
    assert_ne!(next, first, "the killed grantor still holds its Lease");
    nodes[killed].restart_agent(&api);
    wait_all_ready(&api, &all(&nodes), patience());
    // The killed node may have restarted under its first agent before it died: at most twice then.
    let windows = all_windows(&nodes);
    assert_eq!(
        first_over(&windows, 2),
        None,
        "more than 2 down at once: {windows:?}"
    );
    for n in &nodes {
        n.undisturbed_and_provisioned();
    }
}

#[test]
fn a_node_killed_holding_its_permit_has_it_taken_back() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    let spec = FleetSpec {
        lease_duration: "5s",
        ..FleetSpec::new(3, 1)
    };
    let mut nodes = fleet(&api, &spec);
    for n in &nodes {
        n.agent.wait_ready();
        n.hold(true);
    }
    api.kubectl_ok(&["annotate", "node", "--all", "kwasm.sh/kwasm-node=true"]);
    // The first node granted confirms its permit, then its agent dies before its restart begins.
    let holder = eventually("a node holding the permit", || {
        nodes
            .iter()
            .position(|n| n.agent.log().contains("holding a restart permit"))
    });
    nodes[holder].kill_agent();
    let killed_at = Instant::now();
    for n in &nodes {
        n.hold(false);
    }
    let others: Vec<&FleetNode> = (nodes.iter().enumerate())
        .filter(|(i, _)| *i != holder)
        .map(|(_, n)| n)
        .collect();
    wait_all_ready(&api, &others, patience());
    let took = killed_at.elapsed();
    assert!(
        took > Duration::from_secs(3),
        "the permit was not held until taken back ({took:?})"
    );
    let taken_back = nodes.iter().any(|n| {
        n.agent
            .log()
            .contains("took a restart permit back: it stopped renewing it")
    });
    assert!(taken_back, "no grantor said it took the permit back");
    assert!(
        kwasm_tests::fleet_parts::restart_windows(&nodes[holder].windows).is_empty(),
        "the dead agent's node restarted"
    );
    // Its next agent asks again and is served.
    nodes[holder].restart_agent(&api);
    wait_all_ready(&api, &all(&nodes), patience());
    paced(&nodes, 1);
}

/// libfaketime's preload library (Debian's `libfaketime`), or None (skipped, but not under CI).
fn faketime() -> Option<String> {
    let lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    if std::path::Path::new(lib).exists() {
        return Some(lib.into());
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{lib} missing: apt-get install libfaketime"
    );
    eprintln!("skipped: {lib} missing (apt-get install libfaketime)");
    None
}

#[test]
fn nodes_whose_clocks_are_minutes_apart_keep_the_pacing() {
    let Some(lib) = faketime() else { return };
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    let skew = ["+5m", "-5m", "+0", "+150s"];
    let spec = FleetSpec {
        lease_duration: "5s",
        restart_seconds: 1.0,
        ..FleetSpec::new(4, 1)
    };
    let env = |i: usize| {
        vec![
            ("LD_PRELOAD".to_owned(), lib.clone()),
            ("FAKETIME".to_owned(), skew[i].to_owned()),
        ]
    };
    let mut nodes = fleet_with(&api, &spec, |i| api.agent_kubeconfig(&format!("n{i}")), env);
    for n in &nodes {
        n.agent.wait_ready();
    }
    // The skew is real: n0's agent stamps its log five minutes ahead of this machine.
    let stamp = nodes[0]
        .agent
        .log()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let ahead = kwasm_tests::audit::epoch_seconds(&stamp) - kwasm_tests::audit::now();
    assert!(ahead > 240.0, "n0's clock is {ahead:.0}s ahead ({stamp})");
    api.kubectl_ok(&["annotate", "node", "--all", "kwasm.sh/kwasm-node=true"]);
    // The grantor dies once too, mid-rollout: its successor's judgement must not read clocks either.
    let first = eventually("a grantor granting", || {
        let g = grantor(&api)?;
        (!permits(&api).is_empty()).then_some(g)
    });
    let killed = nodes.iter().position(|n| n.name == first).unwrap();
    nodes[killed].kill_agent();
    nodes[killed].agent = kwasm_tests::agent::RunningAgent::start_with(
        &nodes[killed].host,
        &api.agent_kubeconfig(&first),
        &first,
        nodes[killed].port,
        &env(killed),
    );
    wait_all_ready(&api, &all(&nodes), patience());
    let windows = all_windows(&nodes);
    assert_eq!(
        first_over(&windows, 1),
        None,
        "more than 1 down at once: {windows:?}"
    );
    for n in &nodes {
        n.undisturbed_and_provisioned();
    }
}
