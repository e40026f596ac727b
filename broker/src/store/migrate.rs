//! Schema migrations, run by [`Store::open`] when it finds an older version.

use std::collections::HashMap;

use serde::Deserialize;

use super::messages::{MailboxEntry, NewMessage, Retention, StoredMessage};
use super::{keys, Store, StoreError};

/// A v1 mailbox entry (one record per message per mailbox).
#[derive(Deserialize)]
struct V1Entry {
    suffix: String,
    #[allow(dead_code)]
    ts: u64,
    #[allow(dead_code)]
    bytes: u32,
    qos: u8,
}

fn corrupt(tree: &'static str, e: impl ToString) -> StoreError {
    StoreError::Corrupt {
        tree,
        reason: e.to_string(),
    }
}

/// The name part of a `name NUL id` key.
fn name_of(key: &[u8]) -> Option<String> {
    let name = key.get(..key.len().checked_sub(9)?)?;
    String::from_utf8(name.to_vec()).ok()
}

/// v1 (`messages`: one record per message, `mailbox`: one per mailbox entry,
/// `history`: one per conversation entry) to v2 (the chunked journal and id
/// indexes). Ids, and so device cursors, are kept. The old trees are dropped after.
pub(super) fn v1_to_v2(store: &Store) -> Result<(), StoreError> {
    let db = &store.db;
    let old_messages = db.open_tree("messages")?;
    let old_mailbox = db.open_tree("mailbox")?;
    let old_history = db.open_tree("history")?;
    let mut conversation: HashMap<u64, String> = HashMap::new();
    for k in old_history.iter().keys() {
        let k = k?;
        if let (Some(conv), Some(id)) = (name_of(&k), keys::id_of(&k)) {
            conversation.insert(id, conv);
        }
    }
    let mut mailboxes: HashMap<u64, Vec<(String, MailboxEntry)>> = HashMap::new();
    for kv in old_mailbox.iter() {
        let (k, v) = kv?;
        let (Some(user), Some(id)) = (name_of(&k), keys::id_of(&k)) else {
            return Err(corrupt("mailbox", "bad v1 key"));
        };
        let e: V1Entry = bincode::deserialize(&v).map_err(|e| corrupt("mailbox", e))?;
        mailboxes.entry(id).or_default().push((
            user,
            MailboxEntry {
                suffix: e.suffix,
                qos: e.qos,
            },
        ));
    }
    // Counters are rebuilt from the new index.
    store.mailbox_meta.clear()?;
    let keep_all = Retention {
        max_messages: u64::MAX,
        max_bytes: u64::MAX,
        max_age: u64::MAX,
    };
    let mut batch = Vec::new();
    let mut migrated = 0u64;
    let mut last = 0;
    for kv in old_messages.iter() {
        let (k, v) = kv?;
        let id = <[u8; 8]>::try_from(k.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| corrupt("messages", "key is not 8 bytes"))?;
        let message: StoredMessage = bincode::deserialize(&v).map_err(|e| corrupt("messages", e))?;
        batch.push(NewMessage::from_mailboxes(
            id,
            std::sync::Arc::new(message),
            conversation.remove(&id),
            mailboxes.remove(&id).unwrap_or_default(),
        ));
        last = id;
        if batch.len() >= 1024 {
            migrated += batch.len() as u64;
            store.append(&batch)?;
            store.index(keep_all)?;
            batch.clear();
        }
    }
    migrated += batch.len() as u64;
    store.append(&batch)?;
    store.index(keep_all)?;
    store.next_id.fetch_max(last + 1, std::sync::atomic::Ordering::Relaxed);
    for old in ["messages", "mailbox", "history"] {
        db.drop_tree(old)?;
    }
    tracing::info!(messages = migrated, "store migrated from schema 1 to 2");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize)]
    struct V1EntryOut {
        suffix: String,
        ts: u64,
        bytes: u32,
        qos: u8,
    }

    #[test]
    fn a_v1_store_is_migrated_with_its_ids() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path().join("store")).unwrap();
            db.open_tree("meta")
                .unwrap()
                .insert("schema_version", &1u32.to_be_bytes())
                .unwrap();
            let messages = db.open_tree("messages").unwrap();
            let mailbox = db.open_tree("mailbox").unwrap();
            let history = db.open_tree("history").unwrap();
            for id in [3u64, 7, 9] {
                let m = StoredMessage {
                    from: "alice".into(),
                    ts: 1000 + id,
                    payload: format!("hi {id}").into(),
                    user_properties: vec![],
                    content_type: None,
                };
                messages
                    .insert(id.to_be_bytes(), bincode::serialize(&m).unwrap())
                    .unwrap();
                let e = V1EntryOut {
                    suffix: "dm/alice".into(),
                    ts: 1000 + id,
                    bytes: 4,
                    qos: 1,
                };
                mailbox
                    .insert(keys::with_id("bob", id), bincode::serialize(&e).unwrap())
                    .unwrap();
                history.insert(keys::with_id("dm:alice:bob", id), &[]).unwrap();
            }
            db.flush().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let got: Vec<(u64, String)> = s
            .mailbox_after("bob", 3, 10)
            .unwrap()
            .into_iter()
            .map(|r| (r.id, String::from_utf8(r.message.payload.to_vec()).unwrap()))
            .collect();
        assert_eq!(got, vec![(7, "hi 7".to_string()), (9, "hi 9".to_string())]);
        assert_eq!(s.history("dm:alice:bob", None, None, 10).unwrap().len(), 3);
        assert_eq!(s.next_message_id(), 10);
        assert!(
            !s.db.tree_names().iter().any(|n| n.as_ref() == b"mailbox"),
            "old trees dropped"
        );
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.mailbox_head("bob").unwrap(), (9, 0), "opens as v2 afterwards");
    }
}
