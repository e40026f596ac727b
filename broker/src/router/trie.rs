//! The subscription trie: topic levels to subscribers, so matching a topic costs
//! what its matching subscriptions cost, not what all subscriptions cost.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::sparse::SparseMap;
use crate::model::{Session, Subscription};

/// One subscriber of one filter.
#[derive(Clone)]
pub struct Subscriber {
    pub session: Arc<Session>,
    pub sub: Subscription,
}

#[derive(Default)]
struct SharedGroup {
    members: Vec<Subscriber>,
    next: AtomicUsize,
}

impl SharedGroup {
    /// Round robin, preferring members whose client is connected.
    fn pick(&self) -> Option<&Subscriber> {
        let n = self.members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.members[(start + i) % n])
            .find(|m| m.session.is_online())
            .or_else(|| self.members.get(start % n.max(1)))
    }
}

/// With SipHash, hashing was the largest part of routing.
type Map<K, V> = crate::FastMap<K, V>;

#[derive(Default)]
struct Node {
    /// Boxed children keep the maps' buckets small: most nodes have one child.
    children: SparseMap<Box<str>, Box<Node>>,
    /// Whether `children` has a `+` child: most nodes have none, and a walk then
    /// looks up one key per level instead of two.
    has_plus: bool,
    /// The subscribers of this node's filter.
    here: Here,
    /// The subscribers of this node's filter followed by `/#` (or of `#` at the
    /// root). `#` is always a filter's last level, so it needs no node of its own:
    /// a user's `inbox/{me}/#` costs one small allocation here, not a child map and
    /// a node.
    hash: Option<Box<Here>>,
}

/// The subscribers of one filter: plain ones and shared groups.
#[derive(Default)]
struct Here {
    subscribers: Subscribers,
    shared: SparseMap<Box<str>, SharedGroup>,
}

impl Here {
    /// Adds or replaces; true when new.
    fn insert(&mut self, group: Option<&str>, subscriber: Subscriber) -> bool {
        let id = subscriber.session.id;
        match group {
            None => self.subscribers.insert(subscriber),
            Some(g) => {
                let group = self.shared.get_or_default(g.into());
                match group.members.iter_mut().find(|m| m.session.id == id) {
                    Some(m) => {
                        *m = subscriber;
                        false
                    }
                    None => {
                        group.members.push(subscriber);
                        true
                    }
                }
            }
        }
    }

    /// True when it was there.
    fn remove(&mut self, group: Option<&str>, id: u64) -> bool {
        match group {
            None => self.subscribers.remove(id),
            Some(g) => {
                let Some(grp) = self.shared.get_mut(g) else {
                    return false;
                };
                let before = grp.members.len();
                grp.members.retain(|m| m.session.id != id);
                let removed = grp.members.len() != before;
                if grp.members.is_empty() {
                    self.shared.remove(g);
                }
                removed
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.subscribers.is_empty() && self.shared.is_empty()
    }

    fn visit(&self, visit: &mut dyn FnMut(&Subscriber)) {
        self.subscribers.for_each(&mut *visit);
        self.shared.values().filter_map(SharedGroup::pick).for_each(visit);
    }
}

/// A filter's subscribers, by session id: a short vector while there are few (most
/// filters, a user's own mailbox among them, have one: a map would allocate four
/// buckets for it), a map past [`FEW`].
enum Subscribers {
    Few(Vec<Subscriber>),
    Many(Box<Map<u64, Subscriber>>),
}

/// Most subscribers kept in a vector (searched linearly).
const FEW: usize = 16;

impl Default for Subscribers {
    fn default() -> Self {
        Subscribers::Few(Vec::new())
    }
}

impl Subscribers {
    /// Adds or replaces; true when `s`'s session was not subscribed.
    fn insert(&mut self, s: Subscriber) -> bool {
        let id = s.session.id;
        match self {
            Subscribers::Many(map) => map.insert(id, s).is_none(),
            Subscribers::Few(v) => {
                if let Some(old) = v.iter_mut().find(|o| o.session.id == id) {
                    *old = s;
                    return false;
                }
                if v.len() < FEW {
                    v.reserve_exact(1);
                    v.push(s);
                } else {
                    let mut map: Map<u64, Subscriber> = v.drain(..).map(|o| (o.session.id, o)).collect();
                    map.insert(id, s);
                    *self = Subscribers::Many(Box::new(map));
                }
                true
            }
        }
    }

    /// True when `id` was subscribed.
    fn remove(&mut self, id: u64) -> bool {
        match self {
            Subscribers::Many(map) => map.remove(&id).is_some(),
            Subscribers::Few(v) => match v.iter().position(|o| o.session.id == id) {
                Some(i) => {
                    v.swap_remove(i);
                    if v.is_empty() {
                        *v = Vec::new();
                    }
                    true
                }
                None => false,
            },
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Subscribers::Many(map) => map.is_empty(),
            Subscribers::Few(v) => v.is_empty(),
        }
    }

    fn for_each(&self, visit: &mut dyn FnMut(&Subscriber)) {
        match self {
            Subscribers::Many(map) => map.values().for_each(visit),
            Subscribers::Few(v) => v.iter().for_each(visit),
        }
    }
}

impl Node {
    fn child_mut(&mut self, level: &str) -> &mut Node {
        if level == "+" {
            self.has_plus = true;
        }
        self.children.get_or_default(level.into())
    }

    fn prune(&mut self, level: &str) {
        self.children.remove(level);
        if level == "+" {
            self.has_plus = false;
        }
    }

    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.here.is_empty() && self.hash.is_none()
    }
}

/// Filters to subscribers. Not synchronized: the router wraps it in a lock.
#[derive(Default)]
pub struct Trie {
    root: Node,
    count: usize,
}

impl Trie {
    /// Number of (filter, subscriber) entries.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Adds or replaces `subscriber` on `filter` (within `group` for a shared
    /// subscription). Returns true when it did not exist before.
    pub fn insert(&mut self, filter: &str, group: Option<&str>, subscriber: Subscriber) -> bool {
        let (path, hash) = match filter.strip_suffix('#') {
            Some(p) if p.is_empty() || p.ends_with('/') => (p.strip_suffix('/'), true),
            _ => (Some(filter), false),
        };
        let mut node = &mut self.root;
        for level in path.into_iter().flat_map(|p| p.split('/')) {
            node = node.child_mut(level);
        }
        let here = match hash {
            true => node.hash.get_or_insert_with(Box::default),
            false => &mut node.here,
        };
        let new = here.insert(group, subscriber);
        if new {
            self.count += 1;
        }
        new
    }

    /// Removes a session's subscription. Returns true when it existed. Empty nodes
    /// are pruned so the trie does not grow with churn.
    pub fn remove(&mut self, filter: &str, group: Option<&str>, session_id: u64) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = remove_rec(&mut self.root, &levels, group, session_id);
        if removed {
            self.count -= 1;
        }
        removed
    }

    /// Calls `visit` with every subscriber whose filter matches `topic` (one member
    /// per shared group). A session may be visited several times, once per matching
    /// filter. Allocates nothing.
    pub fn for_each_match(&self, topic: &str, mut visit: impl FnMut(&Subscriber)) {
        let dollar = topic.starts_with('$');
        match_rec(&self.root, Some(topic), true, dollar, &mut visit);
    }
}

fn remove_rec(node: &mut Node, levels: &[&str], group: Option<&str>, id: u64) -> bool {
    let Some((first, rest)) = levels.split_first() else {
        return node.here.remove(group, id);
    };
    if *first == "#" && rest.is_empty() {
        let Some(hash) = node.hash.as_mut() else {
            return false;
        };
        let removed = hash.remove(group, id);
        if hash.is_empty() {
            node.hash = None;
        }
        return removed;
    }
    let Some(child) = node.children.get_mut(*first) else {
        return false;
    };
    let removed = remove_rec(child, rest, group, id);
    if child.is_empty() {
        node.prune(first);
    }
    removed
}

/// `rest` is what is left of the topic: `None` once every level was consumed
/// (`Some("")` is an empty level, as in `a/`).
fn match_rec(node: &Node, rest: Option<&str>, first: bool, dollar: bool, visit: &mut dyn FnMut(&Subscriber)) {
    // Wildcards at the first level never match topics starting with '$' (MQTT-4.7.2-1).
    let wildcards = !(first && dollar);
    if let (true, Some(hash)) = (wildcards, &node.hash) {
        hash.visit(visit);
    }
    let Some(rest) = rest else {
        node.here.visit(visit);
        return;
    };
    let (level, tail) = match rest.split_once('/') {
        Some((level, tail)) => (level, Some(tail)),
        None => (rest, None),
    };
    if wildcards && node.has_plus {
        if let Some(plus) = node.children.get("+") {
            match_rec(plus, tail, false, dollar, visit);
        }
    }
    if let Some(child) = node.children.get(level) {
        match_rec(child, tail, false, dollar, visit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OverflowPolicy;
    use crate::model::SessionKey;
    use natter_shared::codec::SubscriptionOptions;
    use natter_shared::topic;

    fn sub(id: u64) -> Subscriber {
        Subscriber {
            session: Arc::new(Session::new(
                id,
                SessionKey {
                    username: None,
                    client_id: id.to_string().into(),
                },
                10,
                OverflowPolicy::DropNew,
            )),
            sub: Subscription {
                options: SubscriptionOptions::default(),
                id: None,
            },
        }
    }

    fn ids(t: &Trie, topic: &str) -> Vec<u64> {
        let mut v = Vec::new();
        t.for_each_match(topic, |s| v.push(s.session.id));
        v.sort_unstable();
        v
    }

    /// Past [`FEW`] subscribers a filter keeps them in a map: inserting, replacing,
    /// matching and removing agree on both sides of the change.
    #[test]
    fn many_subscribers_on_one_filter_move_to_a_map_and_back_to_empty() {
        let mut t = Trie::default();
        let n = (FEW * 2 + 3) as u64;
        for id in 0..n {
            assert!(t.insert("a/b", None, sub(id)), "{id}");
            assert!(!t.insert("a/b", None, sub(id)), "{id} again replaces");
            assert_eq!(ids(&t, "a/b"), (0..=id).collect::<Vec<_>>());
        }
        assert_eq!(t.len(), n as usize);
        for id in (0..n).rev() {
            assert!(t.remove("a/b", None, id), "{id}");
            assert!(!t.remove("a/b", None, id), "{id} is gone");
        }
        assert_eq!(t.len(), 0);
        assert!(ids(&t, "a/b").is_empty());
        assert!(t.root.is_empty(), "emptied nodes are pruned");
    }

    #[test]
    fn agrees_with_the_reference_matcher() {
        let filters = [
            "#", "+", "a", "a/b", "a/+", "a/#", "+/b", "+/+", "/+", "a/+/c", "$SYS/#", "+/#", "a//c",
        ];
        let topics = ["a", "a/b", "a/b/c", "/b", "b/b", "$SYS/x", "a//c", "/", "$x"];
        let mut t = Trie::default();
        for (i, f) in filters.iter().enumerate() {
            assert!(t.insert(f, None, sub(i as u64)));
        }
        for topic_name in topics {
            let expected: Vec<u64> = filters
                .iter()
                .enumerate()
                .filter(|(_, f)| topic::matches(f, topic_name))
                .map(|(i, _)| i as u64)
                .collect();
            assert_eq!(ids(&t, topic_name), expected, "topic {topic_name}");
        }
    }

    #[test]
    fn replace_remove_and_prune() {
        let mut t = Trie::default();
        assert!(t.insert("a/b", None, sub(1)));
        assert!(!t.insert("a/b", None, sub(1)));
        assert_eq!(t.len(), 1);
        assert!(!t.remove("a/c", None, 1));
        assert!(t.remove("a/b", None, 1));
        assert!(!t.remove("a/b", None, 1));
        assert_eq!(t.len(), 0);
        assert!(t.root.children.is_empty(), "pruned");
    }

    #[test]
    fn wildcard_children_are_found_after_churn() {
        let mut t = Trie::default();
        t.insert("a/+", None, sub(1));
        t.insert("a/#", None, sub(2));
        t.insert("+/b", None, sub(3));
        assert_eq!(ids(&t, "a/b"), vec![1, 2, 3]);
        assert!(t.remove("a/+", None, 1));
        assert!(t.remove("+/b", None, 3));
        assert!(!t.root.has_plus);
        assert_eq!(ids(&t, "a/b"), vec![2]);
        t.insert("a/+", None, sub(4));
        assert!(t.remove("a/#", None, 2));
        assert_eq!(ids(&t, "a/b"), vec![4]);
        assert_eq!(ids(&t, "a"), Vec::<u64>::new());
        assert!(t.remove("a/+", None, 4));
        assert!(t.root.children.is_empty() && t.root.hash.is_none() && !t.root.has_plus);
    }

    #[test]
    fn shared_groups_deliver_to_one_member_in_turn() {
        let mut t = Trie::default();
        for id in 1..=3 {
            let s = sub(id);
            s.session.set_online(true);
            t.insert("jobs/+", Some("workers"), s);
        }
        t.insert("jobs/+", None, sub(9));
        let mut seen = Vec::new();
        for _ in 0..6 {
            let got = ids(&t, "jobs/1");
            assert_eq!(got.len(), 2, "one group member plus the plain subscriber");
            assert!(got.contains(&9));
            seen.extend(got.into_iter().filter(|&i| i != 9));
        }
        for id in 1..=3 {
            assert_eq!(seen.iter().filter(|&&i| i == id).count(), 2, "round robin");
        }
        assert!(t.remove("jobs/+", Some("workers"), 2));
        assert_eq!(t.len(), 3);
        // Only member 2 left the group: 1 and 3 take turns.
        let mut seen: Vec<u64> = (0..4).flat_map(|_| ids(&t, "jobs/1")).filter(|&i| i != 9).collect();
        seen.sort_unstable();
        assert_eq!(seen, vec![1, 1, 3, 3]);
    }

    #[test]
    fn shared_groups_prefer_online_members_then_take_turns_among_the_rest() {
        let mut t = Trie::default();
        let members: Vec<Subscriber> = (1..=3).map(sub).collect();
        for m in &members {
            t.insert("q", Some("g"), m.clone());
        }
        // Only 3 is online: it gets every message, whoever's turn it is.
        members[2].session.set_online(true);
        for _ in 0..4 {
            assert_eq!(ids(&t, "q"), vec![3]);
        }
        // Nobody online: the turn still moves over every member.
        members[2].session.set_online(false);
        let mut seen: Vec<u64> = (0..6).flat_map(|_| ids(&t, "q")).collect();
        seen.sort_unstable();
        assert_eq!(seen, vec![1, 1, 2, 2, 3, 3]);
    }

    #[test]
    fn removing_a_root_wildcard_clears_its_flag() {
        let mut t = Trie::default();
        t.insert("#", None, sub(1));
        t.insert("+", None, sub(2));
        assert!(t.root.hash.is_some() && t.root.has_plus);
        assert!(t.remove("#", None, 1));
        assert!(t.root.hash.is_none() && t.root.has_plus);
        assert!(t.remove("+", None, 2));
        assert!(!t.root.has_plus);
    }
}
