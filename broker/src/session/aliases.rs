//! Topic aliases toward a client (MQTT 5, section 3.3.2.3.4): when a client announces
//! a Topic Alias Maximum in CONNECT, the topics it is sent most get a number, and a
//! PUBLISH on such a topic carries the number and an empty topic. A device receiving
//! `inbox/{me}/dm/{friend}` over and over then saves those bytes on every message.
//!
//! At most min(client's maximum, `[limits] max_topic_aliases_out`) aliases; when all
//! are taken, the least recently used one is given to the new topic (the PUBLISH
//! then carries the topic and the alias, which remaps it). Aliases live as long as
//! the connection: a new connection starts with none.

use std::sync::Arc;

/// The topic aliases a client has set (MQTT 5), index = alias - 1: at most
/// `[limits] max_topic_aliases`, allocated when the client first uses one.
#[derive(Debug)]
pub(super) struct InAliases(Box<[Option<Arc<str>>]>);

impl InAliases {
    pub(super) fn new(max: u16) -> Box<InAliases> {
        Box::new(InAliases(vec![None; usize::from(max)].into_boxed_slice()))
    }

    /// The topic slot of `alias`; `None` for 0 and aliases above the maximum.
    pub(super) fn slot(&mut self, alias: u16) -> Option<&mut Option<Arc<str>>> {
        self.0.get_mut(usize::from(alias.checked_sub(1)?))
    }
}

/// The aliases toward one client.
#[derive(Debug)]
pub(super) struct OutAliases {
    max: u16,
    /// (topic, alias, last use), at most `max`.
    entries: Vec<(Arc<str>, u16, u64)>,
    uses: u64,
}

/// How to send a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Alias {
    /// The client knows this alias for the topic: send the alias and an empty topic.
    Known(u16),
    /// Newly (re)assigned: send the topic with the alias.
    Set(u16),
}

impl OutAliases {
    /// `None` when no alias may be used (either side's maximum is 0).
    pub(super) fn new(client_max: Option<u16>, ours: u16) -> Option<Box<OutAliases>> {
        let max = client_max.unwrap_or(0).min(ours);
        (max > 0).then(|| {
            Box::new(OutAliases {
                max,
                entries: Vec::new(),
                uses: 0,
            })
        })
    }

    /// The alias to send `topic` with.
    pub(super) fn alias(&mut self, topic: &Arc<str>) -> Alias {
        self.uses += 1;
        let now = self.uses;
        if let Some(e) = self.entries.iter_mut().find(|e| *e.0 == **topic) {
            e.2 = now;
            return Alias::Known(e.1);
        }
        if self.entries.len() < usize::from(self.max) {
            let alias = self.entries.len() as u16 + 1;
            self.entries.push((topic.clone(), alias, now));
            return Alias::Set(alias);
        }
        // Full: the least recently used alias now names this topic.
        let Some(oldest) = self.entries.iter_mut().min_by_key(|e| e.2) else {
            return Alias::Set(1);
        };
        *oldest = (topic.clone(), oldest.1, now);
        Alias::Set(oldest.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_may_set_aliases_from_1_to_the_maximum() {
        let mut aliases = InAliases::new(2);
        assert!(aliases.slot(0).is_none(), "0 is not an alias");
        assert!(aliases.slot(3).is_none(), "above the maximum");
        *aliases.slot(2).unwrap() = Some("a/b".into());
        assert_eq!(aliases.slot(2).unwrap().as_deref(), Some("a/b"));
        assert!(aliases.slot(1).unwrap().is_none());
    }

    #[test]
    fn no_aliases_unless_both_sides_allow_them() {
        assert!(OutAliases::new(None, 16).is_none());
        assert!(OutAliases::new(Some(0), 16).is_none());
        assert!(OutAliases::new(Some(10), 0).is_none());
        assert_eq!(OutAliases::new(Some(10), 16).unwrap().max, 10);
        assert_eq!(OutAliases::new(Some(100), 16).unwrap().max, 16);
    }

    #[test]
    fn topics_get_aliases_in_turn_and_the_least_recently_used_is_reused() {
        let mut a = OutAliases::new(Some(2), 16).unwrap();
        let (x, y, z): (Arc<str>, Arc<str>, Arc<str>) = ("inbox/b/dm/a".into(), "inbox/b/dm/c".into(), "t".into());
        assert_eq!(a.alias(&x), Alias::Set(1));
        assert_eq!(a.alias(&x), Alias::Known(1));
        assert_eq!(a.alias(&y), Alias::Set(2));
        assert_eq!(a.alias(&x), Alias::Known(1));
        // Full: y was used least recently, so z takes its alias.
        assert_eq!(a.alias(&z), Alias::Set(2));
        assert_eq!(a.alias(&z), Alias::Known(2));
        assert_eq!(a.alias(&x), Alias::Known(1));
        assert_eq!(a.alias(&y), Alias::Set(2), "y must be sent in full again");
    }
}
