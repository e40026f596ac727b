//! Presence: broker-owned retained `presence/{user}` messages. A user is online while
//! at least one of their connections is up, and offline (with `last_seen`) when the
//! last one ends, whatever the reason.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use natter_shared::api::{Presence, Status};
use natter_shared::codec::QoS;
use natter_shared::im;

use crate::model::Message;
use crate::router::Router;
use crate::store::Store;

/// One user's presence, kept for every user seen since the broker started: compact,
/// since that is every online user and more.
#[derive(Debug, Clone)]
struct UserPresence {
    /// The client ids of the user's connections up now (one entry per connection).
    clients: Vec<Arc<str>>,
    status: Status,
    /// What the user chose (`presence.set`): their status whenever a connection is up,
    /// until they choose again (or the broker restarts).
    chosen: Status,
    /// The chosen status's text, shown while online.
    text: Option<Box<str>>,
    /// When `status` began; for an offline user who was seen, also when last seen.
    since: u64,
}

impl UserPresence {
    fn to_api(&self, user: &str) -> Presence {
        let seen = self.status == Status::Offline && self.since != 0;
        Presence {
            user: user.to_owned(),
            status: self.status,
            text: (self.status != Status::Offline)
                .then(|| self.text.as_deref().map(str::to_owned))
                .flatten(),
            since: self.since,
            last_seen: seen.then_some(self.since),
        }
    }
}

pub struct PresenceBook {
    router: Router,
    /// Where last-seen times outlive a restart (`None` in tests without a store).
    store: Option<Store>,
    /// Boxed entries: at the map's usual load the empty buckets then cost a pointer,
    /// not a whole entry.
    users: Mutex<crate::FastMap<Box<str>, Box<UserPresence>>>,
}

use crate::clock::unix_secs as now_secs;

impl PresenceBook {
    pub fn new(router: Router) -> PresenceBook {
        PresenceBook {
            router,
            store: None,
            users: Mutex::new(crate::FastMap::default()),
        }
    }

    /// With last-seen times kept in `store`: a user not seen since the broker
    /// started is offline with the last-seen time noted before.
    pub fn with_store(router: Router, store: Store) -> PresenceBook {
        PresenceBook {
            store: Some(store),
            ..PresenceBook::new(router)
        }
    }

    fn note_last_seen(&self, user: &str, secs: u64) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let user = user.to_owned();
        let write = move || {
            if let Err(e) = store.set_last_seen(&user, secs) {
                tracing::warn!(user, error = %e, "last-seen time not kept");
            }
        };
        // Off the runtime when there is one: a store write may wait for the disk.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(write)),
            Err(_) => write(),
        }
    }

    fn publish(&self, body: &Presence) {
        let user = body.user.as_str();
        match serde_json::to_vec(body) {
            Ok(mut json) => {
                // Retained for as long as the user's status holds: no spare capacity
                // (an exact Vec also becomes Bytes without a second allocation).
                json.shrink_to_fit();
                let msg = Message::broker(im::presence(user), Bytes::from(json), QoS::AtLeastOnce, true);
                if self.router.publish(Arc::new(msg)).is_err() {
                    tracing::warn!(user, "retained store full: presence not retained");
                }
            }
            Err(e) => tracing::error!(user, error = %e, "cannot encode presence"),
        }
    }

    /// A connection of `user` is up (before it may subscribe).
    pub fn connected(&self, user: &str, client: &Arc<str>) {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let p = users.entry(user.into()).or_insert_with(|| {
            Box::new(UserPresence {
                clients: Vec::new(),
                status: Status::Offline,
                chosen: Status::Online,
                text: None,
                since: 0,
            })
        });
        // Most users have one or two devices: grow one at a time.
        p.clients.reserve_exact(1);
        p.clients.push(client.clone());
        if p.clients.len() == 1 {
            p.status = p.chosen;
            p.since = now_secs();
            let snapshot = p.to_api(user);
            drop(users);
            self.publish(&snapshot);
        }
    }

    /// A connection of `user` ended.
    pub fn disconnected(&self, user: &str, client: &str) {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let Some(p) = users.get_mut(user) else {
            return;
        };
        let Some(i) = p.clients.iter().position(|c| &**c == client) else {
            return;
        };
        p.clients.swap_remove(i);
        if p.clients.is_empty() {
            p.status = Status::Offline;
            p.since = now_secs();
            let snapshot = p.to_api(user);
            drop(users);
            self.note_last_seen(user, snapshot.since);
            self.publish(&snapshot);
        }
    }

    /// Sets away/busy/online and the status text of a connected user, kept for the
    /// user's later connections too. False when the user has no connection (offline
    /// is not something one sets).
    pub fn set(&self, user: &str, status: Status, text: Option<String>) -> bool {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let Some(p) = users.get_mut(user).filter(|p| !p.clients.is_empty()) else {
            return false;
        };
        if p.status != status {
            p.since = now_secs();
        }
        p.status = status;
        p.chosen = status;
        p.text = text.map(String::into_boxed_str);
        let snapshot = p.to_api(user);
        drop(users);
        self.publish(&snapshot);
        true
    }

    /// Whether `client` is `user`'s only connection up now: then a copy for the user's
    /// other devices has nobody to go to live (a device connecting later is replayed
    /// its mailbox).
    pub fn only_connection(&self, user: &str, client: &str) -> bool {
        let users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        users
            .get(user)
            .is_some_and(|p| p.clients.len() == 1 && &*p.clients[0] == client)
    }

    /// The current presence of `user` (offline, never seen, when unknown).
    pub fn get(&self, user: &str) -> Presence {
        let users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        match users.get(user) {
            Some(p) => p.to_api(user),
            None => {
                drop(users);
                // Seen before a restart, perhaps (a cached read).
                let seen = self.store.as_ref().and_then(|s| s.last_seen(user).ok().flatten());
                Presence {
                    user: user.to_owned(),
                    status: Status::Offline,
                    text: None,
                    since: seen.unwrap_or(0),
                    last_seen: seen,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn only_connection_follows_each_connection_of_a_user() {
        let book = PresenceBook::new(Router::new(Config::default_config().limits));
        let (phone, laptop): (Arc<str>, Arc<str>) = ("alice-phone".into(), "alice-laptop".into());
        assert!(!book.only_connection("alice", "alice-phone"), "not connected");
        book.connected("alice", &phone);
        assert!(book.only_connection("alice", "alice-phone"));
        assert!(!book.only_connection("alice", "alice-laptop"));
        assert!(!book.only_connection("bob", "alice-phone"));
        book.connected("alice", &laptop);
        assert!(!book.only_connection("alice", "alice-phone"), "another device is up");
        // The same client id twice (a takeover whose old connection has not ended yet).
        book.connected("alice", &phone);
        book.disconnected("alice", "alice-laptop");
        assert!(!book.only_connection("alice", "alice-phone"));
        book.disconnected("alice", "alice-phone");
        assert!(book.only_connection("alice", "alice-phone"));
        assert_eq!(book.get("alice").status, Status::Online);
        book.disconnected("alice", "alice-phone");
        assert!(!book.only_connection("alice", "alice-phone"));
        assert_eq!(book.get("alice").status, Status::Offline);
        book.disconnected("alice", "alice-phone");
        assert_eq!(
            book.get("alice").status,
            Status::Offline,
            "an unknown connection ending changes nothing"
        );
    }

    #[test]
    fn a_chosen_status_holds_for_later_connections_and_is_hidden_while_offline() {
        let book = PresenceBook::new(Router::new(Config::default_config().limits));
        let (cli, chat): (Arc<str>, Arc<str>) = ("natter-once".into(), "natter-chat".into());
        assert!(!book.set("alice", Status::Away, Some("lunch".into())), "not connected");
        book.connected("alice", &cli);
        assert!(book.set("alice", Status::Away, Some("lunch".into())));
        book.disconnected("alice", "natter-once");
        let away = book.get("alice");
        assert_eq!(
            (away.status, away.text),
            (Status::Offline, None),
            "offline shows no text"
        );
        book.connected("alice", &chat);
        let back = book.get("alice");
        assert_eq!((back.status, back.text.as_deref()), (Status::Away, Some("lunch")));
        assert!(book.set("alice", Status::Online, None));
        book.disconnected("alice", "natter-chat");
        book.connected("alice", &chat);
        assert_eq!(book.get("alice").status, Status::Online);
    }
}
