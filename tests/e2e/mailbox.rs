//! Mailbox and presence promises as a device sees them: a new device starts at the
//! present, the cursor moves on PUBCOMP, forged properties are dropped, and presence
//! goes offline however the last connection ends.

use std::time::Duration;

use natter_e2e::im::{befriend, ImClient};
use natter_e2e::{connect_packet, publish_packet, subscribe_packet, Raw, TestBroker};
use natter_shared::codec::{reason, Ack, Disconnect, Packet, Properties, Protocol, QoS};
use serde_json::json;

/// A persistent v5 device of bob's (session expiry one hour) subscribed to his mailbox
/// at QoS 2; returns it with the CONNACK's session-present flag.
async fn bob_device(b: &TestBroker, id: &str) -> (Raw, bool) {
    let mut c = connect_packet(Protocol::V5, Some("bob"), id);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(3600);
    let (mut raw, ack) = Raw::connect(b.addr, c).await;
    assert_eq!(ack.code, 0);
    raw.send(&subscribe_packet("inbox/bob/#", QoS::ExactlyOnce)).await;
    (raw, ack.session_present)
}

/// The next PUBLISH a raw client gets, skipping SUBACKs; `None` when nothing comes in
/// `wait`.
async fn publish_within(raw: &mut Raw, wait: Duration) -> Option<natter_shared::codec::Publish> {
    loop {
        match raw.recv_within(wait).await {
            Ok(Some(Packet::Publish(p))) => return Some(p),
            Ok(Some(_)) => continue,
            Ok(None) => panic!("closed"),
            Err(()) => return None,
        }
    }
}

/// alice sends bob a QoS 1 DM and waits for it to be stored.
async fn dm(alice: &mut Raw, pkid: u16, text: &str) {
    alice
        .send(&publish_packet("dm/bob", QoS::AtLeastOnce, pkid, text.to_owned()))
        .await;
    assert_eq!(alice.acks(1).await, vec![(pkid, reason::SUCCESS)]);
}

#[tokio::test]
async fn a_new_device_starts_at_the_present() {
    let b = TestBroker::start_default(|c| c.im.dm_policy = natterd::config::DmPolicy::Anyone).await;
    let mut alice = Raw::login(b.addr, Protocol::V5, "alice", "a").await;
    dm(&mut alice, 1, "before the device").await;
    let (mut device, present) = bob_device(&b, "brand-new").await;
    assert!(!present);
    assert_eq!(
        publish_within(&mut device, Duration::from_millis(300))
            .await
            .map(|p| p.payload),
        None,
        "the past is in history, not replayed to a new device"
    );
    dm(&mut alice, 2, "after").await;
    let p = publish_within(&mut device, natter_e2e::WAIT).await.expect("live DM");
    assert_eq!(&p.payload[..], b"after");
    b.stop().await;
}

#[tokio::test]
async fn a_released_qos2_flow_and_the_cursor_survive_restarts() {
    let b = TestBroker::start_default(|c| c.im.dm_policy = natterd::config::DmPolicy::Anyone).await;
    let (mut device, _) = bob_device(&b, "phone").await;
    publish_within(&mut device, Duration::from_millis(100)).await;
    let mut alice = Raw::login(b.addr, Protocol::V5, "alice", "a").await;
    // m1 goes the whole QoS 2 way: PUBREC, PUBREL, PUBCOMP.
    dm(&mut alice, 1, "m1").await;
    let p = publish_within(&mut device, natter_e2e::WAIT).await.expect("m1");
    assert_eq!(
        (&p.payload[..], p.qos),
        (&b"m1"[..], QoS::AtLeastOnce),
        "min(publish, subscription)"
    );
    device.send(&Packet::PubAck(Ack::new(p.pkid))).await;
    // m2 at QoS 2 from a v5 sender; the device stops after PUBREC.
    alice.send(&publish_packet("dm/bob", QoS::ExactlyOnce, 2, "m2")).await;
    assert!(matches!(alice.recv().await, Some(Packet::PubRec(a)) if a.reason == 0));
    alice.send(&Packet::PubRel(Ack::new(2))).await;
    assert!(matches!(alice.recv().await, Some(Packet::PubComp(_))));
    let p = publish_within(&mut device, natter_e2e::WAIT).await.expect("m2");
    assert_eq!((&p.payload[..], p.qos), (&b"m2"[..], QoS::ExactlyOnce));
    device.send(&Packet::PubRec(Ack::new(p.pkid))).await;
    assert!(matches!(device.recv().await, Some(Packet::PubRel(a)) if a.pkid == p.pkid));
    // The cursor is durable, and so is the session with its released QoS 2 flow:
    // after a restart m1, which was acknowledged, is not replayed; m2, received and
    // released (PUBREL sent) but never completed, is not sent again either (the
    // device has it): its PUBREL is, under the same packet id.
    drop(device);
    b.wait_offline("bob").await;
    let b = b.restart().await;
    let (mut device, present) = bob_device(&b, "phone").await;
    assert!(present, "the persistent session came back with the broker");
    let rel = loop {
        match device.recv().await {
            Some(Packet::SubAck(_)) => continue,
            other => break other,
        }
    };
    assert!(
        matches!(rel, Some(Packet::PubRel(ref a)) if a.pkid == p.pkid),
        "the PUBREL again, not m2: {rel:?}"
    );
    device.send(&Packet::PubComp(Ack::new(p.pkid))).await;
    // Something after it, acknowledged, so the cursor write is not the last thing.
    device.send(&Packet::PingReq).await;
    assert_eq!(device.recv().await, Some(Packet::PingResp));
    drop(device);
    b.wait_offline("bob").await;
    let b = b.restart().await;
    let (mut device, _) = bob_device(&b, "phone").await;
    assert_eq!(
        publish_within(&mut device, Duration::from_millis(300))
            .await
            .map(|p| p.payload),
        None,
        "completed: not replayed again"
    );
    b.stop().await;
}

#[tokio::test]
async fn forged_id_from_and_ts_properties_are_dropped() {
    let b = TestBroker::start_default(|_| {}).await;
    let mut alice = ImClient::connect(b.addr, "alice", "a").await;
    let mut bob = ImClient::connect(b.addr, "bob", "b").await;
    befriend(&mut alice, &mut bob).await;
    let mut raw = Raw::login(b.addr, Protocol::V5, "alice", "a-raw").await;
    let mut p = publish_packet("dm/bob", QoS::AtLeastOnce, 1, "forged?");
    if let Packet::Publish(p) = &mut p {
        p.properties = Properties {
            user_properties: vec![
                ("id".into(), "999999".into()),
                ("from".into(), "mallory".into()),
                ("ts".into(), "1".into()),
                ("keep".into(), "me".into()),
            ],
            ..Default::default()
        };
    }
    raw.send(&p).await;
    assert_eq!(raw.acks(1).await[0].1, reason::SUCCESS);
    let got = bob.next_on("inbox/bob/dm/alice").await;
    let named = |k: &str| got.props.iter().filter(|(key, _)| key == k).count();
    assert_eq!(
        (named("id"), named("from"), named("ts"), named("keep")),
        (1, 1, 1, 1),
        "{:?}",
        got.props
    );
    assert_eq!(got.prop("from"), Some("alice"));
    assert_ne!(got.prop("id"), Some("999999"));
    assert_ne!(got.prop("ts"), Some("1"));
    assert_eq!(got.prop("keep"), Some("me"), "other user properties pass through");
    b.stop().await;
}

#[tokio::test]
async fn presence_goes_offline_on_disconnect_and_on_keepalive_timeout() {
    let b = TestBroker::start_default(|_| {}).await;
    let mut alice = ImClient::connect(b.addr, "alice", "a").await;
    let mut bob = ImClient::connect(b.addr, "bob", "b").await;
    befriend(&mut alice, &mut bob).await;
    drop(alice);
    b.wait_offline("alice").await;
    bob.c
        .client
        .subscribe("presence/alice", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .unwrap();
    let status = |g: &natter_e2e::im::Got| g.json()["status"].as_str().unwrap_or("").to_owned();
    let retained = bob.next_on("presence/alice").await;
    assert_eq!(status(&retained), "offline");
    for how in ["disconnect", "keepalive"] {
        let mut c = connect_packet(Protocol::V5, Some("alice"), how);
        c.keep_alive = 1;
        let (mut raw, _) = Raw::connect(b.addr, c).await;
        assert_eq!(status(&bob.next_on("presence/alice").await), "online", "{how}");
        if how == "disconnect" {
            raw.send(&Packet::Disconnect(Disconnect::default())).await;
        } // else: silence past 1.5 x the keepalive.
        let offline = bob.next_on("presence/alice").await.json();
        assert_eq!(offline["status"], json!("offline"), "{how}: {offline}");
        assert!(offline["last_seen"].as_u64().is_some(), "{how}: {offline}");
        drop(raw);
    }
    b.stop().await;
}

#[tokio::test]
async fn mailbox_status_tells_a_device_how_far_it_has_read() {
    let b = TestBroker::start().await;
    let mut alice = ImClient::connect(b.addr, "alice", "alice-status").await;
    let mut bob = ImClient::persistent(b.addr, "bob", "bob-phone").await;
    befriend(&mut alice, &mut bob).await;
    let before = bob.ok("mailbox.status", json!({})).await;
    assert_eq!(before["device"], json!("bob-phone"));
    for text in ["one", "two"] {
        alice
            .publish("dm/bob", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, text)
            .await;
    }
    bob.next_on("inbox/bob/dm/alice").await;
    let second = bob.next_on("inbox/bob/dm/alice").await;
    let last: u64 = second.prop("id").expect("id").parse().unwrap();
    // Acknowledged by the client library as it reads; the status catches up.
    b.wait_until("the cursor at the last DM", || {
        b.store().cursor("bob", "bob-phone").ok().flatten() == Some(last)
    })
    .await;
    let now = bob.ok("mailbox.status", json!({})).await;
    assert_eq!(now["last_id"], json!(last), "{now}");
    assert_eq!(now["cursor"], json!(last), "{now}");
    // A device never seen has no cursor.
    let mut fresh = ImClient::connect(b.addr, "alice", "never-subscribed-before").await;
    let s = fresh.ok("mailbox.status", json!({})).await;
    assert!(s["last_id"].as_u64().unwrap() >= 1, "{s}");
    b.stop().await;
}
