use bytes::Bytes;

use super::*;

fn delivery() -> Delivery {
    let mut msg = Message::broker("t/1", Bytes::from_static(b"hi"), QoS::ExactlyOnce, false);
    msg.properties_mut().content_type = Some("text/plain".into());
    msg.properties_mut().user_properties = vec![("from".into(), "alice".into())];
    Delivery {
        msg: Arc::new(msg),
        qos: QoS::AtLeastOnce,
        retain: true,
        sub_ids: vec![7, 9],
        kept: None,
    }
}

#[test]
fn a_v5_publish_carries_properties_subscription_ids_and_the_expiry_left() {
    let now = Instant::now();
    let mut d = delivery();
    Arc::get_mut(&mut d.msg).unwrap().expires_at = Some(now + Duration::from_millis(10_500));
    let Packet::Publish(p) = publish_packet(Protocol::V5, &d, 42, true, now) else {
        panic!("not a PUBLISH");
    };
    assert_eq!((p.pkid, p.dup, p.qos, p.retain), (42, true, QoS::AtLeastOnce, true));
    assert_eq!((&*p.topic, &p.payload[..]), ("t/1", &b"hi"[..]));
    assert_eq!(p.properties.subscription_identifiers, [7, 9]);
    assert_eq!(p.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(p.properties.user_properties.len(), 1);
    assert_eq!(p.properties.message_expiry_interval, Some(11), "rounded up");
    let later = publish_packet(Protocol::V5, &d, 42, false, now + Duration::from_secs(20));
    let Packet::Publish(p) = later else { panic!() };
    assert_eq!(p.properties.message_expiry_interval, Some(0));
}

#[test]
fn a_v311_publish_has_no_properties() {
    let Packet::Publish(p) = publish_packet(Protocol::V311, &delivery(), 1, false, Instant::now()) else {
        panic!("not a PUBLISH");
    };
    assert_eq!(p.properties, Properties::default());
    assert_eq!((p.pkid, p.dup, p.qos, p.retain), (1, false, QoS::AtLeastOnce, true));
}

#[test]
fn a_storage_outcome_is_success_or_unspecified_error() {
    assert_eq!(stored_code(Ok(())), reason::SUCCESS);
    assert_eq!(stored_code(Err(NotStored::Failed)), reason::UNSPECIFIED_ERROR);
    assert_eq!(stored_code(Err(NotStored::Stopped)), reason::UNSPECIFIED_ERROR);
}

#[tokio::test]
async fn acknowledgements_wait_for_the_front_receipt_only() {
    let (tx, rx) = oneshot::channel();
    let mut owed = VecDeque::from([OwedAck {
        ack: Owed::Publish {
            pkid: 1,
            qos: QoS::AtLeastOnce,
        },
        outcome: Outcome::Waiting(rx),
    }]);
    tx.send(Ok(())).unwrap();
    assert_eq!(
        std::future::poll_fn(|cx| poll_front_receipt(&mut owed, cx)).await,
        Ok(())
    );
    // A plugin that drops its receipt without answering: not stored.
    let (tx, rx) = oneshot::channel::<Stored>();
    owed[0].outcome = Outcome::Waiting(rx);
    drop(tx);
    assert_eq!(
        std::future::poll_fn(|cx| poll_front_receipt(&mut owed, cx)).await,
        Err(NotStored::Stopped)
    );
    // Nothing waiting: never resolves.
    owed[0].outcome = Outcome::Ready(0);
    let mut cx = TaskContext::from_waker(std::task::Waker::noop());
    assert!(poll_front_receipt(&mut owed, &mut cx).is_pending());
}
