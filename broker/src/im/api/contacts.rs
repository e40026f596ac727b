//! friends.request/accept/decline/remove/list, block, unblock, blocked.list.

use natter_shared::api::{event, ErrorCode};
use natter_shared::im;
use serde_json::json;

use super::{ApiResult, Call, Fail};
use crate::config::PresenceVisibility;
use crate::store::Contact;

/// Ends what two users see of each other's presence when they stop being friends.
fn revoke_presence(c: &Call<'_>, a: &str, b: &str) {
    if c.state.config.presence_visibility == PresenceVisibility::Friends {
        c.state.router.unsubscribe_user(a, &im::presence(b));
        c.state.router.unsubscribe_user(b, &im::presence(a));
    }
}

fn befriend(c: &Call<'_>, me: &str, other: &str) -> Result<(), Fail> {
    let store = &c.state.store;
    store.set_contact(me, other, Some(Contact::Friend))?;
    store.set_contact(other, me, Some(Contact::Friend))?;
    c.state
        .mailboxes
        .event(other, event::FRIEND_ACCEPTED, json!({ "user": me }));
    c.state
        .mailboxes
        .event(me, event::FRIEND_ACCEPTED, json!({ "user": other }));
    Ok(())
}

pub fn request(c: &Call<'_>) -> ApiResult {
    let me = c.me()?;
    let other = c.user()?;
    let store = &c.state.store;
    if other == me {
        return Err(Fail::new(ErrorCode::BadRequest, "you cannot befriend yourself"));
    }
    if store.blocked(other, me)? || store.blocked(me, other)? {
        return Err(Fail::new(ErrorCode::Forbidden, format!("{other} cannot be asked")));
    }
    match store.contact(me, other)? {
        Some(Contact::Friend) => Err(Fail::new(ErrorCode::Conflict, format!("already friends with {other}"))),
        Some(Contact::RequestSent) => Err(Fail::new(ErrorCode::Conflict, format!("already asked {other}"))),
        Some(Contact::RequestReceived) => {
            // They asked first: asking back is accepting.
            befriend(c, me, other)?;
            Ok(json!({ "user": other, "state": "friends" }))
        }
        None => {
            store.set_contact(me, other, Some(Contact::RequestSent))?;
            store.set_contact(other, me, Some(Contact::RequestReceived))?;
            c.state
                .mailboxes
                .event(other, event::FRIEND_REQUEST, json!({ "user": me }));
            Ok(json!({ "user": other, "state": "requested" }))
        }
    }
}

fn pending_from(c: &Call<'_>, me: &str, other: &str) -> Result<(), Fail> {
    if c.state.store.contact(me, other)? != Some(Contact::RequestReceived) {
        return Err(Fail::new(
            ErrorCode::Conflict,
            format!("no friend request from {other}"),
        ));
    }
    Ok(())
}

pub fn accept(c: &Call<'_>) -> ApiResult {
    let me = c.me()?;
    let other = c.user()?;
    pending_from(c, me, other)?;
    befriend(c, me, other)?;
    Ok(json!({ "user": other, "state": "friends" }))
}

pub fn decline(c: &Call<'_>) -> ApiResult {
    let me = c.me()?;
    let other = c.user()?;
    pending_from(c, me, other)?;
    c.state.store.set_contact(me, other, None)?;
    c.state.store.set_contact(other, me, None)?;
    c.state
        .mailboxes
        .event(other, event::FRIEND_DECLINED, json!({ "user": me }));
    Ok(json!({ "user": other, "state": "declined" }))
}

pub fn remove(c: &Call<'_>) -> ApiResult {
    let me = c.me()?;
    let other = c.user()?;
    let store = &c.state.store;
    let Some(was) = store.contact(me, other)? else {
        return Err(Fail::new(ErrorCode::Conflict, format!("{other} is not a contact")));
    };
    store.set_contact(me, other, None)?;
    store.set_contact(other, me, None)?;
    if was == Contact::Friend {
        revoke_presence(c, me, other);
    }
    c.state
        .mailboxes
        .event(other, event::FRIEND_REMOVED, json!({ "user": me }));
    Ok(json!({ "user": other, "state": "removed" }))
}

pub fn list(c: &Call<'_>) -> ApiResult {
    let me = c.me()?;
    let (mut friends, mut incoming, mut outgoing) = (Vec::new(), Vec::new(), Vec::new());
    for (user, state) in c.state.store.contacts_of(me)? {
        match state {
            Contact::Friend => friends.push(user),
            Contact::RequestReceived => incoming.push(user),
            Contact::RequestSent => outgoing.push(user),
        }
    }
    Ok(json!({ "friends": friends, "incoming": incoming, "outgoing": outgoing }))
}

pub fn block(c: &Call<'_>) -> ApiResult {
    let me = c.me()?;
    let other = c.user()?;
    if other == me {
        return Err(Fail::new(ErrorCode::BadRequest, "you cannot block yourself"));
    }
    let store = &c.state.store;
    store.set_blocked(me, other, true)?;
    // Blocking ends any friendship or pending request, silently for the blocked user.
    if store.contact(me, other)?.is_some() {
        store.set_contact(me, other, None)?;
        store.set_contact(other, me, None)?;
        revoke_presence(c, me, other);
    }
    Ok(json!({ "user": other, "blocked": true }))
}

pub fn unblock(c: &Call<'_>) -> ApiResult {
    let me = c.me()?;
    let other = c.field(&c.req.user, "user")?;
    if !c.state.store.set_blocked(me, other, false)? {
        return Err(Fail::new(ErrorCode::Conflict, format!("{other} is not blocked")));
    }
    Ok(json!({ "user": other, "blocked": false }))
}

pub fn blocked_list(c: &Call<'_>) -> ApiResult {
    let me = c.me()?;
    Ok(json!({ "blocked": c.state.store.blocked_by(me)? }))
}
