//! Operator rules for device and other non-IM topics, Mosquitto-style, from
//! `config.toml`:
//!
//! ```toml
//! [[acl.rules]]
//! filter = "devices/%u/#"   # %u: user name, %c: client id
//! access = "readwrite"      # "read" (subscribe), "write" (publish), "readwrite"
//! effect = "allow"          # or "deny"
//! who = "all"               # "all", "admins", "anonymous", "users" (with users = [...])
//! ```
//!
//! The first rule that applies to the client, the operation and the topic decides;
//! rules are consulted only for topics outside the IM namespaces, after the built-in
//! IM rules; when none applies the answer is deny.

use natter_shared::topic::{matches, validate_filter};

pub use crate::config::rule::{Access, Effect, Rule, Who};

/// The operation being authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Subscribe,
    Publish,
}

/// The client, as the rules see it.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub user: Option<&'a str>,
    pub client_id: &'a str,
    pub admin: bool,
}

impl Rule {
    fn applies_to(&self, s: &Subject<'_>, op: Op) -> bool {
        let who = match self.who {
            Who::All => true,
            Who::Admins => s.admin,
            Who::Anonymous => s.user.is_none(),
            Who::Users => s.user.is_some_and(|u| self.users.iter().any(|x| x == u)),
        };
        let access = matches!(
            (self.access, op),
            (Access::ReadWrite, _) | (Access::Read, Op::Subscribe) | (Access::Write, Op::Publish)
        );
        who && access
    }

    /// The rule's filter with placeholders filled in, or `None` when a placeholder has
    /// no usable value (anonymous `%u`; a client id with `/`, `+`, `#` or empty).
    fn expand(&self, s: &Subject<'_>) -> Option<String> {
        let mut f = self.filter.clone();
        if f.contains("%u") {
            f = f.replace("%u", s.user?);
        }
        if f.contains("%c") {
            let c = s.client_id;
            if c.is_empty() || c.contains(['/', '+', '#']) {
                return None;
            }
            f = f.replace("%c", c);
        }
        validate_filter(&f).is_ok().then_some(f)
    }
}

/// True when every topic `inner` matches is also matched by `outer` (both valid,
/// non-shared filters).
pub fn filter_within(inner: &str, outer: &str) -> bool {
    if inner.starts_with('$') != outer.starts_with('$') && !outer.starts_with('$') {
        // A wildcard at the start of `outer` never covers `$` topics.
        return false;
    }
    let mut i = inner.split('/');
    let mut o = outer.split('/');
    loop {
        match (i.next(), o.next()) {
            (_, Some("#")) => return true,
            (Some("#"), _) => return false,
            (Some("+"), Some("+")) => {}
            (Some("+"), Some(_)) => return false,
            (Some(_), Some("+")) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The first applicable rule's effect, `None` when no rule applies.
pub fn decide(rules: &[Rule], s: &Subject<'_>, op: Op, topic_or_filter: &str) -> Option<Effect> {
    rules.iter().find_map(|r| {
        if !r.applies_to(s, op) {
            return None;
        }
        let f = r.expand(s)?;
        let hit = match op {
            Op::Publish => matches(&f, topic_or_filter),
            Op::Subscribe => filter_within(topic_or_filter, &f),
        };
        hit.then_some(r.effect)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(filter: &str, access: Access, effect: Effect, who: Who, users: &[&str]) -> Rule {
        Rule {
            filter: filter.into(),
            access,
            effect,
            who,
            users: users.iter().map(|u| u.to_string()).collect(),
        }
    }

    fn alice() -> Subject<'static> {
        Subject {
            user: Some("alice"),
            client_id: "phone",
            admin: false,
        }
    }

    #[test]
    fn filter_within_covers_wildcard_edge_cases() {
        let yes = [
            ("a/b", "a/b"),
            ("a/b", "a/+"),
            ("a/b", "a/#"),
            ("a", "a/#"),
            ("a/+", "a/+"),
            ("a/+", "a/#"),
            ("a/+/c", "a/#"),
            ("a/#", "a/#"),
            ("a/b/#", "a/+/#"),
            ("$SYS/x", "$SYS/#"),
            ("x/y", "#"),
        ];
        for (i, o) in yes {
            assert!(filter_within(i, o), "{i} within {o}");
        }
        let no = [
            ("a/#", "a/b"),
            ("a/#", "a/+"),
            ("a/+", "a/b"),
            ("a/b/c", "a/+"),
            ("a", "a/+"),
            ("b/c", "a/#"),
            ("#", "a/#"),
            ("+/b", "a/b"),
            ("$SYS/x", "#"),
            ("$SYS/x", "+/x"),
        ];
        for (i, o) in no {
            assert!(!filter_within(i, o), "{i} not within {o}");
        }
    }

    #[test]
    fn placeholders_first_match_and_default() {
        let rules = vec![
            rule("devices/%u/secret", Access::ReadWrite, Effect::Deny, Who::All, &[]),
            rule("devices/%u/#", Access::ReadWrite, Effect::Allow, Who::All, &[]),
            rule("clients/%c/#", Access::Write, Effect::Allow, Who::All, &[]),
            rule("telemetry/#", Access::Read, Effect::Allow, Who::Admins, &[]),
            rule("public/#", Access::Read, Effect::Allow, Who::Anonymous, &[]),
            rule("ops/#", Access::ReadWrite, Effect::Allow, Who::Users, &["bob"]),
        ];
        let a = alice();
        assert_eq!(
            decide(&rules, &a, Op::Publish, "devices/alice/temp"),
            Some(Effect::Allow)
        );
        assert_eq!(
            decide(&rules, &a, Op::Subscribe, "devices/alice/+"),
            Some(Effect::Allow)
        );
        assert_eq!(
            decide(&rules, &a, Op::Publish, "devices/alice/secret"),
            Some(Effect::Deny),
            "first match wins"
        );
        assert_eq!(decide(&rules, &a, Op::Publish, "devices/bob/temp"), None);
        assert_eq!(
            decide(&rules, &a, Op::Subscribe, "devices/+/temp"),
            None,
            "wider than the rule"
        );
        assert_eq!(decide(&rules, &a, Op::Publish, "clients/phone/x"), Some(Effect::Allow));
        assert_eq!(
            decide(&rules, &a, Op::Subscribe, "clients/phone/x"),
            None,
            "write-only rule"
        );
        assert_eq!(decide(&rules, &a, Op::Subscribe, "telemetry/x"), None, "admins only");
        let admin = Subject { admin: true, ..a };
        assert_eq!(
            decide(&rules, &admin, Op::Subscribe, "telemetry/#"),
            Some(Effect::Allow)
        );
        let anon = Subject {
            user: None,
            client_id: "x",
            admin: false,
        };
        assert_eq!(decide(&rules, &anon, Op::Subscribe, "public/a"), Some(Effect::Allow));
        assert_eq!(
            decide(&rules, &anon, Op::Publish, "devices/x/y"),
            None,
            "%u needs a user"
        );
        assert_eq!(decide(&rules, &a, Op::Publish, "ops/x"), None);
        let bob = Subject { user: Some("bob"), ..a };
        assert_eq!(decide(&rules, &bob, Op::Publish, "ops/x"), Some(Effect::Allow));
    }

    #[test]
    fn odd_client_ids_never_widen_a_rule() {
        let rules = vec![rule("clients/%c/#", Access::ReadWrite, Effect::Allow, Who::All, &[])];
        for id in ["a/b", "+", "#", ""] {
            let s = Subject {
                user: Some("alice"),
                client_id: id,
                admin: false,
            };
            assert_eq!(
                decide(&rules, &s, Op::Subscribe, "clients/a/b/c"),
                None,
                "client id {id:?}"
            );
            assert_eq!(decide(&rules, &s, Op::Subscribe, "clients/#"), None);
        }
    }

    #[test]
    fn validation_refuses_bad_rules() {
        let r = |f: &str| rule(f, Access::ReadWrite, Effect::Allow, Who::All, &[]);
        assert!(r("devices/%u/#").validate(true).is_ok());
        for bad in ["inbox/%u/#", "dm/#", "#", "+/x", "a/#/b", "presence/x"] {
            assert!(r(bad).validate(true).is_err(), "{bad}");
        }
        // With the IM layer off nothing is reserved; filters are still checked.
        for fine in ["inbox/%u/#", "dm/#", "#", "+/x", "presence/x"] {
            assert!(r(fine).validate(false).is_ok(), "{fine}");
        }
        assert!(r("a/#/b").validate(false).is_err());
        for im in [true, false] {
            assert!(rule("x", Access::Read, Effect::Allow, Who::Users, &[])
                .validate(im)
                .is_err());
            assert!(rule("x", Access::Read, Effect::Allow, Who::All, &["a"])
                .validate(im)
                .is_err());
        }
    }
}
