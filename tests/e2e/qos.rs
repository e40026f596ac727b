//! Publish and receive at QoS 0, 1 and 2, both versions, in both directions, with
//! QoS downgrade and overlapping subscriptions.

use std::time::Duration;

use natter_e2e::{publish_packet, v3, v5, Raw, TestBroker};
use natter_shared::codec::{reason, Protocol, QoS};

#[tokio::test]
async fn v311_every_qos_both_ways() {
    let b = TestBroker::start().await;
    for (i, qos) in [v3::QoS::AtMostOnce, v3::QoS::AtLeastOnce, v3::QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let mut sub = v3::connect(v3::options(b.addr, &format!("sub{i}"), Some("bob")))
            .await
            .unwrap();
        sub.client.subscribe("chat/#", qos).await.unwrap();
        sub.suback().await;
        let mut publ = v3::connect(v3::options(b.addr, &format!("pub{i}"), Some("alice")))
            .await
            .unwrap();
        for n in 0..5 {
            publ.client
                .publish(format!("chat/{n}"), qos, false, format!("m{n}"))
                .await
                .unwrap();
        }
        for n in 0..5 {
            let p = sub.publish().await;
            assert_eq!(p.topic, format!("chat/{n}"), "order kept");
            assert_eq!(&p.payload[..], format!("m{n}").as_bytes());
            assert_eq!(p.qos, qos);
        }
        // The publisher got its acknowledgements.
        match qos {
            v3::QoS::AtLeastOnce => {
                publ.expect(|p| matches!(p, v3::Packet::PubAck(_))).await;
            }
            v3::QoS::ExactlyOnce => {
                publ.expect(|p| matches!(p, v3::Packet::PubComp(_))).await;
            }
            v3::QoS::AtMostOnce => {}
        }
    }
    b.stop().await;
}

#[tokio::test]
async fn v5_every_qos_both_ways() {
    let b = TestBroker::start().await;
    for (i, qos) in [v5::QoS::AtMostOnce, v5::QoS::AtLeastOnce, v5::QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let mut sub = v5::connect(v5::options(b.addr, &format!("s{i}"), Some("bob")))
            .await
            .unwrap();
        sub.client.subscribe("chat/#", qos).await.unwrap();
        sub.expect(|p| matches!(p, v5::Packet::SubAck(_))).await;
        let mut publ = v5::connect(v5::options(b.addr, &format!("p{i}"), Some("alice")))
            .await
            .unwrap();
        for n in 0..5 {
            publ.client
                .publish(format!("chat/{n}"), qos, false, format!("m{n}"))
                .await
                .unwrap();
        }
        for n in 0..5 {
            let p = sub.publish().await;
            assert_eq!(&p.topic[..], format!("chat/{n}").as_bytes());
            assert_eq!(p.qos, qos);
        }
        if qos == v5::QoS::ExactlyOnce {
            publ.expect(|p| matches!(p, v5::Packet::PubComp(..))).await;
        }
    }
    b.stop().await;
}

#[tokio::test]
async fn mixed_versions_and_qos_downgrade() {
    let b = TestBroker::start().await;
    let mut low = v3::connect(v3::options(b.addr, "low", Some("bob"))).await.unwrap();
    low.client.subscribe("d/#", v3::QoS::AtMostOnce).await.unwrap();
    low.suback().await;
    let mut high = v5::connect(v5::options(b.addr, "high", Some("carol"))).await.unwrap();
    high.client.subscribe("d/#", v5::QoS::ExactlyOnce).await.unwrap();
    high.expect(|p| matches!(p, v5::Packet::SubAck(_))).await;
    let publ = v5::connect(v5::options(b.addr, "p", Some("alice"))).await.unwrap();
    publ.client
        .publish("d/1", v5::QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    assert_eq!(low.publish().await.qos, v3::QoS::AtMostOnce, "min(pub 1, sub 0)");
    assert_eq!(high.publish().await.qos, v5::QoS::AtLeastOnce, "min(pub 1, sub 2)");
    b.stop().await;
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_once_at_highest_qos() {
    let b = TestBroker::start().await;
    let mut sub = v3::connect(v3::options(b.addr, "o", Some("bob"))).await.unwrap();
    sub.client.subscribe("o/+", v3::QoS::AtMostOnce).await.unwrap();
    sub.client.subscribe("o/#", v3::QoS::ExactlyOnce).await.unwrap();
    sub.client.subscribe("o/x", v3::QoS::AtLeastOnce).await.unwrap();
    for _ in 0..3 {
        sub.suback().await;
    }
    let publ = v3::connect(v3::options(b.addr, "p", Some("alice"))).await.unwrap();
    publ.client
        .publish("o/x", v3::QoS::ExactlyOnce, false, "once")
        .await
        .unwrap();
    assert_eq!(sub.publish().await.qos, v3::QoS::ExactlyOnce);
    sub.no_publish(Duration::from_millis(300)).await;
    b.stop().await;
}

#[tokio::test]
async fn dollar_topics_are_not_matched_by_wildcards_and_not_publishable() {
    let b = TestBroker::start().await;
    // Only admins may subscribe to "#" (and to $SYS).
    let mut admin = v3::connect(v3::options(b.addr, "w", Some("root"))).await.unwrap();
    admin.client.subscribe("#", v3::QoS::AtMostOnce).await.unwrap();
    assert_eq!(
        admin.suback().await.return_codes,
        vec![rumqttc::SubscribeReasonCode::Success(v3::QoS::AtMostOnce)]
    );
    let mut bob = v3::connect(v3::options(b.addr, "b", Some("bob"))).await.unwrap();
    bob.client.subscribe("$SYS/#", v3::QoS::AtMostOnce).await.unwrap();
    assert_eq!(
        bob.suback().await.return_codes,
        vec![rumqttc::SubscribeReasonCode::Failure],
        "$SYS is for admins"
    );
    bob.client.subscribe("#", v3::QoS::AtMostOnce).await.unwrap();
    assert_eq!(
        bob.suback().await.return_codes,
        vec![rumqttc::SubscribeReasonCode::Failure],
        "# is for admins"
    );
    // The admin also subscribes to $SYS/# by name, so a $SYS publish that got through
    // would show there.
    admin.client.subscribe("$SYS/#", v3::QoS::AtMostOnce).await.unwrap();
    assert_eq!(
        admin.suback().await.return_codes,
        vec![rumqttc::SubscribeReasonCode::Success(v3::QoS::AtMostOnce)]
    );
    // Nobody publishes to $ topics, not even an admin: MQTT 5 says so with 0x87.
    let mut publ = Raw::login(b.addr, Protocol::V5, "root", "p").await;
    publ.send(&publish_packet("$SYS/x", QoS::AtLeastOnce, 1, "no")).await;
    assert_eq!(publ.acks(1).await, vec![(1, reason::NOT_AUTHORIZED)]);
    publ.send(&publish_packet("plain", QoS::AtLeastOnce, 2, "yes")).await;
    assert_eq!(publ.acks(1).await, vec![(2, reason::SUCCESS)]);
    // "#" also brings the broker's presence topics; it never brings $ topics.
    let mut seen = Vec::new();
    while let Ok(Some(p)) = tokio::time::timeout(Duration::from_millis(500), admin.rx.recv()).await {
        if let v3::Packet::Publish(p) = p {
            seen.push(p.topic);
        }
    }
    assert!(seen.iter().any(|t| t == "plain"), "{seen:?}");
    assert!(!seen.iter().any(|t| t.starts_with('$')), "{seen:?}");
    b.stop().await;
}

#[tokio::test]
async fn shared_subscriptions_split_the_load() {
    let b = TestBroker::start().await;
    let mut workers = Vec::new();
    for i in 0..2 {
        let mut w = v5::connect(v5::options(b.addr, &format!("w{i}"), Some("bob")))
            .await
            .unwrap();
        w.client
            .subscribe("$share/pool/jobs/+", v5::QoS::AtLeastOnce)
            .await
            .unwrap();
        w.expect(|p| matches!(p, v5::Packet::SubAck(_))).await;
        workers.push(w);
    }
    let publ = v5::connect(v5::options(b.addr, "p", Some("alice"))).await.unwrap();
    for n in 0..10 {
        publ.client
            .publish(format!("jobs/{n}"), v5::QoS::AtLeastOnce, false, "job")
            .await
            .unwrap();
    }
    let mut counts = [0; 2];
    for (i, w) in workers.iter_mut().enumerate() {
        loop {
            match tokio::time::timeout(Duration::from_millis(500), w.rx.recv()).await {
                Ok(Some(v5::Packet::Publish(_))) => counts[i] += 1,
                Ok(Some(_)) => {}
                _ => break,
            }
        }
    }
    assert_eq!(counts[0] + counts[1], 10, "each job delivered once");
    assert_eq!(counts, [5, 5], "round robin");
    b.stop().await;
}

#[tokio::test]
async fn shared_subscriptions_prefer_online_members() {
    use rumqttc::v5::mqttbytes::v5::ConnectProperties;
    let b = TestBroker::start().await;
    // A persistent member that goes away: its share membership stays with its session.
    let mut o = v5::options(b.addr, "away", Some("bob"));
    o.set_clean_start(false);
    let mut props = ConnectProperties::new();
    props.session_expiry_interval = Some(600);
    o.set_connect_properties(props);
    let mut away = v5::connect(o).await.unwrap();
    away.client
        .subscribe("$share/pool/jobs/#", v5::QoS::AtLeastOnce)
        .await
        .unwrap();
    away.expect(|p| matches!(p, v5::Packet::SubAck(_))).await;
    drop(away);
    b.wait_until("bob's persistent member is offline", || {
        !b.router().sessions_of("bob").iter().any(|s| s.is_online())
    })
    .await;
    let mut online = v5::connect(v5::options(b.addr, "here", Some("carol"))).await.unwrap();
    online
        .client
        .subscribe("$share/pool/jobs/#", v5::QoS::AtLeastOnce)
        .await
        .unwrap();
    online.expect(|p| matches!(p, v5::Packet::SubAck(_))).await;
    let mut publ = Raw::login(b.addr, Protocol::V5, "alice", "p").await;
    for n in 0..6u16 {
        publ.send(&publish_packet(&format!("jobs/{n}"), QoS::AtLeastOnce, n + 1, "job"))
            .await;
    }
    assert_eq!(publ.acks(6).await.len(), 6);
    for n in 0..6 {
        assert_eq!(
            online.publish().await.topic,
            format!("jobs/{n}"),
            "all to the online member"
        );
    }
    online.no_publish(Duration::from_millis(200)).await;
    b.stop().await;
}
