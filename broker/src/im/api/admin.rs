//! admin.*: account management and broker statistics for admin users, with the same
//! handling as the local control socket.

use std::sync::atomic::Ordering;

use natter_shared::api::{command as cmd, ErrorCode};
use serde_json::json;

use super::{ApiResult, Call, Fail};
use crate::admin::Request;

pub fn admin(c: &Call<'_>, command: &str) -> ApiResult {
    if !c.client.admin {
        return Err(Fail::new(ErrorCode::Forbidden, "admin only"));
    }
    let user = || c.field(&c.req.user, "user").map(str::to_owned);
    let password = || c.field(&c.req.password, "password").map(str::to_owned);
    let request = match command {
        cmd::ADMIN_STATS => {
            let r = &c.state.router;
            let s = r.stats();
            return Ok(json!({
                "sessions": r.session_count(),
                "subscriptions": r.subscription_count(),
                "retained": r.retained_count(),
                "published": s.published.load(Ordering::Relaxed),
                "delivered": s.delivered.load(Ordering::Relaxed),
                "dropped": s.dropped.load(Ordering::Relaxed),
            }));
        }
        cmd::ADMIN_USERS_ADD => Request::UserAdd {
            name: user()?,
            password: password()?,
            admin: c.req.admin.unwrap_or(false),
        },
        cmd::ADMIN_USERS_DEL => Request::UserDel { name: user()? },
        cmd::ADMIN_USERS_LIST => Request::UserList,
        cmd::ADMIN_USERS_PASSWD => Request::UserPasswd {
            name: user()?,
            password: password()?,
        },
        cmd::ADMIN_USERS_RESET => Request::UserReset { name: user()? },
        other => {
            return Err(Fail::new(
                ErrorCode::UnknownCommand,
                format!("unknown command {other:?}"),
            ))
        }
    };
    tracing::info!(
        admin = c.client.username.as_deref().unwrap_or(""),
        command,
        "admin request"
    );
    let r = c.state.admin.apply(request).map_err(super::account::account_error)?;
    Ok(json!({ "users": r.users, "token": r.token, "expires_at": r.expires_at }))
}
