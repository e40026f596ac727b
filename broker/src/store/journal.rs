//! The journal's record format: how a chunk of [`NewMessage`]s is written.
//!
//! Most messages have one of two shapes, whose mailboxes and conversation follow from
//! the sender and one name: a direct message (the recipient gets it under
//! `dm/{from}`, the sender's other devices under `sent/dm/{to}`) and a group message
//! (every member under `group/{group}/{from}`). Those are written as their shape and
//! that name, not as the list of mailboxes, which for a DM was a third of its record
//! and for a group of 100 most of it: sled's cost per message grows with the bytes
//! written. Any other message (broker events) is written in full.
//!
//! Chunk format 3 (since schema 3) starts with a zero byte, which a format 2 chunk
//! (a varint element count, never zero) cannot: both are read, so journals written
//! before need no migration.

use std::sync::Arc;

use bincode::Options;
use serde::{Deserialize, Serialize};

use super::messages::{MailboxEntry, NewMessage, StoredMessage};
use super::StoreError;

/// First bytes of a format 3 chunk.
const FORMAT_3: [u8; 2] = [0, 3];

/// The conversation of a DM between two users (order-independent).
pub fn dm_conversation(a: &str, b: &str) -> String {
    let (first, second) = if a <= b { (a, b) } else { (b, a) };
    ["dm:", first, ":", second].concat()
}

/// `conversation == dm_conversation(a, b)`, without building it.
fn is_dm_conversation(conversation: &str, a: &str, b: &str) -> bool {
    let (first, second) = if a <= b { (a, b) } else { (b, a) };
    conversation
        .strip_prefix("dm:")
        .and_then(|c| c.strip_prefix(first))
        .and_then(|c| c.strip_prefix(':'))
        == Some(second)
}

/// The conversation of a group.
pub fn group_conversation(group: &str) -> String {
    ["group:", group].concat()
}

/// Where a DM from `from` arrives in the recipient's mailbox.
pub fn dm_suffix(from: &str) -> String {
    ["dm/", from].concat()
}

/// Where a DM to `to` arrives in the sender's own mailbox (their other devices).
pub fn sent_dm_suffix(to: &str) -> String {
    ["sent/dm/", to].concat()
}

/// Where a group message from `from` arrives in each member's mailbox.
pub fn group_suffix(group: &str, from: &str) -> String {
    ["group/", group, "/", from].concat()
}

/// How a record says where its message goes (encoding side: borrowed).
#[derive(Serialize)]
enum RouteRef<'a> {
    Direct {
        to: &'a str,
        qos: u8,
    },
    Group {
        group: &'a str,
        members: Vec<&'a str>,
        qos: u8,
    },
    Explicit {
        conversation: &'a Option<String>,
        mailboxes: &'a [(String, MailboxEntry)],
    },
}

/// The same, decoding side (variants in the same order: same encoding).
#[derive(Deserialize)]
enum Route {
    Direct {
        to: String,
        qos: u8,
    },
    Group {
        group: String,
        members: Vec<String>,
        qos: u8,
    },
    Explicit {
        conversation: Option<String>,
        mailboxes: Vec<(String, MailboxEntry)>,
    },
}

#[derive(Serialize)]
struct RecordRef<'a> {
    id: u64,
    message: &'a StoredMessage,
    route: RouteRef<'a>,
}

#[derive(Deserialize)]
struct Record {
    id: u64,
    message: StoredMessage,
    route: Route,
}

fn opts() -> impl Options {
    bincode::DefaultOptions::new()
}

fn corrupt(e: impl ToString) -> StoreError {
    StoreError::Corrupt {
        tree: "journal",
        reason: e.to_string(),
    }
}

/// The shape of `m`, recognized from its mailboxes (without allocating).
fn route_of(m: &NewMessage) -> RouteRef<'_> {
    let from = m.message.from.as_str();
    let explicit = RouteRef::Explicit {
        conversation: &m.conversation,
        mailboxes: &m.mailboxes,
    };
    let Some(conversation) = m.conversation.as_deref() else {
        return explicit;
    };
    let Some(((first, entry), rest)) = m.mailboxes.split_first() else {
        return explicit;
    };
    let qos = entry.qos;
    // A DM: the recipient, then (unless writing to oneself) the sender's copy.
    if entry.suffix.strip_prefix("dm/") == Some(from) {
        let to = first.as_str();
        let copy_ok = match rest {
            [] => to == from,
            [(user, e)] => to != from && user == from && e.qos == qos && e.suffix.strip_prefix("sent/dm/") == Some(to),
            _ => false,
        };
        if copy_ok && is_dm_conversation(conversation, from, to) {
            return RouteRef::Direct { to, qos };
        }
        return explicit;
    }
    // A group message: every member, the same suffix.
    if let Some(group) = conversation.strip_prefix("group:") {
        let suffix_ok = |e: &MailboxEntry| {
            e.qos == qos
                && e.suffix
                    .strip_prefix("group/")
                    .and_then(|s| s.strip_prefix(group))
                    .and_then(|s| s.strip_prefix('/'))
                    == Some(from)
        };
        if m.mailboxes.iter().all(|(_, e)| suffix_ok(e)) {
            let members = m.mailboxes.iter().map(|(u, _)| u.as_str()).collect();
            return RouteRef::Group { group, members, qos };
        }
    }
    explicit
}

/// A record ready to be written, with about what it adds to a chunk.
pub struct Planned<'a> {
    record: RecordRef<'a>,
    /// Varint lengths and integers counted generously: chunks are bounded by size
    /// without encoding twice.
    pub len: usize,
}

impl Planned<'_> {
    pub fn id(&self) -> u64 {
        self.record.id
    }
}

/// Recognizes `m`'s shape and estimates its size.
pub fn plan(m: &NewMessage) -> Planned<'_> {
    let s = &m.message;
    let props: usize = s.user_properties.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let route = route_of(m);
    let route_len = match &route {
        RouteRef::Direct { to, .. } => to.len() + 4,
        RouteRef::Group { group, members, .. } => group.len() + members.iter().map(|u| u.len() + 1).sum::<usize>() + 8,
        RouteRef::Explicit {
            conversation,
            mailboxes,
        } => {
            conversation.as_ref().map_or(1, |c| c.len() + 2)
                + mailboxes
                    .iter()
                    .map(|(u, e)| u.len() + e.suffix.len() + 4)
                    .sum::<usize>()
                + 4
        }
    };
    let content_type = s.content_type.as_ref().map_or(1, |c| c.len() + 2);
    Planned {
        record: RecordRef {
            id: m.id,
            message: &m.message,
            route,
        },
        len: 24 + s.from.len() + s.payload.len() + props + content_type + route_len,
    }
}

/// Encodes a chunk of records (format 3).
///
/// # Errors
/// [`StoreError::Corrupt`] if serialization fails (it does not for these types).
pub fn encode_chunk(chunk: &[Planned<'_>]) -> Result<Vec<u8>, StoreError> {
    let records: Vec<&RecordRef<'_>> = chunk.iter().map(|p| &p.record).collect();
    let mut out = FORMAT_3.to_vec();
    opts().serialize_into(&mut out, &records).map_err(corrupt)?;
    Ok(out)
}

/// Decodes a chunk written in format 3, or in format 2 (schema 2).
///
/// # Errors
/// [`StoreError::Corrupt`] for bytes that are neither.
pub fn decode_chunk(bytes: &[u8]) -> Result<Vec<NewMessage>, StoreError> {
    let Some(body) = bytes.strip_prefix(&FORMAT_3) else {
        return opts().deserialize(bytes).map_err(corrupt);
    };
    let records: Vec<Record> = opts().deserialize(body).map_err(corrupt)?;
    Ok(records.into_iter().map(expand).collect())
}

fn expand(r: Record) -> NewMessage {
    let from = r.message.from.as_str();
    let (conversation, mailboxes) = match r.route {
        Route::Direct { to, qos } => {
            let mut mailboxes = vec![(
                to.clone(),
                MailboxEntry {
                    suffix: dm_suffix(from),
                    qos,
                },
            )];
            if to != from {
                mailboxes.push((
                    from.to_owned(),
                    MailboxEntry {
                        suffix: sent_dm_suffix(&to),
                        qos,
                    },
                ));
            }
            (Some(dm_conversation(from, &to)), mailboxes)
        }
        Route::Group { group, members, qos } => {
            let suffix = group_suffix(&group, from);
            let mailboxes = members
                .into_iter()
                .map(|u| {
                    let entry = MailboxEntry {
                        suffix: suffix.clone(),
                        qos,
                    };
                    (u, entry)
                })
                .collect();
            (Some(group_conversation(&group)), mailboxes)
        }
        Route::Explicit {
            conversation,
            mailboxes,
        } => (conversation, mailboxes),
    };
    NewMessage {
        id: r.id,
        message: Arc::new(r.message),
        conversation,
        mailboxes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn message(from: &str) -> Arc<StoredMessage> {
        Arc::new(StoredMessage {
            from: from.into(),
            ts: 1_700_000_000_000,
            payload: Bytes::from_static(b"hello"),
            user_properties: vec![("k".into(), "v".into())],
            content_type: None,
        })
    }

    fn entry(suffix: &str, qos: u8) -> MailboxEntry {
        MailboxEntry {
            suffix: suffix.into(),
            qos,
        }
    }

    fn record(from: &str, conversation: Option<&str>, mailboxes: &[(&str, &str, u8)]) -> NewMessage {
        NewMessage {
            id: 7,
            message: message(from),
            conversation: conversation.map(str::to_owned),
            mailboxes: mailboxes
                .iter()
                .map(|(u, s, q)| ((*u).to_owned(), entry(s, *q)))
                .collect(),
        }
    }

    fn shape(m: &NewMessage) -> &'static str {
        match route_of(m) {
            RouteRef::Direct { .. } => "direct",
            RouteRef::Group { .. } => "group",
            RouteRef::Explicit { .. } => "explicit",
        }
    }

    #[test]
    fn every_shape_round_trips_and_is_recognized() {
        let cases = [
            (
                "direct",
                record(
                    "alice",
                    Some("dm:alice:bob"),
                    &[("bob", "dm/alice", 1), ("alice", "sent/dm/bob", 1)],
                ),
            ),
            (
                "direct",
                record(
                    "bob",
                    Some("dm:alice:bob"),
                    &[("alice", "dm/bob", 2), ("bob", "sent/dm/alice", 2)],
                ),
            ),
            (
                "direct",
                record("alice", Some("dm:alice:alice"), &[("alice", "dm/alice", 0)]),
            ),
            (
                "group",
                record(
                    "bob",
                    Some("group:g1"),
                    &[
                        ("alice", "group/g1/bob", 1),
                        ("bob", "group/g1/bob", 1),
                        ("carol", "group/g1/bob", 1),
                    ],
                ),
            ),
            ("explicit", record("bob", Some("group:g1"), &[])),
            // Anything not exactly a shape is kept as it is.
            (
                "explicit",
                record("natter", None, &[("alice", "event/friend_request", 1)]),
            ),
            (
                "explicit",
                record(
                    "alice",
                    Some("dm:alice:bob"),
                    &[("bob", "dm/alice", 1), ("alice", "sent/dm/bob", 2)],
                ),
            ),
            (
                "explicit",
                record("alice", Some("dm:alice:bob"), &[("bob", "dm/alice", 1)]),
            ),
            (
                "explicit",
                record(
                    "alice",
                    Some("dm:alice:carol"),
                    &[("bob", "dm/alice", 1), ("alice", "sent/dm/bob", 1)],
                ),
            ),
            (
                "explicit",
                record(
                    "alice",
                    Some("dm:alice:bob"),
                    &[("bob", "dm/alice", 1), ("carol", "sent/dm/bob", 1)],
                ),
            ),
            (
                "explicit",
                record(
                    "alice",
                    Some("dm:alice:alice"),
                    &[("alice", "dm/alice", 1), ("alice", "sent/dm/alice", 1)],
                ),
            ),
            (
                "explicit",
                record(
                    "bob",
                    Some("group:g1"),
                    &[("alice", "group/g1/bob", 1), ("carol", "group/g2/bob", 1)],
                ),
            ),
            (
                "explicit",
                record(
                    "bob",
                    Some("group:g1"),
                    &[("alice", "group/g1/bob", 1), ("carol", "group/g1/bob", 2)],
                ),
            ),
            (
                "explicit",
                record("bob", Some("group:g1"), &[("alice", "group/g1/bobby", 1)]),
            ),
            (
                "explicit",
                record("bob", Some("group:g"), &[("alice", "group/g1/bob", 1)]),
            ),
            ("explicit", record("bob", None, &[("alice", "dm/bob", 1)])),
        ];
        for (want, m) in &cases {
            assert_eq!(shape(m), *want, "{m:?}");
        }
        let chunk: Vec<Planned<'_>> = cases.iter().map(|(_, m)| plan(m)).collect();
        let decoded = decode_chunk(&encode_chunk(&chunk).unwrap()).unwrap();
        let originals: Vec<NewMessage> = cases.into_iter().map(|(_, m)| m).collect();
        assert_eq!(decoded, originals);
    }

    #[test]
    fn shapes_are_smaller_than_their_mailbox_lists() {
        let dm = record(
            "alice",
            Some("dm:alice:bob"),
            &[("bob", "dm/alice", 1), ("alice", "sent/dm/bob", 1)],
        );
        let format_2 = opts().serialize(&vec![&dm]).unwrap().len();
        assert!(encode_chunk(&[plan(&dm)]).unwrap().len() + 25 < format_2);
    }

    #[test]
    fn format_2_chunks_still_read_and_garbage_is_an_error() {
        let dm = record(
            "alice",
            Some("dm:alice:bob"),
            &[("bob", "dm/alice", 1), ("alice", "sent/dm/bob", 1)],
        );
        let event = record("natter", None, &[("alice", "event/x", 1)]);
        let format_2 = opts().serialize(&vec![&dm, &event]).unwrap();
        assert_eq!(decode_chunk(&format_2).unwrap(), vec![dm, event]);
        assert!(decode_chunk(&[0, 3, 0xff, 0xff]).is_err());
        assert!(decode_chunk(&[]).is_err());
    }
}
