use super::*;
use crate::config::Config;
use crate::im::mailbox::limits;
use crate::store::{Route, StoredMessage};
use bytes::Bytes;

fn post(to: &str) -> Post {
    Post {
        record: NewMessage {
            id: 0,
            message: Arc::new(StoredMessage {
                from: "alice".into(),
                ts: 1,
                payload: Bytes::from_static(b"hi"),
                user_properties: Vec::new(),
                content_type: None,
            }),
            route: Route::Direct { to: to.into(), qos: 1 },
        },
        origin: None,
        sender: None,
        done: None,
    }
}

/// A writer on a fresh store, with the default bounds as `bounds` changes them
/// (the directory lives as long as the first element).
fn start(bounds: impl FnOnce(WriterLimits) -> WriterLimits) -> (tempfile::TempDir, Store, Writer) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let config = Config::default_config();
    let router = Router::new(config.limits.clone());
    let presence = Arc::new(PresenceBook::new(router.clone()));
    let writer = Writer::start(store.clone(), router, presence, bounds(limits(&config.im))).unwrap();
    (dir, store, writer)
}

/// Lets the writer run until `done` holds: turn by turn, then (should its work go
/// to another thread) in 1 ms steps, for at most 10 s.
async fn until(done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut turns = 0u32;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "not reached within 10 s");
        turns += 1;
        if turns < 100 {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
}

/// The channel into the writer is bounded: with `queue` messages waiting, the
/// next is refused as busy (nothing is buffered beyond it), and once the writer
/// has taken them, messages are accepted again.
#[tokio::test(flavor = "current_thread")]
async fn a_full_queue_refuses_messages_instead_of_buffering_them() {
    let (_dir, store, writer) = start(|l| WriterLimits { queue: 2, ..l });
    // The writer task cannot run before this test yields.
    let waiting: Vec<_> = (0..2)
        .map(|_| writer.post(post("bob"), true).unwrap().unwrap())
        .collect();
    assert_eq!(writer.post(post("bob"), true).err(), Some(NotStored::Busy));
    for r in waiting {
        assert_eq!(r.await.unwrap(), Ok(()));
    }
    let later = writer.post(post("bob"), true).unwrap().unwrap();
    assert_eq!(later.await.unwrap(), Ok(()));
    assert_eq!(
        store.mailbox_after("bob", 0, 10).unwrap().len(),
        3,
        "the refused one is not stored"
    );
    writer.stop().await;
    assert_eq!(writer.post(post("bob"), true).err(), Some(NotStored::Stopped));
}

#[tokio::test(flavor = "current_thread")]
async fn batches_are_in_flight_between_routing_and_storing() {
    // No time bound on a group: it ends when the writer finds nothing new, however
    // slowly this test runs on a loaded machine.
    let (_dir, store, writer) = start(|l| WriterLimits {
        store_within: std::time::Duration::from_secs(3600),
        ..l
    });
    let first = writer.post(post("bob"), true).unwrap().unwrap();
    // The writer routes the batch, then yields before storing it.
    tokio::task::yield_now().await;
    let flying = writer.in_flight("bob", 0);
    assert_eq!(flying.iter().map(|r| r.id).collect::<Vec<_>>(), vec![1]);
    assert!(writer.in_flight("carol", 0).is_empty());
    assert!(writer.in_flight("bob", 1).is_empty(), "only ids after the cursor");
    assert!(store.mailbox_after("bob", 0, 10).unwrap().is_empty(), "not stored yet");
    // More arrived meanwhile: routed too, and stored with the first.
    let second = writer.post(post("bob"), true).unwrap().unwrap();
    tokio::task::yield_now().await;
    let flying = writer.in_flight("bob", 0);
    assert_eq!(flying.iter().map(|r| r.id).collect::<Vec<_>>(), vec![1, 2]);
    assert!(store.mailbox_after("bob", 0, 10).unwrap().is_empty(), "not stored yet");
    assert_eq!(first.await.unwrap(), Ok(()), "stored");
    assert_eq!(second.await.unwrap(), Ok(()), "stored");
    assert!(writer.in_flight("bob", 0).is_empty());
    let stored = store.mailbox_after("bob", 0, 10).unwrap();
    assert_eq!(stored.iter().map(|r| r.id).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(&stored[0].message.payload[..], b"hi");
    writer.stop().await;
}

/// Storing a group does not hold back the next: while the store waits for its disk,
/// what arrives is routed (in flight) at once, and stored after, in id order.
#[tokio::test(flavor = "current_thread")]
async fn routing_goes_on_while_a_group_is_stored() {
    let (_dir, store, writer) = start(|l| l);
    store.stall_writes(true);
    let first = writer.post(post("bob"), true).unwrap().unwrap();
    until(|| store.stalled_writes() == 1).await;
    let second = writer.post(post("bob"), true).unwrap().unwrap();
    until(|| writer.in_flight("bob", 0).len() == 2).await;
    let third = writer.post(post("bob"), true).unwrap().unwrap();
    until(|| writer.in_flight("bob", 0).len() == 3).await;
    assert!(
        store.mailbox_after("bob", 0, 10).unwrap().is_empty(),
        "the disk is stalled"
    );
    store.stall_writes(false);
    for r in [first, second, third] {
        assert_eq!(r.await.unwrap(), Ok(()), "stored");
    }
    let stored = store.mailbox_after("bob", 0, 10).unwrap();
    assert_eq!(stored.iter().map(|r| r.id).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(
        store.chunk_starts(),
        vec![1, 2],
        "the first alone, then what arrived meanwhile"
    );
    until(|| writer.in_flight("bob", 0).is_empty()).await;
    writer.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn acknowledged_cursors_are_read_at_once_and_written_behind() {
    let (_dir, store, writer) = start(|l| l);
    writer.acked("bob", "phone", 5);
    writer.acked("bob", "phone", 9);
    writer.acked("bob", "phone", 7);
    writer.acked("bob", "laptop", 3);
    assert_eq!(writer.cursor("bob", "phone").unwrap(), Some(9), "never back");
    assert_eq!(store.cursor("bob", "phone").unwrap(), None, "not written yet");
    // No message needed: the first acknowledgement woke the writer.
    // Written on the blocking pool, one device after the other.
    until(|| writer.cursors.lock().unwrap().is_empty()).await;
    assert_eq!(store.cursor("bob", "phone").unwrap(), Some(9));
    assert_eq!(
        store.cursor("bob", "laptop").unwrap(),
        Some(3),
        "written entries leave the map"
    );
    // Acknowledged again after the writer looked: told again, written again.
    writer.acked("bob", "phone", 12);
    until(|| store.cursor("bob", "phone").unwrap() == Some(12)).await;
    assert_eq!(writer.cursor("bob", "phone").unwrap(), Some(12));
    writer.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_group_is_stored_at_its_bounds() {
    let (_dir, store, writer) = start(|l| WriterLimits { batch_max: 2, ..l });
    let receipts: Vec<_> = (0..3)
        .map(|_| writer.post(post("bob"), true).unwrap().unwrap())
        .collect();
    // Two routed and full: stored together, in one write; the third in its own.
    for r in receipts {
        assert_eq!(r.await.unwrap(), Ok(()));
    }
    assert_eq!(store.mailbox_after("bob", 0, 10).unwrap().len(), 3);
    assert_eq!(store.chunk_starts(), vec![1, 3], "one write for ids 1-2, one for 3");
    writer.stop().await;
}

#[tokio::test]
async fn a_failed_writer_is_reported_by_its_supervisor() {
    let (_dir, _store, writer) = start(|l| l);
    let failed = writer.failed();
    tokio::pin!(failed);
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(50), failed.as_mut())
            .await
            .is_err(),
        "a running writer has not failed"
    );
    writer.tx.send(Op::Panic).await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), failed)
        .await
        .expect("the failure is reported");
    assert_eq!(
        writer.post(post("bob"), true).err(),
        Some(NotStored::Stopped),
        "nothing is accepted once the writer is gone"
    );
}
