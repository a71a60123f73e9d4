//! The node's side of restart pacing: ask (the phase WaitingForRestart on its own Node), wait on one
//! watch of its own permit — no request while it waits, whatever happens elsewhere — then confirm the
//! grant with a write guarded by the version it saw (a grant already taken back cannot be confirmed),
//! renew it while containerd may be down, and give it back (delete it) once containerd proved
//! itself or was rolled back. The grantor (`grantor`) decides everything else.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;

use super::permit::{self, State};
use crate::containerd::gate::{Permit, RestartGate};

/// What the gate tells the controller, so the Node and the metrics say it: the ask (the phase, which
/// the grantor reads), a wait that lasts (an Event), the permit in hand.
pub enum GateEvent {
    Asking,
    Waiting(String),
    Acquired,
}

pub type GateObserver = Arc<dyn Fn(GateEvent) -> BoxFuture<'static, ()> + Send + Sync>;

/// A grant not there this long after asking makes the wait worth an Event.
const WAIT_WORTH_SAYING: Duration = Duration::from_secs(2);

pub struct PermitGate {
    pub permits: PermitClient,
    pub renew_every: Duration,
    pub observer: GateObserver,
}

/// This node's permit, as the node may write it.
#[derive(Clone)]
pub struct PermitClient {
    pub leases: Api<Lease>,
    pub node: String,
}

impl RestartGate for PermitGate {
    fn enter(&self) -> BoxFuture<'_, anyhow::Result<Box<dyn Permit>>> {
        Box::pin(async move {
            let p = &self.permits;
            let name = permit::name(&p.node);
            let config = watcher::Config::default()
                .fields(&format!("metadata.name={name}"))
                .timeout(3600);
            let stream = watcher(p.leases.clone(), config).default_backoff();
            futures_util::pin_mut!(stream);
            (self.observer)(GateEvent::Asking).await;
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
                        let msg = format!("waiting to restart containerd: asked the grantor for a restart permit ({name})");
                        tracing::info!("{msg}");
                        (self.observer)(GateEvent::Waiting(msg)).await;
                        None
                    }
                };
                let Some(lease) = seen.filter(|l| p.granted_to_me(l)) else {
                    continue;
                };
                if let Some(held) = p.renewed(&lease).await? {
                    tracing::info!(permit = %name, "holding a restart permit");
                    (self.observer)(GateEvent::Acquired).await;
                    let held = HeldPermit::hold(p.clone(), held, self.renew_every);
                    return Ok(Box::new(held) as Box<dyn Permit>);
                }
            }
        })
    }
}

impl PermitClient {
    fn granted_to_me(&self, lease: &Lease) -> bool {
        permit::state(lease) == Some(State::Granted) && permit::node(lease) == Some(&self.node)
    }

    /// The permit as `known`, renewed now; None when it changed first (taken back, or a newer grant
    /// the watch will show).
    async fn renewed(&self, known: &Lease) -> anyhow::Result<Option<Lease>> {
        let mut lease = known.clone();
        if let Some(spec) = lease.spec.as_mut() {
            spec.renew_time = Some(MicroTime(Timestamp::now()));
        }
        let name = lease.metadata.name.clone().unwrap_or_default();
        match self
            .leases
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => Ok(Some(written)),
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(None),
            Err(e) => Err(anyhow::Error::new(e).context(format!("renewing restart permit {name}"))),
        }
    }

    /// Renew the permit; the permit as it is then, None once it is not this node's grant any more.
    async fn renew(&self, known: &Lease) -> anyhow::Result<Option<Lease>> {
        if let Some(written) = self.renewed(known).await? {
            return Ok(Some(written));
        }
        let current = self.leases.get_opt(&permit::name(&self.node)).await?;
        Ok(current.filter(|l| self.granted_to_me(l)))
    }
}

/// A permit in hand: renewed in the background until released.
struct HeldPermit {
    permits: PermitClient,
    known: Arc<tokio::sync::Mutex<Lease>>,
    renew: tokio::task::JoinHandle<()>,
}

impl HeldPermit {
    fn hold(permits: PermitClient, lease: Lease, every: Duration) -> Self {
        let known = Arc::new(tokio::sync::Mutex::new(lease));
        let (shared, renewer) = (known.clone(), permits.clone());
        let renew = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let mut known = shared.lock().await;
                match renewer.renew(&known).await {
                    Ok(Some(lease)) => *known = lease,
                    Ok(None) => {
                        return tracing::error!("the grantor took this node's restart permit back while containerd may be down");
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "could not renew the restart permit; the grantor takes it back unless a renewal gets through")
                    }
                }
            }
        });
        Self {
            permits,
            known,
            renew,
        }
    }
}

impl Permit for HeldPermit {
    fn release(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.renew.abort();
            let lease = self.known.lock().await.clone();
            let name = lease.metadata.name.clone().unwrap_or_default();
            // This grant only (its uid): a later one for this node is not this node's to give back.
            let params = DeleteParams::default().preconditions(Preconditions {
                uid: lease.metadata.uid.clone(),
                resource_version: None,
            });
            match self.permits.leases.delete(&name, &params).await {
                Ok(_) => tracing::info!(permit = %name, "gave the restart permit back"),
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not give the restart permit back; the grantor takes it back when it stops being renewed")
                }
            }
        })
    }
}
