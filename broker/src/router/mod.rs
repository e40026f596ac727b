//! The router: the subscription trie, the retained store and the session registry.
//!
//! Publishing is "match, then queue to each session": the trie is read under a shared
//! lock, matches are grouped per session (one delivery per session at the highest
//! granted QoS, with every matching subscription identifier), then each session's
//! bounded queue takes its delivery. The router holds sessions, never connections.

mod retained;
mod sparse;
mod trie;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use natter_shared::codec::{QoS, RetainHandling};
use natter_shared::topic::parse_shared;
use tokio::sync::oneshot;

use crate::config::Limits;
use crate::model::{Delivery, Enqueued, Kick, Session, SessionKey, Subscription};
use crate::model::{Durable, Message};
pub use retained::RetainedFull;
use retained::RetainedStore;
use trie::{Subscriber, Trie};

/// Counters, read by stats and tests.
#[derive(Debug, Default)]
pub struct RouterStats {
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    pub dropped: AtomicU64,
    /// Connections attached to a session (new or resumed) since start.
    pub connections: AtomicU64,
}

struct Inner {
    trie: RwLock<Trie>,
    retained: RwLock<RetainedStore>,
    sessions: Mutex<HashMap<SessionKey, Arc<Session>>>,
    next_session_id: AtomicU64,
    limits: Limits,
    stats: RouterStats,
    /// How far stored messages are on disk (see [`Durable`]).
    durable: Durable,
}

/// Cheap-to-clone handle on the routing state.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

/// The result of opening a session for a new connection.
pub struct Opened {
    pub session: Arc<Session>,
    /// True when an existing session was resumed (CONNACK Session Present).
    pub present: bool,
    /// The attached connection's generation.
    pub generation: u64,
}

/// The result of adding a subscription.
pub struct Subscribed {
    /// Retained messages to send for it, per its Retain Handling option.
    pub retained: Vec<Arc<Message>>,
}

fn split_group(filter: &str) -> (Option<&str>, &str) {
    match parse_shared(filter) {
        Some(Ok((group, inner))) => (Some(group), inner),
        _ => (None, filter),
    }
}

/// A session a message goes to: granted QoS, Retain As Published, subscription ids.
type Target = (Arc<Session>, QoS, bool, Vec<u32>);

/// Writes the plain QoS 1/2 deliveries to kept (persistent) sessions to disk, for the
/// router, which calls it before queuing each (the session layer implements it).
pub trait Keeper {
    /// Writes `delivery` for `session`; the record's number, `None` when it could not
    /// be written (the keeper then reports the message as not kept).
    fn keep(&mut self, session: &Session, delivery: &Delivery) -> Option<std::num::NonZeroU64>;
    /// The delivery written as `seq` was not queued after all (the queue was full).
    fn forget(&mut self, session: &Session, seq: std::num::NonZeroU64);
}

/// What routing needs to know of a message before it is built (see
/// [`Router::route`]).
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    pub topic: &'a str,
    /// The session it came from (`None` for the broker's own).
    pub origin: Option<u64>,
    /// Never deliver to `origin` (a copy for the sender's other devices).
    pub exclude_origin: bool,
    pub retain: bool,
}

impl Router {
    pub fn new(limits: Limits) -> Router {
        Router {
            inner: Arc::new(Inner {
                trie: RwLock::new(Trie::default()),
                retained: RwLock::new(RetainedStore::new(limits.max_retained_messages.get())),
                sessions: Mutex::new(HashMap::new()),
                next_session_id: AtomicU64::new(1),
                limits,
                stats: RouterStats::default(),
                durable: Durable::default(),
            }),
        }
    }

    pub fn stats(&self) -> &RouterStats {
        &self.inner.stats
    }

    /// How far stored messages are on disk: the plugin that stores them moves it,
    /// connections wait on it before a QoS 2 delivery of one.
    pub fn durable(&self) -> &Durable {
        &self.inner.durable
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<SessionKey, Arc<Session>>> {
        self.inner.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of (filter, session) subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.inner.trie.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Number of retained messages.
    pub fn retained_count(&self) -> usize {
        self.inner.retained.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Number of sessions (connected or not).
    pub fn session_count(&self) -> usize {
        self.sessions().len()
    }

    /// Finds or creates the session for `key` and attaches a new connection to it,
    /// atomically: a connection already attached is kicked (session takeover), the
    /// generation is bumped and `kick` installed. With `clean_start` an existing
    /// session is discarded first.
    pub fn open_session(&self, key: SessionKey, clean_start: bool, kick: oneshot::Sender<Kick>) -> Opened {
        self.inner.stats.connections.fetch_add(1, Ordering::Relaxed);
        let mut sessions = self.sessions();
        let mut discarded = None;
        let mut resumed = None;
        if let Some(existing) = sessions.get(&key).cloned() {
            if let Some(old) = existing.lock().kick.take() {
                let _ = old.send(Kick::TakenOver);
            }
            if clean_start {
                sessions.remove(&key);
                discarded = Some(existing);
            } else {
                resumed = Some(existing);
            }
        }
        let present = resumed.is_some();
        let session = resumed.unwrap_or_else(|| {
            let s = self.new_session(key.clone());
            sessions.insert(key, s.clone());
            s
        });
        let generation = {
            let mut st = session.lock();
            st.generation += 1;
            st.kick = Some(kick);
            if present {
                Session::hold_replay(&mut st);
            }
            st.generation
        };
        session.set_online(true);
        drop(sessions);
        if let Some(old) = discarded {
            // Bump its generation so a connection still attached to it stops acting on it.
            old.lock().generation += 1;
            self.drop_subscriptions(&old);
        }
        Opened {
            session,
            present,
            generation,
        }
    }

    /// A new session under `key`, with the next id and the configured queue bound.
    fn new_session(&self, key: SessionKey) -> Arc<Session> {
        let id = self.inner.next_session_id.fetch_add(1, Ordering::Relaxed);
        let limits = &self.inner.limits;
        Arc::new(Session::new(
            id,
            key,
            limits.max_queued_messages.get(),
            limits.queue_overflow,
        ))
    }

    /// Registers a persistent session read back from the store at start, offline, with
    /// its subscriptions in place: messages route to it (and queue, or wait in its
    /// mailbox) before its client is back. A session already registered under the key
    /// is kept (nothing else runs at start).
    pub fn restore_session(&self, key: SessionKey, subscriptions: &[(String, Subscription)]) -> Arc<Session> {
        let session = {
            let mut sessions = self.sessions();
            if let Some(existing) = sessions.get(&key) {
                return existing.clone();
            }
            let s = self.new_session(key.clone());
            sessions.insert(key, s.clone());
            s
        };
        for (filter, sub) in subscriptions {
            self.subscribe(&session, filter, *sub);
        }
        session
    }

    /// Removes `session` from the registry (if it is still the registered one for its
    /// key) and all its subscriptions from the trie.
    pub fn remove_session(&self, session: &Arc<Session>) {
        {
            let mut sessions = self.sessions();
            if sessions.get(&session.key).is_some_and(|s| s.id == session.id) {
                sessions.remove(&session.key);
            }
        }
        self.drop_subscriptions(session);
    }

    /// Kicks every connection of `username` (for example when the account is deleted),
    /// or only those logged in with the device token named `token`.
    pub fn kick_user(&self, username: &str, token: Option<&str>, why: Kick) -> usize {
        self.kick_sparing(username, token, None, why)
    }

    /// As [`Router::kick_user`], sparing the connection of client `spare` (the one
    /// that asked for it, which is answered and leaves by itself).
    pub fn kick_sparing(&self, username: &str, token: Option<&str>, spare: Option<&str>, why: Kick) -> usize {
        let mut n = 0;
        for s in self.sessions_of(username) {
            if spare.is_some_and(|c| *s.key.client_id == *c) {
                continue;
            }
            let mut st = s.lock();
            if token.is_some() && st.credential.as_deref() != token {
                continue;
            }
            if let Some(kick) = st.kick.take() {
                let _ = kick.send(why);
                n += 1;
            }
        }
        n
    }

    /// Kicks every attached connection (the broker is shutting down). Returns how
    /// many were kicked.
    pub fn kick_all(&self, why: Kick) -> usize {
        let sessions: Vec<Arc<Session>> = self.sessions().values().cloned().collect();
        let mut n = 0;
        for kick in sessions.iter().filter_map(|s| s.lock().kick.take()) {
            let _ = kick.send(why);
            n += 1;
        }
        n
    }

    /// Removes `filter` from every session of `username` (for example the presence
    /// of someone who is no longer a friend). Returns how many were removed.
    pub fn unsubscribe_user(&self, username: &str, filter: &str) -> usize {
        self.sessions_of(username)
            .iter()
            .filter(|s| self.unsubscribe(s, filter))
            .count()
    }

    /// Every session of `username`.
    pub fn sessions_of(&self, username: &str) -> Vec<Arc<Session>> {
        self.sessions()
            .values()
            .filter(|s| s.key.username.as_deref() == Some(username))
            .cloned()
            .collect()
    }

    fn drop_subscriptions(&self, session: &Arc<Session>) {
        let filters: Vec<String> = session.lock().subscriptions.drain();
        if filters.is_empty() {
            return;
        }
        let mut trie = self.inner.trie.write().unwrap_or_else(|p| p.into_inner());
        for f in filters {
            let (group, inner) = split_group(&f);
            trie.remove(inner, group, session.id);
        }
    }

    /// Adds or replaces a subscription of `session`.
    pub fn subscribe(&self, session: &Arc<Session>, filter: &str, sub: Subscription) -> Subscribed {
        let (group, inner) = split_group(filter);
        let existed = session.lock().subscriptions.insert(filter, sub).is_some();
        self.inner.trie.write().unwrap_or_else(|p| p.into_inner()).insert(
            inner,
            group,
            Subscriber {
                session: session.clone(),
                sub,
            },
        );
        // Retained messages are not sent for shared subscriptions (MQTT 5 section 4.8.2).
        let send_retained = group.is_none()
            && match sub.options.retain_handling {
                RetainHandling::OnSubscribe => true,
                RetainHandling::OnNewSubscription => !existed,
                RetainHandling::Never => false,
            };
        let mut retained = Vec::new();
        if send_retained {
            self.inner.retained.read().unwrap_or_else(|p| p.into_inner()).matching(
                inner,
                Instant::now(),
                &mut retained,
            );
        }
        Subscribed { retained }
    }

    /// Removes a subscription of `session`. True when it existed.
    pub fn unsubscribe(&self, session: &Arc<Session>, filter: &str) -> bool {
        if session.lock().subscriptions.remove(filter).is_none() {
            return false;
        }
        let (group, inner) = split_group(filter);
        self.inner
            .trie
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(inner, group, session.id);
        true
    }

    /// Puts back a retained message read from disk at start, without routing it (no
    /// session has missed it).
    ///
    /// # Errors
    /// [`RetainedFull`] beyond the configured bound.
    pub fn restore_retained(&self, msg: Arc<Message>) -> Result<(), RetainedFull> {
        self.inner.retained.write().unwrap_or_else(|p| p.into_inner()).set(msg)
    }

    /// Routes a message: stores or clears it as retained when flagged, then queues one
    /// delivery to each matching session. Returns the number of sessions it reached.
    /// A shorthand for [`Router::route`] with the message already built.
    ///
    /// # Errors
    /// As [`Router::route`].
    pub fn publish(&self, msg: Arc<Message>) -> Result<usize, RetainedFull> {
        self.publish_keeping(msg, None)
    }

    /// [`Router::publish`], writing each plain QoS 1/2 delivery to a kept session
    /// through `keeper` before it is queued (see [`Keeper`]).
    ///
    /// # Errors
    /// As [`Router::route`].
    pub fn publish_keeping(&self, msg: Arc<Message>, keeper: Option<&mut dyn Keeper>) -> Result<usize, RetainedFull> {
        let head = Head {
            topic: &msg.topic.clone(),
            origin: msg.origin,
            exclude_origin: msg.exclude_origin,
            retain: msg.retain,
        };
        self.route_keeping(head, || msg, keeper)
    }

    /// The one routing entry point. Stores or clears the message as retained when
    /// `head.retain`, then queues one delivery to each session subscribed to
    /// `head.topic` (minus the origin as `head` says). The message is built by
    /// `build` only when it is retained or some session receives it, so a plugin
    /// routing to many mailbox topics builds nothing for nobody. Returns the number
    /// of sessions it reached.
    ///
    /// # Errors
    /// [`RetainedFull`] when it asks to be retained on a new topic beyond the bound; it
    /// is still routed to current subscribers.
    pub fn route(&self, head: Head<'_>, build: impl FnOnce() -> Arc<Message>) -> Result<usize, RetainedFull> {
        self.route_keeping(head, build, None)
    }

    fn route_keeping(
        &self,
        head: Head<'_>,
        build: impl FnOnce() -> Arc<Message>,
        keeper: Option<&mut dyn Keeper>,
    ) -> Result<usize, RetainedFull> {
        self.inner.stats.published.fetch_add(1, Ordering::Relaxed);
        let mut build = Some(build);
        let mut built = None;
        let mut retained = Ok(());
        if let Some(b) = build.take_if(|_| head.retain) {
            let msg = b();
            retained = self
                .inner
                .retained
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .set(msg.clone());
            built = Some(msg);
        }
        let targets = self.targets(head.topic, head.origin, head.exclude_origin);
        if targets.is_empty() {
            return retained.map(|()| 0);
        }
        let Some(msg) = built.or_else(|| build.take().map(|b| b())) else {
            return retained.map(|()| 0);
        };
        let reached = self.deliver(&msg, targets, keeper);
        retained.map(|()| reached)
    }

    /// The sessions a message on `topic` goes to, each once: highest granted QoS,
    /// Retain As Published, every subscription id.
    fn targets(&self, topic: &str, origin: Option<u64>, exclude_origin: bool) -> Vec<Target> {
        // Few matches (the common case) are grouped by a linear scan, many through a map.
        let mut targets: Vec<Target> = Vec::new();
        let mut index: Option<HashMap<u64, usize>> = None;
        let trie = self.inner.trie.read().unwrap_or_else(|p| p.into_inner());
        trie.for_each_match(topic, |m| {
            let opts = m.sub.options;
            if (opts.no_local || exclude_origin) && origin == Some(m.session.id) {
                return;
            }
            let found = match &index {
                Some(map) => map.get(&m.session.id).copied(),
                None => targets.iter().position(|t| t.0.id == m.session.id),
            };
            let slot = match found {
                Some(i) => i,
                None => {
                    targets.push((m.session.clone(), QoS::AtMostOnce, false, Vec::new()));
                    let slot = targets.len() - 1;
                    match &mut index {
                        Some(map) => {
                            map.insert(m.session.id, slot);
                        }
                        None if targets.len() > 16 => {
                            index = Some(targets.iter().enumerate().map(|(i, t)| (t.0.id, i)).collect());
                        }
                        None => {}
                    }
                    slot
                }
            };
            let t = &mut targets[slot];
            t.1 = t.1.max(opts.qos);
            t.2 |= opts.retain_as_published;
            t.3.extend(m.sub.id);
        });
        targets
    }

    fn deliver(&self, msg: &Arc<Message>, targets: Vec<Target>, mut keeper: Option<&mut dyn Keeper>) -> usize {
        let stats = &self.inner.stats;
        let mut reached = 0;
        for (session, granted, rap, sub_ids) in targets {
            let mut delivery = Delivery {
                msg: msg.clone(),
                qos: granted.min(msg.qos),
                retain: rap && msg.retain,
                sub_ids,
                kept: None,
            };
            // Written before it is queued: an acknowledgement (which forgets the
            // record) can then never overtake the write.
            if let Some(k) = keeper.as_deref_mut() {
                if delivery.qos != QoS::AtMostOnce && msg.tag.is_none() && session.is_kept() {
                    delivery.kept = k.keep(&session, &delivery);
                }
            }
            let kept = delivery.kept;
            match session.enqueue(delivery) {
                Enqueued::Queued => {
                    reached += 1;
                    stats.delivered.fetch_add(1, Ordering::Relaxed);
                }
                Enqueued::Dropped => {
                    if let (Some(k), Some(seq)) = (keeper.as_deref_mut(), kept) {
                        k.forget(&session, seq);
                    }
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Enqueued::Deferred => reached += 1,
            }
        }
        reached
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use bytes::Bytes;
    use natter_shared::codec::SubscriptionOptions;

    fn router() -> Router {
        Router::new(Config::default_config().limits)
    }

    fn key(c: &str) -> SessionKey {
        SessionKey {
            username: Some("u".into()),
            client_id: c.into(),
        }
    }

    fn msg(topic: &str, qos: QoS, retain: bool, origin: Option<u64>) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload: Bytes::from_static(b"x"),
            qos,
            retain,
            properties: Default::default(),
            expires_at: None,
            origin,
            exclude_origin: false,
            tag: None,
            lazy_properties: None,
        })
    }

    fn sub(qos: QoS, id: Option<u32>) -> Subscription {
        Subscription {
            options: SubscriptionOptions {
                qos,
                ..Default::default()
            },
            id,
        }
    }

    /// `route` builds the message only when it is retained or someone receives it,
    /// and then once.
    #[test]
    fn route_builds_the_message_only_when_needed() {
        let r = router();
        let builds = std::cell::Cell::new(0);
        let head = |topic, retain| Head {
            topic,
            origin: None,
            exclude_origin: false,
            retain,
        };
        let build = |topic: &str, retain| {
            builds.set(builds.get() + 1);
            msg(topic, QoS::AtMostOnce, retain, None)
        };
        assert_eq!(r.route(head("nobody", false), || build("nobody", false)), Ok(0));
        assert_eq!(builds.get(), 0, "routed to nobody: never built");
        assert_eq!(r.route(head("kept", true), || build("kept", true)), Ok(0));
        assert_eq!(builds.get(), 1, "retained: built though nobody listens");
        let s = r.open_session(key("a"), true, oneshot::channel().0).session;
        s.set_online(true);
        assert_eq!(r.subscribe(&s, "#", sub(QoS::AtMostOnce, None)).retained.len(), 1);
        assert_eq!(r.route(head("live", false), || build("live", false)), Ok(1));
        assert_eq!(r.route(head("live", true), || build("live", true)), Ok(1));
        assert_eq!(builds.get(), 3, "once per message");
        assert_eq!(s.lock().queue.len(), 2);
    }

    #[test]
    fn overlapping_subscriptions_deliver_once_at_highest_qos_with_all_ids() {
        let r = router();
        let s = r.open_session(key("a"), true, oneshot::channel().0).session;
        s.set_online(true);
        r.subscribe(&s, "a/+", sub(QoS::AtMostOnce, Some(1)));
        r.subscribe(&s, "a/#", sub(QoS::ExactlyOnce, Some(2)));
        r.subscribe(&s, "a/b", sub(QoS::AtLeastOnce, None));
        assert_eq!(r.publish(msg("a/b", QoS::ExactlyOnce, false, None)), Ok(1));
        let st = s.lock();
        assert_eq!(st.queue.len(), 1);
        let d = &st.queue[0];
        assert_eq!(d.qos, QoS::ExactlyOnce);
        let mut ids = d.sub_ids.clone();
        ids.sort_unstable();
        assert_eq!(ids, vec![1, 2]);
    }

    #[test]
    fn many_sessions_with_overlapping_filters_get_one_delivery_each() {
        // More than 16 sessions: grouping switches from a scan to a map midway.
        let r = router();
        let sessions: Vec<_> = (0..40)
            .map(|i| {
                let s = r
                    .open_session(key(&format!("c{i}")), true, oneshot::channel().0)
                    .session;
                s.set_online(true);
                r.subscribe(&s, "a/#", sub(QoS::AtMostOnce, Some(1)));
                r.subscribe(&s, "a/+", sub(QoS::AtLeastOnce, Some(2)));
                s
            })
            .collect();
        assert_eq!(r.publish(msg("a/b", QoS::ExactlyOnce, false, None)), Ok(40));
        for s in &sessions {
            let st = s.lock();
            assert_eq!(st.queue.len(), 1);
            assert_eq!(st.queue[0].qos, QoS::AtLeastOnce);
            let mut ids = st.queue[0].sub_ids.clone();
            ids.sort_unstable();
            assert_eq!(ids, vec![1, 2]);
        }
    }

    #[test]
    fn qos_is_downgraded_and_no_local_is_honoured() {
        let r = router();
        let s = r.open_session(key("a"), true, oneshot::channel().0).session;
        s.set_online(true);
        r.subscribe(
            &s,
            "t",
            Subscription {
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    ..Default::default()
                },
                id: None,
            },
        );
        assert_eq!(r.publish(msg("t", QoS::AtLeastOnce, false, Some(s.id))), Ok(0));
        assert_eq!(r.publish(msg("t", QoS::ExactlyOnce, false, None)), Ok(1));
        assert_eq!(s.lock().queue[0].qos, QoS::AtLeastOnce);
    }

    #[test]
    fn retained_on_subscribe_per_retain_handling() {
        let r = router();
        r.publish(msg("r/1", QoS::AtMostOnce, true, None)).unwrap();
        let s = r.open_session(key("a"), true, oneshot::channel().0).session;
        let mut sb = sub(QoS::AtMostOnce, None);
        assert_eq!(r.subscribe(&s, "r/#", sb).retained.len(), 1);
        sb.options.retain_handling = RetainHandling::OnNewSubscription;
        assert_eq!(r.subscribe(&s, "r/#", sb).retained.len(), 0, "existing subscription");
        sb.options.retain_handling = RetainHandling::Never;
        assert_eq!(r.subscribe(&s, "r/+", sb).retained.len(), 0);
        assert_eq!(
            r.subscribe(&s, "$share/g/r/#", sub(QoS::AtMostOnce, None))
                .retained
                .len(),
            0
        );
    }

    #[test]
    fn takeover_kicks_and_clean_start_discards() {
        let r = router();
        let (tx, mut rx) = oneshot::channel();
        let first = r.open_session(key("a"), false, tx);
        assert!(!first.present);
        r.subscribe(&first.session, "x", sub(QoS::AtLeastOnce, None));
        let second = r.open_session(key("a"), false, oneshot::channel().0);
        assert_eq!(second.generation, first.generation + 1);
        assert!(second.present);
        assert_eq!(second.session.id, first.session.id);
        assert_eq!(rx.try_recv(), Ok(Kick::TakenOver));
        let third = r.open_session(key("a"), true, oneshot::channel().0);
        assert!(!third.present);
        assert_ne!(third.session.id, first.session.id);
        assert_eq!(
            r.publish(msg("x", QoS::AtLeastOnce, false, None)),
            Ok(0),
            "old subscriptions gone"
        );
        // Same client id, other user: a different session.
        let other = r.open_session(
            SessionKey {
                username: Some("v".into()),
                client_id: "a".into(),
            },
            false,
            oneshot::channel().0,
        );
        assert!(!other.present);
        assert_eq!(r.session_count(), 2);
        r.remove_session(&other.session);
        assert_eq!(r.session_count(), 1);
    }
}
