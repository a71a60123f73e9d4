//! Cluster-wide pacing of containerd restarts, with no leader and no extra controller: a semaphore of
//! N `coordination.k8s.io/v1` Leases (`kwasm-agent-restart-0` … `-N-1`, labelled `kwasm.sh/restart-slot`)
//! in the agents' namespace. An agent restarts containerd only while it holds one; it renews the Lease
//! at a third of its duration and, once containerd proved itself, hands it to the node that has
//! waited longest (`restart_queue`), or clears it when nobody waits.
//!
//! Waiting costs the API server nothing while it lasts: a waiting agent watches the slot Leases (one
//! watch, no polling) and acts only when a slot is handed to it. A slot that frees without being
//! handed over — its holder died, or nobody was in line when it was released — is noticed by every
//! waiter at once, so each waits a random fraction of a few seconds before acting and gives up as soon
//! as another has; whoever acts still hands the slot to the longest waiter, not to itself. A dead
//! holder blocks its slot for one lease duration at most.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource};
use rand::Rng;

use super::restart_queue::{self, RestartQueue, Ticket};
use super::slot_count::{SlotCounter, COUNT_LABEL_VALUE, COUNT_NAME, RECOUNT_SPREAD};
use super::slot_view::{Look, Opening, SlotView, SLOT_LABEL};
use crate::containerd::gate::{Permit, RestartGate};
use crate::lease::LeaseHolder;
use crate::settings::FleetSettings;

/// What the gate tells the controller while it waits, so the Node and the metrics can say so.
pub enum GateEvent {
    Waiting(String),
    Acquired,
}

pub type GateObserver = Arc<dyn Fn(GateEvent) -> BoxFuture<'static, ()> + Send + Sync>;

pub struct LeaseGate {
    lease: LeaseHolder,
    queue: RestartQueue,
    nodes: Api<Node>,
    counter: SlotCounter,
    /// The slots as last known (how many may release at once: see `head_size`, `contention_order`).
    slots_seen: std::sync::atomic::AtomicU32,
    observer: GateObserver,
    /// This node's Node as an owner, read once (a Node's uid does not change).
    owner: tokio::sync::OnceCell<Option<OwnerReference>>,
}

impl LeaseGate {
    pub fn new(
        client: kube::Client,
        namespace: &str,
        holder: &str,
        fleet: &FleetSettings,
        observer: GateObserver,
    ) -> Self {
        let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
        Self {
            lease: LeaseHolder {
                leases: leases.clone(),
                holder: holder.to_owned(),
                duration: fleet.lease_duration,
            },
            queue: RestartQueue {
                leases: leases.clone(),
            },
            nodes: Api::all(client.clone()),
            counter: SlotCounter {
                nodes: Api::all(client),
                leases,
                concurrency: fleet.max_concurrent_restarts,
                me: holder.to_owned(),
            },
            slots_seen: Default::default(),
            observer,
            owner: tokio::sync::OnceCell::new(),
        }
    }

    fn me(&self) -> &str {
        &self.lease.holder
    }

    /// Take an open slot, then give it to whoever has waited longer than this node (if anybody
    /// has): see `Claimed`.
    async fn claim(
        &self,
        opening: Opening,
        ticket: Option<&Ticket>,
        began: i64,
    ) -> anyhow::Result<Claimed> {
        let held = match opening {
            Opening::Missing(name) => {
                let labels = [(SLOT_LABEL.to_owned(), "true".to_owned())].into();
                self.lease.create_held(&name, labels).await?
            }
            Opening::Free(current) => self.lease.hand_over(&current, Some(self.me())).await?,
        };
        let Some(held) = held else {
            return Ok(Claimed::Lost);
        };
        let passing = Passing::Keep {
            ticket: ticket.map(|t| t.name.as_str()),
            began,
        };
        let written = held.clone();
        Ok(
            match pass_on(&self.lease, &self.queue, held, passing, self.slots_known()).await? {
                Passed::Kept(lease) => Claimed::Kept(lease),
                Passed::To(_) | Passed::Cleared => Claimed::PassedOn(Box::new(written)),
            },
        )
    }

    /// This node's Node as the owner of its place in line (best effort: a ticket without it is only
    /// not collected with a deleted node).
    async fn owner(&self) -> Option<OwnerReference> {
        self.owner
            .get_or_init(|| async {
                let node = self.nodes.get_metadata(self.me()).await.ok()?;
                node.controller_owner_ref(&()).map(|mut o| {
                    o.controller = None;
                    o
                })
            })
            .await
            .clone()
    }

    fn slots_known(&self) -> u32 {
        self.slots_seen.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn permit(&self, lease: Lease) -> LeasePermit {
        let name = lease.metadata.name.clone().unwrap_or_default();
        let known = Arc::new(tokio::sync::Mutex::new(lease));
        let (holder, every, renewed) = (self.lease.clone(), self.lease.duration / 3, known.clone());
        let renew = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let mut known = renewed.lock().await;
                match holder.renew_from(&known).await {
                    Ok(written) => *known = written,
                    Err(e) => {
                        let name = known.metadata.name.as_deref().unwrap_or_default();
                        tracing::warn!(lease = %name, error = %format!("{e:#}"), "could not renew the restart Lease; it expires unless a renewal gets through")
                    }
                }
            }
        });
        tracing::info!(lease = %name, "holding a restart slot");
        LeasePermit {
            lease: self.lease.clone(),
            queue: self.queue.clone(),
            name,
            known,
            renew,
            slots: self.slots_known(),
        }
    }

    /// Wait until this node holds one of the first `slots` slots, acting only as described at the
    /// top of this file; the slot, and whether this node had to wait in line for it.
    async fn wait_for_slot(&self) -> anyhow::Result<(Box<Lease>, bool)> {
        let selector = format!(
            "{SLOT_LABEL} in (true,{COUNT_LABEL_VALUE},{})",
            restart_queue::ticket_label(self.me())
        );
        let stream = watcher(
            self.lease.leases.clone(),
            // Renewed when the server ends it (30-60 min), not at kube's default 290 s: a long
            // wait in a large fleet must not turn into polling.
            watcher::Config::default().labels(&selector).timeout(3600),
        )
        .default_backoff();
        futures_util::pin_mut!(stream);
        let mut w = Waiting {
            began: k8s_openapi::jiff::Timestamp::now().as_millisecond(),
            ..Default::default()
        };
        loop {
            let wake = match w.listed {
                true => match self.step(&mut w).await? {
                    Step::Done(slot) => {
                        let waited = w.line.joined();
                        if w.lost_at.is_some() {
                            // Its releaser took the ticket out already (its deletion comes first
                            // on the same watch).
                            w.line.ticket = None;
                        }
                        w.line.leave().await;
                        return Ok((slot, waited));
                    }
                    Step::Again => continue,
                    Step::Sleep(wake) => wake,
                },
                false => None,
            };
            let wake = wake.unwrap_or_else(|| Instant::now() + self.lease.duration);
            tokio::select! {
                ev = stream.next() => match ev {
                    Some(Ok(ev)) => w.apply(ev),
                    Some(Err(e)) => tracing::warn!(error = %e, "watching the restart slots (retrying)"),
                    None => anyhow::bail!("the restart slots' watch ended"),
                },
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    /// One decision on what the watch shows.
    async fn step(&self, w: &mut Waiting) -> anyhow::Result<Step> {
        let slots = self.slots(w).await?;
        let now = Instant::now();
        match w.view.look(slots, self.me(), self.lease.duration, now) {
            Look::Mine(lease) => Ok(Step::Done(lease)),
            Look::Open(opening) => self.on_open(w, opening, now).await,
            Look::Held { holders, expires } => {
                w.act_at = None;
                w.counted_more = false;
                let Some(ticket) = &w.line.ticket else {
                    self.join(&mut w.line, slots, &holders).await?;
                    return Ok(Step::Again);
                };
                match w.lost_at {
                    // Taken out of the line and no slot came: its releaser died in between.
                    Some(lost) if lost + LOST_TICKET_GRACE <= now => {
                        tracing::warn!(ticket = %ticket.name, "taken out of the restart line but never handed a slot; taking the same place again");
                        let again = ticket.name.clone();
                        w.line.ticket = Some(self.queue.join(self.me(), None, Some(&again)).await?);
                        w.lost_at = None;
                        Ok(Step::Again)
                    }
                    Some(lost) => Ok(Step::Sleep(earliest(
                        earliest(expires, Some(lost + LOST_TICKET_GRACE)),
                        w.recount_at,
                    ))),
                    None => Ok(Step::Sleep(earliest(expires, w.recount_at))),
                }
            }
        }
    }

    /// A slot seen open: take it now or after a moment (see `act_after`), and say what came of it.
    async fn on_open(
        &self,
        w: &mut Waiting,
        opening: Opening,
        now: Instant,
    ) -> anyhow::Result<Step> {
        // The node whose count added slots takes them at once and hands them down the line (every
        // waiter sees them open; the others hold back for a moment).
        let first_try = (w.line.ticket.is_none() && !w.lost_a_race) || w.counted_more;
        let at = *w
            .act_at
            .get_or_insert_with(|| act_after(first_try, self.lease.duration));
        if at > now {
            return Ok(Step::Sleep(Some(at)));
        }
        w.act_at = None;
        Ok(
            match self.claim(opening, w.line.ticket.as_ref(), w.began).await? {
                Claimed::Kept(lease) => {
                    // Out of the line already (`pass_on` took its ticket out to keep the slot).
                    w.line.ticket = None;
                    Step::Done(lease)
                }
                Claimed::PassedOn(written) => {
                    w.view.passed_on(&written);
                    Step::Sleep(None)
                }
                // Taken by another: the watch shows it. Slots added as a percentage grows open
                // several at once to every node; one that lost takes its time for the next instead
                // of racing again on every event (refused creates, at 10% of 100).
                Claimed::Lost => {
                    w.lost_a_race = true;
                    w.counted_more = false;
                    Step::Sleep(None)
                }
            },
        )
    }

    /// How many slots there are now: fixed, or what the fleet's shared count says as the watch
    /// delivers it, or counted here when that is missing or stale (see `slot_count`).
    async fn slots(&self, w: &mut Waiting) -> anyhow::Result<u32> {
        let shared = w.view.lease(COUNT_NAME);
        if let Some(n) = self.counter.known(shared) {
            self.slots_seen
                .store(n, std::sync::atomic::Ordering::Relaxed);
            w.slots = Some(n);
            w.recount_at = None;
            return Ok(n);
        }
        let spread = RECOUNT_SPREAD.mul_f64(rand::thread_rng().gen_range(0.0..1.0));
        let due = *w.recount_at.get_or_insert(Instant::now() + spread);
        match w.slots {
            Some(n) if due > Instant::now() => Ok(n),
            // The first count of a wait is not put off: nothing else says how many slots there are.
            _ => {
                let n = self.counter.count(shared).await?;
                self.slots_seen
                    .store(n, std::sync::atomic::Ordering::Relaxed);
                w.recount_at = None;
                w.counted_more = w.slots.is_some_and(|before| n > before);
                Ok(*w.slots.insert(n))
            }
        }
    }

    async fn join(&self, line: &mut Line, slots: u32, holders: &[String]) -> anyhow::Result<()> {
        let ticket = self.queue.join(self.me(), self.owner().await, None).await?;
        let msg = format!(
            "waiting to restart containerd: all {slots} restart slot(s) are held (by {}); in line as {}",
            holders.join(", "),
            ticket.name
        );
        line.ticket = Some(ticket);
        line.queue = Some(self.queue.clone());
        tracing::info!("{msg}");
        (self.observer)(GateEvent::Waiting(msg)).await;
        Ok(())
    }
}

/// How long a node whose ticket was taken out of the line waits for the slot that should follow
/// before it takes its place again (a releaser hands the slot over right after).
const LOST_TICKET_GRACE: Duration = Duration::from_secs(5);

/// When to act on a slot seen open: at once on a node's first try, else after a random fraction of
/// a few seconds, so the waiters that all saw it open do not all act.
fn act_after(first_try: bool, duration: Duration) -> Instant {
    if first_try {
        return Instant::now();
    }
    let spread = (duration / 4).clamp(Duration::from_millis(500), Duration::from_secs(10));
    Instant::now() + spread.mul_f64(rand::thread_rng().gen_range(0.0..1.0))
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

enum Step {
    /// Holding this slot.
    Done(Box<Lease>),
    Again,
    Sleep(Option<Instant>),
}

/// What a waiting node knows: the slots as watched, its place in line, and its pending decisions.
#[derive(Default)]
struct Waiting {
    view: SlotView,
    listing: Option<Vec<Lease>>,
    listed: bool,
    /// How many slots there are, as last known.
    slots: Option<u32>,
    /// When to count the asking nodes again, the shared count being stale.
    recount_at: Option<Instant>,
    line: Line,
    /// When to act on a slot seen open.
    act_at: Option<Instant>,
    /// When this node's ticket was seen taken out of the line.
    lost_at: Option<Instant>,
    /// Whether another node took a slot this node tried for.
    lost_a_race: bool,
    /// Whether this node's last count made more slots than the one before.
    counted_more: bool,
    /// When this wait began (unix ms): where this node's ticket stands or would stand in line.
    began: i64,
}

impl Waiting {
    fn apply(&mut self, ev: Event<Lease>) {
        let now = Instant::now();
        let mine = self.line.ticket.as_ref().map(|t| t.name.clone());
        let is_mine = |l: &Lease| mine.is_some() && l.metadata.name == mine;
        match ev {
            Event::Init => self.listing = Some(Vec::new()),
            Event::InitApply(l) => self.listing.get_or_insert_with(Vec::new).push(l),
            Event::InitDone => {
                let listing = self.listing.take().unwrap_or_default();
                if mine.is_some() && !listing.iter().any(is_mine) {
                    self.lost_at.get_or_insert(now);
                }
                self.view.replace_all(listing, now);
                self.listed = true;
            }
            Event::Apply(l) if is_mine(&l) => self.lost_at = None,
            Event::Delete(l) if is_mine(&l) => {
                self.lost_at.get_or_insert(now);
            }
            Event::Apply(l) => self.view.apply(l, now),
            Event::Delete(l) => self
                .view
                .delete(l.metadata.name.as_deref().unwrap_or_default()),
        }
    }
}

/// This node's place in line while it waits; left when the wait ends, however it ends.
#[derive(Default)]
struct Line {
    ticket: Option<Ticket>,
    /// Set with the first ticket: the line the ticket stands in (left through it, also on drop).
    queue: Option<RestartQueue>,
}

impl Line {
    /// Whether this node stood in line during this wait (its ticket may be gone by now: taken out
    /// by whoever handed it a slot, or by itself to keep one).
    fn joined(&self) -> bool {
        self.queue.is_some()
    }

    async fn leave(&mut self) {
        if let (Some(t), Some(queue)) = (self.ticket.take(), &self.queue) {
            if let Err(e) = queue.leave(&t.name).await {
                tracing::warn!(error = %format!("{e:#}"), "could not leave the restart line; whoever hands it a slot finds it done");
            }
        }
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        // A wait cancelled (the node stopped asking, the agent stopping) leaves the line too.
        if let (Some(t), Some(queue)) = (self.ticket.take(), self.queue.take()) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { queue.leave(&t.name).await });
            }
        }
    }
}

/// What came of taking an open slot.
enum Claimed {
    /// This node keeps it: nobody waited longer, and its own ticket (if it had one) is out of the line.
    Kept(Box<Lease>),
    /// Handed to a node that waited longer (or cleared, this node's own slot being on its way): the
    /// slot as this node wrote it when it took it. The watch still delivers that version, and it
    /// must not read as this node's slot — that was two nodes restarting on one slot.
    PassedOn(Box<Lease>),
    /// Somebody else took it first.
    Lost,
}

enum Passed {
    Kept(Box<Lease>),
    To(String),
    Cleared,
}

/// How many of the oldest waiters a releaser reads at once: twice the slots (as many releasers may
/// pass slots on at the same moment), at least 8 and at most 200; the line stays oldest-first to
/// within that many places.
fn head_size(slots: u32) -> u32 {
    slots.saturating_mul(2).clamp(8, 200)
}

/// The order a releaser tries the head of the line in. The `slots` oldest are all served in this
/// round of releases anyway, so it tries them first in a random order (with one slot: the oldest
/// alone), then the rest of the head in a random order. Many releasers finishing together (a
/// percentage of a large fleet) then rarely reach for the same ticket; with few slots the line is
/// served strictly oldest first.
fn contention_order(head: &[Ticket], slots: u32) -> Vec<&Ticket> {
    use rand::seq::SliceRandom;
    let mut rng = rand::thread_rng();
    let mut order: Vec<&Ticket> = head.iter().collect();
    let served_now = (slots as usize).clamp(1, order.len().max(1));
    let (now, later) = order.split_at_mut(served_now.min(head.len()));
    now.shuffle(&mut rng);
    later.shuffle(&mut rng);
    order
}

/// How a slot is passed on: by its holder done with it, or by a node that just took an open one
/// (and keeps it unless somebody waited longer; `ticket` is its own place in line, if it has one).
enum Passing<'a> {
    Release,
    /// `ticket`: this node's place in line, if it joined; `began`: when its wait began.
    Keep {
        ticket: Option<&'a str>,
        began: i64,
    },
}

/// Give a held slot to the node that has waited longest: take its ticket out of the line (only one
/// releaser can), then write it as the holder; or keep it, or clear it when nobody waits.
async fn pass_on(
    holder: &LeaseHolder,
    queue: &RestartQueue,
    held: Lease,
    passing: Passing<'_>,
    slots: u32,
) -> anyhow::Result<Passed> {
    let me = holder.holder.as_str();
    let mut keeping = match passing {
        Passing::Keep { ticket, began } => Some((ticket, began)),
        Passing::Release => None,
    };
    loop {
        let head = queue.oldest(head_size(slots)).await?;
        if let Some((ticket, began)) = keeping {
            match keep(queue, me, ticket, began, &head).await? {
                Keep::Yes => return Ok(Passed::Kept(Box::new(held))),
                Keep::LookAgain => continue,
                Keep::PassOn => {}
                // Its ticket is out of the line: a releaser is handing this node a slot already.
                Keep::NoTicketLeft => keeping = None,
            }
        }
        if head.is_empty() {
            return hand_to(holder, held, None).await;
        }
        let current = keeping.and_then(|(ticket, _)| ticket);
        for t in contention_order(&head, slots) {
            if t.node == me {
                if Some(t.name.as_str()) != current {
                    // Left by an earlier run of this agent, or this node's own place given up
                    // (its slot is on its way): not a waiter now.
                    queue.leave(&t.name).await?;
                }
                continue;
            }
            if !queue.take_out(t).await? {
                continue;
            }
            return hand_to(holder, held, Some(&t.node)).await;
        }
    }
}

enum Keep {
    Yes,
    PassOn,
    LookAgain,
    NoTicketLeft,
}

/// Whether a node that took an open slot keeps it, the line's `head` being as read: when nobody
/// waited longer (a node not in line yet compares the time its wait `began`: the nodes that lost the
/// race for the same open slot join the line at once, after it), and — if it stood in line — once it
/// took its own ticket out, so that no releaser can take it out and hand it a second slot meanwhile.
async fn keep(
    queue: &RestartQueue,
    me: &str,
    ticket: Option<&str>,
    began: i64,
    head: &[Ticket],
) -> anyhow::Result<Keep> {
    let Some(first) = head.first() else {
        return Ok(match ticket {
            Some(_) => Keep::NoTicketLeft,
            None => Keep::Yes,
        });
    };
    if first.node != me {
        let waited_longer = ticket.is_none() && restart_queue::ticket_name(me, began) < first.name;
        return Ok(if waited_longer {
            Keep::Yes
        } else {
            Keep::PassOn
        });
    }
    if ticket != Some(first.name.as_str()) {
        // Left by an earlier run of this agent.
        queue.leave(&first.name).await?;
        return Ok(Keep::LookAgain);
    }
    Ok(match queue.take_out(first).await? {
        true => Keep::Yes,
        false => Keep::NoTicketLeft,
    })
}

/// Write `node` as the holder of a slot this node holds, or clear it (read again if the copy was
/// stale: a renewal since). A node's ticket is already out of the line, so only losing the slot
/// stops it.
async fn hand_to(
    holder: &LeaseHolder,
    mut held: Lease,
    node: Option<&str>,
) -> anyhow::Result<Passed> {
    for _ in 0..3 {
        if !holder.holds(&held) {
            break;
        }
        if holder.hand_over(&held, node).await?.is_some() {
            return Ok(node.map_or(Passed::Cleared, |n| Passed::To(n.to_owned())));
        }
        held = holder
            .leases
            .get(held.metadata.name.as_deref().unwrap_or_default())
            .await?;
    }
    anyhow::bail!(
        "the restart slot was no longer this node's to pass on{}",
        node.map(|n| format!(" to {n} (who takes its place in line again)"))
            .unwrap_or_default()
    )
}

impl RestartGate for LeaseGate {
    fn enter(&self) -> BoxFuture<'_, anyhow::Result<Box<dyn Permit>>> {
        Box::pin(async move {
            let (lease, waited) = self.wait_for_slot().await?;
            let lease = *lease;
            if waited {
                // Shown off the restart's path: the restart need not wait for a Node patch.
                tokio::spawn((self.observer)(GateEvent::Acquired));
            }
            Ok(Box::new(self.permit(lease)) as Box<dyn Permit>)
        })
    }
}

struct LeasePermit {
    lease: LeaseHolder,
    queue: RestartQueue,
    name: String,
    /// The slot as last written by this node (passed on from it, read again only if it changed).
    known: Arc<tokio::sync::Mutex<Lease>>,
    renew: tokio::task::JoinHandle<()>,
    /// How many slots there were when it was taken (how to pass it on: see `pass_on`).
    slots: u32,
}

impl Permit for LeasePermit {
    fn release(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.renew.abort();
            let held = self.known.lock().await.clone();
            let passed = async {
                pass_on(&self.lease, &self.queue, held, Passing::Release, self.slots)
                    .await
                    .map(Some)
            };
            match passed.await {
                Ok(Some(Passed::To(node))) => {
                    tracing::info!(lease = %self.name, to = %node, "restart slot handed to the node that waited longest")
                }
                Ok(_) => tracing::info!(lease = %self.name, "restart slot released"),
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %format!("{e:#}"), "could not release the restart slot; it expires on its own")
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(n: usize) -> Vec<Ticket> {
        (0..n)
            .map(|i| Ticket {
                name: format!("t{i}"),
                node: format!("n{i}"),
                uid: None,
            })
            .collect()
    }

    #[test]
    fn releasers_try_the_waiters_served_this_round_first_and_each_waiter_once() {
        let head = line(8);
        for _ in 0..50 {
            let one = contention_order(&head, 1);
            assert_eq!(one[0].name, "t0", "one slot: strictly the oldest first");
            let three = contention_order(&head, 3);
            let mut first: Vec<&str> = three[..3].iter().map(|t| t.name.as_str()).collect();
            first.sort();
            assert_eq!(first, ["t0", "t1", "t2"]);
            let mut all: Vec<&str> = three.iter().map(|t| t.name.as_str()).collect();
            all.sort();
            assert_eq!(all, ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"]);
        }
        assert!(contention_order(&[], 3).is_empty());
        assert_eq!(contention_order(&line(2), 50).len(), 2);
    }
}
