//! Deliveries to the client: the session's queue drained within the inflight window
//! into PUBLISH packets, with MQTT 5 properties and topic aliases.

use super::*;

impl Handler {
    /// Moves queued deliveries into the write buffer within the inflight window.
    /// Returns true when more could be sent right away (the buffer filled up first).
    pub(super) fn drain(&mut self) -> bool {
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

    pub(super) fn drain_locked(&mut self, st: &mut SessionState, now: Instant) -> bool {
        while let Some(d) = st.queue.pop_front() {
            if d.qos != QoS::AtMostOnce && st.inflight.len() >= usize::from(self.window) {
                st.queue.push_front(d);
                return false;
            }
            if d.msg.is_expired(now) {
                self.forget_kept(&d);
                continue;
            }
            let pkid = match (d.qos, d.msg.tag) {
                (QoS::AtMostOnce, _) => 0,
                (QoS::ExactlyOnce, Some(tag)) => {
                    if st.inflight.has_released(tag) {
                        // Released before a restart: the client has it.
                        continue;
                    }
                    let durable = self.ctx.router.durable();
                    if !durable.covers(tag) && durable.wait(tag, &self.session) {
                        // Not on disk yet: it, and what is queued behind it (in order),
                        // wait; the store's progress wakes this connection.
                        st.queue.push_front(d);
                        return false;
                    }
                    match st.inflight.pkid_for(tag) {
                        Some(pkid) => pkid,
                        None => {
                            st.queue.push_front(d);
                            return false;
                        }
                    }
                }
                // A kept plain delivery's id is derived from its record, so a
                // restarted broker sends it again under the id the client holds.
                (QoS::ExactlyOnce, None) => match d.kept.map(|seq| st.inflight.pkid_for(seq.get())) {
                    None => st.inflight.next_pkid(),
                    Some(Some(pkid)) => pkid,
                    Some(None) => {
                        st.queue.push_front(d);
                        return false;
                    }
                },
                _ => st.inflight.next_pkid(),
            };
            let mut publish = publish_packet(self.protocol, &d, pkid, false, now);
            if publish.encoded_len(self.protocol) > self.client_max_packet as usize {
                // MQTT-3.1.2-25: discard, as if delivered.
                tracing::warn!(client_id = %self.info.client_id, topic = %d.msg.topic, "message exceeds the client's maximum packet size: dropped");
                self.forget_kept(&d);
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
}

/// Gives a PUBLISH its topic alias, when the client takes them.
pub(super) fn alias(aliases: &mut Option<Box<OutAliases>>, packet: &mut Packet) {
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
pub(super) fn publish_packet(protocol: Protocol, d: &Delivery, pkid: u16, dup: bool, now: Instant) -> Packet {
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
