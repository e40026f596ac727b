//! The IM topic contract: what a client publishes to, and where things arrive.
//!
//! | publish | meaning |
//! |---|---|
//! | `dm/{user}` | a direct message to `user` |
//! | `group/{group}` | a message to every member of `group` |
//! | `api/{command}` | an API request (JSON), see [`crate::api`] |
//!
//! | subscribe | what arrives |
//! |---|---|
//! | `inbox/{me}/dm/{from}` | a direct message from `from` |
//! | `inbox/{me}/group/{group}/{from}` | a group message (also the sender's own, on their other devices) |
//! | `inbox/{me}/sent/dm/{to}` | a DM I sent, on my other devices |
//! | `inbox/{me}/event/{kind}` | friend requests and answers, group changes, gaps |
//! | `inbox/{me}/api/{command}` | API responses |
//! | `presence/{user}` | retained presence of a user (broker-owned) |
//! | `register/{reply}` | the answer to `api/account.register`, for clients without an account |

use crate::names::is_valid_name;

pub const DM: &str = "dm";
pub const GROUP: &str = "group";
pub const API: &str = "api";
pub const INBOX: &str = "inbox";
pub const PRESENCE: &str = "presence";
pub const REGISTER: &str = "register";
/// `files/{id}/{index}`: a chunk of a file being uploaded (stored, never fanned out).
pub const FILES: &str = "files";

/// First topic levels owned by the IM layer.
pub const NAMESPACES: &[&str] = &[DM, GROUP, API, INBOX, PRESENCE, REGISTER, FILES];

/// The content type of a file message (its payload is a [`crate::api::FileMessage`]).
pub const FILE_CONTENT_TYPE: &str = "application/vnd.natter.file+json";

/// The Reason String of a refused publish (MQTT 5 PUBACK/PUBREC 0x87): the cause,
/// for people. A block is not told apart from a friends-only policy.
pub mod refusal {
    pub const LOG_IN: &str = "log in to send messages";
    pub const NO_SUCH_USER: &str = "no such user";
    pub const NOT_ACCEPTED: &str = "the recipient does not accept your messages";
    pub const NOT_MEMBER: &str = "not a member of this group";
    pub const FORBIDDEN_TOPIC: &str = "nobody may publish to this topic";
    pub const NO_RULE: &str = "no rule allows you to publish to this topic";
}

/// What a published topic asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish<'a> {
    Dm {
        to: &'a str,
    },
    Group {
        group: &'a str,
    },
    Api {
        command: &'a str,
    },
    /// A chunk of an upload: `files/{id}/{index}`.
    FileChunk {
        id: &'a str,
        index: u32,
    },
    /// Under an IM namespace but not a valid target (e.g. `dm/a/b`, `inbox/...`).
    Reserved,
    /// Not an IM topic.
    Other,
}

/// Classifies a PUBLISH topic.
pub fn classify(topic: &str) -> Publish<'_> {
    let (first, rest) = topic.split_once('/').unwrap_or((topic, ""));
    match first {
        DM if is_valid_name(rest) => Publish::Dm { to: rest },
        GROUP if is_valid_name(rest) => Publish::Group { group: rest },
        API if !rest.is_empty() && !rest.contains('/') => Publish::Api { command: rest },
        FILES => match rest.split_once('/') {
            // The index in its plain decimal form only (not `07` or `+7`).
            Some((id, text)) if is_file_id(id) => match text.parse::<u32>() {
                Ok(index) if index.to_string() == text => Publish::FileChunk { id, index },
                _ => Publish::Reserved,
            },
            _ => Publish::Reserved,
        },
        f if NAMESPACES.contains(&f) => Publish::Reserved,
        _ => Publish::Other,
    }
}

/// A file id: 32 lowercase hex digits.
pub fn is_file_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `files/{id}/{index}`: where an uploader publishes a chunk.
pub fn file_chunk(id: &str, index: u32) -> String {
    format!("{FILES}/{id}/{index}")
}

/// `inbox/{me}/file/{id}/`: where the fetched chunks of a file arrive, by index.
pub fn inbox_file_prefix(me: &str, id: &str) -> String {
    format!("{INBOX}/{me}/file/{id}/")
}

/// `inbox/{me}/file/{id}/{index}`: where a fetched chunk arrives.
pub fn inbox_file_chunk(me: &str, id: &str, index: u32) -> String {
    format!("{}{index}", inbox_file_prefix(me, id))
}

pub fn dm(to: &str) -> String {
    format!("{DM}/{to}")
}

pub fn group(group: &str) -> String {
    format!("{GROUP}/{group}")
}

pub fn api(command: &str) -> String {
    format!("{API}/{command}")
}

/// `inbox/{me}/#`: everything addressed to `me`.
pub fn inbox_all(me: &str) -> String {
    format!("{INBOX}/{me}/#")
}

/// The prefix of `me`'s mailbox topics, with the trailing slash.
pub fn inbox_prefix(me: &str) -> String {
    format!("{INBOX}/{me}/")
}

pub fn inbox_dm(me: &str, from: &str) -> String {
    format!("{INBOX}/{me}/dm/{from}")
}

pub fn inbox_group(me: &str, group: &str, from: &str) -> String {
    format!("{INBOX}/{me}/group/{group}/{from}")
}

pub fn inbox_sent_dm(me: &str, to: &str) -> String {
    format!("{INBOX}/{me}/sent/dm/{to}")
}

pub fn inbox_event(me: &str, kind: &str) -> String {
    format!("{INBOX}/{me}/event/{kind}")
}

pub fn inbox_api(me: &str, command: &str) -> String {
    format!("{INBOX}/{me}/api/{command}")
}

pub fn presence(user: &str) -> String {
    format!("{PRESENCE}/{user}")
}

pub fn register_reply(reply: &str) -> String {
    format!("{REGISTER}/{reply}")
}

/// The user a mailbox topic belongs to (`inbox/{user}/...`).
pub fn inbox_owner(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix("inbox/")?;
    Some(rest.split('/').next().unwrap_or(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_publish_topics() {
        assert_eq!(classify("dm/bob"), Publish::Dm { to: "bob" });
        assert_eq!(classify("group/g1"), Publish::Group { group: "g1" });
        assert_eq!(
            classify("api/friends.request"),
            Publish::Api {
                command: "friends.request"
            }
        );
        for reserved in [
            "dm/Bob",
            "dm/bob/x",
            "dm",
            "dm/",
            "group/",
            "api/",
            "api/a/b",
            "inbox/bob/dm/x",
            "presence/bob",
            "register/x",
            "files/abc/1",
            "files/0123456789abcdef0123456789abcdef/01",
            "files/0123456789abcdef0123456789abcdef/x",
            "files/0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(classify(reserved), Publish::Reserved, "{reserved}");
        }
        for other in ["devices/x", "dmx/bob", "inboxes/a", "$SYS/x", "a"] {
            assert_eq!(classify(other), Publish::Other, "{other}");
        }
    }

    #[test]
    fn file_chunks_have_an_id_and_an_index() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(classify(&file_chunk(id, 7)), Publish::FileChunk { id, index: 7 });
        assert_eq!(classify(&format!("files/{id}/0")), Publish::FileChunk { id, index: 0 });
    }

    #[test]
    fn builds_mailbox_topics() {
        assert_eq!(inbox_dm("bob", "alice"), "inbox/bob/dm/alice");
        assert_eq!(inbox_group("bob", "g1", "alice"), "inbox/bob/group/g1/alice");
        assert_eq!(inbox_sent_dm("alice", "bob"), "inbox/alice/sent/dm/bob");
        assert_eq!(inbox_owner("inbox/bob/dm/alice"), Some("bob"));
        assert_eq!(inbox_owner("dm/bob"), None);
    }
}
