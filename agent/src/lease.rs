//! Holding a `coordination.k8s.io/v1` Lease with plain requests guarded by resourceVersion (create,
//! replace), as client-go's leader election does: whoever writes first wins, a conflict means another
//! holder got there. Used for the restart slots (`controller`) and the catalog controller's leader.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::Api;

#[derive(Clone)]
pub struct LeaseHolder {
    pub leases: Api<Lease>,
    /// Who holds: a node or pod name.
    pub holder: String,
    pub duration: Duration,
}

impl LeaseHolder {
    /// Create the Lease as its holder; false when somebody created it first.
    pub async fn create(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> anyhow::Result<bool> {
        Ok(self.create_held(name, labels).await?.is_some())
    }

    /// `create`, answering with the Lease as written.
    pub async fn create_held(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> anyhow::Result<Option<Lease>> {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(labels),
                ..Default::default()
            },
            spec: Some(self.held_spec(Timestamp::now(), 0)),
        };
        match self.leases.create(&PostParams::default(), &lease).await {
            Ok(written) => Ok(Some(written)),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
            Err(e) => Err(e).with_context(|| format!("creating Lease {name}")),
        }
    }

    /// Hold an existing (free, expired or own) Lease; false when somebody changed it first.
    pub async fn take_over(&self, current: &Lease) -> anyhow::Result<bool> {
        Ok(self.hand_over(current, Some(&self.holder)).await?.is_some())
    }

    /// Write `to` as the holder of a Lease as `current` shows it (None clears it), as of now; false
    /// when somebody changed it first, else the Lease as written. Handing over counts a transition
    /// when the holder changes.
    pub async fn hand_over(
        &self,
        current: &Lease,
        to: Option<&str>,
    ) -> anyhow::Result<Option<Lease>> {
        let name = current.metadata.name.clone().unwrap_or_default();
        let spec = current.spec.clone().unwrap_or_default();
        let now = Timestamp::now();
        let mut lease = current.clone();
        lease.spec = Some(match to {
            Some(to) => {
                let transitions = spec.lease_transitions.unwrap_or(0)
                    + i32::from(spec.holder_identity.as_deref() != Some(to));
                LeaseSpec {
                    holder_identity: Some(to.to_owned()),
                    ..self.held_spec(now, transitions)
                }
            }
            None => LeaseSpec {
                holder_identity: None,
                renew_time: Some(MicroTime(now)),
                ..spec
            },
        });
        match self
            .leases
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => Ok(Some(written)),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
            Err(e) => Err(e).with_context(|| format!("writing Lease {name}")),
        }
    }

    fn held_spec(&self, now: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.holder.clone()),
            lease_duration_seconds: Some(self.duration.as_secs().clamp(1, i32::MAX as u64) as i32),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Renew a Lease this holder holds; an error when it does not (any more).
    pub async fn renew(&self, name: &str) -> anyhow::Result<()> {
        let lease = self.leases.get(name).await?;
        self.renew_from(&lease).await.map(drop)
    }

    /// Renew starting from the copy last seen (read again only when it changed since); the Lease as
    /// written.
    pub async fn renew_from(&self, known: &Lease) -> anyhow::Result<Lease> {
        let name = known.metadata.name.clone().unwrap_or_default();
        let mut lease = known.clone();
        for _ in 0..2 {
            let spec = lease.spec.get_or_insert_with(Default::default);
            anyhow::ensure!(
                spec.holder_identity.as_deref() == Some(self.holder.as_str()),
                "the Lease is held by {:?} now",
                spec.holder_identity
            );
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            match self
                .leases
                .replace(&name, &PostParams::default(), &lease)
                .await
            {
                Ok(written) => return Ok(written),
                Err(kube::Error::Api(s)) if s.code == 409 => lease = self.leases.get(&name).await?,
                Err(e) => return Err(e).with_context(|| format!("renewing Lease {name}")),
            }
        }
        anyhow::bail!("Lease {name} kept changing under its renewal")
    }

    /// Clear the holder so the next one need not wait for the Lease to expire; a no-op when
    /// somebody else holds it.
    pub async fn release(&self, name: &str) -> anyhow::Result<()> {
        let lease = self.leases.get(name).await?;
        if !self.holds(&lease) {
            return Ok(());
        }
        anyhow::ensure!(
            self.hand_over(&lease, None).await?.is_some(),
            "Lease {name} changed while it was being released"
        );
        Ok(())
    }

    pub fn holds(&self, lease: &Lease) -> bool {
        lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(self.holder.as_str())
    }
}

/// Where a component's Leases live: the setting `key` names, else the pod's own namespace.
pub fn namespace(configured: Option<&str>, key: &str) -> anyhow::Result<String> {
    match configured {
        Some(ns) => Ok(ns.to_owned()),
        None => std::env::var("POD_NAMESPACE").with_context(|| {
            format!("{key} is not set and neither is POD_NAMESPACE (the chart sets it from the downward API)")
        }),
    }
}

/// The holder of a Lease that has not expired.
pub fn live_holder(lease: &Lease, now: Timestamp) -> Option<&str> {
    let spec = lease.spec.as_ref()?;
    let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty())?;
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?.0;
    let lasts = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    (renewed.checked_add(lasts).ok()? > now).then_some(holder)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renewed_secs_ago: i64, duration: i32) -> Lease {
        let now = Timestamp::now();
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(Into::into),
                renew_time: Some(MicroTime(
                    now.checked_sub(SignedDuration::from_secs(renewed_secs_ago))
                        .unwrap(),
                )),
                lease_duration_seconds: Some(duration),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_lease_is_held_until_it_expires_or_is_cleared() {
        let now = Timestamp::now();
        assert_eq!(live_holder(&lease(Some("n1"), 10, 60), now), Some("n1"));
        assert_eq!(
            live_holder(&lease(Some("n1"), 61, 60), now),
            None,
            "expired"
        );
        assert_eq!(live_holder(&lease(None, 1, 60), now), None, "released");
        assert_eq!(live_holder(&lease(Some(""), 1, 60), now), None, "released");
        let mut odd = lease(Some("n1"), 1, 60);
        odd.spec.as_mut().unwrap().renew_time = None;
        assert_eq!(live_holder(&odd, now), None, "never renewed nor acquired");
    }
}
