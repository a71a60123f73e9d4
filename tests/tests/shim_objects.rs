//! The cluster catalog end to end: Shim objects applied with the real `kubectl` to a real API server,
//! real agents on several sandbox nodes (each its own containerd with a live container), and the
//! catalog controller writing each Shim's status and keeping its RuntimeClass. A Shim applied
//! provisions every node and reads N/N; a wrong digest reads Degraded with the nodes' reasons, as
//! Events too; a new version rolls beside the running one without disturbing a container; a deleted
//! Shim leaves its nodes (waiting for the container still on it) and takes its RuntimeClass along.
//! runtime-class-manager's manifests, as its docs write them, go through `kwasm-agent import-shim`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kwasm_tests::agent::{agent, eventually, http_get, output, RunningAgent, RunningCatalog};
use kwasm_tests::archive::{release, sha256};
use kwasm_tests::artifact_server::{ArtifactServer, Behavior};
use kwasm_tests::kube_api::{free_port, KubeApi, CATALOG_SA};
use kwasm_tests::node_host::{cluster_node, NodeHost, SHIM_BIN};

const NODES: usize = 3;

struct CatalogNode {
    name: String,
    host: NodeHost,
    agent: RunningAgent,
    live: i32,
}

/// Nodes whose settings hold no shim at all: everything they install comes from Shim objects.
fn nodes(api: &KubeApi) -> Vec<CatalogNode> {
    (0..NODES)
        .map(|i| {
            let name = format!("n{i}");
            let settings = |port| {
                format!(
                    "[agent]\nlisten = \"127.0.0.1:{port}\"\nresync = \"2s\"\nmax_backoff = \"2s\"\n\n[fleet]\nmax_concurrent_restarts = 1\nlease_namespace = \"kube-system\"\nlease_duration = \"30s\"\n\n[catalog]\nshim_objects = true\nlease_namespace = \"kube-system\"\nstatus_interval = \"200ms\"\n"
                )
            };
            let without_shims = |host: &NodeHost| {
                let settings = std::fs::read_to_string(&host.sb.settings).unwrap();
                host.sb
                    .write_settings(settings.split("[[shims]]").next().unwrap());
            };
            let live = format!("live-{name}");
            let (n, ()) = cluster_node(api, &name, &live, settings, without_shims);
            CatalogNode {
                name: n.name,
                host: n.host,
                agent: n.agent,
                live: n.live,
            }
        })
        .collect()
}

fn shim_yaml(version: &str, url: &str, digest: &str) -> String {
    format!(
        "apiVersion: kwasm.sh/v1alpha1\nkind: Shim\nmetadata:\n  name: kwtest\nspec:\n  runtimeType: io.containerd.kwtest.v2\n  binary: {SHIM_BIN}\n  version: {version}\n  platforms:\n    - arch: amd64\n      url: {url}\n      sha256: \"{digest}\"\n  runtimeClass:\n    name: kwtest-class\n"
    )
}

fn kubectl_apply(api: &KubeApi, yaml: &str) {
    api.kubectl_stdin(&["apply", "-f", "-"], yaml);
}

/// `kubectl get shims` as an operator reads it: NAME → the row's columns.
fn shims_table(api: &KubeApi) -> Vec<Vec<String>> {
    api.kubectl_ok(&["get", "shims"])
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// One cell of `kubectl get shims`, cut at the header's offsets (an empty cell is blank there).
fn column(api: &KubeApi, name: &str, header: &str) -> Option<String> {
    let text = api.kubectl_ok(&["get", "shims"]);
    let mut lines = text.lines();
    let head = lines.next()?;
    let start = head.find(header)?;
    let end = head[start..]
        .find(char::is_whitespace)
        .map(|w| {
            start
                + w
                + head[start + w..]
                    .find(|c: char| !c.is_whitespace())
                    .unwrap_or(0)
        })
        .unwrap_or(usize::MAX);
    let row = lines.find(|l| l.split_whitespace().next() == Some(name))?;
    let cell = row.get(start..end.min(row.len())).unwrap_or_default();
    Some(cell.trim().to_owned())
}

fn ready_column(api: &KubeApi, name: &str) -> Option<String> {
    column(api, name, "READY")
}

fn condition(shim: &serde_json::Value, kind: &str) -> (String, String, String) {
    let c = shim["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind).cloned())
        .unwrap_or_default();
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
    (s("status"), s("reason"), s("message"))
}

fn shim(api: &KubeApi, name: &str) -> serde_json::Value {
    serde_json::from_str(&api.kubectl_ok(&["get", "shim", name, "-o", "json"])).unwrap()
}

/// `kubectl delete shim`, and its RuntimeClass goes with it (owner garbage collection).
fn delete_and_see_its_runtime_class_go(api: &KubeApi, shim: &str, runtime_class: &str) {
    api.kubectl_ok(&["delete", "shim", shim]);
    eventually(
        &format!("RuntimeClass {runtime_class} to go with Shim {shim}"),
        || {
            let gone = !api
                .kubectl(&["get", "runtimeclass", runtime_class])
                .status
                .success();
            gone.then_some(())
        },
    );
}

/// The container started before anything: same PID as at the start.
fn live_undisturbed(n: &CatalogNode) {
    assert_eq!(
        n.host.cd.task_pid(&format!("live-{}", n.name)),
        Some(n.live),
        "{}'s live container was disturbed",
        n.name
    );
}

fn logs(nodes: &[CatalogNode], catalog: &RunningCatalog) -> String {
    let mut out = format!("catalog:\n{}\n", catalog.log());
    for n in nodes {
        out += &format!("{}:\n{}\n", n.name, n.agent.log());
    }
    out
}

#[test]
fn a_shim_object_rolls_out_reports_its_status_upgrades_in_place_and_leaves_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let api = &KubeApi::start(dir.path());
    let nodes = nodes(api);
    for n in &nodes {
        n.agent.wait_ready();
    }
    let catalog = RunningCatalog::start(
        &nodes[0].host.sb.settings,
        &catalog_kubeconfig(api, "catalog-0"),
        "catalog-0",
        dir.path().join("catalog.log"),
    );
    api.kubectl_ok(&["annotate", "node", "--all", "kwasm.sh/kwasm-node=true"]);

    let server = &nodes[0].host.server;
    applied_shim_converges(api, &nodes, server);
    // A container on the shim, on n0: it must survive the upgrade, and hold back the removal.
    let on_shim = nodes[0]
        .host
        .cd
        .run_container("on-kwtest", Some(&nodes[0].host.binary()));

    wrong_digest_reads_degraded(api, server);
    new_version_rolls_in_place(api, &nodes, &catalog, server, on_shim);
    deleted_shim_leaves_its_nodes(api, &nodes, on_shim);
}

/// Applied: every node installs it and the Shim reads 3/3, with its RuntimeClass owned by it.
fn applied_shim_converges(api: &KubeApi, nodes: &[CatalogNode], server: &ArtifactServer) {
    let v1 = &nodes[0].host.archive;
    kubectl_apply(
        api,
        &shim_yaml("v1.0.0", &server.url("/kwtest.tar.gz"), &sha256(v1)),
    );
    eventually("kubectl get shims to read 3/3", || {
        (ready_column(api, "kwtest").as_deref() == Some("3/3")).then_some(())
    });
    let table = shims_table(api);
    assert_eq!(
        table[0],
        ["NAME", "RUNTIMECLASS", "VERSION", "READY", "AGE"],
        "{table:?}"
    );
    assert_eq!(&table[1][..4], ["kwtest", "kwtest-class", "v1.0.0", "3/3"]);
    let s = shim(api, "kwtest");
    assert_eq!(condition(&s, "Ready").0, "True", "{s}");
    assert_eq!(condition(&s, "Degraded").0, "False", "{s}");
    assert_eq!(s["status"]["versions"], serde_json::json!({"v1.0.0": 3}));
    let rc: serde_json::Value = serde_json::from_str(&api.kubectl_ok(&[
        "get",
        "runtimeclass",
        "kwtest-class",
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(rc["handler"], "kwtest");
    assert_eq!(
        rc["scheduling"]["nodeSelector"]["kwasm.sh/shim.kwtest"],
        "true"
    );
    assert_eq!(
        rc["metadata"]["ownerReferences"][0]["uid"],
        s["metadata"]["uid"]
    );
    for n in nodes {
        assert!(n.host.config().contains("runtimes.kwtest]"), "{}", n.name);
        live_undisturbed(n);
    }
    let describe = api.kubectl_ok(&["describe", "shim", "kwtest"]);
    assert!(
        describe.contains("AllNodesReady") && describe.contains("3 of 3 nodes run v1.0.0"),
        "{describe}"
    );
    assert!(
        describe.contains("Normal") && describe.contains("Ready"),
        "{describe}"
    );
}

/// A second Shim with a wrong digest: Degraded, the nodes and the reason named, as an Event too.
fn wrong_digest_reads_degraded(api: &KubeApi, server: &ArtifactServer) {
    let wrong = "0".repeat(64);
    let broken = shim_yaml("v1.0.0", &server.url("/kwtest.tar.gz"), &wrong)
        .replace("name: kwtest\n", "name: kwbroken\n")
        .replace(
            "runtimeType: io.containerd.kwtest.v2",
            "runtimeType: io.containerd.kwbroken.v2",
        )
        .replace(
            &format!("binary: {SHIM_BIN}"),
            "binary: containerd-shim-kwbroken-v2",
        )
        .replace("name: kwtest-class", "name: kwbroken");
    kubectl_apply(api, &broken);
    let degraded = eventually("kwbroken to read Degraded", || {
        let (status, reason, message) = condition(&shim(api, "kwbroken"), "Degraded");
        (status == "True" && reason == "NodesFailed" && message.starts_with("3 nodes failed"))
            .then_some(message)
    });
    assert!(
        degraded.contains("n0: ") && degraded.contains("sha256"),
        "{degraded}"
    );
    let describe = api.kubectl_ok(&["describe", "shim", "kwbroken"]);
    assert!(
        describe.contains("Warning") && describe.contains("nodes failed: n0: "),
        "{describe}"
    );
    assert_eq!(ready_column(api, "kwbroken").as_deref(), Some("0/3"));
    delete_and_see_its_runtime_class_go(api, "kwbroken", "kwbroken");
}

/// A new version: Progressing while it rolls, then Ready on v2 everywhere; nothing disturbed.
fn new_version_rolls_in_place(
    api: &KubeApi,
    nodes: &[CatalogNode],
    catalog: &RunningCatalog,
    server: &ArtifactServer,
    on_shim: i32,
) {
    let mut bytes = std::fs::read("/usr/bin/containerd-shim-runc-v2").unwrap();
    bytes.extend_from_slice(b"\0kwasm test: version 2\0");
    let v2 = release(SHIM_BIN, &bytes);
    server.route("/kwtest-v2.tar.gz", vec![Behavior::Serve(v2.clone())]);
    let watch = ShimWatch::start(api, "kwtest");
    kubectl_apply(
        api,
        &shim_yaml("v2.0.0", &server.url("/kwtest-v2.tar.gz"), &sha256(&v2)),
    );
    eventually("every node on v2", || {
        let s = shim(api, "kwtest");
        (s["status"]["versions"] == serde_json::json!({"v2.0.0": 3})
            && s["status"]["observedGeneration"] == 2
            && condition(&s, "Ready").0 == "True")
            .then_some(())
    });
    let progressed = watch
        .seen()
        .iter()
        .any(|o| o["status"]["observedGeneration"] == 2 && condition(o, "Progressing").0 == "True");
    assert!(
        progressed,
        "the rollout never read Progressing:\n{}",
        logs(nodes, catalog)
    );
    assert_eq!(
        nodes[0].host.cd.task_pid("on-kwtest"),
        Some(on_shim),
        "the shim's container was disturbed"
    );
    for n in nodes {
        live_undisturbed(n);
        assert_eq!(
            std::fs::read(std::fs::canonicalize(n.host.binary()).unwrap()).unwrap(),
            bytes
        );
    }
}

/// Deleted: n1 and n2 are clean; n0 waits for its container (RemoveBlocked), then is clean too.
fn deleted_shim_leaves_its_nodes(api: &KubeApi, nodes: &[CatalogNode], on_shim: i32) {
    delete_and_see_its_runtime_class_go(api, "kwtest", "kwtest-class");
    for n in &nodes[1..] {
        eventually(&format!("{} clean", n.name), || {
            (n.host.config() == n.host.original && !n.host.binary().exists()).then_some(())
        });
    }
    eventually("n0 to say RemoveBlocked", || {
        api.event_reasons("n0")
            .contains(&"RemoveBlocked".to_owned())
            .then_some(())
    });
    assert_eq!(nodes[0].host.cd.task_pid("on-kwtest"), Some(on_shim));
    assert!(
        nodes[0].host.binary().exists(),
        "removed under a running container"
    );
    nodes[0].host.cd.stop_container("on-kwtest");
    eventually("n0 clean once its container is gone", || {
        (nodes[0].host.config() == nodes[0].host.original && !nodes[0].host.binary().exists())
            .then_some(())
    });
    for n in nodes {
        live_undisturbed(n);
        assert_eq!(
            api.node(&n.name)["metadata"]["labels"]["kwasm.sh/kwasm-provisioned"],
            "true"
        );
    }
}

/// runtime-class-manager's sample Shim as its repository ships it (config/samples/test_shim_spin.yaml).
const RCM_SAMPLE: &str = r#"apiVersion: runtime.spinkube.dev/v1alpha1
kind: Shim
metadata:
  name: spin-v2
  labels:
    app.kubernetes.io/name: spin-v2
    app.kubernetes.io/part-of: runtime-class-manager
spec:
  nodeSelector:
    spin: "true"

  fetchStrategy:
    type: anonymousHttp
    anonHttp:
      location: "https://github.com/spinframework/containerd-shim-spin/releases/download/v0.19.0/containerd-shim-spin-v2-linux-aarch64.tar.gz"

  containerdRuntimeOptions:
    SystemdCgroup: "true"

  runtimeClass:
    name: wasmtime-spin-v2
    handler: spin-v2

  rolloutStrategy:
    type: recreate
"#;

/// The same with pinned platforms, as its CRD allows (fetchStrategy.platforms[]).
const RCM_PLATFORMS: &str = r#"apiVersion: runtime.spinkube.dev/v1alpha1
kind: Shim
metadata:
  name: spin-v2-pinned
spec:
  fetchStrategy:
    type: anonymousHttp
    platforms:
      - os: linux
        arch: amd64
        location: "https://github.com/spinframework/containerd-shim-spin/releases/download/v0.23.0/containerd-shim-spin-v2-linux-x86_64.tar.gz"
        sha256: eec8df96fa3a4fe5dbc57ffb706461692c055299dd6d22dff9444863a2a12281
      - os: linux
        arch: arm64
        location: "https://github.com/spinframework/containerd-shim-spin/releases/download/v0.23.0/containerd-shim-spin-v2-linux-aarch64.tar.gz"
        sha256: a923f08d91c110d2cda29fbc380273e6d0a97aa0bab455c55f613c8d5a8bfbe4
  runtimeClass:
    name: spin-pinned
    handler: spin-v2
  rolloutStrategy:
    type: rolling
    rolling:
      maxUpdate: 0
"#;

fn import(dir: &Path, docs: &str, extra: &[&str]) -> kwasm_tests::agent::Run {
    let file = dir.join("rcm.yaml");
    std::fs::write(&file, docs).unwrap();
    output(agent(
        &[&["import-shim", file.to_str().unwrap()], extra].concat(),
    ))
}

#[test]
fn runtime_class_managers_manifests_become_shims_kubectl_applies() {
    let dir = tempfile::tempdir().unwrap();
    let api = &KubeApi::start(dir.path());

    // The sample has no digest: refused unless unverified downloads are allowed; nothing printed.
    let both = format!("{RCM_SAMPLE}---\n{RCM_PLATFORMS}");
    let r = import(dir.path(), &both, &[]);
    r.failed();
    assert!(r.stdout.is_empty(), "half a catalog printed: {}", r.stdout);
    assert!(
        r.reason().contains("document 1 (spin-v2)") && r.reason().contains("no sha256"),
        "{}",
        r.reason()
    );
    // A field we cannot honour is named with why.
    let r = import(
        dir.path(),
        &RCM_PLATFORMS.replace("maxUpdate: 0", "maxUpdate: 2"),
        &[],
    );
    r.failed();
    assert!(
        r.reason()
            .contains("spec.rolloutStrategy.rolling.maxUpdate 2"),
        "{}",
        r.reason()
    );

    let r = import(dir.path(), &both, &["--allow-unverified"]);
    r.ok();
    kubectl_apply(api, &r.stdout);
    assert_eq!(
        column(api, "spin-v2", "VERSION").as_deref(),
        Some("v0.19.0")
    );
    assert_eq!(
        column(api, "spin-v2-pinned", "VERSION").as_deref(),
        Some("v0.23.0")
    );
    let sample = shim(api, "spin-v2");
    assert_eq!(sample["spec"]["binary"], "containerd-shim-spin-v2");
    assert_eq!(sample["spec"]["runtimeType"], "io.containerd.spin.v2");
    assert_eq!(sample["spec"]["version"], "v0.19.0");
    assert_eq!(sample["spec"]["platforms"][0]["arch"], "arm64");
    assert_eq!(sample["spec"]["options"]["SystemdCgroup"], true);
    assert_eq!(sample["spec"]["nodeSelector"]["spin"], "true");
    assert_eq!(sample["spec"]["runtimeClass"]["name"], "wasmtime-spin-v2");
    let pinned = shim(api, "spin-v2-pinned");
    assert_eq!(pinned["spec"]["handler"], "spin-v2");
    assert_eq!(pinned["spec"]["platforms"].as_array().unwrap().len(), 2);
}

#[test]
fn the_docs_shim_example_is_one_the_api_server_and_the_agents_accept() {
    let readme = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/shim-objects.md"),
    )
    .unwrap();
    let start = readme
        .find("apiVersion: kwasm.sh/v1alpha1\nkind: Shim\n")
        .expect("docs/shim-objects.md's Shim example");
    let example = &readme[start..start + readme[start..].find("```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    let api = &KubeApi::start(dir.path());
    import(dir.path(), example, &[]).ok();
    kubectl_apply(api, example);
    assert_eq!(column(api, "spin", "VERSION").as_deref(), Some("v0.23.0"));
}

#[test]
fn one_catalog_replica_leads_and_a_standby_takes_over_when_it_dies() {
    let dir = tempfile::tempdir().unwrap();
    let api = &KubeApi::start(dir.path());
    kubectl_apply(
        api,
        &shim_yaml(
            "v1.0.0",
            "https://example.com/kwtest.tar.gz",
            &"a".repeat(64),
        ),
    );
    api.add_node("n0", "amd64");
    api.kubectl_ok(&["annotate", "node", "n0", "kwasm.sh/kwasm-node=true"]);
    let ports = [free_port(), free_port()];
    let mut replicas: Vec<Option<RunningCatalog>> = (0..2)
        .map(|i| {
            let settings = dir.path().join(format!("catalog-{i}.toml"));
            std::fs::write(
                &settings,
                format!("[catalog]\nlease_namespace = \"kube-system\"\nlease_duration = \"3s\"\nstatus_interval = \"100ms\"\nlisten = \"127.0.0.1:{}\"\n", ports[i]),
            )
            .unwrap();
            let log = dir.path().join(format!("catalog-{i}.log"));
            Some(RunningCatalog::start(
                &settings,
                &catalog_kubeconfig(api, &format!("catalog-{i}")),
                &format!("catalog-{i}"),
                log,
            ))
        })
        .collect();
    eventually("the status written", || {
        (ready_column(api, "kwtest").as_deref() == Some("0/1")).then_some(())
    });
    let holder = || -> Option<String> {
        let out = api.kubectl(&[
            "get",
            "lease",
            "-n",
            "kube-system",
            "kwasm-catalog",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ]);
        Some(String::from_utf8_lossy(&out.stdout).into_owned()).filter(|h| !h.is_empty())
    };
    let leader = eventually("a leader", holder);
    let index: usize = leader.trim_start_matches("catalog-").parse().unwrap();
    let standby = replicas[1 - index].as_ref().unwrap();
    eventually("the other replica to stand by", || {
        standby.log().contains("standing by").then_some(())
    });
    assert!(
        !standby.log().contains("Shim status"),
        "the standby wrote: {}",
        standby.log()
    );
    // Leader and standby are both live (their Lease loops turn) and both ready.
    for port in ports {
        for path in ["/healthz", "/readyz"] {
            let (code, body) = http_get(port, path).expect("the catalog's health endpoint");
            assert_eq!(code, 200, "{path} on {port}: {body}");
        }
    }

    // The leader dies without a word (SIGKILL): the standby takes over once the Lease expires and
    // writes what changed meanwhile.
    replicas[index].take().unwrap();
    api.kubectl_ok(&[
        "label",
        "node",
        "n0",
        "kwasm.sh/shim.kwtest=true",
        "kwasm.sh/version.kwtest=v1.0.0",
    ]);
    eventually("the standby to write the status", || {
        (ready_column(api, "kwtest").as_deref() == Some("1/1")).then_some(())
    });
    assert_eq!(
        holder().as_deref(),
        Some(format!("catalog-{}", 1 - index).as_str())
    );
}

/// The cluster collects garbage both ways a dependent can outlive its owner: deleted with it, and
/// written after it went (a controller that had not yet seen the deletion — what the catalog does
/// when it sees its RuntimeClass go before the Shim). kube-controller-manager's job, played by the
/// test server's collector: this proves the harness does what the catalog relies on.
#[test]
fn the_cluster_collects_a_runtime_class_whose_shim_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let api = &KubeApi::start(dir.path());
    kubectl_apply(
        api,
        &shim_yaml("v1", "http://127.0.0.1:9/x.tgz", &"0".repeat(64)),
    );
    let uid = shim(api, "kwtest")["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    let owned = format!(
        "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata:\n  name: kwtest-class\n  ownerReferences:\n    - apiVersion: kwasm.sh/v1alpha1\n      kind: Shim\n      name: kwtest\n      uid: {uid}\n      controller: true\nhandler: kwtest\n"
    );
    kubectl_apply(api, &owned);
    delete_and_see_its_runtime_class_go(api, "kwtest", "kwtest-class");

    kubectl_apply(api, &owned);
    eventually(
        "a RuntimeClass whose only owner is gone to be collected",
        || {
            let gone = !api
                .kubectl(&["get", "runtimeclass", "kwtest-class"])
                .status
                .success();
            gone.then_some(())
        },
    );
}

fn catalog_kubeconfig(api: &KubeApi, pod: &str) -> PathBuf {
    api.service_account_kubeconfig(CATALOG_SA, pod, None)
}

/// `kubectl get shim NAME --watch -o json` running: every version of the Shim the server sent.
struct ShimWatch {
    child: std::process::Child,
    out: PathBuf,
}

impl ShimWatch {
    fn start(api: &KubeApi, name: &str) -> Self {
        let out = api.kubeconfig.with_file_name(format!("watch-{name}.json"));
        let child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&api.kubeconfig)
            .args(["get", "shim", name, "--watch", "-o", "json"])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self { child, out }
    }

    fn seen(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        serde_json::Deserializer::from_str(&text)
            .into_iter::<serde_json::Value>()
            .map_while(Result::ok)
            .collect()
    }
}

impl Drop for ShimWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
