//! How things look on a terminal: times, mailbox messages, presence.

use natter_shared::api::{Presence, Status};
use serde_json::{json, Value};

use crate::link::Incoming;

/// Local calendar time of `unix_secs`: (year, month, day, hour, minute).
pub fn local(unix_secs: i64) -> (i32, u32, u32, u32, u32) {
    let t: libc::time_t = unix_secs as libc::time_t;
    // SAFETY: localtime_r writes into the tm we own and reads the time_t we pass.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if !ok {
        return (1970, 1, 1, 0, 0);
    }
    (
        tm.tm_year + 1900,
        (tm.tm_mon + 1) as u32,
        tm.tm_mday as u32,
        tm.tm_hour as u32,
        tm.tm_min as u32,
    )
}

/// `2026-12-03 17:05` for a time in milliseconds.
pub fn datetime_ms(ms: u64) -> String {
    let (y, mo, d, h, mi) = local((ms / 1000) as i64);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}")
}

/// `17:05` for a time in milliseconds.
pub fn clock_ms(ms: u64) -> String {
    let (_, _, _, h, mi) = local((ms / 1000) as i64);
    format!("{h:02}:{mi:02}")
}

/// The day of a time in milliseconds, `2026-12-03`.
pub fn day_ms(ms: u64) -> String {
    let (y, mo, d, _, _) = local((ms / 1000) as i64);
    format!("{y:04}-{mo:02}-{d:02}")
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `5 min ago`, `3 h ago`, `2 days ago`.
pub fn ago(then_secs: u64, now_secs: u64) -> String {
    let s = now_secs.saturating_sub(then_secs);
    match s {
        0..=59 => "just now".into(),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

/// What a mailbox delivery is, from its topic under `inbox/{me}/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A DM from someone.
    Dm {
        from: String,
    },
    /// A DM you sent (from another of your devices).
    Sent {
        to: String,
    },
    Group {
        group: String,
        from: String,
    },
    Event {
        kind: String,
    },
    Other,
}

pub fn kind(me: &str, topic: &str) -> Kind {
    let prefix = natter_shared::im::inbox_prefix(me);
    let Some(rest) = topic.strip_prefix(&prefix) else {
        return Kind::Other;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        ["dm", from] => Kind::Dm { from: (*from).into() },
        ["sent", "dm", to] => Kind::Sent { to: (*to).into() },
        ["group", g, from] => Kind::Group {
            group: (*g).into(),
            from: (*from).into(),
        },
        ["event", k] => Kind::Event { kind: (*k).into() },
        _ => Kind::Other,
    }
}

/// Whether a delivery is one of ours (a sent DM's copy, our own group message).
pub fn from_me(me: &str, topic: &str) -> bool {
    match kind(me, topic) {
        Kind::Sent { .. } => true,
        Kind::Group { from, .. } => from == me,
        _ => false,
    }
}

/// The payload as text (binary shown by its size).
pub fn text(payload: &[u8]) -> String {
    match std::str::from_utf8(payload) {
        Ok(t) => t.to_owned(),
        Err(_) => format!("[{} bytes of binary data]", payload.len()),
    }
}

/// An event for people.
pub fn event_line(kind: &str, body: &Value) -> String {
    let s = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
    match kind {
        "friend_request" => format!(
            "{} wants to be friends (natter friends accept {})",
            s("user"),
            s("user")
        ),
        "friend_accepted" => format!("{} and you are friends now", s("user")),
        "friend_declined" => format!("{} declined your friend request", s("user")),
        "friend_removed" => format!("{} is no longer your friend", s("user")),
        "group_invite" => format!(
            "{} invited you to {} (natter groups join {})",
            s("by"),
            s("group"),
            s("group")
        ),
        "group_joined" => format!("{} joined {}", s("user"), s("group")),
        "group_left" => format!("{} left {}", s("user"), s("group")),
        "group_kicked" => format!("{} was removed from {}", s("user"), s("group")),
        "group_promoted" => format!("{} is now an admin of {}", s("user"), s("group")),
        "group_deleted" => format!("{} was deleted", s("group")),
        "gap" => format!(
            "messages {} to {} were dropped by the mailbox's retention before you got them",
            body.get("from").map(Value::to_string).unwrap_or_default(),
            body.get("to").map(Value::to_string).unwrap_or_default()
        ),
        other => format!("{other}: {body}"),
    }
}

/// One line for a mailbox delivery: `2026-12-03 17:05  alice: hi`.
pub fn message_line(me: &str, m: &Incoming) -> String {
    let ts = m.prop("ts").and_then(|t| t.parse().ok()).unwrap_or(0);
    let when = datetime_ms(ts);
    match kind(me, &m.topic) {
        Kind::Dm { from } => format!("{when}  {from}: {}", text(&m.payload)),
        Kind::Sent { to } => format!("{when}  you to {to}: {}", text(&m.payload)),
        Kind::Group { group, from } => format!("{when}  [{group}] {from}: {}", text(&m.payload)),
        Kind::Event { kind } => {
            let body: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
            format!("{when}  * {}", event_line(&kind, &body))
        }
        Kind::Other => format!("{when}  {}: {}", m.topic, text(&m.payload)),
    }
}

/// A mailbox delivery as JSON.
pub fn message_json(me: &str, m: &Incoming) -> Value {
    let id: Option<u64> = m.prop("id").and_then(|t| t.parse().ok());
    let ts: Option<u64> = m.prop("ts").and_then(|t| t.parse().ok());
    let mut v = json!({ "id": id, "ts": ts, "topic": m.topic });
    match kind(me, &m.topic) {
        Kind::Dm { from } => {
            v["type"] = json!("dm");
            v["from"] = json!(from);
        }
        Kind::Sent { to } => {
            v["type"] = json!("sent");
            v["to"] = json!(to);
        }
        Kind::Group { group, from } => {
            v["type"] = json!("group");
            v["group"] = json!(group);
            v["from"] = json!(from);
        }
        Kind::Event { kind } => {
            v["type"] = json!("event");
            v["event"] = json!(kind);
            v["body"] = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
            return v;
        }
        Kind::Other => v["type"] = json!("other"),
    }
    match std::str::from_utf8(&m.payload) {
        Ok(t) => v["text"] = json!(t),
        Err(_) => {
            use base64::Engine;
            v["data"] = json!(base64::engine::general_purpose::STANDARD.encode(&m.payload));
        }
    }
    v
}

/// `● bob  online` / `○ carol  offline, last seen 2 h ago`.
pub fn presence_line(p: &Presence, now: u64) -> String {
    let dot = match p.status {
        Status::Online => "●",
        Status::Away | Status::Busy => "◐",
        Status::Offline => "○",
    };
    let status = match p.status {
        Status::Online => "online".to_owned(),
        Status::Away => "away".to_owned(),
        Status::Busy => "busy".to_owned(),
        Status::Offline => match p.last_seen {
            Some(t) => format!("offline, last seen {}", ago(t, now)),
            None => "offline".to_owned(),
        },
    };
    match &p.text {
        Some(t) => format!("{dot} {}  {status}: {t}", p.user),
        None => format!("{dot} {}  {status}", p.user),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_topics_say_what_arrived() {
        assert_eq!(kind("bob", "inbox/bob/dm/alice"), Kind::Dm { from: "alice".into() });
        assert_eq!(
            kind("bob", "inbox/bob/sent/dm/carol"),
            Kind::Sent { to: "carol".into() }
        );
        assert_eq!(
            kind("bob", "inbox/bob/group/g1/alice"),
            Kind::Group {
                group: "g1".into(),
                from: "alice".into()
            }
        );
        assert_eq!(kind("bob", "inbox/bob/event/gap"), Kind::Event { kind: "gap".into() });
        assert_eq!(kind("bob", "inbox/alice/dm/x"), Kind::Other);
    }

    #[test]
    fn times_read_well() {
        assert_eq!(ago(100, 100), "just now");
        assert_eq!(ago(0, 600), "10 min ago");
        assert_eq!(ago(0, 7200), "2 h ago");
        assert_eq!(ago(0, 3 * 86_400), "3 days ago");
        assert_eq!(datetime_ms(0).len(), "1970-01-01 00:00".len());
    }

    #[test]
    fn binary_is_not_printed_raw() {
        assert_eq!(text(&[0xff, 0xfe]), "[2 bytes of binary data]");
    }
}
