//! The connected state: one task per connection reads packets, applies the protocol
//! to the session, drains the session's queue within the inflight window, and writes
//! everything it produced in one batch per wake-up.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use natter_shared::codec::{
    reason, Ack, Connect, DecodeError, Disconnect, LastWill, Packet, Properties, Protocol, Publish, QoS, SubAck,
    Subscribe, UnsubAck, Unsubscribe,
};
use tokio::sync::oneshot;

use super::aliases::{Alias, OutAliases};
use super::{will, Context};
use crate::connection::{Connection, ConnectionError, WRITE_HIGH_WATER};
use crate::hooks::{NotStored, PublishDecision, Receipt, Stored};
use crate::model::Stage;
use crate::model::{ClientInfo, Message};
use crate::model::{Delivery, Kick, Session, SessionState, Subscription};
use crate::router::{Opened, RetainedFull};

/// An acknowledgement owed to the client, in arrival order (MQTT-4.6.0-2/3).
struct OwedAck {
    pkid: u16,
    qos: QoS,
    outcome: Outcome,
}

enum Outcome {
    /// The reason code is known.
    Ready(u8),
    /// A plugin is storing the message.
    Waiting(Receipt),
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
    ctx: Context,
    info: ClientInfo,
    session: Arc<Session>,
    generation: u64,
    kick: oneshot::Receiver<Kick>,
    protocol: Protocol,
    /// Zero: no keepalive.
    keep_alive: Duration,
    last_seen: Instant,
    /// Boxed: a will with its properties is large and most clients have none.
    will: Option<Box<LastWill>>,
    /// The keepalive timer, reset rather than recreated on each wake-up.
    keepalive_timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    session_expiry: u32,
    /// Outgoing QoS 1/2 window: min(our max_inflight, client's Receive Maximum).
    window: usize,
    /// Client's Maximum Packet Size (MQTT 5).
    client_max_packet: usize,
    /// Topic aliases set by the client (MQTT 5), index = alias - 1; allocated on first use.
    aliases: Vec<Option<Arc<str>>>,
    /// Topic aliases toward the client, when it allows them (boxed: most do not).
    out_aliases: Option<Box<OutAliases>>,
    /// Acknowledgements waiting for a plugin's receipt, and those queued behind them.
    owed: VecDeque<OwedAck>,
}

impl Handler {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        conn: Connection,
        ctx: Context,
        info: ClientInfo,
        opened: Opened,
        kick: oneshot::Receiver<Kick>,
        connect: &Connect,
        keep_alive: u16,
        session_expiry: u32,
    ) -> Handler {
        let limits = &ctx.limits;
        let client_receive_max = connect.properties.receive_maximum.unwrap_or(u16::MAX);
        let window = usize::from(limits.max_inflight.get().min(client_receive_max));
        let client_max_packet = connect
            .properties
            .maximum_packet_size
            .map_or(usize::MAX, |m| m as usize);
        Handler {
            conn,
            protocol: connect.protocol,
            keep_alive: Duration::from_secs(u64::from(keep_alive)),
            last_seen: Instant::now(),
            will: connect.will.clone().map(Box::new),
            keepalive_timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            session_expiry,
            window,
            client_max_packet,
            aliases: Vec::new(),
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
        self
    }

    /// Size of the connected-state future (the long-lived task of each connection).
    #[cfg(test)]
    pub(super) fn run_future_size() -> usize {
        fn future_size<A, F: std::future::Future>(_: &impl Fn(A) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        future_size(&Handler::run)
    }

    pub(super) async fn run(mut self) {
        let end = self.event_loop().await;
        // Boxed: the closing sequence is short-lived and would otherwise enlarge every
        // idle connection's task.
        Box::pin(self.finish(end)).await;
    }

    async fn event_loop(&mut self) -> End {
        let mut shutdown = self.ctx.shutdown.clone();
        if *shutdown.borrow() {
            return End::Shutdown;
        }
        loop {
            if let Some(end) = self.settle() {
                return end;
            }
            let more = self.drain();
            if self.conn.pending() > 0 {
                // Stay responsive to kicks and shutdown while a slow reader blocks the write.
                tokio::select! {
                    r = self.conn.flush() => if let Err(e) = r {
                        return End::Abrupt(e.into());
                    },
                    k = &mut self.kick => return End::Kicked(k.unwrap_or(Kick::TakenOver)),
                    _ = shutdown.changed() => return End::Shutdown,
                }
            }
            if more {
                continue;
            }
            let keepalive_on = !self.keep_alive.is_zero();
            if keepalive_on {
                let deadline = self.last_seen + self.keep_alive.mul_f32(1.5);
                self.keepalive_timer.as_mut().reset(deadline.into());
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
            tokio::select! {
                biased;
                k = &mut self.kick => return End::Kicked(k.unwrap_or(Kick::TakenOver)),
                _ = shutdown.changed() => return End::Shutdown,
                stored = next_receipt(&mut self.owed), if waiting => {
                    if let Some(front) = self.owed.front_mut() {
                        front.outcome = Outcome::Ready(stored_code(stored));
                    }
                }
                r = self.conn.fill(), if reading => {
                    if let Err(e) = r {
                        return End::Abrupt(e);
                    }
                    self.last_seen = Instant::now();
                    if let Some(end) = self.process_input().await {
                        return end;
                    }
                }
                _ = self.session.woken() => {}
                _ = self.keepalive_timer.as_mut(), if keepalive_on => return End::KeepAliveTimeout,
            }
        }
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

    /// Moves queued deliveries into the write buffer within the inflight window.
    /// Returns true when more could be sent right away (the buffer filled up first).
    fn drain(&mut self) -> bool {
        let now = Instant::now();
        let session = self.session.clone();
        let mut st = session.lock();
        if st.generation != self.generation {
            return false;
        }
        let more = self.drain_locked(&mut st, now);
        session.drained(&st);
        more
    }

    fn drain_locked(&mut self, st: &mut SessionState, now: Instant) -> bool {
        while let Some(d) = st.queue.pop_front() {
            if d.qos != QoS::AtMostOnce && st.inflight.len() >= self.window {
                st.queue.push_front(d);
                return false;
            }
            if d.msg.is_expired(now) {
                continue;
            }
            let pkid = if d.qos == QoS::AtMostOnce {
                0
            } else {
                st.inflight.next_pkid()
            };
            let mut publish = publish_packet(self.protocol, &d, pkid, false, now);
            if publish.encoded_len(self.protocol) > self.client_max_packet {
                // MQTT-3.1.2-25: discard, as if delivered.
                tracing::warn!(client_id = %self.info.client_id, topic = %d.msg.topic, "message exceeds the client's maximum packet size: dropped");
                continue;
            }
            alias(&mut self.out_aliases, &mut publish);
            self.conn.queue(&publish, self.protocol);
            if d.qos != QoS::AtMostOnce {
                st.inflight.push(pkid, d);
            } else if d.msg.tag.is_some() {
                // QoS 0 has no acknowledgement: written is delivered.
                self.ctx.hooks.on_acked(&self.info, &d.msg);
            }
            if self.conn.pending() >= WRITE_HIGH_WATER {
                return !st.queue.is_empty();
            }
        }
        false
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
                    Some(o) => self.ctx.hooks.on_acked(&self.info, &o.delivery.msg),
                    None => {
                        tracing::debug!(client_id = %self.info.client_id, pkid = a.pkid, "PUBACK for unknown packet id")
                    }
                }
            }
            Packet::PubRec(a) => {
                let mut st = self.session.lock();
                let reply = if a.reason >= 0x80 {
                    // MQTT 5: the receiver refused it; the flow ends here.
                    st.inflight.complete(a.pkid, Stage::Published);
                    None
                } else if st.inflight.release(a.pkid) || st.inflight.is_released(a.pkid) {
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
                    self.ctx.hooks.on_acked(&self.info, &o.delivery.msg);
                }
            }
            Packet::PubRel(a) => {
                let known = self.session.lock().incoming_qos2.remove(&a.pkid);
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

    fn on_publish(&mut self, mut p: Publish) -> Option<End> {
        if self.protocol == Protocol::V5 {
            if let Some(alias) = p.properties.topic_alias.take() {
                if self.aliases.is_empty() {
                    self.aliases = vec![None; usize::from(self.ctx.limits.max_topic_aliases)];
                }
                let Some(slot) = self.aliases.get_mut(usize::from(alias) - 1) else {
                    return Some(End::Protocol(
                        reason::TOPIC_ALIAS_INVALID,
                        "topic alias above our maximum",
                    ));
                };
                if p.topic.is_empty() {
                    match slot {
                        Some(t) => p.topic = t.clone(),
                        None => {
                            return Some(End::Protocol(
                                reason::PROTOCOL_ERROR,
                                "unknown topic alias (MQTT 5 section 3.3.2.3.4)",
                            ))
                        }
                    }
                } else {
                    *slot = Some(p.topic.clone());
                }
            }
            if !p.properties.subscription_identifiers.is_empty() {
                return Some(End::Protocol(
                    reason::PROTOCOL_ERROR,
                    "subscription identifier from a client (MQTT-3.3.4-6)",
                ));
            }
        }
        if p.qos == QoS::ExactlyOnce {
            let st = self.session.lock();
            if st.incoming_qos2.contains(&p.pkid) {
                // A re-sent QoS 2 publish we already took: acknowledge (in order, behind
                // any acknowledgement still owed), don't route again.
                drop(st);
                return self.answer(p.pkid, p.qos, Outcome::Ready(reason::SUCCESS));
            }
            if st.incoming_qos2.len() >= usize::from(self.ctx.limits.receive_maximum.get()) {
                return Some(End::Protocol(
                    reason::RECEIVE_MAXIMUM_EXCEEDED,
                    "receive maximum exceeded",
                ));
            }
        }
        let malformed_utf8 = self.protocol == Protocol::V5
            && p.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&p.payload).is_err();
        let outcome = if !malformed_utf8 {
            let msg = Message::from_client(
                p.topic,
                p.payload,
                p.qos,
                p.retain,
                p.properties,
                self.session.id,
                Instant::now(),
            );
            self.route(msg)
        } else {
            Outcome::Ready(reason::PAYLOAD_FORMAT_INVALID)
        };
        if p.qos == QoS::ExactlyOnce {
            // Known from now on, so a re-send while it is being stored is not stored twice.
            self.session.lock().incoming_qos2.insert(p.pkid);
        }
        self.answer(p.pkid, p.qos, outcome)
    }

    /// Acknowledges a publish now when nothing is owed before it, else queues the
    /// answer behind what is (acknowledgements keep the publishes' order).
    fn answer(&mut self, pkid: u16, qos: QoS, outcome: Outcome) -> Option<End> {
        match outcome {
            Outcome::Ready(code) if self.owed.is_empty() => self.acknowledge(pkid, qos, code),
            outcome => {
                self.owed.push_back(OwedAck { pkid, qos, outcome });
                None
            }
        }
    }

    /// Sends the acknowledgements whose outcome is known, in arrival order.
    fn settle(&mut self) -> Option<End> {
        while let Some(front) = self.owed.front_mut() {
            let code = match &mut front.outcome {
                Outcome::Ready(code) => *code,
                Outcome::Waiting(receipt) => match receipt.try_recv() {
                    Ok(stored) => stored_code(stored),
                    Err(tokio::sync::oneshot::error::TryRecvError::Closed) => stored_code(Err(NotStored::Stopped)),
                    Err(tokio::sync::oneshot::error::TryRecvError::Empty) => return None,
                },
            };
            let (pkid, qos) = (front.pkid, front.qos);
            self.owed.pop_front();
            if let Some(end) = self.acknowledge(pkid, qos, code) {
                return Some(end);
            }
        }
        None
    }

    fn acknowledge(&mut self, pkid: u16, qos: QoS, code: u8) -> Option<End> {
        if code == reason::UNSPECIFIED_ERROR && self.protocol == Protocol::V311 && qos != QoS::AtMostOnce {
            // 3.1.1 has no negative acknowledgement: close rather than falsely acknowledge.
            return Some(End::Protocol(code, "the message could not be stored"));
        }
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(Packet::PubAck(Ack::with_reason(pkid, code))),
            QoS::ExactlyOnce => {
                if code >= 0x80 && self.protocol == Protocol::V5 {
                    // Refused: the flow ends with this PUBREC.
                    self.session.lock().incoming_qos2.remove(&pkid);
                }
                self.send(Packet::PubRec(Ack::with_reason(pkid, code)));
            }
        }
        None
    }

    /// Hands a client's message to the plugins, and routes it when they say so: the
    /// MQTT 5 reason code, or the receipt of a plugin that took it over.
    fn route(&self, msg: Message) -> Outcome {
        let code = match self.ctx.hooks.on_publish(&self.info, &msg) {
            PublishDecision::Route => match self.ctx.router.publish(Arc::new(msg)) {
                Ok(0) => reason::NO_MATCHING_SUBSCRIBERS,
                Ok(_) => reason::SUCCESS,
                Err(RetainedFull) => {
                    tracing::warn!(client_id = %self.info.client_id, "retained store full: message not retained");
                    reason::QUOTA_EXCEEDED
                }
            },
            PublishDecision::TakenOver(receipt) => return Outcome::Waiting(receipt),
            PublishDecision::Refuse | PublishDecision::Abstain => {
                tracing::info!(
                    client_id = %self.info.client_id,
                    user = self.info.username.as_deref().unwrap_or(""),
                    topic = %msg.topic,
                    "publish refused by authorization"
                );
                reason::NOT_AUTHORIZED
            }
        };
        Outcome::Ready(code)
    }

    fn on_subscribe(&mut self, s: Subscribe) {
        let v5 = self.protocol == Protocol::V5;
        let failure = |code: u8| if v5 { code } else { reason::v3::SUBACK_FAILURE };
        let sub_id = s.properties.subscription_identifiers.first().copied();
        let max_subs = self.ctx.limits.max_subscriptions_per_session.get();
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        let mut new_subs = Vec::new();
        for f in s.filters {
            let (count, exists) = {
                let st = self.session.lock();
                (st.subscriptions.len(), st.subscriptions.contains_key(&f.filter))
            };
            if !exists && count >= max_subs {
                tracing::warn!(client_id = %self.info.client_id, filter = %f.filter, "subscription limit reached");
                codes.push(failure(reason::QUOTA_EXCEEDED));
                continue;
            }
            if !self.ctx.hooks.authorize_subscribe(&self.info, &f.filter) {
                tracing::info!(
                    client_id = %self.info.client_id,
                    user = self.info.username.as_deref().unwrap_or(""),
                    filter = %f.filter,
                    "subscribe refused by authorization"
                );
                codes.push(failure(reason::NOT_AUTHORIZED));
                continue;
            }
            let sub = Subscription {
                options: f.options,
                id: sub_id,
            };
            let subscribed = self.ctx.router.subscribe(&self.session, &f.filter, sub);
            retained.extend(subscribed.retained.into_iter().map(|m| (m, sub)));
            codes.push(f.options.qos as u8);
            new_subs.push((f.filter, sub, !exists));
        }
        self.send(Packet::SubAck(SubAck {
            pkid: s.pkid,
            properties: Properties::default(),
            codes,
        }));
        for (filter, sub, new) in new_subs {
            self.ctx
                .hooks
                .on_subscribed(&self.info, &self.session, &filter, sub, new);
        }
        for (msg, sub) in retained {
            let qos = msg.qos.min(sub.options.qos);
            self.session.enqueue(Delivery {
                msg,
                qos,
                retain: true,
                sub_ids: sub.id.into_iter().collect(),
            });
        }
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) {
        let codes = u
            .filters
            .iter()
            .map(|f| {
                if self.ctx.router.unsubscribe(&self.session, f) {
                    reason::SUCCESS
                } else {
                    reason::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
        self.send(Packet::UnsubAck(UnsubAck {
            pkid: u.pkid,
            properties: Properties::default(),
            codes,
        }));
    }

    fn on_disconnect(&mut self, d: Disconnect) -> Option<End> {
        if let Some(expiry) = d.properties.session_expiry_interval {
            if self.session_expiry == 0 && expiry != 0 {
                return Some(End::Protocol(
                    reason::PROTOCOL_ERROR,
                    "session expiry set on DISCONNECT after 0 (MQTT-3.14.2-2)",
                ));
            }
            self.session_expiry = expiry.min(self.ctx.limits.max_session_expiry_secs);
        }
        Some(End::ClientDisconnect {
            with_will: d.reason == reason::DISCONNECT_WITH_WILL,
        })
    }

    async fn finish(mut self, end: End) {
        let code = match &end {
            End::Kicked(Kick::TakenOver) => Some(reason::SESSION_TAKEN_OVER),
            End::Kicked(Kick::SlowConsumer) => Some(reason::QUOTA_EXCEEDED),
            End::Kicked(Kick::Administrative) => Some(reason::ADMINISTRATIVE_ACTION),
            End::Shutdown => Some(reason::SERVER_SHUTTING_DOWN),
            End::KeepAliveTimeout => Some(reason::KEEP_ALIVE_TIMEOUT),
            End::Malformed(e) => Some(e.reason_code()),
            End::Protocol(code, _) => Some(*code),
            End::ClientDisconnect { .. } | End::Abrupt(_) => None,
        };
        match &end {
            End::ClientDisconnect { .. } => tracing::info!(client_id = %self.info.client_id, "client disconnected"),
            End::Malformed(e) => {
                tracing::warn!(client_id = %self.info.client_id, addr = %self.info.addr, error = %e, "closed: malformed packet")
            }
            End::Protocol(_, what) => {
                tracing::warn!(client_id = %self.info.client_id, addr = %self.info.addr, violation = what, "closed: protocol error")
            }
            End::Abrupt(why) => tracing::info!(client_id = %self.info.client_id, reason = %why, "connection lost"),
            other => tracing::info!(client_id = %self.info.client_id, reason = ?other, "connection closed"),
        }
        if let (Some(code), Protocol::V5) = (code, self.protocol) {
            if self.conn.is_clean() {
                self.conn
                    .queue(&Packet::Disconnect(Disconnect::with_reason(code)), self.protocol);
            }
        }
        let clean = self.conn.is_clean();
        if clean {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.conn.half_close()).await;
        }
        self.ctx.hooks.on_disconnected(&self.info);

        let will = match end {
            End::ClientDisconnect { with_will: false } => None,
            _ => self.will.take().map(|w| *w),
        };
        let attached = {
            let mut st = self.session.lock();
            if st.generation == self.generation {
                st.kick = None;
                self.session.set_online(false);
                true
            } else {
                false
            }
        };
        will::after_disconnect(will::Ended {
            ctx: self.ctx.clone(),
            info: self.info.clone(),
            session: self.session.clone(),
            generation: self.generation,
            attached,
            will,
            session_expiry: self.session_expiry,
            shutting_down: matches!(end, End::Shutdown),
        });
        // Last: the session is detached and the will is on its way; the socket stays
        // open a moment so the client reads why it closed (see `Connection::linger`).
        // Not while the broker stops: that waits for every connection.
        if clean && !matches!(end, End::Shutdown) {
            self.conn.linger().await;
        }
    }
}

/// Resolves with the front acknowledgement's receipt (the caller checked it waits).
async fn next_receipt(owed: &mut VecDeque<OwedAck>) -> Stored {
    match owed.front_mut() {
        Some(OwedAck {
            outcome: Outcome::Waiting(receipt),
            ..
        }) => receipt.await.unwrap_or(Err(NotStored::Stopped)),
        _ => std::future::pending().await,
    }
}

fn stored_code(stored: Stored) -> u8 {
    match stored {
        Ok(()) => reason::SUCCESS,
        Err(why) => {
            tracing::warn!(%why, "a message taken over was not stored");
            reason::UNSPECIFIED_ERROR
        }
    }
}

/// Gives a PUBLISH its topic alias, when the client takes them.
fn alias(aliases: &mut Option<Box<OutAliases>>, packet: &mut Packet) {
    static EMPTY: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));
    let (Some(aliases), Packet::Publish(p)) = (aliases, packet) else {
        return;
    };
    match aliases.alias(&p.topic) {
        Alias::Known(a) => {
            p.properties.topic_alias = Some(a);
            p.topic = EMPTY.clone();
        }
        Alias::Set(a) => p.properties.topic_alias = Some(a),
    }
}

/// The PUBLISH for one delivery, with MQTT 5 properties when the client speaks 5.
fn publish_packet(protocol: Protocol, d: &Delivery, pkid: u16, dup: bool, now: Instant) -> Packet {
    let properties = match protocol {
        Protocol::V5 => {
            let mut p = d.msg.v5_properties();
            p.subscription_identifiers.clone_from(&d.sub_ids);
            p.message_expiry_interval = d.msg.remaining_expiry(now);
            p
        }
        Protocol::V311 => Properties::default(),
    };
    Packet::Publish(Publish {
        dup,
        qos: d.qos,
        retain: d.retain,
        topic: d.msg.topic.clone(),
        pkid,
        properties,
        payload: d.msg.payload.clone(),
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn delivery() -> Delivery {
        let mut msg = Message::broker("t/1", Bytes::from_static(b"hi"), QoS::ExactlyOnce, false);
        msg.properties.content_type = Some("text/plain".into());
        msg.properties.user_properties = vec![("from".into(), "alice".into())];
        Delivery {
            msg: Arc::new(msg),
            qos: QoS::AtLeastOnce,
            retain: true,
            sub_ids: vec![7, 9],
        }
    }

    #[test]
    fn a_v5_publish_carries_properties_subscription_ids_and_the_expiry_left() {
        let now = Instant::now();
        let mut d = delivery();
        Arc::get_mut(&mut d.msg).unwrap().expires_at = Some(now + Duration::from_millis(10_500));
        let Packet::Publish(p) = publish_packet(Protocol::V5, &d, 42, true, now) else {
            panic!("not a PUBLISH");
        };
        assert_eq!((p.pkid, p.dup, p.qos, p.retain), (42, true, QoS::AtLeastOnce, true));
        assert_eq!((&*p.topic, &p.payload[..]), ("t/1", &b"hi"[..]));
        assert_eq!(p.properties.subscription_identifiers, [7, 9]);
        assert_eq!(p.properties.content_type.as_deref(), Some("text/plain"));
        assert_eq!(p.properties.user_properties.len(), 1);
        assert_eq!(p.properties.message_expiry_interval, Some(11), "rounded up");
        let later = publish_packet(Protocol::V5, &d, 42, false, now + Duration::from_secs(20));
        let Packet::Publish(p) = later else { panic!() };
        assert_eq!(p.properties.message_expiry_interval, Some(0));
    }

    #[test]
    fn a_v311_publish_has_no_properties() {
        let Packet::Publish(p) = publish_packet(Protocol::V311, &delivery(), 1, false, Instant::now()) else {
            panic!("not a PUBLISH");
        };
        assert_eq!(p.properties, Properties::default());
        assert_eq!((p.pkid, p.dup, p.qos, p.retain), (1, false, QoS::AtLeastOnce, true));
    }

    #[test]
    fn a_storage_outcome_is_success_or_unspecified_error() {
        assert_eq!(stored_code(Ok(())), reason::SUCCESS);
        assert_eq!(stored_code(Err(NotStored::Failed)), reason::UNSPECIFIED_ERROR);
        assert_eq!(stored_code(Err(NotStored::Stopped)), reason::UNSPECIFIED_ERROR);
    }

    #[tokio::test]
    async fn acknowledgements_wait_for_the_front_receipt_only() {
        let (tx, rx) = oneshot::channel();
        let mut owed = VecDeque::from([OwedAck {
            pkid: 1,
            qos: QoS::AtLeastOnce,
            outcome: Outcome::Waiting(rx),
        }]);
        tx.send(Ok(())).unwrap();
        assert_eq!(next_receipt(&mut owed).await, Ok(()));
        // A plugin that drops its receipt without answering: not stored.
        let (tx, rx) = oneshot::channel::<Stored>();
        owed[0].outcome = Outcome::Waiting(rx);
        drop(tx);
        assert_eq!(next_receipt(&mut owed).await, Err(NotStored::Stopped));
        // Nothing waiting: never resolves.
        owed[0].outcome = Outcome::Ready(0);
        let never = tokio::time::timeout(Duration::from_millis(20), next_receipt(&mut owed)).await;
        assert!(never.is_err());
    }
}
