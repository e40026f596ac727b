//! The IM writer: one task delivers and stores what the IM layer accepted. Message
//! ids are assigned here, in the order messages are stored and delivered, so every
//! mailbox sees increasing ids.
//!
//! Messages are routed as they arrive, to the sessions subscribed now, in batches of
//! whatever the channel holds; between batches the writer lets the connections run
//! (recipients write the messages out, more publishers post). Once it finds nothing
//! new, or at `[im] write_batch_max` messages or `write_batch_max_us` after the first,
//! it stores the routed batches together (group commit without a timer: one message
//! alone is stored at once, a burst from many connections shares one store write),
//! and only then resolves their publishers' receipts (their PUBACKs): an online
//! recipient does not wait for the store, a publisher is never told "stored" before
//! it is. Meanwhile the batches are "in flight": a device replayed then gets its
//! messages from there (see [`Writer::in_flight`]), since it may have subscribed
//! after they were routed and before they were stored. Storing runs beside routing:
//! while a group is on the blocking pool, what arrives is routed into the next group,
//! which is stored once the one before is done (one at a time, in id order), so no
//! message waits behind another group's flush to reach an online recipient. If
//! storing fails, the
//! publishers are refused (and may send again) although online devices already have
//! the messages; they are not in the mailbox.
//!
//! It is a task on the runtime rather than a thread: handing a message over and
//! waking the publisher and subscribers afterwards stay within the runtime (no
//! thread switch per message, which cost ~200 us of latency on a busy core). The
//! store calls themselves (a group's append, cursor writes) go to the blocking pool,
//! one hand-over per group, since sled may wait for its disk. With `[store]
//! durability = "sync"` a group's append ends with one flush (an fsync) in the same
//! hand-over, so a receipt means "on disk" and one flush covers every message of the
//! group; cursor writes are flushed likewise. With `"relaxed"` nothing here flushes
//! (sled writes its buffers every `flush_every_ms`).
//!
//! The mailbox and history indexes are written behind it, by a thread of their own at
//! the lowest CPU priority (see [`super::indexer`]), every
//! `[im] index_interval_ms` while entries wait in memory (an idle writer does not
//! wake) or as soon as `index_max_pending` wait (see the store's messages module).
//! The writer goes on delivering and storing meanwhile; only when twice
//! `index_max_pending` wait does it wait for the index write under way.
//!
//! Device cursors are written from here too: an acknowledgement updates an in-memory
//! map at once (read by replays) and is written after the next store, one write per
//! device, committed with the group's messages (one flush for both); an
//! acknowledgement wakes the writer through a [`Notify`] (no queue).
//!
//! The channel into the writer holds at most `[im] writer_queue` messages. Every
//! client's message waits for its receipt (QoS 0 included), so a client has at most
//! its Receive Maximum of them here and the bound is met only when the store stalls;
//! then messages are refused ([`NotStored::Busy`]: v5 0x80, a 3.1.1 QoS 1/2
//! publisher disconnected), never buffered without end.

use std::sync::{Arc, Mutex};

use natter_shared::codec::QoS;
use natter_shared::im;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;

use super::indexer::{IndexWrite, Indexer};
use super::presence::PresenceBook;
use crate::hooks::{NotStored, Receipt, Stored};
use crate::model::Message;
use crate::router::{Head, Router};
use crate::store::{NewMessage, Replayed, Retention, Store, StoreError};
use crate::FastMap;

/// The writer's bounds (from `[im]` in the configuration).
#[derive(Debug, Clone, Copy)]
pub struct WriterLimits {
    pub retention: Retention,
    /// Most messages stored together...
    pub batch_max: usize,
    /// ...and the longest the first of them waits to be stored.
    pub store_within: std::time::Duration,
    /// The mailbox and history indexes are written this often...
    pub index_every: std::time::Duration,
    /// ...or when this many entries wait in memory.
    pub index_at: usize,
    /// Most messages waiting in the channel for the writer.
    pub queue: usize,
}

/// A message on its way to mailboxes.
pub struct Post {
    /// Everything but the id, which the writer assigns.
    pub record: NewMessage,
    /// The session it came from, which the sender's own copy (for their other
    /// devices) skips.
    pub origin: Option<u64>,
    /// That connection's client id: the sender's copy is not routed at all when it is
    /// the sender's only connection.
    pub sender: Option<Arc<str>>,
    pub done: Option<oneshot::Sender<Stored>>,
}

enum Op {
    Post(Post),
    /// Acknowledged cursors wait in the map (the writer's own op, on a wake).
    Cursors,
    Stop,
    /// Makes the worker panic (tests of the supervisor).
    #[cfg(test)]
    Panic,
}

/// Acknowledged positions not yet written: user, then device.
type Cursors = Arc<Mutex<FastMap<String, FastMap<String, Acked>>>>;

/// A device's last acknowledged id, and whether the writer was told about it since
/// it last looked.
#[derive(Debug)]
struct Acked {
    id: u64,
    queued: bool,
    /// Told once the cursor is written (see [`Writer::acked_durably`]).
    waiters: Vec<oneshot::Sender<Stored>>,
}

/// The batches routed but not yet stored (empty otherwise).
type InFlight = Arc<Mutex<Vec<Arc<Vec<NewMessage>>>>>;

/// A handle on the writer task (cheap to clone).
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Op>,
    /// Wakes the writer for acknowledged cursors.
    wake: Arc<Notify>,
    /// Acknowledged positions not yet written.
    cursors: Cursors,
    in_flight: InFlight,
    store: Store,
    retention: Retention,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// Set by the supervisor when the writer task failed.
    failed: watch::Receiver<bool>,
}

struct Worker {
    rx: mpsc::Receiver<Op>,
    wake: Arc<Notify>,
    store: Store,
    router: Router,
    presence: Arc<PresenceBook>,
    limits: WriterLimits,
    cursors: Cursors,
    in_flight: InFlight,
    indexer: Indexer,
    /// The index write under way.
    indexing: Option<IndexWrite>,
}

impl Writer {
    /// Starts the writer task (on the current runtime) and its index thread.
    ///
    /// # Errors
    /// The index thread could not be created.
    pub fn start(
        store: Store,
        router: Router,
        presence: Arc<PresenceBook>,
        limits: WriterLimits,
    ) -> std::io::Result<Writer> {
        let indexer = Indexer::start(store.clone(), limits.retention)?;
        // Every message of an earlier run is stored (or never will be).
        router.durable().stored_up_to(store.first_unused_id().saturating_sub(1));
        let (tx, rx) = mpsc::channel(limits.queue.max(1));
        let wake = Arc::new(Notify::new());
        let cursors = Cursors::default();
        let in_flight = InFlight::default();
        let worker = Worker {
            rx,
            wake: wake.clone(),
            store: store.clone(),
            router,
            presence,
            limits,
            cursors: cursors.clone(),
            in_flight: in_flight.clone(),
            indexer,
            indexing: None,
        };
        let worker = tokio::spawn(worker.run());
        // The supervisor: a writer that failed (panicked) is said at once, and the
        // broker stops (see [`Writer::failed`]) rather than accepting connections and
        // refusing every IM message. What it had not stored was never acknowledged.
        let (failed_tx, failed) = watch::channel(false);
        let task = tokio::spawn(async move {
            if let Err(e) = worker.await {
                tracing::error!(error = %e, "the IM writer failed: the broker stops");
                let _ = failed_tx.send(true);
            }
        });
        Ok(Writer {
            tx,
            wake,
            cursors,
            in_flight,
            store,
            retention: limits.retention,
            task: Arc::new(Mutex::new(Some(task))),
            failed,
        })
    }

    /// Resolves if the writer task fails (it never does otherwise).
    pub async fn failed(&self) {
        let mut failed = self.failed.clone();
        if failed.wait_for(|f| *f).await.is_err() {
            // The supervisor ended without a failure: the writer stopped normally.
            std::future::pending::<()>().await;
        }
    }

    /// Queues a message; with `receipt`, returns what resolves once it is stored.
    ///
    /// # Errors
    /// [`NotStored::Busy`] when `writer_queue` messages wait already,
    /// [`NotStored::Stopped`] when the writer has stopped (the broker is shutting down).
    pub fn post(&self, mut post: Post, receipt: bool) -> Result<Option<Receipt>, NotStored> {
        let rx = if receipt {
            let (tx, rx) = oneshot::channel();
            post.done = Some(tx);
            Some(rx)
        } else {
            None
        };
        match self.tx.try_send(Op::Post(post)) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(NotStored::Busy),
            Err(TrySendError::Closed(_)) => Err(NotStored::Stopped),
        }
    }

    /// Messages for `user`'s mailbox after id `after` that were routed but are not
    /// stored yet. A replay reads these *before* the store: a batch leaves this list
    /// only once stored, so every message is in one or the other.
    pub fn in_flight(&self, user: &str, after: u64) -> Vec<Replayed> {
        let batches = self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).clone();
        batches
            .iter()
            .flat_map(|b| b.iter())
            .filter(|r| r.id > after)
            .filter_map(|r| {
                r.entry_for(user).map(|entry| Replayed {
                    id: r.id,
                    entry,
                    message: (*r.message).clone(),
                })
            })
            .collect()
    }

    /// The most entries a mailbox holds once retention is applied.
    pub fn replay_limit(&self) -> usize {
        usize::try_from(self.retention.max_messages).unwrap_or(usize::MAX)
    }

    /// Writes the index entries kept in memory now, applying retention (before a
    /// device is replayed, so it sees its mailbox within bounds). Called on the
    /// runtime: when the index thread is writing, it does not wait for that
    /// low-priority thread (which applies retention itself); the replay then may
    /// include entries retention is about to drop, never fewer.
    ///
    /// # Errors
    /// Store errors.
    pub fn index_now(&self) -> Result<(), StoreError> {
        self.store.index_unless_busy(self.retention).map(|_| ())
    }

    /// Writes what is queued and stops the task.
    pub async fn stop(&self) {
        let _ = self.tx.send(Op::Stop).await;
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = task {
            // The watcher above reports a failure of the writer itself.
            let _ = t.await;
        }
    }
}

/// Batches routed but not stored yet, stored together.
#[derive(Default)]
struct Group {
    batches: Vec<Arc<Vec<NewMessage>>>,
    messages: usize,
    receipts: Vec<oneshot::Sender<Stored>>,
    stop: bool,
}

mod cursors;
mod fanout;
#[cfg(test)]
mod tests;
mod worker;
