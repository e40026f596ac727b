//! The foundation's authorization plugin.
//!
//! Until the IM layer brings per-user rules (mailboxes, friendships, groups, pattern
//! rules), this plugin grants every authenticated client (and anonymous clients when
//! `allow_anonymous` is on) the plain-MQTT rights of a shared broker, except:
//! - `$`-topics are broker-owned: clients never publish to them;
//! - `$SYS/...` may be subscribed to by admins only.
//!
//! It answers for every request, so plugins registered after it are never asked about
//! publish or subscribe; the IM layer registers its own plugin in its place.

use natter_shared::topic::parse_shared;

use crate::hooks::{Access, Hook, PublishDecision};
use crate::message::{ClientInfo, Message};

pub struct FoundationAcl;

/// The filter a subscription really matches against (without `$share/{group}/`).
fn effective_filter(filter: &str) -> &str {
    match parse_shared(filter) {
        Some(Ok((_, inner))) => inner,
        _ => filter,
    }
}

impl Hook for FoundationAcl {
    fn name(&self) -> &'static str {
        "foundation-acl"
    }

    fn authorize_subscribe(&self, client: &ClientInfo, filter: &str) -> Access {
        let f = effective_filter(filter);
        if f.starts_with("$SYS") && !client.admin {
            return Access::Deny;
        }
        Access::Allow
    }

    fn authorize_publish(&self, _client: &ClientInfo, msg: &Message) -> PublishDecision {
        if msg.topic.starts_with('$') {
            PublishDecision::Deny
        } else {
            PublishDecision::Allow
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use natter_shared::codec::{Properties, Protocol, QoS};

    fn client(admin: bool) -> ClientInfo {
        ClientInfo {
            username: Some("u".into()),
            client_id: "c".into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            protocol: Protocol::V5,
            admin,
        }
    }

    #[test]
    fn sys_is_for_admins_and_dollar_topics_are_not_publishable() {
        let acl = FoundationAcl;
        assert_eq!(acl.authorize_subscribe(&client(false), "$SYS/#"), Access::Deny);
        assert_eq!(acl.authorize_subscribe(&client(false), "$share/g/$SYS/x"), Access::Deny);
        assert_eq!(acl.authorize_subscribe(&client(true), "$SYS/#"), Access::Allow);
        assert_eq!(acl.authorize_subscribe(&client(false), "a/#"), Access::Allow);
        let msg = |t: &str| Message {
            topic: t.into(),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties::default(),
            expires_at: None,
            origin: None,
        };
        assert_eq!(
            acl.authorize_publish(&client(true), &msg("$SYS/x")),
            PublishDecision::Deny
        );
        assert_eq!(
            acl.authorize_publish(&client(false), &msg("a/b")),
            PublishDecision::Allow
        );
    }
}
