//! Authentication: good and bad credentials on both versions, anonymous access,
//! throttling, and session identity (user, client id).

use natter_e2e::{connect_packet, publish_packet, v3, v5, Raw, TestBroker};
use natter_shared::codec::{reason, Packet, Protocol, QoS};
use std::time::Duration;

#[tokio::test]
async fn v311_accepts_good_and_refuses_bad_credentials() {
    let b = TestBroker::start().await;
    assert!(v3::connect(v3::options(b.addr, "a1", Some("alice"))).await.is_ok());
    let mut bad = v3::options(b.addr, "a2", None);
    bad.set_credentials("alice", "wrong");
    match v3::connect(bad).await {
        Err(v3::ConnectionError::ConnectionRefused(v3::ConnectReturnCode::NotAuthorized)) => {}
        other => panic!("expected 0x05, got {:?}", other.err()),
    }
    let mut unknown = v3::options(b.addr, "a3", None);
    unknown.set_credentials("mallory", "x");
    assert!(matches!(
        v3::connect(unknown).await.err(),
        Some(v3::ConnectionError::ConnectionRefused(
            v3::ConnectReturnCode::NotAuthorized
        ))
    ));
    assert!(matches!(
        v3::connect(v3::options(b.addr, "a4", None)).await.err(),
        Some(v3::ConnectionError::ConnectionRefused(
            v3::ConnectReturnCode::NotAuthorized
        ))
    ));
    b.stop().await;
}

#[tokio::test]
async fn v5_refuses_with_bad_credentials_reason() {
    let b = TestBroker::start().await;
    assert!(v5::connect(v5::options(b.addr, "a1", Some("bob"))).await.is_ok());
    let mut bad = v5::options(b.addr, "a2", None);
    bad.set_credentials("bob", "nope");
    assert!(matches!(
        v5::connect(bad).await.err(),
        Some(v5::ConnectionError::ConnectionRefused(
            v5::ConnectReturnCode::BadUserNamePassword
        ))
    ));
    // Raw: anonymous on v5 gets 0x86 and the connection is closed.
    let (mut raw, ack) = Raw::connect(b.addr, connect_packet(Protocol::V5, None, "anon")).await;
    assert_eq!(ack.code, reason::BAD_USERNAME_OR_PASSWORD);
    assert!(raw.until_closed().await.is_empty());
    b.stop().await;
}

#[tokio::test]
async fn anonymous_clients_get_in_when_allowed() {
    let b = TestBroker::start_config(|c| c.auth.allow_anonymous = true).await;
    let mut sub = v3::connect(v3::options(b.addr, "anon-sub", None))
        .await
        .expect("anonymous allowed");
    sub.client.subscribe("open/#", v3::QoS::AtLeastOnce).await.unwrap();
    sub.suback().await;
    let pubr = v5::connect(v5::options(b.addr, "anon-pub", None))
        .await
        .expect("anonymous allowed on v5");
    pubr.client
        .publish("open/x", v5::QoS::AtLeastOnce, false, "hi")
        .await
        .unwrap();
    assert_eq!(&sub.publish().await.payload[..], b"hi");
    // Wrong credentials are still refused.
    let mut bad = v3::options(b.addr, "a2", None);
    bad.set_credentials("alice", "wrong");
    assert!(v3::connect(bad).await.is_err());
    b.stop().await;
}

#[tokio::test]
async fn failed_logins_are_throttled_per_user_and_per_address() {
    use std::net::Ipv4Addr;
    let b = TestBroker::start_config(|c| {
        c.auth.throttle_free_failures = 2;
        c.auth.throttle_base_delay_ms = 60_000;
    })
    .await;
    let attacker = Ipv4Addr::new(127, 0, 0, 2);
    let elsewhere = Ipv4Addr::new(127, 0, 0, 3);
    let login = |user: &str, protocol| connect_packet(protocol, Some(user), "c");
    for _ in 0..3 {
        let mut bad = login("carol", Protocol::V5);
        bad.password = Some(bytes::Bytes::from_static(b"guess"));
        let (_, ack) = Raw::connect_from(b.addr, attacker, bad).await;
        assert_eq!(ack.code, reason::BAD_USERNAME_OR_PASSWORD);
    }
    // Locked now, even with the right password, and in both versions.
    let (_, ack) = Raw::connect_from(b.addr, attacker, login("carol", Protocol::V5)).await;
    assert_eq!(ack.code, reason::CONNECTION_RATE_EXCEEDED);
    let (_, ack) = Raw::connect_from(b.addr, attacker, login("carol", Protocol::V311)).await;
    assert_eq!(ack.code, reason::v3::NOT_AUTHORIZED);
    // Per address: another user from the guessing address is held back too...
    let (_, ack) = Raw::connect_from(b.addr, attacker, login("alice", Protocol::V5)).await;
    assert_eq!(ack.code, reason::CONNECTION_RATE_EXCEEDED, "the address is throttled");
    // ...but not from an address that did not guess.
    let (_, ack) = Raw::connect_from(b.addr, elsewhere, login("alice", Protocol::V5)).await;
    assert_eq!(ack.code, reason::SUCCESS, "other addresses are not throttled");
    // Per user: while carol's name is locked, one wrong guess at it locks the
    // address it came from, with no free failures...
    let second = Ipv4Addr::new(127, 0, 0, 4);
    let mut bad = login("carol", Protocol::V5);
    bad.password = Some(bytes::Bytes::from_static(b"guess"));
    let (_, ack) = Raw::connect_from(b.addr, second, bad).await;
    assert_eq!(ack.code, reason::BAD_USERNAME_OR_PASSWORD);
    let (_, ack) = Raw::connect_from(b.addr, second, login("carol", Protocol::V5)).await;
    assert_eq!(
        ack.code,
        reason::CONNECTION_RATE_EXCEEDED,
        "one guess per address under lockout"
    );
    // ...but the guessing does not lock carol out: her password works from an
    // address that did not guess.
    let (_, ack) = Raw::connect_from(b.addr, elsewhere, login("carol", Protocol::V5)).await;
    assert_eq!(ack.code, reason::SUCCESS, "a locked name still admits its password");
    b.stop().await;
}

#[tokio::test]
async fn same_client_id_for_two_users_are_two_sessions() {
    let b = TestBroker::start().await;
    let mut alice = Raw::login(b.addr, Protocol::V5, "alice", "shared-id").await;
    let _bob = Raw::login(b.addr, Protocol::V5, "bob", "shared-id").await;
    // Alice is not taken over.
    assert_eq!(alice.recv_within(std::time::Duration::from_millis(300)).await, Err(()));
    assert_eq!(b.router().session_count(), 2);
    b.stop().await;
}

#[tokio::test]
async fn extended_authentication_is_refused_cleanly() {
    let b = TestBroker::start().await;
    let mut c = connect_packet(Protocol::V5, Some("alice"), "x");
    c.properties.authentication_method = Some("SCRAM-SHA-1".into());
    let (_, ack) = Raw::connect(b.addr, c).await;
    assert_eq!(ack.code, reason::BAD_AUTHENTICATION_METHOD);
    b.stop().await;
}

#[tokio::test]
async fn device_tokens_log_in_without_admin_rights_and_revocation_closes_them() {
    use natter_shared::codec::{Properties, Subscribe, SubscribeFilter, SubscriptionOptions};
    use natterd::admin::Request;
    use natterd::control::request;
    let b = TestBroker::start().await;
    let data = b.dir.path();
    let created = request(
        data,
        &Request::TokenAdd {
            user: "root".into(),
            name: "sensor-1".into(),
        },
    )
    .await
    .unwrap();
    assert!(created.ok, "{:?}", created.error);
    let token = created.token.expect("token shown once");
    assert!(token.starts_with("nt_") && token.len() == 67);

    let mut c = connect_packet(Protocol::V5, Some("root"), "sensor");
    c.password = Some(bytes::Bytes::from(token.clone()));
    let (mut dev, ack) = Raw::connect(b.addr, c.clone()).await;
    assert_eq!(ack.code, 0, "token accepted");
    // A token never carries admin rights, even for an admin account.
    dev.send(&Packet::Subscribe(Subscribe {
        pkid: 1,
        properties: Properties::default(),
        filters: vec![SubscribeFilter {
            filter: "$SYS/#".into(),
            options: SubscriptionOptions::default(),
        }],
    }))
    .await;
    assert!(matches!(dev.recv().await, Some(Packet::SubAck(a)) if a.codes == vec![reason::NOT_AUTHORIZED]));

    // Another user cannot use it.
    let mut stolen = connect_packet(Protocol::V5, Some("bob"), "thief");
    stolen.password = Some(bytes::Bytes::from(token.clone()));
    let (_, ack) = Raw::connect(b.addr, stolen).await;
    assert_eq!(ack.code, reason::BAD_USERNAME_OR_PASSWORD);

    let listed = request(
        data,
        &Request::TokenList {
            user: Some("root".into()),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        listed
            .tokens
            .unwrap()
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        vec!["sensor-1"]
    );

    // A connection of the same user with the password is not the token's.
    let mut console = Raw::login(b.addr, Protocol::V5, "root", "console").await;
    let revoked = request(
        data,
        &Request::TokenRevoke {
            user: "root".into(),
            name: "sensor-1".into(),
        },
    )
    .await
    .unwrap();
    assert!(revoked.ok);
    let seen = dev.until_closed().await;
    assert!(
        matches!(seen.as_slice(), [Packet::Disconnect(d)] if d.reason == reason::ADMINISTRATIVE_ACTION),
        "{seen:?}"
    );
    let (_, ack) = Raw::connect(b.addr, c).await;
    assert_eq!(ack.code, reason::BAD_USERNAME_OR_PASSWORD, "revoked");
    console.send(&Packet::PingReq).await;
    assert_eq!(
        console.recv().await,
        Some(Packet::PingResp),
        "password connection still open"
    );
    b.stop().await;
}

#[tokio::test]
async fn deleting_a_user_closes_its_connections() {
    use natterd::admin::Request;
    use natterd::control::request;
    let b = TestBroker::start().await;
    let mut carol = Raw::login(b.addr, Protocol::V5, "carol", "phone").await;
    let r = request(b.dir.path(), &Request::UserDel { name: "carol".into() })
        .await
        .unwrap();
    assert!(r.ok, "{:?}", r.error);
    let seen = carol.until_closed().await;
    assert!(
        matches!(seen.as_slice(), [natter_shared::codec::Packet::Disconnect(d)] if d.reason == reason::ADMINISTRATIVE_ACTION)
    );
    let (_, ack) = Raw::connect(b.addr, connect_packet(Protocol::V5, Some("carol"), "phone")).await;
    assert_eq!(ack.code, reason::BAD_USERNAME_OR_PASSWORD);
    b.stop().await;
}

#[tokio::test]
async fn a_lockout_lasts_its_delay_and_then_the_right_password_works() {
    let b = TestBroker::start_config(|c| {
        c.auth.throttle_free_failures = 1;
        c.auth.throttle_base_delay_ms = 500;
    })
    .await;
    let mut bad = connect_packet(Protocol::V5, Some("carol"), "c");
    bad.password = Some(bytes::Bytes::from_static(b"guess"));
    for _ in 0..2 {
        let (_, ack) = Raw::connect(b.addr, bad.clone()).await;
        assert_eq!(ack.code, reason::BAD_USERNAME_OR_PASSWORD);
    }
    let locked_at = tokio::time::Instant::now();
    let (_, ack) = Raw::connect(b.addr, connect_packet(Protocol::V5, Some("carol"), "c")).await;
    assert_eq!(
        ack.code,
        reason::CONNECTION_RATE_EXCEEDED,
        "locked after the free failure"
    );
    // Poll: the right password is accepted once the delay has passed, not before.
    loop {
        let (_, ack) = Raw::connect(b.addr, connect_packet(Protocol::V5, Some("carol"), "c")).await;
        if ack.code == reason::SUCCESS {
            break;
        }
        assert_eq!(ack.code, reason::CONNECTION_RATE_EXCEEDED);
        assert!(locked_at.elapsed() < natter_e2e::WAIT, "still locked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        locked_at.elapsed() >= Duration::from_millis(400),
        "unlocked after {:?}",
        locked_at.elapsed()
    );
    b.stop().await;
}

#[tokio::test]
async fn guessing_device_tokens_is_throttled_like_passwords() {
    let b = TestBroker::start_config(|c| {
        c.auth.throttle_free_failures = 2;
        c.auth.throttle_base_delay_ms = 60_000;
    })
    .await;
    let guess = |n: u8| {
        let mut c = connect_packet(Protocol::V5, Some("alice"), "guesser");
        c.password = Some(bytes::Bytes::from(format!("nt_{}", format!("{n:02x}").repeat(32))));
        c
    };
    for n in 0..3 {
        let (_, ack) = Raw::connect(b.addr, guess(n)).await;
        assert_eq!(ack.code, reason::BAD_USERNAME_OR_PASSWORD, "guess {n}");
    }
    let (_, ack) = Raw::connect(b.addr, guess(3)).await;
    assert_eq!(
        ack.code,
        reason::CONNECTION_RATE_EXCEEDED,
        "held back like password guesses"
    );
    b.stop().await;
}

#[tokio::test]
async fn deleting_a_connected_user_closes_their_connections() {
    use natter_e2e::im::ImClient;
    let b = TestBroker::start_default(|_| {}).await;
    let mut root = ImClient::connect(b.addr, "root", "console").await;
    let mut carol = Raw::login(b.addr, Protocol::V5, "carol", "carol-1").await;
    let mut carol3 = Raw::login(b.addr, Protocol::V311, "carol", "carol-2").await;
    root.ok("admin.users.del", serde_json::json!({ "user": "carol" })).await;
    let seen = carol.until_closed().await;
    assert!(
        matches!(seen.as_slice(), [Packet::Disconnect(d)] if d.reason == reason::ADMINISTRATIVE_ACTION),
        "{seen:?}"
    );
    assert!(carol3.until_closed().await.is_empty(), "3.1.1: closed");
    let (_, ack) = Raw::connect(b.addr, connect_packet(Protocol::V5, Some("carol"), "again")).await;
    assert_eq!(ack.code, reason::BAD_USERNAME_OR_PASSWORD, "the account is gone");
    b.stop().await;
}

/// The login throttle and the registrations per address outlive a restart: a locked
/// address is still locked after it (its right password refused), an address that
/// used its registrations cannot register again, and other addresses are untouched.
#[tokio::test]
async fn throttle_and_registration_state_outlive_a_restart() {
    use std::net::Ipv4Addr;
    let b = TestBroker::start_default(|c| {
        c.auth.throttle_free_failures = 1;
        c.auth.throttle_base_delay_ms = 60_000;
        c.im.registration = natterd::config::Registration::Open;
        c.im.registrations_per_hour = 1.try_into().unwrap();
    })
    .await;
    let (guesser, registrar, elsewhere) = (
        Ipv4Addr::new(127, 0, 0, 5),
        Ipv4Addr::new(127, 0, 0, 6),
        Ipv4Addr::new(127, 0, 0, 7),
    );
    for _ in 0..2 {
        let mut bad = connect_packet(Protocol::V5, Some("carol"), "c");
        bad.password = Some(bytes::Bytes::from_static(b"guess"));
        let (_, ack) = Raw::connect_from(b.addr, guesser, bad).await;
        assert_eq!(ack.code, reason::BAD_USERNAME_OR_PASSWORD);
    }
    let (_, ack) = Raw::connect_from(b.addr, guesser, connect_packet(Protocol::V5, Some("carol"), "c")).await;
    assert_eq!(ack.code, reason::CONNECTION_RATE_EXCEEDED, "locked before the restart");
    let register = |user: &str, from: Ipv4Addr, addr| {
        let user = user.to_owned();
        async move {
            let (mut anon, ack) = Raw::connect_from(addr, from, connect_packet(Protocol::V5, None, &user)).await;
            assert_eq!(ack.code, 0);
            assert_eq!(anon.subscribe("register/r", QoS::AtLeastOnce).await, 1);
            let body = serde_json::json!({ "user": user, "password": "a-good-password", "reply": "r" }).to_string();
            anon.send(&publish_packet("api/account.register", QoS::AtLeastOnce, 2, body))
                .await;
            let answer = anon.next_publish().await;
            serde_json::from_slice::<serde_json::Value>(&answer.payload).unwrap()
        }
    };
    let r = register("newbie1", registrar, b.addr).await;
    assert_eq!(r["ok"], true, "{r}");

    let b = b.restart().await;
    let (_, ack) = Raw::connect_from(b.addr, guesser, connect_packet(Protocol::V5, Some("carol"), "c")).await;
    assert_eq!(
        ack.code,
        reason::CONNECTION_RATE_EXCEEDED,
        "still locked after the restart"
    );
    let (_, ack) = Raw::connect_from(b.addr, elsewhere, connect_packet(Protocol::V5, Some("carol"), "c")).await;
    assert_eq!(ack.code, reason::SUCCESS, "other addresses are not locked");
    let r = register("newbie2", registrar, b.addr).await;
    assert_eq!(r["error"]["code"], "rate_limited", "{r}");
    let r = register("newbie3", elsewhere, b.addr).await;
    assert_eq!(r["ok"], true, "{r}");
    b.stop().await;
}

#[tokio::test]
async fn owners_create_list_and_revoke_their_own_device_tokens() {
    use natter_e2e::im::ImClient;
    use serde_json::json;
    let b = TestBroker::start().await;
    let mut alice = ImClient::connect(b.addr, "alice", "alice-pw-login").await;
    alice
        .fails(
            "tokens.create",
            json!({"name": "laptop", "password": "wrong"}),
            "bad_credentials",
        )
        .await;
    alice
        .fails(
            "tokens.create",
            json!({"name": "Laptop!", "password": "x"}),
            "bad_request",
        )
        .await;
    let pw = natter_e2e::password("alice");
    let made = alice
        .ok("tokens.create", json!({"name": "laptop", "password": pw}))
        .await;
    let token = made["token"].as_str().expect("the secret, once").to_owned();
    assert!(token.starts_with("nt_"));
    alice
        .fails(
            "tokens.create",
            json!({"name": "laptop", "password": pw}),
            "already_exists",
        )
        .await;
    let listed = alice.ok("tokens.list", json!({})).await;
    assert_eq!(listed["tokens"][0]["name"], json!("laptop"));
    assert!(listed["tokens"][0].get("token").is_none(), "never the secret again");

    // Two connections on the token; the one that revokes it is answered and stays,
    // the other is closed, and the token logs in no more.
    let mut o = v5::options(b.addr, "laptop-chat", None);
    o.set_credentials("alice", token.clone());
    let mut chat = ImClient::with_options(o, "alice").await;
    let mut c = connect_packet(Protocol::V5, Some("alice"), "laptop-other");
    c.password = Some(bytes::Bytes::from(token.clone()));
    let (mut other, ack) = Raw::connect(b.addr, c.clone()).await;
    assert_eq!(ack.code, 0);
    chat.fails(
        "tokens.create",
        json!({"name": "more", "password": "guess"}),
        "bad_credentials",
    )
    .await;
    let revoked = chat.ok("tokens.revoke", json!({"name": "laptop"})).await;
    assert_eq!(revoked["revoked"], json!(true));
    let closed = other.until_closed().await;
    assert!(
        matches!(closed.last(), Some(Packet::Disconnect(d)) if d.reason == reason::ADMINISTRATIVE_ACTION),
        "{closed:?}"
    );
    let (_, ack) = Raw::connect(b.addr, c).await;
    assert_eq!(ack.code, reason::BAD_USERNAME_OR_PASSWORD);
    chat.fails("tokens.revoke", json!({"name": "laptop"}), "not_found")
        .await;
    assert_eq!(alice.ok("tokens.list", json!({})).await["tokens"], json!([]));
    b.stop().await;
}
