//! Durability end to end: a store write failure reaches the publisher (MQTT 5: 0x80;
//! a 3.1.1 QoS 1/2 publisher is disconnected, never falsely acknowledged), reads go
//! on meanwhile, and the broker recovers when the disk does.

use bytes::Bytes;
use natter_e2e::im::ImClient;
use natter_e2e::{publish_packet, Raw, TestBroker};
use natter_shared::codec::{reason, Protocol, QoS};
use serde_json::json;

#[tokio::test]
async fn a_write_failure_reaches_the_publisher_and_the_broker_recovers() {
    let b = TestBroker::start().await;
    let mut bob = ImClient::connect(b.addr, "bob", "bob").await;
    let mut alice = Raw::login(b.addr, Protocol::V5, "alice", "alice-v5").await;
    alice
        .send(&publish_packet(
            "dm/bob",
            QoS::AtLeastOnce,
            1,
            Bytes::from_static(b"before"),
        ))
        .await;
    assert_eq!(alice.acks(1).await, vec![(1, reason::SUCCESS)]);

    b.store().fail_writes(true);
    alice
        .send(&publish_packet(
            "dm/bob",
            QoS::AtLeastOnce,
            2,
            Bytes::from_static(b"lost-1"),
        ))
        .await;
    alice
        .send(&publish_packet(
            "dm/bob",
            QoS::ExactlyOnce,
            3,
            Bytes::from_static(b"lost-2"),
        ))
        .await;
    assert_eq!(
        alice.acks(2).await,
        vec![(2, reason::UNSPECIFIED_ERROR), (3, reason::UNSPECIFIED_ERROR)],
        "refused, not acknowledged"
    );
    // 3.1.1 has no negative acknowledgement: the publisher is disconnected.
    let mut old = Raw::login(b.addr, Protocol::V311, "alice", "alice-v3").await;
    old.send(&publish_packet(
        "dm/bob",
        QoS::AtLeastOnce,
        1,
        Bytes::from_static(b"lost-3"),
    ))
    .await;
    let after = old.until_closed().await;
    assert!(
        !after
            .iter()
            .any(|p| matches!(p, natter_shared::codec::Packet::PubAck(_))),
        "a 3.1.1 publisher is never acknowledged a message not stored: {after:?}"
    );
    // Reads go on while writes fail.
    let history = bob.ok("history", json!({ "with": "alice" })).await;
    assert!(history["messages"].as_array().is_some_and(|m| !m.is_empty()));

    // The disk is back: so are the writes, on the same connection.
    b.store().fail_writes(false);
    alice
        .send(&publish_packet(
            "dm/bob",
            QoS::AtLeastOnce,
            4,
            Bytes::from_static(b"after"),
        ))
        .await;
    assert_eq!(alice.acks(1).await, vec![(4, reason::SUCCESS)]);
    let all = bob.ok("history", json!({ "with": "alice" })).await["messages"].clone();
    let texts: Vec<&str> = all
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert_eq!(texts, ["before", "after"], "what was refused is not in the history");
    b.stop().await;
}
