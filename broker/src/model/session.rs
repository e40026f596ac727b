//! A session's state, shared between the router (which queues deliveries into it)
//! and the connection currently attached to it (which drains the queue and tracks
//! acknowledgements). It outlives connections: a persistent session keeps its queue,
//! inflight messages and subscriptions while its client is away.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use natter_shared::codec::{QoS, SubscriptionOptions};
use tokio::sync::{oneshot, Notify};

use super::inflight::Inflight;
use super::message::Message;
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

/// The mutable part of a session, behind the session's mutex.
#[derive(Debug, Default)]
pub struct SessionState {
    /// Deliveries not yet sent.
    pub queue: VecDeque<Delivery>,
    /// QoS 1/2 deliveries sent and not yet fully acknowledged.
    pub inflight: Inflight,
    /// Packet ids of QoS 2 publishes received and not yet released (PUBREL).
    pub incoming_qos2: HashSet<u16>,
    pub subscriptions: HashMap<String, Subscription>,
    /// Bumped by each connection that attaches; a connection acts on the session only
    /// while its generation is current, so a taken-over connection cannot steal work.
    pub generation: u64,
    /// Signals the attached connection to close.
    pub kick: Option<oneshot::Sender<Kick>>,
    /// Deliveries dropped since the session began (logged, counted).
    pub dropped: u64,
    /// Device token the attached connection logged in with, if any.
    pub credential: Option<Arc<str>>,
}

/// A session: identity, limits and the state behind a mutex.
pub struct Session {
    /// Unique for the broker's lifetime; used by the router as the subscriber key.
    pub id: u64,
    pub key: SessionKey,
    max_queued: usize,
    overflow: OverflowPolicy,
    online: AtomicBool,
    state: Mutex<SessionState>,
    /// Wakes the attached connection when deliveries arrive.
    wake: Notify,
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
            max_queued,
            overflow,
            online: AtomicBool::new(false),
            state: Mutex::new(SessionState::default()),
            wake: Notify::new(),
        }
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
    }

    /// Waits until deliveries are queued.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Wakes the attached connection.
    pub fn wake(&self) {
        self.wake.notify_one();
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
        if st.queue.len() >= self.max_queued {
            st.dropped += 1;
            if st.dropped.is_power_of_two() {
                tracing::warn!(
                    client_id = %self.key.client_id,
                    user = self.key.username.as_deref().unwrap_or(""),
                    dropped = st.dropped,
                    "session queue full: dropping messages"
                );
            }
            // A message kept in durable storage is never silently lost for this session:
            // the slow consumer is disconnected, so its cursor stops before the message
            // and the plugin replays it when the session comes back.
            let durable = delivery.msg.tag.is_some();
            if self.overflow == OverflowPolicy::Disconnect || durable {
                if let Some(kick) = st.kick.take() {
                    let _ = kick.send(Kick::SlowConsumer);
                }
            }
            return if durable { Enqueued::Deferred } else { Enqueued::Dropped };
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
    /// Merges replayed deliveries (from durable storage, oldest first) into the queue
    /// in tag order, skipping any whose tag is already queued or in flight, and wakes
    /// the connection. Returns how many were added.
    pub fn replay(&self, deliveries: Vec<Delivery>) -> usize {
        let mut st = self.lock();
        let present: HashSet<u64> = st
            .queue
            .iter()
            .map(|d| &d.msg)
            .chain(st.inflight.iter().map(|o| &o.delivery.msg))
            .filter_map(|m| m.tag)
            .collect();
        let mut fresh = deliveries
            .into_iter()
            .filter(|d| d.msg.tag.is_none_or(|t| !present.contains(&t)))
            .peekable();
        if fresh.peek().is_none() {
            return 0;
        }
        // Queued tagged deliveries are in tag order already: merge, so that what was
        // queued before a disconnect and what is replayed interleave by mailbox id.
        let existing: Vec<Delivery> = st.queue.drain(..).collect();
        let mut merged = VecDeque::with_capacity(existing.len());
        let mut added = 0;
        for d in existing {
            if let Some(t) = d.msg.tag {
                while let Some(r) = fresh.next_if(|r| r.msg.tag.is_none_or(|rt| rt < t)) {
                    merged.push_back(r);
                    added += 1;
                }
            }
            merged.push_back(d);
        }
        for r in fresh {
            merged.push_back(r);
            added += 1;
        }
        st.queue = merged;
        drop(st);
        self.wake();
        added
    }

    /// How `topic` would be delivered to this session by its current subscriptions:
    /// the highest granted QoS, Retain As Published, and every subscription id.
    pub fn granted(&self, topic: &str) -> Option<(QoS, bool, Vec<u32>)> {
        let st = self.lock();
        let mut out: Option<(QoS, bool, Vec<u32>)> = None;
        for (filter, sub) in &st.subscriptions {
            let inner = match natter_shared::topic::parse_shared(filter) {
                Some(Ok((_, inner))) => inner,
                _ => filter.as_str(),
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
