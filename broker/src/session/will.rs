//! What happens after a connection ends: the will message (now, after its delay, or
//! when the session ends, whichever comes first) and the session's expiry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use natter_shared::codec::LastWill;

use super::Context;
use crate::hooks::PublishDecision;
use crate::model::Session;
use crate::model::{ClientInfo, Message};

/// A connection that just ended.
pub(super) struct Ended {
    pub ctx: Arc<Context>,
    pub info: ClientInfo,
    pub session: Arc<Session>,
    pub generation: u64,
    /// False when another connection took the session over.
    pub attached: bool,
    /// The will to publish, if the connection did not end with a normal DISCONNECT.
    pub will: Option<LastWill>,
    pub session_expiry: u32,
    pub shutting_down: bool,
}

pub(super) fn after_disconnect(e: Ended) {
    let will_delay = e
        .will
        .as_ref()
        .and_then(|w| w.properties.will_delay_interval)
        .unwrap_or(0);
    let delay = will_delay.min(e.session_expiry);
    let mut will = e.will;
    if !e.attached {
        // A new connection already exists: a will with a delay is cancelled by it
        // (MQTT-3.1.3-9); one without is published now.
        if let Some(w) = will.filter(|_| will_delay == 0) {
            publish_will(&e.ctx, &e.info, &e.session, w);
        }
        return;
    }
    if delay == 0 || e.shutting_down {
        if let Some(w) = will.take() {
            publish_will(&e.ctx, &e.info, &e.session, w);
        }
    }
    if e.session_expiry == 0 {
        e.ctx.router.remove_session(&e.session);
        return;
    }
    if e.shutting_down {
        return;
    }
    let Ended {
        ctx,
        info,
        session,
        generation,
        session_expiry,
        ..
    } = e;
    // The timer ends with the broker (it holds the broker's context: plugins, store);
    // a will still pending then is published, since the session ends with the broker.
    let mut shutdown = ctx.shutdown.clone();
    tokio::spawn(async move {
        let pending = std::sync::Mutex::new(will);
        let take = || pending.lock().unwrap_or_else(|p| p.into_inner()).take();
        let has_will = pending.lock().unwrap_or_else(|p| p.into_inner()).is_some();
        let timers = async {
            if has_will {
                tokio::time::sleep(Duration::from_secs(u64::from(delay))).await;
                if session.lock().generation != generation {
                    take();
                    return;
                }
                if let Some(w) = take() {
                    publish_will(&ctx, &info, &session, w);
                }
            }
            tokio::time::sleep(Duration::from_secs(u64::from(session_expiry - delay))).await;
            if session.lock().generation == generation {
                tracing::debug!(client_id = %info.client_id, "session expired");
                ctx.router.remove_session(&session);
                ctx.persist.delete(&session.key);
            }
        };
        tokio::select! {
            () = timers => {}
            () = crate::shutdown::stopped(&mut shutdown) => {
                if session.lock().generation == generation {
                    if let Some(w) = take() {
                        publish_will(&ctx, &info, &session, w);
                    }
                }
            }
        }
    });
}

/// The will of a persistent session that expired while the broker was down.
pub(super) fn publish_restored_will(ctx: &Context, info: &ClientInfo, w: LastWill) {
    publish_will_from(ctx, info, 0, w);
}

fn publish_will(ctx: &Context, info: &ClientInfo, session: &Session, w: LastWill) {
    publish_will_from(ctx, info, session.id, w);
}

fn publish_will_from(ctx: &Context, info: &ClientInfo, origin: u64, w: LastWill) {
    let mut properties = w.properties;
    properties.will_delay_interval = None;
    let msg = Message::from_client(
        w.topic.into(),
        w.payload,
        w.qos,
        w.retain,
        properties,
        origin,
        Instant::now(),
    );
    match ctx.hooks.on_publish(info, &msg) {
        PublishDecision::Route => {
            tracing::debug!(client_id = %info.client_id, topic = %msg.topic, "publishing will");
            let msg = Arc::new(msg);
            // Kept for persistent subscribers like a client's message (nobody waits).
            let mut keeping = super::persist::Keeping::new(&ctx.persist);
            match ctx.router.publish_keeping(msg.clone(), Some(&mut keeping)) {
                Ok(_) if msg.retain => {
                    ctx.persist.retain(&msg);
                }
                Ok(_) => {}
                Err(_) => tracing::warn!(client_id = %info.client_id, "retained store full: will not retained"),
            }
        }
        PublishDecision::TakenOver(receipt) => {
            let client_id = info.client_id.clone();
            tokio::spawn(async move {
                if let Ok(Err(why)) = receipt.await {
                    tracing::error!(%client_id, %why, "will could not be stored");
                }
            });
        }
        PublishDecision::Refuse(_) | PublishDecision::Abstain => {
            tracing::info!(client_id = %info.client_id, topic = %msg.topic, "will refused by authorization")
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use natter_shared::codec::{Properties, Protocol, QoS, SubscriptionOptions};
    use tokio::sync::{oneshot, watch};
    use tokio::time::sleep;

    use super::*;
    use crate::config::Config;
    use crate::hooks::{Hook, Hooks};
    use crate::model::{SessionKey, Subscription};
    use crate::router::Router;

    /// Allows every publish but those under `denied/`.
    struct Gate;

    impl Hook for Gate {
        fn name(&self) -> &'static str {
            "gate"
        }

        fn on_publish(&self, _: &ClientInfo, msg: &Message) -> PublishDecision {
            if msg.topic.starts_with("denied/") {
                PublishDecision::Refuse(None)
            } else {
                PublishDecision::Route
            }
        }
    }

    struct World {
        ctx: Arc<Context>,
        stop: watch::Sender<bool>,
        watcher: Arc<Session>,
        info: ClientInfo,
    }

    fn key(name: &str) -> SessionKey {
        SessionKey {
            username: Some(name.into()),
            client_id: format!("{name}-dev").into(),
        }
    }

    fn world() -> World {
        let router = Router::new(Config::default_config().limits);
        let (stop, shutdown) = watch::channel(false);
        let watcher = router.open_session(key("watcher"), true, oneshot::channel().0).session;
        let sub = Subscription {
            options: SubscriptionOptions::default(),
            id: None,
        };
        router.subscribe(&watcher, "#", sub);
        let ctx = Context::new(
            router,
            Hooks::new(vec![Arc::new(Gate)]),
            Arc::new(Config::default_config().limits),
            shutdown,
            crate::session::persist::Persister::off(),
        );
        let info = ClientInfo {
            username: Some("alice".into()),
            client_id: "alice-dev".into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            protocol: Protocol::V5,
            admin: false,
            restriction: None,
            persistent: true,
        };
        World {
            ctx,
            stop,
            watcher,
            info,
        }
    }

    fn will(topic: &str, delay: Option<u32>) -> LastWill {
        LastWill {
            topic: topic.into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties {
                will_delay_interval: delay,
                ..Properties::default()
            },
        }
    }

    impl World {
        /// alice's session and its connection's generation.
        fn alice(&self) -> (Arc<Session>, u64) {
            let o = self.ctx.router.open_session(key("alice"), false, oneshot::channel().0);
            (o.session, o.generation)
        }

        fn ended(&self, will: Option<LastWill>, expiry: u32) -> Arc<Session> {
            let (session, generation) = self.alice();
            after_disconnect(Ended {
                ctx: self.ctx.clone(),
                info: self.info.clone(),
                session: session.clone(),
                generation,
                attached: true,
                will,
                session_expiry: expiry,
                shutting_down: false,
            });
            session
        }

        /// Topics the watcher received, oldest first.
        fn seen(&self) -> Vec<String> {
            self.watcher
                .lock()
                .queue
                .drain(..)
                .map(|d| d.msg.topic.to_string())
                .collect()
        }

        fn alice_registered(&self) -> bool {
            !self.ctx.router.sessions_of("alice").is_empty()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_will_without_delay_is_published_at_once_and_a_clean_session_goes() {
        let w = world();
        w.ended(Some(will("wills/alice", None)), 0);
        assert_eq!(w.seen(), ["wills/alice"]);
        assert!(!w.alice_registered());
    }

    #[tokio::test(start_paused = true)]
    async fn a_delayed_will_waits_its_delay_and_the_session_its_expiry() {
        let w = world();
        w.ended(Some(will("wills/alice", Some(5))), 10);
        sleep(Duration::from_millis(4900)).await;
        assert!(w.seen().is_empty(), "not before the delay");
        sleep(Duration::from_millis(200)).await;
        assert_eq!(w.seen(), ["wills/alice"]);
        sleep(Duration::from_millis(4800)).await;
        assert!(w.alice_registered(), "the session lives its expiry");
        sleep(Duration::from_millis(300)).await;
        assert!(!w.alice_registered());
        assert!(w.seen().is_empty(), "published once");
    }

    #[tokio::test(start_paused = true)]
    async fn the_will_delay_is_capped_by_the_session_expiry() {
        let w = world();
        w.ended(Some(will("wills/alice", Some(60))), 3);
        sleep(Duration::from_millis(2900)).await;
        assert!(w.seen().is_empty());
        sleep(Duration::from_millis(200)).await;
        assert_eq!(w.seen(), ["wills/alice"], "at the session's end, not the will's delay");
        assert!(!w.alice_registered());
    }

    #[tokio::test(start_paused = true)]
    async fn reconnecting_within_the_delay_cancels_the_will_and_keeps_the_session() {
        let w = world();
        w.ended(Some(will("wills/alice", Some(5))), 10);
        sleep(Duration::from_secs(2)).await;
        let (_again, _) = w.alice();
        sleep(Duration::from_secs(20)).await;
        assert!(w.seen().is_empty(), "cancelled");
        assert!(w.alice_registered(), "the new connection's session stays");
    }

    #[tokio::test(start_paused = true)]
    async fn a_taken_over_connection_publishes_only_an_undelayed_will() {
        for (delay, expected) in [(None, vec!["wills/alice".to_owned()]), (Some(5), vec![])] {
            let w = world();
            let (session, generation) = w.alice();
            after_disconnect(Ended {
                ctx: w.ctx.clone(),
                info: w.info.clone(),
                session,
                generation,
                attached: false,
                will: Some(will("wills/alice", delay)),
                session_expiry: 0,
                shutting_down: false,
            });
            sleep(Duration::from_secs(10)).await;
            assert_eq!(w.seen(), expected, "delay {delay:?}");
            assert!(w.alice_registered(), "the session belongs to the new connection");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pending_wills_are_published_when_the_broker_stops() {
        let w = world();
        w.ended(Some(will("wills/alice", Some(30))), 60);
        sleep(Duration::from_secs(1)).await;
        assert!(w.seen().is_empty());
        w.stop.send(true).unwrap();
        sleep(Duration::from_millis(10)).await;
        assert_eq!(w.seen(), ["wills/alice"]);

        // A connection that ends because the broker stops publishes its will at once,
        // delay or not, and its persistent session is left in place.
        let w = world();
        let (session, generation) = w.alice();
        after_disconnect(Ended {
            ctx: w.ctx.clone(),
            info: w.info.clone(),
            session,
            generation,
            attached: true,
            will: Some(will("wills/alice", Some(30))),
            session_expiry: 60,
            shutting_down: true,
        });
        assert_eq!(w.seen(), ["wills/alice"]);
        assert!(w.alice_registered());
    }

    #[tokio::test(start_paused = true)]
    async fn a_will_is_authorized_like_any_publish_and_carries_its_properties() {
        let w = world();
        w.ended(Some(will("denied/alice", None)), 0);
        assert!(w.seen().is_empty(), "refused by authorization");

        let mut wl = will("wills/alice", Some(0));
        wl.retain = true;
        wl.properties.message_expiry_interval = Some(30);
        wl.properties.content_type = Some("text/plain".into());
        let before = Instant::now();
        w.ended(Some(wl), 0);
        let after = Instant::now();
        let d = w.watcher.lock().queue.pop_front().unwrap();
        assert_eq!(d.msg.properties.will_delay_interval, None, "not passed on");
        assert_eq!(
            d.msg.properties.message_expiry_interval, None,
            "kept as a deadline instead"
        );
        let deadline = d.msg.expires_at.unwrap();
        let thirty = Duration::from_secs(30);
        assert!(deadline >= before + thirty && deadline <= after + thirty);
        assert_eq!(d.msg.properties.content_type.as_deref(), Some("text/plain"));
        assert!(d.msg.retain);
        assert_eq!(w.ctx.router.retained_count(), 1, "a retained will is retained");
    }
}
