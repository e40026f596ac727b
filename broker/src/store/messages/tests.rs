use super::encoding::*;
use super::*;
use crate::store::{DataKey, StoreOptions};

fn msg(text: &str, ts: u64) -> StoredMessage {
    StoredMessage {
        from: "alice".into(),
        ts,
        payload: Bytes::copy_from_slice(text.as_bytes()),
        user_properties: vec![],
        content_type: None,
    }
}

/// Message `id` (payload `m{id}`) for `users`' mailboxes, in conversation `conv`.
fn new(id: u64, conv: Option<&str>, users: &[&str], ts: u64) -> NewMessage {
    let mailboxes = users
        .iter()
        .map(|u| {
            let entry = MailboxEntry {
                suffix: "dm/alice".into(),
                qos: 1,
            };
            ((*u).to_owned(), entry)
        })
        .collect();
    NewMessage::from_mailboxes(
        id,
        Arc::new(msg(&format!("m{id}"), ts)),
        conv.map(str::to_owned),
        mailboxes,
    )
}

const WIDE: Retention = Retention {
    max_messages: 1000,
    max_bytes: 1 << 30,
    max_age: u64::MAX,
};

fn ids(v: Vec<Replayed>) -> Vec<u64> {
    v.into_iter().map(|r| r.id).collect()
}

fn hist(v: Vec<(u64, StoredMessage)>) -> Vec<u64> {
    v.into_iter().map(|(i, _)| i).collect()
}

#[test]
fn mailbox_reads_merge_the_index_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let a: Vec<_> = (1..=3).map(|id| new(id, None, &["bob"], 100)).collect();
    assert_eq!(s.append(&a).unwrap(), 3, "three entries wait in memory");
    s.index(WIDE).unwrap();
    s.append(&[new(4, None, &["bob"], 100), new(5, None, &["bob", "bobby"], 100)])
        .unwrap();
    assert_eq!(
        ids(s.mailbox_after("bob", 2, 100).unwrap()),
        vec![3, 4, 5],
        "tree then memory"
    );
    assert_eq!(ids(s.mailbox_after("bob", 0, 2).unwrap()), vec![1, 2], "limit");
    assert_eq!(ids(s.mailbox_after("bob", 4, 100).unwrap()), vec![5], "memory only");
    assert_eq!(ids(s.mailbox_after("bobby", 0, 100).unwrap()), vec![5], "separate");
    let r = &s.mailbox_after("bobby", 0, 1).unwrap()[0];
    assert_eq!(
        (r.entry.suffix.as_str(), &r.message.payload[..]),
        ("dm/alice", &b"m5"[..])
    );
    assert_eq!(s.mailbox_head("bob").unwrap(), (5, 0));
    s.index(WIDE).unwrap();
    assert_eq!(
        ids(s.mailbox_after("bob", 0, 100).unwrap()),
        vec![1, 2, 3, 4, 5],
        "all in the tree"
    );
    assert_eq!(s.append(&[]).unwrap(), 0);
}

#[test]
fn retention_by_count_bytes_and_age_at_index_time() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    for id in 1..=5 {
        s.append(&[new(id, None, &["bob"], 100)]).unwrap();
    }
    let tight = Retention {
        max_messages: 3,
        ..WIDE
    };
    s.index(tight).unwrap();
    assert_eq!(ids(s.mailbox_after("bob", 0, 100).unwrap()), vec![3, 4, 5]);
    assert_eq!(s.mailbox_head("bob").unwrap(), (5, 2), "1-2 dropped");
    s.append(&[new(7, None, &["bob"], 100)]).unwrap();
    let tighter = Retention {
        max_messages: 2,
        ..WIDE
    };
    s.index(tighter).unwrap();
    assert_eq!(
        ids(s.mailbox_after("bob", 0, 100).unwrap()),
        vec![5, 7],
        "a chunk cut in two"
    );
    s.append(&[new(9, None, &["bob"], 200)]).unwrap();
    s.index(Retention { max_age: 50, ..WIDE }).unwrap();
    assert_eq!(
        ids(s.mailbox_after("bob", 0, 100).unwrap()),
        vec![9],
        "older than 50 ms dropped"
    );
    assert_eq!(s.mailbox_head("bob").unwrap(), (9, 7));
    s.append(&[new(10, None, &["bob"], 200), new(11, None, &["bob"], 200)])
        .unwrap();
    s.index(Retention { max_bytes: 1, ..WIDE }).unwrap();
    assert_eq!(
        ids(s.mailbox_after("bob", 0, 100).unwrap()),
        vec![11],
        "the newest always stays"
    );
    assert_eq!(s.history("none", None, None, 10).unwrap(), vec![]);
    // Gone from the only mailbox it was in, a message leaves the journal too.
    assert_eq!(s.message(1).unwrap(), None);
    assert_eq!(&s.message(11).unwrap().unwrap().payload[..], b"m11");
}

#[test]
fn large_mailboxes_are_trimmed_in_steps() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let r = Retention {
        max_messages: 160,
        ..WIDE
    };
    for id in 1..=161 {
        s.append(&[new(id, None, &["bob"], 100)]).unwrap();
        s.index(r).unwrap();
    }
    let meta = s.mailbox_meta_in(&mut s.index_state(), "bob").unwrap();
    assert_eq!((meta.count, meta.dropped_up_to), (150, 11), "161 > 160: cut to 150");
    s.append(&[new(162, None, &["bob"], 100)]).unwrap();
    s.index(r).unwrap();
    let meta = s.mailbox_meta_in(&mut s.index_state(), "bob").unwrap();
    assert_eq!(meta.count, 151, "no trimming until over the bound again");
}

#[test]
fn a_chunk_partly_dropped_stays_and_its_dropped_entries_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let r = Retention {
        max_messages: 16,
        ..WIDE
    };
    {
        let s = Store::open(dir.path()).unwrap();
        // One index chunk of 20: over 16, trimmed to 15 inside that chunk.
        let batch: Vec<_> = (1..=20).map(|id| new(id, None, &["bob"], 100)).collect();
        s.append(&batch).unwrap();
        s.index(r).unwrap();
        let (key, slots) = s.mailbox_chunk_at("bob", 20).unwrap().unwrap();
        assert_eq!((keys::id_of(&key), slots.len()), (Some(1), 20), "not rewritten");
        let meta = s.mailbox_meta_in(&mut s.index_state(), "bob").unwrap();
        assert_eq!((meta.count, meta.dropped_up_to, meta.oldest_id), (15, 5, Some(6)));
        assert_eq!(
            ids(s.mailbox_after("bob", 0, 100).unwrap()),
            (6..=20).collect::<Vec<_>>()
        );
        assert_eq!(
            ids(s.mailbox_after("bob", 3, 100).unwrap())[0],
            6,
            "a cursor before the drop"
        );
        assert_eq!(ids(s.mailbox_after("bob", 7, 100).unwrap())[0], 8);
        // Over again: the old chunk goes once all of it is dropped.
        let batch: Vec<_> = (21..=40).map(|id| new(id, None, &["bob"], 100)).collect();
        s.append(&batch).unwrap();
        s.index(r).unwrap();
        assert!(s.mailbox.get(keys::with_id("bob", 1)).unwrap().is_none(), "removed");
        assert_eq!(
            ids(s.mailbox_after("bob", 0, 100).unwrap()),
            (26..=40).collect::<Vec<_>>()
        );
    }
    let s = Store::open(dir.path()).unwrap();
    let meta = s.mailbox_meta_in(&mut s.index_state(), "bob").unwrap();
    assert_eq!((meta.count, meta.dropped_up_to), (15, 25), "the same after a restart");
    assert_eq!(
        ids(s.mailbox_after("bob", 0, 100).unwrap()),
        (26..=40).collect::<Vec<_>>()
    );
}

#[test]
fn a_crash_before_the_index_is_written_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path()).unwrap();
        for id in 1..=100 {
            s.append(&[new(id, Some("dm:alice:bob"), &["bob"], 100)]).unwrap();
            if id == 64 {
                s.index(WIDE).unwrap();
            }
        }
        // Dropped without writing the index of 65..=100.
    }
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(
        s.next_message_id(),
        1 + ID_BLOCK,
        "ids continue after the journal and the block reserved at the first open"
    );
    assert_eq!(s.mailbox_after("bob", 0, 1000).unwrap().len(), 100);
    assert_eq!(
        hist(s.history("dm:alice:bob", None, None, 3).unwrap()),
        vec![98, 99, 100]
    );
    assert_eq!(s.mailbox_head("bob").unwrap(), (100, 0));
    let meta = s.mailbox_meta_in(&mut s.index_state(), "bob").unwrap();
    assert_eq!(
        (meta.count, meta.bytes, meta.oldest_id),
        (100, 9 * 2 + 90 * 3 + 4, Some(1))
    );
    s.append(&[new(101, None, &["bob"], 100)]).unwrap();
    s.index(Retention {
        max_messages: 100,
        ..WIDE
    })
    .unwrap();
    let meta = s.mailbox_meta_in(&mut s.index_state(), "bob").unwrap();
    assert_eq!((meta.count, meta.dropped_up_to, meta.oldest_id), (94, 7, Some(8)));
}

#[test]
fn messages_are_chunked_by_count_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let mut batch: Vec<_> = (1..=600).map(|id| new(id, None, &[], 1)).collect();
    Arc::make_mut(&mut batch[50].message).payload = vec![0; CHUNK_BYTES + 1].into();
    s.append(&batch).unwrap();
    // 1-50, the oversized 51, then 256 per chunk by count: 52-307, 308-563, 564-600.
    assert_eq!(s.messages.len(), 5);
    let got = s.messages(&[1, 32, 33, 51, 100, 601]).unwrap();
    let lens: Vec<_> = got.iter().map(|m| m.as_ref().map(|m| m.payload.len())).collect();
    assert_eq!(
        lens,
        vec![Some(2), Some(3), Some(3), Some(CHUNK_BYTES + 1), Some(4), None]
    );
    assert_eq!(&s.message(42).unwrap().unwrap().payload[..], b"m42");
    drop(s);
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.next_message_id(), 1 + ID_BLOCK, "past the reserved block");
}

#[test]
fn an_id_handed_out_is_never_handed_out_again_after_a_restart() {
    assert_eq!(first_id(0, 0), (1, 1 + ID_BLOCK), "a new store");
    assert_eq!(
        first_id(500, 1 + ID_BLOCK),
        (1 + ID_BLOCK, 1 + 2 * ID_BLOCK),
        "ids up to the reservation may be out"
    );
    assert_eq!(
        first_id(3 * ID_BLOCK, ID_BLOCK),
        (3 * ID_BLOCK + 1, 4 * ID_BLOCK + 1),
        "journal ahead (an old store)"
    );
    let dir = tempfile::tempdir().unwrap();
    let handed = {
        let s = Store::open(dir.path()).unwrap();
        let ids: Vec<u64> = (0..10).map(|_| s.next_message_id()).collect();
        s.append(&[new(ids[0], None, &[], 1)]).unwrap();
        ids
    };
    // Killed with ids 2..=10 handed out (delivered, maybe) but never stored.
    let s = Store::open(dir.path()).unwrap();
    assert!(s.next_message_id() > *handed.last().unwrap());
}

#[test]
fn counters_written_late_are_right_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let small = Retention {
        max_messages: 16,
        ..WIDE
    };
    {
        let s = Store::open(dir.path()).unwrap();
        let batch: Vec<_> = (1..=10).map(|id| new(id, None, &["bob"], 1)).collect();
        s.append(&batch).unwrap();
        s.index(small).unwrap();
        assert!(
            s.mailbox_meta.get("bob").unwrap().is_none(),
            "not written yet: it lags little"
        );
    }
    {
        let s = Store::open(dir.path()).unwrap();
        let meta = s.mailbox_meta_in(&mut s.index_state(), "bob").unwrap();
        assert_eq!((meta.count, meta.last_id), (10, 10), "recounted from the index");
        // Over the bound: retention trims, and the counters are written at once.
        let batch: Vec<_> = (11..=20).map(|id| new(id, None, &["bob"], 1)).collect();
        s.append(&batch).unwrap();
        s.index(small).unwrap();
        assert!(s.mailbox_meta.get("bob").unwrap().is_some());
    }
    let s = Store::open(dir.path()).unwrap();
    let meta = s.mailbox_meta_in(&mut s.index_state(), "bob").unwrap();
    assert_eq!((meta.count, meta.last_id, meta.dropped_up_to), (15, 20, 5));
    assert_eq!(s.mailbox_after("bob", 0, 100).unwrap().len(), 15);
}

#[test]
fn a_schema_2_journal_is_read_after_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let batch: Vec<_> = (1..=5).map(|id| new(id, Some("dm:alice:bob"), &["bob"], 1)).collect();
    {
        let s = Store::open(dir.path()).unwrap();
        // A chunk as schema 2 wrote it (not yet indexed), and that version.
        s.messages
            .insert(1u64.to_be_bytes(), journal::encode_format_2(&batch))
            .unwrap();
        s.meta.insert("schema_version", &2u32.to_be_bytes()).unwrap();
    }
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(
        s.next_message_id(),
        1 + ID_BLOCK,
        "after the journal and the first open's block"
    );
    let got = s.mailbox_after("bob", 0, 10).unwrap();
    assert_eq!(got.iter().map(|r| r.id).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    assert_eq!(&got[4].message.payload[..], b"m5");
    let v = s.meta.get("schema_version").unwrap().unwrap();
    assert_eq!(v.as_ref(), &3u32.to_be_bytes());
}

#[test]
fn payload_encoding_is_that_of_a_byte_vector() {
    // Journals written when the payload was a Vec<u8> read back unchanged.
    #[derive(Serialize)]
    struct Before {
        from: String,
        ts: u64,
        payload: Vec<u8>,
        user_properties: Vec<(String, String)>,
        content_type: Option<String>,
    }
    let before = Before {
        from: "alice".into(),
        ts: 1_700_000_000_000,
        payload: (0..=255).collect(),
        user_properties: vec![("k".into(), "v".into())],
        content_type: Some("text/plain".into()),
    };
    let bytes = encode("journal", &before).unwrap();
    let now: StoredMessage = decode("journal", &bytes).unwrap();
    assert_eq!(&now.payload[..], &before.payload[..]);
    assert_eq!(encode("journal", &now).unwrap(), bytes);
}

#[test]
fn chunks_stay_near_their_byte_bound() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let batch: Vec<_> = (1..=500)
        .map(|id| {
            let mut m = new(id, Some("dm:alice:bob"), &["alice", "bob"], 1_700_000_000_000);
            Arc::make_mut(&mut m.message).payload = vec![7; 100].into();
            Arc::make_mut(&mut m.message).user_properties = vec![("k".into(), "v".into())];
            m
        })
        .collect();
    for m in &batch {
        let estimate = journal::plan(m).len;
        let exact = journal::encode_chunk(&[journal::plan(m)]).unwrap().len();
        assert!(estimate >= exact, "estimate {estimate} < {exact}");
    }
    s.append(&batch).unwrap();
    for record in s.messages.iter() {
        let (_, v) = record.unwrap();
        assert!(v.len() <= CHUNK_BYTES, "chunk of {} bytes", v.len());
    }
}

#[test]
fn history_pages_across_chunks_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let ab = Some("dm:alice:bob");
    // Index records of 3 and 4 ids; 8-10 still in memory; 11 elsewhere.
    for range in [1..=3, 4..=7] {
        let batch: Vec<_> = range.map(|id| new(id, ab, &["bob"], 1)).collect();
        s.append(&batch).unwrap();
        s.index(WIDE).unwrap();
    }
    let batch: Vec<_> = (8..=10).map(|id| new(id, ab, &["bob"], 1)).collect();
    s.append(&batch).unwrap();
    s.append(&[new(11, Some("dm:alice:carol"), &["carol"], 1)]).unwrap();
    let check = |s: &Store| {
        assert_eq!(
            hist(s.history("dm:alice:bob", None, None, 3).unwrap()),
            vec![8, 9, 10],
            "latest"
        );
        assert_eq!(
            hist(s.history("dm:alice:bob", None, None, 5).unwrap()),
            vec![6, 7, 8, 9, 10]
        );
        assert_eq!(
            hist(s.history("dm:alice:bob", Some(8), None, 3).unwrap()),
            vec![5, 6, 7]
        );
        assert_eq!(hist(s.history("dm:alice:bob", None, Some(8), 5).unwrap()), vec![9, 10]);
        assert_eq!(
            hist(s.history("dm:alice:bob", None, Some(2), 4).unwrap()),
            vec![3, 4, 5, 6]
        );
        assert_eq!(
            hist(s.history("dm:alice:bob", None, Some(5), 10).unwrap()),
            vec![6, 7, 8, 9, 10]
        );
        assert_eq!(
            hist(s.history("dm:alice:bob", Some(5), Some(1), 10).unwrap()),
            vec![2, 3, 4]
        );
        assert_eq!(hist(s.history("dm:alice:carol", None, None, 10).unwrap()), vec![11]);
        assert_eq!(
            &s.history("dm:alice:bob", None, Some(9), 10).unwrap()[0].1.payload[..],
            &b"m10"[..]
        );
    };
    check(&s);
    s.index(WIDE).unwrap();
    check(&s);
    assert_eq!(s.cursor("bob", "phone").unwrap(), None);
    s.advance_cursor("bob", "phone", 7).unwrap();
    s.advance_cursor("bob", "phone", 5).unwrap();
    assert_eq!(s.cursor("bob", "phone").unwrap(), Some(7), "never back");
}

#[test]
fn reads_during_an_index_write_see_every_entry_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let ab = Some("dm:alice:bob");
    let batch: Vec<_> = (1..=4).map(|id| new(id, ab, &["bob"], 1)).collect();
    s.append(&batch).unwrap();
    s.index(WIDE).unwrap();
    s.append(&[new(5, ab, &["bob"], 1), new(6, ab, &["bob"], 1)]).unwrap();
    let all = |s: &Store, upto: u64| {
        let want: Vec<u64> = (1..=upto).collect();
        assert_eq!(ids(s.mailbox_after("bob", 0, 100).unwrap()), want);
        assert_eq!(hist(s.history("dm:alice:bob", None, None, 100).unwrap()), want);
        assert_eq!(hist(s.history("dm:alice:bob", None, Some(0), 100).unwrap()), want);
        assert_eq!(s.mailbox_head("bob").unwrap(), (upto, 0));
    };
    // An index write has taken 5 and 6 (not in the trees yet); 7 arrives meanwhile.
    let (work, through) = s.begin_index().unwrap();
    assert_eq!((work.entries, through), (4, 6));
    s.append(&[new(7, ab, &["bob"], 1)]).unwrap();
    all(&s, 7);
    // Written, still listed as being written: each entry once.
    assert!(s.write_entries(&work).is_ok());
    all(&s, 7);
    // A mailbox first seen now is counted from the tree, the write and memory.
    s.index_state().meta.remove("bob");
    all(&s, 7);
    s.index_state().writing = Arc::default();
    all(&s, 7);
    s.index(WIDE).unwrap();
    all(&s, 7);
}

#[test]
fn index_unless_busy_does_not_wait_for_a_write_under_way() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    s.append(&[new(1, None, &["bob"], 1)]).unwrap();
    {
        let _under_way = s.indexing.lock().unwrap();
        assert!(!s.index_unless_busy(WIDE).unwrap(), "busy: returns at once");
        assert_eq!(s.unindexed(), 1);
    }
    assert!(s.index_unless_busy(WIDE).unwrap());
    assert_eq!(s.unindexed(), 0);
}

#[test]
fn entries_left_by_a_failed_index_write_are_written_by_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let ab = Some("dm:alice:bob");
    let batch: Vec<_> = (1..=3).map(|id| new(id, ab, &["bob"], 1)).collect();
    s.append(&batch).unwrap();
    // As a failed write leaves them: taken, not written.
    let (work, _) = s.begin_index().unwrap();
    assert_eq!(work.entries, 6);
    s.append(&[new(4, ab, &["bob"], 1)]).unwrap();
    assert_eq!(ids(s.mailbox_after("bob", 0, 100).unwrap()), vec![1, 2, 3, 4]);
    s.index(WIDE).unwrap();
    assert_eq!(s.index_state().writing.entries, 0);
    assert_eq!(s.unindexed(), 0);
    drop(s);
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.unindexed(), 0, "nothing to read back from the journal");
    assert_eq!(ids(s.mailbox_after("bob", 0, 100).unwrap()), vec![1, 2, 3, 4]);
    assert_eq!(
        hist(s.history("dm:alice:bob", None, None, 100).unwrap()),
        vec![1, 2, 3, 4]
    );
}

#[test]
fn appends_during_index_writes_keep_the_counters_right() {
    let dir = tempfile::tempdir().unwrap();
    let small = Retention {
        max_messages: 100,
        ..WIDE
    };
    {
        let s = Store::open(dir.path()).unwrap();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let indexer = {
            let (s, done) = (s.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    s.index(small).unwrap();
                }
            })
        };
        for first in (1..=3000).step_by(10) {
            let batch: Vec<_> = (first..first + 10).map(|id| new(id, None, &["bob"], 1)).collect();
            s.append(&batch).unwrap();
            let got = ids(s.mailbox_after("bob", 0, usize::MAX).unwrap());
            assert!(got.windows(2).all(|w| w[0] < w[1]), "in order, once each");
            assert_eq!(got.last(), Some(&(first + 9)), "nothing missing at the end");
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        indexer.join().unwrap();
        s.index(small).unwrap();
        let meta = s.mailbox_meta_in(&mut s.index_state(), "bob").unwrap();
        let held = s.mailbox_after("bob", 0, usize::MAX).unwrap();
        assert_eq!(meta.count, held.len() as u64);
        assert_eq!(
            meta.bytes,
            held.iter().map(|r| r.message.payload.len() as u64).sum::<u64>()
        );
        assert_eq!(meta.oldest_id, held.first().map(|r| r.id));
        assert_eq!(meta.dropped_up_to + 1, held[0].id, "dropped exactly what is gone");
        assert!(meta.count <= 100 && meta.last_id == 3000);
    }
    let s = Store::open(dir.path()).unwrap();
    let meta = s.mailbox_meta_in(&mut s.index_state(), "bob").unwrap();
    let held = s.mailbox_after("bob", 0, usize::MAX).unwrap();
    assert_eq!(
        (meta.count, meta.last_id),
        (held.len() as u64, 3000),
        "the same after a restart"
    );
}

#[test]
fn index_encodings_round_trip() {
    let slots = vec![
        Slot {
            id: 5,
            ts: 1_700_000_000_000,
            bytes: 3,
        },
        Slot {
            id: 9,
            ts: 1_699_999_999_990,
            bytes: 70_000,
        },
        Slot {
            id: u64::MAX,
            ts: 0,
            bytes: 0,
        },
    ];
    assert_eq!(decode_slots(&encode_slots(&slots).unwrap()).unwrap(), slots);
    let ids = vec![1, 2, 300, u64::MAX];
    assert_eq!(decode_ids(&encode_ids(&ids).unwrap()).unwrap(), ids);
    assert!(decode_slots(b"\xff\xff").is_err(), "garbage is an error, not a panic");
}

fn keyed(key: &DataKey) -> StoreOptions {
    StoreOptions {
        key: Some(key.clone()),
        ..StoreOptions::default()
    }
}

/// Every file under `dir`, read whole.
fn raw_files(dir: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            all.extend(raw_files(&p));
        } else {
            all.extend(std::fs::read(&p).unwrap());
        }
    }
    all
}

#[test]
fn message_bodies_are_sealed_on_disk_and_open_only_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = DataKey::generate();
    let mut m = new(1, Some("dm:alice:bob"), &["bob"], 1);
    Arc::make_mut(&mut m.message).payload = bytes::Bytes::from_static(b"a very secret sentence");
    {
        let s = Store::open_with(dir.path(), keyed(&key)).unwrap();
        s.append(&[m]).unwrap();
        s.flush().unwrap();
        assert_eq!(&s.message(1).unwrap().unwrap().payload[..], b"a very secret sentence");
    }
    let raw = raw_files(dir.path());
    assert!(
        !raw.windows(22).any(|w| w == b"a very secret sentence"),
        "the body is nowhere in the clear"
    );
    assert!(matches!(Store::open(dir.path()), Err(StoreError::KeyMissing)));
    assert!(matches!(
        Store::open_with(dir.path(), keyed(&DataKey::generate())),
        Err(StoreError::WrongKey)
    ));
    let s = Store::open_with(dir.path(), keyed(&key)).unwrap();
    assert_eq!(&s.message(1).unwrap().unwrap().payload[..], b"a very secret sentence");
}

#[test]
fn a_plain_store_is_sealed_when_first_opened_with_a_key_and_rekey_moves_it_to_another() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path()).unwrap();
        s.append(&[new(1, Some("dm:alice:bob"), &["bob"], 1)]).unwrap();
        s.flush().unwrap();
    }
    let (k1, k2) = (DataKey::generate(), DataKey::generate());
    {
        let s = Store::open_with(dir.path(), keyed(&k1)).unwrap();
        assert_eq!(
            &s.message(1).unwrap().unwrap().payload[..],
            b"m1",
            "sealed, and read back"
        );
        assert!(
            s.messages.tree.iter().all(|kv| kv.unwrap().1[0] == 1),
            "every chunk sealed"
        );
        assert!(s.rekey(&k2).unwrap() >= 1);
    }
    assert!(matches!(
        Store::open_with(dir.path(), keyed(&k1)),
        Err(StoreError::WrongKey)
    ));
    let s = Store::open_with(dir.path(), keyed(&k2)).unwrap();
    assert_eq!(&s.message(1).unwrap().unwrap().payload[..], b"m1");
    assert_eq!(s.history("dm:alice:bob", None, None, 10).unwrap().len(), 1);
}

#[test]
fn the_journal_is_trimmed_as_every_mailbox_drops_its_messages() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let small = Retention {
        max_messages: 32,
        max_bytes: 1 << 30,
        max_age: u64::MAX,
    };
    // Message 1 also goes to carol, who keeps it: it holds the journal's start.
    s.append(&[new(1, Some("dm:alice:bob"), &["bob", "carol"], 1)]).unwrap();
    for id in 2..=2000 {
        s.append(&[new(id, Some("dm:alice:bob"), &["bob"], id)]).unwrap();
        if id % 50 == 0 {
            s.index(small).unwrap();
        }
    }
    s.index(small).unwrap();
    assert_eq!(
        s.messages.len(),
        2000,
        "nothing trimmed while carol still has message 1"
    );
    // carol's mailbox drops it too (her own traffic pushes it out).
    // Each index write trims a bounded number of chunks: traffic goes on meanwhile.
    for id in 2001..=2100 {
        s.append(&[new(id, None, &["carol"], id)]).unwrap();
        s.index(small).unwrap();
    }
    // Trimmed from its start up to bob's oldest kept message (~1969): carol's dropped
    // ones after it stay until bob's go too.
    let left = s.messages.len();
    assert!(left <= 140, "the journal is bounded by retention: {left} chunks left");
    // What is still in a mailbox is still readable; history keeps what is left.
    let bob = s.mailbox_after("bob", 0, 1000).unwrap();
    assert!(!bob.is_empty() && bob.len() <= 32);
    assert!(bob.iter().all(|r| s.message(r.id).unwrap().is_some()));
    let h = s.history("dm:alice:bob", None, None, 1000).unwrap();
    assert!(!h.is_empty() && h.len() <= 80, "{}", h.len());
    // The history index goes with the journal: only its chunks that still hold a
    // message in the journal are left (one, here).
    assert!(s.history.len() <= 2, "{} history chunks left", s.history.len());
    // And after a restart.
    drop(s);
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.mailbox_after("bob", 0, 1000).unwrap().len(), bob.len());
}
