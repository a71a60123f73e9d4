//! The catalog controller (`kwasm-agent catalog`): one Deployment for the cluster, one active replica
//! through a Lease (`leader`). It keeps a RuntimeClass per Shim (`runtime_class`) and writes each
//! Shim's status from what the agents show on their Nodes (`status`), with Events when a Shim
//! degrades or becomes ready. Everything it reads is watched into memory; a node change costs one
//! status write per Shim whose counts it changed, and nothing when they did not (changes within
//! `[catalog] status_interval` fold into one write).

pub mod leader;
pub(crate) mod metrics;
mod runtime_class;
pub(crate) mod status;

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context as _;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;

use crate::crd::catalog::Checked;
use crate::crd::{Shim, ShimStatus};
use crate::lease::election::Election;
use crate::lease::LeaseHolder;
use crate::settings::Settings;
use runtime_class::Action;
use status::Problem;

pub async fn run(config: &std::path::Path) -> anyhow::Result<()> {
    let settings = Settings::load(config)?;
    let client = crate::kube_client::client("catalog", settings.agent.api_read_timeout).await?;
    let namespace = crate::lease::namespace(
        settings.catalog.lease_namespace.as_deref(),
        "catalog.lease_namespace",
    )?;
    let holder = std::env::var("POD_NAME")
        .unwrap_or_else(|_| format!("kwasm-catalog-{}", std::process::id()));
    let lease = LeaseHolder {
        leases: Api::namespaced(client.clone(), &namespace),
        holder: holder.clone(),
        duration: settings.catalog.lease_duration,
    };
    let election = Arc::new(Election::new(lease, leader::LEASE_NAME));
    let metrics = Arc::new(metrics::CatalogMetrics::new(election.heartbeat.clone()));
    if !settings.catalog.listen.is_empty() {
        crate::health::serve(&settings.catalog.listen, "catalog.listen", metrics.clone()).await?;
    }
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let held = tokio::select! {
        got = election.lead() => got?,
        _ = sigterm.recv() => return Ok(()),
        _ = sigint.recv() => return Ok(()),
    };
    metrics.leading.set(1);
    let catalog = Catalog::new(client, settings, holder, metrics.clone());
    let outcome = tokio::select! {
        lost = election.keep(held) => Err(lost),
        done = catalog.run() => done,
        _ = sigterm.recv() => Ok(()),
        _ = sigint.recv() => Ok(()),
    };
    election.step_down().await;
    outcome
}

struct Catalog {
    client: Client,
    settings: Settings,
    shims: Store<Shim>,
    nodes: Store<PartialObjectMeta<Node>>,
    runtime_classes: Store<RuntimeClass>,
    changed: Arc<Notify>,
    recorder: Recorder,
    metrics: Arc<metrics::CatalogMetrics>,
}

impl Catalog {
    fn new(
        client: Client,
        settings: Settings,
        holder: String,
        metrics: Arc<metrics::CatalogMetrics>,
    ) -> Self {
        let changed = Arc::new(Notify::new());
        let shims = reflect(watcher(Api::all(client.clone()), config()), changed.clone());
        let nodes = reflect(
            watcher(
                Api::<PartialObjectMeta<Node>>::all(client.clone()),
                config(),
            ),
            changed.clone(),
        );
        let runtime_classes = reflect(watcher(Api::all(client.clone()), config()), changed.clone());
        let reporter = Reporter {
            controller: "kwasm.sh/catalog".into(),
            instance: Some(holder),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            shims,
            nodes,
            runtime_classes,
            changed,
            metrics,
        }
    }

    async fn run(&self) -> anyhow::Result<()> {
        for (what, ready) in [
            ("Shims", self.shims.wait_until_ready().await),
            ("Nodes", self.nodes.wait_until_ready().await),
            (
                "RuntimeClasses",
                self.runtime_classes.wait_until_ready().await,
            ),
        ] {
            ready.map_err(|_| anyhow::anyhow!("the {what} watch ended"))?;
        }
        tracing::info!("listed Shims, Nodes and RuntimeClasses; keeping them in step");
        let mut backoff = crate::backoff::Backoff::new(
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(60),
        );
        loop {
            match self.sync().await {
                Ok(()) => {
                    backoff.reset();
                    self.changed.notified().await;
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %format!("{e:#}"), retry_in_s = delay.as_secs_f64(), "catalog sync failed");
                    // Retried after the delay even if nothing changes meanwhile.
                    let _ = tokio::time::timeout(delay, self.changed.notified()).await;
                }
            }
            // A burst of node changes (a rollout) becomes one pass.
            tokio::time::sleep(self.settings.catalog.status_interval).await;
        }
    }

    async fn sync(&self) -> anyhow::Result<()> {
        let shims = self.shims.state();
        let shims: Vec<&Shim> = shims.iter().map(|s| s.as_ref()).collect();
        let rcs = self.runtime_classes.state();
        let rcs: Vec<&RuntimeClass> = rcs.iter().map(|r| r.as_ref()).collect();
        let (actions, mut problems) = runtime_class::plan(&shims, &rcs);
        let mut failed = 0;
        for action in actions {
            failed += usize::from(!self.carry_out(action).await);
        }
        let checked = crate::crd::catalog::check(&self.settings, shims);
        for (name, why) in crate::crd::catalog::refused(&self.settings, &checked) {
            problems.insert(name, Problem::NotFollowed(why));
        }
        let nodes = self.nodes.state();
        let mut tallies = Vec::new();
        for Checked {
            object: shim,
            entry,
        } in &checked
        {
            let name = shim.metadata.name.clone().unwrap_or_default();
            let problem = problems.get(&name);
            let tally = match entry {
                Ok(entry) => status::tally(
                    shim,
                    entry,
                    nodes.iter().map(|n| &n.metadata),
                    &self.settings.trigger,
                ),
                Err(_) => status::Tally::default(),
            };
            let previous = shim.status.as_ref();
            let now = status::status(shim, &tally, problem, previous);
            tallies.push((name, tally));
            if previous == Some(&now) {
                continue;
            }
            // One Shim's refused write does not hold back the others'.
            if let Err(e) = self.write_status(shim, previous, &now).await {
                tracing::warn!(error = %format!("{e:#}"), "status write failed");
                failed += 1;
                continue;
            }
            self.metrics.status_writes.inc();
            for (warning, reason, note) in status::news(previous, &now) {
                self.publish(shim, warning, reason, note).await;
            }
        }
        (self.metrics).shims(tallies.iter().map(|(n, t)| (n.as_str(), t)));
        anyhow::ensure!(failed == 0, "{failed} write(s) failed");
        Ok(())
    }

    /// False when the API server refused it (logged; the sync is retried).
    async fn carry_out(&self, action: Action) -> bool {
        let api: Api<RuntimeClass> = Api::all(self.client.clone());
        let (what, result) = match &action {
            Action::Create(rc) => (
                "creating",
                api.create(&PostParams::default(), rc).await.map(drop),
            ),
            Action::Replace(rc) => {
                let name = rc.metadata.name.clone().unwrap_or_default();
                (
                    "updating",
                    api.replace(&name, &PostParams::default(), rc)
                        .await
                        .map(drop),
                )
            }
            Action::Delete(name) => (
                "deleting",
                api.delete(name, &DeleteParams::default()).await.map(drop),
            ),
        };
        let name = match &action {
            Action::Create(rc) | Action::Replace(rc) => {
                rc.metadata.name.clone().unwrap_or_default()
            }
            Action::Delete(name) => name.clone(),
        };
        match &result {
            Ok(()) => tracing::info!(runtime_class = %name, "{what} RuntimeClass"),
            Err(e) => {
                tracing::warn!(runtime_class = %name, error = %e, "{what} RuntimeClass failed")
            }
        }
        result.is_ok()
    }

    /// A merge patch of the status subresource; versions no node runs any more are removed
    /// explicitly (a merge patch keeps map keys it does not name).
    async fn write_status(
        &self,
        shim: &Shim,
        previous: Option<&ShimStatus>,
        now: &ShimStatus,
    ) -> anyhow::Result<()> {
        let name = shim.metadata.name.clone().unwrap_or_default();
        let mut doc = serde_json::to_value(now)?;
        let mut versions: BTreeMap<String, serde_json::Value> = previous
            .map(|p| {
                p.versions
                    .keys()
                    .map(|k| (k.clone(), serde_json::Value::Null))
                    .collect()
            })
            .unwrap_or_default();
        for (v, n) in &now.versions {
            versions.insert(v.clone(), (*n).into());
        }
        doc["versions"] = serde_json::to_value(versions)?;
        let api: Api<Shim> = Api::all(self.client.clone());
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": doc })),
        )
        .await
        .with_context(|| format!("writing the status of Shim {name}"))?;
        tracing::info!(shim = %name, ready = %now.ready_summary, failed = now.failed, "Shim status");
        Ok(())
    }

    /// Best effort: an Event that cannot be written is logged.
    async fn publish(&self, shim: &Shim, warning: bool, reason: &str, note: String) {
        let reference = ObjectReference {
            api_version: Some(Shim::api_version(&()).into_owned()),
            kind: Some(Shim::kind(&()).into_owned()),
            name: shim.metadata.name.clone(),
            uid: shim.metadata.uid.clone(),
            ..Default::default()
        };
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(crate::kube_client::event_note(&note)),
            action: "Rollout".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &reference).await {
            tracing::warn!(reason, error = %e, "could not record an Event on the Shim");
        }
    }
}

fn config() -> watcher::Config {
    watcher::Config::default().timeout(3600)
}

/// A store kept current by `stream`, and a wake-up on every change.
fn reflect<K, S>(stream: S, changed: Arc<Notify>) -> Store<K>
where
    K: Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
    S: futures_util::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    let (store, writer) = reflector::store();
    tokio::spawn(async move {
        // Managed fields are most of a Node's metadata, and nothing here reads them.
        let stream = stream.modify(|o| kube::ResourceExt::managed_fields_mut(o).clear());
        let stream = reflector::reflector(writer, stream.default_backoff());
        futures_util::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => changed.notify_one(),
                Err(e) => {
                    tracing::warn!(error = %e, "a catalog watch failed; retrying with backoff")
                }
            }
        }
    });
    store
}
