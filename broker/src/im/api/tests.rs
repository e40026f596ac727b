//! The API's policy, command by command, against a real store and router: who may do
//! what, and which error code each refusal carries. The end-to-end suite shows the
//! same answers reaching an MQTT client; these tests pin every branch cheaply.

use std::sync::Arc;

use bytes::Bytes;
use natter_shared::api::{command as cmd, ErrorCode, Response};
use natter_shared::codec::QoS;
use serde_json::{json, Value};

use super::handle_request;
use crate::accounts::password;
use crate::config::{PresenceVisibility, Registration};
use crate::im::testing::{client, harness, Harness};
use crate::model::Restriction;
use crate::model::{ClientInfo, Message};
use crate::store::{NewMessage, StoredMessage};

fn request(command: &str, body: &Value) -> Message {
    Message::broker(
        format!("api/{command}"),
        Bytes::from(serde_json::to_vec(body).unwrap()),
        QoS::AtLeastOnce,
        false,
    )
}

impl Harness {
    fn answer(&self, who: &ClientInfo, command: &str, body: Value) -> Response {
        handle_request(self.state(), who, command, &request(command, &body)).1
    }

    /// The result of a call that must succeed.
    fn ok(&self, who: &str, command: &str, body: Value) -> Value {
        let r = self.answer(&client(Some(who)), command, body.clone());
        assert!(r.ok, "{who} {command} {body}: {:?}", r.error);
        r.result.unwrap_or(Value::Null)
    }

    /// The error code of a call that must fail.
    fn err_as(&self, who: &ClientInfo, command: &str, body: Value) -> ErrorCode {
        let r = self.answer(who, command, body.clone());
        assert!(!r.ok, "{:?} {command} {body} succeeded: {:?}", who.username, r.result);
        r.error.unwrap().code
    }

    fn err(&self, who: &str, command: &str, body: Value) -> ErrorCode {
        self.err_as(&client(Some(who)), command, body)
    }

    fn friends(&self, who: &str) -> Value {
        self.ok(who, cmd::FRIENDS_LIST, json!({}))
    }

    fn members(&self, who: &str, g: &str) -> Value {
        self.ok(who, cmd::GROUPS_MEMBERS, json!({ "group": g }))["members"].clone()
    }
}

fn names(v: &Value) -> Vec<&str> {
    v.as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect()
}

// ---- envelope: routing of answers, malformed requests, dispatch ----

#[tokio::test]
async fn answers_go_to_the_callers_mailbox_or_a_response_topic_inside_it() {
    let h = harness(|_| ());
    let alice = client(Some("alice"));
    let mut msg = request(cmd::ACCOUNT_WHOAMI, &json!({ "id": 1 }));
    msg.properties_mut().correlation_data = Some(Bytes::from_static(b"c1"));
    let (topic, r, corr) = handle_request(h.state(), &alice, cmd::ACCOUNT_WHOAMI, &msg);
    assert_eq!(topic, "inbox/alice/api/account.whoami");
    assert_eq!(r.id, Some(json!(1)));
    assert_eq!(corr.as_deref(), Some(&b"c1"[..]));

    msg.properties_mut().response_topic = Some("inbox/alice/replies/7".into());
    assert_eq!(
        handle_request(h.state(), &alice, cmd::ACCOUNT_WHOAMI, &msg).0,
        "inbox/alice/replies/7"
    );
    // A response topic anywhere else (another's mailbox, a prefix lookalike) is ignored.
    for elsewhere in ["inbox/bob/replies", "inbox/alicex/r", "chat/x"] {
        msg.properties_mut().response_topic = Some(elsewhere.into());
        let topic = handle_request(h.state(), &alice, cmd::ACCOUNT_WHOAMI, &msg).0;
        assert_eq!(topic, "inbox/alice/api/account.whoami", "{elsewhere}");
    }
}

#[tokio::test]
async fn registrants_are_answered_on_their_reply_name_or_client_id() {
    let h = harness(|c| c.im.registration = Registration::Open);
    let anon = client(None);
    let topic = |body: Value| {
        handle_request(
            h.state(),
            &anon,
            cmd::ACCOUNT_REGISTER,
            &request(cmd::ACCOUNT_REGISTER, &body),
        )
        .0
    };
    assert_eq!(topic(json!({ "reply": "r1", "user": "x" })), "register/r1");
    for unsafe_reply in ["", "a/b", "+", "#"] {
        assert_eq!(
            topic(json!({ "reply": unsafe_reply })),
            "register/anon-dev",
            "{unsafe_reply:?}"
        );
    }
    assert_eq!(topic(json!({})), "register/anon-dev");
}

#[tokio::test]
async fn malformed_requests_are_refused_with_their_id() {
    let h = harness(|_| ());
    let alice = client(Some("alice"));
    let r = h.answer(&alice, cmd::ACCOUNT_WHOAMI, json!({ "id": "x7", "bogus": 1 }));
    assert!(!r.ok);
    assert_eq!(r.id, Some(json!("x7")));
    assert_eq!(r.error.unwrap().code, ErrorCode::BadRequest);
    let garbage = Message::broker("api/x", Bytes::from_static(b"{not json"), QoS::AtMostOnce, false);
    let r = handle_request(h.state(), &alice, cmd::ACCOUNT_WHOAMI, &garbage).1;
    assert_eq!((r.id, r.error.unwrap().code), (None, ErrorCode::BadRequest));
    assert_eq!(h.err("alice", "no.such.command", json!({})), ErrorCode::UnknownCommand);
    assert_eq!(h.err("root", "admin.nothing", json!({})), ErrorCode::UnknownCommand);
}

#[tokio::test]
async fn clients_without_an_account_may_only_register() {
    let h = harness(|c| c.im.registration = Registration::Open);
    let anon = client(None);
    for command in [
        cmd::ACCOUNT_WHOAMI,
        cmd::FRIENDS_LIST,
        cmd::GROUPS_LIST,
        "no.such.command",
    ] {
        assert_eq!(h.err_as(&anon, command, json!({})), ErrorCode::Forbidden, "{command}");
    }
    let r = h.answer(
        &anon,
        cmd::ACCOUNT_REGISTER,
        json!({ "user": "erin", "password": "long enough pw" }),
    );
    assert!(r.ok, "{:?}", r.error);
}

// ---- account ----

#[tokio::test]
async fn whoami_tells_user_admin_flag_and_client_id() {
    let h = harness(|_| ());
    assert_eq!(
        h.ok("alice", cmd::ACCOUNT_WHOAMI, json!({})),
        json!({ "user": "alice", "admin": false, "client_id": "alice-dev" })
    );
    assert_eq!(h.ok("root", cmd::ACCOUNT_WHOAMI, json!({}))["admin"], json!(true));
}

/// account.passwd checks a password: it counts against the same per-user and
/// per-address throttle as CONNECT and answers `rate_limited` once the address is
/// locked, so a device-token holder cannot guess the account password at full speed.
#[tokio::test]
async fn passwd_guesses_are_throttled_like_logins() {
    let h = harness(|c| {
        c.auth.throttle_free_failures = 2;
        c.auth.throttle_base_delay_ms = 60_000;
    });
    let guess = |pw: &str| json!({ "password": pw, "new_password": "a new password" });
    for n in 0..3 {
        assert_eq!(
            h.err("alice", cmd::ACCOUNT_PASSWD, guess(&format!("guess {n}"))),
            ErrorCode::BadCredentials
        );
    }
    let ip = client(Some("alice")).addr.ip();
    assert!(
        matches!(h.state().guard.gate(ip), crate::accounts::guard::Gate::Locked(_)),
        "CONNECT from this address is held back too"
    );
    assert_eq!(
        h.err("alice", cmd::ACCOUNT_PASSWD, guess("pw-alice")),
        ErrorCode::RateLimited,
        "even the right password waits out the lock"
    );
    let hash = h.state().store.user("alice").unwrap().unwrap().password_hash;
    assert!(password::verify(b"pw-alice", &hash), "unchanged");
    // Another address, not itself locked, may still change it.
    let mut elsewhere = client(Some("alice"));
    elsewhere.addr = "10.0.0.2:5000".parse().unwrap();
    let r = h.answer(&elsewhere, cmd::ACCOUNT_PASSWD, guess("pw-alice"));
    assert!(r.ok, "{:?}", r.error);
}

#[tokio::test]
async fn passwd_needs_the_old_password_and_an_unrestricted_login() {
    let h = harness(|_| ());
    let body = |old: &str| json!({ "password": old, "new_password": "a new password" });
    assert_eq!(
        h.err("alice", cmd::ACCOUNT_PASSWD, body("pw-bob")),
        ErrorCode::BadCredentials
    );
    assert_eq!(
        h.err("alice", cmd::ACCOUNT_PASSWD, json!({ "password": "pw-alice" })),
        ErrorCode::BadRequest
    );
    assert_eq!(
        h.err(
            "alice",
            cmd::ACCOUNT_PASSWD,
            json!({ "new_password": "a new password" })
        ),
        ErrorCode::BadRequest
    );
    let mut restricted = client(Some("alice"));
    restricted.restriction = Some(Restriction::Reset);
    assert_eq!(
        h.err_as(&restricted, cmd::ACCOUNT_PASSWD, body("pw-alice")),
        ErrorCode::Forbidden
    );
    assert_eq!(
        h.err(
            "alice",
            cmd::ACCOUNT_PASSWD,
            json!({ "password": "pw-alice", "new_password": "" })
        ),
        ErrorCode::BadRequest,
        "the new password is checked"
    );

    assert_eq!(
        h.ok("alice", cmd::ACCOUNT_PASSWD, body("pw-alice")),
        json!({ "user": "alice", "changed": true })
    );
    let hash = h.state().store.user("alice").unwrap().unwrap().password_hash;
    assert!(password::verify(b"a new password", &hash));
    assert!(!password::verify(b"pw-alice", &hash));
}

#[tokio::test]
async fn registration_is_refused_when_closed_when_logged_in_and_over_the_hourly_quota() {
    let closed = harness(|c| c.im.registration = Registration::Closed);
    let anon = client(None);
    let erin = json!({ "user": "erin", "password": "long enough pw" });
    assert_eq!(
        closed.err_as(&anon, cmd::ACCOUNT_REGISTER, erin.clone()),
        ErrorCode::RegistrationClosed
    );

    let h = harness(|c| {
        c.im.registration = Registration::Open;
        c.im.registrations_per_hour = 2.try_into().unwrap();
    });
    assert_eq!(
        h.err("alice", cmd::ACCOUNT_REGISTER, erin.clone()),
        ErrorCode::Forbidden
    );
    assert_eq!(
        h.err_as(&anon, cmd::ACCOUNT_REGISTER, json!({ "password": "long enough pw" })),
        ErrorCode::BadRequest
    );
    assert_eq!(
        h.err_as(&anon, cmd::ACCOUNT_REGISTER, json!({ "user": "erin" })),
        ErrorCode::BadRequest
    );
    let r = h.answer(&anon, cmd::ACCOUNT_REGISTER, erin.clone());
    assert_eq!(r.result, Some(json!({ "user": "erin", "registered": true })));
    assert!(!h.state().store.user("erin").unwrap().unwrap().admin);
    assert_eq!(h.err_as(&anon, cmd::ACCOUNT_REGISTER, erin), ErrorCode::AlreadyExists);
    // Two attempts used the quota (a taken name counts too).
    let frank = json!({ "user": "frank", "password": "long enough pw" });
    assert_eq!(
        h.err_as(&anon, cmd::ACCOUNT_REGISTER, frank.clone()),
        ErrorCode::RateLimited
    );
    let mut elsewhere = client(None);
    elsewhere.addr = "10.0.0.2:5000".parse().unwrap();
    assert!(h.answer(&elsewhere, cmd::ACCOUNT_REGISTER, frank).ok);
    assert_eq!(
        h.err_as(
            &elsewhere,
            cmd::ACCOUNT_REGISTER,
            json!({ "user": "no/slash", "password": "long enough pw" })
        ),
        ErrorCode::BadRequest
    );
}

#[tokio::test]
async fn a_reset_token_sets_a_new_password_once() {
    let h = harness(|_| ());
    let (token, _) = crate::accounts::reset::issue(&h.state().store, "alice", 60).unwrap();
    let body = json!({ "token": token, "new_password": "reset password" });
    assert_eq!(
        h.err("bob", cmd::ACCOUNT_RESET, body.clone()),
        ErrorCode::BadCredentials
    );
    assert_eq!(
        h.err("alice", cmd::ACCOUNT_RESET, json!({ "token": token })),
        ErrorCode::BadRequest
    );
    assert_eq!(
        h.ok("alice", cmd::ACCOUNT_RESET, body.clone()),
        json!({ "user": "alice", "changed": true })
    );
    let hash = h.state().store.user("alice").unwrap().unwrap().password_hash;
    assert!(password::verify(b"reset password", &hash));
    assert_eq!(
        h.err("alice", cmd::ACCOUNT_RESET, body),
        ErrorCode::BadCredentials,
        "used up"
    );
}

// ---- contacts ----

#[tokio::test]
async fn a_friend_request_is_pending_on_both_sides_until_accepted() {
    let h = harness(|_| ());
    let bob = json!({ "user": "bob" });
    assert_eq!(
        h.ok("alice", cmd::FRIENDS_REQUEST, bob.clone()),
        json!({ "user": "bob", "state": "requested" })
    );
    assert_eq!(
        h.friends("alice"),
        json!({ "friends": [], "incoming": [], "outgoing": ["bob"] })
    );
    assert_eq!(
        h.friends("bob"),
        json!({ "friends": [], "incoming": ["alice"], "outgoing": [] })
    );
    assert_eq!(h.err("alice", cmd::FRIENDS_REQUEST, bob.clone()), ErrorCode::Conflict);
    assert_eq!(
        h.err("alice", cmd::FRIENDS_ACCEPT, bob.clone()),
        ErrorCode::Conflict,
        "only bob can accept"
    );
    assert_eq!(
        h.ok("bob", cmd::FRIENDS_ACCEPT, json!({ "user": "alice" })),
        json!({ "user": "alice", "state": "friends" })
    );
    assert_eq!(names(&h.friends("alice")["friends"]), ["bob"]);
    assert_eq!(names(&h.friends("bob")["friends"]), ["alice"]);
    assert!(h.state().store.are_friends("alice", "bob").unwrap());
    assert_eq!(
        h.err("alice", cmd::FRIENDS_REQUEST, bob),
        ErrorCode::Conflict,
        "already friends"
    );
}

#[tokio::test]
async fn asking_back_is_accepting_and_declining_clears_both_sides() {
    let h = harness(|_| ());
    h.ok("alice", cmd::FRIENDS_REQUEST, json!({ "user": "bob" }));
    assert_eq!(
        h.ok("bob", cmd::FRIENDS_REQUEST, json!({ "user": "alice" })),
        json!({ "user": "alice", "state": "friends" })
    );
    assert!(h.state().store.are_friends("alice", "bob").unwrap());

    h.ok("carol", cmd::FRIENDS_REQUEST, json!({ "user": "dave" }));
    assert_eq!(
        h.err("carol", cmd::FRIENDS_DECLINE, json!({ "user": "dave" })),
        ErrorCode::Conflict
    );
    assert_eq!(
        h.ok("dave", cmd::FRIENDS_DECLINE, json!({ "user": "carol" })),
        json!({ "user": "carol", "state": "declined" })
    );
    let empty = json!({ "friends": [], "incoming": [], "outgoing": [] });
    assert_eq!(h.friends("carol"), empty);
    assert_eq!(h.friends("dave"), empty);
    assert_eq!(
        h.err("dave", cmd::FRIENDS_ACCEPT, json!({ "user": "carol" })),
        ErrorCode::Conflict
    );
}

#[tokio::test]
async fn friend_requests_name_a_real_other_user() {
    let h = harness(|_| ());
    assert_eq!(
        h.err("alice", cmd::FRIENDS_REQUEST, json!({ "user": "alice" })),
        ErrorCode::BadRequest
    );
    assert_eq!(
        h.err("alice", cmd::FRIENDS_REQUEST, json!({ "user": "nobody" })),
        ErrorCode::NotFound
    );
    assert_eq!(
        h.err("alice", cmd::FRIENDS_REQUEST, json!({ "user": "a/b" })),
        ErrorCode::BadRequest
    );
    assert_eq!(h.err("alice", cmd::FRIENDS_REQUEST, json!({})), ErrorCode::BadRequest);
}

#[tokio::test]
async fn removing_ends_a_friendship_or_a_request_on_both_sides() {
    let h = harness(|_| ());
    let empty = json!({ "friends": [], "incoming": [], "outgoing": [] });
    assert_eq!(
        h.err("alice", cmd::FRIENDS_REMOVE, json!({ "user": "bob" })),
        ErrorCode::Conflict
    );
    h.ok("alice", cmd::FRIENDS_REQUEST, json!({ "user": "bob" }));
    h.ok("bob", cmd::FRIENDS_ACCEPT, json!({ "user": "alice" }));
    assert_eq!(
        h.ok("bob", cmd::FRIENDS_REMOVE, json!({ "user": "alice" })),
        json!({ "user": "alice", "state": "removed" })
    );
    assert_eq!(h.friends("alice"), empty);
    assert_eq!(h.friends("bob"), empty);
    h.ok("alice", cmd::FRIENDS_REQUEST, json!({ "user": "carol" }));
    h.ok("alice", cmd::FRIENDS_REMOVE, json!({ "user": "carol" }));
    assert_eq!(h.friends("carol"), empty, "a withdrawn request");
}

#[tokio::test]
async fn blocking_ends_the_friendship_and_refuses_requests_both_ways() {
    let h = harness(|_| ());
    assert_eq!(
        h.err("alice", cmd::BLOCK, json!({ "user": "alice" })),
        ErrorCode::BadRequest
    );
    h.ok("alice", cmd::FRIENDS_REQUEST, json!({ "user": "bob" }));
    h.ok("bob", cmd::FRIENDS_ACCEPT, json!({ "user": "alice" }));
    assert_eq!(
        h.ok("alice", cmd::BLOCK, json!({ "user": "bob" })),
        json!({ "user": "bob", "blocked": true })
    );
    let empty = json!({ "friends": [], "incoming": [], "outgoing": [] });
    assert_eq!(h.friends("alice"), empty);
    assert_eq!(h.friends("bob"), empty);
    assert_eq!(
        h.ok("alice", cmd::BLOCKED_LIST, json!({})),
        json!({ "blocked": ["bob"] })
    );
    assert_eq!(h.ok("bob", cmd::BLOCKED_LIST, json!({})), json!({ "blocked": [] }));
    assert_eq!(
        h.err("bob", cmd::FRIENDS_REQUEST, json!({ "user": "alice" })),
        ErrorCode::Forbidden
    );
    assert_eq!(
        h.err("alice", cmd::FRIENDS_REQUEST, json!({ "user": "bob" })),
        ErrorCode::Forbidden
    );

    assert_eq!(
        h.ok("alice", cmd::UNBLOCK, json!({ "user": "bob" })),
        json!({ "user": "bob", "blocked": false })
    );
    assert_eq!(
        h.err("alice", cmd::UNBLOCK, json!({ "user": "bob" })),
        ErrorCode::Conflict
    );
    assert_eq!(h.ok("alice", cmd::BLOCKED_LIST, json!({})), json!({ "blocked": [] }));
    h.ok("bob", cmd::FRIENDS_REQUEST, json!({ "user": "alice" }));
}

/// alice's session, subscribed to bob's presence.
fn watching_bob(h: &Harness) -> std::sync::Arc<crate::model::Session> {
    h.session(
        "alice",
        "alice-dev",
        Some("presence/bob"),
        natter_shared::codec::QoS::AtMostOnce,
    )
}

fn subscribed(s: &crate::model::Session, filter: &str) -> bool {
    s.lock().subscriptions.contains_key(filter)
}

#[tokio::test]
async fn an_ended_friendship_ends_the_presence_subscriptions_it_allowed() {
    for (end, command) in [("remove", cmd::FRIENDS_REMOVE), ("block", cmd::BLOCK)] {
        let h = harness(|c| c.im.presence_visibility = PresenceVisibility::Friends);
        h.ok("alice", cmd::FRIENDS_REQUEST, json!({ "user": "bob" }));
        h.ok("bob", cmd::FRIENDS_ACCEPT, json!({ "user": "alice" }));
        let session = watching_bob(&h);
        assert!(subscribed(&session, "presence/bob"));
        h.ok("bob", command, json!({ "user": "alice" }));
        assert!(!subscribed(&session, "presence/bob"), "after {end}");
    }
    // With presence visible to all, a friendship is not what allowed it: it stays.
    let h = harness(|c| c.im.presence_visibility = PresenceVisibility::All);
    h.ok("alice", cmd::FRIENDS_REQUEST, json!({ "user": "bob" }));
    h.ok("bob", cmd::FRIENDS_ACCEPT, json!({ "user": "alice" }));
    let session = watching_bob(&h);
    h.ok("bob", cmd::FRIENDS_REMOVE, json!({ "user": "alice" }));
    assert!(subscribed(&session, "presence/bob"));
}

#[tokio::test]
async fn blocking_a_stranger_leaves_other_contacts_alone() {
    let h = harness(|_| ());
    h.ok("alice", cmd::FRIENDS_REQUEST, json!({ "user": "bob" }));
    h.ok("bob", cmd::FRIENDS_ACCEPT, json!({ "user": "alice" }));
    h.ok("alice", cmd::BLOCK, json!({ "user": "carol" }));
    assert_eq!(names(&h.friends("alice")["friends"]), ["bob"]);
}

// ---- groups ----

fn group_of_three(h: &Harness) {
    // g1: alice owner, bob admin, carol member; invitation only.
    assert_eq!(
        h.ok("alice", cmd::GROUPS_CREATE, json!({ "group": "g1" })),
        json!({ "group": "g1", "owner": "alice", "open": false })
    );
    for u in ["bob", "carol"] {
        h.ok("alice", cmd::GROUPS_INVITE, json!({ "group": "g1", "user": u }));
        assert_eq!(
            h.ok(u, cmd::GROUPS_JOIN, json!({ "group": "g1" })),
            json!({ "group": "g1", "role": "member" })
        );
    }
    h.ok("alice", cmd::GROUPS_PROMOTE, json!({ "group": "g1", "user": "bob" }));
}

/// `user`'s session, subscribed to their mailbox's events.
fn events_of(h: &Harness, user: &str) -> std::sync::Arc<crate::model::Session> {
    let filter = format!("inbox/{user}/event/#");
    h.session(
        user,
        &format!("{user}-events"),
        Some(&filter),
        natter_shared::codec::QoS::AtMostOnce,
    )
}

/// The kinds of event `user` received, up to a marker sent now: the writer keeps
/// order, so everything posted before the marker is in.
async fn received(h: &Harness, user: &str, session: &crate::model::Session) -> Vec<String> {
    h.state().mailboxes.event(user, "marker", json!({}));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut kinds = Vec::new();
    loop {
        let next = session.lock().queue.pop_front();
        match next {
            Some(d) => {
                let kind = d.msg.topic.rsplit('/').next().unwrap_or_default().to_owned();
                if kind == "marker" {
                    return kinds;
                }
                kinds.push(kind);
            }
            None => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{user}: no marker; got {kinds:?}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    }
}

#[tokio::test]
async fn group_changes_are_told_to_the_members_and_to_whoever_leaves() {
    use natter_shared::api::event;
    let h = harness(|_| ());
    let users = ["alice", "bob", "carol", "dave"];
    let sessions: Vec<_> = users.iter().map(|u| events_of(&h, u)).collect();
    group_of_three(&h);
    h.ok("alice", cmd::GROUPS_INVITE, json!({ "group": "g1", "user": "dave" }));
    h.ok("dave", cmd::GROUPS_JOIN, json!({ "group": "g1" }));
    h.ok("carol", cmd::GROUPS_LEAVE, json!({ "group": "g1" }));
    h.ok("bob", cmd::GROUPS_KICK, json!({ "group": "g1", "user": "dave" }));
    h.ok("alice", cmd::GROUPS_DELETE, json!({ "group": "g1" }));
    let (inv, joined, left, kicked, promoted, deleted) = (
        event::GROUP_INVITE,
        event::GROUP_JOINED,
        event::GROUP_LEFT,
        event::GROUP_KICKED,
        event::GROUP_PROMOTED,
        event::GROUP_DELETED,
    );
    let expected: [Vec<&str>; 4] = [
        // alice: every change while she owns it, then the deletion.
        vec![joined, joined, promoted, joined, left, kicked, deleted],
        vec![inv, joined, joined, promoted, joined, left, kicked, deleted],
        // carol: from her invitation until she left (she hears her own leaving).
        vec![inv, joined, promoted, joined, left],
        // dave: invited, joined, then his own kick; nothing of the deletion.
        vec![inv, joined, left, kicked],
    ];
    for ((u, session), want) in users.iter().zip(&sessions).zip(expected) {
        assert_eq!(received(&h, u, session).await, want, "{u}");
    }
}

#[tokio::test]
async fn groups_are_created_once_with_valid_names() {
    let h = harness(|_| ());
    assert_eq!(
        h.ok("alice", cmd::GROUPS_CREATE, json!({ "group": "open1", "open": true })),
        json!({ "group": "open1", "owner": "alice", "open": true })
    );
    let created = h.state().store.group("open1").unwrap().unwrap().created_at;
    let now = crate::clock::unix_secs();
    assert!((now - 5..=now).contains(&created), "seconds since the epoch: {created}");
    assert_eq!(
        h.err("bob", cmd::GROUPS_CREATE, json!({ "group": "open1" })),
        ErrorCode::AlreadyExists
    );
    assert_eq!(
        h.err("bob", cmd::GROUPS_CREATE, json!({ "group": "a+b" })),
        ErrorCode::BadRequest
    );
    assert_eq!(h.err("bob", cmd::GROUPS_CREATE, json!({})), ErrorCode::BadRequest);
    assert_eq!(
        h.members("alice", "open1"),
        json!([{ "user": "alice", "role": "owner" }])
    );
}

#[tokio::test]
async fn joining_needs_an_invitation_unless_the_group_is_open() {
    let h = harness(|_| ());
    h.ok("alice", cmd::GROUPS_CREATE, json!({ "group": "g1" }));
    h.ok("alice", cmd::GROUPS_CREATE, json!({ "group": "pub", "open": true }));
    assert_eq!(
        h.err("bob", cmd::GROUPS_JOIN, json!({ "group": "g1" })),
        ErrorCode::Forbidden
    );
    assert_eq!(
        h.err("bob", cmd::GROUPS_JOIN, json!({ "group": "nope" })),
        ErrorCode::NotFound
    );
    h.ok("bob", cmd::GROUPS_JOIN, json!({ "group": "pub" }));
    assert_eq!(
        h.err("bob", cmd::GROUPS_JOIN, json!({ "group": "pub" })),
        ErrorCode::Conflict
    );
    assert_eq!(
        h.err("alice", cmd::GROUPS_JOIN, json!({ "group": "g1" })),
        ErrorCode::Conflict,
        "the owner is a member"
    );
    assert_eq!(
        h.ok("alice", cmd::GROUPS_INVITE, json!({ "group": "g1", "user": "bob" })),
        json!({ "group": "g1", "user": "bob", "invited": true })
    );
    h.ok("bob", cmd::GROUPS_JOIN, json!({ "group": "g1" }));
    assert_eq!(
        h.ok("bob", cmd::GROUPS_LIST, json!({})),
        json!({ "groups": [{ "group": "g1", "role": "member" }, { "group": "pub", "role": "member" }] })
    );
}

#[tokio::test]
async fn only_admins_invite_and_never_a_member_or_someone_who_blocked_them() {
    let h = harness(|_| ());
    group_of_three(&h);
    let dave = json!({ "group": "g1", "user": "dave" });
    assert_eq!(h.err("carol", cmd::GROUPS_INVITE, dave.clone()), ErrorCode::Forbidden);
    assert_eq!(h.err("dave", cmd::GROUPS_INVITE, dave.clone()), ErrorCode::NotMember);
    assert_eq!(
        h.err("bob", cmd::GROUPS_INVITE, json!({ "group": "g1", "user": "carol" })),
        ErrorCode::Conflict
    );
    assert_eq!(
        h.err("bob", cmd::GROUPS_INVITE, json!({ "group": "g1", "user": "nobody" })),
        ErrorCode::NotFound
    );
    assert_eq!(
        h.err("bob", cmd::GROUPS_INVITE, json!({ "group": "nope", "user": "dave" })),
        ErrorCode::NotFound
    );
    h.ok("dave", cmd::BLOCK, json!({ "user": "bob" }));
    assert_eq!(h.err("bob", cmd::GROUPS_INVITE, dave.clone()), ErrorCode::Forbidden);
    h.ok("alice", cmd::GROUPS_INVITE, dave);
}

#[tokio::test]
async fn a_full_group_takes_nobody_more() {
    let h = harness(|c| c.im.max_group_members = 3.try_into().unwrap());
    h.ok("alice", cmd::GROUPS_CREATE, json!({ "group": "pub", "open": true }));
    h.ok("bob", cmd::GROUPS_JOIN, json!({ "group": "pub" }));
    h.ok("carol", cmd::GROUPS_JOIN, json!({ "group": "pub" }));
    assert_eq!(
        h.err("dave", cmd::GROUPS_JOIN, json!({ "group": "pub" })),
        ErrorCode::Forbidden
    );
    h.ok("carol", cmd::GROUPS_LEAVE, json!({ "group": "pub" }));
    h.ok("dave", cmd::GROUPS_JOIN, json!({ "group": "pub" }));
}

#[tokio::test]
async fn members_leave_but_the_owner_deletes() {
    let h = harness(|_| ());
    group_of_three(&h);
    assert_eq!(
        h.err("alice", cmd::GROUPS_LEAVE, json!({ "group": "g1" })),
        ErrorCode::Forbidden
    );
    assert_eq!(
        h.err("dave", cmd::GROUPS_LEAVE, json!({ "group": "g1" })),
        ErrorCode::NotMember
    );
    assert_eq!(
        h.err("dave", cmd::GROUPS_LEAVE, json!({ "group": "nope" })),
        ErrorCode::NotFound
    );
    assert_eq!(
        h.ok("carol", cmd::GROUPS_LEAVE, json!({ "group": "g1" })),
        json!({ "group": "g1", "left": true })
    );
    assert_eq!(h.ok("carol", cmd::GROUPS_LIST, json!({})), json!({ "groups": [] }));
    assert_eq!(
        h.err("carol", cmd::GROUPS_MEMBERS, json!({ "group": "g1" })),
        ErrorCode::NotMember
    );
    assert_eq!(
        h.members("bob", "g1"),
        json!([{ "user": "alice", "role": "owner" }, { "user": "bob", "role": "admin" }])
    );

    assert_eq!(
        h.err("bob", cmd::GROUPS_DELETE, json!({ "group": "g1" })),
        ErrorCode::Forbidden
    );
    assert_eq!(
        h.ok("alice", cmd::GROUPS_DELETE, json!({ "group": "g1" })),
        json!({ "group": "g1", "deleted": true })
    );
    assert_eq!(
        h.err("alice", cmd::GROUPS_MEMBERS, json!({ "group": "g1" })),
        ErrorCode::NotFound
    );
    assert_eq!(h.ok("bob", cmd::GROUPS_LIST, json!({})), json!({ "groups": [] }));
}

#[tokio::test]
async fn admins_kick_members_but_not_their_equals_or_betters() {
    let h = harness(|_| ());
    group_of_three(&h);
    h.ok("alice", cmd::GROUPS_INVITE, json!({ "group": "g1", "user": "dave" }));
    h.ok("dave", cmd::GROUPS_JOIN, json!({ "group": "g1" }));
    h.ok("alice", cmd::GROUPS_PROMOTE, json!({ "group": "g1", "user": "dave" }));
    let kick = |user: &str| json!({ "group": "g1", "user": user });
    assert_eq!(
        h.err("carol", cmd::GROUPS_KICK, kick("dave")),
        ErrorCode::Forbidden,
        "a member"
    );
    assert_eq!(
        h.err("bob", cmd::GROUPS_KICK, kick("alice")),
        ErrorCode::Forbidden,
        "the owner"
    );
    assert_eq!(
        h.err("bob", cmd::GROUPS_KICK, kick("dave")),
        ErrorCode::Forbidden,
        "another admin"
    );
    assert_eq!(
        h.err("alice", cmd::GROUPS_KICK, kick("alice")),
        ErrorCode::Forbidden,
        "oneself"
    );
    assert_eq!(h.err("bob", cmd::GROUPS_KICK, kick("root")), ErrorCode::NotMember);
    assert_eq!(
        h.ok("bob", cmd::GROUPS_KICK, kick("carol")),
        json!({ "group": "g1", "user": "carol", "kicked": true })
    );
    assert_eq!(
        h.ok("alice", cmd::GROUPS_KICK, kick("dave")),
        json!({ "group": "g1", "user": "dave", "kicked": true })
    );
    assert_eq!(
        h.members("alice", "g1"),
        json!([{ "user": "alice", "role": "owner" }, { "user": "bob", "role": "admin" }])
    );
    assert_eq!(
        h.err("carol", cmd::GROUPS_JOIN, json!({ "group": "g1" })),
        ErrorCode::Forbidden,
        "a kicked member needs a new invitation"
    );
}

#[tokio::test]
async fn admins_promote_members_once() {
    let h = harness(|_| ());
    group_of_three(&h);
    h.ok("alice", cmd::GROUPS_INVITE, json!({ "group": "g1", "user": "dave" }));
    h.ok("dave", cmd::GROUPS_JOIN, json!({ "group": "g1" }));
    let p = |user: &str| json!({ "group": "g1", "user": user });
    assert_eq!(h.err("carol", cmd::GROUPS_PROMOTE, p("dave")), ErrorCode::Forbidden);
    assert_eq!(h.err("bob", cmd::GROUPS_PROMOTE, p("alice")), ErrorCode::Conflict);
    assert_eq!(h.err("bob", cmd::GROUPS_PROMOTE, p("bob")), ErrorCode::Conflict);
    assert_eq!(h.err("bob", cmd::GROUPS_PROMOTE, p("root")), ErrorCode::NotMember);
    assert_eq!(
        h.ok("bob", cmd::GROUPS_PROMOTE, p("dave")),
        json!({ "group": "g1", "user": "dave", "role": "admin" })
    );
    assert_eq!(h.members("carol", "g1")[3], json!({ "user": "dave", "role": "admin" }));
    assert_eq!(
        h.ok("dave", cmd::GROUPS_LIST, json!({})),
        json!({ "groups": [{ "group": "g1", "role": "admin" }] })
    );
}

// ---- presence ----

#[tokio::test]
async fn status_is_set_by_a_connected_user_with_a_bounded_text() {
    let h = harness(|_| ());
    let set = |status: &str, text: Value| json!({ "status": status, "text": text });
    assert_eq!(
        h.err("alice", cmd::PRESENCE_SET, set("away", json!(null))),
        ErrorCode::Conflict
    );
    h.state().presence.connected("alice", &"alice-dev".into());
    assert_eq!(h.err("alice", cmd::PRESENCE_SET, json!({})), ErrorCode::BadRequest);
    assert_eq!(
        h.err("alice", cmd::PRESENCE_SET, set("offline", json!(null))),
        ErrorCode::BadRequest
    );
    assert_eq!(
        h.err("alice", cmd::PRESENCE_SET, set("busy", json!("é".repeat(201)))),
        ErrorCode::BadRequest
    );
    let r = h.ok("alice", cmd::PRESENCE_SET, set("busy", json!("é".repeat(200))));
    assert_eq!(
        (r["status"].as_str(), r["text"].as_str()),
        (Some("busy"), Some(&*"é".repeat(200)))
    );
    let r = h.ok("alice", cmd::PRESENCE_SET, set("away", json!("")));
    assert_eq!(r["status"], "away");
    assert!(
        r.get("text").is_none_or(Value::is_null),
        "an empty text is no text: {r}"
    );
}

#[tokio::test]
async fn presence_is_for_friends_unless_configured_for_all() {
    let h = harness(|c| c.im.presence_visibility = PresenceVisibility::Friends);
    let get = |user: &str| json!({ "user": user });
    assert_eq!(h.err("bob", cmd::PRESENCE_GET, get("alice")), ErrorCode::Forbidden);
    assert_eq!(h.err("bob", cmd::PRESENCE_GET, get("nobody")), ErrorCode::NotFound);
    assert_eq!(h.ok("alice", cmd::PRESENCE_GET, get("alice"))["status"], "offline");
    h.ok("alice", cmd::FRIENDS_REQUEST, get("bob"));
    assert_eq!(
        h.err("bob", cmd::PRESENCE_GET, get("alice")),
        ErrorCode::Forbidden,
        "a request is not a friendship"
    );
    h.ok("bob", cmd::FRIENDS_ACCEPT, get("alice"));
    h.state().presence.connected("alice", &"alice-dev".into());
    assert_eq!(h.ok("bob", cmd::PRESENCE_GET, get("alice"))["status"], "online");

    let all = harness(|c| c.im.presence_visibility = PresenceVisibility::All);
    assert_eq!(all.ok("bob", cmd::PRESENCE_GET, get("alice"))["status"], "offline");
}

// ---- history ----

fn say(h: &Harness, id: u64, from: &str, conversation: String, text: &str) {
    let message = Arc::new(StoredMessage {
        from: from.into(),
        ts: id * 10,
        payload: Bytes::copy_from_slice(text.as_bytes()),
        user_properties: Vec::new(),
        content_type: None,
    });
    let m = NewMessage::from_mailboxes(id, message, Some(conversation), Vec::new());
    h.state().store.append(&[m]).unwrap();
}

#[tokio::test]
async fn history_pages_a_conversation_the_caller_is_part_of() {
    let h = harness(|c| c.im.history_max_limit = 3.try_into().unwrap());
    let dm = crate::im::dm_conversation("alice", "bob");
    for (id, from) in [(1, "alice"), (2, "bob"), (3, "alice"), (4, "bob")] {
        say(&h, id, from, dm.clone(), &format!("m{id}"));
    }
    say(
        &h,
        5,
        "carol",
        crate::im::dm_conversation("carol", "bob"),
        "not for alice",
    );
    let texts = |v: &Value| -> Vec<String> {
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let all = h.ok("alice", cmd::HISTORY, json!({ "with": "bob", "limit": 3 }));
    assert_eq!(all["with"], "bob");
    assert_eq!(texts(&all), ["m2", "m3", "m4"], "the newest three, oldest first");
    assert_eq!(all["messages"][0]["from"], "bob");
    let older = h.ok("bob", cmd::HISTORY, json!({ "with": "alice", "before": 3 }));
    assert_eq!(texts(&older), ["m1", "m2"]);
    let after = h.ok("bob", cmd::HISTORY, json!({ "with": "alice", "after": 3 }));
    assert_eq!(texts(&after), ["m4"]);

    let limit = |n: u32| json!({ "with": "bob", "limit": n });
    assert_eq!(h.err("alice", cmd::HISTORY, limit(0)), ErrorCode::BadRequest);
    assert_eq!(h.err("alice", cmd::HISTORY, limit(4)), ErrorCode::BadRequest);
    assert_eq!(h.err("alice", cmd::HISTORY, json!({})), ErrorCode::BadRequest);
    assert_eq!(
        h.err("alice", cmd::HISTORY, json!({ "with": "a/b" })),
        ErrorCode::BadRequest
    );
    assert_eq!(
        h.err("alice", cmd::HISTORY, json!({ "with": "group:a+b" })),
        ErrorCode::BadRequest
    );
}

#[tokio::test]
async fn group_history_is_for_members() {
    let h = harness(|_| ());
    group_of_three(&h);
    say(&h, 1, "carol", crate::im::group_conversation("g1"), "hello g1");
    let r = h.ok("bob", cmd::HISTORY, json!({ "with": "group:g1" }));
    assert_eq!(r["messages"][0]["text"], "hello g1");
    assert_eq!(r["messages"].as_array().unwrap().len(), 1);
    assert_eq!(
        h.err("dave", cmd::HISTORY, json!({ "with": "group:g1" })),
        ErrorCode::NotMember
    );
    assert_eq!(
        h.err("dave", cmd::HISTORY, json!({ "with": "group:zz" })),
        ErrorCode::NotMember
    );
}

// ---- admin ----

#[tokio::test]
async fn admin_commands_are_for_admins_and_share_the_control_sockets_handling() {
    let h = harness(|_| ());
    for command in [cmd::ADMIN_STATS, cmd::ADMIN_USERS_LIST, cmd::ADMIN_USERS_DEL] {
        assert_eq!(
            h.err("alice", command, json!({ "user": "bob" })),
            ErrorCode::Forbidden,
            "{command}"
        );
    }
    let stats = h.ok("root", cmd::ADMIN_STATS, json!({}));
    for key in [
        "sessions",
        "subscriptions",
        "retained",
        "published",
        "delivered",
        "dropped",
    ] {
        assert!(stats[key].is_u64(), "{key}: {stats}");
    }
    let add = json!({ "user": "erin", "password": "long enough pw", "admin": true });
    h.ok("root", cmd::ADMIN_USERS_ADD, add.clone());
    assert!(h.state().store.user("erin").unwrap().unwrap().admin);
    assert_eq!(h.err("root", cmd::ADMIN_USERS_ADD, add), ErrorCode::AlreadyExists);
    assert_eq!(
        h.err("root", cmd::ADMIN_USERS_ADD, json!({ "user": "frank" })),
        ErrorCode::BadRequest
    );
    h.ok(
        "root",
        cmd::ADMIN_USERS_ADD,
        json!({ "user": "frank", "password": "long enough pw" }),
    );
    assert!(
        !h.state().store.user("frank").unwrap().unwrap().admin,
        "not admin unless asked"
    );

    let users = h.ok("root", cmd::ADMIN_USERS_LIST, json!({}))["users"].clone();
    let listed: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert!(listed.contains(&"erin") && listed.contains(&"alice"), "{users}");

    h.ok(
        "root",
        cmd::ADMIN_USERS_PASSWD,
        json!({ "user": "bob", "password": "new bob pw" }),
    );
    let hash = h.state().store.user("bob").unwrap().unwrap().password_hash;
    assert!(password::verify(b"new bob pw", &hash));

    let reset = h.ok("root", cmd::ADMIN_USERS_RESET, json!({ "user": "bob" }));
    let token = reset["token"].as_str().unwrap();
    assert!(crate::accounts::reset::valid(&h.state().store, "bob", token.as_bytes()).unwrap());
    assert!(reset["expires_at"].as_u64().unwrap() > 0);

    h.ok("root", cmd::ADMIN_USERS_DEL, json!({ "user": "erin" }));
    assert!(h.state().store.user("erin").unwrap().is_none());
    assert_eq!(
        h.err("root", cmd::ADMIN_USERS_DEL, json!({ "user": "erin" })),
        ErrorCode::NotFound
    );
    assert_eq!(h.err("root", cmd::ADMIN_USERS_DEL, json!({})), ErrorCode::BadRequest);
}
