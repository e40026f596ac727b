//! history: a conversation in order, from the store, paged by message id.

use natter_shared::api::{ErrorCode, HistoryItem};
use natter_shared::names::is_valid_name;
use serde_json::json;

use super::{ApiResult, Call, Fail};
use crate::im::{dm_conversation, group_conversation};

/// Messages returned when `limit` is not given.
const DEFAULT_LIMIT: u32 = 50;

pub fn history(c: &Call<'_>) -> ApiResult {
    let me = c.me()?;
    let with = c.field(&c.req.with, "with")?;
    let conversation = match with.strip_prefix("group:") {
        Some(g) => {
            if !is_valid_name(g) {
                return Err(Fail::new(ErrorCode::BadRequest, format!("invalid group name {g:?}")));
            }
            if c.state.store.role(g, me)?.is_none() {
                return Err(Fail::new(ErrorCode::NotMember, format!("not a member of {g}")));
            }
            group_conversation(g)
        }
        None => {
            if !is_valid_name(with) {
                return Err(Fail::new(
                    ErrorCode::BadRequest,
                    format!("`with` is a user name or group:NAME, not {with:?}"),
                ));
            }
            dm_conversation(me, with)
        }
    };
    let max = c.state.config.history_max_limit.get();
    // A broker configured below the default answers with its own largest page.
    let limit = c.req.limit.unwrap_or(DEFAULT_LIMIT.min(max));
    if limit == 0 || limit > max {
        return Err(Fail::new(ErrorCode::BadRequest, format!("limit is 1 to {max}")));
    }
    let items: Vec<HistoryItem> = c
        .state
        .store
        .history(&conversation, c.req.before, c.req.after, limit as usize)?
        .into_iter()
        .map(|(id, m)| HistoryItem {
            content_type: m.content_type.clone(),
            ..HistoryItem::new(id, m.from, m.ts, &m.payload)
        })
        .collect();
    Ok(json!({ "with": with, "messages": items }))
}
