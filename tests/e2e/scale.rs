//! Many clients at once.

use std::time::Duration;

use bytes::Bytes;
use natter_e2e::{Raw, TestBroker};
use natter_shared::codec::{
    Packet, Properties, Protocol, Publish, QoS, Subscribe, SubscribeFilter, SubscriptionOptions,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_clients() {
    const N: usize = 1000;
    // Both ends of every connection live in this process, and the other tests run
    // beside this one.
    natter_e2e::raise_open_files(4 * N as u64 + 1024);
    let b = TestBroker::start().await;
    let addr = b.addr;
    let users = ["alice", "bob", "carol"];
    let mut tasks = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(N);
    for i in 0..N {
        let ready = ready_tx.clone();
        tasks.push(tokio::spawn(async move {
            let protocol = if i % 2 == 0 { Protocol::V311 } else { Protocol::V5 };
            let mut raw = Raw::login(addr, protocol, users[i % 3], &format!("c{i}")).await;
            raw.send(&Packet::Subscribe(Subscribe {
                pkid: 1,
                properties: Properties::default(),
                filters: vec![SubscribeFilter {
                    filter: "broadcast/#".into(),
                    options: SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        ..Default::default()
                    },
                }],
            }))
            .await;
            assert!(matches!(raw.recv().await, Some(Packet::SubAck(_))));
            ready.send(()).await.unwrap();
            match raw
                .recv_within(Duration::from_secs(60))
                .await
                .expect("broadcast in time")
            {
                Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"to everyone"),
                other => panic!("client {i}: {other:?}"),
            }
        }));
    }
    for _ in 0..N {
        tokio::time::timeout(Duration::from_secs(60), ready_rx.recv())
            .await
            .expect("all connected")
            .unwrap();
    }
    let mut p = Raw::login(addr, Protocol::V5, "alice", "announcer").await;
    p.send(&Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "broadcast/all".into(),
        pkid: 1,
        properties: Properties::default(),
        payload: Bytes::from_static(b"to everyone"),
    }))
    .await;
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("delivered in time")
            .unwrap();
    }
    b.stop().await;
}
