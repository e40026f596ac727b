//! Reads: journal records by id, mailbox pages, conversation history, cursors.

use std::sync::Arc;

use super::encoding::{decode, decode_ids, decode_slots};
use super::*;

impl Store {
    /// Journal records by id (ascending ids read each chunk once); `None` for
    /// unknown ids.
    pub(super) fn records(&self, ids: &[u64]) -> Result<Vec<Option<NewMessage>>, StoreError> {
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

    /// The journal's chunk count and first message id. A scan: for benchmarks and
    /// tools, not the message path.
    ///
    /// # Errors
    /// I/O errors.
    pub fn journal_extent(&self) -> Result<(usize, Option<u64>), StoreError> {
        let first = self
            .messages
            .tree
            .first()?
            .and_then(|(k, _)| <[u8; 8]>::try_from(k.as_ref()).ok().map(u64::from_be_bytes));
        Ok((self.messages.tree.len(), first))
    }

    #[cfg(test)]
    pub(super) fn message(&self, id: u64) -> Result<Option<StoredMessage>, StoreError> {
        Ok(self.messages(&[id])?.pop().flatten())
    }

    /// The first id of every journal chunk: one chunk per store write (of a few
    /// messages), so tests see how messages were grouped.
    #[cfg(test)]
    pub fn chunk_starts(&self) -> Vec<u64> {
        self.messages
            .tree
            .iter()
            .keys()
            .filter_map(|k| Some(u64::from_be_bytes(k.ok()?.as_ref().try_into().ok()?)))
            .collect()
    }

    /// The mailbox's counters, read once per user per process and then kept in memory.
    pub(super) fn mailbox_meta_in(&self, ix: &mut Index, user: &str) -> Result<MailboxMeta, StoreError> {
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
    pub(super) fn indexed_after(&self, user: &str, after: u64, limit: usize) -> Result<Vec<Slot>, StoreError> {
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
    pub(super) fn mailbox_ids(&self, user: &str, after: u64, limit: usize) -> Result<Vec<u64>, StoreError> {
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
