//! Authorization, deny by default: the built-in IM rules (mailboxes, presence, the
//! IM namespaces) and then the operator's [`rules`] for other topics. Plain functions,
//! so every case is unit-tested here; the IM plugin calls them with what it knows of
//! friendships.

pub mod plain;
pub mod rules;

use natter_shared::im::{self, NAMESPACES};
use natter_shared::names::is_valid_name;
use natter_shared::topic::parse_shared;

use crate::model::Restriction;

/// What the built-in rules say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    Allow,
    Deny,
    /// Not an IM topic: the operator rules decide.
    Rules,
}

/// Who is asking.
#[derive(Debug, Clone, Copy)]
pub struct Asker<'a> {
    pub user: Option<&'a str>,
    pub admin: bool,
    pub restriction: Option<Restriction>,
}

/// The filter a subscription really matches against (without `$share/{group}/`).
pub fn effective_filter(filter: &str) -> &str {
    match parse_shared(filter) {
        Some(Ok((_, inner))) => inner,
        _ => filter,
    }
}

/// May `who` subscribe to `filter`? `sees_presence(user)` answers whether the asker
/// may see that user's presence (self, friend, or everyone when visibility is "all");
/// `presence_all` allows wildcards over `presence/`.
pub fn subscribe(who: &Asker<'_>, filter: &str, presence_all: bool, sees_presence: impl Fn(&str) -> bool) -> Builtin {
    let f = effective_filter(filter);
    let mut levels = f.split('/');
    let first = levels.next().unwrap_or("");
    let second = levels.next();
    let rest: Vec<&str> = levels.collect();
    match who.restriction {
        Some(Restriction::Register) => {
            return match (first, second) {
                (im::REGISTER, Some(r)) if rest.is_empty() && !r.is_empty() && !r.contains(['+', '#']) => {
                    Builtin::Allow
                }
                _ => Builtin::Deny,
            };
        }
        Some(Restriction::Reset) => {
            let own_api = who.user.is_some_and(|me| second == Some(me)) && first == im::INBOX;
            return if own_api && rest.first().is_some_and(|l| *l == "api" || *l == "#") {
                Builtin::Allow
            } else {
                Builtin::Deny
            };
        }
        None => {}
    }
    if who.admin {
        return Builtin::Allow;
    }
    if first.starts_with('$') || first == "+" || first == "#" {
        return Builtin::Deny;
    }
    if !NAMESPACES.contains(&first) {
        return Builtin::Rules;
    }
    let Some(me) = who.user else {
        // Anonymous clients may wait for a registration answer, nothing else here.
        let literal = second.is_some_and(|r| !r.is_empty() && !r.contains(['+', '#']));
        return if first == im::REGISTER && literal && rest.is_empty() {
            Builtin::Allow
        } else {
            Builtin::Deny
        };
    };
    match (first, second) {
        (im::INBOX, Some(owner)) if owner == me => Builtin::Allow,
        (im::PRESENCE, Some(user)) if rest.is_empty() || rest == ["#"] => {
            if user == "+" || user == "#" {
                if presence_all {
                    Builtin::Allow
                } else {
                    Builtin::Deny
                }
            } else if is_valid_name(user) && (user == me || sees_presence(user)) {
                Builtin::Allow
            } else {
                Builtin::Deny
            }
        }
        _ => Builtin::Deny,
    }
}

/// What a publish is, for the IM layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishClass<'a> {
    /// The IM layer takes it (after its own checks).
    Im(im::Publish<'a>),
    Deny,
    Rules,
}

/// Classifies and pre-authorizes a publish.
pub fn publish<'t>(who: &Asker<'_>, topic: &'t str) -> PublishClass<'t> {
    if topic.starts_with('$') {
        return PublishClass::Deny;
    }
    let class = im::classify(topic);
    match (who.restriction, class) {
        (Some(Restriction::Register), im::Publish::Api { command })
            if command == natter_shared::api::command::ACCOUNT_REGISTER =>
        {
            PublishClass::Im(class)
        }
        (Some(Restriction::Reset), im::Publish::Api { command })
            if command == natter_shared::api::command::ACCOUNT_RESET =>
        {
            PublishClass::Im(class)
        }
        (Some(_), _) => PublishClass::Deny,
        (None, im::Publish::Reserved) => PublishClass::Deny,
        (None, im::Publish::Other) => PublishClass::Rules,
        (None, c) => PublishClass::Im(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Asker<'static> {
        Asker {
            user: Some("alice"),
            admin: false,
            restriction: None,
        }
    }

    fn sub(who: &Asker<'_>, f: &str) -> Builtin {
        subscribe(who, f, false, |u| u == "bob")
    }

    #[test]
    fn own_mailbox_only() {
        let a = alice();
        for ok in [
            "inbox/alice/#",
            "inbox/alice/dm/+",
            "inbox/alice/dm/bob",
            "$share/g/inbox/alice/#",
            "inbox/alice",
        ] {
            assert_eq!(sub(&a, ok), Builtin::Allow, "{ok}");
        }
        for bad in [
            "inbox/bob/#",
            "inbox/+/#",
            "inbox/#",
            "inbox/+/dm/alice",
            "#",
            "+/alice/#",
            "+",
            "$SYS/#",
            "$share/g/inbox/bob/#",
            "$share/g/#",
            "dm/alice",
            "group/g1",
            "api/#",
            "register/x",
            "inbox",
        ] {
            assert_eq!(sub(&a, bad), Builtin::Deny, "{bad}");
        }
    }

    #[test]
    fn presence_of_self_and_friends() {
        let a = alice();
        assert_eq!(sub(&a, "presence/alice"), Builtin::Allow);
        assert_eq!(sub(&a, "presence/bob"), Builtin::Allow, "friend");
        assert_eq!(sub(&a, "presence/carol"), Builtin::Deny, "not a friend");
        assert_eq!(sub(&a, "presence/+"), Builtin::Deny);
        assert_eq!(sub(&a, "presence/#"), Builtin::Deny);
        assert_eq!(
            subscribe(&a, "presence/+", true, |_| true),
            Builtin::Allow,
            "visibility all"
        );
        assert_eq!(subscribe(&a, "presence/carol", true, |_| true), Builtin::Allow);
        assert_eq!(sub(&a, "presence/bob/x"), Builtin::Deny);
        let anon = Asker {
            user: None,
            admin: false,
            restriction: None,
        };
        assert_eq!(sub(&anon, "presence/bob"), Builtin::Deny);
        assert_eq!(sub(&anon, "inbox/alice/#"), Builtin::Deny);
    }

    #[test]
    fn other_topics_go_to_the_rules_and_admins_see_all() {
        let a = alice();
        assert_eq!(sub(&a, "devices/alice/#"), Builtin::Rules);
        assert_eq!(sub(&a, "$share/g/devices/#"), Builtin::Rules);
        let root = Asker {
            user: Some("root"),
            admin: true,
            restriction: None,
        };
        for f in ["#", "$SYS/#", "inbox/+/#", "+/x"] {
            assert_eq!(sub(&root, f), Builtin::Allow, "{f}");
        }
    }

    #[test]
    fn restricted_clients() {
        let reg = Asker {
            user: None,
            admin: false,
            restriction: Some(Restriction::Register),
        };
        assert_eq!(sub(&reg, "register/abc"), Builtin::Allow);
        for bad in ["register/+", "register/#", "inbox/x/#", "devices/x", "register"] {
            assert_eq!(sub(&reg, bad), Builtin::Deny, "{bad}");
        }
        assert_eq!(
            publish(&reg, "api/account.register"),
            PublishClass::Im(im::Publish::Api {
                command: "account.register"
            })
        );
        assert_eq!(publish(&reg, "api/friends.list"), PublishClass::Deny);
        assert_eq!(publish(&reg, "dm/bob"), PublishClass::Deny);
        assert_eq!(publish(&reg, "devices/x"), PublishClass::Deny);
        let reset = Asker {
            user: Some("bob"),
            admin: false,
            restriction: Some(Restriction::Reset),
        };
        assert_eq!(sub(&reset, "inbox/bob/api/#"), Builtin::Allow);
        assert_eq!(sub(&reset, "inbox/bob/#"), Builtin::Allow);
        assert_eq!(sub(&reset, "inbox/bob/dm/#"), Builtin::Deny);
        assert_eq!(
            publish(&reset, "api/account.reset"),
            PublishClass::Im(im::Publish::Api {
                command: "account.reset"
            })
        );
        assert_eq!(publish(&reset, "dm/alice"), PublishClass::Deny);
        assert_eq!(
            publish(&reset, "api/account.whoami"),
            PublishClass::Deny,
            "only the reset"
        );
        // Only bob's own mailbox's API answers: not another namespace with his name.
        for bad in ["presence/bob/api", "devices/bob/api/#", "inbox/alice/api/#"] {
            assert_eq!(sub(&reset, bad), Builtin::Deny, "{bad}");
        }
    }

    #[test]
    fn anonymous_clients_may_only_wait_for_a_registration_answer() {
        let anon = Asker {
            user: None,
            admin: false,
            restriction: None,
        };
        assert_eq!(sub(&anon, "register/r42"), Builtin::Allow);
        for bad in [
            "register/",
            "register/+",
            "register/#",
            "register/r42/x",
            "inbox/r42/#",
            "presence/bob",
        ] {
            assert_eq!(sub(&anon, bad), Builtin::Deny, "{bad}");
        }
    }

    #[test]
    fn publish_classes() {
        let a = alice();
        assert_eq!(publish(&a, "dm/bob"), PublishClass::Im(im::Publish::Dm { to: "bob" }));
        assert_eq!(
            publish(&a, "group/g1"),
            PublishClass::Im(im::Publish::Group { group: "g1" })
        );
        for bad in [
            "inbox/bob/dm/alice",
            "presence/alice",
            "$SYS/x",
            "dm/Bob",
            "register/x",
            "api/",
        ] {
            assert_eq!(publish(&a, bad), PublishClass::Deny, "{bad}");
        }
        assert_eq!(publish(&a, "devices/alice/temp"), PublishClass::Rules);
    }
}
