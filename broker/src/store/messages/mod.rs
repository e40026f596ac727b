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

/// The last id in the journal (0 when empty).
pub(super) fn last_message_id(journal: &super::SealedTree) -> Result<u64, StoreError> {
    let Some((_, v)) = journal.last()? else {
        return Ok(0);
    };
    let chunk = journal::decode_chunk(&v)?;
    Ok(chunk.last().map_or(0, |m| m.id))
}

/// Message ids are reserved on disk this many at a time, ahead of their use: a
/// message is delivered to online devices before it is stored, so an id handed out
/// just before a crash may be on a device without being in the journal, and must not
/// name another message after the restart (a QoS 2 receiver would take it for the one
/// it has). A restart skips what is left of the block.
pub(crate) const ID_BLOCK: u64 = 1 << 20;

/// The meta key of the first id not reserved.
pub(crate) const IDS_RESERVED: &str = "ids_reserved";

/// The first id to hand out at open, and the reservation to write before any is:
/// after every stored id and every id reserved before.
pub(crate) fn first_id(last_stored: u64, reserved: u64) -> (u64, u64) {
    let next = (last_stored + 1).max(reserved);
    (next, next + ID_BLOCK)
}

impl Store {
    /// The next message id.
    pub fn next_message_id(&self) -> u64 {
        self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// The id [`Store::next_message_id`] would hand out now.
    pub fn first_unused_id(&self) -> u64 {
        self.next_id.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reserves the next block of ids once half of this one is used (written with the
    /// batch being appended, so committed before any receipt of it).
    fn reserve_ids(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        let next = self.next_id.load(Ordering::Relaxed);
        let reserved = self.ids_reserved.load(Ordering::Relaxed);
        if next + ID_BLOCK / 2 > reserved {
            let to = next + ID_BLOCK;
            self.meta.insert(IDS_RESERVED, &to.to_be_bytes())?;
            self.ids_reserved.store(to, Ordering::Relaxed);
        }
        Ok(())
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
        self.check_writable()?;
        self.reserve_ids()?;
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
        if let Some(last) = chunk.last() {
            self.check.appended(last.id());
        }
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
            self.journaled
                .fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
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
}

mod encoding;
mod index;
mod reads;
mod retention;
#[cfg(test)]
mod tests;
