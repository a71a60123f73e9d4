//! Proof that containerd loaded the handlers: the CRI plugin's own status (verbose), over the socket.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::StatusRequest;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedRuntime {
    pub runtime_type: String,
    pub runtime_path: String,
}

#[derive(Debug, Clone)]
pub struct CriStatus {
    pub runtime_ready: bool,
    pub handlers: BTreeMap<String, LoadedRuntime>,
}

impl CriStatus {
    /// containerd has `handler` loaded with `runtime_type` naming the binary at `binary` (a host
    /// path): the file containerd will start for that handler's pods.
    pub fn lists(&self, handler: &str, binary: &Path) -> bool {
        self.handlers
            .get(handler)
            .map(|l| Path::new(&l.runtime_type) == binary)
            .unwrap_or(false)
    }
}

/// A gRPC channel to containerd's socket (the agent's view of its path).
pub async fn channel(socket: &Path) -> anyhow::Result<Channel> {
    let path: PathBuf = socket.to_owned();
    tokio::time::timeout(
        Duration::from_secs(3),
        Endpoint::try_from("http://[::]:0")?.connect_with_connector(tower::service_fn(
            move |_: Uri| {
                let path = path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
            },
        )),
    )
    .await
    .map_err(|_| anyhow!("connecting to {} timed out", socket.display()))?
    .with_context(|| format!("connecting to containerd at {}", socket.display()))
}

/// One verbose CRI status call on `socket` (the agent's view of the socket path).
pub async fn status(socket: &Path) -> anyhow::Result<CriStatus> {
    let channel = channel(socket).await?;
    let mut client = RuntimeServiceClient::new(channel);
    let resp = tokio::time::timeout(
        Duration::from_secs(5),
        client.status(StatusRequest { verbose: true }),
    )
    .await
    .map_err(|_| anyhow!("CRI status on {} timed out", socket.display()))?
    .map_err(|s| anyhow!("CRI status on {}: {}", socket.display(), s.message()))?
    .into_inner();
    let runtime_ready = resp
        .status
        .as_ref()
        .map(|s| {
            s.conditions
                .iter()
                .any(|c| c.r#type == "RuntimeReady" && c.status)
        })
        .unwrap_or(false);
    let config = resp
        .info
        .get("config")
        .ok_or_else(|| anyhow!("CRI status has no config info"))?;
    Ok(CriStatus {
        runtime_ready,
        handlers: parse_runtimes(config)?,
    })
}

fn parse_runtimes(config_json: &str) -> anyhow::Result<BTreeMap<String, LoadedRuntime>> {
    let v: serde_json::Value =
        serde_json::from_str(config_json).context("CRI config info is not JSON")?;
    let runtimes = v
        .pointer("/containerd/runtimes")
        .and_then(|r| r.as_object())
        .ok_or_else(|| anyhow!("CRI config info lists no runtimes"))?;
    Ok(runtimes
        .iter()
        .map(|(name, r)| {
            let s = |k: &str| {
                r.get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            (
                name.clone(),
                LoadedRuntime {
                    runtime_type: s("runtimeType"),
                    runtime_path: s("runtimePath"),
                },
            )
        })
        .collect())
}

/// Poll until every expected handler is loaded with the expected binary, or `timeout`. Returns the
/// last error seen when it never happens.
pub async fn wait_for(
    socket: &Path,
    expected: &BTreeMap<String, PathBuf>,
    absent: &[String],
    timeout: Duration,
) -> anyhow::Result<CriStatus> {
    let deadline = Instant::now() + timeout;
    let mut last_err;
    loop {
        match status(socket).await {
            Ok(st) => {
                let missing: Vec<String> = expected
                    .iter()
                    .filter(|(h, path)| !st.lists(h, path))
                    .map(|(h, _)| h.clone())
                    .collect();
                let lingering: Vec<&String> = absent
                    .iter()
                    .filter(|h| st.handlers.contains_key(*h))
                    .collect();
                if missing.is_empty() && lingering.is_empty() {
                    return Ok(st);
                }
                last_err = if missing.is_empty() {
                    anyhow!("containerd still has handlers {lingering:?} loaded")
                } else {
                    anyhow!("containerd is up but its CRI plugin does not list handler(s) {} with the installed binary", missing.join(", "))
                };
            }
            Err(e) => last_err = e,
        }
        if Instant::now() >= deadline {
            return Err(last_err.context(format!(
                "containerd not ready within {}",
                humantime::format_duration(timeout)
            )));
        }
        // Faster than anything a restart does, so the proof adds at most this to the CRI-down time.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_runtimes_containerd_reports() {
        let j = r#"{"containerd":{"defaultRuntimeName":"runc","runtimes":{"runc":{"runtimeType":"io.containerd.runc.v2","runtimePath":""},"spin":{"runtimeType":"/opt/kwasm/bin/containerd-shim-spin-v2","runtimePath":""}}}}"#;
        let st = CriStatus {
            runtime_ready: true,
            handlers: parse_runtimes(j).unwrap(),
        };
        assert_eq!(st.handlers.len(), 2);
        assert!(st.lists("spin", Path::new("/opt/kwasm/bin/containerd-shim-spin-v2")));
        assert!(!st.lists("spin", Path::new("/opt/kwasm/bin/other")));
        assert!(!st.lists("runc", Path::new("/opt/kwasm/bin/containerd-shim-spin-v2")));
    }
}
