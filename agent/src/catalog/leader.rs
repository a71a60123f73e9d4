//! One active catalog controller among its replicas: the holder of one Lease. A standby replica
//! looks at a third of the lease duration; the leader renews as often and gives up — exits, to be
//! restarted as a standby — when it cannot renew before its Lease would expire, so two never write
//! the same statuses at once for longer than a renewal.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;

use crate::lease::{live_holder, LeaseHolder};

pub const LEASE_NAME: &str = "kwasm-catalog";

/// A replica's liveness: its Lease loop — standing by or leading — beats at every turn (a third of
/// the lease duration, plus the request). One that has not turned for two lease durations is stuck,
/// and its `/healthz` says so. Leader and standby are both ready.
pub struct Heartbeat {
    start: Instant,
    last_ms: AtomicU64,
    stuck_after: Duration,
}

impl Heartbeat {
    pub fn new(lease_duration: Duration) -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            stuck_after: lease_duration * 2,
        }
    }

    pub fn beat(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Relaxed);
    }

    fn since_last(&self) -> Duration {
        self.start.elapsed() - Duration::from_millis(self.last_ms.load(Relaxed))
    }
}

impl crate::health::Probe for Heartbeat {
    fn not_live(&self) -> Option<String> {
        let quiet = self.since_last();
        (quiet > self.stuck_after).then(|| {
            format!(
                "the catalog Lease loop has not turned for {:.0}s",
                quiet.as_secs_f64()
            )
        })
    }

    fn not_ready(&self) -> Option<String> {
        None
    }

    fn metrics(&self) -> Option<String> {
        None
    }
}

/// Wait until this replica holds the Lease.
pub async fn acquire(lease: &LeaseHolder, heartbeat: &Heartbeat) -> anyhow::Result<()> {
    let mut announced = None;
    loop {
        heartbeat.beat();
        let taken = match lease.leases.get_opt(LEASE_NAME).await? {
            None => lease.create(LEASE_NAME, Default::default()).await?,
            Some(current) => match live_holder(&current, Timestamp::now()) {
                Some(other) if other != lease.holder => {
                    if announced.as_deref() != Some(other) {
                        tracing::info!(leader = %other, "standing by: another replica leads");
                        announced = Some(other.to_owned());
                    }
                    false
                }
                _ => lease.take_over(&current).await?,
            },
        };
        if taken {
            tracing::info!(lease = LEASE_NAME, holder = %lease.holder, "leading the catalog");
            return Ok(());
        }
        tokio::time::sleep(lease.duration / 3).await;
    }
}

/// Renew until a renewal cannot get through in time; then say why leadership was lost. A failed
/// renewal is tried again every second (an API server restarting answers again within seconds).
pub async fn keep(lease: LeaseHolder, heartbeat: &Heartbeat) -> anyhow::Error {
    let mut renewed = Instant::now();
    // Give up with a margin: a standby takes over only once the Lease expired.
    let deadline = lease.duration.mul_f64(2.0 / 3.0);
    let retry = RETRY.min(lease.duration / 3);
    let mut wait = lease.duration / 3;
    loop {
        heartbeat.beat();
        tokio::time::sleep(wait).await;
        match lease.renew(LEASE_NAME).await {
            Ok(()) => (renewed, wait) = (Instant::now(), lease.duration / 3),
            Err(e) if renewed.elapsed() + retry > deadline => {
                return e.context("lost the catalog Lease");
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "could not renew the catalog Lease; retrying");
                wait = retry;
            }
        }
    }
}

const RETRY: Duration = Duration::from_secs(1);

/// Step down at shutdown so a standby need not wait for the Lease to expire.
pub async fn release(lease: &LeaseHolder) {
    if let Err(e) = tokio::time::timeout(Duration::from_secs(5), lease.release(LEASE_NAME))
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
    {
        tracing::warn!(error = %format!("{e:#}"), "could not release the catalog Lease; it expires on its own");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Probe;

    #[test]
    fn a_lease_loop_that_stops_turning_is_not_live() {
        let h = Heartbeat::new(Duration::from_millis(5));
        h.beat();
        assert_eq!(h.not_live(), None);
        assert_eq!(h.not_ready(), None, "a standby is ready too");
        // The property is about time passing: let it pass.
        std::thread::sleep(Duration::from_millis(20));
        assert!(h.not_live().unwrap().contains("has not turned"));
        h.beat();
        assert_eq!(h.not_live(), None);
    }
}
