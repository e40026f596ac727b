//! Replaying a mailbox into a device's session: what its cursor has not acknowledged,
//! oldest first, in pages that fit the session's queue (`max_queued_messages`), read
//! off the async runtime, nothing skipped.
//!
//! The replay begins in the hook that asks for it ([`SessionView::begin_replay`]): from
//! then on, mailbox messages routed to this session are deferred to the replay, so no
//! newer one reaches the device (and moves its cursor on) before an older one still
//! to be replayed. A task then reads a page at a time (the writer's in-flight batches
//! first, then the store: see [`Writer::in_flight`]) and waits for the connection to
//! drain the queue to half before the next; it ends once a page has caught up with
//! everything stored and deferred, and live delivery takes over.

use std::sync::Arc;

use bytes::Bytes;
use natter_shared::api::event;
use natter_shared::codec::QoS;
use natter_shared::im;
use serde_json::json;
use tokio::sync::oneshot;

use super::writer::Writer;
use crate::hooks::{NotStored, Receipt, SessionView, Stored};
use crate::model::{Delivery, Message, Offered};
use crate::store::{self, Replayed, Store, StoreError};

/// Most entries read per page, whatever room the queue has.
const PAGE_MAX: usize = 256;

/// One replay under way.
struct Replay {
    store: Store,
    writer: Writer,
    user: String,
    device: String,
    session: SessionView,
    epoch: u64,
}

/// One page read.
struct Page {
    /// Retention dropped entries the device never received: the event saying so.
    gap: Option<Delivery>,
    entries: Vec<Replayed>,
    read_up_to: u64,
    caught_up: bool,
}

/// Starts replaying `user`'s mailbox into `device`'s session (see the module); the
/// receipt resolves once the replay knows where it starts (a new device's cursor is
/// then written, and flushed when the store is `sync`).
pub fn start(store: &Store, writer: &Writer, user: &str, device: &str, session: &SessionView) -> Option<Receipt> {
    let epoch = session.begin_replay();
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        tracing::error!(user, device, "mailbox replay needs the runtime: not replayed");
        session.end_replay(epoch);
        return None;
    };
    let (started, receipt) = oneshot::channel();
    let replay = Arc::new(Replay {
        store: store.clone(),
        writer: writer.clone(),
        user: user.to_owned(),
        device: device.to_owned(),
        session: session.clone(),
        epoch,
    });
    rt.spawn(async move {
        match replay.clone().run(started).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(user = %replay.user, device = %replay.device, replayed = n, "mailbox replayed"),
            Err(e) => {
                tracing::error!(user = %replay.user, device = %replay.device, error = %e, "mailbox replay failed");
                replay.session.end_replay(replay.epoch);
            }
        }
    });
    Some(receipt)
}

impl Replay {
    /// Returns how many deliveries it offered.
    async fn run(self: Arc<Self>, started: oneshot::Sender<Stored>) -> Result<usize, StoreError> {
        let me = self.clone();
        let start = store::blocking(move || me.start()).await;
        let _ = started.send(start.as_ref().map(|_| ()).map_err(|_| NotStored::Failed));
        let mut pos = start?;
        let mut offered = 0;
        loop {
            if !self.session.wait_room(self.epoch).await {
                return Ok(offered);
            }
            let room = self.session.room().clamp(1, PAGE_MAX);
            let me = self.clone();
            let page = store::blocking(move || me.page(pos, room)).await?;
            let read_up_to = page.read_up_to;
            if let Some(gap) = page.gap {
                self.session.enqueue(gap);
            }
            let deliveries = self.deliveries(page.entries);
            offered += deliveries.len();
            match self.session.offer(self.epoch, deliveries, read_up_to, page.caught_up) {
                Offered::Done | Offered::Stale => return Ok(offered),
                Offered::More(Some(tag)) => pos = pos.max(tag),
                Offered::More(None) => {}
            }
        }
    }

    /// Off the runtime: applies retention to the index (so the device is replayed
    /// its mailbox within bounds), then reads the device's cursor: where the replay
    /// starts. A device seen for the first time starts at the mailbox's head (clean
    /// history is what `history` is for), or before the first message deferred to
    /// this replay, which was routed to it after it subscribed.
    fn start(&self) -> Result<u64, StoreError> {
        self.writer.index_now()?;
        let (user, device) = (self.user.as_str(), self.device.as_str());
        if let Some(cursor) = self.writer.cursor(user, device)? {
            return Ok(cursor);
        }
        // The head first: a message deferred after this read is stored after it too,
        // so its id is above the head.
        let (head, _) = self.store.mailbox_head(user)?;
        let from = match self.session.deferred_from(self.epoch) {
            Some(first) => head.min(first - 1),
            None => head,
        };
        // Written (and flushed, when `sync`) before anything is replayed: a device
        // is new once, so a restart right after its first subscription resumes it
        // here rather than at the mailbox's head of then.
        self.store.advance_cursor(user, device, from)?;
        self.store.commit()?;
        Ok(from)
    }

    /// Off the runtime: at most `limit` entries after `pos`, the writer's in-flight
    /// batches once the store has none left.
    fn page(&self, pos: u64, limit: usize) -> Result<Page, StoreError> {
        // Before the store: a batch leaves the in-flight list only once stored, so
        // every message routed before this read is in one or the other.
        let in_flight = self.writer.in_flight(&self.user, pos);
        let stored = self.store.mailbox_page(&self.user, pos, limit)?;
        // Read after the entries: retention (on the index thread) may have moved on
        // meanwhile, and what it dropped that the entries do not hold is the gap.
        let (_, dropped_up_to) = self.store.mailbox_head(&self.user)?;
        let lost_to = stored
            .entries
            .first()
            .map_or(dropped_up_to, |e| dropped_up_to.min(e.id - 1));
        // What the session holds itself (its queue and in-flight window when the
        // replay began) reaches the device: the gap starts after it.
        let gone_from = self.session.held_up_to(self.epoch, lost_to).map_or(pos, |h| h.max(pos));
        let mut page = Page {
            gap: (gone_from < lost_to)
                .then(|| self.gap(gone_from + 1, lost_to))
                .flatten(),
            entries: stored.entries,
            read_up_to: stored.read_through.max(lost_to),
            caught_up: !stored.more,
        };
        if page.caught_up {
            let last = page.read_up_to;
            page.entries.extend(in_flight.into_iter().filter(|r| r.id > last));
            if page.entries.len() > limit {
                page.entries.truncate(limit);
                page.caught_up = false;
            }
            page.read_up_to = page.entries.last().map_or(last, |r| r.id.max(last));
        }
        Ok(page)
    }

    /// The event telling the device retention removed entries `from..=to`.
    fn gap(&self, from: u64, to: u64) -> Option<Delivery> {
        let topic = im::inbox_event(&self.user, event::GAP);
        let (qos, _, sub_ids) = self.session.granted(&topic)?;
        let body = json!({ "type": event::GAP, "from": from, "to": to });
        let mut msg = Message::broker(topic, Bytes::from(body.to_string()), QoS::AtLeastOnce, false);
        msg.properties_mut().content_type = Some("application/json".into());
        Some(Delivery {
            msg: Arc::new(msg),
            qos: qos.min(QoS::AtLeastOnce),
            retain: false,
            sub_ids,
            kept: None,
        })
    }

    /// The deliveries of the entries the session's subscriptions cover.
    fn deliveries(&self, entries: Vec<Replayed>) -> Vec<Delivery> {
        let prefix = im::inbox_prefix(&self.user);
        entries
            .into_iter()
            .filter_map(|Replayed { id, entry, message }| {
                let topic = format!("{prefix}{}", entry.suffix);
                let (granted, _, sub_ids) = self.session.granted(&topic)?;
                let payload = message.payload.clone();
                let msg = Message::stored(topic.into(), payload, QoS::AtLeastOnce, Arc::new(message), id);
                let sent = QoS::from_u8(entry.qos).unwrap_or(QoS::AtLeastOnce);
                Some(Delivery {
                    qos: granted.min(sent),
                    msg: Arc::new(msg),
                    retain: false,
                    sub_ids,
                    kept: None,
                })
            })
            .collect()
    }
}
