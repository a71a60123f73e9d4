//! `helm install`, `helm upgrade` and `helm uninstall` for real: Helm v4's own engine
//! (helm-python-sdk, through tests/chart/helm_cli.py) against the tests' API server with a
//! kubeconfig, as a user types them, into a cluster where nothing of the chart exists yet. A real
//! agent on one node works under what the release installs (its RBAC, its admission policies); the
//! pre-delete hook's Job is run by the harness as a kubelet would run its pod (`job_kubelet`).

use std::path::Path;

use kwasm_tests::agent::{eventually, RunningAgent};
use kwasm_tests::helm::{helm, python};
use kwasm_tests::job_kubelet::running_jobs;
use kwasm_tests::kube_api::{free_port, KubeApi, NAMESPACE};
use kwasm_tests::node_host::NodeHost;

fn names(api: &KubeApi, kinds: &str) -> String {
    api.kubectl_ok(&["get", kinds, "-A", "-o", "name"])
}

#[test]
fn helm_installs_upgrades_and_uninstalls_the_chart_and_its_hook_cleans_every_node() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start_empty(dir.path());
    let values = serde_json::json!({});
    let installed = helm(&python, &api, "install", values).unwrap();
    assert_eq!(
        installed["status"], "deployed",
        "helm install: {}",
        installed["status"]
    );
    let objects = names(
        &api,
        "daemonset,configmap,runtimeclass,clusterrole,validatingadmissionpolicy,crd",
    );
    for want in [
        "daemonset.apps/kwasm-agent",
        "configmap/kwasm-agent-config",
        "runtimeclass.node.k8s.io/wasmtime-spin-v2",
        "clusterrole.rbac.authorization.k8s.io/kwasm-agent",
        "validatingadmissionpolicy.admissionregistration.k8s.io/kwasm-agent-own-node",
        "customresourcedefinition.apiextensions.k8s.io/shims.kwasm.sh",
    ] {
        assert!(
            objects.contains(want),
            "{want} missing after install: {objects}"
        );
    }

    // A node's agent, working under what the release installed.
    api.add_node("n1", "amd64");
    let port = free_port();
    let host =
        NodeHost::with(|_| format!("[agent]\nlisten = \"127.0.0.1:{port}\"\nresync = \"2s\"\n"));
    let agent = RunningAgent::start(&host, &api.agent_kubeconfig("n1"), "n1", port);
    agent.wait_ready();
    api.kubectl_ok(&["annotate", "node", "n1", "kwasm.sh/kwasm-node=true"]);
    eventually("n1 provisioned", || {
        (api.provisioned_label("n1").as_deref() == Some("true")).then_some(())
    });

    // An upgrade that changes the catalog: a second shim, its RuntimeClass with it.
    let mut upgraded: serde_json::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("chart/values/several-shims.yaml"),
        )
        .unwrap(),
    )
    .unwrap();
    upgraded["fleet"] = serde_json::json!({"maxConcurrentRestarts": 3});
    let release = helm(&python, &api, "upgrade", upgraded).unwrap();
    assert_eq!(
        (release["status"].as_str(), release["revision"].as_i64()),
        (Some("deployed"), Some(2))
    );
    let settings = api.kubectl_ok(&[
        "get",
        "configmap",
        "-n",
        NAMESPACE,
        "kwasm-agent-config",
        "-o",
        "jsonpath={.data.config\\.toml}",
    ]);
    assert!(
        settings.contains("max_concurrent_restarts = 3"),
        "{settings}"
    );
    let classes = names(&api, "runtimeclass");
    assert!(classes.lines().count() >= 2, "{classes}");

    // Uninstall: the pre-delete hook asks every node to undo everything and waits for it.
    let (uninstalled, jobs) = running_jobs(&api, NAMESPACE, || {
        helm(&python, &api, "uninstall", serde_json::json!({}))
    });
    uninstalled.unwrap_or_else(|e| panic!("{e}\njobs: {jobs:#?}\nagent:\n{}", agent.log()));
    assert_eq!(jobs.len(), 1, "{jobs:#?}");
    assert!(
        jobs[0].contains("exit 0") && jobs[0].contains("every node is clean (1 asked)"),
        "{jobs:#?}"
    );
    assert_eq!(
        host.config(),
        host.original,
        "n1's containerd config after the uninstall"
    );
    assert!(!host.binary().exists());
    let left = names(&api, "daemonset,configmap,runtimeclass,clusterrole,clusterrolebinding,role,rolebinding,validatingadmissionpolicy,validatingadmissionpolicybinding,job,serviceaccount");
    let ours: Vec<&str> = left.lines().filter(|l| l.contains("kwasm")).collect();
    assert!(ours.is_empty(), "left behind by the uninstall: {ours:?}");
    // Helm never deletes a CRD (nor the Shims in it): that is the operator's call.
    assert!(names(&api, "crd").contains("shims.kwasm.sh"));
}
