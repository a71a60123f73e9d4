//! `kwasm-agent run`: watch this node's Node object and keep the host as it asks — claim (label
//! `false`), act, then report (label `true` only once containerd proves the handlers loaded). Failures
//! are retried with capped backoff and stay visible in the status annotation and Events.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use tokio::signal::unix::{signal, SignalKind};

use super::Engine;
use crate::artifact::retry::Backoff;
use crate::cli::Common;
use crate::host::state::{now_rfc3339, State};
use crate::metrics::METRICS;
use crate::node::{self, Desired, NodeClient, Report, ShimDoc, StatusDoc, PROVISIONED_LABEL};
use crate::plan::ArtifactStep;
use crate::settings::Settings;

pub async fn run(common: Common) -> anyhow::Result<()> {
    let settings = Settings::load(&common.config)?;
    let node_name = std::env::var("NODE_NAME").context(
        "NODE_NAME is not set (the DaemonSet sets it from the downward API, spec.nodeName)",
    )?;
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes client config (in-cluster or KUBECONFIG)")?;
    crate::server::serve(&settings.agent.listen).await?;
    let nodes = NodeClient::new(client, &node_name);
    let (tx, mut rx) = tokio::sync::watch::channel::<Option<Node>>(None);
    let api = nodes.api.clone();
    let selector = format!("metadata.name={node_name}");
    // kube's watcher lists then watches with bookmarks, resumes from the last resourceVersion after a
    // dropped connection, and re-lists (never losing a change) when that version is too old.
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default().fields(&selector)).default_backoff();
        futures_util::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(Event::Apply(n)) | Ok(Event::InitApply(n)) => {
                    tx.send_replace(Some(n));
                }
                Ok(Event::InitDone) => {
                    METRICS.ready.store(true, Relaxed);
                    tx.send_modify(|_| {});
                }
                Ok(Event::Delete(_)) => {
                    tx.send_replace(None);
                }
                Ok(Event::Init) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "watching the node failed; retrying with backoff")
                }
            }
        }
    });

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut backoff = Backoff::new(Duration::from_secs(1), settings.agent.max_backoff);
    let mut wake = tokio::time::Instant::now() + settings.agent.resync;
    let mut last: Option<(Desired, bool)> = None;
    tracing::info!(node = %node_name, "watching the node");
    loop {
        let mut timer = false;
        tokio::select! {
            changed = rx.changed() => changed.map_err(|_| anyhow!("the node watch ended"))?,
            _ = tokio::time::sleep_until(wake) => timer = true,
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
        let Some(node) = rx.borrow_and_update().clone() else {
            continue;
        };
        let want = node::desired(&node, &settings.trigger);
        // Status heartbeats and our own patches change the Node too; only a new request, a timer, or a
        // previous failure is a reason to look at the host again.
        // After a failure the retry comes from the backoff timer, not from the echo of our own patch.
        if !timer && last.as_ref().map(|(d, _)| d == &want).unwrap_or(false) {
            continue;
        }
        let started = Instant::now();
        METRICS.reconciles.fetch_add(1, Relaxed);
        let result = reconcile(&settings, &common, &nodes, &node, &want, timer).await;
        release_freed_memory();
        METRICS
            .duration_micros
            .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
        match result {
            Ok(()) => {
                METRICS.last_success_unix.store(unix_now(), Relaxed);
                backoff.reset();
                wake = tokio::time::Instant::now() + settings.agent.resync;
                last = Some((want, true));
            }
            Err(e) => {
                METRICS.failures.fetch_add(1, Relaxed);
                let delay = backoff.next_delay();
                tracing::error!(error = %format!("{e:#}"), retry_in_s = delay.as_secs_f64(), "reconcile failed");
                wake = tokio::time::Instant::now() + delay;
                last = Some((want, false));
            }
        }
    }
    // Shutting down is not a request to uninstall: a rolling update replaces this pod while pods keep
    // running on the shims. The host is cleaned only when the node stops asking (trigger removed).
    tracing::info!("terminating; the host is left as it is");
    Ok(())
}

/// A reconcile allocates (HTTP clients, parsed configs) and frees it all; glibc keeps freed pages
/// mapped unless asked. Handing them back keeps an idle agent small.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn reconcile(
    settings: &Settings,
    common: &Common,
    nodes: &NodeClient,
    node: &Node,
    want: &Desired,
    timer: bool,
) -> anyhow::Result<()> {
    let engine = Engine::new(
        settings.clone(),
        common.host_root.as_deref(),
        want.arch.or(common.arch),
    )?;
    if want.triggered {
        provision(&engine, nodes, node, want, timer).await
    } else {
        unprovision(&engine, nodes, node).await
    }
}

fn status_doc(state: &State, phase: &str, error: Option<String>) -> StatusDoc {
    StatusDoc {
        phase: phase.into(),
        shims: state
            .shims
            .values()
            .map(|s| ShimDoc {
                name: s.name.clone(),
                version: s.version.clone(),
                sha256: s.binary_sha256.clone(),
            })
            .collect(),
        error,
        time: now_rfc3339(),
    }
}

async fn provision(
    engine: &Engine,
    nodes: &NodeClient,
    node: &Node,
    want: &Desired,
    timer: bool,
) -> anyhow::Result<()> {
    let names: Vec<String> = match &want.shims {
        Some(n) => n.clone(),
        None => engine
            .settings
            .shims
            .iter()
            .filter(|s| s.platform(engine.arch).is_some())
            .map(|s| s.name.clone())
            .collect(),
    };
    let labelled = node::label(node, PROVISIONED_LABEL).as_deref() == Some("true");
    let plan = engine.plan(&names).await?;
    let config_drift = plan.config.as_ref().map(|c| c.changes()).unwrap_or(true);
    let artifacts_drift = plan.shims.iter().any(|p| p.step != ArtifactStep::UpToDate);
    let loaded = handlers_loaded(engine, &names).await;
    let state = engine.load_state()?;
    let extra: Vec<String> = state
        .shims
        .keys()
        .filter(|k| !names.contains(k))
        .cloned()
        .collect();
    if labelled && !config_drift && !artifacts_drift && loaded && extra.is_empty() {
        return Ok(());
    }
    if labelled {
        let what = if config_drift {
            "containerd's config lost the agent's entries"
        } else if artifacts_drift {
            "an installed shim binary is missing or changed"
        } else if !loaded {
            "containerd does not list every handler"
        } else {
            "the requested shims changed"
        };
        tracing::warn!(
            reason = what,
            periodic = timer,
            "node drifted from its provisioned state; re-applying"
        );
        nodes
            .event(true, "DriftDetected", &format!("{what}; re-applying"))
            .await;
    }
    // A retry after a failure keeps the failure visible (status and label stay as they are) instead of
    // flapping to "Provisioning" on every attempt.
    let fresh = nodes.get().await?;
    if !previously_failed(&fresh) {
        nodes
            .report(Report {
                provisioned: Some(false),
                status: Some(&status_doc(&state, "Provisioning", None)),
            })
            .await?;
        nodes
            .event(
                false,
                "Provisioning",
                &format!("installing shims {} for {}", names.join(", "), engine.arch),
            )
            .await;
    }
    let result = async {
        let report = engine.apply(&names).await?;
        let bytes: u64 = report.shims.iter().map(|s| s.bytes).sum();
        METRICS.bytes_downloaded.fetch_add(bytes, Relaxed);
        if report
            .config
            .as_ref()
            .map(|c| c.restart.starts_with("restarted"))
            .unwrap_or(false)
        {
            METRICS.restarts.fetch_add(1, Relaxed);
        }
        let failures = report.failures();
        anyhow::ensure!(failures.is_empty(), "{}", failures.join("; "));
        if !extra.is_empty() {
            let r = engine.remove(&extra).await?;
            anyhow::ensure!(
                r.in_use.is_empty(),
                "shims no longer requested are still in use: {:?}",
                r.in_use.iter().map(|(n, _)| n).collect::<Vec<_>>()
            );
        }
        // With restart = "none" the handlers load at containerd's next start: not an error, but the
        // node is not labelled ready until they do.
        let loaded_now = handlers_loaded(engine, &names).await;
        anyhow::ensure!(
            loaded_now || restart_disabled(engine),
            "containerd does not list the handlers after apply"
        );
        Ok((report, loaded_now))
    }
    .await;
    let state = engine.load_state()?;
    match result {
        Ok((report, provisioned)) => {
            let loaded = report
                .config
                .as_ref()
                .and_then(|c| c.loaded.clone())
                .unwrap_or_default();
            nodes
                .report(Report {
                    provisioned: Some(provisioned),
                    status: Some(&status_doc(&state, "Provisioned", None)),
                })
                .await?;
            let shims: Vec<String> = state
                .shims
                .values()
                .map(|s| format!("{} {}", s.name, s.version))
                .collect();
            nodes
                .event(
                    false,
                    "Provisioned",
                    &format!(
                        "installed {}; containerd lists handlers {}",
                        shims.join(", "),
                        loaded.join(", ")
                    ),
                )
                .await;
            Ok(())
        }
        Err(e) => {
            report_failure(
                nodes,
                &state,
                "Failed",
                "ProvisionFailed",
                &format!("{e:#}"),
            )
            .await?;
            Err(e)
        }
    }
}

/// A failure stays visible on the Node: label false, the status annotation with the error, a Warning.
async fn report_failure(
    nodes: &NodeClient,
    state: &State,
    phase: &str,
    reason: &str,
    msg: &str,
) -> anyhow::Result<()> {
    nodes
        .report(Report {
            provisioned: Some(false),
            status: Some(&status_doc(state, phase, Some(msg.to_owned()))),
        })
        .await?;
    nodes.event(true, reason, msg).await;
    Ok(())
}

fn previously_failed(node: &Node) -> bool {
    node.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(node::STATUS_ANNOTATION))
        .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        .map(|v| v["phase"] == "Failed")
        .unwrap_or(false)
        && node::label(node, PROVISIONED_LABEL).as_deref() == Some("false")
}

fn restart_disabled(engine: &Engine) -> bool {
    engine.settings.containerd.restart == crate::settings::RestartMethod::None
}

async fn handlers_loaded(engine: &Engine, names: &[String]) -> bool {
    let Ok(cd) = engine.containerd() else {
        return false;
    };
    let Ok(st) = engine.load_state() else {
        return false;
    };
    match cd.cri_status().await {
        Ok(cri) => names.iter().all(|n| {
            st.shims
                .get(n)
                .map(|r| cri.lists(n, &r.binary_path))
                .unwrap_or(false)
        }),
        Err(_) => false,
    }
}

async fn unprovision(engine: &Engine, nodes: &NodeClient, node: &Node) -> anyhow::Result<()> {
    let state = engine.load_state()?;
    let has_marks = node::label(node, PROVISIONED_LABEL).is_some()
        || node
            .metadata
            .annotations
            .as_ref()
            .map(|a| a.contains_key(node::STATUS_ANNOTATION))
            .unwrap_or(false);
    if state.shims.is_empty() && state.containerd.is_none()
        || engine.settings.trigger.keep_on_untrigger
    {
        if has_marks {
            nodes
                .report(Report {
                    provisioned: None,
                    status: None,
                })
                .await?;
        }
        return Ok(());
    }
    nodes
        .report(Report {
            provisioned: Some(false),
            status: Some(&status_doc(&state, "Removing", None)),
        })
        .await?;
    match engine.remove(&[]).await {
        Ok(r) if r.in_use.is_empty() => {
            nodes
                .report(Report {
                    provisioned: None,
                    status: None,
                })
                .await?;
            nodes
                .event(
                    false,
                    "Removed",
                    &format!(
                        "removed shims {} and their containerd config",
                        r.removed.join(", ")
                    ),
                )
                .await;
            Ok(())
        }
        Ok(r) => {
            let busy: Vec<String> = r
                .in_use
                .iter()
                .map(|(n, p)| format!("{n} ({} shim processes)", p.len()))
                .collect();
            let msg = format!(
                "not removing shims still used by running containers: {}; will retry",
                busy.join(", ")
            );
            report_failure(
                nodes,
                &engine.load_state()?,
                "RemoveBlocked",
                "RemoveBlocked",
                &msg,
            )
            .await?;
            Err(anyhow!(msg))
        }
        Err(e) => {
            nodes.event(true, "RemoveFailed", &format!("{e:#}")).await;
            Err(e)
        }
    }
}
