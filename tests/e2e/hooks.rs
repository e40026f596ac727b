//! A test plugin proves the core honours each hook: authenticate, authorize subscribe
//! and publish (deny, and take over routing), connected/disconnected, acked.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use natter_e2e::{connect_packet, v3, Raw, TestBroker};
use natter_shared::codec::{reason, Protocol};
use natterd::hooks::{
    Access, AuthDecision, AuthFailure, Credentials, Hook, HookFuture, NotStored, PublishDecision, Stored,
};
use natterd::model::{ClientInfo, Message};
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
                // carol has an account and gives her right password: only this deny,
                // asked before the password plugin, keeps her out.
                Some("carol") => AuthDecision::Deny(AuthFailure::NotAuthorized),
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

    fn on_publish(&self, client: &ClientInfo, msg: &Message) -> PublishDecision {
        if msg.topic.starts_with("forbidden") {
            return PublishDecision::Refuse(None);
        }
        if let Some(rest) = msg.topic.strip_prefix("dm/") {
            // Take the message over: route it to the recipient's inbox, stamped with the sender.
            let from = client.username.as_deref().unwrap_or("anonymous");
            let mut m = msg.clone();
            m.topic = format!("inbox/{rest}/from/{from}").into();
            let _ = self.router.publish(Arc::new(m));
            return PublishDecision::TakenOver(natterd::hooks::receipt(Ok(())));
        }
        PublishDecision::Abstain
    }

    fn on_connected(&self, c: &ClientInfo, _s: &natterd::hooks::SessionView, _present: bool) {
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
    let (_, ack) = Raw::connect(b.addr, connect_packet(Protocol::V5, Some("carol"), "x")).await;
    assert_eq!(
        ack.code,
        reason::NOT_AUTHORIZED,
        "the plugin's deny, not the password's allow"
    );
    let (_, ack) = Raw::connect(b.addr, connect_packet(Protocol::V5, Some("alice"), "y")).await;
    assert_eq!(ack.code, reason::SUCCESS, "abstain lets the password plugin decide");
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

/// Takes over `slow/{ms}/{ok|fail}`: stored (or not) by a task after `ms`.
struct Slow;

impl Hook for Slow {
    fn name(&self) -> &'static str {
        "slow"
    }

    fn on_publish(&self, _c: &ClientInfo, msg: &Message) -> PublishDecision {
        let mut parts = msg.topic.split('/');
        if parts.next() != Some("slow") {
            return PublishDecision::Abstain;
        }
        let ms: u64 = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        let ok = parts.next() == Some("ok");
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let _ = tx.send(if ok { Ok(()) } else { Err(NotStored::Failed) });
        });
        PublishDecision::TakenOver(rx)
    }
}

/// A plugin storing in the background: acknowledgements wait for its receipts, keep
/// the publishes' order whatever order the receipts resolve in, and a failure is
/// 0x80 on MQTT 5 and a closed connection on 3.1.1 (never a false acknowledgement).
#[tokio::test]
async fn acknowledgements_wait_for_receipts_in_order() {
    use natter_e2e::publish_packet;
    use natter_shared::codec::{Packet, QoS};

    let b = TestBroker::start_with(|_| {}, |_, _| vec![Arc::new(Slow) as Arc<dyn Hook>]).await;
    let mut v5 = Raw::login(b.addr, Protocol::V5, "alice", "slow5").await;
    let plan = [
        ("slow/300/ok", QoS::AtLeastOnce),
        ("slow/0/ok", QoS::AtLeastOnce),
        ("slow/0/fail", QoS::AtLeastOnce),
        ("slow/100/ok", QoS::ExactlyOnce),
        ("plain/x", QoS::AtLeastOnce),
    ];
    let started = tokio::time::Instant::now();
    for (i, (topic, qos)) in plan.iter().enumerate() {
        v5.send(&publish_packet(topic, *qos, i as u16 + 1, "x")).await;
    }
    let acks = v5.acks(plan.len()).await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "the first waited for its receipt"
    );
    assert_eq!(
        acks,
        vec![
            (1, reason::SUCCESS),
            (2, reason::SUCCESS),
            (3, reason::UNSPECIFIED_ERROR),
            (4, reason::SUCCESS),
            (5, reason::NO_MATCHING_SUBSCRIBERS),
        ],
        "in publish order, though 2 and 3 resolved first"
    );

    // A QoS 2 publish re-sent while it is still being stored is acknowledged behind it.
    let started = tokio::time::Instant::now();
    v5.send(&publish_packet("slow/200/ok", QoS::ExactlyOnce, 7, "x")).await;
    let mut dup = publish_packet("slow/200/ok", QoS::ExactlyOnce, 7, "x");
    if let Packet::Publish(p) = &mut dup {
        p.dup = true;
    }
    v5.send(&dup).await;
    v5.send(&publish_packet("plain/y", QoS::AtLeastOnce, 8, "x")).await;
    assert!(
        v5.recv_within(Duration::from_millis(120)).await.is_err(),
        "nothing is acknowledged before the first is stored"
    );
    let acks = v5.acks(3).await;
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "none overtook the stored one"
    );
    assert_eq!(
        acks,
        vec![
            (7, reason::SUCCESS),
            (7, reason::SUCCESS),
            (8, reason::NO_MATCHING_SUBSCRIBERS)
        ],
        "the QoS 2 publish and its re-send, then the QoS 1 one"
    );

    let mut v3 = Raw::login(b.addr, Protocol::V311, "alice", "slow3").await;
    v3.send(&publish_packet("slow/0/ok", QoS::AtLeastOnce, 1, "x")).await;
    assert!(matches!(v3.recv().await, Some(Packet::PubAck(a)) if a.pkid == 1));
    v3.send(&publish_packet("slow/0/fail", QoS::AtLeastOnce, 2, "x")).await;
    let rest = v3.until_closed().await;
    assert!(
        !rest.iter().any(|p| matches!(p, Packet::PubAck(_))),
        "3.1.1 has no negative PUBACK: closed instead, got {rest:?}"
    );
    b.stop().await;
}

/// Takes over `held/...` and stores nothing until the test lets it: every receipt
/// waits in `held` until `release` is set.
#[derive(Default)]
struct Held {
    held: Mutex<Vec<tokio::sync::oneshot::Sender<Stored>>>,
    seen: std::sync::atomic::AtomicUsize,
    release: std::sync::atomic::AtomicBool,
}

impl Held {
    fn seen(&self) -> usize {
        self.seen.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn release_all(&self) {
        self.release.store(true, std::sync::atomic::Ordering::SeqCst);
        for tx in self.held.lock().unwrap().drain(..) {
            let _ = tx.send(Ok(()));
        }
    }
}

struct HeldHook(Arc<Held>);

impl Hook for HeldHook {
    fn name(&self) -> &'static str {
        "held"
    }

    fn on_publish(&self, _c: &ClientInfo, msg: &Message) -> PublishDecision {
        if !msg.topic.starts_with("held/") {
            return PublishDecision::Abstain;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let h = &self.0;
        h.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if h.release.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = tx.send(Ok(()));
        } else {
            h.held.lock().unwrap().push(tx);
        }
        PublishDecision::TakenOver(rx)
    }
}

/// With `receive_maximum` messages waiting to be stored, the broker stops reading from
/// that client: TCP pushes back and the client's writes stall, instead of the broker
/// buffering without bound. Once they are stored, it reads on and acknowledges all.
#[tokio::test]
async fn a_client_with_too_many_messages_waiting_to_be_stored_is_not_read_from() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const TOTAL: u16 = 300;
    let held = Arc::new(Held::default());
    let hook = held.clone();
    let b = TestBroker::start_with(
        |c| c.limits.receive_maximum = 4.try_into().unwrap(),
        move |_, _| vec![Arc::new(HeldHook(hook.clone())) as Arc<dyn Hook>],
    )
    .await;
    let raw = Raw::login(b.addr, Protocol::V311, "alice", "pusher").await;
    let (mut rd, mut wr) = raw.stream.into_split();
    // 300 publishes of 32 KiB: about 10 MB, far more than the sockets buffer.
    let written = Arc::new(AtomicUsize::new(0));
    let counter = written.clone();
    let writer = tokio::spawn(async move {
        for id in 1..=TOTAL {
            let mut buf = bytes::BytesMut::new();
            natter_e2e::publish_packet(
                "held/x",
                natter_shared::codec::QoS::AtLeastOnce,
                id,
                vec![b'x'; 32 * 1024],
            )
            .encode(&mut buf, Protocol::V311);
            wr.write_all(&buf).await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
        }
        wr
    });
    b.wait_until("the first four reach the plugin", || held.seen() >= 4)
        .await;
    // Wait until the client's writes stall: no progress over 300 ms, or all written.
    let mut last = written.load(Ordering::SeqCst);
    let mut still = 0;
    while still < 3 && !writer.is_finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = written.load(Ordering::SeqCst);
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
    assert!(
        !writer.is_finished(),
        "all {TOTAL} publishes were taken while none was stored"
    );
    // Packets already read in the same segment are handled; nothing beyond them.
    let seen = held.seen();
    assert!(seen < 16, "the broker read on: {seen} publishes reached the plugin");
    assert!(last < usize::from(TOTAL), "{last}");

    held.release_all();
    let mut acks = vec![0u8; 4 * usize::from(TOTAL)];
    tokio::time::timeout(Duration::from_secs(30), rd.read_exact(&mut acks))
        .await
        .expect("every publish acknowledged once stored")
        .unwrap();
    let ids: Vec<u16> = acks
        .chunks(4)
        .map(|a| {
            assert_eq!(a[..2], [0x40, 2], "a PUBACK");
            u16::from_be_bytes([a[2], a[3]])
        })
        .collect();
    assert_eq!(ids, (1..=TOTAL).collect::<Vec<_>>(), "in order");
    writer.await.unwrap();
    assert_eq!(held.seen(), usize::from(TOTAL));
    b.stop().await;
}
