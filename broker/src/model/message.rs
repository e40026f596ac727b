//! The broker's view of an application message and of one client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use natter_shared::codec::{Properties, Protocol, QoS};

/// The empty property set most messages share.
pub fn no_properties() -> Arc<Properties> {
    static NONE: std::sync::LazyLock<Arc<Properties>> = std::sync::LazyLock::new(Arc::default);
    NONE.clone()
}

/// `p` as a message's properties: the shared empty set when it is empty.
pub fn shared(p: Properties) -> Arc<Properties> {
    if p == Properties::default() {
        no_properties()
    } else {
        Arc::new(p)
    }
}

/// A message as routed: shared by every session it is delivered to.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    /// QoS it was published with; each delivery is downgraded to the subscription's.
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 properties passed through to subscribers (user properties, content type,
    /// response topic, correlation data, payload format). Topic alias and subscription
    /// identifiers are per connection and never stored here. Shared: most messages
    /// have none and point at one empty set (a message is then ~130 bytes, not ~460);
    /// change them with [`Message::properties_mut`].
    pub properties: Arc<Properties>,
    /// Builds the properties when the message is sent to an MQTT 5 client, in place of
    /// `properties`: for properties a plugin stamps on every message, which MQTT
    /// 3.1.1 receivers never see and need not pay for.
    pub lazy_properties: Option<Arc<dyn PropertiesSource>>,
    /// When the message expires (MQTT 5 Message Expiry Interval), if ever.
    pub expires_at: Option<Instant>,
    /// Session that published it (for the No Local option); `None` for broker messages.
    pub origin: Option<u64>,
    /// Never deliver to the `origin` session (a copy for the sender's other devices).
    pub exclude_origin: bool,
    /// An id a plugin attaches to a message it routes from durable storage (the IM
    /// layer: the mailbox id). Tagged messages are not queued for offline sessions: the
    /// plugin replays them from storage when the session comes back.
    pub tag: Option<u64>,
}

impl Message {
    /// A message from the broker itself (no origin, no tag).
    pub fn broker(topic: impl Into<Arc<str>>, payload: Bytes, qos: QoS, retain: bool) -> Message {
        Message {
            topic: topic.into(),
            payload,
            qos,
            retain,
            properties: no_properties(),
            lazy_properties: None,
            expires_at: None,
            origin: None,
            exclude_origin: false,
            tag: None,
        }
    }

    /// The properties, to change (copied first if shared).
    pub fn properties_mut(&mut self) -> &mut Properties {
        Arc::make_mut(&mut self.properties)
    }

    /// A message from a client, a PUBLISH or a will, published by session `origin`:
    /// its Message Expiry Interval becomes a deadline counted from `now` (the
    /// remaining interval is recomputed for each delivery).
    pub fn from_client(
        topic: Arc<str>,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        mut properties: Properties,
        origin: u64,
        now: Instant,
    ) -> Message {
        let expires_at = properties
            .message_expiry_interval
            .take()
            .map(|secs| now + std::time::Duration::from_secs(u64::from(secs)));
        Message {
            topic,
            payload,
            qos,
            retain,
            properties: shared(properties),
            lazy_properties: None,
            expires_at,
            origin: Some(origin),
            exclude_origin: false,
            tag: None,
        }
    }

    /// A message a plugin routes from durable storage: tagged with its id `tag`, its
    /// MQTT 5 properties built by `source` for v5 receivers only.
    pub fn stored(topic: Arc<str>, payload: Bytes, qos: QoS, source: Arc<dyn PropertiesSource>, tag: u64) -> Message {
        Message {
            lazy_properties: Some(source),
            tag: Some(tag),
            ..Message::broker(topic, payload, qos, false)
        }
    }

    /// The properties an MQTT 5 receiver gets (before per-connection ones).
    pub fn v5_properties(&self) -> Properties {
        match &self.lazy_properties {
            Some(source) => source.properties(self),
            None => (*self.properties).clone(),
        }
    }
}

/// What builds a message's MQTT 5 properties on demand (see
/// [`Message::lazy_properties`]): typically the plugin's own record of the message,
/// shared rather than copied.
pub trait PropertiesSource: Send + Sync + std::fmt::Debug {
    fn properties(&self, msg: &Message) -> Properties;
}

impl Message {
    /// True once its expiry has passed.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// Seconds left before expiry, rounded up, for the Message Expiry Interval sent on.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|t| {
            let left = t.saturating_duration_since(now);
            u32::try_from(left.as_secs() + u64::from(left.subsec_nanos() > 0)).unwrap_or(u32::MAX)
        })
    }
}

/// A client admitted for one purpose only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restriction {
    /// No account yet: may only register (when registration is open).
    Register,
    /// Logged in with a password reset token: may only set a new password.
    Reset,
}

/// Who a connection is, as hooks see it.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// Authenticated user name; `None` for anonymous clients.
    pub username: Option<Arc<str>>,
    pub client_id: Arc<str>,
    pub addr: SocketAddr,
    pub protocol: Protocol,
    pub admin: bool,
    /// Admitted for one purpose only (registration, password reset).
    pub restriction: Option<Restriction>,
    /// The session outlives the connection (3.1.1 clean session 0, 5 expiry > 0).
    pub persistent: bool,
}
