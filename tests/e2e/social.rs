//! Contacts and groups as their members see them: mutual requests, blocking a
//! friend, group events, departed and kicked members, the group size bound, and
//! unsubscribing.

use std::time::Duration;

use natter_e2e::im::{befriend, ImClient};
use natter_e2e::{publish_packet, subscribe_packet, Raw, TestBroker};
use natter_shared::codec::{reason, Packet, Protocol, QoS};
use natter_shared::im::inbox_event;
use serde_json::json;

const Q1: rumqttc::v5::mqttbytes::QoS = rumqttc::v5::mqttbytes::QoS::AtLeastOnce;

/// A QoS 1 publish from a raw v5 client; its PUBACK reason.
async fn puback(raw: &mut Raw, topic: &str, pkid: u16) -> u8 {
    raw.send(&publish_packet(topic, QoS::AtLeastOnce, pkid, "x")).await;
    raw.acks(1).await[0].1
}

#[tokio::test]
async fn mutual_requests_make_friends_at_once() {
    let b = TestBroker::start_default(|_| {}).await;
    let mut alice = ImClient::connect(b.addr, "alice", "a").await;
    let mut bob = ImClient::connect(b.addr, "bob", "b").await;
    alice.ok("friends.request", json!({ "user": "bob" })).await;
    bob.next_on(&inbox_event("bob", "friend_request")).await;
    // bob asks too instead of accepting: that is an acceptance.
    bob.ok("friends.request", json!({ "user": "alice" })).await;
    alice.next_on(&inbox_event("alice", "friend_accepted")).await;
    let list = alice.ok("friends.list", json!({})).await;
    assert_eq!(list["friends"], json!(["bob"]), "{list}");
    assert_eq!(
        (list["incoming"].clone(), list["outgoing"].clone()),
        (json!([]), json!([]))
    );
    assert_eq!(bob.ok("friends.list", json!({})).await["friends"], json!(["alice"]));
    b.stop().await;
}

#[tokio::test]
async fn blocking_a_friend_ends_the_friendship_and_refuses_their_dms() {
    let b = TestBroker::start_default(|c| c.im.dm_policy = natterd::config::DmPolicy::Anyone).await;
    let mut alice = ImClient::connect(b.addr, "alice", "a").await;
    let mut bob = ImClient::connect(b.addr, "bob", "b").await;
    befriend(&mut alice, &mut bob).await;
    let mut bob_raw = Raw::login(b.addr, Protocol::V5, "bob", "b-raw").await;
    assert_eq!(puback(&mut bob_raw, "dm/alice", 1).await, reason::SUCCESS);
    assert_eq!(alice.next_on("inbox/alice/dm/bob").await.text(), "x");
    alice.ok("block", json!({ "user": "bob" })).await;
    assert_eq!(alice.ok("friends.list", json!({})).await["friends"], json!([]));
    assert_eq!(bob.ok("friends.list", json!({})).await["friends"], json!([]));
    assert_eq!(alice.ok("blocked.list", json!({})).await["blocked"], json!(["bob"]));
    // Blocked even though dm_policy lets anyone write.
    assert_eq!(puback(&mut bob_raw, "dm/alice", 2).await, reason::NOT_AUTHORIZED);
    bob.fails("friends.request", json!({ "user": "alice" }), "forbidden")
        .await;
    alice.ok("unblock", json!({ "user": "bob" })).await;
    assert_eq!(puback(&mut bob_raw, "dm/alice", 3).await, reason::SUCCESS);
    assert_eq!(alice.next_on("inbox/alice/dm/bob").await.text(), "x");
    b.stop().await;
}

#[tokio::test]
async fn group_events_and_members_who_leave_or_are_kicked_stop_receiving() {
    let b = TestBroker::start_default(|c| c.im.max_group_members = 3.try_into().unwrap()).await;
    let mut alice = ImClient::connect(b.addr, "alice", "a").await;
    let mut bob = ImClient::connect(b.addr, "bob", "b").await;
    let mut carol = ImClient::connect(b.addr, "carol", "c").await;
    let mut root = ImClient::connect(b.addr, "root", "r").await;
    alice.ok("groups.create", json!({ "group": "g", "open": true })).await;
    bob.ok("groups.join", json!({ "group": "g" })).await;
    let joined = alice.next_on(&inbox_event("alice", "group_joined")).await.json();
    assert_eq!(
        (joined["group"].clone(), joined["user"].clone()),
        (json!("g"), json!("bob"))
    );
    bob.next_on(&inbox_event("bob", "group_joined")).await;
    carol.ok("groups.join", json!({ "group": "g" })).await;
    for c in [&mut alice, &mut bob, &mut carol] {
        let e = c.next_on(&inbox_event(&c.user.clone(), "group_joined")).await.json();
        assert_eq!(e["user"], json!("carol"));
    }
    // Full at three.
    root.fails("groups.join", json!({ "group": "g" }), "forbidden").await;

    // bob leaves: the others are told (and his own devices); he gets nothing more
    // from the group.
    bob.ok("groups.leave", json!({ "group": "g" })).await;
    for c in [&mut alice, &mut bob, &mut carol] {
        let e = c.next_on(&inbox_event(&c.user.clone(), "group_left")).await.json();
        assert_eq!(e["user"], json!("bob"));
    }
    // carol is kicked: she gets nothing more either.
    alice.ok("groups.kick", json!({ "group": "g", "user": "carol" })).await;
    carol.next_on(&inbox_event("carol", "group_kicked")).await;
    root.ok("groups.join", json!({ "group": "g" })).await;
    alice.next_on(&inbox_event("alice", "group_joined")).await;
    root.next_on(&inbox_event("root", "group_joined")).await;
    alice.publish("group/g", Q1, "after they went").await;
    assert_eq!(root.next_on("inbox/root/group/g/alice").await.text(), "after they went");
    bob.quiet(Duration::from_millis(300)).await;
    carol.quiet(Duration::from_millis(300)).await;

    // Deleted: every former member is told, the owner included.
    alice.ok("groups.delete", json!({ "group": "g" })).await;
    for c in [&mut alice, &mut root] {
        let e = c.next_on(&inbox_event(&c.user.clone(), "group_deleted")).await.json();
        assert_eq!((e["group"].clone(), e["by"].clone()), (json!("g"), json!("alice")));
    }
    bob.quiet(Duration::from_millis(200)).await;
    b.stop().await;
}

#[tokio::test]
async fn group_history_is_for_members_in_order() {
    let b = TestBroker::start_default(|_| {}).await;
    let mut alice = ImClient::connect(b.addr, "alice", "a").await;
    let mut bob = ImClient::connect(b.addr, "bob", "b").await;
    alice.ok("groups.create", json!({ "group": "h", "open": true })).await;
    bob.ok("groups.join", json!({ "group": "h" })).await;
    let mut raw = Raw::login(b.addr, Protocol::V5, "alice", "a-raw").await;
    for i in 0..3u16 {
        let p = publish_packet("group/h", QoS::AtLeastOnce, i + 1, format!("g{i}"));
        raw.send(&p).await;
        assert_eq!(raw.acks(1).await[0].1, reason::SUCCESS);
    }
    let h = bob.ok("history", json!({ "with": "group:h" })).await;
    let texts: Vec<_> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].clone())
        .collect();
    assert_eq!(texts, vec![json!("g0"), json!("g1"), json!("g2")], "{h}");
    assert!(h["messages"].as_array().unwrap().iter().all(|m| m["from"] == "alice"));
    let mut carol = ImClient::connect(b.addr, "carol", "c").await;
    carol.fails("history", json!({ "with": "group:h" }), "not_member").await;
    b.stop().await;
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_names_what_did_not_exist() {
    let b = TestBroker::start().await;
    let mut s = Raw::login(b.addr, Protocol::V5, "bob", "unsub").await;
    s.send(&subscribe_packet("chat/#", QoS::AtMostOnce)).await;
    assert!(matches!(s.recv().await, Some(Packet::SubAck(_))));
    let mut p = Raw::login(b.addr, Protocol::V5, "alice", "p").await;
    assert_eq!(puback(&mut p, "chat/1", 1).await, reason::SUCCESS);
    assert!(matches!(s.recv().await, Some(Packet::Publish(_))));
    s.send(&Packet::Unsubscribe(natter_shared::codec::Unsubscribe {
        pkid: 2,
        properties: Default::default(),
        filters: vec!["chat/#".into(), "never/subscribed".into()],
    }))
    .await;
    match s.recv().await {
        Some(Packet::UnsubAck(a)) => {
            assert_eq!(
                (a.pkid, a.codes),
                (2, vec![reason::SUCCESS, reason::NO_SUBSCRIPTION_EXISTED])
            )
        }
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    assert_eq!(
        puback(&mut p, "chat/2", 2).await,
        reason::NO_MATCHING_SUBSCRIBERS,
        "nobody subscribed any more"
    );
    assert_eq!(s.recv_within(Duration::from_millis(200)).await, Err(()));
    // 3.1.1 too.
    let mut s3 = Raw::login(b.addr, Protocol::V311, "bob", "unsub3").await;
    s3.send(&subscribe_packet("chat/#", QoS::AtMostOnce)).await;
    assert!(matches!(s3.recv().await, Some(Packet::SubAck(_))));
    s3.send(&Packet::Unsubscribe(natter_shared::codec::Unsubscribe {
        pkid: 3,
        properties: Default::default(),
        filters: vec!["chat/#".into()],
    }))
    .await;
    assert!(matches!(s3.recv().await, Some(Packet::UnsubAck(a)) if a.pkid == 3));
    assert_eq!(puback(&mut p, "chat/3", 3).await, reason::NO_MATCHING_SUBSCRIBERS);
    b.stop().await;
}

#[tokio::test]
async fn forged_api_answers_and_hostile_requests_are_refused() {
    let b = TestBroker::start_default(|_| {}).await;
    let mut raw = Raw::login(b.addr, Protocol::V5, "alice", "a-raw").await;
    raw.send(&subscribe_packet("inbox/alice/api/#", QoS::AtLeastOnce)).await;
    assert!(matches!(raw.recv().await, Some(Packet::SubAck(a)) if a.codes == [1]));
    // Nobody writes into a mailbox, not even its owner's API answers.
    assert_eq!(
        puback(&mut raw, "inbox/alice/api/account.whoami", 1).await,
        reason::NOT_AUTHORIZED
    );
    // A deeply nested, a huge and a broken request: each a clear bad_request.
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let huge = json!({ "user": "x".repeat(100_000) }).to_string();
    for (i, body) in [deep, huge, "{not json".to_owned()].into_iter().enumerate() {
        raw.send(&publish_packet("api/friends.request", QoS::AtMostOnce, 0, body))
            .await;
        let answer = loop {
            match raw.recv().await {
                Some(Packet::Publish(p)) => break p,
                Some(_) => continue,
                None => panic!("closed after request {i}"),
            }
        };
        assert_eq!(&*answer.topic, "inbox/alice/api/friends.request");
        let g: serde_json::Value = serde_json::from_slice(&answer.payload).expect("JSON answer");
        assert_eq!(
            (g["ok"].clone(), g["error"]["code"].clone()),
            (json!(false), json!("bad_request")),
            "request {i}: {g}"
        );
        if answer.qos != QoS::AtMostOnce {
            raw.send(&Packet::PubAck(natter_shared::codec::Ack::new(answer.pkid)))
                .await;
        }
    }
    assert_eq!(puback(&mut raw, "api/account.whoami", 9).await, reason::SUCCESS);
    b.stop().await;
}
