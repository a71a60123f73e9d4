//! `helm test` for real: the chart's test pod for a shim — a WebAssembly workload on that shim's
//! RuntimeClass — created by Helm's engine against the tests' API server, scheduled only once the
//! agent proved the handler loaded on the node, and run there through containerd's CRI on the wasm
//! shim (tests/wasm-shim, built from runwasi's crates) by the harness's kubelet (`pod_kubelet`);
//! Helm passes it on the pod's success and fails it when the workload finds its input wrong.

use kwasm_tests::agent::{eventually, RunningAgent};
use kwasm_tests::built::wasm_shim_archive;
use kwasm_tests::helm::{helm, python};
use kwasm_tests::kube_api::{free_port, KubeApi, NAMESPACE};
use kwasm_tests::node_host::{NodeHost, TestShim};
use kwasm_tests::pod_kubelet::running_test_pods;
use kwasm_tests::workloads::{self, SELFTEST_WASM};

fn values(host: &NodeHost, args: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "artifacts": {"allowHttp": true},
        "shims": [{
            "name": "wasmtime", "runtimeType": "io.containerd.wasmtime.v1",
            "binary": "containerd-shim-wasmtime-v1", "version": "v1.0.0",
            "platforms": [{"arch": "amd64", "url": host.server.url("/wasmtime.tar.gz"),
                           "sha256": kwasm_tests::archive::sha256(&host.archive)}],
            "test": {"image": SELFTEST_WASM, "args": args, "env": {"KWASM_TEST": "ok"}}
        }]
    })
}

#[test]
fn helm_test_runs_each_shims_wasm_workload_on_its_runtime_class() {
    let (Some(python), Some(archive)) = (python(), wasm_shim_archive()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start_empty(dir.path());
    let shim = TestShim {
        name: "wasmtime".into(),
        binary: "containerd-shim-wasmtime-v1".into(),
        runtime_type: "io.containerd.wasmtime.v1".into(),
        archive,
    };
    let port = free_port();
    let host = NodeHost::serving(shim, "", |_| {
        format!("[agent]\nlisten = \"127.0.0.1:{port}\"\nresync = \"2s\"\n")
    });
    workloads::import_all(&host.cd, &host.sb.path().join("work"));
    let installed = helm(&python, &api, "install", values(&host, &["kwasm"])).unwrap();
    assert_eq!(installed["status"], "deployed");
    api.add_node("n1", "amd64");
    let agent = RunningAgent::start(&host, &api.agent_kubeconfig("n1"), "n1", port);
    agent.wait_ready();

    // Before the node is ready the test pod has nowhere to run: Helm would wait. Provisioned first.
    api.kubectl_ok(&["annotate", "node", "n1", "kwasm.sh/kwasm-node=true"]);
    eventually("the wasmtime handler proven on n1", || {
        (api.node("n1")["metadata"]["labels"]["kwasm.sh/shim.wasmtime"] == "true").then_some(())
    });
    let (tested, ran) = running_test_pods(&api, NAMESPACE, "n1", &host.cd.socket, || {
        helm(&python, &api, "test", serde_json::json!({}))
    });
    tested.unwrap_or_else(|e| panic!("helm test: {e}\nran: {ran:?}\nagent:\n{}", agent.log()));
    assert_eq!(ran.len(), 1, "{ran:?}");
    let (pod, code, log) = &ran[0];
    assert_eq!(
        (pod.as_str(), *code, log.as_str()),
        ("kwasm-agent-test-wasmtime", 0, "kwasm helm test: ok\n")
    );
    // Helm deletes a test pod that succeeded (its hook-delete-policy).
    eventually("the test pod gone", || {
        (!api
            .kubectl(&["get", "pod", "-n", NAMESPACE, pod])
            .status
            .success())
        .then_some(())
    });

    // The workload given the wrong input fails, and so does `helm test`.
    helm(&python, &api, "upgrade", values(&host, &["something else"])).unwrap();
    let (tested, ran) = running_test_pods(&api, NAMESPACE, "n1", &host.cd.socket, || {
        helm(&python, &api, "test", serde_json::json!({}))
    });
    let refused = tested.expect_err("helm test passed a failing workload");
    assert!(refused.contains("kwasm-agent-test-wasmtime"), "{refused}");
    assert_eq!(ran[0].1, 1, "{ran:?}");
    assert_eq!(
        ran[0].2,
        "kwasm helm test: unexpected arguments or environment\n"
    );
}
