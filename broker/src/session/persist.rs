//! Persistent sessions on disk: what a session needs to come back after a restart
//! (its subscriptions with their options and identifiers, its expiry, a pending will
//! with its delay), written as it changes, and read back at start.
//!
//! Records go through one task, in the order the connections handed them over (a
//! subscribe and the unsubscribe after it are never written the other way round), in
//! batches: one blocking hand-over and one store commit (a flush, with `[store]
//! durability = "sync"`) per batch. A SUBACK waits for its record's receipt, so a
//! client told it is subscribed finds its subscription after a crash.
//!
//! Not kept yet: queued and in-flight messages of a plain-MQTT session (a mailbox
//! subscription needs none: its device's cursor brings back what it had not
//! acknowledged) and v5 will properties other than the delay.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bincode::Options;
use bytes::Bytes;
use natter_shared::codec::{LastWill, Properties, Protocol, QoS, RetainHandling, SubscriptionOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::hooks::{NotStored, Receipt, Stored};
use crate::model::{ClientInfo, Session, SessionKey, Subscription};
use crate::store::{self, Store, StoreError};

/// Records waiting to be written at most; beyond it a change is logged and not
/// written (the session works on, from memory).
const QUEUE: usize = 4096;
/// Records written per batch at most.
const BATCH: usize = 256;

/// A session as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub username: Option<String>,
    pub client_id: String,
    pub v5: bool,
    pub admin: bool,
    pub expiry_secs: u32,
    /// When its last connection ended (Unix ms); `None` while one was attached.
    pub disconnected_at_ms: Option<u64>,
    pub subscriptions: Vec<SubRecord>,
    pub will: Option<WillRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubRecord {
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    pub id: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WillRecord {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub delay_secs: u32,
}

fn opts() -> impl Options {
    bincode::DefaultOptions::new()
}

/// The record's key: the session key, encoded.
fn key_bytes(username: Option<&str>, client_id: &str) -> Vec<u8> {
    opts().serialize(&(username, client_id)).unwrap_or_default()
}

impl Record {
    /// The record of `session` now.
    pub fn of(
        session: &Session,
        info: &ClientInfo,
        expiry_secs: u32,
        will: Option<&LastWill>,
        disconnected: bool,
    ) -> Record {
        let subscriptions = session
            .lock()
            .subscriptions
            .iter()
            .map(|(filter, s)| SubRecord {
                filter: filter.to_owned(),
                qos: s.options.qos as u8,
                no_local: s.options.no_local,
                retain_as_published: s.options.retain_as_published,
                retain_handling: s.options.retain_handling as u8,
                id: s.id,
            })
            .collect();
        Record {
            username: info.username.as_deref().map(str::to_owned),
            client_id: info.client_id.to_string(),
            v5: info.protocol == Protocol::V5,
            admin: info.admin,
            expiry_secs,
            disconnected_at_ms: disconnected.then(crate::clock::unix_ms),
            subscriptions,
            will: will.map(|w| WillRecord {
                topic: w.topic.clone(),
                payload: w.payload.to_vec(),
                qos: w.qos as u8,
                retain: w.retain,
                delay_secs: w.properties.will_delay_interval.unwrap_or(0),
            }),
        }
    }

    pub fn key(&self) -> SessionKey {
        SessionKey {
            username: self.username.as_deref().map(Arc::from),
            client_id: Arc::from(self.client_id.as_str()),
        }
    }

    pub fn subscriptions(&self) -> Vec<(String, Subscription)> {
        self.subscriptions
            .iter()
            .map(|s| {
                let options = SubscriptionOptions {
                    qos: QoS::from_u8(s.qos).unwrap_or(QoS::AtMostOnce),
                    no_local: s.no_local,
                    retain_as_published: s.retain_as_published,
                    retain_handling: match s.retain_handling {
                        1 => RetainHandling::OnNewSubscription,
                        2 => RetainHandling::Never,
                        _ => RetainHandling::OnSubscribe,
                    },
                };
                (s.filter.clone(), Subscription { options, id: s.id })
            })
            .collect()
    }

    /// Who the session belongs to, for the plugins (a restored session has no
    /// address until its client is back).
    pub fn client_info(&self) -> ClientInfo {
        ClientInfo {
            username: self.username.as_deref().map(Arc::from),
            client_id: Arc::from(self.client_id.as_str()),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            protocol: if self.v5 { Protocol::V5 } else { Protocol::V311 },
            admin: self.admin,
            restriction: None,
            persistent: true,
        }
    }

    /// The pending will, with `delay_secs` as its delay.
    pub fn will(&self, delay_secs: u32) -> Option<LastWill> {
        self.will.as_ref().map(|w| LastWill {
            topic: w.topic.clone(),
            payload: Bytes::from(w.payload.clone()),
            qos: QoS::from_u8(w.qos).unwrap_or(QoS::AtMostOnce),
            retain: w.retain,
            properties: Properties {
                will_delay_interval: (delay_secs > 0).then_some(delay_secs),
                ..Properties::default()
            },
        })
    }

    /// How long the session and its will have left, `now_ms` being the restart
    /// (a session attached at the crash counts from the restart).
    pub fn remaining(&self, now_ms: u64) -> (Duration, u32) {
        let gone = Duration::from_millis(now_ms.saturating_sub(self.disconnected_at_ms.unwrap_or(now_ms)));
        let expiry = Duration::from_secs(u64::from(self.expiry_secs)).saturating_sub(gone);
        let will_delay = self.will.as_ref().map_or(0, |w| {
            let left = Duration::from_secs(u64::from(w.delay_secs)).saturating_sub(gone);
            u32::try_from(left.as_secs()).unwrap_or(u32::MAX)
        });
        (expiry, will_delay)
    }
}

enum Op {
    Put(Vec<u8>, Vec<u8>, Option<oneshot::Sender<Stored>>),
    Delete(Vec<u8>),
    /// Resolves once everything before it is written.
    Barrier(oneshot::Sender<Stored>),
}

/// The handle connections write records through; cheap to clone.
#[derive(Clone, Default)]
pub struct Persister {
    /// `None`: sessions are not written (unit tests without a store).
    tx: Option<mpsc::Sender<Op>>,
    /// Keys that have a record: a clean connection deletes one only if it exists (no
    /// write for the many clients that never had a persistent session).
    known: Arc<Mutex<HashSet<Vec<u8>>>>,
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
        }
    }

    /// Writes `record`; the receipt resolves once it is committed.
    pub fn save(&self, record: &Record) -> Option<Receipt> {
        let tx = self.tx.as_ref()?;
        let bytes = match opts().serialize(record) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(client_id = %record.client_id, error = %e, "cannot encode a session");
                return None;
            }
        };
        let (done, receipt) = oneshot::channel();
        let key = key_bytes(record.username.as_deref(), &record.client_id);
        self.known().insert(key.clone());
        self.send(tx, Op::Put(key, bytes, Some(done)), &record.client_id)
            .then_some(receipt)
    }

    /// Forgets the session of `key` (if it has a record).
    pub fn delete(&self, key: &SessionKey) {
        if let Some(tx) = &self.tx {
            let key_bytes = key_bytes(key.username.as_deref(), &key.client_id);
            if self.known().remove(&key_bytes) {
                self.send(tx, Op::Delete(key_bytes), &key.client_id);
            }
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

    fn send(&self, tx: &mpsc::Sender<Op>, op: Op, client_id: &str) -> bool {
        match tx.try_send(op) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    client_id,
                    "session writes are behind: this change is kept in memory only"
                );
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
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
                    Op::Put(key, record, done) => {
                        receipts.extend(done);
                        store.put_session(&key, &record)
                    }
                    Op::Delete(key) => store.delete_session(&key),
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
            tracing::error!(error = %e, "sessions not written");
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
    for (key, bytes) in store.session_records()? {
        let record: Record = match opts().deserialize(&bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "an unreadable session record is skipped");
                continue;
            }
        };
        if let Some(user) = record.username.as_deref() {
            if store.user(user)?.is_none() {
                store.delete_session(&key)?;
                continue;
            }
        }
        out.push(record);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn sessions_of_deleted_accounts_and_unreadable_records_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let r = record();
        let key = key_bytes(r.username.as_deref(), &r.client_id);
        store.put_session(&key, &opts().serialize(&r).unwrap()).unwrap();
        store.put_session(b"junk", b"\xff\xff").unwrap();
        assert!(load(&store).unwrap().is_empty(), "alice has no account");
        assert!(
            store.session_records().unwrap().iter().all(|(k, _)| *k != key),
            "forgotten"
        );
    }
}
