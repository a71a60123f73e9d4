//! A real Kubernetes API server for the cluster tests: tests/kube-apiserver (Kubernetes' own server
//! libraries, built by scripts/kube-apiserver.sh) on its own etcd, both on loopback with their data
//! in the test's directory, stopped by PID. Holding the chart's access rules (its RBAC, admission
//! policies and Shim CRD, from manifests/), so an agent's requests are allowed or refused as in a
//! cluster the chart was installed in. The real `kubectl` and the agents reach it through
//! kubeconfigs: an administrator's, and one per agent with the identity a bound pod token gives.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::agent::WAIT;

/// The namespace the chart is installed in, for the tests (the agents' Leases live there).
pub const NAMESPACE: &str = "kube-system";
/// The agents' service account, as the chart names it.
pub const AGENT_SA: &str = "kwasm-agent";
/// The catalog controller's, and the uninstall hook's.
pub const CATALOG_SA: &str = "kwasm-agent-catalog";
pub const UNINSTALL_SA: &str = "kwasm-agent-uninstall";

pub struct KubeApi {
    dir: PathBuf,
    etcd: Option<Child>,
    server: Option<Child>,
    pub port: u16,
    etcd_port: u16,
    etcd_peer_port: u16,
    /// The administrator's kubeconfig (system:masters).
    pub kubeconfig: PathBuf,
    /// Seconds a watch lasts at least (the server's --min-request-timeout; it picks up to twice).
    min_request_timeout: u32,
    /// `requests()` reads from this instant on (seconds since the epoch, an f64's bits).
    since: std::sync::atomic::AtomicU64,
}

/// A port to listen on that is free now. Taken below the kernel's ephemeral range (32768 and up
/// here): a port the kernel hands out for `bind(0)` can be given to any outgoing connection once
/// released, before the agent that was told to listen there binds it — under the load of the
/// parallel suites that happened.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
    loop {
        let n = seed.wrapping_add(NEXT.fetch_add(7919, Ordering::Relaxed));
        let port = 10_000 + (n % 22_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A kubeconfig for `server` with `token`, trusting the CA in `ca_pem` (embedded: a pod reading it
/// sees no host path).
fn write_kubeconfig(path: &Path, server: &str, ca_pem: &[u8], token: &str) {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: test\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\ncurrent-context: test\n"
        ),
    )
    .unwrap();
}

/// A kubeconfig naming a server on `port` that may not run yet (a test of an agent started first).
pub fn kubeconfig(dir: &Path, port: u16) -> PathBuf {
    let p = dir.join("kubeconfig-early");
    write_kubeconfig(&p, &format!("https://127.0.0.1:{port}"), b"", "none");
    p
}

impl KubeApi {
    pub fn start(dir: &Path) -> Self {
        Self::start_on(dir, free_port())
    }

    pub fn start_on(dir: &Path, port: u16) -> Self {
        Self::start_with(dir, port, 1800)
    }

    /// A server whose watches last `min_request_timeout` to twice that many seconds (kube-apiserver's
    /// default: 1800).
    pub fn start_with(dir: &Path, port: u16, min_request_timeout: u32) -> Self {
        let api = Self::launch(dir, port, min_request_timeout);
        api.install_access_rules();
        api
    }

    /// A new cluster with nothing of the chart in it (what `helm install` finds).
    pub fn start_empty(dir: &Path) -> Self {
        Self::launch(dir, free_port(), 1800)
    }

    fn launch(dir: &Path, port: u16, min_request_timeout: u32) -> Self {
        let dir = dir.join("kube");
        std::fs::create_dir_all(&dir).unwrap();
        let mut api = Self {
            kubeconfig: dir.join("kubeconfig"),
            dir,
            etcd: None,
            server: None,
            port,
            etcd_port: free_port(),
            etcd_peer_port: free_port(),
            min_request_timeout,
            since: Default::default(),
        };
        api.add_token("admin", "kubernetes-admin", &["system:masters"], &[]);
        // The harness's kubelets (`kubelets`): system:nodes are left out of the audit log.
        api.add_token(
            "kubelet",
            "system:node:kubelets",
            &["system:nodes", "system:masters"],
            &[],
        );
        api.start_etcd();
        api.start_server();
        write_kubeconfig(&api.kubeconfig, &api.url(), &api.ca(), "admin");
        api
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn bin(name: &str) -> PathBuf {
        crate::built::kube_apiserver_dir().join(name)
    }

    fn start_etcd(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.etcd_port);
        let peer = format!("http://127.0.0.1:{}", self.etcd_peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .unwrap();
        let child = Command::new(Self::bin("etcd"))
            .args(["--name", "default", "--data-dir"])
            .arg(self.dir.join("etcd"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("default={peer}")])
            // Test data: a crashed machine loses nothing a test needs, and fsync dominates on
            // a loaded CI disk. A stopped or restarted etcd keeps everything it acknowledged.
            .args(["--unsafe-no-fsync", "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd");
        self.etcd = Some(child);
        let deadline = Instant::now() + WAIT;
        while !self.etcd_healthy() {
            assert!(
                Instant::now() < deadline,
                "etcd never answered:\n{}",
                self.log("etcd.log")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn etcd_healthy(&self) -> bool {
        crate::agent::http_get(self.etcd_port, "/health")
            .is_some_and(|(code, body)| code == 200 && body.contains("true"))
    }

    /// The API server started (again) on its port and etcd, until ready.
    pub fn start_server(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("kube-apiserver.log"))
            .unwrap();
        let child = Command::new(Self::bin("kube-apiserver"))
            .arg("--etcd-servers")
            .arg(format!("http://127.0.0.1:{}", self.etcd_port))
            .args(["--secure-port", &self.port.to_string()])
            .args([
                "--min-request-timeout",
                &self.min_request_timeout.to_string(),
            ])
            .arg("--cert-dir")
            .arg(self.dir.join("certs"))
            .arg("--token-file")
            .arg(self.dir.join("tokens"))
            .arg("--audit-log-path")
            .arg(self.dir.join("audit.log"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("kube-apiserver");
        self.server = Some(child);
        self.wait_ready();
    }

    /// Until /readyz answers 200: etcd reached, every post-start hook done (RBAC synced, the
    /// system namespaces made), the CRD server ready.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.dir.join("certs/apiserver.crt").exists() {
                write_kubeconfig(&self.kubeconfig, &self.url(), &self.ca(), "admin");
                if self.kubectl(&["get", "--raw", "/readyz"]).status.success() {
                    return;
                }
            }
            if let Some(st) = self
                .server
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "kube-apiserver exited ({st}):\n{}",
                    self.log("kube-apiserver.log")
                );
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver never became ready:\n{}",
                self.log("kube-apiserver.log")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The CA that signed the server's certificate (the last one in its chain file).
    pub fn ca(&self) -> Vec<u8> {
        let chain = std::fs::read_to_string(self.dir.join("certs/apiserver.crt")).unwrap();
        let start = chain.rfind("-----BEGIN CERTIFICATE-----").unwrap();
        chain.as_bytes()[start..].to_vec()
    }

    pub fn log(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn add_token(&self, token: &str, user: &str, groups: &[&str], extra: &[(&str, &str)]) {
        let extra: serde_json::Map<String, serde_json::Value> = extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::json!([v])))
            .collect();
        let line = serde_json::json!({"token": token, "user": user, "uid": token, "groups": groups, "extra": extra});
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tokens"))
            .unwrap();
        writeln!(f, "{line}").unwrap();
    }

    /// A kubeconfig for service account `sa` (in the chart's namespace), whose token says what a
    /// bound pod token says: the pod and, when given, the node it runs on.
    pub fn service_account_kubeconfig(&self, sa: &str, pod: &str, node: Option<&str>) -> PathBuf {
        let token = format!("{sa}-{pod}-{}", std::process::id());
        let user = format!("system:serviceaccount:{NAMESPACE}:{sa}");
        let groups = [
            "system:serviceaccounts",
            &format!("system:serviceaccounts:{NAMESPACE}"),
        ];
        let mut extra = vec![("authentication.kubernetes.io/pod-name", pod)];
        if let Some(node) = node {
            extra.push(("authentication.kubernetes.io/node-name", node));
        }
        self.add_token(&token, &user, &groups, &extra);
        let path = self.dir.join(format!("kubeconfig-{sa}-{pod}"));
        write_kubeconfig(&path, &self.url(), &self.ca(), &token);
        path
    }

    /// The kubeconfig of node `node`'s agent (the DaemonSet's pod on that node).
    pub fn agent_kubeconfig(&self, node: &str) -> PathBuf {
        self.service_account_kubeconfig(AGENT_SA, &format!("kwasm-agent-{node}"), Some(node))
    }

    /// The same, reaching the server through 127.0.0.1:`port` (a relay).
    pub fn agent_kubeconfig_via(&self, node: &str, port: u16) -> PathBuf {
        let direct = std::fs::read_to_string(self.agent_kubeconfig(node)).unwrap();
        let path = self.dir.join(format!("kubeconfig-{node}-via-{port}"));
        let via = direct.replace(&self.url(), &format!("https://127.0.0.1:{port}"));
        std::fs::write(&path, via).unwrap();
        path
    }

    /// The chart's access rules — RBAC, admission policies, service accounts (rendered with Shim
    /// objects on, so the catalog controller's are there too, and the uninstall hook's) — and the
    /// Shim CRD, established.
    fn install_access_rules(&self) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let rendered = [
            "kwasm-agent-shim-objects.yaml",
            "kwasm-agent-uninstall.yaml",
        ]
        .map(|f| std::fs::read_to_string(root.join("manifests/deploy").join(f)).unwrap())
        .join("\n---\n");
        let access = [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ];
        let mut items: Vec<serde_json::Value> = serde_yaml_ng::Deserializer::from_str(&rendered)
            .filter_map(|d| serde::Deserialize::deserialize(d).ok())
            .filter(|d: &serde_json::Value| d["kind"].as_str().is_some_and(|k| access.contains(&k)))
            .collect();
        let crd = std::fs::read_to_string(
            root.join("manifests/helm/kwasm-agent/crds/shims.kwasm.sh.yaml"),
        )
        .unwrap();
        items.push(serde_yaml_ng::from_str(&crd).unwrap());
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
        self.kubectl_stdin(&["apply", "--server-side", "-f", "-"], &list.to_string());
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "crd/shims.kwasm.sh",
            "--timeout=60s",
        ]);
    }

    /// A Node as a kubelet registers it: architecture label and node info, Ready.
    pub fn add_node(&self, name: &str, arch: &str) {
        self.create_node(name, arch, serde_json::json!([]));
    }

    /// A node created with taints (as a node pool with `--node-taints` creates them).
    pub fn add_tainted_node(&self, name: &str, taints: serde_json::Value) {
        self.create_node(name, "amd64", taints);
    }

    fn create_node(&self, name: &str, arch: &str, taints: serde_json::Value) {
        self.kubectl_stdin(
            &["create", "-f", "-"],
            &node_object(name, arch, taints).to_string(),
        );
    }

    /// Many Nodes at once, each with `labels` besides a kubelet's (as a node pool registers them).
    pub fn create_nodes(&self, names: &[String], labels: &serde_json::Value) {
        let client = crate::kubelets::api_client(self);
        let url = format!("{}/api/v1/nodes", self.url());
        let objects: Vec<String> = names
            .iter()
            .map(|n| {
                let mut node = node_object(n, "amd64", serde_json::json!([]));
                for (k, v) in labels.as_object().into_iter().flatten() {
                    node["metadata"]["labels"][k] = v.clone();
                }
                node.to_string()
            })
            .collect();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                use futures_util::StreamExt;
                let mut posts = futures_util::stream::iter(objects.into_iter().map(|body| {
                    client
                        .post(&url)
                        .header("Content-Type", "application/json")
                        .body(body)
                        .send()
                }))
                .buffer_unordered(32);
                while let Some(r) = posts.next().await {
                    let r = r.expect("creating a Node");
                    assert!(r.status().is_success(), "creating a Node: {}", r.status());
                }
            });
    }

    /// `kubectl` with `input` on its standard input; must succeed.
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> String {
        let out = self.kubectl_as(&self.kubeconfig, args, Some(input));
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl` as whoever `kubeconfig` names, with `input` (if any) on its standard input.
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str], input: Option<&str>) -> Output {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.unwrap_or("").as_bytes()).unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    }

    /// The admission policy as the chart renders it with `trigger.startupTaint: <taint>`: the agent
    /// may then remove that taint from its own Node (and nothing else of its spec).
    pub fn allow_startup_taint(&self, taint: &str) {
        let mut vap: serde_json::Value = serde_json::from_str(&self.kubectl_ok(&[
            "get",
            "validatingadmissionpolicy",
            "kwasm-agent-own-node",
            "-o",
            "json",
        ]))
        .unwrap();
        for v in vap["spec"]["variables"].as_array_mut().unwrap() {
            if v["name"] == "startupTaint" {
                v["expression"] = format!("'{taint}'").into();
            }
        }
        self.kubectl_stdin(&["replace", "-f", "-"], &vap.to_string());
    }

    /// Every request the server has answered, from its audit log, one record each: `method`,
    /// `verb`, `path`, `query` (an object), `user`, `user_agent`, `code`, `t` (seconds since the
    /// epoch, when the server received it).
    pub fn requests(&self) -> Vec<serde_json::Value> {
        let since = f64::from_bits(self.since.load(std::sync::atomic::Ordering::Relaxed));
        let mut all = crate::audit::requests(&self.dir.join("audit.log"));
        all.retain(|r| r["t"].as_f64().is_some_and(|t| t >= since));
        all
    }

    pub fn audit_log(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    /// `requests()` from now on only.
    pub fn clear_requests(&self) {
        (self.since).store(
            crate::audit::now().to_bits(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .expect("kubectl")
    }

    /// `kubectl` that must succeed, as a user types it.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn node(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.kubectl_ok(&["get", "node", name, "-o", "json"])).unwrap()
    }

    pub fn provisioned_label(&self, name: &str) -> Option<String> {
        self.node(name)["metadata"]["labels"]["kwasm.sh/kwasm-provisioned"]
            .as_str()
            .map(Into::into)
    }

    pub fn event_reasons(&self, node: &str) -> Vec<String> {
        self.events(node)
            .iter()
            .map(|e| e["reason"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    /// Events about `node`, as `kubectl get events` shows them (core/v1).
    pub fn events(&self, node: &str) -> Vec<serde_json::Value> {
        let v: serde_json::Value =
            serde_json::from_str(&self.kubectl_ok(&["get", "events", "-A", "-o", "json"])).unwrap();
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["involvedObject"]["name"] == node)
            .cloned()
            .collect()
    }

    /// The server's metrics (Prometheus text).
    pub fn metrics(&self) -> String {
        self.kubectl_ok(&["get", "--raw", "/metrics"])
    }

    /// The API server's and etcd's processes (their CPU and memory are part of a benchmark's figures).
    pub fn pids(&self) -> (u32, u32) {
        (
            self.server.as_ref().map_or(0, Child::id),
            self.etcd.as_ref().map_or(0, Child::id),
        )
    }

    /// The API server killed (SIGKILL: a crash, an OOM kill, a node lost under it) and started
    /// again on the same port and etcd: every connection to it is cut on the way. (SIGTERM makes it
    /// drain for up to a minute while watches are open, as upstream's does.)
    pub fn restart_server(&mut self) {
        self.stop_server();
        self.start_server();
    }

    pub fn stop_server(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// etcd stopped and started again under a running API server.
    pub fn restart_etcd(&mut self) {
        stop(&mut self.etcd);
        self.start_etcd();
        self.wait_ready();
    }

    /// etcd's history compacted up to its current revision, as the API server's own compaction
    /// does every five minutes: a watch resuming from an older resourceVersion gets 410 Gone.
    pub fn compact(&self) -> i64 {
        let range = crate::audit::etcd_post(self.etcd_port, "/v3/kv/range", r#"{"key":"AA=="}"#);
        let revision: i64 = range["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .expect("etcd's revision");
        crate::audit::etcd_post(
            self.etcd_port,
            "/v3/kv/compaction",
            &format!(r#"{{"revision":"{revision}","physical":true}}"#),
        );
        revision
    }
}

/// A Node object as a kubelet registers it.
pub fn node_object(name: &str, arch: &str, taints: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name,
            "kubernetes.io/arch": arch, "kubernetes.io/os": "linux"}},
        "spec": {"taints": taints},
        "status": {
            "nodeInfo": {"architecture": arch, "operatingSystem": "linux",
                "containerRuntimeVersion": "containerd://1.6.20", "kubeletVersion": "v1.36.4",
                "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "osImage": "",
                "kubeProxyVersion": ""},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "kubelet is posting ready status"}],
            "addresses": [{"type": "Hostname", "address": name}]
        }
    })
}

/// SIGTERM, then SIGKILL if it has not gone within a few seconds; reaped.
fn stop(child: &mut Option<Child>) {
    let Some(mut c) = child.take() else { return };
    let pid = nix::unistd::Pid::from_raw(c.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = c.kill();
            let _ = c.wait();
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        // The server first: it must not be left without its etcd, retrying.
        if let Some(c) = self.server.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(c) = self.etcd.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
