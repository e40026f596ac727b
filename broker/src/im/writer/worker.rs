//! The group-commit worker: routes what arrives in batches, stores a group once no
//! more arrives (or at its bounds), then resolves the publishers' receipts.

use super::cursors::{take_waiting, write_cursors};
use super::*;

impl Worker {
    pub(super) async fn run(mut self) {
        let mut ops = Vec::new();
        let (mut batches, mut stores) = (0u64, 0u64);
        let mut tick = tokio::time::interval(self.limits.index_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Whether index entries may wait in memory: an idle writer does not wake.
        let mut unindexed = false;
        loop {
            let first = tokio::select! {
                op = self.rx.recv() => match op {
                    Some(op) => op,
                    None => break,
                },
                _ = self.wake.notified() => Op::Cursors,
                _ = tick.tick(), if unindexed => {
                    unindexed = self.on_tick().await;
                    continue;
                }
            };
            ops.push(first);
            let mut group = Group::default();
            let started = tokio::time::Instant::now();
            // Route what arrived, let the connections run (recipients write, more
            // publishers post), and go on while more arrives: the group is stored once
            // the writer finds nothing new, or is full, or is `store_within` old. A burst
            // of messages from many connections then costs one store write, not one each.
            loop {
                let room = self.limits.batch_max.saturating_sub(group.messages);
                while ops.len() < room {
                    match self.rx.try_recv() {
                        Ok(op) => ops.push(op),
                        Err(_) => break,
                    }
                }
                batches += 1;
                self.route(&mut ops, &mut group);
                tokio::task::yield_now().await;
                if group.stop
                    || group.messages >= self.limits.batch_max
                    || started.elapsed() >= self.limits.store_within
                {
                    break;
                }
                match self.rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            stores += 1;
            let stop = group.stop;
            self.store(group).await;
            unindexed = true;
            if stop {
                break;
            }
        }
        self.finish_index().await;
        self.start_index();
        self.finish_index().await;
        tracing::debug!(batches, stores, "writer stopped");
    }

    /// At the index tick: starts an index write if entries wait and none is under
    /// way. Returns whether the tick is still needed (a write under way, or entries
    /// waiting).
    pub(super) async fn on_tick(&mut self) -> bool {
        if self.index_busy() {
            return true;
        }
        self.finish_index().await;
        if self.store.unindexed() == 0 {
            return false;
        }
        self.start_index();
        true
    }

    /// Asks the index thread for a write (the caller checked that none is under
    /// way). A failed write leaves its entries in memory, for the next.
    pub(super) fn start_index(&mut self) {
        self.indexing = Some(self.indexer.request());
    }

    /// Whether an index write is under way.
    pub(super) fn index_busy(&mut self) -> bool {
        self.indexing.as_mut().is_some_and(|w| !w.is_done())
    }

    /// Waits for the index write under way, if any.
    pub(super) async fn finish_index(&mut self) {
        if let Some(w) = self.indexing.take() {
            w.wait().await;
        }
    }

    /// Assigns ids to the posts in `ops` and routes them to the sessions subscribed
    /// now; the batch is in flight until stored.
    pub(super) fn route(&self, ops: &mut Vec<Op>, group: &mut Group) {
        let mut records = Vec::new();
        let mut rest = Vec::new();
        for op in ops.drain(..) {
            match op {
                Op::Post(p) => {
                    let Post {
                        mut record,
                        origin,
                        sender,
                        done,
                    } = p;
                    record.id = self.store.next_message_id();
                    records.push(record);
                    rest.push((origin, sender));
                    group.receipts.extend(done);
                }
                // Written after every store anyway.
                Op::Cursors => {}
                Op::Stop => group.stop = true,
                #[cfg(test)]
                Op::Panic => panic!("the writer was told to fail"),
            }
        }
        if records.is_empty() {
            return;
        }
        let batch = Arc::new(records);
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(batch.clone());
        let mut topic = String::new();
        for (record, (origin, sender)) in batch.iter().zip(rest) {
            self.deliver(record, origin, sender.as_deref(), &mut topic);
        }
        group.messages += batch.len();
        group.batches.push(batch);
    }

    /// Stores a group, then resolves its publishers' receipts and writes its cursors.
    pub(super) async fn store(&mut self, group: Group) {
        if group.messages > 0 {
            let (store, batches) = (self.store.clone(), group.batches);
            // Appended and flushed (when `sync`) in one hand-over: the receipts below
            // mean "on disk" then, and one flush covers the whole group.
            let last_of = batches.clone();
            let appended = store::blocking(move || {
                let unindexed = store.append(batches.iter().flat_map(|b| b.iter()))?;
                store.commit()?;
                Ok(unindexed)
            })
            .await;
            let last = last_of.last().and_then(|b| b.last()).map(|m| m.id);
            let (stored, unindexed) = match appended {
                Ok(unindexed) => {
                    if let Some(last) = last {
                        // QoS 2 deliveries of these messages may go out now.
                        self.router.durable().stored_up_to(last);
                    }
                    (Ok(()), unindexed)
                }
                Err(e) => {
                    tracing::error!(error = %e, messages = group.messages, "messages not stored");
                    (Err(NotStored::Failed), 0)
                }
            };
            self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).clear();
            for done in group.receipts {
                let _ = done.send(stored);
            }
            if unindexed >= self.limits.index_at {
                let busy = self.index_busy();
                // Memory stays bounded: at twice the bound, the next batch waits.
                if !busy || unindexed >= self.limits.index_at.saturating_mul(2) {
                    self.finish_index().await;
                    self.start_index();
                }
            }
        }
        let waiting = take_waiting(&self.cursors);
        if !waiting.is_empty() {
            let (store, cursors) = (self.store.clone(), self.cursors.clone());
            let _ = store::blocking(move || {
                write_cursors(&store, &cursors, waiting);
                Ok(())
            })
            .await;
        }
    }
}
