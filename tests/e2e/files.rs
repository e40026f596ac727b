//! The file protocol with a plain MQTT client: announce, chunks to `files/{id}/{n}`
//! (acknowledged once stored, refused when they do not fit the manifest), finish
//! (size and hash checked), the file message in the recipient's mailbox, fetch by
//! chunks, limits and quotas, and the chunks encrypted at rest.

use bytes::Bytes;
use natter_e2e::{publish_packet, Raw, TestBroker};
use natter_shared::codec::{reason, Packet, Protocol, QoS};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// An API call over a raw MQTT 5 connection subscribed to `inbox/{me}/#`.
async fn call(raw: &mut Raw, me: &str, pkid: u16, command: &str, body: Value) -> Value {
    raw.send(&publish_packet(
        &format!("api/{command}"),
        QoS::AtLeastOnce,
        pkid,
        Bytes::from(body.to_string()),
    ))
    .await;
    let want = format!("inbox/{me}/api/{command}");
    loop {
        match raw.recv().await {
            Some(Packet::Publish(p)) if *p.topic == *want => {
                if p.qos != QoS::AtMostOnce {
                    raw.send(&Packet::PubAck(natter_shared::codec::Ack::new(p.pkid))).await;
                }
                return serde_json::from_slice(&p.payload).expect("JSON answer");
            }
            Some(Packet::Publish(p)) if p.qos != QoS::AtMostOnce => {
                raw.send(&Packet::PubAck(natter_shared::codec::Ack::new(p.pkid))).await;
            }
            Some(_) => {}
            None => panic!("closed during {command}"),
        }
    }
}

/// Publishes a chunk; the PUBACK's reason code and Reason String.
async fn chunk(raw: &mut Raw, id: &str, index: u32, pkid: u16, data: &[u8]) -> (u8, Option<String>) {
    raw.send(&publish_packet(
        &natter_shared::im::file_chunk(id, index),
        QoS::AtLeastOnce,
        pkid,
        Bytes::copy_from_slice(data),
    ))
    .await;
    loop {
        match raw.recv().await {
            Some(Packet::PubAck(a)) if a.pkid == pkid => return (a.reason, a.properties.reason_string),
            Some(_) => {}
            None => panic!("closed while sending chunk {index}"),
        }
    }
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_file_is_announced_sent_in_chunks_checked_delivered_and_fetched() {
    let b = TestBroker::start_config(|c| {
        c.files.chunk_bytes = 1000.try_into().unwrap();
        c.files.max_file_bytes = 10_000.try_into().unwrap();
        c.files.quota_bytes = 12_000.try_into().unwrap();
    })
    .await;
    let mut alice = Raw::login(b.addr, Protocol::V5, "alice", "alice-files").await;
    assert!(alice.subscribe("inbox/alice/#", QoS::AtLeastOnce).await < 0x80);
    let mut bob = Raw::login(b.addr, Protocol::V5, "bob", "bob-files").await;
    assert!(bob.subscribe("inbox/bob/#", QoS::AtLeastOnce).await < 0x80);

    let limits = call(&mut alice, "alice", 1, "files.limits", json!({})).await;
    assert_eq!(limits["result"]["chunk_bytes"], 1000, "{limits}");
    assert_eq!(limits["result"]["used_bytes"], 0);

    let data: Vec<u8> = (0..2500u32).map(|i| (i * 7 % 251) as u8).collect();
    let sha = hex(&Sha256::digest(&data));
    let too_big = call(
        &mut alice,
        "alice",
        2,
        "files.start",
        json!({"name":"big.bin","size":20_000,"sha256":sha,"user":"bob"}),
    )
    .await;
    assert_eq!(too_big["error"]["code"], "forbidden", "{too_big}");
    let started = call(
        &mut alice,
        "alice",
        3,
        "files.start",
        json!({"name":"notes.bin","size":2500,"sha256":sha,"mime":"application/octet-stream","user":"bob"}),
    )
    .await;
    let id = started["result"]["file"].as_str().expect("an id").to_owned();
    assert_eq!(started["result"]["chunks"], 3);

    // Chunks that do not fit are refused with the reason; the rest are stored.
    assert_eq!(
        chunk(&mut alice, &id, 0, 10, &data[..999]).await,
        (reason::NOT_AUTHORIZED, Some("wrong chunk length".into()))
    );
    assert_eq!(
        chunk(&mut alice, &id, 3, 11, &data[..500]).await.0,
        reason::NOT_AUTHORIZED
    );
    let mut not_owner = chunk(&mut bob, &id, 0, 12, &data[..1000]).await;
    assert_eq!(not_owner.1.take().as_deref(), Some("not your upload"));
    let early = call(&mut alice, "alice", 4, "files.finish", json!({"file": id})).await;
    assert_eq!(early["error"]["code"], "conflict", "chunks missing: {early}");
    for (i, part) in data.chunks(1000).enumerate() {
        assert_eq!(
            chunk(&mut alice, &id, i as u32, 20 + i as u16, part).await.0,
            reason::SUCCESS
        );
    }
    let done = call(&mut alice, "alice", 5, "files.finish", json!({"file": id})).await;
    assert_eq!(done["ok"], true, "{done}");

    // bob's mailbox has the file message; bob fetches the chunks and gets the file.
    let msg = bob.next_publish().await;
    assert_eq!(&*msg.topic, "inbox/bob/dm/alice");
    assert_eq!(
        msg.properties.content_type.as_deref(),
        Some(natter_shared::im::FILE_CONTENT_TYPE)
    );
    let file: Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(
        (file["type"].as_str(), file["file"].as_str(), file["name"].as_str()),
        (Some("file"), Some(id.as_str()), Some("notes.bin"))
    );
    bob.send(&Packet::PubAck(natter_shared::codec::Ack::new(msg.pkid)))
        .await;
    bob.send(&publish_packet(
        "api/files.fetch",
        QoS::AtLeastOnce,
        30,
        Bytes::from(json!({"file": id, "chunks":[2,0,1]}).to_string()),
    ))
    .await;
    let mut got = vec![Vec::new(); 3];
    let mut answered = false;
    while !answered || got.iter().any(Vec::is_empty) {
        match bob.recv().await {
            Some(Packet::Publish(p)) => {
                if p.qos != QoS::AtMostOnce {
                    bob.send(&Packet::PubAck(natter_shared::codec::Ack::new(p.pkid))).await;
                }
                if let Some(i) = p.topic.strip_prefix(&format!("inbox/bob/file/{id}/")) {
                    got[i.parse::<usize>().unwrap()] = p.payload.to_vec();
                } else if &*p.topic == "inbox/bob/api/files.fetch" {
                    answered = true;
                }
            }
            Some(_) => {}
            None => panic!("closed"),
        }
    }
    assert_eq!(got.concat(), data, "the file, whole");

    // carol may not see it; alice's quota counts it.
    let mut carol = Raw::login(b.addr, Protocol::V5, "carol", "carol-files").await;
    assert!(carol.subscribe("inbox/carol/#", QoS::AtLeastOnce).await < 0x80);
    let denied = call(&mut carol, "carol", 1, "files.info", json!({"file": id})).await;
    assert_eq!(denied["error"]["code"], "not_found");
    let limits = call(&mut alice, "alice", 6, "files.limits", json!({})).await;
    assert_eq!(limits["result"]["used_bytes"], 2500);
    let over = call(
        &mut alice,
        "alice",
        7,
        "files.start",
        json!({"name":"x","size":10_000,"sha256":sha,"user":"bob"}),
    )
    .await;
    assert!(
        over["error"]["message"].as_str().unwrap_or("").contains("quota"),
        "{over}"
    );

    // A wrong hash: refused at finish, and the chunks go.
    let wrong = call(
        &mut alice,
        "alice",
        8,
        "files.start",
        json!({"name":"w","size":3,"sha256":"00".repeat(32),"user":"bob"}),
    )
    .await;
    let wid = wrong["result"]["file"].as_str().unwrap().to_owned();
    assert_eq!(chunk(&mut alice, &wid, 0, 40, b"abc").await.0, reason::SUCCESS);
    let refused = call(&mut alice, "alice", 9, "files.finish", json!({"file": wid})).await;
    assert_eq!(refused["error"]["code"], "bad_request", "{refused}");
    let info = call(&mut alice, "alice", 10, "files.info", json!({"file": wid})).await;
    assert_eq!(info["result"]["missing"], json!([0]), "{info}");

    // On disk, sealed: the chunks' bytes are nowhere in the clear.
    let marker: Vec<u8> = b"a very recognisable chunk of the file".to_vec();
    let m = call(
        &mut alice,
        "alice",
        11,
        "files.start",
        json!({"name":"m","size":marker.len(),"sha256":hex(&Sha256::digest(&marker)),"user":"bob"}),
    )
    .await;
    let mid = m["result"]["file"].as_str().unwrap().to_owned();
    assert_eq!(chunk(&mut alice, &mid, 0, 41, &marker).await.0, reason::SUCCESS);
    let (dir, _) = b.stop_keeping().await;
    let mut files = Vec::new();
    crate::at_rest::raw_files(dir.path(), &dir.path().join("natter.key"), &mut files);
    assert!(!files.is_empty());
    for (path, bytes) in &files {
        assert!(
            !crate::at_rest::contains(bytes, &marker),
            "a chunk's bytes are in the clear in {path}"
        );
    }
}
