//! Persistent sessions and retained messages on disk: what a session needs to come
//! back after a restart (its subscriptions with their options and identifiers, its
//! expiry, a pending will with its delay and properties) and every retained message
//! a client or a will left, written as they change and read back at start. Presence
//! is not kept: the broker owns it and everyone is offline after a restart.
//!
//! Records go through one task, in the order the connections handed them over (a
//! subscribe and the unsubscribe after it, a retained message and the empty one that
//! clears it, are never written the other way round), in batches: one blocking
//! hand-over and one store commit (a flush, with `[store] durability = "sync"`) per
//! batch. A SUBACK, and the PUBACK of a retained QoS 1/2 publish, waits for its
//! record's receipt, so what a client was told is done is there after a crash.
//!
//! Plain QoS 1/2 messages queued or in flight for a persistent session are kept too
//! (see [`queued`]); a mailbox subscription needs none: its device's cursor brings
//! back what it had not acknowledged.

mod incoming;
mod queued;
mod record;
mod retained;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bincode::Options;
use tokio::sync::{mpsc, oneshot};

use crate::hooks::{NotStored, Receipt, Stored};
use crate::model::{Message, SessionKey};
use crate::store::{self, Kept, Store, StoreError};
pub use incoming::{load_incoming, IncomingBySession};
pub use queued::{load_queued, Keeping, QueuedBySession, QueuedRecord};
use record::key_bytes;
pub use record::{Record, SubRecord, WillRecord};
pub use retained::{PropsRecord, RetainedRecord};

/// Records waiting to be written at most; beyond it a change is logged and not
/// written (the session works on, from memory).
const QUEUE: usize = 4096;
/// Records written per batch at most.
const BATCH: usize = 256;

fn opts() -> impl Options {
    bincode::DefaultOptions::new()
}

enum Op {
    Put(Kept, Vec<u8>, Vec<u8>, Option<oneshot::Sender<Stored>>),
    Delete(Kept, Vec<u8>, Option<oneshot::Sender<Stored>>),
    DeletePrefix(Kept, Vec<u8>),
    /// Deletes a QoS 2 flow record if it is still the one of this stored message (the
    /// packet id may have gone to another flow meanwhile).
    DeleteFlow(Vec<u8>, u64),
    /// Resolves once everything before it is written.
    Barrier(oneshot::Sender<Stored>),
}

/// The handle connections write records through; cheap to clone.
#[derive(Clone, Default)]
pub struct Persister {
    /// `None`: nothing is written (unit tests without a store).
    tx: Option<mpsc::Sender<Op>>,
    /// Session keys that have a record: a clean connection deletes one only if it
    /// exists (no write for the many clients that never had a persistent session).
    known: Arc<Mutex<HashSet<Vec<u8>>>>,
    /// The last number given to a kept delivery (see [`queued`]).
    seq: Arc<std::sync::atomic::AtomicU64>,
}

impl Persister {
    /// Nothing is written.
    pub fn off() -> Persister {
        Persister::default()
    }

    /// Starts the writing task (on the current runtime).
    pub fn start(store: Store) -> Persister {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(store, rx));
        Persister {
            tx: Some(tx),
            known: Arc::default(),
            seq: Arc::default(),
        }
    }

    /// Writes `record`; the receipt resolves once it is committed.
    pub fn save(&self, record: &Record) -> Option<Receipt> {
        let tx = self.tx.as_ref()?;
        let bytes = encode(record, &record.client_id)?;
        let key = key_bytes(record.username.as_deref(), &record.client_id);
        self.known().insert(key.clone());
        let (done, receipt) = oneshot::channel();
        self.send(tx, Op::Put(Kept::Session, key, bytes, Some(done)), &record.client_id)
            .then_some(receipt)
    }

    /// Forgets the session of `key` (if it has a record).
    pub fn delete(&self, key: &SessionKey) {
        if let Some(tx) = &self.tx {
            let key_bytes = key_bytes(key.username.as_deref(), &key.client_id);
            if self.known().remove(&key_bytes) {
                self.send(tx, Op::DeletePrefix(Kept::Outgoing, key_bytes.clone()), &key.client_id);
                self.send(tx, Op::DeletePrefix(Kept::Queued, key_bytes.clone()), &key.client_id);
                self.send(tx, Op::DeletePrefix(Kept::Incoming, key_bytes.clone()), &key.client_id);
                self.send(tx, Op::Delete(Kept::Session, key_bytes, None), &key.client_id);
            }
        }
    }

    /// Writes `msg` as its topic's retained message, or forgets the topic's when its
    /// payload is empty; the receipt resolves once that is committed.
    pub fn retain(&self, msg: &Message) -> Option<Receipt> {
        let tx = self.tx.as_ref()?;
        let key = msg.topic.as_bytes().to_vec();
        let (done, receipt) = oneshot::channel();
        let op = if msg.payload.is_empty() {
            Op::Delete(Kept::Retained, key, Some(done))
        } else {
            let record = RetainedRecord::of(msg, Instant::now(), crate::clock::unix_ms());
            Op::Put(Kept::Retained, key, encode(&record, &msg.topic)?, Some(done))
        };
        self.send(tx, op, &msg.topic).then_some(receipt)
    }

    /// Writes that the client of `key` was sent PUBREL `pkid` for the stored message
    /// `tag` on `topic` (its QoS 2 flow is released); the receipt resolves once that is
    /// committed, and the PUBREL waits for it: after a crash the broker sends the
    /// PUBREL again rather than the message.
    pub fn released(&self, key: &SessionKey, pkid: u16, tag: u64, topic: &str) -> Option<Receipt> {
        let tx = self.tx.as_ref()?;
        let record = OutgoingRecord {
            pkid,
            tag,
            topic: topic.to_owned(),
        };
        let bytes = encode(&(key.username.as_deref(), &*key.client_id, &record), &key.client_id)?;
        let (done, receipt) = oneshot::channel();
        let op = Op::Put(Kept::Outgoing, outgoing_key(key, pkid), bytes, Some(done));
        self.send(tx, op, &key.client_id).then_some(receipt)
    }

    /// The QoS 2 flow `pkid` of `key`, for the stored message `tag`, is complete
    /// (PUBCOMP): its record goes, unless the id carries another flow by then.
    pub fn completed(&self, key: &SessionKey, pkid: u16, tag: u64) {
        if let Some(tx) = &self.tx {
            self.send(tx, Op::DeleteFlow(outgoing_key(key, pkid), tag), &key.client_id);
        }
    }

    /// Waits until everything handed over so far is written (at shutdown).
    pub async fn sync(&self) {
        let Some(tx) = &self.tx else {
            return;
        };
        let (done, receipt) = oneshot::channel();
        if tx.send(Op::Barrier(done)).await.is_ok() {
            let _ = receipt.await;
        }
    }

    /// `record` was read back at start: it has a record.
    pub fn restored(&self, record: &Record) {
        self.known()
            .insert(key_bytes(record.username.as_deref(), &record.client_id));
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashSet<Vec<u8>>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, tx: &mpsc::Sender<Op>, op: Op, what: &str) -> bool {
        match tx.try_send(op) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    what,
                    "session and retained writes are behind: this change is kept in memory only"
                );
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

fn outgoing_key(key: &SessionKey, pkid: u16) -> Vec<u8> {
    session_key_with(key, &pkid.to_be_bytes())
}

/// A record key within a session's: the session key, then `suffix` (a packet id, a
/// record number), so a session's records share its key as their prefix.
fn session_key_with(key: &SessionKey, suffix: &[u8]) -> Vec<u8> {
    let mut k = key_bytes(key.username.as_deref(), &key.client_id);
    k.extend_from_slice(suffix);
    k
}

/// A QoS 2 flow released to a session's client, as written.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OutgoingRecord {
    pub pkid: u16,
    /// The stored message's id ([`Message::tag`]).
    pub tag: u64,
    pub topic: String,
}

fn delete_flow(store: &Store, key: &[u8], tag: u64) -> Result<(), StoreError> {
    let Some(bytes) = store.get_kept(Kept::Outgoing, key)? else {
        return Ok(());
    };
    match opts().deserialize::<(Option<String>, String, OutgoingRecord)>(&bytes) {
        Ok((_, _, record)) if record.tag != tag => Ok(()),
        _ => store.delete_kept(Kept::Outgoing, key),
    }
}

fn encode<T: serde::Serialize>(record: &T, what: &str) -> Option<Vec<u8>> {
    opts()
        .serialize(record)
        .map_err(|e| tracing::error!(what, error = %e, "cannot encode a record to keep"))
        .ok()
}

async fn run(store: Store, mut rx: mpsc::Receiver<Op>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let ops = std::mem::take(&mut batch);
        let store = store.clone();
        let written = store::blocking(move || {
            let mut receipts = Vec::new();
            let mut result = Ok(());
            for op in ops {
                let r = match op {
                    Op::Put(kind, key, record, done) => {
                        receipts.extend(done);
                        store.put_kept(kind, &key, &record)
                    }
                    Op::Delete(kind, key, done) => {
                        receipts.extend(done);
                        store.delete_kept(kind, &key)
                    }
                    Op::DeletePrefix(kind, prefix) => store.delete_kept_prefix(kind, &prefix),
                    Op::DeleteFlow(key, tag) => delete_flow(&store, &key, tag),
                    Op::Barrier(done) => {
                        receipts.push(done);
                        Ok(())
                    }
                };
                result = result.and(r);
            }
            Ok((result.and_then(|()| store.commit()), receipts))
        })
        .await;
        let (result, receipts): (Result<(), StoreError>, _) = match written {
            Ok(w) => w,
            Err(e) => (Err(e), Vec::new()),
        };
        let stored = result.map_err(|e| {
            tracing::error!(error = %e, "sessions or retained messages not written");
            NotStored::Failed
        });
        for done in receipts {
            let _ = done.send(stored);
        }
    }
}

/// Reads every persistent session back (off the runtime): the valid records, the
/// unreadable ones logged and skipped, those of deleted accounts forgotten.
///
/// # Errors
/// Store I/O errors.
pub fn load(store: &Store) -> Result<Vec<Record>, StoreError> {
    let mut out = Vec::new();
    for (key, bytes) in store.kept(Kept::Session)? {
        let record: Record = match opts().deserialize(&bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "an unreadable session record is skipped");
                continue;
            }
        };
        if let Some(user) = record.username.as_deref() {
            if store.user(user)?.is_none() {
                store.delete_kept(Kept::Session, &key)?;
                continue;
            }
        }
        out.push(record);
    }
    Ok(out)
}

/// Reads every released QoS 2 flow back (off the runtime), by session; unreadable
/// records are forgotten (logged).
///
/// # Errors
/// Store I/O errors.
pub fn load_outgoing(store: &Store) -> Result<std::collections::HashMap<SessionKey, Vec<OutgoingRecord>>, StoreError> {
    let mut out: std::collections::HashMap<SessionKey, Vec<OutgoingRecord>> = Default::default();
    for (key, bytes) in store.kept(Kept::Outgoing)? {
        match opts().deserialize::<(Option<String>, String, OutgoingRecord)>(&bytes) {
            Ok((username, client_id, record)) => {
                let session = SessionKey {
                    username: username.as_deref().map(Arc::from),
                    client_id: Arc::from(client_id.as_str()),
                };
                out.entry(session).or_default().push(record);
            }
            Err(e) => {
                tracing::error!(error = %e, "an unreadable QoS 2 flow record is forgotten");
                store.delete_kept(Kept::Outgoing, &key)?;
            }
        }
    }
    Ok(out)
}

/// Reads every retained message back (off the runtime): the unexpired ones; expired
/// and unreadable records are forgotten (logged).
///
/// # Errors
/// Store I/O errors.
pub fn load_retained(store: &Store) -> Result<Vec<Message>, StoreError> {
    let (now, now_ms) = (Instant::now(), crate::clock::unix_ms());
    let mut out = Vec::new();
    for (key, bytes) in store.kept(Kept::Retained)? {
        let record: RetainedRecord = match opts().deserialize(&bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "an unreadable retained message is forgotten");
                store.delete_kept(Kept::Retained, &key)?;
                continue;
            }
        };
        match record.message(now, now_ms) {
            Some(msg) => out.push(msg),
            None => store.delete_kept(Kept::Retained, &key)?,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use natter_shared::codec::{QoS, RetainHandling};
    use std::time::Duration;

    fn record() -> Record {
        Record {
            username: Some("alice".into()),
            client_id: "phone".into(),
            v5: true,
            admin: false,
            expiry_secs: 60,
            disconnected_at_ms: Some(1_000_000),
            subscriptions: vec![SubRecord {
                filter: "inbox/alice/#".into(),
                qos: 2,
                no_local: true,
                retain_as_published: true,
                retain_handling: 2,
                id: Some(7),
            }],
            will: Some(WillRecord {
                topic: "t".into(),
                payload: b"bye".to_vec(),
                qos: 1,
                retain: false,
                delay_secs: 30,
                props: PropsRecord {
                    content_type: Some("text/plain".into()),
                    expiry_secs: Some(600),
                    user_properties: vec![("why".into(), "lost".into())],
                    ..PropsRecord::default()
                },
            }),
        }
    }

    #[test]
    fn what_is_left_counts_from_the_disconnect_or_the_restart() {
        let r = record();
        assert_eq!(r.remaining(1_010_000), (Duration::from_secs(50), 20));
        assert_eq!(r.remaining(1_100_000), (Duration::ZERO, 0), "expired meanwhile");
        let attached = Record {
            disconnected_at_ms: None,
            ..record()
        };
        assert_eq!(attached.remaining(5_000_000), (Duration::from_secs(60), 30));
    }

    #[test]
    fn subscriptions_and_wills_come_back_as_they_were() {
        let r = record();
        let subs = r.subscriptions();
        assert_eq!(subs.len(), 1);
        let (filter, sub) = &subs[0];
        assert_eq!(filter, "inbox/alice/#");
        assert_eq!(sub.id, Some(7));
        assert_eq!(sub.options.qos, QoS::ExactlyOnce);
        assert!(sub.options.no_local && sub.options.retain_as_published);
        assert_eq!(sub.options.retain_handling, RetainHandling::Never);
        let will = r.will(20).unwrap();
        assert_eq!((will.topic.as_str(), &will.payload[..]), ("t", &b"bye"[..]));
        assert_eq!(will.properties.will_delay_interval, Some(20));
        assert_eq!(will.properties.content_type.as_deref(), Some("text/plain"));
        assert_eq!(will.properties.message_expiry_interval, Some(600));
        assert_eq!(will.properties.user_properties, vec![("why".into(), "lost".into())]);
        assert_eq!(r.will(0).unwrap().properties.will_delay_interval, None);
    }

    #[tokio::test]
    async fn records_are_written_in_order_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let p = Persister::start(store.clone());
        let mut r = record();
        r.username = None;
        p.save(&r).unwrap();
        r.expiry_secs = 99;
        let receipt = p.save(&r).unwrap();
        assert_eq!(receipt.await.unwrap(), Ok(()));
        let loaded = load(&store).unwrap();
        assert_eq!(loaded, vec![r.clone()], "the last write wins");
        p.delete(&r.key());
        p.delete(&SessionKey {
            username: None,
            client_id: Arc::from("never-persistent"),
        });
        // The delete is written before anything saved after it.
        let mut other = record();
        other.username = None;
        other.client_id = "tablet".into();
        p.save(&other).unwrap().await.unwrap().unwrap();
        assert_eq!(load(&store).unwrap(), vec![other]);
    }

    #[tokio::test]
    async fn retained_messages_are_written_cleared_and_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let p = Persister::start(store.clone());
        let msg = |topic: &str, payload: &'static [u8]| {
            Message::broker(topic, Bytes::from_static(payload), QoS::AtLeastOnce, true)
        };
        p.retain(&msg("a/1", b"old")).unwrap();
        p.retain(&msg("a/1", b"new")).unwrap();
        p.retain(&msg("a/2", b"two")).unwrap();
        p.retain(&msg("a/2", b"")).unwrap();
        let mut gone = msg("a/3", b"short-lived");
        gone.expires_at = Some(Instant::now());
        p.retain(&gone).unwrap().await.unwrap().unwrap();
        let back = load_retained(&store).unwrap();
        assert_eq!(back.len(), 1, "cleared and expired ones are not back");
        assert_eq!((&*back[0].topic, &back[0].payload[..]), ("a/1", &b"new"[..]));
        assert_eq!(
            store.kept(Kept::Retained).unwrap().len(),
            1,
            "the expired one is forgotten"
        );
    }

    #[tokio::test]
    async fn a_completed_flow_forgets_its_record_only_if_the_id_still_carries_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let p = Persister::start(store.clone());
        let key = record().key();
        p.released(&key, 5, 10, "inbox/alice/dm/bob")
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        p.released(&key, 6, 11, "inbox/alice/dm/bob")
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        // A late completion of an earlier flow under id 5 leaves message 10's alone.
        p.completed(&key, 5, 9);
        p.sync().await;
        let flows = load_outgoing(&store).unwrap();
        assert_eq!(flows[&key].len(), 2);
        p.completed(&key, 5, 10);
        p.sync().await;
        let flows = load_outgoing(&store).unwrap();
        assert_eq!(
            flows[&key].iter().map(|f| (f.pkid, f.tag)).collect::<Vec<_>>(),
            vec![(6, 11)]
        );
        // The session's end forgets the rest.
        p.restored(&record());
        p.delete(&key);
        p.sync().await;
        assert!(load_outgoing(&store).unwrap().is_empty());
    }

    #[test]
    fn sessions_of_deleted_accounts_and_unreadable_records_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let r = record();
        let key = key_bytes(r.username.as_deref(), &r.client_id);
        store
            .put_kept(Kept::Session, &key, &opts().serialize(&r).unwrap())
            .unwrap();
        store.put_kept(Kept::Session, b"junk", b"\xff\xff").unwrap();
        assert!(load(&store).unwrap().is_empty(), "alice has no account");
        assert!(
            store.kept(Kept::Session).unwrap().iter().all(|(k, _)| *k != key),
            "forgotten"
        );
    }
}
