//! `kwasm-agent run` end to end: the real kubectl annotates or labels a Node on a real API server
//! (holding the chart's RBAC and admission policy; each agent with its own node's identity), the
//! agent provisions a real containerd on its sandbox host, and reports on the Node.

use std::time::{Duration, Instant};

use kwasm_agent::controller::node::{NodeClient, Report};
use kwasm_tests::agent::{agent, eventually, RunningAgent as Agent, WAIT};
use kwasm_tests::artifact_server::Behavior;
use kwasm_tests::kube_api::{free_port, KubeApi, UNINSTALL_SA};
use kwasm_tests::kubelets::{Heartbeats, Kubelets};
use kwasm_tests::node_host::NodeHost;

const AGENT_USER: &str = "system:serviceaccount:kube-system:kwasm-agent";

fn agent_settings(port: u16) -> impl FnOnce(&kwasm_tests::sandbox::Sandbox) -> String {
    move |_| {
        format!("[agent]\nlisten = \"127.0.0.1:{port}\"\nresync = \"2s\"\nmax_backoff = \"2s\"\n")
    }
}

fn host_and_agent(api: &KubeApi, node: &str) -> (NodeHost, Agent) {
    let port = free_port();
    let host = NodeHost::with(agent_settings(port));
    api.add_node(node, "amd64");
    let a = Agent::start(&host, &api.agent_kubeconfig(node), node, port);
    a.wait_ready();
    (host, a)
}

fn wait_label(api: &KubeApi, node: &str, want: Option<&str>, a: &Agent) {
    let deadline = Instant::now() + WAIT;
    while api.provisioned_label(node).as_deref() != want {
        assert!(
            Instant::now() < deadline,
            "label on {node} never became {want:?}; agent log:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn annotate_provisions_the_node_and_removing_the_annotation_restores_it() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    let (host, a) = host_and_agent(&api, "n1");
    let before = host.cd.run_container("before", None);

    api.kubectl_ok(&["annotate", "node", "n1", "kwasm.sh/kwasm-node=true"]);
    wait_label(&api, "n1", Some("true"), &a);
    let out = api.kubectl_ok(&[
        "get",
        "node",
        "n1",
        "-o",
        "jsonpath={.metadata.labels.kwasm\\.sh/kwasm-provisioned}",
    ]);
    assert_eq!(out, "true");
    assert!(host.config().contains("runtimes.kwtest]"));
    assert_eq!(host.status()["shims"][0]["loaded"], true);
    let node = api.node("n1");
    // The shim's own labels: what its RuntimeClass selects, and the version installed.
    assert_eq!(node["metadata"]["labels"]["kwasm.sh/shim.kwtest"], "true");
    assert_eq!(
        node["metadata"]["labels"]["kwasm.sh/version.kwtest"],
        "v1.0.0"
    );
    let status: serde_json::Value = serde_json::from_str(
        node["metadata"]["annotations"]["kwasm.sh/kwasm-status"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(status["phase"], "Provisioned");
    assert_eq!(status["shims"][0]["name"], "kwtest");
    let reasons = api.event_reasons("n1");
    assert!(
        reasons.contains(&"Provisioning".into()) && reasons.contains(&"Provisioned".into()),
        "{reasons:?}"
    );
    assert_eq!(host.cd.task_pid("before"), Some(before));

    let (code, metrics) = a.get("/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("kwasm_containerd_restarts_total 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("kwasm_downloaded_bytes_total 0\n"),
        "{metrics}"
    );
    assert_eq!(a.get("/healthz").unwrap().0, 200);

    api.kubectl_ok(&["annotate", "node", "n1", "kwasm.sh/kwasm-node-"]);
    wait_label(&api, "n1", None, &a);
    eventually("the removal to finish", || {
        (host.config() == host.original).then_some(())
    });
    assert!(!host.binary().exists());
    let node = api.node("n1");
    assert!(node["metadata"]["annotations"]
        .get("kwasm.sh/kwasm-status")
        .is_none());
    let kwasm_labels: Vec<&String> = node["metadata"]["labels"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("kwasm.sh/"))
        .collect();
    assert!(kwasm_labels.is_empty(), "{kwasm_labels:?}");
    eventually("a Removed event", || {
        api.event_reasons("n1")
            .contains(&"Removed".into())
            .then_some(())
    });
    assert_eq!(host.cd.task_pid("before"), Some(before));
}

#[test]
fn the_label_triggers_too_and_each_agent_touches_only_its_own_node() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    let (h1, a1) = host_and_agent(&api, "n1");
    let (h2, a2) = host_and_agent(&api, "n2");
    api.kubectl_ok(&["label", "node", "n1", "kwasm.sh/kwasm-node=true"]);
    wait_label(&api, "n1", Some("true"), &a1);
    assert!(h1.config().contains("runtimes.kwtest]"));
    assert_eq!(
        h2.config(),
        h2.original,
        "the other node's host was touched"
    );
    assert_eq!(api.provisioned_label("n2"), None);
    assert!(!a2.log().contains("restarting containerd"));
    // The agents watch with a field selector on their own node; no agent lists all nodes.
    for r in api.requests() {
        if r["path"] == "/api/v1/nodes" && r["user"] == AGENT_USER {
            assert!(
                r["query"]["fieldSelector"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("metadata.name="),
                "unselective request: {r}"
            );
        }
    }
    api.kubectl_ok(&["label", "node", "n2", "kwasm.sh/kwasm-node=true"]);
    wait_label(&api, "n2", Some("true"), &a2);
}

#[test]
fn a_dropped_watch_resumes_without_missing_the_change() {
    // The API server restarted (a control-plane upgrade): every watch is cut, twice, around the change.
    let dir = tempfile::tempdir().unwrap();
    let mut api = KubeApi::start(dir.path());
    let (_host, a) = host_and_agent(&api, "n1");
    api.restart_server();
    api.kubectl_ok(&["annotate", "node", "n1", "kwasm.sh/kwasm-node=true"]);
    api.restart_server();
    wait_label(&api, "n1", Some("true"), &a);
}

#[test]
fn an_unreachable_api_at_start_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let mut api = KubeApi::start(dir.path());
    api.add_node("n1", "amd64");
    let kc = api.agent_kubeconfig("n1");
    api.stop_server();
    let port = free_port();
    let host = NodeHost::with(agent_settings(port));
    let a = Agent::start(&host, &kc, "n1", port);
    eventually("the agent to serve /healthz", || {
        a.get("/healthz").filter(|(c, _)| *c == 200)
    });
    assert_eq!(
        a.get("/readyz").unwrap().0,
        503,
        "ready without an API server"
    );
    api.start_server();
    api.kubectl_ok(&["annotate", "node", "n1", "kwasm.sh/kwasm-node=true"]);
    wait_label(&api, "n1", Some("true"), &a);
}

#[test]
fn patch_conflicts_are_retried() {
    // The agent's report starts from the Node it last read; the node's kubelet has written since, so
    // the resourceVersion-guarded patch is refused with 409 Conflict by the server — then the agent
    // reads the Node again and its second patch lands, keeping what the kubelet wrote.
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    api.add_node("n1", "amd64");
    std::env::set_var("KUBECONFIG", api.agent_kubeconfig("n1"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let nodes = rt.block_on(async {
        let client = kwasm_agent::kube_client::client("node", Duration::from_secs(90))
            .await
            .unwrap();
        NodeClient::new(client, "n1")
    });
    let read = rt.block_on(nodes.get()).unwrap();
    api.kubectl_ok(&["label", "node", "n1", "written-by=kubelet"]);
    let report = Report {
        provisioned: Some(false),
        status: None,
        shims: &[],
    };
    let after = rt.block_on(nodes.report(&read, report)).unwrap();
    let labels = &after.metadata.labels.unwrap();
    assert_eq!(labels["kwasm.sh/kwasm-provisioned"], "false");
    assert_eq!(
        labels["written-by"], "kubelet",
        "the kubelet's write was lost"
    );
    let agent_patches: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r["user"] == AGENT_USER && r["verb"] == "patch")
        .map(|r| r["code"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(
        agent_patches,
        [409, 200],
        "the agent's patches, as the server answered them"
    );
}

#[test]
fn an_agent_converges_while_its_kubelet_writes_the_node() {
    // The same race from outside: the kubelet writes its status every 50 ms during provisioning.
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    let (_host, a) = host_and_agent(&api, "n1");
    let beats = Heartbeats {
        status_every: Duration::from_millis(50),
        lease_every: Duration::from_secs(3600),
    };
    let kubelet = Kubelets::start(&api, vec!["n1".into()], beats);
    api.kubectl_ok(&["annotate", "node", "n1", "kwasm.sh/kwasm-node=true"]);
    wait_label(&api, "n1", Some("true"), &a);
    assert!(
        kubelet.writes() > 10,
        "the kubelet wrote {}",
        kubelet.writes()
    );
}

#[test]
fn a_failure_is_reported_and_retried_until_the_cause_is_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    let (host, a) = host_and_agent(&api, "n1");
    host.server
        .route("/kwtest.tar.gz", vec![Behavior::Status(404)]);
    api.kubectl_ok(&["annotate", "node", "n1", "kwasm.sh/kwasm-node=true"]);
    let failure = eventually("a ProvisionFailed event", || {
        api.events("n1")
            .into_iter()
            .find(|e| e["reason"] == "ProvisionFailed")
    });
    assert!(
        failure["message"].as_str().unwrap().contains("404"),
        "{failure}"
    );
    assert_eq!(failure["type"], "Warning");
    // While it keeps failing, the node says so: label false, status Failed with the reason.
    for _ in 0..3 {
        assert_eq!(api.provisioned_label("n1").as_deref(), Some("false"));
        let status: serde_json::Value = serde_json::from_str(
            api.node("n1")["metadata"]["annotations"]["kwasm.sh/kwasm-status"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(status["phase"], "Failed", "agent log:\n{}", a.log());
        assert!(status["error"].as_str().unwrap().contains("404"));
        std::thread::sleep(Duration::from_millis(300));
    }
    // Each retry is the same Event, counted as a series on the Node's real UID (kube's Recorder
    // writes events.k8s.io/v1; the core view shows its series, and no deprecated count).
    let uid = api.node("n1")["metadata"]["uid"].clone();
    let repeated = eventually("the failure counted twice", || {
        let failed: Vec<_> = api
            .events("n1")
            .into_iter()
            .filter(|e| e["reason"] == "ProvisionFailed")
            .collect();
        (failed.len() == 1 && failed[0]["series"]["count"].as_i64() >= Some(2))
            .then(|| failed[0].clone())
    });
    assert_eq!(repeated["involvedObject"]["uid"], uid, "{repeated}");
    assert_eq!(repeated["involvedObject"]["kind"], "Node");
    let described = api.kubectl_ok(&["describe", "node", "n1"]);
    assert!(described.contains("ProvisionFailed"), "{described}");
    assert_eq!(host.config(), host.original);
    host.server.route(
        "/kwtest.tar.gz",
        vec![Behavior::Serve(host.archive.clone())],
    );
    wait_label(&api, "n1", Some("true"), &a);
}

#[test]
fn drift_in_the_config_is_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    let (host, a) = host_and_agent(&api, "n1");
    api.kubectl_ok(&["annotate", "node", "n1", "kwasm.sh/kwasm-node=true"]);
    wait_label(&api, "n1", Some("true"), &a);
    // A package upgrade puts the vendor config back.
    std::fs::write(&host.cd.config, &host.original).unwrap();
    eventually("a DriftDetected event", || {
        api.event_reasons("n1")
            .contains(&"DriftDetected".into())
            .then_some(())
    });
    eventually("the entry to be back", || {
        host.config().contains("runtimes.kwtest]").then_some(())
    });
    wait_label(&api, "n1", Some("true"), &a);
}

#[test]
fn sigterm_leaves_the_host_provisioned() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    let (host, a) = host_and_agent(&api, "n1");
    api.kubectl_ok(&["annotate", "node", "n1", "kwasm.sh/kwasm-node=true"]);
    wait_label(&api, "n1", Some("true"), &a);
    let config = host.config();
    let st = a.terminate();
    assert!(st.success(), "agent exit status {st}");
    assert_eq!(host.config(), config);
    assert!(host.binary().exists());
    assert_eq!(api.provisioned_label("n1").as_deref(), Some("true"));
}

#[test]
fn health_endpoints_answer_while_another_agent_holds_the_host_lock() {
    // Two agent pods overlap in a rollout: the new one waits for the host lock. Meanwhile its health
    // endpoints must answer (or the kubelet would kill it) and its watch must stay alive.
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    let (host, a) = host_and_agent(&api, "n1");
    let lock_path = host.sb.path().join("opt/kwasm/lock");
    std::fs::create_dir_all(lock_path.parent().unwrap()).unwrap();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap();
    let held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();
    api.kubectl_ok(&["annotate", "node", "n1", "kwasm.sh/kwasm-node=true"]);
    eventually("the agent to wait for the lock", || {
        a.log()
            .contains("holds the host lock; waiting")
            .then_some(())
    });
    for _ in 0..20 {
        for path in ["/healthz", "/readyz", "/metrics"] {
            let started = Instant::now();
            let (code, _) = a.get(path).expect("an answer");
            let took = started.elapsed();
            assert_eq!(code, 200, "{path}");
            assert!(
                took < Duration::from_millis(100),
                "{path} took {took:?} while the lock was held"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(api.provisioned_label("n1").as_deref(), Some("false"));
    drop(held);
    wait_label(&api, "n1", Some("true"), &a);
}

fn kwasm_marks(node: &serde_json::Value) -> Vec<String> {
    let keys = |m: &serde_json::Value| -> Vec<String> {
        m.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    keys(&node["metadata"]["labels"])
        .into_iter()
        .chain(keys(&node["metadata"]["annotations"]))
        .filter(|k| k.starts_with("kwasm.sh/") && k != "kwasm.sh/kwasm-node")
        .collect()
}

/// The chart's pre-delete hook's identity.
fn uninstall_kubeconfig(api: &KubeApi) -> std::path::PathBuf {
    api.service_account_kubeconfig(UNINSTALL_SA, "kwasm-agent-uninstall", None)
}

fn uninstall(api: &KubeApi, settings: &std::path::Path, timeout: &str) -> kwasm_tests::agent::Run {
    let mut c = agent(&[
        "uninstall",
        "--config",
        settings.to_str().unwrap(),
        "--timeout",
        timeout,
    ]);
    c.env("KUBECONFIG", uninstall_kubeconfig(api));
    kwasm_tests::agent::output(c)
}

#[test]
fn uninstalling_the_chart_first_cleans_every_node_and_says_which_one_blocks() {
    // What the chart's pre-delete hook runs, against two real agents and their containerds.
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    let (h1, a1) = host_and_agent(&api, "n1");
    let (h2, a2) = host_and_agent(&api, "n2");
    api.kubectl_ok(&["annotate", "node", "n1", "kwasm.sh/kwasm-node=true"]);
    api.kubectl_ok(&["label", "node", "n2", "kwasm.sh/kwasm-node=true"]);
    wait_label(&api, "n1", Some("true"), &a1);
    wait_label(&api, "n2", Some("true"), &a2);

    // A pod still runs on n1's shim: the uninstall waits, then fails naming n1 and why.
    let busy = h1.cd.run_container("busy", Some(&h1.binary()));
    let r = uninstall(&api, &h1.sb.settings, "8s");
    r.failed();
    assert!(
        r.reason().contains("n1 (RemoveBlocked")
            && r.reason().contains("still used by running containers"),
        "{}\nn1's agent:\n{}",
        r.reason(),
        a1.log()
    );
    assert!(!r.reason().contains("n2 ("), "n2 was clean: {}", r.reason());
    assert_eq!(h1.cd.task_pid("busy"), Some(busy), "the pod was disturbed");
    assert_eq!(h2.config(), h2.original);
    assert!(!h2.binary().exists());

    // Once the pod is gone, the uninstall finishes: both hosts as before, no marks on either node —
    // not even the uninstall's own request.
    h1.cd.stop_container("busy");
    let r = uninstall(&api, &h1.sb.settings, "60s");
    r.ok();
    assert!(
        r.stdout.contains("every node is clean (2 asked)"),
        "{}",
        r.stdout
    );
    for (host, name) in [(&h1, "n1"), (&h2, "n2")] {
        assert_eq!(host.config(), host.original, "{name}'s config");
        assert!(!host.binary().exists(), "{name}'s binary");
        let node = api.node(name);
        assert_eq!(kwasm_marks(&node), Vec::<String>::new(), "{name}: {node}");
    }
    // The agents keep the hosts clean while the chart goes, though the trigger is still there and the
    // request is gone: for a while (a property over time, not a wait), nothing comes back.
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < until {
        for (host, name) in [(&h1, "n1"), (&h2, "n2")] {
            assert_eq!(host.config(), host.original, "{name} provisioned again");
            assert_eq!(kwasm_marks(&api.node(name)), Vec::<String>::new(), "{name}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The node's kwasm.sh marks, once they are exactly `want` and the host is as it was.
fn wait_clean_host_with_marks(
    api: &KubeApi,
    host: &NodeHost,
    node: &str,
    want: &[&str],
    a: &Agent,
) {
    let deadline = Instant::now() + WAIT;
    loop {
        let marks = kwasm_marks(&api.node(node));
        if marks == want && host.config() == host.original && !host.binary().exists() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{node} never became clean with marks {want:?} (marks {marks:?}); agent log:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_uninstall_asked_in_an_agents_first_second_is_obeyed() {
    // The race that made main red: `uninstall` asks moments after the agents (re)started, stamping a
    // time at second resolution — or on a machine whose clock is behind the node's. Either way the
    // stamp reads as older than the agent; the agent sees the request arrive, and that is what counts.
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    api.add_node("n1", "amd64");
    api.kubectl_ok(&["annotate", "node", "n1", "kwasm.sh/kwasm-node=true"]);
    let started = std::time::SystemTime::now();
    let port = free_port();
    let host = NodeHost::with(agent_settings(port));
    let a = Agent::start(&host, &api.agent_kubeconfig("n1"), "n1", port);
    wait_label(&api, "n1", Some("true"), &a);
    let before_start = humantime::format_rfc3339_seconds(started - Duration::from_secs(1));
    let request = format!("kwasm.sh/uninstall={before_start}");
    api.kubectl_ok(&["annotate", "node", "n1", &request]);
    wait_clean_host_with_marks(&api, &host, "n1", &["kwasm.sh/uninstall"], &a);
}

#[test]
fn an_agent_restarted_while_uninstall_waits_obeys_it() {
    // The agent dies (OOM, node reboot, a rollout) and `uninstall` asks while it is gone: the next
    // agent finds a request older than itself on its Node, from a command still waiting for it.
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    let (host, mut first) = host_and_agent(&api, "n1");
    api.kubectl_ok(&["annotate", "node", "n1", "kwasm.sh/kwasm-node=true"]);
    wait_label(&api, "n1", Some("true"), &first);
    first.kill();

    let mut c = agent(&[
        "uninstall",
        "--config",
        host.sb.settings.to_str().unwrap(),
        "--timeout",
        "60s",
    ]);
    c.env("KUBECONFIG", uninstall_kubeconfig(&api))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let uninstalling = c.spawn().unwrap();
    eventually("uninstall to ask n1", || {
        api.node("n1")["metadata"]["annotations"]
            .get("kwasm.sh/uninstall")
            .map(|_| ())
    });
    // The settings name the first agent's listen port, free again now.
    let second = Agent::start(&host, &api.agent_kubeconfig("n1"), "n1", first.port);
    let out = uninstalling.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("every node is clean (1 asked)"),
        "{stdout}{}\nthe restarted agent:\n{}",
        String::from_utf8_lossy(&out.stderr),
        second.log()
    );
    wait_clean_host_with_marks(&api, &host, "n1", &[], &second);
}

#[test]
fn a_new_install_ignores_the_uninstall_request_of_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    api.add_node("n1", "amd64");
    // An uninstall that asked long before this agent started.
    api.kubectl_ok(&[
        "annotate",
        "node",
        "n1",
        "kwasm.sh/uninstall=2020-01-01T00:00:00Z",
        "kwasm.sh/kwasm-node=true",
    ]);
    let port = free_port();
    let host = NodeHost::with(agent_settings(port));
    let a = Agent::start(&host, &api.agent_kubeconfig("n1"), "n1", port);
    wait_label(&api, "n1", Some("true"), &a);
    eventually("the stale request to be cleared", || {
        api.node("n1")["metadata"]["annotations"]
            .get("kwasm.sh/uninstall")
            .is_none()
            .then_some(())
    });
}

#[test]
fn the_startup_taint_goes_once_every_shim_is_proven_loaded_and_only_it() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    api.add_tainted_node(
        "n1",
        serde_json::json!([
            {"key": "kwasm.sh/provisioning", "value": "true", "effect": "NoSchedule"},
            {"key": "dedicated", "value": "wasm", "effect": "NoExecute"}
        ]),
    );
    api.allow_startup_taint("kwasm.sh/provisioning");
    let port = free_port();
    let host = NodeHost::with(agent_settings(port));
    let a = Agent::start(&host, &api.agent_kubeconfig("n1"), "n1", port);
    a.wait_ready();
    // Not asked yet: the taint stays (the node is not ready to run anything).
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        api.node("n1")["spec"]["taints"].as_array().unwrap().len(),
        2
    );
    api.kubectl_ok(&["label", "node", "n1", "kwasm.sh/kwasm-node=true"]);
    wait_label(&api, "n1", Some("true"), &a);
    let taints = eventually("the startup taint to go", || {
        let t = api.node("n1")["spec"]["taints"].clone();
        (t.as_array()?.len() == 1).then_some(t)
    });
    assert_eq!(taints[0]["key"], "dedicated", "{taints}");
    let provisioned = api
        .events("n1")
        .into_iter()
        .find(|e| e["reason"] == "Provisioned")
        .unwrap();
    assert!(
        provisioned["message"]
            .as_str()
            .unwrap()
            .contains("removed the startup taint"),
        "{provisioned}"
    );
}
