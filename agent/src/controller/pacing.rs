//! Restart pacing as the node controller uses it ([fleet]): this agent's candidacy for grantor
//! (`grantor`), and the node's side, the gate the engine waits on before it restarts containerd:
//! ask (the phase WaitingForRestart on its own Node), wait on one watch of its own permit — no
//! request while it waits, whatever happens elsewhere — then confirm the grant with a write guarded
//! by the version it saw (a grant already taken back cannot be confirmed), renew it while containerd
//! may be down, and give it back (delete it) once containerd proved itself or was rolled back. While
//! it waits, its Node says so (the phase, and an Event) and so does its metric.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{DeleteParams, Preconditions};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;

use super::context::Context;
use super::events::Reason;
use super::grantor::{self, Rules};
use super::permit;
use crate::backoff::Backoff;
use crate::containerd::gate::{Permit, RestartGate};
use crate::lease::election::Election;
use crate::lease::LeaseHolder;
use crate::node_contract::status::Phase;
use crate::settings::Settings;

pub struct Pacing {
    pub gate: Arc<dyn RestartGate>,
    election: Arc<Election>,
}

impl Pacing {
    /// At shutdown: a grantor steps down so another agent takes over at once.
    pub async fn step_down(&self) {
        self.election.step_down().await;
    }
}

/// The gate for this node; the grantor campaign runs in the background for the agent's life.
pub fn start(
    ctx: &Arc<Context>,
    client: kube::Client,
    node: &str,
    settings: &Settings,
) -> anyhow::Result<Option<Pacing>> {
    let Some(fleet) = &settings.fleet else {
        return Ok(None);
    };
    let namespace =
        crate::lease::namespace(fleet.lease_namespace.as_deref(), "fleet.lease_namespace")?;
    let leases = kube::Api::namespaced(client.clone(), &namespace);
    let rules = Rules {
        metrics: ctx.metrics.grantor.clone(),
        concurrency: fleet.max_concurrent_restarts,
        lease_duration: fleet.lease_duration,
        // A restart, a rollback's restart, and a lease duration to spare.
        deadline: settings.containerd.timeout * 2 + fleet.lease_duration,
        trigger: settings.trigger.clone(),
    };
    let election = Arc::new(grantor::election(
        leases.clone(),
        node,
        fleet.lease_duration,
    ));
    let candidate = election.clone();
    tokio::spawn(async move { grantor::campaign(&candidate, client, rules).await });
    let (holder, duration) = (node.to_owned(), fleet.lease_duration);
    let permit = LeaseHolder {
        leases,
        holder,
        duration,
    };
    let gate = Arc::new(PermitGate {
        ctx: ctx.clone(),
        permit,
    });
    Ok(Some(Pacing { gate, election }))
}

/// A grant not there this long after asking makes the wait worth an Event.
const WAIT_WORTH_SAYING: Duration = Duration::from_secs(2);

struct PermitGate {
    ctx: Arc<Context>,
    /// This node's permit, as the node may write it.
    permit: LeaseHolder,
}

impl RestartGate for PermitGate {
    fn enter(&self) -> BoxFuture<'_, anyhow::Result<Box<dyn Permit>>> {
        Box::pin(async move {
            let name = permit::name(&self.permit.holder);
            let config = watcher::Config::default()
                .fields(&format!("metadata.name={name}"))
                .timeout(3600);
            let stream = watcher(self.permit.leases.clone(), config).default_backoff();
            futures_util::pin_mut!(stream);
            let asked = self.ask().await;
            let say_waiting = tokio::time::sleep(WAIT_WORTH_SAYING);
            tokio::pin!(say_waiting);
            let mut said = false;
            loop {
                let seen = tokio::select! {
                    ev = stream.next() => match ev {
                        Some(Ok(Event::Apply(l) | Event::InitApply(l))) => Some(l),
                        Some(Ok(_)) => None,
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "watching the restart permit (retrying)");
                            None
                        }
                        None => anyhow::bail!("the restart permit's watch ended"),
                    },
                    _ = &mut say_waiting, if !said => {
                        said = true;
                        self.say_waiting(&asked, &name).await;
                        None
                    }
                };
                let Some(lease) = seen.filter(|l| self.granted_to_me(l)) else {
                    continue;
                };
                if let Some(held) = self.confirm(lease).await? {
                    tracing::info!(permit = %name, "holding a restart permit");
                    self.acquired();
                    let every = self.permit.duration / 3;
                    let held = HeldPermit::hold(self.permit.clone(), held, every);
                    return Ok(Box::new(held) as Box<dyn Permit>);
                }
            }
        })
    }
}

impl PermitGate {
    fn granted_to_me(&self, lease: &Lease) -> bool {
        permit::granted_to(lease) == Some(self.permit.holder.as_str())
    }

    /// The ask is the phase on the Node: written until it gets through.
    async fn ask(&self) -> Node {
        let ctx = &self.ctx;
        let mut backoff = Backoff::new(Duration::from_secs(1), ctx.settings.agent.max_backoff);
        loop {
            match ctx.nodes.set_phase(Phase::WaitingForRestart).await {
                Ok(node) => return node,
                Err(e) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(error = %format!("{e:#}"), retry_in = ?wait, "could not ask for a restart permit on the Node");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn say_waiting(&self, asked: &Node, name: &str) {
        let msg = format!(
            "waiting to restart containerd: asked the grantor for a restart permit ({name})"
        );
        tracing::info!("{msg}");
        self.ctx.metrics.waiting_for_restart.store(true, Relaxed);
        let events = &self.ctx.events;
        events.publish(asked, Reason::WaitingForRestart, &msg).await;
    }

    fn acquired(&self) {
        self.ctx.metrics.waiting_for_restart.store(false, Relaxed);
        // Off the restart's path: the restart begins now, the Node says so when it can (and only
        // if nothing newer said otherwise meanwhile).
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            let from = Some(Phase::WaitingForRestart);
            let _ = ctx.nodes.set_phase_from(from, Phase::Provisioning).await;
        });
    }

    /// The grant as seen, renewed now; None when it changed first (taken back, or a newer grant
    /// the watch will show).
    async fn confirm(&self, lease: Lease) -> anyhow::Result<Option<Lease>> {
        let confirmed = self.permit.renewed(&lease).await;
        confirmed.context("confirming the restart permit")
    }
}

/// A permit in hand: renewed in the background until released.
struct HeldPermit {
    permit: LeaseHolder,
    known: Arc<tokio::sync::Mutex<Lease>>,
    renew: tokio::task::JoinHandle<()>,
}

impl HeldPermit {
    fn hold(permit: LeaseHolder, lease: Lease, every: Duration) -> Self {
        let known = Arc::new(tokio::sync::Mutex::new(lease));
        let (shared, renewer) = (known.clone(), permit.clone());
        let renew = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let mut known = shared.lock().await;
                match renewer.renew_from(&known).await {
                    Ok(lease) => *known = lease,
                    Err(e) if e.downcast_ref::<kube::Error>().is_some_and(is_not_found) => {
                        return tracing::error!("the grantor took this node's restart permit back while containerd may be down");
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "could not renew the restart permit; the grantor takes it back unless a renewal gets through")
                    }
                }
            }
        });
        Self {
            permit,
            known,
            renew,
        }
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl Permit for HeldPermit {
    fn release(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.renew.abort();
            let lease = self.known.lock().await.clone();
            let name = lease.metadata.name.clone().unwrap_or_default();
            // This grant only (its uid): a later one for this node is not this node's to give back.
            let uid = lease.metadata.uid.clone();
            let params = DeleteParams::default().preconditions(Preconditions {
                uid,
                resource_version: None,
            });
            match self.permit.leases.delete(&name, &params).await {
                Ok(_) => tracing::info!(permit = %name, "gave the restart permit back"),
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not give the restart permit back; the grantor takes it back when it stops being renewed")
                }
            }
        })
    }
}
