//! The restart slots as a waiting agent sees them through its watch: which is its own, which is free
//! (never created, cleared, or expired), and when the next held one would expire. A slot expires by
//! its `renewTime` (the holder's clock) or, whichever comes first, when it has not changed for a whole
//! lease duration as this agent observed it (its own clock only, as client-go's leader election
//! judges a Lease) — so a holder whose clock runs ahead cannot keep a slot forever.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;

use rand::Rng;

use crate::lease::live_holder;

pub const SLOT_PREFIX: &str = "kwasm-agent-restart-";
/// `true` on the slots; `ticket-…` on a waiting node's ticket (`restart_queue`).
pub const SLOT_LABEL: &str = "kwasm.sh/restart-slot";

#[derive(Default)]
pub struct SlotView {
    /// name → (the Lease, when this agent saw its holder or renewal change).
    slots: BTreeMap<String, (Lease, Instant)>,
    /// name → the version of that slot this node wrote naming itself, then passed on.
    passed_on: BTreeMap<String, String>,
}

/// A slot this node may use.
#[derive(Debug, Clone, PartialEq)]
pub enum Opening {
    /// Never created: whoever creates it holds it.
    Missing(String),
    /// Cleared, or its holder stopped renewing.
    Free(Box<Lease>),
}

#[derive(Debug, PartialEq)]
pub enum Look {
    /// This node holds it (taken before, or handed over to it).
    Mine(Box<Lease>),
    Open(Opening),
    /// Every slot is held: by whom, and when the first of them would expire.
    Held {
        holders: Vec<String>,
        expires: Option<Instant>,
    },
}

impl SlotView {
    pub fn apply(&mut self, lease: Lease, now: Instant) {
        let Some(name) = lease.metadata.name.clone() else {
            return;
        };
        let observed = match self.slots.get(&name) {
            Some((old, seen)) if same_term(old, &lease) => *seen,
            _ => now,
        };
        self.slots.insert(name, (lease, observed));
    }

    /// Any Lease the watch delivered, by name (the count Lease beside the slots).
    pub fn lease(&self, name: &str) -> Option<&Lease> {
        self.slots.get(name).map(|(l, _)| l)
    }

    /// This node wrote `lease` naming itself and has passed it on since: the watch may still deliver
    /// that version, which is not this node's slot.
    pub fn passed_on(&mut self, lease: &Lease) {
        if let (Some(name), Some(version)) =
            (&lease.metadata.name, &lease.metadata.resource_version)
        {
            self.passed_on.insert(name.clone(), version.clone());
        }
    }

    fn passed_on_already(&self, name: &str, lease: &Lease) -> bool {
        self.passed_on
            .get(name)
            .is_some_and(|version| lease.metadata.resource_version.as_ref() == Some(version))
    }

    pub fn delete(&mut self, name: &str) {
        self.slots.remove(name);
    }

    pub fn replace_all(&mut self, leases: Vec<Lease>, now: Instant) {
        let mut fresh = SlotView {
            passed_on: std::mem::take(&mut self.passed_on),
            ..SlotView::default()
        };
        for l in leases {
            let name = l.metadata.name.clone().unwrap_or_default();
            match self.slots.remove(&name) {
                Some((old, seen)) if same_term(&old, &l) => {
                    fresh.slots.insert(name, (l, seen));
                }
                _ => fresh.apply(l, now),
            }
        }
        *self = fresh;
    }

    /// The first `slots` slots as `me` may use them.
    pub fn look(&self, slots: u32, me: &str, duration: Duration, now: Instant) -> Look {
        let wall = Timestamp::now();
        let (mut holders, mut expires, mut open) = (Vec::new(), None::<Instant>, Vec::new());
        for i in 0..slots {
            let name = format!("{SLOT_PREFIX}{i}");
            let Some((lease, seen)) = self.slots.get(&name) else {
                open.push(Opening::Missing(name));
                continue;
            };
            let by_observation = *seen + duration;
            match live_holder(lease, wall) {
                Some(h) if h == me && !self.passed_on_already(&name, lease) => {
                    return Look::Mine(Box::new(lease.clone()))
                }
                Some(h) if by_observation > now => {
                    holders.push(h.to_owned());
                    let by_renewal = renewal_expiry(lease, wall, now).unwrap_or(by_observation);
                    let first = by_observation.min(by_renewal);
                    expires = Some(expires.map_or(first, |e| e.min(first)));
                }
                _ => {
                    open.push(Opening::Free(Box::new(lease.clone())));
                }
            }
        }
        // Any of the open ones, at random: nodes that see several open at once (a fleet's first
        // look, slots added as a percentage grows) then rarely race for the same one.
        match open.len() {
            0 => Look::Held { holders, expires },
            n => Look::Open(open.swap_remove(rand::thread_rng().gen_range(0..n))),
        }
    }
}

/// Same holder, same renewal: nothing a watcher of the Lease learns from.
fn same_term(a: &Lease, b: &Lease) -> bool {
    let term = |l: &Lease| {
        l.spec
            .as_ref()
            .map(|s| (s.holder_identity.clone(), s.renew_time.clone()))
    };
    term(a) == term(b)
}

/// When `lease` expires by its own renewTime, on this agent's monotonic clock.
fn renewal_expiry(lease: &Lease, wall: Timestamp, now: Instant) -> Option<Instant> {
    let spec = lease.spec.as_ref()?;
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?.0;
    let lasts = Duration::from_secs(u64::try_from(spec.lease_duration_seconds?).ok()?);
    // A renewal "in the future" (the holder's clock ahead) counts as just now.
    let elapsed = Duration::try_from(renewed.duration_until(wall)).unwrap_or_default();
    Some(now + lasts.saturating_sub(elapsed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
    use k8s_openapi::jiff::SignedDuration;

    const D: Duration = Duration::from_secs(60);

    fn slot(i: u32, holder: Option<&str>, renewed_secs_ago: i64) -> Lease {
        let renewed = Timestamp::now() - SignedDuration::from_secs(renewed_secs_ago);
        Lease {
            metadata: ObjectMeta {
                name: Some(format!("{SLOT_PREFIX}{i}")),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(Into::into),
                renew_time: Some(MicroTime(renewed)),
                lease_duration_seconds: Some(60),
                ..Default::default()
            }),
        }
    }

    fn view(leases: Vec<Lease>, now: Instant) -> SlotView {
        let mut v = SlotView::default();
        v.replace_all(leases, now);
        v
    }

    #[test]
    fn a_node_finds_its_own_slot_first_then_an_open_one() {
        let now = Instant::now();
        let v = view(vec![slot(0, Some("a"), 1), slot(1, Some("me"), 1)], now);
        assert!(matches!(v.look(2, "me", D, now), Look::Mine(_)));
        assert_eq!(
            v.look(3, "b", D, now),
            Look::Open(Opening::Missing(format!("{SLOT_PREFIX}2")))
        );
        let cleared = view(vec![slot(0, None, 1)], now);
        assert!(matches!(
            cleared.look(1, "b", D, now),
            Look::Open(Opening::Free(_))
        ));
    }

    #[test]
    fn a_held_slot_expires_by_its_renewal_or_by_a_duration_without_change() {
        let now = Instant::now();
        let v = view(vec![slot(0, Some("a"), 50)], now);
        match v.look(1, "me", D, now) {
            Look::Held { holders, expires } => {
                assert_eq!(holders, ["a"]);
                let left = expires.unwrap() - now;
                assert!(left <= Duration::from_secs(11) && left >= Duration::from_secs(9));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            view(vec![slot(0, Some("a"), 61)], now).look(1, "me", D, now),
            Look::Open(Opening::Free(_))
        ));
        // A holder whose clock runs ahead: renewed "in the future", never renewed since.
        let ahead = view(vec![slot(0, Some("a"), -3600)], now);
        assert!(matches!(
            ahead.look(1, "me", D, now + D + Duration::from_millis(1)),
            Look::Open(Opening::Free(_))
        ));
    }

    #[test]
    fn a_slot_this_node_passed_on_is_not_read_as_its_own_until_it_comes_back() {
        let now = Instant::now();
        let versioned = |holder, rv: &str| {
            let mut l = slot(0, Some(holder), 0);
            l.metadata.resource_version = Some(rv.into());
            l
        };
        let mut v = view(vec![versioned("me", "5")], now);
        v.passed_on(&versioned("me", "5"));
        assert!(matches!(v.look(1, "me", D, now), Look::Held { .. }));
        // The same version again in a new listing: still not this node's.
        v.replace_all(vec![versioned("me", "5")], now);
        assert!(matches!(v.look(1, "me", D, now), Look::Held { .. }));
        v.apply(versioned("older", "6"), now);
        assert!(matches!(v.look(1, "me", D, now), Look::Held { .. }));
        // Handed back to it later (its turn in line): its own.
        v.apply(versioned("me", "9"), now);
        assert!(matches!(v.look(1, "me", D, now), Look::Mine(_)));
    }

    #[test]
    fn seeing_the_same_renewal_again_does_not_restart_the_observed_clock() {
        let t0 = Instant::now();
        let mut v = view(vec![slot(0, Some("a"), -3600)], t0);
        let same = v.slots.values().next().unwrap().0.clone();
        v.apply(same, t0 + Duration::from_secs(59));
        v.replace_all(vec![v.slots.values().next().unwrap().0.clone()], t0);
        assert!(matches!(
            v.look(1, "me", D, t0 + Duration::from_secs(61)),
            Look::Open(Opening::Free(_))
        ));
    }
}
