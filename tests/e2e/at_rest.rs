//! Encryption at rest: no message body, retained payload or will in the clear under
//! the data dir; the data key's file (0600); a missing or wrong key refused at start;
//! `rekey` moving the store to a new key with nothing lost.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use bytes::Bytes;
use natter_e2e::im::ImClient;
use natter_e2e::{publish_packet, Raw, TestBroker};
use natter_shared::codec::{Packet, Protocol, QoS};
use serde_json::json;

const DM_BODY: &[u8] = b"the vault code is 7-3-9-1";
const RETAINED_BODY: &[u8] = b"thermostat secret setpoint";
const QUEUED_BODY: &[u8] = b"door opens with 55-21";

/// Every file under `dir` but the key file, whole.
pub(crate) fn raw_files(dir: &Path, skip: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).expect("read dir") {
        let p = e.expect("entry").path();
        if p == skip {
            continue;
        }
        if p.is_dir() {
            raw_files(&p, skip, out);
        } else if let Ok(bytes) = std::fs::read(&p) {
            out.push((p.display().to_string(), bytes));
        }
    }
}

pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn nothing_users_wrote_is_in_the_clear_and_the_key_guards_the_store() {
    let b = TestBroker::start().await;
    // A persistent session that is away: a plain message for it is kept on disk.
    let mut away = natter_e2e::connect_packet(Protocol::V5, Some("bob"), "bob-away");
    away.clean_start = false;
    away.properties.session_expiry_interval = Some(600);
    let (mut bob, _) = Raw::connect(b.addr, away).await;
    assert_eq!(bob.subscribe("jobs/door", QoS::AtLeastOnce).await, 1);
    drop(bob);
    b.wait_offline("bob").await;
    let mut alice = Raw::login(b.addr, Protocol::V5, "alice", "alice").await;
    alice
        .send(&publish_packet(
            "jobs/door",
            QoS::AtLeastOnce,
            3,
            Bytes::from_static(QUEUED_BODY),
        ))
        .await;
    alice
        .send(&publish_packet(
            "dm/bob",
            QoS::AtLeastOnce,
            1,
            Bytes::from_static(DM_BODY),
        ))
        .await;
    let mut kept = publish_packet("status/thermo", QoS::AtLeastOnce, 2, Bytes::from_static(RETAINED_BODY));
    if let Packet::Publish(p) = &mut kept {
        p.retain = true;
    }
    alice.send(&kept).await;
    assert_eq!(alice.acks(3).await.len(), 3);
    drop(alice);
    let (dir, config) = b.stop_keeping().await;

    let key_file = dir.path().join("natter.key");
    let mode = std::fs::metadata(&key_file)
        .expect("the key file exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the key file is the owner's only");
    let mut files = Vec::new();
    raw_files(dir.path(), &key_file, &mut files);
    assert!(!files.is_empty());
    for (path, bytes) in &files {
        assert!(!contains(bytes, DM_BODY), "a DM body in the clear in {path}");
        assert!(
            !contains(bytes, RETAINED_BODY),
            "a retained payload in the clear in {path}"
        );
        assert!(
            !contains(bytes, QUEUED_BODY),
            "a message kept for a persistent session in the clear in {path}"
        );
    }

    // No key: refused, naming the file.
    let key = std::fs::read_to_string(&key_file).expect("key");
    std::fs::remove_file(&key_file).expect("remove key");
    let err = natterd::start(config.clone())
        .await
        .err()
        .expect("no start without the key")
        .to_string();
    assert!(err.contains("natter.key") && err.contains("missing"), "{err}");
    assert!(!key_file.exists(), "no new key is made up for an encrypted store");
    // Another key: refused.
    let other = natterd::store::DataKey::generate().to_hex();
    std::fs::write(&key_file, format!("{other}\n")).expect("write key");
    let err = natterd::start(config.clone())
        .await
        .err()
        .expect("no start with another key")
        .to_string();
    assert!(err.contains("another data key"), "{err}");
    std::fs::write(&key_file, "not a key\n").expect("write key");
    let err = natterd::start(config.clone())
        .await
        .err()
        .expect("no start with a bad key")
        .to_string();
    assert!(err.contains("64 hexadecimal digits"), "{err}");

    // The right key back, then a rekey: a new key, everything still there.
    std::fs::write(&key_file, &key).expect("write key");
    let options = natterd::server::store_options(&config.store);
    let (n, printed) = natterd::datakey::rekey(dir.path(), &config.store, options).expect("rekey");
    assert!(n > 0 && printed.is_none());
    let new_key = std::fs::read_to_string(&key_file).expect("key");
    assert_ne!(new_key, key, "the key file holds the new key");
    assert!(!dir.path().join("natter.key.new").exists());

    let broker = natterd::start(config).await.expect("starts with the new key");
    let addr = broker.local_addr();
    assert_eq!(texts(addr).await, [std::str::from_utf8(DM_BODY).expect("utf8")]);
    let mut reader = Raw::login(addr, Protocol::V311, "bob", "bob-reader").await;
    reader.subscribe("status/#", QoS::AtMostOnce).await;
    assert_eq!(&reader.next_publish().await.payload[..], RETAINED_BODY);
    broker.shutdown().await;
}

async fn texts(addr: std::net::SocketAddr) -> Vec<String> {
    let mut bob = ImClient::connect(addr, "bob", "bob-laptop").await;
    let history = bob.ok("history", json!({ "with": "alice" })).await;
    history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["text"].as_str().map(str::to_owned))
        .collect()
}

/// A backup taken through the running broker's control socket, then restored with
/// the broker stopped: the history is the backup's.
#[tokio::test]
async fn a_backup_taken_while_running_restores_the_history() {
    let b = TestBroker::start().await;
    // A persistent session that is away: a plain message for it is kept on disk.
    let mut away = natter_e2e::connect_packet(Protocol::V5, Some("bob"), "bob-away");
    away.clean_start = false;
    away.properties.session_expiry_interval = Some(600);
    let (mut bob, _) = Raw::connect(b.addr, away).await;
    assert_eq!(bob.subscribe("jobs/door", QoS::AtLeastOnce).await, 1);
    drop(bob);
    b.wait_offline("bob").await;
    let mut alice = Raw::login(b.addr, Protocol::V5, "alice", "alice").await;
    alice
        .send(&publish_packet(
            "jobs/door",
            QoS::AtLeastOnce,
            3,
            Bytes::from_static(QUEUED_BODY),
        ))
        .await;
    alice
        .send(&publish_packet(
            "dm/bob",
            QoS::AtLeastOnce,
            1,
            Bytes::from_static(b"before the backup"),
        ))
        .await;
    assert_eq!(alice.acks(1).await.len(), 1);
    let backups = tempfile::tempdir().expect("temp dir");
    let dest = backups.path().join("monday");
    let response = natterd::control::request(b.dir.path(), &natterd::admin::Request::Backup { dest: dest.clone() })
        .await
        .expect("the broker answers");
    assert!(
        response.ok && response.records.is_some_and(|n| n > 0),
        "{:?}",
        response.error
    );
    alice
        .send(&publish_packet(
            "dm/bob",
            QoS::AtLeastOnce,
            2,
            Bytes::from_static(b"after the backup"),
        ))
        .await;
    assert_eq!(alice.acks(1).await.len(), 1);
    drop(alice);
    assert_eq!(texts(b.addr).await, ["before the backup", "after the backup"]);
    let (dir, config) = b.stop_keeping().await;

    // Tasks of the stopped broker (session timers) may hold the store a moment
    // longer in this process: restore refuses while it is held, so poll.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let aside = loop {
        match natterd::store::restore(&dest, dir.path()) {
            Err(natterd::store::StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            other => break other.expect("restore").expect("the old store moved aside"),
        }
    };
    assert!(aside.exists());
    let broker = natterd::start(config).await.expect("starts on the backup");
    assert_eq!(texts(broker.local_addr()).await, ["before the backup"]);
    broker.shutdown().await;
}
