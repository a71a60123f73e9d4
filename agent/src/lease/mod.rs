//! Holding a `coordination.k8s.io/v1` Lease with plain requests guarded by resourceVersion (create,
//! replace), as client-go's leader election does: whoever writes first wins, a conflict means another
//! holder got there. Used by `election` (the restart grantor's, the catalog controller's) and for
//! the restart permits (`controller`).

pub mod election;

use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
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
    /// Create the Lease as its holder (its whole metadata given); None when somebody created it
    /// first, else the Lease as written.
    pub async fn create_held(&self, metadata: ObjectMeta) -> anyhow::Result<Option<Lease>> {
        let name = metadata.name.clone().unwrap_or_default();
        let lease = Lease {
            metadata,
            spec: Some(self.held_spec(Timestamp::now(), 0)),
        };
        match self.leases.create(&PostParams::default(), &lease).await {
            Ok(written) => Ok(Some(written)),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
            Err(e) => Err(e).with_context(|| format!("creating Lease {name}")),
        }
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

    /// Renew the Lease as `known` shows it, once: the Lease as written, None when it changed or
    /// went first (a write guarded by its version).
    pub async fn renewed(&self, known: &Lease) -> anyhow::Result<Option<Lease>> {
        let name = known.metadata.name.clone().unwrap_or_default();
        let mut lease = known.clone();
        if let Some(spec) = lease.spec.as_mut() {
            spec.renew_time = Some(MicroTime(Timestamp::now()));
        }
        match self
            .leases
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => Ok(Some(written)),
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(None),
            Err(e) => Err(e).with_context(|| format!("renewing Lease {name}")),
        }
    }

    /// Renew starting from the copy last seen (read again only when it changed since); the Lease as
    /// written. A Lease gone is the error of reading it again (404).
    pub async fn renew_from(&self, known: &Lease) -> anyhow::Result<Lease> {
        let name = known.metadata.name.clone().unwrap_or_default();
        let mut lease = known.clone();
        for _ in 0..2 {
            let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone());
            anyhow::ensure!(
                holder.as_deref() == Some(self.holder.as_str()),
                "the Lease is held by {holder:?} now"
            );
            match self.renewed(&lease).await? {
                Some(written) => return Ok(written),
                None => lease = self.leases.get(&name).await?,
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
