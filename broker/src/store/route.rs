//! Where a message goes: its conversation and the mailboxes it is appended to, with
//! the suffix under `inbox/{user}/` it arrives at in each.
//!
//! Most messages have one of two shapes whose mailboxes and conversation follow from
//! the sender and one name: a direct message (the recipient gets it under
//! `dm/{from}`, the sender's other devices under `sent/dm/{to}`) and a group message
//! (every member under `group/{group}/{from}`). A [`Route`] keeps such a message as
//! its shape, so neither the IM layer, the writer nor the journal builds a list of
//! names and suffixes per message (for a group of 100, 200 strings); anything else
//! (broker events) is spelled out.

use std::borrow::Cow;

use super::messages::MailboxEntry;
use super::social::{Members, Role};

/// The conversation of a DM between two users (order-independent).
pub fn dm_conversation(a: &str, b: &str) -> String {
    let mut out = String::new();
    push_dm_conversation(a, b, &mut out);
    out
}

fn push_dm_conversation(a: &str, b: &str, out: &mut String) {
    let (first, second) = if a <= b { (a, b) } else { (b, a) };
    for part in ["dm:", first, ":", second] {
        out.push_str(part);
    }
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

/// Where a message goes (the sender is the message's `from`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A DM to `to`: `to`'s mailbox, and the sender's own unless `to` is the sender.
    Direct { to: String, qos: u8 },
    /// A group message to every member (only the names count, not the roles).
    Group { group: String, members: Members, qos: u8 },
    /// Anything else, as it is.
    Explicit {
        conversation: Option<String>,
        mailboxes: Vec<(String, MailboxEntry)>,
    },
}

/// The suffix a message arrives at under `inbox/{user}/`, unbuilt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suffix<'a> {
    /// `dm/{from}`
    Dm(&'a str),
    /// `sent/dm/{to}`
    SentDm(&'a str),
    /// `group/{group}/{from}`
    Group(&'a str, &'a str),
    Literal(&'a str),
}

impl<'a> Suffix<'a> {
    fn parts(&self) -> [&'a str; 4] {
        match *self {
            Suffix::Dm(from) => ["dm/", from, "", ""],
            Suffix::SentDm(to) => ["sent/dm/", to, "", ""],
            Suffix::Group(group, from) => ["group/", group, "/", from],
            Suffix::Literal(s) => [s, "", "", ""],
        }
    }

    pub fn push_to(&self, out: &mut String) {
        self.parts().iter().for_each(|part| out.push_str(part));
    }
}

impl std::fmt::Display for Suffix<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.parts().iter().try_for_each(|part| f.write_str(part))
    }
}

/// One mailbox a message goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dest<'a> {
    pub user: &'a str,
    pub suffix: Suffix<'a>,
    pub qos: u8,
    /// The sender's own copy, for their other devices (not the connection it came
    /// from).
    pub copy: bool,
}

impl Dest<'_> {
    pub fn entry(&self) -> MailboxEntry {
        MailboxEntry {
            suffix: self.suffix.to_string(),
            qos: self.qos,
        }
    }
}

impl Route {
    /// The route of a message from `from` with this conversation and these mailboxes:
    /// its shape when it has one exactly, else explicit.
    pub fn recognize(from: &str, conversation: Option<String>, mailboxes: Vec<(String, MailboxEntry)>) -> Route {
        match Self::shape_of(from, conversation.as_deref(), &mailboxes) {
            Some(route) => route,
            None => Route::Explicit {
                conversation,
                mailboxes,
            },
        }
    }

    fn shape_of(from: &str, conversation: Option<&str>, mailboxes: &[(String, MailboxEntry)]) -> Option<Route> {
        let conversation = conversation?;
        let ((first, entry), rest) = mailboxes.split_first()?;
        let qos = entry.qos;
        // A DM: the recipient, then (unless writing to oneself) the sender's copy.
        if entry.suffix.strip_prefix("dm/") == Some(from) {
            let to = first.as_str();
            let copy_ok = match rest {
                [] => to == from,
                [(user, e)] => {
                    to != from && user == from && e.qos == qos && e.suffix.strip_prefix("sent/dm/") == Some(to)
                }
                _ => false,
            };
            return (copy_ok && is_dm_conversation(conversation, from, to))
                .then(|| Route::Direct { to: to.to_owned(), qos });
        }
        // A group message: every member, the same suffix.
        let group = conversation.strip_prefix("group:")?;
        let suffix_ok = |e: &MailboxEntry| {
            e.qos == qos
                && e.suffix
                    .strip_prefix("group/")
                    .and_then(|s| s.strip_prefix(group))
                    .and_then(|s| s.strip_prefix('/'))
                    == Some(from)
        };
        mailboxes.iter().all(|(_, e)| suffix_ok(e)).then(|| Route::Group {
            group: group.to_owned(),
            members: mailboxes.iter().map(|(u, _)| (u.clone(), Role::Member)).collect(),
            qos,
        })
    }

    /// The conversation of a message from `from`.
    pub fn conversation(&self, from: &str) -> Option<Cow<'_, str>> {
        match self {
            Route::Direct { to, .. } => Some(Cow::Owned(dm_conversation(from, to))),
            Route::Group { group, .. } => Some(Cow::Owned(group_conversation(group))),
            Route::Explicit { conversation, .. } => conversation.as_deref().map(Cow::Borrowed),
        }
    }

    /// Writes the conversation of a message from `from` into `out` (cleared first);
    /// false when it has none.
    pub fn push_conversation(&self, from: &str, out: &mut String) -> bool {
        out.clear();
        match self {
            Route::Direct { to, .. } => push_dm_conversation(from, to, out),
            Route::Group { group, .. } => {
                out.push_str("group:");
                out.push_str(group);
            }
            Route::Explicit { conversation, .. } => match conversation {
                Some(c) => out.push_str(c),
                None => return false,
            },
        }
        true
    }

    /// The `i`th mailbox of a message from `from`.
    fn dest<'a>(&'a self, from: &'a str, i: usize) -> Option<Dest<'a>> {
        match self {
            Route::Direct { to, qos } => match i {
                0 => Some(Dest {
                    user: to,
                    suffix: Suffix::Dm(from),
                    qos: *qos,
                    copy: false,
                }),
                1 if to != from => Some(Dest {
                    user: from,
                    suffix: Suffix::SentDm(to),
                    qos: *qos,
                    copy: true,
                }),
                _ => None,
            },
            Route::Group { group, members, qos } => members.get(i).map(|(user, _)| Dest {
                user,
                suffix: Suffix::Group(group, from),
                qos: *qos,
                copy: user == from,
            }),
            Route::Explicit { mailboxes, .. } => mailboxes.get(i).map(|(user, e)| Dest {
                user,
                suffix: Suffix::Literal(&e.suffix),
                qos: e.qos,
                copy: false,
            }),
        }
    }

    /// The mailboxes of a message from `from`, in order.
    pub fn dests<'a>(&'a self, from: &'a str) -> impl Iterator<Item = Dest<'a>> + 'a {
        (0..).map_while(move |i| self.dest(from, i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn conversation_names_and_suffixes_are_spelled_as_the_protocol_says() {
        assert_eq!(group_conversation("g1"), "group:g1");
        assert_eq!(dm_conversation("bob", "alice"), "dm:alice:bob");
        for (suffix, spelled) in [
            (Suffix::Dm("alice"), "dm/alice"),
            (Suffix::SentDm("bob"), "sent/dm/bob"),
            (Suffix::Group("g1", "carol"), "group/g1/carol"),
            (Suffix::Literal("event/gap"), "event/gap"),
        ] {
            let mut out = String::from("inbox/bob/");
            suffix.push_to(&mut out);
            assert_eq!(out, format!("inbox/bob/{spelled}"), "push_to appends");
            assert_eq!(suffix.to_string(), spelled, "Display");
        }
    }

    fn entry(suffix: &str, qos: u8) -> MailboxEntry {
        MailboxEntry {
            suffix: suffix.into(),
            qos,
        }
    }

    #[test]
    fn shapes_list_their_mailboxes_and_conversation() {
        let dm = Route::Direct {
            to: "bob".into(),
            qos: 1,
        };
        let got: Vec<(String, String, bool)> = dm
            .dests("alice")
            .map(|d| (d.user.to_owned(), d.suffix.to_string(), d.copy))
            .collect();
        assert_eq!(
            got,
            vec![
                ("bob".into(), "dm/alice".into(), false),
                ("alice".into(), "sent/dm/bob".into(), true)
            ]
        );
        assert_eq!(dm.conversation("alice").as_deref(), Some("dm:alice:bob"));
        assert_eq!(dm.conversation("zed").as_deref(), Some("dm:bob:zed"));
        let note = Route::Direct {
            to: "alice".into(),
            qos: 0,
        };
        assert_eq!(note.dests("alice").count(), 1, "a note to oneself: one mailbox");
        let members: Members = vec![("alice".to_owned(), Role::Owner), ("bob".to_owned(), Role::Member)].into();
        let group = Route::Group {
            group: "g1".into(),
            members,
            qos: 2,
        };
        let got: Vec<(&str, String, u8, bool)> = group
            .dests("bob")
            .map(|d| (d.user, d.suffix.to_string(), d.qos, d.copy))
            .collect();
        assert_eq!(
            got,
            vec![
                ("alice", "group/g1/bob".into(), 2, false),
                ("bob", "group/g1/bob".into(), 2, true)
            ]
        );
        let mut buf = String::from("old");
        assert!(group.push_conversation("bob", &mut buf));
        assert_eq!(buf, "group:g1");
        let event = Route::Explicit {
            conversation: None,
            mailboxes: vec![("alice".into(), entry("event/x", 1))],
        };
        assert!(!event.push_conversation("natter", &mut buf));
        assert_eq!(
            event.dests("natter").next().map(|d| d.entry()),
            Some(entry("event/x", 1))
        );
    }

    #[test]
    fn shapes_are_recognized_only_when_exact() {
        let shape = |from: &str, conv: Option<&str>, boxes: &[(&str, &str, u8)]| {
            let mailboxes = boxes.iter().map(|(u, s, q)| ((*u).to_owned(), entry(s, *q))).collect();
            match Route::recognize(from, conv.map(str::to_owned), mailboxes) {
                Route::Direct { .. } => "direct",
                Route::Group { .. } => "group",
                Route::Explicit { .. } => "explicit",
            }
        };
        let a = "alice";
        let ab = Some("dm:alice:bob");
        assert_eq!(
            shape(a, ab, &[("bob", "dm/alice", 1), ("alice", "sent/dm/bob", 1)]),
            "direct"
        );
        assert_eq!(shape(a, Some("dm:alice:alice"), &[("alice", "dm/alice", 0)]), "direct");
        let g1 = Some("group:g1");
        let group = [("alice", "group/g1/bob", 1), ("bob", "group/g1/bob", 1)];
        assert_eq!(shape("bob", g1, &group), "group");
        assert_eq!(shape("bob", g1, &[]), "explicit");
        assert_eq!(
            shape("natter", None, &[("alice", "event/friend_request", 1)]),
            "explicit"
        );
        assert_eq!(
            shape(a, ab, &[("bob", "dm/alice", 1), ("alice", "sent/dm/bob", 2)]),
            "explicit"
        );
        assert_eq!(shape(a, ab, &[("bob", "dm/alice", 1)]), "explicit");
        assert_eq!(
            shape(
                a,
                Some("dm:alice:carol"),
                &[("bob", "dm/alice", 1), ("alice", "sent/dm/bob", 1)]
            ),
            "explicit"
        );
        assert_eq!(
            shape(a, ab, &[("bob", "dm/alice", 1), ("carol", "sent/dm/bob", 1)]),
            "explicit"
        );
        assert_eq!(
            shape(
                a,
                Some("dm:alice:alice"),
                &[("alice", "dm/alice", 1), ("alice", "sent/dm/alice", 1)]
            ),
            "explicit"
        );
        assert_eq!(
            shape("bob", g1, &[("alice", "group/g1/bob", 1), ("carol", "group/g2/bob", 1)]),
            "explicit"
        );
        assert_eq!(
            shape("bob", g1, &[("alice", "group/g1/bob", 1), ("carol", "group/g1/bob", 2)]),
            "explicit"
        );
        assert_eq!(shape("bob", g1, &[("alice", "group/g1/bobby", 1)]), "explicit");
        assert_eq!(
            shape("bob", Some("group:g"), &[("alice", "group/g1/bob", 1)]),
            "explicit"
        );
        assert_eq!(shape("bob", None, &[("alice", "dm/bob", 1)]), "explicit");
    }
}
