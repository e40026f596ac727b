//! The group-commit worker: routes what arrives in batches and stores a group once no
//! more arrives (or at its bounds), then resolves the publishers' receipts.
//!
//! Storing is pipelined with routing: while one group is on the blocking pool
//! (appended, cursors written, flushed), the worker goes on routing what arrives into
//! the next group, so a message is never held back behind another group's fsync.
//! Groups are stored one at a time, in id order; the next starts once the one before
//! is done (or at once when none is under way).

use super::cursors::{take_waiting, tell, write_cursors, Waiting};
use super::*;

/// A group handed to the blocking pool.
pub(super) struct Storing {
    task: JoinHandle<Outcome>,
    receipts: Vec<oneshot::Sender<Stored>>,
    /// How many of the in-flight batches (the first ones) it stores.
    batches: usize,
    messages: usize,
    last: Option<u64>,
}

/// What storing a group came to.
pub(super) struct Outcome {
    /// Index entries waiting in memory after the append, or the failure.
    appended: Result<usize, StoreError>,
    /// Who waits for the cursors written with it, and whether they were committed.
    cursors: (Vec<oneshot::Sender<Stored>>, Stored),
}

/// What ended a wait while a group was being stored.
enum Meanwhile {
    Stored(Outcome),
    Op(Op),
    Closed,
}

impl Worker {
    pub(super) async fn run(mut self) {
        let mut ops = Vec::new();
        let mut storing: Option<Storing> = None;
        let (mut batches, mut stores) = (0u64, 0u64);
        let mut tick = tokio::time::interval(self.limits.index_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Whether index entries may wait in memory: an idle writer does not wake.
        let mut unindexed = false;
        loop {
            let first = tokio::select! {
                out = stored(&mut storing), if storing.is_some() => {
                    self.stored(storing.take(), out).await;
                    continue;
                }
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
            let group = self.gather(&mut ops, &mut storing, &mut batches).await;
            // One group at a time, in id order.
            self.finish_store(&mut storing).await;
            stores += 1;
            let stop = group.stop;
            storing = self.start_store(group);
            unindexed = true;
            if stop {
                break;
            }
        }
        self.finish_store(&mut storing).await;
        self.finish_index().await;
        self.start_index();
        self.finish_index().await;
        tracing::debug!(batches, stores, "writer stopped");
    }

    /// Routes what arrived (`ops` holds the first), lets the connections run
    /// (recipients write, more publishers post), and goes on while more arrives: the
    /// group is ready to store once the writer finds nothing new, or it is full, or
    /// `store_within` old. A burst of messages from many connections then costs one
    /// store write, not one each. While the group before is being stored (`storing`),
    /// this one takes what arrives until that is done (or this one is full).
    async fn gather(&mut self, ops: &mut Vec<Op>, storing: &mut Option<Storing>, batches: &mut u64) -> Group {
        let mut group = Group::default();
        let started = tokio::time::Instant::now();
        loop {
            let room = self.limits.batch_max.saturating_sub(group.messages);
            while ops.len() < room {
                match self.rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            *batches += 1;
            self.route(ops, &mut group);
            tokio::task::yield_now().await;
            if let Some(mut done) = storing.take_if(|s| s.task.is_finished()) {
                let out = join(&mut done.task).await;
                self.stored(Some(done), out).await;
            }
            if group.stop || group.messages >= self.limits.batch_max {
                return group;
            }
            if storing.is_none() && started.elapsed() >= self.limits.store_within {
                return group;
            }
            if let Ok(op) = self.rx.try_recv() {
                ops.push(op);
                continue;
            }
            if storing.is_none() {
                return group;
            }
            let meanwhile = tokio::select! {
                out = stored(storing) => Meanwhile::Stored(out),
                op = self.rx.recv() => op.map_or(Meanwhile::Closed, Meanwhile::Op),
                _ = self.wake.notified() => Meanwhile::Op(Op::Cursors),
            };
            match meanwhile {
                Meanwhile::Stored(out) => {
                    self.stored(storing.take(), out).await;
                    return group;
                }
                Meanwhile::Op(op) => ops.push(op),
                Meanwhile::Closed => {
                    group.stop = true;
                    return group;
                }
            }
        }
    }

    /// Waits for the group being stored, if any, and resolves it.
    async fn finish_store(&mut self, storing: &mut Option<Storing>) {
        if storing.is_some() {
            let out = stored(storing).await;
            self.stored(storing.take(), out).await;
        }
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

    /// Hands a group (and the cursors acknowledged meanwhile) to the blocking pool;
    /// `None` when there is nothing to write.
    pub(super) fn start_store(&self, group: Group) -> Option<Storing> {
        let waiting = take_waiting(&self.cursors);
        if group.messages == 0 && waiting.is_empty() {
            return None;
        }
        let (store, cursors) = (self.store.clone(), self.cursors.clone());
        let last = group.batches.last().and_then(|b| b.last()).map(|m| m.id);
        let count = group.batches.len();
        let batches = group.batches;
        let task = tokio::task::spawn_blocking(move || store_group(&store, &cursors, &batches, waiting));
        Some(Storing {
            task,
            receipts: group.receipts,
            batches: count,
            messages: group.messages,
            last,
        })
    }

    /// A group is stored (or failed to be): resolves its publishers' receipts, takes
    /// its batches out of flight, tells who waited for its cursors, and starts an
    /// index write when enough entries wait.
    pub(super) async fn stored(&mut self, storing: Option<Storing>, out: Outcome) {
        let Some(s) = storing else { return };
        let (result, unindexed) = match out.appended {
            Ok(unindexed) => {
                if let Some(last) = s.last {
                    // QoS 2 deliveries of these messages may go out now.
                    self.router.durable().stored_up_to(last);
                }
                (Ok(()), unindexed)
            }
            Err(e) => {
                tracing::error!(error = %e, messages = s.messages, "messages not stored");
                (Err(NotStored::Failed), 0)
            }
        };
        {
            // Stored (or never will be): a replay reads them from the store now.
            let mut flying = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            let n = s.batches.min(flying.len());
            flying.drain(..n);
        }
        for done in s.receipts {
            let _ = done.send(result);
        }
        let (told, committed) = out.cursors;
        tell(told, committed);
        if unindexed >= self.limits.index_at {
            let busy = self.index_busy();
            // Memory stays bounded: at twice the bound, the next batch waits.
            if !busy || unindexed >= self.limits.index_at.saturating_mul(2) {
                self.finish_index().await;
                self.start_index();
            }
        }
    }
}

/// Waits for the group being stored (forever when there is none: a `select!` branch
/// guarded by `is_some`).
async fn stored(storing: &mut Option<Storing>) -> Outcome {
    match storing {
        Some(s) => join(&mut s.task).await,
        None => std::future::pending().await,
    }
}

/// The outcome of a store task; one that panicked stored nothing.
async fn join(task: &mut JoinHandle<Outcome>) -> Outcome {
    task.await.unwrap_or_else(|e| Outcome {
        appended: Err(StoreError::Task(e.to_string())),
        cursors: (Vec::new(), Err(NotStored::Failed)),
    })
}

/// On the blocking pool: appends a group's messages and writes the cursors waiting,
/// then commits both with one flush (when `sync`): a receipt then means "on disk".
/// Cursors alone, with nobody waiting for them to be durable, are not flushed: the
/// next group's flush (or sled's own, every `flush_every_ms`) takes them, and one
/// lost in a crash only replays what the device had acknowledged (at least once).
/// That spares a flush per acknowledgement at low rates.
fn store_group(store: &Store, cursors: &Cursors, batches: &[Arc<Vec<NewMessage>>], waiting: Vec<Waiting>) -> Outcome {
    let appended = if batches.is_empty() {
        Ok(0)
    } else {
        store.append(batches.iter().flat_map(|b| b.iter()))
    };
    let told = write_cursors(store, cursors, waiting);
    let committed = if batches.is_empty() && told.is_empty() {
        Ok(())
    } else {
        store.commit()
    };
    let cursors_committed = match &committed {
        Ok(()) => Ok(()),
        Err(e) => {
            tracing::error!(error = %e, "device cursors not flushed");
            Err(NotStored::Failed)
        }
    };
    Outcome {
        appended: appended.and_then(|unindexed| committed.map(|()| unindexed)),
        cursors: (told, cursors_committed),
    }
}
