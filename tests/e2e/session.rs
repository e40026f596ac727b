//! Sessions: resumption with queued messages, redelivery with DUP, takeover, clean
//! start, session expiry.

use std::time::Duration;

use bytes::Bytes;
use natter_e2e::{connect_packet, subscribe_packet as subscribe, v3, Raw, TestBroker};
use natter_shared::codec::{reason, Ack, Packet, Properties, Protocol, QoS};

#[tokio::test]
async fn persistent_v311_session_gets_queued_qos1_messages_in_order() {
    let b = TestBroker::start().await;
    let mut opts = v3::options(b.addr, "bob-phone", Some("bob"));
    opts.set_clean_session(false);
    let mut bob = v3::connect(opts.clone()).await.unwrap();
    assert!(!bob.session_present);
    bob.client.subscribe("queue/bob", v3::QoS::AtLeastOnce).await.unwrap();
    bob.suback().await;
    bob.client.disconnect().await.unwrap();
    drop(bob);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut alice = v3::connect(v3::options(b.addr, "alice", Some("alice"))).await.unwrap();
    for n in 0..5 {
        alice
            .client
            .publish("queue/bob", v3::QoS::AtLeastOnce, false, format!("m{n}"))
            .await
            .unwrap();
    }
    for _ in 0..5 {
        alice.expect(|p| matches!(p, v3::Packet::PubAck(_))).await;
    }
    let mut bob = v3::connect(opts).await.unwrap();
    assert!(bob.session_present);
    for n in 0..5 {
        assert_eq!(&bob.publish().await.payload[..], format!("m{n}").as_bytes());
    }
    b.stop().await;
}

#[tokio::test]
async fn unacknowledged_messages_are_redelivered_with_dup() {
    let b = TestBroker::start().await;
    let mut c = connect_packet(Protocol::V311, Some("bob"), "flaky");
    c.clean_start = false;
    let (mut raw, _) = Raw::connect(b.addr, c.clone()).await;
    raw.send(&subscribe("t/#", QoS::ExactlyOnce)).await;
    assert!(matches!(raw.recv().await, Some(Packet::SubAck(_))));
    let alice = v3::connect(v3::options(b.addr, "a", Some("alice"))).await.unwrap();
    alice
        .client
        .publish("t/1", v3::QoS::AtLeastOnce, false, "one")
        .await
        .unwrap();
    alice
        .client
        .publish("t/2", v3::QoS::ExactlyOnce, false, "two")
        .await
        .unwrap();
    let Some(Packet::Publish(p1)) = raw.recv().await else {
        panic!("publish")
    };
    let Some(Packet::Publish(p2)) = raw.recv().await else {
        panic!("publish")
    };
    assert!(!p1.dup && !p2.dup);
    // Acknowledge half of the QoS 2 flow, then vanish.
    raw.send(&Packet::PubRec(Ack::new(p2.pkid))).await;
    assert!(matches!(raw.recv().await, Some(Packet::PubRel(a)) if a.pkid == p2.pkid));
    drop(raw);

    let (mut raw, ack) = Raw::connect(b.addr, c).await;
    assert!(ack.session_present);
    match raw.recv().await {
        Some(Packet::Publish(p)) => {
            assert!(p.dup, "redelivered with DUP");
            assert_eq!((p.pkid, &p.payload[..]), (p1.pkid, &b"one"[..]));
            raw.send(&Packet::PubAck(Ack::new(p.pkid))).await;
        }
        other => panic!("expected the QoS 1 redelivery, got {other:?}"),
    }
    assert!(
        matches!(raw.recv().await, Some(Packet::PubRel(a)) if a.pkid == p2.pkid),
        "PUBREL re-sent"
    );
    raw.send(&Packet::PubComp(Ack::new(p2.pkid))).await;
    assert_eq!(
        raw.recv_within(Duration::from_millis(300)).await,
        Err(()),
        "nothing more"
    );
    b.stop().await;
}

#[tokio::test]
async fn takeover_sends_0x8e_on_v5_and_closes_v311() {
    let b = TestBroker::start().await;
    let mut first = Raw::login(b.addr, Protocol::V5, "alice", "laptop").await;
    let _second = Raw::login(b.addr, Protocol::V5, "alice", "laptop").await;
    let seen = first.until_closed().await;
    assert!(
        matches!(seen.as_slice(), [Packet::Disconnect(d)] if d.reason == reason::SESSION_TAKEN_OVER),
        "{seen:?}"
    );

    let mut first = Raw::login(b.addr, Protocol::V311, "bob", "desk").await;
    let _second = Raw::login(b.addr, Protocol::V311, "bob", "desk").await;
    assert!(first.until_closed().await.is_empty());
    b.stop().await;
}

#[tokio::test]
async fn clean_start_discards_the_old_session() {
    let b = TestBroker::start().await;
    let mut c = connect_packet(Protocol::V5, Some("bob"), "c1");
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(300);
    let (mut raw, ack) = Raw::connect(b.addr, c.clone()).await;
    assert!(!ack.session_present);
    raw.send(&subscribe("x", QoS::AtLeastOnce)).await;
    raw.recv().await;
    drop(raw);
    let (_, ack) = Raw::connect(b.addr, c.clone()).await;
    assert!(ack.session_present);
    c.clean_start = true;
    let (_raw, ack) = Raw::connect(b.addr, c).await;
    assert!(!ack.session_present);
    assert_eq!(b.router().subscription_count(), 0);
    b.stop().await;
}

#[tokio::test]
async fn session_expiry_removes_the_session() {
    let b = TestBroker::start().await;
    let mut c = connect_packet(Protocol::V5, Some("bob"), "short");
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(1);
    let (mut raw, _) = Raw::connect(b.addr, c.clone()).await;
    raw.send(&subscribe("x", QoS::AtLeastOnce)).await;
    raw.recv().await;
    drop(raw);
    let mut waited = Duration::ZERO;
    while b.router().session_count() > 0 && waited < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
    assert_eq!(b.router().session_count(), 0, "expired");
    assert_eq!(b.router().subscription_count(), 0);
    let (_, ack) = Raw::connect(b.addr, c).await;
    assert!(!ack.session_present);
    b.stop().await;
}

#[tokio::test]
async fn empty_client_ids() {
    let b = TestBroker::start().await;
    // 3.1.1: allowed with clean session, refused without.
    let (_r, ack) = Raw::connect(b.addr, connect_packet(Protocol::V311, Some("alice"), "")).await;
    assert_eq!(ack.code, 0);
    let mut c = connect_packet(Protocol::V311, Some("alice"), "");
    c.clean_start = false;
    let (_, ack) = Raw::connect(b.addr, c).await;
    assert_eq!(ack.code, reason::v3::IDENTIFIER_REJECTED);
    // 5: assigned and announced.
    let (_r, ack) = Raw::connect(b.addr, connect_packet(Protocol::V5, Some("alice"), "")).await;
    assert_eq!(ack.code, 0);
    assert!(ack
        .properties
        .assigned_client_identifier
        .is_some_and(|id| !id.is_empty()));
    let _ = Bytes::new();
    b.stop().await;
}

#[tokio::test]
async fn slow_consumers_are_bounded_by_the_queue_and_the_overflow_policy() {
    use natterd::config::OverflowPolicy;
    for policy in [OverflowPolicy::DropNew, OverflowPolicy::Disconnect] {
        let b = TestBroker::start_config(|c| {
            c.limits.max_queued_messages = 3.try_into().unwrap();
            c.limits.queue_overflow = policy;
        })
        .await;
        // A v5 client with a window of 1 that never acknowledges.
        let mut c = connect_packet(Protocol::V5, Some("bob"), "slow");
        c.properties.receive_maximum = Some(1);
        let (mut slow, _) = Raw::connect(b.addr, c).await;
        slow.send(&subscribe("flood/#", QoS::AtLeastOnce)).await;
        assert!(matches!(slow.recv().await, Some(Packet::SubAck(_))));
        let mut p = Raw::login(b.addr, Protocol::V5, "alice", "flooder").await;
        for i in 1..=10u16 {
            p.send(&Packet::Publish(natter_shared::codec::Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: "flood/x".into(),
                pkid: i,
                properties: Properties::default(),
                payload: Bytes::from(format!("m{i}")),
            }))
            .await;
            assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
        }
        // 1 in flight + 3 queued, then the queue is full. With drop_new the other 6 are
        // dropped and counted (7 if the connection had not yet moved one in flight);
        // with disconnect the first overflow closes the consumer, whose clean session
        // then ends, so later messages find no subscriber.
        let dropped = b.router().stats().dropped.load(std::sync::atomic::Ordering::Relaxed);
        match policy {
            OverflowPolicy::DropNew => assert!((6..=7).contains(&dropped), "{dropped}"),
            // At least the overflowing one; at most the six that did not fit, when the
            // next publishes still found the closing session.
            OverflowPolicy::Disconnect => assert!((1..=6).contains(&dropped), "{dropped}"),
        }
        match policy {
            OverflowPolicy::DropNew => {
                assert!(matches!(slow.recv().await, Some(Packet::Publish(p)) if p.payload == "m1"));
                assert_eq!(
                    slow.recv_within(Duration::from_millis(300)).await,
                    Err(()),
                    "still connected, window full"
                );
            }
            OverflowPolicy::Disconnect => {
                let seen = slow.until_closed().await;
                assert!(
                    matches!(seen.as_slice(), [Packet::Publish(p), Packet::Disconnect(d)]
                        if p.payload == "m1" && d.reason == reason::QUOTA_EXCEEDED),
                    "the window's one message, then 0x97: {seen:?}"
                );
            }
        }
        b.stop().await;
    }
}

/// Connects with `connect` and subscribes to `filter`, the SUBACK read.
async fn subscribed(addr: std::net::SocketAddr, connect: natter_shared::codec::Connect, filter: &str, qos: QoS) -> Raw {
    let (mut c, _) = Raw::connect(addr, connect).await;
    c.send(&subscribe(filter, qos)).await;
    assert!(matches!(c.recv().await, Some(Packet::SubAck(_))));
    c
}

/// A persistent v5 session (expiry one minute) for `user` with client id `id`.
fn persistent(user: &str, id: &str) -> natter_shared::codec::Connect {
    let mut c = connect_packet(Protocol::V5, Some(user), id);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(60);
    c
}

#[tokio::test]
async fn qos2_is_exactly_once_across_reconnects_in_both_directions() {
    let b = TestBroker::start().await;
    let mut sub = subscribed(b.addr, persistent("bob", "q2-sub"), "q2/#", QoS::ExactlyOnce).await;

    // Inbound: the publisher's connection drops after PUBREC; it resends the PUBLISH
    // (DUP) on its resumed session and the broker does not route it again.
    let (mut publ, _) = Raw::connect(b.addr, persistent("alice", "q2-pub")).await;
    let p = natter_e2e::publish_packet("q2/x", QoS::ExactlyOnce, 5, "once");
    publ.send(&p).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubRec(a)) if a.pkid == 5));
    drop(publ);
    b.wait_offline("alice").await;
    let (mut publ, ack) = Raw::connect(b.addr, persistent("alice", "q2-pub")).await;
    assert!(ack.session_present);
    let mut dup = p.clone();
    if let Packet::Publish(p) = &mut dup {
        p.dup = true;
    }
    publ.send(&dup).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubRec(a)) if a.pkid == 5));
    publ.send(&Packet::PubRel(Ack::new(5))).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubComp(a)) if a.pkid == 5 && a.reason == 0));

    // Outbound: the subscriber receives it once, drops after PUBREC; on resuming it
    // gets PUBREL for that packet id, never the PUBLISH again.
    let got = match sub.recv().await {
        Some(Packet::Publish(p)) => p,
        other => panic!("expected the message, got {other:?}"),
    };
    assert_eq!(&got.payload[..], b"once");
    sub.send(&Packet::PubRec(Ack::new(got.pkid))).await;
    assert!(matches!(sub.recv().await, Some(Packet::PubRel(a)) if a.pkid == got.pkid));
    drop(sub);
    b.wait_offline("bob").await;
    let (mut sub, ack) = Raw::connect(b.addr, persistent("bob", "q2-sub")).await;
    assert!(ack.session_present);
    let mut seen = Vec::new();
    while let Ok(Some(p)) = sub.recv_within(Duration::from_millis(500)).await {
        seen.push(p);
    }
    assert_eq!(
        seen,
        vec![Packet::PubRel(Ack::new(got.pkid))],
        "PUBREL again, no PUBLISH"
    );
    sub.send(&Packet::PubComp(Ack::new(got.pkid))).await;
    assert_eq!(sub.recv_within(Duration::from_millis(300)).await, Err(()));
    b.stop().await;
}

/// A persistent session comes back with the broker, registered at once: a message
/// published before its client returns reaches it (a broker that restored sessions
/// without registering them acknowledged such messages and dropped them).
#[tokio::test]
async fn a_restored_session_gets_messages_before_its_client_returns() {
    let b = TestBroker::start().await;
    let mut opts = v3::options(b.addr, "bob-phone", Some("bob"));
    opts.set_clean_session(false);
    let mut bob = v3::connect(opts.clone()).await.unwrap();
    bob.client.subscribe("queue/bob", v3::QoS::AtLeastOnce).await.unwrap();
    bob.suback().await;
    bob.client.disconnect().await.unwrap();
    drop(bob);
    b.wait_offline("bob").await;
    let b = b.restart().await;
    assert_eq!(b.router().session_count(), 1, "restored");

    let mut alice = Raw::login(b.addr, Protocol::V5, "alice", "alice").await;
    alice
        .send(&natter_e2e::publish_packet(
            "queue/bob",
            QoS::AtLeastOnce,
            1,
            Bytes::from_static(b"while away"),
        ))
        .await;
    assert_eq!(alice.acks(1).await, vec![(1, reason::SUCCESS)], "a subscriber is there");

    let mut opts = v3::options(b.addr, "bob-phone", Some("bob"));
    opts.set_clean_session(false);
    let mut bob = v3::connect(opts).await.unwrap();
    assert!(bob.session_present, "the session is resumed, subscriptions and all");
    assert_eq!(&bob.publish().await.payload[..], b"while away");
    b.stop().await;
}

/// Subscription options and identifiers, and the session's expiry, are restored.
#[tokio::test]
async fn restored_subscriptions_keep_their_options_and_the_expiry_runs_on() {
    let b = TestBroker::start().await;
    let mut c = connect_packet(Protocol::V5, Some("bob"), "bob-v5");
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(3600);
    let (mut bob, _) = Raw::connect(b.addr, c.clone()).await;
    let mut sub = subscribe("queue/bob/#", QoS::AtLeastOnce);
    if let Packet::Subscribe(s) = &mut sub {
        s.properties.subscription_identifiers = vec![7];
    }
    bob.send(&sub).await;
    assert!(matches!(bob.recv().await, Some(Packet::SubAck(_))));
    // A short-lived one too: it must expire even though the broker restarted.
    let mut short = connect_packet(Protocol::V5, Some("alice"), "alice-short");
    short.clean_start = false;
    short.properties.session_expiry_interval = Some(1);
    let (mut alice, _) = Raw::connect(b.addr, short.clone()).await;
    alice.send(&subscribe("queue/alice", QoS::AtLeastOnce)).await;
    assert!(matches!(alice.recv().await, Some(Packet::SubAck(_))));
    drop((bob, alice));
    b.wait_offline("bob").await;
    b.wait_offline("alice").await;
    let b = b.restart().await;

    let (mut bob, ack) = Raw::connect(b.addr, c).await;
    assert!(ack.session_present);
    let mut pub_ = Raw::login(b.addr, Protocol::V5, "carol", "carol").await;
    pub_.send(&natter_e2e::publish_packet(
        "queue/bob/x",
        QoS::AtLeastOnce,
        1,
        Bytes::from_static(b"hi"),
    ))
    .await;
    let got = bob.next_publish().await;
    assert_eq!(
        got.properties.subscription_identifiers,
        vec![7],
        "the identifier came back"
    );
    assert_eq!(got.qos, QoS::AtLeastOnce);

    b.wait_until("the short session expires", || {
        b.router().sessions_of("alice").is_empty()
    })
    .await;
    let (_, ack) = Raw::connect(b.addr, short).await;
    assert!(!ack.session_present, "expired after the restart");
    b.stop().await;
}

/// Plain QoS 1/2 messages queued for a persistent session survive a restart: the
/// publisher's PUBACK comes once they are on disk, and the subscriber gets them after
/// the restart, in order, with their properties; what it acknowledged before does not
/// come again.
#[tokio::test]
async fn queued_plain_messages_of_a_persistent_session_survive_a_restart() {
    let b = TestBroker::start().await;
    let mut sub = subscribed(b.addr, persistent("bob", "kept-sub"), "jobs/kept/#", QoS::ExactlyOnce).await;
    let mut alice = Raw::login(b.addr, Protocol::V5, "alice", "kept-pub").await;
    // One delivered and acknowledged while online: it is forgotten.
    alice
        .send(&natter_e2e::publish_packet("jobs/kept/0", QoS::AtLeastOnce, 1, "seen"))
        .await;
    assert_eq!(alice.acks(1).await, vec![(1, reason::SUCCESS)]);
    let seen = sub.next_publish().await;
    assert_eq!(&seen.payload[..], b"seen");
    sub.send(&Packet::PubAck(Ack::new(seen.pkid))).await;
    // One delivered and not acknowledged (in flight), then offline: more queue.
    alice
        .send(&natter_e2e::publish_packet("jobs/kept/1", QoS::AtLeastOnce, 2, "m1"))
        .await;
    assert_eq!(alice.acks(1).await, vec![(2, reason::SUCCESS)]);
    assert_eq!(&sub.next_publish().await.payload[..], b"m1");
    drop(sub);
    b.wait_offline("bob").await;
    let mut with_props = natter_e2e::publish_packet("jobs/kept/2", QoS::ExactlyOnce, 3, "m2");
    if let Packet::Publish(p) = &mut with_props {
        p.properties.content_type = Some("text/plain".into());
        p.properties.user_properties = vec![("k".into(), "v".into())];
    }
    alice.send(&with_props).await;
    assert!(matches!(alice.recv().await, Some(Packet::PubRec(a)) if a.pkid == 3 && a.reason == 0));
    alice
        .send(&natter_e2e::publish_packet("jobs/kept/3", QoS::AtLeastOnce, 4, "m3"))
        .await;
    assert_eq!(alice.acks(1).await, vec![(4, reason::SUCCESS)]);
    // QoS 0 to an offline session is not kept (nor queued), as before.
    alice
        .send(&natter_e2e::publish_packet("jobs/kept/4", QoS::AtMostOnce, 0, "lost"))
        .await;

    let b = b.restart().await;
    let (mut sub, ack) = Raw::connect(b.addr, persistent("bob", "kept-sub")).await;
    assert!(ack.session_present);
    // The three come at once (within the inflight window); a PUBREL comes when its
    // release is on disk.
    let (mut got, mut released) = (Vec::new(), Vec::new());
    while got.len() < 3 || released.is_empty() {
        match sub.recv().await {
            Some(Packet::Publish(p)) => {
                match p.qos {
                    QoS::AtLeastOnce => sub.send(&Packet::PubAck(Ack::new(p.pkid))).await,
                    QoS::ExactlyOnce => sub.send(&Packet::PubRec(Ack::new(p.pkid))).await,
                    QoS::AtMostOnce => {}
                }
                got.push(p);
            }
            Some(Packet::PubRel(a)) => {
                sub.send(&Packet::PubComp(Ack::new(a.pkid))).await;
                released.push(a.pkid);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(released, vec![got[1].pkid]);
    let bodies: Vec<&[u8]> = got.iter().map(|p| &p.payload[..]).collect();
    assert_eq!(
        bodies,
        vec![&b"m1"[..], b"m2", b"m3"],
        "in order, the acknowledged one not again"
    );
    assert_eq!(got[1].qos, QoS::ExactlyOnce);
    assert_eq!(got[1].properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(got[1].properties.user_properties, vec![("k".into(), "v".into())]);
    assert_eq!(
        sub.recv_within(Duration::from_millis(300)).await,
        Err(()),
        "nothing more"
    );
    // All acknowledged: after another restart nothing comes back.
    drop(sub);
    b.wait_offline("bob").await;
    let b = b.restart().await;
    let (mut sub, ack) = Raw::connect(b.addr, persistent("bob", "kept-sub")).await;
    assert!(ack.session_present);
    assert_eq!(
        sub.recv_within(Duration::from_millis(300)).await,
        Err(()),
        "nothing kept"
    );
    b.stop().await;
}

/// A plain QoS 2 flow released to a persistent session's client (PUBREL sent) comes
/// back as that PUBREL after a restart, never as the message again.
#[tokio::test]
async fn a_released_plain_qos2_flow_survives_a_restart() {
    let b = TestBroker::start().await;
    let mut sub = subscribed(b.addr, persistent("bob", "q2-kept"), "q2/k/#", QoS::ExactlyOnce).await;
    let mut alice = Raw::login(b.addr, Protocol::V5, "alice", "q2k-pub").await;
    alice
        .send(&natter_e2e::publish_packet("q2/k/x", QoS::ExactlyOnce, 9, "once"))
        .await;
    assert!(matches!(alice.recv().await, Some(Packet::PubRec(a)) if a.pkid == 9));
    let got = sub.next_publish().await;
    assert_eq!(&got.payload[..], b"once");
    sub.send(&Packet::PubRec(Ack::new(got.pkid))).await;
    assert!(matches!(sub.recv().await, Some(Packet::PubRel(a)) if a.pkid == got.pkid));
    drop(sub);
    b.wait_offline("bob").await;

    let b = b.restart().await;
    let (mut sub, ack) = Raw::connect(b.addr, persistent("bob", "q2-kept")).await;
    assert!(ack.session_present);
    let mut seen = Vec::new();
    while let Ok(Some(p)) = sub.recv_within(Duration::from_millis(500)).await {
        seen.push(p);
    }
    assert_eq!(
        seen,
        vec![Packet::PubRel(Ack::new(got.pkid))],
        "PUBREL again, no PUBLISH"
    );
    sub.send(&Packet::PubComp(Ack::new(got.pkid))).await;
    drop(sub);
    b.wait_offline("bob").await;
    let b = b.restart().await;
    let (mut sub, _) = Raw::connect(b.addr, persistent("bob", "q2-kept")).await;
    assert_eq!(
        sub.recv_within(Duration::from_millis(300)).await,
        Err(()),
        "the flow is complete"
    );
    b.stop().await;
}

/// A QoS 2 publish from a persistent session whose PUBREL had not come is known after
/// a restart: the resent PUBLISH (DUP) is acknowledged and not routed again, and the
/// PUBREL finds its packet id.
#[tokio::test]
async fn a_received_qos2_publish_is_known_across_a_restart() {
    let b = TestBroker::start().await;
    let mut sub = subscribed(b.addr, persistent("bob", "q2-in-sub"), "q2/in/#", QoS::AtLeastOnce).await;
    let (mut publ, _) = Raw::connect(b.addr, persistent("alice", "q2-in-pub")).await;
    let p = natter_e2e::publish_packet("q2/in/x", QoS::ExactlyOnce, 5, "once");
    publ.send(&p).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubRec(a)) if a.pkid == 5 && a.reason == 0));
    let got = sub.next_publish().await;
    assert_eq!(&got.payload[..], b"once");
    sub.send(&Packet::PubAck(Ack::new(got.pkid))).await;
    drop(publ);
    b.wait_offline("alice").await;

    let b = b.restart().await;
    let (mut sub, _) = Raw::connect(b.addr, persistent("bob", "q2-in-sub")).await;
    let (mut publ, ack) = Raw::connect(b.addr, persistent("alice", "q2-in-pub")).await;
    assert!(ack.session_present);
    let mut dup = p.clone();
    if let Packet::Publish(p) = &mut dup {
        p.dup = true;
    }
    publ.send(&dup).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubRec(a)) if a.pkid == 5 && a.reason == 0));
    publ.send(&Packet::PubRel(Ack::new(5))).await;
    assert!(
        matches!(publ.recv().await, Some(Packet::PubComp(a)) if a.pkid == 5 && a.reason == 0),
        "the packet id is known"
    );
    assert_eq!(
        sub.recv_within(Duration::from_millis(300)).await,
        Err(()),
        "not routed a second time"
    );
    b.stop().await;
}

/// A clean start discards the kept messages of the session before it, on disk too:
/// after a restart they do not come back into the new session.
#[tokio::test]
async fn a_clean_start_discards_kept_messages_on_disk_too() {
    let b = TestBroker::start().await;
    drop(
        subscribed(
            b.addr,
            persistent("bob", "clean-kept"),
            "jobs/clean/#",
            QoS::AtLeastOnce,
        )
        .await,
    );
    b.wait_offline("bob").await;
    let mut alice = Raw::login(b.addr, Protocol::V5, "alice", "clean-pub").await;
    alice
        .send(&natter_e2e::publish_packet("jobs/clean/1", QoS::AtLeastOnce, 1, "old"))
        .await;
    assert_eq!(alice.acks(1).await, vec![(1, reason::SUCCESS)]);
    // Back with a clean start, persistent again: the old message is gone.
    let mut fresh = persistent("bob", "clean-kept");
    fresh.clean_start = true;
    let (mut sub, ack) = Raw::connect(b.addr, fresh).await;
    assert!(!ack.session_present);
    sub.send(&subscribe("jobs/clean/#", QoS::AtLeastOnce)).await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
    assert_eq!(sub.recv_within(Duration::from_millis(300)).await, Err(()), "discarded");
    drop(sub);
    b.wait_offline("bob").await;
    let b = b.restart().await;
    let (mut sub, ack) = Raw::connect(b.addr, persistent("bob", "clean-kept")).await;
    assert!(ack.session_present, "the new session is kept");
    assert_eq!(
        sub.recv_within(Duration::from_millis(300)).await,
        Err(()),
        "the discarded session's message stays gone after a restart"
    );
    b.stop().await;
}
