//! One leader among many candidates, on one Lease, judged by each candidate's own monotonic clock
//! as client-go's leader election judges it: a candidate watches the Lease (no request while it
//! stands by) and takes it over only once it has seen no renewal for a whole lease duration — never
//! by comparing the leader's renewTime with its own clock. Takeovers and the first creation wait a
//! random moment, so thousands of candidates do not all write at once; whoever writes first wins
//! (writes are guarded by resourceVersion). The leader renews every third of the duration (a failed
//! renewal again within a second) and steps down when it could not renew for two thirds of it,
//! before any candidate would take over. The restart grantor and the catalog controller lead so.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use rand::Rng;
use tokio::time::Instant;

use super::LeaseHolder;

pub struct Election {
    pub lease: LeaseHolder,
    pub name: String,
    pub heartbeat: Arc<Heartbeat>,
}

impl Election {
    pub fn new(lease: LeaseHolder, name: &str) -> Self {
        let heartbeat = Arc::new(Heartbeat::new(lease.duration));
        let name = name.to_owned();
        Self {
            lease,
            name,
            heartbeat,
        }
    }

    /// Returns once this candidate holds the Lease (as written).
    pub async fn lead(&self) -> anyhow::Result<Lease> {
        let config = watcher::Config::default()
            .fields(&format!("metadata.name={}", self.name))
            .timeout(3600);
        let stream = watcher(self.lease.leases.clone(), config).default_backoff();
        futures_util::pin_mut!(stream);
        let (mut seen, mut listed, mut changed) = (None::<Lease>, false, Instant::now());
        let mut act_at: Option<Instant> = None;
        loop {
            self.heartbeat.beat();
            let wake = act_at.unwrap_or_else(|| changed + self.lease.duration);
            // A third of the duration at most: the heartbeat turns while nothing happens.
            let wake = wake.min(Instant::now() + self.lease.duration / 3);
            tokio::select! {
                ev = stream.next() => match ev {
                    Some(Ok(Event::Apply(l) | Event::InitApply(l))) => {
                        let renewed = seen.as_ref().is_none_or(|s| s.spec != l.spec);
                        self.say_who_leads(seen.as_ref(), &l);
                        (seen, act_at) = (Some(l), None);
                        if renewed {
                            changed = Instant::now();
                        }
                    }
                    Some(Ok(Event::Delete(_))) => (seen, act_at) = (None, None),
                    Some(Ok(Event::Init)) => seen = None,
                    Some(Ok(Event::InitDone)) => listed = true,
                    Some(Err(e)) => tracing::warn!(error = %e, lease = %self.name, "watching the Lease (retrying)"),
                    None => anyhow::bail!("the watch of Lease {} ended", self.name),
                },
                _ = tokio::time::sleep_until(wake) => {}
            }
            if !listed || !self.may_take(seen.as_ref(), changed) {
                continue;
            }
            match act_at {
                None => act_at = Some(Instant::now() + self.hold_back(seen.is_none())),
                Some(at) if at <= Instant::now() => {
                    act_at = None;
                    let name = Some(self.name.clone());
                    let won = match &seen {
                        None => {
                            (self.lease)
                                .create_held(ObjectMeta {
                                    name,
                                    ..Default::default()
                                })
                                .await
                        }
                        Some(current) => {
                            self.lease
                                .hand_over(current, Some(&self.lease.holder))
                                .await
                        }
                    };
                    // A write that did not get through (the API server restarting) is tried
                    // again after another hold-back: standing never ends in an error.
                    match won {
                        Ok(Some(held)) => {
                            tracing::info!(lease = %self.name, holder = %self.lease.holder, "leading");
                            return Ok(held);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(error = %format!("{e:#}"), lease = %self.name, "could not take the Lease; again shortly")
                        }
                    }
                }
                Some(_) => {}
            }
        }
    }

    fn say_who_leads(&self, before: Option<&Lease>, now: &Lease) {
        let holder = |l: &Lease| l.spec.as_ref()?.holder_identity.clone();
        let leader = holder(now).filter(|h| !h.is_empty() && *h != self.lease.holder);
        if let Some(leader) = leader.filter(|h| before.and_then(holder).as_ref() != Some(h)) {
            tracing::info!(lease = %self.name, leader = %leader, "standing by: another candidate leads");
        }
    }

    /// Free, ours (a previous life of this agent), or not renewed for a whole duration as seen here.
    fn may_take(&self, seen: Option<&Lease>, changed: Instant) -> bool {
        let holder = seen.and_then(|l| l.spec.as_ref()?.holder_identity.as_deref());
        match holder.filter(|h| !h.is_empty()) {
            None => true,
            Some(h) if h == self.lease.holder => true,
            Some(_) => changed.elapsed() >= self.lease.duration,
        }
    }

    fn hold_back(&self, creating: bool) -> Duration {
        let spread = match creating {
            true => Duration::from_secs(2),
            false => self.lease.duration / 4,
        };
        spread.mul_f64(rand::thread_rng().gen_range(0.0..1.0))
    }

    /// Renew until leadership is lost (taken over, or not renewed for two thirds of the duration);
    /// returns why.
    pub async fn keep(&self, mut held: Lease) -> anyhow::Error {
        let mut renewed = Instant::now();
        let every = self.lease.duration / 3;
        let retry = every.min(Duration::from_secs(1));
        let mut wait = every;
        loop {
            self.heartbeat.beat();
            tokio::time::sleep(wait).await;
            match self.lease.renewed(&held).await {
                Ok(Some(written)) => (held, renewed, wait) = (written, Instant::now(), every),
                // Changed or gone under us: somebody else may lead already.
                Ok(None) => return anyhow::anyhow!("Lease {} was taken over", self.name),
                Err(e) if renewed.elapsed() + retry >= every * 2 => {
                    return e.context(format!("could not renew Lease {}", self.name))
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), lease = %self.name, "could not renew; retrying");
                    wait = retry;
                }
            }
        }
    }

    /// Clear the holder at shutdown, so a candidate need not wait out the duration.
    pub async fn step_down(&self) {
        let release = tokio::time::timeout(Duration::from_secs(5), self.lease.release(&self.name));
        if let Err(e) = release
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
        {
            tracing::warn!(error = %format!("{e:#}"), lease = %self.name, "could not release the Lease; it expires on its own");
        }
    }
}

/// A candidate's liveness: its Lease loop — standing by or leading — beats at every turn (a third of
/// the lease duration at most, plus a request). One that has not turned for two lease durations is
/// stuck (the catalog's `/healthz` says so).
pub struct Heartbeat {
    start: std::time::Instant,
    last_ms: AtomicU64,
    pub stuck_after: Duration,
}

impl Heartbeat {
    pub fn new(lease_duration: Duration) -> Self {
        Self {
            start: std::time::Instant::now(),
            last_ms: AtomicU64::new(0),
            stuck_after: lease_duration * 2,
        }
    }

    pub fn beat(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Relaxed);
    }

    pub fn since_last(&self) -> Duration {
        self.start.elapsed() - Duration::from_millis(self.last_ms.load(Relaxed))
    }
}
