//! tokens.create, tokens.list, tokens.revoke: an account owner's own device tokens,
//! one per device or browser (the `natter` CLI logs in with one), so a password need
//! not be kept anywhere. Creating one takes the account password (a token cannot mint
//! more tokens); a token is shown once, when created.

use natter_shared::api::ErrorCode;
use serde_json::json;

use super::account::{account_error, check_password};
use super::{ApiResult, Call, Fail};
use crate::accounts;
use crate::model::Kick;

/// A required, valid `name` field.
fn name<'c>(c: &'c Call<'_>) -> Result<&'c str, Fail> {
    let name = c.field(&c.req.name, "name")?;
    if !natter_shared::names::is_valid_name(name) {
        return Err(Fail::new(
            ErrorCode::BadRequest,
            format!(
                "invalid token name {:?}: 1 to 32 of a-z, 0-9, _ . - (first a letter or digit)",
                super::shown(name)
            ),
        ));
    }
    Ok(name)
}

pub fn create(c: &Call<'_>) -> ApiResult {
    let me = c.me()?;
    let name = name(c)?;
    let password = c.field(&c.req.password, "password")?;
    check_password(c, me, password, "token creation")?;
    let new = accounts::token_add(&c.state.store, me, name).map_err(account_error)?;
    c.state.admin.tokens.insert(new.digest, new.record.clone());
    tracing::info!(user = me, token = name, "device token created by its owner");
    Ok(json!({ "name": name, "token": new.token, "created_at": new.record.created_at }))
}

pub fn list(c: &Call<'_>) -> ApiResult {
    let me = c.me()?;
    let tokens: Vec<_> = accounts::token_list(&c.state.store, Some(me))
        .map_err(account_error)?
        .into_iter()
        .map(|t| json!({ "name": t.name, "created_at": t.created_at }))
        .collect();
    Ok(json!({ "tokens": tokens }))
}

/// Revokes one of the caller's tokens and closes the connections using it, except
/// the caller's own (answered, it leaves by itself and cannot log in with it again).
pub fn revoke(c: &Call<'_>) -> ApiResult {
    let me = c.me()?;
    let name = name(c)?;
    let revoked = accounts::token_revoke(&c.state.store, me, name).map_err(account_error)?;
    c.state.admin.tokens.remove(&revoked);
    let closed = c
        .state
        .router
        .kick_sparing(me, Some(name), Some(&c.client.client_id), Kick::Administrative);
    tracing::info!(
        user = me,
        token = name,
        connections = closed,
        "device token revoked by its owner"
    );
    Ok(json!({ "name": name, "revoked": true }))
}
