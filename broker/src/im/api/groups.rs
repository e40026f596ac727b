//! groups.create/invite/join/leave/kick/promote/delete/members/list.

use natter_shared::api::{event, ErrorCode};
use serde_json::{json, Value};

use super::{ApiResult, Call, Fail};
use crate::store::{GroupRecord, Role};

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Owner => "owner",
        Role::Admin => "admin",
        Role::Member => "member",
    }
}

fn existing<'a>(c: &'a Call<'_>) -> Result<(&'a str, GroupRecord), Fail> {
    let g = c.group_name()?;
    let rec = c
        .state
        .store
        .group(g)?
        .ok_or_else(|| Fail::new(ErrorCode::NotFound, format!("no such group: {g}")))?;
    Ok((g, rec))
}

fn my_role(c: &Call<'_>, g: &str) -> Result<Role, Fail> {
    let me = c.me()?;
    c.state
        .store
        .role(g, me)?
        .ok_or_else(|| Fail::new(ErrorCode::NotMember, format!("not a member of {g}")))
}

fn require_admin(c: &Call<'_>, g: &str) -> Result<Role, Fail> {
    let r = my_role(c, g)?;
    if r < Role::Admin {
        return Err(Fail::new(
            ErrorCode::Forbidden,
            format!("only the owner and admins of {g} may do that"),
        ));
    }
    Ok(r)
}

/// Tells every member (and `extra`, e.g. someone who just left) about a change.
fn tell_members(c: &Call<'_>, g: &str, kind: &str, body: Value, extra: Option<&str>) -> Result<(), Fail> {
    let mut to: Vec<String> = c.state.store.members(g)?.into_iter().map(|(u, _)| u).collect();
    if let Some(e) = extra {
        if !to.iter().any(|u| u == e) {
            to.push(e.to_owned());
        }
    }
    for u in to {
        c.state.mailboxes.event(&u, kind, body.clone());
    }
    Ok(())
}

pub fn create(c: &Call<'_>) -> ApiResult {
    let me = c.me()?;
    let g = c.group_name()?;
    let rec = GroupRecord {
        owner: me.to_owned(),
        open: c.req.open.unwrap_or(false),
        created_at: crate::clock::unix_secs(),
    };
    match c.state.store.create_group(g, &rec) {
        Ok(()) => Ok(json!({ "group": g, "owner": me, "open": rec.open })),
        Err(crate::store::StoreError::GroupExists(_)) => {
            Err(Fail::new(ErrorCode::AlreadyExists, format!("group {g} exists")))
        }
        Err(e) => Err(e.into()),
    }
}

pub fn invite(c: &Call<'_>) -> ApiResult {
    let me = c.me()?;
    let (g, _) = existing(c)?;
    require_admin(c, g)?;
    let user = c.user()?;
    let store = &c.state.store;
    if store.role(g, user)?.is_some() {
        return Err(Fail::new(
            ErrorCode::Conflict,
            format!("{user} is already a member of {g}"),
        ));
    }
    if store.blocked(user, me)? {
        return Err(Fail::new(ErrorCode::Forbidden, format!("{user} cannot be invited")));
    }
    store.invite(g, user, me)?;
    c.state
        .mailboxes
        .event(user, event::GROUP_INVITE, json!({ "group": g, "by": me }));
    Ok(json!({ "group": g, "user": user, "invited": true }))
}

pub fn join(c: &Call<'_>) -> ApiResult {
    let me = c.me()?;
    let (g, rec) = existing(c)?;
    let store = &c.state.store;
    if store.role(g, me)?.is_some() {
        return Err(Fail::new(ErrorCode::Conflict, format!("already a member of {g}")));
    }
    if !rec.open && !store.invited(g, me)? {
        return Err(Fail::new(ErrorCode::Forbidden, format!("{g} is invitation-only")));
    }
    if store.members(g)?.len() >= c.state.config.max_group_members.get() {
        return Err(Fail::new(ErrorCode::Forbidden, format!("{g} is full")));
    }
    store.set_member(g, me, Some(Role::Member))?;
    tell_members(c, g, event::GROUP_JOINED, json!({ "group": g, "user": me }), None)?;
    Ok(json!({ "group": g, "role": "member" }))
}

pub fn leave(c: &Call<'_>) -> ApiResult {
    let me = c.me()?;
    let (g, _) = existing(c)?;
    if my_role(c, g)? == Role::Owner {
        return Err(Fail::new(
            ErrorCode::Forbidden,
            "the owner cannot leave; delete the group instead",
        ));
    }
    c.state.store.set_member(g, me, None)?;
    tell_members(c, g, event::GROUP_LEFT, json!({ "group": g, "user": me }), Some(me))?;
    Ok(json!({ "group": g, "left": true }))
}

pub fn kick(c: &Call<'_>) -> ApiResult {
    let me = c.me()?;
    let (g, _) = existing(c)?;
    let mine = require_admin(c, g)?;
    let user = c.user()?;
    let store = &c.state.store;
    let Some(theirs) = store.role(g, user)? else {
        return Err(Fail::new(
            ErrorCode::NotMember,
            format!("{user} is not a member of {g}"),
        ));
    };
    if user == me || theirs >= mine {
        return Err(Fail::new(ErrorCode::Forbidden, format!("you cannot kick {user}")));
    }
    // From now on every publish of theirs to the group is refused: the check is per message.
    store.set_member(g, user, None)?;
    tell_members(
        c,
        g,
        event::GROUP_KICKED,
        json!({ "group": g, "user": user, "by": me }),
        Some(user),
    )?;
    Ok(json!({ "group": g, "user": user, "kicked": true }))
}

pub fn promote(c: &Call<'_>) -> ApiResult {
    let me = c.me()?;
    let (g, _) = existing(c)?;
    require_admin(c, g)?;
    let user = c.user()?;
    let store = &c.state.store;
    match store.role(g, user)? {
        None => Err(Fail::new(
            ErrorCode::NotMember,
            format!("{user} is not a member of {g}"),
        )),
        Some(Role::Member) => {
            store.set_member(g, user, Some(Role::Admin))?;
            tell_members(
                c,
                g,
                event::GROUP_PROMOTED,
                json!({ "group": g, "user": user, "by": me }),
                None,
            )?;
            Ok(json!({ "group": g, "user": user, "role": "admin" }))
        }
        Some(_) => Err(Fail::new(
            ErrorCode::Conflict,
            format!("{user} is already an admin of {g}"),
        )),
    }
}

pub fn delete(c: &Call<'_>) -> ApiResult {
    let me = c.me()?;
    let (g, _) = existing(c)?;
    if my_role(c, g)? != Role::Owner {
        return Err(Fail::new(ErrorCode::Forbidden, "only the owner may delete the group"));
    }
    let former = c.state.store.delete_group(g)?;
    for u in former {
        c.state
            .mailboxes
            .event(&u, event::GROUP_DELETED, json!({ "group": g, "by": me }));
    }
    Ok(json!({ "group": g, "deleted": true }))
}

pub fn members(c: &Call<'_>) -> ApiResult {
    let (g, _) = existing(c)?;
    my_role(c, g)?;
    let list: Vec<Value> = c
        .state
        .store
        .members(g)?
        .into_iter()
        .map(|(u, r)| json!({ "user": u, "role": role_name(r) }))
        .collect();
    Ok(json!({ "group": g, "members": list }))
}

pub fn list(c: &Call<'_>) -> ApiResult {
    let me = c.me()?;
    let store = &c.state.store;
    let mut groups = Vec::new();
    for g in store.groups_of(me)? {
        if let Some(r) = store.role(&g, me)? {
            groups.push(json!({ "group": g, "role": role_name(r) }));
        }
    }
    Ok(json!({ "groups": groups }))
}
