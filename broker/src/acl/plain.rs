//! Authorization for natterd as a plain MQTT broker (`[im] enabled = false`): the
//! operator's rules over the whole topic space, deny by default. No namespace is
//! reserved; `$`-topics are not published to by clients; admins may subscribe to
//! anything, as with IM on; a restricted login (a reset token) may do nothing.

use super::rules::{self, Effect, Op, Rule, Subject};
use crate::hooks::{Access, Hook, PublishDecision};
use crate::model::{ClientInfo, Message};

/// The rules plugin.
pub struct PlainAcl {
    rules: Vec<Rule>,
}

impl PlainAcl {
    pub fn new(rules: Vec<Rule>) -> PlainAcl {
        PlainAcl { rules }
    }

    fn decide(&self, c: &ClientInfo, op: Op, topic_or_filter: &str) -> bool {
        let subject = Subject {
            user: c.username.as_deref(),
            client_id: &c.client_id,
            admin: c.admin,
        };
        c.restriction.is_none() && rules::decide(&self.rules, &subject, op, topic_or_filter) == Some(Effect::Allow)
    }
}

impl Hook for PlainAcl {
    fn name(&self) -> &'static str {
        "plain-acl"
    }

    fn authorize_subscribe(&self, c: &ClientInfo, filter: &str) -> Access {
        let allowed =
            (c.admin && c.restriction.is_none()) || self.decide(c, Op::Subscribe, super::effective_filter(filter));
        if allowed {
            Access::Allow
        } else {
            Access::Deny
        }
    }

    fn on_publish(&self, c: &ClientInfo, msg: &Message) -> PublishDecision {
        if !msg.topic.starts_with('$') && self.decide(c, Op::Publish, &msg.topic) {
            PublishDecision::Route
        } else {
            PublishDecision::Refuse(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::rule::{Access as Rw, Who};
    use crate::model::Restriction;
    use bytes::Bytes;
    use natter_shared::codec::{Protocol, QoS};

    fn rule(filter: &str, access: Rw, effect: Effect) -> Rule {
        Rule {
            filter: filter.into(),
            access,
            effect,
            who: Who::All,
            users: Vec::new(),
        }
    }

    fn client(user: Option<&str>, admin: bool) -> ClientInfo {
        ClientInfo {
            username: user.map(Into::into),
            client_id: "dev-1".into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            protocol: Protocol::V5,
            admin,
            restriction: None,
            persistent: false,
        }
    }

    fn publish(acl: &PlainAcl, c: &ClientInfo, topic: &str) -> bool {
        let m = Message::broker(topic, Bytes::new(), QoS::AtMostOnce, false);
        matches!(acl.on_publish(c, &m), PublishDecision::Route)
    }

    #[test]
    fn the_rules_decide_over_the_whole_topic_space_and_deny_by_default() {
        let acl = PlainAcl::new(vec![
            rule("private/#", Rw::ReadWrite, Effect::Deny),
            rule("devices/%c/#", Rw::Write, Effect::Allow),
            rule("#", Rw::Read, Effect::Allow),
        ]);
        let alice = client(Some("alice"), false);
        // What IM mode reserves is an ordinary topic here.
        assert_eq!(acl.authorize_subscribe(&alice, "inbox/bob/#"), Access::Allow);
        assert_eq!(acl.authorize_subscribe(&alice, "#"), Access::Allow);
        assert_eq!(acl.authorize_subscribe(&alice, "$share/g/dm/#"), Access::Allow);
        assert_eq!(
            acl.authorize_subscribe(&alice, "private/x"),
            Access::Deny,
            "first match wins"
        );
        assert!(publish(&acl, &alice, "devices/dev-1/temp"));
        assert!(!publish(&acl, &alice, "devices/dev-2/temp"), "%c is the client id");
        assert!(
            !publish(&acl, &alice, "dm/bob"),
            "read-only elsewhere: no rule allows it"
        );
        assert!(!publish(&acl, &alice, "$SYS/x"));
        // Admins subscribe to anything; they publish by the rules too.
        let root = client(Some("root"), true);
        assert_eq!(acl.authorize_subscribe(&root, "private/#"), Access::Allow);
        assert!(!publish(&acl, &root, "private/x"));
        // No rules: nothing but an admin's subscriptions.
        let none = PlainAcl::new(Vec::new());
        assert_eq!(none.authorize_subscribe(&alice, "a"), Access::Deny);
        assert!(!publish(&none, &alice, "a"));
        // A reset-token login has no API to use here: it may do nothing.
        let mut reset = client(Some("alice"), false);
        reset.restriction = Some(Restriction::Reset);
        assert_eq!(acl.authorize_subscribe(&reset, "inbox/alice/#"), Access::Deny);
        assert!(!publish(&acl, &reset, "devices/dev-1/temp"));
    }
}
