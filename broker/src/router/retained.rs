//! Retained messages, in a trie of topic levels so a subscription finds its retained
//! messages by walking its filter rather than scanning every retained topic.

use std::sync::Arc;
use std::time::Instant;

use super::sparse::SparseMap;
use crate::model::Message;

#[derive(Default)]
struct Node {
    /// One retained presence per online user makes the `presence` node's map as
    /// large as the user count, and its children leaves.
    children: SparseMap<Box<str>, Node>,
    msg: Option<Arc<Message>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.msg.is_none()
    }
}

/// Why a retained message was not stored.
#[derive(Debug, PartialEq, Eq)]
pub struct RetainedFull;

/// Topic to last retained message, bounded in count.
pub struct RetainedStore {
    root: Node,
    count: usize,
    max: usize,
}

impl RetainedStore {
    pub fn new(max: usize) -> RetainedStore {
        RetainedStore {
            root: Node::default(),
            count: 0,
            max,
        }
    }

    pub fn len(&self) -> usize {
        self.count
    }

    /// Stores `msg` as the topic's retained message, or clears it when the payload is
    /// empty. Replacing is always allowed; a new topic beyond the bound is refused.
    ///
    /// # Errors
    /// [`RetainedFull`] when a new topic would exceed the bound.
    pub fn set(&mut self, msg: Arc<Message>) -> Result<(), RetainedFull> {
        let levels: Vec<&str> = msg.topic.split('/').collect();
        if msg.payload.is_empty() {
            if clear_rec(&mut self.root, &levels) {
                self.count -= 1;
            }
            return Ok(());
        }
        let mut node = &mut self.root;
        for level in &levels {
            if !node.children.contains_key(*level) && self.count >= self.max {
                return Err(RetainedFull);
            }
            node = node.children.get_or_default((*level).into());
        }
        if node.msg.is_none() {
            if self.count >= self.max {
                return Err(RetainedFull);
            }
            self.count += 1;
        }
        node.msg = Some(msg);
        Ok(())
    }

    /// Unexpired retained messages matching a (non-shared) filter.
    pub fn matching(&self, filter: &str, now: Instant, out: &mut Vec<Arc<Message>>) {
        let levels: Vec<&str> = filter.split('/').collect();
        walk(&self.root, &levels, true, now, out);
    }
}

fn clear_rec(node: &mut Node, levels: &[&str]) -> bool {
    let Some((first, rest)) = levels.split_first() else {
        return node.msg.take().is_some();
    };
    let Some(child) = node.children.get_mut(*first) else {
        return false;
    };
    let cleared = clear_rec(child, rest);
    if child.is_empty() {
        node.children.remove(*first);
    }
    cleared
}

fn push(node: &Node, now: Instant, out: &mut Vec<Arc<Message>>) {
    if let Some(m) = &node.msg {
        if !m.is_expired(now) {
            out.push(m.clone());
        }
    }
}

fn push_all(node: &Node, now: Instant, out: &mut Vec<Arc<Message>>) {
    push(node, now, out);
    for child in node.children.values() {
        push_all(child, now, out);
    }
}

fn walk(node: &Node, levels: &[&str], root: bool, now: Instant, out: &mut Vec<Arc<Message>>) {
    let Some((first, rest)) = levels.split_first() else {
        push(node, now, out);
        return;
    };
    // Wildcards at the first level skip topics starting with '$' (MQTT-4.7.2-1).
    let visible = |name: &str| !(root && name.starts_with('$'));
    match *first {
        "#" => {
            // "a/#" also matches "a" itself.
            if !root {
                push(node, now, out);
            }
            for (name, child) in node.children.iter() {
                if visible(name) {
                    push_all(child, now, out);
                }
            }
        }
        "+" => {
            for (name, child) in node.children.iter() {
                if visible(name) {
                    walk(child, rest, false, now, out);
                }
            }
        }
        level => {
            if let Some(child) = node.children.get(level) {
                walk(child, rest, false, now, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use natter_shared::codec::QoS;
    use natter_shared::topic;

    fn msg(topic: &str, payload: &'static str) -> Arc<Message> {
        Arc::new(Message::broker(
            topic,
            Bytes::from_static(payload.as_bytes()),
            QoS::AtMostOnce,
            true,
        ))
    }

    fn topics(s: &RetainedStore, filter: &str) -> Vec<String> {
        let mut out = Vec::new();
        s.matching(filter, Instant::now(), &mut out);
        let mut v: Vec<String> = out.iter().map(|m| m.topic.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn agrees_with_the_reference_matcher() {
        let names = ["a", "a/b", "a/b/c", "/b", "b/b", "$SYS/x", "a//c", "/"];
        let mut s = RetainedStore::new(100);
        for t in names {
            s.set(msg(t, "x")).unwrap();
        }
        for f in [
            "#", "+", "a/#", "a/+", "+/b", "+/+", "/+", "$SYS/#", "+/#", "a//c", "a/b/c", "x/#",
        ] {
            let mut expected: Vec<String> = names
                .iter()
                .filter(|t| topic::matches(f, t))
                .map(|t| t.to_string())
                .collect();
            expected.sort();
            assert_eq!(topics(&s, f), expected, "filter {f}");
        }
    }

    #[test]
    fn replace_clear_and_bound() {
        let mut s = RetainedStore::new(2);
        s.set(msg("a", "1")).unwrap();
        s.set(msg("a", "2")).unwrap();
        s.set(msg("b", "1")).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.set(msg("c", "1")), Err(RetainedFull));
        s.set(msg("a", "3")).unwrap();
        s.set(msg("a", "")).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(topics(&s, "#"), vec!["b"]);
        s.set(msg("c", "1")).unwrap();
        let mut out = Vec::new();
        s.matching("b", Instant::now(), &mut out);
        assert_eq!(&out[0].payload[..], b"1");
    }
}
