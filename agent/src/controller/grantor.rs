//! The grantor: one agent at a time (elected on the Lease `kwasm-agent-restart-grantor`) decides
//! which nodes may restart containerd. It sees asks through one watch of Nodes' metadata (the phase
//! WaitingForRestart in a node's status annotation), keeps the asking nodes in the order it saw them
//! (a backlog found at once — a new grantor's — in name order), and keeps at most N permits granted
//! (`permit`), N counted from the same watch for a percentage. It takes a permit back when its node
//! went away, stopped renewing for a lease duration, or held it past the deadline — all measured by
//! its own monotonic clock. An ask is served once: a node is served again only when it asks anew.
//! Before granting anything, a new grantor has listed every permit there is.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use futures_util::future::join_all;
use futures_util::stream::{self, BoxStream};
use futures_util::{FutureExt, StreamExt};
use indexmap::IndexSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, ListParams, PartialObjectMeta, Preconditions};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use tokio::time::Instant;

use super::permit::{self, GRANTED, GRANTOR_LEASE, PERMIT_LABEL, STATE};
use crate::lease::election::Election;
use crate::lease::LeaseHolder;
use crate::node_contract::labels::STATUS_ANNOTATION;
use crate::node_contract::status::{Phase, StatusDoc};
use crate::node_contract::trigger::meta_asks_for_shims;
use crate::settings::{Concurrency, TriggerSettings};

pub struct Rules {
    pub metrics: super::grantor_metrics::GrantorMetrics,
    pub concurrency: Concurrency,
    pub lease_duration: Duration,
    /// A permit held longer than this is taken back even while renewed.
    pub deadline: Duration,
    pub trigger: TriggerSettings,
}

/// Stand for grantor for the agent's whole life: lead when elected, stand by otherwise.
pub async fn campaign(election: &Election, client: kube::Client, rules: Rules) {
    loop {
        let held = match election.lead().await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "standing for grantor failed; again shortly");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        };
        tracing::info!("granting restart permits for the fleet");
        rules.metrics.leading.set(1);
        clean_previous(&election.lease.leases).await;
        let mut g = Grantor {
            permits: election.lease.leases.clone(),
            rules: &rules,
            nodes: BTreeMap::new(),
            held: BTreeMap::new(),
            line: IndexSet::new(),
            nodes_relisted: None,
            permits_relisted: None,
            unlisted: Vec::new(),
        };
        let why = tokio::select! {
            lost = election.keep(held) => lost,
            ended = g.run(Api::all(client.clone())) => ended,
        };
        rules.metrics.stood_down();
        tracing::warn!(error = %format!("{why:#}"), "stopped granting restart permits");
    }
}

/// The previous version's pacing (restart slots and the line of tickets): gone once a grantor
/// decides, so an upgrade leaves nothing behind.
async fn clean_previous(leases: &Api<Lease>) {
    for label in ["kwasm.sh/restart-slot", "kwasm.sh/restart-waiter"] {
        let old = leases
            .list_metadata(&ListParams::default().labels(label))
            .await;
        for name in old.into_iter().flatten().filter_map(|l| l.metadata.name) {
            match leases.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {
                    tracing::info!(lease = %name, "deleted the previous version's restart Lease")
                }
                Err(e) => {
                    tracing::warn!(lease = %name, error = %e, "could not delete the previous version's Lease")
                }
            }
        }
    }
}

pub fn election(leases: Api<Lease>, me: &str, duration: Duration) -> Election {
    let holder = me.to_owned();
    Election::new(
        LeaseHolder {
            leases,
            holder,
            duration,
        },
        GRANTOR_LEASE,
    )
}

/// What the grantor keeps of a Node: a fleet's full metadata (managed fields, every label) would
/// make the agent that holds the grantor several times larger than the others. Nodes neither
/// triggered nor written by an agent are not kept at all.
struct NodeSeen {
    uid: String,
    triggered: bool,
    /// The node's status annotation: it asks while its phase says it waits for a restart.
    ask: Option<String>,
    /// This very ask was granted already: the node's watch and this one are two streams, and a
    /// node that gave its permit back may still read as asking here.
    answered: bool,
}

impl NodeSeen {
    fn new(
        before: Option<&Self>,
        node: PartialObjectMeta<Node>,
        trigger: &TriggerSettings,
    ) -> Option<Self> {
        let triggered = meta_asks_for_shims(&node.metadata, trigger);
        let mut metadata = node.metadata;
        let ask = (metadata.annotations.as_mut()).and_then(|a| a.remove(STATUS_ANNOTATION));
        let answered = before.is_some_and(|b| b.answered && b.ask == ask);
        let uid = metadata.uid.unwrap_or_default();
        (triggered || ask.is_some()).then_some(Self {
            uid,
            triggered,
            ask,
            answered,
        })
    }

    fn asks(&self) -> bool {
        !self.answered && StatusDoc::phase_in(self.ask.as_deref()) == Some(Phase::WaitingForRestart)
    }
}

/// A permit as the grantor's own clock sees it: since it was first seen, and its last change.
struct Seen {
    lease: Lease,
    changed: Instant,
    since: Instant,
}

fn seen(before: Option<&Seen>, lease: Lease) -> Seen {
    let now = Instant::now();
    let same = |b: &&Seen| b.lease.metadata.resource_version == lease.metadata.resource_version;
    let changed = before.filter(same).map_or(now, |b| b.changed);
    let since = before.map_or(now, |b| b.since);
    Seen {
        lease,
        changed,
        since,
    }
}

enum Change {
    Nodes(watcher::Result<Event<PartialObjectMeta<Node>>>),
    Permits(watcher::Result<Event<Lease>>),
}

struct Grantor<'a> {
    permits: Api<Lease>,
    rules: &'a Rules,
    nodes: BTreeMap<String, NodeSeen>,
    /// Permits granted, by node.
    held: BTreeMap<String, Seen>,
    /// Asking nodes, oldest ask first.
    line: IndexSet<String>,
    /// Relists under way, built aside until complete.
    nodes_relisted: Option<BTreeMap<String, NodeSeen>>,
    permits_relisted: Option<BTreeMap<String, Seen>>,
    /// Permits held here that the last relist did not show: to be looked up.
    unlisted: Vec<String>,
}

impl Grantor<'_> {
    async fn run(&mut self, nodes: Api<PartialObjectMeta<Node>>) -> anyhow::Error {
        let long = || watcher::Config::default().timeout(3600);
        // Small pages: a fleet's Nodes listed 500 at a time (the default) would raise this
        // agent's memory for good, once, well above every other agent's.
        let nodes: BoxStream<_> = watcher(nodes, long().page_size(100))
            .default_backoff()
            .map(Change::Nodes)
            .boxed();
        let permits = watcher(self.permits.clone(), long().labels(PERMIT_LABEL)).default_backoff();
        let mut changes = stream::select(nodes, permits.map(Change::Permits).boxed());
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut listed = (false, false);
        loop {
            let first = tokio::select! {
                change = changes.next() => match change {
                    Some(change) => Some(change),
                    None => return anyhow::anyhow!("the watches of Nodes and permits ended"),
                },
                _ = tick.tick() => None,
            };
            // Whatever else has arrived already: one step for all of it.
            let arrived = std::iter::from_fn(|| changes.next().now_or_never().flatten());
            for change in first.into_iter().chain(arrived) {
                self.apply(change, &mut listed);
            }
            if listed == (true, true) {
                self.step().await;
            }
        }
    }

    fn apply(&mut self, change: Change, listed: &mut (bool, bool)) {
        let trigger = &self.rules.trigger;
        match change {
            Change::Nodes(Ok(ev)) => {
                let name = |n: &PartialObjectMeta<Node>| n.metadata.name.clone();
                let keep = |b: Option<&NodeSeen>, n| NodeSeen::new(b, n, trigger);
                if relist(
                    ev,
                    &mut self.nodes,
                    &mut self.nodes_relisted,
                    true,
                    name,
                    keep,
                ) {
                    listed.0 = true;
                    // Listing thousands of Nodes left behind what decoding them took, though
                    // only the few that ask are kept: handed back, as after each reconcile.
                    super::release_freed_memory();
                }
            }
            // Only this grantor creates permits: a relist adds what it did not know (a
            // predecessor's last grant) and drops nothing at once — a permit it does not show was
            // given back while the watch was down, or granted here after the list was taken, and
            // is looked up before the next grant.
            Change::Permits(Ok(ev)) => {
                if let (Event::InitDone, Some(listed)) = (&ev, &self.permits_relisted) {
                    let unlisted = self.held.keys().filter(|n| !listed.contains_key(*n));
                    self.unlisted = unlisted.cloned().collect();
                }
                let node = |l: &Lease| permit::granted_to(l).map(str::to_owned);
                let keep = |b: Option<&Seen>, l| Some(seen(b, l));
                listed.1 |= relist(
                    ev,
                    &mut self.held,
                    &mut self.permits_relisted,
                    false,
                    node,
                    keep,
                );
            }
            Change::Nodes(Err(e)) => tracing::warn!(error = %e, "watching Nodes (retrying)"),
            Change::Permits(Err(e)) => {
                tracing::warn!(error = %e, "watching restart permits (retrying)")
            }
        }
    }

    /// Take back what must be, then grant free permits to the oldest asks (at once, together).
    async fn step(&mut self) {
        self.look_up_unlisted().await;
        self.take_back().await;
        let (nodes, held) = (&self.nodes, &self.held);
        let wants =
            |name: &String| nodes.get(name).is_some_and(NodeSeen::asks) && !held.contains_key(name);
        self.line.retain(wants);
        self.line.extend(nodes.keys().filter(|n| wants(n)).cloned());
        let triggered = nodes.values().filter(|n| n.triggered).count();
        let n = self.rules.concurrency.of(triggered) as usize;
        let turn: Vec<String> = self
            .line
            .iter()
            .take(n.saturating_sub(held.len()))
            .cloned()
            .collect();
        let grants = join_all(turn.iter().map(|node| self.grant(node))).await;
        for (node, granted) in turn.into_iter().zip(grants) {
            match granted {
                Ok(lease) => {
                    self.rules.metrics.grants.inc();
                    self.line.shift_remove(&node);
                    if let Some(n) = self.nodes.get_mut(&node) {
                        n.answered = true;
                    }
                    self.held.insert(node.clone(), seen(None, lease));
                    tracing::info!(node = %node, of = n, waiting = self.line.len(), "granted a restart permit");
                }
                // Its place kept: tried again on the next step (a second, or the next event).
                Err(e) => {
                    tracing::warn!(node = %node, error = %format!("{e:#}"), "could not grant a restart permit; trying again")
                }
            }
        }
        self.rules.metrics.granted.set(self.held.len() as i64);
        self.rules.metrics.waiting.set(self.line.len() as i64);
    }

    /// Permits a relist did not show: dropped when gone, so a slot freed while the watch was down
    /// is not held until its permit would be taken back.
    async fn look_up_unlisted(&mut self) {
        for node in std::mem::take(&mut self.unlisted) {
            match self.permits.get_opt(&permit::name(&node)).await {
                Ok(None) => drop(self.held.remove(&node)),
                Ok(Some(_)) => {}
                Err(e) => {
                    tracing::warn!(node = %node, error = %e, "could not look up a restart permit; again shortly");
                    self.unlisted.push(node);
                }
            }
        }
    }

    /// Take permits back: whose node is gone, stopped renewing, or overran the deadline (deleted
    /// together; guarded by the version seen, so a renewal that got there first keeps it).
    async fn take_back(&mut self) {
        let why = |node: &String, s: &Seen| match () {
            _ if !self.nodes.contains_key(node) => Some("its Node is gone"),
            _ if s.changed.elapsed() >= self.rules.lease_duration => Some("it stopped renewing it"),
            _ if s.since.elapsed() >= self.rules.deadline => Some("it held it past the deadline"),
            _ => None,
        };
        let due: Vec<_> = (self.held.iter())
            .filter_map(|(node, s)| {
                Some((
                    node.clone(),
                    why(node, s)?,
                    s.lease.metadata.resource_version.clone(),
                ))
            })
            .collect();
        let deletes = due.iter().map(|(node, _, rv)| {
            let guard = Preconditions {
                resource_version: rv.clone(),
                uid: None,
            };
            let params = DeleteParams::default().preconditions(guard);
            let (permits, name) = (&self.permits, permit::name(node));
            async move { permits.delete(&name, &params).await }
        });
        let answers = join_all(deletes).await;
        for ((node, why, _), answer) in due.into_iter().zip(answers) {
            match answer {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    tracing::warn!(node = %node, error = %e, "could not take a restart permit back; again shortly");
                    continue;
                }
            }
            self.held.remove(&node);
            self.rules.metrics.taken_back.inc();
            tracing::warn!(node = %node, "took a restart permit back: {why}");
        }
    }

    async fn grant(&self, node: &str) -> anyhow::Result<Lease> {
        let owner = OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: node.to_owned(),
            uid: self.nodes[node].uid.clone(),
            ..Default::default()
        };
        let metadata = ObjectMeta {
            name: Some(permit::name(node)),
            labels: Some([(PERMIT_LABEL.to_owned(), "true".to_owned())].into()),
            annotations: Some([(STATE.to_owned(), GRANTED.to_owned())].into()),
            owner_references: Some(vec![owner]),
            ..Default::default()
        };
        let (leases, holder, duration) = (
            self.permits.clone(),
            node.to_owned(),
            self.rules.lease_duration,
        );
        let lease = LeaseHolder {
            leases,
            holder,
            duration,
        }
        .create_held(metadata)
        .await?;
        lease.context("a permit for it exists already (the watch will show it)")
    }
}

/// A watch event applied to `map` (keyed by `key`). A relist builds its list aside and, when it is
/// complete and `replace` says so, replaces `map` whole (whatever went while the watch was down goes
/// too); until then `map` stays as it was. An object `value` gives nothing for is not kept. True
/// once a list is complete.
fn relist<T, V>(
    ev: Event<T>,
    map: &mut BTreeMap<String, V>,
    buf: &mut Option<BTreeMap<String, V>>,
    replace: bool,
    key: impl Fn(&T) -> Option<String>,
    value: impl Fn(Option<&V>, T) -> Option<V>,
) -> bool {
    match ev {
        Event::Init => *buf = Some(BTreeMap::new()),
        Event::InitApply(o) => {
            if let (Some(k), Some(b)) = (key(&o), buf.as_mut()) {
                b.extend(value(map.get(&k), o).map(|v| (k, v)));
            }
        }
        Event::InitDone => {
            let listed = buf.take().unwrap_or_default();
            match replace {
                true => *map = listed,
                false => map.extend(listed),
            }
            return true;
        }
        Event::Apply(o) => {
            if let Some(k) = key(&o) {
                match value(map.get(&k), o) {
                    Some(v) => map.insert(k, v),
                    None => map.remove(&k),
                };
            }
        }
        Event::Delete(o) => {
            key(&o).map(|k| map.remove(&k));
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, annotations: &[(&str, &str)]) -> PartialObjectMeta<Node> {
        let mut n = PartialObjectMeta::<Node>::default();
        n.metadata.name = Some(name.into());
        n.metadata.uid = Some(format!("uid-{name}"));
        let a = annotations.iter().map(|(k, v)| ((*k).into(), (*v).into()));
        n.metadata.annotations = Some(a.collect());
        n
    }

    #[test]
    fn only_nodes_an_agent_acts_on_are_kept_and_an_ask_is_read_from_the_status() {
        let trigger = TriggerSettings::default();
        let asking = r#"{"phase":"WaitingForRestart","shims":[],"time":"2026-12-07T00:00:00Z"}"#;
        let status = crate::node_contract::labels::STATUS_ANNOTATION;
        assert!(NodeSeen::new(None, node("plain", &[("other", "x")]), &trigger).is_none());
        let triggered = NodeSeen::new(
            None,
            node("t", &[("kwasm.sh/kwasm-node", "true")]),
            &trigger,
        );
        let triggered = triggered.expect("a triggered node is kept");
        assert!(triggered.triggered && !triggered.asks());
        assert_eq!(triggered.uid, "uid-t");
        // An agent's status outlives the trigger (it is removing what it installed): still kept.
        let untriggered = NodeSeen::new(None, node("u", &[(status, asking)]), &trigger).unwrap();
        assert!(!untriggered.triggered && untriggered.asks());
        assert_eq!(untriggered.ask.as_deref(), Some(asking));
    }

    #[test]
    fn an_update_that_makes_a_node_uninteresting_drops_it_and_a_relist_replaces_the_map() {
        let (mut map, mut buf) = (BTreeMap::new(), None);
        let mut see = |ev, keep: fn(Option<&u32>, u32) -> Option<u32>| {
            relist(
                ev,
                &mut map,
                &mut buf,
                true,
                |n: &u32| Some(n.to_string()),
                keep,
            )
        };
        let keep_even = |_: Option<&u32>, n: u32| n.is_multiple_of(2).then_some(n);
        see(Event::Apply(2), keep_even);
        // The same key, now refused: gone.
        see(Event::Apply(2), |_, _| None);
        see(Event::Apply(4), keep_even);
        // A relist: the map stays as it was until the list is complete, then is replaced.
        assert!(!see(Event::Init, keep_even));
        see(Event::InitApply(6), keep_even);
        see(Event::InitApply(7), keep_even);
        assert!(see(Event::InitDone, keep_even));
        assert_eq!(map.keys().collect::<Vec<_>>(), ["6"]);
    }

    #[test]
    fn an_answered_ask_is_not_served_again_until_the_node_asks_anew() {
        let trigger = TriggerSettings::default();
        let status = crate::node_contract::labels::STATUS_ANNOTATION;
        let ask = |t: &str| format!(r#"{{"phase":"WaitingForRestart","shims":[],"time":"{t}"}}"#);
        let first = ask("2026-12-07T00:00:00Z");
        let mut seen = NodeSeen::new(None, node("n", &[(status, &first)]), &trigger).unwrap();
        assert!(seen.asks());
        seen.answered = true;
        let again = NodeSeen::new(Some(&seen), node("n", &[(status, &first)]), &trigger).unwrap();
        assert!(!again.asks(), "the same ask, read again");
        let anew = ask("2026-12-07T00:01:00Z");
        let anew = NodeSeen::new(Some(&again), node("n", &[(status, &anew)]), &trigger).unwrap();
        assert!(anew.asks());
    }
}
