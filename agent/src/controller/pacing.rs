//! Restart pacing as the node controller uses it ([fleet]): the gate the engine waits on before it
//! restarts containerd (`permit_gate`), and this agent's candidacy for grantor (`grantor`). While an
//! agent waits, its Node says so (status phase — the ask itself — and an Event) and so does its metric.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use super::context::Context;
use super::election::Election;
use super::events;
use super::grantor::{self, Rules};
use super::permit_gate::{GateEvent, GateObserver, PermitClient, PermitGate};
use crate::backoff::Backoff;
use crate::containerd::gate::RestartGate;
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
    let gate = PermitGate {
        permits: PermitClient {
            leases,
            node: node.to_owned(),
        },
        renew_every: fleet.lease_duration / 3,
        observer: observer(ctx.clone()),
    };
    Ok(Some(Pacing {
        gate: Arc::new(gate),
        election,
    }))
}

fn observer(ctx: Arc<Context>) -> GateObserver {
    // The Node as the ask left it: what the Event names, without reading it again while waiting.
    let asked = Arc::new(std::sync::Mutex::new(None));
    Arc::new(move |event| {
        let (ctx, asked) = (ctx.clone(), asked.clone());
        Box::pin(async move {
            match event {
                GateEvent::Asking => *asked.lock().unwrap() = Some(ask(&ctx).await),
                GateEvent::Waiting(msg) => {
                    ctx.metrics.waiting_for_restart.store(true, Relaxed);
                    let node = asked.lock().unwrap().clone();
                    if let Some(node) = node {
                        ctx.events
                            .publish(&node, events::Reason::WaitingForRestart, &msg)
                            .await;
                    }
                }
                GateEvent::Acquired => {
                    ctx.metrics.waiting_for_restart.store(false, Relaxed);
                    // Off the restart's path: the restart begins now, the Node says so when it can
                    // (and only if nothing newer said otherwise meanwhile).
                    tokio::spawn(async move {
                        let _ = (ctx.nodes)
                            .set_phase_from(Some(Phase::WaitingForRestart), Phase::Provisioning)
                            .await;
                    });
                }
            }
        })
    })
}

/// The ask is the phase on the Node: written until it gets through (the wait goes on meanwhile).
async fn ask(ctx: &Context) -> k8s_openapi::api::core::v1::Node {
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
