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

    pub(super) fn on_unsubscribe(&mut self, u: Unsubscribe) {
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
}
