//! Authentication: good and bad credentials on both versions, anonymous access,
//! throttling, and session identity (user, client id).

use natter_e2e::{connect_packet, v3, v5, Raw, TestBroker};
use natter_shared::codec::{reason, Protocol};

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
async fn failed_logins_are_throttled_per_user() {
    let b = TestBroker::start_config(|c| {
        c.auth.throttle_free_failures = 2;
        c.auth.throttle_base_delay_ms = 60_000;
    })
    .await;
    for _ in 0..3 {
        let mut bad = connect_packet(Protocol::V5, Some("carol"), "c");
        bad.password = Some(bytes::Bytes::from_static(b"guess"));
        let (_, ack) = Raw::connect(b.addr, bad).await;
        assert_eq!(ack.code, reason::BAD_USERNAME_OR_PASSWORD);
    }
    // Locked now, even with the right password.
    let (_, ack) = Raw::connect(b.addr, connect_packet(Protocol::V5, Some("carol"), "c")).await;
    assert_eq!(ack.code, reason::CONNECTION_RATE_EXCEEDED);
    let (_, ack) = Raw::connect(b.addr, connect_packet(Protocol::V311, Some("carol"), "c")).await;
    assert_eq!(ack.code, reason::v3::NOT_AUTHORIZED);
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
