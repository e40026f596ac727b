//! The IM layer end to end: mailbox delivery with a stamped sender, authorization
//! (including the attacks), contacts, groups, presence, history, registration, reset,
//! admin, retention gaps, operator rules; and the three-user scenario.

use std::time::Duration;

use bytes::Bytes;
use natter_e2e::im::{befriend, ImClient};
use natter_e2e::{connect_packet, publish_packet, subscribe_packet, v3, Raw, TestBroker, WAIT};
use natter_shared::codec::{reason, Packet, Protocol, QoS};
use serde_json::json;

fn publish(topic: &str, qos: QoS, pkid: u16, payload: &'static [u8]) -> Packet {
    publish_packet(topic, qos, pkid, Bytes::from_static(payload))
}

async fn suback(raw: &mut Raw, filter: &str) -> u8 {
    raw.send(&subscribe_packet(filter, QoS::AtMostOnce)).await;
    // Retained messages (presence) of earlier subscriptions may come first.
    loop {
        match raw.recv().await {
            Some(Packet::SubAck(a)) => return a.codes[0],
            Some(Packet::Publish(_)) => continue,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }
}

/// The `text` of each message of a `history` answer.
fn texts(messages: &serde_json::Value) -> Vec<&str> {
    let all = messages.as_array().expect("messages is an array");
    all.iter()
        .map(|m| m["text"].as_str().expect("a text message"))
        .collect()
}

/// The next PUBLISH's JSON payload (an API answer).
async fn answer(raw: &mut Raw) -> serde_json::Value {
    loop {
        match raw.recv().await {
            Some(Packet::Publish(p)) => return serde_json::from_slice(&p.payload).expect("JSON answer"),
            Some(_) => continue,
            None => panic!("closed"),
        }
    }
}

async fn puback(raw: &mut Raw, topic: &str, pkid: u16) -> u8 {
    raw.send(&publish(topic, QoS::AtLeastOnce, pkid, b"x")).await;
    loop {
        match raw.recv().await {
            Some(Packet::PubAck(a)) if a.pkid == pkid => return a.reason,
            Some(_) => continue,
            None => panic!("closed"),
        }
    }
}

#[tokio::test]
async fn dm_is_stamped_stored_and_copied_to_the_senders_other_devices() {
    let b = TestBroker::start_default(|_| {}).await;
    let mut bob = ImClient::connect(b.addr, "bob", "bob-phone").await;
    let mut alice_laptop = ImClient::connect(b.addr, "alice", "alice-laptop").await;
    let mut alice_phone = ImClient::connect(b.addr, "alice", "alice-phone").await;
    // A forged `from` user property is dropped; the broker stamps the real sender.
    let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
        user_properties: vec![("from".into(), "mallory".into()), ("lang".into(), "en".into())],
        ..Default::default()
    };
    alice_phone
        .c
        .client
        .publish_with_properties(
            "dm/bob",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            "hi bob",
            props,
        )
        .await
        .unwrap();
    let got = bob.next().await;
    assert_eq!(got.topic, "inbox/bob/dm/alice");
    assert_eq!(got.text(), "hi bob");
    assert_eq!(got.prop("from"), Some("alice"));
    assert_eq!(got.prop("lang"), Some("en"), "other user properties pass through");
    assert_eq!(
        got.props.iter().filter(|(k, _)| k == "from").count(),
        1,
        "{:?}",
        got.props
    );
    let id: u64 = got.prop("id").unwrap().parse().unwrap();
    assert!(got.prop("ts").unwrap().parse::<u64>().unwrap() > 1_600_000_000_000);
    let copy = alice_laptop.next().await;
    assert_eq!(
        (copy.topic.as_str(), copy.text()),
        ("inbox/alice/sent/dm/bob", "hi bob")
    );
    assert_eq!(copy.prop("id"), Some(id.to_string().as_str()), "the same message id");
    alice_phone.quiet(Duration::from_millis(300)).await;
    // Ids increase per mailbox.
    alice_phone
        .publish("dm/bob", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, "again")
        .await;
    let next: u64 = bob.next().await.prop("id").unwrap().parse().unwrap();
    assert!(next > id);
    b.stop().await;
}

#[tokio::test]
async fn nobody_subscribes_to_others_mailboxes_or_unauthorized_topics() {
    let b = TestBroker::start_default(|_| {}).await;
    for protocol in [Protocol::V5, Protocol::V311] {
        let mut bob = Raw::login(b.addr, protocol, "bob", "attacker").await;
        let refused = if protocol == Protocol::V5 {
            reason::NOT_AUTHORIZED
        } else {
            reason::v3::SUBACK_FAILURE
        };
        for filter in [
            "#",
            "+",
            "+/alice/#",
            "+/+/dm/+",
            "inbox/#",
            "inbox/+/#",
            "inbox/+/dm/bob",
            "inbox/alice/#",
            "inbox/alice/dm/+",
            "$share/g/inbox/alice/#",
            "$share/g/#",
            "$SYS/#",
            "presence/+",
            "presence/#",
            "presence/carol",
            "dm/bob",
            "api/#",
            "devices/bob/x",
        ] {
            assert_eq!(suback(&mut bob, filter).await, refused, "{filter} ({protocol:?})");
        }
        assert_eq!(suback(&mut bob, "inbox/bob/#").await, 0, "own mailbox at QoS 0");
        assert_eq!(suback(&mut bob, "presence/bob").await, 0, "own presence");
    }
    b.stop().await;
}

#[tokio::test]
async fn nobody_publishes_into_mailboxes_or_presence() {
    let b = TestBroker::start_default(|_| {}).await;
    let mut bob = ImClient::connect(b.addr, "bob", "bob").await;
    let mut alice = Raw::login(b.addr, Protocol::V5, "alice", "forger").await;
    for (i, topic) in [
        "inbox/bob/dm/carol",
        "presence/alice",
        "presence/bob",
        "register/x",
        "dm/nobody",
        "dm/Bob",
        "devices/x",
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(
            puback(&mut alice, topic, i as u16 + 1).await,
            reason::NOT_AUTHORIZED,
            "{topic}"
        );
    }
    bob.quiet(Duration::from_millis(300)).await;
    // 3.1.1: acknowledged and dropped (no negative PUBACK there).
    let mut alice3 = Raw::login(b.addr, Protocol::V311, "alice", "forger3").await;
    assert_eq!(puback(&mut alice3, "inbox/bob/dm/carol", 9).await, 0);
    bob.quiet(Duration::from_millis(300)).await;
    b.stop().await;
}

#[tokio::test]
async fn contacts_blocking_and_presence() {
    let b = TestBroker::start_default(|_| {}).await;
    let mut alice = ImClient::connect(b.addr, "alice", "a").await;
    let mut bob = ImClient::connect(b.addr, "bob", "b").await;
    let mut carol = ImClient::connect(b.addr, "carol", "c").await;

    // Presence is for friends: not yet.
    let mut bob_raw = Raw::login(b.addr, Protocol::V5, "bob", "b-raw").await;
    assert_eq!(suback(&mut bob_raw, "presence/alice").await, reason::NOT_AUTHORIZED);
    bob.fails("presence.get", json!({ "user": "alice" }), "forbidden").await;

    befriend(&mut alice, &mut bob).await;
    assert_eq!(alice.ok("friends.list", json!({})).await["friends"], json!(["bob"]));
    bob.fails("friends.request", json!({ "user": "alice" }), "conflict")
        .await;
    bob.fails("friends.request", json!({ "user": "nobody" }), "not_found")
        .await;

    // Presence of a friend: subscribe, see online, then offline with last_seen.
    bob.c
        .client
        .subscribe("presence/alice", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .unwrap();
    let p = bob.next_on("presence/alice").await.json();
    assert_eq!(p["status"], "online");
    alice
        .ok("presence.set", json!({ "status": "away", "text": "lunch" }))
        .await;
    let p = bob.next_on("presence/alice").await.json();
    assert_eq!(
        (p["status"].as_str(), p["text"].as_str()),
        (Some("away"), Some("lunch"))
    );
    let got = bob.ok("presence.get", json!({ "user": "alice" })).await;
    assert_eq!(got["status"], "away");
    alice
        .fails("presence.set", json!({ "status": "offline" }), "bad_request")
        .await;
    drop(alice);
    let p = bob.next_on("presence/alice").await.json();
    assert_eq!(p["status"], "offline");
    assert!(p["last_seen"].as_u64().is_some());

    // carol asks bob; bob declines, then blocks her: her DMs are refused.
    carol.ok("friends.request", json!({ "user": "bob" })).await;
    assert_eq!(
        bob.next_on("inbox/bob/event/friend_request").await.json()["user"],
        "carol"
    );
    assert_eq!(bob.ok("friends.list", json!({})).await["incoming"], json!(["carol"]));
    bob.ok("friends.decline", json!({ "user": "carol" })).await;
    carol.next_on("inbox/carol/event/friend_declined").await;
    bob.ok("block", json!({ "user": "carol" })).await;
    assert_eq!(bob.ok("blocked.list", json!({})).await["blocked"], json!(["carol"]));
    let mut carol_raw = Raw::login(b.addr, Protocol::V5, "carol", "c-raw").await;
    assert_eq!(puback(&mut carol_raw, "dm/bob", 1).await, reason::NOT_AUTHORIZED);
    carol
        .fails("friends.request", json!({ "user": "bob" }), "forbidden")
        .await;
    bob.quiet(Duration::from_millis(300)).await;
    bob.ok("unblock", json!({ "user": "carol" })).await;
    assert_eq!(puback(&mut carol_raw, "dm/bob", 2).await, 0);
    assert_eq!(bob.next().await.topic, "inbox/bob/dm/carol");

    // Removing a friend ends the presence subscription at once.
    let mut alice = ImClient::connect(b.addr, "alice", "a2").await;
    // Back with the status she chose before, not a plain online.
    assert_eq!(bob.next_on("presence/alice").await.json()["status"], "away");
    bob.ok("friends.remove", json!({ "user": "alice" })).await;
    alice.next_on("inbox/alice/event/friend_removed").await;
    alice.ok("presence.set", json!({ "status": "busy" })).await;
    bob.quiet(Duration::from_millis(300)).await;
    b.stop().await;
}

#[tokio::test]
async fn friends_only_dm_policy() {
    let b = TestBroker::start_default(|c| c.im.dm_policy = natterd::config::DmPolicy::Friends).await;
    let mut alice = ImClient::connect(b.addr, "alice", "a").await;
    let mut bob = ImClient::connect(b.addr, "bob", "b").await;
    let mut raw = Raw::login(b.addr, Protocol::V5, "alice", "a-raw").await;
    assert_eq!(puback(&mut raw, "dm/bob", 1).await, reason::NOT_AUTHORIZED);
    befriend(&mut alice, &mut bob).await;
    assert_eq!(puback(&mut raw, "dm/bob", 2).await, 0);
    assert_eq!(bob.next().await.topic, "inbox/bob/dm/alice");
    b.stop().await;
}

#[tokio::test]
async fn groups_roles_and_a_kicked_member_loses_rights_at_once() {
    let b = TestBroker::start_default(|_| {}).await;
    let mut alice = ImClient::connect(b.addr, "alice", "a").await;
    let mut bob = ImClient::connect(b.addr, "bob", "b").await;
    let mut carol = ImClient::connect(b.addr, "carol", "c").await;
    alice.ok("groups.create", json!({ "group": "g1" })).await;
    alice
        .fails("groups.create", json!({ "group": "g1" }), "already_exists")
        .await;
    bob.fails("groups.join", json!({ "group": "g1" }), "forbidden").await;
    alice.ok("groups.invite", json!({ "group": "g1", "user": "bob" })).await;
    assert_eq!(bob.next_on("inbox/bob/event/group_invite").await.json()["by"], "alice");
    bob.ok("groups.join", json!({ "group": "g1" })).await;
    bob.fails("groups.invite", json!({ "group": "g1", "user": "carol" }), "forbidden")
        .await;
    alice
        .ok("groups.promote", json!({ "group": "g1", "user": "bob" }))
        .await;
    bob.ok("groups.invite", json!({ "group": "g1", "user": "carol" })).await;
    carol.ok("groups.join", json!({ "group": "g1" })).await;
    let members = alice.ok("groups.members", json!({ "group": "g1" })).await["members"].clone();
    assert_eq!(members.as_array().unwrap().len(), 3, "{members}");
    assert_eq!(
        carol.ok("groups.list", json!({})).await["groups"],
        json!([{ "group": "g1", "role": "member" }])
    );

    // A group message reaches every member; not the sending device.
    bob.publish("group/g1", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, "hello all")
        .await;
    for c in [&mut alice, &mut carol] {
        let g = c.next_on(&format!("inbox/{}/group/g1/bob", c.user)).await;
        assert_eq!((g.text(), g.prop("from")), ("hello all", Some("bob")));
    }

    // Kicked: the same open connection can no longer publish to the group.
    let mut carol_raw = Raw::login(b.addr, Protocol::V5, "carol", "c-raw").await;
    assert_eq!(puback(&mut carol_raw, "group/g1", 1).await, 0);
    carol
        .fails("groups.kick", json!({ "group": "g1", "user": "bob" }), "forbidden")
        .await;
    bob.ok("groups.kick", json!({ "group": "g1", "user": "carol" })).await;
    carol.next_on("inbox/carol/event/group_kicked").await;
    assert_eq!(puback(&mut carol_raw, "group/g1", 2).await, reason::NOT_AUTHORIZED);
    carol
        .fails("history", json!({ "with": "group:g1" }), "not_member")
        .await;
    alice.fails("groups.leave", json!({ "group": "g1" }), "forbidden").await;
    bob.ok("groups.leave", json!({ "group": "g1" })).await;
    bob.fails("groups.delete", json!({ "group": "g1" }), "not_member").await;
    alice.ok("groups.delete", json!({ "group": "g1" })).await;
    alice.next_on("inbox/alice/event/group_deleted").await;
    alice
        .fails("groups.members", json!({ "group": "g1" }), "not_found")
        .await;
    // Open groups need no invitation.
    alice
        .ok("groups.create", json!({ "group": "open1", "open": true }))
        .await;
    carol.ok("groups.join", json!({ "group": "open1" })).await;
    b.stop().await;
}

/// `with`'s history as `c` sees it, once it holds `n` messages. A message is
/// delivered live as soon as the broker accepts it and is in history once stored
/// (what its PUBACK says); a test that did not wait for the PUBACK asks until then.
async fn history_of(c: &mut ImClient, with: &str, n: usize) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let all = c.ok("history", json!({ "with": with })).await["messages"].clone();
        if all.as_array().map_or(0, Vec::len) >= n || tokio::time::Instant::now() > deadline {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn history_is_paged_in_order() {
    let b = TestBroker::start_default(|_| {}).await;
    let mut alice = ImClient::connect(b.addr, "alice", "a").await;
    let mut bob = ImClient::connect(b.addr, "bob", "b").await;
    for i in 0..5 {
        alice
            .publish("dm/bob", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, &format!("a{i}"))
            .await;
        bob.next().await;
    }
    bob.publish("dm/alice", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, "from bob")
        .await;
    alice.next_on("inbox/alice/dm/bob").await;
    let all = history_of(&mut bob, "alice", 6).await;
    assert_eq!(texts(&all), vec!["a0", "a1", "a2", "a3", "a4", "from bob"]);
    let ids: Vec<u64> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    let page = alice
        .ok("history", json!({ "with": "bob", "before": ids[3], "limit": 2 }))
        .await["messages"]
        .clone();
    assert_eq!(texts(&page), vec!["a1", "a2"]);
    let after = alice.ok("history", json!({ "with": "bob", "after": ids[4] })).await["messages"].clone();
    assert_eq!(after.as_array().unwrap().len(), 1);
    assert_eq!(after[0]["from"], "bob");
    alice
        .fails("history", json!({ "with": "bob", "limit": 501 }), "bad_request")
        .await;
    alice.fails("history", json!({}), "bad_request").await;
    // carol sees nothing of it.
    let mut carol = ImClient::connect(b.addr, "carol", "c").await;
    assert_eq!(
        carol.ok("history", json!({ "with": "alice" })).await["messages"],
        json!([])
    );
    b.stop().await;
}

#[tokio::test]
async fn api_validation_and_mqtt5_request_response() {
    let b = TestBroker::start_default(|_| {}).await;
    let mut alice = ImClient::connect(b.addr, "alice", "a").await;
    alice.fails("no.such.command", json!({}), "unknown_command").await;
    alice
        .fails("friends.request", json!({ "usr": "bob" }), "bad_request")
        .await;
    alice.fails("friends.request", json!({}), "bad_request").await;
    alice.fails("admin.stats", json!({}), "forbidden").await;
    alice
        .publish(
            "api/account.whoami",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            "not json",
        )
        .await;
    let g = alice.next_on("inbox/alice/api/account.whoami").await.json();
    assert_eq!(g["error"]["code"], "bad_request");
    assert_eq!(alice.ok("account.whoami", json!({})).await["user"], "alice");

    // MQTT 5: Response Topic inside the caller's mailbox, with Correlation Data.
    let mut raw = Raw::login(b.addr, Protocol::V5, "alice", "rr").await;
    assert_eq!(suback(&mut raw, "inbox/alice/replies/#").await, 0);
    let mut p = publish("api/account.whoami", QoS::AtLeastOnce, 3, b"{}");
    if let Packet::Publish(p) = &mut p {
        p.properties.response_topic = Some("inbox/alice/replies/1".into());
        p.properties.correlation_data = Some(Bytes::from_static(b"corr-7"));
    }
    raw.send(&p).await;
    loop {
        match raw.recv().await {
            Some(Packet::Publish(r)) => {
                assert_eq!(&*r.topic, "inbox/alice/replies/1");
                assert_eq!(r.properties.correlation_data.as_deref(), Some(&b"corr-7"[..]));
                break;
            }
            Some(_) => continue,
            None => panic!("closed"),
        }
    }
    // A Response Topic outside the mailbox is ignored: the answer goes to the mailbox.
    let mut p = publish("api/account.whoami", QoS::AtLeastOnce, 4, b"{\"id\":\"x\"}");
    if let Packet::Publish(p) = &mut p {
        p.properties.response_topic = Some("inbox/bob/api/steal".into());
    }
    raw.send(&p).await;
    let g = alice.next_on("inbox/alice/api/account.whoami").await.json();
    assert_eq!(g["id"], "x");
    b.stop().await;
}

#[tokio::test]
async fn registration_when_open_never_overwrites() {
    let b = TestBroker::start_default(|c| c.im.registration = natterd::config::Registration::Open).await;
    // No credentials: admitted to register, nothing else.
    let (mut anon, ack) = Raw::connect(b.addr, connect_packet(Protocol::V5, None, "newcomer")).await;
    assert_eq!(ack.code, 0);
    assert_eq!(suback(&mut anon, "register/r1").await, 0);
    assert_eq!(suback(&mut anon, "inbox/alice/#").await, reason::NOT_AUTHORIZED);
    assert_eq!(puback(&mut anon, "dm/alice", 1).await, reason::NOT_AUTHORIZED);
    let body = |user: &str| json!({ "user": user, "password": "dave-pw", "reply": "r1" }).to_string();
    anon.send(&publish_packet(
        "api/account.register",
        QoS::AtLeastOnce,
        2,
        body("dave"),
    ))
    .await;
    let r = answer(&mut anon).await;
    assert_eq!(r["ok"], true, "{r}");
    // Existing accounts are never overwritten.
    anon.send(&publish_packet(
        "api/account.register",
        QoS::AtLeastOnce,
        3,
        body("alice"),
    ))
    .await;
    let r = answer(&mut anon).await;
    assert_eq!(r["error"]["code"], "already_exists", "{r}");
    let mut dave = connect_packet(Protocol::V5, Some("alice"), "dave");
    dave.username = Some("dave".into());
    dave.password = Some(Bytes::from_static(b"dave-pw"));
    let (_, ack) = Raw::connect(b.addr, dave).await;
    assert_eq!(ack.code, 0, "the new account logs in");
    let (_, ack) = Raw::connect(b.addr, connect_packet(Protocol::V5, Some("alice"), "alice")).await;
    assert_eq!(ack.code, 0, "alice's password unchanged");
    b.stop().await;

    // Closed (the default): clients without credentials are refused.
    let b = TestBroker::start_default(|_| {}).await;
    let (_, ack) = Raw::connect(b.addr, connect_packet(Protocol::V5, None, "newcomer")).await;
    assert_eq!(ack.code, reason::BAD_USERNAME_OR_PASSWORD);
    b.stop().await;
}

#[tokio::test]
async fn password_reset_tokens_work_once() {
    use natterd::admin::Request;
    use natterd::control::request;
    let b = TestBroker::start_default(|_| {}).await;
    let issued = request(b.dir.path(), &Request::UserReset { name: "bob".into() })
        .await
        .unwrap();
    assert!(issued.ok, "{:?}", issued.error);
    let token = issued.token.unwrap();
    let login = |pw: &str| {
        let mut c = connect_packet(Protocol::V5, Some("bob"), "bob-reset");
        c.password = Some(Bytes::from(pw.to_owned()));
        c
    };
    let (mut raw, ack) = Raw::connect(b.addr, login(&token)).await;
    assert_eq!(ack.code, 0, "the reset token logs in, for resetting only");
    assert_eq!(suback(&mut raw, "inbox/bob/dm/#").await, reason::NOT_AUTHORIZED);
    assert_eq!(puback(&mut raw, "dm/alice", 1).await, reason::NOT_AUTHORIZED);
    assert_eq!(suback(&mut raw, "inbox/bob/api/#").await, 0);
    let req = publish_packet(
        "api/account.reset",
        QoS::AtLeastOnce,
        2,
        Bytes::from(json!({ "token": token, "new_password": "bob-new" }).to_string()),
    );
    raw.send(&req).await;
    let v = answer(&mut raw).await;
    assert_eq!(v["ok"], true, "{v}");
    let (_, ack) = Raw::connect(b.addr, login("bob-new")).await;
    assert_eq!(ack.code, 0, "new password works");
    let (_, ack) = Raw::connect(b.addr, login(&token)).await;
    assert_eq!(ack.code, reason::BAD_USERNAME_OR_PASSWORD, "a used token is refused");
    b.stop().await;
}

#[tokio::test]
async fn admin_api() {
    let b = TestBroker::start_default(|_| {}).await;
    let mut root = ImClient::connect(b.addr, "root", "console").await;
    root.ok("admin.users.add", json!({ "user": "erin", "password": "erin-pw" }))
        .await;
    root.fails(
        "admin.users.add",
        json!({ "user": "erin", "password": "x" }),
        "already_exists",
    )
    .await;
    let users = root.ok("admin.users.list", json!({})).await["users"].clone();
    assert!(users.as_array().unwrap().iter().any(|u| u["name"] == "erin"), "{users}");
    // Counts move with what happens: alice's connection is a session with one
    // subscription (her mailbox) and a retained presence; her DM to root is published
    // once and delivered to root's mailbox.
    let before = root.ok("admin.stats", json!({})).await;
    let alice = ImClient::connect(b.addr, "alice", "alice-stats").await;
    alice
        .publish("dm/root", natter_e2e::v5::QoS::AtLeastOnce, "hi root")
        .await;
    assert_eq!(root.next().await.text(), "hi root");
    let after = root.ok("admin.stats", json!({})).await;
    let delta = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    assert_eq!(before["sessions"], json!(1), "root's own: {before}");
    assert_eq!(delta("sessions"), 1, "{before} {after}");
    assert_eq!(delta("subscriptions"), 1, "{before} {after}");
    assert_eq!(delta("retained"), 1, "alice's presence: {before} {after}");
    assert!(delta("published") >= 1, "{before} {after}");
    assert!(delta("delivered") >= 1, "{before} {after}");
    assert_eq!(delta("dropped"), 0, "{before} {after}");
    let reset = root.ok("admin.users.reset", json!({ "user": "erin" })).await;
    assert!(reset["token"].as_str().unwrap().starts_with("nr_"));
    root.ok("admin.users.del", json!({ "user": "erin" })).await;
    root.fails("admin.users.del", json!({ "user": "erin" }), "not_found")
        .await;
    b.stop().await;
}

#[tokio::test]
async fn operator_rules_with_placeholders() {
    use natterd::acl::rules::{Access, Effect, Rule, Who};
    let b = TestBroker::start_default(|c| {
        c.acl.rules = vec![Rule {
            filter: "devices/%u/#".into(),
            access: Access::ReadWrite,
            effect: Effect::Allow,
            who: Who::All,
            users: vec![],
        }]
    })
    .await;
    let mut alice = Raw::login(b.addr, Protocol::V5, "alice", "sensor").await;
    assert_eq!(suback(&mut alice, "devices/alice/#").await, 0);
    assert_eq!(suback(&mut alice, "devices/bob/#").await, reason::NOT_AUTHORIZED);
    assert_eq!(suback(&mut alice, "devices/+/temp").await, reason::NOT_AUTHORIZED);
    assert_eq!(puback(&mut alice, "devices/alice/temp", 1).await, 0);
    assert_eq!(puback(&mut alice, "devices/bob/temp", 2).await, reason::NOT_AUTHORIZED);
    b.stop().await;
}

#[tokio::test]
async fn retention_drops_the_oldest_and_tells_the_device_with_a_gap_event() {
    let b = TestBroker::start_default(|c| c.im.mailbox_max_messages = 3.try_into().unwrap()).await;
    retention_gap(b).await;
}

#[tokio::test]
async fn retention_by_bytes_drops_the_oldest_too() {
    // Five 2-byte messages in a 6-byte mailbox: the last three stay.
    let b = TestBroker::start_default(|c| c.im.mailbox_max_bytes = 6.try_into().unwrap()).await;
    retention_gap(b).await;
}

#[tokio::test]
async fn retention_by_age_counts_back_from_the_newest_entry() {
    // m0 and m1, then (more than the 1 s bound later) m2..m4: the first two are more
    // than 1 s older than the newest, so they go.
    let b = TestBroker::start_default(|c| c.im.mailbox_max_age = Duration::from_secs(1)).await;
    retention_gap_after(b, Some(Duration::from_millis(1200))).await;
}

/// bob's device is away while alice sends m0..m4 into a mailbox that keeps three:
/// it gets a gap event, then m2..m4.
async fn retention_gap(b: TestBroker) {
    retention_gap_after(b, None).await;
}

/// [`retention_gap`], with `pause` between m1 and m2 (a difference in age, not a wait
/// for something to happen).
async fn retention_gap_after(b: TestBroker, pause: Option<Duration>) {
    let bob = ImClient::persistent(b.addr, "bob", "bob-tablet").await;
    drop(bob);
    b.wait_offline("bob").await;
    // Each DM acknowledged, hence stored, before the next.
    let mut alice = Raw::login(b.addr, Protocol::V5, "alice", "a").await;
    for i in 0..5u16 {
        if let (2, Some(pause)) = (i, pause) {
            tokio::time::sleep(pause).await;
        }
        let p = publish_packet("dm/bob", QoS::AtLeastOnce, i + 1, format!("m{i}"));
        alice.send(&p).await;
        assert!(matches!(alice.recv().await, Some(Packet::PubAck(a)) if a.reason == 0));
    }
    let mut bob = ImClient::persistent(b.addr, "bob", "bob-tablet").await;
    let gap = bob.next().await;
    assert_eq!(gap.topic, "inbox/bob/event/gap");
    let g = gap.json();
    let mut kept = Vec::new();
    for i in 2..5 {
        let m = bob.next().await;
        assert_eq!(m.text(), format!("m{i}"));
        kept.push(m.prop("id").expect("id property").parse::<u64>().unwrap());
    }
    // The gap names exactly m0 and m1: the two ids just before m2 (ids increase by one
    // in a mailbox that only these DMs went to).
    assert_eq!(kept, vec![kept[0], kept[0] + 1, kept[0] + 2], "consecutive ids");
    assert_eq!(
        (g["from"].as_u64(), g["to"].as_u64()),
        (Some(kept[0] - 2), Some(kept[0] - 1)),
        "{g}"
    );
    bob.quiet(Duration::from_millis(300)).await;
    b.stop().await;
}

/// The scenario: alice and bob become friends and chat, carol is blocked, and a
/// group of three chats while bob is offline; bob catches up on reconnect from two
/// devices, each on its own cursor.
#[tokio::test]
async fn three_users_friends_blocking_and_group_catch_up_on_two_devices() {
    let b = TestBroker::start_default(|_| {}).await;
    let mut alice = ImClient::connect(b.addr, "alice", "alice-phone").await;
    let mut carol = ImClient::connect(b.addr, "carol", "carol-phone").await;
    // bob has two devices with persistent sessions; one speaks 3.1.1.
    let mut bob_phone = ImClient::persistent(b.addr, "bob", "bob-phone").await;
    let mut o = v3::options(b.addr, "bob-laptop", Some("bob"));
    o.set_clean_session(false);
    let mut bob_laptop = v3::connect(o.clone()).await.unwrap();
    bob_laptop
        .client
        .subscribe("inbox/bob/#", v3::QoS::AtLeastOnce)
        .await
        .unwrap();
    bob_laptop.suback().await;

    befriend(&mut alice, &mut bob_phone).await;
    alice
        .publish("dm/bob", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, "hi bob")
        .await;
    assert_eq!(bob_phone.next_on("inbox/bob/dm/alice").await.text(), "hi bob");
    bob_phone
        .publish("dm/alice", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, "hi alice")
        .await;
    assert_eq!(alice.next_on("inbox/alice/dm/bob").await.text(), "hi alice");
    // The laptop sees the whole conversation: alice's DM and bob's own reply.
    let mut laptop_topics = Vec::new();
    while !laptop_topics.contains(&"inbox/bob/sent/dm/alice".to_string()) {
        laptop_topics.push(bob_laptop.publish().await.topic);
    }
    assert!(
        laptop_topics.contains(&"inbox/bob/dm/alice".to_string()),
        "{laptop_topics:?}"
    );

    bob_phone.ok("block", json!({ "user": "carol" })).await;
    let mut carol_raw = Raw::login(b.addr, Protocol::V5, "carol", "carol-raw").await;
    assert_eq!(puback(&mut carol_raw, "dm/bob", 1).await, reason::NOT_AUTHORIZED);

    alice.ok("groups.create", json!({ "group": "trio" })).await;
    for u in ["bob", "carol"] {
        alice.ok("groups.invite", json!({ "group": "trio", "user": u })).await;
    }
    bob_phone.ok("groups.join", json!({ "group": "trio" })).await;
    carol.ok("groups.join", json!({ "group": "trio" })).await;
    // Let the laptop take everything so far, then both bob devices go away.
    while tokio::time::timeout(Duration::from_millis(300), bob_laptop.rx.recv())
        .await
        .is_ok()
    {}
    drop(bob_laptop);
    drop(bob_phone);
    b.wait_offline("bob").await;

    // One after the other (each delivered before the next is sent), so the broker's
    // order is the order written here.
    for (from, to, text) in [
        ("alice", "carol", "one"),
        ("carol", "alice", "two"),
        ("alice", "carol", "three"),
    ] {
        let (sender, receiver) = if from == "alice" {
            (&mut alice, &mut carol)
        } else {
            (&mut carol, &mut alice)
        };
        sender
            .publish("group/trio", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, text)
            .await;
        assert_eq!(
            receiver.next_on(&format!("inbox/{to}/group/trio/{from}")).await.text(),
            text
        );
    }

    // The phone comes back: everything it missed, in order.
    let mut bob_phone = ImClient::persistent(b.addr, "bob", "bob-phone").await;
    let mut texts = Vec::new();
    while texts.len() < 3 {
        let g = bob_phone.next().await;
        if g.topic.starts_with("inbox/bob/group/trio/") {
            texts.push(g.text().to_owned());
        }
    }
    assert_eq!(texts, vec!["one", "two", "three"]);
    // So does the laptop, on its own cursor (3.1.1, resumed session).
    let mut bob_laptop = v3::connect(o).await.unwrap();
    assert!(bob_laptop.session_present);
    let mut texts = Vec::new();
    while texts.len() < 3 {
        let p = bob_laptop.publish().await;
        if p.topic.starts_with("inbox/bob/group/trio/") {
            texts.push(String::from_utf8_lossy(&p.payload).into_owned());
        }
    }
    assert_eq!(texts, vec!["one", "two", "three"]);
    b.stop().await;
}

#[tokio::test]
async fn registration_is_rate_limited_per_address() {
    let b = TestBroker::start_default(|c| {
        c.im.registration = natterd::config::Registration::Open;
        c.im.registrations_per_hour = 2.try_into().unwrap();
    })
    .await;
    let (mut anon, _) = Raw::connect(b.addr, connect_packet(Protocol::V5, None, "reg")).await;
    assert_eq!(suback(&mut anon, "register/reg").await, 0);
    for (i, (user, expect)) in [("u1", "ok"), ("u2", "ok"), ("u3", "rate_limited")]
        .into_iter()
        .enumerate()
    {
        let req = publish_packet(
            "api/account.register",
            QoS::AtLeastOnce,
            i as u16 + 1,
            Bytes::from(json!({ "user": user, "password": "pw" }).to_string()),
        );
        anon.send(&req).await;
        let v = answer(&mut anon).await;
        if expect == "ok" {
            assert_eq!(v["ok"], true, "{v}");
        } else {
            assert_eq!(v["error"]["code"], expect, "{v}");
        }
    }
    b.stop().await;
}

#[tokio::test]
async fn presence_visible_to_all_when_configured() {
    let b = TestBroker::start_default(|c| c.im.presence_visibility = natterd::config::PresenceVisibility::All).await;
    let _bob = ImClient::connect(b.addr, "bob", "b").await;
    let mut carol = Raw::login(b.addr, Protocol::V5, "carol", "c").await;
    assert_eq!(
        suback(&mut carol, "presence/bob").await,
        0,
        "not a friend, visibility all"
    );
    assert_eq!(suback(&mut carol, "presence/+").await, 0);
    let mut alice = ImClient::connect(b.addr, "alice", "a").await;
    assert_eq!(
        alice.ok("presence.get", json!({ "user": "bob" })).await["status"],
        "online"
    );
    alice
        .fails(
            "presence.set",
            json!({ "status": "busy", "text": "x".repeat(201) }),
            "bad_request",
        )
        .await;
    b.stop().await;
}

#[tokio::test]
async fn binary_messages_come_back_as_base64_in_history() {
    let b = TestBroker::start_default(|_| {}).await;
    let mut bob = ImClient::connect(b.addr, "bob", "b").await;
    let alice = ImClient::connect(b.addr, "alice", "a").await;
    alice
        .c
        .client
        .publish(
            "dm/bob",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            vec![0xffu8, 0x00, 0x10],
        )
        .await
        .unwrap();
    assert_eq!(&bob.next().await.payload[..], &[0xff, 0x00, 0x10]);
    let h = history_of(&mut bob, "alice", 1).await;
    assert_eq!(h[0]["data"], "/wAQ");
    assert!(h["messages"][0].get("text").is_none());
    b.stop().await;
}

#[tokio::test]
async fn a_device_is_replayed_its_whole_backlog_at_once() {
    // More than 10,000 entries (the old bound of one replay): a device acknowledging a
    // newer message before the rest came would have lost them.
    const N: usize = 10_050;
    let b = TestBroker::start_default(|c| c.im.mailbox_max_messages = 20_000.try_into().unwrap()).await;
    let mut c = connect_packet(Protocol::V5, Some("bob"), "bob-watch");
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(600);
    let (mut watch, _) = Raw::connect(b.addr, c.clone()).await;
    assert_eq!(suback(&mut watch, "inbox/bob/#").await, 0);
    drop(watch);
    b.wait_offline("bob").await;
    let mut alice = Raw::login(b.addr, Protocol::V5, "alice", "a").await;
    for i in 0..N {
        alice
            .send(&publish_packet("dm/bob", QoS::AtMostOnce, 0, format!("m{i}")))
            .await;
    }
    // Acknowledged once stored, after everything sent before it.
    assert_eq!(puback(&mut alice, "dm/bob", 1).await, 0);
    let (mut watch, ack) = Raw::connect(b.addr, c).await;
    assert!(ack.session_present);
    for i in 0..N {
        match watch.recv().await {
            Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], format!("m{i}").as_bytes()),
            other => panic!("expected message {i}, got {other:?}"),
        }
    }
    assert!(matches!(watch.recv().await, Some(Packet::Publish(p)) if &p.payload[..] == b"x"));
    b.stop().await;
}

#[tokio::test]
async fn a_qos0_device_is_not_replayed_what_it_was_already_sent() {
    let b = TestBroker::start_default(|_| {}).await;
    let mut c = connect_packet(Protocol::V5, Some("bob"), "bob-watch");
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(600);
    let (mut watch, _) = Raw::connect(b.addr, c.clone()).await;
    assert_eq!(suback(&mut watch, "inbox/bob/#").await, 0);
    let mut alice = Raw::login(b.addr, Protocol::V5, "alice", "a").await;
    assert_eq!(puback(&mut alice, "dm/bob", 1).await, 0);
    assert!(matches!(watch.recv().await, Some(Packet::Publish(p)) if &*p.topic == "inbox/bob/dm/alice"));
    drop(watch);
    b.wait_offline("bob").await;
    let (mut watch, ack) = Raw::connect(b.addr, c).await;
    assert!(ack.session_present);
    assert_eq!(
        watch.recv_within(Duration::from_millis(400)).await,
        Err(()),
        "nothing replayed"
    );
    b.stop().await;
}

#[tokio::test]
async fn admin_changes_a_password() {
    let b = TestBroker::start_default(|_| {}).await;
    let mut root = ImClient::connect(b.addr, "root", "console").await;
    root.ok(
        "admin.users.passwd",
        json!({ "user": "carol", "password": "carol-new" }),
    )
    .await;
    let mut c = connect_packet(Protocol::V5, Some("carol"), "c");
    c.password = Some(Bytes::from_static(b"carol-new"));
    let (_, ack) = Raw::connect(b.addr, c).await;
    assert_eq!(ack.code, 0);
    let (_, ack) = Raw::connect(b.addr, connect_packet(Protocol::V5, Some("carol"), "c2")).await;
    assert_eq!(
        ack.code,
        reason::BAD_USERNAME_OR_PASSWORD,
        "the old password no longer works"
    );
    b.stop().await;
}

#[tokio::test]
async fn a_slow_device_is_disconnected_rather_than_losing_mailbox_messages() {
    let b = TestBroker::start_default(|c| c.limits.max_queued_messages = 2.try_into().unwrap()).await;
    // A persistent device with a window of 1 that never acknowledges.
    let mut c = connect_packet(Protocol::V5, Some("bob"), "bob-slow");
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(600);
    c.properties.receive_maximum = Some(1);
    let (mut slow, _) = Raw::connect(b.addr, c.clone()).await;
    slow.send(&subscribe_packet("inbox/bob/#", QoS::AtLeastOnce)).await;
    assert!(matches!(slow.recv().await, Some(Packet::SubAck(a)) if a.codes == vec![1]));
    let mut alice = Raw::login(b.addr, Protocol::V5, "alice", "a").await;
    for i in 0..6u16 {
        let p = publish_packet("dm/bob", QoS::AtLeastOnce, i + 1, format!("m{i}"));
        alice.send(&p).await;
        assert!(matches!(alice.recv().await, Some(Packet::PubAck(a)) if a.reason == 0));
    }
    let seen = slow.until_closed().await;
    assert!(
        matches!(seen.last(), Some(Packet::Disconnect(d)) if d.reason == reason::QUOTA_EXCEEDED),
        "{seen:?}"
    );
    // Back with a normal window: every message, in order, once.
    c.properties.receive_maximum = None;
    let (mut back, ack) = Raw::connect(b.addr, c).await;
    assert!(ack.session_present);
    let mut texts = Vec::new();
    while texts.len() < 6 {
        match back.recv().await {
            Some(Packet::Publish(p)) => {
                back.send(&Packet::PubAck(natter_shared::codec::Ack::new(p.pkid))).await;
                texts.push(String::from_utf8_lossy(&p.payload).into_owned());
            }
            Some(_) => {}
            None => panic!("closed"),
        }
    }
    assert_eq!(texts, vec!["m0", "m1", "m2", "m3", "m4", "m5"]);
    assert_eq!(
        back.recv_within(Duration::from_millis(300)).await,
        Err(()),
        "no duplicates"
    );
    b.stop().await;
}

#[tokio::test]
async fn accounts_mailboxes_contacts_groups_and_cursors_survive_a_restart() {
    let b = TestBroker::start_default(|_| {}).await;
    let mut alice = ImClient::connect(b.addr, "alice", "a").await;
    let mut bob = ImClient::persistent(b.addr, "bob", "bob-phone").await;
    befriend(&mut alice, &mut bob).await;
    alice.ok("groups.create", json!({ "group": "g1", "open": true })).await;
    bob.ok("groups.join", json!({ "group": "g1" })).await;
    drop(bob);
    b.wait_offline("bob").await;
    let mut raw = Raw::login(b.addr, Protocol::V5, "alice", "a-raw").await;
    assert_eq!(puback(&mut raw, "dm/bob", 1).await, 0);
    drop((alice, raw));

    let b = b.restart().await;
    // bob's device resubscribes after the restart and gets what it missed.
    let mut bob = ImClient::persistent(b.addr, "bob", "bob-phone").await;
    let got = bob.next_on("inbox/bob/dm/alice").await;
    assert_eq!(got.text(), "x");
    assert_eq!(bob.ok("friends.list", json!({})).await["friends"], json!(["alice"]));
    assert_eq!(
        bob.ok("groups.list", json!({})).await["groups"],
        json!([{ "group": "g1", "role": "member" }])
    );
    let h = bob.ok("history", json!({ "with": "alice" })).await;
    assert_eq!(h["messages"][0]["text"], "x");
    // A fresh message id is above the old ones.
    let mut alice = ImClient::connect(b.addr, "alice", "a2").await;
    alice
        .publish("dm/bob", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, "after")
        .await;
    let next = bob.next_on("inbox/bob/dm/alice").await;
    assert!(next.prop("id").unwrap().parse::<u64>().unwrap() > got.prop("id").unwrap().parse::<u64>().unwrap());
    alice.ok("account.whoami", json!({})).await;
    b.stop().await;
}

/// PUBACK/PUBREC of a DM wait until it is stored, and acknowledgements keep the order
/// of the publishes, also when answers known at once (a plain topic, a refusal) sit
/// between DMs being stored.
#[tokio::test]
async fn acknowledgements_follow_storage_in_publish_order() {
    let b = TestBroker::start().await;
    let mut bob = ImClient::connect(b.addr, "bob", "bob").await;
    let mut alice = Raw::login(b.addr, Protocol::V5, "alice", "a-raw").await;
    let plan = [
        ("dm/bob", QoS::AtLeastOnce, "one"),
        ("plain/x", QoS::AtLeastOnce, "plain"),
        ("dm/bob", QoS::ExactlyOnce, "two"),
        ("dm/nobody", QoS::AtLeastOnce, "refused"),
        ("dm/bob", QoS::AtLeastOnce, "three"),
    ];
    for (i, (topic, qos, text)) in plan.iter().enumerate() {
        alice
            .send(&publish_packet(topic, *qos, i as u16 + 1, text.as_bytes().to_vec()))
            .await;
    }
    let acks = alice.acks(plan.len()).await;
    assert_eq!(
        acks,
        vec![
            (1, reason::SUCCESS),
            (2, reason::NO_MATCHING_SUBSCRIBERS),
            (3, reason::SUCCESS),
            (4, reason::NOT_AUTHORIZED),
            (5, reason::SUCCESS),
        ]
    );
    // Acknowledged means stored: the conversation's history has all three already.
    let all = bob.ok("history", json!({ "with": "alice" })).await["messages"].clone();
    assert_eq!(texts(&all), vec!["one", "two", "three"]);
    b.stop().await;
}

#[tokio::test]
async fn a_reset_token_expires() {
    use natterd::admin::Request;
    use natterd::control::request;
    let b = TestBroker::start_default(|c| c.im.reset_token_ttl_secs = 2.try_into().unwrap()).await;
    let issued = request(b.dir.path(), &Request::UserReset { name: "bob".into() })
        .await
        .unwrap();
    let token = issued.token.expect("a token");
    let mut c = connect_packet(Protocol::V5, Some("bob"), "bob-reset");
    c.password = Some(Bytes::from(token));
    let (_, ack) = Raw::connect(b.addr, c.clone()).await;
    assert_eq!(ack.code, 0, "valid at first");
    // Poll until the broker refuses it: within a few seconds, and not at once (the
    // lifetime counts in whole seconds, so two may be as little as one).
    let issued_at = tokio::time::Instant::now();
    loop {
        let (_, ack) = Raw::connect(b.addr, c.clone()).await;
        if ack.code == reason::BAD_USERNAME_OR_PASSWORD {
            break;
        }
        assert_eq!(ack.code, 0);
        assert!(issued_at.elapsed() < Duration::from_secs(5), "the token never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(issued_at.elapsed() >= Duration::from_millis(500));
    b.stop().await;
}

#[tokio::test]
async fn operator_rules_with_the_client_id_placeholder() {
    use natterd::acl::rules::{Access, Effect, Rule, Who};
    let b = TestBroker::start_default(|c| {
        c.acl.rules = vec![Rule {
            filter: "things/%c/#".into(),
            access: Access::ReadWrite,
            effect: Effect::Allow,
            who: Who::All,
            users: vec![],
        }]
    })
    .await;
    let mut t = Raw::login(b.addr, Protocol::V5, "alice", "thermo-1").await;
    assert_eq!(suback(&mut t, "things/thermo-1/#").await, 0);
    assert_eq!(suback(&mut t, "things/thermo-2/#").await, reason::NOT_AUTHORIZED);
    assert_eq!(puback(&mut t, "things/thermo-1/temp", 1).await, 0);
    assert_eq!(puback(&mut t, "things/thermo-2/temp", 2).await, reason::NOT_AUTHORIZED);
    // A client id with a wildcard never fills %c.
    let mut w = Raw::login(b.addr, Protocol::V5, "alice", "+").await;
    assert_eq!(suback(&mut w, "things/+/#").await, reason::NOT_AUTHORIZED);
    b.stop().await;
}

/// A slow device is disconnected with messages still queued in its session; retention
/// then drops some of those from its mailbox. Back, it gets what its session held and
/// a gap event that names only what it never gets: no id in the gap's range arrives.
#[tokio::test]
async fn a_gap_after_a_slow_consumer_returns_names_only_what_is_gone() {
    let b = TestBroker::start_default(|c| {
        c.im.mailbox_max_messages = 20.try_into().unwrap();
        c.limits.max_queued_messages = 5.try_into().unwrap();
    })
    .await;
    let mut c = connect_packet(Protocol::V5, Some("bob"), "bob-slow");
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(3600);
    c.properties.receive_maximum = Some(1);
    let (mut bob, _) = Raw::connect(b.addr, c.clone()).await;
    assert_eq!(bob.subscribe("inbox/bob/#", QoS::AtLeastOnce).await, 1);
    let mut alice = Raw::login(b.addr, Protocol::V5, "alice", "a").await;
    let send = |i: u16| publish_packet("dm/bob", QoS::AtLeastOnce, i + 1, format!("m{i}"));
    // bob never acknowledges: one in flight, five queued, then he is disconnected.
    for i in 0..10u16 {
        alice.send(&send(i)).await;
        assert!(matches!(alice.recv().await, Some(Packet::PubAck(a)) if a.reason == 0));
    }
    let _ = bob.until_closed().await;
    b.wait_offline("bob").await;
    // 30 more: retention (20) drops the oldest from his mailbox, those his session
    // still holds among them.
    for i in 10..40u16 {
        alice.send(&send(i)).await;
        assert!(matches!(alice.recv().await, Some(Packet::PubAck(a)) if a.reason == 0));
    }
    b.wait_until("retention ran", || {
        b.store().mailbox_head("bob").is_ok_and(|(_, dropped)| dropped > 0)
    })
    .await;
    let (mut bob, ack) = Raw::connect(b.addr, c).await;
    assert!(ack.session_present);
    let mut gap = None;
    let mut got = Vec::new();
    while let Ok(Some(p)) = bob.recv_within(Duration::from_millis(500)).await {
        let Packet::Publish(p) = p else { continue };
        if p.topic.ends_with("/event/gap") {
            let g: serde_json::Value = serde_json::from_slice(&p.payload).expect("gap json");
            gap = Some((g["from"].as_u64().expect("from"), g["to"].as_u64().expect("to")));
        } else {
            let id: u64 = p
                .properties
                .user_properties
                .iter()
                .find(|(k, _)| k == "id")
                .and_then(|(_, v)| v.parse().ok())
                .expect("id");
            got.push((String::from_utf8_lossy(&p.payload).into_owned(), id));
        }
        if p.qos != QoS::AtMostOnce {
            bob.send(&Packet::PubAck(natter_shared::codec::Ack::new(p.pkid))).await;
        }
    }
    let (from, to) = gap.expect("a gap event: retention dropped what bob never got");
    for (text, id) in &got {
        assert!(
            !(from..=to).contains(id),
            "{text} (id {id}) arrived, yet the gap {from}..={to} names it"
        );
    }
    assert!(
        got.iter().any(|(t, _)| t == "m0"),
        "what his session held arrives: {got:?}"
    );
    assert!(got.iter().any(|(t, _)| t == "m39"), "and the newest: {got:?}");
    b.stop().await;
}

/// After a restart everyone is offline, and a user seen before it keeps the last-seen
/// time of then.
#[tokio::test]
async fn last_seen_outlives_a_restart() {
    let b = TestBroker::start_default(|_| {}).await;
    let mut alice = ImClient::connect(b.addr, "alice", "a").await;
    let mut bob = ImClient::connect(b.addr, "bob", "b").await;
    befriend(&mut alice, &mut bob).await;
    drop(alice);
    b.wait_offline("alice").await;
    let before = bob.ok("presence.get", json!({ "user": "alice" })).await;
    let seen = before["last_seen"].as_u64().expect("last seen before the restart");
    drop(bob);
    let b = b.restart().await;
    let mut bob = ImClient::connect(b.addr, "bob", "b").await;
    let after = bob.ok("presence.get", json!({ "user": "alice" })).await;
    assert_eq!(after["status"], "offline");
    assert_eq!(after["last_seen"].as_u64(), Some(seen), "{after}");
    b.stop().await;
}
