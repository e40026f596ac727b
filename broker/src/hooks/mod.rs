//! The plugin layer: the points where policy lives, as one typed trait.
//!
//! The MQTT core calls [`Hooks`] (the ordered registry) and knows nothing else of
//! accounts, authorization rules or IM. Each decision hook answers allow, deny, or
//! abstain ("let the next plugin decide"); plugins are asked in registration order and
//! the first answer that is not `Abstain` wins. When every plugin abstains the answer
//! is deny: the broker fails closed.
//!
//! | hook | called | may |
//! |---|---|---|
//! | [`Hook::authenticate`] | on CONNECT, before the session is touched | allow (with role), deny with a reason |
//! | [`Hook::authorize_subscribe`] | per filter of a SUBSCRIBE | allow, deny (SUBACK failure) |
//! | [`Hook::on_publish`] | per PUBLISH and per will | route it, refuse it (v5 0x87), or take it over with a receipt |
//! | [`Hook::on_connected`] / [`Hook::on_disconnected`] | after CONNACK / when the connection ends | observe, queue deliveries into the session |
//! | [`Hook::on_subscribed`] | a subscription was added | observe, queue deliveries into the session |
//! | [`Hook::on_acked`] | a delivery was acknowledged (QoS 1/2) or written (QoS 0) | observe |
//!
//! Plugins see a session through [`SessionView`] (its subscriptions, queuing and
//! paged replay), never its locks or inflight window. A plugin that takes a message
//! over says when it is stored through its [`Receipt`]: a typed `Result`, stored or
//! why not ([`NotStored`]), which the connection turns into the acknowledgement.
//!
//! One call goes the other way, on purpose: a message may carry a
//! [`crate::model::PropertiesSource`] (the IM plugin's stored record), which the
//! connection asks for the MQTT 5 properties only when it writes the message to an
//! MQTT 5 client. Stamping `id`, `from`, `ts` on every mailbox delivery would
//! otherwise cost every 3.1.1 receiver and every message routed to nobody.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use natter_shared::codec::QoS;

use crate::model::{ClientInfo, Delivery, Enqueued, Message, Offered, Restriction};
use crate::model::{Session, Subscription};

/// A boxed future, so hooks can be stored as trait objects.
pub type HookFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a client presented in CONNECT.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub client_id: String,
    pub addr: std::net::SocketAddr,
}

/// Why authentication failed; mapped to CONNACK codes by the session layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// Unknown user, wrong password, or missing credentials.
    BadCredentials,
    /// Known, but not allowed to connect.
    NotAuthorized,
    /// Too many recent failures for this user name or address.
    Throttled,
    /// The check itself failed (store error); the client may retry.
    Unavailable,
}

/// Who an authenticated client is, beyond its user name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// Admin rights.
    pub admin: bool,
    /// Name of the device token it logged in with, if any (so revoking the token can
    /// close its connections).
    pub token: Option<Arc<str>>,
    pub restriction: Option<Restriction>,
}

/// An authentication answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthDecision {
    /// Let the client in.
    Allow(Identity),
    Deny(AuthFailure),
    Abstain,
}

/// An authorization answer for a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Allow,
    Deny,
    Abstain,
}

/// Why a message a plugin took over was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotStored {
    /// The store failed (an I/O error, logged where it happened).
    #[error("the store failed")]
    Failed,
    /// The plugin stopped (the broker is shutting down) before storing it; a dropped
    /// receipt sender means this too.
    #[error("the plugin stopped before storing it")]
    Stopped,
    /// Too much waits to be stored already (the store is stalled).
    #[error("too many messages wait to be stored")]
    Busy,
}

/// What a receipt resolves to: stored, or why not.
pub type Stored = Result<(), NotStored>;

/// Resolves once a plugin has stored (or handled) a message it took over.
pub type Receipt = tokio::sync::oneshot::Receiver<Stored>;

/// A plugin's answer to a publish (see [`Hook::on_publish`]).
#[derive(Debug)]
pub enum PublishDecision {
    /// Authorized: the core routes it ([`crate::router::Router::route`]).
    Route,
    /// Refused (v5: PUBACK/PUBREC 0x87, with the reason for people as its Reason
    /// String when given; 3.1.1: acknowledged and dropped).
    Refuse(Option<&'static str>),
    /// The plugin takes the message over (stores and routes it itself, or answers it)
    /// and the core does not route it. The core acknowledges it when the receipt
    /// resolves, in arrival order: `Ok` is PUBACK/PUBREC 0x00, so an acknowledgement
    /// means stored; `Err` is 0x80 on MQTT 5, and a 3.1.1 QoS 1/2 publisher is
    /// disconnected rather than falsely acknowledged. Until then the message counts
    /// against the client's Receive Maximum: a client with that many waiting is not
    /// read from. A plugin that is done at once answers with [`receipt`].
    TakenOver(Receipt),
    /// Let the next plugin decide.
    Abstain,
}

/// A receipt that has resolved already.
pub fn receipt(stored: Stored) -> Receipt {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let _ = tx.send(stored);
    rx
}

/// What a plugin may do with a session: read its subscriptions, queue deliveries
/// (within its bounds) and replay durable ones in pages. Not its locks, queue or
/// inflight window, which are the connection's. Cheap to clone (a plugin may keep it
/// for a replay under way).
#[derive(Clone)]
pub struct SessionView {
    session: Arc<Session>,
}

impl SessionView {
    pub fn new(session: Arc<Session>) -> SessionView {
        SessionView { session }
    }

    /// The session's subscription filters.
    pub fn filters(&self) -> Vec<String> {
        self.session
            .lock()
            .subscriptions
            .iter()
            .map(|(f, _)| f.to_owned())
            .collect()
    }

    /// How `topic` would be delivered to this session: the highest granted QoS,
    /// Retain As Published, every subscription id; `None` when no subscription covers it.
    pub fn granted(&self, topic: &str) -> Option<(QoS, bool, Vec<u32>)> {
        self.session.granted(topic)
    }

    /// Queues a delivery, within the session's bounds.
    pub fn enqueue(&self, delivery: Delivery) -> Enqueued {
        self.session.enqueue(delivery)
    }

    /// See [`Session::begin_replay`].
    pub fn begin_replay(&self) -> u64 {
        self.session.begin_replay()
    }

    /// See [`Session::deferred_from`].
    pub fn deferred_from(&self, epoch: u64) -> Option<u64> {
        self.session.deferred_from(epoch)
    }

    /// See [`Session::held_up_to`].
    pub fn held_up_to(&self, epoch: u64, bound: u64) -> Option<u64> {
        self.session.held_up_to(epoch, bound)
    }

    /// See [`Session::end_replay`].
    pub fn end_replay(&self, epoch: u64) {
        self.session.end_replay(epoch);
    }

    /// See [`Session::room`].
    pub fn room(&self) -> usize {
        self.session.room()
    }

    /// See [`Session::wait_room`].
    pub async fn wait_room(&self, epoch: u64) -> bool {
        self.session.wait_room(epoch).await
    }

    /// See [`Session::offer`].
    pub fn offer(&self, epoch: u64, page: Vec<Delivery>, read_up_to: u64, caught_up: bool) -> Offered {
        self.session.offer(epoch, page, read_up_to, caught_up)
    }
}

/// One plugin. Every method has a default that abstains or does nothing, so a plugin
/// implements only the points it cares about.
pub trait Hook: Send + Sync + 'static {
    /// Name for logs.
    fn name(&self) -> &'static str;

    fn authenticate<'a>(&'a self, _creds: &'a Credentials) -> HookFuture<'a, AuthDecision> {
        Box::pin(async { AuthDecision::Abstain })
    }

    fn authorize_subscribe(&self, _client: &ClientInfo, _filter: &str) -> Access {
        Access::Abstain
    }

    /// A client's message (a PUBLISH, or its will): route it through the core,
    /// refuse it, or take it over ([`PublishDecision::TakenOver`]).
    fn on_publish(&self, _client: &ClientInfo, _msg: &Message) -> PublishDecision {
        PublishDecision::Abstain
    }
    /// `present`: an existing session was resumed.
    fn on_connected(&self, _client: &ClientInfo, _session: &SessionView, _present: bool) {}

    fn on_disconnected(&self, _client: &ClientInfo) {}

    /// `new`: the session had no subscription to this filter before. A plugin that
    /// makes state durable for the subscription returns a receipt: the SUBACK waits
    /// for it (the subscription itself holds whatever it resolves to).
    fn on_subscribed(
        &self,
        _client: &ClientInfo,
        _session: &SessionView,
        _filter: &str,
        _sub: Subscription,
        _new: bool,
    ) -> Option<Receipt> {
        None
    }

    fn on_acked(&self, _client: &ClientInfo, _msg: &Message) {}

    /// As [`Hook::on_acked`], with a receipt that resolves once what the plugin keeps
    /// of the acknowledgement is durable (a device cursor), for a caller that must not
    /// forget the delivery before then.
    fn on_acked_durably(&self, client: &ClientInfo, msg: &Message) -> Option<Receipt> {
        self.on_acked(client, msg);
        None
    }
}

/// One receipt for several (rare: one per plugin that stores something).
pub fn all_of(mut receipts: Vec<Receipt>) -> Option<Receipt> {
    match receipts.len() {
        0 | 1 => receipts.pop(),
        _ => {
            let (done, all) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                let mut stored = Ok(());
                for r in receipts {
                    let one = r.await.unwrap_or(Err(NotStored::Stopped));
                    stored = stored.and(one);
                }
                let _ = done.send(stored);
            });
            Some(all)
        }
    }
}

/// The ordered registry of plugins; cheap to clone.
#[derive(Clone, Default)]
pub struct Hooks {
    list: Arc<Vec<Arc<dyn Hook>>>,
}

impl Hooks {
    pub fn new(list: Vec<Arc<dyn Hook>>) -> Hooks {
        Hooks { list: Arc::new(list) }
    }

    /// First non-abstaining answer; deny ([`AuthFailure::NotAuthorized`]) if none.
    pub async fn authenticate(&self, creds: &Credentials) -> AuthDecision {
        for h in self.list.iter() {
            match h.authenticate(creds).await {
                AuthDecision::Abstain => continue,
                decision => {
                    tracing::trace!(hook = h.name(), ?decision, "authenticate");
                    return decision;
                }
            }
        }
        AuthDecision::Deny(AuthFailure::NotAuthorized)
    }

    /// First non-abstaining answer; deny if none.
    pub fn authorize_subscribe(&self, client: &ClientInfo, filter: &str) -> bool {
        for h in self.list.iter() {
            match h.authorize_subscribe(client, filter) {
                Access::Abstain => continue,
                a => return a == Access::Allow,
            }
        }
        false
    }

    /// First non-abstaining answer; refuse if none.
    pub fn on_publish(&self, client: &ClientInfo, msg: &Message) -> PublishDecision {
        for h in self.list.iter() {
            match h.on_publish(client, msg) {
                PublishDecision::Abstain => continue,
                d => return d,
            }
        }
        PublishDecision::Refuse(None)
    }
    pub fn on_connected(&self, client: &ClientInfo, session: &Arc<Session>, present: bool) {
        let view = SessionView::new(session.clone());
        self.list.iter().for_each(|h| h.on_connected(client, &view, present));
    }

    pub fn on_subscribed(
        &self,
        client: &ClientInfo,
        session: &Arc<Session>,
        filter: &str,
        sub: Subscription,
        new: bool,
    ) -> Vec<Receipt> {
        let view = SessionView::new(session.clone());
        self.list
            .iter()
            .filter_map(|h| h.on_subscribed(client, &view, filter, sub, new))
            .collect()
    }

    pub fn on_disconnected(&self, client: &ClientInfo) {
        self.list.iter().for_each(|h| h.on_disconnected(client));
    }

    pub fn on_acked(&self, client: &ClientInfo, msg: &Message) {
        self.list.iter().for_each(|h| h.on_acked(client, msg));
    }

    /// [`Hook::on_acked_durably`] of every plugin, as one receipt (`None`: nothing to
    /// wait for).
    pub fn on_acked_durably(&self, client: &ClientInfo, msg: &Message) -> Option<Receipt> {
        all_of(
            self.list
                .iter()
                .filter_map(|h| h.on_acked_durably(client, msg))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_shared::codec::{Protocol, QoS};

    struct Fixed(&'static str, Access, PublishDecision);
    impl Hook for Fixed {
        fn name(&self) -> &'static str {
            self.0
        }
        fn authorize_subscribe(&self, _: &ClientInfo, _: &str) -> Access {
            self.1
        }
        fn on_publish(&self, _: &ClientInfo, _: &Message) -> PublishDecision {
            match self.2 {
                PublishDecision::Route => PublishDecision::Route,
                PublishDecision::Refuse(why) => PublishDecision::Refuse(why),
                PublishDecision::TakenOver(_) => PublishDecision::TakenOver(receipt(Ok(()))),
                PublishDecision::Abstain => PublishDecision::Abstain,
            }
        }
    }

    fn client() -> ClientInfo {
        ClientInfo {
            username: None,
            client_id: "c".into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            protocol: Protocol::V311,
            admin: false,
            restriction: None,
            persistent: false,
        }
    }

    fn msg() -> Message {
        Message {
            topic: "t".into(),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
            expires_at: None,
            origin: None,
            tag: None,
            lazy_properties: None,
            exclude_origin: false,
        }
    }

    #[test]
    fn empty_registry_denies() {
        let h = Hooks::default();
        assert!(!h.authorize_subscribe(&client(), "a"));
        assert!(matches!(h.on_publish(&client(), &msg()), PublishDecision::Refuse(_)));
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let creds = Credentials {
            username: None,
            password: None,
            client_id: "c".into(),
            addr: client().addr,
        };
        assert_eq!(
            rt.block_on(h.authenticate(&creds)),
            AuthDecision::Deny(AuthFailure::NotAuthorized)
        );
    }

    #[test]
    fn first_non_abstaining_answer_wins_in_order() {
        let h = Hooks::new(vec![
            Arc::new(Fixed("a", Access::Abstain, PublishDecision::Abstain)),
            Arc::new(Fixed("b", Access::Deny, PublishDecision::TakenOver(receipt(Ok(()))))),
            Arc::new(Fixed("c", Access::Allow, PublishDecision::Route)),
        ]);
        assert!(!h.authorize_subscribe(&client(), "a"));
        assert!(matches!(h.on_publish(&client(), &msg()), PublishDecision::TakenOver(_)));
        let h = Hooks::new(vec![
            Arc::new(Fixed("c", Access::Allow, PublishDecision::Route)),
            Arc::new(Fixed("b", Access::Deny, PublishDecision::Refuse(None))),
        ]);
        assert!(h.authorize_subscribe(&client(), "a"));
        assert!(matches!(h.on_publish(&client(), &msg()), PublishDecision::Route));
    }
}
