//! The grantor: one agent at a time (elected on the Lease `kwasm-agent-restart-grantor`) decides
//! which nodes may restart containerd. It sees asks through one watch of Nodes' metadata (the phase
//! WaitingForRestart in a node's status annotation), keeps the asking nodes in the order it saw them
//! (a backlog found at once — a new grantor's — in name order), and keeps at most N permits granted
//! (`permit`), N counted from the same watch for a percentage. It takes a permit back when its node
//! went away, stopped renewing for a lease duration, or held it past the deadline — all measured by
//! its own monotonic clock. An ask is served once: a node is served again only when it asks anew.
//! Before granting anything, a new grantor has listed every permit there is.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, PartialObjectMeta, PostParams, Preconditions};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use tokio::time::Instant;

use super::election::Election;
use super::permit::{self, State, GRANTOR_LEASE, PERMIT_LABEL};
use crate::lease::LeaseHolder;
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
        let mut g = Grantor::new(election.lease.leases.clone(), &rules);
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
        let Ok(old) = leases
            .list_metadata(&kube::api::ListParams::default().labels(label))
            .await
        else {
            continue;
        };
        for lease in old {
            let name = lease.metadata.name.unwrap_or_default();
            match leases.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {
                    tracing::info!(lease = %name, "deleted the previous version's restart slot or ticket")
                }
                Err(e) => {
                    tracing::warn!(lease = %name, error = %e, "could not delete the previous version's Lease")
                }
            }
        }
    }
}

pub fn election(leases: Api<Lease>, me: &str, duration: Duration) -> Election {
    Election {
        lease: LeaseHolder {
            leases,
            holder: me.to_owned(),
            duration,
        },
        name: GRANTOR_LEASE.to_owned(),
    }
}

struct Seen {
    lease: Lease,
    changed: Instant,
    since: Instant,
}

/// What the grantor keeps of a Node: a fleet's full metadata (managed fields, every label) would
/// make the agent that holds the grantor several times larger than the others. Nodes neither
/// triggered nor written by an agent are not kept at all.
struct NodeSeen {
    uid: String,
    triggered: bool,
    /// The node's status annotation: it asks while its phase says it waits for a restart.
    ask: Option<String>,
}

impl NodeSeen {
    fn new(node: PartialObjectMeta<Node>, trigger: &TriggerSettings) -> Option<Self> {
        let triggered = meta_asks_for_shims(&node.metadata, trigger);
        let mut metadata = node.metadata;
        let ask = (metadata.annotations.as_mut())
            .and_then(|a| a.remove(crate::node_contract::labels::STATUS_ANNOTATION));
        (triggered || ask.is_some()).then(|| Self {
            uid: metadata.uid.unwrap_or_default(),
            triggered,
            ask,
        })
    }

    fn asks(&self) -> bool {
        StatusDoc::phase_in(self.ask.as_deref()) == Some(Phase::WaitingForRestart)
    }
}

struct Grantor<'a> {
    permits: Api<Lease>,
    rules: &'a Rules,
    nodes: BTreeMap<String, NodeSeen>,
    held: BTreeMap<String, Seen>,
    line: BTreeMap<u64, String>,
    place: HashMap<String, u64>,
    next: u64,
    /// Asks already answered (granted, and taken back or given back since): node → the ask it
    /// showed then. A node is served again only once it asks anew — its watch and this one's are
    /// two streams, and a node that gave its permit back may still read as asking here.
    answered: HashMap<String, Option<String>>,
}

impl<'a> Grantor<'a> {
    fn new(permits: Api<Lease>, rules: &'a Rules) -> Self {
        Self {
            permits,
            rules,
            nodes: BTreeMap::new(),
            held: BTreeMap::new(),
            line: BTreeMap::new(),
            place: HashMap::new(),
            next: 0,
            answered: HashMap::new(),
        }
    }

    async fn run(&mut self, nodes: Api<PartialObjectMeta<Node>>) -> anyhow::Error {
        let long = || watcher::Config::default().timeout(3600);
        // Small pages: a fleet's Nodes listed 500 at a time (the default) would raise this
        // agent's memory for good, once, well above every other agent's.
        let node_events = watcher(nodes, long().page_size(100)).default_backoff();
        let permit_events =
            watcher(self.permits.clone(), long().labels(PERMIT_LABEL)).default_backoff();
        futures_util::pin_mut!(node_events, permit_events);
        let (mut node_buf, mut permit_buf) = (None, None);
        let (mut nodes_listed, mut permits_listed) = (false, false);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                ev = node_events.next() => match ev {
                    Some(Ok(ev)) => nodes_listed |= self.node_event(ev, &mut node_buf),
                    Some(Err(e)) => tracing::warn!(error = %e, "watching Nodes (retrying)"),
                    None => return anyhow::anyhow!("the Nodes' watch ended"),
                },
                ev = permit_events.next() => match ev {
                    // Only this grantor creates and deletes permits: a relist adds what it did not
                    // know (a predecessor's last grant) and never drops one it wrote meanwhile.
                    Some(Ok(ev)) => permits_listed |= apply(ev, &mut self.held, &mut permit_buf, false, |l| permit::node(l).map(str::to_owned), |b, l| Some(seen(b, l))),
                    Some(Err(e)) => tracing::warn!(error = %e, "watching restart permits (retrying)"),
                    None => return anyhow::anyhow!("the permits' watch ended"),
                },
                _ = tick.tick() => {}
            }
            // Whatever else has arrived already: one step for all of it.
            while let Some(Some(Ok(ev))) = node_events.next().now_or_never() {
                nodes_listed |= self.node_event(ev, &mut node_buf);
            }
            while let Some(Some(Ok(ev))) = permit_events.next().now_or_never() {
                permits_listed |= apply(
                    ev,
                    &mut self.held,
                    &mut permit_buf,
                    false,
                    |l| permit::node(l).map(str::to_owned),
                    |b, l| Some(seen(b, l)),
                );
            }
            if nodes_listed && permits_listed {
                self.step().await;
            }
        }
    }

    /// A Node event applied (true: a list of every Node is done). A list leaves behind what
    /// decoding thousands of Nodes took, and the code it ran, though only the few that asked are
    /// kept: handed back, as the node controller does after each reconcile.
    fn node_event(
        &mut self,
        ev: Event<PartialObjectMeta<Node>>,
        buf: &mut Option<BTreeMap<String, NodeSeen>>,
    ) -> bool {
        let trigger = &self.rules.trigger;
        let listed = apply(
            ev,
            &mut self.nodes,
            buf,
            true,
            |n| n.metadata.name.clone(),
            |_, n| NodeSeen::new(n, trigger),
        );
        if listed {
            super::release_freed_memory();
        }
        listed
    }

    /// Take back what must be, then grant free permits to the oldest asks (at once, together).
    async fn step(&mut self) {
        self.take_back().await;
        self.queue_asks();
        let triggered = self.nodes.values().filter(|n| n.triggered).count();
        let n = self.rules.concurrency.of(triggered) as usize;
        let granted = (self.held.values())
            .filter(|s| permit::state(&s.lease) == Some(State::Granted))
            .count();
        let turn: Vec<(u64, String)> = (0..n.saturating_sub(granted))
            .map_while(|_| self.line.pop_first())
            .collect();
        let answers =
            futures_util::future::join_all(turn.iter().map(|(_, node)| self.grant(node))).await;
        for ((at, node), answer) in turn.into_iter().zip(answers) {
            match answer {
                Ok(lease) => {
                    self.rules.metrics.grants.inc();
                    self.place.remove(&node);
                    (self.answered).insert(
                        node.clone(),
                        self.nodes.get(&node).and_then(|n| n.ask.clone()),
                    );
                    let now = Instant::now();
                    let (changed, since) = (now, now);
                    self.held.insert(
                        node.clone(),
                        Seen {
                            lease,
                            changed,
                            since,
                        },
                    );
                    tracing::info!(node = %node, of = n, waiting = self.line.len(), "granted a restart permit");
                }
                Err(e) => {
                    // Its place kept: tried again on the next turn (a second, or the next event).
                    tracing::warn!(node = %node, error = %format!("{e:#}"), "could not grant a restart permit; trying again");
                    self.line.insert(at, node);
                }
            }
        }
        let m = &self.rules.metrics;
        m.granted.set(
            (self.held.values())
                .filter(|s| permit::state(&s.lease) == Some(State::Granted))
                .count() as i64,
        );
        m.waiting.set(self.line.len() as i64);
    }

    /// Take permits back: whose node is gone, stopped renewing, or overran the deadline (deleted
    /// together; guarded by the version seen, so a renewal that got there first keeps it).
    async fn take_back(&mut self) {
        let due: Vec<(String, &'static str, Option<String>)> = (self.held.iter())
            .filter_map(|(node, s)| {
                let why = if !self.nodes.contains_key(node) {
                    "its Node is gone"
                } else if s.changed.elapsed() >= self.rules.lease_duration {
                    "it stopped renewing it"
                } else if s.since.elapsed() >= self.rules.deadline {
                    "it held it past the deadline"
                } else {
                    return None;
                };
                Some((node.clone(), why, s.lease.metadata.resource_version.clone()))
            })
            .collect();
        let permits = &self.permits;
        let deletes = due.iter().map(|(node, _, rv)| {
            let params = DeleteParams::default().preconditions(Preconditions {
                resource_version: rv.clone(),
                uid: None,
            });
            let name = permit::name(node);
            async move { permits.delete(&name, &params).await }
        });
        let answers = futures_util::future::join_all(deletes).await;
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

    /// Asking nodes join the line in the order seen; nodes that stopped asking leave it.
    fn queue_asks(&mut self) {
        let (nodes, held) = (&self.nodes, &self.held);
        self.answered
            .retain(|node, asked| nodes.get(node).is_some_and(|n| n.ask == *asked));
        let answered = &self.answered;
        let wants = |name: &String| {
            nodes.get(name).is_some_and(NodeSeen::asks)
                && !held.contains_key(name)
                && !answered.contains_key(name)
        };
        self.place.retain(|name, _| wants(name));
        let place = &self.place;
        self.line.retain(|_, name| place.contains_key(name));
        for name in nodes.keys() {
            if wants(name) && !self.place.contains_key(name) {
                self.place.insert(name.clone(), self.next);
                self.line.insert(self.next, name.clone());
                self.next += 1;
            }
        }
    }

    async fn grant(&self, node: &str) -> anyhow::Result<Lease> {
        let uid = self.nodes[node].uid.clone();
        let now = MicroTime(Timestamp::now());
        let owner = OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: node.to_owned(),
            uid,
            ..Default::default()
        };
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(permit::name(node)),
                labels: Some([(PERMIT_LABEL.to_owned(), "true".to_owned())].into()),
                annotations: Some(
                    [(permit::STATE.to_owned(), State::Granted.as_str().to_owned())].into(),
                ),
                owner_references: Some(vec![owner]),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(node.to_owned()),
                lease_duration_seconds: Some(
                    self.rules
                        .lease_duration
                        .as_secs()
                        .clamp(1, i32::MAX as u64) as i32,
                ),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                ..Default::default()
            }),
        };
        Ok(self.permits.create(&PostParams::default(), &lease).await?)
    }
}

/// A watch event applied to `map` (keyed by `key`). A relist builds its list aside and, when it is
/// complete and `replace` says so, replaces `map` whole (whatever went while the watch was down goes
/// too); until then `map` stays as it was. An object `value` gives nothing for is not kept. True
/// once a list is complete.
fn apply<T, V>(
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
                if let Some(v) = value(map.get(&k), o) {
                    b.insert(k, v);
                }
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
            if let Some(k) = key(&o) {
                map.remove(&k);
            }
        }
    }
    false
}

/// A permit as seen now: its clocks start when first seen, and `changed` moves with every write.
fn seen(before: Option<&Seen>, lease: Lease) -> Seen {
    let now = Instant::now();
    match before {
        Some(b) if b.lease.metadata.resource_version == lease.metadata.resource_version => Seen {
            lease,
            changed: b.changed,
            since: b.since,
        },
        Some(b) => Seen {
            lease,
            changed: now,
            since: b.since,
        },
        None => Seen {
            lease,
            changed: now,
            since: now,
        },
    }
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
        assert!(NodeSeen::new(node("plain", &[("other", "x")]), &trigger).is_none());
        let triggered = NodeSeen::new(node("t", &[("kwasm.sh/kwasm-node", "true")]), &trigger);
        let triggered = triggered.expect("a triggered node is kept");
        assert!(triggered.triggered && !triggered.asks());
        assert_eq!(triggered.uid, "uid-t");
        // An agent's status outlives the trigger (it is removing what it installed): still kept.
        let untriggered = NodeSeen::new(node("u", &[(status, asking)]), &trigger).unwrap();
        assert!(!untriggered.triggered && untriggered.asks());
        assert_eq!(untriggered.ask.as_deref(), Some(asking));
    }

    #[test]
    fn an_update_that_makes_a_node_uninteresting_drops_it_and_a_relist_replaces_the_map() {
        let (mut map, mut buf) = (BTreeMap::new(), None);
        let key = |n: &u32| Some(n.to_string());
        let keep_even = |_: Option<&u32>, n: u32| n.is_multiple_of(2).then_some(n);
        apply(Event::Apply(2), &mut map, &mut buf, true, key, keep_even);
        assert_eq!(map.keys().collect::<Vec<_>>(), ["2"]);
        // The same key, now refused: gone.
        let refuse = |_: Option<&u32>, _| None;
        apply(Event::Apply(2), &mut map, &mut buf, true, key, refuse);
        assert!(map.is_empty());
        apply(Event::Apply(4), &mut map, &mut buf, true, key, keep_even);
        // A relist: the map stays as it was until the list is complete, then is replaced.
        assert!(!apply(
            Event::Init,
            &mut map,
            &mut buf,
            true,
            key,
            keep_even
        ));
        apply(
            Event::InitApply(6),
            &mut map,
            &mut buf,
            true,
            key,
            keep_even,
        );
        apply(
            Event::InitApply(7),
            &mut map,
            &mut buf,
            true,
            key,
            keep_even,
        );
        assert_eq!(map.keys().collect::<Vec<_>>(), ["4"]);
        assert!(apply(
            Event::InitDone,
            &mut map,
            &mut buf,
            true,
            key,
            keep_even
        ));
        assert_eq!(map.keys().collect::<Vec<_>>(), ["6"]);
    }
}
