//! MQTT 5 features: CONNACK properties, subscription identifiers, no local, user
//! properties, message expiry, topic aliases, flow control both ways, the client's
//! maximum packet size, request/response properties, server shutdown.

use std::time::Duration;

use bytes::Bytes;
use natter_e2e::{connect_packet, publish_packet, Raw, TestBroker};
use natter_shared::codec::{
    reason, Ack, Packet, Properties, Protocol, QoS, Subscribe, SubscribeFilter, SubscriptionOptions,
};
use natter_shared::im::refusal;

fn sub(filter: &str, qos: QoS, id: Option<u32>, no_local: bool) -> Packet {
    Packet::Subscribe(Subscribe {
        pkid: 1,
        properties: Properties {
            subscription_identifiers: id.into_iter().collect(),
            ..Default::default()
        },
        filters: vec![SubscribeFilter {
            filter: filter.into(),
            options: SubscriptionOptions {
                qos,
                no_local,
                ..Default::default()
            },
        }],
    })
}

fn publish(topic: &str, qos: QoS, pkid: u16, properties: Properties, payload: &'static [u8]) -> Packet {
    let mut packet = publish_packet(topic, qos, pkid, Bytes::from_static(payload));
    if let Packet::Publish(p) = &mut packet {
        p.properties = properties;
    }
    packet
}

async fn subscribed(raw: &mut Raw, p: Packet) -> Vec<u8> {
    raw.send(&p).await;
    match raw.recv().await {
        Some(Packet::SubAck(a)) => a.codes,
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

#[tokio::test]
async fn connack_announces_limits_and_caps_keepalive() {
    let b = TestBroker::start_config(|c| c.limits.max_keepalive_secs = 60.try_into().unwrap()).await;
    let mut c = connect_packet(Protocol::V5, Some("alice"), "k");
    c.keep_alive = 3600;
    c.properties.session_expiry_interval = Some(u32::MAX);
    let (_raw, ack) = Raw::connect(b.addr, c).await;
    assert_eq!(ack.properties.server_keep_alive, Some(60));
    assert_eq!(ack.properties.receive_maximum, Some(64));
    assert_eq!(ack.properties.maximum_packet_size, Some(1_048_576));
    assert_eq!(ack.properties.topic_alias_maximum, Some(16));
    assert_eq!(
        ack.properties.session_expiry_interval,
        Some(604_800),
        "capped and announced"
    );
    b.stop().await;
}

#[tokio::test]
async fn subscription_identifiers_no_local_and_passthrough_properties() {
    let b = TestBroker::start().await;
    let mut s = Raw::login(b.addr, Protocol::V5, "bob", "s").await;
    assert_eq!(
        subscribed(&mut s, sub("a/+", QoS::AtMostOnce, Some(7), false)).await,
        vec![0]
    );
    assert_eq!(
        subscribed(&mut s, sub("a/#", QoS::AtLeastOnce, Some(9), false)).await,
        vec![1]
    );
    assert_eq!(
        subscribed(&mut s, sub("mine", QoS::AtMostOnce, None, true)).await,
        vec![0]
    );
    let mut p = Raw::login(b.addr, Protocol::V5, "alice", "p").await;
    let props = Properties {
        user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
        content_type: Some("text/plain".into()),
        response_topic: Some("replies/alice".into()),
        correlation_data: Some(Bytes::from_static(b"corr-1")),
        payload_format_indicator: Some(1),
        ..Default::default()
    };
    p.send(&publish("a/b", QoS::AtLeastOnce, 1, props.clone(), b"hello"))
        .await;
    assert!(matches!(p.recv().await, Some(Packet::PubAck(a)) if a.reason == 0));
    let Some(Packet::Publish(got)) = s.recv().await else {
        panic!("publish")
    };
    assert_eq!(got.qos, QoS::AtLeastOnce);
    let mut ids = got.properties.subscription_identifiers.clone();
    ids.sort_unstable();
    assert_eq!(ids, vec![7, 9], "once, with every matching identifier");
    assert_eq!(got.properties.user_properties, props.user_properties, "order kept");
    assert_eq!(got.properties.content_type, props.content_type);
    assert_eq!(got.properties.response_topic, props.response_topic);
    assert_eq!(got.properties.correlation_data, props.correlation_data);
    s.send(&Packet::PubAck(Ack::new(got.pkid))).await;
    // No local: own publish to "mine" is not echoed back.
    s.send(&publish("mine", QoS::AtLeastOnce, 5, Properties::default(), b"me"))
        .await;
    assert!(matches!(s.recv().await, Some(Packet::PubAck(a)) if a.reason == reason::NO_MATCHING_SUBSCRIBERS));
    assert_eq!(s.recv_within(Duration::from_millis(300)).await, Err(()));
    b.stop().await;
}

#[tokio::test]
async fn message_expiry_is_counted_down_and_expired_messages_are_dropped() {
    let b = TestBroker::start().await;
    let mut c = connect_packet(Protocol::V5, Some("bob"), "away");
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(60);
    let (mut s, _) = Raw::connect(b.addr, c.clone()).await;
    subscribed(&mut s, sub("e/#", QoS::AtLeastOnce, None, false)).await;
    drop(s);
    let mut p = Raw::login(b.addr, Protocol::V5, "alice", "p").await;
    let short = Properties {
        message_expiry_interval: Some(1),
        ..Default::default()
    };
    let long = Properties {
        message_expiry_interval: Some(100),
        ..Default::default()
    };
    p.send(&publish("e/short", QoS::AtLeastOnce, 1, short, b"s")).await;
    p.send(&publish("e/long", QoS::AtLeastOnce, 2, long, b"l")).await;
    p.recv().await;
    p.recv().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (mut s, ack) = Raw::connect(b.addr, c).await;
    assert!(ack.session_present);
    let Some(Packet::Publish(got)) = s.recv().await else {
        panic!("publish")
    };
    assert_eq!(&*got.topic, "e/long", "the expired message was dropped");
    let left = got.properties.message_expiry_interval.expect("expiry sent on");
    assert!((98..=100).contains(&left), "counted down: {left}");
    b.stop().await;
}

#[tokio::test]
async fn inbound_topic_aliases() {
    let b = TestBroker::start().await;
    let mut s = Raw::login(b.addr, Protocol::V5, "bob", "s").await;
    subscribed(&mut s, sub("sensors/#", QoS::AtMostOnce, None, false)).await;
    let mut p = Raw::login(b.addr, Protocol::V5, "alice", "p").await;
    let alias = |a| Properties {
        topic_alias: Some(a),
        ..Default::default()
    };
    p.send(&publish("sensors/temp", QoS::AtMostOnce, 0, alias(3), b"20"))
        .await;
    p.send(&publish("", QoS::AtMostOnce, 0, alias(3), b"21")).await;
    for v in [b"20", b"21"] {
        let Some(Packet::Publish(got)) = s.recv().await else {
            panic!("publish")
        };
        assert_eq!((&*got.topic, &got.payload[..]), ("sensors/temp", &v[..]));
    }
    // An alias above our maximum is a protocol violation.
    p.send(&publish("x", QoS::AtMostOnce, 0, alias(500), b"")).await;
    assert!(
        matches!(p.until_closed().await.as_slice(), [Packet::Disconnect(d)] if d.reason == reason::TOPIC_ALIAS_INVALID)
    );
    // An unknown alias with an empty topic too.
    let mut p = Raw::login(b.addr, Protocol::V5, "alice", "p2").await;
    p.send(&publish("", QoS::AtMostOnce, 0, alias(4), b"")).await;
    assert!(matches!(p.until_closed().await.as_slice(), [Packet::Disconnect(d)] if d.reason == reason::PROTOCOL_ERROR));
    b.stop().await;
}

/// A client announcing a Topic Alias Maximum gets aliases: a topic in full with its
/// alias the first time, then the alias alone; the least recently used alias is
/// remapped when all are taken. A client that announces none gets topics in full.
#[tokio::test]
async fn outbound_topic_aliases_for_clients_that_allow_them() {
    let b = TestBroker::start().await;
    let mut c = connect_packet(Protocol::V5, Some("bob"), "small-device");
    c.properties.topic_alias_maximum = Some(1);
    let (mut s, _) = Raw::connect(b.addr, c).await;
    subscribed(&mut s, sub("sensors/#", QoS::AtMostOnce, None, false)).await;
    let mut plain = Raw::login(b.addr, Protocol::V5, "carol", "no-aliases").await;
    subscribed(&mut plain, sub("sensors/#", QoS::AtMostOnce, None, false)).await;
    let mut p = Raw::login(b.addr, Protocol::V5, "alice", "p").await;
    for topic in ["sensors/a", "sensors/a", "sensors/b", "sensors/a"] {
        p.send(&publish(topic, QoS::AtMostOnce, 0, Properties::default(), b"x"))
            .await;
    }
    let mut seen = Vec::new();
    for _ in 0..4 {
        let Some(Packet::Publish(got)) = s.recv().await else {
            panic!("publish")
        };
        seen.push((got.topic.to_string(), got.properties.topic_alias));
    }
    let want = [("sensors/a", 1), ("", 1), ("sensors/b", 1), ("sensors/a", 1)];
    let want: Vec<_> = want.iter().map(|(t, a)| (t.to_string(), Some(*a))).collect();
    assert_eq!(seen, want);
    for topic in ["sensors/a", "sensors/a", "sensors/b", "sensors/a"] {
        let Some(Packet::Publish(got)) = plain.recv().await else {
            panic!("publish")
        };
        assert_eq!((&*got.topic, got.properties.topic_alias), (topic, None));
    }
    b.stop().await;
}

#[tokio::test]
async fn clients_receive_maximum_is_honoured() {
    let b = TestBroker::start().await;
    let mut c = connect_packet(Protocol::V5, Some("bob"), "slow");
    c.properties.receive_maximum = Some(2);
    let (mut s, _) = Raw::connect(b.addr, c).await;
    subscribed(&mut s, sub("f/#", QoS::AtLeastOnce, None, false)).await;
    let mut p = Raw::login(b.addr, Protocol::V5, "alice", "p").await;
    for i in 1..=5u16 {
        p.send(&publish("f/x", QoS::AtLeastOnce, i, Properties::default(), b"m"))
            .await;
    }
    let mut pending = Vec::new();
    for _ in 0..2 {
        let Some(Packet::Publish(got)) = s.recv().await else {
            panic!("publish")
        };
        pending.push(got.pkid);
    }
    assert_eq!(
        s.recv_within(Duration::from_millis(300)).await,
        Err(()),
        "window of 2 is full"
    );
    s.send(&Packet::PubAck(Ack::new(pending[0]))).await;
    assert!(
        matches!(s.recv().await, Some(Packet::Publish(_))),
        "one more after one ack"
    );
    assert_eq!(s.recv_within(Duration::from_millis(300)).await, Err(()));
    b.stop().await;
}

#[tokio::test]
async fn clients_maximum_packet_size_is_respected() {
    let b = TestBroker::start().await;
    let mut c = connect_packet(Protocol::V5, Some("bob"), "tiny");
    c.properties.maximum_packet_size = Some(100);
    let (mut s, _) = Raw::connect(b.addr, c).await;
    subscribed(&mut s, sub("m/#", QoS::AtMostOnce, None, false)).await;
    let mut p = Raw::login(b.addr, Protocol::V5, "alice", "p").await;
    p.send(&publish(
        "m/big",
        QoS::AtMostOnce,
        0,
        Properties::default(),
        &[b'x'; 200],
    ))
    .await;
    p.send(&publish("m/small", QoS::AtMostOnce, 0, Properties::default(), b"ok"))
        .await;
    let Some(Packet::Publish(got)) = s.recv().await else {
        panic!("publish")
    };
    assert_eq!(&*got.topic, "m/small", "the oversized message was skipped");
    b.stop().await;
}

#[tokio::test]
async fn refused_publish_gets_0x87_on_v5_and_a_plain_ack_on_v311() {
    let b = TestBroker::start().await;
    let mut p = Raw::login(b.addr, Protocol::V5, "alice", "p").await;
    p.send(&publish(
        "$SYS/forged",
        QoS::AtLeastOnce,
        1,
        Properties::default(),
        b"x",
    ))
    .await;
    assert!(matches!(p.recv().await, Some(Packet::PubAck(a)) if a.reason == reason::NOT_AUTHORIZED));
    p.send(&publish(
        "$SYS/forged",
        QoS::ExactlyOnce,
        2,
        Properties::default(),
        b"x",
    ))
    .await;
    assert!(matches!(p.recv().await, Some(Packet::PubRec(a)) if a.reason == reason::NOT_AUTHORIZED));
    // The cause comes as the Reason String.
    let cases = [
        ("dm/nobody", refusal::NO_SUCH_USER),
        ("group/nogroup", refusal::NOT_MEMBER),
        ("inbox/bob/dm/alice", refusal::FORBIDDEN_TOPIC),
    ];
    for (pkid, (topic, why)) in (3..).zip(cases) {
        p.send(&publish(topic, QoS::AtLeastOnce, pkid, Properties::default(), b"x"))
            .await;
        match p.recv().await {
            Some(Packet::PubAck(a)) => {
                assert_eq!((a.pkid, a.reason), (pkid, reason::NOT_AUTHORIZED), "{topic}");
                assert_eq!(a.properties.reason_string.as_deref(), Some(why), "{topic}");
            }
            other => panic!("{topic}: expected PUBACK, got {other:?}"),
        }
    }
    let mut p3 = Raw::login(b.addr, Protocol::V311, "alice", "p3").await;
    p3.send(&publish(
        "$SYS/forged",
        QoS::AtLeastOnce,
        1,
        Properties::default(),
        b"x",
    ))
    .await;
    assert!(matches!(p3.recv().await, Some(Packet::PubAck(a)) if a.pkid == 1));
    // The subscription side: failure codes, never a silent empty subscription.
    let mut s = Raw::login(b.addr, Protocol::V5, "bob", "s").await;
    assert_eq!(
        subscribed(&mut s, sub("$SYS/#", QoS::AtMostOnce, None, false)).await,
        vec![reason::NOT_AUTHORIZED]
    );
    b.stop().await;
}

#[tokio::test]
async fn shutdown_tells_v5_clients() {
    let b = TestBroker::start().await;
    let mut s = Raw::login(b.addr, Protocol::V5, "bob", "s").await;
    let stopping = tokio::spawn(b.stop());
    let seen = s.until_closed().await;
    assert!(
        matches!(seen.as_slice(), [Packet::Disconnect(d)] if d.reason == reason::SERVER_SHUTTING_DOWN),
        "{seen:?}"
    );
    stopping.await.unwrap();
}
