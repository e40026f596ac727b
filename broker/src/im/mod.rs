//! The IM layer, as one plugin on the hook layer: authorization of the IM topics and
//! the operator rules, direct and group messages through the mailboxes, presence, and
//! the API over MQTT. The MQTT core knows none of this.

pub mod api;
mod files;
pub mod indexer;
pub mod mailbox;
pub mod presence;
mod replay;
pub mod writer;

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use natter_shared::codec::QoS;
use natter_shared::im::{self, refusal, Publish};

use tokio::sync::Semaphore;

use crate::accounts::guard::LoginGuard;
use crate::accounts::password::PasswordHasherConfig;
use crate::acl::rules::{self, Effect, Op, Subject};
use crate::acl::{self, Asker, Builtin, PublishClass};
use crate::admin::Admin;
use crate::config::{Config, DmPolicy, FilesConfig, ImConfig, PresenceVisibility};
use crate::hooks::{self, Access, Hook, NotStored, PublishDecision, Receipt, SessionView};
use crate::model::Subscription;
use crate::model::{ClientInfo, Message};
use crate::router::Router;
use crate::store::{Route, Store, StoreError, StoredMessage};

use mailbox::Mailboxes;
pub use presence::PresenceBook;
use writer::Writer;

/// Shared by the plugin and the API tasks it spawns.
pub struct ImState {
    pub store: Store,
    pub router: Router,
    pub config: ImConfig,
    /// File transfer limits (`[files]`).
    pub files: FilesConfig,
    pub rules: Vec<rules::Rule>,
    pub mailboxes: Mailboxes,
    pub presence: Arc<PresenceBook>,
    pub hasher: PasswordHasherConfig,
    /// For admin commands: the same handling as the control socket's.
    pub admin: Admin,
    /// Throttle and argon2 pool, shared with CONNECT's password checks.
    pub guard: Arc<LoginGuard>,
    /// API requests handled at once (`im.api_workers`).
    pub api_slots: Arc<Semaphore>,
}

/// The IM plugin.
pub struct ImPlugin {
    state: Arc<ImState>,
}

// Conversation keys and mailbox suffixes are the store's: a message's route says
// where it goes, and the journal writes DMs and group messages by their shape (see
// `store::route`).
pub use crate::store::{dm_conversation, group_conversation};

fn asker(c: &ClientInfo) -> Asker<'_> {
    Asker {
        user: c.username.as_deref(),
        admin: c.admin,
        restriction: c.restriction,
    }
}

fn subject(c: &ClientInfo) -> Subject<'_> {
    Subject {
        user: c.username.as_deref(),
        client_id: &c.client_id,
        admin: c.admin,
    }
}

impl ImPlugin {
    /// `writer` stores and delivers mailbox messages (see [`writer`]).
    pub fn new(
        admin: Admin,
        router: Router,
        config: &Config,
        writer: Writer,
        presence: Arc<PresenceBook>,
        guard: Arc<LoginGuard>,
    ) -> ImPlugin {
        let store = admin.store.clone();
        let (config, files, acl) = (config.im.clone(), config.files.clone(), config.acl.clone());
        let plugin = ImPlugin {
            state: Arc::new(ImState {
                mailboxes: Mailboxes::new(store.clone(), writer),
                presence,
                hasher: admin.hasher.clone(),
                api_slots: Arc::new(Semaphore::new(config.api_workers.get())),
                guard,
                store,
                router,
                config,
                files,
                rules: acl.rules,
                admin,
            }),
        };
        files::start_sweeper(&plugin.state);
        plugin
    }

    fn stored(&self, from: &str, msg: &Message) -> StoredMessage {
        StoredMessage {
            from: from.to_owned(),
            ts: crate::clock::unix_ms(),
            payload: msg.payload.clone(),
            user_properties: msg.properties.user_properties.clone(),
            content_type: msg.properties.content_type.clone(),
        }
    }

    fn dm(&self, client: &ClientInfo, to: &str, msg: &Message) -> Result<PublishDecision, StoreError> {
        let s = &self.state;
        let Some(from) = client.username.as_deref() else {
            return Ok(PublishDecision::Refuse(Some(refusal::LOG_IN)));
        };
        if !s.store.user_exists(to)? {
            tracing::info!(from, to, "DM refused: no such user");
            return Ok(PublishDecision::Refuse(Some(refusal::NO_SUCH_USER)));
        }
        // Blocked and not friends read the same to the sender: a block is not told.
        if s.store.blocked(to, from)? {
            tracing::info!(from, to, "DM refused: blocked by the recipient");
            return Ok(PublishDecision::Refuse(Some(refusal::NOT_ACCEPTED)));
        }
        if s.config.dm_policy == DmPolicy::Friends && from != to && !s.store.are_friends(from, to)? {
            tracing::info!(from, to, "DM refused: not friends");
            return Ok(PublishDecision::Refuse(Some(refusal::NOT_ACCEPTED)));
        }
        // The recipient's mailbox, and the sender's own for their other devices.
        let route = Route::Direct {
            to: to.to_owned(),
            qos: msg.qos as u8,
        };
        Ok(self.post(client, from, msg, route))
    }

    /// Hands an accepted message to the writer; the publisher is acknowledged once it
    /// is stored.
    fn post(&self, client: &ClientInfo, from: &str, msg: &Message, route: Route) -> PublishDecision {
        let stored = self.stored(from, msg);
        let sender = Some(client.client_id.clone());
        match self.state.mailboxes.post(stored, route, msg.origin, sender, true) {
            Ok(Some(receipt)) => PublishDecision::TakenOver(receipt),
            Ok(None) => PublishDecision::TakenOver(hooks::receipt(Ok(()))),
            Err(why) => {
                tracing::warn!(from, %why, "message not taken");
                PublishDecision::TakenOver(hooks::receipt(Err(why)))
            }
        }
    }

    fn group(&self, client: &ClientInfo, group: &str, msg: &Message) -> Result<PublishDecision, StoreError> {
        let s = &self.state;
        let Some(from) = client.username.as_deref() else {
            return Ok(PublishDecision::Refuse(Some(refusal::LOG_IN)));
        };
        let members = s.store.members_shared(group)?;
        if !members.iter().any(|(m, _)| m == from) {
            tracing::info!(from, group, "group message refused: not a member");
            return Ok(PublishDecision::Refuse(Some(refusal::NOT_MEMBER)));
        }
        // Every member's mailbox (the members now: one who joins later gets what
        // follows, one who left gets nothing more).
        let route = Route::Group {
            group: group.to_owned(),
            members,
            qos: msg.qos as u8,
        };
        Ok(self.post(client, from, msg, route))
    }

    fn sees_presence(&self, me: &str, user: &str) -> bool {
        self.state.config.presence_visibility == PresenceVisibility::All
            || me == user
            || self.state.store.are_friends(me, user).unwrap_or_else(|e| {
                // Fails closed, and says why.
                tracing::error!(me, user, error = %e, "friendship lookup failed: presence refused");
                false
            })
    }

    /// Mailbox filters cover `inbox/{me}/...`.
    fn is_mailbox_filter(me: &str, filter: &str) -> bool {
        let f = acl::effective_filter(filter);
        f.strip_prefix("inbox/").and_then(|r| r.split('/').next()) == Some(me)
    }
}

impl Hook for ImPlugin {
    fn name(&self) -> &'static str {
        "im"
    }

    fn authorize_subscribe(&self, client: &ClientInfo, filter: &str) -> Access {
        let all = self.state.config.presence_visibility == PresenceVisibility::All;
        let me = client.username.as_deref().unwrap_or("");
        match acl::subscribe(&asker(client), filter, all, |u| self.sees_presence(me, u)) {
            Builtin::Allow => Access::Allow,
            Builtin::Deny => Access::Deny,
            Builtin::Rules => match rules::decide(
                &self.state.rules,
                &subject(client),
                Op::Subscribe,
                acl::effective_filter(filter),
            ) {
                Some(Effect::Allow) => Access::Allow,
                _ => Access::Deny,
            },
        }
    }

    fn on_publish(&self, client: &ClientInfo, msg: &Message) -> PublishDecision {
        let result = match acl::publish(&asker(client), &msg.topic) {
            PublishClass::Deny => Ok(PublishDecision::Refuse(Some(refusal::FORBIDDEN_TOPIC))),
            PublishClass::Rules => Ok(
                match rules::decide(&self.state.rules, &subject(client), Op::Publish, &msg.topic) {
                    Some(Effect::Allow) => PublishDecision::Route,
                    _ => PublishDecision::Refuse(Some(refusal::NO_RULE)),
                },
            ),
            PublishClass::Im(Publish::Dm { to }) => self.dm(client, to, msg),
            PublishClass::Im(Publish::Group { group }) => self.group(client, group, msg),
            PublishClass::Im(Publish::Api { command }) => {
                let answered = api::spawn(self.state.clone(), client.clone(), command.to_owned(), msg.clone());
                Ok(PublishDecision::TakenOver(answered))
            }
            PublishClass::Im(Publish::FileChunk { id, index }) => Ok(files::chunk(&self.state, client, id, index, msg)),
            PublishClass::Im(Publish::Reserved | Publish::Other) => {
                Ok(PublishDecision::Refuse(Some(refusal::FORBIDDEN_TOPIC)))
            }
        };
        result.unwrap_or_else(|e| {
            tracing::error!(topic = %msg.topic, error = %e, "message not stored");
            PublishDecision::TakenOver(hooks::receipt(Err(NotStored::Failed)))
        })
    }

    fn on_connected(&self, client: &ClientInfo, session: &SessionView, present: bool) {
        let Some(user) = client.username.as_deref() else {
            return;
        };
        if client.restriction.is_some() {
            return;
        }
        self.state.presence.connected(user, &client.client_id);
        if present && client.persistent {
            self.state.mailboxes.replay(user, &client.client_id, session);
        }
    }

    fn on_subscribed(
        &self,
        client: &ClientInfo,
        session: &SessionView,
        filter: &str,
        _sub: Subscription,
        new: bool,
    ) -> Option<Receipt> {
        let user = client.username.as_deref()?;
        if !new || !client.persistent || client.restriction.is_some() || !Self::is_mailbox_filter(user, filter) {
            return None;
        }
        // Replay only for the session's first mailbox subscription: with another one
        // already in place, what it covers was delivered or queued already.
        let others = session
            .filters()
            .iter()
            .filter(|f| *f != filter && Self::is_mailbox_filter(user, f))
            .count();
        // The SUBACK waits for the replay's start: a device's first cursor is on disk
        // by then.
        (others == 0)
            .then(|| self.state.mailboxes.replay(user, &client.client_id, session))
            .flatten()
    }

    fn on_disconnected(&self, client: &ClientInfo) {
        if let (Some(user), None) = (client.username.as_deref(), client.restriction) {
            self.state.presence.disconnected(user, &client.client_id);
        }
    }

    fn on_acked(&self, client: &ClientInfo, msg: &Message) {
        let (Some(user), Some(id)) = (client.username.as_deref(), msg.tag) else {
            return;
        };
        if !client.persistent || im::inbox_owner(&msg.topic) != Some(user) {
            return;
        }
        self.state.mailboxes.acked(user, &client.client_id, id);
    }

    fn on_acked_durably(&self, client: &ClientInfo, msg: &Message) -> Option<Receipt> {
        let (Some(user), Some(id)) = (client.username.as_deref(), msg.tag) else {
            return None;
        };
        if !client.persistent || im::inbox_owner(&msg.topic) != Some(user) {
            return None;
        }
        Some(self.state.mailboxes.acked_durably(user, &client.client_id, id))
    }
}

/// Default QoS of broker-originated API responses and events.
pub const RESPONSE_QOS: QoS = QoS::AtLeastOnce;
