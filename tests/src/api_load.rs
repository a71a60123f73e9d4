//! What kwasm-agent costs the API server, as the server counts it: requests by component (the
//! User-Agent's `(node)`, `(catalog)`) and by kind (verb and resource), over a window of its audit
//! log; the bytes it encoded for watches and the watches open, from its metrics; and a process's
//! memory and CPU.
//! Shared by the fleet benchmarks (`bench-fleet`, `bench-rollout`).

use std::collections::BTreeMap;

use crate::kube_api::KubeApi;

/// Which kwasm-agent component made a request: "node", "catalog", … (from the User-Agent).
pub fn component(r: &serde_json::Value) -> &str {
    let ua = r["user_agent"].as_str().unwrap_or("");
    match ua.rsplit_once('(') {
        Some((_, rest)) => rest.trim_end_matches(')'),
        None => "node",
    }
}

/// Requests made by kwasm-agent (not by kubectl or the benchmark itself).
pub fn measured_requests(api: &KubeApi) -> Vec<serde_json::Value> {
    api.requests()
        .into_iter()
        .filter(|r| {
            let ua = r["user_agent"].as_str().unwrap_or("");
            ua.starts_with("kwasm-agent")
        })
        .collect()
}

/// `VERB-resource[-status|-watch]`, with `list` for a GET of a collection.
pub fn kind(r: &serde_json::Value) -> String {
    let path = r["path"].as_str().unwrap_or("");
    let resource = ["events", "leases", "shims", "runtimeclasses", "nodes"]
        .into_iter()
        .find(|k| path.contains(&format!("/{k}")))
        .unwrap_or("discovery");
    let collection = path.ends_with(&format!("/{resource}"));
    let what = if path.ends_with("/status") {
        format!("{resource}-status")
    } else if r["query"]["watch"].as_str().is_some() {
        format!("{resource}-watch")
    } else if collection && r["method"] == "GET" {
        format!("{resource}-list")
    } else {
        resource.to_owned()
    };
    format!("{}-{what}", r["method"].as_str().unwrap_or("?"))
}

/// The Lease the restart grantor holds (the agent's `controller::permit::GRANTOR_LEASE`).
pub const GRANTOR_LEASE: &str = "kwasm-agent-restart-grantor";

/// The grantor's election at work: a read or write of its Lease, not a watch of it. One agent's,
/// for the whole fleet — not a cost of every node.
pub fn is_grantor_election(r: &serde_json::Value) -> bool {
    let path = r["path"].as_str().unwrap_or("");
    path.ends_with(&format!("/leases/{GRANTOR_LEASE}")) && r["query"]["watch"].is_null()
}

pub fn count_kinds(reqs: &[serde_json::Value]) -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    for r in reqs {
        *kinds.entry(kind(r)).or_default() += 1;
    }
    kinds
}

/// Requests within [from, to) (seconds since the epoch, as the server's audit log stamps them: this
/// machine's clock).
pub fn within(reqs: &[serde_json::Value], from: f64, to: f64) -> Vec<serde_json::Value> {
    reqs.iter()
        .filter(|r| r["t"].as_f64().is_some_and(|t| t >= from && t < to))
        .cloned()
        .collect()
}

/// Bytes the server has answered with so far (its `apiserver_response_sizes` histogram's sums;
/// watch streams are not in it).
pub fn response_bytes(api: &KubeApi) -> u64 {
    metric(&api.metrics(), "apiserver_response_sizes_sum")
        .iter()
        .map(|(_, v)| *v as u64)
        .sum()
}

/// Bytes the server has sent to watches so far, by resource ("shims", "leases", …): its
/// `apiserver_watch_events_sizes` histogram's sums, observed by each watch connection for each
/// event it sends (labelled by group, version and resource since Kubernetes 1.30; `kind` before).
pub fn watch_bytes(api: &KubeApi) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (labels, v) in metric(&api.metrics(), "apiserver_watch_events_sizes_sum") {
        let resource = label(&labels, "resource")
            .or_else(|| label(&labels, "kind"))
            .unwrap_or_default();
        *out.entry(resource).or_default() += v as u64;
    }
    out
}

/// Watches open on the server now (its `apiserver_longrunning_requests` gauge).
pub fn open_watches(api: &KubeApi) -> u64 {
    metric(&api.metrics(), "apiserver_longrunning_requests")
        .iter()
        .filter(|(labels, _)| label(labels, "verb").as_deref() == Some("WATCH"))
        .map(|(_, v)| *v as u64)
        .sum()
}

/// The samples of metric `name` in Prometheus text: (labels, value).
pub fn metric(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (metric == name)
                .then(|| (labels.to_owned(), value.parse().ok()))?
                .1
                .map(|v| (labels.to_owned(), v))
        })
        .collect()
}

/// One label's value in a series' `a="x",b="y"`.
pub fn label(labels: &str, key: &str) -> Option<String> {
    labels.split("\",").find_map(|kv| {
        let (k, v) = kv.split_once("=\"")?;
        (k.trim_start_matches(',') == key).then(|| v.trim_end_matches('"').to_owned())
    })
}

/// Resident memory of a process, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    proc_status(pid, "VmRSS:")
}

/// Peak resident memory of a process, KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    proc_status(pid, "VmHWM:")
}

fn proc_status(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time a process used so far (user + system), seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat: 12 and 13 after the command.
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    (ticks(11) + ticks(12)) / hz
}

/// The most requests in any one second.
pub fn peak_per_second(reqs: &[serde_json::Value]) -> usize {
    let mut per: BTreeMap<i64, usize> = Default::default();
    for r in reqs {
        if let Some(t) = r["t"].as_f64() {
            *per.entry(t as i64).or_default() += 1;
        }
    }
    per.values().copied().max().unwrap_or(0)
}

pub fn time_span(reqs: &[serde_json::Value]) -> f64 {
    let ts: Vec<f64> = reqs.iter().filter_map(|r| r["t"].as_f64()).collect();
    let lo = ts.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ts.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if ts.is_empty() {
        0.0
    } else {
        hi - lo
    }
}

/// An agent's or controller's `/readyz` answers 200.
pub fn ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = write!(
        s,
        "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}
