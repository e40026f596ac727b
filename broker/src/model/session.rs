//! A session's state, shared between the router (which queues deliveries into it)
//! and the connection currently attached to it (which drains the queue and tracks
//! acknowledgements). It outlives connections: a persistent session keeps its queue,
//! inflight messages and subscriptions while its client is away.

use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use natter_shared::codec::{QoS, SubscriptionOptions};
use tokio::sync::{oneshot, Notify};

use super::inflight::Inflight;
use super::message::Message;
use super::pkids::PacketIds;
use super::wake::WakeSlot;
use crate::config::OverflowPolicy;

/// Sessions are keyed by (user name, client id): two users that pick the same client
/// id get two sessions and never take over each other's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub username: Option<Arc<str>>,
    pub client_id: Arc<str>,
}

/// One message on its way to one session.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub msg: Arc<Message>,
    /// min(published QoS, granted QoS).
    pub qos: QoS,
    /// The RETAIN flag to send (retained on subscribe, or Retain As Published).
    pub retain: bool,
    /// Identifiers of every matching subscription (MQTT 5).
    pub sub_ids: Vec<u32>,
    /// The number of its record on disk, for a plain (untagged) QoS 1/2 delivery to a
    /// kept session (see [`Session::is_kept`]): forgotten once acknowledged.
    pub kept: Option<std::num::NonZeroU64>,
}

/// Why the broker closes a connection from outside its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// Another connection took the session over (v5 DISCONNECT 0x8E).
    TakenOver,
    /// The client does not read fast enough and the policy is to disconnect (0x97).
    SlowConsumer,
    /// An administrator removed the account (0x98).
    Administrative,
    /// The broker is shutting down (0x8B). Sent to every connection through its kick
    /// channel, so an idle connection waits on one future fewer.
    Shutdown,
}

/// A subscription as the session remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    pub options: SubscriptionOptions,
    pub id: Option<u32>,
}

/// What queuing a delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Queued,
    /// Lost for this session: queue full, or QoS 0 for an offline session.
    Dropped,
    /// Not queued because the session is offline (or too slow: it is then disconnected)
    /// and the message is kept in durable storage ([`Message::tag`]): it is replayed
    /// when the session comes back.
    Deferred,
}

/// Merges at most `limit` replayed deliveries (oldest first) into the queue in tag
/// order, skipping any whose tag is already queued or in flight: what was queued
/// before a disconnect and what is replayed interleave by mailbox id. Returns how
/// many were added and the last tag taken from `page`. Tags in `held` are skipped too.
fn merge(st: &mut SessionState, page: Vec<Delivery>, limit: usize, held: &HashSet<u64>) -> (usize, Option<u64>) {
    let present = tags(st);
    let mut last = None;
    let mut fresh = page
        .into_iter()
        .take(limit)
        .inspect(|d| last = d.msg.tag.or(last))
        .filter(|d| d.msg.tag.is_none_or(|t| !present.contains(&t) && !held.contains(&t)))
        .collect::<VecDeque<_>>();
    if fresh.is_empty() {
        return (0, last);
    }
    let added = fresh.len();
    let existing = std::mem::take(&mut st.queue);
    let mut merged = VecDeque::with_capacity(existing.len() + added);
    for d in existing {
        if let Some(t) = d.msg.tag {
            while fresh.front().is_some_and(|r| r.msg.tag.is_none_or(|rt| rt < t)) {
                merged.extend(fresh.pop_front());
            }
        }
        merged.push_back(d);
    }
    merged.extend(fresh);
    st.queue = merged;
    (added, last)
}

/// A session's subscriptions by filter: a vector, as a session holds a few (an IM
/// device one or two) and a map would allocate four buckets for one; bounded by
/// `max_subscriptions_per_session`, searched linearly.
#[derive(Debug, Default)]
pub struct Subscriptions {
    list: Vec<(Box<str>, Subscription)>,
}

impl Subscriptions {
    /// Adds or replaces; the subscription it replaced, if any.
    pub fn insert(&mut self, filter: &str, sub: Subscription) -> Option<Subscription> {
        if let Some((_, old)) = self.list.iter_mut().find(|(f, _)| &**f == filter) {
            return Some(std::mem::replace(old, sub));
        }
        self.list.reserve_exact(1);
        self.list.push((filter.into(), sub));
        None
    }

    pub fn remove(&mut self, filter: &str) -> Option<Subscription> {
        let i = self.list.iter().position(|(f, _)| &**f == filter)?;
        let (_, sub) = self.list.swap_remove(i);
        if self.list.is_empty() {
            self.list = Vec::new();
        }
        Some(sub)
    }

    pub fn get(&self, filter: &str) -> Option<Subscription> {
        self.list.iter().find(|(f, _)| &**f == filter).map(|(_, s)| *s)
    }

    pub fn contains_key(&self, filter: &str) -> bool {
        self.get(filter).is_some()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Every (filter, subscription).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Subscription)> {
        self.list.iter().map(|(f, s)| (&**f, s))
    }

    /// Removes them all; their filters.
    pub fn drain(&mut self) -> Vec<String> {
        std::mem::take(&mut self.list)
            .into_iter()
            .map(|(f, _)| f.into())
            .collect()
    }
}

/// The tags of the deliveries queued or in flight.
fn tags(st: &SessionState) -> HashSet<u64> {
    st.queue
        .iter()
        .map(|d| &d.msg)
        .chain(st.inflight.iter().map(|o| &o.delivery.msg))
        .filter_map(|m| m.tag)
        .collect()
}

/// The mutable part of a session, behind the session's mutex.
#[derive(Debug, Default)]
pub struct SessionState {
    /// Deliveries not yet sent.
    pub queue: VecDeque<Delivery>,
    /// QoS 1/2 deliveries sent and not yet fully acknowledged.
    pub inflight: Inflight,
    /// Packet ids of QoS 2 publishes received and not yet released (PUBREL).
    pub incoming_qos2: PacketIds,
    pub subscriptions: Subscriptions,
    /// Bumped by each connection that attaches; a connection acts on the session only
    /// while its generation is current, so a taken-over connection cannot steal work.
    pub generation: u64,
    /// Signals the attached connection to close.
    pub kick: Option<oneshot::Sender<Kick>>,
    /// Deliveries dropped since the session began (logged, counted).
    pub dropped: u64,
    /// Device token the attached connection logged in with, if any.
    pub credential: Option<Arc<str>>,
    /// The replay under way, if any (see [`Session::begin_replay`]); boxed, as it
    /// is rare and every session carries the field.
    replay: Option<Box<ReplayState>>,
    /// Numbers replays, so a newer one makes an older one stale.
    replay_epoch: u64,
}

/// A replay under way: durable deliveries routed meanwhile are deferred to it.
#[derive(Debug)]
struct ReplayState {
    epoch: u64,
    /// The lowest and highest tags deferred since it began (0: none).
    deferred_from: u64,
    deferred_up_to: u64,
    /// Tags the session held (queued or in flight) when it began: the connection may
    /// deliver them while the replay reads, and they are not replayed again.
    held: HashSet<u64>,
    /// Not a replay yet: a resumed session's hold until its plugins have said
    /// whether they replay (see [`Session::hold_replay`]).
    hold: bool,
}

/// What offering a page of replayed deliveries did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Caught up: the replay is over; live durable deliveries queue again.
    Done,
    /// Added up to and including this tag (none: nothing fitted); read on after it.
    More(Option<u64>),
    /// A newer replay took over, or the session went offline: stop.
    Stale,
}

/// A session: identity, limits and the state behind a mutex.
pub struct Session {
    /// Unique for the broker's lifetime; used by the router as the subscriber key.
    pub id: u64,
    pub key: SessionKey,
    /// `[limits] max_queued_messages` (u32: with the two fields below it takes one word).
    max_queued: u32,
    overflow: OverflowPolicy,
    online: AtomicBool,
    /// Whether its plain QoS 1/2 deliveries are written to disk before they are
    /// queued (a persistent session, with a store).
    kept: AtomicBool,
    state: Mutex<SessionState>,
    /// Wakes the attached connection when deliveries arrive.
    wake: WakeSlot,
    /// Wakes a replay waiting for room in the queue (or to notice it is stale).
    room: Notify,
}

impl PartialEq for Session {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}
impl Eq for Session {}
impl Hash for Session {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl Session {
    pub fn new(id: u64, key: SessionKey, max_queued: usize, overflow: OverflowPolicy) -> Session {
        Session {
            id,
            key,
            max_queued: u32::try_from(max_queued).unwrap_or(u32::MAX),
            overflow,
            online: AtomicBool::new(false),
            kept: AtomicBool::new(false),
            state: Mutex::new(SessionState::default()),
            wake: WakeSlot::default(),
            room: Notify::new(),
        }
    }

    fn max_queued(&self) -> usize {
        self.max_queued as usize
    }

    /// Locks the state. A poisoned lock (a panic elsewhere while holding it) is
    /// recovered: the state stays structurally valid between statements.
    pub fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True while a connection is attached.
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Acquire)
    }

    pub fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::Release);
        if !online {
            self.room.notify_waiters();
        }
    }

    /// Whether its plain QoS 1/2 deliveries are kept on disk (a persistent session).
    pub fn is_kept(&self) -> bool {
        self.kept.load(Ordering::Acquire)
    }

    pub fn set_kept(&self, kept: bool) {
        self.kept.store(kept, Ordering::Release);
    }

    /// Ready when deliveries were queued since the last Ready (see [`WakeSlot`]).
    pub fn poll_woken(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.wake.poll_woken(cx)
    }

    /// Wakes the attached connection.
    pub fn wake(&self) {
        self.wake.wake();
    }

    /// Queues a delivery, applying the queue bound and the overflow policy.
    pub fn enqueue(&self, delivery: Delivery) -> Enqueued {
        let online = self.is_online();
        if !online && delivery.msg.tag.is_some() {
            return Enqueued::Deferred;
        }
        let mut st = self.lock();
        if !online && delivery.qos == QoS::AtMostOnce {
            return Enqueued::Dropped;
        }
        if let (Some(tag), Some(replay)) = (delivery.msg.tag, st.replay.as_mut()) {
            // The replay under way delivers it, in mailbox order.
            if replay.deferred_from == 0 {
                replay.deferred_from = tag;
            }
            replay.deferred_up_to = replay.deferred_up_to.max(tag);
            return Enqueued::Deferred;
        }
        if st.queue.len() >= self.max_queued() {
            // A message kept in durable storage is never lost for this session: the
            // slow consumer is disconnected, so its cursor stops before the message and
            // the plugin replays it when the session comes back.
            if delivery.msg.tag.is_some() {
                if let Some(kick) = st.kick.take() {
                    tracing::warn!(
                        client_id = %self.key.client_id,
                        user = self.key.username.as_deref().unwrap_or(""),
                        queued = st.queue.len(),
                        "session queue full: disconnecting the slow consumer; its stored messages wait for its return (nothing dropped)"
                    );
                    let _ = kick.send(Kick::SlowConsumer);
                }
                return Enqueued::Deferred;
            }
            st.dropped += 1;
            if st.dropped.is_power_of_two() {
                tracing::warn!(
                    client_id = %self.key.client_id,
                    user = self.key.username.as_deref().unwrap_or(""),
                    dropped = st.dropped,
                    "session queue full: dropping messages"
                );
            }
            if self.overflow == OverflowPolicy::Disconnect {
                if let Some(kick) = st.kick.take() {
                    let _ = kick.send(Kick::SlowConsumer);
                }
            }
            return Enqueued::Dropped;
        }
        st.queue.push_back(delivery);
        drop(st);
        if online {
            self.wake();
        }
        Enqueued::Queued
    }
}

impl Session {
    /// Starts a replay of durable deliveries, page by page ([`Session::offer`]):
    /// from now until it is caught up, durable deliveries routed to this session are
    /// deferred to it rather than queued, so none overtakes an older one still to be
    /// replayed (an acknowledgement would move the device's cursor past it). A replay
    /// begun earlier becomes stale. Returns this replay's epoch.
    pub fn begin_replay(&self) -> u64 {
        let mut st = self.lock();
        st.replay_epoch += 1;
        let epoch = st.replay_epoch;
        let held = tags(&st);
        // What a hold (or an earlier replay) deferred is this replay's to deliver.
        let (deferred_from, deferred_up_to) = st
            .replay
            .as_ref()
            .map_or((0, 0), |r| (r.deferred_from, r.deferred_up_to));
        st.replay = Some(Box::new(ReplayState {
            epoch,
            deferred_from,
            deferred_up_to,
            held,
            hold: false,
        }));
        drop(st);
        self.room.notify_waiters();
        epoch
    }

    /// Called (with the state locked) as a session is resumed, before it is online:
    /// durable deliveries are deferred from then on, so none reaches the client
    /// between the resumption and the replay its plugin then begins
    /// ([`Session::begin_replay`] takes over what was deferred). A replay under way
    /// is left as it is.
    pub fn hold_replay(st: &mut SessionState) {
        if st.replay.is_none() {
            st.replay_epoch += 1;
            let held = tags(st);
            st.replay = Some(Box::new(ReplayState {
                epoch: st.replay_epoch,
                deferred_from: 0,
                deferred_up_to: 0,
                held,
                hold: true,
            }));
        }
    }

    /// Ends the hold of [`Session::hold_replay`] once the plugins have run, if none
    /// began a replay.
    pub fn end_hold(&self) {
        let mut st = self.lock();
        if st.replay.as_ref().is_some_and(|r| r.hold) {
            st.replay = None;
        }
    }

    /// The first tag deferred to replay `epoch`, if any: a device seen for the first
    /// time replays from there, so what was routed to it since it subscribed is not
    /// lost to the replay that found nothing to replay.
    pub fn deferred_from(&self, epoch: u64) -> Option<u64> {
        let st = self.lock();
        st.replay
            .as_ref()
            .filter(|r| r.epoch == epoch && r.deferred_from > 0)
            .map(|r| r.deferred_from)
    }

    /// The highest tag at most `bound` that the session held (queued or in flight)
    /// when replay `epoch` began: the connection delivers those itself, so a gap the
    /// replay reports starts after it.
    pub fn held_up_to(&self, epoch: u64, bound: u64) -> Option<u64> {
        let st = self.lock();
        let replay = st.replay.as_ref().filter(|r| r.epoch == epoch)?;
        replay.held.iter().copied().filter(|&t| t <= bound).max()
    }

    /// Ends replay `epoch` with nothing (more) to replay.
    pub fn end_replay(&self, epoch: u64) {
        let mut st = self.lock();
        if st.replay.as_ref().is_some_and(|r| r.epoch == epoch) {
            st.replay = None;
        }
    }

    /// Room left in the queue, within `max_queued_messages`.
    pub fn room(&self) -> usize {
        self.max_queued().saturating_sub(self.lock().queue.len())
    }

    /// Waits until the queue is at most half full, or replay `epoch` is stale (then
    /// returns false).
    pub async fn wait_room(&self, epoch: u64) -> bool {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.lock();
                if !self.is_online() || st.replay.as_ref().is_none_or(|r| r.epoch != epoch) {
                    return false;
                }
                if st.queue.len() <= self.max_queued() / 2 {
                    return true;
                }
            }
            notified.await;
        }
    }

    /// Called by the connection after taking deliveries from the queue: wakes a
    /// replay waiting for room.
    pub fn drained(&self, st: &SessionState) {
        if st.replay.is_some() && st.queue.len() <= self.max_queued() / 2 {
            self.room.notify_waiters();
        }
    }

    /// Offers one page of replay `epoch` (durable deliveries, oldest first, after
    /// what earlier pages added): merges what fits within `max_queued_messages` into
    /// the queue in tag order, skipping any already queued or in flight, and wakes
    /// the connection. `read_up_to`: the highest tag the page was read up to;
    /// `caught_up`: nothing durable is newer than the page. The replay ends when a
    /// caught-up page fits whole and covers everything deferred meanwhile.
    pub fn offer(&self, epoch: u64, page: Vec<Delivery>, read_up_to: u64, caught_up: bool) -> Offered {
        let mut st = self.lock();
        let Some(replay) = st.replay.take_if(|r| r.epoch == epoch && self.is_online()) else {
            return Offered::Stale;
        };
        let room = self.max_queued().saturating_sub(st.queue.len());
        let whole = page.len() <= room;
        let (added, last) = merge(&mut st, page, room, &replay.held);
        let done = whole && caught_up && replay.deferred_up_to <= read_up_to;
        if !done {
            st.replay = Some(replay);
        }
        drop(st);
        if added > 0 {
            self.wake();
        }
        match done {
            true => Offered::Done,
            false if whole => Offered::More(Some(read_up_to)),
            false => Offered::More(last),
        }
    }

    /// How `topic` would be delivered to this session by its current subscriptions:
    /// the highest granted QoS, Retain As Published, and every subscription id.
    pub fn granted(&self, topic: &str) -> Option<(QoS, bool, Vec<u32>)> {
        let st = self.lock();
        let mut out: Option<(QoS, bool, Vec<u32>)> = None;
        for (filter, sub) in st.subscriptions.iter() {
            let inner = match natter_shared::topic::parse_shared(filter) {
                Some(Ok((_, inner))) => inner,
                _ => filter,
            };
            if natter_shared::topic::matches(inner, topic) {
                let o = out.get_or_insert((QoS::AtMostOnce, false, Vec::new()));
                o.0 = o.0.max(sub.options.qos);
                o.1 |= sub.options.retain_as_published;
                o.2.extend(sub.id);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn delivery(qos: QoS) -> Delivery {
        Delivery {
            msg: Arc::new(Message::broker("t", Bytes::new(), qos, false)),
            qos,
            retain: false,
            sub_ids: vec![],
            kept: None,
        }
    }

    fn session(policy: OverflowPolicy) -> Session {
        Session::new(
            1,
            SessionKey {
                username: None,
                client_id: "c".into(),
            },
            2,
            policy,
        )
    }

    #[test]
    fn subscriptions_insert_replace_remove_and_drain_by_filter() {
        let sub = |qos| Subscription {
            options: SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            },
            id: None,
        };
        let mut s = Subscriptions::default();
        assert_eq!(s.insert("a/#", sub(QoS::AtMostOnce)), None);
        assert_eq!(s.insert("b", sub(QoS::AtLeastOnce)), None);
        assert_eq!(
            s.insert("a/#", sub(QoS::ExactlyOnce)),
            Some(sub(QoS::AtMostOnce)),
            "replaced"
        );
        assert_eq!((s.len(), s.get("a/#")), (2, Some(sub(QoS::ExactlyOnce))));
        assert!(s.contains_key("b") && !s.contains_key("a"));
        assert_eq!(s.remove("b"), Some(sub(QoS::AtLeastOnce)));
        assert_eq!(s.remove("b"), None);
        assert_eq!(s.drain(), vec!["a/#".to_string()]);
        assert!(s.is_empty());
    }

    #[test]
    fn offline_sessions_drop_qos0_and_keep_qos1() {
        let s = session(OverflowPolicy::DropNew);
        assert_eq!(s.enqueue(delivery(QoS::AtMostOnce)), Enqueued::Dropped);
        assert_eq!(s.enqueue(delivery(QoS::AtLeastOnce)), Enqueued::Queued);
    }

    #[test]
    fn queue_is_bounded_and_disconnect_policy_kicks() {
        let s = session(OverflowPolicy::Disconnect);
        s.set_online(true);
        let (tx, mut rx) = oneshot::channel();
        s.lock().kick = Some(tx);
        assert_eq!(s.enqueue(delivery(QoS::AtLeastOnce)), Enqueued::Queued);
        assert_eq!(s.enqueue(delivery(QoS::AtMostOnce)), Enqueued::Queued);
        assert_eq!(s.enqueue(delivery(QoS::AtLeastOnce)), Enqueued::Dropped);
        assert_eq!(s.lock().queue.len(), 2);
        assert_eq!(s.lock().dropped, 1);
        assert_eq!(rx.try_recv(), Ok(Kick::SlowConsumer));
    }
}
