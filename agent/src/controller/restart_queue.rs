//! The line of nodes waiting for a restart slot, oldest first. A waiting agent joins it with a ticket:
//! a Lease named `kwasm-agent-wait-<unix ms>-<node>` (labelled `kwasm.sh/restart-waiter`, holder its
//! node, owned by its Node so a node deleted while it waits leaves the line with it). Names sort by
//! the time the wait began, and the API server lists in name order, so a small `limit` list answers
//! "who waited longest" in one small response however long the line is. Whoever frees a slot first
//! takes that node's ticket out of the line — a delete only one of several releasers can win — then
//! hands it the slot: a freed slot goes to exactly one waiter, with no race among the waiters.
//!
//! A ticket also carries `kwasm.sh/restart-slot=ticket-<digest of the node>`, so that the node's one
//! watch on the slots (`kwasm.sh/restart-slot in (true, ticket-…)`) sees its own ticket too: a ticket
//! taken out of the line by a releaser that died before handing the slot over is noticed, and the
//! node takes its place again under the same name.

use std::collections::BTreeMap;

use anyhow::Context;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use kube::Api;

pub const TICKET_PREFIX: &str = "kwasm-agent-wait-";
pub const TICKET_LABEL: &str = "kwasm.sh/restart-waiter";
/// An object name's limit (a DNS subdomain).
const NAME_MAX: usize = 253;

/// A place in the line: the ticket's name, the node it is for, and the ticket's uid (so a releaser
/// never takes out a ticket the node wrote again under the same name).
#[derive(Clone, Debug, PartialEq)]
pub struct Ticket {
    pub name: String,
    pub node: String,
    pub uid: Option<String>,
}

/// The `kwasm.sh/restart-slot` value of `node`'s ticket (label values are limited to 63 characters,
/// node names are not).
pub fn ticket_label(node: &str) -> String {
    use sha2::Digest;
    format!(
        "ticket-{}",
        hex::encode(&sha2::Sha256::digest(node.as_bytes())[..8])
    )
}

#[derive(Clone)]
pub struct RestartQueue {
    pub leases: Api<Lease>,
}

impl RestartQueue {
    /// Join the line for `node` (its Node's ownerReference, when known, takes the ticket away with
    /// a deleted node); `again` is the name of a ticket this node held and lost, to keep its place.
    pub async fn join(
        &self,
        node: &str,
        owner: Option<OwnerReference>,
        again: Option<&str>,
    ) -> anyhow::Result<Ticket> {
        let now = Timestamp::now();
        let name = again.map_or_else(|| ticket_name(node, now.as_millisecond()), str::to_owned);
        let ticket = Lease {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([
                    (TICKET_LABEL.to_owned(), "true".to_owned()),
                    (super::slot_view::SLOT_LABEL.to_owned(), ticket_label(node)),
                ])),
                owner_references: owner.map(|o| vec![o]),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(node.to_owned()),
                acquire_time: Some(MicroTime(now)),
                ..Default::default()
            }),
        };
        let uid = match self.leases.create(&PostParams::default(), &ticket).await {
            Ok(written) => written.metadata.uid,
            // Written again while the old one is still there: the old one stands.
            Err(kube::Error::Api(s)) if s.code == 409 && again.is_some() => None,
            Err(e) => return Err(e).with_context(|| format!("joining the restart line ({name})")),
        };
        Ok(Ticket {
            name,
            node: node.to_owned(),
            uid,
        })
    }

    /// The nodes that have waited longest, oldest first (at most `few`).
    pub async fn oldest(&self, few: u32) -> anyhow::Result<Vec<Ticket>> {
        let first = self
            .leases
            .list(&ListParams::default().labels(TICKET_LABEL).limit(few))
            .await
            .context("reading the restart line")?;
        Ok(first.items.into_iter().filter_map(ticket_of).collect())
    }

    /// Take `ticket` out of the line to hand its node a slot: false when another releaser did first.
    pub async fn take_out(&self, ticket: &Ticket) -> anyhow::Result<bool> {
        let dp = DeleteParams::default().preconditions(Preconditions {
            uid: ticket.uid.clone(),
            resource_version: None,
        });
        match self.leases.delete(&ticket.name, &dp).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
            Err(e) => {
                Err(e).with_context(|| format!("taking {} out of the restart line", ticket.name))
            }
        }
    }

    /// Leave the line (a ticket already gone is fine).
    pub async fn leave(&self, ticket: &str) -> anyhow::Result<()> {
        match self.leases.delete(ticket, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e).with_context(|| format!("leaving the restart line ({ticket})")),
        }
    }
}

/// A ticket as listed or watched.
pub fn ticket_of(l: Lease) -> Option<Ticket> {
    Some(Ticket {
        node: l.spec?.holder_identity?,
        name: l.metadata.name?,
        uid: l.metadata.uid,
    })
}

/// Zero-padded milliseconds first, so that name order is waiting order; the node's name after it,
/// shortened (never below uniqueness: the time and a digest of the full name stay) if too long.
pub fn ticket_name(node: &str, unix_ms: i64) -> String {
    let head = format!("{TICKET_PREFIX}{:015}-", unix_ms.max(0));
    let whole = format!("{head}{node}");
    if whole.len() <= NAME_MAX {
        return whole;
    }
    use sha2::Digest;
    let digest = hex::encode(&sha2::Sha256::digest(node.as_bytes())[..8]);
    let keep = NAME_MAX - head.len() - digest.len() - 1;
    let cut = node[..keep].trim_end_matches(['-', '.']);
    format!("{head}{cut}-{digest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_names_sort_by_waiting_time() {
        let early = ticket_name("zz-node", 1_700_000_000_000);
        let late = ticket_name("aa-node", 1_700_000_000_001);
        assert!(early < late);
        assert_eq!(early, "kwasm-agent-wait-001700000000000-zz-node");
        let far = ticket_name("n", 99_999_999_999_999);
        assert!(late < far, "the width holds for centuries");
    }

    #[test]
    fn a_long_node_name_is_shortened_but_stays_unique() {
        let a = "a".repeat(250);
        let b = format!("{}b", "a".repeat(249));
        let (ta, tb) = (ticket_name(&a, 1), ticket_name(&b, 1));
        assert!(ta.len() <= NAME_MAX && tb.len() <= NAME_MAX);
        assert_ne!(ta, tb);
        assert!(ta.starts_with("kwasm-agent-wait-000000000000001-aaa"));
    }
}
