//! The API over MQTT: JSON requests published to `api/{command}`, JSON responses in
//! `inbox/{me}/api/{command}` (or the MQTT 5 Response Topic, inside the caller's own
//! mailbox, with its Correlation Data); and the presence and event payloads.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Every command, by name.
pub mod command {
    pub const FRIENDS_REQUEST: &str = "friends.request";
    pub const FRIENDS_ACCEPT: &str = "friends.accept";
    pub const FRIENDS_DECLINE: &str = "friends.decline";
    pub const FRIENDS_REMOVE: &str = "friends.remove";
    pub const FRIENDS_LIST: &str = "friends.list";
    pub const BLOCK: &str = "block";
    pub const UNBLOCK: &str = "unblock";
    pub const BLOCKED_LIST: &str = "blocked.list";
    pub const GROUPS_CREATE: &str = "groups.create";
    pub const GROUPS_INVITE: &str = "groups.invite";
    pub const GROUPS_JOIN: &str = "groups.join";
    pub const GROUPS_LEAVE: &str = "groups.leave";
    pub const GROUPS_KICK: &str = "groups.kick";
    pub const GROUPS_PROMOTE: &str = "groups.promote";
    pub const GROUPS_DELETE: &str = "groups.delete";
    pub const GROUPS_MEMBERS: &str = "groups.members";
    pub const GROUPS_LIST: &str = "groups.list";
    pub const PRESENCE_SET: &str = "presence.set";
    pub const PRESENCE_GET: &str = "presence.get";
    pub const ACCOUNT_PASSWD: &str = "account.passwd";
    pub const ACCOUNT_WHOAMI: &str = "account.whoami";
    pub const ACCOUNT_REGISTER: &str = "account.register";
    pub const ACCOUNT_RESET: &str = "account.reset";
    pub const TOKENS_CREATE: &str = "tokens.create";
    pub const TOKENS_LIST: &str = "tokens.list";
    pub const TOKENS_REVOKE: &str = "tokens.revoke";
    pub const MAILBOX_STATUS: &str = "mailbox.status";
    pub const FILES_LIMITS: &str = "files.limits";
    pub const FILES_START: &str = "files.start";
    pub const FILES_FINISH: &str = "files.finish";
    pub const FILES_INFO: &str = "files.info";
    pub const FILES_FETCH: &str = "files.fetch";
    pub const HISTORY: &str = "history";
    pub const ADMIN_USERS_ADD: &str = "admin.users.add";
    pub const ADMIN_USERS_DEL: &str = "admin.users.del";
    pub const ADMIN_USERS_LIST: &str = "admin.users.list";
    pub const ADMIN_USERS_PASSWD: &str = "admin.users.passwd";
    pub const ADMIN_USERS_RESET: &str = "admin.users.reset";
    pub const ADMIN_STATS: &str = "admin.stats";
}

/// A request. Fields are named the same in every command; each command says which
/// it needs. Unknown fields are refused, so a typo is an error, not a silent default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Echoed in the response, to match it with the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// History: a user, or `group:{name}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// groups.create: anyone may join without an invitation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open: Option<bool>,
    /// admin.users.add: grant admin rights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<bool>,
    /// account.register: answer on `register/{reply}` (default: the client id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// tokens.create, tokens.revoke: the device token's name; files.start: the
    /// file's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// files.*: the file's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// files.start: the file's size in bytes, MIME type and SHA-256 (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// files.fetch: which chunks (default: all, within the fetch window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<Vec<u32>>,
}

/// The payload of a file message (content type [`crate::im::FILE_CONTENT_TYPE`]):
/// what the recipients need to fetch and check the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMessage {
    /// Always `"file"`.
    #[serde(rename = "type")]
    pub kind: String,
    pub file: String,
    pub name: String,
    pub size: u64,
    pub mime: String,
    pub sha256: String,
    pub chunk_size: u32,
    pub chunks: u32,
}

/// A response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    #[serde(default)]
    pub id: Option<Value>,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

impl Response {
    pub fn ok(id: Option<Value>, result: Value) -> Response {
        Response {
            id,
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    pub fn err(id: Option<Value>, code: ErrorCode, message: impl Into<String>) -> Response {
        Response {
            id,
            ok: false,
            result: None,
            error: Some(ApiError {
                code,
                message: message.into(),
            }),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

/// Stable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, unknown field, missing or invalid field.
    BadRequest,
    UnknownCommand,
    /// No such user or group.
    NotFound,
    /// Not allowed for this caller.
    Forbidden,
    /// The caller is not a member of the group.
    NotMember,
    AlreadyExists,
    /// Nothing to do: already friends, already a member, no pending request...
    Conflict,
    /// Wrong password or token.
    BadCredentials,
    RateLimited,
    /// Registration is closed on this broker.
    RegistrationClosed,
    Internal,
}

/// Online status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Online,
    Away,
    Busy,
    Offline,
}

/// The retained payload of `presence/{user}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub user: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Seconds since the Unix epoch when this status began.
    pub since: u64,
    /// When the user was last connected (set when offline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<u64>,
}

/// Event kinds, the last level of `inbox/{me}/event/{kind}`.
pub mod event {
    pub const FRIEND_REQUEST: &str = "friend_request";
    pub const FRIEND_ACCEPTED: &str = "friend_accepted";
    pub const FRIEND_DECLINED: &str = "friend_declined";
    pub const FRIEND_REMOVED: &str = "friend_removed";
    pub const GROUP_INVITE: &str = "group_invite";
    pub const GROUP_JOINED: &str = "group_joined";
    pub const GROUP_LEFT: &str = "group_left";
    pub const GROUP_KICKED: &str = "group_kicked";
    pub const GROUP_PROMOTED: &str = "group_promoted";
    pub const GROUP_DELETED: &str = "group_deleted";
    pub const GAP: &str = "gap";
}

/// One message of a conversation's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryItem {
    /// Server-assigned, increasing; the `id` user property of the live delivery.
    pub id: u64,
    pub from: String,
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
    /// The payload when it is UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The payload in base64 when it is binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// The sender's content type, when given (a file message has
    /// [`crate::im::FILE_CONTENT_TYPE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

impl HistoryItem {
    pub fn new(id: u64, from: String, ts: u64, payload: &[u8]) -> HistoryItem {
        use base64::Engine;
        match std::str::from_utf8(payload) {
            Ok(t) => HistoryItem {
                id,
                from,
                ts,
                text: Some(t.to_owned()),
                data: None,
                content_type: None,
            },
            Err(_) => HistoryItem {
                id,
                from,
                ts,
                text: None,
                data: Some(base64::engine::general_purpose::STANDARD.encode(payload)),
                content_type: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_refuse_unknown_fields() {
        let r: Request = serde_json::from_str(r#"{"id":"7","group":"g1","user":"bob"}"#).unwrap();
        assert_eq!(r.group.as_deref(), Some("g1"));
        assert!(serde_json::from_str::<Request>(r#"{"usr":"bob"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"status":"sleepy"}"#).is_err());
    }

    #[test]
    fn responses_have_the_documented_shape() {
        let ok = serde_json::to_value(Response::ok(Some("1".into()), serde_json::json!({"a":1}))).unwrap();
        assert_eq!(ok, serde_json::json!({"id":"1","ok":true,"result":{"a":1}}));
        let err = serde_json::to_value(Response::err(None, ErrorCode::NotMember, "not a member of g1")).unwrap();
        assert_eq!(
            err,
            serde_json::json!({"id":null,"ok":false,"error":{"code":"not_member","message":"not a member of g1"}})
        );
    }

    #[test]
    fn history_items_carry_text_or_base64() {
        assert_eq!(HistoryItem::new(1, "a".into(), 2, b"hi").text.as_deref(), Some("hi"));
        assert_eq!(
            HistoryItem::new(1, "a".into(), 2, &[0xff, 0]).data.as_deref(),
            Some("/wA=")
        );
    }
}
