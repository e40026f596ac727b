//! Retained messages: set, replace, clear with an empty payload; RETAIN flag on
//! delivery.

use std::time::Duration;

use natter_e2e::{v3, v5, TestBroker};

#[tokio::test]
async fn set_replace_and_clear() {
    let b = TestBroker::start().await;
    let publ = v3::connect(v3::options(b.addr, "p", Some("alice"))).await.unwrap();
    publ.client
        .publish("status/a", v3::QoS::AtLeastOnce, true, "one")
        .await
        .unwrap();
    publ.client
        .publish("status/a", v3::QoS::AtLeastOnce, true, "two")
        .await
        .unwrap();
    publ.client
        .publish("status/b", v3::QoS::AtLeastOnce, true, "bee")
        .await
        .unwrap();
    publ.client
        .publish("status/b", v3::QoS::AtLeastOnce, true, "")
        .await
        .unwrap();
    // Wait until the broker has them (the last PUBACK).
    let mut publ = publ;
    for _ in 0..4 {
        publ.expect(|p| matches!(p, v3::Packet::PubAck(_))).await;
    }
    let mut sub = v3::connect(v3::options(b.addr, "s", Some("bob"))).await.unwrap();
    sub.client.subscribe("status/#", v3::QoS::AtLeastOnce).await.unwrap();
    let p = sub.publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.retain),
        ("status/a", &b"two"[..], true)
    );
    sub.no_publish(Duration::from_millis(300)).await;
    // A live publish of a retained message reaches current subscribers with RETAIN 0 (3.1.1).
    publ.client
        .publish("status/a", v3::QoS::AtLeastOnce, true, "three")
        .await
        .unwrap();
    let p = sub.publish().await;
    assert_eq!((&p.payload[..], p.retain), (&b"three"[..], false));
    b.stop().await;
}

#[tokio::test]
async fn v5_retain_as_published_and_retain_handling() {
    use rumqttc::v5::mqttbytes::v5::{Filter, RetainForwardRule};
    let b = TestBroker::start().await;
    let mut publ = v5::connect(v5::options(b.addr, "p", Some("alice"))).await.unwrap();
    publ.client
        .publish("r/x", v5::QoS::AtLeastOnce, true, "kept")
        .await
        .unwrap();
    publ.expect(|p| matches!(p, v5::Packet::PubAck(..))).await;

    let mut sub = v5::connect(v5::options(b.addr, "s", Some("bob"))).await.unwrap();
    let mut never = Filter::new("r/#", v5::QoS::AtLeastOnce);
    never.retain_forward_rule = RetainForwardRule::Never;
    never.preserve_retain = true;
    sub.client.subscribe_many([never]).await.unwrap();
    sub.expect(|p| matches!(p, v5::Packet::SubAck(..))).await;
    sub.no_publish(Duration::from_millis(300)).await;
    publ.client
        .publish("r/x", v5::QoS::AtLeastOnce, true, "live")
        .await
        .unwrap();
    let p = sub.publish().await;
    assert!(p.retain, "retain as published");

    let mut sub2 = v5::connect(v5::options(b.addr, "s2", Some("carol"))).await.unwrap();
    let mut on_new = Filter::new("r/#", v5::QoS::AtLeastOnce);
    on_new.retain_forward_rule = RetainForwardRule::OnNewSubscribe;
    sub2.client.subscribe_many([on_new.clone()]).await.unwrap();
    assert_eq!(&sub2.publish().await.payload[..], b"live");
    // The first SUBACK was passed over while waiting for the publish; this is the second.
    sub2.client.subscribe_many([on_new]).await.unwrap();
    sub2.expect(|p| matches!(p, v5::Packet::SubAck(..))).await;
    sub2.no_publish(Duration::from_millis(300)).await;
    b.stop().await;
}

/// Retained messages outlive a restart, with their MQTT 5 properties and what is left
/// of their expiry; a cleared topic stays cleared; a retained will too.
#[tokio::test]
async fn retained_messages_survive_a_restart() {
    use natter_e2e::{publish_packet, Raw};
    use natter_shared::codec::{Packet, Protocol, QoS};
    let b = TestBroker::start().await;
    let mut alice = Raw::login(b.addr, Protocol::V5, "alice", "alice").await;
    let mut kept = publish_packet("sensors/t", QoS::AtLeastOnce, 1, &b"21.5"[..]);
    if let Packet::Publish(p) = &mut kept {
        p.retain = true;
        p.properties.content_type = Some("text/plain".into());
        p.properties.user_properties = vec![("unit".into(), "C".into())];
        p.properties.message_expiry_interval = Some(3600);
    }
    alice.send(&kept).await;
    for (pkid, topic, payload) in [(2, "sensors/h", &b"40"[..]), (3, "sensors/h", &b""[..])] {
        let mut p = publish_packet(topic, QoS::AtLeastOnce, pkid, payload);
        if let Packet::Publish(p) = &mut p {
            p.retain = true;
        }
        alice.send(&p).await;
    }
    assert_eq!(alice.acks(3).await.len(), 3);
    let b = b.restart().await;
    assert_eq!(
        b.router().retained_count(),
        1,
        "sensors/t is back, sensors/h stays cleared"
    );

    let mut bob = Raw::login(b.addr, Protocol::V5, "bob", "bob").await;
    bob.subscribe("sensors/#", QoS::AtLeastOnce).await;
    let p = bob.next_publish().await;
    assert_eq!(
        (p.topic.as_ref(), &p.payload[..], p.retain),
        ("sensors/t", &b"21.5"[..], true)
    );
    assert_eq!(p.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(p.properties.user_properties, vec![("unit".into(), "C".into())]);
    let left = p.properties.message_expiry_interval.unwrap_or(0);
    assert!((3500..=3600).contains(&left), "expiry runs on: {left}");
    assert!(
        bob.recv_within(Duration::from_millis(200)).await.is_err(),
        "nothing else"
    );
    b.stop().await;
}
