//! QoS 2 publishes received from a persistent session's client and not yet released:
//! the packet id is written once the message is routed (and stored), and the PUBREC
//! waits for it, so a client that resends the PUBLISH after a restart (it had the
//! PUBREC or not) is answered without routing it again, and its PUBREL finds the id.
//! Written after the message: a crash between the two may make a resent PUBLISH go
//! out twice, never lose it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bincode::Options;
use tokio::sync::oneshot;

use super::{encode, opts, session_key_with, Op, Persister};
use crate::hooks::Receipt;
use crate::model::SessionKey;
use crate::store::{Kept, Store, StoreError};

/// The packet ids read at start, by session.
pub type IncomingBySession = HashMap<SessionKey, Vec<u16>>;

fn record_key(key: &SessionKey, pkid: u16) -> Vec<u8> {
    session_key_with(key, &pkid.to_be_bytes())
}

impl Persister {
    /// The client of `key` sent QoS 2 publish `pkid`: written; the PUBREC waits for
    /// the receipt.
    pub fn received(&self, key: &SessionKey, pkid: u16) -> Option<Receipt> {
        let tx = self.tx.as_ref()?;
        let bytes = encode(&(key.username.as_deref(), &*key.client_id, pkid), &key.client_id)?;
        let (done, receipt) = oneshot::channel();
        let op = Op::Put(Kept::Incoming, record_key(key, pkid), bytes, Some(done));
        self.send(tx, op, &key.client_id).then_some(receipt)
    }

    /// The flow of publish `pkid` from the client of `key` is over (PUBREL, or the
    /// publish was refused).
    pub fn relieved(&self, key: &SessionKey, pkid: u16) {
        if let Some(tx) = &self.tx {
            self.send(
                tx,
                Op::Delete(Kept::Incoming, record_key(key, pkid), None),
                &key.client_id,
            );
        }
    }
}

/// Reads the received packet ids back (off the runtime), for the sessions in
/// `sessions`; others and unreadable records are removed.
///
/// # Errors
/// Store I/O errors.
pub fn load_incoming(store: &Store, sessions: &HashSet<SessionKey>) -> Result<IncomingBySession, StoreError> {
    let mut out: IncomingBySession = HashMap::new();
    for (key, bytes) in store.kept(Kept::Incoming)? {
        match opts().deserialize::<(Option<String>, String, u16)>(&bytes) {
            Ok((username, client_id, pkid)) => {
                let session = SessionKey {
                    username: username.as_deref().map(Arc::from),
                    client_id: Arc::from(client_id.as_str()),
                };
                if sessions.contains(&session) {
                    out.entry(session).or_default().push(pkid);
                } else {
                    store.delete_kept(Kept::Incoming, &key)?;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "an unreadable QoS 2 packet id record is forgotten");
                store.delete_kept(Kept::Incoming, &key)?;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn received_ids_come_back_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let p = Persister::start(store.clone());
        let key = |c: &str| SessionKey {
            username: None,
            client_id: Arc::from(c),
        };
        p.received(&key("a"), 5).unwrap();
        p.received(&key("a"), 6).unwrap();
        p.received(&key("other"), 1).unwrap();
        p.relieved(&key("a"), 5);
        p.sync().await;
        let sessions: HashSet<SessionKey> = [key("a")].into_iter().collect();
        let loaded = load_incoming(&store, &sessions).unwrap();
        assert_eq!(loaded.get(&key("a")), Some(&vec![6]));
        assert_eq!(loaded.len(), 1);
        assert_eq!(
            store.kept(Kept::Incoming).unwrap().len(),
            1,
            "the other session's is removed"
        );
    }
}
