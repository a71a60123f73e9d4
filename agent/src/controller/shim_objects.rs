//! The cluster's Shim objects as this agent sees them (`[catalog] shim_objects`): listed once and
//! then watched, so a reconcile reads them from memory — no request per reconcile. Until the first
//! list is complete the catalog is unknown, and the agent waits rather than read a slow start as
//! "every Shim was deleted" (which would remove their shims from the node).

use std::sync::Arc;

use futures_util::StreamExt;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use tokio::sync::watch;

use crate::crd::catalog::{check, Checked};
use crate::crd::Shim;
use crate::settings::Settings;

/// None until the first complete list; then every Shim object in the cluster, each checked once
/// when it arrives (a look at the Node only selects among them).
pub type ShimObjects = watch::Receiver<Option<Arc<Vec<Checked>>>>;

pub fn watch_shims(client: Client, settings: Settings) -> ShimObjects {
    let (tx, rx) = watch::channel(None);
    let api: Api<Shim> = Api::all(client);
    tokio::spawn(async move {
        let publish = |known: &[Shim]| {
            tx.send_replace(Some(Arc::new(check(&settings, known))));
        };
        let stream = watcher(api, watcher::Config::default().timeout(3600)).default_backoff();
        futures_util::pin_mut!(stream);
        // The watcher restarts with a full list after a gap; the new list replaces the old one at
        // its end, so no object seems deleted in between.
        let mut listing: Vec<Shim> = Vec::new();
        let mut known: Vec<Shim> = Vec::new();
        let mut missing_logged = false;
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(Event::Init) => listing.clear(),
                Ok(Event::InitApply(s)) => listing.push(s),
                Ok(Event::InitDone) => {
                    known = std::mem::take(&mut listing);
                    missing_logged = false;
                    tracing::info!(shims = known.len(), "listed the cluster's Shim objects");
                    publish(&known);
                }
                Ok(Event::Apply(s)) => {
                    known.retain(|k| k.metadata.name != s.metadata.name);
                    known.push(s);
                    publish(&known);
                }
                Ok(Event::Delete(s)) => {
                    known.retain(|k| k.metadata.name != s.metadata.name);
                    publish(&known);
                }
                Err(e) if crd_absent(&e) => {
                    // No CRD, no objects: the file's shims alone (and object shims go, as their
                    // objects went with the CRD).
                    if !missing_logged {
                        tracing::warn!("the Shim CRD (shims.kwasm.sh) is not installed; following the settings file's shims only until it is");
                        missing_logged = true;
                    }
                    known.clear();
                    if tx.borrow().as_ref().is_none_or(|k| !k.is_empty()) {
                        publish(&known);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watching Shim objects failed; retrying with backoff (reconciles wait for the first list)")
                }
            }
        }
    });
    rx
}

fn crd_absent(e: &watcher::Error) -> bool {
    matches!(
        e,
        watcher::Error::InitialListFailed(kube::Error::Api(s))
            | watcher::Error::WatchFailed(kube::Error::Api(s))
            if s.code == 404
    )
}
