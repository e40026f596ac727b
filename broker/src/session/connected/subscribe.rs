//! SUBSCRIBE and UNSUBSCRIBE: authorization per filter, the router, retained
//! messages, and the plugins told.

use super::*;

impl Handler {
    pub(super) fn on_subscribe(&mut self, s: Subscribe) {
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
        // The plugins first: one that makes state durable for the subscription (a
        // device's first mailbox cursor) has the SUBACK wait for it, so a client told
        // it is subscribed finds the subscription's effects after a crash.
        let mut receipts = Vec::new();
        if self.info.persistent && !new_subs.is_empty() {
            receipts.extend(self.ctx.persist.save(&self.record(false)));
        }
        for (filter, sub, new) in new_subs {
            receipts.extend(
                self.ctx
                    .hooks
                    .on_subscribed(&self.info, &self.session, &filter, sub, new),
            );
        }
        let suback = SubAck {
            pkid: s.pkid,
            properties: Properties::default(),
            codes,
        };
        match crate::hooks::all_of(receipts) {
            None if self.owed.is_empty() => self.send(Packet::SubAck(suback)),
            receipt => self.owed.push_back(OwedAck {
                ack: Owed::Subscribe(Box::new(suback)),
                outcome: receipt.map_or(Outcome::Ready(reason::SUCCESS), Outcome::Waiting),
            }),
        }
        for (msg, sub) in retained {
            let qos = msg.qos.min(sub.options.qos);
            self.session.enqueue(Delivery {
                msg,
                qos,
                retain: true,
                sub_ids: sub.id.into_iter().collect(),
                kept: None,
            });
        }
    }

    pub(super) fn on_unsubscribe(&mut self, u: Unsubscribe) {
        let codes: Vec<u8> = u
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
        if self.info.persistent && codes.contains(&reason::SUCCESS) {
            self.ctx.persist.save(&self.record(false));
        }
        self.send(Packet::UnsubAck(UnsubAck {
            pkid: u.pkid,
            properties: Properties::default(),
            codes,
        }));
    }
}

impl Handler {
    /// The session as it is written to disk (see [`crate::session::persist`]).
    pub(super) fn record(&self, disconnected: bool) -> crate::session::persist::Record {
        crate::session::persist::Record::of(
            &self.session,
            &self.info,
            self.session_expiry,
            self.will.as_deref(),
            disconnected,
        )
    }
}
