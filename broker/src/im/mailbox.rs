//! Mailbox delivery: everything addressed to a user is appended to their mailbox,
//! then routed to `inbox/{user}/...` for the sessions subscribed now. Offline
//! persistent sessions do not queue it: when they come back, each device is replayed
//! what its cursor has not acknowledged, in order (with a gap event when retention
//! dropped some of it).

use std::sync::Arc;

use bytes::Bytes;
use natter_shared::codec::{Properties, QoS};
use serde_json::{json, Value};

use super::writer::{Post, Writer, WriterLimits};
use crate::config::ImConfig;
use crate::hooks::SessionView;
use crate::hooks::{NotStored, Receipt};
use crate::model::{Message, PropertiesSource};
use crate::store::{MailboxEntry, NewMessage, Retention, Route, Store, StoredMessage};

/// The sender name of broker events.
pub const BROKER_SENDER: &str = "natter";

/// Properties a subscriber sees on a mailbox delivery: the sender's user properties
/// (minus any that would impersonate ours), then `id`, `from` and `ts`.
fn properties(id: u64, m: &StoredMessage) -> Properties {
    let mut user_properties: Vec<(String, String)> = m
        .user_properties
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "id" | "from" | "ts"))
        .cloned()
        .collect();
    user_properties.push(("id".into(), id.to_string()));
    user_properties.push(("from".into(), m.from.clone()));
    user_properties.push(("ts".into(), m.ts.to_string()));
    Properties {
        user_properties,
        content_type: m.content_type.clone(),
        ..Properties::default()
    }
}

/// Mailbox deliveries carry the stored message; MQTT 5 receivers get its properties
/// (the message's `tag` is its id).
impl PropertiesSource for StoredMessage {
    fn properties(&self, msg: &Message) -> Properties {
        properties(msg.tag.unwrap_or(0), self)
    }
}

pub struct Mailboxes {
    store: Store,
    writer: Writer,
}

/// The writer's bounds from the configuration, mailbox retention among them.
pub fn limits(cfg: &ImConfig) -> WriterLimits {
    WriterLimits {
        retention: Retention {
            max_messages: cfg.mailbox_max_messages.get(),
            max_bytes: cfg.mailbox_max_bytes.get(),
            max_age: u64::try_from(cfg.mailbox_max_age.as_millis()).unwrap_or(u64::MAX),
        },
        batch_max: cfg.write_batch_max.get(),
        store_within: std::time::Duration::from_micros(cfg.write_batch_max_us),
        index_every: std::time::Duration::from_millis(cfg.index_interval_ms.get()),
        index_at: cfg.index_max_pending.get(),
        queue: cfg.writer_queue.get(),
    }
}

impl Mailboxes {
    pub fn new(store: Store, writer: Writer) -> Mailboxes {
        Mailboxes { store, writer }
    }

    /// Hands a message to the writer, which routes it to `inbox/{user}/{suffix}` of
    /// each mailbox on its route for the sessions subscribed then, and stores it once.
    /// `origin` is the session it came from and `sender` that connection's client id:
    /// the sender's own copy skips it (see [`Post`]). With `receipt`, returns what
    /// resolves once stored. `Err` when the writer has stopped.
    pub fn post(
        &self,
        message: StoredMessage,
        route: Route,
        origin: Option<u64>,
        sender: Option<Arc<str>>,
        receipt: bool,
    ) -> Result<Option<Receipt>, NotStored> {
        let post = Post {
            record: NewMessage {
                id: 0,
                message: Arc::new(message),
                route,
            },
            origin,
            sender,
            done: None,
        };
        self.writer.post(post, receipt)
    }

    /// Stores an event and delivers it to `user`'s mailbox at `inbox/{user}/event/{kind}`.
    pub fn event(&self, user: &str, kind: &str, mut body: Value) {
        if let Value::Object(map) = &mut body {
            map.insert("type".into(), json!(kind));
        }
        let m = StoredMessage {
            from: BROKER_SENDER.into(),
            ts: crate::clock::unix_ms(),
            payload: Bytes::from(body.to_string()),
            user_properties: Vec::new(),
            content_type: Some("application/json".into()),
        };
        let route = Route::Explicit {
            conversation: None,
            mailboxes: vec![(
                user.to_owned(),
                MailboxEntry {
                    suffix: format!("event/{kind}"),
                    qos: QoS::AtLeastOnce as u8,
                },
            )],
        };
        if let Err(why) = self.post(m, route, None, None, false) {
            tracing::error!(user, kind, %why, "event not stored");
        }
    }

    /// A device acknowledged mailbox message `id`: its cursor moves there.
    pub fn acked(&self, user: &str, device: &str, id: u64) {
        self.writer.acked(user, device, id);
    }

    /// As [`Mailboxes::acked`]; the receipt resolves once the cursor is written.
    pub fn acked_durably(&self, user: &str, device: &str, id: u64) -> Receipt {
        self.writer.acked_durably(user, device, id)
    }

    /// A device's cursor as the writer sees it (what is acknowledged, stored or not).
    pub fn cursor(&self, user: &str, device: &str) -> Result<Option<u64>, crate::store::StoreError> {
        self.writer.cursor(user, device)
    }

    /// Replays `user`'s mailbox into one device's session: entries after the device's
    /// cursor that its subscriptions cover, oldest first, in pages within the
    /// session's queue bound (see [`super::replay`]).
    pub fn replay(&self, user: &str, device: &str, session: &SessionView) -> Option<Receipt> {
        super::replay::start(&self.store, &self.writer, user, device, session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(from: &str, user_properties: &[(&str, &str)]) -> StoredMessage {
        StoredMessage {
            from: from.into(),
            ts: 1_795_824_702_281,
            payload: Bytes::from_static(b"hi"),
            user_properties: user_properties
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            content_type: Some("text/plain".into()),
        }
    }

    #[test]
    fn delivery_properties_are_the_senders_then_ours_and_never_forged() {
        let m = stored(
            "alice",
            &[
                ("id", "1"),
                ("lang", "en"),
                ("from", "mallory"),
                ("ts", "0"),
                ("lang", "fr"),
            ],
        );
        let p = properties(42, &m);
        let pairs: Vec<(&str, &str)> = p
            .user_properties
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("lang", "en"),
                ("lang", "fr"),
                ("id", "42"),
                ("from", "alice"),
                ("ts", "1795824702281")
            ],
            "the sender's own keep their order; ours come last, once each"
        );
        assert_eq!(p.content_type.as_deref(), Some("text/plain"));
        let rest = Properties {
            user_properties: Vec::new(),
            content_type: None,
            ..p
        };
        assert_eq!(rest, Properties::default(), "nothing else is set");
    }

    #[test]
    fn retention_and_writer_bounds_come_from_the_config() {
        let mut cfg = crate::config::Config::default_config().im;
        cfg.mailbox_max_messages = 7.try_into().unwrap();
        cfg.mailbox_max_bytes = 9.try_into().unwrap();
        cfg.mailbox_max_age = std::time::Duration::from_secs(2 * 86_400);
        cfg.write_batch_max = 3.try_into().unwrap();
        cfg.write_batch_max_us = 250;
        cfg.index_interval_ms = 40.try_into().unwrap();
        cfg.index_max_pending = 11.try_into().unwrap();
        let l = limits(&cfg);
        assert_eq!(
            (l.retention.max_messages, l.retention.max_bytes, l.retention.max_age),
            (7, 9, 2 * 86_400_000),
            "the age bound in milliseconds"
        );
        assert_eq!((l.batch_max, l.index_at), (3, 11));
        assert_eq!(l.store_within, std::time::Duration::from_micros(250));
        assert_eq!(l.index_every, std::time::Duration::from_millis(40));
    }
}
