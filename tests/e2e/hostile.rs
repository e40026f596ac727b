//! Malformed and hostile input: the broker refuses it, closes that connection, logs,
//! and keeps serving everyone else.

use std::time::Duration;

use natter_e2e::{connect_packet, publish_packet as publish, v3, Raw, TestBroker};
use natter_shared::codec::{reason, Ack, Packet, Protocol, QoS};
use tokio::io::AsyncWriteExt;

async fn still_serving(b: &TestBroker) {
    let mut sub = v3::connect(v3::options(b.addr, "health-sub", Some("bob")))
        .await
        .expect("broker still accepts");
    sub.client.subscribe("health", v3::QoS::AtLeastOnce).await.unwrap();
    sub.suback().await;
    let p = v3::connect(v3::options(b.addr, "health-pub", Some("alice")))
        .await
        .unwrap();
    p.client
        .publish("health", v3::QoS::AtLeastOnce, false, "ok")
        .await
        .unwrap();
    assert_eq!(&sub.publish().await.payload[..], b"ok");
}

#[tokio::test]
async fn oversized_packet_is_refused_from_its_header() {
    let b = TestBroker::start_config(|c| c.limits.max_packet_size = 1024.try_into().unwrap()).await;
    let mut raw = Raw::login(b.addr, Protocol::V5, "alice", "big").await;
    // Only the fixed header of a 10 MB packet: refused before the body arrives.
    raw.send_bytes(&[0x30, 0x80, 0xad, 0xe2, 0x04]).await;
    let seen = raw.until_closed().await;
    assert!(
        matches!(seen.as_slice(), [Packet::Disconnect(d)] if d.reason == reason::PACKET_TOO_LARGE),
        "{seen:?}"
    );
    let mut raw = Raw::login(b.addr, Protocol::V311, "alice", "big3").await;
    raw.send(&publish("t", QoS::AtMostOnce, 0, vec![0; 2000])).await;
    assert!(raw.until_closed().await.is_empty());
    still_serving(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn garbage_bytes_close_the_connection() {
    let b = TestBroker::start().await;
    for garbage in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0xff; 64][..],
        &[0x10, 0x02, 0x00, 0x04][..],
        &[0x00, 0x00][..],
    ] {
        let mut raw = Raw::open(b.addr, Protocol::V311).await;
        raw.send_bytes(garbage).await;
        assert!(
            raw.until_closed().await.is_empty(),
            "closed without a reply for {garbage:?}"
        );
    }
    // After CONNECT: an invalid packet type and a malformed subscribe.
    let mut raw = Raw::login(b.addr, Protocol::V5, "alice", "g").await;
    raw.send_bytes(&[0x82, 0x04, 0x00, 0x01, 0x00, 0x00]).await;
    let seen = raw.until_closed().await;
    assert!(
        matches!(seen.as_slice(), [Packet::Disconnect(d)] if d.reason == reason::MALFORMED_PACKET),
        "{seen:?}"
    );
    let mut raw = Raw::login(b.addr, Protocol::V311, "alice", "g3").await;
    raw.send_bytes(&[0xf0, 0x00]).await;
    assert!(raw.until_closed().await.is_empty());
    still_serving(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn half_open_socket_is_closed_after_the_connect_timeout() {
    let b = TestBroker::start_config(|c| c.limits.connect_timeout_ms = 300.try_into().unwrap()).await;
    let mut silent = Raw::open(b.addr, Protocol::V311).await;
    let started = std::time::Instant::now();
    assert!(silent.until_closed().await.is_empty());
    assert!(started.elapsed() < Duration::from_secs(3));
    // A partial CONNECT is closed too.
    let mut partial = Raw::open(b.addr, Protocol::V311).await;
    partial.send_bytes(&[0x10, 0x20, 0x00]).await;
    assert!(partial.until_closed().await.is_empty());
    still_serving(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn unsupported_protocol_and_non_connect_first_packet() {
    let b = TestBroker::start().await;
    let mut raw = Raw::open(b.addr, Protocol::V311).await;
    raw.send_bytes(&[
        0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x03, 0x02, 0x00, 0x3c, 0x00, 0x00,
    ])
    .await;
    assert!(
        matches!(raw.recv().await, Some(Packet::ConnAck(a)) if a.code == reason::v3::UNACCEPTABLE_PROTOCOL_VERSION)
    );
    let mut raw = Raw::open(b.addr, Protocol::V311).await;
    raw.send(&Packet::PingReq).await;
    assert!(raw.until_closed().await.is_empty());
    // A second CONNECT is a protocol error.
    let mut raw = Raw::login(b.addr, Protocol::V5, "alice", "twice").await;
    raw.send(&Packet::Connect(Box::new(connect_packet(
        Protocol::V5,
        Some("alice"),
        "twice",
    ))))
    .await;
    assert!(
        matches!(raw.until_closed().await.as_slice(), [Packet::Disconnect(d)] if d.reason == reason::PROTOCOL_ERROR)
    );
    still_serving(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn qos2_duplicates_are_routed_once() {
    let b = TestBroker::start().await;
    let mut sub = v3::connect(v3::options(b.addr, "s", Some("bob"))).await.unwrap();
    sub.client.subscribe("q2", v3::QoS::ExactlyOnce).await.unwrap();
    sub.suback().await;
    let mut raw = Raw::login(b.addr, Protocol::V311, "alice", "p").await;
    raw.send(&publish("q2", QoS::ExactlyOnce, 9, b"once".to_vec())).await;
    assert!(matches!(raw.recv().await, Some(Packet::PubRec(a)) if a.pkid == 9));
    let mut dup = publish("q2", QoS::ExactlyOnce, 9, b"once".to_vec());
    if let Packet::Publish(p) = &mut dup {
        p.dup = true;
    }
    raw.send(&dup).await;
    assert!(matches!(raw.recv().await, Some(Packet::PubRec(a)) if a.pkid == 9));
    raw.send(&Packet::PubRel(Ack::new(9))).await;
    assert!(matches!(raw.recv().await, Some(Packet::PubComp(a)) if a.pkid == 9));
    assert_eq!(&sub.publish().await.payload[..], b"once");
    sub.no_publish(Duration::from_millis(300)).await;
    b.stop().await;
}

#[tokio::test]
async fn client_exceeding_our_receive_maximum_is_disconnected() {
    let b = TestBroker::start_config(|c| c.limits.receive_maximum = 2.try_into().unwrap()).await;
    let (mut raw, ack) = Raw::connect(b.addr, connect_packet(Protocol::V5, Some("alice"), "greedy")).await;
    assert_eq!(ack.properties.receive_maximum, Some(2));
    for pkid in 1..=3 {
        raw.send(&publish("t", QoS::ExactlyOnce, pkid, b"x".to_vec())).await;
    }
    let seen = raw.until_closed().await;
    assert!(
        matches!(seen.last(), Some(Packet::Disconnect(d)) if d.reason == reason::RECEIVE_MAXIMUM_EXCEEDED),
        "{seen:?}"
    );
    b.stop().await;
}

#[tokio::test]
async fn connection_limit_closes_extra_sockets() {
    let b = TestBroker::start_config(|c| c.limits.max_connections = 2.try_into().unwrap()).await;
    let _a = Raw::login(b.addr, Protocol::V311, "alice", "1").await;
    let _b = Raw::login(b.addr, Protocol::V311, "bob", "2").await;
    let mut third = Raw::open(b.addr, Protocol::V311).await;
    let _ = third.stream.write_all(&[0x10]).await;
    assert!(third.until_closed().await.is_empty());
    b.stop().await;
}
