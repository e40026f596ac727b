//! presence.set and presence.get.

use natter_shared::api::{ErrorCode, Status};
use serde_json::json;

use super::{ApiResult, Call, Fail};

/// Longest status text.
const MAX_TEXT: usize = 200;

pub fn set(c: &Call<'_>) -> ApiResult {
    let me = c.me()?;
    let status = c
        .req
        .status
        .ok_or_else(|| Fail::new(ErrorCode::BadRequest, "missing field `status`"))?;
    if status == Status::Offline {
        return Err(Fail::new(
            ErrorCode::BadRequest,
            "status is online, away or busy; offline follows your connections",
        ));
    }
    let text = c.req.text.clone().filter(|t| !t.is_empty());
    if text.as_ref().is_some_and(|t| t.chars().count() > MAX_TEXT) {
        return Err(Fail::new(
            ErrorCode::BadRequest,
            format!("text is longer than {MAX_TEXT} characters"),
        ));
    }
    if !c.state.presence.set(me, status, text) {
        return Err(Fail::new(ErrorCode::Conflict, "not connected"));
    }
    Ok(serde_json::to_value(c.state.presence.get(me)).unwrap_or(json!(null)))
}

pub fn get(c: &Call<'_>) -> ApiResult {
    let me = c.me()?;
    let user = c.user()?;
    let visible = c.state.config.presence_visibility == crate::config::PresenceVisibility::All
        || user == me
        || c.state.store.are_friends(me, user)?;
    if !visible {
        return Err(Fail::new(
            ErrorCode::Forbidden,
            format!("{user}'s presence is for their friends"),
        ));
    }
    Ok(serde_json::to_value(c.state.presence.get(user)).unwrap_or(json!(null)))
}
