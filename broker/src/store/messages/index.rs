//! Writing the in-memory index entries to the index trees, and rebuilding them from
//! the journal at open.

use std::sync::Arc;

use super::encoding::{encode_ids, encode_slots};
use super::*;

/// Journaled messages trimmed per index write beyond those journaled since the last.
const TRIM_SLACK: usize = 512;
/// Messages trimmed per index write when none was journaled since the last.
const TRIM_IDLE: usize = 16_384;

impl Store {
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
        let mut one = self.indexing.lock().unwrap_or_else(|p| p.into_inner());
        self.index_holding(&mut one, r)
    }

    /// As [`Store::index`], unless an index write is under way: then returns at once
    /// (false) rather than wait for it. For callers on the runtime, which must not
    /// wait behind the low-priority index thread.
    ///
    /// # Errors
    /// As [`Store::index`].
    pub fn index_unless_busy(&self, r: Retention) -> Result<bool, StoreError> {
        let mut one = match self.indexing.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(false),
        };
        self.index_holding(&mut one, r).map(|()| true)
    }

    /// The index write, with `indexing` held (`trimmed_at`: the messages journaled as
    /// of the last trim).
    pub(super) fn index_holding(&self, trimmed_at: &mut u64, r: Retention) -> Result<(), StoreError> {
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
        if failed.is_none() {
            // Paced: as many messages as were journaled since the last trim, and a
            // few hundred more, which keeps up with any steady rate and drains a
            // backlog (what a burst left, once retention drops it) gradually. Trimming
            // a backlog at once costs the index thread milliseconds per write, and
            // deliveries measurably wait behind it (p99 at 1,000 DM/s 3.2-3.5 ms
            // against 1.2-1.3 ms paced, in the same conditions).
            let written = self.journaled.load(std::sync::atomic::Ordering::Relaxed);
            let new = written.saturating_sub(*trimmed_at);
            *trimmed_at = written;
            let budget = if new == 0 { TRIM_IDLE } else { new as usize + TRIM_SLACK };
            match self.trim_journal(through, budget) {
                Ok(0) => {}
                Ok(n) => tracing::debug!(chunks = n, "journal trimmed under mailbox retention"),
                Err(e) => tracing::error!(error = %e, "journal not trimmed (retried at the next index write)"),
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Moves the pending entries to `writing` (after what a failed write left there):
    /// what this index write writes, and the newest id it covers. `None` when nothing
    /// waits.
    pub(super) fn begin_index(&self) -> Option<(Arc<Pending>, u64)> {
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
    pub(super) fn write_entries(&self, work: &Pending) -> Result<(), Box<(StoreError, Pending)>> {
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

    /// Reads the journal after the last indexed id back into the in-memory index (at
    /// open: what was journaled but not indexed before the last stop or crash).
    pub(in crate::store) fn recover_index(&self) -> Result<usize, StoreError> {
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
    pub(super) fn journal_start(&self, id: u64) -> Result<Vec<u8>, StoreError> {
        Ok(self
            .messages
            .range(..=id.to_be_bytes())
            .next_back()
            .transpose()?
            .map_or_else(|| id.to_be_bytes().to_vec(), |(k, _)| k.to_vec()))
    }
}
