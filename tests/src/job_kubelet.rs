//! Jobs run as a kubelet (and the Job controller) would run them, played by the test harness: each
//! new Job of a namespace, once: its pod's command is the agent's own binary with the pod's args,
//! its settings file the ConfigMap its pod mounts, its identity its service account's token; the
//! Job then marked Complete or Failed, as the Job controller marks it (what `helm` waits for).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::kube_api::KubeApi;

/// What a Job's pod runs: the agent's args, with the path its ConfigMap is mounted at.
struct JobPod {
    args: Vec<String>,
    config_map: String,
    mount: String,
    service_account: String,
}

/// `f()`, while the Jobs of `namespace` that appear meanwhile are run; what `f` returned, and what
/// each Job printed (its name, exit status and output).
pub fn running_jobs<T>(api: &KubeApi, namespace: &str, f: impl FnOnce() -> T) -> (T, Vec<String>) {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let kubelet = scope.spawn(|| {
            let mut done = HashSet::new();
            let mut ran = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let out = api.kubectl(&["get", "jobs", "-n", namespace, "-o", "json"]);
                let jobs: serde_json::Value =
                    serde_json::from_slice(&out.stdout).unwrap_or_default();
                for job in jobs["items"].as_array().into_iter().flatten() {
                    let uid = job["metadata"]["uid"].as_str().unwrap_or("").to_owned();
                    if done.insert(uid) {
                        ran.push(run(api, namespace, job));
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            ran
        });
        let out = f();
        stop.store(true, Ordering::Relaxed);
        (out, kubelet.join().unwrap())
    })
}

fn pod_of(job: &serde_json::Value) -> JobPod {
    let spec = &job["spec"]["template"]["spec"];
    let container = &spec["containers"][0];
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    let volume = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["configMap"].is_object())
        .cloned()
        .unwrap_or_default();
    let mount = container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == volume["name"])
        .and_then(|m| m["mountPath"].as_str())
        .unwrap_or("")
        .to_owned();
    JobPod {
        args: strings(&container["args"]),
        config_map: volume["configMap"]["name"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
        mount,
        service_account: spec["serviceAccountName"]
            .as_str()
            .unwrap_or("default")
            .to_owned(),
    }
}

fn run(api: &KubeApi, ns: &str, job: &serde_json::Value) -> String {
    let name = job["metadata"]["name"].as_str().unwrap_or("").to_owned();
    let pod = pod_of(job);
    // The ConfigMap's files where the pod would see them (under a directory of the test's).
    let files = api.kubeconfig.with_file_name(format!("job-{name}"));
    std::fs::create_dir_all(&files).unwrap();
    let cm: serde_json::Value = serde_json::from_str(&api.kubectl_ok(&[
        "get",
        "configmap",
        "-n",
        ns,
        &pod.config_map,
        "-o",
        "json",
    ]))
    .unwrap();
    for (file, text) in cm["data"].as_object().into_iter().flatten() {
        std::fs::write(files.join(file), text.as_str().unwrap_or("")).unwrap();
    }
    let args: Vec<String> = (pod.args.iter())
        .map(|a| a.replace(&pod.mount, files.to_str().unwrap()))
        .collect();
    let kubeconfig =
        api.service_account_kubeconfig(&pod.service_account, &format!("{name}-pod"), None);
    let mut c = crate::agent::agent(&args.iter().map(String::as_str).collect::<Vec<_>>());
    c.env("KUBECONFIG", kubeconfig).env("POD_NAMESPACE", ns);
    let run = crate::agent::output(c);
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (kind, count) = match run.code {
        0 => ("Complete", "succeeded"),
        _ => ("Failed", "failed"),
    };
    let status = serde_json::json!({"status": {
        count: 1, "startTime": now, "completionTime": if run.code == 0 { Some(&now) } else { None },
        "conditions": [{"type": kind, "status": "True", "lastTransitionTime": now, "lastProbeTime": now}]}});
    api.kubectl_ok(&[
        "patch",
        "job",
        "-n",
        ns,
        &name,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ]);
    format!(
        "job {name}: exit {}\n{}{}",
        run.code, run.stdout, run.stderr
    )
}
