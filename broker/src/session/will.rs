//! What happens after a connection ends: the will message (now, after its delay, or
//! when the session ends, whichever comes first) and the session's expiry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use natter_shared::codec::LastWill;

use super::{Context, Session};
use crate::hooks::PublishDecision;
use crate::message::{ClientInfo, Message};

/// A connection that just ended.
pub(super) struct Ended {
    pub ctx: Context,
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
            }
        };
        tokio::select! {
            () = timers => {}
            () = crate::server::stopped(&mut shutdown) => {
                if session.lock().generation == generation {
                    if let Some(w) = take() {
                        publish_will(&ctx, &info, &session, w);
                    }
                }
            }
        }
    });
}

fn publish_will(ctx: &Context, info: &ClientInfo, session: &Session, w: LastWill) {
    let mut properties = w.properties;
    properties.will_delay_interval = None;
    let expires_at = properties
        .message_expiry_interval
        .take()
        .map(|secs| Instant::now() + Duration::from_secs(u64::from(secs)));
    let msg = Message {
        topic: w.topic.into(),
        payload: w.payload,
        qos: w.qos,
        retain: w.retain,
        properties,
        expires_at,
        origin: Some(session.id),
        exclude_origin: false,
        tag: None,
        lazy_properties: None,
    };
    match ctx.hooks.authorize_publish(info, &msg) {
        PublishDecision::Allow => {
            tracing::debug!(client_id = %info.client_id, topic = %msg.topic, "publishing will");
            if ctx.router.publish(Arc::new(msg)).is_err() {
                tracing::warn!(client_id = %info.client_id, "retained store full: will not retained");
            }
        }
        PublishDecision::Handled | PublishDecision::Pending(_) => {}
        PublishDecision::Error => tracing::error!(client_id = %info.client_id, "will could not be stored"),
        PublishDecision::Deny | PublishDecision::Abstain => {
            tracing::info!(client_id = %info.client_id, topic = %msg.topic, "will refused by authorization")
        }
    }
}
