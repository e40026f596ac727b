//! The bounds in `[limits]`, each seen by a client: client id length, subscriptions
//! per session, retained messages, the 3.1.1 inflight window, the client's maximum
//! packet size on the send side, keepalive 0, and 3.1.1 persistent session expiry.

use std::time::Duration;

use natter_e2e::{connect_packet, publish_packet, Raw, TestBroker};
use natter_shared::codec::{reason, Ack, Packet, Protocol, QoS};

#[tokio::test]
async fn an_over_long_client_id_is_refused_in_both_versions() {
    let b = TestBroker::start_config(|c| c.limits.max_client_id_len = 8.try_into().unwrap()).await;
    let (_, ack) = Raw::connect(b.addr, connect_packet(Protocol::V5, Some("alice"), "123456789")).await;
    assert_eq!(ack.code, reason::CLIENT_IDENTIFIER_NOT_VALID);
    let (_, ack) = Raw::connect(b.addr, connect_packet(Protocol::V311, Some("alice"), "123456789")).await;
    assert_eq!(ack.code, reason::v3::IDENTIFIER_REJECTED);
    // At the bound it is fine.
    let (_, ack) = Raw::connect(b.addr, connect_packet(Protocol::V5, Some("alice"), "12345678")).await;
    assert_eq!(ack.code, reason::SUCCESS);
    b.stop().await;
}

#[tokio::test]
async fn subscriptions_per_session_are_bounded() {
    let b = TestBroker::start_config(|c| c.limits.max_subscriptions_per_session = 2.try_into().unwrap()).await;
    let mut v5 = Raw::login(b.addr, Protocol::V5, "bob", "subs5").await;
    assert_eq!(v5.subscribe("a/1", QoS::AtMostOnce).await, 0);
    assert_eq!(v5.subscribe("a/2", QoS::AtMostOnce).await, 0);
    assert_eq!(v5.subscribe("a/3", QoS::AtMostOnce).await, reason::QUOTA_EXCEEDED);
    // Re-subscribing to an existing filter is not a new subscription.
    assert_eq!(v5.subscribe("a/1", QoS::AtLeastOnce).await, 1);
    let mut v3 = Raw::login(b.addr, Protocol::V311, "bob", "subs3").await;
    assert_eq!(v3.subscribe("a/1", QoS::AtMostOnce).await, 0);
    assert_eq!(v3.subscribe("a/2", QoS::AtMostOnce).await, 0);
    assert_eq!(v3.subscribe("a/3", QoS::AtMostOnce).await, reason::v3::SUBACK_FAILURE);
    b.stop().await;
}

#[tokio::test]
async fn retained_messages_are_bounded() {
    // The broker's own presence topics count too: alice's connection holds one.
    let b = TestBroker::start_config(|c| c.limits.max_retained_messages = 3.try_into().unwrap()).await;
    let mut p = Raw::login(b.addr, Protocol::V5, "alice", "ret").await;
    let retained = |topic: &str, pkid: u16, payload: &'static str| {
        let mut m = publish_packet(topic, QoS::AtLeastOnce, pkid, payload);
        if let Packet::Publish(p) = &mut m {
            p.retain = true;
        }
        m
    };
    let mut codes = Vec::new();
    for (i, topic) in ["r/1", "r/2", "r/3"].iter().enumerate() {
        p.send(&retained(topic, i as u16 + 1, "v")).await;
        codes.push(p.acks(1).await[0].1);
    }
    assert_eq!(
        codes,
        vec![reason::SUCCESS, reason::SUCCESS, reason::QUOTA_EXCEEDED],
        "presence/alice and r/1, r/2 fill the store"
    );
    // Success: kept (on disk) for later subscribers. Replacing a retained topic is
    // always allowed; so is clearing one.
    p.send(&retained("r/1", 4, "v2")).await;
    assert_eq!(p.acks(1).await[0].1, reason::SUCCESS);
    p.send(&retained("r/2", 5, "")).await;
    assert_eq!(p.acks(1).await[0].1, reason::SUCCESS);
    p.send(&retained("r/3", 6, "v")).await;
    assert_eq!(p.acks(1).await[0].1, reason::SUCCESS, "room again");
    let mut s = Raw::login(b.addr, Protocol::V311, "bob", "reader").await;
    assert_eq!(s.subscribe("r/#", QoS::AtMostOnce).await, 0);
    let mut got = [s.next_publish().await, s.next_publish().await];
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(
        got.iter().map(|p| (&*p.topic, &p.payload[..])).collect::<Vec<_>>(),
        vec![("r/1", &b"v2"[..]), ("r/3", &b"v"[..])]
    );
    b.stop().await;
}

#[tokio::test]
async fn v311_inflight_window_is_capped() {
    let b = TestBroker::start_config(|c| c.limits.max_inflight = 2.try_into().unwrap()).await;
    let mut s = Raw::login(b.addr, Protocol::V311, "bob", "window3").await;
    assert_eq!(s.subscribe("f/#", QoS::AtLeastOnce).await, 1);
    let mut p = Raw::login(b.addr, Protocol::V5, "alice", "p").await;
    for i in 1..=4u16 {
        p.send(&publish_packet("f/x", QoS::AtLeastOnce, i, format!("m{i}")))
            .await;
    }
    p.acks(4).await;
    let first = s.next_publish().await;
    let second = s.next_publish().await;
    assert_eq!((&first.payload[..], &second.payload[..]), (&b"m1"[..], &b"m2"[..]));
    assert_eq!(
        s.recv_within(Duration::from_millis(300)).await,
        Err(()),
        "two in flight, nothing more until one is acknowledged"
    );
    s.send(&Packet::PubAck(Ack::new(first.pkid))).await;
    assert_eq!(&s.next_publish().await.payload[..], b"m3");
    assert_eq!(s.recv_within(Duration::from_millis(300)).await, Err(()));
    b.stop().await;
}

#[tokio::test]
async fn the_clients_maximum_packet_size_holds_for_qos1_and_mailbox_deliveries() {
    let b = TestBroker::start().await;
    let mut c = connect_packet(Protocol::V5, Some("bob"), "tiny");
    c.properties.maximum_packet_size = Some(120);
    let (mut s, _) = Raw::connect(b.addr, c).await;
    assert_eq!(s.subscribe("m/#", QoS::AtLeastOnce).await, 1);
    assert_eq!(s.subscribe("inbox/bob/#", QoS::AtLeastOnce).await, 1);
    let mut p = Raw::login(b.addr, Protocol::V5, "alice", "p").await;
    let big = vec![b'x'; 300];
    p.send(&publish_packet("m/big", QoS::AtLeastOnce, 1, big.clone())).await;
    p.send(&publish_packet("m/small", QoS::AtLeastOnce, 2, "ok")).await;
    p.send(&publish_packet("dm/bob", QoS::AtLeastOnce, 3, big)).await;
    p.send(&publish_packet("dm/bob", QoS::AtLeastOnce, 4, "small dm")).await;
    p.acks(4).await;
    let got = s.next_publish().await;
    assert_eq!((&*got.topic, &got.payload[..]), ("m/small", &b"ok"[..]));
    s.send(&Packet::PubAck(Ack::new(got.pkid))).await;
    let got = s.next_publish().await;
    assert_eq!(
        (&*got.topic, &got.payload[..]),
        ("inbox/bob/dm/alice", &b"small dm"[..])
    );
    s.send(&Packet::PubAck(Ack::new(got.pkid))).await;
    assert_eq!(
        s.recv_within(Duration::from_millis(300)).await,
        Err(()),
        "the oversized ones were never sent"
    );
    b.stop().await;
}

#[tokio::test]
async fn keepalive_zero_is_never_timed_out() {
    let b = TestBroker::start().await;
    let mut c = connect_packet(Protocol::V5, Some("alice"), "forever");
    c.keep_alive = 0;
    let (mut raw, ack) = Raw::connect(b.addr, c).await;
    assert_eq!(ack.code, 0);
    assert_eq!(
        ack.properties.server_keep_alive, None,
        "0 is within the cap: no Server Keep Alive"
    );
    // Silent for longer than any timer a keepalive of 1 would give.
    assert_eq!(
        raw.recv_within(Duration::from_millis(2500)).await,
        Err(()),
        "still open"
    );
    raw.send(&Packet::PingReq).await;
    assert_eq!(raw.recv().await, Some(Packet::PingResp));
    b.stop().await;
}

#[tokio::test]
async fn v311_persistent_sessions_expire_after_the_cap() {
    let b = TestBroker::start_config(|c| c.limits.max_session_expiry_secs = 1).await;
    let mut c = connect_packet(Protocol::V311, Some("bob"), "phone");
    c.clean_start = false;
    let (mut raw, ack) = Raw::connect(b.addr, c.clone()).await;
    assert!(!ack.session_present);
    assert_eq!(raw.subscribe("f/#", QoS::AtLeastOnce).await, 1);
    drop(raw);
    b.wait_offline("bob").await;
    // Within the cap the session is there.
    let (raw, ack) = Raw::connect(b.addr, c.clone()).await;
    assert!(ack.session_present, "resumed within the second");
    drop(raw);
    b.wait_offline("bob").await;
    let gone_at = tokio::time::Instant::now();
    b.wait_until("the session expired", || b.router().sessions_of("bob").is_empty())
        .await;
    assert!(gone_at.elapsed() >= Duration::from_millis(900), "kept for the cap");
    let (_, ack) = Raw::connect(b.addr, c).await;
    assert!(!ack.session_present, "expired after max_session_expiry_secs");
    b.stop().await;
}
