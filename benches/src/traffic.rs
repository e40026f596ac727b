//! The per-connection traffic loop shared by the messaging scenarios: publish at a
//! pace or within an inflight window, acknowledge what arrives, and record end-to-end
//! latency (the send time travels in the payload), losses and duplicates.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use natter_shared::codec::{Ack, Packet, Properties, Publish, QoS};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::client::Client;

/// Payload header: sender id (4), sequence (8), send time in ns since the run's start (8).
pub const HEADER: usize = 20;

/// End-to-end progress per sender, shared by every connection of the run: receivers
/// count what they got from each sender and wake it, so an unpaced sender keeps at
/// most `window` messages per recipient between its publish and their delivery. This
/// measures what the broker sustains, rather than how fast its queues overflow.
pub struct Progress {
    delivered: Vec<AtomicU64>,
    wake: Vec<Notify>,
    /// Deliveries owed for what the broker accepted (acknowledged, or sent at QoS 0),
    /// and those made (without duplicates): the run is over when they meet and every
    /// sender is done, not when the receivers merely went quiet.
    owed: AtomicU64,
    made: AtomicU64,
    senders_left: std::sync::atomic::AtomicUsize,
}

impl Progress {
    pub fn new(senders: usize) -> Arc<Progress> {
        Arc::new(Progress {
            delivered: (0..senders).map(|_| AtomicU64::new(0)).collect(),
            wake: (0..senders).map(|_| Notify::new()).collect(),
            owed: AtomicU64::new(0),
            made: AtomicU64::new(0),
            senders_left: std::sync::atomic::AtomicUsize::new(senders),
        })
    }

    fn delivered(&self, sender: u32) {
        if let Some(d) = self.delivered.get(sender as usize) {
            d.fetch_add(1, Ordering::Relaxed);
            self.wake[sender as usize].notify_one();
        }
    }

    /// Every sender is done and everything it was owed has arrived.
    fn settled(&self) -> bool {
        self.senders_left.load(Ordering::SeqCst) == 0
            && self.made.load(Ordering::SeqCst) >= self.owed.load(Ordering::SeqCst)
    }
}

/// What one connection sends.
#[derive(Clone)]
pub struct Sender {
    pub topic: Arc<str>,
    pub id: u32,
    pub qos: QoS,
    /// Time between messages; `None` sends as fast as the window allows.
    pub interval: Option<Duration>,
    /// Unacknowledged publishes allowed (QoS 1/2).
    pub window: usize,
    pub payload: usize,
    /// Recipients of each message.
    pub fanout: u64,
    pub progress: Arc<Progress>,
}

impl Sender {
    /// Room to send: broker acknowledgements within the window, and when unpaced,
    /// deliveries within the window too.
    fn room(&self, inflight: usize, sent: u64) -> bool {
        if self.qos != QoS::AtMostOnce && inflight >= self.window {
            return false;
        }
        if self.interval.is_none() {
            let delivered = self.progress.delivered[self.id as usize].load(Ordering::Relaxed);
            return sent * self.fanout < delivered + self.window as u64 * self.fanout;
        }
        true
    }
}

/// What one connection saw.
pub struct Stats {
    pub sent: u64,
    pub acked: u64,
    pub received: u64,
    pub dups: u64,
    pub latency_us: Histogram<u64>,
}

pub fn histogram() -> Histogram<u64> {
    // 1 us to 60 s, 3 significant digits; the bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|e| panic!("histogram bounds: {e}"))
}

impl Stats {
    fn new() -> Stats {
        Stats {
            sent: 0,
            acked: 0,
            received: 0,
            dups: 0,
            latency_us: histogram(),
        }
    }

    pub fn merge(&mut self, o: &Stats) {
        self.sent += o.sent;
        self.acked += o.acked;
        self.received += o.received;
        self.dups += o.dups;
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency_us.add(&o.latency_us);
    }
}

fn payload(sender: u32, seq: u64, ts: u64, size: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(size.max(HEADER));
    b.put_u32(sender);
    b.put_u64(seq);
    b.put_u64(ts);
    b.resize(size.max(HEADER), b'.');
    b.freeze()
}

fn parse(payload: &[u8]) -> Option<(u32, u64, u64)> {
    let h = payload.get(..HEADER)?;
    let sender = u32::from_be_bytes(h[0..4].try_into().ok()?);
    let seq = u64::from_be_bytes(h[4..12].try_into().ok()?);
    let ts = u64::from_be_bytes(h[12..20].try_into().ok()?);
    Some((sender, seq, ts))
}

/// How long a receiver with nothing owed in sight waits for more before it ends.
const QUIET: Duration = Duration::from_secs(2);

/// Runs one connection until `stop` (sending) and then drains until `drain_until`, or
/// until every delivery owed has arrived (or nothing came for [`QUIET`]).
///
/// # Errors
/// Connection failures.
pub async fn run(
    mut c: Client,
    sender: Option<Sender>,
    progress: Arc<Progress>,
    start: Instant,
    stop: Instant,
    drain_until: Instant,
) -> Result<Stats> {
    let mut st = Stats::new();
    let mut seq = 0u64;
    let mut inflight = 0usize;
    let mut next_pkid = 0u16;
    let mut next_send = Instant::now();
    let mut seen: HashMap<u32, u64> = HashMap::new();
    let mut last_activity = Instant::now();
    let mut sender_done = false;
    loop {
        let now = Instant::now();
        let sending = now < stop;
        if let (true, Some(s)) = (sending, &sender) {
            let mut burst = 0;
            while s.room(inflight, st.sent) && burst < 256 && s.interval.is_none_or(|_| next_send <= now) {
                seq += 1;
                let pkid = if s.qos == QoS::AtMostOnce {
                    0
                } else {
                    next_pkid = next_pkid.wrapping_add(1).max(1);
                    inflight += 1;
                    next_pkid
                };
                let ts = now.duration_since(start).as_nanos() as u64;
                c.queue(&Packet::Publish(Publish {
                    dup: false,
                    qos: s.qos,
                    retain: false,
                    topic: s.topic.clone(),
                    pkid,
                    properties: Properties::default(),
                    payload: payload(s.id, seq, ts, s.payload),
                }));
                st.sent += 1;
                if s.qos == QoS::AtMostOnce {
                    progress.owed.fetch_add(s.fanout, Ordering::SeqCst);
                }
                burst += 1;
                if let Some(iv) = s.interval {
                    next_send += iv;
                    // After a stall, do not burst to catch up more than a little.
                    if next_send + iv * 8 < now {
                        next_send = now;
                    }
                }
            }
        }
        c.flush().await?;
        if !sending && inflight == 0 && !sender_done {
            sender_done = true;
            if sender.is_some() {
                progress.senders_left.fetch_sub(1, Ordering::SeqCst);
            }
        }
        // Quiet for long is the fallback for a lossy run (QoS 0), whose deliveries
        // never meet what was owed; a stall of the broker under load is not the end.
        let quiet = now.duration_since(last_activity) > QUIET;
        if now >= drain_until || (sender_done && (progress.settled() || quiet)) {
            return Ok(st);
        }
        let can_send = sending && sender.as_ref().is_some_and(|s| s.room(inflight, st.sent));
        let wake = match (&sender, can_send) {
            (Some(s), true) if s.interval.is_some() => next_send.min(stop),
            (Some(_), true) => now,
            _ if sending => stop,
            _ => (last_activity + QUIET + Duration::from_millis(10))
                .min(drain_until)
                .min(now + Duration::from_millis(20)),
        };
        tokio::select! {
            r = c.fill() => {
                r?;
                last_activity = Instant::now();
                let received_at = last_activity.duration_since(start).as_nanos() as u64;
                while let Some(p) = c.buffered()? {
                    match p {
                        Packet::Publish(p) => {
                            st.received += 1;
                            if let Some((from, s, ts)) = parse(&p.payload) {
                                progress.delivered(from);
                                let expected = seen.entry(from).or_insert(0);
                                if s <= *expected {
                                    st.dups += 1;
                                } else {
                                    *expected = s;
                                    progress.made.fetch_add(1, Ordering::SeqCst);
                                    let _ = st.latency_us.record((received_at.saturating_sub(ts) / 1000).max(1));
                                }
                            }
                            match p.qos {
                                QoS::AtMostOnce => {}
                                QoS::AtLeastOnce => c.queue(&Packet::PubAck(Ack::new(p.pkid))),
                                QoS::ExactlyOnce => c.queue(&Packet::PubRec(Ack::new(p.pkid))),
                            }
                        }
                        Packet::PubRel(a) => c.queue(&Packet::PubComp(Ack::new(a.pkid))),
                        Packet::PubAck(_) | Packet::PubComp(_) => {
                            inflight = inflight.saturating_sub(1);
                            st.acked += 1;
                            if let Some(s) = &sender {
                                progress.owed.fetch_add(s.fanout, Ordering::SeqCst);
                            }
                        }
                        Packet::PubRec(a) => c.queue(&Packet::PubRel(Ack::new(a.pkid))),
                        _ => {}
                    }
                }
            }
            _ = tokio::time::sleep_until(wake), if wake > now => {}
            _ = async {
                match &sender {
                    Some(s) => s.progress.wake[s.id as usize].notified().await,
                    None => std::future::pending().await,
                }
            }, if sending && !can_send => {}
            _ = tokio::task::yield_now(), if wake <= now => {}
        }
    }
}
