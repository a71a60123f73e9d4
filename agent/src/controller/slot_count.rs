//! How many restart slots there are. A count is a count; a percentage is of the nodes that ask for
//! shims, and counting them means listing every asking Node's metadata — the costliest request the
//! agent makes (about 300 bytes a node: 1.5 MB at 5,000 nodes). So the fleet counts once for all:
//! whoever counts writes the figure on the Lease `kwasm-agent-restart-count` (labelled
//! `kwasm.sh/restart-slot=count`, so the slot watch every waiting agent holds delivers it), and
//! every agent uses a figure younger than `RECOUNT_AFTER` from there instead of listing; a waiting
//! agent follows the figure as it changes (a rollout's first count sees few nodes asking yet). When
//! the figure grows stale, waiters recount at random moments within `RECOUNT_SPREAD` after, and the
//! first to share makes the others stand down. The list itself is served from the API server's cache
//! (`resourceVersion=0`), not read through to etcd.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ListParams, PostParams};
use kube::Api;

use super::slot_view::SLOT_LABEL;
use crate::node_contract::labels::PROVISIONED_LABEL;
use crate::settings::Concurrency;

pub const COUNT_NAME: &str = "kwasm-agent-restart-count";
pub const COUNT_LABEL_VALUE: &str = "count";
const ASKING_ANNOTATION: &str = "kwasm.sh/asking-nodes";
/// The figure before the last count: while they differ (a rollout starting, nodes claiming one after
/// another), the figure is taken again soon.
const BEFORE_ANNOTATION: &str = "kwasm.sh/asking-nodes-before";
const RECOUNT_WHILE_CHANGING: Duration = Duration::from_secs(5);
/// A figure that moved by more than a tenth is taken again sooner still: a rollout's first count sees
/// only the nodes that claimed so far, and every slot it misses stays idle until the next count
/// (`bench-rollout`, 10% of 100: six restarts a second instead of ten for the first five seconds).
/// A tenth keeps the extra counts to the start: once the figure is large, the nodes still claiming
/// move it by less.
const RECOUNT_WHILE_MOVING_FAST: Duration = Duration::from_secs(1);
/// A count this old is taken again (at 5,000 nodes: one 1.5 MB list a minute, fleet-wide).
pub const RECOUNT_AFTER: Duration = Duration::from_secs(60);
/// Waiters that find the count stale recount at a random moment within this long.
pub const RECOUNT_SPREAD: Duration = Duration::from_secs(30);

/// The number of asking nodes a count Lease says, if it is recent enough (by its `renewTime`):
/// `RECOUNT_AFTER`, or `RECOUNT_WHILE_CHANGING` while the figure is still moving
/// (`RECOUNT_WHILE_MOVING_FAST` while it moves by more than a tenth).
pub fn shared_count(lease: &Lease, now: Timestamp) -> Option<usize> {
    let counted = lease.spec.as_ref()?.renew_time.as_ref()?.0;
    let annotations = lease.metadata.annotations.as_ref()?;
    let asking: usize = annotations.get(ASKING_ANNOTATION)?.parse().ok()?;
    // No figure before (the first count) moved from nothing.
    let before: usize = annotations
        .get(BEFORE_ANNOTATION)
        .and_then(|b| b.parse().ok())
        .unwrap_or(0);
    let fresh_for = match asking.abs_diff(before) {
        0 => RECOUNT_AFTER,
        moved if moved.saturating_mul(10) > before => RECOUNT_WHILE_MOVING_FAST,
        _ => RECOUNT_WHILE_CHANGING,
    };
    (counted.duration_until(now) <= SignedDuration::try_from(fresh_for).ok()?).then_some(asking)
}

pub struct SlotCounter {
    pub nodes: Api<Node>,
    pub leases: Api<Lease>,
    pub concurrency: Concurrency,
    pub me: String,
}

impl SlotCounter {
    /// The slots a fixed count or the fleet's recent shared count says (`current`: the count
    /// Lease as the slot watch shows it); None when a percentage needs counting.
    pub fn known(&self, current: Option<&Lease>) -> Option<u32> {
        match self.concurrency {
            Concurrency::Count(n) => Some(n.max(1)),
            Concurrency::Percent(_) => current
                .and_then(|l| shared_count(l, Timestamp::now()))
                .map(|asking| self.concurrency.of(asking.max(1))),
        }
    }

    /// Count the asking nodes, share the figure, and say the slots it makes.
    pub async fn count(&self, current: Option<&Lease>) -> anyhow::Result<u32> {
        let asking = self
            .nodes
            .list_metadata(&ListParams::default().labels(PROVISIONED_LABEL).match_any())
            .await
            .context("counting the nodes that ask for shims")?
            .items
            .len();
        if let Err(e) = self.share(current, asking).await {
            tracing::info!(error = %format!("{e:#}"), "could not share the count of asking nodes; others count for themselves");
        }
        Ok(self.concurrency.of(asking.max(1)))
    }

    async fn share(&self, current: Option<&Lease>, asking: usize) -> anyhow::Result<()> {
        let mut lease = current.cloned().unwrap_or_else(|| Lease {
            metadata: ObjectMeta {
                name: Some(COUNT_NAME.to_owned()),
                ..Default::default()
            },
            spec: None,
        });
        lease.metadata.labels = Some(BTreeMap::from([(
            SLOT_LABEL.to_owned(),
            COUNT_LABEL_VALUE.to_owned(),
        )]));
        let annotations = lease
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        let before = annotations
            .get(ASKING_ANNOTATION)
            .cloned()
            .unwrap_or_default();
        annotations.insert(BEFORE_ANNOTATION.to_owned(), before);
        annotations.insert(ASKING_ANNOTATION.to_owned(), asking.to_string());
        let now = MicroTime(Timestamp::now());
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.me.clone()),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            ..Default::default()
        });
        let pp = PostParams::default();
        match current {
            Some(_) => self.leases.replace(COUNT_NAME, &pp, &lease).await?,
            None => self.leases.create(&pp, &lease).await?,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(asking: &str, secs_ago: i64) -> Lease {
        Lease {
            metadata: ObjectMeta {
                annotations: Some(
                    [
                        (ASKING_ANNOTATION.to_owned(), asking.to_owned()),
                        (BEFORE_ANNOTATION.to_owned(), asking.to_owned()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                renew_time: Some(MicroTime(
                    Timestamp::now() - SignedDuration::from_secs(secs_ago),
                )),
                ..Default::default()
            }),
        }
    }

    fn moved(asking: &str, before: &str, secs_ago: i64) -> Lease {
        let mut lease = count(asking, secs_ago);
        let a = lease.metadata.annotations.as_mut().unwrap();
        a.insert(BEFORE_ANNOTATION.to_owned(), before.to_owned());
        lease
    }

    #[test]
    fn a_figure_that_moved_by_more_than_a_tenth_is_taken_again_within_a_second() {
        let now = Timestamp::now();
        // A rollout's start: 60 of 100 nodes had claimed at the first count.
        assert_eq!(shared_count(&moved("60", "", 0), now), Some(60));
        assert_eq!(shared_count(&moved("60", "", 2), now), None);
        assert_eq!(shared_count(&moved("100", "60", 2), now), None);
        assert_eq!(shared_count(&moved("40", "100", 2), now), None);
        // A large figure the last few claims moved by less than a tenth.
        assert_eq!(shared_count(&moved("4812", "4790", 2), now), Some(4812));
        assert_eq!(shared_count(&moved("4812", "4790", 6), now), None);
        assert_eq!(shared_count(&moved("4812", "4812", 6), now), Some(4812));
    }

    #[test]
    fn a_recent_shared_count_is_used_and_an_old_or_odd_one_is_not() {
        let now = Timestamp::now();
        assert_eq!(shared_count(&count("4812", 10), now), Some(4812));
        assert_eq!(shared_count(&count("4812", 61), now), None);
        assert_eq!(shared_count(&count("many", 10), now), None);
        let mut growing = count("4812", 10);
        let a = growing.metadata.annotations.as_mut().unwrap();
        a.insert(BEFORE_ANNOTATION.to_owned(), "700".to_owned());
        assert_eq!(
            shared_count(&growing, now),
            None,
            "a moving figure is taken again soon"
        );
    }
}
