//! The API over MQTT: a JSON request published to `api/{command}`, a JSON response to
//! `inbox/{me}/api/{command}`, or on MQTT 5 to the request's Response Topic (only
//! inside the caller's own mailbox) with its Correlation Data.
//!
//! Requests run on blocking threads (they touch the store and may hash passwords),
//! at most `im.api_workers` at once; those that hash (or check) a password also take
//! one of the login guard's argon2 workers, the pool CONNECT uses. A request is
//! acknowledged once answered, so a client's unanswered requests count against its
//! Receive Maximum and a client flooding the API stops being read from.

pub mod account;
mod admin;
mod contacts;
mod files;
mod groups;
mod history;
mod mailbox;
mod presence;
mod tokens;

use std::sync::Arc;

use bytes::Bytes;
use natter_shared::api::{command as cmd, ErrorCode, Request, Response};
use natter_shared::im;
use serde_json::Value;

use tokio::sync::oneshot;

use super::{ImState, RESPONSE_QOS};
use crate::hooks::{NotStored, Receipt};
use crate::model::{ClientInfo, Message};
use crate::store::StoreError;

/// A failed request: a stable code and a message for people.
#[derive(Debug)]
pub struct Fail {
    pub code: ErrorCode,
    pub message: String,
}

impl Fail {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Fail {
        Fail {
            code,
            message: message.into(),
        }
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        tracing::error!(error = %e, "store error in an API request");
        Fail::new(ErrorCode::Internal, "storage error")
    }
}

pub type ApiResult = Result<Value, Fail>;

/// What a handler sees.
pub struct Call<'a> {
    pub state: &'a ImState,
    pub client: &'a ClientInfo,
    pub req: Request,
}

impl Call<'_> {
    /// The caller's user name (every command but registration needs one).
    pub fn me(&self) -> Result<&str, Fail> {
        self.client
            .username
            .as_deref()
            .ok_or_else(|| Fail::new(ErrorCode::Forbidden, "log in first"))
    }

    pub fn field<'f>(&self, value: &'f Option<String>, name: &str) -> Result<&'f str, Fail> {
        value
            .as_deref()
            .ok_or_else(|| Fail::new(ErrorCode::BadRequest, format!("missing field `{name}`")))
    }

    /// A required `user` field naming an existing account.
    pub fn user(&self) -> Result<&str, Fail> {
        let u = self.field(&self.req.user, "user")?;
        if !natter_shared::names::is_valid_name(u) {
            return Err(Fail::new(
                ErrorCode::BadRequest,
                format!("invalid user name {:?}", shown(u)),
            ));
        }
        if self.state.store.user(u)?.is_none() {
            return Err(Fail::new(ErrorCode::NotFound, format!("no such user: {u}")));
        }
        Ok(u)
    }

    /// A required `group` field with a valid name.
    pub fn group_name(&self) -> Result<&str, Fail> {
        let g = self.field(&self.req.group, "group")?;
        if !natter_shared::names::is_valid_name(g) {
            return Err(Fail::new(
                ErrorCode::BadRequest,
                format!("invalid group name {:?}", shown(g)),
            ));
        }
        Ok(g)
    }
}

/// Commands that run argon2 (to check the caller's password or hash a new one).
const HASHING: &[&str] = &[
    cmd::ACCOUNT_PASSWD,
    cmd::ACCOUNT_REGISTER,
    cmd::ACCOUNT_RESET,
    cmd::TOKENS_CREATE,
    cmd::ADMIN_USERS_ADD,
    cmd::ADMIN_USERS_PASSWD,
];

/// Handles a request in the background and publishes the response; the receipt
/// resolves once it is answered.
pub fn spawn(state: Arc<ImState>, client: ClientInfo, command: String, msg: Message) -> Receipt {
    let (done, receipt) = oneshot::channel();
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        respond(&state, &client, &command, &msg);
        let _ = done.send(Ok(()));
        return receipt;
    };
    rt.spawn(async move {
        // Both waits are fair (first come, first served) and hold no thread.
        let Ok(_slot) = state.api_slots.clone().acquire_owned().await else {
            return;
        };
        let worker = match HASHING.contains(&command.as_str()) {
            true => match state.guard.worker().await {
                Some(w) => Some(w),
                None => return,
            },
            false => None,
        };
        let answered = tokio::task::spawn_blocking(move || {
            let _worker = worker;
            respond(&state, &client, &command, &msg);
        })
        .await;
        let _ = done.send(answered.map_err(|_| NotStored::Failed));
    });
    receipt
}

/// Answers one request.
fn respond(state: &ImState, client: &ClientInfo, command: &str, msg: &Message) {
    let (topic, response, corr) = handle_request(state, client, command, msg);
    let payload = match serde_json::to_vec(&response) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode an API response");
            return;
        }
    };
    let mut out = Message::broker(topic, Bytes::from(payload), msg.qos.max(RESPONSE_QOS), false);
    let p = out.properties_mut();
    p.content_type = Some("application/json".into());
    p.correlation_data = corr;
    let _ = state.router.publish(Arc::new(out));
}

fn handle_request(
    state: &ImState,
    client: &ClientInfo,
    command: &str,
    msg: &Message,
) -> (String, Response, Option<Bytes>) {
    let parsed: Result<Request, _> = serde_json::from_slice(&msg.payload);
    // The id is echoed even when the request is refused as malformed, so the caller can
    // match the error with its request.
    let id = serde_json::from_slice::<Value>(&msg.payload)
        .ok()
        .and_then(|v| v.get("id").cloned());
    // Where the answer goes: the caller's mailbox (or a Response Topic inside it), or
    // for a client without an account, register/{reply}.
    let (topic, corr) = match client.username.as_deref() {
        Some(me) => match &msg.properties.response_topic {
            Some(rt) if rt.starts_with(&im::inbox_prefix(me)) => (rt.clone(), msg.properties.correlation_data.clone()),
            _ => (im::inbox_api(me, command), msg.properties.correlation_data.clone()),
        },
        None => {
            let reply = parsed
                .as_ref()
                .ok()
                .and_then(|r| r.reply.clone())
                .filter(|r| !r.is_empty() && !r.contains(['/', '+', '#']))
                .unwrap_or_else(|| client.client_id.to_string());
            (im::register_reply(&reply), msg.properties.correlation_data.clone())
        }
    };
    let response = match parsed {
        Err(e) => Response::err(id, ErrorCode::BadRequest, format!("invalid request: {e}")),
        Ok(req) => {
            let call = Call { state, client, req };
            // What the request changed is durable (when `sync`) before it is answered;
            // a read changes nothing and costs no flush.
            let done = dispatch(&call, command).and_then(|result| {
                if !read_only(command) {
                    state.store.commit()?;
                }
                Ok(result)
            });
            match done {
                Ok(result) => Response::ok(id, result),
                Err(f) => {
                    tracing::info!(
                        user = client.username.as_deref().unwrap_or(""),
                        command,
                        code = ?f.code,
                        message = %f.message,
                        "API request refused"
                    );
                    Response::err(id, f.code, f.message)
                }
            }
        }
    };
    (topic, response, corr)
}

fn dispatch(c: &Call<'_>, command: &str) -> ApiResult {
    if c.client.username.is_none() && command != cmd::ACCOUNT_REGISTER {
        return Err(Fail::new(ErrorCode::Forbidden, "log in first"));
    }
    match command {
        cmd::FRIENDS_REQUEST => contacts::request(c),
        cmd::FRIENDS_ACCEPT => contacts::accept(c),
        cmd::FRIENDS_DECLINE => contacts::decline(c),
        cmd::FRIENDS_REMOVE => contacts::remove(c),
        cmd::FRIENDS_LIST => contacts::list(c),
        cmd::BLOCK => contacts::block(c),
        cmd::UNBLOCK => contacts::unblock(c),
        cmd::BLOCKED_LIST => contacts::blocked_list(c),
        cmd::GROUPS_CREATE => groups::create(c),
        cmd::GROUPS_INVITE => groups::invite(c),
        cmd::GROUPS_JOIN => groups::join(c),
        cmd::GROUPS_LEAVE => groups::leave(c),
        cmd::GROUPS_KICK => groups::kick(c),
        cmd::GROUPS_PROMOTE => groups::promote(c),
        cmd::GROUPS_DELETE => groups::delete(c),
        cmd::GROUPS_MEMBERS => groups::members(c),
        cmd::GROUPS_LIST => groups::list(c),
        cmd::PRESENCE_SET => presence::set(c),
        cmd::PRESENCE_GET => presence::get(c),
        cmd::ACCOUNT_PASSWD => account::passwd(c),
        cmd::ACCOUNT_WHOAMI => account::whoami(c),
        cmd::ACCOUNT_REGISTER => account::register(c),
        cmd::ACCOUNT_RESET => account::reset(c),
        cmd::HISTORY => history::history(c),
        cmd::TOKENS_CREATE => tokens::create(c),
        cmd::TOKENS_LIST => tokens::list(c),
        cmd::TOKENS_REVOKE => tokens::revoke(c),
        cmd::MAILBOX_STATUS => mailbox::status(c),
        cmd::FILES_LIMITS => files::limits(c),
        cmd::FILES_START => files::start(c),
        cmd::FILES_FINISH => files::finish(c),
        cmd::FILES_INFO => files::info(c),
        cmd::FILES_FETCH => files::fetch(c),
        cmd::ADMIN_USERS_ADD
        | cmd::ADMIN_USERS_DEL
        | cmd::ADMIN_USERS_LIST
        | cmd::ADMIN_USERS_PASSWD
        | cmd::ADMIN_USERS_RESET
        | cmd::ADMIN_STATS => admin::admin(c, command),
        other => Err(Fail::new(
            ErrorCode::UnknownCommand,
            format!("unknown command {other:?}"),
        )),
    }
}

/// Commands that only read: answered without a store flush.
fn read_only(command: &str) -> bool {
    matches!(
        command,
        cmd::FRIENDS_LIST
            | cmd::BLOCKED_LIST
            | cmd::GROUPS_MEMBERS
            | cmd::GROUPS_LIST
            | cmd::PRESENCE_GET
            | cmd::ACCOUNT_WHOAMI
            | cmd::HISTORY
            | cmd::TOKENS_LIST
            | cmd::MAILBOX_STATUS
            | cmd::FILES_LIMITS
            | cmd::FILES_INFO
            | cmd::FILES_FETCH
            | cmd::ADMIN_USERS_LIST
            | cmd::ADMIN_STATS
    )
}

/// At most the first 40 characters of a client's string, for an error message: an
/// answer never echoes a huge field back.
fn shown(s: &str) -> &str {
    s.char_indices().nth(40).map_or(s, |(i, _)| &s[..i])
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod shown_tests {
    use super::shown;

    #[test]
    fn error_messages_show_at_most_40_characters() {
        assert_eq!(shown("bob"), "bob");
        assert_eq!(shown(&"x".repeat(100_000)).len(), 40);
        // Cut on a character boundary, never inside one.
        assert_eq!(shown(&"é".repeat(50)), "é".repeat(40));
    }
}
