//! Will messages: an abrupt close fires the will; a DISCONNECT does not; v5 will
//! delay is cancelled by a reconnect.

use std::time::Duration;

use bytes::Bytes;
use natter_e2e::{connect_packet, v3, Raw, TestBroker};
use natter_shared::codec::{reason, Disconnect, LastWill, Packet, Properties, Protocol, QoS};

fn with_will(protocol: Protocol, user: &str, id: &str, delay: Option<u32>) -> natter_shared::codec::Connect {
    let mut c = connect_packet(protocol, Some(user), id);
    c.will = Some(LastWill {
        topic: format!("wills/{id}"),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties {
            will_delay_interval: delay,
            ..Default::default()
        },
    });
    c
}

async fn watcher(b: &TestBroker) -> v3::Client {
    let mut w = v3::connect(v3::options(b.addr, "watcher", Some("bob"))).await.unwrap();
    w.client.subscribe("wills/#", v3::QoS::AtLeastOnce).await.unwrap();
    w.suback().await;
    w
}

#[tokio::test]
async fn abrupt_close_fires_the_will_both_versions() {
    let b = TestBroker::start().await;
    let mut w = watcher(&b).await;
    for (protocol, id) in [(Protocol::V311, "dev3"), (Protocol::V5, "dev5")] {
        let (raw, ack) = Raw::connect(b.addr, with_will(protocol, "alice", id, None)).await;
        assert_eq!(ack.code, 0);
        drop(raw);
        let p = w.publish().await;
        assert_eq!(
            (p.topic.as_str(), &p.payload[..]),
            (format!("wills/{id}").as_str(), &b"gone"[..])
        );
    }
    b.stop().await;
}

#[tokio::test]
async fn disconnect_discards_the_will_unless_v5_asks_for_it() {
    let b = TestBroker::start().await;
    let mut w = watcher(&b).await;
    let (mut raw, _) = Raw::connect(b.addr, with_will(Protocol::V311, "alice", "clean3", None)).await;
    raw.send(&Packet::Disconnect(Disconnect::default())).await;
    assert!(raw.until_closed().await.is_empty());
    let (mut raw, _) = Raw::connect(b.addr, with_will(Protocol::V5, "alice", "clean5", None)).await;
    raw.send(&Packet::Disconnect(Disconnect::default())).await;
    raw.until_closed().await;
    w.no_publish(Duration::from_millis(300)).await;
    let (mut raw, _) = Raw::connect(b.addr, with_will(Protocol::V5, "alice", "askwill", None)).await;
    raw.send(&Packet::Disconnect(Disconnect::with_reason(
        reason::DISCONNECT_WITH_WILL,
    )))
    .await;
    raw.until_closed().await;
    assert_eq!(w.publish().await.topic, "wills/askwill");
    b.stop().await;
}

#[tokio::test]
async fn v5_will_delay_is_cancelled_by_reconnect_and_fires_otherwise() {
    let b = TestBroker::start().await;
    let mut w = watcher(&b).await;
    let mut c = with_will(Protocol::V5, "alice", "delayed", Some(2));
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(60);
    let (raw, _) = Raw::connect(b.addr, c.clone()).await;
    drop(raw);
    // The broker saw the close, so the delay timer runs: a reconnect within the delay
    // cancels it (this is not the takeover of a connection still open).
    b.wait_offline("alice").await;
    let (raw2, ack) = Raw::connect(b.addr, c.clone()).await;
    assert!(ack.session_present);
    w.no_publish(Duration::from_millis(2500)).await;
    // Now go away for good: the will comes after the two seconds.
    drop(raw2);
    let started = std::time::Instant::now();
    assert_eq!(w.publish().await.topic, "wills/delayed");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "will waited for its delay"
    );
    b.stop().await;
}

#[tokio::test]
async fn keepalive_timeout_closes_and_fires_the_will() {
    let b = TestBroker::start().await;
    let mut w = watcher(&b).await;
    let mut c = with_will(Protocol::V5, "alice", "sleepy", None);
    c.keep_alive = 1;
    let (mut raw, _) = Raw::connect(b.addr, c).await;
    let started = std::time::Instant::now();
    let seen = raw.until_closed().await;
    let waited = started.elapsed();
    assert!(
        // 1.5x the keepalive at least; the upper bound only catches "never".
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(10),
        "closed after {waited:?}"
    );
    assert!(matches!(seen.as_slice(), [Packet::Disconnect(d)] if d.reason == reason::KEEP_ALIVE_TIMEOUT));
    assert_eq!(w.publish().await.topic, "wills/sleepy");
    b.stop().await;
}

#[tokio::test]
async fn will_delay_is_capped_by_the_session_expiry() {
    let b = TestBroker::start().await;
    let mut w = watcher(&b).await;
    // A will delay of an hour in a session that lasts one second: the will goes
    // when the session ends (MQTT-3.1.3-9).
    let mut c = with_will(Protocol::V5, "alice", "capped", Some(3600));
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(1);
    let (raw, _) = Raw::connect(b.addr, c).await;
    drop(raw);
    let started = std::time::Instant::now();
    assert_eq!(w.publish().await.topic, "wills/capped");
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "sent at the session's end, not at once"
    );
    b.stop().await;
}

#[tokio::test]
async fn a_retained_will_is_kept_for_later_subscribers() {
    let b = TestBroker::start().await;
    let mut c = with_will(Protocol::V311, "alice", "kept", None);
    if let Some(w) = &mut c.will {
        w.retain = true;
    }
    let (raw, _) = Raw::connect(b.addr, c).await;
    drop(raw);
    b.wait_offline("alice").await;
    b.wait_until("the will is retained", || b.router().retained_count() >= 2)
        .await;
    let mut late = v3::connect(v3::options(b.addr, "late", Some("bob"))).await.unwrap();
    late.client.subscribe("wills/#", v3::QoS::AtLeastOnce).await.unwrap();
    let p = late.publish().await;
    assert_eq!((p.topic.as_str(), p.retain), ("wills/kept", true));
    drop(late);
    // And after a restart (presence is not kept: it is the broker's, and nobody is
    // online then).
    let b = b.restart().await;
    assert_eq!(b.router().retained_count(), 1, "the will, not the presence");
    let mut late = v3::connect(v3::options(b.addr, "late", Some("bob"))).await.unwrap();
    late.client.subscribe("wills/#", v3::QoS::AtLeastOnce).await.unwrap();
    let p = late.publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.retain),
        ("wills/kept", &b"gone"[..], true)
    );
    b.stop().await;
}

#[tokio::test]
async fn a_will_authorization_refuses_is_never_published() {
    let b = TestBroker::start().await;
    // root sees everything a will could reach: "#" (not $), $SYS, bob's mailbox.
    let mut admin = v3::connect(v3::options(b.addr, "all", Some("root"))).await.unwrap();
    for f in ["#", "$SYS/#"] {
        admin.client.subscribe(f, v3::QoS::AtMostOnce).await.unwrap();
        admin.suback().await;
    }
    for (id, topic) in [
        ("w1", "nobody-may/x"),
        ("w2", "$SYS/fake"),
        ("w3", "inbox/bob/dm/mallory"),
        ("w4", "presence/bob"),
    ] {
        let mut c = with_will(Protocol::V5, "alice", id, None);
        if let Some(w) = &mut c.will {
            w.topic = topic.into();
        }
        let (raw, ack) = Raw::connect(b.addr, c).await;
        assert_eq!(ack.code, reason::SUCCESS, "the will is checked when it is sent");
        drop(raw);
    }
    b.wait_offline("alice").await;
    // A wildcard will topic is malformed: refused at CONNECT.
    let mut c = with_will(Protocol::V5, "alice", "w5", None);
    if let Some(w) = &mut c.will {
        w.topic = "wills/+".into();
    }
    let mut raw = Raw::open(b.addr, Protocol::V5).await;
    raw.send(&Packet::Connect(Box::new(c))).await;
    let seen = raw.until_closed().await;
    assert!(
        matches!(seen.as_slice(), [Packet::ConnAck(a)] if a.code == reason::TOPIC_NAME_INVALID) || seen.is_empty(),
        "{seen:?}"
    );
    // Only alice's presence changes reach root; no will does.
    let end = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(Some(p)) = tokio::time::timeout_at(end, admin.rx.recv()).await {
        if let v3::Packet::Publish(p) = p {
            assert!(
                p.topic.starts_with("presence/alice"),
                "a refused will got out: {}",
                p.topic
            );
        }
    }
    admin.alive().await;
    b.stop().await;
}
