//! Messages, mailboxes, conversation history and device cursors.
//!
//! A message is stored once (`messages`: id to content) and referenced from each
//! mailbox it goes to (`mailbox`: user+id to the topic suffix it arrives on) and from
//! its conversation's history (`history`: conversation+id). Ids come from one
//! increasing sequence, so they increase in every mailbox and conversation.

use serde::{Deserialize, Serialize};

use super::keys;
use super::{Store, StoreError};

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// The authenticated sender ("natter" for broker events).
    pub from: String,
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
    pub payload: Vec<u8>,
    /// The sender's MQTT 5 user properties, passed on.
    pub user_properties: Vec<(String, String)>,
    pub content_type: Option<String>,
}

/// A mailbox entry: which message, and where under `inbox/{user}/` it arrives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxEntry {
    /// e.g. `dm/alice`, `group/g1/alice`, `sent/dm/bob`, `event/friend_request`.
    pub suffix: String,
    pub ts: u64,
    pub bytes: u32,
    /// QoS it was sent with (replays use at most this).
    pub qos: u8,
}

/// Retention bounds of one mailbox.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_messages: u64,
    pub max_bytes: u64,
    /// Milliseconds.
    pub max_age: u64,
}

/// Counts kept per mailbox so retention does not scan on every append. Kept in memory,
/// written to the store from time to time; at start the entries after the written
/// state are counted again, so the counters are right after a crash too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxMeta {
    pub count: u64,
    pub bytes: u64,
    /// Highest id removed by retention (0: none). The only persisted counter.
    pub dropped_up_to: u64,
    /// Time of the oldest entry.
    pub oldest_ts: Option<u64>,
    /// Id of the oldest entry (so retention deletes by key, never scans).
    pub oldest_id: Option<u64>,
    /// The newest id these counters include.
    pub last_id: u64,
}

/// Counters are written every this many appends (and at every retention drop); at
/// start only the entries after the last write are counted again.
const META_WRITE_EVERY: u64 = 64;

fn corrupt(tree: &'static str, e: impl ToString) -> StoreError {
    StoreError::Corrupt {
        tree,
        reason: e.to_string(),
    }
}

impl Store {
    /// The next message id.
    pub fn next_message_id(&self) -> u64 {
        self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Stores a message under `id`, and in the history of `conversation` (if any).
    ///
    /// # Errors
    /// I/O errors.
    pub fn put_message(&self, id: u64, msg: &StoredMessage, conversation: Option<&str>) -> Result<(), StoreError> {
        let value = bincode::serialize(msg).map_err(|e| corrupt("messages", e))?;
        self.messages.insert(id.to_be_bytes(), value)?;
        if let Some(conv) = conversation {
            self.history.insert(keys::with_id(conv, id), &[])?;
        }
        Ok(())
    }

    /// # Errors
    /// I/O errors and undecodable records.
    pub fn message(&self, id: u64) -> Result<Option<StoredMessage>, StoreError> {
        self.messages
            .get(id.to_be_bytes())?
            .map(|v| bincode::deserialize(&v).map_err(|e| corrupt("messages", e)))
            .transpose()
    }

    /// The mailbox's counters, read once per user per process and then kept in memory.
    fn mailbox_meta(&self, user: &str) -> Result<MailboxMeta, StoreError> {
        if let Some(m) = self.meta_cache.lock().unwrap_or_else(|p| p.into_inner()).get(user) {
            return Ok(*m);
        }
        // The counters are derived data: unreadable ones are recounted, not an error.
        let mut meta: MailboxMeta = match self.mailbox_meta.get(user)? {
            Some(v) => bincode::deserialize(&v).unwrap_or_else(|e| {
                tracing::warn!(user, error = %e, "mailbox counters unreadable: recounting");
                MailboxMeta::default()
            }),
            None => MailboxMeta::default(),
        };
        // Count what was appended after the counters were last written (a seek, then
        // at most a few dozen entries).
        let tail = self
            .mailbox
            .range(keys::with_id(user, meta.last_id.saturating_add(1))..keys::prefix_end(user));
        for kv in tail {
            let (k, v) = kv?;
            let e: MailboxEntry = bincode::deserialize(&v).map_err(|e| corrupt("mailbox", e))?;
            let id = keys::id_of(&k).unwrap_or(0);
            meta.count += 1;
            meta.bytes += u64::from(e.bytes);
            meta.oldest_ts.get_or_insert(e.ts);
            meta.oldest_id.get_or_insert(id);
            meta.last_id = meta.last_id.max(id);
        }
        Ok(meta)
    }

    fn write_meta(&self, user: &str, meta: &MailboxMeta) -> Result<(), StoreError> {
        self.mailbox_meta
            .insert(user, bincode::serialize(meta).map_err(|e| corrupt("mailbox_meta", e))?)?;
        Ok(())
    }

    fn remember_meta(&self, user: &str, meta: MailboxMeta) {
        self.meta_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(user.to_owned(), meta);
    }

    /// Appends message `id` to `user`'s mailbox, then applies retention. Returns the
    /// mailbox's state after.
    ///
    /// # Errors
    /// I/O errors.
    pub fn append_mailbox(
        &self,
        user: &str,
        id: u64,
        entry: &MailboxEntry,
        r: Retention,
    ) -> Result<MailboxMeta, StoreError> {
        let value = bincode::serialize(entry).map_err(|e| corrupt("mailbox", e))?;
        let mut meta = self.mailbox_meta(user)?;
        self.mailbox.insert(keys::with_id(user, id), value)?;
        meta.count += 1;
        meta.bytes += u64::from(entry.bytes);
        meta.oldest_ts.get_or_insert(entry.ts);
        meta.oldest_id.get_or_insert(id);
        meta.last_id = meta.last_id.max(id);
        let oldest_allowed = entry.ts.saturating_sub(r.max_age);
        let over = |m: &MailboxMeta| {
            m.count > 1
                && (m.count > r.max_messages
                    || m.bytes > r.max_bytes
                    || m.oldest_ts.is_some_and(|t| t < oldest_allowed))
        };
        if over(&meta) {
            // Drop from the front while over a bound (the newest entry always stays).
            let mut dropped = false;
            while over(&meta) {
                let Some(oldest) = meta.oldest_id else {
                    break;
                };
                if let Some(v) = self.mailbox.remove(keys::with_id(user, oldest))? {
                    let e: MailboxEntry = bincode::deserialize(&v).map_err(|e| corrupt("mailbox", e))?;
                    meta.count -= 1;
                    meta.bytes = meta.bytes.saturating_sub(u64::from(e.bytes));
                }
                meta.dropped_up_to = meta.dropped_up_to.max(oldest);
                dropped = true;
                // The next oldest: a seek just past the removed key, not a scan from the start.
                let next = self
                    .mailbox
                    .range(keys::with_id(user, oldest + 1)..keys::prefix_end(user))
                    .next()
                    .transpose()?;
                match next {
                    Some((k, v)) => {
                        let e: MailboxEntry = bincode::deserialize(&v).map_err(|e| corrupt("mailbox", e))?;
                        meta.oldest_id = keys::id_of(&k);
                        meta.oldest_ts = Some(e.ts);
                    }
                    None => {
                        meta.oldest_id = None;
                        meta.oldest_ts = None;
                        break;
                    }
                }
            }
            if dropped {
                self.write_meta(user, &meta)?;
            }
        } else if meta.count % META_WRITE_EVERY == 0 {
            self.write_meta(user, &meta)?;
        }
        self.remember_meta(user, meta);
        Ok(meta)
    }

    /// Mailbox entries of `user` with ids above `after`, oldest first, at most `limit`.
    ///
    /// # Errors
    /// I/O errors and undecodable records.
    pub fn mailbox_after(&self, user: &str, after: u64, limit: usize) -> Result<Vec<(u64, MailboxEntry)>, StoreError> {
        let start = keys::with_id(user, after.saturating_add(1));
        self.mailbox
            .range(start..keys::prefix_end(user))
            .take(limit)
            .map(|kv| {
                let (k, v) = kv?;
                let id = keys::id_of(&k).ok_or_else(|| corrupt("mailbox", "short key"))?;
                Ok((id, bincode::deserialize(&v).map_err(|e| corrupt("mailbox", e))?))
            })
            .collect()
    }

    /// The newest id in `user`'s mailbox (0 when empty), and the highest id retention
    /// removed.
    ///
    /// # Errors
    /// I/O errors.
    pub fn mailbox_head(&self, user: &str) -> Result<(u64, u64), StoreError> {
        let last = self
            .mailbox
            .scan_prefix(keys::prefix(user))
            .keys()
            .next_back()
            .transpose()?;
        let head = last.and_then(|k| keys::id_of(&k)).unwrap_or(0);
        Ok((head, self.mailbox_meta(user)?.dropped_up_to))
    }

    /// History of `conversation`: ids after `after` (oldest first) or before `before`
    /// (the newest ones, returned oldest first), at most `limit`.
    ///
    /// # Errors
    /// I/O errors and undecodable records.
    pub fn history(
        &self,
        conversation: &str,
        before: Option<u64>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, StoredMessage)>, StoreError> {
        let lo = keys::with_id(conversation, after.map_or(0, |a| a.saturating_add(1)));
        let hi = keys::with_id(conversation, before.unwrap_or(u64::MAX));
        let range = self.history.range(lo..hi);
        let ids: Vec<u64> = if after.is_some() && before.is_none() {
            range
                .keys()
                .take(limit)
                .filter_map(|k| k.ok().and_then(|k| keys::id_of(&k)))
                .collect()
        } else {
            let mut v: Vec<u64> = range
                .keys()
                .rev()
                .take(limit)
                .filter_map(|k| k.ok().and_then(|k| keys::id_of(&k)))
                .collect();
            v.reverse();
            v
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(m) = self.message(id)? {
                out.push((id, m));
            }
        }
        Ok(out)
    }

    /// The last id a device acknowledged.
    ///
    /// # Errors
    /// I/O errors.
    pub fn cursor(&self, user: &str, device: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .cursors
            .get(keys::pair(user, device))?
            .and_then(|v| keys::id_of(&v)))
    }

    /// Moves a device's cursor forward (never back).
    ///
    /// # Errors
    /// I/O errors.
    pub fn advance_cursor(&self, user: &str, device: &str, id: u64) -> Result<(), StoreError> {
        self.cursors.fetch_and_update(keys::pair(user, device), |old| {
            let cur = old.and_then(keys::id_of).unwrap_or(0);
            Some(cur.max(id).to_be_bytes().to_vec())
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(text: &str) -> StoredMessage {
        StoredMessage {
            from: "alice".into(),
            ts: 1,
            payload: text.as_bytes().to_vec(),
            user_properties: vec![],
            content_type: None,
        }
    }

    fn entry(ts: u64) -> MailboxEntry {
        MailboxEntry {
            suffix: "dm/alice".into(),
            ts,
            bytes: 10,
            qos: 1,
        }
    }

    const WIDE: Retention = Retention {
        max_messages: 1000,
        max_bytes: 1 << 30,
        max_age: u64::MAX,
    };

    #[test]
    fn mailbox_append_read_and_retention() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        for id in 1..=5 {
            s.append_mailbox("bob", id, &entry(100), WIDE).unwrap();
        }
        s.append_mailbox("bobby", 6, &entry(100), WIDE).unwrap();
        let after2: Vec<u64> = s
            .mailbox_after("bob", 2, 100)
            .unwrap()
            .into_iter()
            .map(|(i, _)| i)
            .collect();
        assert_eq!(after2, vec![3, 4, 5], "bobby's mailbox is separate");
        assert_eq!(s.mailbox_head("bob").unwrap(), (5, 0));
        let tight = Retention {
            max_messages: 3,
            ..WIDE
        };
        let meta = s.append_mailbox("bob", 7, &entry(100), tight).unwrap();
        assert_eq!((meta.count, meta.dropped_up_to), (3, 3));
        assert_eq!(s.mailbox_after("bob", 0, 100).unwrap().len(), 3);
        let aged = Retention { max_age: 50, ..WIDE };
        let meta = s.append_mailbox("bob", 8, &entry(200), aged).unwrap();
        assert_eq!(
            (meta.count, meta.dropped_up_to),
            (1, 7),
            "entries older than 50 ms dropped"
        );
    }

    #[test]
    fn counters_survive_a_reopen_without_a_full_scan() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            for id in 1..=100 {
                s.append_mailbox("bob", id, &entry(100), WIDE).unwrap();
            }
        }
        let s = Store::open(dir.path()).unwrap();
        let written: MailboxMeta = bincode::deserialize(&s.mailbox_meta.get("bob").unwrap().unwrap()).unwrap();
        assert_eq!(written.last_id, 64, "written every 64 appends");
        let meta = s
            .append_mailbox(
                "bob",
                101,
                &entry(100),
                Retention {
                    max_messages: 100,
                    ..WIDE
                },
            )
            .unwrap();
        assert_eq!(
            (meta.count, meta.bytes, meta.dropped_up_to, meta.oldest_id),
            (100, 1000, 1, Some(2))
        );
    }

    #[test]
    fn history_pages_and_cursors() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        for id in 1..=10 {
            s.put_message(id, &msg(&format!("m{id}")), Some("dm:alice:bob"))
                .unwrap();
        }
        s.put_message(11, &msg("other"), Some("dm:alice:carol")).unwrap();
        let ids = |v: Vec<(u64, StoredMessage)>| v.into_iter().map(|(i, _)| i).collect::<Vec<_>>();
        assert_eq!(
            ids(s.history("dm:alice:bob", None, None, 3).unwrap()),
            vec![8, 9, 10],
            "latest"
        );
        assert_eq!(ids(s.history("dm:alice:bob", Some(8), None, 3).unwrap()), vec![5, 6, 7]);
        assert_eq!(ids(s.history("dm:alice:bob", None, Some(8), 5).unwrap()), vec![9, 10]);
        assert_eq!(
            ids(s.history("dm:alice:bob", Some(5), Some(1), 10).unwrap()),
            vec![2, 3, 4]
        );
        assert_eq!(s.cursor("bob", "phone").unwrap(), None);
        s.advance_cursor("bob", "phone", 7).unwrap();
        s.advance_cursor("bob", "phone", 5).unwrap();
        assert_eq!(s.cursor("bob", "phone").unwrap(), Some(7), "never back");
    }
}
