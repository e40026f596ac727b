//! mailbox.status: how far the caller's mailbox goes and how far this device has
//! taken it, so a client that reads its backlog (`natter inbox`) knows when it has
//! caught up without waiting for silence.

use serde_json::json;

use super::{ApiResult, Call};

pub fn status(c: &Call<'_>) -> ApiResult {
    let me = c.me()?;
    let (last_id, dropped_up_to) = c.state.store.mailbox_head(me)?;
    let cursor = c.state.mailboxes.cursor(me, &c.client.client_id)?;
    Ok(json!({
        "last_id": last_id,
        "dropped_up_to": dropped_up_to,
        "device": &*c.client.client_id,
        "cursor": cursor,
    }))
}
