//! Malformed and hostile input: the broker refuses it, closes that connection, logs,
//! and keeps serving everyone else.

use std::time::Duration;

use natter_e2e::{connect_packet, publish_packet as publish, v3, Raw, TestBroker, WAIT};
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

/// A client that writes on past the packet that ends its connection is not answered
/// with a reset: the broker half-closes after its DISCONNECT and reads on briefly, so
/// the client's writes still succeed and its read ends in a clean end of stream. (A
/// socket closed outright answers later writes with RST: the client's write fails
/// with a broken pipe, as the Paho suite's v5 flow-control test saw.)
#[tokio::test]
async fn a_client_writing_on_past_a_violation_gets_no_reset() {
    use tokio::io::AsyncReadExt;
    let b = TestBroker::start_config(|c| c.limits.receive_maximum = 2.try_into().unwrap()).await;
    let (mut raw, _) = Raw::connect(b.addr, connect_packet(Protocol::V5, Some("alice"), "flood")).await;
    for pkid in 1..=3 {
        raw.send(&publish("t", QoS::ExactlyOnce, pkid, b"x".to_vec())).await;
    }
    loop {
        match raw.recv().await {
            Some(Packet::Disconnect(d)) => {
                assert_eq!(d.reason, reason::RECEIVE_MAXIMUM_EXCEEDED);
                break;
            }
            Some(_) => continue,
            None => panic!("closed without a DISCONNECT"),
        }
    }
    // Still writing, as a client that has not looked at its input yet would.
    for pkid in 4..=6 {
        let mut bytes = bytes::BytesMut::new();
        publish("t", QoS::ExactlyOnce, pkid, b"x".to_vec()).encode(&mut bytes, Protocol::V5);
        raw.stream
            .write_all(&bytes)
            .await
            .expect("no reset while the broker drains");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut rest = Vec::new();
    let end = tokio::time::timeout(WAIT, raw.stream.read_to_end(&mut rest)).await;
    assert!(matches!(end, Ok(Ok(_))), "a clean end of stream, not a reset: {end:?}");
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

/// What a v5 client that logged in and then sent `bytes` gets before the close.
async fn answer_to(b: &TestBroker, bytes: &[u8]) -> Vec<Packet> {
    let mut raw = Raw::login(b.addr, Protocol::V5, "alice", "violator").await;
    raw.send_bytes(bytes).await;
    raw.until_closed().await
}

fn disconnected_with(seen: &[Packet], code: u8) -> bool {
    matches!(seen, [Packet::Disconnect(d)] if d.reason == code)
}

#[tokio::test]
async fn protocol_violations_after_connect_get_their_reason_codes() {
    let b = TestBroker::start().await;
    // Topic alias 0 (MQTT-3.3.2-8), written by hand: the codec cannot build it.
    let seen = answer_to(&b, &[0x30, 8, 0, 1, b't', 3, 0x23, 0, 0, b'x']).await;
    assert!(disconnected_with(&seen, reason::PROTOCOL_ERROR), "alias 0: {seen:?}");
    // A client may not send a subscription identifier on PUBLISH (MQTT-3.3.4-6).
    let seen = answer_to(&b, &[0x30, 7, 0, 1, b't', 2, 0x0B, 1, b'x']).await;
    assert!(disconnected_with(&seen, reason::PROTOCOL_ERROR), "sub id: {seen:?}");
    // A topic that is not UTF-8 (MQTT-1.5.4-1).
    let seen = answer_to(&b, &[0x30, 5, 0, 2, 0xC3, 0x28, 0]).await;
    assert!(
        disconnected_with(&seen, reason::MALFORMED_PACKET),
        "bad UTF-8: {seen:?}"
    );
    // A remaining length longer than four bytes.
    let seen = answer_to(&b, &[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]).await;
    assert!(disconnected_with(&seen, reason::MALFORMED_PACKET), "varint: {seen:?}");
    // A PINGREQ whose remaining length 0 is padded to two bytes (MQTT-1.5.5-1): were
    // it accepted, the answer would be a PINGRESP.
    let seen = answer_to(&b, &[0xC0, 0x80, 0x00]).await;
    assert!(disconnected_with(&seen, reason::MALFORMED_PACKET), "padded: {seen:?}");
    // The same inside a packet: a property length of 0 written in two bytes.
    let seen = answer_to(&b, &[0x30, 6, 0, 1, b't', 0x80, 0x00, b'x']).await;
    assert!(
        disconnected_with(&seen, reason::MALFORMED_PACKET),
        "padded property length: {seen:?}"
    );
    still_serving(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn payload_format_and_unknown_packet_ids_are_answered_not_fatal() {
    let b = TestBroker::start().await;
    let mut raw = Raw::login(b.addr, Protocol::V5, "alice", "fmt").await;
    // Payload Format Indicator 1 (UTF-8) on bytes that are not: PUBACK 0x99.
    raw.send_bytes(&[0x32, 9, 0, 1, b't', 0, 7, 2, 0x01, 0x01, 0xff]).await;
    assert_eq!(raw.acks(1).await, vec![(7, reason::PAYLOAD_FORMAT_INVALID)]);
    // PUBREL for a packet id the broker never received: PUBCOMP 0x92.
    raw.send(&Packet::PubRel(Ack::new(42))).await;
    match raw.recv().await {
        Some(Packet::PubComp(a)) => assert_eq!((a.pkid, a.reason), (42, reason::PACKET_IDENTIFIER_NOT_FOUND)),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    // The connection is still good.
    raw.send(&Packet::PingReq).await;
    assert_eq!(raw.recv().await, Some(Packet::PingResp));
    b.stop().await;
}

#[tokio::test]
async fn a_stalled_packet_after_connect_ends_at_the_keepalive() {
    let b = TestBroker::start().await;
    let mut c = connect_packet(Protocol::V5, Some("alice"), "slowloris");
    c.keep_alive = 1;
    let (mut raw, _) = Raw::connect(b.addr, c).await;
    // Half a PUBLISH, then nothing: the partial packet does not count as activity.
    raw.send_bytes(&[0x30, 100, 0, 1, b't']).await;
    let started = std::time::Instant::now();
    let seen = raw.until_closed().await;
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    assert!(disconnected_with(&seen, reason::KEEP_ALIVE_TIMEOUT), "{seen:?}");
    still_serving(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn silent_sockets_fill_the_connection_limit_only_until_the_connect_timeout() {
    let b = TestBroker::start_config(|c| {
        c.limits.max_connections = 3.try_into().unwrap();
        c.limits.connect_timeout_ms = 300.try_into().unwrap();
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(Raw::open(b.addr, Protocol::V311).await);
    }
    // All closed by the broker after the connect timeout, freeing the permits.
    for s in &mut silent {
        assert!(s.until_closed().await.is_empty());
    }
    drop(silent);
    // Polls: the permits come back as the broker finishes each closed socket.
    let deadline = tokio::time::Instant::now() + natter_e2e::WAIT;
    loop {
        let mut raw = Raw::open(b.addr, Protocol::V311).await;
        raw.send(&Packet::Connect(Box::new(connect_packet(
            Protocol::V311,
            Some("alice"),
            "after",
        ))))
        .await;
        if let Ok(Some(Packet::ConnAck(a))) = raw.recv_within(Duration::from_secs(2)).await {
            assert_eq!(a.code, 0);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no permit came back");
    }
    b.stop().await;
}

#[tokio::test]
async fn a_subscribe_flood_does_not_hurt_anyone_else() {
    let b = TestBroker::start_config(|c| c.limits.max_subscriptions_per_session = 50.try_into().unwrap()).await;
    let mut flood = Raw::login(b.addr, Protocol::V5, "alice", "flooder").await;
    // 2,000 SUBSCRIBEs written without reading a single SUBACK.
    let mut out = bytes::BytesMut::new();
    for i in 0..2000u16 {
        let mut p = natter_e2e::subscribe_packet(&format!("flood/{i}"), QoS::AtMostOnce);
        if let Packet::Subscribe(s) = &mut p {
            s.pkid = i + 1;
        }
        p.encode(&mut out, Protocol::V5);
    }
    let _ = flood.stream.write_all(&out).await;
    still_serving(&b).await;
    // The flooder gets every SUBACK in order, the ones past the bound refused.
    let mut granted = 0;
    for i in 0..2000u16 {
        match flood.recv().await {
            Some(Packet::SubAck(a)) => {
                assert_eq!(a.pkid, i + 1);
                if a.codes == [0] {
                    granted += 1;
                } else {
                    assert_eq!(a.codes, [reason::QUOTA_EXCEEDED]);
                }
            }
            other => panic!("SUBACK {i}: {other:?}"),
        }
    }
    assert_eq!(granted, 50);
    b.stop().await;
}
