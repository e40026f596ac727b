//! The connected state: one task per connection reads packets, applies the protocol
//! to the session, drains the session's queue within the inflight window, and writes
//! everything it produced in one batch per wake-up.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use natter_shared::codec::{
    reason, Ack, Connect, DecodeError, Disconnect, LastWill, Packet, Properties, Protocol, Publish, QoS, SubAck,
    Subscribe, UnsubAck, Unsubscribe,
};
use tokio::sync::oneshot;

use super::aliases::{Alias, InAliases, OutAliases};
use super::keepalive::{KeepaliveWheel, Tick};
use super::persist::Keeping;
use super::{will, Context};
use crate::connection::{Connection, ConnectionError, WRITE_HIGH_WATER};
use crate::hooks::{NotStored, PublishDecision, Receipt, Stored};
use crate::model::Stage;
use crate::model::{ClientInfo, Message};
use crate::model::{Delivery, Kick, Session, SessionState, Subscription};
use crate::router::{Opened, RetainedFull};
use inbound::{poll_front_receipt, stored_code};
use outbound::{alias, publish_packet};

/// An acknowledgement owed to the client, in arrival order (MQTT-4.6.0-2/3).
struct OwedAck {
    ack: Owed,
    outcome: Outcome,
}

/// What is owed.
enum Owed {
    /// PUBACK or PUBREC for a client's publish.
    Publish { pkid: u16, qos: QoS },
    /// A SUBACK waiting for a plugin to make the subscription's state durable.
    Subscribe(Box<SubAck>),
    /// The PUBREL of a stored message's QoS 2 flow, waiting for the release to be on
    /// disk; then the message counts as delivered (`msg` to the plugins).
    Release { pkid: u16, msg: Arc<Message> },
    /// Nothing to send: the acknowledgements behind it wait for its write (the packet
    /// id of a QoS 2 publish from a persistent session's client).
    Write,
}

enum Outcome {
    /// The reason code is known.
    Ready(u8),
    /// Refused by authorization (0x87), with the reason for people.
    Refused(&'static str),
    /// A plugin is storing the message.
    Waiting(Receipt),
}

/// What ended a wait of the event loop (see [`Handler::poll_wait`]).
enum Woke {
    Kicked(Result<Kick, oneshot::error::RecvError>),
    Stored(Stored),
    Filled(Result<(), ConnectionError>),
    /// Deliveries, or the keepalive wheel: the loop looks at both.
    Delivery,
}

/// Why the connection ended.
#[derive(Debug)]
pub(super) enum End {
    /// DISCONNECT from the client; `with_will` for MQTT 5 reason 0x04.
    ClientDisconnect {
        with_will: bool,
    },
    /// The socket closed or failed without DISCONNECT.
    Abrupt(ConnectionError),
    Kicked(Kick),
    Shutdown,
    KeepAliveTimeout,
    Malformed(DecodeError),
    /// A protocol violation, with the MQTT 5 reason code and what was violated.
    Protocol(u8, &'static str),
}

pub(super) struct Handler {
    conn: Connection,
    ctx: Arc<Context>,
    info: ClientInfo,
    session: Arc<Session>,
    generation: u64,
    kick: oneshot::Receiver<Kick>,
    protocol: Protocol,
    /// Seconds; zero: no keepalive. (The fields are as narrow as the protocol's: every
    /// connection's task holds them.)
    keep_alive: u16,
    /// Boxed: a will with its properties is large and most clients have none.
    will: Option<Box<LastWill>>,
    /// When the client was last heard from, and the deadline the keepalive wheel
    /// wakes this connection at (see [`super::keepalive`]).
    last_input: Tick,
    armed: Tick,
    session_expiry: u32,
    /// Outgoing QoS 1/2 window: min(our max_inflight, client's Receive Maximum).
    window: u16,
    /// Client's Maximum Packet Size (MQTT 5).
    client_max_packet: u32,
    /// Topic aliases set by the client (MQTT 5), allocated on first use.
    aliases: Option<Box<InAliases>>,
    /// Topic aliases toward the client, when it allows them (boxed: most do not).
    out_aliases: Option<Box<OutAliases>>,
    /// Acknowledgements waiting for a plugin's receipt, and those queued behind them.
    owed: VecDeque<OwedAck>,
}

impl Handler {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        conn: Connection,
        ctx: Arc<Context>,
        info: ClientInfo,
        opened: Opened,
        kick: oneshot::Receiver<Kick>,
        connect: &Connect,
        keep_alive: u16,
        session_expiry: u32,
    ) -> Handler {
        let limits = &ctx.limits;
        let client_receive_max = connect.properties.receive_maximum.unwrap_or(u16::MAX);
        let window = limits.max_inflight.get().min(client_receive_max);
        let client_max_packet = connect.properties.maximum_packet_size.unwrap_or(u32::MAX);
        Handler {
            conn,
            protocol: connect.protocol,
            keep_alive,
            will: connect.will.clone().map(Box::new),
            last_input: ctx.keepalive.now(),
            armed: 0,
            session_expiry,
            window,
            client_max_packet,
            aliases: None,
            out_aliases: OutAliases::new(connect.properties.topic_alias_maximum, limits.max_topic_aliases_out),
            owed: VecDeque::new(),
            ctx,
            info,
            session: opened.session,
            generation: opened.generation,
            kick,
        }
    }

    /// Queues the CONNACK, then re-sends what was in flight when the session's previous
    /// connection ended (PUBLISH with DUP, or PUBREL), in the original order.
    pub(super) fn with_connack(mut self, connack: Packet, present: bool) -> Handler {
        self.conn.queue(&connack, self.protocol);
        let now = Instant::now();
        let st = self.session.lock();
        for o in st.inflight.iter() {
            let packet = match o.stage {
                Stage::Published => {
                    let mut p = publish_packet(self.protocol, &o.delivery, o.pkid, true, now);
                    alias(&mut self.out_aliases, &mut p);
                    p
                }
                Stage::Released => Packet::PubRel(Ack::new(o.pkid)),
            };
            self.conn.queue(&packet, self.protocol);
        }
        drop(st);
        self.ctx.hooks.on_connected(&self.info, &self.session, present);
        self.session.end_hold();
        self
    }

    /// Size of the connected-state future (the long-lived task of each connection).
    #[cfg(test)]
    pub(super) fn run_future_size<G>() -> usize {
        fn future_size<A, B, F: std::future::Future>(_: &impl Fn(A, B) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        future_size(&|h: Handler, guard: G| h.run(guard))
    }

    /// Runs the connected state to its end; `guard` (the connection's permit, the
    /// shutdown tracker) is dropped last. Spawned as it is (not inside another async
    /// block, which would hold a second copy of the Handler it moved from).
    ///
    /// Not an `async fn`: that would move the Handler from its argument into a local
    /// of its body, and the future would hold both (the block uses it in place).
    #[allow(clippy::manual_async_fn, reason = "an async fn holds the Handler twice")]
    pub(super) fn run<G>(mut self, guard: G) -> impl Future<Output = ()> {
        async move {
            let end = self.event_loop().await;
            // Boxed: the closing sequence is short-lived and would otherwise enlarge
            // every idle connection's task.
            Box::pin(self.finish(end)).await;
            drop(guard);
        }
    }

    async fn event_loop(&mut self) -> End {
        // Set before the broker kicks every session (see `Router::kick_all`): a
        // connection that attached after the kicks sees it here.
        if *self.ctx.shutdown.borrow() {
            return End::Shutdown;
        }
        loop {
            if let Some(end) = self.settle() {
                return end;
            }
            let more = self.drain();
            if self.conn.pending() > 0 {
                // Stay responsive to kicks (shutdown included) while a slow reader
                // blocks the write; polled by hand so the wait holds no future.
                let flushed = std::future::poll_fn(|cx| {
                    if let Poll::Ready(k) = Pin::new(&mut self.kick).poll(cx) {
                        return Poll::Ready(Err(kicked(k)));
                    }
                    self.conn.poll_flush(cx).map(|r| r.map_err(|e| End::Abrupt(e.into())))
                })
                .await;
                if let Err(end) = flushed {
                    return end;
                }
            }
            if more {
                continue;
            }
            if self.keep_alive != 0 {
                let now = self.ctx.keepalive.now();
                let deadline = KeepaliveWheel::deadline(self.last_input, self.keep_alive);
                if now >= deadline {
                    return End::KeepAliveTimeout;
                }
                // The deadline asked for has come (or none was): ask for the current one.
                if now >= self.armed {
                    self.armed = deadline;
                    self.ctx.keepalive.arm(deadline, &self.session);
                }
            }
            self.conn.release_idle();
            // Too many messages waiting to be stored: stop reading (TCP pushes back).
            let reading = self.owed.len() < usize::from(self.ctx.limits.receive_maximum.get());
            let waiting = matches!(
                self.owed.front(),
                Some(OwedAck {
                    outcome: Outcome::Waiting(_),
                    ..
                })
            );
            let filled = match std::future::poll_fn(|cx| self.poll_wait(cx, reading, waiting)).await {
                Woke::Kicked(k) => return kicked(k),
                Woke::Stored(stored) => {
                    if let Some(front) = self.owed.front_mut() {
                        front.outcome = Outcome::Ready(stored_code(stored));
                    }
                    false
                }
                Woke::Filled(Err(e)) => return End::Abrupt(e),
                Woke::Filled(Ok(())) => true,
                Woke::Delivery => false,
            };
            if filled {
                if self.keep_alive != 0 {
                    self.last_input = self.ctx.keepalive.now();
                }
                if let Some(end) = self.process_input().await {
                    return end;
                }
            }
        }
    }

    /// Waits for the next thing to do, in this order: a kick, the receipt of the
    /// oldest message being stored (if `waiting`), input (if `reading`), deliveries
    /// (the keepalive wheel wakes the same way). Polled by hand rather than with `select!`: the wait
    /// then holds no futures, only wakers registered with what it polls, and an idle
    /// connection's task is as small as its `Handler`.
    fn poll_wait(&mut self, cx: &mut TaskContext<'_>, reading: bool, waiting: bool) -> Poll<Woke> {
        if let Poll::Ready(k) = Pin::new(&mut self.kick).poll(cx) {
            return Poll::Ready(Woke::Kicked(k));
        }
        if waiting {
            if let Poll::Ready(stored) = poll_front_receipt(&mut self.owed, cx) {
                return Poll::Ready(Woke::Stored(stored));
            }
        }
        if reading {
            if let Poll::Ready(r) = self.conn.poll_fill(cx) {
                return Poll::Ready(Woke::Filled(r));
            }
        }
        if self.session.poll_woken(cx).is_ready() {
            return Poll::Ready(Woke::Delivery);
        }
        Poll::Pending
    }

    /// Handles every whole packet buffered.
    async fn process_input(&mut self) -> Option<End> {
        loop {
            match self.conn.next_packet(self.protocol) {
                Ok(Some(packet)) => {
                    if let Some(end) = self.handle(packet) {
                        return Some(end);
                    }
                }
                Ok(None) => return None,
                Err(e) => return Some(End::Malformed(e)),
            }
            if self.conn.pending() >= WRITE_HIGH_WATER {
                if let Err(e) = self.conn.flush().await {
                    return Some(End::Abrupt(e.into()));
                }
            }
        }
    }

    /// A kept delivery is done with: its record goes.
    fn forget_kept(&self, d: &Delivery) {
        if let Some(seq) = d.kept {
            self.ctx.persist.forget_delivery(&self.session.key, seq);
        }
    }

    fn send(&mut self, packet: Packet) {
        self.conn.queue(&packet, self.protocol);
    }

    fn handle(&mut self, packet: Packet) -> Option<End> {
        match packet {
            Packet::Publish(p) => return self.on_publish(p),
            Packet::PubAck(a) => {
                let done = self.session.lock().inflight.complete(a.pkid, Stage::Published);
                match done {
                    Some(o) => {
                        self.forget_kept(&o.delivery);
                        self.ctx.hooks.on_acked(&self.info, &o.delivery.msg);
                    }
                    None => {
                        tracing::debug!(client_id = %self.info.client_id, pkid = a.pkid, "PUBACK for unknown packet id")
                    }
                }
            }
            Packet::PubRec(a) => {
                let mut st = self.session.lock();
                let reply = if a.reason >= 0x80 {
                    // MQTT 5: the receiver refused it; the flow ends here.
                    let refused = st.inflight.complete(a.pkid, Stage::Published);
                    drop(st);
                    if let Some(o) = refused {
                        self.forget_kept(&o.delivery);
                    }
                    return None;
                } else if let Some(o) = st.inflight.release(a.pkid) {
                    let delivery = o.delivery.clone();
                    drop(st);
                    return self.release(a.pkid, delivery);
                } else if st.inflight.is_released(a.pkid) {
                    Some(Ack::new(a.pkid))
                } else {
                    Some(Ack::with_reason(a.pkid, reason::PACKET_IDENTIFIER_NOT_FOUND))
                };
                drop(st);
                if let Some(ack) = reply {
                    self.send(Packet::PubRel(ack));
                }
            }
            Packet::PubComp(a) => {
                let done = self.session.lock().inflight.complete(a.pkid, Stage::Released);
                if let Some(o) = done {
                    self.forget_kept(&o.delivery);
                    self.completed(a.pkid, &o.delivery.msg);
                }
            }
            Packet::PubRel(a) => {
                let known = self.session.lock().incoming_qos2.remove(a.pkid);
                if known && self.info.persistent {
                    self.ctx.persist.relieved(&self.session.key, a.pkid);
                }
                let code = if known {
                    reason::SUCCESS
                } else {
                    reason::PACKET_IDENTIFIER_NOT_FOUND
                };
                self.send(Packet::PubComp(Ack::with_reason(a.pkid, code)));
            }
            Packet::Subscribe(s) => self.on_subscribe(s),
            Packet::Unsubscribe(u) => self.on_unsubscribe(u),
            Packet::PingReq => self.send(Packet::PingResp),
            Packet::Disconnect(d) => return self.on_disconnect(d),
            Packet::Connect(_) => return Some(End::Protocol(reason::PROTOCOL_ERROR, "second CONNECT (MQTT-3.1.0-2)")),
            Packet::Auth(_) => {
                return Some(End::Protocol(
                    reason::PROTOCOL_ERROR,
                    "AUTH without extended authentication (MQTT-4.12.0-1)",
                ))
            }
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                return Some(End::Protocol(
                    reason::PROTOCOL_ERROR,
                    "server-to-client packet sent by a client",
                ))
            }
        }
        None
    }
}

/// How a kick ends the connection (a dropped sender: the session was taken over).
fn kicked(k: Result<Kick, oneshot::error::RecvError>) -> End {
    match k.unwrap_or(Kick::TakenOver) {
        Kick::Shutdown => End::Shutdown,
        other => End::Kicked(other),
    }
}

mod close;
mod inbound;
mod outbound;
mod subscribe;
#[cfg(test)]
mod tests;
