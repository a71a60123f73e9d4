//! Cluster-wide pacing of containerd restarts, with no leader and no extra controller: a semaphore of
//! N `coordination.k8s.io/v1` Leases (`kwasm-agent-restart-0` … `-N-1`, labelled `kwasm.sh/restart-slot`)
//! in the agents' namespace. An agent restarts containerd only while it holds one; it renews the Lease
//! at a third of its duration and clears it when containerd proved itself. A Lease whose holder stopped
//! renewing (a dead agent, or one cut off from the API server) expires after its duration and is taken
//! over, so nobody blocks the fleet longer than that.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::future::BoxFuture;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::Api;
use rand::Rng;

use crate::containerd::gate::{Permit, RestartGate};
use crate::lease::{live_holder, LeaseHolder};
use crate::node_contract::labels::PROVISIONED_LABEL;
use crate::settings::{Concurrency, FleetSettings};

const SLOT_PREFIX: &str = "kwasm-agent-restart-";
const SLOT_LABEL: &str = "kwasm.sh/restart-slot";

/// What the gate tells the controller while it waits, so the Node and the metrics can say so.
pub enum GateEvent {
    Waiting(String),
    Acquired,
}

pub type GateObserver = Arc<dyn Fn(GateEvent) -> BoxFuture<'static, ()> + Send + Sync>;

pub struct LeaseGate {
    lease: LeaseHolder,
    nodes: Api<Node>,
    concurrency: Concurrency,
    /// (when counted, slots): a percentage is of the nodes asking for shims, counted at most once
    /// per lease duration.
    slots: Mutex<Option<(Instant, u32)>>,
    observer: GateObserver,
}

impl LeaseGate {
    pub fn new(
        client: kube::Client,
        namespace: &str,
        holder: &str,
        fleet: &FleetSettings,
        observer: GateObserver,
    ) -> Self {
        Self {
            lease: LeaseHolder {
                leases: Api::namespaced(client.clone(), namespace),
                holder: holder.to_owned(),
                duration: fleet.lease_duration,
            },
            nodes: Api::all(client),
            concurrency: fleet.max_concurrent_restarts,
            slots: Mutex::new(None),
            observer,
        }
    }

    async fn slot_count(&self) -> anyhow::Result<u32> {
        if let Concurrency::Count(n) = self.concurrency {
            return Ok(n.max(1));
        }
        if let Ok(cached) = self.slots.lock() {
            if let Some((at, n)) = *cached {
                // The fleet's size changes slowly; each agent counts it at most every few minutes
                // (a list of every asking node's metadata is the costliest request here).
                if at.elapsed() < self.lease.duration.max(Duration::from_secs(300)) {
                    return Ok(n);
                }
            }
        }
        // Every node that asks for shims carries the provisioned label from its first claim on.
        let asking = self
            .nodes
            .list_metadata(&ListParams::default().labels(PROVISIONED_LABEL))
            .await
            .context("counting the nodes that ask for shims")?
            .items
            .len();
        let n = self.concurrency.of(asking.max(1));
        if let Ok(mut cached) = self.slots.lock() {
            *cached = Some((Instant::now(), n));
        }
        Ok(n)
    }

    /// One look at the slots: take a free, expired, or already-held one; None when all are busy.
    async fn try_take(&self, slots: u32) -> anyhow::Result<Result<LeasePermit, Vec<String>>> {
        let existing = self
            .lease
            .leases
            .list(&ListParams::default().labels(SLOT_LABEL))
            .await
            .context("listing the restart Leases")?;
        let now = Timestamp::now();
        let mut holders = Vec::new();
        for i in 0..slots {
            let name = format!("{SLOT_PREFIX}{i}");
            let current = existing
                .items
                .iter()
                .find(|l| l.metadata.name.as_deref() == Some(name.as_str()));
            let taken = match current {
                Some(l) => match live_holder(l, now) {
                    Some(h) if h != self.lease.holder => {
                        holders.push(h.to_owned());
                        continue;
                    }
                    _ => self.lease.take_over(l).await,
                },
                None => {
                    let labels = [(SLOT_LABEL.to_owned(), "true".to_owned())].into();
                    self.lease.create(&name, labels).await
                }
            };
            match taken {
                Ok(true) => return Ok(Ok(self.permit(name))),
                Ok(false) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Err(holders))
    }

    fn permit(&self, name: String) -> LeasePermit {
        let (lease, every) = (self.lease.clone(), self.lease.duration / 3);
        let renew_name = name.clone();
        let renew = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = lease.renew(&renew_name).await {
                    tracing::warn!(lease = %renew_name, error = %format!("{e:#}"), "could not renew the restart Lease; it expires unless a renewal gets through");
                }
            }
        });
        tracing::info!(lease = %name, "holding a restart slot");
        LeasePermit {
            lease: self.lease.clone(),
            name,
            renew,
        }
    }
}

/// How long to wait before looking again, after `looked` looks that found every slot held: a
/// fraction of the lease duration at first, growing by half each time up to the lease duration,
/// jittered so waiting agents spread their requests. A short wait (a small fleet) stays quick; in a
/// large fleet the many long waiters poll slowly — the API server sees about one request per waiting
/// node per lease duration — while a freed slot is still noticed within a fraction of a second,
/// because one of that many waiters looks soon.
fn poll_after(duration: Duration, looked: u32) -> Duration {
    let base = (duration / 12).clamp(Duration::from_secs(1), Duration::from_secs(10));
    let grown = base.mul_f64(1.5f64.powi(looked.min(16) as i32));
    grown
        .min(duration.max(base))
        .mul_f64(rand::thread_rng().gen_range(0.5..1.5))
}

impl RestartGate for LeaseGate {
    fn enter(&self) -> BoxFuture<'_, anyhow::Result<Box<dyn Permit>>> {
        Box::pin(async move {
            let mut announced = false;
            let mut looked = 0u32;
            loop {
                let slots = self.slot_count().await?;
                match self.try_take(slots).await? {
                    Ok(permit) => {
                        if announced {
                            (self.observer)(GateEvent::Acquired).await;
                        }
                        return Ok(Box::new(permit) as Box<dyn Permit>);
                    }
                    Err(holders) if !announced => {
                        announced = true;
                        let msg = format!(
                            "waiting to restart containerd: all {slots} restart slot(s) are held (by {})",
                            holders.join(", ")
                        );
                        tracing::info!("{msg}");
                        (self.observer)(GateEvent::Waiting(msg)).await;
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(poll_after(self.lease.duration, looked)).await;
                looked += 1;
            }
        })
    }
}

struct LeasePermit {
    lease: LeaseHolder,
    name: String,
    renew: tokio::task::JoinHandle<()>,
}

impl Permit for LeasePermit {
    fn release(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.renew.abort();
            let cleared = self.lease.release(&self.name);
            match cleared.await {
                Ok(()) => tracing::info!(lease = %self.name, "restart slot released"),
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %format!("{e:#}"), "could not release the restart slot; it expires on its own")
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_polls_start_quick_and_slow_down_to_the_lease_duration() {
        let d = Duration::from_secs(60);
        for _ in 0..50 {
            let first = poll_after(d, 0);
            assert!(first >= Duration::from_millis(2500) && first <= Duration::from_millis(7500));
            let late = poll_after(d, 40);
            assert!(late >= Duration::from_secs(30) && late <= Duration::from_secs(90));
        }
        // Short leases keep a one-second floor.
        assert!(poll_after(Duration::from_secs(5), 0) >= Duration::from_millis(500));
    }
}
