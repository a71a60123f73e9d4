//! The probes scripts/bench.sh measures with, so the agent and its baseline are observed the same way:
//! one request per probe, every few milliseconds, from one long-lived process (no process start per
//! probe on either side).
//!   kw-probe label NODE KEY VALUE [EVERY_MS]       until the Node's label KEY is VALUE ("-": absent),
//!                                                  asking the cluster $KUBECONFIG names
//!   kw-probe cri SOCKET [HANDLER] [EVERY_MS]       until containerd's CRI Status answers RuntimeReady
//!                                                  (and lists HANDLER)
//!   kw-probe cri-window SOCKET STOPFILE [EVERY_MS] CRI Status polled until STOPFILE exists; prints the
//!                                                  longest time it did not answer, in seconds
//! `label` and `cri` print the seconds they waited and exit 1 after 120 s.

use std::path::Path;
use std::time::{Duration, Instant};

use kwasm_agent::containerd::cri;

const GIVE_UP: Duration = Duration::from_secs(120);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let every = |i: usize, default: u64| {
        Duration::from_millis(args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default))
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let waited = match args.first().map(String::as_str) {
        Some("label") if args.len() >= 4 => {
            rt.block_on(label(&args[1], &args[2], &args[3], every(4, 10)))
        }
        Some("cri") if args.len() >= 2 => {
            let handler = args.get(2).filter(|h| h.parse::<u64>().is_err()).cloned();
            let at = if handler.is_some() { 3 } else { 2 };
            rt.block_on(cri_ready(Path::new(&args[1]), handler, every(at, 10)))
        }
        Some("cri-window") if args.len() >= 3 => {
            let w = rt.block_on(cri_window(
                Path::new(&args[1]),
                Path::new(&args[2]),
                every(3, 2),
            ));
            println!("{:.4}", w.as_secs_f64());
            return;
        }
        _ => {
            eprintln!("usage: kw-probe label NODE KEY VALUE [EVERY_MS] | cri SOCKET [HANDLER] [EVERY_MS] | cri-window SOCKET STOPFILE [EVERY_MS]");
            std::process::exit(2);
        }
    };
    match waited {
        Some(d) => println!("{:.4}", d.as_secs_f64()),
        None => {
            eprintln!("kw-probe: gave up after {GIVE_UP:?}");
            std::process::exit(1);
        }
    }
}

async fn label(node: &str, key: &str, value: &str, every: Duration) -> Option<Duration> {
    let client = kwasm_agent::kube_client::client("probe", Duration::from_secs(90))
        .await
        .expect("a kubeconfig ($KUBECONFIG)");
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
    poll(every, || async {
        let Ok(n) = nodes.get(node).await else {
            return false;
        };
        let got = n
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(key))
            .map(String::as_str);
        if value == "-" {
            got.is_none()
        } else {
            got == Some(value)
        }
    })
    .await
}

async fn cri_ready(socket: &Path, handler: Option<String>, every: Duration) -> Option<Duration> {
    poll(every, || async {
        match cri::status(socket).await {
            Ok(st) => {
                st.runtime_ready && handler.as_ref().is_none_or(|h| st.handlers.contains_key(h))
            }
            Err(_) => false,
        }
    })
    .await
}

async fn poll<F, Fut>(every: Duration, mut probe: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < GIVE_UP {
        if probe().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(every).await;
    }
    None
}

/// The longest stretch from a probe that failed to the next one that answered.
async fn cri_window(socket: &Path, stop: &Path, every: Duration) -> Duration {
    let mut longest = Duration::ZERO;
    let mut down_since: Option<Instant> = None;
    loop {
        let t = Instant::now();
        let up = cri::status(socket)
            .await
            .map(|s| s.runtime_ready)
            .unwrap_or(false);
        match (up, down_since) {
            (false, None) => down_since = Some(t),
            (true, Some(since)) => {
                longest = longest.max(t - since);
                down_since = None;
            }
            _ => {}
        }
        if stop.exists() && down_since.is_none() {
            return longest;
        }
        tokio::time::sleep(every).await;
    }
}
