//! account.passwd, account.whoami, account.register (when registration is open) and
//! account.reset (with a one-time token an admin issued).

use natter_shared::api::ErrorCode;
use serde_json::json;

use super::{ApiResult, Call, Fail};
use crate::accounts::guard::Gate;
use crate::accounts::{self, AccountError};
use crate::accounts::{password, reset};
use crate::config::Registration;
use crate::store::StoreError;

/// The answer to a failed account operation: the caller's mistakes by kind, and a
/// store failure as `internal` (logged), never as the caller's fault.
pub(super) fn account_error(e: AccountError) -> Fail {
    match e {
        AccountError::InvalidName(n) => Fail::new(
            ErrorCode::BadRequest,
            format!("invalid user name {:?}", super::shown(&n)),
        ),
        AccountError::Password(p) => Fail::new(ErrorCode::BadRequest, p.to_string()),
        AccountError::Store(StoreError::UserExists(u)) => Fail::new(ErrorCode::AlreadyExists, format!("{u} is taken")),
        AccountError::Store(StoreError::TokenExists { name, .. }) => Fail::new(
            ErrorCode::AlreadyExists,
            format!("you already have a token named {name}"),
        ),
        AccountError::Store(StoreError::NoSuchUser(u)) => Fail::new(ErrorCode::NotFound, format!("no such user: {u}")),
        e @ AccountError::NoSuchToken { .. } => Fail::new(ErrorCode::NotFound, e.to_string()),
        other => {
            tracing::error!(error = %other, "account operation failed");
            Fail::new(ErrorCode::Internal, "account operation failed")
        }
    }
}

pub fn whoami(c: &Call<'_>) -> ApiResult {
    let me = c.me()?;
    Ok(json!({ "user": me, "admin": c.client.admin, "client_id": &*c.client.client_id }))
}

pub fn passwd(c: &Call<'_>) -> ApiResult {
    let me = c.me()?;
    if c.client.restriction.is_some() {
        return Err(Fail::new(ErrorCode::Forbidden, "use account.reset"));
    }
    let old = c.field(&c.req.password, "password")?;
    let new = c.field(&c.req.new_password, "new_password")?;
    check_password(c, me, old, "password change")?;
    accounts::passwd(&c.state.store, &c.state.hasher, me, new.as_bytes()).map_err(account_error)?;
    Ok(json!({ "user": me, "changed": true }))
}

/// Checks the caller's account password, `what` naming the operation in the logs.
/// The same door as CONNECT: a device-token holder guessing the account password
/// here is throttled like a guesser at login (the caller holds an argon2 worker).
pub(super) fn check_password(c: &Call<'_>, me: &str, password: &str, what: &str) -> Result<(), Fail> {
    let (guard, ip) = (&c.state.guard, c.client.addr.ip());
    if let Gate::Locked(left) = guard.gate(ip) {
        tracing::warn!(user = me, addr = %c.client.addr, what, "throttled: too many wrong passwords");
        return Err(Fail::new(
            ErrorCode::RateLimited,
            format!("too many wrong passwords; try again in {} s", left.as_secs().max(1)),
        ));
    }
    let rec = c
        .state
        .store
        .user(me)?
        .ok_or_else(|| Fail::new(ErrorCode::NotFound, "account gone"))?;
    if !password::verify(password.as_bytes(), &rec.password_hash) {
        guard.failure(Some(me), ip);
        tracing::info!(user = me, addr = %c.client.addr, what, "refused: wrong password");
        return Err(Fail::new(ErrorCode::BadCredentials, "wrong password"));
    }
    guard.success(me);
    Ok(())
}

pub fn register(c: &Call<'_>) -> ApiResult {
    if c.state.config.registration != Registration::Open {
        return Err(Fail::new(
            ErrorCode::RegistrationClosed,
            "registration is closed on this server",
        ));
    }
    if c.client.username.is_some() {
        return Err(Fail::new(ErrorCode::Forbidden, "already logged in"));
    }
    let user = c.field(&c.req.user, "user")?;
    let pw = c.field(&c.req.password, "password")?;
    if !c.state.guard.allow_registration(c.client.addr.ip()) {
        return Err(Fail::new(
            ErrorCode::RateLimited,
            "too many registrations from this address; try later",
        ));
    }
    accounts::add(&c.state.store, &c.state.hasher, user, pw.as_bytes(), false).map_err(account_error)?;
    tracing::info!(user, addr = %c.client.addr, "account registered");
    Ok(json!({ "user": user, "registered": true }))
}

pub fn reset(c: &Call<'_>) -> ApiResult {
    let me = c.me()?;
    let token = c.field(&c.req.token, "token")?;
    let new = c.field(&c.req.new_password, "new_password")?;
    // Consumed here, so a token works once whatever happens next.
    match reset::consume(&c.state.store, me, token.as_bytes())? {
        true => {}
        false => {
            return Err(Fail::new(
                ErrorCode::BadCredentials,
                "invalid, used or expired reset token",
            ))
        }
    }
    accounts::passwd(&c.state.store, &c.state.hasher, me, new.as_bytes()).map_err(account_error)?;
    tracing::info!(user = me, "password reset");
    Ok(json!({ "user": me, "changed": true }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_failure_is_internal_and_the_callers_mistakes_are_theirs() {
        let corrupt = AccountError::Store(StoreError::Corrupt {
            tree: "users",
            reason: "bad".into(),
        });
        assert_eq!(account_error(corrupt).code, ErrorCode::Internal);
        let task = AccountError::Store(StoreError::Task("gone".into()));
        assert_eq!(account_error(task).code, ErrorCode::Internal);
        let cases = [
            (AccountError::InvalidName("A".into()), ErrorCode::BadRequest),
            (
                AccountError::Store(StoreError::UserExists("bob".into())),
                ErrorCode::AlreadyExists,
            ),
            (
                AccountError::Store(StoreError::NoSuchUser("bob".into())),
                ErrorCode::NotFound,
            ),
            (
                AccountError::NoSuchToken {
                    user: "bob".into(),
                    name: "t".into(),
                },
                ErrorCode::NotFound,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(account_error(e).code, code);
        }
    }
}
