//! Messages, mailboxes, conversation history and device cursors.
//!
//! Writes come in batches (the IM writer commits everything that arrived while the
//! previous batch was written), and each batch becomes a handful of sled records
//! rather than several per message, because sled's cost is per record:
//! - `messages`: first id of a chunk -> the chunk's messages (each stored once);
//! - `mailbox`: user + first id -> that user's entries of one batch (which message,
//!   and the topic suffix it arrives on);
//! - `history`: conversation + first id -> the conversation's ids of one batch.
//!
//! Chunks never overlap, so the chunk holding id `n` is the last one whose key is at
//! most `n`. Ids come from one increasing sequence, so they increase in every mailbox
//! and conversation.

use std::collections::BTreeMap;

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

/// One message of a batch: its content, its conversation, the mailboxes it goes to.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: u64,
    pub message: StoredMessage,
    pub conversation: Option<String>,
    pub mailboxes: Vec<(String, MailboxEntry)>,
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
    /// Highest id removed by retention (0: none).
    pub dropped_up_to: u64,
    /// Time of the oldest entry.
    pub oldest_ts: Option<u64>,
    /// Id of the oldest entry (so retention finds it by a seek, never a scan).
    pub oldest_id: Option<u64>,
    /// The newest id these counters include.
    pub last_id: u64,
}

impl MailboxMeta {
    fn add(&mut self, id: u64, e: &MailboxEntry) {
        self.count += 1;
        self.bytes += u64::from(e.bytes);
        self.oldest_ts.get_or_insert(e.ts);
        self.oldest_id.get_or_insert(id);
        self.last_id = self.last_id.max(id);
    }
}

/// Counters are written after this many appends (and at every retention drop); at
/// start only the entries after the last write are counted again.
const META_WRITE_EVERY: u64 = 64;

/// A message chunk holds at most this many messages...
const CHUNK_MESSAGES: usize = 32;
/// ...and about this many payload bytes (a larger message is a chunk of its own).
const CHUNK_BYTES: usize = 4 * 1024;

type MessageChunk = Vec<(u64, StoredMessage)>;
type MailboxChunk = Vec<(u64, MailboxEntry)>;

fn corrupt(tree: &'static str, e: impl ToString) -> StoreError {
    StoreError::Corrupt {
        tree,
        reason: e.to_string(),
    }
}

fn encode<T: Serialize>(tree: &'static str, v: &T) -> Result<Vec<u8>, StoreError> {
    bincode::serialize(v).map_err(|e| corrupt(tree, e))
}

fn decode<T: serde::de::DeserializeOwned>(tree: &'static str, v: &[u8]) -> Result<T, StoreError> {
    bincode::deserialize(v).map_err(|e| corrupt(tree, e))
}

/// The last id of the newest message chunk (0 when there is none).
pub(super) fn last_message_id(messages: &sled::Tree) -> Result<u64, StoreError> {
    let Some((_, v)) = messages.last()? else {
        return Ok(0);
    };
    let chunk: MessageChunk = decode("messages", &v)?;
    Ok(chunk.last().map_or(0, |(id, _)| *id))
}

impl Store {
    /// The next message id.
    pub fn next_message_id(&self) -> u64 {
        self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Stores a batch of messages (ids increasing), their history and their mailbox
    /// entries, then applies each touched mailbox's retention.
    ///
    /// # Errors
    /// I/O errors. Part of the batch may have been written then.
    pub fn append(&self, batch: &[NewMessage], r: Retention) -> Result<(), StoreError> {
        // Messages: chunks of consecutive ids, bounded in count and bytes.
        let mut chunk: Vec<(u64, &StoredMessage)> = Vec::new();
        let mut chunk_bytes = 0;
        for m in batch {
            if !chunk.is_empty()
                && (chunk.len() >= CHUNK_MESSAGES || chunk_bytes + m.message.payload.len() > CHUNK_BYTES)
            {
                self.messages
                    .insert(chunk[0].0.to_be_bytes(), encode("messages", &chunk)?)?;
                chunk.clear();
                chunk_bytes = 0;
            }
            chunk_bytes += m.message.payload.len();
            chunk.push((m.id, &m.message));
        }
        if let Some(&(first, _)) = chunk.first() {
            self.messages.insert(first.to_be_bytes(), encode("messages", &chunk)?)?;
        }
        // History: one record per conversation.
        let mut history: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for m in batch {
            if let Some(conv) = m.conversation.as_deref() {
                history.entry(conv).or_default().push(m.id);
            }
        }
        for (conv, ids) in history {
            self.history
                .insert(keys::with_id(conv, ids[0]), encode("history", &ids)?)?;
        }
        // Mailboxes: one record per user.
        let mut mailboxes: BTreeMap<&str, Vec<(u64, &MailboxEntry)>> = BTreeMap::new();
        for m in batch {
            for (user, entry) in &m.mailboxes {
                mailboxes.entry(user).or_default().push((m.id, entry));
            }
        }
        for (user, entries) in mailboxes {
            let mut meta = self.mailbox_meta(user)?;
            self.mailbox
                .insert(keys::with_id(user, entries[0].0), encode("mailbox", &entries)?)?;
            let before = meta.count;
            for (id, e) in &entries {
                meta.add(*id, e);
            }
            let newest_ts = entries.iter().map(|(_, e)| e.ts).max().unwrap_or(0);
            let dropped = self.apply_retention(user, &mut meta, newest_ts, r)?;
            if dropped || before / META_WRITE_EVERY != meta.count / META_WRITE_EVERY {
                self.write_meta(user, &meta)?;
            }
            self.remember_meta(user, meta);
        }
        Ok(())
    }

    /// Drops a mailbox's oldest entries while it is over a bound (the newest always
    /// stays). Returns whether anything was dropped.
    fn apply_retention(
        &self,
        user: &str,
        meta: &mut MailboxMeta,
        newest_ts: u64,
        r: Retention,
    ) -> Result<bool, StoreError> {
        let oldest_allowed = newest_ts.saturating_sub(r.max_age);
        let over = |m: &MailboxMeta, max_messages: u64, max_bytes: u64| {
            m.count > 1
                && (m.count > max_messages || m.bytes > max_bytes || m.oldest_ts.is_some_and(|t| t < oldest_allowed))
        };
        if !over(meta, r.max_messages, r.max_bytes) {
            return Ok(false);
        }
        // Once over a bound, trim to 15/16 of it: large mailboxes are trimmed in steps
        // (whole chunks, once per many appends), small bounds stay exact.
        let (max_messages, max_bytes) = (r.max_messages - r.max_messages / 16, r.max_bytes - r.max_bytes / 16);
        let over = |m: &MailboxMeta| over(m, max_messages, max_bytes);
        let mut dropped = false;
        while over(meta) {
            let Some(oldest) = meta.oldest_id else {
                break;
            };
            let Some((key, mut entries)) = self.mailbox_chunk_at(user, oldest)? else {
                meta.oldest_id = None;
                meta.oldest_ts = None;
                break;
            };
            let mut cut = 0;
            while cut < entries.len() && over(meta) {
                let (id, e) = &entries[cut];
                if *id < oldest {
                    cut += 1;
                    continue;
                }
                meta.count -= 1;
                meta.bytes = meta.bytes.saturating_sub(u64::from(e.bytes));
                meta.dropped_up_to = meta.dropped_up_to.max(*id);
                dropped = true;
                cut += 1;
            }
            if cut < entries.len() {
                entries.drain(..cut);
                meta.oldest_id = Some(entries[0].0);
                meta.oldest_ts = Some(entries[0].1.ts);
                self.mailbox.insert(key, encode("mailbox", &entries)?)?;
                break;
            }
            self.mailbox.remove(&key)?;
            // The next chunk: a seek just past the removed one, not a scan.
            let next_key = keys::id_of(&key).unwrap_or(oldest).max(oldest).saturating_add(1);
            let next = self
                .mailbox
                .range(keys::with_id(user, next_key)..keys::prefix_end(user))
                .next()
                .transpose()?;
            match next {
                Some((_, v)) => {
                    let entries: MailboxChunk = decode("mailbox", &v)?;
                    meta.oldest_id = entries.first().map(|(id, _)| *id);
                    meta.oldest_ts = entries.first().map(|(_, e)| e.ts);
                }
                None => {
                    meta.oldest_id = None;
                    meta.oldest_ts = None;
                    break;
                }
            }
        }
        Ok(dropped)
    }

    /// The mailbox chunk of `user` holding `id`, with its key.
    fn mailbox_chunk_at(&self, user: &str, id: u64) -> Result<Option<(sled::IVec, MailboxChunk)>, StoreError> {
        let found = self
            .mailbox
            .range(keys::prefix(user)..=keys::with_id(user, id))
            .next_back()
            .transpose()?;
        found.map(|(k, v)| Ok((k, decode("mailbox", &v)?))).transpose()
    }

    /// # Errors
    /// I/O errors and undecodable records.
    pub fn message(&self, id: u64) -> Result<Option<StoredMessage>, StoreError> {
        Ok(self.messages(&[id])?.pop().flatten())
    }

    /// Messages by id (ascending ids read each chunk once); `None` for unknown ids.
    ///
    /// # Errors
    /// I/O errors and undecodable records.
    pub fn messages(&self, ids: &[u64]) -> Result<Vec<Option<StoredMessage>>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        let mut chunk: MessageChunk = Vec::new();
        for &id in ids {
            let held = matches!((chunk.first(), chunk.last()), (Some((a, _)), Some((b, _))) if *a <= id && id <= *b);
            if !held {
                chunk = match self.messages.range(..=id.to_be_bytes()).next_back().transpose()? {
                    Some((_, v)) => decode("messages", &v)?,
                    None => Vec::new(),
                };
            }
            out.push(
                chunk
                    .binary_search_by_key(&id, |(i, _)| *i)
                    .ok()
                    .map(|i| chunk[i].1.clone()),
            );
        }
        Ok(out)
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
        // at most a few chunks).
        for (id, e) in self.mailbox_after(user, meta.last_id, usize::MAX)? {
            meta.add(id, &e);
        }
        Ok(meta)
    }

    fn write_meta(&self, user: &str, meta: &MailboxMeta) -> Result<(), StoreError> {
        self.mailbox_meta.insert(user, encode("mailbox_meta", meta)?)?;
        Ok(())
    }

    fn remember_meta(&self, user: &str, meta: MailboxMeta) {
        self.meta_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(user.to_owned(), meta);
    }

    /// Mailbox entries of `user` with ids above `after`, oldest first, at most `limit`.
    ///
    /// # Errors
    /// I/O errors and undecodable records.
    pub fn mailbox_after(&self, user: &str, after: u64, limit: usize) -> Result<Vec<(u64, MailboxEntry)>, StoreError> {
        let first = after.saturating_add(1);
        let start = match self.mailbox_chunk_at(user, first)? {
            Some((k, _)) => k.to_vec(),
            None => keys::with_id(user, first),
        };
        let mut out = Vec::new();
        for kv in self.mailbox.range(start..keys::prefix_end(user)) {
            let (_, v) = kv?;
            let chunk: MailboxChunk = decode("mailbox", &v)?;
            for (id, e) in chunk {
                if id > after {
                    if out.len() >= limit {
                        return Ok(out);
                    }
                    out.push((id, e));
                }
            }
        }
        Ok(out)
    }

    /// The newest id in `user`'s mailbox (0 when empty), and the highest id retention
    /// removed.
    ///
    /// # Errors
    /// I/O errors.
    pub fn mailbox_head(&self, user: &str) -> Result<(u64, u64), StoreError> {
        let last = self
            .mailbox
            .range(keys::prefix(user)..keys::prefix_end(user))
            .next_back()
            .transpose()?;
        let head = match last {
            Some((_, v)) => decode::<MailboxChunk>("mailbox", &v)?.last().map_or(0, |(id, _)| *id),
            None => 0,
        };
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
        let lo = after.map_or(0, |a| a.saturating_add(1));
        let hi = before.unwrap_or(u64::MAX);
        let within = |id: &u64| lo <= *id && *id < hi;
        let mut ids: Vec<u64> = Vec::new();
        if after.is_some() && before.is_none() {
            let start = self
                .history
                .range(keys::prefix(conversation)..=keys::with_id(conversation, lo))
                .next_back()
                .transpose()?
                .map_or_else(|| keys::with_id(conversation, lo), |(k, _)| k.to_vec());
            for kv in self.history.range(start..keys::prefix_end(conversation)) {
                let chunk: Vec<u64> = decode("history", &kv?.1)?;
                ids.extend(chunk.into_iter().filter(within));
                if ids.len() >= limit {
                    break;
                }
            }
            ids.truncate(limit);
        } else {
            let range = self
                .history
                .range(keys::prefix(conversation)..keys::with_id(conversation, hi));
            for kv in range.rev() {
                let chunk: Vec<u64> = decode("history", &kv?.1)?;
                ids.extend(chunk.into_iter().rev().filter(within));
                if ids.len() >= limit {
                    break;
                }
            }
            ids.truncate(limit);
            ids.reverse();
        }
        let found = self.messages(&ids)?;
        Ok(ids
            .into_iter()
            .zip(found)
            .filter_map(|(id, m)| m.map(|m| (id, m)))
            .collect())
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

    /// A message for `users`' mailboxes, in conversation `conv`.
    fn new(id: u64, conv: Option<&str>, users: &[&str], ts: u64) -> NewMessage {
        NewMessage {
            id,
            message: msg(&format!("m{id}")),
            conversation: conv.map(str::to_owned),
            mailboxes: users.iter().map(|u| ((*u).to_owned(), entry(ts))).collect(),
        }
    }

    const WIDE: Retention = Retention {
        max_messages: 1000,
        max_bytes: 1 << 30,
        max_age: u64::MAX,
    };

    fn ids<T>(v: Vec<(u64, T)>) -> Vec<u64> {
        v.into_iter().map(|(i, _)| i).collect()
    }

    #[test]
    fn mailbox_append_read_and_retention_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        // Two batches: ids 1-3 and 4-5, plus bobby's separate mailbox.
        let a: Vec<_> = (1..=3).map(|id| new(id, None, &["bob"], 100)).collect();
        s.append(&a, WIDE).unwrap();
        s.append(
            &[new(4, None, &["bob"], 100), new(5, None, &["bob", "bobby"], 100)],
            WIDE,
        )
        .unwrap();
        assert_eq!(
            ids(s.mailbox_after("bob", 2, 100).unwrap()),
            vec![3, 4, 5],
            "inside a chunk"
        );
        assert_eq!(ids(s.mailbox_after("bob", 0, 2).unwrap()), vec![1, 2], "limit");
        assert_eq!(ids(s.mailbox_after("bobby", 0, 100).unwrap()), vec![5], "separate");
        assert_eq!(s.mailbox_head("bob").unwrap(), (5, 0));
        let tight = Retention {
            max_messages: 3,
            ..WIDE
        };
        s.append(&[new(7, None, &["bob"], 100)], tight).unwrap();
        assert_eq!(ids(s.mailbox_after("bob", 0, 100).unwrap()), vec![4, 5, 7]);
        assert_eq!(s.mailbox_head("bob").unwrap(), (7, 3), "1-3 dropped");
        let tighter = Retention {
            max_messages: 2,
            ..WIDE
        };
        s.append(&[new(8, None, &["bob"], 100)], tighter).unwrap();
        assert_eq!(
            ids(s.mailbox_after("bob", 0, 100).unwrap()),
            vec![7, 8],
            "a chunk cut in two"
        );
        assert_eq!(ids(s.mailbox_after("bob", 3, 100).unwrap()), vec![7, 8]);
        let aged = Retention { max_age: 50, ..WIDE };
        s.append(&[new(9, None, &["bob"], 200)], aged).unwrap();
        assert_eq!(
            ids(s.mailbox_after("bob", 0, 100).unwrap()),
            vec![9],
            "older than 50 ms dropped"
        );
        assert_eq!(s.mailbox_head("bob").unwrap(), (9, 8));
        let one_byte = Retention { max_bytes: 1, ..WIDE };
        s.append(&[new(10, None, &["bob"], 200), new(11, None, &["bob"], 200)], one_byte)
            .unwrap();
        assert_eq!(
            ids(s.mailbox_after("bob", 0, 100).unwrap()),
            vec![11],
            "the newest always stays"
        );
    }

    #[test]
    fn counters_survive_a_reopen_without_a_full_scan() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            for id in 1..=100 {
                s.append(&[new(id, None, &["bob"], 100)], WIDE).unwrap();
            }
        }
        let s = Store::open(dir.path()).unwrap();
        let written: MailboxMeta = bincode::deserialize(&s.mailbox_meta.get("bob").unwrap().unwrap()).unwrap();
        assert_eq!(written.last_id, 64, "written every 64 appends");
        assert_eq!(s.next_message_id(), 101, "ids continue after the last stored one");
        s.append(
            &[new(101, None, &["bob"], 100)],
            Retention {
                max_messages: 100,
                ..WIDE
            },
        )
        .unwrap();
        let meta = s.mailbox_meta("bob").unwrap();
        assert_eq!(
            (meta.count, meta.bytes, meta.dropped_up_to, meta.oldest_id),
            (94, 940, 7, Some(8)),
            "the 101 counted right after the reopen; over 100, trimmed to 15/16 of it"
        );
    }

    #[test]
    fn messages_are_chunked_by_count_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut batch: Vec<_> = (1..=600).map(|id| new(id, None, &[], 1)).collect();
        batch[300].message.payload = vec![0; CHUNK_BYTES + 1];
        s.append(&batch, WIDE).unwrap();
        assert!(s.messages.len() >= 4, "600 messages, 256 per chunk, one oversized");
        let got = s.messages(&[1, 256, 257, 301, 600, 601]).unwrap();
        let texts: Vec<_> = got.iter().map(|m| m.as_ref().map(|m| m.payload.len())).collect();
        assert_eq!(
            texts,
            vec![Some(2), Some(4), Some(4), Some(CHUNK_BYTES + 1), Some(4), None]
        );
        assert_eq!(s.message(42).unwrap().unwrap().payload, b"m42");
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.next_message_id(), 601);
    }

    #[test]
    fn history_pages_across_chunks_and_cursors() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let ab = Some("dm:alice:bob");
        // Chunks of 3, 4 and 3 ids; id 11 in another conversation.
        for range in [1..=3, 4..=7, 8..=10] {
            let batch: Vec<_> = range.map(|id| new(id, ab, &[], 1)).collect();
            s.append(&batch, WIDE).unwrap();
        }
        s.append(&[new(11, Some("dm:alice:carol"), &[], 1)], WIDE).unwrap();
        assert_eq!(
            ids(s.history("dm:alice:bob", None, None, 3).unwrap()),
            vec![8, 9, 10],
            "latest"
        );
        assert_eq!(ids(s.history("dm:alice:bob", Some(8), None, 3).unwrap()), vec![5, 6, 7]);
        assert_eq!(ids(s.history("dm:alice:bob", None, Some(8), 5).unwrap()), vec![9, 10]);
        assert_eq!(
            ids(s.history("dm:alice:bob", None, Some(2), 4).unwrap()),
            vec![3, 4, 5, 6]
        );
        assert_eq!(
            ids(s.history("dm:alice:bob", Some(5), Some(1), 10).unwrap()),
            vec![2, 3, 4]
        );
        assert_eq!(ids(s.history("dm:alice:carol", None, None, 10).unwrap()), vec![11]);
        assert_eq!(
            s.history("dm:alice:bob", None, Some(9), 10).unwrap()[0].1.payload,
            b"m10"
        );
        assert_eq!(s.cursor("bob", "phone").unwrap(), None);
        s.advance_cursor("bob", "phone", 7).unwrap();
        s.advance_cursor("bob", "phone", 5).unwrap();
        assert_eq!(s.cursor("bob", "phone").unwrap(), Some(7), "never back");
    }
}
