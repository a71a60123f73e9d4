//! What the API server says it was asked: its audit log (JSON lines, one event per stage of a
//! request) read back as one record per request; and etcd's own HTTP gateway, for the faults a
//! test sets off in etcd (compaction).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::Path;

/// One record per request (its first audit event: ResponseStarted for a watch, ResponseComplete
/// otherwise): `method` (HTTP), `verb` (Kubernetes'), `path`, `query` (an object of its
/// parameters), `user`, `node` (an agent's token's node), `user_agent`, `code`, `t` (seconds since
/// the epoch, when it was received).
pub fn requests(log: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
            continue; // the line being written
        };
        let id = e["auditID"].as_str().unwrap_or("").to_owned();
        if seen.insert(id) {
            out.push(record(&e));
        }
    }
    out
}

fn record(e: &serde_json::Value) -> serde_json::Value {
    let uri = e["requestURI"].as_str().unwrap_or("");
    let url = url::Url::parse(&format!("https://x{uri}")).unwrap();
    let query: serde_json::Map<String, serde_json::Value> = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), serde_json::Value::String(v.into_owned())))
        .collect();
    let verb = e["verb"].as_str().unwrap_or("");
    let method = match verb {
        "get" | "list" | "watch" => "GET",
        "create" => "POST",
        "update" => "PUT",
        "patch" => "PATCH",
        "delete" | "deletecollection" => "DELETE",
        other => other,
    };
    serde_json::json!({
        "method": method,
        "verb": verb,
        "path": url.path().trim_end_matches('/'),
        "query": query,
        "user": e["user"]["username"],
        // The object a request names (a create's too, which its path does not).
        "name": e["objectRef"]["name"],
        // The node a service account's token is bound to (an agent's), if any.
        "node": e["user"]["extra"]["authentication.kubernetes.io/node-name"][0],
        "user_agent": e["userAgent"],
        "code": e["responseStatus"]["code"],
        "t": e["requestReceivedTimestamp"].as_str().map(epoch_seconds),
    })
}

/// Seconds since the epoch, now.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// An RFC 3339 timestamp (as the audit log writes them) in seconds since the epoch.
pub fn epoch_seconds(ts: &str) -> f64 {
    time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp_nanos() as f64 / 1e9)
        .unwrap_or(0.0)
}

/// A POST of `body` (JSON) to etcd's gateway on 127.0.0.1:`port`; its JSON answer.
pub fn etcd_post(port: u16, path: &str, body: &str) -> serde_json::Value {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("etcd");
    write!(
        s,
        // HTTP/1.0: the whole answer, never chunked.
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    assert!(
        head.split_whitespace().nth(1) == Some("200"),
        "etcd {path}: {resp}"
    );
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}
