//! `helm test`'s pods run as a kubelet would run them, played by the test harness: each new test
//! pod (annotation `helm.sh/hook: test`) of a namespace, once, on the one node given — only if the
//! pod's RuntimeClass selects that node, as the scheduler would place it — through containerd's
//! CRI with the RuntimeClass's handler, its container's image, args and environment; then its
//! status written as the kubelet writes it (phase Succeeded or Failed, the container's exit code),
//! which is what `helm test` waits for.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::cri::{Container, Cri};
use crate::kube_api::KubeApi;

/// One test pod as it ran: (pod name, exit code, its log).
pub type Ran = (String, i32, String);

/// `f()`, while the test pods of `namespace` that appear meanwhile run on node `node` (its
/// containerd at `socket`); what `f` returned, and how each pod ran.
pub fn running_test_pods<T>(
    api: &KubeApi,
    namespace: &str,
    node: &str,
    socket: &Path,
    f: impl FnOnce() -> T,
) -> (T, Vec<Ran>) {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let kubelet = scope.spawn(|| {
            let mut cri = Cri::connect(socket);
            let (mut done, mut ran) = (HashSet::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let out = api.kubectl(&["get", "pods", "-n", namespace, "-o", "json"]);
                let pods: serde_json::Value =
                    serde_json::from_slice(&out.stdout).unwrap_or_default();
                for pod in pods["items"].as_array().into_iter().flatten() {
                    let test = pod["metadata"]["annotations"]["helm.sh/hook"] == "test";
                    let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_owned();
                    if test && schedulable(api, node, pod) && done.insert(uid) {
                        ran.push(run(api, &mut cri, namespace, pod));
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            cri.remove_all_pods();
            ran
        });
        let out = f();
        stop.store(true, Ordering::Relaxed);
        (out, kubelet.join().unwrap())
    })
}

/// The pod's RuntimeClass's node selector matches the node's labels.
fn schedulable(api: &KubeApi, node: &str, pod: &serde_json::Value) -> bool {
    let Some(class) = pod["spec"]["runtimeClassName"].as_str() else {
        return true;
    };
    let rc = api.kubectl(&["get", "runtimeclass", class, "-o", "json"]);
    let rc: serde_json::Value = serde_json::from_slice(&rc.stdout).unwrap_or_default();
    let labels = api.node(node)["metadata"]["labels"].clone();
    (rc["scheduling"]["nodeSelector"]
        .as_object()
        .into_iter()
        .flatten())
    .all(|(k, v)| labels[k] == *v)
}

fn run(api: &KubeApi, cri: &mut Cri, ns: &str, pod: &serde_json::Value) -> Ran {
    let name = pod["metadata"]["name"].as_str().unwrap_or("").to_owned();
    let handler = pod["spec"]["runtimeClassName"]
        .as_str()
        .map(|class| api.kubectl_ok(&["get", "runtimeclass", class, "-o", "jsonpath={.handler}"]))
        .unwrap_or_else(|| "runc".into());
    let c = &pod["spec"]["containers"][0];
    let strings = |v: &serde_json::Value| -> Vec<String> {
        (v.as_array().into_iter().flatten())
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    let (image, args) = (
        c["image"].as_str().unwrap_or("").to_owned(),
        strings(&c["args"]),
    );
    let env: Vec<(String, String)> = (c["env"].as_array().into_iter().flatten())
        .map(|e| {
            (
                e["name"].as_str().unwrap_or("").to_owned(),
                e["value"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
    let logs = api.kubeconfig.with_file_name(format!("pod-{name}-{uid}"));
    let sandbox = cri
        .run_pod(&name, &handler, &logs)
        .expect("the test pod's sandbox");
    let mut container = Container::new("workload", &image);
    container.args = args.iter().map(String::as_str).collect();
    container.env = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let id = cri
        .start(&sandbox, &container)
        .expect("the test pod's container");
    let exited = cri.wait_exited(&sandbox, "workload", &id, Duration::from_secs(60));
    let phase = if exited.exit_code == 0 {
        "Succeeded"
    } else {
        "Failed"
    };
    let status = serde_json::json!({"status": {"phase": phase, "containerStatuses": [{
        "name": "workload", "image": image, "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": exited.exit_code, "reason": if exited.exit_code == 0 { "Completed" } else { "Error" }}}}]}});
    api.kubectl_ok(&[
        "patch",
        "pod",
        "-n",
        ns,
        &name,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ]);
    (name, exited.exit_code, exited.log)
}
