//! Kubelets, played by the test harness: what the kubelets of a test cluster's nodes write to the
//! API server — each node's status heartbeat (a strategic-merge patch of its Ready condition, as
//! the kubelet sends it) and its Lease in kube-node-lease (created, then renewed) — each node at its
//! own phase of the period. They run nothing; the writes are what a node costs the API server and
//! what races an agent's own patches of its Node.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::kube_api::KubeApi;

pub struct Kubelets {
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the kubelets write, and how often.
#[derive(Clone, Copy)]
pub struct Heartbeats {
    pub status_every: Duration,
    pub lease_every: Duration,
}

impl Heartbeats {
    /// The kubelet's defaults: status every 5 minutes when nothing changes, the Lease every 10 s.
    pub fn kubelet_defaults() -> Self {
        Self {
            status_every: Duration::from_secs(300),
            lease_every: Duration::from_secs(10),
        }
    }
}

impl Kubelets {
    pub fn start(api: &KubeApi, nodes: Vec<String>, beats: Heartbeats) -> Self {
        let client = api_client(api);
        let url = api.url();
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let (s, w) = (stop.clone(), writes.clone());
        let thread = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(beat(client, url, nodes, beats, s, w))
        });
        Self {
            stop,
            writes,
            thread: Some(thread),
        }
    }

    /// Writes answered 2xx so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}

impl Drop for Kubelets {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An HTTPS client for `api` as the kubelets' user (system:node:kubelets, in system:nodes and —
/// for want of upstream's Node authorizer, not packaged — system:masters).
pub fn api_client(api: &KubeApi) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        "Bearer kubelet".parse().unwrap(),
    );
    headers.insert(
        reqwest::header::USER_AGENT,
        "kubelet/v1.36.4 (linux/amd64) kwasm-tests".parse().unwrap(),
    );
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&api.ca()).unwrap())
        .default_headers(headers)
        .pool_max_idle_per_host(32)
        // One connection a request in flight: the server's HTTP/2 protections (rapid-reset limits)
        // are not what these tests are about.
        .http1_only()
        .build()
        .unwrap()
}

async fn beat(
    client: reqwest::Client,
    url: String,
    nodes: Vec<String>,
    beats: Heartbeats,
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
) {
    let start = Instant::now();
    let n = nodes.len().max(1) as f64;
    let (mut status_done, mut lease_done) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let elapsed = start.elapsed().as_secs_f64();
        let status_due = (elapsed * n / beats.status_every.as_secs_f64()) as u64;
        let lease_due = (elapsed * n / beats.lease_every.as_secs_f64()) as u64;
        let statuses = (status_done..status_due).map(|i| {
            let node = nodes[i as usize % nodes.len()].clone();
            futures_util::future::Either::Left(status(client.clone(), url.clone(), node))
        });
        let leases = (lease_done..lease_due).map(|i| {
            let node = nodes[i as usize % nodes.len()].clone();
            futures_util::future::Either::Right(lease(client.clone(), url.clone(), node))
        });
        (status_done, lease_done) = (status_due, lease_due);
        // At most IN_FLIGHT at once: a server that falls behind gets fewer beats (writes() says
        // how many landed), not a connection per beat due.
        let mut answers =
            futures_util::stream::iter(statuses.chain(leases)).buffer_unordered(IN_FLIGHT);
        while let Some(ok) = answers.next().await {
            if ok {
                writes.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

const IN_FLIGHT: usize = 64;

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

async fn status(client: reqwest::Client, url: String, node: String) -> bool {
    let patch = serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": "True",
        "reason": "KubeletReady", "message": "kubelet is posting ready status",
        "lastHeartbeatTime": now()}]}});
    client
        .patch(format!("{url}/api/v1/nodes/{node}/status"))
        .header("Content-Type", "application/strategic-merge-patch+json")
        .body(patch.to_string())
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

async fn lease(client: reqwest::Client, url: String, node: String) -> bool {
    let micro = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        ))
        .unwrap();
    let body = serde_json::json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": node, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": micro}});
    // Server-side apply: creates the Lease on a node's first beat, renews it after.
    client
        .patch(format!(
            "{url}/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}?fieldManager=kubelet&force=true"
        ))
        .header("Content-Type", "application/apply-patch+yaml")
        .body(body.to_string())
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}
