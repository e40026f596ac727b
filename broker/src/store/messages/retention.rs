//! Retention: a mailbox trimmed by count, bytes and age when its index is written.

use super::encoding::{decode_ids, decode_slots, encode};
use super::*;

impl Store {
    /// Applies retention to `user`'s mailbox, whose newest entry in the tree is
    /// `newest` (entries appended meanwhile are left for the next index write), and
    /// writes its counters when retention changed them or they lag.
    pub(super) fn retain(&self, user: &str, newest: u64, r: Retention) -> Result<(), StoreError> {
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

    /// Drops a mailbox's oldest index entries while it is over a bound (`newest`,
    /// its newest entry in the tree, always stays). Once over a count or byte bound,
    /// it is trimmed to 15/16 of it: large mailboxes in steps (once per many
    /// appends), small bounds stay exact. Whole index chunks are removed; one partly
    /// dropped stays as it is (`dropped_up_to` says where the mailbox starts). The
    /// journal follows once every mailbox has dropped a message
    /// ([`Store::trim_journal`]).
    pub(super) fn apply_retention(
        &self,
        user: &str,
        meta: &mut MailboxMeta,
        newest: u64,
        r: Retention,
    ) -> Result<(), StoreError> {
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

    /// Removes journal chunks from its start while every message in them is gone from
    /// every mailbox it went to (retention dropped it there, or the mailbox is empty)
    /// and is indexed (`through`): the journal, history included, is bounded by the
    /// mailboxes' retention. A message still in one mailbox keeps its chunk, and the
    /// chunks after it. Stops once `max_messages` went; returns how many chunks went.
    pub(super) fn trim_journal(&self, through: u64, max_messages: usize) -> Result<usize, StoreError> {
        let (mut removed, mut messages) = (0, 0);
        while messages < max_messages {
            let Some(kv) = self.messages.iter().next() else {
                break;
            };
            let (key, value) = kv?;
            let chunk = journal::decode_chunk(&value)?;
            if chunk.last().is_none_or(|m| m.id > through) {
                break;
            }
            for m in &chunk {
                for d in m.dests() {
                    let meta = {
                        let mut ix = self.index_state();
                        self.mailbox_meta_in(&mut ix, d.user)?
                    };
                    let gone = m.id <= meta.dropped_up_to || meta.oldest_id.map_or(meta.count == 0, |o| o > m.id);
                    if !gone {
                        return Ok(removed);
                    }
                }
            }
            self.messages.remove(&key)?;
            removed += 1;
            messages += chunk.len();
            // Their history goes with them: every history chunk of their
            // conversations that holds only ids up to the chunk's last.
            let last = chunk.last().map_or(0, |m| m.id);
            let mut conversations: Vec<String> = chunk
                .iter()
                .filter_map(|m| m.conversation().map(|c| c.into_owned()))
                .collect();
            conversations.sort_unstable();
            conversations.dedup();
            for conv in &conversations {
                self.trim_history(conv, last)?;
            }
        }
        Ok(removed)
    }

    /// Removes the history chunks of `conversation`, oldest first, whose ids are all
    /// at most `through`.
    fn trim_history(&self, conversation: &str, through: u64) -> Result<(), StoreError> {
        loop {
            let Some((key, value)) = self
                .history
                .range(keys::prefix(conversation)..keys::prefix_end(conversation))
                .next()
                .transpose()?
            else {
                return Ok(());
            };
            let ids = decode_ids(&value)?;
            if ids.last().is_some_and(|&id| id > through) {
                return Ok(());
            }
            self.history.remove(&key)?;
        }
    }

    /// The mailbox index chunk of `user` holding `id`, with its key.
    pub(super) fn mailbox_chunk_at(&self, user: &str, id: u64) -> Result<Option<(sled::IVec, Vec<Slot>)>, StoreError> {
        let found = self
            .mailbox
            .range(keys::prefix(user)..=keys::with_id(user, id))
            .next_back()
            .transpose()?;
        found.map(|(k, v)| Ok((k, decode_slots(&v)?))).transpose()
    }
}
