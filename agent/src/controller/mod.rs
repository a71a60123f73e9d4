//! The node controller (`kwasm-agent run`): watch this node's Node object and keep the host as it
//! asks, through the host engine. The loop here waits for a reason to look (a new request, the resync
//! timer, a retry after a failure); `reconcile` holds the steps; `context` what they share.

mod context;
mod desired;
mod events;
mod grantor;
mod grantor_metrics;
pub(crate) mod metrics;
pub mod node;
mod pacing;
mod permit;
mod reconcile;
mod report;
mod shim_objects;
mod uninstall;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use tokio::signal::unix::{signal, SignalKind};

use crate::backoff::Backoff;
use crate::node_contract::trigger::annotation;
use crate::node_contract::uninstall_request::{UninstallJudge, UNINSTALL_ANNOTATION};
use crate::settings::Settings;
use context::{Context, EngineSlot};
use desired::{desired, Desired};
use events::Events;
use metrics::Metrics;
use node::NodeClient;
pub use uninstall::uninstall;

/// `host_root` and `arch` override the settings' host root and this machine's architecture.
pub async fn run(
    config: &std::path::Path,
    host_root: Option<std::path::PathBuf>,
    arch: Option<crate::arch::Arch>,
) -> anyhow::Result<()> {
    let settings = Settings::load(config)?;
    let node_name = std::env::var("NODE_NAME").context(
        "NODE_NAME is not set (the DaemonSet sets it from the downward API, spec.nodeName)",
    )?;
    let client = crate::kube_client::client("node", settings.agent.api_read_timeout).await?;
    let metrics = Arc::new(Metrics::default());
    crate::health::serve(&settings.agent.listen, "agent.listen", metrics.clone()).await?;
    let instance = std::env::var("POD_NAME").unwrap_or_else(|_| format!("kwasm-agent-{node_name}"));
    let ctx = Arc::new(Context {
        nodes: NodeClient::new(client.clone(), &node_name),
        events: Events::new(client.clone(), instance),
        metrics,
        settings: settings.clone(),
    });
    let pacing = pacing::start(&ctx, client.clone(), &node_name, &settings)?;
    let gate = pacing.as_ref().map(|p| p.gate.clone());
    let mut nodes = watch_node(&ctx, &node_name);
    let mut node_loop = NodeLoop {
        engines: EngineSlot::new(settings, host_root, arch, gate),
        objects: (ctx.settings.catalog.shim_objects)
            .then(|| shim_objects::watch_shims(client, ctx.settings.clone())),
        backoff: Backoff::new(Duration::from_secs(1), ctx.settings.agent.max_backoff),
        wake: tokio::time::Instant::now() + ctx.settings.agent.resync,
        handled: None,
        skipped_before: Vec::new(),
        uninstall_requests: UninstallJudge::default(),
        uninstalled: false,
        ctx,
    };
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    tracing::info!(node = %node_name, "watching the node");
    loop {
        let mut periodic = false;
        release_freed_memory();
        tokio::select! {
            changed = nodes.changed() => changed.map_err(|_| anyhow!("the node watch ended"))?,
            changed = shims_changed(&mut node_loop.objects) => changed.map_err(|_| anyhow!("the Shim watch ended"))?,
            _ = tokio::time::sleep_until(node_loop.wake) => periodic = true,
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
        let Some(node) = nodes.borrow_and_update().clone() else {
            continue;
        };
        node_loop.reconcile_if_asked(&node, periodic).await;
    }
    // Shutting down is not a request to uninstall: a rolling update replaces this pod while pods keep
    // running on the shims. The host is cleaned only when the node stops asking (trigger removed).
    tracing::info!("terminating; the host is left as it is");
    if let Some(p) = &pacing {
        p.step_down().await;
    }
    Ok(())
}

/// What the node controller keeps between looks at its Node.
struct NodeLoop {
    ctx: Arc<Context>,
    engines: EngineSlot,
    objects: Option<shim_objects::ShimObjects>,
    backoff: Backoff,
    /// When to look again without a change: the resync, or the retry after a failure.
    wake: tokio::time::Instant,
    /// What the last reconcile was for: the Node's request and the catalog.
    handled: Option<(Desired, Vec<crate::settings::Shim>)>,
    skipped_before: Vec<(String, String)>,
    uninstall_requests: UninstallJudge,
    /// Once this agent obeyed an uninstall it stays uninstalled for the rest of its life: the command
    /// that asked clears its annotation when the node is clean, and that must not read as "provision
    /// again" in the moment before the DaemonSet goes.
    uninstalled: bool,
}

impl NodeLoop {
    /// Reconcile when there is a reason to: a new request, a changed catalog, or the timer.
    async fn reconcile_if_asked(&mut self, node: &Node, periodic: bool) {
        let request = annotation(node, UNINSTALL_ANNOTATION);
        let judged = (self.uninstall_requests).judge(request, std::time::SystemTime::now());
        let mut want = desired(node, &self.ctx.settings.trigger, judged);
        self.uninstalled |= want.uninstall == desired::Uninstall::Requested;
        if self.uninstalled {
            want.triggered = false;
            want.uninstall = desired::Uninstall::Requested;
        }
        let objects = &self.objects;
        let Some(catalog) =
            catalog_for(&self.ctx.settings, objects, node, &mut self.skipped_before)
        else {
            return;
        };
        self.engines.set_shims(catalog.clone());
        // Status heartbeats and the agent's own patches change the Node too: they are no reason to
        // look at the host again.
        let now_wanted = (want, catalog);
        if !periodic && self.handled.as_ref() == Some(&now_wanted) {
            return;
        }
        let result = self.reconcile_timed(node, &now_wanted.0, periodic).await;
        self.handled = Some(now_wanted);
        let ctx = &self.ctx;
        match result {
            Ok(()) => {
                ctx.metrics
                    .last_success_unix
                    .store(crate::clock::unix_now().max(0) as u64, Relaxed);
                ctx.metrics.failed.store(false, Relaxed);
                self.backoff.reset();
                self.wake = tokio::time::Instant::now() + ctx.settings.agent.resync;
            }
            Err(e) => {
                let delay = self.backoff.next_delay();
                tracing::error!(error = %format!("{e:#}"), retry_in_s = delay.as_secs_f64(), "reconcile failed");
                self.wake = tokio::time::Instant::now() + delay;
            }
        }
    }

    /// One reconcile, counted and timed in the metrics and the timeline log line.
    async fn reconcile_timed(
        &mut self,
        node: &Node,
        want: &Desired,
        periodic: bool,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let ctx = &self.ctx;
        let engines = &mut self.engines;
        let (result, timeline) = crate::timeline::timed(async {
            match engines.get(want.arch) {
                // Boxed: the reconcile's future is deep (engine → containerd, traced spans).
                Ok(engine) => {
                    Box::pin(reconcile::reconcile(ctx, engine, node, want, periodic)).await
                }
                Err(e) => Err(e),
            }
        })
        .await;
        // A reconcile that acted (claimed the node) says where its time went; a look that found
        // nothing to do only at debug level.
        if timeline.has("claim") {
            tracing::info!(total_ms = timeline.total().as_millis() as u64, steps = %timeline, "reconcile timeline");
        } else {
            tracing::debug!(total_ms = timeline.total().as_millis() as u64, steps = %timeline, "reconcile timeline");
        }
        (ctx.metrics).reconciled(started.elapsed(), &timeline, result.is_err());
        result
    }
}

/// Resolves when the Shim objects changed; never without `[catalog] shim_objects`.
async fn shims_changed(
    objects: &mut Option<shim_objects::ShimObjects>,
) -> Result<(), tokio::sync::watch::error::RecvError> {
    match objects {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}

/// This node's catalog: the file's shims, and the Shim objects selecting the node when the agent
/// follows them. None while those are not listed yet. Objects left out are logged when that changes.
fn catalog_for(
    settings: &Settings,
    objects: &Option<shim_objects::ShimObjects>,
    node: &Node,
    skipped_before: &mut Vec<(String, String)>,
) -> Option<Vec<crate::settings::Shim>> {
    let Some(rx) = objects else {
        return Some(settings.shims.clone());
    };
    let Some(list) = rx.borrow().clone() else {
        tracing::debug!("waiting for the first list of Shim objects before reconciling");
        return None;
    };
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let merged = crate::crd::catalog::merge(settings, &list, Some(&labels));
    if merged.skipped != *skipped_before {
        for (name, why) in &merged.skipped {
            tracing::warn!(shim = %name, reason = %why, "Shim object left out of this node's catalog");
        }
        *skipped_before = merged.skipped;
    }
    Some(merged.shims)
}

/// The latest copy of this node, kept current by kube's watcher: it lists then watches with
/// bookmarks, resumes from the last resourceVersion after a dropped connection, and re-lists (never
/// losing a change) when that version is too old.
fn watch_node(ctx: &Arc<Context>, name: &str) -> tokio::sync::watch::Receiver<Option<Node>> {
    let (tx, rx) = tokio::sync::watch::channel::<Option<Node>>(None);
    let api = ctx.nodes.api.clone();
    let metrics = ctx.metrics.clone();
    let selector = format!("metadata.name={name}");
    tokio::spawn(async move {
        // An idle node costs the API server about one request an hour: the watch itself, which the
        // server ends after its --min-request-timeout (30 to 60 minutes) and the watcher resumes.
        let config = watcher::Config::default().fields(&selector).timeout(3600);
        let stream = watcher(api, config).default_backoff();
        futures_util::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(Event::Apply(n)) | Ok(Event::InitApply(n)) => {
                    tx.send_replace(Some(n));
                }
                Ok(Event::InitDone) => {
                    metrics.ready.store(true, Relaxed);
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
    rx
}

/// A reconcile allocates (HTTP clients, parsed configs) and frees it all; glibc keeps freed pages
/// mapped unless asked. And it runs code an idle agent does not: the kernel maps a binary's code in
/// 64 KiB windows around each page executed, so after a reconcile most of the 7 MiB of code counts in
/// the agent's RSS. Handing both back keeps an idle agent small; the code stays in the page cache, so
/// the next reconcile maps it again without reading the disk.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    crate::host::memory::unmap_idle_code();
}
