//! A test plugin proves the core honours each hook: authenticate, authorize subscribe
//! and publish (deny, and take over routing), connected/disconnected, acked.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use natter_e2e::{v3, TestBroker};
use natterd::hooks::{Access, AuthDecision, AuthFailure, Credentials, Hook, HookFuture, PublishDecision};
use natterd::message::{ClientInfo, Message};
use natterd::router::Router;

struct Probe {
    router: Router,
    events: Arc<Mutex<Vec<String>>>,
}

impl Probe {
    fn log(&self, e: String) {
        self.events.lock().unwrap().push(e);
    }
}

impl Hook for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }

    fn authenticate<'a>(&'a self, creds: &'a Credentials) -> HookFuture<'a, AuthDecision> {
        Box::pin(async move {
            match creds.username.as_deref() {
                Some("banned") => AuthDecision::Deny(AuthFailure::NotAuthorized),
                Some("device") if creds.password.as_deref() == Some(b"token") => {
                    AuthDecision::Allow(Default::default())
                }
                _ => AuthDecision::Abstain,
            }
        })
    }

    fn authorize_subscribe(&self, _c: &ClientInfo, filter: &str) -> Access {
        if filter.starts_with("secret") {
            Access::Deny
        } else {
            Access::Abstain
        }
    }

    fn authorize_publish(&self, client: &ClientInfo, msg: &Message) -> PublishDecision {
        if msg.topic.starts_with("forbidden") {
            return PublishDecision::Deny;
        }
        if let Some(rest) = msg.topic.strip_prefix("dm/") {
            // Take the message over: route it to the recipient's inbox, stamped with the sender.
            let from = client.username.as_deref().unwrap_or("anonymous");
            let mut m = msg.clone();
            m.topic = format!("inbox/{rest}/from/{from}").into();
            let _ = self.router.publish(Arc::new(m));
            return PublishDecision::Handled;
        }
        PublishDecision::Abstain
    }

    fn on_connected(&self, c: &ClientInfo, _s: &Arc<natterd::session::Session>, _present: bool) {
        self.log(format!("connected {}", c.client_id));
    }

    fn on_disconnected(&self, c: &ClientInfo) {
        self.log(format!("disconnected {}", c.client_id));
    }

    fn on_acked(&self, c: &ClientInfo, m: &Message) {
        self.log(format!("acked {} {}", c.client_id, m.topic));
    }
}

#[tokio::test]
async fn the_core_honours_every_hook() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let b = TestBroker::start_with(
        |_| {},
        move |router, _| {
            vec![Arc::new(Probe {
                router: router.clone(),
                events: ev,
            })]
        },
    )
    .await;

    // authenticate: deny beats the password plugin after it; allow without an account.
    let mut banned = v3::options(b.addr, "x", None);
    banned.set_credentials("banned", "whatever");
    assert!(v3::connect(banned).await.is_err());
    let mut device = v3::options(b.addr, "dev", None);
    device.set_credentials("device", "token");
    let device = v3::connect(device).await.expect("plugin allowed it");

    let mut bob = v3::connect(v3::options(b.addr, "bob-1", Some("bob"))).await.unwrap();
    bob.client.subscribe("secret/#", v3::QoS::AtLeastOnce).await.unwrap();
    assert_eq!(
        bob.suback().await.return_codes,
        vec![rumqttc::SubscribeReasonCode::Failure]
    );
    bob.client.subscribe("inbox/bob/#", v3::QoS::AtLeastOnce).await.unwrap();
    bob.suback().await;
    bob.client.subscribe("forbidden/#", v3::QoS::AtLeastOnce).await.unwrap();
    bob.suback().await;

    device
        .client
        .publish("forbidden/x", v3::QoS::AtLeastOnce, false, "no")
        .await
        .unwrap();
    device
        .client
        .publish("dm/bob", v3::QoS::AtLeastOnce, false, "hi bob")
        .await
        .unwrap();
    let p = bob.publish().await;
    assert_eq!(p.topic, "inbox/bob/from/device", "routed by the plugin, sender stamped");
    assert_eq!(&p.payload[..], b"hi bob");
    bob.no_publish(Duration::from_millis(300)).await;
    drop(device);
    drop(bob);
    b.stop().await;

    let events = events.lock().unwrap().clone();
    for expected in [
        "connected dev",
        "connected bob-1",
        "acked bob-1 inbox/bob/from/device",
        "disconnected dev",
        "disconnected bob-1",
    ] {
        assert!(
            events.iter().any(|e| e == expected),
            "missing {expected:?} in {events:?}"
        );
    }
}
