//! Messages, mailboxes, conversation history and device cursors.
//!
//! A journal with indexes written behind it:
//! - `journal`: every message once, with where it goes (its conversation and the
//!   mailboxes it was appended to), in chunks keyed by their first id (record
//!   format: [`super::journal`]). Writing a batch is one or a few records, whatever
//!   the number of recipients: this is the write a publisher's acknowledgement
//!   waits for.
//! - `mailbox_index` (user + first id) and `history_index` (conversation + first id):
//!   id lists, written from memory by [`Store::index`] every so often (the IM writer
//!   has its index thread do it every `index_interval_ms` or `index_max_pending`
//!   entries), so a busy mailbox gets one index record per interval rather than one
//!   per message. Until then the entries are in memory (`Index::pending`, then
//!   `Index::writing` while an index write runs beside the appends) and every read
//!   merges them in; on open the journal after the last indexed id is read back into
//!   memory, so nothing depends on the indexes having been written before a crash.
//!
//! sled's cost is per record and per byte (it rewrites whole leaves), hence the
//! chunks and the compact varint encoding. Chunks never overlap, so the chunk
//! holding id `n` is the last one whose key is at most `n`. Ids come from one
//! increasing sequence, so they increase in every mailbox and conversation.

use std::sync::Arc;

use crate::FastMap;

use bincode::Options;
use serde::{Deserialize, Serialize};

use bytes::Bytes;

use super::route::{Dest, Route};
use super::{journal, keys};
use super::{Store, StoreError};

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// The authenticated sender ("natter" for broker events).
    pub from: String,
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
    /// Shared with the message as received and its deliveries (encoded like a
    /// `Vec<u8>`: length, then the bytes).
    pub payload: Bytes,
    /// The sender's MQTT 5 user properties, passed on.
    pub user_properties: Vec<(String, String)>,
    pub content_type: Option<String>,
}

/// Where a message arrives in one mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxEntry {
    /// Under `inbox/{user}/`: e.g. `dm/alice`, `group/g1/alice`, `sent/dm/bob`,
    /// `event/friend_request`.
    pub suffix: String,
    /// QoS it was sent with (replays use at most this).
    pub qos: u8,
}

/// One journal record: a message and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub id: u64,
    /// Shared with the deliveries made from it.
    pub message: Arc<StoredMessage>,
    pub route: Route,
}

impl NewMessage {
    /// A message with its conversation and mailboxes spelled out (kept as its shape
    /// when it has one: see [`Route::recognize`]).
    pub fn from_mailboxes(
        id: u64,
        message: Arc<StoredMessage>,
        conversation: Option<String>,
        mailboxes: Vec<(String, MailboxEntry)>,
    ) -> NewMessage {
        let route = Route::recognize(&message.from, conversation, mailboxes);
        NewMessage { id, message, route }
    }

    /// The mailboxes it goes to, in order.
    pub fn dests(&self) -> impl Iterator<Item = Dest<'_>> + '_ {
        self.route.dests(&self.message.from)
    }

    /// Its conversation, if any.
    pub fn conversation(&self) -> Option<std::borrow::Cow<'_, str>> {
        self.route.conversation(&self.message.from)
    }

    /// This message's entry in `user`'s mailbox.
    pub fn entry_for(&self, user: &str) -> Option<MailboxEntry> {
        self.dests().find(|d| d.user == user).map(|d| d.entry())
    }

    fn slot(&self) -> Slot {
        Slot {
            id: self.id,
            ts: self.message.ts,
            bytes: u32::try_from(self.message.payload.len()).unwrap_or(u32::MAX),
        }
    }
}

/// A message replayed from a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub id: u64,
    pub entry: MailboxEntry,
    pub message: StoredMessage,
}

/// A page of a mailbox (see [`Store::mailbox_page`]).
#[derive(Debug)]
pub struct MailboxPage {
    /// Oldest first.
    pub entries: Vec<Replayed>,
    /// The highest id the page covers (entries retention dropped meanwhile are
    /// skipped, not returned).
    pub read_through: u64,
    /// The mailbox may hold entries after `read_through`.
    pub more: bool,
}

/// Retention bounds of one mailbox.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_messages: u64,
    pub max_bytes: u64,
    /// Milliseconds.
    pub max_age: u64,
}

/// Counts kept per mailbox so retention does not scan. Kept in memory, written with
/// the index when retention changed them or they lag (see [`META_LAG`]); on load the
/// index entries after the written state are counted again, so the counters are
/// right after a restart or a crash too.
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
    /// The newest id these counters include, and its time.
    pub last_id: u64,
    pub newest_ts: u64,
    /// The `last_id` of the copy in the store (in memory only).
    #[serde(skip)]
    persisted_through: u64,
}

impl MailboxMeta {
    fn add(&mut self, s: Slot) {
        if s.id <= self.last_id {
            return;
        }
        self.count += 1;
        self.bytes += u64::from(s.bytes);
        self.oldest_ts.get_or_insert(s.ts);
        self.oldest_id.get_or_insert(s.id);
        self.last_id = s.id;
        self.newest_ts = s.ts;
    }
}

/// A mailbox index entry: which message, when, how big (so retention and counting
/// never read the journal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    id: u64,
    ts: u64,
    bytes: u32,
}

/// Index entries kept in memory, per mailbox and conversation (ids increasing).
#[derive(Default, Clone)]
pub(super) struct Pending {
    mailboxes: FastMap<String, Vec<Slot>>,
    history: FastMap<String, Vec<u64>>,
    entries: usize,
}

impl Pending {
    fn add_slots(&mut self, user: &str, slots: &[Slot]) {
        self.entries += slots.len();
        match self.mailboxes.get_mut(user) {
            Some(v) => v.extend_from_slice(slots),
            None => {
                self.mailboxes.insert(user.to_owned(), slots.to_vec());
            }
        }
    }

    fn add_ids(&mut self, conversation: &str, ids: &[u64]) {
        self.entries += ids.len();
        match self.history.get_mut(conversation) {
            Some(v) => v.extend_from_slice(ids),
            None => {
                self.history.insert(conversation.to_owned(), ids.to_vec());
            }
        }
    }

    /// `older` followed by `newer`.
    fn merged(older: &Pending, newer: Pending) -> Pending {
        if older.entries == 0 {
            return newer;
        }
        let mut out = older.clone();
        for (user, slots) in &newer.mailboxes {
            out.add_slots(user, slots);
        }
        for (conv, ids) in &newer.history {
            out.add_ids(conv, ids);
        }
        out
    }
}

/// The in-memory side of the indexes.
#[derive(Default)]
pub(super) struct Index {
    /// Entries appended since the last [`Store::index`] began.
    pending: Pending,
    /// Entries an index write is putting in the trees (or failed to: written by the
    /// next one). Read from here until then, as they may or may not be in the trees.
    writing: Arc<Pending>,
    /// The newest id appended.
    last_id: u64,
    /// Counters of the mailboxes seen since start.
    meta: FastMap<String, MailboxMeta>,
}

impl Index {
    /// `user`'s entries in memory, oldest first.
    fn mailbox(&self, user: &str) -> impl Iterator<Item = &Slot> {
        let writing = self.writing.mailboxes.get(user).into_iter().flatten();
        writing.chain(self.pending.mailboxes.get(user).into_iter().flatten())
    }

    /// `conversation`'s ids in memory, oldest first.
    fn history(&self, conversation: &str) -> impl Iterator<Item = u64> + '_ {
        let writing = self.writing.history.get(conversation).into_iter().flatten();
        writing
            .chain(self.pending.history.get(conversation).into_iter().flatten())
            .copied()
    }
}

/// A journal chunk holds at most this many messages...
const CHUNK_MESSAGES: usize = 256;
/// ...and about this many encoded bytes (a larger message is a chunk of its own).
///
/// Sized for sled: fewer, larger records cost less per message (each insert pays
/// for a tree descent, a log reservation and, every few inserts, a leaf rewrite),
/// but a leaf (up to 17 records) larger than 1/4 of a segment (128 KiB by default)
/// is written as a separate blob file, which costs far more. Chunks of ~7 KiB stay
/// under that; 16 KiB chunks made every leaf a blob.
const CHUNK_BYTES: usize = 7 * 1024;

/// Mailbox counters are written to the store when retention changed them or when
/// they lag the index by this many ids (one sled write less per mailbox and index
/// write otherwise).
const META_LAG: u64 = 4096;

/// Where the index stands: everything up to this id is in the index trees.
const INDEXED_THROUGH: &str = "indexed_through";

fn corrupt(tree: &'static str, e: impl ToString) -> StoreError {
    StoreError::Corrupt {
        tree,
        reason: e.to_string(),
    }
}

/// Varint encoding: ids, times and lengths take the bytes they need.
fn opts() -> impl Options {
    bincode::DefaultOptions::new()
}

fn encode<T: Serialize>(tree: &'static str, v: &T) -> Result<Vec<u8>, StoreError> {
    opts().serialize(v).map_err(|e| corrupt(tree, e))
}

fn decode<T: serde::de::DeserializeOwned>(tree: &'static str, v: &[u8]) -> Result<T, StoreError> {
    opts().deserialize(v).map_err(|e| corrupt(tree, e))
}

/// A mailbox index chunk: first id and time, then deltas.
fn encode_slots(slots: &[Slot]) -> Result<Vec<u8>, StoreError> {
    let mut prev = Slot { id: 0, ts: 0, bytes: 0 };
    let deltas: Vec<(u64, i64, u32)> = slots
        .iter()
        .map(|s| {
            let d = (s.id - prev.id, s.ts as i64 - prev.ts as i64, s.bytes);
            prev = *s;
            d
        })
        .collect();
    encode("mailbox_index", &deltas)
}

fn decode_slots(v: &[u8]) -> Result<Vec<Slot>, StoreError> {
    let deltas: Vec<(u64, i64, u32)> = decode("mailbox_index", v)?;
    let (mut id, mut ts) = (0u64, 0i64);
    Ok(deltas
        .into_iter()
        .map(|(di, dt, bytes)| {
            id = id.wrapping_add(di);
            ts = ts.wrapping_add(dt);
            Slot {
                id,
                ts: ts.max(0) as u64,
                bytes,
            }
        })
        .collect())
}

fn encode_ids(ids: &[u64]) -> Result<Vec<u8>, StoreError> {
    let mut prev = 0;
    let deltas: Vec<u64> = ids
        .iter()
        .map(|&id| {
            let d = id - prev;
            prev = id;
            d
        })
        .collect();
    encode("history_index", &deltas)
}

fn decode_ids(v: &[u8]) -> Result<Vec<u64>, StoreError> {
    let deltas: Vec<u64> = decode("history_index", v)?;
    let mut id = 0u64;
    Ok(deltas
        .into_iter()
        .map(|d| {
            id = id.wrapping_add(d);
            id
        })
        .collect())
}

/// The last id in the journal (0 when empty).
pub(super) fn last_message_id(journal: &sled::Tree) -> Result<u64, StoreError> {
    let Some((_, v)) = journal.last()? else {
        return Ok(0);
    };
    let chunk = journal::decode_chunk(&v)?;
    Ok(chunk.last().map_or(0, |m| m.id))
}

impl Store {
    /// The next message id.
    pub fn next_message_id(&self) -> u64 {
        self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn index_state(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Journals a batch of messages (ids increasing) and adds them to the in-memory
    /// index. Returns the number of index entries not yet written.
    ///
    /// # Errors
    /// I/O errors. Part of the batch may have been written then.
    pub fn append<'a, I>(&self, batch: I) -> Result<usize, StoreError>
    where
        I: IntoIterator<Item = &'a NewMessage> + Clone,
    {
        let mut chunk: Vec<journal::Planned<'_>> = Vec::new();
        let mut chunk_bytes = 0;
        for m in batch.clone() {
            let planned = journal::plan(m);
            let len = planned.len;
            if !chunk.is_empty() && (chunk.len() >= CHUNK_MESSAGES || chunk_bytes + len > CHUNK_BYTES) {
                self.write_chunk(&chunk)?;
                chunk.clear();
                chunk_bytes = 0;
            }
            chunk_bytes += len;
            chunk.push(planned);
        }
        self.write_chunk(&chunk)?;
        let mut ix = self.index_state();
        let mut conversation = String::new();
        for m in batch {
            self.remember(&mut ix, m, &mut conversation)?;
        }
        Ok(ix.pending.entries)
    }

    /// Writes a journal chunk under its first id (nothing for an empty one).
    fn write_chunk(&self, chunk: &[journal::Planned<'_>]) -> Result<(), StoreError> {
        if let Some(first) = chunk.first() {
            self.messages
                .insert(first.id().to_be_bytes(), journal::encode_chunk(chunk)?)?;
        }
        Ok(())
    }

    /// Adds a journaled message to the in-memory index and the mailbox counters
    /// (`conversation`: a buffer the caller reuses).
    fn remember(&self, ix: &mut Index, m: &NewMessage, conversation: &mut String) -> Result<(), StoreError> {
        let slot = m.slot();
        for Dest { user, .. } in m.dests() {
            if !ix.meta.contains_key(user) {
                // Loaded (and kept) before the slot is pending, so it is counted once.
                self.mailbox_meta_in(ix, user)?;
            }
            if let Some(meta) = ix.meta.get_mut(user) {
                meta.add(slot);
            }
            ix.pending.add_slots(user, &[slot]);
        }
        if m.route.push_conversation(&m.message.from, conversation) {
            ix.pending.add_ids(conversation, &[m.id]);
        }
        ix.last_id = ix.last_id.max(m.id);
        Ok(())
    }

    /// Index entries waiting in memory.
    pub fn unindexed(&self) -> usize {
        self.index_state().pending.entries
    }

    /// Writes the in-memory index entries to the index trees, one record per mailbox
    /// and conversation, and applies retention to the mailboxes written.
    ///
    /// Appends and reads go on meanwhile: the entries being written move from
    /// `pending` to `writing` (still read from there) and the index lock is only taken
    /// for moments, so the caller may be any thread (the IM writer has a thread of its
    /// own for it). One index write runs at a time.
    ///
    /// # Errors
    /// I/O errors (what was not written stays in memory for the next call).
    pub fn index(&self, r: Retention) -> Result<(), StoreError> {
        let one = self.indexing.lock().unwrap_or_else(|p| p.into_inner());
        self.index_holding(&one, r)
    }

    /// As [`Store::index`], unless an index write is under way: then returns at once
    /// (false) rather than wait for it. For callers on the runtime, which must not
    /// wait behind the low-priority index thread.
    ///
    /// # Errors
    /// As [`Store::index`].
    pub fn index_unless_busy(&self, r: Retention) -> Result<bool, StoreError> {
        let one = match self.indexing.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(false),
        };
        self.index_holding(&one, r).map(|()| true)
    }

    /// The index write, with `indexing` held (`_one`).
    fn index_holding(&self, _one: &std::sync::MutexGuard<'_, ()>, r: Retention) -> Result<(), StoreError> {
        let Some((work, through)) = self.begin_index() else {
            return Ok(());
        };
        if let Err(failed) = self.write_entries(&work) {
            let (e, rest) = *failed;
            self.index_state().writing = Arc::new(rest);
            return Err(e);
        }
        // Everything up to `through` was pending or written before.
        let marked = self.meta.insert(INDEXED_THROUGH, &through.to_be_bytes());
        self.index_state().writing = Arc::default();
        marked?;
        let mut failed = None;
        for (user, slots) in &work.mailboxes {
            let Some(newest) = slots.last() else {
                continue;
            };
            if let Err(e) = self.retain(user, newest.id, r) {
                tracing::error!(user, error = %e, "mailbox retention not applied (retried at the next index write)");
                failed.get_or_insert(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Moves the pending entries to `writing` (after what a failed write left there):
    /// what this index write writes, and the newest id it covers. `None` when nothing
    /// waits.
    fn begin_index(&self) -> Option<(Arc<Pending>, u64)> {
        let mut ix = self.index_state();
        if ix.pending.entries == 0 && ix.writing.entries == 0 {
            return None;
        }
        let newer = std::mem::take(&mut ix.pending);
        let work = Arc::new(Pending::merged(&ix.writing, newer));
        ix.writing = work.clone();
        Some((work, ix.last_id))
    }

    /// Writes one record per mailbox and conversation; on an error, returns what is
    /// left to write (the failed record included: writing it again is harmless).
    fn write_entries(&self, work: &Pending) -> Result<(), Box<(StoreError, Pending)>> {
        let mailboxes: Vec<(&String, &Vec<Slot>)> = work.mailboxes.iter().collect();
        for (i, (user, slots)) in mailboxes.iter().enumerate() {
            let written = match slots.first() {
                Some(first) => encode_slots(slots).and_then(|v| {
                    self.mailbox.insert(keys::with_id(user, first.id), v)?;
                    Ok(())
                }),
                None => Ok(()),
            };
            if let Err(e) = written {
                let mut rest = Pending::default();
                for (user, slots) in &mailboxes[i..] {
                    rest.add_slots(user, slots);
                }
                for (conv, ids) in &work.history {
                    rest.add_ids(conv, ids);
                }
                return Err(Box::new((e, rest)));
            }
        }
        let history: Vec<(&String, &Vec<u64>)> = work.history.iter().collect();
        for (i, (conv, ids)) in history.iter().enumerate() {
            let written = match ids.first() {
                Some(&first) => encode_ids(ids).and_then(|v| {
                    self.history.insert(keys::with_id(conv, first), v)?;
                    Ok(())
                }),
                None => Ok(()),
            };
            if let Err(e) = written {
                let mut rest = Pending::default();
                for (conv, ids) in &history[i..] {
                    rest.add_ids(conv, ids);
                }
                return Err(Box::new((e, rest)));
            }
        }
        Ok(())
    }

    /// Applies retention to `user`'s mailbox, whose newest entry in the tree is
    /// `newest` (entries appended meanwhile are left for the next index write), and
    /// writes its counters when retention changed them or they lag.
    fn retain(&self, user: &str, newest: u64, r: Retention) -> Result<(), StoreError> {
        let before = {
            let mut ix = self.index_state();
            self.mailbox_meta_in(&mut ix, user)?
        };
        // Trimmed on a copy without the lock: appends meanwhile only add newer entries
        // (counted in `count`, which is right: they are in the mailbox), and only this
        // (serialized) index write removes entries.
        let mut trimmed = before;
        self.apply_retention(user, &mut trimmed, newest, r)?;
        let (persist, meta) = {
            let mut ix = self.index_state();
            let Some(meta) = ix.meta.get_mut(user) else {
                return Ok(());
            };
            meta.count -= before.count - trimmed.count;
            meta.bytes = meta.bytes.saturating_sub(before.bytes - trimmed.bytes);
            meta.dropped_up_to = meta.dropped_up_to.max(trimmed.dropped_up_to);
            if trimmed.oldest_id != before.oldest_id {
                meta.oldest_id = trimmed.oldest_id;
                meta.oldest_ts = trimmed.oldest_ts;
            }
            // The stored counters may lag: on open, what was indexed after them is
            // counted again. Not what retention changed (it removed entries), and not
            // by more than META_LAG entries (the recount stays short).
            let persist = trimmed.dropped_up_to != before.dropped_up_to
                || meta.last_id.saturating_sub(meta.persisted_through) >= META_LAG;
            (persist, *meta)
        };
        if persist {
            // Consistent as of a moment: entries counted but not indexed yet are in
            // the journal, from which they are indexed again on open.
            self.mailbox_meta.insert(user, encode("mailbox_meta", &meta)?)?;
            if let Some(m) = self.index_state().meta.get_mut(user) {
                m.persisted_through = m.persisted_through.max(meta.last_id);
            }
        }
        Ok(())
    }

    /// Reads the journal after the last indexed id back into the in-memory index (at
    /// open: what was journaled but not indexed before the last stop or crash).
    pub(super) fn recover_index(&self) -> Result<usize, StoreError> {
        let through = self
            .meta
            .get(INDEXED_THROUGH)?
            .and_then(|v| keys::id_of(&v))
            .unwrap_or(0);
        let mut ix = self.index_state();
        ix.last_id = through;
        let mut recovered = 0;
        let mut conversation = String::new();
        for kv in self.messages.range(self.journal_start(through.saturating_add(1))?..) {
            let chunk = journal::decode_chunk(&kv?.1)?;
            for m in chunk.iter().filter(|m| m.id > through) {
                self.remember(&mut ix, m, &mut conversation)?;
                recovered += 1;
            }
        }
        Ok(recovered)
    }

    /// The key of the journal chunk holding `id` (or `id` itself when none does).
    fn journal_start(&self, id: u64) -> Result<Vec<u8>, StoreError> {
        Ok(self
            .messages
            .range(..=id.to_be_bytes())
            .next_back()
            .transpose()?
            .map_or_else(|| id.to_be_bytes().to_vec(), |(k, _)| k.to_vec()))
    }

    /// Drops a mailbox's oldest index entries while it is over a bound (`newest`,
    /// its newest entry in the tree, always stays). Once over a count or byte bound,
    /// it is trimmed to 15/16 of it: large mailboxes in steps (once per many
    /// appends), small bounds stay exact. Whole index chunks are removed; one partly
    /// dropped stays as it is (`dropped_up_to` says where the mailbox starts). Only
    /// index entries go: the journal keeps messages for history.
    fn apply_retention(&self, user: &str, meta: &mut MailboxMeta, newest: u64, r: Retention) -> Result<(), StoreError> {
        // Age is measured from the newest entry.
        let oldest_allowed = meta.newest_ts.saturating_sub(r.max_age);
        let over = |m: &MailboxMeta, max_messages: u64, max_bytes: u64| {
            m.count > 1
                && (m.count > max_messages || m.bytes > max_bytes || m.oldest_ts.is_some_and(|t| t < oldest_allowed))
        };
        if !over(meta, r.max_messages, r.max_bytes) {
            return Ok(());
        }
        let (max_messages, max_bytes) = (r.max_messages - r.max_messages / 16, r.max_bytes - r.max_bytes / 16);
        let over = |m: &MailboxMeta| over(m, max_messages, max_bytes);
        while over(meta) {
            let Some(oldest) = meta.oldest_id else {
                break;
            };
            let Some((key, mut slots)) = self.mailbox_chunk_at(user, oldest)? else {
                meta.oldest_id = None;
                meta.oldest_ts = None;
                break;
            };
            slots.retain(|s| s.id >= oldest);
            let mut cut = 0;
            while cut < slots.len() && over(meta) && slots[cut].id < newest {
                let s = slots[cut];
                meta.count -= 1;
                meta.bytes = meta.bytes.saturating_sub(u64::from(s.bytes));
                meta.dropped_up_to = meta.dropped_up_to.max(s.id);
                cut += 1;
            }
            if cut < slots.len() {
                // The chunk is not rewritten: its dropped entries stay until all of it
                // is dropped, and readers skip ids up to `dropped_up_to`.
                meta.oldest_id = Some(slots[cut].id);
                meta.oldest_ts = Some(slots[cut].ts);
                break;
            }
            self.mailbox.remove(&key)?;
            // The next chunk: a seek just past the removed one, not a scan.
            let next_key = slots.last().map_or(oldest, |s| s.id).saturating_add(1);
            let next = self
                .mailbox
                .range(keys::with_id(user, next_key)..keys::prefix_end(user))
                .next()
                .transpose()?;
            match next {
                Some((_, v)) => {
                    let first = decode_slots(&v)?.first().copied();
                    meta.oldest_id = first.map(|s| s.id);
                    meta.oldest_ts = first.map(|s| s.ts);
                }
                None => {
                    meta.oldest_id = None;
                    meta.oldest_ts = None;
                    break;
                }
            }
        }
        Ok(())
    }

    /// The mailbox index chunk of `user` holding `id`, with its key.
    fn mailbox_chunk_at(&self, user: &str, id: u64) -> Result<Option<(sled::IVec, Vec<Slot>)>, StoreError> {
        let found = self
            .mailbox
            .range(keys::prefix(user)..=keys::with_id(user, id))
            .next_back()
            .transpose()?;
        found.map(|(k, v)| Ok((k, decode_slots(&v)?))).transpose()
    }

    /// Journal records by id (ascending ids read each chunk once); `None` for
    /// unknown ids.
    fn records(&self, ids: &[u64]) -> Result<Vec<Option<NewMessage>>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        let mut chunk: Vec<NewMessage> = Vec::new();
        for &id in ids {
            let held = matches!((chunk.first(), chunk.last()), (Some(a), Some(b)) if a.id <= id && id <= b.id);
            if !held {
                chunk = match self.messages.range(..=id.to_be_bytes()).next_back().transpose()? {
                    Some((_, v)) => journal::decode_chunk(&v)?,
                    None => Vec::new(),
                };
            }
            out.push(chunk.binary_search_by_key(&id, |m| m.id).ok().map(|i| chunk[i].clone()));
        }
        Ok(out)
    }

    /// Messages by id (ascending ids read each chunk once); `None` for unknown ids.
    ///
    /// # Errors
    /// I/O errors and undecodable records.
    pub fn messages(&self, ids: &[u64]) -> Result<Vec<Option<StoredMessage>>, StoreError> {
        Ok(self
            .records(ids)?
            .into_iter()
            .map(|r| r.map(|r| Arc::unwrap_or_clone(r.message)))
            .collect())
    }

    #[cfg(test)]
    fn message(&self, id: u64) -> Result<Option<StoredMessage>, StoreError> {
        Ok(self.messages(&[id])?.pop().flatten())
    }

    /// The first id of every journal chunk: one chunk per store write (of a few
    /// messages), so tests see how messages were grouped.
    #[cfg(test)]
    pub fn chunk_starts(&self) -> Vec<u64> {
        self.messages
            .iter()
            .keys()
            .filter_map(|k| Some(u64::from_be_bytes(k.ok()?.as_ref().try_into().ok()?)))
            .collect()
    }

    /// The mailbox's counters, read once per user per process and then kept in memory.
    fn mailbox_meta_in(&self, ix: &mut Index, user: &str) -> Result<MailboxMeta, StoreError> {
        if let Some(m) = ix.meta.get(user) {
            return Ok(*m);
        }
        // The counters are derived data: unreadable ones are recounted, not an error.
        let mut meta: MailboxMeta = match self.mailbox_meta.get(user)? {
            Some(v) => decode("mailbox_meta", &v).unwrap_or_else(|e| {
                tracing::warn!(user, error = %e, "mailbox counters unreadable: recounting");
                MailboxMeta::default()
            }),
            None => MailboxMeta::default(),
        };
        // Count what was indexed after the counters were written, then what is pending.
        for s in self.indexed_after(user, meta.last_id, usize::MAX)? {
            meta.add(s);
        }
        for s in ix.mailbox(user) {
            meta.add(*s);
        }
        ix.meta.insert(user.to_owned(), meta);
        Ok(meta)
    }

    /// Index entries of `user` written to the tree, with ids above `after`.
    fn indexed_after(&self, user: &str, after: u64, limit: usize) -> Result<Vec<Slot>, StoreError> {
        let first = after.saturating_add(1);
        let start = match self.mailbox_chunk_at(user, first)? {
            Some((k, _)) => k.to_vec(),
            None => keys::with_id(user, first),
        };
        let mut out = Vec::new();
        for kv in self.mailbox.range(start..keys::prefix_end(user)) {
            for s in decode_slots(&kv?.1)? {
                if s.id > after {
                    if out.len() >= limit {
                        return Ok(out);
                    }
                    out.push(s);
                }
            }
        }
        Ok(out)
    }

    /// Ids in `user`'s mailbox above `after`, oldest first, at most `limit`.
    fn mailbox_ids(&self, user: &str, after: u64, limit: usize) -> Result<Vec<u64>, StoreError> {
        // Pending first: an index write in between moves entries into the tree, where
        // the second read finds them (duplicates are merged), never loses them. What
        // retention dropped may still be in a chunk: skipped.
        let (after, pending) = {
            let mut ix = self.index_state();
            let after = after.max(self.mailbox_meta_in(&mut ix, user)?.dropped_up_to);
            let pending: Vec<u64> = ix.mailbox(user).map(|s| s.id).filter(|&id| id > after).collect();
            (after, pending)
        };
        let mut ids: Vec<u64> = self
            .indexed_after(user, after, limit)?
            .into_iter()
            .map(|s| s.id)
            .collect();
        let last = ids.last().copied().unwrap_or(after);
        ids.extend(pending.into_iter().filter(|&id| id > last));
        ids.truncate(limit);
        Ok(ids)
    }

    /// Messages in `user`'s mailbox with ids above `after`, oldest first, at most
    /// `limit`, with where each arrives.
    ///
    /// # Errors
    /// I/O errors and undecodable records.
    pub fn mailbox_after(&self, user: &str, after: u64, limit: usize) -> Result<Vec<Replayed>, StoreError> {
        self.mailbox_page(user, after, limit).map(|p| p.entries)
    }

    /// Like [`Store::mailbox_after`], saying how far it read and whether the mailbox
    /// holds more: a page of a replay.
    ///
    /// # Errors
    /// I/O errors and undecodable records.
    pub fn mailbox_page(&self, user: &str, after: u64, limit: usize) -> Result<MailboxPage, StoreError> {
        let ids = self.mailbox_ids(user, after, limit)?;
        let read_through = ids.last().copied().unwrap_or(after).max(after);
        let more = ids.len() >= limit;
        let records = self.records(&ids)?;
        let entries = ids
            .into_iter()
            .zip(records)
            .filter_map(|(id, r)| {
                let r = r?;
                let entry = r.entry_for(user)?;
                Some(Replayed {
                    id,
                    entry,
                    message: Arc::unwrap_or_clone(r.message),
                })
            })
            .collect();
        Ok(MailboxPage {
            entries,
            read_through,
            more,
        })
    }

    /// The newest id in `user`'s mailbox (0 when empty), and the highest id retention
    /// removed.
    ///
    /// # Errors
    /// I/O errors.
    pub fn mailbox_head(&self, user: &str) -> Result<(u64, u64), StoreError> {
        let mut ix = self.index_state();
        let meta = self.mailbox_meta_in(&mut ix, user)?;
        Ok((meta.last_id, meta.dropped_up_to))
    }

    /// History of `conversation`: messages after `after` (oldest first) or before
    /// `before` (the newest ones, returned oldest first), at most `limit`.
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
        let pending: Vec<u64> = self.index_state().history(conversation).filter(within).collect();
        let mut ids: Vec<u64> = Vec::new();
        if after.is_some() && before.is_none() {
            let start = self
                .history
                .range(keys::prefix(conversation)..=keys::with_id(conversation, lo))
                .next_back()
                .transpose()?
                .map_or_else(|| keys::with_id(conversation, lo), |(k, _)| k.to_vec());
            for kv in self.history.range(start..keys::prefix_end(conversation)) {
                ids.extend(decode_ids(&kv?.1)?.into_iter().filter(within));
                if ids.len() >= limit {
                    break;
                }
            }
            let last = ids.last().copied().unwrap_or(0);
            ids.extend(pending.into_iter().filter(|&id| id > last));
            ids.truncate(limit);
        } else {
            // Newest first: memory (newer than the tree, or also there while being
            // written: `floor` skips those), then the tree backwards.
            let mut newest: Vec<u64> = pending.into_iter().rev().collect();
            let range = self
                .history
                .range(keys::prefix(conversation)..keys::with_id(conversation, hi));
            for kv in range.rev() {
                if newest.len() >= limit {
                    break;
                }
                let floor = newest.last().copied().unwrap_or(u64::MAX);
                newest.extend(
                    decode_ids(&kv?.1)?
                        .into_iter()
                        .rev()
                        .filter(|id| within(id) && *id < floor),
                );
            }
            newest.truncate(limit);
            newest.reverse();
            ids = newest;
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

    fn msg(text: &str, ts: u64) -> StoredMessage {
        StoredMessage {
            from: "alice".into(),
            ts,
            payload: Bytes::copy_from_slice(text.as_bytes()),
            user_properties: vec![],
            content_type: None,
        }
    }

    /// Message `id` (payload `m{id}`) for `users`' mailboxes, in conversation `conv`.
    fn new(id: u64, conv: Option<&str>, users: &[&str], ts: u64) -> NewMessage {
        let mailboxes = users
            .iter()
            .map(|u| {
                let entry = MailboxEntry {
                    suffix: "dm/alice".into(),
                    qos: 1,
                };
                ((*u).to_owned(), entry)
            })
            .collect();
        NewMessage::from_mailboxes(
            id,
            Arc::new(msg(&format!("m{id}"), ts)),
            conv.map(str::to_owned),
            mailboxes,
        )
    }

    const WIDE: Retention = Retention {
        max_messages: 1000,
        max_bytes: 1 << 30,
        max_age: u64::MAX,
    };

    fn ids(v: Vec<Replayed>) -> Vec<u64> {
        v.into_iter().map(|r| r.id).collect()
    }

    fn hist(v: Vec<(u64, StoredMessage)>) -> Vec<u64> {
        v.into_iter().map(|(i, _)| i).collect()
    }

    #[test]
    fn mailbox_reads_merge_the_index_and_memory() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let a: Vec<_> = (1..=3).map(|id| new(id, None, &["bob"], 100)).collect();
        assert_eq!(s.append(&a).unwrap(), 3, "three entries wait in memory");
        s.index(WIDE).unwrap();
        s.append(&[new(4, None, &["bob"], 100), new(5, None, &["bob", "bobby"], 100)])
            .unwrap();
        assert_eq!(
            ids(s.mailbox_after("bob", 2, 100).unwrap()),
            vec![3, 4, 5],
            "tree then memory"
        );
        assert_eq!(ids(s.mailbox_after("bob", 0, 2).unwrap()), vec![1, 2], "limit");
        assert_eq!(ids(s.mailbox_after("bob", 4, 100).unwrap()), vec![5], "memory only");
        assert_eq!(ids(s.mailbox_after("bobby", 0, 100).unwrap()), vec![5], "separate");
        let r = &s.mailbox_after("bobby", 0, 1).unwrap()[0];
        assert_eq!(
            (r.entry.suffix.as_str(), &r.message.payload[..]),
            ("dm/alice", &b"m5"[..])
        );
        assert_eq!(s.mailbox_head("bob").unwrap(), (5, 0));
        s.index(WIDE).unwrap();
        assert_eq!(
            ids(s.mailbox_after("bob", 0, 100).unwrap()),
            vec![1, 2, 3, 4, 5],
            "all in the tree"
        );
        assert_eq!(s.append(&[]).unwrap(), 0);
    }

    #[test]
    fn retention_by_count_bytes_and_age_at_index_time() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        for id in 1..=5 {
            s.append(&[new(id, None, &["bob"], 100)]).unwrap();
        }
        let tight = Retention {
            max_messages: 3,
            ..WIDE
        };
        s.index(tight).unwrap();
        assert_eq!(ids(s.mailbox_after("bob", 0, 100).unwrap()), vec![3, 4, 5]);
        assert_eq!(s.mailbox_head("bob").unwrap(), (5, 2), "1-2 dropped");
        s.append(&[new(7, None, &["bob"], 100)]).unwrap();
        let tighter = Retention {
            max_messages: 2,
            ..WIDE
        };
        s.index(tighter).unwrap();
        assert_eq!(
            ids(s.mailbox_after("bob", 0, 100).unwrap()),
            vec![5, 7],
            "a chunk cut in two"
        );
        s.append(&[new(9, None, &["bob"], 200)]).unwrap();
        s.index(Retention { max_age: 50, ..WIDE }).unwrap();
        assert_eq!(
            ids(s.mailbox_after("bob", 0, 100).unwrap()),
            vec![9],
            "older than 50 ms dropped"
        );
        assert_eq!(s.mailbox_head("bob").unwrap(), (9, 7));
        s.append(&[new(10, None, &["bob"], 200), new(11, None, &["bob"], 200)])
            .unwrap();
        s.index(Retention { max_bytes: 1, ..WIDE }).unwrap();
        assert_eq!(
            ids(s.mailbox_after("bob", 0, 100).unwrap()),
            vec![11],
            "the newest always stays"
        );
        assert_eq!(s.history("none", None, None, 10).unwrap(), vec![]);
        // Retention drops index entries only: the messages stay for history.
        assert_eq!(&s.message(1).unwrap().unwrap().payload[..], b"m1");
    }

    #[test]
    fn large_mailboxes_are_trimmed_in_steps() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let r = Retention {
            max_messages: 160,
            ..WIDE
        };
        for id in 1..=161 {
            s.append(&[new(id, None, &["bob"], 100)]).unwrap();
            s.index(r).unwrap();
        }
        let meta = s.mailbox_meta_in(&mut s.index_state(), "bob").unwrap();
        assert_eq!((meta.count, meta.dropped_up_to), (150, 11), "161 > 160: cut to 150");
        s.append(&[new(162, None, &["bob"], 100)]).unwrap();
        s.index(r).unwrap();
        let meta = s.mailbox_meta_in(&mut s.index_state(), "bob").unwrap();
        assert_eq!(meta.count, 151, "no trimming until over the bound again");
    }

    #[test]
    fn a_chunk_partly_dropped_stays_and_its_dropped_entries_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let r = Retention {
            max_messages: 16,
            ..WIDE
        };
        {
            let s = Store::open(dir.path()).unwrap();
            // One index chunk of 20: over 16, trimmed to 15 inside that chunk.
            let batch: Vec<_> = (1..=20).map(|id| new(id, None, &["bob"], 100)).collect();
            s.append(&batch).unwrap();
            s.index(r).unwrap();
            let (key, slots) = s.mailbox_chunk_at("bob", 20).unwrap().unwrap();
            assert_eq!((keys::id_of(&key), slots.len()), (Some(1), 20), "not rewritten");
            let meta = s.mailbox_meta_in(&mut s.index_state(), "bob").unwrap();
            assert_eq!((meta.count, meta.dropped_up_to, meta.oldest_id), (15, 5, Some(6)));
            assert_eq!(
                ids(s.mailbox_after("bob", 0, 100).unwrap()),
                (6..=20).collect::<Vec<_>>()
            );
            assert_eq!(
                ids(s.mailbox_after("bob", 3, 100).unwrap())[0],
                6,
                "a cursor before the drop"
            );
            assert_eq!(ids(s.mailbox_after("bob", 7, 100).unwrap())[0], 8);
            // Over again: the old chunk goes once all of it is dropped.
            let batch: Vec<_> = (21..=40).map(|id| new(id, None, &["bob"], 100)).collect();
            s.append(&batch).unwrap();
            s.index(r).unwrap();
            assert!(s.mailbox.get(keys::with_id("bob", 1)).unwrap().is_none(), "removed");
            assert_eq!(
                ids(s.mailbox_after("bob", 0, 100).unwrap()),
                (26..=40).collect::<Vec<_>>()
            );
        }
        let s = Store::open(dir.path()).unwrap();
        let meta = s.mailbox_meta_in(&mut s.index_state(), "bob").unwrap();
        assert_eq!((meta.count, meta.dropped_up_to), (15, 25), "the same after a restart");
        assert_eq!(
            ids(s.mailbox_after("bob", 0, 100).unwrap()),
            (26..=40).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_crash_before_the_index_is_written_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            for id in 1..=100 {
                s.append(&[new(id, Some("dm:alice:bob"), &["bob"], 100)]).unwrap();
                if id == 64 {
                    s.index(WIDE).unwrap();
                }
            }
            // Dropped without writing the index of 65..=100.
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.next_message_id(), 101, "ids continue after the journal");
        assert_eq!(s.mailbox_after("bob", 0, 1000).unwrap().len(), 100);
        assert_eq!(
            hist(s.history("dm:alice:bob", None, None, 3).unwrap()),
            vec![98, 99, 100]
        );
        assert_eq!(s.mailbox_head("bob").unwrap(), (100, 0));
        let meta = s.mailbox_meta_in(&mut s.index_state(), "bob").unwrap();
        assert_eq!(
            (meta.count, meta.bytes, meta.oldest_id),
            (100, 9 * 2 + 90 * 3 + 4, Some(1))
        );
        s.append(&[new(101, None, &["bob"], 100)]).unwrap();
        s.index(Retention {
            max_messages: 100,
            ..WIDE
        })
        .unwrap();
        let meta = s.mailbox_meta_in(&mut s.index_state(), "bob").unwrap();
        assert_eq!((meta.count, meta.dropped_up_to, meta.oldest_id), (94, 7, Some(8)));
    }

    #[test]
    fn messages_are_chunked_by_count_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut batch: Vec<_> = (1..=600).map(|id| new(id, None, &[], 1)).collect();
        Arc::make_mut(&mut batch[50].message).payload = vec![0; CHUNK_BYTES + 1].into();
        s.append(&batch).unwrap();
        // 1-50, the oversized 51, then 256 per chunk by count: 52-307, 308-563, 564-600.
        assert_eq!(s.messages.len(), 5);
        let got = s.messages(&[1, 32, 33, 51, 100, 601]).unwrap();
        let lens: Vec<_> = got.iter().map(|m| m.as_ref().map(|m| m.payload.len())).collect();
        assert_eq!(
            lens,
            vec![Some(2), Some(3), Some(3), Some(CHUNK_BYTES + 1), Some(4), None]
        );
        assert_eq!(&s.message(42).unwrap().unwrap().payload[..], b"m42");
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.next_message_id(), 601);
    }

    #[test]
    fn counters_written_late_are_right_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let small = Retention {
            max_messages: 16,
            ..WIDE
        };
        {
            let s = Store::open(dir.path()).unwrap();
            let batch: Vec<_> = (1..=10).map(|id| new(id, None, &["bob"], 1)).collect();
            s.append(&batch).unwrap();
            s.index(small).unwrap();
            assert!(
                s.mailbox_meta.get("bob").unwrap().is_none(),
                "not written yet: it lags little"
            );
        }
        {
            let s = Store::open(dir.path()).unwrap();
            let meta = s.mailbox_meta_in(&mut s.index_state(), "bob").unwrap();
            assert_eq!((meta.count, meta.last_id), (10, 10), "recounted from the index");
            // Over the bound: retention trims, and the counters are written at once.
            let batch: Vec<_> = (11..=20).map(|id| new(id, None, &["bob"], 1)).collect();
            s.append(&batch).unwrap();
            s.index(small).unwrap();
            assert!(s.mailbox_meta.get("bob").unwrap().is_some());
        }
        let s = Store::open(dir.path()).unwrap();
        let meta = s.mailbox_meta_in(&mut s.index_state(), "bob").unwrap();
        assert_eq!((meta.count, meta.last_id, meta.dropped_up_to), (15, 20, 5));
        assert_eq!(s.mailbox_after("bob", 0, 100).unwrap().len(), 15);
    }

    #[test]
    fn a_schema_2_journal_is_read_after_the_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        let batch: Vec<_> = (1..=5).map(|id| new(id, Some("dm:alice:bob"), &["bob"], 1)).collect();
        {
            let s = Store::open(dir.path()).unwrap();
            // A chunk as schema 2 wrote it (not yet indexed), and that version.
            s.messages
                .insert(1u64.to_be_bytes(), journal::encode_format_2(&batch))
                .unwrap();
            s.meta.insert("schema_version", &2u32.to_be_bytes()).unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.next_message_id(), 6);
        let got = s.mailbox_after("bob", 0, 10).unwrap();
        assert_eq!(got.iter().map(|r| r.id).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
        assert_eq!(&got[4].message.payload[..], b"m5");
        let v = s.meta.get("schema_version").unwrap().unwrap();
        assert_eq!(v.as_ref(), &3u32.to_be_bytes());
    }

    #[test]
    fn payload_encoding_is_that_of_a_byte_vector() {
        // Journals written when the payload was a Vec<u8> read back unchanged.
        #[derive(Serialize)]
        struct Before {
            from: String,
            ts: u64,
            payload: Vec<u8>,
            user_properties: Vec<(String, String)>,
            content_type: Option<String>,
        }
        let before = Before {
            from: "alice".into(),
            ts: 1_700_000_000_000,
            payload: (0..=255).collect(),
            user_properties: vec![("k".into(), "v".into())],
            content_type: Some("text/plain".into()),
        };
        let bytes = encode("journal", &before).unwrap();
        let now: StoredMessage = decode("journal", &bytes).unwrap();
        assert_eq!(&now.payload[..], &before.payload[..]);
        assert_eq!(encode("journal", &now).unwrap(), bytes);
    }

    #[test]
    fn chunks_stay_near_their_byte_bound() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let batch: Vec<_> = (1..=500)
            .map(|id| {
                let mut m = new(id, Some("dm:alice:bob"), &["alice", "bob"], 1_700_000_000_000);
                Arc::make_mut(&mut m.message).payload = vec![7; 100].into();
                Arc::make_mut(&mut m.message).user_properties = vec![("k".into(), "v".into())];
                m
            })
            .collect();
        for m in &batch {
            let estimate = journal::plan(m).len;
            let exact = journal::encode_chunk(&[journal::plan(m)]).unwrap().len();
            assert!(estimate >= exact, "estimate {estimate} < {exact}");
        }
        s.append(&batch).unwrap();
        for record in s.messages.iter() {
            let (_, v) = record.unwrap();
            assert!(v.len() <= CHUNK_BYTES, "chunk of {} bytes", v.len());
        }
    }

    #[test]
    fn history_pages_across_chunks_and_memory() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let ab = Some("dm:alice:bob");
        // Index records of 3 and 4 ids; 8-10 still in memory; 11 elsewhere.
        for range in [1..=3, 4..=7] {
            let batch: Vec<_> = range.map(|id| new(id, ab, &[], 1)).collect();
            s.append(&batch).unwrap();
            s.index(WIDE).unwrap();
        }
        let batch: Vec<_> = (8..=10).map(|id| new(id, ab, &[], 1)).collect();
        s.append(&batch).unwrap();
        s.append(&[new(11, Some("dm:alice:carol"), &[], 1)]).unwrap();
        let check = |s: &Store| {
            assert_eq!(
                hist(s.history("dm:alice:bob", None, None, 3).unwrap()),
                vec![8, 9, 10],
                "latest"
            );
            assert_eq!(
                hist(s.history("dm:alice:bob", None, None, 5).unwrap()),
                vec![6, 7, 8, 9, 10]
            );
            assert_eq!(
                hist(s.history("dm:alice:bob", Some(8), None, 3).unwrap()),
                vec![5, 6, 7]
            );
            assert_eq!(hist(s.history("dm:alice:bob", None, Some(8), 5).unwrap()), vec![9, 10]);
            assert_eq!(
                hist(s.history("dm:alice:bob", None, Some(2), 4).unwrap()),
                vec![3, 4, 5, 6]
            );
            assert_eq!(
                hist(s.history("dm:alice:bob", None, Some(5), 10).unwrap()),
                vec![6, 7, 8, 9, 10]
            );
            assert_eq!(
                hist(s.history("dm:alice:bob", Some(5), Some(1), 10).unwrap()),
                vec![2, 3, 4]
            );
            assert_eq!(hist(s.history("dm:alice:carol", None, None, 10).unwrap()), vec![11]);
            assert_eq!(
                &s.history("dm:alice:bob", None, Some(9), 10).unwrap()[0].1.payload[..],
                &b"m10"[..]
            );
        };
        check(&s);
        s.index(WIDE).unwrap();
        check(&s);
        assert_eq!(s.cursor("bob", "phone").unwrap(), None);
        s.advance_cursor("bob", "phone", 7).unwrap();
        s.advance_cursor("bob", "phone", 5).unwrap();
        assert_eq!(s.cursor("bob", "phone").unwrap(), Some(7), "never back");
    }

    #[test]
    fn reads_during_an_index_write_see_every_entry_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let ab = Some("dm:alice:bob");
        let batch: Vec<_> = (1..=4).map(|id| new(id, ab, &["bob"], 1)).collect();
        s.append(&batch).unwrap();
        s.index(WIDE).unwrap();
        s.append(&[new(5, ab, &["bob"], 1), new(6, ab, &["bob"], 1)]).unwrap();
        let all = |s: &Store, upto: u64| {
            let want: Vec<u64> = (1..=upto).collect();
            assert_eq!(ids(s.mailbox_after("bob", 0, 100).unwrap()), want);
            assert_eq!(hist(s.history("dm:alice:bob", None, None, 100).unwrap()), want);
            assert_eq!(hist(s.history("dm:alice:bob", None, Some(0), 100).unwrap()), want);
            assert_eq!(s.mailbox_head("bob").unwrap(), (upto, 0));
        };
        // An index write has taken 5 and 6 (not in the trees yet); 7 arrives meanwhile.
        let (work, through) = s.begin_index().unwrap();
        assert_eq!((work.entries, through), (4, 6));
        s.append(&[new(7, ab, &["bob"], 1)]).unwrap();
        all(&s, 7);
        // Written, still listed as being written: each entry once.
        assert!(s.write_entries(&work).is_ok());
        all(&s, 7);
        // A mailbox first seen now is counted from the tree, the write and memory.
        s.index_state().meta.remove("bob");
        all(&s, 7);
        s.index_state().writing = Arc::default();
        all(&s, 7);
        s.index(WIDE).unwrap();
        all(&s, 7);
    }

    #[test]
    fn index_unless_busy_does_not_wait_for_a_write_under_way() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.append(&[new(1, None, &["bob"], 1)]).unwrap();
        {
            let _under_way = s.indexing.lock().unwrap();
            assert!(!s.index_unless_busy(WIDE).unwrap(), "busy: returns at once");
            assert_eq!(s.unindexed(), 1);
        }
        assert!(s.index_unless_busy(WIDE).unwrap());
        assert_eq!(s.unindexed(), 0);
    }

    #[test]
    fn entries_left_by_a_failed_index_write_are_written_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let ab = Some("dm:alice:bob");
        let batch: Vec<_> = (1..=3).map(|id| new(id, ab, &["bob"], 1)).collect();
        s.append(&batch).unwrap();
        // As a failed write leaves them: taken, not written.
        let (work, _) = s.begin_index().unwrap();
        assert_eq!(work.entries, 6);
        s.append(&[new(4, ab, &["bob"], 1)]).unwrap();
        assert_eq!(ids(s.mailbox_after("bob", 0, 100).unwrap()), vec![1, 2, 3, 4]);
        s.index(WIDE).unwrap();
        assert_eq!(s.index_state().writing.entries, 0);
        assert_eq!(s.unindexed(), 0);
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.unindexed(), 0, "nothing to read back from the journal");
        assert_eq!(ids(s.mailbox_after("bob", 0, 100).unwrap()), vec![1, 2, 3, 4]);
        assert_eq!(
            hist(s.history("dm:alice:bob", None, None, 100).unwrap()),
            vec![1, 2, 3, 4]
        );
    }

    #[test]
    fn appends_during_index_writes_keep_the_counters_right() {
        let dir = tempfile::tempdir().unwrap();
        let small = Retention {
            max_messages: 100,
            ..WIDE
        };
        {
            let s = Store::open(dir.path()).unwrap();
            let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let indexer = {
                let (s, done) = (s.clone(), done.clone());
                std::thread::spawn(move || {
                    while !done.load(std::sync::atomic::Ordering::Relaxed) {
                        s.index(small).unwrap();
                    }
                })
            };
            for first in (1..=3000).step_by(10) {
                let batch: Vec<_> = (first..first + 10).map(|id| new(id, None, &["bob"], 1)).collect();
                s.append(&batch).unwrap();
                let got = ids(s.mailbox_after("bob", 0, usize::MAX).unwrap());
                assert!(got.windows(2).all(|w| w[0] < w[1]), "in order, once each");
                assert_eq!(got.last(), Some(&(first + 9)), "nothing missing at the end");
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            indexer.join().unwrap();
            s.index(small).unwrap();
            let meta = s.mailbox_meta_in(&mut s.index_state(), "bob").unwrap();
            let held = s.mailbox_after("bob", 0, usize::MAX).unwrap();
            assert_eq!(meta.count, held.len() as u64);
            assert_eq!(
                meta.bytes,
                held.iter().map(|r| r.message.payload.len() as u64).sum::<u64>()
            );
            assert_eq!(meta.oldest_id, held.first().map(|r| r.id));
            assert_eq!(meta.dropped_up_to + 1, held[0].id, "dropped exactly what is gone");
            assert!(meta.count <= 100 && meta.last_id == 3000);
        }
        let s = Store::open(dir.path()).unwrap();
        let meta = s.mailbox_meta_in(&mut s.index_state(), "bob").unwrap();
        let held = s.mailbox_after("bob", 0, usize::MAX).unwrap();
        assert_eq!(
            (meta.count, meta.last_id),
            (held.len() as u64, 3000),
            "the same after a restart"
        );
    }

    #[test]
    fn index_encodings_round_trip() {
        let slots = vec![
            Slot {
                id: 5,
                ts: 1_700_000_000_000,
                bytes: 3,
            },
            Slot {
                id: 9,
                ts: 1_699_999_999_990,
                bytes: 70_000,
            },
            Slot {
                id: u64::MAX,
                ts: 0,
                bytes: 0,
            },
        ];
        assert_eq!(decode_slots(&encode_slots(&slots).unwrap()).unwrap(), slots);
        let ids = vec![1, 2, 300, u64::MAX];
        assert_eq!(decode_ids(&encode_ids(&ids).unwrap()).unwrap(), ids);
        assert!(decode_slots(b"\xff\xff").is_err(), "garbage is an error, not a panic");
    }
}
