//! The journal's record format: how a chunk of [`NewMessage`]s is written.
//!
//! A DM or group message is written as its shape and one name (see
//! [`super::route`]), not as the list of mailboxes, which for a DM was a third of its
//! record and for a group of 100 most of it: sled's cost per message grows with the
//! bytes written. Any other message (broker events) is written in full.
//!
//! Chunk format 3 (since schema 3) starts with a zero byte, which a format 2 chunk
//! (a varint element count, never zero) cannot: both are read, so journals written
//! before need no migration.

use std::sync::Arc;

use bincode::Options;
use serde::{Deserialize, Serialize};

use super::messages::{MailboxEntry, NewMessage, StoredMessage};
use super::route::Route;
use super::social::Role;
use super::StoreError;

/// First bytes of a format 3 chunk.
const FORMAT_3: [u8; 2] = [0, 3];

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
enum RouteRecord {
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
    route: RouteRecord,
}

/// A record of format 2: the mailboxes spelled out.
#[derive(Serialize, Deserialize)]
struct RecordV2 {
    id: u64,
    message: StoredMessage,
    conversation: Option<String>,
    mailboxes: Vec<(String, MailboxEntry)>,
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

/// How `m`'s route is written.
fn route_of(m: &NewMessage) -> RouteRef<'_> {
    match &m.route {
        Route::Direct { to, qos } => RouteRef::Direct { to, qos: *qos },
        Route::Group { group, members, qos } => RouteRef::Group {
            group,
            members: members.iter().map(|(u, _)| u.as_str()).collect(),
            qos: *qos,
        },
        Route::Explicit {
            conversation,
            mailboxes,
        } => RouteRef::Explicit {
            conversation,
            mailboxes,
        },
    }
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

/// Borrows `m`'s record and estimates its size.
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
    // Sized from the (generous) estimates: encoding never grows the buffer.
    let mut out = Vec::with_capacity(FORMAT_3.len() + 8 + chunk.iter().map(|p| p.len).sum::<usize>());
    out.extend_from_slice(&FORMAT_3);
    opts().serialize_into(&mut out, &records).map_err(corrupt)?;
    Ok(out)
}

/// Decodes a chunk written in format 3, or in format 2 (schema 2).
///
/// # Errors
/// [`StoreError::Corrupt`] for bytes that are neither.
pub fn decode_chunk(bytes: &[u8]) -> Result<Vec<NewMessage>, StoreError> {
    let Some(body) = bytes.strip_prefix(&FORMAT_3) else {
        let records: Vec<RecordV2> = opts().deserialize(bytes).map_err(corrupt)?;
        return Ok(records
            .into_iter()
            .map(|r| NewMessage::from_mailboxes(r.id, Arc::new(r.message), r.conversation, r.mailboxes))
            .collect());
    };
    let records: Vec<Record> = opts().deserialize(body).map_err(corrupt)?;
    Ok(records.into_iter().map(expand).collect())
}

fn expand(r: Record) -> NewMessage {
    let route = match r.route {
        RouteRecord::Direct { to, qos } => Route::Direct { to, qos },
        RouteRecord::Group { group, members, qos } => Route::Group {
            group,
            // Roles are not written: a route only needs the names.
            members: members.into_iter().map(|u| (u, Role::Member)).collect(),
            qos,
        },
        RouteRecord::Explicit {
            conversation,
            mailboxes,
        } => Route::Explicit {
            conversation,
            mailboxes,
        },
    };
    NewMessage {
        id: r.id,
        message: Arc::new(r.message),
        route,
    }
}

/// A chunk as schema 2 wrote it (tests of the upgrade).
#[cfg(test)]
pub fn encode_format_2(batch: &[NewMessage]) -> Vec<u8> {
    let records: Vec<RecordV2> = batch
        .iter()
        .map(|m| RecordV2 {
            id: m.id,
            message: (*m.message).clone(),
            conversation: m.conversation().map(|c| c.into_owned()),
            mailboxes: m.dests().map(|d| (d.user.to_owned(), d.entry())).collect(),
        })
        .collect();
    opts()
        .serialize(&records)
        .unwrap_or_else(|e| panic!("encoding format 2: {e}"))
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
        let mailboxes = mailboxes
            .iter()
            .map(|(u, s, q)| ((*u).to_owned(), entry(s, *q)))
            .collect();
        NewMessage::from_mailboxes(7, message(from), conversation.map(str::to_owned), mailboxes)
    }

    fn shape(m: &NewMessage) -> &'static str {
        match route_of(m) {
            RouteRef::Direct { .. } => "direct",
            RouteRef::Group { .. } => "group",
            RouteRef::Explicit { .. } => "explicit",
        }
    }

    #[test]
    fn every_shape_round_trips() {
        // Which lists have a shape is route.rs's test; here each kind is written as it.
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
                record("alice", Some("dm:alice:alice"), &[("alice", "dm/alice", 0)]),
            ),
            (
                "group",
                record(
                    "bob",
                    Some("group:g1"),
                    &[
                        ("alice", "group/g1/bob", 2),
                        ("bob", "group/g1/bob", 2),
                        ("carol", "group/g1/bob", 2),
                    ],
                ),
            ),
            (
                "explicit",
                record("natter", None, &[("alice", "event/friend_request", 1)]),
            ),
            (
                "explicit",
                record("alice", Some("dm:alice:bob"), &[("bob", "dm/alice", 1)]),
            ),
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
        let format_2 = encode_format_2(std::slice::from_ref(&dm)).len();
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
        let format_2 = encode_format_2(&[dm.clone(), event.clone()]);
        assert_eq!(decode_chunk(&format_2).unwrap(), vec![dm, event]);
        assert!(decode_chunk(&[0, 3, 0xff, 0xff]).is_err());
        assert!(decode_chunk(&[]).is_err());
    }
}
