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
//! after they were routed and before they were stored. If storing fails, the
//! publishers are refused (and may send again) although online devices already have
//! the messages; they are not in the mailbox.
//!
//! It is a task on the runtime rather than a thread: handing a message over and
//! waking the publisher and subscribers afterwards stay within the runtime (no
//! thread switch per message, which cost ~200 us of latency on a busy core). The
//! store calls themselves (a group's append, cursor writes) go to the blocking pool,
//! one hand-over per group, since sled may wait for its disk; none of them flushes.
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
//! device; an acknowledgement wakes the writer through a [`Notify`] (no queue).
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
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

use super::indexer::{IndexWrite, Indexer};
use super::presence::PresenceBook;
use crate::hooks::{NotStored, Receipt, Stored};
use crate::model::Message;
use crate::router::{Head, Router};
use crate::store::{self, NewMessage, Replayed, Retention, Store, StoreError};
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
}

/// Acknowledged positions not yet written: user, then device.
type Cursors = Arc<Mutex<FastMap<String, FastMap<String, Acked>>>>;

/// A device's last acknowledged id, and whether the writer was told about it since
/// it last looked.
#[derive(Debug, Clone, Copy)]
struct Acked {
    id: u64,
    queued: bool,
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
        // Said when it happens, not at shutdown: without the writer, IM messages are
        // refused (never falsely acknowledged) until the broker restarts.
        let task = tokio::spawn(async move {
            if let Err(e) = worker.await {
                tracing::error!(error = %e, "the IM writer failed: messages to mailboxes are refused until restart");
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
        })
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

    /// A device acknowledged mailbox id `id`.
    pub fn acked(&self, user: &str, device: &str, id: u64) {
        {
            let mut map = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
            // Names are copied only for a device's first acknowledgement since its last
            // write; the writer is told once until it next looks at the map.
            match map.get_mut(user).and_then(|devices| devices.get_mut(device)) {
                Some(cur) => {
                    cur.id = cur.id.max(id);
                    if cur.queued {
                        return;
                    }
                    cur.queued = true;
                }
                None => {
                    let acked = Acked { id, queued: true };
                    map.entry(user.to_owned()).or_default().insert(device.to_owned(), acked);
                }
            }
        }
        self.wake.notify_one();
    }

    /// The last id a device acknowledged, written or not.
    ///
    /// # Errors
    /// Store errors.
    pub fn cursor(&self, user: &str, device: &str) -> Result<Option<u64>, StoreError> {
        // The map first: an entry leaves it only after the store has it.
        let pending = self
            .cursors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
            .and_then(|devices| devices.get(device))
            .map(|a| a.id);
        let stored = self.store.cursor(user, device)?;
        Ok(pending.max(stored))
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

impl Worker {
    async fn run(mut self) {
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
    async fn on_tick(&mut self) -> bool {
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
    fn start_index(&mut self) {
        self.indexing = Some(self.indexer.request());
    }

    /// Whether an index write is under way.
    fn index_busy(&mut self) -> bool {
        self.indexing.as_mut().is_some_and(|w| !w.is_done())
    }

    /// Waits for the index write under way, if any.
    async fn finish_index(&mut self) {
        if let Some(w) = self.indexing.take() {
            w.wait().await;
        }
    }

    /// Assigns ids to the posts in `ops` and routes them to the sessions subscribed
    /// now; the batch is in flight until stored.
    fn route(&self, ops: &mut Vec<Op>, group: &mut Group) {
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
    async fn store(&mut self, group: Group) {
        if group.messages > 0 {
            let (store, batches) = (self.store.clone(), group.batches);
            let appended = store::blocking(move || store.append(batches.iter().flat_map(|b| b.iter()))).await;
            let (stored, unindexed) = match appended {
                Ok(unindexed) => (Ok(()), unindexed),
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

    /// Routes a message to the sessions subscribed to its mailboxes now (`topic`: a
    /// buffer the batch's messages share).
    fn deliver(&self, record: &NewMessage, origin: Option<u64>, sender: Option<&str>, topic: &mut String) {
        let id = record.id;
        for dest in record.dests() {
            // The sender's copy skips the session the message came from. Whether that is
            // the sender's only connection is checked now, at routing: a device of the
            // sender's that connects later subscribes later too, and is replayed this
            // message (in flight or stored).
            let (origin, exclude) = if dest.copy { (origin, true) } else { (None, false) };
            if exclude && sender.is_some_and(|c| self.presence.only_connection(dest.user, c)) {
                continue;
            }
            topic.clear();
            topic.push_str(im::INBOX);
            topic.push('/');
            topic.push_str(dest.user);
            topic.push('/');
            dest.suffix.push_to(topic);
            // Built only for a session to receive it.
            let head = Head {
                topic,
                origin,
                exclude_origin: exclude,
                retain: false,
            };
            // Built only for a session to receive it; never retained, so never full.
            let _ = self.router.route(head, || {
                // Each mailbox entry keeps the QoS the message was sent with.
                let qos = QoS::from_u8(dest.qos).unwrap_or(QoS::AtLeastOnce);
                let m = &record.message;
                Arc::new(Message {
                    origin,
                    exclude_origin: exclude,
                    ..Message::stored(topic.as_str().into(), m.payload.clone(), qos, m.clone(), id)
                })
            });
        }
    }
}

/// The acknowledged cursors not yet written, marked as taken.
fn take_waiting(cursors: &Cursors) -> Vec<(String, String, u64)> {
    let mut waiting = Vec::new();
    let mut map = cursors.lock().unwrap_or_else(|p| p.into_inner());
    for (user, devices) in map.iter_mut() {
        for (device, acked) in devices.iter_mut().filter(|(_, a)| a.queued) {
            acked.queued = false;
            waiting.push((user.clone(), device.clone(), acked.id));
        }
    }
    waiting
}

/// Writes acknowledged cursors (on the blocking pool). An entry leaves the map once
/// written (unless it moved on meanwhile), so a replay reading the map, then the
/// store, always finds it.
fn write_cursors(store: &Store, cursors: &Cursors, waiting: Vec<(String, String, u64)>) {
    for (user, device, id) in waiting {
        if let Err(e) = store.advance_cursor(&user, &device, id) {
            tracing::error!(user, device, error = %e, "cannot move the device cursor");
            continue;
        }
        let mut map = cursors.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(devices) = map.get_mut(&user) {
            if devices.get(&device).is_some_and(|a| a.id <= id && !a.queued) {
                devices.remove(&device);
            }
            if devices.is_empty() {
                map.remove(&user);
            }
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::config::Config;
    use crate::im::mailbox::limits;
    use crate::store::{Route, StoredMessage};
    use bytes::Bytes;

    fn post(to: &str) -> Post {
        Post {
            record: NewMessage {
                id: 0,
                message: Arc::new(StoredMessage {
                    from: "alice".into(),
                    ts: 1,
                    payload: Bytes::from_static(b"hi"),
                    user_properties: Vec::new(),
                    content_type: None,
                }),
                route: Route::Direct { to: to.into(), qos: 1 },
            },
            origin: None,
            sender: None,
            done: None,
        }
    }

    /// A writer on a fresh store, with the default bounds as `bounds` changes them
    /// (the directory lives as long as the first element).
    fn start(bounds: impl FnOnce(WriterLimits) -> WriterLimits) -> (tempfile::TempDir, Store, Writer) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let config = Config::default_config();
        let router = Router::new(config.limits.clone());
        let presence = Arc::new(PresenceBook::new(router.clone()));
        let writer = Writer::start(store.clone(), router, presence, bounds(limits(&config.im))).unwrap();
        (dir, store, writer)
    }

    /// Lets the writer run until `done` holds: turn by turn, then (should its work go
    /// to another thread) in 1 ms steps, for at most 10 s.
    async fn until(done: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut turns = 0u32;
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "not reached within 10 s");
            turns += 1;
            if turns < 100 {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
    }

    /// The channel into the writer is bounded: with `queue` messages waiting, the
    /// next is refused as busy (nothing is buffered beyond it), and once the writer
    /// has taken them, messages are accepted again.
    #[tokio::test(flavor = "current_thread")]
    async fn a_full_queue_refuses_messages_instead_of_buffering_them() {
        let (_dir, store, writer) = start(|l| WriterLimits { queue: 2, ..l });
        // The writer task cannot run before this test yields.
        let waiting: Vec<_> = (0..2)
            .map(|_| writer.post(post("bob"), true).unwrap().unwrap())
            .collect();
        assert_eq!(writer.post(post("bob"), true).err(), Some(NotStored::Busy));
        for r in waiting {
            assert_eq!(r.await.unwrap(), Ok(()));
        }
        let later = writer.post(post("bob"), true).unwrap().unwrap();
        assert_eq!(later.await.unwrap(), Ok(()));
        assert_eq!(
            store.mailbox_after("bob", 0, 10).unwrap().len(),
            3,
            "the refused one is not stored"
        );
        writer.stop().await;
        assert_eq!(writer.post(post("bob"), true).err(), Some(NotStored::Stopped));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn batches_are_in_flight_between_routing_and_storing() {
        // No time bound on a group: it ends when the writer finds nothing new, however
        // slowly this test runs on a loaded machine.
        let (_dir, store, writer) = start(|l| WriterLimits {
            store_within: std::time::Duration::from_secs(3600),
            ..l
        });
        let first = writer.post(post("bob"), true).unwrap().unwrap();
        // The writer routes the batch, then yields before storing it.
        tokio::task::yield_now().await;
        let flying = writer.in_flight("bob", 0);
        assert_eq!(flying.iter().map(|r| r.id).collect::<Vec<_>>(), vec![1]);
        assert!(writer.in_flight("carol", 0).is_empty());
        assert!(writer.in_flight("bob", 1).is_empty(), "only ids after the cursor");
        assert!(store.mailbox_after("bob", 0, 10).unwrap().is_empty(), "not stored yet");
        // More arrived meanwhile: routed too, and stored with the first.
        let second = writer.post(post("bob"), true).unwrap().unwrap();
        tokio::task::yield_now().await;
        let flying = writer.in_flight("bob", 0);
        assert_eq!(flying.iter().map(|r| r.id).collect::<Vec<_>>(), vec![1, 2]);
        assert!(store.mailbox_after("bob", 0, 10).unwrap().is_empty(), "not stored yet");
        assert_eq!(first.await.unwrap(), Ok(()), "stored");
        assert_eq!(second.await.unwrap(), Ok(()), "stored");
        assert!(writer.in_flight("bob", 0).is_empty());
        let stored = store.mailbox_after("bob", 0, 10).unwrap();
        assert_eq!(stored.iter().map(|r| r.id).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(&stored[0].message.payload[..], b"hi");
        writer.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn acknowledged_cursors_are_read_at_once_and_written_behind() {
        let (_dir, store, writer) = start(|l| l);
        writer.acked("bob", "phone", 5);
        writer.acked("bob", "phone", 9);
        writer.acked("bob", "phone", 7);
        writer.acked("bob", "laptop", 3);
        assert_eq!(writer.cursor("bob", "phone").unwrap(), Some(9), "never back");
        assert_eq!(store.cursor("bob", "phone").unwrap(), None, "not written yet");
        // No message needed: the first acknowledgement woke the writer.
        // Written on the blocking pool, one device after the other.
        until(|| writer.cursors.lock().unwrap().is_empty()).await;
        assert_eq!(store.cursor("bob", "phone").unwrap(), Some(9));
        assert_eq!(
            store.cursor("bob", "laptop").unwrap(),
            Some(3),
            "written entries leave the map"
        );
        // Acknowledged again after the writer looked: told again, written again.
        writer.acked("bob", "phone", 12);
        until(|| store.cursor("bob", "phone").unwrap() == Some(12)).await;
        assert_eq!(writer.cursor("bob", "phone").unwrap(), Some(12));
        writer.stop().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_group_is_stored_at_its_bounds() {
        let (_dir, store, writer) = start(|l| WriterLimits { batch_max: 2, ..l });
        let receipts: Vec<_> = (0..3)
            .map(|_| writer.post(post("bob"), true).unwrap().unwrap())
            .collect();
        // Two routed and full: stored together, in one write; the third in its own.
        for r in receipts {
            assert_eq!(r.await.unwrap(), Ok(()));
        }
        assert_eq!(store.mailbox_after("bob", 0, 10).unwrap().len(), 3);
        assert_eq!(store.chunk_starts(), vec![1, 3], "one write for ids 1-2, one for 3");
        writer.stop().await;
    }
}
