//! Plain messages for persistent sessions, on disk: a QoS 1/2 delivery of an
//! untagged message (not one a plugin keeps itself, like a mailbox entry) to a
//! persistent session is written before it is queued, and its publisher's
//! acknowledgement waits for the write; the record goes once the client acknowledges
//! it (PUBACK, or PUBCOMP at QoS 2), or the message expires or cannot be sent. At QoS
//! 2 the record is marked released before the PUBREL goes out, so a restarted broker
//! sends the PUBREL again instead of the message. After a restart the records come
//! back into their sessions, in the order they were written.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bincode::Options;
use natter_shared::codec::QoS;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::{encode, opts, session_key_with, Op, Persister, RetainedRecord};
use crate::hooks::{NotStored, Receipt, Stored};
use crate::model::{Delivery, Session, SessionKey};
use crate::router::Keeper;
use crate::store::{Kept, Store, StoreError};

/// A delivery as written, under its session's key and its number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedRecord {
    pub username: Option<String>,
    pub client_id: String,
    /// The message (topic, payload, QoS as published, properties, expiry).
    pub message: RetainedRecord,
    /// The QoS and RETAIN flag it is sent with, and its subscription identifiers.
    pub qos: u8,
    pub retain: bool,
    pub sub_ids: Vec<u32>,
    /// The packet id its PUBREL was sent under (QoS 2, PUBCOMP awaited).
    pub released: Option<u16>,
}

impl QueuedRecord {
    fn of(key: &SessionKey, d: &Delivery, released: Option<u16>) -> QueuedRecord {
        QueuedRecord {
            username: key.username.as_deref().map(str::to_owned),
            client_id: key.client_id.to_string(),
            message: RetainedRecord::of(&d.msg, Instant::now(), crate::clock::unix_ms()),
            qos: d.qos as u8,
            retain: d.retain,
            sub_ids: d.sub_ids.clone(),
            released,
        }
    }

    fn key(&self) -> SessionKey {
        SessionKey {
            username: self.username.as_deref().map(Arc::from),
            client_id: Arc::from(self.client_id.as_str()),
        }
    }

    /// The delivery again (numbered `seq`), or `None` once its message has expired.
    pub fn delivery(self, seq: NonZeroU64, now: Instant, now_ms: u64) -> Option<Delivery> {
        let mut msg = self.message.message(now, now_ms)?;
        msg.retain = self.retain;
        Some(Delivery {
            msg: Arc::new(msg),
            qos: QoS::from_u8(self.qos).unwrap_or(QoS::AtLeastOnce),
            retain: self.retain,
            sub_ids: self.sub_ids,
            kept: Some(seq),
        })
    }
}

/// The queued deliveries read at start, by session, in the order they were written.
pub type QueuedBySession = HashMap<SessionKey, Vec<(NonZeroU64, QueuedRecord)>>;

fn record_key(key: &SessionKey, seq: NonZeroU64) -> Vec<u8> {
    session_key_with(key, &seq.get().to_be_bytes())
}

impl Persister {
    /// Writes `d` for the session of `key` (see the module doc): its number and the
    /// receipt of the write; `None` when nothing is written (no store), `Some(Err)`
    /// when the write could not be handed over.
    pub fn keep_delivery(&self, key: &SessionKey, d: &Delivery) -> Option<Result<(NonZeroU64, Receipt), ()>> {
        let tx = self.tx.as_ref()?;
        let seq = NonZeroU64::new(self.seq.fetch_add(1, Ordering::Relaxed).saturating_add(1))?;
        let Some(bytes) = encode(&QueuedRecord::of(key, d, None), &key.client_id) else {
            return Some(Err(()));
        };
        let (done, receipt) = oneshot::channel();
        let op = Op::Put(Kept::Queued, record_key(key, seq), bytes, Some(done));
        Some(if self.send(tx, op, &key.client_id) {
            Ok((seq, receipt))
        } else {
            Err(())
        })
    }

    /// The kept delivery `d` was released under `pkid` (PUBREC received): written so,
    /// and the PUBREL waits for the receipt.
    pub fn release_delivery(&self, key: &SessionKey, d: &Delivery, pkid: u16) -> Option<Receipt> {
        let (tx, seq) = (self.tx.as_ref()?, d.kept?);
        let bytes = encode(&QueuedRecord::of(key, d, Some(pkid)), &key.client_id)?;
        let (done, receipt) = oneshot::channel();
        let op = Op::Put(Kept::Queued, record_key(key, seq), bytes, Some(done));
        self.send(tx, op, &key.client_id).then_some(receipt)
    }

    /// The kept delivery `seq` is done with (acknowledged, expired or not sendable).
    pub fn forget_delivery(&self, key: &SessionKey, seq: NonZeroU64) {
        if let Some(tx) = &self.tx {
            self.send(tx, Op::Delete(Kept::Queued, record_key(key, seq), None), &key.client_id);
        }
    }
}

/// The [`Keeper`] of one routing: writes through the persister and gathers what the
/// publisher's acknowledgement waits for.
pub struct Keeping<'a> {
    persist: &'a Persister,
    receipts: Vec<Receipt>,
    failed: bool,
}

impl<'a> Keeping<'a> {
    pub fn new(persist: &'a Persister) -> Keeping<'a> {
        Keeping {
            persist,
            receipts: Vec::new(),
            failed: false,
        }
    }

    /// What the acknowledgement waits for: nothing (`Ok(None)`: nothing was kept), a
    /// receipt for every record written, or `Err` when one could not be written.
    pub fn receipt(self) -> Result<Option<Receipt>, NotStored> {
        if self.failed {
            return Err(NotStored::Busy);
        }
        let mut receipts = self.receipts;
        match receipts.len() {
            0 => Ok(None),
            1 => Ok(receipts.pop()),
            _ => {
                let (done, receipt) = oneshot::channel();
                tokio::spawn(async move {
                    let mut stored: Stored = Ok(());
                    for r in receipts {
                        stored = stored.and(r.await.unwrap_or(Err(NotStored::Stopped)));
                    }
                    let _ = done.send(stored);
                });
                Ok(Some(receipt))
            }
        }
    }
}

impl Keeper for Keeping<'_> {
    fn keep(&mut self, session: &Session, delivery: &Delivery) -> Option<NonZeroU64> {
        match self.persist.keep_delivery(&session.key, delivery)? {
            Ok((seq, receipt)) => {
                self.receipts.push(receipt);
                Some(seq)
            }
            Err(()) => {
                self.failed = true;
                None
            }
        }
    }

    fn forget(&mut self, session: &Session, seq: NonZeroU64) {
        self.persist.forget_delivery(&session.key, seq);
    }
}

/// Reads the queued deliveries back (off the runtime), for the sessions in
/// `sessions`; those of other sessions (ended meanwhile) and unreadable ones are
/// removed. Numbers continue after the highest read.
///
/// # Errors
/// Store I/O errors.
pub fn load_queued(
    store: &Store,
    persist: &Persister,
    sessions: &HashSet<SessionKey>,
) -> Result<QueuedBySession, StoreError> {
    let mut out: QueuedBySession = HashMap::new();
    let mut highest = 0u64;
    for (key, bytes) in store.kept(Kept::Queued)? {
        let seq = key
            .len()
            .checked_sub(8)
            .and_then(|at| <[u8; 8]>::try_from(&key[at..]).ok())
            .map(u64::from_be_bytes)
            .and_then(NonZeroU64::new);
        let record = opts().deserialize::<QueuedRecord>(&bytes);
        match (seq, record) {
            (Some(seq), Ok(record)) if sessions.contains(&record.key()) => {
                highest = highest.max(seq.get());
                out.entry(record.key()).or_default().push((seq, record));
            }
            (_, Err(e)) => {
                tracing::error!(error = %e, "an unreadable queued message is forgotten");
                store.delete_kept(Kept::Queued, &key)?;
            }
            _ => store.delete_kept(Kept::Queued, &key)?,
        }
    }
    for list in out.values_mut() {
        list.sort_by_key(|(seq, _)| *seq);
    }
    persist.seq.fetch_max(highest, Ordering::Relaxed);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Message;
    use bytes::Bytes;

    fn key(client: &str) -> SessionKey {
        SessionKey {
            username: Some(Arc::from("bob")),
            client_id: Arc::from(client),
        }
    }

    fn delivery(body: &'static [u8]) -> Delivery {
        Delivery {
            msg: Arc::new(Message::broker(
                "jobs/1",
                Bytes::from_static(body),
                QoS::ExactlyOnce,
                false,
            )),
            qos: QoS::AtLeastOnce,
            retain: false,
            sub_ids: vec![4],
            kept: None,
        }
    }

    /// Records come back by session in the order they were written, numbers go on
    /// after the highest, forgotten and released ones as they were left, and those of
    /// a session that is gone are removed.
    #[tokio::test]
    async fn kept_deliveries_come_back_by_session_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let p = Persister::start(store.clone());
        let (phone, gone) = (key("phone"), key("gone"));
        let (first, _) = p.keep_delivery(&phone, &delivery(b"one")).unwrap().unwrap();
        let (second, _) = p.keep_delivery(&phone, &delivery(b"two")).unwrap().unwrap();
        let (third, _) = p.keep_delivery(&phone, &delivery(b"three")).unwrap().unwrap();
        p.keep_delivery(&gone, &delivery(b"orphan")).unwrap().unwrap();
        p.forget_delivery(&phone, second);
        let mut released = delivery(b"three");
        released.kept = Some(third);
        p.release_delivery(&phone, &released, 77)
            .unwrap()
            .await
            .unwrap()
            .unwrap();

        let again = Persister::start(store.clone());
        let sessions: HashSet<SessionKey> = [phone.clone()].into_iter().collect();
        let mut loaded = load_queued(&store, &again, &sessions).unwrap();
        let list = loaded.remove(&phone).unwrap();
        assert!(loaded.is_empty(), "only the sessions asked for");
        let seqs: Vec<NonZeroU64> = list.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![first, third], "in order, the forgotten one gone");
        assert_eq!(list[1].1.released, Some(77));
        let (seq, record) = list[0].clone();
        let d = record.delivery(seq, Instant::now(), crate::clock::unix_ms()).unwrap();
        assert_eq!(
            (&d.msg.payload[..], d.qos, d.sub_ids.clone(), d.kept),
            (&b"one"[..], QoS::AtLeastOnce, vec![4], Some(first))
        );
        let (next, _) = again.keep_delivery(&phone, &delivery(b"four")).unwrap().unwrap();
        assert!(next > third, "numbers go on after the highest");
        again.sync().await;
        assert_eq!(store.kept(Kept::Queued).unwrap().len(), 3, "the orphan was removed");
    }
}
