//! Presence: broker-owned retained `presence/{user}` messages. A user is online while
//! at least one of their connections is up, and offline (with `last_seen`) when the
//! last one ends, whatever the reason.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use natter_shared::api::{Presence, Status};
use natter_shared::codec::QoS;
use natter_shared::im;

use crate::message::Message;
use crate::router::Router;

#[derive(Debug, Clone)]
struct UserPresence {
    connections: u32,
    status: Status,
    text: Option<String>,
    since: u64,
    last_seen: Option<u64>,
}

pub struct PresenceBook {
    router: Router,
    users: Mutex<HashMap<String, UserPresence>>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl PresenceBook {
    pub fn new(router: Router) -> PresenceBook {
        PresenceBook {
            router,
            users: Mutex::new(HashMap::new()),
        }
    }

    fn publish(&self, user: &str, p: &UserPresence) {
        let body = Presence {
            user: user.to_owned(),
            status: p.status,
            text: p.text.clone(),
            since: p.since,
            last_seen: p.last_seen,
        };
        match serde_json::to_vec(&body) {
            Ok(json) => {
                let msg = Message::broker(im::presence(user), Bytes::from(json), QoS::AtLeastOnce, true);
                if self.router.publish(Arc::new(msg)).is_err() {
                    tracing::warn!(user, "retained store full: presence not retained");
                }
            }
            Err(e) => tracing::error!(user, error = %e, "cannot encode presence"),
        }
    }

    /// A connection of `user` is up.
    pub fn connected(&self, user: &str) {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let p = users.entry(user.to_owned()).or_insert(UserPresence {
            connections: 0,
            status: Status::Offline,
            text: None,
            since: 0,
            last_seen: None,
        });
        p.connections += 1;
        if p.connections == 1 {
            p.status = Status::Online;
            p.since = now_secs();
            p.last_seen = None;
            let snapshot = p.clone();
            drop(users);
            self.publish(user, &snapshot);
        }
    }

    /// A connection of `user` ended.
    pub fn disconnected(&self, user: &str) {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let Some(p) = users.get_mut(user) else {
            return;
        };
        p.connections = p.connections.saturating_sub(1);
        if p.connections == 0 {
            let now = now_secs();
            p.status = Status::Offline;
            p.since = now;
            p.last_seen = Some(now);
            let snapshot = p.clone();
            drop(users);
            self.publish(user, &snapshot);
        }
    }

    /// Sets away/busy/online and the status text of a connected user. False when the
    /// user has no connection (offline is not something one sets).
    pub fn set(&self, user: &str, status: Status, text: Option<String>) -> bool {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let Some(p) = users.get_mut(user).filter(|p| p.connections > 0) else {
            return false;
        };
        if p.status != status {
            p.since = now_secs();
        }
        p.status = status;
        p.text = text;
        let snapshot = p.clone();
        drop(users);
        self.publish(user, &snapshot);
        true
    }

    /// The current presence of `user` (offline, never seen, when unknown).
    pub fn get(&self, user: &str) -> Presence {
        let users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        match users.get(user) {
            Some(p) => Presence {
                user: user.to_owned(),
                status: p.status,
                text: p.text.clone(),
                since: p.since,
                last_seen: p.last_seen,
            },
            None => Presence {
                user: user.to_owned(),
                status: Status::Offline,
                text: None,
                since: 0,
                last_seen: None,
            },
        }
    }
}
