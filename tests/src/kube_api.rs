//! The Kubernetes API stand-in (tests/kube-api/fake_kube_api.py) as a process on loopback, with a
//! kubeconfig that both the real kubectl and the agent use.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub struct KubeApi {
    child: Child,
    pub port: u16,
    pub kubeconfig: PathBuf,
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

pub fn kubeconfig(dir: &Path, port: u16) -> PathBuf {
    let p = dir.join("kubeconfig");
    std::fs::write(
        &p,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://127.0.0.1:{port}\nusers:\n- name: test\n  user:\n    token: test-token\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\ncurrent-context: test\n"
        ),
    )
    .unwrap();
    p
}

impl KubeApi {
    pub fn start(dir: &Path) -> Self {
        Self::start_on(dir, 0)
    }

    pub fn start_on(dir: &Path, port: u16) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("kube-api/fake_kube_api.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .trim()
            .strip_prefix("PORT ")
            .expect("stand-in prints its port")
            .parse()
            .unwrap();
        Self {
            child,
            port,
            kubeconfig: kubeconfig(dir, port),
        }
    }

    /// The stand-in's process (its CPU time is part of a benchmark's measure).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A test-control call (POST /_test/...), answered with JSON.
    pub fn control(&self, path_and_query: &str, body: &str) -> serde_json::Value {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(s, "POST {path_and_query} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or("null");
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
    }

    pub fn add_node(&self, name: &str, arch: &str) {
        self.control(
            "/_test/nodes",
            &format!("{{\"name\":\"{name}\",\"arch\":\"{arch}\"}}"),
        );
    }

    /// A node created with taints (as a node pool with `--node-taints` creates them).
    pub fn add_tainted_node(&self, name: &str, taints: serde_json::Value) {
        let spec = serde_json::json!({"name": name, "arch": "amd64", "taints": taints});
        self.control("/_test/nodes", &spec.to_string());
    }

    pub fn requests(&self) -> Vec<serde_json::Value> {
        self.control("/_test/requests", "")
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .expect("kubectl");
        out
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
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
