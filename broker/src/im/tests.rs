//! The IM plugin's answers to the hook layer: which publishes it takes, stores or
//! refuses, which subscriptions it allows, and what it does on connect, subscribe,
//! acknowledgement and disconnect. End to end, the same rules are seen by MQTT
//! clients in `tests/e2e/`.

use bytes::Bytes;
use natter_shared::api::{command as cmd, Status};
use natter_shared::codec::QoS;
use natter_shared::im;

use super::testing::{client, harness, Harness};
use super::{dm_conversation, group_conversation};
use crate::config::{DmPolicy, PresenceVisibility};
use crate::hooks::{Access, Hook, PublishDecision, SessionView};
use crate::model::Restriction;
use crate::model::{ClientInfo, Message};
use crate::store::{Contact, GroupRecord, Role};

fn publish(topic: &str, text: &str) -> Message {
    Message::broker(topic, Bytes::copy_from_slice(text.as_bytes()), QoS::AtLeastOnce, false)
}

impl Harness {
    fn befriend(&self, a: &str, b: &str) {
        let s = &self.state().store;
        s.set_contact(a, b, Some(Contact::Friend)).unwrap();
        s.set_contact(b, a, Some(Contact::Friend)).unwrap();
    }

    fn group(&self, g: &str, members: &[&str]) {
        let s = &self.state().store;
        let rec = GroupRecord {
            owner: members[0].into(),
            open: false,
            created_at: 0,
        };
        s.create_group(g, &rec).unwrap();
        for m in &members[1..] {
            s.set_member(g, m, Some(Role::Member)).unwrap();
        }
    }

    fn decide(&self, who: &ClientInfo, topic: &str, text: &str) -> PublishDecision {
        self.plugin.on_publish(who, &publish(topic, text))
    }

    /// Publishes and waits until the message is stored.
    async fn stored(&self, who: &str, topic: &str, text: &str) {
        match self.decide(&client(Some(who)), topic, text) {
            PublishDecision::TakenOver(receipt) => {
                assert_eq!(receipt.await.unwrap(), Ok(()), "{who} -> {topic} stored")
            }
            other => panic!("{who} -> {topic}: {other:?}"),
        }
    }

    fn refused(&self, who: &ClientInfo, topic: &str) -> bool {
        matches!(self.decide(who, topic, "x"), PublishDecision::Refuse(_))
    }

    fn texts(&self, conversation: &str) -> Vec<(String, String)> {
        let s = &self.state().store;
        s.history(conversation, None, None, 100)
            .unwrap()
            .into_iter()
            .map(|(_, m)| (m.from, String::from_utf8_lossy(&m.payload).into_owned()))
            .collect()
    }

    fn may_subscribe(&self, who: &ClientInfo, filter: &str) -> bool {
        match self.plugin.authorize_subscribe(who, filter) {
            Access::Allow => true,
            Access::Deny => false,
            other => panic!("the IM plugin answers every subscription, not {other:?}"),
        }
    }
}

fn pair(a: &str, b: &str) -> (String, String) {
    (a.to_owned(), b.to_owned())
}

#[tokio::test]
async fn a_dm_is_stored_with_the_login_as_sender() {
    let h = harness(|_| ());
    h.stored("alice", "dm/bob", "hi bob").await;
    h.stored("bob", "dm/alice", "hi alice").await;
    assert_eq!(
        h.texts(&dm_conversation("alice", "bob")),
        [pair("alice", "hi bob"), pair("bob", "hi alice")]
    );
    // A note to oneself is a conversation too.
    h.stored("carol", "dm/carol", "note").await;
    assert_eq!(h.texts(&dm_conversation("carol", "carol")), [pair("carol", "note")]);
}

#[tokio::test]
async fn dms_to_nobody_from_nobody_or_to_someone_who_blocked_you_are_refused() {
    let h = harness(|_| ());
    let alice = client(Some("alice"));
    assert!(h.refused(&alice, "dm/nobody"));
    assert!(h.refused(&client(None), "dm/bob"), "anonymous");
    h.state().store.set_blocked("bob", "alice", true).unwrap();
    assert!(h.refused(&alice, "dm/bob"));
    // Blocking is one way: bob may still write to alice.
    h.stored("bob", "dm/alice", "still here").await;
    assert!(h.texts(&dm_conversation("alice", "bob")).len() == 1);
}

#[tokio::test]
async fn the_friends_dm_policy_needs_a_friendship_but_not_for_notes_to_self() {
    let h = harness(|c| c.im.dm_policy = DmPolicy::Friends);
    let alice = client(Some("alice"));
    assert!(h.refused(&alice, "dm/bob"));
    h.state()
        .store
        .set_contact("alice", "bob", Some(Contact::RequestSent))
        .unwrap();
    assert!(h.refused(&alice, "dm/bob"), "a request is not a friendship");
    h.stored("alice", "dm/alice", "note").await;
    h.befriend("alice", "bob");
    h.stored("alice", "dm/bob", "friends now").await;
}

#[tokio::test]
async fn group_messages_are_for_members() {
    let h = harness(|_| ());
    h.group("g1", &["alice", "bob"]);
    h.stored("bob", "group/g1", "hello").await;
    assert!(h.refused(&client(Some("carol")), "group/g1"));
    assert!(h.refused(&client(Some("carol")), "group/nope"));
    assert!(h.refused(&client(None), "group/g1"));
    h.state().store.set_member("g1", "bob", None).unwrap();
    assert!(h.refused(&client(Some("bob")), "group/g1"), "checked on every message");
    assert_eq!(h.texts(&group_conversation("g1")), [pair("bob", "hello")]);
}

#[tokio::test]
async fn api_requests_are_taken_and_im_namespaces_are_closed() {
    let h = harness(|_| ());
    let alice = client(Some("alice"));
    assert!(matches!(
        h.decide(&alice, &im::api(cmd::ACCOUNT_WHOAMI), "{}"),
        PublishDecision::TakenOver(_)
    ));
    for topic in [
        "inbox/alice/x",
        "presence/alice",
        "register/r1",
        "dm/a/b",
        "group",
        "api",
        "$SYS/x",
    ] {
        assert!(h.refused(&alice, topic), "{topic}");
    }
    // Outside the IM namespaces the operator's rules decide; there are none: deny.
    assert!(h.refused(&alice, "sensors/alice/t"));
}

#[tokio::test]
async fn an_api_request_is_answered_in_the_callers_mailbox() {
    let h = harness(|_| ());
    let alice = client(Some("alice"));
    let session = h.session("alice", "alice-dev", Some(&im::inbox_all("alice")), QoS::AtLeastOnce);
    let PublishDecision::TakenOver(answered) = h.decide(&alice, &im::api(cmd::ACCOUNT_WHOAMI), r#"{"id":3}"#) else {
        panic!("an API request is taken over, acknowledged once answered");
    };
    assert_eq!(answered.await.unwrap(), Ok(()));
    let answer = session
        .lock()
        .queue
        .pop_front()
        .expect("answered before the receipt resolves");
    assert_eq!(&*answer.msg.topic, "inbox/alice/api/account.whoami");
    let body: serde_json::Value = serde_json::from_slice(&answer.msg.payload).unwrap();
    assert_eq!((body["id"].as_u64(), body["ok"].as_bool()), (Some(3), Some(true)));
    assert_eq!(body["result"]["user"], "alice");
}

/// At most `api_workers` requests run at once, and a password change also waits for
/// one of the argon2 workers CONNECT uses: a flood of requests waits its turn (and,
/// acknowledged only once answered, stops its client from being read) instead of
/// taking every thread.
#[tokio::test]
async fn api_requests_wait_for_a_free_worker_and_password_checks_for_the_login_pool() {
    let h = harness(|c| {
        c.im.api_workers = 1.try_into().unwrap();
        c.auth.verify_workers = 1.try_into().unwrap();
    });
    let alice = client(Some("alice"));
    let session = h.session("alice", "alice-dev", Some(&im::inbox_all("alice")), QoS::AtLeastOnce);
    let pending = |topic: &str, body: &str| match h.decide(&alice, topic, body) {
        PublishDecision::TakenOver(r) => r,
        other => panic!("{topic}: {other:?}"),
    };
    let settle = || async {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };

    let busy = h.state().api_slots.clone().acquire_owned().await.unwrap();
    let mut whoami = pending(&im::api(cmd::ACCOUNT_WHOAMI), "{}");
    settle().await;
    assert!(
        whoami.try_recv().is_err(),
        "not answered while every API worker is busy"
    );
    assert!(session.lock().queue.is_empty());
    drop(busy);
    assert_eq!(whoami.await.unwrap(), Ok(()));
    assert_eq!(session.lock().queue.len(), 1);

    let hashing = h.state().guard.worker().await.unwrap();
    let body = r#"{"password":"pw-alice","new_password":"another one"}"#;
    let mut passwd = pending(&im::api(cmd::ACCOUNT_PASSWD), body);
    settle().await;
    assert!(passwd.try_recv().is_err(), "waits for an argon2 worker");
    drop(hashing);
    assert_eq!(passwd.await.unwrap(), Ok(()));
    let answer = session.lock().queue.pop_back().unwrap();
    let body: serde_json::Value = serde_json::from_slice(&answer.msg.payload).unwrap();
    assert_eq!(body["result"]["changed"], true, "{body}");
}

#[tokio::test]
async fn operator_rules_open_other_topics() {
    let h = harness(|c| {
        c.acl.rules = vec![toml::from_str(r#"filter = "sensors/%u/#""#).unwrap()];
    });
    let alice = client(Some("alice"));
    assert!(matches!(
        h.decide(&alice, "sensors/alice/t", "21.5"),
        PublishDecision::Route
    ));
    assert!(h.refused(&alice, "sensors/bob/t"));
    assert!(h.may_subscribe(&alice, "sensors/alice/#"));
    assert!(!h.may_subscribe(&alice, "sensors/#"), "wider than the rule");
    assert!(!h.may_subscribe(&alice, "other/#"));
}

#[tokio::test]
async fn subscriptions_reach_only_your_mailbox_and_the_presence_you_may_see() {
    let h = harness(|c| c.im.presence_visibility = PresenceVisibility::Friends);
    let alice = client(Some("alice"));
    assert!(h.may_subscribe(&alice, "inbox/alice/#"));
    assert!(h.may_subscribe(&alice, "$share/g/inbox/alice/#"));
    assert!(!h.may_subscribe(&alice, "inbox/bob/#"));
    assert!(!h.may_subscribe(&alice, "$share/g/inbox/bob/#"));
    assert!(!h.may_subscribe(&alice, "inbox/+/#"));
    assert!(h.may_subscribe(&alice, "presence/alice"));
    assert!(!h.may_subscribe(&alice, "presence/bob"));
    h.befriend("alice", "bob");
    assert!(h.may_subscribe(&alice, "presence/bob"));
    assert!(
        !h.may_subscribe(&alice, "presence/+"),
        "a wildcard would show strangers"
    );

    let all = harness(|c| c.im.presence_visibility = PresenceVisibility::All);
    assert!(all.may_subscribe(&alice, "presence/carol"));
    assert!(all.may_subscribe(&alice, "presence/+"));
}

#[tokio::test]
async fn presence_follows_unrestricted_logins() {
    let h = harness(|_| ());
    let presence = |u: &str| h.state().presence.get(u).status;
    let mut alice = client(Some("alice"));
    let session = h.session("alice", "alice-dev", None, QoS::AtMostOnce);
    h.plugin.on_connected(&alice, &SessionView::new(session.clone()), false);
    assert_eq!(presence("alice"), Status::Online);
    h.plugin.on_disconnected(&alice);
    assert_eq!(presence("alice"), Status::Offline);

    alice.restriction = Some(Restriction::Reset);
    h.plugin.on_connected(&alice, &SessionView::new(session.clone()), false);
    assert_eq!(
        presence("alice"),
        Status::Offline,
        "a reset login is not someone online"
    );
    h.plugin
        .on_connected(&client(Some("bob")), &SessionView::new(session.clone()), false);
    assert_eq!(presence("bob"), Status::Online);
    let mut bob_reset = client(Some("bob"));
    bob_reset.restriction = Some(Restriction::Reset);
    h.plugin.on_disconnected(&bob_reset);
    assert_eq!(presence("bob"), Status::Online, "nor does its end take bob offline");
}

#[tokio::test]
async fn acknowledgements_move_a_persistent_devices_cursor_in_its_own_mailbox() {
    let h = harness(|_| ());
    let mut bob = client(Some("bob"));
    let acked = |who: &ClientInfo, topic: &str, id: u64| {
        let mut m = publish(topic, "x");
        m.tag = Some(id);
        h.plugin.on_acked(who, &m);
    };
    let cursor = || h.state().mailboxes.cursor("bob", "bob-dev").unwrap();
    let before = cursor();
    acked(&bob, "inbox/bob/dm/alice", 5);
    assert_eq!(cursor(), before, "a clean session keeps no cursor");
    bob.persistent = true;
    acked(&bob, "inbox/alice/dm/bob", 5);
    assert_eq!(cursor(), before, "not bob's mailbox");
    acked(&bob, "inbox/bob/dm/alice", 5);
    assert_eq!(cursor(), Some(5));
}

/// A device coming back to more than its queue holds is replayed in pages within
/// `max_queued_messages`, oldest first, nothing skipped; a message arriving during the
/// replay waits for it and comes last, so no acknowledgement moves the cursor past an
/// entry still to be replayed.
#[tokio::test]
async fn a_replay_pages_within_the_queue_bound_in_order_and_live_messages_wait_for_it() {
    let h = harness(|c| c.limits.max_queued_messages = 10.try_into().unwrap());
    let mut bob = client(Some("bob"));
    bob.persistent = true;
    h.state().mailboxes.acked("bob", "bob-dev", 0);
    for n in 0..45 {
        h.stored("alice", "dm/bob", &format!("m{n}")).await;
    }
    let session = h.session("bob", "bob-dev", Some("inbox/bob/#"), QoS::AtLeastOnce);
    session.set_online(true);
    h.plugin.on_connected(&bob, &SessionView::new(session.clone()), true);

    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let (mut got, mut most, mut live_sent) = (Vec::new(), 0, false);
    while got.len() < 46 {
        assert!(tokio::time::Instant::now() < deadline, "replayed {} of 46", got.len());
        {
            let mut st = session.lock();
            most = most.max(st.queue.len());
            got.extend(st.queue.drain(..).map(|d| d.msg));
            session.drained(&st);
        }
        if !live_sent && !got.is_empty() {
            // Mid-replay: stored and routed while older entries are still to come.
            h.stored("alice", "dm/bob", "live").await;
            live_sent = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    assert!(most <= 10, "at most the queue bound at once, saw {most}");
    let texts: Vec<_> = got
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    let mut expected: Vec<_> = (0..45).map(|n| format!("m{n}")).collect();
    expected.push("live".into());
    assert_eq!(texts, expected);
    let tags: Vec<u64> = got.iter().map(|m| m.tag.unwrap()).collect();
    assert!(tags.windows(2).all(|w| w[0] < w[1]), "mailbox order: {tags:?}");
    // Caught up: live delivery queues again.
    h.stored("alice", "dm/bob", "after").await;
    assert_eq!(session.lock().queue.len(), 1);
}

/// A device seen for the first time starts at the present, and what is routed to it
/// while its (empty) replay is being set up is delivered, not lost to the replay.
#[tokio::test]
async fn a_new_device_gets_what_arrives_while_its_replay_starts() {
    let h = harness(|_| ());
    let mut bob = client(Some("bob"));
    bob.persistent = true;
    h.stored("alice", "dm/bob", "before").await;
    let session = h.session("bob", "bob-dev", Some("inbox/bob/#"), QoS::AtLeastOnce);
    session.set_online(true);
    let view = SessionView::new(session.clone());
    let sub = session.lock().subscriptions.get("inbox/bob/#").unwrap();
    // The replay task is spawned here and runs only once this test awaits.
    h.plugin.on_subscribed(&bob, &view, "inbox/bob/#", sub, true);
    h.stored("alice", "dm/bob", "after").await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let texts = loop {
        let texts: Vec<String> = session
            .lock()
            .queue
            .iter()
            .map(|d| String::from_utf8_lossy(&d.msg.payload).into_owned())
            .collect();
        if !texts.is_empty() || tokio::time::Instant::now() > deadline {
            break texts;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    assert_eq!(texts, ["after"], "the present, not the past, and nothing lost");
}
