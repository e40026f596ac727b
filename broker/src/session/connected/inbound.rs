//! Packets from the client: publishes (and their acknowledgements, in arrival
//! order, some waiting for a plugin's receipt) and DISCONNECT.

use super::*;

impl Handler {
    pub(super) fn on_publish(&mut self, mut p: Publish) -> Option<End> {
        if self.protocol == Protocol::V5 {
            if let Some(alias) = p.properties.topic_alias.take() {
                let max = self.ctx.limits.max_topic_aliases;
                let table = self.aliases.get_or_insert_with(|| InAliases::new(max));
                let Some(slot) = table.slot(alias) else {
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
            if st.incoming_qos2.contains(p.pkid) {
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
            // On disk before the PUBREC, for a persistent session: a restarted broker
            // still knows it (see `persist::incoming`).
            if self.info.persistent {
                if let Some(receipt) = self.ctx.persist.received(&self.session.key, p.pkid) {
                    self.owed.push_back(OwedAck {
                        ack: Owed::Write,
                        outcome: Outcome::Waiting(receipt),
                    });
                }
            }
        }
        self.answer(p.pkid, p.qos, outcome)
    }

    /// Acknowledges a publish now when nothing is owed before it, else queues the
    /// answer behind what is (acknowledgements keep the publishes' order).
    pub(super) fn answer(&mut self, pkid: u16, qos: QoS, outcome: Outcome) -> Option<End> {
        match outcome {
            Outcome::Ready(code) if self.owed.is_empty() => self.acknowledge(pkid, qos, code, None),
            Outcome::Refused(why) if self.owed.is_empty() => {
                self.acknowledge(pkid, qos, reason::NOT_AUTHORIZED, Some(why))
            }
            outcome => {
                self.owed.push_back(OwedAck {
                    ack: Owed::Publish { pkid, qos },
                    outcome,
                });
                None
            }
        }
    }

    /// Sends the acknowledgements whose outcome is known, in arrival order.
    pub(super) fn settle(&mut self) -> Option<End> {
        while let Some(front) = self.owed.front_mut() {
            let known = match &mut front.outcome {
                Outcome::Ready(code) => Ok((*code, None)),
                Outcome::Refused(why) => Ok((reason::NOT_AUTHORIZED, Some(*why))),
                Outcome::Waiting(receipt) => match receipt.try_recv() {
                    Ok(stored) => Err(stored),
                    Err(tokio::sync::oneshot::error::TryRecvError::Closed) => Err(Err(NotStored::Stopped)),
                    Err(tokio::sync::oneshot::error::TryRecvError::Empty) => return None,
                },
            };
            let Some(OwedAck { ack, .. }) = self.owed.pop_front() else {
                break;
            };
            let (code, why) = match (known, &ack) {
                (Ok(known), _) => known,
                (Err(stored), Owed::Write) => {
                    if let Err(why) = stored {
                        tracing::warn!(client_id = %self.info.client_id, %why, "a QoS 2 packet id was not written: a restart forgets it");
                    }
                    continue;
                }
                (Err(stored), _) => (stored_code(stored), None),
            };
            match ack {
                Owed::Publish { pkid, qos } => {
                    if let Some(end) = self.acknowledge(pkid, qos, code, why) {
                        return Some(end);
                    }
                }
                // The subscription holds either way; a plugin that failed to store its
                // state said so in its log.
                Owed::Subscribe(suback) => self.send(Packet::SubAck(*suback)),
                Owed::Release { pkid, msg } => {
                    self.send(Packet::PubRel(Ack::new(pkid)));
                    self.ctx.hooks.on_acked(&self.info, &msg);
                }
                Owed::Write => {}
            }
        }
        None
    }

    pub(super) fn acknowledge(&mut self, pkid: u16, qos: QoS, code: u8, why: Option<&'static str>) -> Option<End> {
        if code == reason::UNSPECIFIED_ERROR && self.protocol == Protocol::V311 && qos != QoS::AtMostOnce {
            // 3.1.1 has no negative acknowledgement: close rather than falsely acknowledge.
            return Some(End::Protocol(code, "the message could not be stored"));
        }
        let mut ack = Ack::with_reason(pkid, code);
        // MQTT 5: the cause as a Reason String, unless it would pass the client's
        // Maximum Packet Size (MQTT-3.4.2-2).
        if let Some(why) =
            why.filter(|w| self.protocol == Protocol::V5 && w.len() + 16 <= self.client_max_packet as usize)
        {
            ack.properties.reason_string = Some(why.to_owned());
        }
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(Packet::PubAck(ack)),
            QoS::ExactlyOnce => {
                if code >= 0x80 && self.protocol == Protocol::V5 {
                    // Refused: the flow ends with this PUBREC.
                    self.session.lock().incoming_qos2.remove(pkid);
                    if self.info.persistent {
                        self.ctx.persist.relieved(&self.session.key, pkid);
                    }
                }
                self.send(Packet::PubRec(ack));
            }
        }
        None
    }

    /// PUBREC for a delivery: the client has the message. A stored message's flow on a
    /// persistent session, or a kept plain one's, is written as released before its
    /// PUBREL goes out (and the message then counts as delivered), so a restarted
    /// broker sends the PUBREL again, not the message; other flows are released at
    /// once.
    pub(super) fn release(&mut self, pkid: u16, delivery: Delivery) -> Option<End> {
        let receipt = match (delivery.msg.tag, delivery.kept) {
            (Some(tag), _) if self.info.persistent => {
                self.ctx
                    .persist
                    .released(&self.session.key, pkid, tag, &delivery.msg.topic)
            }
            (None, Some(_)) => self.ctx.persist.release_delivery(&self.session.key, &delivery, pkid),
            _ => None,
        };
        let msg = delivery.msg;
        let Some(receipt) = receipt else {
            self.send(Packet::PubRel(Ack::new(pkid)));
            self.ctx.hooks.on_acked(&self.info, &msg);
            return None;
        };
        self.owed.push_back(OwedAck {
            ack: Owed::Release { pkid, msg },
            outcome: Outcome::Waiting(receipt),
        });
        None
    }

    /// PUBCOMP: the QoS 2 flow of a delivery is complete. A stored message's release
    /// record is forgotten only once the plugin's cursor past it is on disk (until
    /// then a restarted broker must still know the client has it).
    pub(super) fn completed(&self, pkid: u16, msg: &Message) {
        let Some(tag) = msg.tag.filter(|_| self.info.persistent) else {
            self.ctx.hooks.on_acked(&self.info, msg);
            return;
        };
        // Acknowledged at release already; again for a flow released before a
        // restart (idempotent), now with a receipt.
        let receipt = self.ctx.hooks.on_acked_durably(&self.info, msg);
        let (persist, key) = (self.ctx.persist.clone(), self.session.key.clone());
        match receipt {
            None => persist.completed(&key, pkid, tag),
            Some(receipt) => {
                tokio::spawn(async move {
                    if let Ok(Ok(())) = receipt.await {
                        persist.completed(&key, pkid, tag);
                    }
                });
            }
        }
    }

    /// Hands a client's message to the plugins, and routes it when they say so: the
    /// MQTT 5 reason code, or the receipt of a plugin that took it over.
    pub(super) fn route(&self, msg: Message) -> Outcome {
        let code = match self.ctx.hooks.on_publish(&self.info, &msg) {
            PublishDecision::Route => {
                let msg = Arc::new(msg);
                let mut keeping = Keeping::new(&self.ctx.persist);
                let routed = self.ctx.router.publish_keeping(msg.clone(), Some(&mut keeping));
                // Acknowledged once the deliveries to persistent sessions are on disk
                // (the retained record, written after them, covers them too).
                let kept = match keeping.receipt() {
                    Ok(kept) => kept,
                    Err(why) => {
                        tracing::warn!(client_id = %self.info.client_id, %why, "a message for persistent sessions was not kept");
                        return Outcome::Ready(stored_code(Err(why)));
                    }
                };
                match routed {
                    // A retained message is acknowledged once it is on disk.
                    Ok(_) if msg.retain => match self.ctx.persist.retain(&msg) {
                        Some(receipt) if msg.qos != QoS::AtMostOnce => return Outcome::Waiting(receipt),
                        _ => reason::SUCCESS,
                    },
                    Ok(reached) => match kept {
                        Some(receipt) => return Outcome::Waiting(receipt),
                        None if reached == 0 => reason::NO_MATCHING_SUBSCRIBERS,
                        None => reason::SUCCESS,
                    },
                    Err(RetainedFull) => {
                        tracing::warn!(client_id = %self.info.client_id, "retained store full: message not retained");
                        reason::QUOTA_EXCEEDED
                    }
                }
            }
            PublishDecision::TakenOver(receipt) => return Outcome::Waiting(receipt),
            PublishDecision::Refuse(why) => {
                tracing::info!(
                    client_id = %self.info.client_id,
                    user = self.info.username.as_deref().unwrap_or(""),
                    topic = %msg.topic,
                    why = why.unwrap_or(""),
                    "publish refused by authorization"
                );
                return why.map_or(Outcome::Ready(reason::NOT_AUTHORIZED), Outcome::Refused);
            }
            PublishDecision::Abstain => {
                tracing::info!(
                    client_id = %self.info.client_id,
                    topic = %msg.topic,
                    "publish refused: no hook decided"
                );
                reason::NOT_AUTHORIZED
            }
        };
        Outcome::Ready(code)
    }

    pub(super) fn on_disconnect(&mut self, d: Disconnect) -> Option<End> {
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
}

/// Polls the front acknowledgement's receipt; Pending, with nothing registered, when
/// the front one waits for none (the caller checks that first).
pub(super) fn poll_front_receipt(owed: &mut VecDeque<OwedAck>, cx: &mut TaskContext<'_>) -> Poll<Stored> {
    match owed.front_mut() {
        Some(OwedAck {
            outcome: Outcome::Waiting(receipt),
            ..
        }) => Pin::new(receipt).poll(cx).map(|r| r.unwrap_or(Err(NotStored::Stopped))),
        _ => Poll::Pending,
    }
}

pub(super) fn stored_code(stored: Stored) -> u8 {
    match stored {
        Ok(()) => reason::SUCCESS,
        Err(why) => {
            tracing::warn!(%why, "a message taken over was not stored");
            reason::UNSPECIFIED_ERROR
        }
    }
}
