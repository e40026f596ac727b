//! natterd with the IM layer off (`[im] enabled = false`): a plain authenticated MQTT
//! broker. Nothing is reserved, stamped, stored or answered; the operator's rules
//! govern every topic.

use std::time::Duration;

use natter_e2e::{connect_packet, publish_packet, v3, Raw, TestBroker};
use natter_shared::codec::{reason, Packet, Protocol, QoS};
use natterd::config::rule::{Access, Effect, Rule, Who};

fn rule(filter: &str, effect: Effect, who: Who) -> Rule {
    Rule {
        filter: filter.into(),
        access: Access::ReadWrite,
        effect,
        who,
        users: Vec::new(),
    }
}

async fn plain_broker() -> TestBroker {
    TestBroker::start_config(|c| {
        c.im.enabled = false;
        c.acl.rules = vec![
            rule("private/#", Effect::Deny, Who::All),
            rule("#", Effect::Allow, Who::All),
        ];
    })
    .await
}

#[tokio::test]
async fn with_im_off_the_im_topics_are_plain_topics_and_nothing_is_stamped_or_answered() {
    let b = plain_broker().await;
    let mut bob = Raw::login(b.addr, Protocol::V5, "bob", "bob-1").await;
    assert_eq!(bob.subscribe("#", QoS::AtLeastOnce).await, 1, "a rule may grant `#`");
    let mut alice = Raw::login(b.addr, Protocol::V5, "alice", "alice-1").await;
    let topics = ["dm/bob", "inbox/bob/dm/alice", "api/account.whoami", "presence/alice"];
    for (i, topic) in topics.iter().enumerate() {
        let pkid = i as u16 + 1;
        alice.send(&publish_packet(topic, QoS::AtLeastOnce, pkid, "hi")).await;
        assert_eq!(alice.acks(1).await, vec![(pkid, reason::SUCCESS)], "{topic}");
    }
    // Exactly what was published, where it was published: no mailbox topic, no
    // sender stamp, no API answer, no presence of the broker's own.
    for topic in topics {
        let p = bob.next_publish().await;
        assert_eq!((&*p.topic, &p.payload[..]), (topic, &b"hi"[..]));
        assert!(p.properties.user_properties.is_empty(), "{topic}: {:?}", p.properties);
    }
    assert_eq!(
        bob.recv_within(Duration::from_millis(300)).await,
        Err(()),
        "nothing else"
    );
    b.stop().await;
}

#[tokio::test]
async fn with_im_off_the_rules_decide_and_authentication_still_holds() {
    let b = plain_broker().await;
    let mut alice = Raw::login(b.addr, Protocol::V5, "alice", "alice-1").await;
    assert_eq!(
        alice.subscribe("private/#", QoS::AtLeastOnce).await,
        reason::NOT_AUTHORIZED
    );
    alice.send(&publish_packet("private/x", QoS::AtLeastOnce, 1, "x")).await;
    assert_eq!(alice.acks(1).await, vec![(1, reason::NOT_AUTHORIZED)]);
    // Registration is an IM command: a client without an account is refused.
    let (_, ack) = Raw::connect(b.addr, connect_packet(Protocol::V5, None, "anon")).await;
    assert_eq!(ack.code, reason::BAD_USERNAME_OR_PASSWORD);
    let mut wrong = connect_packet(Protocol::V5, Some("alice"), "guess");
    wrong.password = Some(bytes::Bytes::from_static(b"guess"));
    let (_, ack) = Raw::connect(b.addr, wrong).await;
    assert_eq!(ack.code, reason::BAD_USERNAME_OR_PASSWORD);
    // Any MQTT 3.1.1 client works as with any broker.
    let mut sub = v3::connect(v3::options(b.addr, "v3-sub", Some("carol"))).await.unwrap();
    sub.client.subscribe("devices/#", v3::QoS::AtLeastOnce).await.unwrap();
    sub.suback().await;
    alice
        .send(&publish_packet("devices/d1/temp", QoS::AtMostOnce, 0, "21.5"))
        .await;
    let p = sub.publish().await;
    assert_eq!((&p.topic[..], &p.payload[..]), ("devices/d1/temp", &b"21.5"[..]));
    assert!(!matches!(
        alice.recv_within(Duration::from_millis(100)).await,
        Ok(Some(Packet::Disconnect(_)))
    ));
    b.stop().await;
}
